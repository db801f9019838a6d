//! Cross-check with azure-identity 1.27 (msal 1.39 underneath, except for Cloud Shell) on the
//! wire: for every source azure-identity can be pointed at a loopback emulator and every
//! identity form, our credential and `peer.py mi-token` each get a token from a fresh
//! emulator, and the logged requests are compared field by field: method, path, parameters,
//! identity headers, body.
//!
//! Parameters are compared as sorted lists (a multiset: a doubled parameter still differs):
//! the endpoints look them up by name, so their order is not part of the protocol, and holding
//! our client to the insertion order of a Python dict would test nothing a server sees. Both
//! happen to send `api-version`, `resource`, then the selector today.
//!
//! Where the two differ on purpose the difference itself is asserted:
//! * Cloud Shell and Service Fabric take no user-assigned id: azure-identity raises when asked
//!   for a token, we refuse when the credential is built; neither sends anything.
//! * Azure ML takes a client id only: azure-identity sends an object or resource id anyway,
//!   we refuse it when the credential is built.
//! * Azure Arc: msal reads the key only from `/var/opt/azcmagent/tokens`, so azure-identity
//!   stops after the challenge here; the challenge requests are compared.
//! * Headers that identify the client (`User-Agent`, msal's `x-client-SKU`/`x-client-Ver`,
//!   `x-ms-client-request-id`) are not identity headers and are not compared.

use http::Method;
use serde_json::Value;
use tower_identity::{AccessToken, CredentialError, CredentialExt};

use super::{Identity, SCOPE, builder, credential, python_token, sorted};
use crate::support::mi_emulator::{Emulator, Flavour, Logged};

/// What the comparison looks at in one request.
#[derive(Debug, PartialEq, Eq)]
struct Wire {
    method: Method,
    path: String,
    /// The query's pairs, or for a form POST the body's, sorted.
    params: Vec<(String, String)>,
    /// Where the parameters were (a POST's query must be empty, a GET's body).
    in_body: bool,
    content_type: Option<String>,
    identity_headers: Vec<(String, String)>,
}

impl Wire {
    fn of(request: &Logged) -> Wire {
        let in_body = request.method == Method::POST;
        let (params, other) = if in_body {
            (request.form(), request.query.clone())
        } else {
            (request.query.clone(), request.form())
        };
        assert!(
            other.is_empty(),
            "parameters in both query and body: {request:#?}"
        );
        Wire {
            method: request.method.clone(),
            path: request.path.clone(),
            params: sorted(params),
            in_body,
            content_type: request
                .headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned()),
            identity_headers: sorted(request.identity_headers.clone()),
        }
    }
}

/// Our credential's token (or error) and the requests it made, on a fresh emulator.
async fn ours(flavour: Flavour, id: Identity) -> (Result<AccessToken, CredentialError>, Vec<Wire>) {
    let em = Emulator::start(flavour).await;
    let result = credential(&em, id).get_token([SCOPE]).await;
    (result, em.requests().iter().map(Wire::of).collect())
}

/// azure-identity's answer and the requests it made, on a fresh emulator.
async fn theirs(flavour: Flavour, id: Identity) -> (Value, Vec<Wire>) {
    let em = Emulator::start(flavour).await;
    let answer = python_token(&em, id).await;
    (answer, em.requests().iter().map(Wire::of).collect())
}

/// Both get a token with one request each, and the requests agree. Returns them (ours,
/// theirs) for a source-specific look.
async fn agree(flavour: Flavour, id: Identity) -> (Wire, Wire) {
    let what = format!("{flavour:?} {id:?}");
    let (token, mut ours) = ours(flavour, id).await;
    let token = token.unwrap_or_else(|e| panic!("{what}: ours: {e}"));
    let (answer, mut theirs) = theirs(flavour, id).await;
    assert_eq!(answer["ok"], true, "{what}: azure-identity: {answer}");
    assert_eq!((ours.len(), theirs.len()), (1, 1), "{what}");
    // Same emulator answer format, same expiry (both from `expires_on`/`expires_in`).
    let theirs_expiry = answer["expires_on"].as_u64().unwrap();
    assert!(
        token.expires_on_unix().abs_diff(theirs_expiry) <= 5,
        "{what}: {} vs {theirs_expiry}",
        token.expires_on_unix()
    );
    let (ours, theirs) = (ours.remove(0), theirs.remove(0));
    assert_eq!(ours.method, theirs.method, "{what}");
    assert_eq!(ours.path, theirs.path, "{what}");
    assert_eq!(ours.params, theirs.params, "{what}");
    assert_eq!(ours.in_body, theirs.in_body, "{what}");
    assert_eq!(ours.content_type, theirs.content_type, "{what}");
    (ours, theirs)
}

#[tokio::test]
async fn imds_requests_match_azure_identity() {
    for id in Identity::ALL {
        let (ours, theirs) = agree(Flavour::Imds, id).await;
        assert_eq!(ours, theirs, "{id:?}");
    }
}

#[tokio::test]
async fn azure_ml_requests_match_azure_identity() {
    for id in [Identity::System, Identity::ClientId] {
        let (ours, theirs) = agree(Flavour::AzureMl, id).await;
        assert_eq!(ours, theirs, "{id:?}");
    }
    // The endpoint selects by client id alone: azure-identity (msal) sends `object_id` or
    // `msi_res_id` all the same, we refuse when built (as azidentity does) and send nothing.
    for (id, param) in [
        (Identity::ObjectId, "object_id"),
        (Identity::ResourceId, "msi_res_id"),
    ] {
        let em = Emulator::start(Flavour::AzureMl).await;
        assert!(id.select(builder(&em)).build().is_err(), "{id:?}");
        assert_eq!(em.request_count(), 0, "{id:?}");
        let (_, theirs) = theirs(Flavour::AzureMl, id).await;
        assert_eq!(theirs.len(), 1, "{id:?}: {theirs:?}");
        assert!(
            theirs[0].params.iter().any(|(name, _)| name == param),
            "{id:?}: {theirs:?}"
        );
    }
}

#[tokio::test]
async fn app_service_requests_match_azure_identity() {
    for id in Identity::ALL {
        let (ours, theirs) = agree(Flavour::AppService, id).await;
        assert_eq!(ours, theirs, "{id:?}");
    }
}

#[tokio::test]
async fn cloud_shell_requests_match_azure_identity() {
    let (ours, theirs) = agree(Flavour::CloudShell, Identity::System).await;
    assert_eq!(ours, theirs);
    assert_eq!(ours.method, Method::POST);
    for id in [Identity::ClientId, Identity::ObjectId, Identity::ResourceId] {
        refused_by_both(Flavour::CloudShell, id, "ValueError").await;
    }
}

#[tokio::test]
async fn service_fabric_requests_match_azure_identity() {
    // azure-identity (msal) pins the same self-signed certificate by the same thumbprint.
    let (ours, theirs) = agree(Flavour::ServiceFabric, Identity::System).await;
    assert_eq!(ours, theirs);
    for id in [Identity::ClientId, Identity::ObjectId, Identity::ResourceId] {
        refused_by_both(Flavour::ServiceFabric, id, "ClientAuthenticationError").await;
    }
}

/// A source that takes no user-assigned id: azure-identity raises `error_type` at
/// `get_token`, we refuse to build; nothing reaches the emulator either way.
async fn refused_by_both(flavour: Flavour, id: Identity, error_type: &str) {
    let what = format!("{flavour:?} {id:?}");
    let em = Emulator::start(flavour).await;
    assert!(id.select(builder(&em)).build().is_err(), "{what}");
    let (answer, theirs) = theirs(flavour, id).await;
    assert_eq!(answer["type"], error_type, "{what}: {answer}");
    assert!(theirs.is_empty(), "{what}: {theirs:?}");
    assert_eq!(em.request_count(), 0, "{what}");
}

#[tokio::test]
async fn azure_arc_challenge_requests_match_azure_identity() {
    for id in Identity::ALL {
        let what = format!("{id:?}");
        let (token, ours) = ours(Flavour::AzureArc, id).await;
        token.unwrap_or_else(|e| panic!("{what}: ours: {e}"));
        let (answer, theirs) = theirs(Flavour::AzureArc, id).await;
        // msal looks for the key where a real agent keeps it, not where the challenge says.
        assert_eq!(answer["type"], "FileNotFoundError", "{what}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("/var/opt/azcmagent/tokens/"),
            "{what}: {answer}"
        );
        assert_eq!(
            theirs.len(),
            1,
            "{what}: azure-identity stopped at the challenge"
        );
        assert_eq!(ours.len(), 2, "{what}: we answered it");
        assert_eq!(ours[0], theirs[0], "{what}");
        // Our second request is the first one plus the key.
        let mut with_key = ours[0].identity_headers.clone();
        with_key.extend(
            ours[1]
                .identity_headers
                .iter()
                .filter(|(name, _)| name == "authorization")
                .cloned(),
        );
        assert_eq!(ours[1].identity_headers, sorted(with_key), "{what}");
        assert_eq!(ours[1].params, ours[0].params, "{what}");
    }
}
