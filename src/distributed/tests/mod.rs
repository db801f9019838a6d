//! The protocol over an in-process store on tokio's paused clock: each `TokenCache` over a
//! `DistributedCache` plays one process of a fleet.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

mod credentials;
mod memory_store;

use memory_store::{Handle, MemoryStore, Mode};

use super::key::{EntryKey, Identity};
use super::*;
use crate::cache::{CacheKey, TokenCache};
use crate::error::{Cause, ProviderDetails};

const HOUR: Duration = Duration::from_secs(3600);
const KEY: [u8; 32] = [7; 32];

fn sealing_key() -> SealingKey {
    SealingKey::new("test-key", &KEY).unwrap()
}

fn cache(store: &Arc<MemoryStore>) -> DistributedCache {
    cache_with(store, |b| b)
}

/// A sealed cache over `store` with the settings `configure` adds.
fn cache_with(
    store: &Arc<MemoryStore>,
    configure: impl FnOnce(DistributedCacheBuilder) -> DistributedCacheBuilder,
) -> DistributedCache {
    configure(DistributedCache::builder(Handle(Arc::clone(store))).sealing_key(sealing_key()))
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

/// How the identity provider answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answers {
    Tokens,
    /// Every call is refused as the token endpoint refuses `invalid_client` (401).
    Refusal,
    /// The first call fails as a 503 that outlasted the retries (transient); later calls
    /// answer tokens.
    FirstUnavailable,
    /// Every call is throttled: a 429 whose `Retry-After` (120 s) is longer than the retries
    /// wait (`max_retry_after`, 60 s), so the credential gives up at once.
    Throttled,
    /// Every call fails as a 503 that outlasted the retries (transient).
    Unavailable,
    /// Every call fails in the credential itself, with no answer of the provider (a
    /// callback's error, `az` not signed in): not transient.
    OwnFailure,
}

/// The identity provider: counts its calls; each takes `delay` and returns a token named
/// after the call, living `lifetime`.
#[derive(Clone)]
struct Idp {
    calls: Arc<AtomicUsize>,
    delay: Duration,
    lifetime: Duration,
    answers: Answers,
}

impl Idp {
    fn new(delay: Duration) -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
            delay,
            lifetime: HOUR,
            answers: Answers::Tokens,
        }
    }

    fn failing(delay: Duration) -> Self {
        Self {
            answers: Answers::Refusal,
            ..Self::new(delay)
        }
    }

    fn first_unavailable(delay: Duration) -> Self {
        Self {
            answers: Answers::FirstUnavailable,
            ..Self::new(delay)
        }
    }

    fn throttled(delay: Duration) -> Self {
        Self {
            answers: Answers::Throttled,
            ..Self::new(delay)
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
                if this.answers == Answers::Throttled {
                    let status = http::StatusCode::TOO_MANY_REQUESTS;
                    return Err(CredentialError::authentication_failed("Test", "throttled")
                        .with_provider(ProviderDetails {
                            status: Some(status),
                            ..ProviderDetails::default()
                        })
                        .with_cause(Cause {
                            transient: true,
                            throttled_until: Some(Instant::now() + THROTTLE),
                            ..Cause::default()
                        }));
                }
                if matches!(this.answers, Answers::OwnFailure) {
                    return Err(CredentialError::authentication_failed(
                        "Test",
                        "callback failed",
                    ));
                }
                let status = match this.answers {
                    Answers::Refusal => Some(http::StatusCode::UNAUTHORIZED),
                    Answers::FirstUnavailable if n == 1 => {
                        Some(http::StatusCode::SERVICE_UNAVAILABLE)
                    }
                    Answers::Unavailable => Some(http::StatusCode::SERVICE_UNAVAILABLE),
                    _ => None,
                };
                if let Some(status) = status {
                    let error = (status == http::StatusCode::UNAUTHORIZED)
                        .then(|| "invalid_client".to_owned());
                    return Err(CredentialError::authentication_failed("Test", "refused")
                        .with_provider(ProviderDetails {
                            status: Some(status),
                            error,
                            ..ProviderDetails::default()
                        })
                        .with_cause(Cause {
                            transient: status.is_server_error(),
                            ..Cause::default()
                        }));
                }
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
    get_for(process, idp, "scope").await
}

/// A token for `scope`: each scope is another entry (another slot, another store key).
async fn get_for(process: &TokenCache, idp: &Idp, scope: &str) -> String {
    let key = CacheKey::new("tenant", &scopes(&[scope]), false);
    process
        .get_or_acquire(key, false, idp.acquire())
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

/// Only a token from memory counts as a local hit: not the error of a caller that started
/// no acquisition because no runtime runs (before, counted: `started` is set only when
/// `acquire` is called, and no flight called it), nor the failure of an acquisition another
/// caller started, joined; the joiner's token from a successful one is.
#[tokio::test(start_paused = true)]
async fn an_error_is_no_local_hit() {
    let store = MemoryStore::new();
    let a = cache(&store);
    let pa = process(&a);
    let idp = Idp::new(Duration::from_millis(300));
    let outside = std::thread::scope(|scope| {
        let asked = || pa.get_or_acquire(cache_key(), false, idp.acquire());
        scope
            .spawn(move || crate::flight::block_on(asked()))
            .join()
            .unwrap()
    });
    let error = outside.unwrap_err();
    assert!(error.message().contains("needs a tokio runtime"), "{error}");
    assert_eq!(a.stats().local_hits, 0, "no runtime");
    let failing = Idp::failing(Duration::from_millis(300));
    let (first, joined) = tokio::join!(
        pa.get_or_acquire(cache_key(), false, failing.acquire()),
        pa.get_or_acquire(cache_key(), false, failing.acquire()),
    );
    assert!(first.is_err() && joined.is_err());
    assert_eq!(failing.calls(), 1, "joined");
    assert_eq!(a.stats().local_hits, 0, "a joined failure");
    let (first, joined) = tokio::join!(get(&pa, &idp), get(&pa, &idp));
    assert_eq!(first, joined);
    assert_eq!(idp.calls(), 1, "joined");
    assert_eq!(a.stats().local_hits, 1, "a joined success");
}

/// A store of the user's that implements only the required methods: the defaults of the
/// others run over them.
/// The required [`TokenStore`] methods a test store wrapping another (`self.0`) passes on
/// unchanged, one per name: each wrapper writes only the methods it changes.
macro_rules! forward {
    (get) => {
        fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
            self.0.get(key)
        }
    };
    (put) => {
        fn put<'a>(
            &'a self,
            key: &'a str,
            value: &'a [u8],
            ttl: Duration,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            self.0.put(key, value, ttl)
        }
    };
    (try_lease) => {
        fn try_lease<'a>(
            &'a self,
            key: &'a str,
            holder: &'a str,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<bool, StoreError>> {
            self.0.try_lease(key, holder, ttl)
        }
    };
    (release) => {
        fn release<'a>(
            &'a self,
            key: &'a str,
            holder: &'a str,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            self.0.release(key, holder)
        }
    };
}

#[derive(Debug)]
struct RequiredOnly(Handle);

impl TokenStore for RequiredOnly {
    forward!(get);

    forward!(put);

    forward!(try_lease);

    forward!(release);
}

/// Over a store with only the required methods, 30 ms a round trip, under the default budget
/// (50 ms): the default `get_with_mark` reads the entry and the mark at once, one round trip
/// in all, and two processes share one token. (Before, it read them one after the other: 60 ms,
/// every look outlived the budget, and each process asked on its own.)
#[tokio::test(start_paused = true)]
async fn the_default_get_with_mark_takes_one_round_trip() {
    let store = MemoryStore::new();
    store.set_delay(Duration::from_millis(30));
    let cache = || {
        DistributedCache::builder(RequiredOnly(Handle(Arc::clone(&store))))
            .sealing_key(sealing_key())
            .build()
            .unwrap()
    };
    let (a, b) = (cache(), cache());
    let idp = Idp::new(Duration::from_millis(300));
    let (pa, pb) = (process(&a), process(&b));
    let (ta, tb) = tokio::join!(get(&pa, &idp), get(&pb, &idp));
    assert_eq!(ta, tb);
    assert_eq!(idp.calls(), 1);
    assert_eq!(a.stats().store_errors + b.stats().store_errors, 0);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_happens_once_for_the_fleet() {
    let store = MemoryStore::new();
    let (a, b) = (cache(&store), cache(&store));
    let (pa, pb) = (process(&a), process(&b));
    let idp = Idp::new(Duration::from_millis(200));
    let first = get(&pa, &idp).await;
    assert_eq!(get(&pb, &idp).await, first);
    // Into the refresh window (the last 300 s): both processes renew in the background
    // (their callers get the current token), one asks.
    tokio::time::advance(HOUR - Duration::from_secs(290)).await;
    let (ca, cb) = tokio::join!(get(&pa, &idp), get(&pb, &idp));
    assert_eq!((ca.as_str(), cb.as_str()), (first.as_str(), first.as_str()));
    tokio::time::sleep(Duration::from_secs(1)).await;
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

/// An entry is judged from when it was published, not from when a process read it:
/// otherwise a process reading a half-spent token would never renew it. A process that
/// starts with 200 s left (due by the publisher's rule, a 300 s window) and finds nobody
/// renewing it (no lease) renews it for the fleet: handed the due token instead, a fleet of
/// processes that each ask once would serve it to its end with none renewing.
#[tokio::test(start_paused = true)]
async fn a_process_that_starts_late_renews_when_the_fleet_does() {
    let store = MemoryStore::new();
    let (a, b) = (cache(&store), cache(&store));
    let idp = Idp::new(Duration::ZERO);
    let first = get(&process(&a), &idp).await;
    tokio::time::advance(HOUR - Duration::from_secs(200)).await;
    let late = get(&process(&b), &idp).await;
    assert_ne!(late, first);
    assert_eq!(idp.calls(), 2);
}

/// A process that reads a shared token late in its life renews it with the fleet: read at
/// 52 min of a 1 h token, renewed by its publisher at 55 min, the reader hands out the new
/// token from 55 min on. (Before, its slot judged the token from the 8 min it had left when
/// read, a 240 s window: it kept the old token until 56 min, a minute after the fleet.)
#[tokio::test(start_paused = true)]
async fn a_process_that_reads_a_token_late_renews_it_with_the_fleet() {
    let store = MemoryStore::new();
    let (a, b) = (cache(&store), cache(&store));
    let (publisher, reader) = (process(&a), process(&b));
    let idp = Idp::new(Duration::ZERO);
    let start = Instant::now();
    assert_eq!(get(&publisher, &idp).await, "token-1");
    tokio::time::advance(Duration::from_secs(52 * 60)).await;
    let read = reader
        .get_or_acquire(cache_key(), false, idp.acquire())
        .await
        .unwrap();
    assert_eq!(read.secret().expose_secret(), "token-1");
    assert_eq!(
        read.refresh_on(),
        Some(start + Duration::from_secs(55 * 60))
    );
    // 55 min: the publisher's slot renews (in the background) and publishes.
    tokio::time::advance(Duration::from_secs(3 * 60)).await;
    get(&publisher, &idp).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(get(&publisher, &idp).await, "token-2");
    // A second later the reader renews too, from the store, and hands out the new token.
    tokio::time::advance(Duration::from_secs(1)).await;
    get(&reader, &idp).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(get(&reader, &idp).await, "token-2");
    assert_eq!(idp.calls(), 2);
    assert_eq!(b.stats().shared_hits, 2);
}

/// Under a jittered policy, an entry whose token's `refresh_on` has just passed is still
/// usable until that plus the jitter: the token handed out carries that moment, never a
/// `refresh_on` already past. (Before, it carried the earlier of the two: its slot renewed at
/// once, found the same token in the store, counted a failed attempt, and did so again every
/// 30 s until the fleet's moment.)
#[tokio::test(start_paused = true)]
async fn a_shared_hits_refresh_on_is_never_in_the_past_under_jitter() {
    let store = MemoryStore::new();
    let c = cache(&store);
    let token_key = store_keys("tower-identity").token();
    let start = Instant::now();
    let token = AccessToken::new("shared", start + HOUR)
        .with_refresh_on(Some(start + Duration::from_secs(600)));
    let sealed = Sealing::Sealed(sealing_key())
        .seal(&token_key, &token, start, c.shared.clock)
        .unwrap();
    store.set_raw(&token_key, &sealed);
    tokio::time::advance(Duration::from_secs(601)).await;
    // A draw of the jitter well above the second passed (this seed: some 39 s of 60 s).
    fastrand::seed(1);
    let policy = RefreshPolicy {
        jitter: Duration::from_secs(60),
        ..RefreshPolicy::default()
    };
    let idp = Idp::new(Duration::ZERO);
    let read = SharedLevel::new(c.clone(), identity())
        .acquire(
            "Test",
            "tenant",
            &scopes(&["scope"]),
            false,
            policy,
            (idp.acquire())(),
        )
        .await
        .unwrap();
    assert_eq!(read.secret().expose_secret(), "shared", "a shared hit");
    assert_eq!(idp.calls(), 0);
    let refresh_on = read.refresh_on().unwrap();
    assert!(
        refresh_on > Instant::now(),
        "refresh_on {:?} before now",
        Instant::now() - refresh_on
    );
}

/// A lease whose answer came too late may have been taken all the same: the process that
/// asked does the holder's part, best-effort (publishes, gives the lease back), so the others
/// get its token instead of waiting out `wait_limit` for a lease nobody fills.
#[tokio::test(start_paused = true)]
async fn a_lease_answered_too_late_is_published_and_given_back() {
    let store = MemoryStore::new();
    let (a, b) = (cache(&store), cache(&store));
    let (pa, pb) = (process(&a), process(&b));
    let idp = Idp::new(Duration::from_millis(300));
    store.set_mode(Mode::LateLeaseAnswer(Duration::from_millis(100)));
    let start = Instant::now();
    let late = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        get(&pb, &idp).await
    };
    let (ta, tb) = tokio::join!(get(&pa, &idp), late);
    assert_eq!(ta, tb);
    assert_eq!(idp.calls(), 1);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(store.raw(&store_keys("tower-identity").lease()).is_none());
}

/// Two credentials over one cache (one process) acquire one entry: the first's lease is lost
/// while it asks (evicted, as Redis may under `maxmemory`) and the second takes the lease.
/// Neither the first's renewals nor its release may touch the second's lease: holder ids are
/// per acquisition, not per cache.
#[tokio::test(start_paused = true)]
async fn a_release_frees_only_its_own_acquisitions_lease() {
    let store = MemoryStore::new();
    let c = cache_with(&store, |b| {
        b.lease(Duration::from_secs(1))
            .wait_limit(Duration::from_secs(60))
    });
    let (first, second) = (process(&c), process(&c));
    let idp = Idp::new(Duration::from_millis(1500));
    let lease = store_keys("tower-identity").lease();
    let evict = async {
        tokio::time::sleep(Duration::from_millis(1050)).await;
        store.remove(&lease);
    };
    let late = async {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        get(&second, &idp).await
    };
    let check = async {
        // The first has finished (1.5 s) and released; the second asks until 2.6 s.
        tokio::time::sleep(Duration::from_millis(1800)).await;
        store.raw(&lease)
    };
    let (_, _, _, held) = tokio::join!(get(&first, &idp), evict, late, check);
    assert!(held.is_some(), "the second acquisition's lease was freed");
    assert_eq!(idp.calls(), 2);
}

/// A provider slower than a lease (here 15 s; throttling with `Retry-After` does the same) is
/// asked once by a cold fleet: the holder renews its lease while it asks, and the others wait
/// on it. (Before, the lease ran out under the holder at 10 s: one waiter took it and asked,
/// and every other one asked at its 10 s wait limit.)
#[tokio::test(start_paused = true)]
async fn a_fleet_of_twenty_asks_a_slow_provider_once() {
    let store = MemoryStore::new();
    let caches: Vec<DistributedCache> = (0..20).map(|_| cache(&store)).collect();
    let idp = Idp::new(Duration::from_secs(15));
    let start = Instant::now();
    let tasks: Vec<_> = caches
        .iter()
        .map(|c| {
            let (p, idp) = (process(c), idp.clone());
            tokio::spawn(async move { get(&p, &idp).await })
        })
        .collect();
    let tokens: Vec<String> = futures_util::future::try_join_all(tasks).await.unwrap();
    assert!(
        start.elapsed() <= Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(idp.calls(), 1);
    assert!(tokens.iter().all(|t| t == "token-1"), "{tokens:?}");
    let won: u64 = caches.iter().map(|c| c.stats().leases_won).sum();
    let hits: u64 = caches.iter().map(|c| c.stats().shared_hits).sum();
    assert_eq!((won, hits), (1, 19));
}

/// Each cache's process asks at once against a refusing `idp`; every one gets an error. How
/// long the last one took.
async fn all_refused(caches: &[DistributedCache], idp: &Idp) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = caches
        .iter()
        .map(|c| {
            let (p, idp) = (process(c), idp.clone());
            tokio::spawn(async move {
                let failed = p.get_or_acquire(cache_key(), false, idp.acquire()).await;
                assert!(failed.is_err());
                Instant::now()
            })
        })
        .collect();
    let ends = futures_util::future::try_join_all(tasks).await.unwrap();
    ends.iter().max().unwrap().duration_since(start)
}

/// A cold fleet of 20 against a provider that refuses the client (150 ms per answer): the
/// holder's failure is marked in the store, and the waiters, seeing the lease given back with
/// that mark, ask on their own at once instead of taking the lease one after another. Every
/// process has its error within a second. (Before, process k had it after about k × (150 ms +
/// a poll): 20 waited 5 s in all.)
#[tokio::test(start_paused = true)]
async fn a_holders_failure_lets_the_waiters_ask_at_once_instead_of_in_turn() {
    let store = MemoryStore::new();
    let caches: Vec<DistributedCache> = (0..20).map(|_| cache(&store)).collect();
    let idp = Idp::failing(Duration::from_millis(150));
    let last = all_refused(&caches, &idp).await;
    assert!(
        last <= Duration::from_millis(1000),
        "the last error came at {last:?}"
    );
    assert_eq!(idp.calls(), 20, "each process asked once");
    let won: u64 = caches.iter().map(|c| c.stats().leases_won).sum();
    assert_eq!(won, 1, "one holder; the others asked on their own");
    assert!(store.raw(&store_keys("tower-identity").lease()).is_none());
}

/// A cold fleet of 50 against a provider that refuses the client, over a store 20 ms away:
/// the waiters read the holder's failure mark with the token at each poll, and all ask on
/// their own at their next poll. Every process has its error within a second. (Before, they
/// saw the mark only by taking the lease, one at a time, about four round trips each: the
/// last had its error after some 4 s, near the end of the 5 s mark, and with a store further
/// away or more processes the mark ran out before the last got through.)
#[tokio::test(start_paused = true)]
async fn every_waiter_sees_a_refusal_at_its_next_poll_not_through_the_lease_in_turn() {
    let store = MemoryStore::new();
    store.set_delay(Duration::from_millis(20));
    let caches: Vec<DistributedCache> = (0..50).map(|_| cache(&store)).collect();
    let idp = Idp::failing(Duration::from_millis(150));
    let last = all_refused(&caches, &idp).await;
    assert!(
        last <= Duration::from_millis(1000),
        "the last error came at {last:?}"
    );
    assert_eq!(idp.calls(), 50, "each process asked once");
    let won: u64 = caches.iter().map(|c| c.stats().leases_won).sum();
    assert_eq!(won, 1, "one holder; the others asked on their own");
}

/// A mark left by an earlier acquisition's holder says nothing of the holder a process waits
/// for: a process that starts while a mark is there and another process holds the lease waits
/// for that holder's token.
#[tokio::test(start_paused = true)]
async fn a_mark_older_than_the_wait_does_not_stop_a_waiter_from_waiting() {
    let store = MemoryStore::new();
    let failed = store_keys("tower-identity").failed();
    Handle(Arc::clone(&store))
        .put_mark(&failed, b"an-earlier-holder.0", Duration::from_secs(5))
        .await
        .unwrap();
    let (holder, waiter) = (cache(&store), cache(&store));
    let idp = Idp::new(Duration::from_secs(1));
    let holder_process = process(&holder);
    let holding = tokio::spawn({
        let idp = idp.clone();
        async move { get(&holder_process, &idp).await }
    });
    tokio::task::yield_now().await;
    assert_eq!(get(&process(&waiter), &idp).await, "token-1");
    assert_eq!(holding.await.unwrap(), "token-1");
    assert_eq!(idp.calls(), 1);
    assert_eq!(waiter.stats().shared_hits, 1);
}

/// The `Retry-After` of [`Answers::Throttled`].
const THROTTLE: Duration = Duration::from_secs(120);

/// A cold fleet of 20 against a provider that throttles (429, `Retry-After: 120`, longer than
/// the retries wait): the holder's throttled answer is marked for the wait, and every waiter
/// answers its caller with a throttled error at its next poll, sending nothing; so does a
/// process that starts later, at its first look, with the time left. One request in all
/// until the wait ends; then the next acquisition asks. (Before, a throttled holder left no
/// mark: each waiter took the lease in turn and sent its own request into the throttle, 20 in
/// all.)
#[tokio::test(start_paused = true)]
async fn a_throttled_holder_holds_the_whole_fleet_back_for_the_wait() {
    let store = MemoryStore::new();
    let caches: Vec<DistributedCache> = (0..20).map(|_| cache(&store)).collect();
    let idp = Idp::throttled(Duration::from_millis(150));
    let tasks: Vec<_> = caches
        .iter()
        .map(|c| {
            let (p, idp) = (process(c), idp.clone());
            tokio::spawn(async move { p.get_or_acquire(cache_key(), false, idp.acquire()).await })
        })
        .collect();
    let results = futures_util::future::try_join_all(tasks).await.unwrap();
    assert_eq!(idp.calls(), 1, "one request into the throttle");
    for result in &results {
        let error = result.as_ref().unwrap_err();
        assert!(error.is_throttled() && error.is_transient(), "{error}");
        let wait = error.retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(118) && wait <= THROTTLE,
            "{wait:?}"
        );
        assert_eq!(error.status(), Some(http::StatusCode::TOO_MANY_REQUESTS));
    }
    let won: u64 = caches.iter().map(|c| c.stats().leases_won).sum();
    assert_eq!(won, 1);
    // A process that starts 30 s later is answered at its first look, with the time left.
    // (Built now: tests move tokio's clock, not the wall clock, and a cache reads their
    // offset when it is built.)
    let late = cache(&store);
    tokio::time::advance(Duration::from_secs(30)).await;
    let error = process(&late)
        .get_or_acquire(cache_key(), false, idp.acquire())
        .await
        .unwrap_err();
    assert!(error.is_throttled(), "{error}");
    let wait = error.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(88) && wait <= Duration::from_secs(90),
        "{wait:?}"
    );
    assert!(error.message().contains("HTTP 429"), "{error}");
    assert_eq!((idp.calls(), late.stats().idp_calls), (1, 0));
    // Once the wait has passed, the next acquisition asks.
    tokio::time::advance(Duration::from_secs(91)).await;
    let fresh = Idp::new(Duration::ZERO);
    assert_eq!(get(&process(&cache(&store)), &fresh).await, "token-1");
    assert_eq!(fresh.calls(), 1);
}

/// A holder throttled at its renewal (at 56 min of a 1 h token, `Retry-After: 120`) leaves a
/// token due for renewal but valid for 4 min more in the store: a process that starts then
/// (its slot empty), or a new slot of the holder's own process, gets that token, as a process
/// holding it keeps serving its own, and asks nothing; the token carries the throttle's end as its `refresh_on` (its expiry, were that
/// sooner), so the process renews once the throttle has ended. (Before, a due entry under a
/// throttle mark answered the throttle: every request of the new process failed for the
/// whole wait while a valid token sat in the store.)
#[tokio::test(start_paused = true)]
async fn a_due_token_serves_a_cold_process_while_a_throttle_runs() {
    let store = MemoryStore::new();
    let (holder, cold) = (cache(&store), cache(&store));
    let warm = process(&holder);
    let (idp, throttled) = (Idp::new(Duration::ZERO), Idp::throttled(Duration::ZERO));
    let start = Instant::now();
    assert_eq!(get(&warm, &idp).await, "token-1");
    // 56 min: the holder's slot renews in the background and is throttled for 120 s.
    tokio::time::advance(Duration::from_secs(56 * 60)).await;
    let kept = warm.get_or_acquire(cache_key(), false, throttled.acquire());
    assert_eq!(kept.await.unwrap().secret().expose_secret(), "token-1");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(throttled.calls(), 1);
    assert!(
        store
            .raw(&store_keys("tower-identity").throttled())
            .is_some()
    );
    // A slot of the holder's own process that starts now is served the same.
    assert_eq!(get(&process(&holder), &idp).await, "token-1");
    let read = process(&cold);
    let token = read
        .get_or_acquire(cache_key(), false, idp.acquire())
        .await
        .unwrap();
    assert_eq!(token.secret().expose_secret(), "token-1");
    let throttle_end = start + Duration::from_secs(56 * 60) + THROTTLE;
    assert_eq!(token.refresh_on(), Some(throttle_end));
    assert_eq!((idp.calls(), cold.stats().throttled), (1, 0));
    // The warm process keeps serving its token too, sending nothing.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(get(&warm, &throttled).await, "token-1");
    assert_eq!(get(&read, &idp).await, "token-1");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!((idp.calls(), throttled.calls()), (1, 1));
    // The throttle over, the new process renews.
    tokio::time::advance(throttle_end - Instant::now()).await;
    assert_eq!(get(&read, &idp).await, "token-1");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(get(&read, &idp).await, "token-2");
    assert_eq!(idp.calls(), 2);
}

/// The fleet's token at 56 min of its hour (due for renewal, valid 4 min more), its warm
/// process `holder` renewing it in the background through `renewal` (which takes 30 s): the
/// store, the holder's cache and its process, once that renewal holds the lease.
async fn a_renewal_under_way(
    idp: &Idp,
    renewal: &Idp,
) -> (Arc<MemoryStore>, DistributedCache, TokenCache) {
    let store = MemoryStore::new();
    let holder = cache(&store);
    let warm = process(&holder);
    assert_eq!(get(&warm, idp).await, "token-1");
    tokio::time::advance(Duration::from_secs(56 * 60)).await;
    assert_eq!(
        get(&warm, renewal).await,
        "token-1",
        "served while it renews"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(renewal.calls(), 2, "the holder's request runs");
    assert!(store.raw(&store_keys("tower-identity").lease()).is_some());
    (store, holder, warm)
}

/// A process with no token of its own (a new pod, a new slot) that starts while the fleet's
/// holder renews slowly (30 s per request) is handed the stored token, due but valid, at once,
/// its `refresh_on` now, and asks nothing; its slot renews at its next request, in the
/// background, and hands out the holder's token once published. (Before, it lost the lease
/// and its callers waited for the holder's token, 30 s here, up to `wait_limit` (60 s), then
/// for a request of its own, while a token valid for minutes sat in the store.)
#[tokio::test(start_paused = true)]
async fn a_due_token_serves_a_cold_process_at_once_while_a_slow_holder_renews() {
    let idp = Idp::new(Duration::ZERO);
    let slow = Idp {
        delay: Duration::from_secs(30),
        ..idp.clone()
    };
    let (store, _holder, warm) = a_renewal_under_way(&idp, &slow).await;
    let cold = cache(&store);
    let read = process(&cold);
    let start = Instant::now();
    let token = read
        .get_or_acquire(cache_key(), false, idp.acquire())
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "answered at once");
    assert_eq!(token.secret().expose_secret(), "token-1");
    assert_eq!(token.refresh_on(), Some(start));
    assert_eq!((idp.calls(), cold.stats().shared_hits), (2, 1));
    // Its next request starts its renewal, which waits for the holder's token; the
    // request is answered at once.
    assert_eq!(get(&read, &idp).await, "token-1");
    assert_eq!(start.elapsed(), Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(get(&warm, &idp).await, "token-2");
    assert_eq!(get(&read, &idp).await, "token-2");
    assert_eq!(idp.calls(), 2, "one request for the fleet");
}

/// As above with a holder whose renewal fails after 30 s (a 503 that outlasted its retries,
/// which leaves no mark): a process with no token of its own that starts while it runs is
/// handed the stored token at once and asks nothing; one that starts after it failed renews
/// (nobody else does), and its own 503 is answered with the stored token. (Before, the first
/// waited for the lease, took it once the holder gave it back, and failed with its own 503,
/// 60 s on; the second failed 30 s on.)
#[tokio::test(start_paused = true)]
async fn a_due_token_serves_a_cold_process_at_once_while_the_holder_fails() {
    let idp = Idp::new(Duration::ZERO);
    let failing = Idp {
        delay: Duration::from_secs(30),
        answers: Answers::Unavailable,
        ..idp.clone()
    };
    let (store, _holder, warm) = a_renewal_under_way(&idp, &failing).await;
    // While the holder's request runs: at once, nothing asked.
    let cold = cache(&store);
    let start = Instant::now();
    let token = process(&cold)
        .get_or_acquire(cache_key(), false, failing.acquire())
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "answered at once");
    assert_eq!(token.secret().expose_secret(), "token-1");
    assert_eq!(cold.stats().idp_calls, 0);
    assert_eq!(failing.calls(), 2, "the holder's request alone");
    // After it failed (the lease given back): nobody renews, so this one does, and its own
    // failure is answered with the due token.
    tokio::time::advance(Duration::from_secs(31)).await;
    let cold = cache(&store);
    let start = Instant::now();
    let token = process(&cold)
        .get_or_acquire(cache_key(), false, failing.acquire())
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(30), "its own request");
    assert_eq!(token.secret().expose_secret(), "token-1");
    assert_eq!(cold.stats().idp_calls, 1);
    assert_eq!(failing.calls(), 3);
    // The holder keeps serving its own.
    assert_eq!(get(&warm, &failing).await, "token-1");
}

/// A renewal whose request fails in a way that is not the provider's final refusal (a 503)
/// while the store holds a token due for renewal but valid answers with that token, its
/// `refresh_on` now, as a slot whose renewal fails keeps its own; a final refusal
/// (`invalid_client`) is answered as it is.
#[tokio::test(start_paused = true)]
async fn a_failed_renewal_answers_the_stored_token_still_valid_but_a_refusal() {
    let store = MemoryStore::new();
    let c = cache(&store);
    let token_key = store_keys("tower-identity").token();
    let start = Instant::now();
    let token = AccessToken::new("stored", start + HOUR);
    let sealed = Sealing::Sealed(sealing_key())
        .seal(&token_key, &token, start, c.shared.clock)
        .unwrap();
    store.set_raw(&token_key, &sealed);
    tokio::time::advance(Duration::from_secs(56 * 60)).await;
    let (level, scopes) = (SharedLevel::new(c.clone(), identity()), scopes(&["scope"]));
    let renew = |idp: &Idp, replaced| {
        crate::refresh::as_renewal(
            replaced,
            level.acquire(
                "Test",
                "tenant",
                &scopes,
                false,
                RefreshPolicy::default(),
                (idp.acquire())(),
            ),
        )
    };
    let unavailable = Idp {
        answers: Answers::Unavailable,
        ..Idp::new(Duration::ZERO)
    };
    let answered = renew(&unavailable, "stored").await.unwrap();
    assert_eq!(answered.secret().expose_secret(), "stored");
    assert_eq!(answered.refresh_on(), Some(Instant::now()));
    let refused = Idp::failing(Duration::ZERO);
    let error = renew(&refused, "stored").await.unwrap_err();
    assert_eq!(error.status(), Some(http::StatusCode::UNAUTHORIZED));
    // Nor is the credential's own failure (no answer of the provider to pass over).
    let own = Idp {
        answers: Answers::OwnFailure,
        ..Idp::new(Duration::ZERO)
    };
    let error = renew(&own, "stored").await.unwrap_err();
    assert_eq!(error.message(), "callback failed");
    // A renewal of another token (the slot's own, got alone: perhaps hours left) is not
    // answered with the fleet's due one: its slot keeps its own.
    let error = renew(&unavailable, "its-own").await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert_eq!((unavailable.calls(), refused.calls()), (2, 1));
}

/// A holder throttled whose call to leave its mark failed remembers the throttle itself: for
/// 5 s its process's acquisitions answer it, sending nothing, where each would otherwise find
/// no mark and ask again into the throttle. (A mark the store took is read at the next look
/// instead: see the test above.)
#[tokio::test(start_paused = true)]
async fn a_throttle_whose_mark_failed_is_remembered_by_its_process() {
    let store = MemoryStore::new();
    let holder = cache_of(Fails(Handle(Arc::clone(&store)), Failing::ReleaseWithMark));
    let throttled = Idp::throttled(Duration::ZERO);
    for _ in 0..3 {
        let error = process(&holder)
            .get_or_acquire(cache_key(), false, throttled.acquire())
            .await
            .unwrap_err();
        assert!(error.is_throttled(), "{error}");
    }
    assert_eq!(throttled.calls(), 1);
    assert!(
        store
            .raw(&store_keys("tower-identity").throttled())
            .is_none()
    );
}

/// A store one of whose calls fails (a write lost, or its answer given up on), forwarding every
/// other call to `S`: one process's view of a store it cannot take a lease in, or leave a
/// mark in.
#[derive(Debug)]
struct Fails<S>(S, Failing);

/// The call a [`Fails`] store fails.
#[derive(Debug, PartialEq)]
enum Failing {
    TryLease,
    ReleaseWithMark,
}

fn reset() -> StoreError {
    StoreError::msg("connection reset")
}

impl<S: TokenStore> TokenStore for Fails<S> {
    forward!(get);

    fn get_with_ttl<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ValueWithTtl>, StoreError>> {
        self.0.get_with_ttl(key)
    }

    fn get_with_mark<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithMark, StoreError>> {
        self.0.get_with_mark(key, mark_key)
    }

    fn get_with_lease<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
        lease_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithLease, StoreError>> {
        self.0.get_with_lease(key, mark_key, lease_key)
    }

    forward!(put);

    fn put_mark<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.put_mark(key, value, ttl)
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        if self.1 == Failing::TryLease {
            return Box::pin(async { Err(reset()) });
        }
        self.0.try_lease(key, holder, ttl)
    }

    forward!(release);

    fn release_with_mark<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        mark_key: &'a str,
        mark: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        if self.1 == Failing::ReleaseWithMark {
            return Box::pin(async { Err(reset()) });
        }
        self.0.release_with_mark(key, holder, mark_key, mark, ttl)
    }

    fn renew_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.0.renew_lease(key, holder, ttl)
    }
}

/// A sealed cache over `store`.
/// The mark `body` as a cache sealing with [`sealing_key`] writes it under `mark_key` (with
/// its MAC): a mark the test's caches take for their fleet's.
fn marked(mark_key: &str, body: &str) -> Vec<u8> {
    Sealing::Sealed(sealing_key()).mark(mark_key, body.as_bytes())
}

fn cache_of(store: impl TokenStore) -> DistributedCache {
    DistributedCache::builder(store)
        .sealing_key(sealing_key())
        .build()
        .unwrap()
}

/// H holds the lease and asks a slow provider; three waiters wait for it. P's lease call
/// fails, so P asks alone, is refused, and gives back a lease it never held: it must leave no
/// failure mark, which the waiters would take for H's and each ask on their own while H's
/// request runs. One request for H's token, shared by all. Over a store with
/// `release_with_mark` in one step (as Redis's script) and over the default of a store with
/// only the required methods. (Before, the mark was written whoever held the lease: the three
/// waiters each asked.)
#[tokio::test(start_paused = true)]
async fn a_process_that_never_held_the_lease_leaves_no_mark_for_its_holders_waiters() {
    for required_only in [false, true] {
        let store = MemoryStore::new();
        let cache = || {
            let handle = Handle(Arc::clone(&store));
            if required_only {
                cache_of(RequiredOnly(handle))
            } else {
                cache_of(handle)
            }
        };
        let idp = Idp::new(Duration::from_secs(1));
        let holder = process(&cache());
        let holding = tokio::spawn({
            let idp = idp.clone();
            async move { get(&holder, &idp).await }
        });
        tokio::task::yield_now().await;
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (p, idp) = (process(&cache()), idp.clone());
                tokio::spawn(async move { get(&p, &idp).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let handle = Handle(Arc::clone(&store));
        let lease_fails = if required_only {
            cache_of(Fails(RequiredOnly(handle), Failing::TryLease))
        } else {
            cache_of(Fails(handle, Failing::TryLease))
        };
        let refusing = Idp::failing(Duration::from_millis(150));
        let refused = process(&lease_fails)
            .get_or_acquire(cache_key(), false, refusing.acquire())
            .await;
        assert!(refused.is_err());
        assert_eq!(refusing.calls(), 1);
        assert!(
            store.raw(&store_keys("tower-identity").failed()).is_none(),
            "required_only: {required_only}"
        );
        let tokens = futures_util::future::try_join_all(waiters).await.unwrap();
        assert_eq!(holding.await.unwrap(), "token-1");
        assert!(tokens.iter().all(|t| t == "token-1"), "{tokens:?}");
        assert_eq!(idp.calls(), 1, "required_only: {required_only}");
    }
}

/// During a throttle mark, a process reads the store once per 5 s: its later acquisitions of
/// the entry are answered from what it read, for 5 s (never past the mark's end), without a
/// store call; then it reads again. (Before the memory, each of the 100 acquisitions read the
/// store.)
#[tokio::test(start_paused = true)]
async fn acquisitions_during_a_known_throttle_make_no_store_call() {
    let store = MemoryStore::new();
    let c = cache(&store);
    let p = process(&c);
    let idp = Idp::new(Duration::ZERO);
    let mark = store_keys("tower-identity").throttled();
    store.set_raw(&mark, &marked(&mark, "429:other.1"));
    let before = store.calls();
    for _ in 0..100 {
        let error = p
            .get_or_acquire(cache_key(), false, idp.acquire())
            .await
            .unwrap_err();
        assert!(error.is_throttled(), "{error}");
        assert!(error.retry_after().unwrap() > HOUR - Duration::from_secs(1));
    }
    assert_eq!(store.calls() - before, 1, "one store read");
    assert_eq!(c.stats().throttled, 100);
    // One a second for 100 s: a read at most every 5 s.
    let before = store.calls();
    for _ in 0..100 {
        tokio::time::advance(Duration::from_secs(1)).await;
        let error = p
            .get_or_acquire(cache_key(), false, idp.acquire())
            .await
            .unwrap_err();
        assert!(error.is_throttled(), "{error}");
    }
    let reads = store.calls() - before;
    assert!((1..=20).contains(&reads), "{reads} store reads");
    assert_eq!(idp.calls(), 0);
    tokio::time::advance(HOUR).await;
    assert_eq!(get(&p, &idp).await, "token-1");
}

/// A failure mark (a holder id, as every release writes it) next to a throttle mark leaves
/// the throttle alone: the throttle has its own key, so an older release's 5 s failure mark
/// no longer overwrites an hour's throttle, and the process answers the throttle, sending
/// nothing. (Before, both marks shared one key: the last written was the only one.)
#[tokio::test(start_paused = true)]
async fn a_failure_mark_leaves_a_throttle_mark_alone() {
    let store = MemoryStore::new();
    let keys = store_keys("tower-identity");
    store.set_raw(&keys.throttled(), &marked(&keys.throttled(), "429:new.1"));
    store.set_raw(&keys.failed(), &marked(&keys.failed(), "old.1"));
    let c = cache(&store);
    let idp = Idp::new(Duration::ZERO);
    let error = process(&c)
        .get_or_acquire(cache_key(), false, idp.acquire())
        .await
        .unwrap_err();
    assert!(error.is_throttled(), "{error}");
    assert_eq!((idp.calls(), c.stats().throttled), (0, 1));
}

/// A throttled holder (120 s) and a waiter whose wall clock runs `skew` off the holder's
/// (positive: ahead): the waiter's error, and the calls the provider saw.
async fn throttled_with_skew(ahead: bool, secs: u64) -> (CredentialError, usize, u64) {
    let store = MemoryStore::new();
    let (holder, reader) = if ahead {
        (cache(&store), clock_ahead(cache(&store), secs))
    } else {
        (clock_ahead(cache(&store), secs), cache(&store))
    };
    let idp = Idp::throttled(Duration::from_millis(150));
    let holding = tokio::spawn({
        let (p, idp) = (process(&holder), idp.clone());
        async move { p.get_or_acquire(cache_key(), false, idp.acquire()).await }
    });
    tokio::task::yield_now().await;
    let waited = process(&reader)
        .get_or_acquire(cache_key(), false, idp.acquire())
        .await;
    assert!(holding.await.unwrap().unwrap_err().is_throttled());
    (waited.unwrap_err(), idp.calls(), reader.stats().idp_calls)
}

/// A waiter whose wall clock runs 200 s ahead of the throttled holder's (past the 120 s
/// wait), or 600 s behind it, answers the wait left (some 120 s), as the store's expiry of
/// the throttle mark tells it, and sends nothing. (Before, the mark carried its end in Unix
/// seconds: past it by a reader's clock ahead, the reader took the lease and sent its
/// request into the throttle; one behind read it 600 s late, 720 s.)
#[tokio::test(start_paused = true)]
async fn a_reader_with_a_skewed_clock_answers_the_throttles_time_left() {
    for (ahead, skew) in [(true, 200), (false, 600)] {
        let (error, calls, own) = throttled_with_skew(ahead, skew).await;
        assert!(error.is_throttled(), "{error}");
        let wait = error.retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(118) && wait <= THROTTLE,
            "ahead {ahead}, {skew} s: {wait:?}"
        );
        assert_eq!((calls, own), (1, 0), "ahead {ahead}, {skew} s");
    }
}

/// A process that got a token during a throttle mark (its wait for a slow holder ran out,
/// and it asked alone) clears the mark when it publishes: once the shared token is due for
/// renewal, the fleet asks again instead of answering the throttle out. (Before, the mark
/// stayed for its whole wait.)
#[tokio::test(start_paused = true)]
async fn a_publish_during_a_throttle_mark_clears_it() {
    let store = MemoryStore::new();
    let quick = |b: DistributedCacheBuilder| b.wait_limit(Duration::from_secs(2));
    let holder = cache(&store);
    let waiter = cache_with(&store, quick);
    let throttled = Idp::throttled(Duration::from_secs(3));
    let alone = Idp::new(Duration::from_secs(2));
    let holding = tokio::spawn({
        let (p, idp) = (process(&holder), throttled.clone());
        async move { p.get_or_acquire(cache_key(), false, idp.acquire()).await }
    });
    tokio::task::yield_now().await;
    let waiting = tokio::spawn({
        let (p, idp) = (process(&waiter), alone.clone());
        async move { get(&p, &idp).await }
    });
    let mark = store_keys("tower-identity").throttled();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(store.raw(&mark).is_some(), "the holder's throttle mark");
    assert_eq!(waiting.await.unwrap(), "token-1");
    assert!(holding.await.unwrap().unwrap_err().is_throttled());
    assert_eq!(store.raw(&mark), None, "cleared by the publish");
    // The holder remembers its own throttle for 5 s at most without a read: its next
    // acquisition past that reads the store and takes the published token. (Before, it
    // answered its memory of the throttle for the whole 120 s while the store held a token.)
    tokio::time::advance(Duration::from_secs(5)).await;
    let fresh = Idp::new(Duration::ZERO);
    assert_eq!(get(&process(&holder), &fresh).await, "token-1");
    assert_eq!(fresh.calls(), 0);
}

/// A publish that lands before the holder's throttle mark: a reader that finds both takes
/// the usable token, and does not remember the throttle (its next acquisition takes the token
/// again). A cold process that read the mark before the publish takes the token at its first
/// acquisition 5 s on. (Before, the reader remembered the throttle it did not answer with,
/// and both answered it for the mark's whole wait.)
#[tokio::test(start_paused = true)]
async fn a_throttle_remembered_is_read_again_within_five_seconds() {
    let store = MemoryStore::new();
    let mark = store_keys("tower-identity").throttled();
    let (publisher, reader, cold) = (cache(&store), cache(&store), cache(&store));
    store.set_raw(&mark, &marked(&mark, "429:other.1"));
    let idp = Idp::new(Duration::ZERO);
    let error = process(&cold)
        .get_or_acquire(cache_key(), false, idp.acquire())
        .await
        .unwrap_err();
    assert!(error.is_throttled(), "{error}");
    store.remove(&mark);
    assert_eq!(get(&process(&publisher), &idp).await, "token-1");
    store.set_raw(&mark, &marked(&mark, "429:other.1"));
    for _ in 0..2 {
        assert_eq!(get(&process(&reader), &idp).await, "token-1");
    }
    assert_eq!(reader.stats().shared_hits, 2);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(get(&process(&cold), &idp).await, "token-1");
    assert_eq!(idp.calls(), 1);
}

/// A cold fleet of 20 against a provider whose first answer is a 503 that outlasted the
/// retries (150 ms), answering again after it: the holder's failure may be brief, so it leaves
/// no mark, and the next waiter takes the lease and asks for all. Two requests in all; the
/// others share its token. (Before, every failure was marked: each waiter that took the lease
/// after it asked on its own, a burst against a recovering provider.)
#[tokio::test(start_paused = true)]
async fn a_holders_transient_failure_leaves_the_next_waiter_to_ask_for_all() {
    let store = MemoryStore::new();
    let caches: Vec<DistributedCache> = (0..20).map(|_| cache(&store)).collect();
    let idp = Idp::first_unavailable(Duration::from_millis(150));
    let tasks: Vec<_> = caches
        .iter()
        .map(|c| {
            let (p, idp) = (process(c), idp.clone());
            tokio::spawn(async move {
                p.get_or_acquire(cache_key(), false, idp.acquire())
                    .await
                    .map(|token| token.secret().expose_secret().to_owned())
            })
        })
        .collect();
    let results = futures_util::future::try_join_all(tasks).await.unwrap();
    assert!(idp.calls() <= 2, "{} requests", idp.calls());
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(failed, 1, "only the first holder's caller has the error");
    assert!(
        results.iter().flatten().all(|t| t == "token-2"),
        "{results:?}"
    );
    let hits: u64 = caches.iter().map(|c| c.stats().shared_hits).sum();
    let won: u64 = caches.iter().map(|c| c.stats().leases_won).sum();
    assert_eq!((won, hits), (2, 18));
    assert!(store.raw(&store_keys("tower-identity").failed()).is_none());
}

/// A holder that dies leaves no failure mark: the waiter that takes its lease over holds it
/// and asks once for all, as before.
#[tokio::test(start_paused = true)]
async fn a_dead_holders_lease_is_taken_over_by_one_waiter_for_all() {
    let store = MemoryStore::new();
    let lease = store_keys("tower-identity").lease();
    Handle(Arc::clone(&store))
        .try_lease(&lease, "dead", Duration::from_secs(10))
        .await
        .unwrap();
    let caches: Vec<DistributedCache> = (0..5).map(|_| cache(&store)).collect();
    let idp = Idp::new(Duration::from_millis(150));
    let tasks: Vec<_> = caches
        .iter()
        .map(|c| {
            let (p, idp) = (process(c), idp.clone());
            tokio::spawn(async move { get(&p, &idp).await })
        })
        .collect();
    let tokens = futures_util::future::try_join_all(tasks).await.unwrap();
    assert!(tokens.iter().all(|t| t == "token-1"), "{tokens:?}");
    assert_eq!(idp.calls(), 1);
}

/// Every read of one shared entry gives its token the same refresh time, whatever the jitter
/// draws elsewhere: the draw comes from the entry. A slot handed the token renews at that
/// time, and its renewal's read finds the entry due, where a fresh draw could put it later
/// and hand the slot the same token back (a failed attempt, tried again only 30 s on).
/// (Before, each read drew anew: two reads gave two refresh times.)
#[tokio::test(start_paused = true)]
async fn every_read_of_a_shared_entry_gives_it_the_same_refresh_time() {
    let store = MemoryStore::new();
    let c = cache(&store);
    let token_key = store_keys("tower-identity").token();
    let start = Instant::now();
    let token = AccessToken::new("shared", start + HOUR);
    let sealed = Sealing::Sealed(sealing_key())
        .seal(&token_key, &token, start, c.shared.clock)
        .unwrap();
    store.set_raw(&token_key, &sealed);
    let policy = RefreshPolicy {
        jitter: Duration::from_secs(60),
        ..RefreshPolicy::default()
    };
    let mut times = Vec::new();
    for seed in [1, 2, 3] {
        fastrand::seed(seed);
        let idp = Idp::new(Duration::ZERO);
        let read = SharedLevel::new(c.clone(), identity())
            .acquire(
                "Test",
                "tenant",
                &scopes(&["scope"]),
                false,
                policy,
                (idp.acquire())(),
            )
            .await
            .unwrap();
        assert_eq!(read.secret().expose_secret(), "shared");
        times.push(read.refresh_on().unwrap());
        tokio::time::advance(Duration::from_secs(60)).await;
    }
    assert!(times.iter().all(|t| *t == times[0]), "{times:?}");
    let due = times[0];
    let window_start = start + HOUR - Duration::from_secs(300);
    assert!(
        due >= window_start && due < window_start + Duration::from_secs(60),
        "{:?} into the window",
        due - window_start
    );
}

/// A lease no cache wrote (here one with an hour left, set by hand; in Redis also one with no
/// expiry) is not waited for: a cache's lease never has more than `lease` left, so nobody will
/// fill this one. The process asks at once and publishes; the next process shares its token.
/// (Before, every acquisition waited `wait_limit`, 60 s, for as long as the key was there.)
#[tokio::test(start_paused = true)]
async fn a_lease_no_cache_wrote_is_not_waited_for() {
    let store = MemoryStore::new();
    store.set_raw(&store_keys("tower-identity").lease(), b"stray");
    let (a, b) = (cache(&store), cache(&store));
    let idp = Idp::new(Duration::from_millis(100));
    let start = Instant::now();
    assert_eq!(get(&process(&a), &idp).await, "token-1");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(get(&process(&b), &idp).await, "token-1");
    assert_eq!((idp.calls(), b.stats().shared_hits), (1, 1));
}

/// The holder keeps its lease past the first `lease` while its request runs; a holder that
/// dies mid-request (its task dropped) stops renewing, and another process takes over within
/// a lease of the last renewal.
#[tokio::test(start_paused = true)]
async fn a_live_holder_keeps_its_lease_and_a_dead_one_is_taken_over_within_a_lease() {
    let store = MemoryStore::new();
    let (a, b) = (cache(&store), cache(&store));
    let lease = store_keys("tower-identity").lease();
    let slow = Idp::new(Duration::from_secs(60));
    let acquisition = SharedLevel::new(a.clone(), identity()).acquire(
        "Test",
        "tenant",
        &scopes(&["scope"]),
        false,
        RefreshPolicy::default(),
        (slow.acquire())(),
    );
    let holder = tokio::spawn(acquisition);
    // Past its first lease (10 s), still asking: the lease is still held.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!((slow.calls(), a.stats().leases_won), (1, 1));
    assert!(
        store.raw(&lease).is_some(),
        "the lease ran out under a live holder"
    );
    // The holder dies: renewed last at 10 s, its lease expires at 20 s.
    holder.abort();
    assert!(holder.await.unwrap_err().is_cancelled());
    let died = Instant::now();
    let fast = Idp::new(Duration::ZERO);
    assert_eq!(get(&process(&b), &fast).await, "token-1");
    let waited = died.elapsed();
    assert!(
        waited >= Duration::from_secs(7) && waited <= Duration::from_millis(10_250),
        "{waited:?}"
    );
    assert_eq!((b.stats().leases_won, fast.calls()), (1, 1));
}

/// A holder whose request hangs stops renewing its lease at `wait_limit` (60 s): the lease
/// then runs out, and a process that comes later takes it at once instead of waiting a whole
/// `wait_limit` for a holder that will not answer.
#[tokio::test(start_paused = true)]
async fn a_holder_stuck_past_the_wait_limit_stops_keeping_the_lease() {
    let store = MemoryStore::new();
    let (a, b) = (cache(&store), cache(&store));
    let lease = store_keys("tower-identity").lease();
    let stuck = Idp::new(Duration::from_secs(1000));
    let holder = tokio::spawn(SharedLevel::new(a.clone(), identity()).acquire(
        "Test",
        "tenant",
        &scopes(&["scope"]),
        false,
        RefreshPolicy::default(),
        (stuck.acquire())(),
    ));
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert!(store.raw(&lease).is_none(), "renewed past the wait limit");
    let start = Instant::now();
    let fast = Idp::new(Duration::ZERO);
    assert_eq!(get(&process(&b), &fast).await, "token-1");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(b.stats().leases_won, 1);
    holder.abort();
}

/// Under `wait_limit(Duration::MAX)` a holder whose request hangs stops renewing its lease
/// after 10 minutes: the lease runs out and a waiter (waiting without limit) takes it and asks.
/// (Before, the holder renewed it for as long as its request hung: the fleet waited forever.)
#[tokio::test(start_paused = true)]
async fn a_hung_holder_keeps_the_lease_ten_minutes_at_most_under_an_unlimited_wait() {
    let store = MemoryStore::new();
    let (a, b) = (
        cache_with(&store, |b| b.wait_limit(Duration::MAX)),
        cache_with(&store, |b| b.wait_limit(Duration::MAX)),
    );
    let lease = store_keys("tower-identity").lease();
    let hung = Idp::new(Duration::MAX);
    let holder = tokio::spawn(SharedLevel::new(a.clone(), identity()).acquire(
        "Test",
        "tenant",
        &scopes(&["scope"]),
        false,
        RefreshPolicy::default(),
        (hung.acquire())(),
    ));
    tokio::task::yield_now().await;
    let start = Instant::now();
    let idp = Idp::new(Duration::ZERO);
    let waiter = process(&b);
    let waited = tokio::time::timeout(HOUR, get(&waiter, &idp)).await;
    assert_eq!(waited.expect("waited an hour").as_str(), "token-1");
    assert_eq!((hung.calls(), idp.calls()), (1, 1));
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(600) && elapsed <= Duration::from_secs(611),
        "{elapsed:?}"
    );
    assert_eq!(b.stats().leases_won, 1);
    assert!(store.raw(&lease).is_none(), "given back");
    holder.abort();
}

/// `wait_limit` bounds a waiter's whole wait, however long the holder keeps its lease: past
/// it the waiter asks itself. (Before, the unrenewed lease ran out at 10 s and the waiter
/// took it then.)
#[tokio::test(start_paused = true)]
async fn a_waiter_asks_itself_at_its_wait_limit_even_while_the_lease_is_renewed() {
    let store = MemoryStore::new();
    let holder_cache = cache(&store);
    let waiter_cache = cache_with(&store, |b| b.wait_limit(Duration::from_secs(30)));
    let stuck = Idp::new(Duration::from_secs(100));
    let holder_process = process(&holder_cache);
    let holder = tokio::spawn({
        let stuck = stuck.clone();
        async move { get(&holder_process, &stuck).await }
    });
    tokio::task::yield_now().await;
    let start = Instant::now();
    let idp = Idp::new(Duration::ZERO);
    assert_eq!(get(&process(&waiter_cache), &idp).await, "token-1");
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    let stats = waiter_cache.stats();
    assert_eq!((stats.leases_won, stats.idp_calls), (0, 1));
    assert!(store.raw(&store_keys("tower-identity").lease()).is_some());
    holder.abort();
}

#[tokio::test(start_paused = true)]
async fn a_dead_holders_lease_is_taken_over_when_it_expires() {
    let store = MemoryStore::new();
    let c = cache_with(&store, |b| b.wait_limit(Duration::from_secs(60)));
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
    let c = cache_with(&store, |b| {
        b.lease(Duration::from_secs(60))
            .wait_limit(Duration::from_secs(2))
    });
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

/// `wait_limit(Duration::MAX)` is no limit: the process waits for the holder. (Before, the
/// overflowing deadline fell back to "now": it never waited, and asked the provider too.)
#[tokio::test(start_paused = true)]
async fn the_largest_wait_limit_waits_for_the_holder() {
    let store = MemoryStore::new();
    // The holder's lease outlasts its 20 s request: nobody takes it over.
    let holder_cache = cache_with(&store, |b| b.lease(Duration::from_secs(60)));
    let waiter_cache = cache_with(&store, |b| b.wait_limit(Duration::MAX));
    let idp = Idp::new(Duration::from_secs(20));
    let holder_process = process(&holder_cache);
    let holder = tokio::spawn({
        let idp = idp.clone();
        async move { get(&holder_process, &idp).await }
    });
    tokio::task::yield_now().await;
    let start = Instant::now();
    let waited = get(&process(&waiter_cache), &idp).await;
    assert_eq!(waited, holder.await.unwrap());
    assert!(
        start.elapsed() >= Duration::from_secs(19),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(idp.calls(), 1);
    assert_eq!(waiter_cache.stats().idp_calls, 0);
}

/// A store that reports a value's time left in whole milliseconds, rounded down, as Redis's
/// `PTTL` does.
#[derive(Debug)]
struct MillisecondTtl(Handle);

impl TokenStore for MillisecondTtl {
    forward!(get);

    fn get_with_ttl<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ValueWithTtl>, StoreError>> {
        Box::pin(async move {
            let read = self.0.get_with_ttl(key).await?;
            Ok(read.map(|(value, left)| {
                let ms = |left: Duration| Duration::from_millis(left.as_millis() as u64);
                (value, left.map(ms))
            }))
        })
    }

    forward!(put);

    forward!(try_lease);

    forward!(release);
}

/// Two reads of one shared entry, 0.7 ms apart, by a reader whose clock runs behind the
/// publisher's (so the store's time left, in whole milliseconds, is the tighter bound on the
/// entry's times) give the token one refresh time, to the store's millisecond: the jitter is
/// drawn from the sealed Unix times, not from the stored time as each read maps it. (Before,
/// each read's mapping moved by a fraction of a millisecond, and with it the draw: the
/// refresh times differed by up to the whole jitter.)
#[tokio::test(start_paused = true)]
async fn reads_of_one_entry_by_a_clock_behind_give_one_refresh_time() {
    let store = MemoryStore::new();
    let over = |store: &Arc<MemoryStore>| {
        DistributedCache::builder(MillisecondTtl(Handle(Arc::clone(store))))
            .sealing_key(sealing_key())
            .build()
            .unwrap()
    };
    let publisher = clock_ahead(over(&store), 1);
    let reader = over(&store);
    let idp = Idp::new(Duration::ZERO);
    assert_eq!(get(&process(&publisher), &idp).await, "token-1");
    let policy = RefreshPolicy {
        jitter: Duration::from_secs(60),
        ..RefreshPolicy::default()
    };
    let mut refresh = Vec::new();
    for _ in 0..2 {
        let token = SharedLevel::new(reader.clone(), identity())
            .acquire(
                "Test",
                "tenant",
                &scopes(&["scope"]),
                false,
                policy,
                (idp.acquire())(),
            )
            .await
            .unwrap();
        refresh.push(token.refresh_on().unwrap());
        tokio::time::advance(Duration::from_micros(700)).await;
    }
    assert_eq!((idp.calls(), reader.stats().shared_hits), (1, 2));
    let apart = refresh[0].max(refresh[1]) - refresh[0].min(refresh[1]);
    assert!(apart < Duration::from_millis(1), "{apart:?} apart");
}

/// A store whose `get` cannot read a lease back (it answers `None` for lease keys), with no
/// `release_with_mark` of its own: the default's.
#[derive(Debug)]
struct BlindLeases(Handle);

impl TokenStore for BlindLeases {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        if key.ends_with(":lease") {
            return Box::pin(async { Ok(None) });
        }
        self.0.get(key)
    }

    forward!(put);

    forward!(try_lease);

    forward!(release);
}

/// The default `release_with_mark` gives a refused holder's lease back even when `get`
/// cannot read the lease (it only leaves no mark): the next acquisition takes the lease at
/// once. (Before, it returned without releasing, and every waiter waited the lease out.)
#[tokio::test(start_paused = true)]
async fn the_default_release_with_mark_releases_a_lease_it_cannot_read() {
    let store = MemoryStore::new();
    let c = DistributedCache::builder(BlindLeases(Handle(Arc::clone(&store))))
        .sealing_key(sealing_key())
        .build()
        .unwrap();
    let idp = Idp::failing(Duration::ZERO);
    let refused = process(&c)
        .get_or_acquire(cache_key(), false, idp.acquire())
        .await;
    assert!(refused.is_err());
    assert_eq!(c.stats().leases_won, 1);
    let lease = store_keys("tower-identity").lease();
    assert_eq!(store.raw(&lease), None, "the lease given back");
}

/// A store whose entry read starts a connection attempt that never ends, and whose mark read
/// joins it and gives up (`StoreError::connecting`, which the breaker does not count).
#[derive(Debug)]
struct StuckEntryRead {
    inner: Handle,
    entry_reads: Arc<AtomicUsize>,
}

impl TokenStore for StuckEntryRead {
    fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async { Err(StoreError::connecting("waited on another call's attempt")) })
    }

    /// The entry's read hangs; the throttle mark's, as the mark's, joins it and gives up.
    fn get_with_ttl<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ValueWithTtl>, StoreError>> {
        if !key.ends_with(":token") {
            return Box::pin(async {
                Err(StoreError::connecting("waited on another call's attempt"))
            });
        }
        self.entry_reads.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending())
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.put(key, value, ttl)
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.inner.try_lease(key, holder, ttl)
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.release(key, holder)
    }
}

/// The default `get_with_mark` waits for both reads: a mark read that gave up on a
/// connection attempt does not end the look before the entry read that started it, so a
/// store that never answers still opens the breaker. (With the first error winning, every
/// look ended "connecting", was never counted, and each acquisition paid the budget for
/// good.)
#[tokio::test(start_paused = true)]
async fn a_look_that_joined_a_connection_attempt_still_counts_the_one_it_started() {
    let entry_reads = Arc::new(AtomicUsize::new(0));
    let store = StuckEntryRead {
        inner: Handle(MemoryStore::new()),
        entry_reads: Arc::clone(&entry_reads),
    };
    let c = DistributedCache::builder(store)
        .sealing_key(sealing_key())
        .breaker(1, Duration::from_secs(30))
        .build()
        .unwrap();
    let p = process(&c);
    let idp = Idp::new(Duration::ZERO);
    get_for(&p, &idp, "a").await;
    get_for(&p, &idp, "b").await;
    assert_eq!(entry_reads.load(Ordering::SeqCst), 1, "the breaker opened");
}

/// `breaker(_, Duration::MAX)` keeps the breaker open once it opens. (Before, the
/// overflowing end fell back to "now": it never opened.)
#[tokio::test(start_paused = true)]
async fn the_largest_open_for_keeps_the_breaker_open() {
    let store = MemoryStore::new();
    let c = cache_with(&store, |b| b.breaker(1, Duration::MAX));
    let p = process(&c);
    let idp = Idp::new(Duration::ZERO);
    store.set_mode(Mode::Fail);
    get_for(&p, &idp, "a").await;
    assert_eq!(store.calls(), 1);
    store.set_mode(Mode::Healthy);
    for (scope, later) in [("b", Duration::ZERO), ("c", 100 * 365 * 24 * HOUR)] {
        tokio::time::advance(later).await;
        get_for(&p, &idp, scope).await;
        assert_eq!(store.calls(), 1, "open: the store is not asked ({scope})");
    }
}

/// `cache`, as on a host whose wall clock runs `secs` seconds ahead.
fn clock_ahead(mut cache: DistributedCache, secs: u64) -> DistributedCache {
    let shared = Arc::get_mut(&mut cache.shared).expect("a cache not yet shared");
    shared.clock = shared.clock.ahead(secs);
    cache
}

/// A reader whose wall clock runs 900 s behind the publisher's maps the entry's Unix times
/// 900 s late; the entry's time left in the store, relative, bounds them. (Before, the reader
/// kept the token for 4500 s, sending it up to 600 s after it expired.)
#[tokio::test(start_paused = true)]
async fn a_reader_whose_clock_runs_behind_never_keeps_a_token_past_its_expiry() {
    let store = MemoryStore::new();
    let publisher = clock_ahead(cache(&store), 900);
    let reader = cache(&store);
    let idp = Idp::new(Duration::ZERO);
    let start = Instant::now();
    assert_eq!(get(&process(&publisher), &idp).await, "token-1");
    let reading = process(&reader);
    let token = reading
        .get_or_acquire(cache_key(), false, idp.acquire())
        .await
        .unwrap();
    assert_eq!(token.secret().expose_secret(), "token-1");
    assert_eq!(reader.stats().shared_hits, 1);
    assert_eq!(
        token.expires_on(),
        start + HOUR,
        "the entry's end, not 900 s later"
    );
    // Late in its life the shared token is still used: only its end moved, not its use.
    let late_reader = cache(&store);
    tokio::time::advance(Duration::from_secs(3000)).await;
    assert_eq!(get(&process(&late_reader), &idp).await, "token-1");
    assert_eq!(late_reader.stats().shared_hits, 1);
    // Past its real expiry the reader does not hand it out.
    tokio::time::advance(Duration::from_secs(601)).await;
    assert_eq!(get(&reading, &idp).await, "token-2");
    assert_eq!(idp.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_store_costs_the_budget_per_call_then_the_breaker_opens_and_closes() {
    let store = MemoryStore::new();
    let c = cache_with(&store, |b| {
        b.budget(Duration::from_millis(50))
            .breaker(3, Duration::from_secs(30))
    });
    let p = process(&c);
    let idp = Idp::new(Duration::ZERO);
    store.set_mode(Mode::Hang);
    for (i, scope) in ["a", "b", "c"].into_iter().enumerate() {
        let start = Instant::now();
        get_for(&p, &idp, scope).await;
        assert_eq!(start.elapsed(), Duration::from_millis(50), "call {i}");
    }
    assert_eq!(store.calls(), 3);
    // Open: straight to the identity provider, the store not asked.
    let start = Instant::now();
    get_for(&p, &idp, "d").await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(store.calls(), 3);
    assert_eq!(idp.calls(), 4);
    assert_eq!(c.stats().store_errors, 3);
    // After open_for, with the store back, it is asked again and shares again.
    store.set_mode(Mode::Healthy);
    tokio::time::advance(Duration::from_secs(30)).await;
    get_for(&p, &idp, "e").await;
    assert!(store.calls() > 3);
    assert_eq!(c.stats().leases_won, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_fails_no_request_and_a_failed_trial_reopens_the_breaker() {
    let store = MemoryStore::new();
    let c = cache_with(&store, |b| b.breaker(2, Duration::from_secs(10)));
    let p = process(&c);
    let idp = Idp::new(Duration::ZERO);
    store.set_mode(Mode::Fail);
    for scope in ["a", "b", "c", "d"] {
        get_for(&p, &idp, scope).await;
    }
    assert_eq!(store.calls(), 2, "open after two failures");
    tokio::time::advance(Duration::from_secs(10)).await;
    get_for(&p, &idp, "e").await;
    assert_eq!(store.calls(), 3, "one trial");
    get_for(&p, &idp, "f").await;
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
fn unopenable(token_key: &str) -> Vec<(&'static str, Vec<u8>)> {
    let now = Instant::now();
    let token = AccessToken::new("planted", now + HOUR);
    let seal = |sealing: &Sealing, key: &str| {
        sealing
            .seal(key, &token, now, WallClock::now())
            .unwrap()
            .to_vec()
    };
    let ours = Sealing::Sealed(sealing_key());
    vec![
        ("garbage", b"\x00\xffnot an entry".to_vec()),
        ("the version prefix only", b"ti2s".to_vec()),
        ("the format before key ids", b"ti1s\x00garbage".to_vec()),
        (
            "another key",
            seal(
                &Sealing::Sealed(SealingKey::new("test-key", &[8; 32]).unwrap()),
                token_key,
            ),
        ),
        (
            "another entry's value",
            seal(&ours, &store_keys("other-prefix").token()),
        ),
        ("plaintext", seal(&Sealing::Plaintext, token_key)),
        ("over 64 KiB", oversized(token_key)),
    ]
}

/// An entry this cache's key opens, under `token_key`, larger than a cache writes or reads
/// (64 KiB): a token of 70 000 bytes. No cache publishes it; a store of the user's own may
/// still answer it.
fn oversized(token_key: &str) -> Vec<u8> {
    let now = Instant::now();
    let token = AccessToken::new("x".repeat(70_000), now + HOUR);
    let value = Sealing::Sealed(sealing_key())
        .seal(token_key, &token, now, WallClock::now())
        .unwrap();
    assert!(value.len() > super::store::MAX_ENTRY_BYTES);
    value.to_vec()
}

/// Each value is a miss, counted as a store error, and replaced. One over 64 KiB that would
/// open is not opened: `RedisTokenCache` never sends one, and the in-memory store here, like
/// a store of the user's own, answers it. (Before, such a value was opened and its token
/// served.)
#[tokio::test(start_paused = true)]
async fn values_that_do_not_open_are_misses_never_returned_and_are_replaced() {
    for (what, value) in unopenable(&store_keys("tower-identity").token()) {
        let store = MemoryStore::new();
        let token_key = store_keys("tower-identity").token();
        store.set_raw(&token_key, &value);
        let c = cache(&store);
        let idp = Idp::new(Duration::ZERO);
        let got = get(&process(&c), &idp).await;
        assert!(got.len() < 100, "{what}: the planted token was served");
        assert_eq!(got, "token-1", "{what}");
        assert_eq!(idp.calls(), 1, "{what}");
        assert_eq!(c.stats().store_errors, 1, "{what}");
        // Replaced by a value the fleet can open.
        let other = cache(&store);
        assert_eq!(get(&process(&other), &idp).await, "token-1", "{what}");
        assert_eq!(other.stats().shared_hits, 1, "{what}");
    }
}

/// A fleet rolling over to a key under a new name: a process on the new key finds the old
/// key's entry a miss, not a store error (before, it counted one and logged at WARN, and the
/// two halves of the fleet counted errors overwriting each other's entries), and its publish
/// replaces the entry for the processes on the new key.
#[tokio::test(start_paused = true)]
async fn an_entry_sealed_under_another_key_name_is_a_quiet_miss_and_replaced() {
    let store = MemoryStore::new();
    let named = |name: &str, key: [u8; 32]| {
        DistributedCache::builder(Handle(Arc::clone(&store)))
            .sealing_key(SealingKey::new(name, &key).unwrap())
            .build()
            .unwrap()
    };
    let idp = Idp::new(Duration::ZERO);
    let k1 = named("k1", KEY);
    assert_eq!(get(&process(&k1), &idp).await, "token-1");
    let k2 = named("k2", [8; 32]);
    assert_eq!(get(&process(&k2), &idp).await, "token-2");
    assert_eq!(idp.calls(), 2);
    assert_eq!(k2.stats().store_errors, 0, "{:?}", k2.stats());
    assert_eq!(k2.stats().shared_hits, 0);
    // Counted on its own, so a rotation that never ends shows.
    assert_eq!(k2.stats().other_key_misses, 1);
    // Replaced: the next process on the new key shares it, the old key's finds a miss too.
    let next = named("k2", [8; 32]);
    assert_eq!(get(&process(&next), &idp).await, "token-2");
    assert_eq!(next.stats().shared_hits, 1);
    let old = named("k1", KEY);
    assert_eq!(get(&process(&old), &idp).await, "token-3");
    assert_eq!(old.stats().store_errors, 0);
    // A key under a name already in use that does not open the entry stays an error.
    let renamed = named("k1", [9; 32]);
    assert_eq!(get(&process(&renamed), &idp).await, "token-4");
    assert_eq!(renamed.stats().store_errors, 1);
    assert_eq!(renamed.stats().other_key_misses, 0);
}

/// A value that does not open, found again at every poll while the process waits for the
/// holder: one store error for the acquisition, not one per poll. (Before, every look
/// of the waiter's counted one: 8 over a 1 s wait.)
#[tokio::test(start_paused = true)]
async fn an_unreadable_value_is_counted_once_per_acquisition_however_often_it_is_polled() {
    let store = MemoryStore::new();
    store.set_raw(&store_keys("tower-identity").token(), b"garbage");
    let (holder, waiter) = (cache(&store), cache(&store));
    let idp = Idp::new(Duration::from_secs(1));
    let holder_process = process(&holder);
    let holding = tokio::spawn({
        let idp = idp.clone();
        async move { get(&holder_process, &idp).await }
    });
    tokio::task::yield_now().await;
    let calls = store.calls();
    let waited = get(&process(&waiter), &idp).await;
    assert_eq!(waited, holding.await.unwrap());
    assert!(store.calls() - calls > 5, "the waiter polled");
    assert_eq!(idp.calls(), 1);
    assert_eq!(holder.stats().store_errors, 1);
    assert_eq!(waiter.stats().store_errors, 1);
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
    assert!(raw.starts_with(b"ti2s"));
    assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));
    for key in store.keys() {
        assert!(!key.contains("tenant") && !key.contains("client") && !key.contains("scope"));
    }
    let debug = format!("{c:?}");
    assert!(!debug.contains(&token), "{debug}");
    let opened = Sealing::Sealed(sealing_key())
        .open(&token_key, &raw, Instant::now(), c.shared.clock, None)
        .unwrap();
    assert!(!format!("{opened:?}").contains(&token));
    assert_eq!(opened.token.secret().expose_secret(), token);
    assert_eq!(opened.token.expires_on(), Instant::now() + HOUR);
    // Two seals of one token differ (random nonce).
    let again = Sealing::Sealed(sealing_key())
        .seal(&token_key, &opened.token, Instant::now(), c.shared.clock)
        .unwrap();
    assert_ne!(*again, raw);
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

/// Unreadable values, a local hit, a store failing then back: what the logs test logs.
/// Returns the identity provider's calls.
async fn logged_scenario() -> usize {
    let store = MemoryStore::new();
    let c = cache_with(&store, |b| b.breaker(2, Duration::from_secs(10)));
    let p = process(&c);
    let idp = Idp::new(Duration::ZERO);
    // Two values that do not open: one WARN.
    for scope in ["x", "y"] {
        let key = EntryKey::new(
            "tower-identity",
            &identity(),
            "tenant",
            &scopes(&[scope]),
            false,
        );
        store.set_raw(&key.token(), b"garbage");
        get_for(&p, &idp, scope).await;
    }
    get_for(&p, &idp, "x").await;
    // An entry sealed under another key name (a rotation): DEBUG only.
    let key = EntryKey::new(
        "tower-identity",
        &identity(),
        "tenant",
        &scopes(&["z"]),
        false,
    );
    let other = Sealing::Sealed(SealingKey::new("other-name", &KEY).unwrap());
    let now = Instant::now();
    let planted = AccessToken::new("planted", now + HOUR);
    let value = other.seal(&key.token(), &planted, now, WallClock::now());
    store.set_raw(&key.token(), &value.unwrap());
    get_for(&p, &idp, "z").await;
    // A lease no cache with these settings wrote (an hour left): WARN, naming both times.
    let key = EntryKey::new(
        "tower-identity",
        &identity(),
        "tenant",
        &scopes(&["s"]),
        false,
    );
    store.set_raw(&key.lease(), b"stray");
    get_for(&p, &idp, "s").await;
    // The fleet's throttle: answered, counted, DEBUG.
    let key = EntryKey::new(
        "tower-identity",
        &identity(),
        "tenant",
        &scopes(&["t"]),
        false,
    );
    store.set_raw(&key.throttled(), &marked(&key.throttled(), "429:other.1"));
    let throttled = CacheKey::new("tenant", &scopes(&["t"]), false);
    let error = p.get_or_acquire(throttled, false, idp.acquire()).await;
    assert!(error.unwrap_err().is_throttled());
    // Two throttle marks with more time left than a cache writes: ignored, WARN, then DEBUG.
    for scope in ["u", "v"] {
        let key = EntryKey::new(
            "tower-identity",
            &identity(),
            "tenant",
            &scopes(&[scope]),
            false,
        );
        let mark = marked(&key.throttled(), "429:other.1");
        store.set_raw_for(&key.throttled(), &mark, 2 * HOUR);
        get_for(&p, &idp, scope).await;
    }
    // A failing store: the breaker opens once (WARN), stays open, closes once (INFO).
    store.set_mode(Mode::Fail);
    for scope in ["a", "b", "c", "d"] {
        get_for(&p, &idp, scope).await;
    }
    store.set_mode(Mode::Healthy);
    tokio::time::advance(Duration::from_secs(10)).await;
    get_for(&p, &idp, "e").await;
    idp.calls()
}

pub(super) use crate::test_support::Logs;

#[tokio::test(start_paused = true)]
async fn logs_say_each_outcome_warn_once_and_never_show_a_token() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Tests on other threads hit the same callsites with no subscriber. With one dispatcher
    // registered, tracing judges a callsite by the registering thread's default and may cache
    // "never" for this test's too; with two it asks every live one. And every callsite of the
    // scenario is registered first, so none is registering while this test logs.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    logged_scenario().await;
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    let idp_calls = logged_scenario().await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let count = |needle: &str| text.matches(needle).count();
    assert_eq!(count("WARN"), 4, "{text}");
    let long_marks: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("throttle mark has more time left"))
        .collect();
    // Each request reads the mark before and after taking the lease: one WARN in all.
    assert!(
        long_marks[0].contains("WARN")
            && long_marks[0].contains("throttle_left=7200s")
            && long_marks
                .iter()
                .filter(|line| line.contains("WARN"))
                .count()
                == 1
            && long_marks
                .iter()
                .any(|line| line.contains(r#"scopes=["v"]"#)),
        "WARN, then DEBUG:\n{text}"
    );
    let stray: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("lease setting"))
        .collect();
    assert!(
        stray.len() == 1
            && stray[0].contains("lease_left=3600s")
            && stray[0].contains("our_lease=10s")
            && stray[0].contains("different `lease`"),
        "{text}"
    );
    assert_eq!(
        count("a stored value does not open"),
        2,
        "WARN, then DEBUG:\n{text}"
    );
    let rotation: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("sealed under another key name"))
        .collect();
    assert!(
        rotation.len() == 1 && rotation[0].contains("DEBUG"),
        "{text}"
    );
    assert_eq!(count("the store keeps failing"), 1, "{text}");
    assert_eq!(count("INFO"), 1, "{text}");
    assert_eq!(count("the store answers again"), 1, "{text}");
    for outcome in [
        "local_hit",
        "lease_won",
        "idp_call",
        "store_error",
        "throttled",
    ] {
        assert!(
            text.contains(&format!("outcome=\"{outcome}\"")),
            "{outcome}:\n{text}"
        );
    }
    // Every outcome, a local hit's too, inside the span naming the entry. (Before, a local
    // hit's event came outside it.)
    for line in text.lines().filter(|line| line.contains("outcome=")) {
        assert!(
            line.contains("distributed_cache{entry=tower-identity:{"),
            "outside the entry's span: {line}"
        );
    }
    for n in 1..=idp_calls {
        assert!(
            !text.contains(&format!("token-{n}")),
            "token-{n} in the logs:\n{text}"
        );
    }
}

/// A store with only the required methods whose `put` refuses a TTL under a second, as one
/// that counts TTLs in whole seconds (`EX 0` is an error).
#[derive(Debug)]
struct WholeSeconds(Handle);

impl TokenStore for WholeSeconds {
    forward!(get);

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        if ttl.as_secs() == 0 {
            return Box::pin(async { Err(StoreError::msg("invalid expire time in 'set'")) });
        }
        self.0.put(key, value, ttl)
    }

    forward!(try_lease);

    forward!(release);
}

/// Over a store that refuses TTLs under a second, publishes are no store errors: the default
/// `put_clearing` clears the throttle mark after the put, best-effort, for a second. The
/// breaker stays closed and another process shares each token. (Before, the clear was a 1 ms
/// put, refused at every publish: a store error each, and the breaker opened.)
#[tokio::test(start_paused = true)]
async fn publishes_over_a_store_of_whole_seconds_are_no_store_errors() {
    let store = MemoryStore::new();
    let (a, b) = (
        cache_of(WholeSeconds(Handle(Arc::clone(&store)))),
        cache_of(WholeSeconds(Handle(Arc::clone(&store)))),
    );
    let idp = Idp::new(Duration::ZERO);
    let (pa, pb) = (process(&a), process(&b));
    for n in 0..5 {
        let scope = format!("scope-{n}");
        let published = get_for(&pa, &idp, &scope).await;
        assert_eq!(get_for(&pb, &idp, &scope).await, published);
    }
    assert_eq!(idp.calls(), 5);
    assert_eq!(a.stats().store_errors + b.stats().store_errors, 0);
    assert_eq!(b.stats().shared_hits, 5);
}

/// Over a store that cannot tell a key's time left (only the required methods: the default
/// `get_with_ttl` reports none), a cold fleet of 20 against a provider that throttles (429,
/// `Retry-After: 120`) still sends one request: the throttle mark carries its end in Unix ms,
/// read when the store gives no time left. (Before, such a mark was ignored: each waiter took
/// the lease in turn and sent its own request into the throttle.)
#[tokio::test(start_paused = true)]
async fn a_store_without_ttls_still_holds_the_fleet_back_for_a_throttle() {
    let store = MemoryStore::new();
    let caches: Vec<DistributedCache> = (0..20)
        .map(|_| cache_of(RequiredOnly(Handle(Arc::clone(&store)))))
        .collect();
    let idp = Idp::throttled(Duration::from_millis(150));
    let tasks: Vec<_> = caches
        .iter()
        .map(|c| {
            let (p, idp) = (process(c), idp.clone());
            tokio::spawn(async move { p.get_or_acquire(cache_key(), false, idp.acquire()).await })
        })
        .collect();
    let results = futures_util::future::try_join_all(tasks).await.unwrap();
    assert_eq!(idp.calls(), 1, "one request into the throttle");
    for result in &results {
        let error = result.as_ref().unwrap_err();
        assert!(error.is_throttled(), "{error}");
        let wait = error.retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(110) && wait <= THROTTLE,
            "{wait:?}"
        );
    }
}

/// A throttle mark with 2 h left (more than a cache writes: an hour at most) was not written
/// by a cache: it is ignored, and a token is acquired; by the store's time left, and over a
/// store that cannot tell one (only the required methods), by the end the mark carries.
/// (Before, it was read as an hour's throttle, then another, blocking the fleet for as long as
/// the key said, silently; over a store without TTLs, for as long as the mark's end said.)
#[tokio::test(start_paused = true)]
async fn a_throttle_mark_longer_than_a_cache_writes_is_ignored() {
    let store = MemoryStore::new();
    let mark = store_keys("tower-identity").throttled();
    store.set_raw_for(&mark, &marked(&mark, "429:other.1"), 2 * HOUR);
    let c = cache(&store);
    let idp = Idp::new(Duration::ZERO);
    assert_eq!(get(&process(&c), &idp).await, "token-1");
    assert_eq!((idp.calls(), c.stats().throttled), (1, 0));

    let store = MemoryStore::new();
    let end = std::time::SystemTime::now() + 2 * HOUR;
    let end_ms = end
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    store.set_raw(&mark, &marked(&mark, &format!("429:{end_ms}:other.1")));
    let c = cache_of(RequiredOnly(Handle(Arc::clone(&store))));
    let idp = Idp::new(Duration::ZERO);
    let token = process(&c)
        .get_or_acquire(cache_key(), false, idp.acquire())
        .await;
    assert_eq!(token.unwrap().secret().expose_secret(), "token-1");
    assert_eq!((idp.calls(), c.stats().throttled), (1, 0));
}

/// A failure or throttle mark longer than a cache writes (1 KiB and more) is none, whatever
/// the store answers (the in-memory store here, as a store of the user's own, bounds nothing;
/// `RedisTokenCache` does not send one): a process asks, where the throttle mark would have
/// answered it with a throttled error, and a waiter whose first look found no mark is not
/// sent to ask on its own. (Before, any length was read.)
#[tokio::test(start_paused = true)]
async fn marks_longer_than_a_cache_writes_are_none() {
    let store = MemoryStore::new();
    let keys = store_keys("tower-identity");
    let holder = "h".repeat(2000);
    let end = std::time::SystemTime::now() + Duration::from_secs(120);
    let end_ms = end
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let mark = marked(&keys.throttled(), &format!("429:{end_ms}:{holder}"));
    store.set_raw_for(&keys.throttled(), &mark, Duration::from_secs(120));
    let c = cache(&store);
    let idp = Idp::new(Duration::ZERO);
    assert_eq!(get(&process(&c), &idp).await, "token-1");
    assert_eq!((idp.calls(), c.stats().throttled), (1, 0));
    // A waiter whose holder's mark comes in at 2 KiB waits on: the lease's holder publishes.
    let store = MemoryStore::new();
    let lease = Handle(Arc::clone(&store));
    lease
        .try_lease(&keys.lease(), "slow.1", Duration::from_secs(10))
        .await
        .unwrap();
    let waiter = cache(&store);
    let idp = Idp::new(Duration::ZERO);
    let waiting = tokio::spawn({
        let (p, idp) = (process(&waiter), idp.clone());
        async move { get(&p, &idp).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mark = marked(&keys.failed(), &holder);
    store.set_raw_for(&keys.failed(), &mark, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(idp.calls(), 0, "still waiting");
    let token = AccessToken::new("published", Instant::now() + HOUR);
    let sealed = Sealing::Sealed(sealing_key())
        .seal(&keys.token(), &token, Instant::now(), waiter.shared.clock)
        .unwrap();
    store.set_raw(&keys.token(), &sealed);
    assert_eq!(waiting.await.unwrap(), "published");
    assert_eq!(idp.calls(), 0);
}

/// Sealed, a mark must verify under the fleet's key: a throttle mark written by anything else
/// with write access to the store (set by hand, sealed under another key, or a real one copied
/// from another entry's key) is none, and the process asks. A plaintext cache has nothing to
/// verify with, and is held back by it (as its docs say). (Before, a sealed cache took any
/// mark: one `SET` stopped the fleet's token requests for an hour.)
#[tokio::test(start_paused = true)]
async fn a_forged_throttle_mark_is_ignored_when_sealed() {
    let keys = store_keys("tower-identity");
    let end = std::time::SystemTime::now() + HOUR;
    let end_ms = end
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let body = format!("429:{end_ms}:forger.1");
    let other_key = Sealing::Sealed(SealingKey::new("test-key", &[8; 32]).unwrap());
    let forgeries = [
        ("no MAC", body.clone().into_bytes()),
        ("a MAC of garbage", format!("{body}:AAAA").into_bytes()),
        (
            "another key's",
            other_key.mark(&keys.throttled(), body.as_bytes()),
        ),
        (
            "another entry's",
            marked(&store_keys("other").throttled(), &body),
        ),
    ];
    for (what, forged) in forgeries {
        let store = MemoryStore::new();
        store.set_raw(&keys.throttled(), &forged);
        let c = cache(&store);
        let idp = Idp::new(Duration::ZERO);
        assert_eq!(get(&process(&c), &idp).await, "token-1", "{what}");
        assert_eq!((idp.calls(), c.stats().throttled), (1, 0), "{what}");
    }
    let store = MemoryStore::new();
    store.set_raw(&keys.throttled(), body.as_bytes());
    let plaintext = DistributedCache::builder(Handle(Arc::clone(&store)))
        .plaintext_at_rest()
        .build()
        .unwrap();
    let error = process(&plaintext)
        .get_or_acquire(cache_key(), false, Idp::new(Duration::ZERO).acquire())
        .await
        .unwrap_err();
    assert!(error.is_throttled(), "{error}");
}

/// A throttled error says whose throttle it answers: the holder's own (from its memory, or
/// its own mark read back from the store) is "this process"'s, a mark another process wrote
/// "another process of the fleet"'s. (Before, every one said another process's.)
#[tokio::test(start_paused = true)]
async fn a_throttled_error_names_the_process_throttled() {
    let store = MemoryStore::new();
    let (holder, other) = (cache(&store), cache(&store));
    let idp = Idp::throttled(Duration::ZERO);
    let own = process(&holder)
        .get_or_acquire(cache_key(), false, idp.acquire())
        .await
        .unwrap_err();
    assert!(own.is_throttled(), "{own}");
    for wait in [Duration::ZERO, Duration::from_secs(6)] {
        tokio::time::advance(wait).await;
        let remembered = process(&holder)
            .get_or_acquire(cache_key(), false, idp.acquire())
            .await
            .unwrap_err();
        let message = remembered.message();
        assert!(
            message.contains("answered this process HTTP 429"),
            "{message}"
        );
    }
    let fleets = process(&other)
        .get_or_acquire(cache_key(), false, idp.acquire())
        .await
        .unwrap_err();
    let message = fleets.message();
    assert!(
        message.contains("answered another process of the fleet HTTP 429"),
        "{message}"
    );
    assert_eq!(idp.calls(), 1);
}
