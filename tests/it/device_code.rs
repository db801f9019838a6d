//! DeviceCodeCredential against the real oidc-provider device flow: the prompt gets the user
//! code, the test signs the user in through the peer's verification page while the
//! credential polls (on the paused clock), and the outcomes of every answer RFC 8628 and
//! Entra define. Each test uses its own tenant, so its requests can be told apart in the
//! peer's log while other tests run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_identity::transport::HttpRequest;
use tower_identity::{
    CredentialExt, DeviceCodeCredential, DeviceCodeInfo, HttpClient, SharedTokenCacheCredential,
    TokenCachePersistenceOptions, TokenRequest,
};

use crate::support::clock::held;
use crate::support::oidc::{FOCI_CLIENT_ID, Peer, jwt_claims, peer};

const RESOURCE: &str = "https://resource.test/.default";
const OTHER: &str = "https://other.test/.default";
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The instants (paused clock) at which the credential sent each token-endpoint request.
type Sent = Arc<Mutex<Vec<Instant>>>;

/// The peer's client, recording when token requests leave and holding the paused clock while
/// the peer (another process) answers: the clock moves only while the credential waits.
fn recording_http(peer: &Peer) -> (HttpClient, Sent) {
    let inner = peer.http();
    let sent = Sent::default();
    let record = Arc::clone(&sent);
    let client = HttpClient::from_service(tower::service_fn(move |request: HttpRequest| {
        let (inner, record) = (inner.clone(), Arc::clone(&record));
        async move {
            if request.uri().path().ends_with("/oauth2/v2.0/token") {
                record.lock().unwrap().push(Instant::now());
            }
            held(inner.oneshot(request)).await
        }
    }));
    (client, sent)
}

/// A credential for `tenant` whose prompt sends what it is shown to the returned receiver.
fn prompted(
    peer: &Peer,
    tenant: &str,
) -> (
    DeviceCodeCredential,
    UnboundedReceiver<DeviceCodeInfo>,
    Sent,
) {
    let (http, sent) = recording_http(peer);
    let (shown, prompts) = unbounded_channel();
    let credential = DeviceCodeCredential::builder()
        .tenant_id(tenant)
        .authority_host(&peer.base)
        .http_client(http)
        .prompt(move |info| {
            let _ = shown.send(info);
        })
        .build()
        .unwrap();
    (credential, prompts, sent)
}

/// This tenant's requests to the device authorization and token endpoints, oldest first.
async fn log_of(tenant: &str) -> Vec<serde_json::Value> {
    held(peer().token_log())
        .await
        .into_iter()
        .filter(|e| e["tenant"] == tenant)
        .collect()
}

fn polls(log: &[serde_json::Value]) -> usize {
    log.iter()
        .filter(|e| e["grant_type"] == DEVICE_GRANT)
        .count()
}

fn code_requests(log: &[serde_json::Value]) -> usize {
    log.iter().filter(|e| e["endpoint"] == "devicecode").count()
}

fn gaps(sent: &Sent) -> Vec<u64> {
    let sent = sent.lock().unwrap();
    sent.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect()
}

#[tokio::test(start_paused = true)]
async fn the_user_signs_in_while_the_credential_polls_then_refresh_tokens_serve_other_scopes() {
    let peer = peer();
    let tenant = "device-approve";
    let (credential, mut prompts, sent) = prompted(peer, tenant);
    let first = tokio::spawn({
        let credential = credential.clone();
        async move { credential.get_token([RESOURCE]).await }
    });

    let info = prompts.recv().await.expect("the prompt is called");
    assert!(
        info.verification_uri
            .ends_with(&format!("/{tenant}/device")),
        "{info:?}"
    );
    assert!(info.message.contains(&info.user_code), "{info:?}");
    assert_eq!(info.expires_in, secs(900));
    // Three polls 5 s apart while the user has not signed in yet.
    tokio::time::sleep(secs(16)).await;
    assert_eq!(polls(&log_of(tenant).await), 3);
    held(peer.approve_device_code(tenant, &info.user_code, "dora@contoso.com")).await;
    let token = first.await.unwrap().unwrap();

    assert_eq!(
        jwt_claims(token.secret().expose_secret())["aud"],
        "https://resource.test"
    );
    assert_eq!(gaps(&sent), [5, 5, 5], "the polls follow the interval");
    let log = log_of(tenant).await;
    assert_eq!((code_requests(&log), polls(&log)), (1, 4), "{log:#?}");
    let scope = log[0]["form"]["scope"].as_str().unwrap();
    assert_eq!(scope, format!("{RESOURCE} openid profile offline_access"));
    assert_eq!(log[0]["form"]["client_id"], FOCI_CLIENT_ID);
    let poll = &log[1]["form"];
    assert_eq!(poll["client_id"], FOCI_CLIENT_ID);
    assert!(poll["device_code"].as_str().is_some_and(|c| !c.is_empty()));

    // The same scope: the token in hand. Another one: the refresh token, without a prompt.
    let again = credential.get_token([RESOURCE]).await.unwrap();
    assert_eq!(again.secret(), token.secret());
    let other = credential.get_token([OTHER]).await.unwrap();
    assert_eq!(
        jwt_claims(other.secret().expose_secret())["aud"],
        "https://other.test"
    );
    assert!(prompts.try_recv().is_err(), "no second prompt");
    let log = log_of(tenant).await;
    assert_eq!(code_requests(&log), 1);
    let last = log.last().unwrap();
    assert_eq!(last["grant_type"], "refresh_token", "{last}");
    assert_eq!(last["form"]["scope"], OTHER);

    // A refresh token that no longer works: the account is signed in again, with a prompt.
    let refresh_token = last["form"]["refresh_token"].as_str().unwrap();
    held(peer.revoke_refresh_token(refresh_token)).await;
    let cae = tokio::spawn(async move {
        credential
            .get_token_with(TokenRequest::new([OTHER]).with_cae(true))
            .await
    });
    let info = prompts.recv().await.expect("a new sign-in");
    held(peer.approve_device_code(tenant, &info.user_code, "dora@contoso.com")).await;
    cae.await.unwrap().unwrap();
    let log = log_of(tenant).await;
    assert_eq!(code_requests(&log), 2);
    let signed_in_again = log.last().unwrap();
    assert_eq!(signed_in_again["grant_type"], DEVICE_GRANT);
    let code_request = log.iter().rfind(|e| e["endpoint"] == "devicecode").unwrap();
    let claims = code_request["form"]["claims"].as_str().unwrap_or_default();
    assert!(
        claims.contains("CP1"),
        "the CAE capability is announced: {code_request}"
    );
    // And with the poll that issued the token (its claims decide what the token carries).
    let claims = signed_in_again["form"]["claims"]
        .as_str()
        .unwrap_or_default();
    assert!(
        claims.contains("CP1"),
        "the poll announces the CAE capability: {signed_in_again}"
    );
}

/// The claims of the request (a challenge, with the CAE capability merged in) go with every
/// poll, the request that issues the token, as msal sends them; not only with the code request.
#[tokio::test(start_paused = true)]
async fn every_poll_carries_the_claims_challenge_and_the_cae_capability() {
    let peer = peer();
    let tenant = "device-claims";
    let (credential, mut prompts, _) = prompted(peer, tenant);
    let challenge = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
    let request = TokenRequest::new([RESOURCE])
        .with_cae(true)
        .with_claims(challenge);
    let task = tokio::spawn(async move { credential.get_token_with(request).await });
    let info = prompts.recv().await.unwrap();
    // One poll (pending) before the user signs in, one after.
    tokio::time::sleep(secs(6)).await;
    held(peer.approve_device_code(tenant, &info.user_code, "mia@contoso.com")).await;
    task.await.unwrap().unwrap();

    let log = log_of(tenant).await;
    let sent: Vec<&serde_json::Value> = log
        .iter()
        .filter(|e| e["grant_type"] == DEVICE_GRANT || e["endpoint"] == "devicecode")
        .collect();
    assert_eq!(sent.len(), 3, "{log:#?}");
    for entry in sent {
        let claims = entry["form"]["claims"].as_str().unwrap_or_default();
        let claims: serde_json::Value = serde_json::from_str(claims)
            .unwrap_or_else(|e| panic!("claims are JSON ({e}): {entry}"));
        let access_token = &claims["access_token"];
        assert_eq!(
            access_token["xms_cc"]["values"],
            serde_json::json!(["CP1"]),
            "{entry}"
        );
        assert_eq!(access_token["nbf"]["value"], "1700000000", "{entry}");
    }
}

#[tokio::test(start_paused = true)]
async fn slow_down_adds_five_seconds_to_this_and_every_later_interval() {
    let peer = peer();
    let tenant = "device-slow-down";
    held(peer.slow_down_device_polls(tenant, 2)).await;
    let (credential, mut prompts, sent) = prompted(peer, tenant);
    let task = tokio::spawn(async move { credential.get_token([RESOURCE]).await });
    let info = prompts.recv().await.unwrap();
    // Polls at 5 (slow_down), 15 (slow_down), 30 (pending), then 45.
    tokio::time::sleep(secs(31)).await;
    held(peer.approve_device_code(tenant, &info.user_code, "erin@contoso.com")).await;
    task.await.unwrap().unwrap();
    assert_eq!(gaps(&sent), [10, 15, 15]);
    assert_eq!(polls(&log_of(tenant).await), 4);
}

#[tokio::test(start_paused = true)]
async fn slow_down_keeps_adding_five_seconds_past_a_minute() {
    let peer = peer();
    let tenant = "device-slow-down-long";
    held(peer.slow_down_device_polls(tenant, 12)).await;
    let (credential, mut prompts, sent) = prompted(peer, tenant);
    let task = tokio::spawn(async move { credential.get_token([RESOURCE]).await });
    let info = prompts.recv().await.unwrap();
    // Twelve slow_downs, polled at 5, 15, 30, … 390 s; the interval is then 65 s.
    tokio::time::sleep(secs(400)).await;
    held(peer.approve_device_code(tenant, &info.user_code, "ivan@contoso.com")).await;
    task.await.unwrap().unwrap();
    let want: Vec<u64> = (2..=13).map(|n| 5 * n).collect();
    assert_eq!(gaps(&sent), want);
}

#[tokio::test(start_paused = true)]
async fn a_declined_sign_in_fails_naming_it_and_the_next_call_prompts_again() {
    let peer = peer();
    let tenant = "device-decline";
    let (credential, mut prompts, _) = prompted(peer, tenant);
    let task = tokio::spawn({
        let credential = credential.clone();
        async move { credential.get_token([RESOURCE]).await }
    });
    let info = prompts.recv().await.unwrap();
    tokio::time::sleep(secs(6)).await;
    held(peer.decline_device_code(tenant, &info.user_code)).await;
    let error = task.await.unwrap().unwrap_err();
    assert!(error.is_authentication_failed(), "{error}");
    assert_eq!(error.error_code(), Some("authorization_declined"));
    assert_eq!(error.error_codes(), [70000]);
    assert!(
        error
            .message()
            .starts_with("the user declined the sign-in: "),
        "{error}"
    );
    let debug = format!("{error:?} {error}");
    let device_code = log_of(tenant).await[1]["form"]["device_code"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!debug.contains(&device_code), "{debug}");

    let retry = tokio::spawn(async move { credential.get_token([RESOURCE]).await });
    let second = prompts.recv().await.expect("a new sign-in prompts again");
    assert_ne!(second.user_code, info.user_code);
    retry.abort();
}

#[tokio::test(start_paused = true)]
async fn an_expired_code_fails_naming_it_whether_entra_or_the_clock_says_so() {
    let peer = peer();
    // Entra says so: expired_token.
    let tenant = "device-expired";
    let (credential, mut prompts, _) = prompted(peer, tenant);
    let task = tokio::spawn(async move { credential.get_token([RESOURCE]).await });
    let info = prompts.recv().await.unwrap();
    held(peer.expire_device_code(&info.user_code)).await;
    let error = task.await.unwrap().unwrap_err();
    assert!(error.is_authentication_failed(), "{error}");
    assert_eq!(error.error_code(), Some("expired_token"));
    assert!(
        error
            .message()
            .starts_with("the code expired before the user signed in; try again"),
        "{error}"
    );

    // The clock says so: the code's 900 s are over, and polling stops there.
    let tenant = "device-expiry-clock";
    let (credential, mut prompts, sent) = prompted(peer, tenant);
    let task = tokio::spawn(async move { credential.get_token([RESOURCE]).await });
    let _ = prompts.recv().await.unwrap();
    let shown = Instant::now();
    let error = task.await.unwrap().unwrap_err();
    assert!(error.is_authentication_failed(), "{error}");
    assert_eq!(
        error.message(),
        "the code expired before the user signed in; try again"
    );
    assert_eq!(Instant::now() - shown, secs(900));
    assert_eq!(sent.lock().unwrap().len(), 180);

    // The builder's timeout, when it comes first: polls at 5 and 10 s, and a last one at 12.
    let tenant = "device-timeout";
    let (http, sent) = recording_http(peer);
    let credential = DeviceCodeCredential::builder()
        .tenant_id(tenant)
        .authority_host(&peer.base)
        .http_client(http)
        .prompt(|_| {})
        .timeout(Some(secs(12)))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = credential.get_token([RESOURCE]).await.unwrap_err();
    assert_eq!(
        error.message(),
        "the user did not sign in within the timeout (12 s); try again"
    );
    assert_eq!(gaps(&sent), [5, 2]);
    assert_eq!(Instant::now() - started, secs(12));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_before_the_next_poll_is_polled_at_the_deadline() {
    let peer = peer();
    // A timeout shorter than the interval: one poll, at the timeout, which the user's
    // sign-in just before it answers.
    let tenant = "device-short-timeout";
    let (http, sent) = recording_http(peer);
    let (shown, mut prompts) = unbounded_channel();
    let credential = DeviceCodeCredential::builder()
        .tenant_id(tenant)
        .authority_host(&peer.base)
        .http_client(http)
        .prompt(move |info| {
            let _ = shown.send(info);
        })
        .timeout(Some(secs(3)))
        .build()
        .unwrap();
    let task = tokio::spawn(async move { credential.get_token([RESOURCE]).await });
    let info = prompts.recv().await.unwrap();
    let shown = Instant::now();
    tokio::time::sleep(secs(2)).await;
    held(peer.approve_device_code(tenant, &info.user_code, "hana@contoso.com")).await;
    task.await.unwrap().unwrap();
    let polled = sent.lock().unwrap().clone();
    assert_eq!(polled.len(), 1, "one poll");
    assert_eq!(polled[0] - shown, secs(3));

    // Not signed in by then: the timeout error, after that one poll.
    let tenant = "device-short-timeout-2";
    let (http, sent) = recording_http(peer);
    let credential = DeviceCodeCredential::builder()
        .tenant_id(tenant)
        .authority_host(&peer.base)
        .http_client(http)
        .prompt(|_| {})
        .timeout(Some(secs(3)))
        .build()
        .unwrap();
    let error = credential.get_token([RESOURCE]).await.unwrap_err();
    assert_eq!(
        error.message(),
        "the user did not sign in within the timeout (3 s); try again"
    );
    assert_eq!(sent.lock().unwrap().len(), 1);
    assert_eq!(polls(&log_of(tenant).await), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_sign_in_which_stops_when_every_caller_gives_up() {
    let peer = peer();
    let tenant = "device-cancel";
    let (credential, mut prompts, _) = prompted(peer, tenant);
    let call = || {
        let credential = credential.clone();
        tokio::spawn(async move { credential.get_token([RESOURCE]).await })
    };
    let (a, b) = (call(), call());
    let _ = prompts.recv().await.unwrap();
    tokio::time::sleep(secs(11)).await;
    assert!(prompts.try_recv().is_err(), "one prompt for both callers");
    let log = log_of(tenant).await;
    assert_eq!((code_requests(&log), polls(&log)), (1, 2));

    // One caller gives up: the sign-in goes on for the other.
    a.abort();
    let _ = a.await;
    tokio::time::sleep(secs(10)).await;
    assert_eq!(polls(&log_of(tenant).await), 4);

    // Both have: polling stops.
    b.abort();
    let _ = b.await;
    tokio::time::sleep(secs(60)).await;
    assert_eq!(
        polls(&log_of(tenant).await),
        4,
        "no poll after every caller left"
    );

    // The next call starts a new sign-in.
    let c = call();
    let info = prompts.recv().await.expect("a new prompt");
    held(peer.approve_device_code(tenant, &info.user_code, "fred@contoso.com")).await;
    c.await.unwrap().unwrap();
    assert_eq!(code_requests(&log_of(tenant).await), 2);
}

#[tokio::test(start_paused = true)]
async fn with_cache_options_the_account_lands_in_the_shared_cache_for_other_credentials() {
    let peer = peer();
    let tenant = "device-cache";
    let home = tempfile::tempdir().unwrap();
    let options = || {
        TokenCachePersistenceOptions::new()
            .directory(home.path().join(".IdentityService"))
            .allow_unencrypted_storage(true)
    };
    let (http, _) = recording_http(peer);
    let (shown, mut prompts) = unbounded_channel();
    let credential = DeviceCodeCredential::builder()
        .tenant_id(tenant)
        .authority_host(&peer.base)
        .http_client(http.clone())
        .cache_options(options())
        .prompt(move |info| {
            let _ = shown.send(info);
        })
        .build()
        .unwrap();
    let task = tokio::spawn({
        let credential = credential.clone();
        async move { credential.get_token([RESOURCE]).await }
    });
    let info = prompts.recv().await.unwrap();
    held(peer.approve_device_code(tenant, &info.user_code, "gina@contoso.com")).await;
    task.await.unwrap().unwrap();
    let cae = |scope: &str| TokenRequest::new([scope]).with_cae(true);
    let cae_token = credential.get_token_with(cae(OTHER)).await.unwrap();

    let file = home.path().join(".IdentityService/msal.cache.nocae");
    let cache: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let accounts = cache["Account"].as_object().unwrap();
    assert_eq!(accounts.len(), 1, "{cache:#}");
    let account = accounts.values().next().unwrap();
    assert_eq!(account["username"], "gina@contoso.com");
    let refresh_tokens = cache["RefreshToken"].as_object().unwrap();
    assert_eq!(refresh_tokens.len(), 1, "{cache:#}");
    assert_eq!(refresh_tokens.values().next().unwrap()["family_id"], "1");

    // Another credential finds the account there and redeems its refresh token.
    let shared = SharedTokenCacheCredential::builder()
        .authority_host(&peer.base)
        .http_client(http)
        .cache_options(options())
        .build()
        .unwrap();
    let token = shared.get_token([OTHER]).await.unwrap();
    assert_eq!(
        jwt_claims(token.secret().expose_secret())["aud"],
        "https://other.test"
    );
    // A CAE request (the capability, no challenge) is served the CAE token in the file.
    let before = log_of(tenant).await.len();
    let cached = shared.get_token_with(cae(OTHER)).await.unwrap();
    assert_eq!(cached.secret(), cae_token.secret());
    assert_eq!(log_of(tenant).await.len(), before, "nothing sent");
}

/// A credential for `tenant` keeping its tokens in the cache files in `dir`, its prompt sending
/// what it is shown to the returned receiver.
fn persisting(
    peer: &Peer,
    tenant: &str,
    dir: &std::path::Path,
) -> (DeviceCodeCredential, UnboundedReceiver<DeviceCodeInfo>) {
    let (http, _) = recording_http(peer);
    let (shown, prompts) = unbounded_channel();
    let credential = DeviceCodeCredential::builder()
        .tenant_id(tenant)
        .authority_host(&peer.base)
        .http_client(http)
        .cache_options(
            TokenCachePersistenceOptions::new()
                .directory(dir)
                .allow_unencrypted_storage(true),
        )
        .prompt(move |info| {
            let _ = shown.send(info);
        })
        .build()
        .unwrap();
    (credential, prompts)
}

// The ordinary cache file cannot be read or written (a directory in its place), the CAE one
// can: once the kept refresh token's successor is in the CAE file, an ordinary request finds it
// there instead of failing on the file it cannot read.
#[tokio::test(start_paused = true)]
async fn an_unreadable_cache_file_does_not_hide_the_refresh_token_in_the_other() {
    let peer = peer();
    let tenant = "device-half-readable";
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".IdentityService");
    std::fs::create_dir_all(dir.join("msal.cache.nocae")).unwrap();
    let (credential, mut prompts) = persisting(peer, tenant, &dir);
    let task = tokio::spawn({
        let credential = credential.clone();
        async move { credential.get_token([RESOURCE]).await }
    });
    let info = prompts.recv().await.expect("the prompt is called");
    held(peer.approve_device_code(tenant, &info.user_code, "lea@contoso.com")).await;
    task.await.unwrap().unwrap();
    // Redeems the kept token; the answer is written to the CAE file.
    credential
        .get_token_with(TokenRequest::new([OTHER]).with_cae(true))
        .await
        .unwrap();
    assert!(dir.join("msal.cache.cae").is_file());
    let other = credential.get_token([OTHER]).await.unwrap();
    assert_eq!(
        jwt_claims(other.secret().expose_secret())["aud"],
        "https://other.test"
    );
    assert!(prompts.try_recv().is_err(), "no second prompt");
    assert_eq!(code_requests(&log_of(tenant).await), 1);
}

// Tokens that could not be written: the refresh token kept in memory serves the next resource
// without a prompt; once Entra rejects it, the user is signed in again.
#[tokio::test(start_paused = true)]
async fn when_the_cache_file_cannot_be_written_the_refresh_token_kept_in_memory_serves() {
    let peer = peer();
    let tenant = "device-unwritable";
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".IdentityService");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("msal.cache.nocae");
    // Not a token cache: every read and write fails.
    std::fs::write(&file, br#"{"AccessToken": []}"#).unwrap();
    let (credential, mut prompts) = persisting(peer, tenant, &dir);
    let sign_in = async |prompts: &mut UnboundedReceiver<DeviceCodeInfo>, request| {
        let task = tokio::spawn({
            let credential = credential.clone();
            async move { credential.get_token_with(request).await }
        });
        // A credential that fails instead of prompting leaves the wait to the paused clock.
        let info = tokio::time::timeout(secs(60), prompts.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no sign-in prompt: {:?}", task.is_finished()));
        held(peer.approve_device_code(tenant, &info.user_code, "kai@contoso.com")).await;
        task.await.unwrap().unwrap()
    };
    sign_in(&mut prompts, TokenRequest::new([RESOURCE])).await;

    let other = credential.get_token([OTHER]).await.unwrap();
    assert_eq!(
        jwt_claims(other.secret().expose_secret())["aud"],
        "https://other.test"
    );
    let log = log_of(tenant).await;
    assert_eq!(code_requests(&log), 1, "no second sign-in");
    let last = log.last().unwrap();
    assert_eq!(last["grant_type"], "refresh_token", "{last}");
    assert_eq!(std::fs::read(&file).unwrap(), br#"{"AccessToken": []}"#);

    let refresh_token = last["form"]["refresh_token"].as_str().unwrap();
    held(peer.revoke_refresh_token(refresh_token)).await;
    sign_in(&mut prompts, TokenRequest::new([OTHER]).with_cae(true)).await;
    assert_eq!(code_requests(&log_of(tenant).await), 2);
    assert_eq!(std::fs::read(&file).unwrap(), br#"{"AccessToken": []}"#);
}

/// When the account can no longer be signed in silently and someone else signs in, no token
/// cached for the previous account serves them: every scope is asked for again as the new
/// account. Before, a scope cached before the switch was served as the previous user until
/// its token expired.
#[tokio::test(start_paused = true)]
async fn after_another_user_signs_in_no_token_of_the_previous_one_is_served() {
    let peer = peer();
    let tenant = "device-switch";
    let (credential, mut prompts, _) = prompted(peer, tenant);
    let first = tokio::spawn({
        let credential = credential.clone();
        async move { credential.get_token([RESOURCE]).await }
    });
    let info = prompts.recv().await.unwrap();
    held(peer.approve_device_code(tenant, &info.user_code, "dora@contoso.com")).await;
    let dora = jwt_claims(first.await.unwrap().unwrap().secret().expose_secret())["sub"].clone();
    // Cached for RESOURCE and OTHER, as dora.
    let resource = credential.get_token([RESOURCE]).await.unwrap();
    assert_eq!(jwt_claims(resource.secret().expose_secret())["sub"], dora);
    credential.get_token([OTHER]).await.unwrap();
    let log = log_of(tenant).await;
    let refresh_token = log.last().unwrap()["form"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    held(peer.revoke_refresh_token(&refresh_token)).await;

    // dora's refresh token is refused: the next sign-in is erin's.
    let third = tokio::spawn({
        let credential = credential.clone();
        async move { credential.get_token(["https://third.test/.default"]).await }
    });
    let info = prompts.recv().await.expect("a new sign-in");
    held(peer.approve_device_code(tenant, &info.user_code, "erin@contoso.com")).await;
    let erin = jwt_claims(third.await.unwrap().unwrap().secret().expose_secret())["sub"].clone();
    assert_ne!(erin, dora);

    let resource = credential.get_token([RESOURCE]).await.unwrap();
    assert_eq!(
        jwt_claims(resource.secret().expose_secret())["sub"],
        erin,
        "RESOURCE as the account signed in now"
    );
}

/// Polls against the loopback authority, whose faults drive the answers: a device code poll
/// is answered with a token unless a fault is queued (`authorization_pending` for a user who
/// has not signed in yet).
mod transient {
    use tower_identity::{CredentialExt, DeviceCodeCredential};

    use super::{RESOURCE, secs};
    use crate::support::authority::{Authority, DEVICE_CODE, Fault, error_body};
    use crate::support::creds::http_builder;

    fn pending() -> Fault {
        Fault::Respond {
            status: 400,
            body: error_body(
                "authorization_pending",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            ),
            headers: Vec::new(),
        }
    }

    fn credential(authority: &Authority, http: tower_identity::HttpClient) -> DeviceCodeCredential {
        DeviceCodeCredential::builder()
            .tenant_id("contoso")
            .authority_host(authority.url())
            .http_client(http)
            .prompt(|_| {})
            .build()
            .unwrap()
    }

    /// When each poll arrived, in whole seconds after the code was issued; every request is
    /// a poll of the code.
    fn poll_times(authority: &Authority) -> Vec<u64> {
        let issued = authority.device_code_requests()[0].at;
        authority
            .requests()
            .iter()
            .map(|r| {
                assert_eq!(r.field("device_code"), Some(DEVICE_CODE), "{r:?}");
                (r.at - issued).as_secs()
            })
            .collect()
    }

    /// One 503 while the user signs in: the sign-in goes on, and the next poll comes an
    /// interval later (not at once from the HTTP client's retries, which would resend a code
    /// that may have been redeemed).
    #[tokio::test(start_paused = true)]
    async fn a_poll_answered_503_is_polled_again_after_the_interval() {
        let authority = Authority::start().await;
        authority.push_fault(pending());
        authority.push_fault(Fault::ServerError(503));
        let credential = credential(&authority, http_builder(&authority).build().unwrap());
        credential.get_token([RESOURCE]).await.unwrap();
        assert_eq!(poll_times(&authority), [5, 10, 15]);
    }

    /// Failures that outlast the HTTP client's retries (503s in a row, a connection closed
    /// without an answer, a 429 asking for longer than the client waits) do not end the
    /// sign-in: each is one poll, the next an interval later, or after the `Retry-After`.
    #[tokio::test(start_paused = true)]
    async fn transient_failures_keep_polling_until_the_user_has_signed_in() {
        let authority = Authority::start().await;
        authority.push_fault(pending());
        for _ in 0..4 {
            authority.push_fault(Fault::ServerError(503));
        }
        authority.push_fault(Fault::Close);
        authority.push_fault(Fault::TooManyRequests {
            retry_after: "90".into(),
        });
        authority.push_fault(pending());
        let credential = credential(&authority, http_builder(&authority).build().unwrap());
        let token = credential.get_token([RESOURCE]).await;
        let times = poll_times(&authority);
        token.unwrap_or_else(|e| panic!("{e} (polls at {times:?})"));
        assert_eq!(times, [5, 10, 15, 20, 25, 30, 35, 125, 130]);
    }

    /// A poll whose answer comes after the per-attempt timeout (it may have issued the token
    /// and redeemed the code) is not sent again by the HTTP client as soon as the attempt
    /// times out: the next poll comes an interval after it.
    #[tokio::test(start_paused = true)]
    async fn a_poll_that_times_out_is_not_resent_before_the_interval() {
        let authority = Authority::start().await;
        authority.push_fault(pending());
        authority.push_fault(Fault::Delay(secs(30)));
        let http = http_builder(&authority)
            .timeout(Some(secs(10)))
            .build()
            .unwrap();
        let credential = credential(&authority, http);
        credential.get_token([RESOURCE]).await.unwrap();
        // At 10 s the slow poll, abandoned at 20 s; the next one 5 s after that.
        assert_eq!(poll_times(&authority), [5, 10, 25]);
    }

    /// What cannot pass before the deadline ends the sign-in at once: a refusal, or a
    /// `Retry-After` that ends after the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_or_a_wait_past_the_deadline_ends_the_sign_in() {
        let authority = Authority::start().await;
        authority.push_fault(Fault::ServerError(503));
        authority.push_fault(Fault::Respond {
            status: 400,
            body: error_body("invalid_client", 7000215, "Invalid client secret provided."),
            headers: Vec::new(),
        });
        let credential = credential(&authority, http_builder(&authority).build().unwrap());
        let error = credential.get_token([RESOURCE]).await.unwrap_err();
        assert_eq!(error.error_code(), Some("invalid_client"), "{error}");
        assert!(
            error
                .message()
                .starts_with("the device code sign-in failed: "),
            "{error}"
        );
        assert_eq!(poll_times(&authority), [5, 10]);

        // A timeout of 30 s, and a wait of 90 s asked for at 10 s.
        let authority = Authority::start().await;
        authority.push_fault(Fault::ServerError(503));
        authority.push_fault(Fault::TooManyRequests {
            retry_after: "90".into(),
        });
        let credential = DeviceCodeCredential::builder()
            .tenant_id("contoso")
            .authority_host(authority.url())
            .http_client(http_builder(&authority).build().unwrap())
            .prompt(|_| {})
            .timeout(Some(secs(30)))
            .build()
            .unwrap();
        let started = tokio::time::Instant::now();
        let error = credential.get_token([RESOURCE]).await.unwrap_err();
        assert!(error.is_throttled(), "{error}");
        assert!(
            error
                .message()
                .starts_with("the device code sign-in failed: "),
            "{error}"
        );
        assert_eq!(poll_times(&authority), [5, 10]);
        assert_eq!(started.elapsed(), secs(10));
    }

    /// The interval Entra gives is waited out in full, however long: the client MUST wait at
    /// least that long between polls (RFC 8628 §3.5). One longer than the code lives (the
    /// largest number the answer can hold) is polled once, at the code's expiry, and the
    /// sign-in ends there. Before, the interval was cut to 60 s.
    #[tokio::test(start_paused = true)]
    async fn a_long_interval_is_waited_out_in_full_and_the_sign_in_still_ends_at_the_codes_expiry()
    {
        let authority = Authority::start().await;
        authority.set_device_code_interval(120);
        authority.push_fault(pending());
        let patient = credential(&authority, http_builder(&authority).build().unwrap());
        patient.get_token([RESOURCE]).await.unwrap();
        assert_eq!(poll_times(&authority), [120, 240]);

        let authority = Authority::start().await;
        authority.set_device_code_interval(u64::MAX);
        authority.push_fault(pending());
        let outlived = credential(&authority, http_builder(&authority).build().unwrap());
        let error = outlived.get_token([RESOURCE]).await.unwrap_err();
        assert_eq!(
            error.message(),
            "the code expired before the user signed in; try again"
        );
        // Entra's code lives 900 s.
        assert_eq!(poll_times(&authority), [900]);
    }

    /// A prompt that panics ends the sign-in with an error saying so (not a bare "did not
    /// finish"), and nothing is polled: the user was never shown the code. The next call
    /// starts a new sign-in.
    #[tokio::test(start_paused = true)]
    async fn a_prompt_that_panics_ends_the_sign_in_with_an_error_saying_so_and_nothing_is_polled() {
        let authority = Authority::start().await;
        let credential = DeviceCodeCredential::builder()
            .tenant_id("contoso")
            .authority_host(authority.url())
            .http_client(http_builder(&authority).build().unwrap())
            .prompt(|_| panic!("the terminal went away"))
            .build()
            .unwrap();
        for call in 1..=2 {
            let error = credential.get_token([RESOURCE]).await.unwrap_err();
            assert!(error.is_authentication_failed(), "{error}");
            assert_eq!(
                error.message(),
                "the prompt callback panicked; the user was not shown the code"
            );
            tokio::time::sleep(secs(60)).await;
            assert_eq!(authority.device_code_requests().len(), call);
            assert_eq!(authority.token_posts(), 0, "nothing polled");
        }
    }
}

/// The user signs in just as the only caller gives up (its timeout fires while the tokens
/// wait for the cache file's lock, held by another writer): the sign-in is past aborting, so
/// the tokens are recorded and the account pinned, and the next call gets the token without
/// a new prompt. Before, the sign-in was aborted with its caller after the code had been
/// redeemed: the tokens were lost, and the next call prompted again.
#[tokio::test(start_paused = true)]
async fn a_caller_giving_up_as_the_user_signs_in_loses_nothing() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::support::authority::Authority;

    let authority = Authority::start().await;
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".IdentityService");
    std::fs::create_dir_all(&dir).unwrap();
    // msal-extensions' lock file, naming a live process (this one): held, not stale.
    let lock = dir.join("msal.cache.nocae.lockfile");
    std::fs::write(&lock, format!("{} another-writer", std::process::id())).unwrap();
    let prompts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&prompts);
    let credential = DeviceCodeCredential::builder()
        .tenant_id("contoso")
        .authority_host(authority.url())
        .http_client(crate::support::creds::http(&authority))
        .cache_options(
            TokenCachePersistenceOptions::new()
                .directory(&dir)
                .allow_unencrypted_storage(true),
        )
        .prompt(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    // The poll at 5 s gets the tokens; recording them waits for the lock; at 8 s the caller
    // gives up.
    authority.push_fault(loopback_answer("alice", "at-1", "rt-1"));
    let gave_up = tokio::time::timeout(secs(8), credential.get_token([RESOURCE])).await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    assert_eq!(authority.token_posts(), 1, "the code was redeemed");
    std::fs::remove_file(&lock).unwrap();

    let token = credential.get_token([RESOURCE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1");
    assert_eq!(prompts.load(Ordering::SeqCst), 1, "no second prompt");
    assert_eq!(authority.device_code_requests().len(), 1);
    assert_eq!(authority.token_posts(), 1);
    let file = std::fs::read_to_string(dir.join("msal.cache.nocae")).unwrap();
    assert!(file.contains("rt-1"), "recorded: {file}");
    let shown = format!("{credential:?}");
    assert!(shown.contains("alice"), "pinned: {shown}");
}

/// The only caller gives up while the poll request that redeems the code is in flight (its
/// answer, the tokens, comes later): the request is not cut off, so the tokens Entra issued
/// for the consumed code are not lost. Before, the sign-in was aborted with the request, and
/// the next call prompted again.
#[tokio::test(start_paused = true)]
async fn a_caller_giving_up_while_the_redeeming_poll_is_in_flight_loses_nothing() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::support::authority::{Authority, Fault};

    let authority = Authority::start().await;
    let prompts = Arc::new(AtomicUsize::new(0));
    let credential = counting_prompts(&authority, &prompts);
    // The poll at 5 s redeems the code; its answer is held until the caller has given up.
    let gate = Arc::new(tokio::sync::Notify::new());
    authority.push_fault(Fault::HoldThen(
        Arc::clone(&gate),
        Box::new(loopback_answer("alice", "at-1", "rt-1")),
    ));
    let gave_up = tokio::time::timeout(secs(8), credential.get_token([RESOURCE])).await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    assert_eq!(authority.token_posts(), 1);
    assert_eq!(authority.in_flight(), 1, "the poll request is in flight");
    gate.notify_one();

    let token = credential.get_token([RESOURCE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1");
    assert_eq!(prompts.load(Ordering::SeqCst), 1, "no second prompt");
    assert_eq!(authority.device_code_requests().len(), 1);
    assert_eq!(authority.token_posts(), 1);
    let shown = format!("{credential:?}");
    assert!(shown.contains("alice"), "pinned: {shown}");
}

/// Entra's token endpoint also refuses a refresh token with the top-level errors
/// `interaction_required` (an additional authentication step: MFA) and `consent_required`,
/// beside `invalid_grant`. Each refuses that request only, which the user can meet in a
/// sign-in: the request prompts and gets its token, and the account stays signed in for the
/// others. Before, the call returned the refusal without prompting, and so did every later
/// call for that resource.
#[tokio::test(start_paused = true)]
async fn interaction_or_consent_required_prompts_for_that_request_and_keeps_the_account() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::support::authority::{Authority, Fault, error_body};

    for (error, code) in [("interaction_required", 50076), ("consent_required", 65001)] {
        let authority = Authority::start().await;
        let prompts = Arc::new(AtomicUsize::new(0));
        let credential = counting_prompts(&authority, &prompts);
        authority.push_fault(loopback_answer("alice", "at-1", "rt-1"));
        credential.get_token([RESOURCE]).await.unwrap();

        // The refresh for the resource, refused; then the poll of its sign-in.
        authority.push_fault(Fault::Respond {
            status: 400,
            body: error_body(error, code, "The user must act in a sign-in."),
            headers: vec![],
        });
        authority.push_fault(loopback_answer("alice", "at-mfa", "rt-2"));
        let token = credential
            .get_token(["https://mfa.test/.default"])
            .await
            .unwrap_or_else(|e| panic!("{error}: {e}"));
        assert_eq!(token.secret().expose_secret(), "at-mfa");
        assert_eq!(prompts.load(Ordering::SeqCst), 2, "{error}: prompted");

        authority.push_fault(loopback_answer("alice", "at-other", "rt-3"));
        let other = credential.get_token([OTHER]).await.unwrap();
        assert_eq!(other.secret().expose_secret(), "at-other");
        assert_eq!(prompts.load(Ordering::SeqCst), 2, "{error}: no prompt");
        let requests = authority.requests();
        assert_eq!(
            requests.last().unwrap().field("grant_type"),
            Some("refresh_token"),
            "{error}"
        );
    }
}

/// Entra refusing the refresh token for one resource only (a Conditional Access policy:
/// AADSTS53000, device not compliant) signs the user in for that request, and when that fails
/// too, the account stays signed in: the next request for another resource is served by the
/// refresh token, without a prompt. Before, the account was forgotten at the first refusal,
/// and every later request prompted again.
#[tokio::test(start_paused = true)]
async fn a_refusal_for_one_resource_prompts_for_it_and_keeps_the_account_for_the_others() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::support::authority::Authority;

    let authority = Authority::start().await;
    let prompts = Arc::new(AtomicUsize::new(0));
    let credential = counting_prompts(&authority, &prompts);
    authority.push_fault(loopback_answer("alice", "at-1", "rt-1"));
    credential.get_token([RESOURCE]).await.unwrap();
    assert_eq!(prompts.load(Ordering::SeqCst), 1);

    // The refresh for the blocked resource, then the poll of its sign-in.
    authority.push_fault(blocked());
    authority.push_fault(blocked());
    let err = credential
        .get_token(["https://blocked.test/.default"])
        .await
        .unwrap_err();
    assert_eq!(err.error_codes(), [53000], "{err}");
    assert_eq!(
        prompts.load(Ordering::SeqCst),
        2,
        "the blocked request prompts"
    );

    authority.push_fault(loopback_answer("alice", "at-other", "rt-2"));
    let other = credential.get_token([OTHER]).await.unwrap();
    assert_eq!(other.secret().expose_secret(), "at-other");
    assert_eq!(
        prompts.load(Ordering::SeqCst),
        2,
        "no prompt for the others"
    );
    let requests = authority.requests();
    let last = requests.last().unwrap();
    assert_eq!(last.field("grant_type"), Some("refresh_token"), "{last:?}");
    assert_eq!(last.field("refresh_token"), Some("rt-1"));
}

/// The account's refresh tokens refused in turn, the newest for this request only (MFA,
/// AADSTS50076) and the oldest as dead (unused too long, AADSTS700082): the account stays
/// pinned, and the next request is served by the newest without a prompt. Before, the last
/// refusal alone decided: the account was forgotten, and the next request prompted.
#[tokio::test(start_paused = true)]
async fn a_dead_refresh_token_refused_after_a_live_one_keeps_the_account() {
    use std::sync::atomic::Ordering;

    use crate::support::authority::{Authority, Fault, error_body};

    let authority = Authority::start().await;
    let prompts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let credential = counting_prompts(&authority, &prompts);
    let cae = |scope: &str| TokenRequest::new([scope]).with_cae(true);
    authority.push_fault(loopback_answer("alice", "at-1", "rt-1"));
    credential.get_token([RESOURCE]).await.unwrap();
    // Redeemed for the CAE document: rt-2 there, rt-1 left in the other.
    authority.push_fault(loopback_answer("alice", "at-cae", "rt-2"));
    credential.get_token_with(cae(OTHER)).await.unwrap();

    let refusal = |code: u32, description: &str| Fault::Respond {
        status: 400,
        body: error_body("invalid_grant", code, description),
        headers: vec![],
    };
    let mfa = || refusal(50076, "multi-factor authentication required");
    authority.push_fault(mfa());
    authority.push_fault(refusal(
        700082,
        "the refresh token has expired due to inactivity",
    ));
    // The sign-in this request then prompts for, refused too.
    authority.push_fault(mfa());
    let error = credential
        .get_token_with(cae("https://mfa.test/.default"))
        .await
        .unwrap_err();
    assert_eq!(error.error_codes(), [50076], "{error}");
    let sent: Vec<_> = authority
        .requests()
        .iter()
        .filter_map(|r| r.field("refresh_token").map(str::to_owned))
        .collect();
    assert_eq!(sent, ["rt-1", "rt-2", "rt-1"], "the newest first");
    assert_eq!(prompts.load(Ordering::SeqCst), 2);

    authority.push_fault(loopback_answer("alice", "at-third", "rt-3"));
    let third = credential
        .get_token_with(cae("https://third.test/.default"))
        .await
        .unwrap();
    assert_eq!(third.secret().expose_secret(), "at-third");
    assert_eq!(
        prompts.load(Ordering::SeqCst),
        2,
        "no prompt: still signed in"
    );
    assert_eq!(
        authority.requests().last().unwrap().field("refresh_token"),
        Some("rt-2")
    );
}

/// A loopback token answer for `uid` (tenant `contoso`), with a refresh token.
fn loopback_answer(
    uid: &str,
    access_token: &str,
    refresh_token: &str,
) -> crate::support::authority::Fault {
    use base64::Engine;
    let client_info = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!(r#"{{"uid":"{uid}","utid":"contoso"}}"#));
    crate::support::authority::Fault::Body(
        serde_json::json!({
            "token_type": "Bearer",
            "expires_in": 3600,
            "access_token": access_token,
            "refresh_token": refresh_token,
            "client_info": client_info,
        })
        .to_string(),
    )
}

/// Entra's refusal of a refresh token for one resource (AADSTS53000, Conditional Access).
fn blocked() -> crate::support::authority::Fault {
    crate::support::authority::Fault::Respond {
        status: 400,
        body: crate::support::authority::error_body(
            "invalid_grant",
            53000,
            "Device is not in required device state: compliant.",
        ),
        headers: vec![],
    }
}

/// A credential at the loopback `authority` counting its prompts in `prompts`.
fn counting_prompts(
    authority: &crate::support::authority::Authority,
    prompts: &Arc<std::sync::atomic::AtomicUsize>,
) -> DeviceCodeCredential {
    let prompts = Arc::clone(prompts);
    DeviceCodeCredential::builder()
        .tenant_id("contoso")
        .authority_host(authority.url())
        .http_client(crate::support::creds::http(authority))
        .prompt(move |_| {
            prompts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .build()
        .unwrap()
}

/// When the sign-in for a request whose refresh was refused for it only signs someone else
/// in, that account replaces the pinned one, and no token cached in memory for the previous
/// one serves it.
#[tokio::test(start_paused = true)]
async fn another_user_signing_in_after_a_refusal_for_one_resource_replaces_the_account() {
    use crate::support::authority::Authority;

    let authority = Authority::start().await;
    let prompts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let credential = counting_prompts(&authority, &prompts);
    authority.push_fault(loopback_answer("alice", "at-alice", "rt-alice"));
    credential.get_token([RESOURCE]).await.unwrap();
    // Redeemed silently: kept in the credential's memory too.
    authority.push_fault(loopback_answer("alice", "at-alice-other", "rt-alice"));
    credential.get_token([OTHER]).await.unwrap();

    authority.push_fault(blocked());
    authority.push_fault(loopback_answer("bob", "at-bob", "rt-bob"));
    let blocked_for_alice = credential
        .get_token(["https://blocked.test/.default"])
        .await
        .unwrap();
    assert_eq!(blocked_for_alice.secret().expose_secret(), "at-bob");

    authority.push_fault(loopback_answer("bob", "at-bob-2", "rt-bob-2"));
    let other = credential.get_token([OTHER]).await.unwrap();
    assert_eq!(other.secret().expose_secret(), "at-bob-2", "not alice's");
    let requests = authority.requests();
    assert_eq!(
        requests.last().unwrap().field("refresh_token"),
        Some("rt-bob")
    );
}

/// A caller dropped after the sign-in it waited for signed someone else in (a tower `Timeout`
/// firing then) still leaves no token cached in memory for the previous account: the switch
/// and the clearing happen as the sign-in ends, not in the caller's code after it. Before,
/// the next request for another resource was served the previous user's token.
#[tokio::test(start_paused = true)]
async fn a_caller_dropped_after_another_user_signed_in_leaves_no_token_of_the_previous_one() {
    use std::task::Poll;

    use crate::support::authority::Authority;
    use crate::support::clock::settle;

    let authority = Authority::start().await;
    let prompts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let credential = counting_prompts(&authority, &prompts);
    authority.push_fault(loopback_answer("alice", "at-alice", "rt-alice"));
    credential.get_token([RESOURCE]).await.unwrap();
    authority.push_fault(loopback_answer("alice", "at-alice-other", "rt-alice"));
    credential.get_token([OTHER]).await.unwrap();

    authority.push_fault(blocked());
    authority.push_fault(loopback_answer("bob", "at-bob", "rt-bob"));
    let mut caller = Box::pin(credential.get_token(["https://blocked.test/.default"]));
    // Polled until its sign-in runs, then left unpolled while the sign-in ends.
    while !format!("{credential:?}").contains("signing_in: true") {
        let polled = std::future::poll_fn(|cx| Poll::Ready(caller.as_mut().poll(cx))).await;
        assert!(matches!(polled, Poll::Pending), "{polled:?}");
        settle().await;
    }
    while format!("{credential:?}").contains("signing_in: true") {
        settle().await;
    }
    let shown = format!("{credential:?}");
    assert!(shown.contains("bob"), "{shown}");
    drop(caller);

    authority.push_fault(loopback_answer("bob", "at-bob-2", "rt-bob-2"));
    let other = credential.get_token([OTHER]).await.unwrap();
    assert_eq!(other.secret().expose_secret(), "at-bob-2", "not alice's");
    assert_eq!(
        authority.requests().last().unwrap().field("refresh_token"),
        Some("rt-bob")
    );
}
