//! Loading and signing against certificates made here (rcgen; RSA keys from the `openssl` CLI,
//! as ring cannot generate RSA keys). The token flow is in `tests/it/client_certificate.rs`.

use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256};

use super::jwt::ASSERTION_LIFETIME_SECS;
use super::load::MAX_CERTIFICATE_BYTES;
use super::*;

/// An RSA 2048 PKCS#8 PEM key, made once per test run.
fn rsa_key_pem() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("openssl on PATH (apt-get install openssl)");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    })
}

fn self_signed(key_pem: &str, from: i64, until: i64) -> String {
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["app.test".into()]).unwrap();
    params.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
    params.self_signed(&key).unwrap().pem()
}

/// The wall clock when the tests started: certificates are made valid around it.
static NOW: std::sync::LazyLock<u64> = std::sync::LazyLock::new(crate::token::unix_now);

fn valid_cert() -> String {
    self_signed(rsa_key_pem(), *NOW as i64 - 86_400, *NOW as i64 + 86_400)
}

fn load(pem: String) -> Result<load::LoadedCertificate, String> {
    CertificateSource::from_pem(pem).load(*NOW)
}

#[test]
fn pem_in_any_order_loads_with_the_leaf_first() {
    let loaded = load(format!("{}{}", rsa_key_pem(), valid_cert())).unwrap();
    assert_eq!(loaded.chain.len(), 1);
    let loaded = load(format!("{}{}", valid_cert(), rsa_key_pem())).unwrap();
    assert_eq!(loaded.chain.len(), 1);
}

#[test]
fn bad_inputs_are_named() {
    let ec = rcgen::KeyPair::generate().unwrap();
    let ec_cert = rcgen::CertificateParams::new(vec!["ec.test".into()])
        .unwrap()
        .self_signed(&ec)
        .unwrap()
        .pem();
    let other_key = {
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let cases = [
        (valid_cert(), "no private key found"),
        (rsa_key_pem().to_owned(), "no certificate found"),
        (
            format!("{ec_cert}{}", ec.serialize_pem()),
            "only RSA certificates are supported",
        ),
        (
            format!("{}{other_key}", valid_cert()),
            "does not match the certificate",
        ),
        (
            format!(
                "{}{}",
                self_signed(rsa_key_pem(), *NOW as i64 - 86_400, *NOW as i64 - 60),
                rsa_key_pem()
            ),
            "the certificate expired on",
        ),
        (
            format!(
                "{}{}",
                self_signed(rsa_key_pem(), *NOW as i64 + 60, *NOW as i64 + 86_400),
                rsa_key_pem()
            ),
            "not yet valid: valid from",
        ),
        (
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".into(),
            "not valid base64",
        ),
        ("x".repeat(MAX_CERTIFICATE_BYTES + 1), "more than the 1 MiB"),
        (
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
                .into(),
            "the private key is encrypted",
        ),
    ];
    for (input, want) in cases {
        let err = load(input).unwrap_err();
        assert!(err.contains(want), "{err} / {want}");
        assert!(!err.contains("PRIVATE KEY-----"), "{err}");
    }
}

#[test]
fn build_errors_are_config_errors_naming_the_credential() {
    let err =
        ClientCertificateCredential::builder("t", "c", CertificateSource::from_pem(valid_cert()))
            .build_with_env_authority(None)
            .unwrap_err();
    assert!(err.message().starts_with(NAME), "{err}");
    assert!(err.message().contains("no private key"), "{err}");
}

#[test]
fn assertion_has_entra_shape_and_verifies() {
    for (signature, alg) in [
        (CertificateSignature::Ps256, "PS256"),
        (CertificateSignature::Rs256, "RS256"),
    ] {
        for send_chain in [false, true] {
            let loaded = load(format!("{}{}", valid_cert(), rsa_key_pem())).unwrap();
            let leaf = loaded.leaf().to_vec();
            let public = loaded.key.public().as_ref().to_vec();
            let signer = Signer::new(loaded, signature, send_chain);
            let aud = "https://login.test/contoso/oauth2/v2.0/token";
            let jwt = signer.sign(aud, "client-id", *NOW).unwrap();
            let parts: Vec<&str> = jwt.split('.').collect();
            assert_eq!(parts.len(), 3);
            let decode = |s: &str| -> serde_json::Value {
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap()
            };
            let (header, claims) = (decode(parts[0]), decode(parts[1]));
            assert_eq!(header["alg"], alg);
            assert_eq!(header["typ"], "JWT");
            let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &leaf);
            let sha256 = ring::digest::digest(&ring::digest::SHA256, &leaf);
            assert_eq!(header["x5t"], URL_SAFE_NO_PAD.encode(sha1));
            assert_eq!(header["x5t#S256"], URL_SAFE_NO_PAD.encode(sha256));
            assert_eq!(
                header.get("x5c").is_some(),
                send_chain,
                "x5c only when sending the chain"
            );
            if send_chain {
                let std = base64::engine::general_purpose::STANDARD;
                assert_eq!(header["x5c"][0], std.encode(&leaf));
            }
            let names: Vec<&str> = claims
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(names, ["aud", "iss", "sub", "jti", "nbf", "iat", "exp"]);
            assert_eq!(claims["aud"], aud);
            assert_eq!(claims["iss"], "client-id");
            assert_eq!(claims["sub"], "client-id");
            assert_eq!(claims["nbf"], *NOW);
            assert_eq!(claims["exp"], *NOW + ASSERTION_LIFETIME_SECS);
            let jti = claims["jti"].as_str().unwrap();
            assert_eq!(uuid::Uuid::parse_str(jti).unwrap().get_version_num(), 4);
            let verify_alg: &dyn ring::signature::VerificationAlgorithm = match signature {
                CertificateSignature::Ps256 => &RSA_PSS_2048_8192_SHA256,
                CertificateSignature::Rs256 => &RSA_PKCS1_2048_8192_SHA256,
            };
            let message = format!("{}.{}", parts[0], parts[1]);
            ring::signature::UnparsedPublicKey::new(verify_alg, &public)
                .verify(
                    message.as_bytes(),
                    &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
                )
                .expect("the signature verifies");
            let second = signer.sign(aud, "client-id", *NOW).unwrap();
            assert_ne!(jwt, second, "a new jti each time");
        }
    }
}

#[test]
fn debug_never_shows_key_material() {
    let pem = format!("{}{}", valid_cert(), rsa_key_pem());
    let source = CertificateSource::from_pem(pem.clone());
    let b = ClientCertificateCredential::builder("t", "c", source);
    let text = format!("{b:?}");
    let c = b.build_with_env_authority(None).unwrap();
    let text = format!("{text} {c:?} {c:#?}");
    let key_body: String = rsa_key_pem().lines().nth(1).unwrap().to_owned();
    assert!(!text.contains(&key_body), "{text}");
    assert!(
        text.contains("app.test") || text.contains("subject"),
        "{text}"
    );
}
