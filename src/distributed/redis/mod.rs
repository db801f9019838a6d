//! The Redis [`TokenStore`] (feature `redis`): [`RedisTokenCache`].

//! `link`: the connection (made, dropped, made again); `scripts`: the Lua scripts and how
//! their answers read.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisError, Script, Value};

use crate::distributed::store::{
    MAX_ENTRY_BYTES, MAX_MARK_BYTES, StoreError, TokenStore, ValueWithLease, ValueWithMark,
    ValueWithThrottle, ValueWithTtl,
};
use crate::error::ConfigError;
use crate::redact::{scrub, truncate};

mod link;
mod scripts;

use link::{Link, PROBE_TIMEOUT, SHORTEST_LIFE, State, drops, keepalive};
use scripts::{
    GET_WITH_LEASE, GET_WITH_MARK, GET_WITH_THROTTLE, GET_WITH_TTL, PUT, RELEASE,
    RELEASE_WITH_MARK, RENEW, entry_and_mark, entry_answer, entry_mark_and_lease,
    entry_mark_lease_and_throttle, px, unexpected, unix_millis,
};

/// How much of a Redis error's text a [`StoreError`] keeps.
const MAX_ERROR_CHARS: usize = 200;

/// A [`TokenStore`] on one Redis endpoint, through one multiplexed connection of the `redis`
/// crate (tokio), made again after it drops.
///
/// The endpoint is a single server (Redis, Valkey), or a cluster behind a proxy that presents
/// it as one server: Azure Cache for Redis without clustering (Basic, Standard, Premium
/// non-clustered) or Azure Managed Redis with its Enterprise clustering policy. It does not
/// speak the Redis Cluster protocol: against an endpoint that redirects (`MOVED`: a cluster
/// reached directly, Azure's OSS clustering policy) every call for a key on another shard
/// fails, and the processes ask the identity provider on their own. The keys' hash tags keep
/// an entry's four keys (token, lease, failure mark, throttle mark) on one shard for a [`TokenStore`] of your own over
/// a cluster client.
///
/// Cheap to clone: clones share the connection. Its `Debug` shows the host, port and
/// database, never the password.
///
/// ```no_run
/// use tower_identity::distributed::{DistributedCache, RedisTokenCache, SealingKey};
/// use tower_identity::{ClientSecretCredential, CredentialExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // Only parses the URL: building a credential never needs Redis up.
/// let store = RedisTokenCache::from_env("REDIS_URL")?;
/// // Optional: connect at start-up, so the first token request does not pay for it. Returns
/// // within 7 s even if Redis does not answer.
/// if let Err(e) = store.connect().await {
///     eprintln!("{e}; tokens are acquired without the shared cache until Redis is back");
/// }
/// let cache = DistributedCache::builder(store)
///     .sealing_key(SealingKey::from_env("TOKEN_CACHE_KEY")?)
///     .build()?;
/// let credential = ClientSecretCredential::builder("tenant", "client", std::env::var("SECRET")?)
///     .distributed_cache(cache)
///     .build()?;
/// let token = credential.get_token(["https://graph.microsoft.com/.default"]).await?;
/// # let _ = token; Ok(()) }
/// ```
///
/// The URL is the `redis` crate's: `redis://[user:password@]host[:port][/db]`, `rediss://` for
/// TLS (rustls, the platform's roots), `redis+unix:///path` for a Unix socket.
///
/// An entry's TTL counts from when its put was called, not from when Redis applies it: a put
/// applied late (sent while Redis was stopped, applied once it resumes) expires with the token
/// all the same, as long as the host's and Redis's clocks agree (the end is the call's Unix
/// time plus the TTL, by Redis's clock: a Redis clock `S` behind lets a late entry outlive the
/// token by up to `S`, and never by more than its delay). Readers also check the token's own
/// expiry, so they never use a token past it either way. A Redis clock ahead of the host's
/// shortens entries by the difference; one ahead by an entry's whole TTL stores nothing, and the put answers an error
/// naming the difference (a store error: the process acts alone). Failure marks
/// ([`put_mark`](TokenStore::put_mark), and the holder's
/// [`release_with_mark`](TokenStore::release_with_mark), one script with its release) are a
/// plain `SET … PX`, whatever the clocks say.
///
/// Keys are given a TTL of at most 100 years: a longer one (a `lease(Duration::MAX)`) is
/// capped, since Redis refuses a `PX` that overflows when added to its clock.
///
/// The store adds no timeout and no retry delay to its calls: the distributed cache bounds every
/// call with its budget and counts failures in its breaker, so a wait here would only hide
/// how long Redis took. A call to a server that does not answer (stopped, partitioned) stays
/// pending until the caller gives up on it.
///
/// The connection is the exception: it is made in a task of its own, started by the first call
/// (or [`connect`](Self::connect)) and bounded by a deadline of its own (5 s), so a call that
/// gives up on it (its budget spent) does not cancel it. Calls meanwhile wait on that one
/// attempt, each within its own budget, and a later call uses the connection once it is made,
/// however long its setup took (DNS, TCP, TLS, AUTH: more than the budget, for a server in
/// another region). Only the call that started an attempt counts its wait as a failure in the
/// cache's breaker: the calls that joined it are misses, not failures, so a cold process
/// asking for several tokens at once does not open the breaker for a connection made a moment
/// later. An attempt that fails or runs out of time leaves the next call to start another.
///
/// A connection that drops once made (Redis restarted, a failover, `CLIENT KILL`, an idle
/// connection closed by Redis's `timeout` or cut by a load balancer) is made again the same
/// way: the call that finds it dropped starts a new attempt at once, in the background. A
/// call safe to repeat (the cache's look for a token, a put, renewing or releasing a lease)
/// waits on that attempt within its budget and runs again on the new connection: a
/// connection that ended while idle costs the next look nothing, and is no breaker failure.
/// Taking a lease (`SET NX`) is not sent twice: it fails and counts. Calls made
/// meanwhile wait on the attempt as they would on the first, so a reconnection slower than
/// the budget costs them their budget but does not open the breaker. Calls already sent on
/// the connection when it dropped fail with it, and only the first to find the drop counts
/// (a burst of calls does not open the breaker for one drop). Over RESP3 (`?protocol=resp3`) the
/// `redis` crate tells the store as a connection ends, and the new attempt starts then,
/// before any call finds it dropped; the drop still counts once, as over RESP2, for the
/// first call that fails on that connection or gives up waiting on the new one. A connection
/// that ends within 1 s of being made is not made again at once, but by the call that fails
/// on it (in the background, as over RESP2) or else by the next call: a server or proxy that
/// closes each connection right after its setup costs one attempt per call (and opens the
/// breaker), not a reconnection loop. A server that answers it is no longer the primary
/// (`READONLY`: a failover demoted it without closing its clients; `MASTERDOWN`) counts as a
/// drop too: the new connection reaches the new primary behind the address.
///
/// Against an address that never answers (a black-holed host or port), each attempt runs its
/// 5 s and only the call that started it counts a failure: the breaker opens about
/// (`failures` − 1) × 5 s after the first call (some 10 s at the defaults, calls keeping on
/// coming), and until then every call, counted or not, spends the whole budget before the
/// process asks the identity provider on its own. When the address goes silent under a
/// connection already made, every call sent on it while the `PING` below waits its 2 s is
/// given up on and counts, so calls coming faster than that open the breaker within about
/// 2 s; calls more than 2 s apart find it replaced by an attempt the `PING` started, which
/// counts for no call (the calls that wait on it are misses), and the breaker opens some 2 s
/// later than against an address never answered (some 12 s at the defaults).
///
/// A connection that stops answering without closing (its host crashed or was cut off, and
/// no reset reaches this host) raises no error. When the cache gives up on a call at its
/// budget's end, the store sends a `PING` on that connection in the background: with no answer
/// within 2 s the connection is taken for dropped and made again, as above (a server that
/// answers within 2 s, only slow, keeps it). A server that is there but stalls for more than
/// 2 s (a `fork` for a snapshot of a large data set, a slow script or command) has its
/// connection replaced too: the calls sent on it were already given up, and the new
/// connection is made once the server answers again (within the attempt's 5 s, or by a
/// later attempt). A server that stopped answering altogether (`SIGSTOP`) is then an address
/// that never answers: one failure per attempt.
///
/// TCP connections also have keepalive (a probe after 10 s idle, then every 5 s), so a dead
/// peer is found on an idle connection too, and a load balancer's idle timer does not cut
/// it, on Linux, Android, macOS, iOS, FreeBSD and Windows only (on other platforms the
/// store sets no keepalive; a Unix socket needs none). How soon a dead idle peer is found
/// depends on the platform's count of unanswered probes, which the store does not set: on
/// Linux and Android some 20 s after the peer's last answer (`TCP_USER_TIMEOUT`, 20 s, ends
/// the connection after two unanswered probes); on macOS, iOS and FreeBSD about 50 s (8
/// probes); on Windows about 60 s (10 probes).
#[derive(Clone)]
pub struct RedisTokenCache {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// The connection, or the one attempt at it that runs, and the drop no call counted yet.
    link: Mutex<State>,
    /// Attempts started, to tell one from the next.
    attempts: AtomicU64,
    /// The last connection that served the process (answered a call, or the `PING` of
    /// [`RedisTokenCache::connect`]); `u64::MAX` before any. Only such a connection is made
    /// again at once when the `redis` crate tells it ended (see [`RedisTokenCache::ended`]).
    served: AtomicU64,
    release: Script,
    release_with_mark: Script,
    renew: Script,
    get_with_ttl: Script,
    get_with_mark: Script,
    get_with_lease: Script,
    get_with_throttle: Script,
    put: Script,
}

impl RedisTokenCache {
    /// A store for the Redis server at `url` (see [`RedisTokenCache`] for the forms).
    /// Only parses: the connection is made by the first call.
    pub fn open(url: &str) -> Result<Self, ConfigError> {
        let client = url
            .into_connection_info()
            .and_then(|info| {
                let tcp = keepalive(info.tcp_settings().clone());
                Client::open(info.set_tcp_settings(tcp))
            })
            .map_err(|e| {
            // The parser's messages do not quote the URL; scrubbed anyway, as the URL may
            // hold a password.
            ConfigError::new(format!(
                "the Redis URL is not valid ({}): expected redis://[user:password@]host[:port][/db], \
                 rediss://… for TLS or redis+unix:///path",
                truncate(&scrub(&e.to_string(), &[url]), MAX_ERROR_CHARS)
            ))
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                link: Mutex::new(State {
                    link: Link::Idle,
                    uncounted: None,
                }),
                attempts: AtomicU64::new(0),
                served: AtomicU64::new(u64::MAX),
                release: Script::new(RELEASE),
                release_with_mark: Script::new(RELEASE_WITH_MARK),
                renew: Script::new(RENEW),
                get_with_ttl: Script::new(GET_WITH_TTL),
                get_with_mark: Script::new(GET_WITH_MARK),
                get_with_lease: Script::new(GET_WITH_LEASE),
                get_with_throttle: Script::new(GET_WITH_THROTTLE),
                put: Script::new(PUT),
            }),
        })
    }

    /// A store for the Redis URL in the environment variable `var` (see [`open`](Self::open)).
    pub fn from_env(var: &str) -> Result<Self, ConfigError> {
        match std::env::var(var) {
            Ok(url) if !url.trim().is_empty() => Self::open(url.trim()),
            _ => Err(ConfigError::new(format!(
                "the environment variable {var} holds no Redis URL: set it to \
                 redis://[user:password@]host[:port][/db] (or rediss://… for TLS)"
            ))),
        }
    }

    /// Connects now instead of on the first call: the first call then does not spend the
    /// cache's budget on the connection. Returns within 7 s whether Redis answers or not (the
    /// connection's own deadline, 5 s, then 2 s for the `PING`'s answer). An error is not
    /// final: the next call tries again.
    ///
    /// A connection that has not answered yet (new, or made in the background in place of
    /// one that dropped) is confirmed with a `PING` (one round trip), so `Ok` means a
    /// connection that answered. Found closed, it is an error. One the server closed as it
    /// was made (made by the attempt `connect` waited on, or told to have ended within 1 s
    /// of its setup) is left for the next call to make again: a server or proxy that closes
    /// each one costs one attempt per call, not a loop. An older one (closed while idle: the
    /// server's `timeout`, a proxy's idle cut) is said to have dropped, and is made again at
    /// once. Over RESP2 nothing tells when it closed: one made in the background and closed
    /// right after its setup is said to have dropped if `connect` finds it 1 s or more later.
    ///
    /// A connection that has answered (a call, or an earlier `connect`) is taken as it is,
    /// without a round trip: `Ok` then says nothing of whether it is still open. Over RESP2,
    /// one the server closed while idle is found so by the next call (which runs a read
    /// again on a new connection); over RESP3 the `redis` crate tells of the close, and a
    /// new connection is made (at once, or by `connect`), which `connect` confirms. Over RESP3 too,
    /// a connection not answered yet that was closed while idle before `connect` is made
    /// anew by it, as a first connection is.
    pub async fn connect(&self) -> Result<(), StoreError> {
        let (id, mut connection, waited) = self.connection_waited("connection").await?;
        // Over RESP3 the server may have closed it as it was made, and the store been told
        // (see `Inner::settle`, `ended`): it then holds none.
        let made = match &self.inner.link().link {
            Link::Connected(current, _, _, made) if *current == id => Some(*made),
            _ => None,
        };
        let Some(made) = made else {
            return Err(self.gone(id, waited));
        };
        if self.inner.served.load(Ordering::Relaxed) == id {
            // It has answered a call: no round trip needed.
            return Ok(());
        }
        // A connection that never served is not always new: one made for a call that gave
        // up on it, or in place of one that dropped, may have idled since, and the server's
        // `timeout` (or a proxy's idle cut) closed it, which over RESP2 nothing tells. Only a
        // new one is said to be closed as it was made, and left for the next call: the one
        // this call waited on (by its age alone, a stall of the runtime between the attempt's
        // end and this would make it old), or one made less than `SHORTEST_LIFE` ago.
        let age = made.elapsed();
        // Whether the store was told of a close depends on which task ran first: the
        // connection's reader (spawned once the setup was answered) or this one. A `PING`
        // answers whichever ran first, and over RESP2, where nothing tells.
        let ping = redis::cmd("PING");
        let answer =
            tokio::time::timeout(PROBE_TIMEOUT, ping.query_async::<Value>(&mut connection)).await;
        drop(connection);
        match answer {
            // Answered, even with an error of the server's: it is there.
            Ok(Ok(_)) => {}
            Ok(Err(e)) if !drops(&e) => {}
            Ok(Err(e)) => {
                // How long it lived, as the `redis` crate's notice recorded it if that came
                // first (RESP3); else it lived no longer than its age.
                let lived = self.told_lived(id).unwrap_or(age);
                if waited || lived < SHORTEST_LIFE {
                    // Recorded as the `redis` crate's notice records it (the link idle, the
                    // drop left for a call to count), which may come before or after this:
                    // the later of the two finds the link moved on and does nothing.
                    self.ended(id);
                    return Err(closed_as_made(self.replaced()));
                }
                // An old connection that dropped while idle: made again now, as when a call
                // finds it dropped (no loop: one attempt per `connect()`, which waited on
                // none).
                let again = self.replace_unserved(id, age);
                return Err(StoreError::msg(format!(
                    "redis connection: failed: {} (the connection had dropped; {})",
                    self.inner.scrubbed(&e),
                    next(again, "being made again")
                )));
            }
            Err(_) => {
                // Taken for dropped and made again, as a probe that gets no answer does.
                let again = self.replace_unserved(id, age);
                let on = if waited || age < SHORTEST_LIFE {
                    "of the connection's setup".to_owned()
                } else {
                    // Not "unused": a call may have been sent on it, and given up on.
                    format!(
                        "on a connection made {} s earlier that has not answered yet",
                        age.as_secs()
                    )
                };
                return Err(StoreError::msg(format!(
                    "redis connection: no answer to a PING within {} s {on}; {}",
                    PROBE_TIMEOUT.as_secs(),
                    next(again, "the connection is being made again")
                )));
            }
        }
        self.inner.served.store(id, Ordering::Relaxed);
        Ok(())
    }

    /// `connect`'s error for connection `id`, which [`connection_waited`] handed it and which
    /// was no longer the link's when it looked: its end was told (RESP3) while its attempt
    /// ran or since, or a call found it dropped.
    ///
    /// [`connection_waited`]: Self::connection_waited
    fn gone(&self, id: u64, waited: bool) -> StoreError {
        let lived = self.told_lived(id);
        if waited || lived.is_some_and(|lived| lived < SHORTEST_LIFE) {
            // Left as found: idle for the next call, or already made again by a call.
            return closed_as_made(self.replaced());
        }
        // Older (or its end counted already, by a call that failed on it): as when the `PING`
        // finds it dropped. (Its age is of no use here: the link no longer holds it.)
        let again = self.replace_unserved(id, lived.unwrap_or_default());
        StoreError::msg(format!(
            "redis connection: the connection had dropped; {}",
            next(again, "being made again")
        ))
    }

    /// [`put`](TokenStore::put) as called at `called` (Unix ms by this host's clock; `None`
    /// for a clock before 1970, which gives no end: the TTL alone bounds the entry).
    ///
    /// Nothing stored, answered within less than the TTL of the call, cannot be a put applied
    /// late: Redis's clock had passed the end (`called` plus the TTL) when it applied it, so
    /// it runs ahead of this host's by at least the TTL less the time the answer took, and
    /// every entry shorter than that would go unstored. That is an error naming the
    /// difference, counted and logged as every store error is, not a silent success.
    async fn put_from(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        called: Option<u64>,
        clear_key: Option<&str>,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let ttl = px(ttl);
        let end = called.map_or(u64::MAX, |called| called.saturating_add(ttl));
        let mut invocation = self.inner.put.key(key);
        if let Some(clear_key) = clear_key {
            invocation.key(clear_key);
        }
        invocation.arg(value).arg(ttl).arg(end);
        match self.repeatable("SET", &invocation).await? {
            Value::Int(1) => Ok(()),
            Value::Int(left) if left <= 0 => {
                let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                // Redis passed the end `-left` ms before it applied the put, at most `took`
                // ms after the call: its clock runs at least this far ahead.
                let ahead = ttl.saturating_add(left.unsigned_abs()).saturating_sub(took);
                if ahead == 0 {
                    // Applied after its whole TTL from the call: nothing to keep.
                    return Ok(());
                }
                Err(StoreError::msg(format!(
                    "redis SET: nothing stored: Redis's clock runs at least {ahead} ms ahead of \
                     this host's, so the entry's {ttl} ms from the call had passed by it; \
                     synchronise the clocks (NTP)"
                )))
            }
            other => Err(unexpected("SET", &other)),
        }
    }

    /// A store error for `op` from a Redis error, its text scrubbed of the URL's credentials
    /// (the source is not kept: its text is not ours to vouch for).
    fn error(&self, op: &str, what: &str, e: &RedisError) -> StoreError {
        StoreError::msg(format!("redis {op}: {what}: {}", self.inner.scrubbed(e)))
    }
}

/// `connect`'s error for a connection the server closed as it was made; `again`: an attempt
/// runs (or made the next) in its place, else the next call makes it.
fn closed_as_made(again: bool) -> StoreError {
    StoreError::msg(format!(
        "redis connection: the server closed the connection as it was made; {} (if every \
         connection ends so, look at what closes them: a proxy or load balancer in front of \
         Redis, a `CLIENT KILL`)",
        next(again, "it is being made again")
    ))
}

/// What follows a connection `connect` found closed: `again` (an attempt runs in its place,
/// said as `made_again`), or the next call makes it.
fn next(again: bool, made_again: &'static str) -> &'static str {
    if again {
        made_again
    } else {
        "the next call connects again"
    }
}

impl Inner {
    /// A Redis error's text, scrubbed of the URL's credentials and truncated.
    fn scrubbed(&self, e: &RedisError) -> String {
        let settings = self.client.get_connection_info().redis_settings();
        let secrets: Vec<&str> = [settings.password(), settings.username()]
            .into_iter()
            .flatten()
            .collect();
        truncate(&scrub(&e.to_string(), &secrets), MAX_ERROR_CHARS)
    }
}

impl TokenStore for RedisTokenCache {
    /// The value under `key`, read as [`get_with_ttl`](TokenStore::get_with_ttl) reads it.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let read = self.get_with_ttl(key).await?;
            Ok(read.map(|(value, _)| value))
        })
    }

    /// The value under `key` and its time left, in one script. A value of another Redis type,
    /// or longer than 64 KiB, is answered as an empty value, without its bytes: no entry looks
    /// like that, so the cache takes it for an unreadable entry, a miss that its next publish
    /// replaces.
    fn get_with_ttl<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ValueWithTtl>, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.inner.get_with_ttl.key(key);
            invocation.arg(MAX_ENTRY_BYTES);
            entry_answer(self.repeatable("GET", &invocation).await?)
        })
    }

    /// The entry under `key` and the mark under `mark_key`, in one script.
    fn get_with_mark<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithMark, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.inner.get_with_mark.key(key);
            invocation
                .key(mark_key)
                .arg(MAX_ENTRY_BYTES)
                .arg(MAX_MARK_BYTES);
            entry_and_mark(self.repeatable("GET", &invocation).await?)
        })
    }

    /// The entry, the mark and the lease's `PTTL`, in one script.
    fn get_with_lease<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
        lease_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithLease, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.inner.get_with_lease.key(key);
            invocation
                .key(mark_key)
                .key(lease_key)
                .arg(MAX_ENTRY_BYTES)
                .arg(MAX_MARK_BYTES);
            entry_mark_and_lease(self.repeatable("GET", &invocation).await?)
        })
    }

    /// The entry, the mark, the lease's `PTTL` and the throttle mark with its `PTTL`, in one
    /// script.
    fn get_with_throttle<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
        lease_key: &'a str,
        throttle_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithThrottle, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.inner.get_with_throttle.key(key);
            invocation
                .key(mark_key)
                .key(lease_key)
                .key(throttle_key)
                .arg(MAX_ENTRY_BYTES)
                .arg(MAX_MARK_BYTES);
            entry_mark_lease_and_throttle(self.repeatable("GET", &invocation).await?)
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.put_from(key, value, ttl, unix_millis(), None))
    }

    /// One script: the put, and the `DEL` of `clear_key` once stored.
    fn put_clearing<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
        clear_key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.put_from(key, value, ttl, unix_millis(), Some(clear_key)))
    }

    /// A plain `SET … PX`: no bound by the wall clock (a failure mark applied late only lasts
    /// its few seconds from then), so a Redis clock ahead of this host's does not shorten it.
    fn put_mark<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut command = redis::cmd("SET");
            command.arg(key).arg(value).arg("PX").arg(px(ttl));
            match self.run("SET", &command).await? {
                Value::Okay => Ok(()),
                other => Err(unexpected("SET", &other)),
            }
        })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut command = redis::cmd("SET");
            command
                .arg(key)
                .arg(holder)
                .arg("NX")
                .arg("PX")
                .arg(px(ttl));
            match self.run("SET NX", &command).await? {
                Value::Okay => Ok(true),
                Value::Nil => Ok(false),
                other => Err(unexpected("SET NX", &other)),
            }
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut invocation = self.inner.release.key(key);
            invocation.arg(holder);
            match self.repeatable("release", &invocation).await? {
                Value::Int(_) => Ok(()),
                other => Err(unexpected("release", &other)),
            }
        })
    }

    /// One script: the release and, only when it released the caller's lease, a plain
    /// `SET … PX` of the mark, as [`put_mark`](TokenStore::put_mark) writes it.
    fn release_with_mark<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        mark_key: &'a str,
        mark: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut invocation = self.inner.release_with_mark.key(key);
            invocation.key(mark_key).arg(holder).arg(mark).arg(px(ttl));
            // Named as the cache's breaker logs the call.
            match self.repeatable("release_with_mark", &invocation).await? {
                Value::Int(_) => Ok(()),
                other => Err(unexpected("release_with_mark", &other)),
            }
        })
    }

    fn renew_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.inner.renew.key(key);
            invocation.arg(holder).arg(px(ttl));
            match self.repeatable("renew", &invocation).await? {
                Value::Int(extended) => Ok(extended == 1),
                other => Err(unexpected("renew", &other)),
            }
        })
    }
}

impl fmt::Debug for RedisTokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.inner.client.get_connection_info();
        let mut out = f.debug_struct("RedisTokenCache");
        match info.addr() {
            ConnectionAddr::Tcp(host, port) => out.field("host", host).field("port", port),
            ConnectionAddr::TcpTls { host, port, .. } => out
                .field("host", host)
                .field("port", port)
                .field("tls", &true),
            ConnectionAddr::Unix(path) => out.field("socket", path),
            _ => out.field("address", &"other"),
        };
        out.field("db", &info.redis_settings().db())
            .field(
                "connected",
                &matches!(&self.inner.link().link, Link::Connected(..)),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
