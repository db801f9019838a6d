//! A PEM `ENCRYPTED PRIVATE KEY` (PKCS#8 `EncryptedPrivateKeyInfo`, RFC 5958 section 3)
//! decrypted with the certificate password, as azure-identity does for PEM input.
//!
//! Schemes: PBES2 (RFC 8018) with PBKDF2 (HMAC-SHA1, -SHA224, -SHA256, -SHA384, -SHA512) or
//! scrypt, and AES-128/192/256-CBC, AES-128/256-GCM or DES-EDE3-CBC: what OpenSSL 1.1 and 3
//! (`openssl pkcs8 -topk8`, `openssl genpkey -aes256`), Python `cryptography` and Java write.
//! The PBES1 and PKCS#12 schemes of OpenSSL 1.0's `-v1` are refused, naming the fix.
//!
//! The key derivation is bounded before it runs, by the same limits as a PKCS#12 archive's
//! (`pkcs12_work`): the iteration count (or scrypt's N·r·p and its memory, 128·r·(N + p)) is
//! read from the parameters `pkcs5` itself decodes, so what is checked is what would run.
//! scrypt with N < 2 (N = 0 makes `pkcs5` 0.8.1 panic) is refused there too, and a panic in
//! the decryption is caught all the same.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Decode, Reader, Tag, Tagged};
use pkcs5::pbes2::Kdf;
use pkcs5::{AlgorithmIdentifierRef, EncryptionScheme};
use zeroize::Zeroizing;

use super::pkcs12_work::{Encrypted, Run, Work};
use crate::token::Secret;

const BEGIN: &[u8] = b"-----BEGIN ENCRYPTED PRIVATE KEY-----";
const END: &[u8] = b"-----END ENCRYPTED PRIVATE KEY-----";

/// The arcs of the password-based schemes other than PBES2: pkcs-12PbeIds (RFC 7292
/// appendix C, OpenSSL 1.0's `-v1 PBE-SHA1-3DES`) and PKCS#5 (PBES1, RFC 8018 appendix A.3).
const PKCS12_PBE_ARC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.1");
const PKCS5_ARC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5");

/// What to run instead of an unsupported scheme.
const REENCRYPT: &str = "re-encrypt it with PBES2 and AES \
    (`openssl pkcs8 -topk8 -v2 aes-256-cbc -in key.pem -out key-enc.pem`)";

/// The DER of each `ENCRYPTED PRIVATE KEY` section of `pem`, in order. (rustls-pki-types'
/// PEM reader skips sections of that label.) Run after that reader accepted the text, so an
/// unterminated section has been reported already.
pub(super) fn sections(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut sections = Vec::new();
    let mut body: Option<Vec<u8>> = None;
    for line in pem.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        match body.as_mut() {
            None => {
                if line == BEGIN {
                    body = Some(Vec::new());
                }
            }
            Some(base64) => {
                if line == END {
                    let der = STANDARD.decode(base64).map_err(|_| {
                        "the PEM data is malformed: an ENCRYPTED PRIVATE KEY section is not \
                         valid base64"
                            .to_owned()
                    })?;
                    sections.push(der);
                    body = None;
                } else {
                    base64.extend(line.iter().filter(|b| !b.is_ascii_whitespace()));
                }
            }
        }
    }
    if body.is_some() {
        return Err("the PEM data is malformed: a section has no END line".to_owned());
    }
    Ok(sections)
}

/// `EncryptedPrivateKeyInfo ::= SEQUENCE { encryptionAlgorithm AlgorithmIdentifier,
/// encryptedData OCTET STRING }`.
fn read(der: &[u8]) -> der::Result<(AlgorithmIdentifierRef<'_>, &[u8])> {
    AnyRef::from_der(der)?.sequence(|reader| {
        let algorithm: AlgorithmIdentifierRef<'_> = reader.decode()?;
        let data: AnyRef<'_> = reader.decode()?;
        data.tag().assert_eq(Tag::OctetString)?;
        Ok((algorithm, data.value()))
    })
}

/// The scheme of `der`, refused when it is not one `pkcs5` decrypts.
fn scheme(der: &[u8]) -> Result<(EncryptionScheme, &[u8]), String> {
    // der's messages name tags, lengths and offsets, not the input's content.
    let (algorithm, data) = read(der)
        .map_err(|e| format!("the encrypted private key is malformed (not PKCS#8: {e})"))?;
    let oid = algorithm.oid;
    if oid != pkcs5::pbes2::PBES2_OID {
        let name = if oid.parent() == Some(PKCS12_PBE_ARC) {
            "a legacy PKCS#12 scheme (3DES or RC2 with SHA-1)"
        } else if oid.parent() == Some(PKCS5_ARC) {
            "PBES1 (DES or RC2 with MD5 or SHA-1)"
        } else {
            "an unknown scheme"
        };
        return Err(format!(
            "the private key is encrypted with {name} ({oid}), which is not supported; \
             {REENCRYPT}"
        ));
    }
    let scheme = EncryptionScheme::try_from(algorithm).map_err(|e| {
        format!("the encrypted private key's PBES2 parameters are malformed or unsupported ({e}); {REENCRYPT}")
    })?;
    Ok((scheme, data))
}

/// The key derivation `der` (an `EncryptedPrivateKeyInfo`) asks for, checked against the
/// limits of `pkcs12_work` (those of a PKCS#12 archive) without running it.
#[cfg(test)]
pub(super) fn check_work(der: &[u8]) -> Result<Work, String> {
    bound(&scheme(der)?.0)
}

fn bound(scheme: &EncryptionScheme) -> Result<Work, String> {
    let Some(parameters) = scheme.pbes2() else {
        return Err(format!(
            "the private key is encrypted with PBES1, which is not supported; {REENCRYPT}"
        ));
    };
    let run = match &parameters.kdf {
        Kdf::Pbkdf2(pbkdf2) => Run::iterations(u64::from(pbkdf2.iteration_count)),
        Kdf::Scrypt(scrypt) => Run::scrypt(
            scrypt.cost_parameter,
            u64::from(scrypt.block_size),
            u64::from(scrypt.parallelization),
        ),
        other => {
            return Err(format!(
                "the private key is encrypted with an unsupported key derivation ({}); \
                 {REENCRYPT}",
                other.oid()
            ));
        }
    };
    let mut work = Work::default();
    work.add(run);
    work.check_for(Encrypted::PemKey)?;
    Ok(work)
}

/// The PKCS#8 `PrivateKeyInfo` DER that `der` (an `EncryptedPrivateKeyInfo`) encrypts,
/// decrypted with `password` once its key derivation passed the bound. Errors never quote
/// the password; the plaintext is zeroized when dropped.
pub(super) fn decrypt(der: &[u8], password: &Secret) -> Result<Zeroizing<Vec<u8>>, String> {
    let (scheme, data) = scheme(der)?;
    bound(&scheme)?;
    let mut buffer = Zeroizing::new(data.to_vec());
    // As for PKCS#12 (`load::decode_pkcs12`): a panic in `pkcs5` is an error, not a crash.
    let decrypted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scheme
            .decrypt_in_place(password.expose_secret().as_bytes(), &mut buffer)
            .map(<[u8]>::len)
    }))
    .map_err(|_| {
        format!(
            "the encrypted private key's parameters are out of range (the decryption panicked \
             on them); {REENCRYPT}"
        )
    })?;
    let len = decrypted.map_err(|e| match e {
        // Bad padding (CBC) or a bad tag (GCM): what a wrong password gives.
        pkcs5::Error::DecryptFailed => wrong_password(),
        pkcs5::Error::UnsupportedAlgorithm { oid } => format!(
            "the private key is encrypted with an unsupported algorithm ({oid}); {REENCRYPT}"
        ),
        pkcs5::Error::AlgorithmParametersInvalid { oid } => {
            format!("the encrypted private key's parameters for {oid} are invalid; {REENCRYPT}")
        }
        other => format!("the encrypted private key cannot be decrypted ({other}); {REENCRYPT}"),
    })?;
    buffer.truncate(len);
    // A wrong password still gives valid CBC padding about once in 256 tries: what it
    // decrypts to is then not a DER SEQUENCE (PrivateKeyInfo) filling the plaintext.
    let well_formed = AnyRef::from_der(&buffer).is_ok_and(|value| value.tag() == Tag::Sequence);
    if !well_formed {
        return Err(wrong_password());
    }
    Ok(buffer)
}

fn wrong_password() -> String {
    "the private key's password is wrong: the ENCRYPTED PRIVATE KEY does not decrypt with the \
     password given (or the key is damaged); check the certificate password"
        .to_owned()
}
