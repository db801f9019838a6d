//! How much password key derivation a PKCS#12 archive asks for, read from its DER before
//! p12-keystore decrypts anything, so that an archive asking for too much is refused up front.
//!
//! p12-keystore 0.4.1 caps each derivation (at most 1 000 000 PBKDF2 or PKCS#12-KDF
//! iterations, scrypt within 1 GiB and parallelism 16) but not how many it runs: one for the
//! MAC, one per `encryptedData` content, one per `pkcs8ShroudedKeyBag` and per `secretBag`
//! (Java's encrypted secret keys). Only the 1 MiB input limit bounds their number, so a
//! hostile or damaged file could ask for thousands of runs at the cap: minutes of CPU.
//!
//! What is counted: the MAC, each `encryptedData` content, and each shrouded key or secret bag
//! of a plain (`data`) content, with the iteration count each one declares (scrypt as
//! N·r·p). Bags whose parameters cannot be read here count as one run at the per-item cap, so
//! a reading that differs from p12-keystore's can only over-count.
//!
//! What is not counted, and why: bags inside an `encryptedData` content cannot be seen until
//! it is decrypted, and p12-keystore 0.4.1 has no public API below `Pkcs12Archive::from_pkcs12`
//! that would hand back the decrypted bags before deriving their keys (its `codec` module is
//! private). Each such bag costs at most the per-item cap, and takes at least about 50 bytes
//! of the content, so up to about 20 000 runs remain possible in a 1 MiB file. Reaching them
//! needs the archive's password: the MAC (checked first) must verify, and the content must
//! decrypt to valid padding and well-formed bags. So a damaged file cannot get there, and a
//! hostile one can only if it was made with the configured password, or if that password is
//! empty. Real exporters (OpenSSL, Windows and .NET, Java keytool) put only certificates in
//! `encryptedData` and their keys in plain contents, where they are counted. The same holds
//! for scrypt with N = 0, on which `pkcs5` 0.8.1 (under p12-keystore) panics: refused here
//! (with N = 1) where visible; inside an `encryptedData` content the panic is caught
//! (`load.rs`, `decode_pkcs12`) and reported as a damaged archive.

use std::fmt;

use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Decode, Reader, SliceReader, Tag, Tagged};

/// At most this many key derivations per archive. A certificate export needs three: the MAC,
/// the encrypted certificates, the shrouded key (OpenSSL 3 and `-legacy`, Windows and .NET,
/// Java keytool). Sixteen leaves room for archives that encrypt each certificate of a chain
/// apart, and is still far from the thousands a hostile file needs to cost minutes.
pub(crate) const MAX_KDF_RUNS: u64 = 16;

/// At most this many iterations for one derivation: p12-keystore's own cap, checked here so
/// the error says what to do. Exporters use 2048 (OpenSSL 3), 2000 (Windows and .NET),
/// 10 000 (Java since JDK-8153005) or 50 000 and 100 000 for the MAC (Java before it).
pub(crate) const MAX_ITERATIONS_PER_RUN: u64 = 1_000_000;

/// At most this many iterations over the whole archive: the usual three derivations at the
/// per-item cap pass, with one more to spare, which is 20 times what any exporter above asks
/// for. Measured on the project's 2-core machine (release build), p12-keystore loads an
/// OpenSSL export at 1 000 000 iterations (three runs) in 0.33 s, 0.39 s with `-legacy`
/// (3DES hashes three blocks per iteration, for its key and IV): the limit is about half a
/// second of CPU. An archive without a password whose MAC fails keyed with the empty
/// BMPString costs one MAC derivation more than counted here (its MAC checked again keyed
/// with no bytes, see [`absent_password`]): at most [`MAX_ITERATIONS_PER_RUN`] iterations.
pub(crate) const MAX_TOTAL_ITERATIONS: u64 = 4 * MAX_ITERATIONS_PER_RUN;

/// At most this much scrypt memory (128·r·(N + p) bytes, see [`Run::scrypt`]) for one
/// derivation, where p12-keystore allows 1 GiB: a 64 MiB table, four times the 16 MiB of
/// the scrypt defaults in OpenSSL and RustCrypto's `pkcs5` (N = 2^14, r = 8, p = 1), so
/// N = 2^16 still loads, and 1 MiB for the lanes. No common PKCS#12 exporter uses scrypt.
pub(crate) const MAX_SCRYPT_MEMORY_BYTES: u64 = 65 * 1024 * 1024;

/// `data` (RFC 2315 section 14) and `encryptedData` (RFC 5652 section 8) content types.
const DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ENCRYPTED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.6");
/// RFC 7292 section 4.2 bag types that carry a password-encrypted key.
const SHROUDED_KEY_BAG: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.2");
const SECRET_BAG: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.5");
/// RFC 8018: PBES2 and its key derivation functions; scrypt's from RFC 7914 section 7.
const PBES2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.13");
const PBKDF2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.12");
const SCRYPT: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11591.4.11");
/// The arcs under which the other password-based schemes sit, all with parameters
/// `SEQUENCE { salt OCTET STRING, iterations INTEGER }`: pkcs-12PbeIds (RFC 7292 appendix C,
/// the 3DES and RC2 of legacy exports) and PKCS#5 v1.5's PBES1 (RFC 8018 appendix A.3).
const PKCS12_PBE_ARC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.1");
const PKCS5_ARC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5");

/// The key derivations an archive asks for, as far as they can be seen before decrypting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Work {
    /// Derivations (the MAC and each encrypted item).
    pub(crate) runs: u64,
    /// Their iterations added up (saturating).
    pub(crate) iterations: u64,
    /// The largest single derivation's iterations.
    pub(crate) largest_run: u64,
    /// The largest scrypt memory (bytes) one derivation asks for.
    pub(crate) largest_scrypt_memory: u64,
    /// The N of the first scrypt derivation with N < 2, which RFC 7914 forbids: `pkcs5` 0.8.1
    /// (under p12-keystore) panics on N = 0 (an integer underflow converting N to its
    /// logarithm), and N = 1 lets p alone set the size of scrypt's buffer.
    pub(crate) scrypt_invalid_cost: Option<u64>,
}

/// One derivation's cost.
#[derive(Clone, Copy)]
pub(crate) struct Run {
    iterations: u64,
    scrypt_memory: u64,
    scrypt_invalid_cost: Option<u64>,
}

impl Run {
    /// A derivation whose parameters could not be read: counted at the per-item cap.
    const UNREAD: Run = Run::iterations(MAX_ITERATIONS_PER_RUN);

    pub(crate) const fn iterations(iterations: u64) -> Self {
        Run {
            iterations,
            scrypt_memory: 0,
            scrypt_invalid_cost: None,
        }
    }

    /// scrypt with cost N, block size r and parallelism p. ROMix runs 2·N BlockMix passes
    /// of 2·r Salsa20/8 cores per lane, each core cheaper than a SHA-256 compression, so
    /// N·r·p counts about as much as that many PBKDF2 iterations. It holds 128·r·N bytes
    /// (ROMix's table) and 128·r·p (the p lanes, which PBKDF2 writes and reads in full): with
    /// a small N, a large p costs memory the table's size alone does not show. An overflow
    /// counts as `u64::MAX`, over every limit.
    pub(crate) const fn scrypt(n: u64, r: u64, p: u64) -> Self {
        let memory = match n.checked_add(p) {
            Some(blocks) => match r.checked_mul(128) {
                Some(block) => block.checked_mul(blocks),
                None => None,
            },
            None => None,
        };
        Run {
            iterations: n.saturating_mul(r).saturating_mul(p),
            scrypt_memory: match memory {
                Some(memory) => memory,
                None => u64::MAX,
            },
            scrypt_invalid_cost: if n < 2 { Some(n) } else { None },
        }
    }
}

impl Work {
    pub(crate) fn add(&mut self, run: Run) {
        self.runs = self.runs.saturating_add(1);
        self.iterations = self.iterations.saturating_add(run.iterations);
        self.largest_run = self.largest_run.max(run.iterations);
        self.largest_scrypt_memory = self.largest_scrypt_memory.max(run.scrypt_memory);
        self.scrypt_invalid_cost = self.scrypt_invalid_cost.or(run.scrypt_invalid_cost);
    }

    /// Whether the work is within the limits; if not, what to do about it (worded for a
    /// PKCS#12 archive).
    pub(crate) fn check(&self) -> Result<(), String> {
        self.check_for(Encrypted::Pkcs12)
    }

    /// Whether the work is within the limits, the errors worded for `input`: the one bound for
    /// a PKCS#12 archive and for a PEM `ENCRYPTED PRIVATE KEY` (`encrypted_key.rs`).
    pub(crate) fn check_for(&self, input: Encrypted) -> Result<(), String> {
        let (whole, item, fix) = (input.whole(), input.item(), input.fix());
        let Work {
            runs, iterations, ..
        } = *self;
        if runs > MAX_KDF_RUNS {
            return Err(format!(
                "{whole} needs {runs} password key derivations ({iterations} iterations in all), \
                 more than the limit of {MAX_KDF_RUNS}: {}; {fix}",
                input.usual()
            ));
        }
        if self.largest_run > MAX_ITERATIONS_PER_RUN {
            return Err(format!(
                "{item} asks for {} key-derivation iterations, more than the limit of \
                 {MAX_ITERATIONS_PER_RUN} for one item; {fix}",
                self.largest_run
            ));
        }
        if let Some(n) = self.scrypt_invalid_cost {
            return Err(format!(
                "{item} is encrypted with scrypt at a cost (N) of {n}, which is invalid (N must \
                 be a power of two, at least 2); {fix} (PBKDF2, not scrypt)"
            ));
        }
        if self.largest_scrypt_memory > MAX_SCRYPT_MEMORY_BYTES {
            // Rounded up, so that just over the limit does not read as the limit itself.
            let mib = self.largest_scrypt_memory.div_ceil(1024 * 1024);
            return Err(format!(
                "{item} is encrypted with scrypt needing {mib} MiB of memory, more than the limit \
                 of {} MiB; {fix} (PBKDF2, not scrypt)",
                MAX_SCRYPT_MEMORY_BYTES / (1024 * 1024)
            ));
        }
        if iterations > MAX_TOTAL_ITERATIONS {
            return Err(format!(
                "{whole} needs {runs} password key derivations of {iterations} iterations in all, \
                 more than the limit of {MAX_TOTAL_ITERATIONS} iterations; {fix}"
            ));
        }
        Ok(())
    }
}

/// What password-encrypted input a [`Work`] was counted from: the wording of its errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encrypted {
    /// A PKCS#12 archive.
    Pkcs12,
    /// A PEM `ENCRYPTED PRIVATE KEY` (PKCS#8 `EncryptedPrivateKeyInfo`).
    PemKey,
}

impl Encrypted {
    /// The input as a whole.
    fn whole(self) -> &'static str {
        match self {
            Encrypted::Pkcs12 => "the PKCS#12 archive",
            Encrypted::PemKey => "the encrypted private key",
        }
    }

    /// One encrypted item of it.
    fn item(self) -> &'static str {
        match self {
            Encrypted::Pkcs12 => "an item of the PKCS#12 archive",
            Encrypted::PemKey => "the encrypted private key",
        }
    }

    /// How many derivations a usual input needs.
    fn usual(self) -> &'static str {
        match self {
            Encrypted::Pkcs12 => "a certificate with its key needs 3",
            Encrypted::PemKey => "one key needs 1",
        }
    }

    /// What to do about an input over the limits.
    fn fix(self) -> &'static str {
        match self {
            Encrypted::Pkcs12 => {
                "re-export it with the certificate, its chain and its key only, at OpenSSL's \
                 default 2048 iterations \
                 (`openssl pkcs12 -export -iter 2048 -in cert.pem -inkey key.pem -out cert.pfx`)"
            }
            Encrypted::PemKey => {
                "re-encrypt it at OpenSSL's default 2048 iterations \
                 (`openssl pkcs8 -topk8 -v2 aes-256-cbc -iter 2048 -in key.pem -out key-enc.pem`)"
            }
        }
    }
}

/// Checks the work `pfx` asks for, before p12-keystore runs any of it.
pub(crate) fn check(pfx: &[u8]) -> Result<Work, String> {
    let work = measure(pfx).map_err(|e| format!("the PKCS#12 data is not a valid archive: {e}"))?;
    work.check()?;
    Ok(work)
}

/// A structure p12-keystore must also read before the derivations it leads to, and could not
/// be read here: the archive would be refused anyway.
#[derive(Debug)]
pub(crate) struct Malformed {
    part: &'static str,
    cause: Option<der::Error>,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "its {} is malformed", self.part)?;
        match &self.cause {
            // der's messages name tags, lengths and offsets, not the input's content.
            Some(cause) => write!(f, " ({cause})"),
            None => Ok(()),
        }
    }
}

fn malformed(part: &'static str) -> impl Fn(der::Error) -> Malformed {
    move |cause| Malformed {
        part,
        cause: Some(cause),
    }
}

fn missing(part: &'static str) -> Malformed {
    Malformed { part, cause: None }
}

/// Reads the derivations `pfx` asks for (RFC 7292 section 4), without deriving anything. Linear
/// in the input, and the nesting it follows is fixed, so it is bounded by the input limit.
pub(crate) fn measure(pfx: &[u8]) -> Result<Work, Malformed> {
    let mut work = Work::default();
    // PFX ::= SEQUENCE { version INTEGER, authSafe ContentInfo, macData MacData OPTIONAL }
    let mut reader = SliceReader::new(pfx).map_err(malformed("outer structure"))?;
    let outer = AnyRef::decode(&mut reader).map_err(malformed("outer structure"))?;
    let mut fields = sequence(outer, "outer structure")?;
    next(&mut fields, "version")?;
    let (content_type, content) = content_info(next(&mut fields, "authSafe")?, "authSafe")?;
    if let Some(mac) = fields.next() {
        // MacData ::= SEQUENCE { mac DigestInfo, macSalt OCTET STRING, iterations INTEGER
        // DEFAULT 1 }
        let mac = mac.map_err(malformed("macData"))?;
        work.add(mac_run(mac));
    }
    // p12-keystore refuses other authSafe types (public-key integrity) after the MAC.
    if !is(content_type, DATA) {
        return Ok(work);
    }
    let safe = octets(content, "authSafe")?;
    // AuthenticatedSafe ::= SEQUENCE OF ContentInfo
    for item in sequence(safe, "AuthenticatedSafe")? {
        let item = item.map_err(malformed("AuthenticatedSafe"))?;
        let (content_type, content) = content_info(item, "AuthenticatedSafe content")?;
        if is(content_type, DATA) {
            safe_contents(octets(content, "data content")?, &mut work)?;
        } else if is(content_type, ENCRYPTED_DATA) {
            // EncryptedData ::= SEQUENCE { version, EncryptedContentInfo ::= SEQUENCE {
            // contentType, contentEncryptionAlgorithm, [0] IMPLICIT encryptedContent } }
            let content = content.ok_or_else(|| missing("encryptedData content"))?;
            let mut fields = sequence(content, "encryptedData content")?;
            next(&mut fields, "encryptedData content")?;
            let info = next(&mut fields, "encryptedData content")?;
            let mut info = sequence(info, "encryptedData content")?;
            next(&mut info, "encryptedData content")?;
            let algorithm = next(&mut info, "encryptedData content")?;
            // Counted even without encrypted bytes, when p12-keystore derives nothing: an
            // upper bound. The bags inside are not visible (see the module comment).
            if let Some(run) = encryption_run(algorithm) {
                work.add(run);
            }
        }
        // Other types (envelopedData) are refused by p12-keystore without deriving a key.
    }
    Ok(work)
}

/// Counts the bags of `SafeContents ::= SEQUENCE OF SafeBag`, with
/// `SafeBag ::= SEQUENCE { bagId OID, bagValue [0] EXPLICIT ..., bagAttributes SET OPTIONAL }`.
fn safe_contents(contents: AnyRef<'_>, work: &mut Work) -> Result<(), Malformed> {
    for bag in sequence(contents, "SafeContents")? {
        let bag = bag.map_err(malformed("SafeContents"))?;
        let mut fields = sequence(bag, "SafeBag")?;
        let id = next(&mut fields, "SafeBag")?;
        if id.tag() != Tag::ObjectIdentifier {
            return Err(missing("SafeBag type"));
        }
        let value = next(&mut fields, "SafeBag")?;
        if is(id, SHROUDED_KEY_BAG) {
            // EncryptedPrivateKeyInfo ::= SEQUENCE { encryptionAlgorithm, encryptedData }
            let run = explicit(value)
                .and_then(first)
                .map_or(Some(Run::UNREAD), encryption_run);
            if let Some(run) = run {
                work.add(run);
            }
        } else if is(id, SECRET_BAG) {
            // p12-keystore reads SecretBag ::= SEQUENCE { type OID, [0] EXPLICIT OCTET STRING
            // holding an EncryptedPrivateKeyInfo }, and decrypts it when that parses.
            let run = explicit(value)
                .and_then(|secret| nth(secret, 1))
                .and_then(explicit)
                .filter(|wrapped| wrapped.tag() == Tag::OctetString)
                .and_then(|wrapped| AnyRef::from_der(wrapped.value()).ok())
                .and_then(first)
                .map_or(Some(Run::UNREAD), encryption_run);
            if let Some(run) = run {
                work.add(run);
            }
        }
        // Key, certificate, CRL and nested SafeContents bags derive nothing in p12-keystore.
    }
    Ok(())
}

/// The derivation an AlgorithmIdentifier of an encrypted item asks for; `None` when it names
/// no password-based scheme (p12-keystore refuses those without deriving a key).
fn encryption_run(algorithm: AnyRef<'_>) -> Option<Run> {
    let Some(id) = first(algorithm) else {
        return Some(Run::UNREAD);
    };
    let parameters = nth(algorithm, 1);
    if is(id, PBES2) {
        return Some(parameters.and_then(pbes2_run).unwrap_or(Run::UNREAD));
    }
    if under(id, PKCS12_PBE_ARC) || under(id, PKCS5_ARC) {
        // { salt OCTET STRING, iterations INTEGER }
        return Some(
            parameters
                .and_then(|p| nth(p, 1))
                .and_then(integer)
                .map_or(Run::UNREAD, Run::iterations),
        );
    }
    None
}

/// PBES2-params ::= SEQUENCE { keyDerivationFunc AlgorithmIdentifier, encryptionScheme ... }
fn pbes2_run(parameters: AnyRef<'_>) -> Option<Run> {
    let kdf = first(parameters)?;
    let id = first(kdf)?;
    let kdf_parameters = nth(kdf, 1)?;
    if is(id, PBKDF2) {
        // PBKDF2-params ::= SEQUENCE { salt, iterationCount INTEGER, ... }
        return nth(kdf_parameters, 1)
            .and_then(integer)
            .map(Run::iterations);
    }
    if is(id, SCRYPT) {
        // scrypt-params ::= SEQUENCE { salt, costParameter N, blockSize r, parallelization p,
        // ... }
        let n = nth(kdf_parameters, 1).and_then(integer)?;
        let r = nth(kdf_parameters, 2).and_then(integer)?;
        let p = nth(kdf_parameters, 3).and_then(integer)?;
        return Some(Run::scrypt(n, r, p));
    }
    None
}

fn mac_run(mac: AnyRef<'_>) -> Run {
    match nth(mac, 2) {
        None if nth(mac, 1).is_some() => Run::iterations(1),
        Some(count) => integer(count).map_or(Run::UNREAD, Run::iterations),
        None => Run::UNREAD,
    }
}

/// The elements of a SEQUENCE, in order.
struct Elements<'a>(Option<SliceReader<'a>>);

impl<'a> Iterator for Elements<'a> {
    type Item = der::Result<AnyRef<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let reader = self.0.as_mut()?;
        if reader.is_finished() {
            return None;
        }
        let item = AnyRef::decode(reader);
        if item.is_err() {
            // The rest cannot be delimited.
            self.0 = None;
        }
        Some(item)
    }
}

fn sequence<'a>(value: AnyRef<'a>, part: &'static str) -> Result<Elements<'a>, Malformed> {
    if value.tag() != Tag::Sequence {
        return Err(missing(part));
    }
    let reader = SliceReader::new(value.value()).map_err(malformed(part))?;
    Ok(Elements(Some(reader)))
}

fn next<'a>(elements: &mut Elements<'a>, part: &'static str) -> Result<AnyRef<'a>, Malformed> {
    elements
        .next()
        .ok_or_else(|| missing(part))?
        .map_err(malformed(part))
}

/// The type and content of
/// `ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT ANY OPTIONAL }`.
fn content_info<'a>(
    value: AnyRef<'a>,
    part: &'static str,
) -> Result<(AnyRef<'a>, Option<AnyRef<'a>>), Malformed> {
    let mut fields = sequence(value, part)?;
    let content_type = next(&mut fields, part)?;
    if content_type.tag() != Tag::ObjectIdentifier {
        return Err(missing(part));
    }
    let content = match fields.next() {
        Some(content) => {
            Some(explicit(content.map_err(malformed(part))?).ok_or_else(|| missing(part))?)
        }
        None => None,
    };
    Ok((content_type, content))
}

/// A content that must be an OCTET STRING holding one DER value.
fn octets<'a>(content: Option<AnyRef<'a>>, part: &'static str) -> Result<AnyRef<'a>, Malformed> {
    let content = content.ok_or_else(|| missing(part))?;
    if content.tag() != Tag::OctetString {
        return Err(missing(part));
    }
    AnyRef::from_der(content.value()).map_err(malformed(part))
}

/// The value inside an EXPLICIT tag (any tag: read leniently, only to count).
fn explicit(value: AnyRef<'_>) -> Option<AnyRef<'_>> {
    let mut reader = SliceReader::new(value.value()).ok()?;
    AnyRef::decode(&mut reader).ok()
}

/// The `n`th element of a SEQUENCE, if it is one and has that many readable elements.
fn nth(value: AnyRef<'_>, n: usize) -> Option<AnyRef<'_>> {
    sequence(value, "").ok()?.nth(n)?.ok()
}

fn first(value: AnyRef<'_>) -> Option<AnyRef<'_>> {
    nth(value, 0)
}

fn is(value: AnyRef<'_>, oid: ObjectIdentifier) -> bool {
    value.tag() == Tag::ObjectIdentifier && value.value() == oid.as_bytes()
}

/// Whether `value` is an OID directly under `arc` (one more arc, below 128).
fn under(value: AnyRef<'_>, arc: ObjectIdentifier) -> bool {
    let bytes = value.value();
    value.tag() == Tag::ObjectIdentifier
        && bytes.len() == arc.as_bytes().len().saturating_add(1)
        && bytes.starts_with(arc.as_bytes())
}

/// A non-negative INTEGER's value, saturating (a negative count derives nothing: 0).
fn integer(value: AnyRef<'_>) -> Option<u64> {
    let bytes = value.value();
    if value.tag() != Tag::Integer || bytes.is_empty() {
        return None;
    }
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        return Some(0);
    }
    Some(bytes.iter().fold(0u64, |n, &b| {
        n.checked_mul(256)
            .and_then(|n| n.checked_add(u64::from(b)))
            .unwrap_or(u64::MAX)
    }))
}

pub(crate) mod absent_password;
#[cfg(test)]
pub(crate) mod build;
#[cfg(test)]
mod tests;
