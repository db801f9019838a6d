//! Where the layer's tokens come from: one refresh slot per layer, the credential behind it,
//! and claims tokens for CAE challenges. Shared by the tower layer and the reqwest middleware.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::FutureExt;
use http::HeaderValue;
use tokio::time::Instant;
use tower::ServiceExt;
use zeroize::Zeroizing;

use super::Cached;
use crate::credential::BoxCredential;
use crate::error::CredentialError;
use crate::flight::{SingleFlight, WhenAbandoned, deferred};
use crate::refresh::{Entry, Lookup, RefreshPolicy, SlotValue, TokenId, TokenSlot, kept_failure};
use crate::token::{AccessToken, TokenRequest};

/// The name errors of the layer are reported under.
pub(crate) const LAYER: &str = "BearerTokenLayer";
/// What a claims flight does, as its errors name it.
const CLAIMS_ACQUISITION: &str = "the claims token acquisition";

/// A token with its `Authorization` value, built once per token.
#[derive(Clone)]
pub(crate) struct Prepared {
    token: AccessToken,
    header: HeaderValue,
    /// The claims this token was obtained for, if it answered a challenge.
    claims: Option<Arc<str>>,
}

impl SlotValue for Prepared {
    fn token(&self) -> &AccessToken {
        &self.token
    }
}

impl Prepared {
    fn new(token: AccessToken, claims: Option<Arc<str>>) -> Result<Self, CredentialError> {
        let secret = token.secret().expose_secret();
        let mut value = Zeroizing::new(Vec::with_capacity(secret.len().saturating_add(7)));
        value.extend_from_slice(b"Bearer ");
        value.extend_from_slice(secret.as_bytes());
        // The bytes are zeroed when the last clone of the header is dropped.
        let mut header =
            HeaderValue::from_maybe_shared(Bytes::from_owner(value)).map_err(|_| {
                CredentialError::authentication_failed(
                    LAYER,
                    "the credential returned a token with characters that cannot be sent in an \
                 HTTP header",
                )
            })?;
        header.set_sensitive(true);
        Ok(Self {
            token,
            header,
            claims,
        })
    }

    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }
}

/// What the layer asks for and how it renews it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    pub(crate) cae: bool,
    pub(crate) allow_http: bool,
    pub(crate) replay_limit: usize,
    pub(crate) drain_limit: usize,
    pub(crate) refresh: RefreshPolicy,
}

/// How many failing claims values a layer remembers. A resource sending a few different
/// challenges in turn gets each asked for once per spacing (remembering only the last one, two
/// alternating values were each asked for on every request); past this many, the oldest
/// failure is forgotten first and its claims may be asked for again.
const FAILED_CLAIMS: usize = 8;

/// Claims that failed: until when, and who refused them.
struct Failure {
    claims: Arc<str>,
    by: RefusedBy,
    /// The end of its memory (see [`kept_failure`]).
    until: Instant,
}

/// Who refused a claims value.
enum RefusedBy {
    /// The credential could not satisfy the claims: its error is the answer.
    Credential(CredentialError),
    /// The resource answered the token obtained for them with the same challenge: its 401 is
    /// the answer ([`ClaimsState::refused`]).
    Resource,
}

/// What the claims flights of a layer remember beside the flights themselves (keyed by the
/// claims): the last [`FAILED_CLAIMS`] claims values that failed, the credential unable to
/// satisfy them or the resource refusing the token obtained for them. The same claims are not
/// asked for again while such a failure is kept ([`kept_failure`]).
#[derive(Default)]
struct ClaimsState {
    /// Oldest first; one per claims value.
    failed: Vec<Failure>,
}

impl ClaimsState {
    /// The error of `claims`' failure in the credential if its memory has not ended at `now`.
    fn failure(&self, claims: &str, now: Instant) -> Option<&CredentialError> {
        self.kept(claims, now).and_then(|by| match by {
            RefusedBy::Credential(error) => Some(error),
            RefusedBy::Resource => None,
        })
    }

    /// Whether the resource refused a token for `claims` (see [`RefusedBy::Resource`]) within
    /// the memory of that failure at `now`.
    fn refused(&self, claims: &str, now: Instant) -> bool {
        matches!(self.kept(claims, now), Some(RefusedBy::Resource))
    }

    fn kept(&self, claims: &str, now: Instant) -> Option<&RefusedBy> {
        self.failed
            .iter()
            .find(|f| &*f.claims == claims && now < f.until)
            .map(|f| &f.by)
    }

    /// Remembers that `claims` failed with `error` at `now` for `spacing` ([`kept_failure`]:
    /// not a call cut off, nor a transient failure asking for no wait; a throttled one until
    /// the provider's wait if later), in place of an earlier failure of the same claims,
    /// dropping failures whose memory ended and, when full, the oldest. Returns the error to
    /// answer.
    fn remember(
        &mut self,
        claims: Arc<str>,
        error: CredentialError,
        now: Instant,
        spacing: Duration,
    ) -> CredentialError {
        self.failed.retain(|f| f.claims != claims && now < f.until);
        let Some((error, until)) = kept_failure(error.clone(), now, spacing) else {
            return error;
        };
        self.keep(claims, RefusedBy::Credential(error.clone()), until);
        error
    }

    /// Remembers that the resource refused a token for `claims` at `now`: kept for `spacing`
    /// as a final failure of the credential would be ([`kept_failure`]), in place of an
    /// earlier failure of the same claims.
    fn remember_refusal(&mut self, claims: Arc<str>, now: Instant, spacing: Duration) {
        self.failed.retain(|f| f.claims != claims && now < f.until);
        if let Some(until) = now.checked_add(spacing) {
            self.keep(claims, RefusedBy::Resource, until);
        }
    }

    /// Keeps a failure of `claims` (none is kept for them), dropping the oldest when full.
    fn keep(&mut self, claims: Arc<str>, by: RefusedBy, until: Instant) {
        if self.failed.len() >= FAILED_CLAIMS {
            self.failed.remove(0);
        }
        self.failed.push(Failure { claims, by, until });
    }

    /// Forgets `claims`' failure of the credential (it has satisfied them since). A refusal
    /// by the resource stays: a claims flight that passed before it was kept (a burst) would
    /// otherwise erase it, and the resource refuses that token still.
    fn forget(&mut self, claims: &str) {
        self.failed
            .retain(|f| &*f.claims != claims || matches!(f.by, RefusedBy::Resource));
    }
}

/// One per built layer; every clone of the layer, its services and its middleware share it.
///
/// The credential is boxed: the services and the layer carry no credential type, and the
/// box is only called to acquire a token, never on a request that finds a fresh one.
pub(crate) struct Source {
    /// This source's number in [`SLOTS`].
    pub(crate) id: u64,
    credential: BoxCredential,
    request: TokenRequest,
    pub(crate) slot: Arc<TokenSlot<Prepared>>,
    pub(crate) options: Options,
    /// Lock order: this lock, then the slot's (a claims flight lands into the slot), never
    /// the reverse.
    claims: SingleFlight<Arc<str>, Entry<Prepared>, ClaimsState>,
    /// The last answer a service or middleware of this layer got from the slot, for the
    /// others: a clone that holds no answer of its own (made from a service that never served
    /// a request, as when a template is cloned for each request), and the middleware, which
    /// keeps none, check this one as a clone would its own, without taking the slot's lock.
    /// Written on every lookup that finds a token.
    pub(crate) current: ArcSwapOption<Cached>,
}

impl Source {
    pub(crate) fn new(credential: BoxCredential, scopes: Vec<String>, options: Options) -> Self {
        let slot = TokenSlot::new(LAYER, options.refresh);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        slots().insert(id, Arc::downgrade(&slot));
        Self {
            id,
            credential,
            request: TokenRequest::new(scopes).with_cae(options.cae),
            slot,
            options,
            claims: SingleFlight::new(LAYER, CLAIMS_ACQUISITION, ClaimsState::default()),
            current: ArcSwapOption::empty(),
        }
    }

    /// The slot's answer for this moment (see [`TokenSlot::lookup`]).
    pub(crate) fn lookup(&self, now: Instant) -> Lookup<Prepared> {
        #[cfg(test)]
        LOOKUPS.with(|n| n.set(n.get() + 1));
        self.slot.lookup(now, || {
            acquire(self.credential.clone(), self.request.clone(), None)
        })
    }

    /// A token for a claims challenge, bypassing every cache. Concurrent requests rejected
    /// with the same claims share one acquisition, and a token already obtained for these
    /// claims (other than the one that was rejected) is reused. When the credential could not
    /// satisfy these claims, its error is the answer — again, without asking, for the next
    /// `retry_after_failure` (30 s, or a longer `Retry-After`), for each of the last
    /// [`FAILED_CLAIMS`] claims values that failed, unless [`kept_failure`] keeps no such
    /// failure (a transient one asking for no wait, a call cut off). An answer that is the very token the resource rejected (a credential that
    /// ignores claims, or one answering from its own cache) is such a failure: re-sent, it
    /// could only be rejected again.
    ///
    /// The acquisition is a flight (see [`crate::flight`]) keyed by the claims: its outcome
    /// lands — the token stored in the slot, or the failure remembered — as its record ends,
    /// so a finished flight is never handed to a later caller, even when every caller of this
    /// one gave up. It is cut off as the slot's acquisitions are, after
    /// [`ACQUISITION_LIMIT`](crate::refresh::ACQUISITION_LIMIT), with a transient timeout error
    /// that is not kept; and the credential is cloned for it once the claims lock is released.
    pub(crate) async fn claims_token(
        &self,
        claims: &str,
        rejected: TokenId,
    ) -> Result<Entry<Prepared>, CredentialError> {
        // A caller joining a running flight checks its own rejected token against the answer
        // (the flight compares only its starter's): the slot may have renewed in between.
        // A flight started here gets its work once the lock is released: making it clones
        // the credential, a user's type (see "Locks" in `crate::flight`).
        let (flight, joined_rejected, launch) = {
            let mut state = self.claims.lock();
            let current = self.slot.current_entry();
            if let Some(current) = &current {
                let answered = current.value.claims.as_deref() == Some(claims);
                // The answer of a claims flight that ended may be this caller's rejected token
                // under another id (a credential that ignored the claims answered it).
                if answered
                    && current.id != rejected
                    && !current.value.token.is_expired()
                    && self.header_of(None, rejected).as_ref() != Some(&current.value.header)
                {
                    return Ok(current.clone());
                }
            }
            let spacing = self.options.refresh.retry_after_failure;
            if let Some(error) = state.failure(claims, Instant::now()) {
                return Err(error.clone());
            }
            match state.running(claims) {
                Some(flight) => (flight, self.header_of(current, rejected), None),
                None => {
                    let rejected = self.header_of(current, rejected);
                    let claims: Arc<str> = Arc::from(claims);
                    let (made, work) = deferred(LAYER, CLAIMS_ACQUISITION);
                    // Cut off as the slot's acquisitions are (see "A hung acquisition" in
                    // `crate::refresh`): else a credential that never answers would hold
                    // these claims' flight, and every request meeting them, for good.
                    let bounded = {
                        let (slot, started) = (Arc::clone(&self.slot), Instant::now());
                        async move { slot.bounded(CLAIMS_ACQUISITION, started, work).await }
                    };
                    let slot = Arc::clone(&self.slot);
                    let asked = Arc::clone(&claims);
                    let launch = (made, Arc::clone(&claims));
                    let flight = state.start(
                        claims,
                        WhenAbandoned::RunOn,
                        bounded,
                        move |state, result| {
                            // A failure (an expired token the slot refused, or the rejected
                            // token again, included) is remembered as `kept_failure` says; a
                            // success forgets these claims'.
                            let stored = result
                                .and_then(|prepared| other_than(prepared, rejected.as_ref()))
                                .and_then(|prepared| slot.store(prepared));
                            match stored {
                                Ok(entry) => {
                                    state.forget(&asked);
                                    Ok(entry)
                                }
                                Err(error) => {
                                    let now = Instant::now();
                                    Err(state.remember(asked, error, now, spacing))
                                }
                            }
                        },
                    );
                    (flight, None, Some(launch))
                }
            }
        };
        if let Some((made, claims)) = launch {
            made.make(|| {
                let request = self.request.clone().with_claims(claims.to_string());
                acquire(self.credential.clone(), request, Some(claims))
            });
        }
        let entry = flight.await?;
        match joined_rejected {
            Some(header) if header == entry.value.header => Err(claims_not_applied()),
            _ => Ok(entry),
        }
    }

    /// Whether the resource lately answered a token obtained for `claims` with the same
    /// challenge ([`refuse_claims`](Self::refuse_claims)): then a request meeting that
    /// challenge gets its 401 at once, and no token is asked for.
    pub(crate) fn claims_refused(&self, claims: &str) -> bool {
        self.claims.lock().refused(claims, Instant::now())
    }

    /// Remembers that the resource answered a token obtained for `claims` with the same
    /// challenge, for `retry_after_failure` (30 s by default), as a credential's final
    /// failure to satisfy them is: without it, each request meeting the challenge cost a
    /// token request bypassing every cache and two resource requests (and, the refused token
    /// being dropped, an acquisition of a plain token).
    pub(crate) fn refuse_claims(&self, claims: &str) {
        tracing::warn!(
            "claims challenge: the resource answered the token obtained for its claims with the \
             same challenge; its 401s for these claims are returned as they come for a while"
        );
        let spacing = self.options.refresh.retry_after_failure;
        self.claims
            .lock()
            .remember_refusal(Arc::from(claims), Instant::now(), spacing);
    }

    /// The `Authorization` value of the token `id`, if it is still known: the slot's current
    /// entry, or else the answer the layer's services last shared (kept after a 401 dropped
    /// the token from the slot).
    fn header_of(&self, current: Option<Entry<Prepared>>, id: TokenId) -> Option<HeaderValue> {
        if let Some(current) = current.filter(|entry| entry.id == id) {
            return Some(current.value.header);
        }
        let shared = self.current.load();
        shared
            .as_deref()
            .filter(|answer| answer.token_id == id)
            .map(|answer| answer.header.clone())
    }
}

/// The claims answer, unless it is the token the resource rejected (`rejected`, its
/// `Authorization` value): the credential did not apply the claims.
fn other_than(
    prepared: Prepared,
    rejected: Option<&HeaderValue>,
) -> Result<Prepared, CredentialError> {
    if rejected == Some(&prepared.header) {
        return Err(claims_not_applied());
    }
    Ok(prepared)
}

/// The error for a claims answer that is the token the resource rejected.
fn claims_not_applied() -> CredentialError {
    CredentialError::authentication_failed(
        LAYER,
        "the credential answered the claims request with the token the resource had just \
         rejected: it did not apply the claims",
    )
}

impl Drop for Source {
    fn drop(&mut self) {
        slots().remove(&self.id);
    }
}

/// Every live source's slot by the source's number, for the rare 401 without a re-send: a
/// response future keeps only the id of the token it carried rather than a reference to the
/// slot, because taking and dropping a reference per request (two atomic read-modify-writes,
/// about 6 ns on the benchmark machine) is a sizeable part of what the layer adds per
/// request (issue 12), and the id alone keeps the future small.
static SLOTS: LazyLock<Mutex<HashMap<u64, Weak<TokenSlot<Prepared>>>>> =
    LazyLock::new(Mutex::default);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn slots() -> std::sync::MutexGuard<'static, HashMap<u64, Weak<TokenSlot<Prepared>>>> {
    SLOTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops the token `token_id` from whichever live slot still holds it (see
/// [`TokenSlot::invalidate`]); token ids are unique in the process, so at most one does.
///
/// It looks at the live layers' slots until it finds the token: a 401 without a re-send is
/// rare, and each look is one uncontended lock. A process with thousands of layers pays
/// thousands of them per such 401; a 401 with a re-send (CAE) goes to its slot directly. The
/// registry's lock is released first, so no two locks are held together.
pub(crate) fn invalidate(token_id: TokenId) {
    let live: Vec<_> = slots().values().filter_map(Weak::upgrade).collect();
    for slot in live {
        if slot.invalidate(token_id) {
            break;
        }
    }
}

/// Asks the credential and prepares the header.
fn acquire(
    credential: BoxCredential,
    request: TokenRequest,
    claims: Option<Arc<str>>,
) -> impl Future<Output = Result<Prepared, CredentialError>> + Send + 'static {
    credential
        .oneshot(request)
        .map(move |result| result.and_then(|token| Prepared::new(token, claims)))
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerTokenSource")
            .field("scopes", &self.request.scopes())
            .field("options", &self.options)
            .finish()
    }
}

#[cfg(test)]
thread_local! {
    /// The lookups made on this thread: tests count how often requests take the slot's lock.
    static LOOKUPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The lookups made on this thread so far.
#[cfg(test)]
pub(super) fn lookups() -> usize {
    LOOKUPS.with(std::cell::Cell::get)
}

/// Sends through `send` (which returns the `Authorization` value the request carried) a cold
/// request, a second one, then ten more, which must make no lookup: the answer the layer's
/// services and middleware share serves them. Returns the lookups made before the ten.
#[cfg(test)]
pub(super) async fn assert_the_shared_answer_serves(send: impl AsyncFn() -> String) -> usize {
    assert_eq!(send().await, "Bearer token-1", "cold: acquired");
    assert_eq!(send().await, "Bearer token-1", "looked up, and shared");
    let before = lookups();
    for _ in 0..10 {
        assert_eq!(send().await, "Bearer token-1");
    }
    assert_eq!(
        lookups(),
        before,
        "no lookup while the shared answer is fresh"
    );
    before
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::CredentialExt;
    use crate::refresh::RefreshPolicy;

    /// A CAE source of scope `s` over `credential`.
    fn cae_source(credential: crate::BoxCredential) -> Source {
        let options = Options {
            cae: true,
            allow_http: false,
            replay_limit: 0,
            drain_limit: 0,
            refresh: RefreshPolicy::default(),
        };
        Source::new(credential, vec!["s".into()], options)
    }

    fn source() -> Source {
        let credential = tower::service_fn(|_: TokenRequest| async {
            Ok::<_, CredentialError>(AccessToken::new("t", Instant::now()))
        });
        let options = Options {
            cae: false,
            allow_http: false,
            replay_limit: 0,
            drain_limit: 0,
            refresh: RefreshPolicy::default(),
        };
        Source::new(credential.boxed_credential(), vec!["s".into()], options)
    }

    /// The credential answers the claims request with a token that has already expired
    /// (`source()`'s credential does): an error, and the layer's valid token stays.
    #[tokio::test(start_paused = true)]
    async fn an_expired_claims_token_is_an_error_and_the_current_token_stays() {
        let source = source();
        let expires = Instant::now() + std::time::Duration::from_secs(3600);
        let valid = Prepared::new(AccessToken::new("valid", expires), None).unwrap();
        let entry = source.slot.store(valid).unwrap();
        let Err(err) = source.claims_token("c", entry.id).await else {
            panic!("an expired claims token was accepted");
        };
        assert!(err.message().contains("already expired"), "{err}");
        let current = source.slot.current_entry().unwrap();
        assert_eq!(current.id, entry.id);
        assert_eq!(current.value.token.secret().expose_secret(), "valid");
        // Remembered as a failure for these claims: not asked again within the spacing.
        let Err(again) = source.claims_token("c", entry.id).await else {
            panic!("asked again within the spacing");
        };
        assert_eq!(again.message(), err.message());
    }

    /// Claims the resource refused again are remembered for `retry_after_failure`, each value
    /// apart, as a credential's final failure is; a later credential failure of the same
    /// claims takes the refusal's place.
    #[tokio::test(start_paused = true)]
    async fn claims_the_resource_refused_are_remembered_for_the_spacing() {
        use std::time::Duration;
        let source = cae_source(
            tower::service_fn(|_: TokenRequest| async {
                Err::<AccessToken, _>(CredentialError::authentication_failed("Test", "no"))
            })
            .boxed_credential(),
        );
        source.refuse_claims("a");
        assert!(source.claims_refused("a"));
        assert!(!source.claims_refused("b"));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(source.claims_refused("a"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!source.claims_refused("a"), "after 30 s");

        source.refuse_claims("a");
        let expires = Instant::now() + Duration::from_secs(3600);
        let valid = Prepared::new(AccessToken::new("valid", expires), None).unwrap();
        let rejected = source.slot.store(valid).unwrap().id;
        let Err(error) = source.claims_token("a", rejected).await else {
            panic!("the credential fails");
        };
        assert!(error.message().contains("no"), "{error}");
        assert!(
            !source.claims_refused("a"),
            "replaced by the credential's failure"
        );
    }

    /// A claims flight that passed the check before the resource's refusal was kept (a burst)
    /// and then got a token does not erase that refusal.
    #[tokio::test(start_paused = true)]
    async fn a_claims_token_got_meanwhile_keeps_the_resources_refusal() {
        let source = cae_source(
            tower::service_fn(|request: TokenRequest| async move {
                let claims = request.claims().unwrap_or_default().to_owned();
                let expires = Instant::now() + std::time::Duration::from_secs(3600);
                Ok::<_, CredentialError>(AccessToken::new(format!("for-{claims}"), expires))
            })
            .boxed_credential(),
        );
        source.refuse_claims("a");
        let expires = Instant::now() + std::time::Duration::from_secs(3600);
        let valid = Prepared::new(AccessToken::new("valid", expires), None).unwrap();
        let rejected = source.slot.store(valid).unwrap().id;
        assert!(source.claims_token("a", rejected).await.is_ok());
        assert!(source.claims_refused("a"), "still refused by the resource");
    }

    /// Two claims values failing in turn: before, only the last failure was remembered, so
    /// each request asked the credential again.
    #[tokio::test(start_paused = true)]
    async fn alternating_failing_claims_are_each_asked_for_once_per_spacing() {
        let asked = Arc::new(Mutex::new(Vec::<String>::new()));
        let credential = tower::service_fn({
            let asked = Arc::clone(&asked);
            move |request: TokenRequest| {
                let claims = request.claims().unwrap_or_default().to_owned();
                asked.lock().unwrap().push(claims);
                async {
                    Err::<AccessToken, _>(CredentialError::authentication_failed(
                        "Test",
                        "sign in again",
                    ))
                }
            }
        });
        let source = cae_source(credential.boxed_credential());
        let expires = Instant::now() + std::time::Duration::from_secs(3600);
        let valid = Prepared::new(AccessToken::new("valid", expires), None).unwrap();
        let rejected = source.slot.store(valid).unwrap().id;
        for _ in 0..10 {
            for claims in ["a", "b"] {
                let Err(error) = source.claims_token(claims, rejected).await else {
                    panic!("the credential fails every claims request");
                };
                assert!(error.message().contains("sign in again"), "{error}");
                tokio::time::advance(std::time::Duration::from_secs(1)).await;
            }
        }
        assert_eq!(*asked.lock().unwrap(), ["a", "b"], "within 30 s");
        tokio::time::advance(std::time::Duration::from_secs(11)).await;
        assert!(source.claims_token("b", rejected).await.is_err());
        assert!(source.claims_token("a", rejected).await.is_err());
        assert_eq!(*asked.lock().unwrap(), ["a", "b", "b", "a"], "after 30 s");
    }

    /// A claims failure is kept by the one rule of [`kept_failure`]: a throttled one until the
    /// provider's wait if it is longer than the spacing, its `retry_after()` saying when the
    /// claims are asked for again (before, 30 s whatever the wait, counting down to 0 after a
    /// 5 s one); a panicked acquisition (the credential answered nothing) not at all (before,
    /// its "did not finish" answered the claims for 30 s), nor a transient failure asking for
    /// no wait (before, kept 30 s).
    #[tokio::test(start_paused = true)]
    async fn a_claims_failure_is_kept_as_the_slot_keeps_one() {
        use std::time::Duration;
        let asked = Arc::new(Mutex::new(Vec::<String>::new()));
        let credential = tower::service_fn({
            let asked = Arc::clone(&asked);
            move |request: TokenRequest| {
                let claims = request.claims().unwrap_or_default().to_owned();
                asked.lock().unwrap().push(claims.clone());
                async move {
                    let wait = match claims.as_str() {
                        "long" => Duration::from_secs(120),
                        "short" => Duration::from_secs(5),
                        "down" => Duration::ZERO,
                        _ => panic!("the credential panics"),
                    };
                    Err::<AccessToken, _>(
                        CredentialError::authentication_failed("Test", "throttled").with_cause(
                            crate::error::Cause {
                                transient: true,
                                throttled_until: Some(Instant::now() + wait),
                                ..Default::default()
                            },
                        ),
                    )
                }
            }
        });
        let source = cae_source(credential.boxed_credential());
        let expires = Instant::now() + Duration::from_secs(3600);
        let valid = Prepared::new(AccessToken::new("valid", expires), None).unwrap();
        let rejected = source.slot.store(valid).unwrap().id;
        for (claims, wait) in [("long", 120), ("short", 30)] {
            let start = Instant::now();
            for at in [0, 4, 29] {
                tokio::time::advance(start + Duration::from_secs(at) - Instant::now()).await;
                let Err(error) = source.claims_token(claims, rejected).await else {
                    panic!("throttled");
                };
                assert_eq!(
                    error.retry_after(),
                    Some(Duration::from_secs(wait - at)),
                    "{claims} at {at} s"
                );
            }
        }
        // 58 s after "long" was asked, 29 s after "short" was.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(source.claims_token("short", rejected).await.is_err());
        assert!(source.claims_token("long", rejected).await.is_err());
        assert_eq!(*asked.lock().unwrap(), ["long", "short", "short"]);

        for _ in 0..2 {
            let Err(error) = source.claims_token("panics", rejected).await else {
                panic!("the credential panics");
            };
            assert!(error.message().contains("did not finish"), "{error}");
        }
        assert_eq!(asked.lock().unwrap().len(), 5, "asked again after a panic");

        // A wait of 0: transient, asking for no wait, not kept.
        for _ in 0..2 {
            let Err(error) = source.claims_token("down", rejected).await else {
                panic!("throttled");
            };
            assert_eq!(error.retry_after(), Some(Duration::ZERO), "{error:?}");
        }
        assert_eq!(asked.lock().unwrap().len(), 7, "asked each time");
    }

    /// The credential answers the claims request with the token that was rejected, which a
    /// plain 401 has meanwhile dropped from the slot: still known from the answer the layer's
    /// services share, and still a failure.
    #[tokio::test(start_paused = true)]
    async fn a_claims_answer_that_is_a_rejected_token_already_dropped_is_a_failure() {
        let credential = tower::service_fn(|_: TokenRequest| async {
            let expires = Instant::now() + std::time::Duration::from_secs(3600);
            Ok::<_, CredentialError>(AccessToken::new("same", expires))
        });
        let source = cae_source(credential.boxed_credential());
        if let Err(acquisition) = Cached::look_up(&source) {
            acquisition.await.unwrap();
        }
        let Ok(shared) = Cached::look_up(&source) else {
            panic!("the token was just acquired");
        };
        assert!(source.slot.invalidate(shared.token_id));
        let Err(err) = source.claims_token("c", shared.token_id).await else {
            panic!("the rejected token was taken as the claims answer");
        };
        assert!(err.message().contains("did not apply the claims"), "{err}");
        assert!(source.slot.current_entry().is_none(), "and not stored");
    }

    /// A request whose token the slot renewed meets the same challenge while the first
    /// request's claims flight runs, and joins it; the credential (ignoring the claims)
    /// answers the renewed token, which the joiner's resource has just rejected. The flight's
    /// starter takes the answer (not the token it sent); the joiner is refused it.
    #[tokio::test(start_paused = true)]
    async fn a_caller_joining_a_claims_flight_is_refused_its_own_rejected_token() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let expires = Instant::now() + std::time::Duration::from_secs(3600);
        let credential = tower::service_fn({
            let gate = Arc::clone(&gate);
            move |_: TokenRequest| {
                let gate = Arc::clone(&gate);
                async move {
                    gate.notified().await;
                    Ok::<_, CredentialError>(AccessToken::new("t2", expires))
                }
            }
        });
        let source = cae_source(credential.boxed_credential());
        let prepared = |secret: &str| Prepared::new(AccessToken::new(secret, expires), None);
        let first = source.slot.store(prepared("t1").unwrap()).unwrap().id;
        let starter = source.claims_token("c", first);
        let joiner = async {
            tokio::task::yield_now().await;
            let second = source.slot.store(prepared("t2").unwrap()).unwrap().id;
            source.claims_token("c", second).await
        };
        let release = async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            gate.notify_one();
        };
        let (started, joined, ()) = tokio::join!(starter, joiner, release);
        let started = started.expect("the starter's rejected token was t1");
        assert_eq!(started.value.token.secret().expose_secret(), "t2");
        let Err(error) = joined else {
            panic!("the joiner was handed the token its resource rejected");
        };
        assert!(
            error.message().contains("did not apply the claims"),
            "{error}"
        );
    }

    /// The same, for a request whose 401 comes after the first request's claims flight has
    /// ended: the flight's answer is the token that request carried. Before, it was handed
    /// that token back.
    #[tokio::test(start_paused = true)]
    async fn a_caller_after_a_claims_flight_is_refused_its_own_rejected_token() {
        let expires = Instant::now() + std::time::Duration::from_secs(3600);
        let credential = tower::service_fn(move |_: TokenRequest| async move {
            Ok::<_, CredentialError>(AccessToken::new("t2", expires))
        });
        let source = cae_source(credential.boxed_credential());
        let prepared = |secret: &str| Prepared::new(AccessToken::new(secret, expires), None);
        let first = source.slot.store(prepared("t1").unwrap()).unwrap().id;
        source.slot.store(prepared("t2").unwrap()).unwrap();
        // The layer's services share the renewed token, as a request sending it would.
        let Ok(shared) = Cached::look_up(&source) else {
            panic!("a token is stored");
        };
        let started = source.claims_token("c", first).await.unwrap();
        assert_eq!(started.value.token.secret().expose_secret(), "t2");
        assert_eq!(started.id, shared.token_id, "the same token keeps its id");
        let Err(error) = source.claims_token("c", shared.token_id).await else {
            panic!("the caller was handed the token its resource rejected");
        };
        assert!(
            error.message().contains("did not apply the claims"),
            "{error}"
        );
    }

    /// A claims challenge met outside a tokio runtime: an error, not `tokio::spawn`'s panic.
    #[test]
    fn a_claims_token_without_a_runtime_is_an_error() {
        let source = source();
        let expires = Instant::now() + std::time::Duration::from_secs(3600);
        let valid = Prepared::new(AccessToken::new("valid", expires), None).unwrap();
        let entry = source.slot.store(valid).unwrap();
        let Err(err) = crate::flight::block_on(source.claims_token("c", entry.id)) else {
            panic!("no token can be acquired without a runtime");
        };
        assert!(err.message().contains("needs a tokio runtime"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_401_reaches_the_slot_holding_the_token_and_a_dropped_layer_leaves_no_entry() {
        let token = || {
            let expires = Instant::now() + std::time::Duration::from_secs(3600);
            Prepared::new(AccessToken::new("t", expires), None).unwrap()
        };
        let (source, other) = (source(), source());
        let entry = source.slot.store(token()).unwrap();
        let others = other.slot.store(token()).unwrap();
        assert_ne!(entry.id, others.id, "token ids are unique across slots");

        invalidate(others.id);
        assert!(
            other.slot.current_entry().is_none(),
            "the other layer's token is dropped"
        );
        assert_eq!(
            source.slot.current_entry().map(|e| e.id),
            Some(entry.id),
            "a token of another slot: this one is kept"
        );
        invalidate(entry.id);
        assert!(
            source.slot.current_entry().is_none(),
            "the rejected token is dropped"
        );

        let id = source.id;
        assert!(slots().contains_key(&id));
        drop(source);
        assert!(
            !slots().contains_key(&id),
            "the registry forgets a dropped source"
        );
    }

    /// A credential that never answers a claims request: the claims flight is cut off at
    /// `ACQUISITION_LIMIT`, its waiters get a transient timeout error, which is not kept
    /// (`kept_failure`), and the next request meeting the claims asks again. Before, the
    /// flight stayed for good and every request meeting these claims waited on it for ever.
    #[tokio::test(start_paused = true)]
    async fn a_claims_flight_that_never_ends_is_cut_off_at_the_limit() {
        use crate::refresh::ACQUISITION_LIMIT;
        use std::time::Duration;
        let asked = Arc::new(AtomicU64::new(0));
        let expires = Instant::now() + Duration::from_secs(3 * 3600);
        let credential = tower::service_fn({
            let asked = Arc::clone(&asked);
            move |_: TokenRequest| {
                let first = asked.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, CredentialError>(AccessToken::new("answered", expires))
                }
            }
        });
        let source = cae_source(credential.boxed_credential());
        let valid = Prepared::new(AccessToken::new("valid", expires), None).unwrap();
        let rejected = source.slot.store(valid).unwrap().id;
        let start = Instant::now();
        let waiting =
            futures_util::future::join_all((0..20).map(|_| source.claims_token("c", rejected)));
        let outcomes = tokio::time::timeout(ACQUISITION_LIMIT + Duration::from_secs(1), waiting)
            .await
            .expect("the claims flight's waiters still wait after the limit");
        assert_eq!(Instant::now() - start, ACQUISITION_LIMIT);
        for outcome in outcomes {
            let Err(error) = outcome else {
                panic!("the credential never answered");
            };
            assert!(error.is_timeout() && error.is_transient(), "{error:?}");
            assert!(error.message().contains("did not end within"), "{error}");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1, "one for 20 callers");
        let entry = source.claims_token("c", rejected).await.unwrap();
        assert_eq!(entry.value.token.secret().expose_secret(), "answered");
        assert_eq!(asked.load(Ordering::SeqCst), 2, "asked again at once");
    }

    /// A credential whose `clone` panics while `panics` is set; it answers `t-<claims>`.
    struct PanicsOnClone {
        panics: Arc<std::sync::atomic::AtomicBool>,
        asked: Arc<AtomicU64>,
    }

    impl Clone for PanicsOnClone {
        fn clone(&self) -> Self {
            assert!(!self.panics.load(Ordering::SeqCst), "clone panicked");
            Self {
                panics: Arc::clone(&self.panics),
                asked: Arc::clone(&self.asked),
            }
        }
    }

    impl tower::Service<TokenRequest> for PanicsOnClone {
        type Response = AccessToken;
        type Error = CredentialError;
        type Future = futures_util::future::Ready<Result<AccessToken, CredentialError>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), CredentialError>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: TokenRequest) -> Self::Future {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let expires = Instant::now() + std::time::Duration::from_secs(3600);
            let secret = format!("t-{}", request.claims().unwrap_or("plain"));
            futures_util::future::ready(Ok(AccessToken::new(secret, expires)))
        }
    }

    /// The credential's `clone` panics as a claims flight's work is made: the panic reaches
    /// that caller, a caller that joined the flight gets the "work was never made" error,
    /// marked cut off, the failure is not kept in `ClaimsState`, and the claims are asked
    /// for again at once.
    #[tokio::test(start_paused = true)]
    async fn a_credential_whose_clone_panics_for_claims_is_asked_again() {
        use futures_util::FutureExt;
        let panics = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let asked = Arc::new(AtomicU64::new(0));
        let credential = PanicsOnClone {
            panics: Arc::clone(&panics),
            asked: Arc::clone(&asked),
        };
        let source = cae_source(crate::BoxCredential::new(credential));
        let expires = Instant::now() + std::time::Duration::from_secs(3600);
        let valid = Prepared::new(AccessToken::new("valid", expires), None).unwrap();
        let rejected = source.slot.store(valid).unwrap().id;
        panics.store(true, Ordering::SeqCst);
        let panicked = std::panic::AssertUnwindSafe(source.claims_token("c", rejected))
            .catch_unwind()
            .await;
        assert!(panicked.is_err(), "the panic reaches the caller");
        // The flight is recorded, its task not run yet: this caller joins it.
        let Err(error) = source.claims_token("c", rejected).await else {
            panic!("the flight's work was never made");
        };
        assert!(error.is_unfinished(), "{error:?}");
        assert!(error.message().contains("never made"), "{error}");
        assert!(
            source.claims.lock().failure("c", Instant::now()).is_none(),
            "kept in ClaimsState"
        );
        panics.store(false, Ordering::SeqCst);
        let entry = source.claims_token("c", rejected).await.unwrap();
        assert_eq!(entry.value.token.secret().expose_secret(), "t-c");
        assert_eq!(asked.load(Ordering::SeqCst), 1, "asked again");
    }

    /// A credential whose `clone` (a user's code, which may log) records whether the layer's
    /// slot's lock or its claims lock was held.
    #[derive(Clone)]
    struct Watched(Arc<Watch>);

    #[derive(Default)]
    struct Watch {
        probes: Mutex<Vec<Box<dyn Fn() -> bool + Send + Sync>>>,
        clones: AtomicU64,
        under_lock: AtomicU64,
    }

    impl Watched {
        fn cloned(&self) -> Self {
            let watch = &self.0;
            watch.clones.fetch_add(1, Ordering::SeqCst);
            if watch.probes.lock().unwrap().iter().any(|held| held()) {
                watch.under_lock.fetch_add(1, Ordering::SeqCst);
            }
            Self(Arc::clone(watch))
        }
    }

    /// The credential as a layer holds it: `clone` is `Watched::cloned`.
    struct Watching(Watched);

    impl Clone for Watching {
        fn clone(&self) -> Self {
            Self(self.0.cloned())
        }
    }

    impl tower::Service<TokenRequest> for Watching {
        type Response = AccessToken;
        type Error = CredentialError;
        type Future = futures_util::future::Ready<Result<AccessToken, CredentialError>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), CredentialError>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: TokenRequest) -> Self::Future {
            let expires = Instant::now() + std::time::Duration::from_secs(3600);
            let secret = format!("t-{}", request.claims().unwrap_or("plain"));
            futures_util::future::ready(Ok(AccessToken::new(secret, expires)))
        }
    }

    /// The credential is cloned for the layer's acquisition and for a claims flight without
    /// the slot's lock or the claims lock held. Before, both clones ran under a lock.
    #[tokio::test(start_paused = true)]
    async fn the_credential_is_cloned_without_a_lock_held() {
        let watched = Watched(Arc::default());
        let source = cae_source(crate::BoxCredential::new(Watching(watched.cloned())));
        watched.0.probes.lock().unwrap().extend([
            Box::new(source.slot.lock_probe()) as Box<dyn Fn() -> bool + Send + Sync>,
            Box::new(source.claims.lock_probe()),
        ]);
        let before = watched.0.clones.load(Ordering::SeqCst);
        let Err(acquisition) = Cached::look_up(&source) else {
            panic!("no token yet");
        };
        let plain = acquisition.await.unwrap();
        assert_eq!(plain.value.token.secret().expose_secret(), "t-plain");
        let claimed = source.claims_token("c", plain.id).await.unwrap();
        assert_eq!(claimed.value.token.secret().expose_secret(), "t-c");
        assert!(
            watched.0.clones.load(Ordering::SeqCst) >= before + 2,
            "cloned per acquisition"
        );
        assert_eq!(
            watched.0.under_lock.load(Ordering::SeqCst),
            0,
            "cloned under a lock"
        );
    }
}
