//! Test archives written from a description (RFC 7292 layout, the `der` crate encoding each
//! value), with the work [`measure`](super::measure) should find in each. The encrypted bytes
//! are filler: only the structure and the key-derivation parameters matter here.

use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Decode, Encode, Tag, TagNumber};

use super::{DATA, ENCRYPTED_DATA, PBES2, PBKDF2, Run, SCRYPT, SECRET_BAG, SHROUDED_KEY_BAG, Work};

const PBE_SHA1_3DES: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.1.3");
const HMAC_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.2.9");
const AES_256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const KEY_BAG: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.1");
const CERT_BAG: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.12.10.1.3");
const X509_CERTIFICATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.22.1");
const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// How an item is encrypted.
#[derive(Clone, Debug)]
pub(crate) enum Kdf {
    /// pkcs-12PbeIds SHA-1 and 3DES (legacy exports), with this iteration count.
    Pkcs12Pbe(u64),
    /// PBES2 with PBKDF2 (HMAC-SHA256, AES-256-CBC: OpenSSL 3's default).
    Pbkdf2(u64),
    /// PBES2 with scrypt: N, r, p.
    Scrypt(u64, u64, u64),
    /// AES-256-CBC with no password-based scheme: nothing to derive.
    NotPassword,
    /// PBES2 whose parameters are not a SEQUENCE (unreadable).
    Unreadable,
}

/// A SafeBag.
#[derive(Clone, Debug)]
pub(crate) enum Bag {
    Cert,
    Key,
    Shrouded(Kdf),
    Secret(Kdf),
}

/// A ContentInfo of the AuthenticatedSafe.
#[derive(Clone, Debug)]
pub(crate) enum Content {
    Data(Vec<Bag>),
    Encrypted(Kdf),
}

/// A PFX: MAC iterations (`None`: no MAC) and contents.
#[derive(Clone, Debug)]
pub(crate) struct Archive {
    pub(crate) mac: Option<u64>,
    pub(crate) contents: Vec<Content>,
}

impl Archive {
    /// OpenSSL 3's default export: MAC, encrypted certificates, a shrouded key, at 2048.
    pub(crate) fn openssl_default() -> Self {
        Archive {
            mac: Some(2048),
            contents: vec![
                Content::Encrypted(Kdf::Pbkdf2(2048)),
                Content::Data(vec![Bag::Shrouded(Kdf::Pbkdf2(2048))]),
            ],
        }
    }

    pub(crate) fn der(&self) -> Vec<u8> {
        let contents: Vec<Vec<u8>> = self.contents.iter().map(Content::der).collect();
        pfx(&contents, self.mac.map(mac_data))
    }

    /// The work `measure` should find.
    pub(crate) fn work(&self) -> Work {
        let mut work = Work::default();
        if let Some(iterations) = self.mac {
            work.add(Run::iterations(iterations));
        }
        for content in &self.contents {
            match content {
                Content::Encrypted(kdf) => kdf.count(&mut work),
                Content::Data(bags) => {
                    for bag in bags {
                        if let Bag::Shrouded(kdf) | Bag::Secret(kdf) = bag {
                            kdf.count(&mut work);
                        }
                    }
                }
            }
        }
        work
    }
}

impl Kdf {
    fn count(&self, work: &mut Work) {
        match *self {
            Kdf::Pkcs12Pbe(n) | Kdf::Pbkdf2(n) => work.add(Run::iterations(n)),
            Kdf::Scrypt(n, r, p) => work.add(Run::scrypt(n, r, p)),
            Kdf::NotPassword => {}
            Kdf::Unreadable => work.add(Run::UNREAD),
        }
    }

    /// The AlgorithmIdentifier.
    fn der(&self) -> Vec<u8> {
        let salt = octets(&[0x5a; 8]);
        let aes = seq(&[oid(AES_256_CBC), octets(&[0xa5; 16])]);
        match *self {
            Kdf::Pkcs12Pbe(n) => seq(&[oid(PBE_SHA1_3DES), seq(&[salt, int(n)])]),
            Kdf::Pbkdf2(n) => {
                let prf = seq(&[oid(HMAC_SHA256), null()]);
                let kdf = seq(&[oid(PBKDF2), seq(&[salt, int(n), prf])]);
                seq(&[oid(PBES2), seq(&[kdf, aes])])
            }
            Kdf::Scrypt(n, r, p) => {
                let kdf = seq(&[oid(SCRYPT), seq(&[salt, int(n), int(r), int(p)])]);
                seq(&[oid(PBES2), seq(&[kdf, aes])])
            }
            Kdf::NotPassword => aes,
            Kdf::Unreadable => seq(&[oid(PBES2), octets(b"not parameters")]),
        }
    }

    /// EncryptedPrivateKeyInfo with filler bytes (also a PEM `ENCRYPTED PRIVATE KEY`'s DER).
    pub(crate) fn private_key_info(&self) -> Vec<u8> {
        seq(&[self.der(), octets(&[0x42; 48])])
    }
}

impl Bag {
    fn der(&self) -> Vec<u8> {
        match self {
            Bag::Cert => {
                let cert = seq(&[oid(X509_CERTIFICATE), explicit0(&octets(&[0x30; 40]))]);
                seq(&[oid(CERT_BAG), explicit0(&cert)])
            }
            Bag::Key => {
                let key = seq(&[int(0), seq(&[oid(RSA), null()]), octets(&[0x30; 40])]);
                seq(&[oid(KEY_BAG), explicit0(&key)])
            }
            Bag::Shrouded(kdf) => seq(&[oid(SHROUDED_KEY_BAG), explicit0(&kdf.private_key_info())]),
            Bag::Secret(kdf) => {
                let secret = seq(&[
                    oid(AES_256_CBC),
                    explicit0(&octets(&kdf.private_key_info())),
                ]);
                seq(&[oid(SECRET_BAG), explicit0(&secret)])
            }
        }
    }
}

impl Content {
    pub(crate) fn der(&self) -> Vec<u8> {
        match self {
            Content::Data(bags) => {
                let bags: Vec<Vec<u8>> = bags.iter().map(Bag::der).collect();
                seq(&[oid(DATA), explicit0(&octets(&seq(&bags)))])
            }
            Content::Encrypted(kdf) => {
                let encrypted = tlv(
                    Tag::ContextSpecific {
                        constructed: false,
                        number: TagNumber(0),
                    },
                    &[0x42; 64],
                );
                let info = seq(&[oid(DATA), kdf.der(), encrypted]);
                seq(&[oid(ENCRYPTED_DATA), explicit0(&seq(&[int(0), info]))])
            }
        }
    }
}

/// A PFX of these AuthenticatedSafe contents (each a ContentInfo) and MacData.
pub(crate) fn pfx(contents: &[Vec<u8>], mac: Option<Vec<u8>>) -> Vec<u8> {
    let auth_safe = seq(&[oid(DATA), explicit0(&octets(&seq(contents)))]);
    let mut fields = vec![int(3), auth_safe];
    fields.extend(mac);
    seq(&fields)
}

/// MacData; an iteration count of 1 is left out (the DEFAULT, which DER omits).
fn mac_data(iterations: u64) -> Vec<u8> {
    let digest = seq(&[seq(&[oid(SHA256), null()]), octets(&[0x11; 32])]);
    let mut fields = vec![digest, octets(&[0x22; 8])];
    if iterations != 1 {
        fields.push(int(iterations));
    }
    seq(&fields)
}

pub(crate) fn tlv(tag: Tag, content: &[u8]) -> Vec<u8> {
    AnyRef::new(tag, content)
        .and_then(|value| value.to_der())
        .expect("a test value DER can hold")
}

pub(crate) fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(Tag::Sequence, &parts.concat())
}

fn explicit0(inner: &[u8]) -> Vec<u8> {
    let tag = Tag::ContextSpecific {
        constructed: true,
        number: TagNumber(0),
    };
    tlv(tag, inner)
}

fn octets(bytes: &[u8]) -> Vec<u8> {
    tlv(Tag::OctetString, bytes)
}

fn oid(oid: ObjectIdentifier) -> Vec<u8> {
    oid.to_der().expect("an OID encodes")
}

fn int(n: u64) -> Vec<u8> {
    n.to_der().expect("an integer encodes")
}

fn null() -> Vec<u8> {
    tlv(Tag::Null, &[])
}

/// The AuthenticatedSafe contents (each a ContentInfo's DER) and the MacData DER of an
/// archive, to rebuild a real export with more items.
pub(crate) fn split(archive: &[u8]) -> (Vec<Vec<u8>>, Option<Vec<u8>>) {
    let outer = AnyRef::from_der(archive).expect("one DER value");
    let mut fields = super::sequence(outer, "PFX").expect("a PFX");
    fields.next();
    let auth_safe = fields.next().expect("authSafe").expect("authSafe");
    let (_, content) = super::content_info(auth_safe, "authSafe").expect("authSafe");
    let mac = fields
        .next()
        .map(|mac| mac.expect("macData").to_der().expect("macData"));
    let safe = super::octets(content, "authSafe").expect("data");
    let contents = super::sequence(safe, "AuthenticatedSafe")
        .expect("AuthenticatedSafe")
        .map(|content| content.expect("ContentInfo").to_der().expect("ContentInfo"))
        .collect();
    (contents, mac)
}
