//! Loading a certificate and its RSA private key: PEM (one file or two, the key possibly an
//! `ENCRYPTED PRIVATE KEY`: `encrypted_key.rs`) or PKCS#12, checked the way Entra will check
//! them (RSA, key matches the leaf, inside the validity period).

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ring::rsa::KeyPair as RsaKeyPair;
use rustls_pki_types::pem::{self, SectionKind};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::blocking_read::{READ_TIMEOUT, ReadFailure, read_at_build};
use crate::error::ConfigError;
use crate::regular_file::open_regular_file;
use crate::token::Secret;

/// The largest certificate file or buffer accepted. A certificate with its chain and key is a
/// few KiB; a larger input is a wrong path (a log, an archive), refused before it is parsed.
pub(crate) const MAX_CERTIFICATE_BYTES: usize = 1024 * 1024;

/// How far in the future a certificate's notBefore may be and still load. A certificate is
/// often put in place the moment it is issued, and a host whose clock runs a few seconds or
/// minutes behind the issuer's would otherwise refuse a freshly rotated one at startup
/// (azure-identity does not check the dates at all). Five minutes is the usual allowance for
/// clock skew (Kerberos', and Microsoft.IdentityModel's for tokens); a certificate starting
/// later than that is still refused, naming its dates. notAfter has no allowance: a certificate
/// at its end needs renewing whatever the clocks say.
const NOT_BEFORE_SKEW_SECS: i64 = 300;

/// `rsaEncryption` (RFC 8017 A.1): the only key algorithm Entra accepts for certificate
/// credentials, and the only one azure-identity loads.
const RSA_ENCRYPTION_OID: &str = "1.2.840.113549.1.1.1";

/// Where a [`ClientCertificateCredential`](super::ClientCertificateCredential) gets its
/// certificate and private key. Nothing is read or parsed until the credential is built.
///
/// ```
/// use tower_identity::{CertificateSource, Secret};
/// let pem = CertificateSource::from_pem(std::fs::read("cert.pem").unwrap_or_default());
/// let two = CertificateSource::from_pem_files("cert.pem", "key.pem");
/// let locked = CertificateSource::from_pem_files_with_password(
///     "cert.pem",
///     "key.pem",
///     Some(Secret::new("p4ss")),
/// );
/// let pfx = CertificateSource::from_pkcs12(Vec::new(), Some(Secret::new("p4ss")));
/// let any = CertificateSource::from_path("/etc/app/cert.pfx", None);
/// # let _ = (pem, two, locked, pfx, any);
/// ```
#[derive(Clone)]
pub struct CertificateSource(Source);

#[derive(Clone)]
enum Source {
    Pem {
        bytes: Zeroizing<Vec<u8>>,
        password: Option<Secret>,
    },
    PemFiles {
        cert: PathBuf,
        key: PathBuf,
        password: Option<Secret>,
    },
    Pkcs12 {
        bytes: Zeroizing<Vec<u8>>,
        password: Option<Secret>,
    },
    Path {
        path: PathBuf,
        password: Option<Secret>,
    },
}

impl CertificateSource {
    /// PEM text holding the certificate (leaf, optionally followed by its chain) and an
    /// unencrypted RSA private key (`PRIVATE KEY`, PKCS#8, or `RSA PRIVATE KEY`, PKCS#1), in
    /// any order. For an `ENCRYPTED PRIVATE KEY`, use
    /// [`from_pem_with_password`](Self::from_pem_with_password).
    pub fn from_pem(bytes: impl Into<Vec<u8>>) -> Self {
        Self::from_pem_with_password(bytes, None)
    }

    /// PEM text as for [`from_pem`](Self::from_pem), whose private key may also be an
    /// `ENCRYPTED PRIVATE KEY` (PKCS#8 `EncryptedPrivateKeyInfo`), decrypted with `password`
    /// as azure-identity does. Schemes: PBES2 with PBKDF2 (HMAC-SHA1 or SHA-2) or scrypt, and
    /// AES-CBC, AES-GCM or 3DES-CBC: what `openssl pkcs8 -topk8` and `openssl genpkey -aes256`
    /// write. The key derivation is bounded as a PKCS#12 archive's is (at most 1 000 000
    /// PBKDF2 iterations, scrypt within 65 MiB), checked before it runs. The password is
    /// ignored when the key is not encrypted; `None` is [`from_pem`](Self::from_pem).
    pub fn from_pem_with_password(bytes: impl Into<Vec<u8>>, password: Option<Secret>) -> Self {
        Self(Source::Pem {
            bytes: Zeroizing::new(bytes.into()),
            password,
        })
    }

    /// Two PEM files: certificates in `cert`, the private key in `key` (either file may hold
    /// both; their sections are read together, and a section found in both, such as one
    /// combined file given twice, counts once). For an `ENCRYPTED PRIVATE KEY`, use
    /// [`from_pem_files_with_password`](Self::from_pem_files_with_password).
    pub fn from_pem_files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self::from_pem_files_with_password(cert, key, None)
    }

    /// Two PEM files as for [`from_pem_files`](Self::from_pem_files), whose private key may be
    /// an `ENCRYPTED PRIVATE KEY`, decrypted with `password` as in
    /// [`from_pem_with_password`](Self::from_pem_with_password).
    pub fn from_pem_files_with_password(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        password: Option<Secret>,
    ) -> Self {
        Self(Source::PemFiles {
            cert: cert.into(),
            key: key.into(),
            password,
        })
    }

    /// A PKCS#12 (`.pfx`/`.p12`) archive and its password (`None` = no password or an empty
    /// one; both forms of it are tried, as OpenSSL does: the empty BMPString of RFC 7292, and
    /// no bytes at all, which some Windows exports use). Encryption: PBES2 with AES (OpenSSL
    /// 3's default) and the legacy PBES1 3DES/RC2 (those only with a password, or with the
    /// empty BMPString: contents keyed with no bytes are refused with the `openssl` commands
    /// that re-export them).
    pub fn from_pkcs12(bytes: impl Into<Vec<u8>>, password: Option<Secret>) -> Self {
        Self(Source::Pkcs12 {
            bytes: Zeroizing::new(bytes.into()),
            password,
        })
    }

    /// A file that is PEM when it contains `-----BEGIN`, else PKCS#12 (azure-identity's rule,
    /// used for `AZURE_CLIENT_CERTIFICATE_PATH`). The password is the PKCS#12 archive's, or
    /// decrypts a PEM `ENCRYPTED PRIVATE KEY` (as in
    /// [`from_pem_with_password`](Self::from_pem_with_password)); it is ignored for a PEM
    /// file whose key is not encrypted. `AZURE_CLIENT_CERTIFICATE_PASSWORD` is this password.
    pub fn from_path(path: impl Into<PathBuf>, password: Option<Secret>) -> Self {
        Self(Source::Path {
            path: path.into(),
            password,
        })
    }

    /// Reads and checks the certificate and key at wall-clock time `now` (Unix seconds) (the
    /// fuzz target's and the tests' way in; a builder says how its files are read).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn load(&self, now: u64) -> Result<LoadedCertificate, String> {
        self.load_reading(now, &Reading::files())
    }

    /// [`load`](Self::load), the files read as `reading` says.
    pub(crate) fn load_reading(
        &self,
        now: u64,
        reading: &Reading,
    ) -> Result<LoadedCertificate, String> {
        let (mut parts, password) = match &self.0 {
            Source::Pem { bytes, password } => {
                check_size(bytes.len(), "the PEM data")?;
                (parse_pem(bytes)?, password)
            }
            Source::PemFiles {
                cert,
                key,
                password,
            } => {
                let mut parts = parse_pem(&reading.read(cert)?)?;
                let more = parse_pem(&reading.read(key)?)?;
                parts.certs.extend(more.certs);
                parts.keys.extend(more.keys);
                parts.encrypted_keys.extend(more.encrypted_keys);
                parts.ec_key |= more.ec_key;
                (parts, password)
            }
            Source::Pkcs12 { bytes, password } => {
                check_size(bytes.len(), "the PKCS#12 data")?;
                (parse_pkcs12(bytes, password.as_ref())?, &None)
            }
            Source::Path { path, password } => {
                let bytes = reading.read(path)?;
                if is_pem(&bytes) {
                    (parse_pem(&bytes)?, password)
                } else {
                    let parts = parse_pkcs12(&bytes, password.as_ref()).map_err(|e| {
                        format!(
                            "{} (read as PKCS#12: it has no \"-----BEGIN\" line, so it is not PEM)",
                            e
                        )
                    })?;
                    (parts, &None)
                }
            }
        };
        parts.dedup();
        parts.decrypt_key(password.as_ref())?;
        parts.check(now)
    }
}

impl fmt::Debug for CertificateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Pem { bytes, password } => f
                .debug_struct("CertificateSource::Pem")
                .field("bytes", &bytes.len())
                .field("password", password)
                .finish(),
            Source::PemFiles {
                cert,
                key,
                password,
            } => f
                .debug_struct("CertificateSource::PemFiles")
                .field("cert", cert)
                .field("key", key)
                .field("password", password)
                .finish(),
            Source::Pkcs12 { bytes, password } => f
                .debug_struct("CertificateSource::Pkcs12")
                .field("bytes", &bytes.len())
                .field("password", password)
                .finish(),
            Source::Path { path, password } => f
                .debug_struct("CertificateSource::Path")
                .field("path", path)
                .field("password", password)
                .finish(),
        }
    }
}

/// Whether bytes are PEM: azure-identity's test is the presence of `-----BEGIN`.
fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn check_size(len: usize, what: &str) -> Result<(), String> {
    if len > MAX_CERTIFICATE_BYTES {
        return Err(format!(
            "{what} is {len} bytes, more than the 1 MiB a certificate with its key can be; \
             check that it is the right input"
        ));
    }
    Ok(())
}

/// How a source's files are read: by [`read_file`] on a thread of its own, waited for
/// [`READ_TIMEOUT`] at most ([`read_at_build`]); in tests, a read that hangs and a shorter
/// bound.
pub(crate) struct Reading {
    read: FileRead,
    timeout: Duration,
}

/// Reads a certificate or key file.
pub(crate) type FileRead = Arc<dyn Fn(&Path) -> Result<Zeroizing<Vec<u8>>, String> + Send + Sync>;

impl Reading {
    /// [`read_file`], [`READ_TIMEOUT`].
    pub(crate) fn files() -> Self {
        Self {
            read: Arc::new(read_file),
            timeout: READ_TIMEOUT,
        }
    }

    /// `read` instead, waited for `timeout` (a file system that hangs, in tests).
    #[cfg(test)]
    pub(crate) fn with(read: FileRead, timeout: Duration) -> Self {
        Self { read, timeout }
    }

    /// The file's bytes. A file system that does not answer (a hung NFS or CSI mount) blocks
    /// the read's thread, not the builder's for good: past the bound the build fails naming
    /// the file, and until that read returns, a build reading the file fails at once.
    fn read(&self, path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
        let shown = path.display();
        let (read, owned) = (Arc::clone(&self.read), path.to_path_buf());
        match read_at_build(path, move || read(&owned), self.timeout) {
            Ok(outcome) => outcome,
            Err(ReadFailure::Overran | ReadFailure::Late) => Err(format!(
                "a read of the certificate file {shown} has run more than {:?} and has not \
                 returned: its file system does not answer; fix its mount, then build the \
                 credential again (while that read has not returned, a build reading this \
                 file fails at once)",
                self.timeout
            )),
            Err(ReadFailure::Panicked) => Err(format!(
                "reading the certificate file {shown} failed: the read panicked"
            )),
            Err(ReadFailure::NoThread(e)) => Err(format!(
                "the certificate file {shown} could not be read: no thread could be started: {e}"
            )),
        }
    }
}

/// Reads at most [`MAX_CERTIFICATE_BYTES`] (plus one, to tell a larger file apart).
pub(super) fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let shown = path.display();
    let file = open_regular_file(path)
        .map_err(|e| format!("cannot open the certificate file {shown}: {e}"))?;
    let limit = MAX_CERTIFICATE_BYTES.saturating_add(1);
    // Room for the whole file before reading, so that the buffer never grows: a growth frees
    // the shorter copy of the key unwiped. Its size, plus the byte that finds its end without
    // a probe read into an (unwiped) stack buffer; the limit's room when the file system
    // reports none (a file that grew since its size was read still grows the buffer).
    let room = file
        .metadata()
        .ok()
        .map(|metadata| metadata.len())
        .filter(|&len| len > 0)
        .map_or(limit, |len| {
            usize::try_from(len)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
                .min(limit)
        });
    let mut bytes = Zeroizing::new(Vec::with_capacity(room));
    file.take(u64::try_from(limit).unwrap_or(u64::MAX))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the certificate file {shown}: {e}"))?;
    if bytes.len() > MAX_CERTIFICATE_BYTES {
        return Err(format!(
            "the certificate file {shown} is over 1 MiB, more than a certificate with its key \
             can be; check the path"
        ));
    }
    Ok(bytes)
}

/// What an input held, before the checks.
#[derive(Default)]
struct Parts {
    /// DER certificates in input order.
    certs: Vec<Vec<u8>>,
    /// PKCS#8 or PKCS#1 DER keys.
    keys: Vec<Key>,
    /// The DER (`EncryptedPrivateKeyInfo`) of each `ENCRYPTED PRIVATE KEY` section, decrypted
    /// into `keys` by [`Parts::decrypt_key`] when a password is given.
    encrypted_keys: Vec<Vec<u8>>,
    /// A `-----BEGIN EC PRIVATE KEY-----` section was seen.
    ec_key: bool,
}

enum Key {
    Pkcs8(Zeroizing<Vec<u8>>),
    Pkcs1(Zeroizing<Vec<u8>>),
}

impl Key {
    /// Its format and DER: what makes two keys the same section.
    fn identity(&self) -> (u8, &[u8]) {
        match self {
            Key::Pkcs8(der) => (8, der),
            Key::Pkcs1(der) => (1, der),
        }
    }

    fn parse(&self) -> Result<RsaKeyPair, ring::error::KeyRejected> {
        match self {
            Key::Pkcs8(der) => RsaKeyPair::from_pkcs8(der),
            Key::Pkcs1(der) => RsaKeyPair::from_der(der),
        }
    }
}

fn parse_pem(bytes: &[u8]) -> Result<Parts, String> {
    // OpenSSL's traditional encryption: headers in the section, which rustls-pki-types would
    // report as bad base64.
    if bytes.windows(22).any(|w| w == b"Proc-Type: 4,ENCRYPTED") {
        return Err(
            "the private key is encrypted in OpenSSL's legacy PEM format (Proc-Type: \
             4,ENCRYPTED), which is not supported: convert it to an ENCRYPTED PRIVATE KEY \
             (`openssl pkcs8 -topk8 -v2 aes-256-cbc -in key.pem -out key-enc.pem`)"
                .to_owned(),
        );
    }
    let mut parts = Parts::default();
    let mut reader = bytes;
    loop {
        match pem::from_buf(&mut reader) {
            Ok(None) => break,
            Ok(Some((kind, der))) => match kind {
                SectionKind::Certificate => parts.certs.push(der),
                SectionKind::PrivateKey => parts.keys.push(Key::Pkcs8(Zeroizing::new(der))),
                SectionKind::RsaPrivateKey => parts.keys.push(Key::Pkcs1(Zeroizing::new(der))),
                SectionKind::EcPrivateKey => {
                    drop(Zeroizing::new(der));
                    parts.ec_key = true;
                }
                _ => {}
            },
            // Base64 errors quote no input; a section error names only its label.
            Err(e) => return Err(format!("the PEM data is malformed: {}", pem_error(&e))),
        }
    }
    parts.encrypted_keys = super::encrypted_key::sections(bytes)?;
    Ok(parts)
}

fn pem_error(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => "a section is not valid base64".into(),
        pem::Error::SectionTooLarge => "a section is too large".into(),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}

/// p12-keystore's decoding, with a panic in it turned into an error. `pkcs5` 0.8.1, which it
/// uses, panics on PBES2 with scrypt N = 0 (`fuzz/regressions/certificate/scrypt-cost-zero`):
/// `pkcs12_work` refuses that where it can see it, but not in the bags of an encrypted
/// content, which are read only once it is decrypted.
pub(super) fn decode_pkcs12(
    bytes: &[u8],
    password: &str,
) -> Result<Result<p12_keystore::Pkcs12Archive, p12_keystore::error::Error>, String> {
    std::panic::catch_unwind(|| p12_keystore::Pkcs12Archive::from_pkcs12(bytes, password)).map_err(
        |_| {
            "the PKCS#12 data is not a valid archive: its key-derivation parameters are out of \
             range (the PKCS#12 parser panicked on them); re-export it with \
             `openssl pkcs12 -export`"
                .to_owned()
        },
    )
}

fn parse_pkcs12(bytes: &[u8], password: Option<&Secret>) -> Result<Parts, String> {
    use p12_keystore::error::Error as E;
    // p12-keystore bounds each key derivation but not their number: count them first.
    super::pkcs12_work::check(bytes)?;
    let password = password.map(Secret::expose_secret).unwrap_or_default();
    let archive = match decode_pkcs12(bytes, password)? {
        // No password may also mean a MAC keyed with no bytes at all, where p12-keystore
        // derives from the BMPString of "" (see `absent_password`): OpenSSL tries both.
        Err(E::MacError(_)) if password.is_empty() => {
            match super::pkcs12_work::absent_password::without_mac_keyed_by(bytes, &[]) {
                // Its MAC verified, so its contents are the exporter's: any failure to read
                // them is theirs being keyed with the same empty bytes by a scheme that
                // p12-keystore keys with the BMPString (legacy 3DES/RC2): a padding error, or
                // by chance valid padding and bags that do not parse. Not "a wrong password"
                // nor "not a valid archive".
                Some(unsigned) => decode_pkcs12(&unsigned, "")?.map_err(|_| {
                    "the PKCS#12 archive has no password, in a form its encrypted contents \
                     cannot be read with here; re-export it (`openssl pkcs12 -in cert.pfx \
                     -passin pass: -noenc -out cert.pem`, then `openssl pkcs12 -export \
                     -in cert.pem -out new.pfx`), or give the PEM file instead"
                        .to_owned()
                })?,
                None => {
                    return Err(
                        "the PKCS#12 password is wrong (the archive's integrity check failed \
                         without a password, an empty one in either of its forms); give the \
                         archive's password"
                            .to_owned(),
                    );
                }
            }
        }
        decoded => decoded.map_err(pkcs12_error)?,
    };
    let mut parts = Parts::default();
    for bag in &archive.keys {
        parts
            .keys
            .push(Key::Pkcs8(Zeroizing::new(bag.key.as_der().to_vec())));
    }
    for bag in &archive.certs {
        parts.certs.push(bag.cert.as_der().to_vec());
    }
    Ok(parts)
}

/// What p12-keystore's refusal of an archive means for the user.
fn pkcs12_error(e: p12_keystore::error::Error) -> String {
    use p12_keystore::error::Error as E;
    match e {
        // A wrong password fails the MAC check (or, without a MAC, the padding of the
        // decrypted bags).
        E::MacError(_) | E::UnpadError => {
            "the PKCS#12 password is wrong (the archive's integrity check failed); \
             check the password"
                .to_owned()
        }
        E::UnsupportedEncryptionScheme | E::UnsupportedMacAlgorithm => format!(
            "the PKCS#12 archive uses an unsupported algorithm ({e}); re-export it with \
             `openssl pkcs12 -export` (AES-256, SHA-256)"
        ),
        other => format!("the PKCS#12 data is not a valid archive: {other}"),
    }
}

impl Parts {
    /// Drops the sections that repeat an earlier one byte for byte, and keys whose public key
    /// repeats an earlier one's (PKCS#1 and PKCS#8 of one key), keeping the first of each in
    /// order: the same key in both of `from_pem_files`' files (or one combined file given
    /// twice) is one key, not "2 private keys", and a certificate in both is sent once in
    /// `x5c`. Different keys are still refused by [`check`](Self::check).
    fn dedup(&mut self) {
        keep_first(&mut self.certs, |der| (0, der));
        keep_first(&mut self.keys, Key::identity);
        keep_first(&mut self.encrypted_keys, |der| (0, der));
        // One key written as PKCS#1 in one file and PKCS#8 in the other differs byte for
        // byte: the same public key makes it the same key. Parsed only when a few remain (a
        // file of many keys is refused as several keys, without parsing each).
        if (2..=MAX_KEYS_COMPARED).contains(&self.keys.len()) {
            let public: Vec<Option<Vec<u8>>> = self
                .keys
                .iter()
                .map(|key| key.parse().ok().map(|pair| pair.public().as_ref().to_vec()))
                .collect();
            let keep: Vec<bool> = {
                let mut seen = HashSet::new();
                public
                    .iter()
                    .map(|public| public.as_ref().is_none_or(|p| seen.insert(p.as_slice())))
                    .collect()
            };
            let mut keep = keep.into_iter();
            self.keys.retain(|_| keep.next().unwrap_or(true));
        }
    }

    /// With a password, decrypts the `ENCRYPTED PRIVATE KEY` into `keys`, its key derivation
    /// bounded first (`encrypted_key`). Without one, encrypted keys are left out, and
    /// [`check`](Self::check) says a password is needed when there is no other key.
    fn decrypt_key(&mut self, password: Option<&Secret>) -> Result<(), String> {
        let Some(password) = password else {
            return Ok(());
        };
        let Some(encrypted) = self.encrypted_keys.first() else {
            return Ok(());
        };
        // Refused before any key derivation runs, as `check` would refuse it after.
        let count = self.keys.len().saturating_add(self.encrypted_keys.len());
        if count > 1 {
            return Err(several_keys(count));
        }
        let key = super::encrypted_key::decrypt(encrypted, password)?;
        self.keys.push(Key::Pkcs8(key));
        Ok(())
    }

    fn check(self, now: u64) -> Result<LoadedCertificate, String> {
        if self.keys.is_empty() {
            return Err(if !self.encrypted_keys.is_empty() {
                "the private key is encrypted (ENCRYPTED PRIVATE KEY) and no password was \
                 given: give the certificate password (AZURE_CLIENT_CERTIFICATE_PASSWORD, or \
                 the password of `CertificateSource::from_path`, `from_pem_with_password` or \
                 `from_pem_files_with_password`)"
                    .to_owned()
            } else if self.ec_key {
                "the private key is an EC key: only RSA certificates are supported (Entra \
                 accepts RSA only)"
                    .to_owned()
            } else {
                "no private key found: expected a PRIVATE KEY (PKCS#8) or RSA PRIVATE KEY \
                 (PKCS#1) section, or a PKCS#12 archive with a key"
                    .to_owned()
            });
        }
        if self.certs.is_empty() {
            return Err(
                "no certificate found: expected a CERTIFICATE section with the private key"
                    .to_owned(),
            );
        }
        if self.keys.len() > 1 {
            return Err(several_keys(self.keys.len()));
        }
        let parsed: Vec<X509Certificate<'_>> = self
            .certs
            .iter()
            .enumerate()
            .map(|(i, der)| {
                X509Certificate::from_der(der).map(|(_, c)| c).map_err(|e| {
                    format!(
                        "certificate {} is not valid X.509: {e}",
                        i.saturating_add(1)
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let Some(key) = self.keys.first() else {
            return Err("no private key found".to_owned());
        };
        let key_pair = match key.parse() {
            Ok(pair) => pair,
            Err(rejected) => {
                let not_rsa = parsed.iter().all(|c| {
                    c.public_key().algorithm.algorithm.to_id_string() != RSA_ENCRYPTION_OID
                });
                return Err(if not_rsa {
                    "the key is not an RSA key: only RSA certificates are supported (Entra \
                     accepts RSA only)"
                        .to_owned()
                } else {
                    format!(
                        "the private key is not a usable RSA key ({rejected}; RSA keys of \
                         2048 to 8192 bits are supported)"
                    )
                });
            }
        };
        // ring checks each signature it makes against the public key (a fault countermeasure),
        // so a key whose CRT values are damaged loads but cannot sign: found by fuzzing. Sign
        // once now, so such a key fails here and not at every token request.
        let mut probe = vec![0; key_pair.public().modulus_len()];
        key_pair
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                b"tower-identity key check",
                &mut probe,
            )
            .map_err(|_| {
                "the private key is damaged: its values are inconsistent and a test signature \
                 failed; export the key again"
                    .to_owned()
            })?;
        // The leaf is the certificate of this key, wherever it sits; the rest keep their
        // order after it, as the chain sent in `x5c`. A key kept on renewal can have an
        // expired certificate before its current one in a bundle, or the one it replaces still
        // valid beside its renewal. Rule: of the certificates acceptable now (valid by this
        // host's clock, or with a notBefore within the clock-skew allowance), the one with the
        // latest notAfter; on a tie, one valid by this host's clock. Why the longest-lasting
        // even over one valid by this clock: the leaf is chosen once, at build, and signs
        // every assertion after, so the current certificate expiring in minutes beside its
        // just-issued renewal would fail every request from its notAfter on, until the
        // credential is built again. A notBefore a little ahead almost always means this
        // host's clock lags the issuer's, and then Entra accepts the renewal already; at worst
        // it refuses it for those few minutes, which a later request recovers from. The app
        // registration may also list only the newest.
        let public = key_pair.public().as_ref();
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let skewed = now.saturating_add(NOT_BEFORE_SKEW_SECS);
        let of_key =
            |c: &X509Certificate<'_>| c.public_key().subject_public_key.data.as_ref() == public;
        // 2: valid now; 1: valid within the skew allowance; 0: not valid.
        let validity_rank = |c: &X509Certificate<'_>| {
            let validity = c.validity();
            let (from, until) = (
                validity.not_before.timestamp(),
                validity.not_after.timestamp(),
            );
            if now > until || skewed < from {
                0u8
            } else if now < from {
                1
            } else {
                2
            }
        };
        let Some(leaf_index) = parsed
            .iter()
            .enumerate()
            .filter(|(_, c)| of_key(c) && validity_rank(c) > 0)
            .max_by_key(|(_, c)| (c.validity().not_after.timestamp(), validity_rank(c)))
            .map(|(i, _)| i)
            .or_else(|| parsed.iter().position(of_key))
        else {
            return Err(if parsed.len() == 1 {
                "the private key does not match the certificate (their public keys differ)"
                    .to_owned()
            } else {
                format!(
                    "the private key matches none of the {} certificates (their public keys \
                     differ)",
                    parsed.len()
                )
            });
        };
        let Some(leaf) = parsed.get(leaf_index) else {
            return Err("no certificate found".to_owned());
        };
        let validity = leaf.validity();
        let (from, until) = (validity.not_before, validity.not_after);
        if skewed < from.timestamp() {
            return Err(format!(
                "the certificate is not yet valid: valid from {from} until {until}, more than \
                 {} minutes ahead of this host's clock; check the certificate or the clock",
                NOT_BEFORE_SKEW_SECS / 60
            ));
        }
        if now > until.timestamp() {
            return Err(format!(
                "the certificate expired on {until} (valid from {from}); renew it"
            ));
        }
        let subject = leaf.subject().to_string();
        let not_after = u64::try_from(until.timestamp()).unwrap_or(0);
        drop(parsed);
        let mut certs = self.certs;
        let leaf_der = certs.remove(leaf_index);
        certs.insert(0, leaf_der);
        Ok(LoadedCertificate {
            key: key_pair,
            chain: certs,
            subject,
            not_after,
        })
    }
}

/// Keeps the first of the items with the same `identity`, in order. A hash set, so that the
/// thousands of tiny sections a 1 MiB input can hold cost linear time.
fn keep_first<T>(items: &mut Vec<T>, identity: impl Fn(&T) -> (u8, &[u8])) {
    let keep: Vec<bool> = {
        let mut seen = HashSet::new();
        items
            .iter()
            .map(|item| seen.insert(identity(item)))
            .collect()
    };
    let mut keep = keep.into_iter();
    items.retain(|_| keep.next().unwrap_or(true));
}

/// At most this many keys are parsed to compare their public keys (see `Parts::dedup`): a
/// key in each of the two files, in two formats, with room to spare.
const MAX_KEYS_COMPARED: usize = 4;

fn several_keys(count: usize) -> String {
    format!("{count} private keys found; give exactly one, the key of the certificate")
}

/// A checked certificate and key, ready to sign.
pub(crate) struct LoadedCertificate {
    /// ring holds the key's numbers in its own types, which it does not zeroize; the DER
    /// copies this module made are zeroized when dropped.
    pub(crate) key: RsaKeyPair,
    /// DER certificates, the leaf (the key's certificate) first.
    pub(crate) chain: Vec<Vec<u8>>,
    /// The leaf's subject, for Debug and messages.
    pub(crate) subject: String,
    /// The leaf's notAfter (Unix seconds).
    pub(crate) not_after: u64,
}

impl LoadedCertificate {
    /// The leaf certificate's DER.
    pub(crate) fn leaf(&self) -> &[u8] {
        self.chain.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// Why nothing is signed at `now` (Unix seconds), past the leaf's notAfter: Entra refuses
    /// an expired certificate's assertions (AADSTS700027), so sending one would only be
    /// refused, and one in hand refused so is replaced once: a second refusal.
    pub(crate) fn expired_at(&self, now: u64) -> Option<String> {
        if now <= self.not_after {
            return None;
        }
        let until = i64::try_from(self.not_after)
            .ok()
            .and_then(|secs| x509_parser::time::ASN1Time::from_timestamp(secs).ok())
            .map_or_else(
                || format!("{} (Unix time)", self.not_after),
                |t| t.to_string(),
            );
        Some(format!(
            "the certificate (subject {}) expired on {until}; renew it and build the \
             credential again",
            self.subject
        ))
    }
}

impl fmt::Debug for LoadedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject)
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// For builders: a load error as a [`ConfigError`] of `name`.
pub(crate) fn config_error(name: &str, message: String) -> ConfigError {
    ConfigError::new(format!("{name}: {message}"))
}
