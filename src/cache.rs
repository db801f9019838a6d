//! The in-memory token cache of a credential: one [`TokenSlot`] per key.
//!
//! A key is the tenant, the scope set (order and duplicates ignored), and whether the CAE
//! capability was announced — CAE and non-CAE tokens are never mixed, since a CAE token is
//! long-lived and only safe for callers that handle claims challenges.
//!
//! The account has no place in the key: the slots hold one identity's tokens at a time, and a
//! user credential whose account changes forgets them ([`TokenCache::clear`]). The
//! authorization code credential's account is pinned for good. The device code credential
//! clears its slots when it forgets its account (its refresh tokens dead or gone), before the
//! next sign-in, which may be someone else's; and when a sign-in lands for another account
//! than the one pinned (a request refused for this request only signs in while the account
//! stays pinned, and another user may sign in there), in the sign-in flight's `land`, under
//! that flight's lock. A caller that read the pinned account before such a clear makes no
//! slot after it ([`TokenCache::get_or_acquire_as_of`]). The shared token cache clears them when an
//! acquisition selects another account than the last one did (the file's account changed),
//! and those of a document's kind (CAE or not) when an acquisition selects no account in it
//! (signed out); until some acquisition reads the file (a first request for a scope, or a
//! renewal), a scope cached before is still served as the previous account. Azure CLI and Azure Developer CLI
//! do not know when the tool's sign-in changes: a cached token is the previous identity's
//! until its renewal.
//!
//! A request with `claims` must reach the provider, so it skips the lookup; its token is
//! stored in the slot afterwards so later requests use the token that satisfies the claims.
//!
//! With a [distributed cache](crate::distributed) the slots stay the first level: a token a
//! slot hands out never touches the store. A slot's acquisition (one per key per process)
//! goes through the shared level, which answers from the store or has one process of the
//! fleet ask the provider; claims requests skip the shared level as they skip the slot.
//!
//! # Bounded memory
//!
//! Keys can come from callers (a service asking for the tenants and scopes its own callers
//! name, with `additionally_allowed_tenants(["*"])`), so the slots are pruned: a slot that can
//! serve nothing — no token still valid, no acquisition running — and that nobody else holds
//! (no caller waiting on it: its `Arc` is the map's alone) is dropped. It keeps nothing worth
//! keeping: the renewal spacing applies only while a valid token is held (see
//! [`crate::refresh`]), a failed first acquisition leaves nothing behind, and a provider's
//! `Retry-After` is remembered by the credential, not the slot. A request for its key later
//! makes a new slot, as the first one did (only the acquisition span's `attempt` count starts
//! over).
//!
//! The sweep is amortised: it runs when an insert finds the map at `sweep_at` slots, and sets
//! `sweep_at` to twice the slots it kept plus [`SWEEP_FLOOR`]. At least half of `sweep_at`
//! inserts come between two sweeps, so each insert pays for at most two slots looked at, and
//! the map never holds more than twice the slots in use at the last sweep plus the floor.
//! What stays is the working set: one slot per key asked for within a token's lifetime.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tracing::Instrument;

use crate::distributed::SharedLevel;
use crate::error::CredentialError;
use crate::refresh::{RefreshPolicy, TokenSlot};
use crate::token::AccessToken;

/// What a cached token is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    tenant: String,
    scopes: Vec<String>,
    cae: bool,
}

impl CacheKey {
    pub(crate) fn new(tenant: &str, scopes: &[String], cae: bool) -> Self {
        let mut scopes = scopes.to_vec();
        scopes.sort_unstable();
        scopes.dedup();
        Self {
            tenant: tenant.to_owned(),
            scopes,
            cae,
        }
    }
}

/// Below this many slots the map is never swept (see the module docs).
const SWEEP_FLOOR: usize = 64;

/// The slots by key, and the size at which the next insert sweeps them.
struct Slots {
    map: HashMap<CacheKey, Arc<TokenSlot>>,
    sweep_at: usize,
    /// How many times the slots were [cleared](TokenCache::clear): a caller that chose whose
    /// token to acquire before a clear must not make a slot after it.
    generation: u64,
}

impl Default for Slots {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            sweep_at: SWEEP_FLOOR,
            generation: 0,
        }
    }
}

impl Slots {
    /// Drops the slots that can serve nothing and nobody holds (see the module docs).
    fn sweep(&mut self, now: Instant) {
        // The count first: a slot only the map holds cannot be locked by anyone else (a
        // running acquisition holds its slot too), so its own lock is taken here
        // uncontended, and no caller can take a clone while the map's lock is held.
        self.map
            .retain(|_, slot| Arc::strong_count(slot) > 1 || !slot.holds_nothing_at(now));
        self.sweep_at = self.map.len().saturating_mul(2).saturating_add(SWEEP_FLOOR);
        // Gives back the table a burst of keys grew, keeping room for the inserts to come.
        self.map.shrink_to(self.sweep_at);
    }
}

/// The slots of one credential.
pub(crate) struct TokenCache {
    /// The credential, for errors.
    name: &'static str,
    slots: Mutex<Slots>,
    /// The second level, when the credential was given a distributed cache.
    shared: Option<SharedLevel>,
    /// Run as the next clear begins, before it takes the map's lock: a test holds a clear
    /// there, between what its caller did before and the slots' removal.
    #[cfg(test)]
    before_clear: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl TokenCache {
    /// The cache of the credential called `name`.
    pub(crate) fn new(name: &'static str) -> Self {
        Self {
            name,
            slots: Mutex::default(),
            shared: None,
            #[cfg(test)]
            before_clear: Mutex::default(),
        }
    }

    /// Runs `hook` as the next [`clear`](Self::clear) begins, on its thread, before it takes
    /// the map's lock.
    #[cfg(test)]
    pub(crate) fn before_next_clear(&self, hook: impl FnOnce() + Send + 'static) {
        *self.before_clear.lock().unwrap() = Some(Box::new(hook));
    }

    /// The same cache over a distributed cache's shared level, if any.
    pub(crate) fn with_shared(mut self, shared: Option<SharedLevel>) -> Self {
        self.shared = shared;
        self
    }

    /// The rules every slot of this cache follows (and the shared level judges entries by).
    fn policy() -> RefreshPolicy {
        RefreshPolicy::default()
    }

    /// The slot for `key`, made if there is none; `None` when the slots were cleared since
    /// `generation` (when given).
    fn slot(&self, key: &CacheKey, generation: Option<u64>) -> Option<Arc<TokenSlot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if generation.is_some_and(|g| g != slots.generation) {
            return None;
        }
        if let Some(slot) = slots.map.get(key) {
            return Some(Arc::clone(slot));
        }
        if slots.map.len() >= slots.sweep_at {
            slots.sweep(Instant::now());
        }
        let slot = TokenSlot::new(self.name, Self::policy());
        slots.map.insert(key.clone(), Arc::clone(&slot));
        Some(slot)
    }

    /// Forgets every slot: for a user credential whose account may change (another user may
    /// sign in next), so that no slot serves the previous account's token. A slot whose
    /// acquisition is running is left to it and its callers; later requests make new slots.
    pub(crate) fn clear(&self) {
        #[cfg(test)]
        {
            let hook = self.before_clear.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
            }
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        *slots = Slots {
            generation: slots.generation.wrapping_add(1),
            ..Slots::default()
        };
    }

    /// Forgets the slots of CAE tokens (`cae`) or of the others: for the shared token cache,
    /// whose two kinds come from two documents, each naming its own account. As
    /// [`clear`](Self::clear) for those slots; the others stay.
    pub(crate) fn clear_kind(&self, cae: bool) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.map.retain(|key, _| key.cae != cae);
        slots.generation = slots.generation.wrapping_add(1);
    }

    /// The slots' generation: to pass to [`get_or_acquire_as_of`](Self::get_or_acquire_as_of)
    /// by a caller that decides whose token to acquire now and acquires it later.
    pub(crate) fn generation(&self) -> u64 {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    /// The token cached for `key`, if one is held and unexpired; makes no slot.
    pub(crate) fn current(&self, key: &CacheKey) -> Option<AccessToken> {
        let slot = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(slots.map.get(key)?)
        };
        let entry = slot.current_entry()?;
        (!entry.value.is_expired()).then_some(entry.value)
    }

    /// The cached token for `key`, or the result of `acquire` under the refresh rules
    /// (see [`crate::refresh`]). With `bypass` (a request carrying claims) the lookup is
    /// skipped and the new token replaces the cached one.
    pub(crate) async fn get_or_acquire<F, Fut>(
        &self,
        key: CacheKey,
        bypass: bool,
        acquire: F,
    ) -> Result<AccessToken, CredentialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, CredentialError>> + Send + 'static,
    {
        self.get_or_acquire_as_of(key, bypass, None, acquire)
            .await
            .unwrap_or_else(|| {
                // Not reached: without a generation, a slot is always found or made.
                Err(CredentialError::authentication_failed(
                    self.name,
                    "the token cache was cleared during the request; try again",
                ))
            })
    }

    /// [`get_or_acquire`](Self::get_or_acquire), for a caller that chose whose token
    /// `acquire` obtains when the slots were at `generation` (see [`Self::generation`]):
    /// `None`, without calling `acquire` or making a slot, when they were
    /// [cleared](Self::clear) since — the account may have changed, and a slot made now would
    /// serve the previous one's token to the next one's callers.
    pub(crate) async fn get_or_acquire_as_of<F, Fut>(
        &self,
        key: CacheKey,
        bypass: bool,
        generation: Option<u64>,
        acquire: F,
    ) -> Option<Result<AccessToken, CredentialError>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, CredentialError>> + Send + 'static,
    {
        // The token names the credential that obtained it; stamped before it is cached.
        let name = self.name;
        // Through the shared level unless the request carries claims.
        let shared = self.shared.as_ref().filter(|_| !bypass);
        // Whether this caller started the acquisition (else memory answered it).
        let started = AtomicBool::new(false);
        let acquire = || -> BoxFuture<'static, Result<AccessToken, CredentialError>> {
            started.store(true, Ordering::Relaxed);
            // Made inside the slot's acquisition span, only when an acquisition starts.
            let span = tracing::debug_span!(
                "token_request",
                tenant = %key.tenant,
                scopes = ?key.scopes,
                cae = key.cae
            );
            let stamp = move |result: Result<AccessToken, CredentialError>| {
                result.map(|token| token.with_credential(name))
            };
            match shared {
                Some(level) => level
                    .acquire(
                        name,
                        &key.tenant,
                        &key.scopes,
                        key.cae,
                        Self::policy(),
                        acquire(),
                    )
                    .map(stamp)
                    .instrument(span)
                    .boxed(),
                None => acquire().map(stamp).instrument(span).boxed(),
            }
        };
        let slot = self.slot(&key, generation)?;
        Some(if bypass {
            if let Some(level) = &self.shared {
                level.bypassed(&key.tenant, &key.scopes, key.cae);
            }
            // The slot refuses a token that has already expired, keeping the one it holds.
            match acquire().await {
                Ok(token) => slot.store(token.clone()).map(|_| token),
                Err(error) => Err(error),
            }
        } else {
            let result = slot.get(acquire).await;
            // A token the slot had, or another caller's acquisition brought. Not an error: a
            // caller that started none may have got one without any memory answering (no
            // runtime to start it on, a joined acquisition that failed).
            let from_memory = result.is_ok() && !started.load(Ordering::Relaxed);
            if let Some(level) = shared.filter(|_| from_memory) {
                level.local_hit(&key.tenant, &key.scopes, key.cae);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn scopes(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn key(scope: &str) -> CacheKey {
        CacheKey::new("t", &scopes(&[scope]), false)
    }

    fn slots(cache: &TokenCache) -> usize {
        cache.slots.lock().unwrap().map.len()
    }

    /// An acquisition that counts its calls and answers a token named `name` living
    /// `lifetime`, or an error without one.
    fn counting(
        calls: &Arc<AtomicUsize>,
        answer: Option<(&'static str, Duration)>,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<AccessToken, CredentialError>> + use<> {
        let calls = Arc::clone(calls);
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match answer {
                    Some((name, lifetime)) => Ok(AccessToken::new(name, Instant::now() + lifetime)),
                    None => Err(CredentialError::authentication_failed("Test", "refused")),
                }
            }
            .boxed()
        }
    }

    /// A service asking for the scopes its callers name: before, every key kept its slot (and
    /// its token) for good, 20 000 here.
    #[tokio::test(start_paused = true)]
    async fn slots_that_can_serve_nothing_are_pruned_as_new_keys_come() {
        let cache = TokenCache::new("Test");
        let calls = Arc::new(AtomicUsize::new(0));
        for i in 0..10_000 {
            let acquire = counting(&calls, Some(("t", HOUR)));
            let key = key(&format!("scope-{i}"));
            cache.get_or_acquire(key, false, acquire).await.unwrap();
        }
        assert_eq!(slots(&cache), 10_000, "slots with a valid token are kept");
        tokio::time::advance(2 * HOUR).await;
        // Later keys whose acquisition fails (scopes the provider refuses) hold nothing
        // either.
        for i in 0..10_000 {
            let acquire = counting(&calls, None);
            let key = key(&format!("refused-{i}"));
            cache.get_or_acquire(key, false, acquire).await.unwrap_err();
        }
        assert!(slots(&cache) <= SWEEP_FLOOR, "{} slots", slots(&cache));
        assert_eq!(calls.load(Ordering::SeqCst), 20_000);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_in_use_or_holding_a_valid_token_survive_the_sweeps() {
        let cache = Arc::new(TokenCache::new("Test"));
        let calls = Arc::new(AtomicUsize::new(0));
        // A fresh token.
        let acquire = counting(&calls, Some(("fresh", HOUR)));
        cache
            .get_or_acquire(key("fresh"), false, acquire)
            .await
            .unwrap();
        // A token in its refresh window whose renewal failed: the 30 s spacing runs.
        let acquire = counting(&calls, Some(("spaced", Duration::from_secs(600))));
        cache
            .get_or_acquire(key("spaced"), false, acquire)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(301)).await;
        let got = cache
            .get_or_acquire(key("spaced"), false, counting(&calls, None))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "spaced");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // An acquisition running that its caller gave up on: it runs on in its task.
        let (send, answer) = tokio::sync::oneshot::channel::<AccessToken>();
        let pending = move || async move { Ok(answer.await.unwrap()) };
        let gave_up = cache
            .get_or_acquire(key("running"), false, pending)
            .now_or_never();
        assert!(gave_up.is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        for i in 0..1_000 {
            let acquire = counting(&calls, None);
            let key = key(&format!("refused-{i}"));
            cache.get_or_acquire(key, false, acquire).await.unwrap_err();
        }
        assert!(
            slots(&cache) <= SWEEP_FLOOR,
            "swept: {} slots",
            slots(&cache)
        );
        let calls_before = calls.load(Ordering::SeqCst);

        // The tokens obtained before the sweeps are served, the spacing holds, and a new
        // caller joins the running acquisition: none of them asks again.
        let got = cache
            .get_or_acquire(key("fresh"), false, counting(&calls, None))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "fresh");
        let got = cache
            .get_or_acquire(key("spaced"), false, counting(&calls, None))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "spaced");
        let joined = tokio::spawn({
            let (cache, acquire) = (Arc::clone(&cache), counting(&calls, None));
            async move { cache.get_or_acquire(key("running"), false, acquire).await }
        });
        tokio::task::yield_now().await;
        send.send(AccessToken::new("running", Instant::now() + HOUR))
            .unwrap();
        let got = joined.await.unwrap().unwrap();
        assert_eq!(got.secret().expose_secret(), "running");
        assert_eq!(calls.load(Ordering::SeqCst), calls_before);
    }

    #[test]
    fn keys_ignore_scope_order_and_duplicates_but_not_cae() {
        let a = CacheKey::new("t", &scopes(&["b", "a", "a"]), false);
        let b = CacheKey::new("t", &scopes(&["a", "b"]), false);
        assert_eq!(a, b);
        assert_ne!(a, CacheKey::new("t", &scopes(&["a", "b"]), true));
        assert_ne!(a, CacheKey::new("u", &scopes(&["a", "b"]), false));
    }

    #[tokio::test(start_paused = true)]
    async fn claims_bypass_the_lookup_and_replace_the_cached_token() {
        let cache = TokenCache::new("Test");
        let key = CacheKey::new("t", &scopes(&["s"]), false);
        let make = |name: &'static str| {
            move || async move {
                Ok(AccessToken::new(
                    name,
                    Instant::now() + Duration::from_secs(3600),
                ))
            }
        };
        let first = cache
            .get_or_acquire(key.clone(), false, make("one"))
            .await
            .unwrap();
        let cached = cache
            .get_or_acquire(key.clone(), false, make("two"))
            .await
            .unwrap();
        assert_eq!(first.secret(), cached.secret());
        let claims = cache
            .get_or_acquire(key.clone(), true, make("three"))
            .await
            .unwrap();
        assert_eq!(claims.secret().expose_secret(), "three");
        let after = cache
            .get_or_acquire(key, false, make("four"))
            .await
            .unwrap();
        assert_eq!(after.secret().expose_secret(), "three");
    }

    /// A provider answering a claims request with `expires_in: 0`: the token is refused with
    /// an error, and the valid cached token is kept (before, it was replaced by the expired
    /// one, and the next request sent that).
    #[tokio::test(start_paused = true)]
    async fn an_expired_claims_token_is_an_error_and_the_cached_token_stays() {
        let cache = TokenCache::new("Test");
        let key = CacheKey::new("t", &scopes(&["s"]), false);
        let valid = || async {
            Ok(AccessToken::new(
                "valid",
                Instant::now() + Duration::from_secs(3600),
            ))
        };
        cache
            .get_or_acquire(key.clone(), false, valid)
            .await
            .unwrap();
        let expired = || async { Ok(AccessToken::new("expired", Instant::now())) };
        let err = cache
            .get_or_acquire(key.clone(), true, expired)
            .await
            .unwrap_err();
        assert!(err.message().contains("already expired"), "{err}");
        let never = || async { Err(CredentialError::authentication_failed("Test", "not asked")) };
        let after = cache.get_or_acquire(key, false, never).await.unwrap();
        assert_eq!(after.secret().expose_secret(), "valid");
    }

    /// A caller that chose whose token to acquire before the slots were cleared (the device
    /// code credential read its pinned account, then another user's sign-in landed) makes no
    /// slot after the clear and acquires nothing: the next account's callers would be served
    /// the previous one's token. Before, it made a slot in the cleared map and cached it there.
    #[tokio::test(start_paused = true)]
    async fn an_acquisition_chosen_before_a_clear_makes_no_slot_after_it() {
        let cache = TokenCache::new("Test");
        let calls = Arc::new(AtomicUsize::new(0));
        let before = cache.generation();
        cache.clear();
        let stale = cache
            .get_or_acquire_as_of(
                key("a"),
                false,
                Some(before),
                counting(&calls, Some(("alice", HOUR))),
            )
            .await;
        assert!(stale.is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(slots(&cache), 0);
        let now = cache.generation();
        let token = cache
            .get_or_acquire_as_of(
                key("a"),
                false,
                Some(now),
                counting(&calls, Some(("bob", HOUR))),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(token.secret().expose_secret(), "bob");
        let cached = cache
            .get_or_acquire(key("a"), false, counting(&calls, None))
            .await;
        assert_eq!(cached.unwrap().secret().expose_secret(), "bob");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
