//! WorkloadIdentityCredential against a real issuer: the token file holds a service-account
//! token signed by the oidc peer's second issuer (standing for a Kubernetes cluster), and the
//! peer's Entra-shaped front checks it against the app's federated identity credential —
//! signature through the issuer's JWKS, issuer, subject, audience and time — before
//! oidc-provider issues the token.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tower_identity::{
    ClientSecretCredential, CredentialExt, TokenRequest, WorkloadIdentityCredential,
};

use crate::support::clock::held;
use crate::support::oidc::{
    CLIENT_ID, CLIENT_SECRET, CONTOSO_TID, Peer, WORKLOAD_CLIENT_ID, WORKLOAD_SUBJECT, jwt_claims,
    peer,
};

const SCOPE: &str = "https://resource.test/.default";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A credential configured the way the AKS webhook configures a pod: by environment variables.
fn credential(peer: &Peer, tenant: &str, token_file: &Path) -> WorkloadIdentityCredential {
    WorkloadIdentityCredential::builder()
        .vars([
            ("AZURE_TENANT_ID", tenant),
            ("AZURE_CLIENT_ID", WORKLOAD_CLIENT_ID),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                &token_file.display().to_string(),
            ),
            ("AZURE_AUTHORITY_HOST", &peer.base),
        ])
        .http_client(peer.http())
        .build()
        .unwrap()
}

/// The token requests the peer logged for `tenant`, oldest first.
async fn requests(peer: &Peer, tenant: &str) -> Vec<Value> {
    peer.token_log()
        .await
        .into_iter()
        .filter(|e| e["tenant"] == tenant)
        .collect()
}

#[tokio::test]
async fn a_projected_service_account_token_gets_a_real_token() {
    let peer = peer();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    let (assertion, claims) = peer.service_account_token(json!({})).await;
    assert_eq!(claims["iss"], peer.cluster_issuer);
    assert_eq!(claims["sub"], WORKLOAD_SUBJECT);
    assert_eq!(claims["aud"], json!(["api://AzureADTokenExchange"]));
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    // The kubelet writes the token without a newline; an editor adds one: either works.
    std::fs::write(&file, format!("{assertion}\n")).unwrap();

    let token = credential(peer, "contoso", &file)
        .get_token([SCOPE])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", peer.log()));
    let access = jwt_claims(token.secret().expose_secret());
    assert_eq!(access["aud"], "https://resource.test");
    assert_eq!(access["azp"], WORKLOAD_CLIENT_ID);
    assert_eq!(access["tid"], CONTOSO_TID);
    assert_eq!(access["idtyp"], "app");
    assert_eq!(access["iss"], format!("{}/contoso/v2.0", peer.base));

    // Exactly Entra's client-credentials form with a jwt-bearer assertion: the file's contents.
    let log = requests(peer, "contoso").await;
    let entry = log
        .iter()
        .rev()
        .find(|e| e["assertion"]["jti"] == claims["jti"])
        .expect("the request is logged");
    let mut fields: Vec<_> = entry["form"].as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "client_assertion",
            "client_assertion_type",
            "client_id",
            "grant_type",
            "scope"
        ]
    );
    assert_eq!(entry["form"]["client_assertion"], assertion.as_str());
    assert_eq!(entry["form"]["client_assertion_type"], JWT_BEARER);
    assert_eq!(entry["form"]["client_id"], WORKLOAD_CLIENT_ID);
    assert_eq!(entry["form"]["grant_type"], "client_credentials");
    assert_eq!(entry["form"]["scope"], SCOPE);
}

/// Nothing the credential says about a refusal holds the assertion, in any part.
fn assert_no_assertion(text: &str, assertion: &str) {
    for part in assertion.split('.') {
        assert!(!text.contains(part), "assertion part leaked: {text}");
    }
}

#[tokio::test]
async fn a_stale_token_file_is_refused_with_aadsts700024_and_a_renewed_one_is_read_at_once() {
    let peer = peer();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    // Issued two hours ago, expired one hour ago: what a credential that read the file once
    // would still be sending.
    let (stale, _) = peer
        .service_account_token(json!({ "issued_ago": 7200 }))
        .await;
    std::fs::write(&file, &stale).unwrap();
    let credential = credential(peer, "wi-stale", &file);
    let err = credential.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(!err.is_unavailable());
    assert_eq!(err.status(), Some(http::StatusCode::UNAUTHORIZED));
    assert_eq!(err.error_code(), Some("invalid_client"));
    assert_eq!(err.error_codes(), [700024]);
    assert!(
        err.message()
            .contains("AADSTS700024: Client assertion is not within its valid time range"),
        "{err}"
    );
    assert!(err.message().contains("kubelet"), "the hint: {err}");
    // The token's times are the API server's: this host's clock is not the suspect.
    assert!(!err.message().contains("check this host's clock"), "{err}");
    assert_no_assertion(&format!("{err} {err:?} {credential:?}"), &stale);

    // The kubelet renews the file: the refusal dropped the assertion in hand, so the next
    // request reads the file again, with no wait.
    let (fresh, claims) = peer.service_account_token(json!({})).await;
    std::fs::write(&file, &fresh).unwrap();
    credential
        .get_token([SCOPE])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sent: Vec<Value> = requests(peer, "wi-stale")
        .await
        .iter()
        .map(|e| e["assertion"]["jti"].clone())
        .collect();
    assert_eq!(sent.last(), Some(&claims["jti"]), "{sent:?}");
}

#[tokio::test]
async fn assertions_the_federated_credential_does_not_match_are_refused() {
    let peer = peer();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let cases = [
        (
            json!({ "sub": "system:serviceaccount:workloads:other-reader" }),
            700213,
        ),
        // Subjects are compared case-sensitively, as Entra does.
        (
            json!({ "sub": "system:serviceaccount:Workloads:token-reader" }),
            700213,
        ),
        (json!({ "aud": "api://AzureADTokenExchange/other" }), 700212),
        (json!({ "iss": "https://oidc.cluster.test/other/" }), 700211),
        (json!({ "rogue_key": true }), 700027),
        // Not valid for another ten minutes (beyond the 5 minutes of clock skew).
        (json!({ "issued_ago": -600 }), 700024),
    ];
    for (input, code) in cases {
        let (assertion, _) = peer.service_account_token(input.clone()).await;
        std::fs::write(&file, &assertion).unwrap();
        let credential = credential(peer, "wi-refused", &file);
        let err = credential.get_token([SCOPE]).await.unwrap_err();
        assert!(err.is_authentication_failed(), "{input}: {err}");
        assert_eq!(err.error_code(), Some("invalid_client"), "{input}");
        assert_eq!(err.error_codes(), [code], "{input}: {err}");
        assert!(err.message().contains(&format!("AADSTS{code}")), "{err}");
        assert_no_assertion(&format!("{err} {err:?} {credential:?}"), &assertion);
    }
}

/// kubelet rewrites the projected token file (at 80 % of its lifetime); the credential keeps
/// sending the assertion it read for 5 minutes, then reads the file again.
#[tokio::test(start_paused = true)]
async fn a_rotated_token_file_is_sent_once_the_assertion_in_hand_is_five_minutes_old() {
    let peer = peer();
    let tenant = "wi-rotation";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let (a, a_claims) = held(peer.service_account_token(json!({}))).await;
    std::fs::write(&file, &a).unwrap();
    let credential = credential(peer, tenant, &file);
    // A new scope each time, so each call is a token request.
    let scope = |n: u32| format!("https://rotation{n}.test/.default");
    held(credential.get_token([scope(1)])).await.unwrap();

    let (b, b_claims) = held(peer.service_account_token(json!({}))).await;
    std::fs::write(&file, &b).unwrap();
    tokio::time::advance(Duration::from_secs(4 * 60 + 59)).await;
    held(credential.get_token([scope(2)])).await.unwrap();
    // Claims force a token request for a cached scope too.
    let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}"#;
    held(credential.get_token_with(TokenRequest::new([scope(1)]).with_claims(claims)))
        .await
        .unwrap();

    tokio::time::advance(Duration::from_secs(2)).await;
    held(credential.get_token([scope(3)])).await.unwrap();
    held(credential.get_token_with(TokenRequest::new([scope(2)]).with_claims(claims)))
        .await
        .unwrap();

    let sent: Vec<Value> = held(requests(peer, tenant))
        .await
        .iter()
        .map(|e| e["assertion"]["jti"].clone())
        .collect();
    let (a, b) = (a_claims["jti"].clone(), b_claims["jti"].clone());
    assert_eq!(sent, [a.clone(), a.clone(), a, b.clone(), b], "{sent:?}");

    // Cached tokens are still handed out without a request, whatever the file's age.
    held(credential.get_token([scope(3)])).await.unwrap();
    assert_eq!(held(requests(peer, tenant)).await.len(), 5);
}

#[tokio::test]
async fn a_missing_or_empty_token_file_is_unavailable_and_a_chain_moves_on() {
    let peer = peer();
    let tenant = "wi-missing";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    let workload = credential(peer, tenant, &file);
    assert!(workload.is_configured());
    for contents in [None, Some(""), Some("\n")] {
        if let Some(contents) = contents {
            std::fs::write(&file, contents).unwrap();
        }
        let err = workload.get_token([SCOPE]).await.unwrap_err();
        assert!(err.is_unavailable(), "{contents:?}: {err}");
        assert!(
            err.message().contains("AZURE_FEDERATED_TOKEN_FILE"),
            "{err}"
        );
        assert!(err.message().contains(&file.display().to_string()), "{err}");
    }
    assert!(requests(peer, tenant).await.is_empty(), "nothing was sent");

    // Unavailable: a chain asks the next credential.
    let secret = ClientSecretCredential::builder(tenant, CLIENT_ID, CLIENT_SECRET)
        .authority_host(&peer.base)
        .http_client(peer.http())
        .build()
        .unwrap();
    let token = workload
        .clone()
        .or(secret)
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(jwt_claims(token.secret().expose_secret())["azp"], CLIENT_ID);

    // Missing variables are each named.
    let err = WorkloadIdentityCredential::builder()
        .vars([("AZURE_CLIENT_ID", WORKLOAD_CLIENT_ID)])
        .build()
        .unwrap()
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        err.message()
            .contains("missing AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE)"),
        "{err}"
    );
}

/// azure-identity's WorkloadIdentityCredential, given the same token file, sends the same
/// token request (compared field by field in the peer's log).
#[tokio::test]
async fn azure_identity_sends_the_same_token_request() {
    let peer = peer();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let (assertion, _) = peer.service_account_token(json!({})).await;
    std::fs::write(&file, &assertion).unwrap();

    credential(peer, "wi-wire-rs", &file)
        .get_token([SCOPE])
        .await
        .unwrap();
    let python = crate::support::python::run(
        peer,
        &[
            "azid-workload-identity",
            "--tenant",
            "wi-wire-py",
            "--client-id",
            WORKLOAD_CLIENT_ID,
            "--token-file",
            &file.display().to_string(),
            "--scope",
            SCOPE,
        ],
    )
    .await;
    let python = crate::support::python::ok(python);
    assert_eq!(python["access_token_aud"], "https://resource.test");

    let ours = requests(peer, "wi-wire-rs").await;
    let theirs = requests(peer, "wi-wire-py").await;
    assert_eq!((ours.len(), theirs.len()), (1, 1), "{ours:?} {theirs:?}");
    let (ours, theirs) = (&ours[0], &theirs[0]);
    assert_eq!(ours["form"], theirs["form"]);
    assert_eq!(ours["form"]["client_assertion"], assertion.as_str());
    assert_eq!(ours["basic_auth_client_id"], theirs["basic_auth_client_id"]);
    assert_eq!(
        ours["headers"]["content-type"],
        theirs["headers"]["content-type"]
    );
}
