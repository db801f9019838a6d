//! The credentials' wiring: their builders' `distributed_cache(…)` puts the shared level under
//! their in-memory cache, with entry keys that tell identities apart. The token endpoints are
//! in-process services counting their requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::memory_store::MemoryStore;
use super::{HOUR, cache};
use crate::credential::{
    ClientAssertionCredential, ClientSecretCredential, ManagedIdentityCredential,
};
use crate::error::BoxError;
use crate::token::unix_now;
use crate::transport::{HttpClient, HttpRequest};
use crate::{CredentialExt, TokenRequest};

const SCOPE: &str = "https://resource.test/.default";

/// A token endpoint answering `token-1`, `token-2`, … after 100 ms, and its request count.
fn endpoint() -> (Arc<AtomicUsize>, HttpClient) {
    endpoint_issuing("token")
}

/// A token endpoint answering `{tag}-1`, `{tag}-2`, … after 100 ms, and its request count.
fn endpoint_issuing(tag: &'static str) -> (Arc<AtomicUsize>, HttpClient) {
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&requests);
    let service = tower::service_fn(move |_request: HttpRequest| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let body = serde_json::json!({
                "token_type": "Bearer",
                "expires_in": HOUR.as_secs(),
                "expires_on": (unix_now() + HOUR.as_secs()).to_string(),
                "resource": "https://resource.test",
                "access_token": format!("{tag}-{n}"),
            });
            Ok::<_, BoxError>(
                http::Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Bytes::from(body.to_string()))
                    .unwrap(),
            )
        }
    });
    (requests, HttpClient::from_service(service))
}

#[tokio::test(start_paused = true)]
async fn client_secret_credentials_of_two_processes_make_one_token_request() {
    let store = MemoryStore::new();
    let (requests, http) = endpoint();
    let credential = |client_id: &str| {
        ClientSecretCredential::builder("contoso", client_id, "secret")
            .http_client(http.clone())
            .distributed_cache(cache(&store))
            .build_with_env_authority(None)
            .unwrap()
    };
    let (a, b) = (credential("client"), credential("client"));
    let (ta, tb) = tokio::join!(a.get_token([SCOPE]), b.get_token([SCOPE]));
    let (ta, tb) = (ta.unwrap(), tb.unwrap());
    assert_eq!(ta.secret(), tb.secret());
    assert_eq!(tb.credential(), Some("ClientSecretCredential"));
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    // Another app is another entry.
    let other = credential("other-client").get_token([SCOPE]).await.unwrap();
    assert_ne!(other.secret(), ta.secret());
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    // A claims request reaches the endpoint and leaves the store alone.
    let calls = store.calls();
    let claims = TokenRequest::new([SCOPE]).with_claims(r#"{"access_token":{}}"#);
    a.get_token_with(claims).await.unwrap();
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    assert_eq!(store.calls(), calls);
}

/// Authorities on one host but another port or path may be different token services (a
/// gateway per tenant, a test authority per port): their tokens are not shared, whatever the
/// tenant and client id. (Before, the entry key had the authority's host only: the second
/// credential got the first one's token.) The same authority spelled otherwise shares.
#[tokio::test(start_paused = true)]
async fn authorities_on_one_host_with_other_ports_or_paths_do_not_share() {
    let pairs = [
        ("https://localhost:8443", "https://localhost:9443"),
        ("https://gw.corp/entra-a", "https://gw.corp/entra-b"),
    ];
    for (first, second) in pairs {
        let store = MemoryStore::new();
        let secret = |authority: &str, http: &HttpClient| {
            ClientSecretCredential::builder("contoso", "client", "secret")
                .authority_host(authority)
                .http_client(http.clone())
                .distributed_cache(cache(&store))
                .build_with_env_authority(None)
                .unwrap()
        };
        let assertion = |authority: &str, http: &HttpClient| {
            ClientAssertionCredential::builder("contoso", "client", || async {
                Ok::<_, BoxError>("assertion")
            })
            .authority_host(authority)
            .http_client(http.clone())
            .distributed_cache(cache(&store))
            .build_with_env_authority(None)
            .unwrap()
        };
        let (requests_a, http_a) = endpoint_issuing("a");
        let (requests_b, http_b) = endpoint_issuing("b");
        let a = secret(first, &http_a).get_token([SCOPE]).await.unwrap();
        let b = secret(second, &http_b).get_token([SCOPE]).await.unwrap();
        assert_eq!(a.secret().expose_secret(), "a-1", "{first}");
        assert_eq!(b.secret().expose_secret(), "b-1", "{second}: its own token");
        assert_eq!(requests_b.load(Ordering::SeqCst), 1, "{second}");
        // Certificates and workload identity build on the assertion credential.
        let a = assertion(first, &http_a).get_token([SCOPE]).await.unwrap();
        let b = assertion(second, &http_b).get_token([SCOPE]).await.unwrap();
        assert_eq!(a.secret().expose_secret(), "a-2", "{first}");
        assert_eq!(b.secret().expose_secret(), "b-2", "{second}: its own token");
        // The same authority, spelled with the default port and a trailing slash, shares.
        let spelled = first.replacen("/entra", ":443/entra", 1) + "/";
        let same = secret(&spelled, &http_b).get_token([SCOPE]).await.unwrap();
        assert_eq!(same.secret().expose_secret(), "a-1", "{spelled}");
        assert_eq!(requests_b.load(Ordering::SeqCst), 2, "{spelled}");
        assert_eq!(requests_a.load(Ordering::SeqCst), 2, "{first}");
    }
}

/// An App Service managed identity over `http` sharing `store`, with the user-assigned client
/// id or the system-assigned identity's label given.
fn managed_identity(
    store: &Arc<MemoryStore>,
    http: &HttpClient,
    client_id: Option<&str>,
    label: Option<&str>,
) -> ManagedIdentityCredential {
    let mut builder = ManagedIdentityCredential::builder()
        .vars([
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:41000/token"),
            ("IDENTITY_HEADER", "header"),
        ])
        .http_client(http.clone())
        .distributed_cache(cache(store));
    if let Some(id) = client_id {
        builder = builder.client_id(id);
    }
    if let Some(label) = label {
        builder = builder.system_assigned_identity_label(label);
    }
    builder.build().unwrap()
}

/// Two apps (or VMs) with different system-assigned identities sharing a store: nothing in the
/// request names the identity, so without a label each keeps its tokens to itself and the
/// store is never touched.
#[tokio::test(start_paused = true)]
async fn system_assigned_identities_without_a_label_do_not_share() {
    let store = MemoryStore::new();
    let (requests_a, http_a) = endpoint_issuing("app-a");
    let (requests_b, http_b) = endpoint_issuing("app-b");
    let a = managed_identity(&store, &http_a, None, None);
    let b = managed_identity(&store, &http_b, None, None);
    let first = a.get_token([SCOPE]).await.unwrap();
    let second = b.get_token([SCOPE]).await.unwrap();
    assert_eq!(first.secret().expose_secret(), "app-a-1");
    assert_eq!(second.secret().expose_secret(), "app-b-1");
    assert_eq!(requests_a.load(Ordering::SeqCst), 1);
    assert_eq!(requests_b.load(Ordering::SeqCst), 1);
    assert_eq!(store.calls(), 0, "the store is neither read nor written");
}

/// The same label says "the same identity": the second process uses the first one's token.
/// User-assigned identities share by their id, and never get the system identity's token.
#[tokio::test(start_paused = true)]
async fn managed_identities_share_per_label_or_user_assigned_id() {
    let store = MemoryStore::new();
    let (requests_a, http_a) = endpoint_issuing("app-a");
    let (requests_b, http_b) = endpoint_issuing("app-b");
    let a = managed_identity(&store, &http_a, None, Some("orders-api"));
    let b = managed_identity(&store, &http_b, None, Some("orders-api"));
    let first = a.get_token([SCOPE]).await.unwrap();
    assert_eq!(b.get_token([SCOPE]).await.unwrap().secret(), first.secret());
    assert_eq!(requests_b.load(Ordering::SeqCst), 0);
    // Another label is another identity.
    let other = managed_identity(&store, &http_b, None, Some("billing-api"))
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(other.secret().expose_secret(), "app-b-1");

    let user = |http: &HttpClient| managed_identity(&store, http, Some("user-assigned"), None);
    let user_a = user(&http_a).get_token([SCOPE]).await.unwrap();
    assert_eq!(user_a.secret().expose_secret(), "app-a-2");
    assert_eq!(
        user(&http_b).get_token([SCOPE]).await.unwrap().secret(),
        user_a.secret()
    );
    assert_eq!(requests_b.load(Ordering::SeqCst), 1);
    // A label does not change a user-assigned identity's entry.
    let labelled = managed_identity(&store, &http_b, Some("user-assigned"), Some("orders-api"));
    assert_eq!(
        labelled.get_token([SCOPE]).await.unwrap().secret(),
        user_a.secret()
    );
    assert_eq!(requests_a.load(Ordering::SeqCst), 2);
}

/// An empty label is a build error naming it.
#[test]
fn an_empty_system_assigned_label_is_refused() {
    let error = ManagedIdentityCredential::builder()
        .vars([
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:41000/token"),
            ("IDENTITY_HEADER", "h"),
        ])
        .system_assigned_identity_label(" ")
        .build()
        .unwrap_err();
    assert!(
        error
            .message()
            .contains("system-assigned identity label is empty"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn default_azure_credential_gives_the_cache_to_its_service_members() {
    let store = MemoryStore::new();
    let (requests, http) = endpoint();
    let credential = || {
        crate::DefaultAzureCredential::builder()
            .vars([
                ("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential"),
                ("AZURE_TENANT_ID", "contoso"),
                ("AZURE_CLIENT_ID", "client"),
                ("AZURE_CLIENT_SECRET", "secret"),
            ])
            .http_client(http.clone())
            .distributed_cache(cache(&store))
            .build()
            .unwrap()
    };
    let (a, b) = (credential(), credential());
    let first = a.get_token([SCOPE]).await.unwrap();
    assert_eq!(b.get_token([SCOPE]).await.unwrap().secret(), first.secret());
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

/// The note that a system-assigned identity's tokens stay in this process is logged for one,
/// and not for the workload identity source, whose credential shares its tokens through the
/// distributed cache under its client id.
#[test]
fn only_an_unlabelled_system_assigned_identity_is_logged_as_kept_in_process() {
    let store = MemoryStore::new();
    let logs = super::Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // As in `logs_say_each_outcome_warn_once_and_never_show_a_token`: with two dispatchers,
    // tracing asks every live one at each callsite instead of caching another thread's "never".
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let build = |vars: &[(&str, &str)]| {
        ManagedIdentityCredential::builder()
            .vars(vars.to_vec())
            .distributed_cache(cache(&store))
            .build()
            .unwrap()
    };
    let (workload, logged_for_workload) = tracing::subscriber::with_default(subscriber, || {
        tracing::callsite::rebuild_interest_cache();
        let workload = build(&[
            ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com"),
            ("AZURE_TENANT_ID", "contoso"),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/t",
            ),
            ("AZURE_CLIENT_ID", "workload-app"),
        ]);
        let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        // The system-assigned identity at IMDS, for the same note.
        build(&[]);
        (workload, logged)
    });
    assert_eq!(
        workload.source(),
        crate::ManagedIdentitySource::WorkloadIdentity
    );
    assert!(
        !logged_for_workload.contains("system-assigned"),
        "{logged_for_workload}"
    );
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("the system-assigned identity's tokens are cached in this process only"),
        "{text}"
    );
}
