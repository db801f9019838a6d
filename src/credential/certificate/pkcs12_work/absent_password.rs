//! The MAC of a PKCS#12 archive exported without a password. RFC 7292 (B.1) turns the password
//! into a BMPString with a terminating zero, so an empty one is the two bytes `00 00`, which is
//! what p12-keystore derives from `""`; some exporters (Windows, .NET with a null password)
//! key the MAC with no bytes at all instead. OpenSSL and .NET try both forms when the password
//! is empty. p12-keystore cannot be given raw bytes, so the second form is checked here, and
//! the archive handed to it without its MAC once that MAC verified.

use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Decode, Encode, Tag, Tagged};
use pkcs12::kdf::Pkcs12KeyType;
use ring::hmac;

use super::{DATA, MAX_ITERATIONS_PER_RUN, content_info, first, integer, is, next, nth, sequence};

const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// `pfx` re-encoded without its MAC, if it has one that verifies with `password` as the key
/// derivation's input bytes (`&[]`: no password at all); else `None`. The MAC's derivation is
/// within the bound [`check`](super::check) applied (at most one run of its iterations more).
pub(crate) fn without_mac_keyed_by(pfx: &[u8], password: &[u8]) -> Option<Vec<u8>> {
    // PFX ::= SEQUENCE { version INTEGER, authSafe ContentInfo, macData MacData OPTIONAL }
    let outer = AnyRef::from_der(pfx).ok()?;
    let mut fields = sequence(outer, "").ok()?;
    let version = next(&mut fields, "").ok()?;
    let auth_safe = next(&mut fields, "").ok()?;
    let mac = next(&mut fields, "").ok()?;
    if fields.next().is_some() {
        return None;
    }
    let (content_type, content) = content_info(auth_safe, "").ok()?;
    let content = content.filter(|c| c.tag() == Tag::OctetString)?;
    if !is(content_type, DATA) || !mac_verifies(mac, password, content.value()) {
        return None;
    }
    let mut body = version.to_der().ok()?;
    body.extend(auth_safe.to_der().ok()?);
    AnyRef::new(Tag::Sequence, &body).ok()?.to_der().ok()
}

/// Whether `pfx`'s MAC verifies with `password` as the derivation's input bytes.
#[cfg(test)]
pub(crate) fn mac_keyed_by(pfx: &[u8], password: &[u8]) -> bool {
    without_mac_keyed_by(pfx, password).is_some()
}

/// `MacData ::= SEQUENCE { mac DigestInfo, macSalt OCTET STRING, iterations INTEGER DEFAULT 1 }`
/// with `DigestInfo ::= SEQUENCE { digestAlgorithm AlgorithmIdentifier, digest OCTET STRING }`:
/// whether its HMAC of `data` verifies with a key derived from `password`. A hash ring has no
/// HMAC for (SHA-224, SHA-512/224, SHA-512/256) does not verify.
fn mac_verifies(mac: AnyRef<'_>, password: &[u8], data: &[u8]) -> bool {
    let Some(digest_info) = first(mac) else {
        return false;
    };
    let (Some(algorithm), Some(expected), Some(salt)) = (
        first(digest_info).and_then(first),
        nth(digest_info, 1).filter(|d| d.tag() == Tag::OctetString),
        nth(mac, 1).filter(|s| s.tag() == Tag::OctetString),
    ) else {
        return false;
    };
    let iterations = match nth(mac, 2) {
        None => Some(1),
        Some(count) => integer(count),
    };
    let Some(iterations) = iterations.filter(|n| (1..=MAX_ITERATIONS_PER_RUN).contains(n)) else {
        return false;
    };
    // Within i32: at most MAX_ITERATIONS_PER_RUN.
    let Ok(rounds) = i32::try_from(iterations) else {
        return false;
    };
    let salt = salt.value();
    let (key, mac_algorithm) = if is(algorithm, SHA1) {
        (
            mac_key::<sha1::Sha1>(password, salt, rounds),
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        )
    } else if is(algorithm, SHA256) {
        (
            mac_key::<sha2::Sha256>(password, salt, rounds),
            hmac::HMAC_SHA256,
        )
    } else if is(algorithm, SHA384) {
        (
            mac_key::<sha2::Sha384>(password, salt, rounds),
            hmac::HMAC_SHA384,
        )
    } else if is(algorithm, SHA512) {
        (
            mac_key::<sha2::Sha512>(password, salt, rounds),
            hmac::HMAC_SHA512,
        )
    } else {
        return false;
    };
    hmac::verify(&hmac::Key::new(mac_algorithm, &key), data, expected.value()).is_ok()
}

/// RFC 7292 B.2's derivation with ID 3 (a MAC key), `password` being its input bytes as they
/// are, by the `pkcs12` crate (p12-keystore's own); one hash long, an HMAC key's length.
pub(crate) fn mac_key<D>(password: &[u8], salt: &[u8], rounds: i32) -> Vec<u8>
where
    D: sha2::digest::Digest
        + sha2::digest::FixedOutputReset
        + sha2::digest::block_api::BlockSizeUser,
{
    let length = <D as sha2::digest::Digest>::output_size();
    pkcs12::kdf::derive_key::<D>(password, salt, Pkcs12KeyType::Mac, rounds, length)
}

/// `pfx` (a SHA-256 MAC) with its MAC computed again keyed by `password` as input bytes: an
/// archive as an exporter keying it with no bytes at all writes it.
#[cfg(test)]
pub(crate) fn rekeyed(pfx: &[u8], password: &[u8]) -> Vec<u8> {
    let outer = AnyRef::from_der(pfx).unwrap();
    let mut fields = sequence(outer, "").unwrap();
    let _version = next(&mut fields, "").unwrap();
    let (_, content) = content_info(next(&mut fields, "").unwrap(), "").unwrap();
    let mac = next(&mut fields, "").unwrap();
    let digest_info = first(mac).unwrap();
    assert!(is(first(digest_info).and_then(first).unwrap(), SHA256));
    let old = nth(digest_info, 1).unwrap().value();
    let salt = nth(mac, 1).unwrap().value();
    let iterations = nth(mac, 2).and_then(integer).unwrap_or(1);
    let key = mac_key::<sha2::Sha256>(password, salt, i32::try_from(iterations).unwrap());
    let new = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &key),
        content.unwrap().value(),
    );
    let at = pfx.windows(old.len()).position(|w| w == old).unwrap();
    let mut out = pfx.to_vec();
    out[at..at + old.len()].copy_from_slice(new.as_ref());
    out
}
