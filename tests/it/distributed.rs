//! The distributed token cache over a real redis-server, one "process" per credential: each
//! has its own `ClientSecretCredential`, `DistributedCache` and `RedisTokenCache` (its own
//! connection), as separate processes of a fleet would. Every token comes from the loopback
//! authority, which counts the requests; every Redis fault is a real one (a stopped, killed,
//! restarted, full, flushed or password-protected server, garbage written under the entry).
//!
//! Calls that should reach Redis run under [`held`] on tests with a paused clock: otherwise the
//! clock would jump past the cache's budget while Redis answers in real time.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use redis::Commands;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower_identity::distributed::{
    DistributedCache, DistributedCacheBuilder, RedisTokenCache, SealingKey, StoreError, TokenStore,
    ValueWithMark, ValueWithTtl,
};
use tower_identity::{ClientSecretCredential, CredentialExt};

use crate::support::authority::{Authority, Fault, error_body};
use crate::support::clock::{held, held_within};
use crate::support::creds::{CLIENT_ID, CLIENT_SECRET, SCOPE, TENANT, http, secs};
use crate::support::redis::RedisServer;

/// The budget on the paused clock, where it is exact.
const BUDGET: Duration = Duration::from_millis(50);
/// The budget on the running clock, where Redis answers in real time: generous, so that a
/// loaded test machine does not turn a sharing test into a budget test.
const SLOW_MACHINE_BUDGET: Duration = Duration::from_secs(5);
const KEY_ONE: [u8; 32] = [7; 32];
const KEY_TWO: [u8; 32] = [9; 32];

/// One process of the fleet.
struct Process {
    credential: ClientSecretCredential,
    cache: DistributedCache,
}

impl Process {
    /// A process sealing with `KEY_ONE` under the name "one", on the server at `url`.
    fn new(authority: &Authority, url: &str) -> Process {
        Process::sealed(authority, url, SealingKey::new("one", &KEY_ONE).unwrap())
    }

    fn sealed(authority: &Authority, url: &str, key: SealingKey) -> Process {
        Process::build(authority, url, key, SLOW_MACHINE_BUDGET)
    }

    /// A process with [`BUDGET`], for the paused clock.
    fn paused_clock(authority: &Authority, url: &str) -> Process {
        let key = SealingKey::new("one", &KEY_ONE).unwrap();
        Process::build(authority, url, key, BUDGET)
    }

    fn build(authority: &Authority, url: &str, key: SealingKey, budget: Duration) -> Process {
        Process::over(authority, RedisTokenCache::open(url).unwrap(), key, budget)
    }

    fn over(
        authority: &Authority,
        store: impl TokenStore,
        key: SealingKey,
        budget: Duration,
    ) -> Process {
        Process::configured(authority, store, key, budget, |builder| builder)
    }

    /// A process over `store` with the settings `configure` adds.
    fn configured(
        authority: &Authority,
        store: impl TokenStore,
        key: SealingKey,
        budget: Duration,
        configure: impl FnOnce(DistributedCacheBuilder) -> DistributedCacheBuilder,
    ) -> Process {
        let builder = DistributedCache::builder(store)
            .prefix("it")
            .sealing_key(key)
            .budget(budget);
        let cache = configure(builder).build().unwrap();
        let credential = ClientSecretCredential::builder(TENANT, CLIENT_ID, CLIENT_SECRET)
            .authority_host(authority.url())
            .http_client(http(authority))
            .distributed_cache(cache.clone())
            .build()
            .unwrap();
        Process { credential, cache }
    }

    /// A token for `scope`; every request must succeed, whatever Redis does.
    async fn token(&self, scope: &str) -> String {
        let token = self.credential.get_token([scope]).await.unwrap();
        token.secret().expose_secret().to_owned()
    }
}

/// The store key of the one token entry in Redis.
fn entry_key(server: &RedisServer) -> String {
    let keys: Vec<String> = server
        .dump()
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| key.ends_with(":token"))
        .collect();
    assert_eq!(keys.len(), 1, "one token entry: {keys:?}");
    keys.into_iter().next().unwrap()
}

#[tokio::test]
async fn two_processes_make_one_token_request() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    let one = Process::new(&authority, &server.url());
    let two = Process::new(&authority, &server.url());

    let first = one.token(SCOPE).await;
    let second = two.token(SCOPE).await;
    assert_eq!(
        first, second,
        "the second process used the first one's token"
    );
    assert_eq!(authority.token_posts(), 1);
    assert_eq!(
        (one.cache.stats().leases_won, one.cache.stats().idp_calls),
        (1, 1)
    );
    assert_eq!(
        (two.cache.stats().shared_hits, two.cache.stats().idp_calls),
        (1, 0)
    );

    // Concurrent cold starts share one request too: one wins the lease, the others wait.
    let scope = "https://other.test/.default";
    let fleet: Vec<Process> = (0..4)
        .map(|_| Process::new(&authority, &server.url()))
        .collect();
    let tokens = futures_util::future::join_all(fleet.iter().map(|p| p.token(scope))).await;
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    assert_eq!(authority.token_posts(), 2);
}

/// A Redis store whose lease attempts say they arrived and wait for a go: it puts a process's
/// `SET NX` after another process's whole acquisition, an interleaving a busy fleet produces
/// by chance. It forwards every other call, the optional ones included, as a wrapper should.
#[derive(Debug)]
struct LateLease {
    store: RedisTokenCache,
    arrived: Arc<Notify>,
    go: Arc<Notify>,
}

impl TokenStore for LateLease {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        self.store.get(key)
    }

    fn get_with_ttl<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ValueWithTtl>, StoreError>> {
        self.store.get_with_ttl(key)
    }

    fn get_with_mark<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithMark, StoreError>> {
        self.store.get_with_mark(key, mark_key)
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.store.put(key, value, ttl)
    }

    fn put_mark<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.store.put_mark(key, value, ttl)
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            self.arrived.notify_one();
            self.go.notified().await;
            self.store.try_lease(key, holder, ttl).await
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.store.release(key, holder)
    }

    fn release_with_mark<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        mark_key: &'a str,
        mark: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.store
            .release_with_mark(key, holder, mark_key, mark, ttl)
    }

    fn renew_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.store.renew_lease(key, holder, ttl)
    }
}

/// A process that missed, then takes the lease after another process published and released:
/// it finds the published token instead of asking again.
#[tokio::test]
async fn a_lease_won_after_another_process_published_uses_its_token() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    let (arrived, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let late = LateLease {
        store: RedisTokenCache::open(&server.url()).unwrap(),
        arrived: Arc::clone(&arrived),
        go: Arc::clone(&go),
    };
    let key = || SealingKey::new("one", &KEY_ONE).unwrap();
    let late = Process::over(&authority, late, key(), SLOW_MACHINE_BUDGET);
    let early = Process::new(&authority, &server.url());

    let (late_token, early_token) = tokio::join!(late.token(SCOPE), async {
        // The late process missed (its lease attempt is waiting) before this one starts.
        arrived.notified().await;
        let token = early.token(SCOPE).await;
        go.notify_one();
        token
    });
    assert_eq!(late_token, early_token);
    assert_eq!(authority.token_posts(), 1);
}

/// A Redis store that reads back each mark it puts, with its time left, as soon as it is put:
/// the test checks the mark without depending on the fleet finishing within the mark's 5 s of
/// real time (a loaded machine may not).
#[derive(Debug)]
struct MarkWatch {
    store: RedisTokenCache,
    marks: Marks,
}

/// Each mark put: its key, and what Redis held under it right after.
type Marks = Arc<std::sync::Mutex<Vec<(String, Option<ValueWithTtl>)>>>;

impl TokenStore for MarkWatch {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        self.store.get(key)
    }

    fn get_with_ttl<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ValueWithTtl>, StoreError>> {
        self.store.get_with_ttl(key)
    }

    fn get_with_mark<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithMark, StoreError>> {
        self.store.get_with_mark(key, mark_key)
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.store.put(key, value, ttl)
    }

    fn put_mark<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.store.put_mark(key, value, ttl).await?;
            self.watch(key).await
        })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.store.try_lease(key, holder, ttl)
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.store.release(key, holder)
    }

    fn release_with_mark<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        mark_key: &'a str,
        mark: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.store
                .release_with_mark(key, holder, mark_key, mark, ttl)
                .await?;
            self.watch(mark_key).await
        })
    }

    fn renew_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.store.renew_lease(key, holder, ttl)
    }
}

impl MarkWatch {
    /// Records what Redis holds under the mark `key` now.
    async fn watch(&self, key: &str) -> Result<(), StoreError> {
        let read = self.store.get_with_ttl(key).await?;
        self.marks.lock().unwrap().push((key.to_owned(), read));
        Ok(())
    }
}

/// A cold fleet of 8 against an authority that refuses the client: every process gets the
/// refusal, each asking once, and the holder that failed left its mark in Redis (holder id,
/// 5 s): the waiters, reading it with the token at their next poll, ask on their own at once
/// rather than take the lease one after another, each failing in its turn. (Before, no mark:
/// the waiters took the lease in turn.)
#[tokio::test]
async fn a_cold_fleet_against_a_refused_client_fails_each_process_once_marked_in_redis() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    const FLEET: usize = 8;
    for _ in 0..FLEET {
        authority.push_fault(Fault::Respond {
            status: 401,
            body: error_body("invalid_client", 7000215, "Invalid client secret provided."),
            headers: vec![("content-type".into(), "application/json".into())],
        });
    }
    let marks = Marks::default();
    let fleet: Vec<Process> = (0..FLEET)
        .map(|_| {
            let store = MarkWatch {
                store: RedisTokenCache::open(&server.url()).unwrap(),
                marks: Arc::clone(&marks),
            };
            let key = SealingKey::new("one", &KEY_ONE).unwrap();
            Process::over(&authority, store, key, SLOW_MACHINE_BUDGET)
        })
        .collect();
    let results =
        futures_util::future::join_all(fleet.iter().map(|p| p.credential.get_token([SCOPE]))).await;
    for result in &results {
        let e = result.as_ref().unwrap_err();
        assert!(e.to_string().contains("invalid_client"), "{e}");
    }
    assert_eq!(authority.token_posts(), FLEET, "each process asked once");
    let marks = marks.lock().unwrap();
    assert_eq!(marks.len(), 1, "one holder marked its refusal: {marks:?}");
    let (key, read) = &marks[0];
    assert!(
        key.starts_with("it:{") && key.ends_with("}:failed"),
        "{key}"
    );
    let (holder, left) = read.as_ref().expect("the mark was in Redis");
    assert!(!holder.is_empty());
    let left = left.expect("the mark expires");
    assert!(left > Duration::ZERO && left <= secs(5), "{left:?} left");
    assert!(entry_keys(&server).is_empty(), "no token, no lease left");
}

/// A cold fleet against an authority that throttles (429, `Retry-After: 120`, longer than
/// the retries wait): the holder gives its lease back with a throttle mark in Redis for the
/// wait, and every other process answers with a throttled error, sending nothing. One request
/// in all. (Before, a throttled holder left no mark, and each process took the lease in turn
/// and sent its own request into the throttle.)
#[tokio::test]
async fn a_cold_fleet_against_a_throttling_authority_sends_one_request() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    const FLEET: usize = 8;
    for _ in 0..FLEET {
        authority.push_fault(Fault::Respond {
            status: 429,
            body: error_body("temporarily_unavailable", 50196, "Too many requests."),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after".into(), "120".into()),
            ],
        });
    }
    let fleet: Vec<Process> = (0..FLEET)
        .map(|_| Process::new(&authority, &server.url()))
        .collect();
    let results =
        futures_util::future::join_all(fleet.iter().map(|p| p.credential.get_token([SCOPE]))).await;
    assert_eq!(authority.token_posts(), 1, "one request into the throttle");
    for result in &results {
        let e = result.as_ref().unwrap_err();
        assert!(e.is_throttled(), "{e}");
        let wait = e.retry_after().unwrap();
        // The mark's time left, by Redis's expiry: never past the wait asked.
        assert!(wait > secs(100) && wait <= secs(120), "{wait:?}");
    }
    let marks: Vec<(String, Vec<u8>)> = server
        .dump()
        .into_iter()
        .filter(|(key, _)| key.ends_with(":failed") || key.ends_with(":throttled"))
        .collect();
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert!(marks[0].0.ends_with("}:throttled"), "{marks:?}");
    let mark = String::from_utf8(marks[0].1.clone()).unwrap();
    assert!(mark.starts_with("429:"), "{mark}");
    // Its end in Unix ms, for a store that cannot tell a key's time left.
    let end_ms: u64 = mark.split(':').nth(1).unwrap().parse().unwrap();
    assert!(end_ms > 1_700_000_000_000, "{mark}");
    assert!(entry_keys(&server).is_empty(), "no token, no lease left");
}

/// Every key of the entries but their failure and throttle marks.
fn entry_keys(server: &RedisServer) -> Vec<String> {
    server
        .dump()
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| !key.ends_with(":failed") && !key.ends_with(":throttled"))
        .collect()
}

/// A Redis store that stops after the call that writes a failure mark (`put_mark` or
/// `release_with_mark`) until the test says go: the test looks at Redis as a waiter would
/// right after the holder's mark. It forwards every other call.
#[derive(Debug)]
struct PauseAfterMark {
    store: RedisTokenCache,
    marked: Arc<Notify>,
    go: Arc<Notify>,
}

impl PauseAfterMark {
    async fn pause(&self) {
        self.marked.notify_one();
        self.go.notified().await;
    }
}

impl TokenStore for PauseAfterMark {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        self.store.get(key)
    }

    fn get_with_ttl<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ValueWithTtl>, StoreError>> {
        self.store.get_with_ttl(key)
    }

    fn get_with_mark<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithMark, StoreError>> {
        self.store.get_with_mark(key, mark_key)
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.store.put(key, value, ttl)
    }

    fn put_mark<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.store.put_mark(key, value, ttl).await?;
            self.pause().await;
            Ok(())
        })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.store.try_lease(key, holder, ttl)
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.store.release(key, holder)
    }

    fn release_with_mark<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        mark_key: &'a str,
        mark: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.store
                .release_with_mark(key, holder, mark_key, mark, ttl)
                .await?;
            self.pause().await;
            Ok(())
        })
    }

    fn renew_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.store.renew_lease(key, holder, ttl)
    }
}

/// A holder refused by the authority gives its lease back and leaves its mark in one step:
/// from the moment its mark is in Redis, its lease is gone, and a process that starts then
/// takes the lease at once (the mark, older than its wait, is not its holder's) instead of
/// waiting on a holder that is done. (Before, the mark and the release were two calls: in
/// between, Redis held the mark with the lease still taken; had the mark's call failed, or
/// landed after the release, a waiter would have found the lease free without a mark and
/// held it for the fleet, one more turn in line.)
#[tokio::test]
async fn a_refused_holder_gives_its_lease_back_with_its_mark_in_one_step() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    for _ in 0..2 {
        authority.push_fault(Fault::Respond {
            status: 401,
            body: error_body("invalid_client", 7000215, "Invalid client secret provided."),
            headers: vec![("content-type".into(), "application/json".into())],
        });
    }
    let (marked, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let paused = PauseAfterMark {
        store: RedisTokenCache::open(&server.url()).unwrap(),
        marked: Arc::clone(&marked),
        go: Arc::clone(&go),
    };
    let key = || SealingKey::new("one", &KEY_ONE).unwrap();
    let holder = Process::over(&authority, paused, key(), SLOW_MACHINE_BUDGET);
    let newcomer = Process::new(&authority, &server.url());

    let (held, came) = tokio::join!(holder.credential.get_token([SCOPE]), async {
        marked.notified().await;
        let keys: Vec<String> = server.dump().into_iter().map(|(key, _)| key).collect();
        assert!(
            keys.iter().any(|key| key.ends_with(":failed")),
            "the holder's mark: {keys:?}"
        );
        assert!(
            !keys.iter().any(|key| key.ends_with(":lease")),
            "the holder's lease is gone once its mark is there: {keys:?}"
        );
        let came = newcomer.credential.get_token([SCOPE]).await;
        let stats = newcomer.cache.stats();
        assert_eq!((stats.leases_won, stats.leases_lost), (1, 0), "{stats:?}");
        go.notify_one();
        came
    });
    for result in [held, came] {
        let e = result.unwrap_err();
        assert!(e.to_string().contains("invalid_client"), "{e}");
    }
    assert_eq!(authority.token_posts(), 2);
}

/// A cold process asks for three tokens at once over a connection that takes 1.5 s to set
/// up, under a budget of 0.5 s: the three calls miss, but only the one that started the
/// connection attempt counts as a failure; the two that waited on it are not. The breaker
/// stays closed, and once connected the process shares the fleet's token. It opens at 2
/// failures here: one joined call counted would open it.
/// (Before, each of the three counted: the breaker opened for 30 s though the connection was
/// made a second later, and the process asked for every token on its own.) Real time: the
/// relay's hold is real.
#[tokio::test]
async fn waits_on_a_connection_being_made_do_not_open_the_breaker() {
    use crate::redis_store::SlowSetupRelay;

    let authority = Authority::start().await;
    let server = RedisServer::start();
    let shared = Process::new(&authority, &server.url()).token(SCOPE).await;
    assert_eq!(authority.token_posts(), 1);

    let relay = SlowSetupRelay::start(server.port(), Duration::from_millis(1500)).await;
    let store = RedisTokenCache::open(&relay.url()).unwrap();
    let key = SealingKey::new("one", &KEY_ONE).unwrap();
    let cold = Process::configured(
        &authority,
        store.clone(),
        key,
        Duration::from_millis(500),
        |builder| builder.breaker(2, secs(30)),
    );
    let scopes = [
        "https://a.test/.default",
        "https://b.test/.default",
        "https://c.test/.default",
    ];
    futures_util::future::join_all(scopes.map(|scope| cold.token(scope))).await;
    assert_eq!(
        authority.token_posts(),
        4,
        "each missed and asked on its own"
    );

    // Waits on the attempt the three calls left running (clones share the connection).
    store.connect().await.unwrap();
    assert_eq!(cold.token(SCOPE).await, shared);
    let stats = cold.cache.stats();
    assert_eq!(stats.shared_hits, 1, "{stats:?}");
    assert_eq!(authority.token_posts(), 4);
}

/// A connection dropped once made (`CLIENT KILL`) is made again over a relay that takes 1.5 s
/// to set up, under a budget of 0.5 s: the call that finds the connection dropped fails and
/// counts, and a call made while the new connection is being set up misses without counting.
/// The breaker (open at 2 failures) stays closed, and once reconnected the process shares the
/// fleet's token. (Before, the `redis` crate's connection manager reconnected inside itself,
/// out of the store's sight: the call waiting on it counted too and opened the breaker for
/// 30 s.) Real time: the relay's hold is real.
#[tokio::test]
async fn waits_on_a_reconnection_do_not_open_the_breaker() {
    use crate::redis_store::SlowSetupRelay;

    let authority = Authority::start().await;
    let server = RedisServer::start();
    let shared = Process::new(&authority, &server.url()).token(SCOPE).await;
    assert_eq!(authority.token_posts(), 1);

    let relay = SlowSetupRelay::start(server.port(), Duration::from_millis(1500)).await;
    let store = RedisTokenCache::open(&relay.url()).unwrap();
    store.connect().await.unwrap();
    let key = SealingKey::new("one", &KEY_ONE).unwrap();
    let process = Process::configured(
        &authority,
        store.clone(),
        key,
        Duration::from_millis(500),
        |builder| builder.breaker(2, secs(30)),
    );

    // Every connection but the admin's, this process's among them.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut server.admin())
        .unwrap();
    assert!(killed >= 1, "{killed} connections killed");
    // The first call finds the connection dropped; the second waits on the new one.
    process.token("https://a.test/.default").await;
    let start = Instant::now();
    process.token("https://b.test/.default").await;
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "the second call waited out its budget on the reconnection: {:?}",
        start.elapsed()
    );
    assert_eq!(authority.token_posts(), 3, "each asked on its own");

    store.connect().await.unwrap();
    assert_eq!(process.token(SCOPE).await, shared);
    let stats = process.cache.stats();
    assert_eq!((stats.shared_hits, stats.store_errors), (1, 2), "{stats:?}");
    assert_eq!(authority.token_posts(), 3);
}

/// The ids of the clients connected to `server`, but for the one asking.
fn client_ids(server: &RedisServer) -> std::collections::BTreeSet<u64> {
    let mut admin = server.admin();
    let own: u64 = redis::cmd("CLIENT").arg("ID").query(&mut admin).unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("normal")
        .query(&mut admin)
        .unwrap();
    list.lines()
        .filter_map(|line| line.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .filter(|id| *id != own)
        .collect()
}

/// Waits (real time) until `condition` holds; fails the test after 10 s.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < secs(10), "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection that Redis closes while idle (its `timeout` setting; a load balancer's idle
/// cut does the same) costs the next call nothing: a process whose connection was closed so
/// shares the fleet's token, with no request of its own and no store error. Over RESP2 the
/// read finds the connection dropped and runs again on a new one; over RESP3 the store is told
/// as the connection ends, and makes a new one before any call. (Before, the read failed at
/// once with a broken pipe, counted by the breaker, and the process asked the identity
/// provider on its own: every process at every renewal.) Real time: Redis's idle timer (1 s,
/// checked on whole seconds) must run; the test waits for the connection to be gone, not for a
/// set time, and each case has a server of its own. Over RESP3 the timer is 2 s: a connection
/// that ends within 1 s of being made is made again by the next call, not at once, and Redis's
/// whole-second idle count (on a cached clock) may close one after a little under 1 s.
#[tokio::test]
async fn a_connection_closed_while_idle_is_made_again_for_the_next_read() {
    for resp3 in [false, true] {
        let authority = Authority::start().await;
        let server = RedisServer::start();
        let shared = Process::new(&authority, &server.url()).token(SCOPE).await;
        let url = match resp3 {
            true => format!("{}?protocol=resp3", server.url()),
            false => server.url(),
        };
        let store = RedisTokenCache::open(&url).unwrap();
        store.connect().await.unwrap();
        let key = SealingKey::new("one", &KEY_ONE).unwrap();
        let process = Process::over(&authority, store, key, SLOW_MACHINE_BUDGET);

        let before = client_ids(&server);
        server.config_set("timeout", if resp3 { "2" } else { "1" });
        until("the idle connections closed", || {
            client_ids(&server).is_disjoint(&before)
        })
        .await;
        if resp3 {
            until("a new connection made without a call", || {
                !client_ids(&server).is_empty()
            })
            .await;
            // That one has served nothing: closed while idle in its turn, it is not made
            // again until a call needs it (before, an idle store reconnected every 2 s for
            // good). Real time: Redis's own idle timer.
            let made = client_ids(&server);
            until("the new connection closed", || {
                client_ids(&server).is_disjoint(&made)
            })
            .await;
            tokio::time::sleep(secs(1)).await;
            assert!(client_ids(&server).is_empty(), "reconnected without a call");
        }
        // No further closes: the call below must find what the first close left.
        server.config_set("timeout", "0");

        assert_eq!(process.token(SCOPE).await, shared, "resp3: {resp3}");
        let stats = process.cache.stats();
        assert_eq!(
            (stats.shared_hits, stats.store_errors),
            (1, 0),
            "resp3: {resp3}: {stats:?}"
        );
        assert_eq!(authority.token_posts(), 1, "resp3: {resp3}");
    }
}

/// A connection that stops answering without closing (a host that crashed or was cut off: no
/// reset reaches the process) is replaced: the call given up on at its budget's end has the
/// connection PINGed, and with no answer in 2 s a new connection is made, which the next call
/// uses to share the fleet's token. (Before, it stayed: no error ever said it was gone, and
/// every call spent its budget on it.) Real time: the relay and the probe's 2 s are real.
#[tokio::test]
async fn a_connection_that_stops_answering_is_replaced() {
    use crate::redis_store::Relay;

    let authority = Authority::start().await;
    let server = RedisServer::start();
    let shared = Process::new(&authority, &server.url()).token(SCOPE).await;
    let relay = Relay::start(server.port()).await;
    let store = RedisTokenCache::open(&relay.url()).unwrap();
    store.connect().await.unwrap();
    let key = SealingKey::new("one", &KEY_ONE).unwrap();
    let process = Process::over(&authority, store, key, Duration::from_millis(500));

    relay.partition();
    process.token("https://a.test/.default").await;
    assert_eq!(authority.token_posts(), 2, "it asked on its own");
    until("a new connection through the relay", || {
        relay.connections() == 2
    })
    .await;
    assert_eq!(process.token(SCOPE).await, shared);
    let stats = process.cache.stats();
    assert_eq!((stats.shared_hits, stats.store_errors), (1, 1), "{stats:?}");
    assert_eq!(authority.token_posts(), 2);
}

/// Over RESP3, against a server (or proxy) that closes each connection right after its setup,
/// the drops count in the breaker, which opens after 3 calls; and the store does not
/// reconnect in a loop meanwhile. (Before, the `redis` crate told the store of each end before
/// the failing call saw its error: the store replaced the connection, every call was then a
/// miss the breaker does not count, so it never opened; and each new connection, closed in
/// turn, started the next at once, without end and without a call.) Real time: the relay's
/// connections are real; the idle second is a fixed wait (nothing should happen in it), cut
/// short once the relay has seen more connections than the test allows.
#[tokio::test]
async fn connections_closed_after_their_setup_open_the_breaker_without_a_reconnect_loop() {
    use crate::redis_store::HandshakeThenCloseRelay;

    let authority = Authority::start().await;
    let server = RedisServer::start();
    let relay = HandshakeThenCloseRelay::start(server.port()).await;
    let store = RedisTokenCache::open(&format!("{}?protocol=resp3", relay.url())).unwrap();
    let key = SealingKey::new("one", &KEY_ONE).unwrap();
    let process = Process::configured(&authority, store, key, SLOW_MACHINE_BUDGET, |builder| {
        builder.breaker(3, secs(30))
    });

    for scope in [
        "https://a.test/.default",
        "https://b.test/.default",
        "https://c.test/.default",
    ] {
        process.token(scope).await;
    }
    assert_eq!(process.cache.stats().store_errors, 3);
    // Open: the next call is not made.
    let made = relay.connections();
    process.token("https://d.test/.default").await;
    let stats = process.cache.stats();
    assert_eq!((stats.store_errors, stats.idp_calls), (3, 4), "{stats:?}");
    assert_eq!(authority.token_posts(), 4);

    // Idle: at most the one attempt a call left running, not one after another.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) && relay.connections() <= made + 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        relay.connections() <= made + 1,
        "{} connections made while idle",
        relay.connections() - made
    );
}

/// Redis stopped mid-run costs each acquisition one budget and no failed request; killed, it
/// costs nothing but a request per process; restarted, the fleet shares again.
#[tokio::test(start_paused = true)]
async fn redis_paused_then_killed_then_restarted() {
    let authority = Authority::start().await;
    let mut server = RedisServer::start();
    let one = Process::paused_clock(&authority, &server.url());
    let two = Process::paused_clock(&authority, &server.url());
    held(one.token("https://a.test/.default")).await;
    held(two.token("https://a.test/.default")).await;
    assert_eq!(authority.token_posts(), 1);

    server.pause();
    for (process, posts) in [(&one, 2), (&two, 3)] {
        let start = Instant::now();
        process.token("https://b.test/.default").await;
        assert_eq!(
            start.elapsed(),
            BUDGET,
            "one store call outlived its budget"
        );
        assert_eq!(authority.token_posts(), posts, "each process asks once");
        // Tokens in memory are served without the store, at once.
        let start = Instant::now();
        process.token("https://a.test/.default").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
    assert_eq!(one.cache.stats().store_errors, 1);

    server.kill();
    for (process, posts) in [(&one, 4), (&two, 5)] {
        held(process.token("https://c.test/.default")).await;
        assert_eq!(authority.token_posts(), posts);
    }

    server.restart();
    // Whatever the breakers decided meanwhile, they try the store again after `open_for`.
    tokio::time::advance(secs(31)).await;
    let first = held(one.token("https://d.test/.default")).await;
    let second = held(two.token("https://d.test/.default")).await;
    assert_eq!(first, second);
    assert_eq!(
        authority.token_posts(),
        6,
        "one request for the fleet again"
    );
}

/// The fleet's token at 56 min of its hour (due for renewal, valid 4 min more); its warm
/// process renews it, and the authority holds that request (a slow Entra): the holder keeps
/// its lease in Redis. A process with no token of its own that asks meanwhile is handed the
/// stored token at once, sending nothing; the holder's token, once it comes, reaches it at its
/// next renewal. (Before, it lost the lease and waited for the holder's token, up to
/// `wait_limit`, then asked on its own. Held still, the clock would never end that wait: the
/// request fails the test after 20 s.)
#[tokio::test(start_paused = true)]
async fn a_process_without_a_token_is_served_the_due_one_while_the_holder_is_slow() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    let warm = Process::paused_clock(&authority, &server.url());
    // Built now: a cache reads the wall clock's offset when it is built, and tests move
    // tokio's clock only.
    let cold = Process::paused_clock(&authority, &server.url());
    let first = held(warm.token(SCOPE)).await;
    tokio::time::advance(secs(56 * 60)).await;
    let gate = Arc::new(Notify::new());
    authority.push_fault(Fault::Hold(Arc::clone(&gate)));
    held_within(secs(20), async {
        assert_eq!(warm.token(SCOPE).await, first, "served while it renews");
        until_held("the holder's request", || authority.token_posts() == 2).await;
        let leases = server
            .dump()
            .into_iter()
            .filter(|(key, _)| key.ends_with(":lease"));
        assert_eq!(leases.count(), 1, "the holder's lease");
        let start = Instant::now();
        assert_eq!(cold.token(SCOPE).await, first);
        assert_eq!(start.elapsed(), Duration::ZERO);
        let stats = cold.cache.stats();
        assert_eq!((stats.shared_hits, stats.idp_calls), (1, 0), "{stats:?}");
        // The holder's token comes in, is published and lands in its slot.
        gate.notify_one();
        let renewed = until_renewed("the holder's token", &warm, &first).await;
        // The cold process renews at its next request (its token is due), from the store.
        assert_eq!(cold.token(SCOPE).await, first);
        assert_eq!(
            until_renewed("the cold process's renewal", &cold, &first).await,
            renewed
        );
    })
    .await;
    assert_eq!(authority.token_posts(), 2, "one request for each token");
}

/// Waits until `condition` holds without sleeping on tokio's clock (held still, a sleep would
/// never end), yielding to the tasks doing the work; fails the test after 10 s of real time.
async fn until_held(what: &str, mut condition: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !condition() {
        assert!(start.elapsed() < secs(10), "not within 10 s: {what}");
        tokio::task::yield_now().await;
    }
}

/// Waits, as [`until_held`], until `process` hands out a token other than `old` from memory
/// (its renewal has landed); that token.
async fn until_renewed(what: &str, process: &Process, old: &str) -> String {
    let mut renewed = None;
    until_held(what, || {
        let token = process.credential.get_token([SCOPE]).now_or_never();
        renewed = token
            .and_then(Result::ok)
            .map(|token| token.secret().expose_secret().to_owned())
            .filter(|token| token != old);
        renewed.is_some()
    })
    .await;
    renewed.unwrap_or_default()
}

/// Entries evicted (`maxmemory` with `allkeys-lru`), then writes refused (out of memory), then
/// memory back: every request succeeds; processes ask on their own while Redis cannot keep
/// entries and share again afterwards.
#[tokio::test]
async fn maxmemory_eviction_and_refused_writes() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    Process::new(&authority, &server.url()).token(SCOPE).await;
    assert_eq!(authority.token_posts(), 1);

    let mut admin = server.admin();
    server.config_set("maxmemory-policy", "allkeys-lru");
    // Far below what an empty server uses: Redis evicts every key and refuses writes.
    server.config_set("maxmemory", "1");
    let keys: usize = redis::cmd("DBSIZE").query(&mut admin).unwrap();
    assert_eq!(keys, 0, "the entry was evicted");
    let refused = admin.set::<_, _, ()>("probe", "x").unwrap_err();
    assert_eq!(refused.code(), Some("OOM"), "{refused}");

    for posts in [2, 3] {
        Process::new(&authority, &server.url()).token(SCOPE).await;
        assert_eq!(authority.token_posts(), posts);
    }

    server.config_set("maxmemory", "0");
    let published = Process::new(&authority, &server.url()).token(SCOPE).await;
    let shared = Process::new(&authority, &server.url()).token(SCOPE).await;
    assert_eq!(published, shared);
    assert_eq!(authority.token_posts(), 4);
}

#[tokio::test]
async fn a_flushed_database_is_a_miss() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    let before = Process::new(&authority, &server.url()).token(SCOPE).await;
    let _: () = redis::cmd("FLUSHALL").query(&mut server.admin()).unwrap();

    let after = Process::new(&authority, &server.url()).token(SCOPE).await;
    assert_ne!(before, after, "a new token after the flush");
    assert_eq!(authority.token_posts(), 2);
    let shared = Process::new(&authority, &server.url()).token(SCOPE).await;
    assert_eq!(after, shared);
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test]
async fn a_wrong_password_costs_a_request_per_process_and_no_failure() {
    let authority = Authority::start().await;
    let server = RedisServer::start_with(&["--requirepass", "right-password-5e0a"]);
    let wrong = server.url_with_password("wrong-password-3b7c");
    for posts in 1..=3 {
        let process = Process::new(&authority, &wrong);
        process.token(SCOPE).await;
        assert_eq!(authority.token_posts(), posts);
        assert!(process.cache.stats().store_errors >= 1);
        assert!(!format!("{:?}", process.cache).contains("wrong-password-3b7c"));
    }
    assert!(server.dump().is_empty(), "nothing was written");

    // With the right one the fleet shares.
    let one = Process::new(&authority, &server.url()).token(SCOPE).await;
    let two = Process::new(&authority, &server.url()).token(SCOPE).await;
    assert_eq!(one, two);
    assert_eq!(authority.token_posts(), 4);
}

/// A lease key no cache wrote, with no expiry or with one far longer than a cache's lease (a
/// stray write by anything with access to Redis), is not waited for: the process asks at once
/// and publishes, and the next one shares its token. (Before, every acquisition waited
/// `wait_limit`, 60 s, for a holder that did not exist, for as long as the key was there.)
#[tokio::test]
async fn a_lease_no_cache_wrote_is_not_waited_for() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    Process::new(&authority, &server.url()).token(SCOPE).await;
    let token_key = entry_key(&server);
    let lease_key = token_key.replace(":token", ":lease");
    for (posts, ttl_ms) in [(2, None), (3, Some(3_600_000))] {
        let _: () = server.admin().del(&token_key).unwrap();
        let mut set = redis::cmd("SET");
        set.arg(&lease_key).arg("stray");
        if let Some(ms) = ttl_ms {
            set.arg("PX").arg(ms);
        }
        let _: () = set.query(&mut server.admin()).unwrap();
        let start = std::time::Instant::now();
        let process = Process::new(&authority, &server.url());
        let token = process.token(SCOPE).await;
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?} with {ttl_ms:?}",
            start.elapsed()
        );
        assert_eq!(authority.token_posts(), posts, "{ttl_ms:?}");
        let shared = Process::new(&authority, &server.url()).token(SCOPE).await;
        assert_eq!(token, shared, "{ttl_ms:?}");
        assert_eq!(authority.token_posts(), posts, "{ttl_ms:?}");
    }
}

/// Garbage under the entry key: a miss (never returned), and replaced by the next process's
/// token.
#[tokio::test]
async fn garbage_under_the_entry_key_is_a_miss_and_replaced() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    Process::new(&authority, &server.url()).token(SCOPE).await;
    let key = entry_key(&server);
    let garbage: [&[u8]; 3] = [b"ti1s\x00garbage", b"ti1p{\"access_token\": 1}", b""];
    for (posts, garbage) in (2..).zip(garbage) {
        let _: () = server.admin().set(&key, garbage).unwrap();
        let process = Process::new(&authority, &server.url());
        let token = process.token(SCOPE).await;
        assert!(
            token.starts_with("at-"),
            "a token from the authority: {token:?}"
        );
        assert_eq!(authority.token_posts(), posts, "{garbage:?}");
        assert!(process.cache.stats().store_errors >= 1, "{garbage:?}");
        assert_eq!(process.cache.stats().shared_hits, 0, "{garbage:?}");

        // Replaced: the next process shares it.
        let shared = Process::new(&authority, &server.url()).token(SCOPE).await;
        assert_eq!(token, shared, "{garbage:?}");
        assert_eq!(authority.token_posts(), posts, "{garbage:?}");
    }
}

/// A value of another type under the entry key is a miss, as garbage is: the process that
/// finds it asks, and its publish (a `SET`, which replaces a key of any type) replaces it, so
/// the next process shares. (Before, every read failed with WRONGTYPE: nothing was published,
/// the key stayed until someone deleted it, and every process asked on its own.)
#[tokio::test]
async fn a_key_of_another_type_is_a_miss_and_replaced() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    Process::new(&authority, &server.url()).token(SCOPE).await;
    let key = entry_key(&server);
    let _: () = server.admin().del(&key).unwrap();
    let _: () = server.admin().rpush(&key, "garbage").unwrap();
    let process = Process::new(&authority, &server.url());
    let token = process.token(SCOPE).await;
    assert!(
        token.starts_with("at-"),
        "a token from the authority: {token:?}"
    );
    assert_eq!(authority.token_posts(), 2);
    assert_eq!(process.cache.stats().store_errors, 1);
    assert_eq!(process.cache.stats().leases_won, 1);

    let next = Process::new(&authority, &server.url());
    assert_eq!(next.token(SCOPE).await, token);
    assert_eq!(authority.token_posts(), 2);
    assert_eq!(next.cache.stats().shared_hits, 1);
}

/// A value over 64 KiB under the entry key (here 4 MiB) is not read: a miss, replaced by the
/// next publish. (Before, each process read it whole, and copied it to open it.)
#[tokio::test]
async fn a_value_over_64_kib_is_not_read_and_replaced() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    Process::new(&authority, &server.url()).token(SCOPE).await;
    let key = entry_key(&server);
    let _: () = server.admin().set(&key, vec![b'x'; 4 << 20]).unwrap();
    let sent = || -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut server.admin())
            .unwrap();
        let line = info
            .lines()
            .find_map(|line| line.strip_prefix("total_net_output_bytes:"))
            .unwrap();
        line.trim().parse().unwrap()
    };
    let before = sent();
    let process = Process::new(&authority, &server.url());
    let token = process.token(SCOPE).await;
    let sent = sent() - before;
    assert!(sent < 64 * 1024, "Redis sent {sent} bytes");
    assert_eq!(authority.token_posts(), 2);
    assert_eq!(process.cache.stats().store_errors, 1);
    let stored: usize = redis::cmd("STRLEN")
        .arg(&key)
        .query(&mut server.admin())
        .unwrap();
    assert!(stored < 4096, "replaced: {stored} bytes");

    let next = Process::new(&authority, &server.url());
    assert_eq!(next.token(SCOPE).await, token);
    assert_eq!(authority.token_posts(), 2);
}

/// An entry sealed under another key, or the same key under another name, never opens. A key
/// under another name (a rotation) finds a miss, not a store error; another key under the
/// same name is an error.
#[tokio::test]
async fn an_entry_sealed_with_another_key_is_a_miss() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    let url = server.url();
    let first = Process::new(&authority, &url).token(SCOPE).await;

    let other_key = SealingKey::new("one", &KEY_TWO).unwrap();
    let process = Process::sealed(&authority, &url, other_key);
    let second = process.token(SCOPE).await;
    assert_ne!(first, second, "another key's entry is not returned");
    assert_eq!(authority.token_posts(), 2);
    assert_eq!(process.cache.stats().store_errors, 1, "the same name");

    // The second process replaced the entry; the same bytes under another name do not open it.
    let renamed = SealingKey::new("two", &KEY_TWO).unwrap();
    let process = Process::sealed(&authority, &url, renamed);
    let third = process.token(SCOPE).await;
    assert_ne!(
        third, second,
        "a key under another name does not open the entry"
    );
    assert_eq!(authority.token_posts(), 3);
    assert_eq!(process.cache.stats().store_errors, 0, "another name");

    // And the same key under the same name does.
    let same = SealingKey::new("two", &KEY_TWO).unwrap();
    let fourth = Process::sealed(&authority, &url, same).token(SCOPE).await;
    assert_eq!(fourth, third);
    assert_eq!(authority.token_posts(), 3);
}

/// `needle` as it would appear raw, in hex, or inside base64 (standard or URL-safe) at any
/// of the three alignments.
fn encodings(needle: &str) -> Vec<Vec<u8>> {
    let mut all = vec![
        needle.as_bytes().to_vec(),
        needle
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_bytes(),
    ];
    for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
        for shift in 0..3 {
            let mut shifted = vec![0u8; shift];
            shifted.extend_from_slice(needle.as_bytes());
            let encoded = engine.encode(&shifted);
            // Drop the characters that mix in the shift's bytes and the unfinished last group.
            let start = (shift * 4).div_ceil(3);
            let end = encoded.len() - 4;
            all.push(encoded.as_bytes()[start..end].to_vec());
        }
    }
    all
}

#[tokio::test]
async fn nothing_readable_is_at_rest() {
    let authority = Authority::start().await;
    let server = RedisServer::start();
    let mut tokens = Vec::new();
    for scope in [SCOPE, "https://other.test/.default"] {
        for _ in 0..2 {
            tokens.push(Process::new(&authority, &server.url()).token(scope).await);
        }
    }
    assert_eq!(authority.token_posts(), 2);

    let dump = server.dump();
    assert_eq!(dump.len(), 2, "two entries, no leases left: {dump:?}");
    for needle in tokens
        .iter()
        .map(String::as_str)
        .chain([CLIENT_SECRET, TENANT, CLIENT_ID])
    {
        for encoded in encodings(needle) {
            for (key, value) in &dump {
                let found = |hay: &[u8]| hay.windows(encoded.len()).any(|w| w == encoded);
                assert!(!found(key.as_bytes()), "{needle:?} in key {key}");
                // The tenant and client id are not secret, but not in clear either.
                assert!(!found(value), "{needle:?} in the value under {key}");
            }
        }
    }
}

/// `DefaultAzureCredential` hands the cache to its managed identity, whose system-assigned
/// identity shares tokens only under the label given to the chain: two apps with their own
/// identities (two App Service endpoints) each ask their own endpoint without it, and the
/// instances of one app (the same label) ask once.
#[tokio::test]
async fn default_azure_credential_shares_a_system_assigned_identity_only_under_a_label() {
    use crate::support::mi_emulator::{Emulator, Flavour};
    use tower_identity::DefaultAzureCredential;

    let server = RedisServer::start();
    let (one, two) = (
        Emulator::start(Flavour::AppService).await,
        Emulator::start(Flavour::AppService).await,
    );
    let process = |emulator: &Emulator, label: Option<&str>| {
        let cache = DistributedCache::builder(RedisTokenCache::open(&server.url()).unwrap())
            .prefix("it")
            .sealing_key(SealingKey::new("one", &KEY_ONE).unwrap())
            .budget(SLOW_MACHINE_BUDGET)
            .build()
            .unwrap();
        let mut vars = emulator.env();
        vars.push((
            "AZURE_TOKEN_CREDENTIALS".to_owned(),
            "ManagedIdentityCredential".to_owned(),
        ));
        let mut builder = DefaultAzureCredential::builder()
            .vars(vars)
            .distributed_cache(cache);
        if let Some(label) = label {
            builder = builder.managed_identity_system_assigned_label(label);
        }
        builder.build().unwrap()
    };

    process(&one, None).get_token([SCOPE]).await.unwrap();
    process(&two, None).get_token([SCOPE]).await.unwrap();
    assert_eq!((one.request_count(), two.request_count()), (1, 1));
    assert!(
        server.dump().is_empty(),
        "nothing is published without a label"
    );

    let first = process(&one, Some("orders-api"))
        .get_token([SCOPE])
        .await
        .unwrap();
    let second = process(&two, Some("orders-api"))
        .get_token([SCOPE])
        .await
        .unwrap();
    assert_eq!(second.secret(), first.secret());
    assert_eq!((one.request_count(), two.request_count()), (2, 1));
}
