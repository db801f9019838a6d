//! The interface a distributed cache stores through: opaque values under string keys, and a
//! lease for fleet-wide single-flight. Values arrive here already sealed; a store never sees a
//! token in clear (unless the cache was built with the plaintext opt-out).

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::error::BoxError;

/// The largest value the cache writes or reads as an entry: 64 KiB. A sealed entry is an access
/// token (a JWT of a few KiB; a few hundred group ids keep it under 16 KiB) with some 200
/// bytes of JSON and sealing around it, so anything larger under an entry's key was not
/// written by a cache and would only cost each reader its size in memory and copies (up to
/// 512 MB in Redis). The cache takes a larger value, whatever the store answers, for one that
/// does not open (a miss, counted as a store error), without opening it;
/// [`RedisTokenCache`](super::RedisTokenCache) does not even send it.
pub(crate) const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// The longest failure or throttle mark the cache reads: a cache writes some 110 bytes (a
/// holder id; a status and a time before it; sealed, a MAC after it). A longer one is none, whatever the store
/// answers; [`RedisTokenCache`](super::RedisTokenCache) does not even send it.
pub(crate) const MAX_MARK_BYTES: usize = 1024;

/// How long the default [`TokenStore::put_clearing`] writes its empty throttle mark: a whole
/// second, which no store rounds down to zero (an empty mark is no throttle, so its length
/// does not matter).
const CLEAR_TTL: Duration = Duration::from_secs(1);

/// A shared key-value store under a [`DistributedCache`](super::DistributedCache): Redis
/// ([`RedisTokenCache`](super::RedisTokenCache), feature `redis`) or any store that offers
/// the same four operations, and the optional ones with a default
/// ([`renew_lease`](Self::renew_lease), [`get_with_ttl`](Self::get_with_ttl),
/// [`get_with_mark`](Self::get_with_mark), [`get_with_lease`](Self::get_with_lease),
/// [`get_with_throttle`](Self::get_with_throttle), [`put_clearing`](Self::put_clearing),
/// [`put_mark`](Self::put_mark), [`release_with_mark`](Self::release_with_mark)).
///
/// Every call is bounded by the cache's time budget and counted by its circuit breaker; a
/// store need not add timeouts of its own. An error is never shown to a token caller: the
/// process then acquires its token on its own.
///
/// A wrapper around another store (one that adds logging or metrics, or delegates to a
/// [`RedisTokenCache`](super::RedisTokenCache)) should forward every optional method too, and
/// [`get_with_mark`](Self::get_with_mark), [`get_with_lease`](Self::get_with_lease),
/// [`get_with_throttle`](Self::get_with_throttle), [`put_clearing`](Self::put_clearing),
/// [`put_mark`](Self::put_mark) and [`release_with_mark`](Self::release_with_mark) in
/// particular: the defaults build them from the other calls, so a wrapper that leaves them out
/// loses the inner store's one-script look (two reads inside one budget instead of one), the
/// lease's time left (a lease with no expiry, not a cache's, is then waited out for
/// `wait_limit` at each acquisition), its marks' own write (a mark put as an entry is, bounded
/// by the wall clock) and its one-step release with a mark (two calls, which a waiter may see
/// one without the other).
///
/// # Compatibility
///
/// Added with the throttle key (`{prefix}:{hash}:throttled`):
/// [`get_with_throttle`](Self::get_with_throttle) and [`put_clearing`](Self::put_clearing),
/// both provided, so a store written before them compiles and works unchanged (its throttle
/// marks read and cleared through the defaults, from its own calls); a wrapper should forward
/// them too. [`LeaseTtl`] is `#[non_exhaustive]`: a `match` on it outside this crate needs a
/// wildcard arm, so that a later variant is no breaking change. A throttle mark's value is
/// `{status}:{end in Unix ms}:{holder}`; a store should treat it as opaque bytes, as any value.
/// Sealed, a failure or throttle mark ends with `:` and a MAC under the fleet's sealing key
/// (added after the throttle key): a sealed cache ignores a mark without one, so during a
/// rolling upgrade the marks of processes of the release before do not hold the new ones
/// back (a throttled holder's then cost each new process one request into the throttle, which
/// it marks in turn), and the release before reads the new marks (their MAC is the last field,
/// where it looks for the holder id: only the words "this process" of its error change).
pub trait TokenStore: Send + Sync + fmt::Debug + 'static {
    /// The value stored under `key`, or `None` when there is none (missing, expired,
    /// evicted). For a lease key, the holder id [`try_lease`](Self::try_lease) stored: the
    /// default [`release_with_mark`](Self::release_with_mark) reads it to tell whether the
    /// caller holds the lease (without it, leases are given back but never marked).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;

    /// The value stored under `key` with the time it has left before the store expires it,
    /// read together (one atomic step: Redis `GET` and `PTTL` in one script), or `None` when
    /// there is none. The time left is `None` when the key has no expiry or the store cannot
    /// tell.
    ///
    /// The cache bounds a token's expiry by it: the time left is relative, so unlike the Unix
    /// times sealed in the value it does not depend on the reader's wall clock agreeing with
    /// the publisher's. A store should report it whenever it can; never more than the key
    /// really has left (a rounded-up TTL lets a reader keep a token past its expiry by the
    /// difference). The default calls [`get`](Self::get) and reports no time left: the expiry
    /// then comes from the sealed wall-clock times alone, and a reader whose clock runs `S`
    /// seconds behind the publisher's takes the token to expire `S` late. Its slot renews the
    /// token `S` − 300 s after it expired (if `S` is more than the 300 s window), and keeps
    /// serving it while its renewals fail, as a slot serves a token it holds: up to `S` after
    /// it expired (the store's own expiry of the entry stops only new reads).
    fn get_with_ttl<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ValueWithTtl>, StoreError>> {
        Box::pin(async move { Ok(self.get(key).await?.map(|value| (value, None))) })
    }

    /// The value under `key` with its time left, as [`get_with_ttl`](Self::get_with_ttl)
    /// reads it, and the mark under `mark_key` (see [`put_mark`](Self::put_mark)), if any:
    /// the cache's waiters read an entry's token and its holder's failure mark together at
    /// each poll. The two keys share a Redis Cluster hash tag;
    /// [`RedisTokenCache`](super::RedisTokenCache) reads them in one script. The default calls
    /// [`get_with_ttl`](Self::get_with_ttl) and [`get`](Self::get) concurrently and waits for
    /// both (a failure of either is the look's): one budget
    /// covers the whole look, so two round trips one after the other would make every look
    /// over a store more than half the budget away time out.
    fn get_with_mark<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithMark, StoreError>> {
        Box::pin(async move {
            let (value, mark) = tokio::join!(self.get_with_ttl(key), self.get(mark_key));
            match (value, mark) {
                (Ok(value), Ok(mark)) => Ok((value, mark)),
                // A read that gave up waiting on a connection attempt (not counted by the
                // breaker) must not hide the other read's failure, nor cut short the read
                // that started the attempt: the look's outcome is that one's.
                (Err(connecting), Err(error)) if connecting.is_connecting() => Err(error),
                (Err(error), _) | (_, Err(error)) => Err(error),
            }
        })
    }

    /// What [`get_with_mark`](Self::get_with_mark) reads, and the time the lease `lease_key`
    /// has left ([`LeaseTtl`]), read together: the cache's waiters read it at each poll. A
    /// cache's lease always expires, within the cache's
    /// [`lease`](super::DistributedCacheBuilder::lease) (a holder renews it to that, never
    /// more), so a lease with no expiry, or one far longer, was not written by a live cache
    /// (a stray write by anything with access to the store): the process then asks the
    /// identity provider at once instead of waiting `wait_limit` for a holder that does not
    /// exist. The three keys share a Redis Cluster hash tag;
    /// [`RedisTokenCache`](super::RedisTokenCache) reads them in one script. The default calls
    /// [`get_with_mark`](Self::get_with_mark) and reports [`LeaseTtl::Unknown`]: such a lease
    /// is then waited out.
    fn get_with_lease<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
        lease_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithLease, StoreError>> {
        let _ = lease_key;
        Box::pin(async move { Ok((self.get_with_mark(key, mark_key).await?, LeaseTtl::Unknown)) })
    }

    /// What [`get_with_lease`](Self::get_with_lease) reads, and the throttle mark under
    /// `throttle_key` with its time left (as [`get_with_ttl`](Self::get_with_ttl) reads a
    /// value), read together: the cache's waiters read it at each look. A throttle mark is
    /// written by a holder the identity provider throttled, with its release
    /// ([`release_with_mark`](Self::release_with_mark)), to expire after the wait asked; the
    /// time it has left is the time the fleet still waits, taken from the store's own expiry
    /// so that no host's wall clock shortens or lengthens it. A mark whose time left the store
    /// cannot tell (`None`: the default [`get_with_ttl`](Self::get_with_ttl)'s answer) is
    /// read for the end it carries in Unix milliseconds, by the reader's wall clock (an hour
    /// on at most): clocks that disagree shorten or lengthen the wait, but the fleet is still
    /// held back. The four keys share a Redis Cluster hash tag;
    /// [`RedisTokenCache`](super::RedisTokenCache) reads them in one script. The default calls
    /// [`get_with_lease`](Self::get_with_lease) and [`get_with_ttl`](Self::get_with_ttl)
    /// concurrently and waits for both (a failure of either is the look's).
    ///
    /// Added after the other methods: a store written before it reads its throttle marks
    /// through this default, from its own [`get_with_ttl`](Self::get_with_ttl).
    fn get_with_throttle<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
        lease_key: &'a str,
        throttle_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithThrottle, StoreError>> {
        Box::pin(async move {
            let (found, throttle) = tokio::join!(
                self.get_with_lease(key, mark_key, lease_key),
                self.get_with_ttl(throttle_key)
            );
            match (found, throttle) {
                (Ok(found), Ok(throttle)) => Ok((found, throttle)),
                // As in `get_with_mark`: a wait on a connection attempt hides no real failure.
                (Err(connecting), Err(error)) if connecting.is_connecting() => Err(error),
                (Err(error), _) | (_, Err(error)) => Err(error),
            }
        })
    }

    /// Stores `value` under `key` as [`put`](Self::put) does and, once it is stored, removes
    /// `clear_key`: the cache publishes a usable token this way, clearing the entry's throttle
    /// mark, so that a process that got a token during a throttle (alone, or the wait over by
    /// the provider's reckoning) lets the fleet share it instead of answering the throttle
    /// out. [`RedisTokenCache`](super::RedisTokenCache) does both in one script. The default
    /// calls [`put`](Self::put) and, once it succeeded, overwrites `clear_key` with an empty
    /// value (an empty throttle mark is none) for 1 s ([`put_mark`](Self::put_mark)):
    /// a TTL no store rounds to zero (a store that counts TTLs in whole seconds would refuse
    /// `EX 0`). The clear is best-effort: its failure is logged at DEBUG and is not the call's
    /// (the token is stored; the mark then runs out on its own), so it never counts as a store
    /// error or a failure for the breaker; nor does a clear cut short at the end of the call's
    /// budget (a store over half the budget away, two round trips one after the other).
    fn put_clearing<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
        clear_key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.put(key, value, ttl).await?;
            let clear = self.put_mark(clear_key, b"", CLEAR_TTL);
            // Within the call's budget, not past it: the put's success must not be lost to a
            // clear that outlasts the budget (a store over half the budget away).
            let cleared = match call_deadline() {
                Some(deadline) => tokio::time::timeout_at(deadline, clear)
                    .await
                    .unwrap_or_else(|_| Err(StoreError::msg("out of the call's budget"))),
                None => clear.await,
            };
            if let Err(error) = cleared {
                tracing::debug!(
                    key = clear_key,
                    %error,
                    "distributed token cache: the throttle mark was not cleared after a publish \
                     (best-effort; it runs out on its own)"
                );
            }
            Ok(())
        })
    }

    /// Stores `value` under `key`, replacing what is there, to expire after `ttl`, counted
    /// from this call where the store can: a put applied late (a call given up on, applied
    /// when the store resumes) would otherwise outlive the token by the delay.
    /// [`RedisTokenCache`](super::RedisTokenCache) also bounds it by the Unix time of the call
    /// plus `ttl`, by Redis's clock, and answers an error when Redis's clock runs so far
    /// ahead that it stored nothing.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Stores a mark `value` under `key` for `ttl`: a few seconds (a holder's failure mark),
    /// or the wait a throttling provider asked for, an hour at most (a throttle mark, under a
    /// key of its own).
    /// A mark says something only while it is fresh, and applied late it lasts its `ttl` from
    /// then, which is harmless: a store need not bound it by the wall clock as
    /// [`put`](Self::put) may, and [`RedisTokenCache`](super::RedisTokenCache) does not (a
    /// Redis clock ahead of the host's would shorten it, or drop it). The default calls
    /// [`put`](Self::put).
    fn put_mark<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.put(key, value, ttl)
    }

    /// Takes the lease `key` for `holder` if nobody holds it, to expire after `ttl`
    /// (Redis: `SET key holder NX PX ttl`). `true` when this call took it.
    ///
    /// The default [`release_with_mark`](Self::release_with_mark) reads the lease back with
    /// [`get`](Self::get) to tell whether the caller holds it: a store whose `get` answers
    /// the holder's bytes for a lease key has its failure and throttle marks written; one
    /// whose `get` cannot (leases kept apart from values) has its leases given back with no
    /// mark, unless it implements `release_with_mark` itself.
    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Gives the lease `key` back if `holder` still holds it (compare and delete: a lease
    /// that expired and was taken by another holder is left alone).
    fn release<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Gives the lease `key` back as [`release`](Self::release) does (only if `holder` still
    /// holds it) and, only if it did, stores the mark `mark` under `mark_key` for `ttl` as
    /// [`put_mark`](Self::put_mark) does: a holder the identity provider refused or throttled
    /// leaves its mark this way. A caller that does not hold the lease (it never took it, or
    /// the lease ran out and another process took it) must leave no mark: the waiters take a
    /// mark for their holder's, and a stray one sends them to the identity provider while
    /// their holder's request runs. An implementation should do both in one atomic step, as
    /// [`RedisTokenCache`](super::RedisTokenCache) does (one script): a waiter then never
    /// finds the lease given back without the mark (it would take the lease and ask the
    /// provider for all, as if the holder had died), nor the mark with the lease still held,
    /// and a failure leaves both undone rather than one of them.
    ///
    /// The default does not: it reads the lease ([`get`](Self::get)), and calls
    /// [`release`](Self::release) in any case (compare and delete: safe whoever holds the
    /// lease) and, only if the read found `holder`, [`put_mark`](Self::put_mark)
    /// concurrently, the mark first, and waits for both (a failure of any is the call's, and
    /// may leave another done): two round trips one after the other in one budget. A store
    /// whose [`get`](Self::get) cannot read a lease back (see [`try_lease`](Self::try_lease))
    /// still has the lease given back, but leaves no mark. A lease
    /// that runs out between the read and the writes, and is taken by another process, may
    /// still get this caller's mark. On a store that applies one caller's commands in the
    /// order they are sent (one connection) the mark lands first; on others (a pool of
    /// connections) the release may land first, and a waiter that looks in between takes the
    /// lease and asks for the fleet: one more turn in line before the others ask on their
    /// own.
    fn release_with_mark<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        mark_key: &'a str,
        mark: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let held = match self.get(key).await {
                Ok(value) => value.as_deref() == Some(holder.as_bytes()),
                Err(error) => {
                    // The lease goes back all the same: a waiter must not wait it out.
                    let _ = self.release(key, holder).await;
                    return Err(error);
                }
            };
            if !held {
                return self.release(key, holder).await;
            }
            let (marked, released) = tokio::join!(
                self.put_mark(mark_key, mark, ttl),
                self.release(key, holder)
            );
            match (marked, released) {
                (Ok(()), Ok(())) => Ok(()),
                // As in `get_with_mark`: a wait on a connection attempt hides no real failure.
                (Err(connecting), Err(error)) if connecting.is_connecting() => Err(error),
                (Err(error), _) | (_, Err(error)) => Err(error),
            }
        })
    }

    /// Extends the lease `key` to expire `ttl` from now if `holder` still holds it, in one
    /// atomic step (compare and extend: a lease that expired, or was taken by another holder,
    /// is neither extended nor created). `true` when it was extended. The holder calls it
    /// every third of the lease while its token request runs, so that a slow or throttled
    /// identity provider is asked by one process however long it takes.
    ///
    /// The default extends nothing (`Ok(false)`): a lease then lasts its `ttl` from when it was
    /// taken, and a holder still asking when it expires lets another process ask too.
    fn renew_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let _ = (key, holder, ttl);
        Box::pin(async { Ok(false) })
    }
}

/// A value read from a store with the time it has left there, if the store can tell (see
/// [`TokenStore::get_with_ttl`]).
pub type ValueWithTtl = (Vec<u8>, Option<Duration>);

/// An entry's value with its time left, if there is one, and its mark, if there is one (see
/// [`TokenStore::get_with_mark`]).
pub type ValueWithMark = (Option<ValueWithTtl>, Option<Vec<u8>>);

/// The time a lease has left, as [`TokenStore::get_with_lease`] reads it.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseTtl {
    /// No lease, or the store does not tell.
    Unknown,
    /// A lease that expires after this long.
    Left(Duration),
    /// A lease with no expiry: never a cache's.
    NoExpiry,
}

/// An entry's value and mark, as [`TokenStore::get_with_mark`] reads them, and the time its
/// lease has left (see [`TokenStore::get_with_lease`]).
pub type ValueWithLease = (ValueWithMark, LeaseTtl);

/// What [`TokenStore::get_with_lease`] reads, and the entry's throttle mark with its time left,
/// if there is one (see [`TokenStore::get_with_throttle`]).
pub type ValueWithThrottle = (ValueWithLease, Option<ValueWithTtl>);

/// A store's failure: unreachable, refused, or an answer it could not use. Its message names
/// the operation and never a value or a credential of the store (a password in a URL).
#[derive(Debug)]
pub struct StoreError {
    message: String,
    source: Option<BoxError>,
    /// The call gave up waiting on a connection attempt another call started (see
    /// [`StoreError::connecting`]).
    connecting: bool,
}

impl StoreError {
    /// A failure described by `message`, caused by `source`.
    pub fn new(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
            connecting: false,
        }
    }

    /// A failure with no underlying error.
    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
            connecting: false,
        }
    }

    /// A call that found a connection attempt running, started by another call, and stopped
    /// waiting on it at the end of its budget: a miss for this call, not a failure of the
    /// store, so the breaker does not count it (the call that started the attempt counts its
    /// own wait). Three acquisitions of a cold process, each waiting on one connection slower
    /// to set up than the budget, would otherwise open the breaker though the connection is
    /// made a moment later. Also a call whose connection dropped under it after another call
    /// had found the drop (and counts it): a burst of calls in flight counts one drop once.
    #[cfg_attr(
        not(feature = "redis"),
        allow(dead_code, reason = "used by RedisTokenCache")
    )]
    pub(crate) fn connecting(message: impl Into<String>) -> Self {
        Self {
            connecting: true,
            ..Self::msg(message)
        }
    }

    /// Whether this is a wait on another call's connection attempt, given up (see
    /// [`StoreError::connecting`]).
    pub(crate) fn is_connecting(&self) -> bool {
        self.connecting
    }
}

tokio::task_local! {
    /// The end of the budget of the store call being made, set by the breaker around each call:
    /// a store can stop waiting on something not its own (another call's connection attempt) at
    /// that instant and say so, where the budget's timeout would drop the call unexplained.
    static CALL_DEADLINE: tokio::time::Instant;
}

/// Runs `call` with `deadline` as its [`call_deadline`].
pub(super) async fn with_deadline<F: std::future::Future>(
    deadline: tokio::time::Instant,
    call: F,
) -> F::Output {
    CALL_DEADLINE.scope(deadline, call).await
}

/// The end of the budget of the store call this task is making, if the breaker makes it.
pub(super) fn call_deadline() -> Option<tokio::time::Instant> {
    CALL_DEADLINE.try_with(|deadline| *deadline).ok()
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
