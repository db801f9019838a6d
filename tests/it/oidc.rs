//! ClientSecretCredential against a real OAuth 2.0 server: node `oidc-provider` over HTTPS
//! with a CA made at test time, behind an Entra-shaped front (tests/peers/oidc).

use tower_identity::{ClientSecretCredential, CredentialExt, HttpClient, TokenRequest};

use crate::support::oidc::{CLIENT_ID, CLIENT_SECRET, jwt_claims, peer};

const SCOPE: &str = "https://resource.test/.default";

fn credential(tenant: &str, secret: &str, http: HttpClient) -> ClientSecretCredential {
    ClientSecretCredential::builder(tenant, CLIENT_ID, secret)
        .authority_host(&peer().base)
        .http_client(http)
        .build()
        .unwrap()
}

#[tokio::test]
async fn client_secret_gets_a_real_jwt_through_a_private_ca() {
    let peer = peer();
    let credential = credential("contoso", CLIENT_SECRET, peer.http());
    let token = credential
        .get_token([SCOPE])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", peer.log()));
    let claims = jwt_claims(token.secret().expose_secret());
    assert_eq!(claims["aud"], "https://resource.test");
    assert_eq!(claims["client_id"], CLIENT_ID);
    assert_eq!(claims["iss"], format!("{}/contoso/v2.0", peer.base));
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    let left = token.expires_in().as_secs();
    assert!(
        left <= lifetime && left + 60 > lifetime,
        "expires_in {left} vs JWT lifetime {lifetime}"
    );

    // The server saw exactly the Entra client-credentials form, secret in the body.
    let log = peer.token_log().await;
    let entry = log
        .iter()
        .rev()
        .find(|e| {
            e["form"]["client_id"] == CLIENT_ID
                && e["form"]["scope"] == SCOPE
                && e["tenant"] == "contoso"
        })
        .expect("the request is logged");
    let mut fields: Vec<_> = entry["form"].as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(
        fields,
        ["client_id", "client_secret", "grant_type", "scope"]
    );
    assert_eq!(entry["form"]["grant_type"], "client_credentials");
    assert_eq!(entry["basic_auth_client_id"], serde_json::Value::Null);
    assert!(
        entry["headers"]["user-agent"]
            .as_str()
            .unwrap()
            .starts_with("tower-identity/")
    );
}

#[tokio::test]
async fn a_wrong_secret_gets_the_servers_real_invalid_client_error() {
    let peer = peer();
    let err = credential("contoso", "not-the-secret", peer.http())
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert_eq!(err.status(), Some(http::StatusCode::UNAUTHORIZED));
    assert_eq!(err.error_code(), Some("invalid_client"));
    assert_eq!(err.error_codes(), [7000215]);
    assert!(err.correlation_id().is_some());
    assert!(err.message().contains("AADSTS7000215"), "{err}");
    assert!(!err.to_string().contains("not-the-secret"), "{err}");
}

#[tokio::test]
async fn without_the_private_ca_the_server_is_refused_with_a_hint() {
    let err = credential("contoso", CLIENT_SECRET, HttpClient::new())
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.message().contains("add_root_certificates_pem"), "{err}");
}

#[tokio::test]
async fn cae_and_claims_requests_are_accepted_by_a_real_server() {
    let peer = peer();
    let credential = credential("fabrikam", CLIENT_SECRET, peer.http());
    let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}"#;
    let token = credential
        .get_token_with(
            TokenRequest::new([SCOPE])
                .with_claims(claims)
                .with_cae(true),
        )
        .await
        .unwrap();
    assert_eq!(
        jwt_claims(token.secret().expose_secret())["aud"],
        "https://resource.test"
    );
    let log = peer.token_log().await;
    let sent = log
        .iter()
        .rev()
        .find(|e| e["tenant"] == "fabrikam" && e["form"]["claims"].is_string())
        .expect("the claims request is logged");
    let sent: serde_json::Value =
        serde_json::from_str(sent["form"]["claims"].as_str().unwrap()).unwrap();
    assert_eq!(sent["access_token"]["xms_cc"]["values"][0], "CP1");
    assert_eq!(sent["access_token"]["nbf"]["value"], "1726077595");
}

/// BearerTokenLayer in front of the peer's protected resource, which validates the RS256 JWT
/// (signature, expiry, audience) that oidc-provider issued through our credential.
mod bearer {
    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceBuilder, ServiceExt};
    use tower_identity::BearerTokenLayer;

    use super::{SCOPE, credential};
    use crate::support::oidc::{CLIENT_SECRET, peer};

    async fn get(
        service: &(
             impl tower::Service<
            http::Request<Full<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = tower_identity::BoxError,
        > + Clone
         ),
        path: &str,
    ) -> (StatusCode, serde_json::Value) {
        let request = http::Request::get(format!("{}{path}", peer().base))
            .body(Full::default())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The peer's resource has one answer queue for the whole process: tests that use it take
    /// turns, so a challenge queued by one is not answered to another.
    static RESOURCE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn client() -> crate::support::client::HyperClient<Full<Bytes>> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates({
                    let mut roots = rustls::RootCertStore::empty();
                    roots.add_parsable_certificates(
                        rustls::pki_types::pem::PemObject::pem_slice_iter(peer().ca_pem.as_bytes())
                            .flatten(),
                    );
                    roots
                })
                .with_no_client_auth(),
            )
            .https_only()
            .enable_http1()
            .build();
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https)
    }

    #[tokio::test]
    async fn the_resource_accepts_the_token_the_layer_injects() {
        let _turn = RESOURCE.lock().await;
        let service = ServiceBuilder::new()
            .layer(BearerTokenLayer::new(
                credential("contoso", CLIENT_SECRET, peer().http()),
                [SCOPE],
            ))
            .service(client());
        let (status, body) = get(&service, "/resource/items").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["aud"], "https://resource.test");

        // Without the layer the same resource refuses.
        let (status, _) = get(
            &client().map_err(tower_identity::BoxError::from),
            "/resource/items",
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn the_resources_cae_challenge_is_answered_with_a_new_real_token() {
        let _turn = RESOURCE.lock().await;
        let peer = peer();
        let service = ServiceBuilder::new()
            .layer(
                BearerTokenLayer::builder(
                    credential("layer-cae", CLIENT_SECRET, peer.http()),
                    [SCOPE],
                )
                .enable_cae(true)
                .build(),
            )
            .service(client());
        let (status, _) = get(&service, "/resource/warm").await;
        assert_eq!(status, StatusCode::OK);
        peer.call(
            http::Method::POST,
            "/_test/resource/next",
            Some(serde_json::json!({"kind": "cae"})),
        )
        .await;
        let before = peer
            .call(http::Method::GET, "/_test/resource/count", None)
            .await["requests"]
            .as_u64()
            .unwrap();
        let (status, body) = get(&service, "/resource/after-challenge").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let after = peer
            .call(http::Method::GET, "/_test/resource/count", None)
            .await["requests"]
            .as_u64()
            .unwrap();
        assert_eq!(after - before, 2, "challenged, then sent again");
        // The claims reached the real server in a token request for this tenant.
        let log = peer.token_log().await;
        let claims_request = log
            .iter()
            .rev()
            .find(|e| {
                e["tenant"] == "layer-cae"
                    && e["form"]["claims"]
                        .as_str()
                        .is_some_and(|c| c.contains("nbf"))
            })
            .expect("a token request with the challenge's claims");
        assert!(
            claims_request["form"]["claims"]
                .as_str()
                .unwrap()
                .contains("CP1")
        );
    }
}
