//! ClientAssertionCredential against a real issuer: the callback returns service-account
//! tokens minted by the oidc peer's cluster issuer, and the peer's Entra-shaped front checks
//! each against the app's federated identity credential (signature, issuer, subject, audience,
//! time) before oidc-provider issues the token.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tower_identity::{
    AssertionRequest, AssertionService, BoxError, ClientAssertionCredential, CredentialExt,
    TokenCachePersistenceOptions,
};

use crate::support::clock::held;
use crate::support::oidc::{Peer, WORKLOAD_CLIENT_ID, jwt_claims, peer};

const SCOPE: &str = "https://resource.test/.default";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The assertions a callback returned, in order (their `jti`s).
type Minted = Arc<Mutex<Vec<Value>>>;

/// A callback that mints a service-account token with the peer for each call (`first` is the
/// input of the first call, defaults after it), and the `jti`s it minted.
fn minting(
    peer: &'static Peer,
    first: Value,
) -> (Minted, impl Fn() -> Fut + Send + Sync + 'static) {
    let minted = Minted::default();
    let log = Arc::clone(&minted);
    let callback = move || {
        let log = Arc::clone(&log);
        let input = if log.lock().unwrap().is_empty() {
            first.clone()
        } else {
            json!({})
        };
        Box::pin(async move {
            let (token, claims) = peer.service_account_token(input).await;
            log.lock().unwrap().push(claims["jti"].clone());
            Ok::<_, BoxError>(token)
        }) as Fut
    };
    (minted, callback)
}

type Fut = std::pin::Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

fn credential(
    peer: &Peer,
    tenant: &str,
    source: impl tower_identity::AssertionSource,
) -> tower_identity::credential::ClientAssertionCredentialBuilder {
    ClientAssertionCredential::builder(tenant, WORKLOAD_CLIENT_ID, source)
        .authority_host(&peer.base)
        .http_client(peer.http())
}

/// The token requests the peer logged for `tenant`, oldest first.
async fn requests(peer: &Peer, tenant: &str) -> Vec<Value> {
    peer.token_log()
        .await
        .into_iter()
        .filter(|e| e["tenant"] == tenant)
        .collect()
}

fn jtis(log: &[Value]) -> Vec<Value> {
    log.iter().map(|e| e["assertion"]["jti"].clone()).collect()
}

fn minted(minted: &Minted) -> Vec<Value> {
    minted.lock().unwrap().clone()
}

#[tokio::test]
async fn a_callback_returning_a_federated_token_gets_a_real_token() {
    let peer = peer();
    let tenant = "ca-real";
    let (minted_jtis, callback) = minting(peer, json!({}));
    let credential = credential(peer, tenant, callback).build().unwrap();
    let token = credential
        .get_token([SCOPE])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", peer.log()));
    let access = jwt_claims(token.secret().expose_secret());
    assert_eq!(access["aud"], "https://resource.test");
    assert_eq!(access["azp"], WORKLOAD_CLIENT_ID);
    assert_eq!(access["idtyp"], "app");
    assert_eq!(access["iss"], format!("{}/{tenant}/v2.0", peer.base));

    // Entra's client-credentials form with the callback's assertion as a jwt-bearer.
    let log = requests(peer, tenant).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(jtis(&log), minted(&minted_jtis));
    let form = &log[0]["form"];
    let mut fields: Vec<_> = form.as_object().unwrap().keys().cloned().collect();
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
    assert_eq!(form["client_assertion_type"], JWT_BEARER);
    assert_eq!(form["client_id"], WORKLOAD_CLIENT_ID);
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], SCOPE);
}

#[tokio::test(start_paused = true)]
async fn the_callback_is_called_again_after_the_configured_age_and_not_before() {
    let peer = peer();
    let tenant = "ca-age";
    let (minted_jtis, callback) = minting(peer, json!({}));
    let credential = credential(peer, tenant, callback)
        .max_assertion_age(Duration::from_secs(120))
        .build()
        .unwrap();
    // A new scope each time, so each call is a token request.
    let scope = |n: u32| format!("https://age{n}.test/.default");
    held(credential.get_token([scope(1)])).await.unwrap();
    tokio::time::advance(Duration::from_secs(119)).await;
    held(credential.get_token([scope(2)])).await.unwrap();
    assert_eq!(minted(&minted_jtis).len(), 1, "called again before the age");
    tokio::time::advance(Duration::from_secs(1)).await;
    held(credential.get_token([scope(3)])).await.unwrap();

    let minted = minted(&minted_jtis);
    assert_eq!(minted.len(), 2, "{minted:?}");
    let sent = jtis(&held(requests(peer, tenant)).await);
    assert_eq!(
        sent,
        [minted[0].clone(), minted[0].clone(), minted[1].clone()]
    );
}

/// A tower service as the source: it is told the token endpoint (a signed assertion's
/// audience). The stale token it returns first is refused, and the next request asks it anew
/// at once.
#[tokio::test]
async fn a_stale_assertion_is_refused_with_aadsts700024_and_the_next_request_asks_again() {
    let peer = peer();
    let tenant = "ca-stale";
    let (minted_jtis, callback) = minting(peer, json!({ "issued_ago": 7200 }));
    let asked = Arc::new(Mutex::new(Vec::<AssertionRequest>::new()));
    let seen = Arc::clone(&asked);
    let callback = Arc::new(callback);
    let service = tower::service_fn(move |request: AssertionRequest| {
        seen.lock().unwrap().push(request);
        callback()
    });
    let credential = credential(peer, tenant, AssertionService::new(service))
        .build()
        .unwrap();
    let err = credential.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert_eq!(err.credential(), "ClientAssertionCredential");
    assert_eq!(err.status(), Some(http::StatusCode::UNAUTHORIZED));
    assert_eq!(err.error_code(), Some("invalid_client"));
    assert_eq!(err.error_codes(), [700024]);
    assert!(
        err.message()
            .contains("AADSTS700024: Client assertion is not within its valid time range"),
        "{err}"
    );
    assert!(err.message().contains("return a current one"), "{err}");
    let text = format!("{err} {err:?} {credential:?}");
    assert!(!text.contains("eyJ"), "an assertion leaked: {text}");

    credential
        .get_token([SCOPE])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let minted = minted(&minted_jtis);
    assert_eq!(minted.len(), 2, "{minted:?}");
    assert_eq!(jtis(&requests(peer, tenant).await), minted);

    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "{asked:?}");
    let endpoint = format!("{}/{tenant}/oauth2/v2.0/token", peer.base);
    for request in &asked {
        assert_eq!(request.token_endpoint(), endpoint);
        assert_eq!(request.client_id(), WORKLOAD_CLIENT_ID);
        assert_eq!(request.tenant_id(), tenant);
    }
}

#[tokio::test]
async fn a_failing_callback_is_authentication_failed_and_nothing_is_sent() {
    let peer = peer();
    let tenant = "ca-failing";
    let failing = credential(peer, tenant, || async {
        Err::<String, _>("the federation endpoint answered 503")
    })
    .build()
    .unwrap();
    let err = failing.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert!(!err.is_unavailable());
    assert_eq!(
        err.message(),
        "the client assertion callback failed: the federation endpoint answered 503"
    );
    assert!(requests(peer, tenant).await.is_empty(), "nothing was sent");
    // The same tenant with a working callback: the peer does answer it.
    let (_, callback) = minting(peer, json!({}));
    let token = credential(peer, tenant, callback)
        .build()
        .unwrap()
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(
        jwt_claims(token.secret().expose_secret())["azp"],
        WORKLOAD_CLIENT_ID
    );
}

/// With `cache_options`, a second credential (another process of the app) finds the first
/// one's token in the shared cache file, and its callback is not called at all.
#[tokio::test]
async fn a_second_credential_finds_the_token_in_the_cache_file_without_calling_back() {
    let peer = peer();
    let tenant = "ca-persist";
    let dir = tempfile::tempdir().unwrap();
    let persistent = |callback| {
        credential(peer, tenant, callback)
            .cache_options(
                TokenCachePersistenceOptions::new()
                    .directory(dir.path())
                    .allow_unencrypted_storage(true),
            )
            .build()
            .unwrap()
    };
    let (first_minted, callback) = minting(peer, json!({}));
    let first = persistent(callback).get_token([SCOPE]).await.unwrap();
    let (second_minted, callback) = minting(peer, json!({}));
    let second = persistent(callback).get_token([SCOPE]).await.unwrap();
    assert_eq!(second.secret(), first.secret());
    assert_eq!(minted(&first_minted).len(), 1);
    assert!(minted(&second_minted).is_empty(), "the file had the token");
    assert_eq!(requests(peer, tenant).await.len(), 1);
}
