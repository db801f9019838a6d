//! The protocol over an in-process store on tokio's paused clock: each `TokenCache` over a
//! `DistributedCache` plays one process of a fleet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::key::{EntryKey, Identity};
use super::*;
use crate::cache::{CacheKey, TokenCache};

const HOUR: Duration = Duration::from_secs(3600);
const KEY: [u8; 32] = [7; 32];

/// How the store answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Healthy,
    /// Every call hangs (a stopped server).
    Hang,
    /// Every call fails at once (a refused connection).
    Fail,
}

/// A real store in memory: values and leases with TTLs on tokio's clock.
#[derive(Debug)]
struct MemoryStore {
    entries: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
    mode: Mutex<Mode>,
    calls: AtomicUsize,
}

impl MemoryStore {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::default(),
            mode: Mutex::new(Mode::Healthy),
            calls: AtomicUsize::new(0),
        })
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.live(key)
    }

    fn set_raw(&self, key: &str, value: &[u8]) {
        self.entries
            .lock()
            .unwrap()
            .insert(key.to_owned(), (value.to_vec(), Instant::now() + HOUR));
    }

    fn keys(&self) -> Vec<String> {
        self.entries.lock().unwrap().keys().cloned().collect()
    }

    fn live(&self, key: &str) -> Option<Vec<u8>> {
        let mut entries = self.entries.lock().unwrap();
        match entries.get(key) {
            Some((_, until)) if Instant::now() >= *until => {
                entries.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }

    /// Counts the call and answers per the mode.
    fn answer<T: Send + 'static>(
        &self,
        healthy: impl FnOnce() -> T,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Healthy => {
                let value = healthy();
                async move { Ok(value) }.boxed()
            }
            Mode::Hang => std::future::pending().boxed(),
            Mode::Fail => async { Err(StoreError::msg("connection refused")) }.boxed(),
        }
    }
}

/// One handle per "process" on the shared store.
#[derive(Debug)]
struct Handle(Arc<MemoryStore>);

impl TokenStore for Handle {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        self.0.answer(|| self.0.live(key))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.answer(|| {
            self.0
                .entries
                .lock()
                .unwrap()
                .insert(key.to_owned(), (value.to_vec(), Instant::now() + ttl));
        })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.0.answer(|| {
            if self.0.live(key).is_some() {
                return false;
            }
            self.0.entries.lock().unwrap().insert(
                key.to_owned(),
                (holder.as_bytes().to_vec(), Instant::now() + ttl),
            );
            true
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.answer(|| {
            if self.0.live(key).as_deref() == Some(holder.as_bytes()) {
                self.0.entries.lock().unwrap().remove(key);
            }
        })
    }
}

fn sealing_key() -> SealingKey {
    SealingKey::new("test-key", &KEY).unwrap()
}

fn cache(store: &Arc<MemoryStore>) -> DistributedCache {
    DistributedCache::builder(Handle(Arc::clone(store)))
        .sealing_key(sealing_key())
        .build()
        .unwrap()
}

fn identity() -> Identity {
    Identity {
        authority: "login.microsoftonline.com".into(),
        client_id: "client".into(),
        identity: "Test".into(),
    }
}

fn process(cache: &DistributedCache) -> TokenCache {
    TokenCache::new("Test").with_shared(Some(SharedLevel::new(cache.clone(), identity())))
}

fn scopes(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn cache_key() -> CacheKey {
    CacheKey::new("tenant", &scopes(&["scope"]), false)
}

fn store_keys(prefix: &str) -> EntryKey {
    EntryKey::new(prefix, &identity(), "tenant", &scopes(&["scope"]), false)
}

/// The identity provider: counts its calls; each takes `delay` and returns a token named
/// after the call, living `lifetime`.
#[derive(Clone)]
struct Idp {
    calls: Arc<AtomicUsize>,
    delay: Duration,
    lifetime: Duration,
}

impl Idp {
    fn new(delay: Duration) -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
            delay,
            lifetime: HOUR,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn acquire(
        &self,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<AccessToken, CredentialError>> + use<> {
        let this = self.clone();
        move || {
            async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(this.delay).await;
                Ok(AccessToken::new(
                    format!("token-{n}"),
                    Instant::now() + this.lifetime,
                ))
            }
            .boxed()
        }
    }
}

async fn get(process: &TokenCache, idp: &Idp) -> String {
    process
        .get_or_acquire(cache_key(), false, idp.acquire())
        .await
        .unwrap()
        .secret()
        .expose_secret()
        .to_owned()
}

#[tokio::test(start_paused = true)]
async fn two_processes_over_one_store_make_one_idp_call() {
    let store = MemoryStore::new();
    let (a, b) = (cache(&store), cache(&store));
    let (pa, pb) = (process(&a), process(&b));
    let idp = Idp::new(Duration::from_millis(300));
    let (ta, tb) = tokio::join!(get(&pa, &idp), get(&pb, &idp));
    assert_eq!(idp.calls(), 1);
    assert_eq!(ta, tb);
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.leases_won + sb.leases_won, 1);
    assert_eq!(sa.leases_lost + sb.leases_lost, 1);
    assert_eq!(sa.shared_hits + sb.shared_hits, 1);
    assert_eq!(sa.idp_calls + sb.idp_calls, 1);
    // From memory now: the store is not asked again.
    let calls = store.calls();
    for _ in 0..10 {
        assert_eq!(get(&pa, &idp).await, ta);
        assert_eq!(get(&pb, &idp).await, ta);
    }
    assert_eq!(store.calls(), calls);
    assert_eq!(a.stats().local_hits + b.stats().local_hits, 20);
    // A third process started later finds the token in the store.
    let c = cache(&store);
    assert_eq!(get(&process(&c), &idp).await, ta);
    assert_eq!(c.stats().shared_hits, 1);
    assert_eq!(idp.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_happens_once_for_the_fleet() {
    let store = MemoryStore::new();
    let (a, b) = (cache(&store), cache(&store));
    let (pa, pb) = (process(&a), process(&b));
    let idp = Idp::new(Duration::from_millis(200));
    let first = get(&pa, &idp).await;
    assert_eq!(get(&pb, &idp).await, first);
    // Into the refresh window (the last 300 s): both processes renew, one asks.
    tokio::time::advance(HOUR - Duration::from_secs(290)).await;
    let (ra, rb) = tokio::join!(get(&pa, &idp), get(&pb, &idp));
    assert_eq!(idp.calls(), 2);
    assert_eq!(ra, rb);
    assert_ne!(ra, first);
    // Nobody renews again until the new token's window.
    tokio::time::advance(Duration::from_secs(600)).await;
    assert_eq!(get(&pa, &idp).await, ra);
    assert_eq!(get(&pb, &idp).await, ra);
    assert_eq!(idp.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_process_that_starts_late_renews_when_the_fleet_does() {
    // An entry is judged from when it was published, not from when a process read it:
    // otherwise a process reading a half-spent token would never renew it.
    let store = MemoryStore::new();
    let (a, b) = (cache(&store), cache(&store));
    let idp = Idp::new(Duration::ZERO);
    let first = get(&process(&a), &idp).await;
    tokio::time::advance(HOUR - Duration::from_secs(200)).await;
    // 200 s left: due for renewal by the publisher's rule (300 s window).
    let late = get(&process(&b), &idp).await;
    assert_ne!(late, first);
    assert_eq!(idp.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_dead_holders_lease_is_taken_over_when_it_expires() {
    let store = MemoryStore::new();
    let c = DistributedCache::builder(Handle(Arc::clone(&store)))
        .sealing_key(sealing_key())
        .wait_limit(Duration::from_secs(60))
        .build()
        .unwrap();
    // A holder took the lease and died.
    let lease = store_keys("tower-identity").lease();
    assert!(
        Handle(Arc::clone(&store))
            .try_lease(&lease, "dead", Duration::from_secs(10))
            .await
            .unwrap()
    );
    let idp = Idp::new(Duration::ZERO);
    let start = Instant::now();
    let token = get(&process(&c), &idp).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_millis(10_300),
        "{waited:?}"
    );
    assert_eq!(idp.calls(), 1);
    let stats = c.stats();
    assert_eq!((stats.leases_lost, stats.leases_won), (1, 1));
    // Published for the others, and the lease given back.
    let other = cache(&store);
    assert_eq!(get(&process(&other), &idp).await, token);
    assert!(store.raw(&lease).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_slow_holder_is_waited_for_up_to_the_wait_limit_then_the_process_asks_itself() {
    let store = MemoryStore::new();
    let c = DistributedCache::builder(Handle(Arc::clone(&store)))
        .sealing_key(sealing_key())
        .lease(Duration::from_secs(60))
        .wait_limit(Duration::from_secs(2))
        .build()
        .unwrap();
    let lease = store_keys("tower-identity").lease();
    Handle(Arc::clone(&store))
        .try_lease(&lease, "slow", Duration::from_secs(60))
        .await
        .unwrap();
    let idp = Idp::new(Duration::ZERO);
    let start = Instant::now();
    let token = get(&process(&c), &idp).await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(idp.calls(), 1);
    // Published all the same: the store works, only the holder was slow.
    assert_eq!(get(&process(&cache(&store)), &idp).await, token);
    assert_eq!(idp.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_polls_with_backoff_and_takes_the_holders_token() {
    let store = MemoryStore::new();
    let (a, b) = (cache(&store), cache(&store));
    let idp = Idp::new(Duration::from_secs(1));
    let pa = process(&a);
    let holder = tokio::spawn({
        let idp = idp.clone();
        async move { get(&pa, &idp).await }
    });
    tokio::task::yield_now().await;
    let start = Instant::now();
    let calls = store.calls();
    let waiter = get(&process(&b), &idp).await;
    assert_eq!(waiter, holder.await.unwrap());
    // Polls at 10, 30, 70, 150, 310, 560, 810, 1060 ms: seen within 250 ms of the publish.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited <= Duration::from_millis(1250),
        "{waited:?}"
    );
    let polls = store.calls() - calls;
    assert!(polls <= 20, "{polls} store calls while waiting");
    assert_eq!(idp.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_store_costs_the_budget_per_call_then_the_breaker_opens_and_closes() {
    let store = MemoryStore::new();
    let c = DistributedCache::builder(Handle(Arc::clone(&store)))
        .sealing_key(sealing_key())
        .budget(Duration::from_millis(50))
        .breaker(3, Duration::from_secs(30))
        .build()
        .unwrap();
    let p = process(&c);
    let idp = Idp::new(Duration::ZERO);
    store.set_mode(Mode::Hang);
    let ask = |scope: &str| {
        p.get_or_acquire(
            CacheKey::new("tenant", &scopes(&[scope]), false),
            false,
            idp.acquire(),
        )
    };
    for (i, scope) in ["a", "b", "c"].into_iter().enumerate() {
        let start = Instant::now();
        ask(scope).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(50), "call {i}");
    }
    assert_eq!(store.calls(), 3);
    // Open: straight to the identity provider, the store not asked.
    let start = Instant::now();
    ask("d").await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(store.calls(), 3);
    assert_eq!(idp.calls(), 4);
    assert_eq!(c.stats().store_errors, 3);
    // After open_for, with the store back, it is asked again and shares again.
    store.set_mode(Mode::Healthy);
    tokio::time::advance(Duration::from_secs(30)).await;
    ask("e").await.unwrap();
    assert!(store.calls() > 3);
    assert_eq!(c.stats().leases_won, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_fails_no_request_and_a_failed_trial_reopens_the_breaker() {
    let store = MemoryStore::new();
    let c = DistributedCache::builder(Handle(Arc::clone(&store)))
        .sealing_key(sealing_key())
        .breaker(2, Duration::from_secs(10))
        .build()
        .unwrap();
    let p = process(&c);
    let idp = Idp::new(Duration::ZERO);
    store.set_mode(Mode::Fail);
    for scope in ["a", "b", "c", "d"] {
        p.get_or_acquire(
            CacheKey::new("tenant", &scopes(&[scope]), false),
            false,
            idp.acquire(),
        )
        .await
        .unwrap();
    }
    assert_eq!(store.calls(), 2, "open after two failures");
    tokio::time::advance(Duration::from_secs(10)).await;
    p.get_or_acquire(
        CacheKey::new("tenant", &scopes(&["e"]), false),
        false,
        idp.acquire(),
    )
    .await
    .unwrap();
    assert_eq!(store.calls(), 3, "one trial");
    p.get_or_acquire(
        CacheKey::new("tenant", &scopes(&["f"]), false),
        false,
        idp.acquire(),
    )
    .await
    .unwrap();
    assert_eq!(store.calls(), 3, "the failed trial opened it again");
    assert_eq!(idp.calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn claims_requests_skip_the_shared_level() {
    let store = MemoryStore::new();
    let c = cache(&store);
    let p = process(&c);
    let idp = Idp::new(Duration::ZERO);
    p.get_or_acquire(cache_key(), true, idp.acquire())
        .await
        .unwrap();
    assert_eq!(store.calls(), 0);
    assert!(store.keys().is_empty());
    assert_eq!(c.stats().idp_calls, 1);
}

/// Values that must not open for the cache built by `cache()`, each with what it is.
fn unopenable(store: &Arc<MemoryStore>, token_key: &str) -> Vec<(&'static str, Vec<u8>)> {
    let now = Instant::now();
    let token = AccessToken::new("planted", now + HOUR);
    let seal =
        |sealing: &Sealing, key: &str| sealing.seal(key, &token, now, WallClock::now()).unwrap();
    let ours = Sealing::Sealed(sealing_key());
    let _ = store;
    vec![
        ("garbage", b"\x00\xffnot an entry".to_vec()),
        ("the version prefix only", b"ti1s".to_vec()),
        (
            "another key",
            seal(
                &Sealing::Sealed(SealingKey::new("test-key", &[8; 32]).unwrap()),
                token_key,
            ),
        ),
        (
            "another key name",
            seal(
                &Sealing::Sealed(SealingKey::new("other-name", &KEY).unwrap()),
                token_key,
            ),
        ),
        (
            "another entry's value",
            seal(&ours, &store_keys("other-prefix").token()),
        ),
        ("plaintext", seal(&Sealing::Plaintext, token_key)),
    ]
}

#[tokio::test(start_paused = true)]
async fn values_that_do_not_open_are_misses_never_returned_and_are_replaced() {
    for (what, value) in unopenable(&MemoryStore::new(), &store_keys("tower-identity").token()) {
        let store = MemoryStore::new();
        let token_key = store_keys("tower-identity").token();
        store.set_raw(&token_key, &value);
        let c = cache(&store);
        let idp = Idp::new(Duration::ZERO);
        let got = get(&process(&c), &idp).await;
        assert_eq!(got, "token-1", "{what}");
        assert_eq!(idp.calls(), 1, "{what}");
        assert_eq!(c.stats().store_errors, 1, "{what}");
        // Replaced by a value the fleet can open.
        let other = cache(&store);
        assert_eq!(get(&process(&other), &idp).await, "token-1", "{what}");
        assert_eq!(other.stats().shared_hits, 1, "{what}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_plaintext_cache_opens_no_sealed_value_and_stores_plaintext_only_when_asked() {
    let store = MemoryStore::new();
    let token_key = store_keys("tower-identity").token();
    let sealed = Sealing::Sealed(sealing_key())
        .seal(
            &token_key,
            &AccessToken::new("planted", Instant::now() + HOUR),
            Instant::now(),
            WallClock::now(),
        )
        .unwrap();
    store.set_raw(&token_key, &sealed);
    let plain = DistributedCache::builder(Handle(Arc::clone(&store)))
        .plaintext_at_rest()
        .build()
        .unwrap();
    let idp = Idp::new(Duration::ZERO);
    assert_eq!(get(&process(&plain), &idp).await, "token-1");
    assert_eq!(plain.stats().store_errors, 1);
    let raw = store.raw(&token_key).unwrap();
    assert!(
        raw.windows(7).any(|w| w == b"token-1"),
        "plaintext, as asked"
    );
}

#[tokio::test(start_paused = true)]
async fn sealed_entries_hold_no_token_in_clear_and_round_trip() {
    let store = MemoryStore::new();
    let c = cache(&store);
    let idp = Idp::new(Duration::ZERO);
    let token = get(&process(&c), &idp).await;
    let token_key = store_keys("tower-identity").token();
    let raw = store.raw(&token_key).unwrap();
    assert!(raw.starts_with(b"ti1s"));
    assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));
    for key in store.keys() {
        assert!(!key.contains("tenant") && !key.contains("client") && !key.contains("scope"));
    }
    let opened = Sealing::Sealed(sealing_key())
        .open(&token_key, &raw, Instant::now(), c.shared.clock)
        .unwrap();
    assert_eq!(opened.token.secret().expose_secret(), token);
    assert_eq!(opened.token.expires_on(), Instant::now() + HOUR);
    // Two seals of one token differ (random nonce).
    let again = Sealing::Sealed(sealing_key())
        .seal(&token_key, &opened.token, Instant::now(), c.shared.clock)
        .unwrap();
    assert_ne!(again, raw);
}

#[test]
fn the_builder_requires_a_key_or_the_opt_out_and_sane_values() {
    let store = MemoryStore::new();
    let builder = || DistributedCache::builder(Handle(Arc::clone(&store)));
    let cases = [
        (builder(), "no sealing key"),
        (
            builder().sealing_key(sealing_key()).plaintext_at_rest(),
            "choose one",
        ),
        (builder().plaintext_at_rest().prefix("a{b}"), "prefix"),
        (builder().plaintext_at_rest().prefix(""), "prefix"),
        (
            builder().plaintext_at_rest().budget(Duration::ZERO),
            "budget",
        ),
        (builder().plaintext_at_rest().lease(Duration::ZERO), "lease"),
        (
            builder().plaintext_at_rest().wait_limit(Duration::ZERO),
            "wait_limit",
        ),
        (
            builder()
                .plaintext_at_rest()
                .breaker(0, Duration::from_secs(1)),
            "failures",
        ),
    ];
    for (b, want) in cases {
        let err = b.build().unwrap_err();
        assert!(err.message().contains(want), "{err} / {want}");
    }
}

#[test]
fn sealing_keys_are_exactly_32_bytes_and_debug_shows_no_key_bytes() {
    let err = SealingKey::new("k", &[1; 16]).unwrap_err();
    assert!(err.message().contains("16 bytes"), "{err}");
    assert!(SealingKey::new("", &KEY).is_err());
    let err = SealingKey::from_env("TOWER_IDENTITY_TEST_NO_SUCH_VAR").unwrap_err();
    assert!(err.message().contains("is not set"), "{err}");
    let key = SealingKey::new("vault:cache-key", &[0xAB; 32]).unwrap();
    let store = MemoryStore::new();
    let builder = DistributedCache::builder(Handle(Arc::clone(&store))).sealing_key(key.clone());
    let texts = [
        format!("{key:?}"),
        format!("{builder:?}"),
        format!("{:?}", builder.build().unwrap()),
    ];
    for text in texts {
        assert!(text.contains("vault:cache-key"), "{text}");
        for needle in ["171", "ab, ab", "AB", "0xab", "q6ur"] {
            assert!(!text.contains(needle), "{needle} in {text}");
        }
    }
}
