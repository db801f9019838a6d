//! Certificates made at test time: RSA keys from the `openssl` CLI (ring, rcgen's backend,
//! cannot generate RSA keys), certificates and chains from rcgen, PKCS#12 archives from
//! `openssl pkcs12 -export`. Nothing is checked in.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use time::OffsetDateTime;

const OPENSSL_HINT: &str = "the `openssl` CLI is needed (apt-get install openssl)";

/// Runs openssl with `args`, `input` on stdin; its stdout.
pub fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); {OPENSSL_HINT}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A fresh RSA key of `bits` as PKCS#8 PEM (one per size per test process: 4096-bit
/// generation takes seconds).
pub fn rsa_key(bits: u32) -> String {
    static KEYS: OnceLock<Mutex<HashMap<u32, String>>> = OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    if let Some(key) = keys.lock().unwrap().get(&bits) {
        return key.clone();
    }
    let key = fresh_rsa_key(bits);
    keys.lock().unwrap().entry(bits).or_insert(key).clone()
}

/// A new RSA key every call (for a key that matches nothing).
pub fn fresh_rsa_key(bits: u32) -> String {
    let opt = format!("rsa_keygen_bits:{bits}");
    String::from_utf8(openssl(
        &["genpkey", "-algorithm", "RSA", "-pkeyopt", &opt],
        b"",
    ))
    .unwrap()
}

/// The same key as PKCS#1 (`RSA PRIVATE KEY`).
pub fn pkcs1(pkcs8_pem: &str) -> String {
    let out = String::from_utf8(openssl(&["pkey", "-traditional"], pkcs8_pem.as_bytes())).unwrap();
    assert!(out.contains("BEGIN RSA PRIVATE KEY"), "{out}");
    out
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn params(cn: &str, from: i64, until: i64) -> CertificateParams {
    let mut params = CertificateParams::new(vec![format!("{cn}.test")]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.not_before = OffsetDateTime::from_unix_timestamp(from).unwrap();
    params.not_after = OffsetDateTime::from_unix_timestamp(until).unwrap();
    params
}

/// A certificate and key, PEM.
pub struct Made {
    pub cert_pem: String,
    pub key_pem: String,
    /// The leaf's DER.
    pub leaf_der: Vec<u8>,
    /// Intermediate certificates (PEM), leaf's issuer first.
    pub chain_pem: Vec<String>,
}

impl Made {
    /// Certificate, chain and key in one PEM text.
    pub fn one_file(&self) -> String {
        format!(
            "{}{}{}",
            self.cert_pem,
            self.chain_pem.concat(),
            self.key_pem
        )
    }

    /// The JWKS oidc-provider needs to check this certificate's assertions.
    pub fn jwks(&self) -> serde_json::Value {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.leaf_der).unwrap();
        let x509_parser::public_key::PublicKey::RSA(rsa) = cert.public_key().parsed().unwrap()
        else {
            panic!("not an RSA certificate");
        };
        let strip = |b: &[u8]| {
            let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
            URL_SAFE_NO_PAD.encode(&b[start..])
        };
        let sha256 = ring::digest::digest(&ring::digest::SHA256, &self.leaf_der);
        serde_json::json!({"keys": [{
            "kty": "RSA",
            "n": strip(rsa.modulus),
            "e": strip(rsa.exponent),
            "x5c": [STANDARD.encode(&self.leaf_der)],
            "x5t#S256": URL_SAFE_NO_PAD.encode(sha256),
        }]})
    }

    /// A PKCS#12 archive of the certificate, chain and key. `password` `None` makes one
    /// without encryption or MAC; `legacy` uses OpenSSL 1.x's 3DES/RC2 (PBES1) encryption.
    pub fn pkcs12(&self, dir: &Path, password: Option<&str>, legacy: bool) -> Vec<u8> {
        let input = dir.join("p12-input.pem");
        std::fs::write(&input, self.one_file()).unwrap();
        let input = input.display().to_string();
        let mut args = vec!["pkcs12", "-export", "-in", &input];
        let pass;
        match password {
            Some(p) => {
                pass = format!("pass:{p}");
                args.extend(["-passout", &pass]);
            }
            None => args.extend([
                "-passout", "pass:", "-nomac", "-keypbe", "NONE", "-certpbe", "NONE",
            ]),
        }
        if legacy {
            args.extend([
                "-keypbe",
                "PBE-SHA1-3DES",
                "-certpbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha1",
            ]);
        }
        openssl(&args, b"")
    }
}

/// A PS256 JWT signed with the certificate's key, for assertions our credential would never
/// make (another audience, expired): the server's refusal is what the tests check.
pub fn sign_ps256(made: &Made, header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let body: String = made
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(body).unwrap();
    let key = ring::rsa::KeyPair::from_pkcs8(&der).unwrap();
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PSS_SHA256,
        &ring::rand::SystemRandom::new(),
        message.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// A self-signed certificate for an RSA key of `bits`, valid from a day ago to a day ahead.
pub fn self_signed(bits: u32) -> Made {
    self_signed_with(&rsa_key(bits), unix_now() - 86_400, unix_now() + 86_400)
}

/// A self-signed certificate for `key_pem`, valid `from`..`until` (Unix seconds).
pub fn self_signed_with(key_pem: &str, from: i64, until: i64) -> Made {
    let key = KeyPair::from_pem(key_pem).unwrap();
    let cert = params("app", from, until).self_signed(&key).unwrap();
    Made {
        cert_pem: cert.pem(),
        key_pem: key_pem.to_owned(),
        leaf_der: cert.der().to_vec(),
        chain_pem: Vec::new(),
    }
}

/// A leaf (RSA 2048) issued by an intermediate issued by a root (both ECDSA: the chain's
/// algorithms are the CA's business; only the leaf's key signs assertions).
pub fn with_intermediate() -> Made {
    let (from, until) = (unix_now() - 86_400, unix_now() + 86_400);
    let ca = |cn: &str| {
        let mut p = params(cn, from, until);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root = ca("root").self_signed(&root_key).unwrap();
    let mid_key = KeyPair::generate().unwrap();
    let mid = ca("intermediate")
        .signed_by(&mid_key, &root, &root_key)
        .unwrap();
    let key_pem = rsa_key(2048);
    let leaf_key = KeyPair::from_pem(&key_pem).unwrap();
    let leaf = params("app", from, until)
        .signed_by(&leaf_key, &mid, &mid_key)
        .unwrap();
    Made {
        cert_pem: leaf.pem(),
        key_pem,
        leaf_der: leaf.der().to_vec(),
        chain_pem: vec![mid.pem()],
    }
}
