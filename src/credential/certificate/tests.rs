//! Loading and signing against certificates made here (rcgen; RSA keys from the `openssl` CLI,
//! as ring cannot generate RSA keys, and PKCS#12 exports from it too). The token flow is in
//! `tests/it/client_certificate.rs`.

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

/// `openssl pkcs12 -export` of the test key and a valid certificate, password `p4ss`, with
/// `args` added.
fn openssl_pkcs12(args: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pem");
    std::fs::write(&input, format!("{}{}", valid_cert(), rsa_key_pem())).unwrap();
    let out = Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:p4ss", "-in"])
        .arg(&input)
        .args(args)
        .output()
        .expect("openssl on PATH (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn load_pkcs12(bytes: Vec<u8>) -> Result<load::LoadedCertificate, String> {
    CertificateSource::from_pkcs12(bytes, Some(crate::token::Secret::new("p4ss"))).load(*NOW)
}

#[test]
fn openssl_exports_pass_the_key_derivation_bound_and_load() {
    for (args, runs) in [
        (&[][..], 3),
        (&["-legacy"][..], 3),
        (&["-iter", "10000"][..], 3),
        (&["-nomac", "-keypbe", "NONE", "-certpbe", "NONE"][..], 0),
    ] {
        let bytes = openssl_pkcs12(args);
        let work = pkcs12_work::check(&bytes).unwrap();
        assert_eq!(work.runs, runs, "{args:?}");
        let per_run = if args.contains(&"10000") {
            10_000
        } else {
            2048
        };
        assert_eq!(work.iterations, runs * per_run, "{args:?}");
        let loaded = load_pkcs12(bytes).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_eq!(loaded.chain.len(), 1);
    }
}

#[test]
fn an_export_with_many_encrypted_items_is_refused_before_p12_keystore_reads_it() {
    // OpenSSL's export with its encrypted certificate content repeated 30 times. Had
    // p12-keystore read it, its MAC (now over other bytes) would fail first.
    let (contents, mac) = pkcs12_work::build::split(&openssl_pkcs12(&[]));
    let mut more = contents.clone();
    more.extend(std::iter::repeat_n(contents[0].clone(), 30));
    let err = load_pkcs12(pkcs12_work::build::pfx(&more, mac)).unwrap_err();
    assert!(
        err.starts_with(
            "the PKCS#12 archive needs 33 password key derivations (67584 iterations in all), \
             more than the limit of 16: a certificate with its key needs 3; re-export it"
        ),
        "{err}"
    );
    // Five keys at p12-keystore's per-item cap: 5 000 000 iterations asked for.
    use pkcs12_work::build::{Archive, Bag, Content, Kdf};
    let archive = Archive {
        mac: None,
        contents: vec![Content::Data(vec![
            Bag::Shrouded(Kdf::Pbkdf2(1_000_000));
            5
        ])],
    };
    let err = load_pkcs12(archive.der()).unwrap_err();
    assert!(
        err.contains("needs 5 password key derivations of 5000000 iterations in all"),
        "{err}"
    );
}

#[test]
fn a_damaged_export_is_an_error_not_a_panic() {
    let bytes = openssl_pkcs12(&[]);
    for len in [0, 1, 2, 4, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = load_pkcs12(bytes[..len].to_vec()).unwrap_err();
        assert!(
            err.starts_with("the PKCS#12 data is not a valid archive: its outer structure"),
            "{len}: {err}"
        );
    }
}

#[test]
fn a_panic_in_the_pkcs12_parser_is_an_error() {
    // The fuzz regression's archive (after its kind byte and its empty password's length),
    // given to the decoder without the count of key derivations that refuses it first.
    let input = include_bytes!("../../../fuzz/regressions/certificate/scrypt-cost-zero");
    let error = load::decode_pkcs12(&input[2..], "").unwrap_err();
    assert!(error.contains("parser panicked"), "{error}");
}
