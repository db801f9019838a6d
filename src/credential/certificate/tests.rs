//! Loading and signing against certificates made here (rcgen; RSA keys from the `openssl` CLI,
//! as ring cannot generate RSA keys, and PKCS#12 exports from it too). The token flow is in
//! `tests/it/client_certificate.rs`.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256};

use super::jwt::ASSERTION_LIFETIME_SECS;
use super::load::MAX_CERTIFICATE_BYTES;
use super::*;
use crate::blocking_read::tests::within_a_minute;

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
                self_signed(rsa_key_pem(), *NOW as i64 + 3_600, *NOW as i64 + 86_400),
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
            let signer = Signer::new(loaded, Some(signature), send_chain);
            let aud = "https://login.test/contoso/oauth2/v2.0/token";
            let jwt = signer.sign("contoso", aud, "client-id", *NOW).unwrap();
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
            let second = signer.sign("contoso", aud, "client-id", *NOW).unwrap();
            assert_ne!(jwt, second, "a new jti each time");
        }
    }
}

/// The decoded header of an assertion `credential` signs now for its configured tenant.
fn assertion_header(credential: &ClientCertificateCredential) -> serde_json::Value {
    let tenant = credential.inner.inner.tenants.tenant().unwrap().to_owned();
    let aud = format!("https://login.test/{tenant}/oauth2/token");
    let jwt = credential
        .signer
        .sign(&tenant, &aud, "client-id", *NOW)
        .unwrap();
    let header = jwt.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

/// The decoded header and claims of the assertion a token request to `credential` naming
/// the tenant `requested` (or none) would send: the tenant resolved as a request's is, the
/// assertion made by the credential's own source for that tenant's token endpoint.
async fn assertion_sent(
    credential: &ClientCertificateCredential,
    requested: Option<&str>,
) -> (serde_json::Value, serde_json::Value) {
    let tenant = credential
        .inner
        .inner
        .tenants
        .resolve_required(requested)
        .unwrap();
    let jwt = credential.inner.assertion_for(tenant).await.unwrap();
    let decode = |part: &str| -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    let mut parts = jwt.expose_secret().split('.');
    let header = decode(parts.next().unwrap());
    (header, decode(parts.next().unwrap()))
}

/// AD FS does not accept PS256: with the tenant `adfs` (as `AZURE_TENANT_ID=adfs` gives
/// EnvironmentCredential, which sets no signature) the assertion is RS256 with `x5t`, as MSAL
/// sends for an AD FS authority, unless a signature was chosen; its audience is AD FS's token
/// endpoint. Each assertion is the one a request would send, its tenant resolved as the
/// request's.
#[tokio::test]
async fn the_adfs_tenant_signs_rs256_unless_a_signature_was_chosen() {
    let pem = format!("{}{}", valid_cert(), rsa_key_pem());
    let builder = |tenant: &str| {
        ClientCertificateCredential::builder(tenant, "c", CertificateSource::from_pem(pem.clone()))
    };
    let leaf = load(pem.clone()).unwrap().leaf().to_vec();
    let sha1 = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &leaf,
    ));
    const ADFS_TOKEN: &str = "/adfs/oauth2/token";
    for tenant in ["adfs", "ADFS", "AdFs"] {
        let credential = builder(tenant).build_with_env_authority(None).unwrap();
        // A request naming another tenant is sent to AD FS all the same.
        for requested in [None, Some("contoso")] {
            let (header, claims) = assertion_sent(&credential, requested).await;
            assert_eq!(header["alg"], "RS256", "{tenant}");
            assert_eq!(header["x5t"], sha1, "{tenant}");
            let aud = claims["aud"].as_str().unwrap();
            assert!(aud.ends_with(ADFS_TOKEN), "{tenant}: {aud}");
        }
        // An explicit choice is kept, PS256 included.
        for (signature, alg) in [
            (CertificateSignature::Ps256, "PS256"),
            (CertificateSignature::Rs256, "RS256"),
        ] {
            let credential = builder(tenant)
                .signature(signature)
                .build_with_env_authority(None)
                .unwrap();
            let (header, claims) = assertion_sent(&credential, None).await;
            assert_eq!(header["alg"], alg, "{tenant}");
            assert!(claims["aud"].as_str().unwrap().ends_with(ADFS_TOKEN));
        }
    }
    // Other tenants keep PS256, and their explicit choice.
    for tenant in [
        "contoso",
        "organizations",
        "adfs2",
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
    ] {
        let credential = builder(tenant).build_with_env_authority(None).unwrap();
        let (header, claims) = assertion_sent(&credential, None).await;
        assert_eq!(header["alg"], "PS256", "{tenant}");
        let aud = claims["aud"].as_str().unwrap();
        assert!(
            aud.ends_with(&format!("/{tenant}/oauth2/v2.0/token")),
            "{aud}"
        );
        // A request of theirs resolved to `adfs` (additionally allowed) gets RS256 all the same.
        let credential = builder(tenant)
            .additionally_allowed_tenants(["*"])
            .build_with_env_authority(None)
            .unwrap();
        for adfs in ["adfs", "ADFS"] {
            let (header, claims) = assertion_sent(&credential, Some(adfs)).await;
            assert_eq!(header["alg"], "RS256", "{tenant} / {adfs}");
            assert_eq!(header["x5t"], sha1, "{tenant} / {adfs}");
            let aud = claims["aud"].as_str().unwrap();
            assert!(aud.ends_with(ADFS_TOKEN), "{tenant} / {adfs}: {aud}");
        }
        let credential = builder(tenant)
            .signature(CertificateSignature::Rs256)
            .build_with_env_authority(None)
            .unwrap();
        assert_eq!(assertion_sent(&credential, None).await.0["alg"], "RS256");
    }
}

/// A signing that fails or panics is this credential's own failure, named as signing: not as
/// "the client assertion callback" a user of ClientAssertionCredential supplies.
#[tokio::test]
async fn a_signing_failure_or_panic_is_named_as_signing_not_a_callback() {
    use crate::CredentialExt as _;

    let pem = format!("{}{}", valid_cert(), rsa_key_pem());
    let credential = |sign: fn(&AssertionRequest) -> Result<String, String>| {
        let signer = Arc::new(Signer::new(load(pem.clone()).unwrap(), None, false));
        ClientCertificateCredential::builder("t", "c", CertificateSource::from_pem(pem.clone()))
            .assemble(signer, sign, None)
            .unwrap()
    };
    let failing = credential(|_| Err("signing the client assertion failed (ring refused)".into()));
    let err = failing.get_token(["s/.default"]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert_eq!(err.credential(), NAME);
    assert_eq!(
        err.message(),
        "signing the client assertion failed (ring refused)"
    );

    let panicking = credential(|_| panic!("the signer exploded"));
    let err = panicking.get_token(["s/.default"]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert_eq!(err.credential(), NAME);
    assert!(
        err.message()
            .starts_with("signing the client assertion did not finish: "),
        "{err}"
    );
    assert!(!err.message().contains("callback"), "{err}");
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

/// The test key as PKCS#1 (`RSA PRIVATE KEY`), converted by `openssl pkey -traditional`.
fn rsa_key_pkcs1_pem() -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("key.pem");
    std::fs::write(&input, rsa_key_pem()).unwrap();
    let out = Command::new("openssl")
        .args(["pkey", "-traditional", "-in"])
        .arg(&input)
        .output()
        .expect("openssl on PATH (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One key written as PKCS#1 in one file and PKCS#8 in the other is one key (the same public
/// key), not "2 private keys".
#[test]
fn one_key_as_pkcs1_and_pkcs8_in_the_two_files_counts_once() {
    let pkcs1 = rsa_key_pkcs1_pem();
    assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"), "{pkcs1}");
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    std::fs::write(&cert_path, format!("{}{pkcs1}", valid_cert())).unwrap();
    let key_path = dir.path().join("key.pem");
    std::fs::write(&key_path, rsa_key_pem()).unwrap();
    let source = CertificateSource::from_pem_files(&cert_path, &key_path);
    source.load(*NOW).unwrap_or_else(|e| panic!("{e}"));
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

/// An archive exported without a password whose MAC is keyed with no bytes at all (as some
/// Windows exports are), not with the empty BMPString (`00 00`) p12-keystore derives from "":
/// read with no password or an empty one, as OpenSSL reads it.
#[test]
fn an_archive_whose_mac_is_keyed_with_no_bytes_loads_without_a_password() {
    use pkcs12_work::absent_password::{mac_keyed_by, rekeyed};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pem");
    std::fs::write(&input, format!("{}{}", valid_cert(), rsa_key_pem())).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .arg("pkcs12")
            .args(args)
            .output()
            .expect("openssl on PATH (apt-get install openssl)");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), out.stdout, stderr)
    };
    let (ok, exported, stderr) = openssl(&[
        "-export",
        "-passout",
        "pass:",
        "-in",
        input.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    // The derivation here gives OpenSSL's own MAC, keyed with the empty BMPString.
    assert!(mac_keyed_by(&exported, &[0, 0]));
    assert!(!mac_keyed_by(&exported, &[]));

    let no_bytes = rekeyed(&exported, &[]);
    assert!(mac_keyed_by(&no_bytes, &[]));
    // OpenSSL, which tries both forms, reads it.
    let path = dir.path().join("no-bytes.pfx");
    std::fs::write(&path, &no_bytes).unwrap();
    let (ok, _, stderr) = openssl(&["-in", path.to_str().unwrap(), "-passin", "pass:", "-noenc"]);
    assert!(ok, "{stderr}");

    for password in [None, Some("")] {
        let source = CertificateSource::from_pkcs12(
            no_bytes.clone(),
            password.map(crate::token::Secret::new),
        );
        let loaded = source
            .load(*NOW)
            .unwrap_or_else(|e| panic!("{password:?}: {e}"));
        assert_eq!(loaded.chain.len(), 1);
    }
    // A password given is that password.
    let err = CertificateSource::from_pkcs12(no_bytes, Some(crate::token::Secret::new("x")))
        .load(*NOW)
        .unwrap_err();
    assert!(err.starts_with("the PKCS#12 password is wrong"), "{err}");
}

/// An archive without a password whose MAC verifies keyed with no bytes, but whose contents
/// then fail to read: they are the exporter's (the MAC covers them), so the failure is theirs
/// being keyed in a form not read here (legacy PBES1 keyed with no bytes decrypts to garbage,
/// now and then with valid padding); the answer is the re-export hint, not "not a valid
/// archive". Stood in for by authenticated bags that do not parse (a certificate whose inner
/// SEQUENCE is tagged SET), whatever p12-keystore's error for them.
#[test]
fn contents_failing_after_the_no_bytes_mac_verified_get_the_re_export_hint() {
    use pkcs12_work::absent_password::{mac_keyed_by, rekeyed};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pem");
    std::fs::write(&input, format!("{}{}", valid_cert(), rsa_key_pem())).unwrap();
    let out = Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:"])
        .args(["-keypbe", "NONE", "-certpbe", "NONE", "-in"])
        .arg(&input)
        .output()
        .expect("openssl on PATH (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&input)
        .output()
        .unwrap()
        .stdout;
    let mut bytes = out.stdout;
    let at = bytes
        .windows(der.len())
        .position(|w| w == der.as_slice())
        .expect("the certificate, unencrypted");
    // `30 82 LL LL` then the TBSCertificate's SEQUENCE tag.
    assert_eq!(bytes[at + 4], 0x30);
    bytes[at + 4] = 0x31;
    let no_bytes = rekeyed(&bytes, &[]);
    assert!(mac_keyed_by(&no_bytes, &[]));
    let err = CertificateSource::from_pkcs12(no_bytes, None)
        .load(*NOW)
        .unwrap_err();
    assert!(
        err.starts_with("the PKCS#12 archive has no password, in a form its encrypted contents")
            && err.contains("openssl pkcs12 -export"),
        "{err}"
    );
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

// ---------------------------------------------------------------------------------------------
// PEM `ENCRYPTED PRIVATE KEY` (PKCS#8 EncryptedPrivateKeyInfo) with the certificate password
// ---------------------------------------------------------------------------------------------

/// The test key as an `ENCRYPTED PRIVATE KEY`: `openssl pkcs8 -topk8` with `args`, password
/// `password`.
fn openssl_encrypted_key(args: &[&str], password: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("key.pem");
    std::fs::write(&input, rsa_key_pem()).unwrap();
    let out = Command::new("openssl")
        .args(["pkcs8", "-topk8", "-passout"])
        .arg(format!("pass:{password}"))
        .arg("-in")
        .arg(&input)
        .args(args)
        .output()
        .expect("openssl on PATH (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = String::from_utf8(out.stdout).unwrap();
    assert!(
        pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{pem}"
    );
    pem
}

fn load_encrypted(pem: String, password: Option<&str>) -> Result<load::LoadedCertificate, String> {
    CertificateSource::from_pem_with_password(pem, password.map(crate::token::Secret::new))
        .load(*NOW)
}

/// A PEM `ENCRYPTED PRIVATE KEY` of this DER.
fn pem_section(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\n{}\n-----END ENCRYPTED PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

#[test]
fn an_encrypted_pem_key_decrypts_with_the_password_and_signs_as_the_plain_key() {
    let cert = valid_cert();
    let plain = load(format!("{cert}{}", rsa_key_pem())).unwrap();
    let message = b"header.claims";
    let rng = ring::rand::SystemRandom::new();
    let sign = |loaded: &load::LoadedCertificate| {
        // PKCS#1 v1.5 is deterministic: the same key gives the same signature.
        let mut signature = vec![0; loaded.key.public().modulus_len()];
        loaded
            .key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &rng,
                message,
                &mut signature,
            )
            .unwrap();
        signature
    };
    let expected = sign(&plain);
    for args in [
        // OpenSSL 3's default: PBES2, PBKDF2-HMAC-SHA256 at 2048, AES-256-CBC.
        &[][..],
        &["-v2", "aes-128-cbc", "-v2prf", "hmacWithSHA1"][..],
        &["-v2", "aes-256-cbc", "-iter", "100000"][..],
        &["-v2", "des3"][..],
        &[
            "-scrypt",
            "-scrypt_N",
            "1024",
            "-scrypt_r",
            "8",
            "-scrypt_p",
            "1",
        ][..],
    ] {
        let key = openssl_encrypted_key(args, "p4ss");
        let loaded = load_encrypted(format!("{cert}{key}"), Some("p4ss"))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_eq!(
            loaded.key.public().as_ref(),
            plain.key.public().as_ref(),
            "{args:?}"
        );
        assert_eq!(loaded.leaf(), plain.leaf(), "{args:?}");
        assert_eq!(sign(&loaded), expected, "{args:?}");
        // An assertion signed with it verifies with the plain key's public key, and names the
        // same certificate (x5t#S256).
        let public = plain.key.public().as_ref().to_vec();
        let header_of = |loaded: load::LoadedCertificate| {
            let signer = Signer::new(loaded, Some(CertificateSignature::Ps256), false);
            let jwt = signer
                .sign("t", "https://login.test/t", "client", *NOW)
                .unwrap();
            let parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
            ring::signature::UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, &public)
                .verify(
                    format!("{}.{}", parts[0], parts[1]).as_bytes(),
                    &URL_SAFE_NO_PAD.decode(&parts[2]).unwrap(),
                )
                .expect("the signature verifies with the plain key");
            parts[0].clone()
        };
        assert_eq!(
            header_of(loaded),
            header_of(load(format!("{cert}{}", rsa_key_pem())).unwrap()),
            "{args:?}"
        );
    }
}

#[test]
fn every_source_that_takes_a_password_decrypts_a_pem_key() {
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    let one_path = dir.path().join("both.pem");
    let key = openssl_encrypted_key(&[], "p4ss");
    std::fs::write(&cert_path, valid_cert()).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    std::fs::write(&one_path, format!("{key}{}", valid_cert())).unwrap();
    let password = || Some(crate::token::Secret::new("p4ss"));
    for source in [
        // AZURE_CLIENT_CERTIFICATE_PATH with AZURE_CLIENT_CERTIFICATE_PASSWORD.
        CertificateSource::from_path(&one_path, password()),
        CertificateSource::from_pem_files_with_password(&cert_path, &key_path, password()),
        CertificateSource::from_pem_with_password(std::fs::read(&one_path).unwrap(), password()),
    ] {
        let shown = format!("{source:?}");
        assert!(!shown.contains("p4ss"), "{shown}");
        let loaded = source.load(*NOW).unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert_eq!(loaded.chain.len(), 1);
    }
    // Through the builder, as EnvironmentCredential builds it.
    let credential = ClientCertificateCredential::builder(
        "t",
        "c",
        CertificateSource::from_path(&one_path, password()),
    )
    .build_with_env_authority(None)
    .unwrap();
    assert!(!format!("{credential:?}").contains("p4ss"));
    // A password given for a PEM key that is not encrypted is not used (as before).
    let plain = format!("{}{}", valid_cert(), rsa_key_pem());
    load_encrypted(plain, Some("unused")).unwrap();
}

#[test]
fn an_encrypted_pem_key_without_a_password_says_to_give_it() {
    let pem = format!("{}{}", valid_cert(), openssl_encrypted_key(&[], "p4ss"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.pem");
    std::fs::write(&path, &pem).unwrap();
    for err in [
        load(pem.clone()).unwrap_err(),
        load_encrypted(pem, None).unwrap_err(),
        CertificateSource::from_path(&path, None)
            .load(*NOW)
            .unwrap_err(),
    ] {
        assert!(
            err.starts_with(
                "the private key is encrypted (ENCRYPTED PRIVATE KEY) and no password was given: \
                 give the certificate password (AZURE_CLIENT_CERTIFICATE_PASSWORD"
            ),
            "{err}"
        );
    }
}

#[test]
fn a_wrong_password_is_named_and_never_shown() {
    let wrong = "Wr0ng-pa55word-7f3a";
    for args in [
        &[][..],
        &["-v2", "des3"][..],
        &[
            "-scrypt",
            "-scrypt_N",
            "1024",
            "-scrypt_r",
            "8",
            "-scrypt_p",
            "1",
        ][..],
    ] {
        let pem = format!("{}{}", valid_cert(), openssl_encrypted_key(args, "p4ss"));
        let source = CertificateSource::from_pem_with_password(
            pem.clone(),
            Some(crate::token::Secret::new(wrong)),
        );
        let err = source.load(*NOW).unwrap_err();
        assert!(
            err.starts_with("the private key's password is wrong"),
            "{args:?}: {err}"
        );
        assert!(!err.contains(wrong) && !err.contains("p4ss"), "{err}");
        let err = ClientCertificateCredential::builder("t", "c", source.clone())
            .build_with_env_authority(None)
            .unwrap_err();
        let text = format!("{err} {err:?} {source:?}");
        assert!(text.contains("password is wrong"), "{text}");
        assert!(!text.contains(wrong), "{text}");
    }
    // An empty password is a wrong one too.
    let pem = format!("{}{}", valid_cert(), openssl_encrypted_key(&[], "p4ss"));
    let err = load_encrypted(pem, Some("")).unwrap_err();
    assert!(
        err.starts_with("the private key's password is wrong"),
        "{err}"
    );
}

#[test]
fn an_encrypted_pem_key_asking_for_too_much_work_is_refused_before_any() {
    use pkcs12_work::build::Kdf;
    let started = std::time::Instant::now();
    let cert = valid_cert();
    let password = Some("p4ss");
    // A real OpenSSL encryption one iteration over the per-item cap of a PKCS#12 archive.
    let over = openssl_encrypted_key(&["-iter", "1000001"], "p4ss");
    let err = load_encrypted(format!("{cert}{over}"), password).unwrap_err();
    assert!(
        err.starts_with(
            "the encrypted private key asks for 1000001 key-derivation iterations, more than \
             the limit of 1000000 for one item; re-encrypt it"
        ),
        "{err}"
    );
    assert!(err.contains("openssl pkcs8 -topk8"), "{err}");
    // Absurd parameters (filler ciphertext: refused before it is read).
    for (kdf, want) in [
        (
            Kdf::Pbkdf2(4_000_000_000),
            "asks for 4000000000 key-derivation iterations",
        ),
        (
            Kdf::Scrypt(1 << 30, 8, 1),
            "asks for 8589934592 key-derivation iterations",
        ),
        (
            Kdf::Scrypt(1 << 10, 600, 1),
            "is encrypted with scrypt needing 76 MiB of memory, more than the limit of 65 MiB",
        ),
        // pkcs5 0.8.1 panics on N = 0.
        (Kdf::Scrypt(0, 8, 1), "scrypt at a cost (N) of 0"),
        // N = 1 passes N·r·p and 128·N·r, but scrypt would fill 120 MiB of lanes (128·r·p).
        (
            Kdf::Scrypt(1, 15, 65_535),
            "scrypt at a cost (N) of 1, which is invalid",
        ),
        // The lanes counted with the table: 67.14 MiB.
        (
            Kdf::Scrypt(2, 25_000, 20),
            "is encrypted with scrypt needing 68 MiB of memory, more than the limit of 65 MiB",
        ),
    ] {
        let der = kdf.private_key_info();
        let err = encrypted_key::check_work(&der).unwrap_err();
        assert!(err.contains(want), "{kdf:?}: {err}");
        let err = load_encrypted(format!("{cert}{}", pem_section(&der)), password).unwrap_err();
        assert!(
            err.starts_with("the encrypted private key ") && err.contains(want),
            "{kdf:?}: {err}"
        );
    }
    // Within the bound: the work is counted as for PKCS#12, one run.
    let work = encrypted_key::check_work(&Kdf::Pbkdf2(2048).private_key_info()).unwrap();
    assert_eq!((work.runs, work.iterations), (1, 2048));
    // scrypt at OpenSSL's default (N = 2^14, r = 8, p = 1) and at N = 2^15.
    for n in [1 << 14, 1 << 15] {
        let work = encrypted_key::check_work(&Kdf::Scrypt(n, 8, 1).private_key_info()).unwrap();
        assert_eq!(work.largest_scrypt_memory, 128 * 8 * (n + 1), "{n}");
    }
    // Two keys are refused before either is decrypted.
    let two = format!("{cert}{over}{}", rsa_key_pem());
    let err = load_encrypted(two, password).unwrap_err();
    assert!(err.starts_with("2 private keys found"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn unsupported_and_damaged_encrypted_keys_are_errors_not_panics() {
    let cert = valid_cert();
    // OpenSSL 1.0's `-v1` PKCS#12 scheme and the traditional `Proc-Type` encryption.
    let v1 = openssl_encrypted_key(&["-v1", "PBE-SHA1-3DES"], "p4ss");
    let err = load_encrypted(format!("{cert}{v1}"), Some("p4ss")).unwrap_err();
    assert!(
        err.contains("a legacy PKCS#12 scheme") && err.contains("openssl pkcs8 -topk8 -v2"),
        "{err}"
    );
    let traditional = Command::new("openssl")
        .args(["rsa", "-aes256", "-traditional", "-passout", "pass:p4ss"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(rsa_key_pem().as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let traditional = String::from_utf8(traditional.stdout).unwrap();
    assert!(
        traditional.contains("Proc-Type: 4,ENCRYPTED"),
        "{traditional}"
    );
    let err = load_encrypted(format!("{cert}{traditional}"), Some("p4ss")).unwrap_err();
    assert!(err.contains("legacy PEM format"), "{err}");
    // Every truncation and single-byte change of a real encryption's DER (one iteration, so
    // the sweep is quick): an error of one line, or a key (a change the padding absorbs).
    let key = openssl_encrypted_key(&["-iter", "1"], "p4ss");
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let mut inputs: Vec<Vec<u8>> = (0..der.len()).map(|len| der[..len].to_vec()).collect();
    for i in (0..der.len()).step_by(3) {
        let mut bad = der.clone();
        bad[i] ^= 0xff;
        inputs.push(bad);
    }
    for input in inputs {
        let pem = format!("{cert}{}", pem_section(&input));
        if let Err(err) = load_encrypted(pem, Some("p4ss")) {
            assert!(
                !err.contains('\n') && !err.contains("-----") && err.len() < 600,
                "{err}"
            );
            assert!(!err.contains("p4ss"), "{err}");
        }
    }
}

/// A certificate path that is a FIFO with no writer is refused at once: opening it would block
/// `build()` forever. Built on another thread so that a regression fails here instead of hanging.
#[cfg(unix)]
#[test]
fn a_fifo_for_a_certificate_file_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("cert.pem");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo (coreutils) runs");
    assert!(made.success());
    let key = dir.path().join("key.pem");
    std::fs::write(&key, rsa_key_pem()).unwrap();
    for source in [
        CertificateSource::from_path(&fifo, None),
        CertificateSource::from_pem_files(&fifo, &key),
    ] {
        let (sent, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let built = ClientCertificateCredential::builder("t", "c", source)
                .build_with_env_authority(None)
                .map(drop);
            let _ = sent.send(built);
        });
        let err = received
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("build() returns instead of waiting for a writer")
            .unwrap_err();
        assert!(err.message().contains("not a regular file"), "{err}");
        assert!(err.message().contains("cert.pem"), "{err}");
    }
}

/// A bundle that kept the key through a renewal (the expired certificate first, then the current
/// one) loads with the current one as the leaf, in either order; with only expired ones it is
/// still an error.
#[test]
fn a_current_certificate_is_preferred_over_an_expired_one_of_the_same_key() {
    let expired = self_signed(rsa_key_pem(), *NOW as i64 - 172_800, *NOW as i64 - 86_400);
    let current = valid_cert();
    for pem in [
        format!("{expired}{current}{}", rsa_key_pem()),
        format!("{current}{expired}{}", rsa_key_pem()),
    ] {
        let loaded = load(pem).unwrap();
        assert_eq!(loaded.not_after, *NOW + 86_400);
        assert_eq!(loaded.chain.len(), 2);
    }
    // Renewed before it expired: both valid, the newer one is the leaf.
    let newer = self_signed(rsa_key_pem(), *NOW as i64 - 3_600, *NOW as i64 + 172_800);
    let loaded = load(format!("{current}{newer}{}", rsa_key_pem())).unwrap();
    assert_eq!(loaded.not_after, *NOW + 172_800);
    let older = self_signed(rsa_key_pem(), *NOW as i64 - 259_200, *NOW as i64 - 172_800);
    let err = load(format!("{older}{expired}{}", rsa_key_pem())).unwrap_err();
    assert!(err.contains("the certificate expired on"), "{err}");
}

/// A certificate put in place as soon as it is issued, on a host whose clock is behind the
/// issuer's: a notBefore within 5 minutes ahead loads; later is refused, naming both dates.
/// Picking the leaf, such a certificate counts as valid: the one lasting longest wins.
#[test]
fn a_not_before_within_five_minutes_ahead_is_clock_skew() {
    let now = *NOW as i64;
    let fresh = self_signed(rsa_key_pem(), now + 60, now + 86_400);
    let loaded = load(format!("{fresh}{}", rsa_key_pem())).unwrap();
    assert_eq!(loaded.not_after, *NOW + 86_400);
    let at_limit = self_signed(rsa_key_pem(), now + 300, now + 86_400);
    load(format!("{at_limit}{}", rsa_key_pem())).unwrap();
    for ahead in [301, 3_600] {
        let later = self_signed(rsa_key_pem(), now + ahead, now + 86_400);
        let err = load(format!("{later}{}", rsa_key_pem())).unwrap_err();
        // x509-parser's rendering, as in the message.
        let from = x509_parser::time::ASN1Time::from_timestamp(now + ahead).unwrap();
        let until = x509_parser::time::ASN1Time::from_timestamp(now + 86_400).unwrap();
        assert!(
            err.starts_with(&format!(
                "the certificate is not yet valid: valid from {from} until {until}, more than \
                 5 minutes ahead of this host's clock"
            )),
            "{ahead}: {err}"
        );
    }
    // The renewed certificate (60 s ahead, lasting longer) beside the current one: the renewed
    // one is the leaf, in either order (see the next test for why).
    let current = valid_cert();
    let renewed = self_signed(rsa_key_pem(), now + 60, now + 172_800);
    for pem in [
        format!("{current}{renewed}{}", rsa_key_pem()),
        format!("{renewed}{current}{}", rsa_key_pem()),
    ] {
        let loaded = load(pem).unwrap();
        assert_eq!(loaded.not_after, *NOW + 172_800);
        assert_eq!(loaded.chain.len(), 2);
    }
    // An expired one and the renewed one: the renewed one.
    let expired = self_signed(rsa_key_pem(), now - 172_800, now - 86_400);
    let loaded = load(format!("{expired}{renewed}{}", rsa_key_pem())).unwrap();
    assert_eq!(loaded.not_after, *NOW + 172_800);
}

/// A rotation caught mid-way: the current certificate expiring in minutes beside its renewal,
/// issued a minute ahead of this host's clock (within the skew allowance). The leaf is chosen
/// once and signs every assertion after, so the renewal is the leaf (in either order, and its
/// thumbprints are what the credential sends): the expiring one would fail every request
/// once it expired. Lasting equally long, one valid by this host's clock still comes first.
#[test]
fn a_renewal_within_the_skew_allowance_wins_over_a_certificate_about_to_expire() {
    let now = *NOW as i64;
    let key = rsa_key_pem();
    let expiring = self_signed(key, now - 86_400, now + 120);
    let renewal = self_signed(key, now + 60, now + 90 * 86_400);
    let renewal_der = load(format!("{renewal}{key}")).unwrap().leaf().to_vec();
    let sha256 = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &renewal_der));
    for pem in [
        format!("{expiring}{renewal}{key}"),
        format!("{renewal}{expiring}{key}"),
        format!("{key}{expiring}{renewal}"),
    ] {
        let loaded = load(pem.clone()).unwrap();
        assert_eq!(loaded.not_after, *NOW + 90 * 86_400);
        assert!(loaded.leaf() == renewal_der.as_slice());
        assert_eq!(loaded.chain.len(), 2, "the other one is still sent in x5c");
        let credential =
            ClientCertificateCredential::builder("t", "c", CertificateSource::from_pem(pem))
                .build_with_env_authority(None)
                .unwrap();
        assert_eq!(assertion_header(&credential)["x5t#S256"], sha256);
    }
    // The same notAfter: the one valid by this host's clock.
    let valid = self_signed(key, now - 3_600, now + 86_400);
    let ahead = self_signed(key, now + 60, now + 86_400);
    let valid_der = load(format!("{valid}{key}")).unwrap().leaf().to_vec();
    for pem in [
        format!("{valid}{ahead}{key}"),
        format!("{ahead}{valid}{key}"),
    ] {
        assert!(load(pem).unwrap().leaf() == valid_der.as_slice());
    }
}

/// `from_pem_files` with one combined file twice, or the key in both files and the leaf in
/// both: one key, and each certificate once in `x5c`, the leaf first.
#[test]
fn a_key_or_certificate_in_both_pem_files_counts_once() {
    use base64::engine::general_purpose::STANDARD;
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertificateParams::new(vec!["ca.test".into()])
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let cert = valid_cert();
    let combined = dir.path().join("combined.pem");
    std::fs::write(&combined, format!("{cert}{}{}", ca.pem(), rsa_key_pem())).unwrap();
    let cert_and_key = dir.path().join("cert.pem");
    std::fs::write(&cert_and_key, format!("{}{cert}", rsa_key_pem())).unwrap();
    let key_and_cert = dir.path().join("key.pem");
    std::fs::write(
        &key_and_cert,
        format!("{cert}{}{}", rsa_key_pem(), ca.pem()),
    )
    .unwrap();
    let leaf = load(format!("{cert}{}", rsa_key_pem()))
        .unwrap()
        .leaf()
        .to_vec();
    let expected = vec![STANDARD.encode(&leaf), STANDARD.encode(ca.der())];
    for (cert_path, key_path) in [(&combined, &combined), (&cert_and_key, &key_and_cert)] {
        let source = CertificateSource::from_pem_files(cert_path, key_path);
        let loaded = source.load(*NOW).unwrap();
        assert_eq!(loaded.chain.len(), 2, "{source:?}");
        let credential = ClientCertificateCredential::builder("t", "c", source)
            .send_certificate_chain(true)
            .build_with_env_authority(None)
            .unwrap();
        let x5c: Vec<String> = assertion_header(&credential)["x5c"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(x5c, expected);
    }
    // Two different keys are still two.
    let other_key = dir.path().join("other.pem");
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
    std::fs::write(&other_key, out.stdout).unwrap();
    let err = CertificateSource::from_pem_files(&combined, &other_key)
        .load(*NOW)
        .unwrap_err();
    assert!(err.starts_with("2 private keys found"), "{err}");
    // The same encrypted key in both files is decrypted once.
    let encrypted = dir.path().join("encrypted.pem");
    std::fs::write(
        &encrypted,
        format!("{cert}{}", openssl_encrypted_key(&[], "p4ss")),
    )
    .unwrap();
    let loaded = CertificateSource::from_pem_files_with_password(
        &encrypted,
        &encrypted,
        Some(crate::token::Secret::new("p4ss")),
    )
    .load(*NOW)
    .unwrap();
    assert_eq!(loaded.chain.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Reading the files, and a certificate expiring after the build
// ---------------------------------------------------------------------------------------------

/// A certificate file is read into room made for it up front: the buffer never grows, so no
/// shorter copy of the key is freed unwiped on the way.
#[test]
fn a_certificate_file_is_read_without_the_buffer_growing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.pem");
    let pem = format!("{}{}", valid_cert(), rsa_key_pem());
    // A few KiB, and not a size a growing buffer would end on by chance.
    let text = format!("{pem}{}", "#".repeat(3_001 - pem.len() % 1_000));
    std::fs::write(&path, &text).unwrap();
    let bytes = load::read_file(&path).unwrap();
    assert_eq!(bytes.len(), text.len());
    assert!(bytes.len() > 2_048, "{}", bytes.len());
    assert_eq!(
        bytes.capacity(),
        bytes.len() + 1,
        "room made once, never grown"
    );
    CertificateSource::from_path(&path, None)
        .load(*NOW)
        .unwrap();
}

/// A read that hangs until the sender of its gate is dropped, counting its calls: a
/// certificate file on a mount that does not answer.
fn hung_read(calls: &Arc<AtomicUsize>) -> (load::FileRead, std::sync::mpsc::Sender<()>) {
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let calls = Arc::clone(calls);
    let read: load::FileRead = Arc::new(move |_: &Path| {
        calls.fetch_add(1, Ordering::SeqCst);
        let _ = gate.lock().unwrap_or_else(PoisonError::into_inner).recv();
        Ok(zeroize::Zeroizing::new(b"not a certificate".to_vec()))
    });
    (read, release)
}

/// A certificate file on a file system that does not answer fails the build once the bound
/// has passed, with a ConfigError naming the file, instead of blocking the builder's thread
/// for good; a build reading it again fails at once, no second read started, until the read
/// returns; then the file is read again.
#[test]
fn a_certificate_read_that_hangs_fails_the_build_naming_the_file() {
    within_a_minute(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        let calls = Arc::new(AtomicUsize::new(0));
        let (read, release) = hung_read(&calls);
        let build = |timeout: Duration| {
            ClientCertificateCredential::builder(
                "t",
                "c",
                CertificateSource::from_path(&path, None),
            )
            .build_reading(None, &load::Reading::with(Arc::clone(&read), timeout))
        };
        let shown = path.display().to_string();
        let first = build(Duration::from_millis(50)).unwrap_err();
        // At once: a bound it would otherwise wait for.
        let again = build(Duration::from_secs(600)).unwrap_err();
        // The first read's thread may start late on a loaded machine.
        while calls.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no second read");
        for err in [&first, &again] {
            let message = err.message();
            assert!(message.starts_with(NAME), "{err}");
            assert!(
                message.contains(&format!("certificate file {shown} has run more than"))
                    && message.contains("does not answer")
                    && message.contains("fix its mount"),
                "{err}"
            );
        }
        assert!(first.message().contains("50ms"), "{first}");

        drop(release);
        let err = loop {
            let err = build(Duration::from_secs(600)).unwrap_err();
            if !err.message().contains("has not returned") {
                break err;
            }
            std::thread::yield_now();
        };
        // What it read, at last: not a certificate.
        assert!(err.message().contains("it is not PEM"), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    });
}

/// A certificate that expires after the build signs nothing: the request fails as
/// authentication failed, saying to renew it and build again, and nothing reaches the
/// authority (which would refuse it, AADSTS700027, and the refused assertion be replaced by
/// one more refused).
#[tokio::test]
async fn a_certificate_expired_since_the_build_signs_and_sends_nothing() {
    use crate::CredentialExt as _;
    use crate::test_support::authority::Authority;

    let authority = Authority::start().await;
    let http = crate::HttpClient::builder()
        .add_root_certificates_pem(authority.ca_pem())
        .build()
        .unwrap();
    let now = crate::token::unix_now() as i64;
    let pem = format!(
        "{}{}",
        self_signed(rsa_key_pem(), now - 86_400, now + 3_600),
        rsa_key_pem()
    );
    let credential =
        ClientCertificateCredential::builder("contoso", "c", CertificateSource::from_pem(pem))
            .authority_host(authority.url())
            .http_client(http)
            .build_with_env_authority(None)
            .unwrap();
    let clock = crate::token::tests::wall_clock();
    clock.shift(2 * 3_600);
    let err = credential
        .get_token(["https://resource.test/.default"])
        .await
        .unwrap_err();
    assert!(
        err.is_authentication_failed() && !err.is_unavailable(),
        "{err}"
    );
    assert_eq!(err.credential(), NAME);
    let message = err.message();
    assert!(
        message.starts_with("the certificate (subject ")
            && message.contains(") expired on ")
            && message.ends_with("; renew it and build the credential again"),
        "{err}"
    );
    assert_eq!(authority.token_posts(), 0, "nothing was sent");
    // Still valid by the real clock: it signs.
    drop(clock);
    credential
        .get_token(["https://resource.test/.default"])
        .await
        .unwrap();
    assert_eq!(authority.token_posts(), 1);
}

/// An assertion signed just before the certificate's notAfter is not reused after it, young
/// as it is (5 minutes by default): a request for another scope just after the notAfter
/// sends nothing and fails as expired, as one with nothing in hand does.
#[tokio::test]
async fn an_assertion_in_hand_is_not_sent_once_the_certificate_has_expired() {
    use crate::CredentialExt as _;
    use crate::test_support::authority::Authority;

    let authority = Authority::start().await;
    let http = crate::HttpClient::builder()
        .add_root_certificates_pem(authority.ca_pem())
        .build()
        .unwrap();
    let now = crate::token::unix_now() as i64;
    let pem = format!(
        "{}{}",
        self_signed(rsa_key_pem(), now - 86_400, now + 3_600),
        rsa_key_pem()
    );
    let credential =
        ClientCertificateCredential::builder("contoso", "c", CertificateSource::from_pem(pem))
            .authority_host(authority.url())
            .http_client(http)
            .build_with_env_authority(None)
            .unwrap();
    let clock = crate::token::tests::wall_clock();
    // 60 s before the notAfter: signed and sent.
    clock.shift(3_600 - 60);
    credential
        .get_token(["https://one.test/.default"])
        .await
        .unwrap();
    assert_eq!(authority.token_posts(), 1);
    // 30 s after it: the assertion in hand (90 s old) is not sent.
    clock.shift(90);
    let err = credential
        .get_token(["https://two.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(err.message().contains(") expired on "), "{err}");
    assert_eq!(authority.token_posts(), 1, "nothing was sent");
}
