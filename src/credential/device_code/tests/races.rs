//! Races between a sign-in landing and the account being forgotten, against the loopback
//! authority, each step held until the test lets it go.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::TryRecvError;

use base64::Engine;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use super::*;
use crate::refresh::DEFAULT_RETRY_AFTER_FAILURE;
use crate::test_support::authority::{Authority, Fault, error_body};
use crate::test_support::clock::held;
use crate::{HttpClient, RetryOptions};

const RESOURCE: &str = "https://resource.test/.default";
const OTHER: &str = "https://other.test/.default";
const BLOCKED: &str = "https://blocked.test/.default";
const SHARED: &str = "https://shared.test/.default";

/// A token answer for `uid` (tenant `contoso`), with a refresh token.
fn answer(uid: &str, access_token: &str, refresh_token: &str) -> Fault {
    let client_info = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!(r#"{{"uid":"{uid}","utid":"contoso"}}"#));
    Fault::Body(
        json!({
            "token_type": "Bearer",
            "expires_in": 3600,
            "access_token": access_token,
            "refresh_token": refresh_token,
            "client_info": client_info,
        })
        .to_string(),
    )
}

fn refused(error: &str, code: u32, description: &str) -> Fault {
    Fault::Respond {
        status: 400,
        body: error_body(error, code, description),
        headers: Vec::new(),
    }
}

/// Entra's refusal of a dead refresh token: the account is forgotten.
fn dead() -> Fault {
    refused(
        "invalid_grant",
        700082,
        "The refresh token has expired due to inactivity.",
    )
}

/// Entra's refusal of one request made with the refresh token (a Conditional Access
/// policy of that resource): the account stays.
fn refused_for_this_request_only() -> Fault {
    refused(
        "invalid_grant",
        53000,
        "Device is not in required device state: compliant.",
    )
}

/// A credential at `authority` counting its prompts.
fn credential(authority: &Authority, prompts: &Arc<AtomicUsize>) -> DeviceCodeCredential {
    let http = HttpClient::builder()
        .add_root_certificates_pem(authority.ca_pem())
        .timeout(None)
        .retry(RetryOptions::default().total_timeout(None))
        .build()
        .unwrap();
    let prompts = Arc::clone(prompts);
    DeviceCodeCredential::builder()
        .tenant_id("contoso")
        .authority_host(authority.url())
        .http_client(http)
        .prompt(move |_| {
            prompts.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap()
}

async fn token(
    credential: &DeviceCodeCredential,
    scope: &str,
) -> Result<AccessToken, CredentialError> {
    credential.inner.get_token(TokenRequest::new([scope])).await
}

fn secret(token: &AccessToken) -> &str {
    token.secret().expose_secret()
}

/// Waits until `done` holds, 1 ms of the paused clock at a time, and fails naming
/// `what` after 60 s: a broken race fails its test instead of hanging it. Every server
/// is in this process, so the clock moves only once nothing is in flight.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "not after 60 s: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A spawned call's result, once it has returned (see [`until`]).
async fn joined<T>(what: &str, call: JoinHandle<T>) -> T {
    until(what, || call.is_finished()).await;
    call.await.unwrap()
}

/// What a call to the credential returns.
type Outcome = Result<AccessToken, CredentialError>;

/// A call to the credential, spawned.
type Call = JoinHandle<Outcome>;

/// A credential at a loopback authority of its own, and the count of its prompts.
async fn start() -> (Authority, Arc<AtomicUsize>, DeviceCodeCredential) {
    let authority = Authority::start().await;
    let prompts = Arc::new(AtomicUsize::new(0));
    let credential = credential(&authority, &prompts);
    (authority, prompts, credential)
}

/// [`start`], then alice signed in for RESOURCE: one prompt, one poll, her refresh token
/// `rt-alice`.
async fn alice_signed_in() -> (Authority, Arc<AtomicUsize>, DeviceCodeCredential) {
    let (authority, prompts, credential) = start().await;
    authority.push_fault(answer("alice", "at-alice", "rt-alice"));
    token(&credential, RESOURCE).await.unwrap();
    (authority, prompts, credential)
}

/// A call for `scope`, spawned.
fn spawn_token(credential: &DeviceCodeCredential, scope: &'static str) -> Call {
    let credential = credential.clone();
    tokio::spawn(async move { token(&credential, scope).await })
}

/// A call for `scope`, spawned while another call's request for it is in flight: it
/// shares that request, so it is still waiting 1 ms (of the paused clock) later.
async fn spawn_sharing(credential: &DeviceCodeCredential, scope: &'static str) -> Call {
    let call = spawn_token(credential, scope);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!call.is_finished());
    call
}

/// `fault`, to be answered once the gate returned is notified.
fn push_held(authority: &Authority, fault: Fault) -> Arc<Notify> {
    let gate = Arc::new(Notify::new());
    authority.push_fault(Fault::HoldThen(Arc::clone(&gate), Box::new(fault)));
    gate
}

/// A call for `scope`, spawned, once its request is sent and held, to be answered by
/// `fault` once the gate returned is notified.
async fn spawn_held(
    authority: &Authority,
    credential: &DeviceCodeCredential,
    scope: &'static str,
    fault: Fault,
) -> (Call, Arc<Notify>) {
    let gate = push_held(authority, fault);
    let sent = authority.requests().len();
    let call = spawn_token(credential, scope);
    until(&format!("the request for {scope}"), || {
        authority.requests().len() > sent
    })
    .await;
    (call, gate)
}

/// alice's sign-in for RESOURCE, spawned, once it has asked for its device code (its
/// first poll is due 5 s later).
async fn spawn_alice_signing_in(authority: &Authority, credential: &DeviceCodeCredential) -> Call {
    let for_resource = spawn_token(credential, RESOURCE);
    until("alice's device code request", || {
        !authority.device_code_requests().is_empty()
    })
    .await;
    for_resource
}

/// alice's sign-in spawned by [`spawn_alice_signing_in`], once it has returned her token.
async fn alice_has_signed_in(for_resource: Call) {
    let for_resource = joined("alice's sign-in", for_resource).await;
    assert_eq!(secret(&for_resource.unwrap()), "at-alice");
}

/// The account's refresh token is dead: a call for OTHER forgets the account, and the
/// sign-in that follows is declined.
async fn forgotten_then_declined(authority: &Authority, credential: &DeviceCodeCredential) {
    authority.push_fault(dead());
    authority.push_fault(refused(
        "authorization_declined",
        70000,
        "The user declined the sign-in.",
    ));
    let declined = token(credential, OTHER).await.unwrap_err();
    assert_eq!(declined.error_code(), Some("authorization_declined"));
}

/// Waits until `call` returns or plans again (`reached`, from `hold_next_run`), and says
/// whether it planned again.
async fn planned_again_before_returning(
    what: &str,
    reached: &mut oneshot::Receiver<()>,
    call: &Call,
) -> bool {
    let mut planned_again = false;
    until(what, || {
        planned_again = planned_again || reached.try_recv().is_ok();
        planned_again || call.is_finished()
    })
    .await;
    planned_again
}

/// The refresh tokens the authority was sent, in order.
fn sent_refresh_tokens(authority: &Authority) -> Vec<String> {
    authority
        .requests()
        .iter()
        .filter_map(|r| r.field("refresh_token").map(str::to_owned))
        .collect()
}

/// The refresh tokens `sent` begin with `first`, and all sent after those are `then`.
fn assert_sent(sent: &[String], first: [&str; 3], then: &str) {
    assert_eq!(sent[..3], first);
    assert!(sent[3..].iter().all(|t| t == then), "{sent:?}");
}

/// None of `tokens` is one alice was served before (`at-alice…`).
fn assert_new_tokens(tokens: &[&AccessToken]) {
    for token in tokens {
        assert!(!secret(token).contains("alice"), "a new token: {token:?}");
    }
}

/// The credential's token for `scope`, served from its memory: without a request.
async fn from_memory(
    authority: &Authority,
    credential: &DeviceCodeCredential,
    scope: &str,
    what: &str,
) -> AccessToken {
    let requests = authority.requests().len();
    let token = token(credential, scope).await.unwrap();
    assert_eq!(authority.requests().len(), requests, "{what}");
    token
}

/// Two calls for SHARED that share one request sent before alice signed in again, once
/// both have returned, and the refresh tokens sent, in order. alice signed in (see
/// [`alice_signed_in`]), a first call for SHARED redeems her refresh token, held, to be
/// answered by `refusal`. Meanwhile she signs in again (for BLOCKED, a request refused for
/// her for that request only: the same account, the memory kept), and a second call for
/// SHARED, reading the account after that sign-in, shares the held request. Then
/// `refusal` comes.
async fn a_request_shared_across_a_sign_in(
    authority: &Authority,
    prompts: &AtomicUsize,
    credential: &DeviceCodeCredential,
    refusal: Fault,
) -> (Outcome, Outcome, Vec<String>) {
    let (first, gate) = spawn_held(authority, credential, SHARED, refusal).await;

    // alice signs in again, for a request refused for her for that request only.
    authority.push_fault(refused_for_this_request_only());
    authority.push_fault(answer("alice", "at-alice-2", "rt-alice-2"));
    let blocked = token(credential, BLOCKED).await.unwrap();
    assert_eq!(secret(&blocked), "at-alice-2");
    assert_eq!(prompts.load(Ordering::SeqCst), 2);

    // A second call for SHARED shares the held request: it sends none of its own.
    let second = spawn_sharing(credential, SHARED).await;
    // alice's poll, SHARED's held refresh, BLOCKED's refresh, alice's second poll.
    assert_eq!(authority.requests().len(), 4);

    gate.notify_one();
    let first = joined("the first call", first).await;
    let second = joined("the second call", second).await;
    (first, second, sent_refresh_tokens(authority))
}

/// alice's refresh token found dead (the account forgotten, on another runtime) while
/// bob's sign-in, for a request refused for alice only, lands: the forgetting is held
/// as its clear of the memory begins, until that landing waits for it (or the test is
/// done). The landing then pins bob only after alice's tokens are gone: bob is served
/// none of them, and his own are kept. Before, the account was forgotten and the
/// memory cleared in two critical sections: bob's sign-in landed between them, found
/// no account to replace, and bob was served alice's token for OTHER.
#[tokio::test(start_paused = true)]
async fn a_sign_in_landing_as_the_account_is_forgotten_is_served_none_of_its_tokens() {
    let (authority, prompts, credential) = alice_signed_in().await;
    // Redeemed silently: kept in the credential's memory.
    authority.push_fault(answer("alice", "at-alice-other", "rt-alice"));
    token(&credential, OTHER).await.unwrap();

    // Refused for alice for this request only: bob signs in for it. His first poll
    // is pending; the next is due 5 s later, which the clock is held short of.
    authority.push_fault(refused_for_this_request_only());
    authority.push_fault(refused(
        "authorization_pending",
        70016,
        "Authorization is pending. Continue polling.",
    ));
    let for_bob = spawn_token(&credential, BLOCKED);
    // alice's poll, OTHER's refresh, BLOCKED's refresh, bob's first poll.
    until("bob's first poll", || authority.requests().len() >= 4).await;

    // alice's refresh token is dead: a request for another scope forgets her, on a
    // runtime of its own, held as the clear begins.
    authority.push_fault(dead());
    authority.push_fault(answer("bob", "at-bob", "rt-bob"));
    let (reached, at_clear) = oneshot::channel();
    let (checked, until_checked) = std::sync::mpsc::channel::<()>();
    let waited = credential.inner.state.waited();
    let landing_waited = Arc::new(AtomicBool::new(false));
    credential.inner.memory.before_next_clear({
        let landing_waited = Arc::clone(&landing_waited);
        move || {
            let before = waited.load(Ordering::SeqCst);
            let _ = reached.send(());
            // Held until bob's landing waits for the sign-in's lock (held here, with
            // the fix) or the test has checked (without it, the landing never waits).
            // Its runtime's other work (connections) goes on meanwhile.
            tokio::task::block_in_place(|| {
                loop {
                    if waited.load(Ordering::SeqCst) > before {
                        landing_waited.store(true, Ordering::SeqCst);
                        return;
                    }
                    match until_checked.try_recv() {
                        Err(TryRecvError::Empty) => std::thread::yield_now(),
                        _ => return,
                    }
                }
            });
        }
    });
    let (forgotten, forgotten_result) = oneshot::channel();
    let (test_done, until_test_done) = std::sync::mpsc::channel::<()>();
    let forgetting = std::thread::spawn({
        let credential = credential.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let result = runtime.block_on(token(&credential, "https://x.test/.default"));
            let _ = forgotten.send(result);
            // Its connections stay up while the test may still use them.
            let _ = until_test_done.recv();
        }
    });
    held(at_clear).await.unwrap();

    // bob's next poll: he has signed in, and his sign-in lands.
    let bob = joined("bob's sign-in", for_bob).await.unwrap();
    assert_eq!(secret(&bob), "at-bob");
    let other = token(&credential, OTHER).await.unwrap();
    assert_ne!(
        secret(&other),
        "at-alice-other",
        "bob is served alice's token"
    );
    drop(checked);
    assert!(
        landing_waited.load(Ordering::SeqCst),
        "bob's sign-in landed while alice was being forgotten"
    );
    // The request that forgot alice is served as bob, who signed in meanwhile.
    let x = held(forgotten_result).await.unwrap();
    assert!(!secret(&x.unwrap()).contains("alice"));
    drop(test_done);
    forgetting.join().unwrap();

    // bob stays signed in: OTHER and x came from his refresh token, BLOCKED is his
    // token, without a prompt.
    let requests = authority.requests();
    for scope in ["other.test", "x.test"] {
        let last = requests
            .iter()
            .rfind(|r| r.field("scope").is_some_and(|s| s.contains(scope)))
            .unwrap();
        assert_eq!(last.field("refresh_token"), Some("rt-bob"), "{scope}");
    }
    let again = from_memory(&authority, &credential, BLOCKED, "from the cache").await;
    assert_eq!(secret(&again), "at-bob");
    assert_eq!(prompts.load(Ordering::SeqCst), 2, "alice's and bob's");
    let shown = format!("{credential:?}");
    assert!(shown.contains("bob"), "{shown}");
}

/// Two requests redeem alice's refresh token as it dies. The first one's refusal
/// forgets her, and she signs in again there; the second one's refusal comes after
/// that sign-in landed. It concerns the token she had before: her new sign-in stays,
/// with the tokens cached since, and the second request is served by it. Before, the
/// account was told by its id alone: the late refusal forgot her new sign-in and
/// cleared its tokens, and the second request prompted her a third time.
#[tokio::test(start_paused = true)]
async fn a_refusal_sent_before_the_account_signed_in_again_does_not_forget_it() {
    let (authority, prompts, credential) = alice_signed_in().await;
    let (late, gate) = spawn_held(
        &authority,
        &credential,
        "https://late.test/.default",
        dead(),
    )
    .await;
    // The first refusal: alice is forgotten, and signs in again for that request.
    authority.push_fault(dead());
    authority.push_fault(answer("alice", "at-alice-2", "rt-alice-2"));
    let first = token(&credential, "https://first.test/.default").await;
    assert_eq!(secret(&first.unwrap()), "at-alice-2");
    assert_eq!(prompts.load(Ordering::SeqCst), 2);
    authority.push_fault(answer("alice", "at-alice-other", "rt-alice-2"));
    token(&credential, OTHER).await.unwrap();

    // The late refusal of the token she had before.
    gate.notify_one();
    let late = joined("the late request", late).await;
    let sent = sent_refresh_tokens(&authority);
    assert_eq!(
        prompts.load(Ordering::SeqCst),
        2,
        "no new prompt; sent {sent:?}, got {late:?}"
    );
    // The late request is served by her new refresh token.
    let late = late.unwrap();
    assert_eq!(sent, ["rt-alice", "rt-alice", "rt-alice-2", "rt-alice-2"]);
    assert_new_tokens(&[&late]);
    let other = from_memory(&authority, &credential, OTHER, "still in memory").await;
    assert_eq!(secret(&other), "at-alice-other", "still in memory");
}

/// A request for SHARED redeems alice's refresh token as it dies, held. Meanwhile she
/// signs in again (for a request refused for her for that request only: the same
/// account, the memory kept), and a second call for SHARED, reading the account after
/// that sign-in, shares the held request. The refusal concerns the token she had
/// before: both calls are served by her new one, without a prompt. Before, the second
/// call took the refusal as if its own request had got it: alice still pinned and no
/// sign-in since its read, it returned the error although she is signed in.
#[tokio::test(start_paused = true)]
async fn a_call_sharing_a_request_sent_before_a_sign_in_is_served_as_the_account_now() {
    let (authority, prompts, credential) = alice_signed_in().await;
    let (first, second, sent) =
        a_request_shared_across_a_sign_in(&authority, &prompts, &credential, dead()).await;
    let second = second.unwrap_or_else(|e| panic!("{e}; sent {sent:?}"));
    let first = first.unwrap();
    // Both served by her new refresh token (the second call may share the first's
    // new request, or send its own).
    assert_sent(&sent, ["rt-alice", "rt-alice", "rt-alice-2"], "rt-alice-2");
    assert_new_tokens(&[&first, &second]);
    assert_eq!(prompts.load(Ordering::SeqCst), 2, "no new prompt");
    let blocked_again = from_memory(&authority, &credential, BLOCKED, "still in memory").await;
    assert_eq!(secret(&blocked_again), "at-alice-2", "still in memory");
}

/// A call that shared alice's sign-in for another request (its one prompt) redeems
/// her refresh token for its own, held. Meanwhile bob signs in (for a request refused
/// for alice only), and another call finds bob's refresh token dead, forgets him, and
/// is declined in its own sign-in. The held answer then comes: a sign-in landed since
/// the first call read alice, but no account is pinned now. That call has prompted
/// once: it returns the error, and no sign-in starts. Before, it planned again as for
/// any sign-in landed since, found no account, and prompted a fourth time.
#[tokio::test(start_paused = true)]
async fn a_call_that_signed_in_returns_the_error_when_the_account_is_forgotten_meanwhile() {
    const MINE: &str = "https://mine.test/.default";
    let (authority, prompts, credential) = start().await;

    // alice signs in for RESOURCE; the call for MINE shares that sign-in, then redeems
    // her refresh token for MINE, held.
    authority.push_fault(answer("alice", "at-alice", "rt-alice"));
    let gate = push_held(&authority, dead());
    let for_resource = spawn_alice_signing_in(&authority, &credential).await;
    let mine = spawn_token(&credential, MINE);
    // alice's poll, MINE's held refresh.
    until("MINE's request", || authority.requests().len() >= 2).await;
    alice_has_signed_in(for_resource).await;
    assert_eq!(prompts.load(Ordering::SeqCst), 1);
    assert_eq!(
        authority.requests()[1].field("refresh_token"),
        Some("rt-alice")
    );

    // bob signs in, for a request refused for alice only.
    authority.push_fault(refused_for_this_request_only());
    authority.push_fault(answer("bob", "at-bob", "rt-bob"));
    let bob = token(&credential, BLOCKED).await.unwrap();
    assert_eq!(secret(&bob), "at-bob");
    // bob's refresh token is dead: he is forgotten, and declines the sign-in that
    // follows.
    forgotten_then_declined(&authority, &credential).await;
    assert_eq!(prompts.load(Ordering::SeqCst), 3);
    let shown = format!("{credential:?}");
    assert!(!shown.contains("bob"), "{shown}");

    // The held refusal of alice's token.
    gate.notify_one();
    let result = joined("the call for MINE", mine).await;
    assert_eq!(
        prompts.load(Ordering::SeqCst),
        3,
        "no prompt more; got {result:?}"
    );
    let error = result.unwrap_err();
    assert_eq!(error.error_codes(), [700082], "{error}");
    assert_eq!(authority.device_code_requests().len(), 3);
}

/// A request for SHARED redeems alice's refresh token, held, and is refused for that
/// request only. Meanwhile she signs in again (for another request refused for her),
/// and a second call for SHARED, reading the account after that sign-in, shares the
/// held request. That request was made with the token she had before: the second call
/// sends its own request, with her new one, and is served without a prompt, as the
/// call that sent the held one is. Before, the second call took the refusal as its
/// own and prompted her a third time.
#[tokio::test(start_paused = true)]
async fn a_call_sharing_a_refusal_for_that_request_sent_before_a_sign_in_does_not_prompt() {
    let (authority, prompts, credential) = alice_signed_in().await;
    let refusal = refused_for_this_request_only();
    let (first, second, sent) =
        a_request_shared_across_a_sign_in(&authority, &prompts, &credential, refusal).await;
    assert_eq!(
        prompts.load(Ordering::SeqCst),
        2,
        "no new prompt; sent {sent:?}, got {second:?}"
    );
    assert_eq!(authority.device_code_requests().len(), 2);
    let second = second.unwrap();
    let first = first.unwrap();
    assert_sent(&sent, ["rt-alice", "rt-alice", "rt-alice-2"], "rt-alice-2");
    assert_new_tokens(&[&first, &second]);
}

/// A call shares a request refused for that request only, with no sign-in since: it
/// plans again, its own request answered by the refusal remembered (no request sent),
/// and it shares the sign-in the first call starts: one prompt, and no request more
/// than the first call's.
#[tokio::test(start_paused = true)]
async fn a_call_sharing_a_refusal_for_that_request_shares_its_sign_in() {
    let (authority, prompts, credential) = alice_signed_in().await;
    let refusal = refused_for_this_request_only();
    let (first, gate) = spawn_held(&authority, &credential, SHARED, refusal).await;
    let second = spawn_sharing(&credential, SHARED).await;

    authority.push_fault(answer("alice", "at-alice-2", "rt-alice-2"));
    gate.notify_one();
    let first = joined("the first call", first).await.unwrap();
    let second = joined("the second call", second).await.unwrap();
    assert_eq!(secret(&first), "at-alice-2");
    assert_eq!(secret(&second), "at-alice-2");
    assert_eq!(prompts.load(Ordering::SeqCst), 2);
    assert_eq!(authority.device_code_requests().len(), 2);
    // alice's poll, SHARED's refused refresh, alice's second poll.
    assert_eq!(authority.requests().len(), 3);
}

/// A call whose own request is refused for that request only signs in at once: that
/// request was made with the tokens it read, and planning again would only meet the
/// refusal again (remembered). Before `started`, every such refusal was taken as perhaps another
/// call's, and the call went round once more first.
#[tokio::test(start_paused = true)]
async fn a_call_refused_for_its_own_request_signs_in_without_planning_again() {
    let (authority, prompts, credential) = alice_signed_in().await;
    let refusal = refused_for_this_request_only();
    let (blocked, gate) = spawn_held(&authority, &credential, BLOCKED, refusal).await;
    authority.push_fault(answer("alice", "at-alice-2", "rt-alice-2"));
    // Past its read: a call planning again stops here.
    let (mut reached, _go) = credential.inner.hold_next_run();
    gate.notify_one();
    let planned_again =
        planned_again_before_returning("BLOCKED returns, or plans again", &mut reached, &blocked)
            .await;
    assert!(
        !planned_again,
        "the call planned again after its own refusal"
    );
    let blocked = blocked.await.unwrap().unwrap();
    assert_eq!(secret(&blocked), "at-alice-2");
    assert_eq!(prompts.load(Ordering::SeqCst), 2);
    // alice's poll, BLOCKED's refused refresh, alice's second poll.
    assert_eq!(authority.requests().len(), 3);
}

/// A call that shared alice's sign-in for another request reads her account and is
/// held before its own request; meanwhile another call finds her refresh token dead,
/// forgets her, and is declined in its own sign-in. The held call, whose read is out
/// of date (the memory cleared), plans again and finds no account: it has prompted
/// once, and returns the error without a prompt or a request more.
#[tokio::test(start_paused = true)]
async fn a_call_that_signed_in_finds_the_account_signed_out_before_its_request() {
    const MINE: &str = "https://mine.test/.default";
    let (authority, prompts, credential) = start().await;

    authority.push_fault(answer("alice", "at-alice", "rt-alice"));
    let for_resource = spawn_alice_signing_in(&authority, &credential).await;
    // The call for MINE shares the sign-in, then stops before its own request.
    let (mut reached, go) = credential.inner.hold_next_run();
    let mine = spawn_token(&credential, MINE);
    until("the call for MINE stops before its request", || {
        reached.try_recv().is_ok()
    })
    .await;
    alice_has_signed_in(for_resource).await;
    assert_eq!(prompts.load(Ordering::SeqCst), 1);

    // alice's refresh token is dead: she is forgotten, and declines the sign-in that
    // follows.
    forgotten_then_declined(&authority, &credential).await;
    assert_eq!(prompts.load(Ordering::SeqCst), 2);
    let requests = authority.requests().len();

    go.send(()).unwrap();
    let result = joined("the call for MINE", mine).await;
    assert_eq!(
        prompts.load(Ordering::SeqCst),
        2,
        "no prompt more; got {result:?}"
    );
    let error = result.unwrap_err();
    assert!(error.message().contains("signed out again"), "{error}");
    assert_eq!(authority.device_code_requests().len(), 2);
    assert_eq!(authority.requests().len(), requests);
}

/// A call for SHARED shares a request refused for that request only and plans again
/// (its own request answered by the refusal remembered), then shares alice's sign-in
/// for BLOCKED. Meanwhile, once that refusal is no longer remembered, another call
/// redeems her old refresh token for SHARED, held; her sign-in lands, and the first
/// call shares that request, made with the token she had before and refused again. The
/// sign-in gave her new tokens: the call plans again once more, and is served by them. Before,
/// having planned again once, it returned the refusal although she is signed in.
#[tokio::test(start_paused = true)]
async fn a_call_that_planned_again_before_its_sign_in_plans_again_after_it() {
    let (authority, prompts, credential) = alice_signed_in().await;

    // A's request for SHARED, held, to be refused for it only; C shares it.
    let refusal = refused_for_this_request_only();
    let (a, gate) = spawn_held(&authority, &credential, SHARED, refusal).await;
    let c = spawn_sharing(&credential, SHARED).await;
    assert_eq!(authority.requests().len(), 2);

    // B, refused for BLOCKED, signs alice in again: the poll that says so is held.
    authority.push_fault(refused_for_this_request_only());
    let signed_in = push_held(&authority, answer("alice", "at-alice-2", "rt-alice-2"));
    let b = spawn_token(&credential, BLOCKED);
    until("B's sign-in's poll", || authority.requests().len() >= 4).await;
    assert_eq!(prompts.load(Ordering::SeqCst), 2);

    // The refusal: A shares B's sign-in; C plans again (the one call to reach its
    // request now), is answered by the refusal remembered, and shares it too.
    let (mut reached, go) = credential.inner.hold_next_run();
    gate.notify_one();
    until("C plans again after the refusal it shared", || {
        reached.try_recv().is_ok()
    })
    .await;
    go.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!a.is_finished() && !c.is_finished());
    assert_eq!(authority.requests().len(), 4);

    // Past the refusal's memory, D redeems alice's old refresh token for SHARED, held.
    tokio::time::sleep(DEFAULT_RETRY_AFTER_FAILURE).await;
    let refusal = refused_for_this_request_only();
    let (d, late) = spawn_held(&authority, &credential, SHARED, refusal).await;

    // alice's sign-in lands; A and C share D's request.
    signed_in.notify_one();
    let b = joined("B's sign-in", b).await;
    assert_eq!(secret(&b.unwrap()), "at-alice-2");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!a.is_finished() && !c.is_finished() && !d.is_finished());
    assert_eq!(authority.requests().len(), 5);

    late.notify_one();
    let a = joined("A", a).await;
    let c = joined("C", c).await;
    let d = joined("D", d).await;
    let sent = sent_refresh_tokens(&authority);
    let c = c.unwrap_or_else(|e| panic!("{e}; sent {sent:?}"));
    assert_new_tokens(&[&a.unwrap(), &c, &d.unwrap()]);
    assert_sent(&sent, ["rt-alice", "rt-alice", "rt-alice"], "rt-alice-2");
    assert_eq!(prompts.load(Ordering::SeqCst), 2, "no new prompt");
    assert_eq!(authority.device_code_requests().len(), 2);
}

/// Two calls for SHARED share alice's sign-in for RESOURCE (their one prompt). One
/// sends its request for SHARED with her new refresh token, held, and `refusal`
/// answers it; the other (J) shares it. J plans again, the one time after its
/// sign-in: its own request, with the same token, is answered by the refusal
/// remembered, and J returns that refusal, without a request, a prompt or a third
/// plan. Planning again is bounded: at most once before a call's sign-in and once
/// after it.
async fn a_call_that_signed_in_plans_again_once_after_it(refusal: Fault, code: u32) {
    let (authority, prompts, credential) = start().await;
    authority.push_fault(answer("alice", "at-alice", "rt-alice"));
    let gate = push_held(&authority, refusal);
    let for_resource = spawn_alice_signing_in(&authority, &credential).await;
    // J, the first of the two to read her account once she has signed in, stops
    // before its request.
    let (mut reached, go) = credential.inner.hold_next_run();
    let (first, second) = (
        spawn_token(&credential, SHARED),
        spawn_token(&credential, SHARED),
    );
    // Both wait for her sign-in: its first poll is due 5 s after the code.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(authority.requests().is_empty());
    until("J stops before its request", || reached.try_recv().is_ok()).await;
    alice_has_signed_in(for_resource).await;
    // alice's poll, the other call's held request for SHARED.
    until("the other call's request", || {
        authority.requests().len() >= 2
    })
    .await;
    assert_eq!(
        authority.requests()[1].field("refresh_token"),
        Some("rt-alice")
    );

    // J shares that request: it sends none of its own.
    let (mut replanned, go_again) = credential.inner.hold_next_run();
    go.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!first.is_finished() && !second.is_finished());
    assert!(replanned.try_recv().is_err(), "J did not share the request");
    assert_eq!(authority.requests().len(), 2);

    // The refusal: the call that sent the request returns it; J plans again.
    gate.notify_one();
    until("J plans again after the refusal it shared", || {
        replanned.try_recv().is_ok()
    })
    .await;
    until("the call that sent the request returns", || {
        first.is_finished() || second.is_finished()
    })
    .await;
    let (sender, j) = if first.is_finished() {
        (first, second)
    } else {
        (second, first)
    };
    let sent = joined("the call that sent the request", sender).await;
    assert_eq!(sent.unwrap_err().error_codes(), [code]);

    // J's own request is answered by the refusal remembered; it plans no third time.
    let (mut third, _go_third) = credential.inner.hold_next_run();
    go_again.send(()).unwrap();
    let planned_a_third_time =
        planned_again_before_returning("J returns, or plans a third time", &mut third, &j).await;
    assert!(!planned_a_third_time, "J planned a third time");
    let error = j.await.unwrap().unwrap_err();
    assert_eq!(error.error_code(), Some("invalid_grant"), "{error}");
    assert_eq!(error.error_codes(), [code], "{error}");
    assert_eq!(prompts.load(Ordering::SeqCst), 1, "no new prompt");
    assert_eq!(authority.device_code_requests().len(), 1);
    assert_eq!(authority.requests().len(), 2, "no request more");
}

#[tokio::test(start_paused = true)]
async fn a_call_that_signed_in_plans_again_once_after_it_on_mfa() {
    let mfa = refused(
        "invalid_grant",
        50076,
        "Due to a configuration change made by your administrator, or because you \
         moved to a new location, you must use multi-factor authentication.",
    );
    a_call_that_signed_in_plans_again_once_after_it(mfa, 50076).await;
}

#[tokio::test(start_paused = true)]
async fn a_call_that_signed_in_plans_again_once_after_it_on_a_code_not_known_here() {
    let unknown = refused("invalid_grant", 9_999_999, "A refusal not known here.");
    a_call_that_signed_in_plans_again_once_after_it(unknown, 9_999_999).await;
}
