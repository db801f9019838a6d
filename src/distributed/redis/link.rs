//! The store's connection: made in a task of its own, checked when a call goes unanswered,
//! made again after it drops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use redis::aio::MultiplexedConnection;
use redis::io::tcp::TcpSettings;
use redis::{
    AsyncConnectionConfig, ErrorKind, ProtocolVersion, PushInfo, PushKind, RedisError,
    ServerErrorKind, Value,
};

use super::{Inner, RedisTokenCache};
use crate::distributed::store::StoreError;

/// The longest one connection attempt (DNS, TCP, TLS, AUTH, `CLIENT SETINFO`) may take, a
/// reconnection after a dropped connection included. Setting up a connection takes
/// milliseconds, or a few hundred over TLS to another region; an attempt still running after
/// 5 s will not finish (a stopped server, a black-holed address), and ending it lets the next
/// call start another.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection whose call got no answer within its budget has to answer a `PING`
/// before it is taken for dropped and replaced (see [`RedisTokenCache::probe`]): a server that
/// is there answers a PING in milliseconds, even loaded.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection that the `redis` crate tells has ended (RESP3), or that `connect`'s `PING`
/// finds closed, within this long of being made is not made again at once: the next call
/// makes it (and `connect` says it was closed as it was made; so too of a connection made
/// by the attempt it waited on, however late it resumes). A server or proxy that closes
/// each connection right after its setup would otherwise have the store reconnect in a loop,
/// at the speed of the setup, with no call to bound it.
pub(super) const SHORTEST_LIFE: Duration = Duration::from_secs(1);

/// `TCP_USER_TIMEOUT` (Linux, Android): data sent and not acknowledged for 20 s (keepalive
/// probes included) ends the connection with an error, which the store replaces. On an idle
/// connection it counts from the peer's last answer: with keepalive's probes at 10 s and
/// 15 s unanswered, the connection ends 20 s after it, not after keepalive's default 9
/// probes (55 s).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(super) const USER_TIMEOUT: Duration = Duration::from_secs(20);

impl RedisTokenCache {
    /// The connection: the one made, or the outcome of the attempt running, started here if
    /// none runs. The attempt runs in a task of its own: a caller that stops waiting (its
    /// budget spent) leaves it running for the next.
    pub(super) async fn connection(
        &self,
        op: &'static str,
    ) -> Result<(u64, MultiplexedConnection), StoreError> {
        let (id, connection, _) = self.connection_waited(op).await?;
        Ok((id, connection))
    }

    /// [`connection`](Self::connection), and whether this call waited on the attempt that
    /// made it (started it, or joined another call's): a connection made just now, not one
    /// the store held, whatever the time since (a stalled runtime may resume the caller
    /// long after the attempt settled).
    pub(super) async fn connection_waited(
        &self,
        op: &'static str,
    ) -> Result<(u64, MultiplexedConnection, bool), StoreError> {
        let (id, attempt, joined) = {
            let mut state = self.inner.link();
            match &state.link {
                Link::Connected(id, connection, ..) => {
                    return Ok((*id, connection.clone(), false));
                }
                Link::Connecting(id, attempt, _) => (*id, attempt.clone(), true),
                Link::Idle => {
                    let id = self.inner.attempts.fetch_add(1, Ordering::Relaxed);
                    let (attempt, ended) = self.start_attempt(id).map_err(|detail| {
                        StoreError::msg(format!("redis {op}: cannot connect: {detail}"))
                    })?;
                    state.link = Link::Connecting(id, attempt.clone(), ended);
                    (id, attempt, false)
                }
            }
        };
        // A call that joined another call's attempt stops waiting at its budget's end with an
        // error of its own kind: the breaker does not count it, so a connection slower to set
        // up than the budget does not open it for calls made meanwhile. The call that started
        // the attempt waits it out (its budget's timeout counts), so an endpoint that never
        // answers still opens the breaker, after one failure per attempt (one per
        // `CONNECT_TIMEOUT`). A reconnection after a dropped connection is such an attempt too
        // (see `dropped`).
        let outcome = match crate::distributed::store::call_deadline().filter(|_| joined) {
            Some(deadline) => match tokio::time::timeout_at(deadline, attempt).await {
                Ok(outcome) => outcome,
                // The attempt replaces a connection whose end the `redis` crate told of
                // (RESP3), or that `connect` found dropped, before any call found it: the
                // first call to give up on it counts that drop, as the call that finds a drop
                // does.
                Err(_)
                    if self
                        .inner
                        .take_uncounted(|drop| drop.replaced_by == Some(id)) =>
                {
                    return Err(StoreError::msg(format!(
                        "redis {op}: still connecting after the connection dropped"
                    )));
                }
                Err(_) => {
                    return Err(StoreError::connecting(format!(
                        "redis {op}: still connecting (an attempt another call started)"
                    )));
                }
            },
            None => attempt.await,
        };
        // The attempt's task records its outcome itself (also when nobody waits); this covers
        // a task that did not run to its end (its runtime shut down).
        self.inner.settle(id, &outcome);
        outcome
            .map(|connection| (id, connection, true))
            .map_err(|detail| StoreError::msg(format!("redis {op}: cannot connect: {detail}")))
    }

    /// Spawns connection attempt `id` on the current runtime; its outcome is the connection,
    /// or the error's text, scrubbed. The flag: the `redis` crate told that the connection it
    /// made has already ended (RESP3; see [`Inner::settle`]).
    pub(super) fn start_attempt(&self, id: u64) -> Result<(Attempt, Arc<AtomicBool>), String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "no tokio runtime to connect from".to_owned())?;
        // No response timeout: the cache's budget bounds each call. The connection's setup has
        // a deadline of its own: nothing else bounds it once no caller waits.
        let mut config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        let client = self.inner.client.clone();
        let ended = Arc::new(AtomicBool::new(false));
        if client.get_connection_info().redis_settings().protocol() == ProtocolVersion::RESP3 {
            // Over RESP3 the `redis` crate tells of a connection that ended (the server closed an
            // idle one, a load balancer cut it) as it happens: the store makes a new one at
            // once, so the next call (often a renewal an hour later) finds it made (see
            // `ended`). Over RESP2 (no push channel) the next call finds it dropped and
            // retries (see `repeatable`).
            let watched: Weak<Inner> = Arc::downgrade(&self.inner);
            let told = Arc::clone(&ended);
            config = config.set_push_sender(move |push: PushInfo| {
                if push.kind == PushKind::Disconnection {
                    // Set before the link is looked at: an end told before the attempt's
                    // outcome is recorded is seen by `settle`, one told after by `ended`.
                    told.store(true, Ordering::SeqCst);
                    if let Some(inner) = watched.upgrade() {
                        RedisTokenCache { inner }.ended(id);
                    }
                }
                Ok::<(), std::convert::Infallible>(())
            });
        }
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        let task = runtime.spawn(async move {
            let made = client
                .get_multiplexed_async_connection_with_config(&config)
                .await;
            let Some(inner) = inner.upgrade() else {
                // Every handle on the store is gone: nobody is left to use the outcome.
                return Err("the store was dropped".to_owned());
            };
            let outcome = made.map_err(|e| inner.scrubbed(&e));
            inner.settle(id, &outcome);
            outcome
        });
        let attempt = async move {
            task.await
                .unwrap_or_else(|e| Err(format!("the connection attempt ended: {e}")))
        }
        .boxed()
        .shared();
        Ok((attempt, ended))
    }

    /// Runs `op` on the connection.
    pub(super) async fn run(
        &self,
        op: &'static str,
        command: &redis::Cmd,
    ) -> Result<Value, StoreError> {
        let (id, mut connection) = self.connection(op).await?;
        let answer = self.watched(id, command.query_async::<Value>(&mut connection));
        answer.await.map_err(|e| self.failed(op, id, &e))
    }

    /// Waits for `answer`, a command's on connection `id`; if the call is given up on at its
    /// budget's end before it comes, has the connection checked (see [`probe`](Self::probe)).
    pub(super) async fn watched<F: std::future::Future<Output = redis::RedisResult<Value>>>(
        &self,
        id: u64,
        answer: F,
    ) -> redis::RedisResult<Value> {
        let mut watch = Unanswered {
            store: self,
            id,
            deadline: crate::distributed::store::call_deadline(),
            answered: false,
        };
        let answer = answer.await;
        watch.answered = true;
        // Any answer, an error reply included, is the connection serving; a drop is not.
        if answer.as_ref().err().is_none_or(|e| !drops(e)) {
            self.inner.served.store(id, Ordering::Relaxed);
        }
        answer
    }

    /// A call on connection `id` got no answer within its budget. A server that died or was
    /// cut off without closing the connection (a crashed host, a partition: no reset reaches
    /// this host) would leave it in place, and every call would spend its budget on it, with
    /// no error to say the connection is gone. A `PING` on it, in the background, tells: no
    /// answer within [`PROBE_TIMEOUT`] (or an error that [`drops`] it), and the connection is
    /// taken for dropped and replaced (see [`dropped`](Self::dropped)); an answer (a slow
    /// call, a loaded server) leaves it. One probe at a time per connection. A server that
    /// stalls for more than [`PROBE_TIMEOUT`] (a `fork` for a snapshot, a slow script) is
    /// taken for dead too and its connection replaced: the cost of finding a dead one in
    /// seconds. (TCP keepalive finds a dead peer too, but only after some 20 s on Linux and
    /// 50 to 60 s elsewhere (see [`keepalive`]), and not a proxy that stopped forwarding
    /// while its own end of the connection lives.)
    pub(super) fn probe(&self, id: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut connection = {
            let mut state = self.inner.link();
            match &mut state.link {
                Link::Connected(current, connection, probing, _) if *current == id && !*probing => {
                    *probing = true;
                    connection.clone()
                }
                _ => return,
            }
        };
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let ping = redis::cmd("PING");
            let answer =
                tokio::time::timeout(PROBE_TIMEOUT, ping.query_async::<Value>(&mut connection))
                    .await;
            drop(connection);
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let store = RedisTokenCache { inner };
            match answer {
                // Answered, even with an error of the server's: it is there.
                Ok(Ok(_)) => store.probed(id),
                Ok(Err(e)) if !drops(&e) => store.probed(id),
                Ok(Err(_)) | Err(_) => {
                    store.dropped(id);
                }
            }
        });
    }

    /// The probe of connection `id` found it alive: a later call given up on may probe again.
    pub(super) fn probed(&self, id: u64) {
        if let Link::Connected(current, _, probing, _) = &mut self.inner.link().link {
            if *current == id {
                *probing = false;
            }
        }
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT: a restarted or failed-over server) safe
    /// to repeat; when it finds the connection dropped, runs it once more on the new
    /// connection, within the call's budget.
    /// Safe to repeat: the reads, and the writes that compare before they act or write the
    /// same again (a put of the same value and end; releasing, renewing or marking a lease only
    /// while it is the caller's). Taking a lease (`SET NX`) is never repeated: sent twice, it
    /// could answer "taken" for the caller's own lease. A connection that ended while idle (the
    /// server's `timeout`, a load balancer's idle cut) is found so by the next call, often a
    /// renewal long after: that call now shares the fleet's token instead of failing and asking
    /// the identity provider on its own, a holder's publish after a failover still reaches the
    /// fleet, and a call that succeeds on the retry is no breaker failure.
    pub(super) async fn repeatable(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Value, StoreError> {
        let (id, mut connection) = self.connection(op).await?;
        let answer = self.watched(id, invocation.invoke_async::<Value>(&mut connection));
        let e = match answer.await {
            Ok(answer) => return Ok(answer),
            Err(e) => e,
        };
        if !drops(&e) {
            return Err(self.error(op, "failed", &e));
        }
        let first = self.failed(op, id, &e);
        let (id, mut connection) = match self.connection(op).await {
            Ok(made) => made,
            // Still reconnecting at the budget's end: the drop this call found is its failure,
            // as for a write.
            Err(e) if e.is_connecting() => return Err(first),
            Err(e) => return Err(e),
        };
        let answer = self.watched(id, invocation.invoke_async::<Value>(&mut connection));
        answer.await.map_err(|e| self.failed(op, id, &e))
    }

    /// The store error for `op`'s failure `e` on connection `id`; a connection that dropped
    /// (see [`drops`]) is replaced (see [`dropped`](Self::dropped)). Only the call that finds
    /// the drop first fails as the breaker counts: the others in flight on that connection are
    /// [`connecting`](StoreError::connecting) misses. When the connection told of its own end
    /// first (RESP3), the first call to fail on it counts the drop that it left not counted
    /// (see [`ended`](Self::ended)). One drop under a burst of calls would
    /// otherwise count once per call, and open the breaker (3 at the defaults) for a
    /// connection made again a moment later.
    pub(super) fn failed(&self, op: &str, id: u64, e: &RedisError) -> StoreError {
        if drops(e) && !self.dropped(id) && !self.counts_ended(id) {
            return StoreError::connecting(format!(
                "redis {op}: failed: {} (the connection had dropped; being made again)",
                self.inner.scrubbed(e)
            ));
        }
        self.error(op, "failed", e)
    }

    /// Connection `id` dropped (Redis restarted, a failover, `CLIENT KILL`, an idle connection
    /// cut): if it is still the store's, a new attempt starts now, in the background, as the
    /// first did. The call that found it dropped has failed and counts (a read retried over
    /// the new connection within its budget does not); calls made meanwhile wait on the
    /// attempt as on any other, so one that gives up on it at its budget's end is a miss, not
    /// a breaker failure (over RESP3, the drop Redis's notice recorded is counted by the first
    /// call that fails on it or gives up waiting). Reconnecting within the store (rather than in the `redis`
    /// crate's connection manager, which it used before) is what lets it tell that wait from a
    /// slow answer. Calls already sent on the dropped connection fail with it; those that find
    /// it already replaced are misses (see [`failed`](Self::failed)).
    ///
    /// `true` when this call replaced it; `false` when another call (or, over RESP3, the
    /// connection's own notice: see [`ended`](Self::ended)) had found it dropped first.
    pub(super) fn dropped(&self, id: u64) -> bool {
        let mut state = self.inner.link();
        if !matches!(&state.link, Link::Connected(current, ..) if *current == id) {
            // Another call found it dropped first and replaced it.
            return false;
        }
        self.reconnect(&mut state);
        true
    }

    /// `connect`'s `PING` found connection `id` (one that has not served, `age` old) dropped,
    /// or got no answer on it, or `connect` found it gone before its `PING`: it is replaced
    /// as [`dropped`](Self::dropped) replaces it, and the drop kept for a call to count, as
    /// [`ended`](Self::ended) keeps it for a served connection: the first call that fails on
    /// it, or gives up waiting on the attempt in its place, counts it (`connect` itself is
    /// no call the breaker counts). Over RESP3 the `redis` crate's notice of its end may
    /// have come first and left the link idle (a connection that never served is not made
    /// again on the notice): the attempt starts all the same. Not a loop: at most one such
    /// attempt per `connect()` (see [`RedisTokenCache::connect`]).
    ///
    /// Whether an attempt runs (or has made the connection) in its place: `false` when
    /// there is no runtime to connect from, or when the link was idle with no drop of `id`
    /// recorded (it had been replaced, and that attempt failed): the next call connects.
    pub(super) fn replace_unserved(&self, id: u64, age: Duration) -> bool {
        let mut state = self.inner.link();
        let told = state.uncounted.filter(|drop| drop.dropped == id);
        match &state.link {
            Link::Connected(current, ..) if *current == id => {}
            Link::Idle if told.is_some() => {}
            Link::Idle => return false,
            // Already made again (another call found it dropped, or gave up on it).
            Link::Connecting(..) | Link::Connected(..) => return true,
        }
        let lived = told.map_or(age, |drop| drop.lived);
        let replaced_by = self.reconnect(&mut state);
        state.uncounted = Some(Uncounted {
            dropped: id,
            replaced_by,
            lived,
        });
        replaced_by.is_some()
    }

    /// How long connection `id` lived, if its end was recorded (the `redis` crate's notice,
    /// RESP3) and no call has counted it yet.
    pub(super) fn told_lived(&self, id: u64) -> Option<Duration> {
        let state = self.inner.link();
        state
            .uncounted
            .filter(|drop| drop.dropped == id)
            .map(|drop| drop.lived)
    }

    /// Whether the link has moved on from a connection (an attempt runs, or made another):
    /// if not, the next call connects.
    pub(super) fn replaced(&self) -> bool {
        !matches!(self.inner.link().link, Link::Idle)
    }

    /// Whether this call, failing on connection `id`, counts the drop that the connection's
    /// own notice left not counted (see [`ended`](Self::ended)). If so, and the link was left
    /// idle (the connection lived under [`SHORTEST_LIFE`], or never served), a new attempt
    /// starts now, in the background, as [`dropped`](Self::dropped) starts one for a drop a
    /// call finds: calls made meanwhile wait on it, and one that gives up at its budget's end
    /// is a miss. Left idle, the next call started an attempt of its own, whose timeout
    /// counted too: one drop counted twice over RESP3 where RESP2 counts it once. Not a loop:
    /// each such attempt follows a call's failure.
    fn counts_ended(&self, id: u64) -> bool {
        let mut state = self.inner.link();
        if state.uncounted.is_none_or(|drop| drop.dropped != id) {
            return false;
        }
        state.uncounted = None;
        if matches!(state.link, Link::Idle) {
            self.reconnect(&mut state);
        }
        true
    }

    /// Starts a new attempt in place of the link; the attempt's id, or `None` when there is
    /// no runtime to connect from (the link is then idle: the next call tries, and says why).
    pub(super) fn reconnect(&self, state: &mut State) -> Option<u64> {
        let next = self.inner.attempts.fetch_add(1, Ordering::Relaxed);
        match self.start_attempt(next) {
            Ok((attempt, ended)) => {
                state.link = Link::Connecting(next, attempt, ended);
                Some(next)
            }
            Err(_) => {
                state.link = Link::Idle;
                None
            }
        }
    }

    /// The `redis` crate told that connection `id` ended (RESP3), or `connect`'s `PING` found a
    /// new connection closed (either protocol). The crate usually tells before the
    /// calls in flight on it act on their error (it hands the first its error, then tells, in
    /// one step): replacing it as [`dropped`](Self::dropped) does would leave every such call
    /// finding it replaced, a miss the breaker does not count, so that no drop would count. The drop
    /// is kept as not counted yet instead: the first call that fails on the connection, or
    /// gives up waiting on the attempt that replaces it, counts it (see
    /// [`failed`](Self::failed)), once, as when a call finds the drop itself. A connection
    /// that ended within [`SHORTEST_LIFE`] of being made, or that never served the process (no
    /// call answered on it, nor `connect`'s `PING`), is not replaced at once (the
    /// next call does it): a server that closes every connection right after its setup, or
    /// every idle one after its `timeout`, would otherwise be reconnected to in a loop, with no
    /// call to bound it and no failure to open the breaker.
    pub(super) fn ended(&self, id: u64) {
        let mut state = self.inner.link();
        let Link::Connected(current, _, _, made) = &state.link else {
            return;
        };
        if *current != id {
            return;
        }
        // Only a connection that served the process is made again at once, and one that lived
        // [`SHORTEST_LIFE`] at least: an idle store whose connections a server closes (its
        // `timeout`, a proxy's idle cut) makes one new connection, not one per close forever.
        let served = self.inner.served.load(Ordering::Relaxed) == id;
        let lived = made.elapsed();
        let replaced_by = if lived < SHORTEST_LIFE || !served {
            state.link = Link::Idle;
            None
        } else {
            self.reconnect(&mut state)
        };
        state.uncounted = Some(Uncounted {
            dropped: id,
            replaced_by,
            lived,
        });
    }
}

/// A command sent on connection `id` and not answered yet (see [`RedisTokenCache::watched`]).
pub(super) struct Unanswered<'a> {
    store: &'a RedisTokenCache,
    id: u64,
    /// The end of the call's budget, if the cache's breaker bounds it.
    deadline: Option<tokio::time::Instant>,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        // Dropped unanswered at its budget's end: the breaker gave up on it. (A caller that
        // stops waiting earlier, for its own reasons, says nothing about the connection.)
        if !self.answered
            && self
                .deadline
                .is_some_and(|deadline| tokio::time::Instant::now() >= deadline)
        {
            self.store.probe(self.id);
        }
    }
}

/// The store's TCP settings: `settings` with keepalive (the first probe after 10 s idle, then
/// every 5 s) on the platforms listed below, and, on Linux and Android, `TCP_USER_TIMEOUT`
/// (see [`USER_TIMEOUT`]). A Unix socket has no use for them; on other platforms the
/// connection has no keepalive.
///
/// A peer that is gone without a reset (a crashed host, a partition) is found while the
/// connection idles, not by the next call: on Linux and Android some 20 s after its last
/// answer; elsewhere after the platform's count of unanswered probes, which is not set here
/// (about 50 s on macOS, iOS and FreeBSD, 8 probes; about 60 s on Windows, 10). The probes
/// also keep a load balancer's or NAT's idle timer from cutting the connection (Azure's drops
/// idle flows after 4 minutes).
pub(super) fn keepalive(settings: TcpSettings) -> TcpSettings {
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "windows"
    ))]
    let settings = settings.set_keepalive(
        redis::io::tcp::socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(10))
            .with_interval(Duration::from_secs(5)),
    );
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let settings = settings.set_user_timeout(USER_TIMEOUT);
    settings
}

/// A connection attempt's outcome, shared by every call that waits on it: the connection, or
/// the error's text (scrubbed).
pub(super) type Attempt = Shared<BoxFuture<'static, Result<MultiplexedConnection, String>>>;

/// The store's connection, and the drop no call has counted yet.
pub(super) struct State {
    pub(super) link: Link,
    /// A connection whose end was recorded (by [`RedisTokenCache::ended`] or
    /// [`RedisTokenCache::replace_unserved`]) and that no call has counted as a failure yet:
    /// told by the `redis` crate (RESP3), or found by [`RedisTokenCache::connect`] (RESP2 and
    /// RESP3).
    pub(super) uncounted: Option<Uncounted>,
}

/// A drop not counted yet: the calls that may count it.
#[derive(Clone, Copy)]
pub(super) struct Uncounted {
    /// The connection that ended: the first call that fails on it counts the drop.
    pub(super) dropped: u64,
    /// The attempt started in its place, if any: the first call that gives up waiting on it
    /// counts the drop. (An attempt a call started counts on its own.)
    pub(super) replaced_by: Option<u64>,
    /// How long the connection lived, from its setup to its end told (or found by
    /// `connect`): under [`SHORTEST_LIFE`], it was closed as it was made, however late
    /// `connect` looks.
    pub(super) lived: Duration,
}

/// Where the store's connection stands.
pub(super) enum Link {
    /// None, and no attempt running: the next call starts one.
    Idle,
    /// Attempt `id` runs in its own task. The flag: the connection it made has already ended
    /// (see [`Inner::settle`]).
    Connecting(u64, Attempt, Arc<AtomicBool>),
    /// Made by attempt `id`; replaced by a new attempt when a call finds it dropped. The flag:
    /// a probe of it runs (see [`RedisTokenCache::probe`]); then when it was made.
    Connected(u64, MultiplexedConnection, bool, tokio::time::Instant),
}

impl Inner {
    pub(super) fn link(&self) -> MutexGuard<'_, State> {
        // Each write leaves the state whole: a poisoned lock is usable.
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the outcome of attempt `id`, if it is still the one running: the connection,
    /// or room for the next attempt. A connection that the `redis` crate told had ended
    /// before this (RESP3: the server closed it right after its setup) is not kept: its end
    /// was told while the attempt still ran, when [`RedisTokenCache::ended`] has nothing to
    /// replace, and keeping it would leave a dead connection for the next call to find. The
    /// link goes idle (it lived less than [`SHORTEST_LIFE`]: the next call makes the next
    /// one), and the drop is left for the first call that fails on it to count.
    pub(super) fn settle(&self, id: u64, outcome: &Result<MultiplexedConnection, String>) {
        let mut state = self.link();
        let Link::Connecting(running, _, ended) = &state.link else {
            return;
        };
        if *running == id {
            let ended = ended.load(Ordering::SeqCst);
            state.link = match outcome {
                Ok(_) if ended => {
                    state.uncounted = Some(Uncounted {
                        dropped: id,
                        replaced_by: None,
                        lived: Duration::ZERO,
                    });
                    Link::Idle
                }
                Ok(connection) => {
                    let made = tokio::time::Instant::now();
                    Link::Connected(id, connection.clone(), false, made)
                }
                Err(_) => Link::Idle,
            };
        }
    }

    /// Whether the drop not counted yet is one that `counts` says the caller counts; if so,
    /// the caller takes it: no other call counts it.
    pub(super) fn take_uncounted(&self, counts: impl FnOnce(&Uncounted) -> bool) -> bool {
        let mut state = self.link();
        let taken = state.uncounted.as_ref().is_some_and(counts);
        if taken {
            state.uncounted = None;
        }
        taken
    }
}

/// Whether `e` says the connection must be replaced: the `redis` crate's
/// `is_unrecoverable_error` (the connection closed or reset, an answer it cannot parse), any
/// other I/O error on it (`TCP_USER_TIMEOUT`'s time-out, a host unreachable, a TLS record
/// that does not decrypt: the crate would retry those on the same connection, which the
/// store does not, and its next command would only find the connection closed), or a
/// server that is no longer the primary: READONLY (a failover demoted it without closing its
/// clients, and the endpoint's address now leads to the new primary; reads would go on
/// succeeding there, and every write fail) or MASTERDOWN (a replica whose primary is gone).
pub(super) fn drops(e: &RedisError) -> bool {
    e.is_unrecoverable_error()
        || e.is_io_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
        // Redis before 7 wraps an error a script's `redis.call` met in its own (`ERR Error
        // running script … -READONLY You can't write against a read only replica.`): the
        // store's writes are scripts.
        || e
            .detail()
            .is_some_and(|detail| detail.contains("-READONLY ") || detail.contains("-MASTERDOWN "))
}
