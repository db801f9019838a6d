//! ClientCertificateCredential against a real authorization server: oidc-provider checks our
//! assertions as `private_key_jwt` (signature with the certificate's registered key, `aud` =
//! the Entra-shaped token endpoint URL, `exp`, single-use `jti`). Certificates are made here.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_identity::{
    CertificateSignature, CertificateSource, ClientCertificateCredential, CredentialExt,
    EnvironmentCredential, Secret, TokenRequest,
};

use crate::support::certs::{self, Made};
use crate::support::oidc::{CONTOSO_TID, Peer, jwt_claims, peer};
use crate::support::python;

const SCOPE: &str = "https://resource.test/.default";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Registers a new app trusting `made`'s certificate; its client id.
async fn register(peer: &Peer, made: &Made) -> String {
    let client_id = uuid::Uuid::new_v4().to_string();
    let answer = peer
        .call(
            http::Method::POST,
            "/_test/clients",
            Some(json!({"client_id": client_id, "jwks": made.jwks()})),
        )
        .await;
    assert_eq!(answer["registered"], client_id.as_str(), "{answer}");
    client_id
}

fn credential(
    peer: &Peer,
    client_id: &str,
    source: CertificateSource,
) -> ClientCertificateCredential {
    ClientCertificateCredential::builder("contoso", client_id, source)
        .authority_host(&peer.base)
        .http_client(peer.http())
        .build()
        .unwrap()
}

/// The token requests of `client_id`, oldest first.
async fn requests(peer: &Peer, client_id: &str) -> Vec<Value> {
    peer.token_log()
        .await
        .into_iter()
        .filter(|e| e["form"]["client_id"] == client_id)
        .collect()
}

/// Gets a token and checks it is the app's; returns the assertion the peer received.
async fn token_for(
    peer: &Peer,
    client_id: &str,
    credential: &ClientCertificateCredential,
) -> Value {
    let token = credential
        .get_token([SCOPE])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", peer.log()));
    let access = jwt_claims(token.secret().expose_secret());
    assert_eq!(access["azp"], client_id);
    assert_eq!(access["tid"], CONTOSO_TID);
    assert_eq!(access["aud"], "https://resource.test");
    let log = requests(peer, client_id).await;
    let entry = log.last().expect("a logged request").clone();
    assert_eq!(entry["form"]["grant_type"], "client_credentials");
    assert_eq!(entry["form"]["client_assertion_type"], JWT_BEARER);
    assert!(entry["form"].get("client_secret").is_none());
    entry
}

/// POSTs a client-credentials request with `assertion` straight to the peer.
async fn post_assertion(peer: &Peer, client_id: &str, assertion: &str) -> (u16, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", client_id)
        .append_pair("scope", SCOPE)
        .append_pair("client_assertion_type", JWT_BEARER)
        .append_pair("client_assertion", assertion)
        .finish();
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("{}/contoso/oauth2/v2.0/token", peer.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = peer.http().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_slice(response.body()).unwrap())
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn rsa_2048_pem_one_file_gets_a_token_with_an_entra_shaped_assertion() {
    let peer = peer();
    let made = certs::self_signed(2048);
    let client_id = register(peer, &made).await;
    let c = credential(
        peer,
        &client_id,
        CertificateSource::from_pem(made.one_file()),
    );
    let entry = token_for(peer, &client_id, &c).await;
    let assertion = &entry["assertion"];
    let header = &assertion["header"];
    assert_eq!(header["alg"], "PS256");
    assert_eq!(header["typ"], "JWT");
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &made.leaf_der);
    let sha256 = ring::digest::digest(&ring::digest::SHA256, &made.leaf_der);
    assert_eq!(header["x5t"], URL_SAFE_NO_PAD.encode(sha1));
    assert_eq!(header["x5t#S256"], URL_SAFE_NO_PAD.encode(sha256));
    assert!(header.get("x5c").is_none(), "{header}");
    assert_eq!(
        assertion["claim_names"],
        json!(["aud", "iss", "sub", "jti", "nbf", "iat", "exp"])
    );
    assert_eq!(
        assertion["aud"],
        format!("{}/contoso/oauth2/v2.0/token", peer.base)
    );
    assert_eq!(assertion["sub"], client_id.as_str());
    // A second call is answered from the cache: no second request.
    c.get_token([SCOPE]).await.unwrap();
    assert_eq!(requests(peer, &client_id).await.len(), 1);
}

#[tokio::test]
async fn rsa_4096_pkcs1_in_two_files_gets_a_token() {
    let peer = peer();
    let made = certs::self_signed(4096);
    let client_id = register(peer, &made).await;
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", &made.cert_pem);
    let key = write(dir.path(), "key.pem", certs::pkcs1(&made.key_pem));
    let c = credential(
        peer,
        &client_id,
        CertificateSource::from_pem_files(cert, key),
    );
    token_for(peer, &client_id, &c).await;
}

#[tokio::test]
async fn pkcs1_and_pkcs8_pem_through_the_path_sniffer_and_rs256_get_tokens() {
    let peer = peer();
    let made = certs::self_signed(2048);
    let client_id = register(peer, &made).await;
    let dir = tempfile::tempdir().unwrap();
    let pkcs1 = format!("{}{}", made.cert_pem, certs::pkcs1(&made.key_pem));
    for (name, text) in [("pkcs1.pem", pkcs1), ("pkcs8.pem", made.one_file())] {
        let path = write(dir.path(), name, text);
        let c = credential(peer, &client_id, CertificateSource::from_path(path, None));
        token_for(peer, &client_id, &c).await;
    }
    let c = ClientCertificateCredential::builder(
        "contoso",
        &client_id,
        CertificateSource::from_pem(made.one_file()),
    )
    .signature(CertificateSignature::Rs256)
    .authority_host(&peer.base)
    .http_client(peer.http())
    .build()
    .unwrap();
    let entry = token_for(peer, &client_id, &c).await;
    assert_eq!(entry["assertion"]["header"]["alg"], "RS256");
}

#[tokio::test]
async fn pkcs12_with_and_without_a_password_gets_tokens() {
    let peer = peer();
    let made = certs::self_signed(2048);
    let client_id = register(peer, &made).await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            made.pkcs12(dir.path(), Some("p12-pass"), false),
            Some("p12-pass"),
        ),
        (made.pkcs12(dir.path(), None, false), None),
        (
            made.pkcs12(dir.path(), Some("legacy-pass"), true),
            Some("legacy-pass"),
        ),
    ];
    for (i, (bytes, password)) in cases.into_iter().enumerate() {
        let password = password.map(Secret::new);
        let c = credential(
            peer,
            &client_id,
            CertificateSource::from_pkcs12(bytes.clone(), password.clone()),
        );
        token_for(peer, &client_id, &c).await;
        // The same archive as a file: not PEM, so read as PKCS#12.
        let path = write(dir.path(), &format!("cert{i}.pfx"), &bytes);
        let c = credential(
            peer,
            &client_id,
            CertificateSource::from_path(path, password),
        );
        token_for(peer, &client_id, &c).await;
    }
}

#[tokio::test]
async fn a_chain_with_an_intermediate_is_sent_as_x5c_when_asked() {
    let peer = peer();
    let made = certs::with_intermediate();
    let client_id = register(peer, &made).await;
    let c = ClientCertificateCredential::builder(
        "contoso",
        &client_id,
        // The key first and the intermediate before the leaf: the leaf is found by its key.
        CertificateSource::from_pem(format!(
            "{}{}{}",
            made.key_pem,
            made.chain_pem.concat(),
            made.cert_pem
        )),
    )
    .send_certificate_chain(true)
    .authority_host(&peer.base)
    .http_client(peer.http())
    .build()
    .unwrap();
    let entry = token_for(peer, &client_id, &c).await;
    let x5c = entry["assertion"]["header"]["x5c"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(x5c.len(), 2, "leaf and intermediate");
    assert_eq!(x5c[0], STANDARD.encode(&made.leaf_der));
    let mid = &made.chain_pem[0];
    let mid_b64: String = mid.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(x5c[1], mid_b64);
}

#[tokio::test]
async fn the_server_refuses_tampered_foreign_expired_and_replayed_assertions() {
    let peer = peer();
    let made = certs::self_signed(2048);
    let client_id = register(peer, &made).await;
    let c = credential(
        peer,
        &client_id,
        CertificateSource::from_pem(made.one_file()),
    );
    let entry = token_for(peer, &client_id, &c).await;
    let ours = entry["form"]["client_assertion"]
        .as_str()
        .unwrap()
        .to_owned();

    // Replayed: the very assertion the credential used.
    let (status, body) = post_assertion(peer, &client_id, &ours).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("only be used once"),
        "{body}"
    );

    // Tampered: another subject in the signed claims.
    let parts: Vec<&str> = ours.split('.').collect();
    let mut claims = jwt_claims(&ours);
    claims["jti"] = json!(uuid::Uuid::new_v4().to_string());
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let (status, body) = post_assertion(peer, &client_id, &tampered).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error_codes"], json!([700027]), "{body}");

    // Properly signed, but for another audience, or expired.
    let header = jwt_header(&ours);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let endpoint = format!("{}/contoso/oauth2/v2.0/token", peer.base);
    let claims = |aud: &str, iat: i64| {
        json!({"aud": aud, "iss": client_id, "sub": client_id,
               "jti": uuid::Uuid::new_v4().to_string(), "nbf": iat, "iat": iat, "exp": iat + 600})
    };
    // Control: our own signer's format, correct audience, accepted.
    let good = certs::sign_ps256(&made, &header, &claims(&endpoint, now));
    let (status, body) = post_assertion(peer, &client_id, &good).await;
    assert_eq!(status, 200, "{body}");
    for (assertion, code, why) in [
        (
            certs::sign_ps256(
                &made,
                &header,
                &claims(
                    "https://login.microsoftonline.com/contoso/oauth2/v2.0/token",
                    now,
                ),
            ),
            700027,
            "audience",
        ),
        (
            certs::sign_ps256(&made, &header, &claims(&endpoint, now - 3600)),
            700024,
            "expired",
        ),
    ] {
        let (status, body) = post_assertion(peer, &client_id, &assertion).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error_codes"], json!([code]), "{body}");
        assert!(
            body["error_description"].as_str().unwrap().contains(why),
            "{why}: {body}"
        );
    }
}

fn jwt_header(token: &str) -> Value {
    let head = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).unwrap()).unwrap()
}

#[tokio::test]
async fn bad_inputs_are_config_errors_that_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let made = certs::self_signed(2048);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expired = certs::self_signed_with(&certs::rsa_key(2048), now - 7200, now - 3600);
    let ec_key = rcgen::KeyPair::generate().unwrap();
    let ec_cert = rcgen::CertificateParams::new(vec!["ec.test".into()])
        .unwrap()
        .self_signed(&ec_key)
        .unwrap();
    let mismatched = format!("{}{}", made.cert_pem, certs::fresh_rsa_key(2048));
    let big = write(dir.path(), "big.pem", vec![b'A'; 10 * 1024 * 1024]);
    let p12 = made.pkcs12(dir.path(), Some("right"), false);
    let cases: Vec<(CertificateSource, &str)> = vec![
        (
            CertificateSource::from_pem(made.cert_pem.clone()),
            "no private key found",
        ),
        (
            CertificateSource::from_pem(made.key_pem.clone()),
            "no certificate found",
        ),
        (
            CertificateSource::from_pkcs12(p12.clone(), Some(Secret::new("wrong"))),
            "PKCS#12 password is wrong",
        ),
        (
            CertificateSource::from_pkcs12(p12, None),
            "PKCS#12 password is wrong",
        ),
        (
            CertificateSource::from_pem(format!("{}{}", ec_cert.pem(), ec_key.serialize_pem())),
            "only RSA",
        ),
        (CertificateSource::from_path(&big, None), "over 1 MiB"),
        (
            CertificateSource::from_pem(vec![b'A'; 10 * 1024 * 1024]),
            "more than the 1 MiB",
        ),
        (
            CertificateSource::from_pem(mismatched),
            "does not match the certificate",
        ),
        (
            CertificateSource::from_pem(expired.one_file()),
            "expired on",
        ),
        (
            CertificateSource::from_path(dir.path().join("missing.pem"), None),
            "cannot open the certificate file",
        ),
        (
            CertificateSource::from_pkcs12(b"not an archive".to_vec(), None),
            "PKCS#12",
        ),
    ];
    for (source, want) in cases {
        let err = ClientCertificateCredential::builder("contoso", "client", source)
            .build()
            .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.starts_with("ClientCertificateCredential: "), "{text}");
        assert!(text.contains(want), "{want}: {text}");
        assert!(!text.contains("PRIVATE KEY-----"), "{text}");
    }
}

/// Secrets are used exactly as set: a password or secret may begin or end with a space.
#[tokio::test]
async fn environment_credential_uses_the_certificate_and_prefers_a_secret() {
    let peer = peer();
    let made = certs::with_intermediate();
    let client_id = register(peer, &made).await;
    let dir = tempfile::tempdir().unwrap();
    let pfx = write(
        dir.path(),
        "cert.pfx",
        made.pkcs12(dir.path(), Some(" env-pass "), false),
    );
    let c = EnvironmentCredential::builder()
        .vars([
            ("AZURE_TENANT_ID", "contoso"),
            ("AZURE_CLIENT_ID", client_id.as_str()),
            ("AZURE_CLIENT_CERTIFICATE_PATH", pfx.as_str()),
            ("AZURE_CLIENT_CERTIFICATE_PASSWORD", " env-pass "),
            // azure-identity sends the chain for any non-empty value, "false" included.
            ("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", "false"),
            ("AZURE_AUTHORITY_HOST", peer.base.as_str()),
        ])
        .http_client(peer.http())
        .build();
    assert!(c.is_configured());
    c.get_token([SCOPE])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", peer.log()));
    let log = requests(peer, &client_id).await;
    let header = &log.last().unwrap()["assertion"]["header"];
    assert_eq!(header["x5c"].as_array().map(Vec::len), Some(2), "{header}");

    // With a secret too, the secret is used (and is wrong here: the app has none).
    let c = EnvironmentCredential::builder()
        .vars([
            ("AZURE_TENANT_ID", "contoso"),
            ("AZURE_CLIENT_ID", client_id.as_str()),
            ("AZURE_CLIENT_SECRET", " not-this-apps-secret "),
            ("AZURE_CLIENT_CERTIFICATE_PATH", pfx.as_str()),
            ("AZURE_CLIENT_CERTIFICATE_PASSWORD", " env-pass "),
            ("AZURE_AUTHORITY_HOST", peer.base.as_str()),
        ])
        .http_client(peer.http())
        .build();
    let err = c.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    let last = requests(peer, &client_id).await.pop().unwrap();
    assert_eq!(last["form"]["client_secret"], " not-this-apps-secret ");
}

/// AD FS does not accept PS256, and EnvironmentCredential sets no signature: with
/// `AZURE_TENANT_ID=adfs` the assertion it sends is RS256 with `x5t`, as MSAL's for AD FS.
#[tokio::test]
async fn environment_credential_with_the_adfs_tenant_sends_rs256() {
    let peer = peer();
    let made = certs::with_intermediate();
    let client_id = register(peer, &made).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = write(dir.path(), "cert.pem", made.one_file());
    let c = EnvironmentCredential::builder()
        .vars([
            ("AZURE_TENANT_ID", "adfs"),
            ("AZURE_CLIENT_ID", client_id.as_str()),
            ("AZURE_CLIENT_CERTIFICATE_PATH", pem.as_str()),
            ("AZURE_AUTHORITY_HOST", peer.base.as_str()),
        ])
        .http_client(peer.http())
        .build();
    c.get_token([SCOPE])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", peer.log()));
    let log = requests(peer, &client_id).await;
    let last = log.last().unwrap();
    assert_eq!(last["tenant"], "adfs", "{last}");
    let header = &last["assertion"]["header"];
    assert_eq!(header["alg"], "RS256", "{header}");
    assert!(
        header["x5t"].as_str().is_some_and(|t| !t.is_empty()),
        "{header}"
    );
}

/// The RS256 default follows the tenant a request resolves to, not only the configured one: a
/// credential configured for contoso that lets requests name any tenant sends RS256 with `x5t`
/// to `adfs` (which refuses PS256), and PS256 still to contoso; a chosen signature is kept.
#[tokio::test]
async fn a_request_for_the_adfs_tenant_sends_rs256_whatever_the_configured_tenant() {
    let peer = peer();
    let made = certs::self_signed(2048);
    let client_id = register(peer, &made).await;
    let build = |signature: Option<CertificateSignature>| {
        let builder = ClientCertificateCredential::builder(
            "contoso",
            &client_id,
            CertificateSource::from_pem(made.one_file()),
        )
        .additionally_allowed_tenants(["*"])
        .authority_host(&peer.base)
        .http_client(peer.http());
        match signature {
            Some(signature) => builder.signature(signature),
            None => builder,
        }
        .build()
        .unwrap()
    };
    let sha1 = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &made.leaf_der,
    ));
    // The last request's tenant and header, after a token for `tenant`.
    let sent = async |c: &ClientCertificateCredential, tenant: &str| {
        c.get_token_with(TokenRequest::new([SCOPE]).with_tenant_id(tenant))
            .await
            .unwrap_or_else(|e| panic!("{tenant}: {e}\n{}", peer.log()));
        let last = requests(peer, &client_id).await.pop().unwrap();
        (last["tenant"].clone(), last["assertion"]["header"].clone())
    };
    let c = build(None);
    for (tenant, alg) in [("adfs", "RS256"), ("contoso", "PS256"), ("ADFS", "RS256")] {
        let (logged, header) = sent(&c, tenant).await;
        // AD FS's path is `/adfs/oauth2/token` whatever the case the tenant was asked in.
        assert_eq!(logged, tenant.to_ascii_lowercase(), "{header}");
        assert_eq!(header["alg"], alg, "{tenant}: {header}");
        assert_eq!(header["x5t"], sha1.as_str(), "{tenant}: {header}");
    }
    for (signature, alg) in [
        (CertificateSignature::Ps256, "PS256"),
        (CertificateSignature::Rs256, "RS256"),
    ] {
        let c = build(Some(signature));
        for tenant in ["adfs", "contoso"] {
            let (_, header) = sent(&c, tenant).await;
            assert_eq!(header["alg"], alg, "{tenant}: {header}");
        }
    }
}

#[tokio::test]
async fn azure_identity_sends_the_same_header_fields_and_claim_names() {
    let peer = peer();
    let made = certs::with_intermediate();
    let client_id = register(peer, &made).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = write(dir.path(), "cert.pem", made.one_file());
    let python = python::ok(
        python::run(
            peer,
            &[
                "azid-certificate",
                "--tenant",
                "contoso",
                "--client-id",
                &client_id,
                "--certificate",
                &pem,
                "--send-chain",
                "--scope",
                SCOPE,
            ],
        )
        .await,
    );
    assert_eq!(python["access_token_aud"], "https://resource.test");
    let theirs = requests(peer, &client_id).await.pop().unwrap()["assertion"].clone();

    let c = ClientCertificateCredential::builder(
        "contoso",
        &client_id,
        CertificateSource::from_path(&pem, None),
    )
    .send_certificate_chain(true)
    .signature(CertificateSignature::Rs256)
    .authority_host(&peer.base)
    .http_client(peer.http())
    .build()
    .unwrap();
    let ours = token_for(peer, &client_id, &c).await["assertion"].clone();

    // azure-identity 1.27 (sync) hands msal a SHA-1 thumbprint: RS256 with x5t. With
    // CertificateSignature::Rs256 every field it sends is ours, value for value (x5c: the same
    // chain); we add x5t#S256, which lets Entra find the certificate by its SHA-256 thumbprint.
    let (theirs_h, ours_h) = (
        theirs["header"].as_object().unwrap(),
        ours["header"].as_object().unwrap(),
    );
    for (name, value) in theirs_h {
        // msal pads its base64url thumbprint ("…="); we send RFC 7515's unpadded form. Entra
        // reads both; the thumbprint itself must be the same.
        let unpad = |v: &Value| json!(v.as_str().unwrap_or_default().trim_end_matches('='));
        let (value, mine) = if name == "x5t" {
            (unpad(value), ours_h.get(name).map(unpad))
        } else {
            (value.clone(), ours_h.get(name).cloned())
        };
        assert_eq!(mine, Some(value), "header field {name}: {theirs} / {ours}");
    }
    let extra: Vec<&String> = ours_h
        .keys()
        .filter(|k| !theirs_h.contains_key(*k))
        .collect();
    assert_eq!(extra, ["x5t#S256"], "{theirs} / {ours}");
    // Claims: theirs (msal) are a subset of ours; msal sends no nbf.
    let names = |a: &Value| -> Vec<String> {
        let mut v: Vec<String> = a["claim_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let (their_names, our_names) = (names(&theirs), names(&ours));
    for name in &their_names {
        assert!(
            our_names.contains(name),
            "claim {name}: {their_names:?} / {our_names:?}"
        );
    }
    assert_eq!(theirs["aud"], ours["aud"]);
    assert_eq!(theirs["sub"], ours["sub"]);
}
