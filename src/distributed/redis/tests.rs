use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use futures_util::FutureExt;
use redis::{ErrorKind, ServerErrorKind};

use super::link::drops;
use super::scripts::MAX_PX;
use super::*;
use crate::distributed::LeaseTtl;

/// A real redis-server on a Unix socket of its own, without persistence; killed when
/// dropped. (The integration tests have a fuller one; these tests need what only this
/// module reaches.)
struct Server {
    child: Child,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(dir.path().join("redis.sock"))
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: apt-get install redis-server");
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut lines = out.lines();
        let ready = lines.by_ref().map_while(Result::ok).any(|line| {
            line.to_ascii_lowercase()
                .contains("ready to accept connections")
        });
        assert!(ready, "redis-server exited before it was ready");
        // Keep draining its output so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, dir }
    }

    fn url(&self) -> String {
        format!(
            "redis+unix://{}",
            self.dir.path().join("redis.sock").display()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A put answered at once that Redis's clock says has expired (here: called "10 s ago"
/// by this host's clock with a 5 s TTL, as on a host whose clock runs 10 s behind Redis's)
/// is an error naming the clocks, and stores nothing. (Before, it answered Ok: with Redis
/// 5 s ahead, every failure mark was silently dropped.) The mark has no such bound.
#[tokio::test]
async fn a_put_that_redis_clock_has_already_ended_is_an_error() {
    let server = Server::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    let ten_seconds_ago = unix_millis().unwrap() - 10_000;
    let ttl = Duration::from_secs(5);
    let e = store
        .put_from("p:{a}:token", b"v", ttl, Some(ten_seconds_ago), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("clock runs at least"), "{e}");
    assert_eq!(store.get_with_ttl("p:{a}:token").await.unwrap(), None);
    // Called now, it is stored; a mark is stored whatever the clocks say.
    store.put("p:{a}:token", b"v", ttl).await.unwrap();
    store.put_mark("p:{a}:failed", b"h", ttl).await.unwrap();
    for key in ["p:{a}:token", "p:{a}:failed"] {
        let (_, left) = store.get_with_ttl(key).await.unwrap().unwrap();
        assert!(left.is_some_and(|left| left <= ttl), "{key}: {left:?}");
    }
}

#[test]
fn debug_shows_the_address_never_the_password() {
    let store = RedisTokenCache::open("redis://app:hunter2-secret@cache.example:6380/3").unwrap();
    let debug = format!("{store:?}");
    assert!(debug.contains("cache.example"), "{debug}");
    assert!(debug.contains("6380"), "{debug}");
    assert!(debug.contains("db: 3"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
    let tls = format!(
        "{:?}",
        RedisTokenCache::open("rediss://:pw-123456@h:6379").unwrap()
    );
    assert!(
        tls.contains("tls: true") && !tls.contains("pw-123456"),
        "{tls}"
    );
}

#[test]
fn a_bad_url_is_a_config_error_without_the_password() {
    let e = RedisTokenCache::open("http://user:hunter2-secret@host").unwrap_err();
    assert!(e.message().contains("redis://"), "{e}");
    assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
}

#[test]
fn from_env_names_the_variable_when_unset() {
    let e = RedisTokenCache::from_env("TOWER_IDENTITY_TEST_NO_SUCH_REDIS_URL").unwrap_err();
    assert!(
        e.message()
            .contains("TOWER_IDENTITY_TEST_NO_SUCH_REDIS_URL"),
        "{e}"
    );
}

/// "None" reads as none whatever form the server gives it: the script's `{}`, a nil, or
/// the RESP3 Boolean that Redis's documentation promises for a script's `false` over
/// RESP3. (Before, a Boolean was "GET answered an unexpected type": every miss a store
/// error.)
#[test]
fn a_missing_entry_reads_as_none_in_every_form() {
    for none in [Value::Array(Vec::new()), Value::Nil, Value::Boolean(false)] {
        assert_eq!(entry_answer(none.clone()).unwrap(), None, "{none:?}");
    }
    let found = Value::Array(vec![Value::BulkString(b"v".to_vec()), Value::Int(1500)]);
    assert_eq!(
        entry_answer(found).unwrap(),
        Some((b"v".to_vec(), Some(Duration::from_millis(1500))))
    );
    assert!(entry_answer(Value::Boolean(true)).is_err());
    assert!(entry_answer(Value::Int(0)).is_err());
}

/// `get_with_lease` reads the lease's time left with the entry and the mark: none without a
/// lease, its TTL (at most what was set) for a cache's lease, "no expiry" for a key set with
/// none (a stray write, never a cache's), and a lease of another type still by its TTL.
#[tokio::test]
async fn get_with_lease_reads_the_leases_time_left() {
    let server = Server::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    let (token, mark, lease) = ("t:{h}:token", "t:{h}:failed", "t:{h}:lease");
    let read = || store.get_with_lease(token, mark, lease);
    assert_eq!(read().await.unwrap(), ((None, None), LeaseTtl::Unknown));
    store
        .put(token, b"entry", Duration::from_secs(60))
        .await
        .unwrap();
    store
        .put_mark(mark, b"holder.1", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        store
            .try_lease(lease, "holder.2", Duration::from_secs(10))
            .await
            .unwrap()
    );
    let ((entry, found_mark), ttl) = read().await.unwrap();
    let (value, left) = entry.unwrap();
    assert_eq!(value, b"entry");
    assert!(left.unwrap() <= Duration::from_secs(60));
    assert_eq!(found_mark.as_deref(), Some(&b"holder.1"[..]));
    let LeaseTtl::Left(left) = ttl else {
        panic!("{ttl:?}")
    };
    assert!(
        left > Duration::ZERO && left <= Duration::from_secs(10),
        "{left:?}"
    );
    let mut admin = store
        .inner
        .client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (): () = redis::cmd("SET")
        .arg(lease)
        .arg("stray")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(read().await.unwrap().1, LeaseTtl::NoExpiry);
    let (): () = redis::cmd("DEL")
        .arg(lease)
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg(lease)
        .arg("f")
        .arg("v")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(read().await.unwrap().1, LeaseTtl::NoExpiry);
}

/// `release_with_mark` leaves its mark only with its release: a caller that does not hold the
/// lease (it never took it, or the lease went to another holder) neither frees it nor marks
/// it, and the holder's waiters keep waiting. (Before, the script wrote the mark whoever held
/// the lease.)
#[tokio::test]
async fn release_with_mark_marks_only_a_lease_it_releases() {
    let server = Server::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    let (token, mark, lease) = ("t:{h}:token", "t:{h}:failed", "t:{h}:lease");
    let ttl = Duration::from_secs(5);
    assert!(store.try_lease(lease, "holder.1", ttl).await.unwrap());
    store
        .release_with_mark(lease, "other.1", mark, b"other.1", ttl)
        .await
        .unwrap();
    let ((_, found), held) = store.get_with_lease(token, mark, lease).await.unwrap();
    assert_eq!(
        found, None,
        "no mark from a process that did not hold the lease"
    );
    assert!(matches!(held, LeaseTtl::Left(_)), "{held:?}");
    // No lease at all: no mark either.
    store
        .release_with_mark("t:{g}:lease", "other.1", "t:{g}:failed", b"other.1", ttl)
        .await
        .unwrap();
    assert_eq!(store.get("t:{g}:failed").await.unwrap(), None);
    // The holder's release marks.
    store
        .release_with_mark(lease, "holder.1", mark, b"holder.1", ttl)
        .await
        .unwrap();
    let ((_, found), held) = store.get_with_lease(token, mark, lease).await.unwrap();
    assert_eq!(found.as_deref(), Some(&b"holder.1"[..]));
    assert_eq!(held, LeaseTtl::Unknown, "released");
}

/// The throttle mark is read with the entry, its time left by Redis's `PTTL`; a publish
/// through `put_clearing` deletes it, a plain `put` does not.
#[tokio::test]
async fn the_throttle_mark_is_read_with_its_ttl_and_cleared_by_a_publish() {
    let server = Server::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    let keys = (
        "t:{h}:token",
        "t:{h}:failed",
        "t:{h}:lease",
        "t:{h}:throttled",
    );
    let (token, mark, lease, throttled) = keys;
    let read = || store.get_with_throttle(token, mark, lease, throttled);
    assert_eq!(read().await.unwrap().1, None);
    assert!(store.try_lease(lease, "holder.1", secs(5)).await.unwrap());
    store
        .release_with_mark(lease, "holder.1", throttled, b"429:holder.1", secs(120))
        .await
        .unwrap();
    let (((_, failed), held), found) = read().await.unwrap();
    let (value, left) = found.unwrap();
    assert_eq!(value, b"429:holder.1");
    let left = left.unwrap();
    assert!(left > secs(118) && left <= secs(120), "{left:?}");
    assert_eq!((failed, held), (None, LeaseTtl::Unknown));
    store.put(token, b"v", secs(60)).await.unwrap();
    assert!(read().await.unwrap().1.is_some(), "a plain put leaves it");
    store
        .put_clearing(token, b"v", secs(60), throttled)
        .await
        .unwrap();
    let (((entry, _), _), found) = read().await.unwrap();
    assert_eq!((entry.unwrap().0, found), (b"v".to_vec(), None));
}

/// A drop under a burst of calls counts once in the breaker: three lease calls held in
/// flight (`CLIENT PAUSE WRITE`) when the connection is killed all fail, but only the first
/// to find the drop is a failure; the others are misses. A breaker at 3 failures stays
/// closed, and the next call is made (on the new connection). (Before, each counted: one
/// drop opened the breaker, and the next call was not even made.)
#[tokio::test]
async fn a_drop_under_a_burst_of_calls_counts_once() {
    use super::super::breaker::Breaker;
    use super::super::stats::Counters;

    let server = Server::start();
    let admin = || {
        Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap()
    };
    let store = RedisTokenCache::open(&server.url()).unwrap();
    store.connect().await.unwrap();
    let breaker = Breaker::new(Duration::from_secs(10), 3, Duration::from_secs(30));
    let stats = Counters::default();
    let (store, breaker, stats) = (&store, &breaker, &stats);
    let lease = move |holder: &'static str| {
        breaker.call(
            "try_lease",
            move || store.try_lease("p:{a}:lease", holder, Duration::from_secs(10)),
            stats,
        )
    };

    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(60_000)
        .arg("WRITE")
        .query(&mut admin())
        .unwrap();
    let burst = futures_util::future::join3(lease("one"), lease("two"), lease("three"));
    let kill = async {
        // The first held (the others were sent with it, one write on the socket).
        loop {
            let info: String = redis::cmd("INFO")
                .arg("clients")
                .query(&mut admin())
                .unwrap();
            if info.contains("blocked_clients:1") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        kill_the_one_client(&server);
        let _: () = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query(&mut admin())
            .unwrap();
    };
    let (answers, ()) = tokio::join!(burst, kill);
    assert_eq!(answers, (None, None, None));
    assert_eq!(lease("four").await, Some(true), "the breaker opened");
}

/// Closes the server's one client connection besides the caller's (`CLIENT KILL`).
fn kill_the_one_client(server: &Server) {
    let mut admin = Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut admin)
        .unwrap();
    assert_eq!(killed, 1);
}

/// A connection whose end the `redis` crate told of before the attempt's outcome was
/// recorded (RESP3: the server closed it right after its setup) is not kept: the link goes
/// idle with the drop left for a call to count, and the next call makes a new connection.
/// (Before, the end found the link still connecting and did nothing, and the dead
/// connection was then recorded for the next call to fail on.) The race is played out by
/// hand: the attempt (id 7) is not the link's, so its task records nothing; the test
/// records it once the end was told. Real time: the end is told when the closed socket
/// is read; the test waits for that, not for a set time.
#[tokio::test]
async fn a_connection_that_ended_before_it_was_recorded_is_not_kept() {
    let server = Server::start();
    let store = RedisTokenCache::open(&format!("{}?protocol=resp3", server.url())).unwrap();
    let (attempt, ended) = store.start_attempt(7).unwrap();
    let outcome = attempt.clone().await;
    assert!(outcome.is_ok(), "{:?}", outcome.err());
    kill_the_one_client(&server);
    let start = std::time::Instant::now();
    while !ended.load(Ordering::SeqCst) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the end was not told"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    store.inner.link().link = Link::Connecting(7, attempt, ended);
    store.inner.settle(7, &outcome);
    {
        let state = store.inner.link();
        assert!(
            matches!(state.link, Link::Idle),
            "the dead connection was kept"
        );
        assert!(
            state
                .uncounted
                .is_some_and(|drop| drop.dropped == 7 && drop.replaced_by.is_none())
        );
    }
    // The next call makes a new connection, and the drop counts for a call that fails on
    // the dead one.
    assert_eq!(store.get("p:{a}:token").await.unwrap(), None);
    let e = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
    assert!(!store.failed("GET", 7, &e).is_connecting());
    assert!(store.failed("GET", 7, &e).is_connecting(), "counted once");
}

/// A connection that Redis closed within a second of its setup (RESP3: the `redis` crate
/// tells of it, and the link goes idle rather than reconnecting in a loop) is made again by
/// the call that counts its drop, in the background, as over RESP2: the calls after it wait
/// on that attempt, and one that gives up at its budget's end is a miss. (Before, the link
/// stayed idle: the next call started an attempt of its own, and its timeout counted the
/// same drop a second time.) Real time: the end is told when the closed socket is read; the
/// test waits for that.
#[tokio::test]
async fn a_drop_told_within_the_first_second_is_made_again_by_the_call_counting_it() {
    let server = Server::start();
    let store = RedisTokenCache::open(&format!("{}?protocol=resp3", server.url())).unwrap();
    store.connect().await.unwrap();
    let id = match &store.inner.link().link {
        Link::Connected(id, ..) => *id,
        _ => panic!("not connected"),
    };
    kill_the_one_client(&server);
    let start = std::time::Instant::now();
    while store.inner.link().uncounted.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the end was not told"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let e = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
    assert!(!store.failed("GET", id, &e).is_connecting(), "not counted");
    assert!(
        !matches!(store.inner.link().link, Link::Idle),
        "left idle: the next call starts an attempt of its own"
    );
    assert!(store.failed("GET", id, &e).is_connecting(), "counted twice");
    assert_eq!(store.get("p:{a}:token").await.unwrap(), None);
}

/// An old connection that never served (made in place of one that dropped, idle since),
/// closed by the server as `connect()`'s `PING` is on its way, over RESP3: the `redis` crate
/// hands the `PING` its error and tells of the end in one step, before `connect()` resumes,
/// and the notice leaves the link idle (a connection that never served is not made again
/// on it). `connect()` says the connection had dropped and is being made again, and it is:
/// an attempt runs. The drop is kept for a call to count, pointed at that attempt, as the
/// notice keeps it for a served connection: a call that fails on the old connection counts
/// it, once. (Before, `connect()` cleared it: the drop counted for no call.) The connection
/// is aged by hand (its `made`). Real time: the connections are real.
#[cfg(unix)]
#[tokio::test]
async fn an_old_connection_closed_as_connect_pings_it_is_made_again_over_resp3() {
    old_connection_closed_as_connect_pings_it("?protocol=resp3").await;
}

/// As above over RESP2, where nothing tells: `connect()`'s `PING` finds the connection
/// closed while the link still holds it, and the drop is kept for a call to count as over
/// RESP3. (Before, it counted for no call.)
#[cfg(unix)]
#[tokio::test]
async fn an_old_connection_closed_as_connect_pings_it_is_made_again_over_resp2() {
    old_connection_closed_as_connect_pings_it("").await;
}

/// A connection made by `store.connection()` and aged past [`SHORTEST_LIFE`] by hand: one
/// `connect()` did not wait on, made long ago.
#[cfg(unix)]
async fn old_connection(store: &RedisTokenCache) -> u64 {
    let (id, connection) = store.connection("connection").await.unwrap();
    drop(connection);
    match &mut store.inner.link().link {
        Link::Connected(current, _, _, made) if *current == id => {
            *made = made.checked_sub(SHORTEST_LIFE * 2).unwrap();
        }
        _ => panic!("not connected"),
    }
    id
}

/// `protocol`: the URL's query, `""` for RESP2.
#[cfg(unix)]
async fn old_connection_closed_as_connect_pings_it(protocol: &str) {
    let server = Server::start();
    let relay = CloseAfterSetup::on_the_next_command(&server);
    let store = RedisTokenCache::open(&format!("{}{protocol}", relay.url)).unwrap();
    let id = old_connection(&store).await;

    let e = store.connect().await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("redis connection: failed: ")
            && text.ends_with("(the connection had dropped; being made again)"),
        "{e}"
    );
    {
        let state = store.inner.link();
        let Link::Connecting(next, ..) = &state.link else {
            panic!("no attempt runs, though the error says the connection is being made again");
        };
        assert_ne!(*next, id);
        assert!(
            state
                .uncounted
                .is_some_and(|drop| drop.dropped == id && drop.replaced_by == Some(*next)),
            "the drop is not left for a call to count"
        );
    }
    let e = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
    assert!(!store.failed("GET", id, &e).is_connecting(), "not counted");
    assert!(store.failed("GET", id, &e).is_connecting(), "counted twice");
}

/// An old connection that `connect()`'s `PING` finds closed after the link had moved on
/// without it (a call found it dropped, and the attempt it started failed at once: the link
/// idle, no drop left to count) is not said to be made again: no attempt runs, and the
/// error says the next call connects. (Before, it said "being made again" with the link
/// idle.) The link is moved on by hand once `connect()` has sent its `PING`, before the
/// relay closes the connection (one thread: neither runs until this task waits). Real time:
/// the connections are real.
#[cfg(unix)]
#[tokio::test]
async fn an_old_connection_found_closed_after_the_link_moved_on_is_not_said_made_again() {
    let server = Server::start();
    let relay = CloseAfterSetup::on_the_next_command(&server);
    let store = RedisTokenCache::open(&relay.url).unwrap();
    old_connection(&store).await;

    let mut connect = std::pin::pin!(store.connect());
    assert!((&mut connect).now_or_never().is_none(), "the PING answered");
    {
        let mut state = store.inner.link();
        state.link = Link::Idle;
        state.uncounted = None;
    }
    let e = connect.await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("redis connection: failed: ")
            && text.ends_with("(the connection had dropped; the next call connects again)"),
        "{e}"
    );
    assert!(
        matches!(store.inner.link().link, Link::Idle),
        "an attempt runs"
    );
}

/// A connection made by the attempt `connect()` waited on is new, however late `connect()`
/// resumes: found closed, it was closed as it was made (with the hint, and left for the next
/// call), not an old connection that dropped while idle. The attempt settles while
/// `connect()` is not polled, and the connection is aged by hand past [`SHORTEST_LIFE`]
/// before it resumes: a runtime stalled that long (a busy machine). (Before, its age alone
/// decided: it was said to have dropped, and made again.) Over RESP2, where nothing tells
/// the store of the close. Real time: the connections are real.
#[cfg(unix)]
#[tokio::test]
async fn the_connection_connect_waited_on_is_new_however_late_it_resumes() {
    let server = Server::start();
    let relay = CloseAfterSetup::start(&server);
    let store = RedisTokenCache::open(&relay.url).unwrap();

    let mut connect = std::pin::pin!(store.connect());
    assert!((&mut connect).now_or_never().is_none(), "connected at once");
    let start = std::time::Instant::now();
    let id = loop {
        if let Link::Connected(id, _, _, made) = &mut store.inner.link().link {
            *made = made.checked_sub(SHORTEST_LIFE * 2).unwrap();
            break *id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the attempt did not settle"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let e = connect.await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(
            "redis connection: the server closed the connection as it was made; the next call \
             connects again"
        ) && text.contains("a proxy"),
        "{e}"
    );
    let state = store.inner.link();
    assert!(matches!(state.link, Link::Idle), "an attempt runs");
    assert!(state.uncounted.is_some_and(|drop| drop.dropped == id));
    assert_eq!(relay.connections.load(Ordering::SeqCst), 1);
}

/// `connect()` finds the connection that `connection()` handed it no longer the link's
/// (RESP3: the `redis` crate told of its end in between; or a call found it dropped). Told
/// of an old connection's end (it lived 2 s, idle), it is made again and said to have
/// dropped; told of one that lived under [`SHORTEST_LIFE`] (made in the background, closed
/// right after its setup), it was closed as it was made, whenever `connect()` looks; and
/// with another attempt already running in its place, that one is not said to be the next
/// call's, nor is a second started. (Before, each was said to be closed as it was made, the
/// next call to connect again.) The states are set by hand: the window between the two
/// looks is too short to hit.
#[cfg(unix)]
#[tokio::test]
async fn connect_says_what_became_of_a_connection_gone_before_its_ping() {
    let server = Server::start();
    let store = RedisTokenCache::open(&format!("{}?protocol=resp3", server.url())).unwrap();
    let told = |lived: Duration| {
        let mut state = store.inner.link();
        state.link = Link::Idle;
        state.uncounted = Some(link::Uncounted {
            dropped: 3,
            replaced_by: None,
            lived,
        });
    };

    told(SHORTEST_LIFE * 2);
    assert_eq!(
        store.gone(3, false).to_string(),
        "redis connection: the connection had dropped; being made again"
    );
    let next = {
        let state = store.inner.link();
        let Link::Connecting(next, ..) = &state.link else {
            panic!("no attempt runs");
        };
        assert!(
            state
                .uncounted
                .is_some_and(|drop| drop.dropped == 3 && drop.replaced_by == Some(*next)),
            "the drop is not left for a call to count"
        );
        *next
    };

    told(Duration::from_millis(5));
    let e = store.gone(3, false).to_string();
    assert!(
        e.starts_with(
            "redis connection: the server closed the connection as it was made; the next call \
             connects again"
        ),
        "{e}"
    );
    assert!(
        matches!(store.inner.link().link, Link::Idle),
        "an attempt runs"
    );

    let (attempt, ended) = store.start_attempt(next + 1).unwrap();
    {
        let mut state = store.inner.link();
        state.link = Link::Connecting(next + 1, attempt, ended);
        state.uncounted = None;
    }
    let attempts = store.inner.attempts.load(Ordering::Relaxed);
    assert_eq!(
        store.gone(3, false).to_string(),
        "redis connection: the connection had dropped; being made again"
    );
    assert_eq!(store.inner.attempts.load(Ordering::Relaxed), attempts);
    assert!(matches!(
        store.inner.link().link,
        Link::Connecting(running, ..) if running == next + 1
    ));
    // Waited on, it was new: closed as it was made, and made again by the call.
    let e = store.gone(3, true).to_string();
    assert!(
        e.starts_with(
            "redis connection: the server closed the connection as it was made; it is being \
             made again"
        ),
        "{e}"
    );
}

/// A relay on a Unix socket of its own to `server` that passes on the server's first answer
/// on each connection (the replies to the connection's setup, answered in one write) and then
/// closes both ends: a server or proxy that closes each connection right after its setup.
/// Started [`on_the_next_command`](Self::on_the_next_command), it closes them once the client
/// sends its next command, which it does not pass on: a server that closes an idle connection
/// (its `timeout`) as a command is on its way. (The integration tests have a TCP one; this one
/// serves tests that look at the link.)
#[cfg(unix)]
struct CloseAfterSetup {
    /// Its URL, without a protocol (RESP2, the `redis` crate's default).
    url: String,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

#[cfg(unix)]
impl CloseAfterSetup {
    fn start(server: &Server) -> CloseAfterSetup {
        Self::closing(server, false)
    }

    fn on_the_next_command(server: &Server) -> CloseAfterSetup {
        Self::closing(server, true)
    }

    fn closing(server: &Server, on_the_next_command: bool) -> CloseAfterSetup {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let target = server.dir.path().join("redis.sock");
        let connections = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::UnixStream::connect(&target).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let up = async {
                        if !on_the_next_command {
                            return tokio::io::copy(&mut client_read, &mut server_write)
                                .await
                                .map(drop);
                        }
                        // The setup (one write) passed on, the next command read and dropped.
                        let mut setup = vec![0; 16 * 1024];
                        let n = client_read.read(&mut setup).await?;
                        server_write.write_all(&setup[..n]).await?;
                        client_read.read(&mut setup).await.map(drop)
                    };
                    let down = async {
                        let mut first = vec![0; 16 * 1024];
                        let n = server_read.read(&mut first).await?;
                        client_write.write_all(&first[..n]).await?;
                        if on_the_next_command {
                            // Closed when `up` ends, both halves dropped.
                            std::future::pending::<()>().await;
                        }
                        client_write.shutdown().await
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        CloseAfterSetup {
            url: format!("redis+unix://{}", path.display()),
            connections,
            task,
            _dir: dir,
        }
    }
}

#[cfg(unix)]
impl Drop for CloseAfterSetup {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `connect()` against a server that closed the connection as it was made (RESP3) is a
/// failure (not a wait given up on another call's attempt), and leaves the link idle: no attempt
/// runs after it, so none follows another while no call is made (the next call makes the
/// next). The drop is left for a call failing on that connection to count; none will, and the
/// next attempt counts its own. (A link left connecting here would be a reconnection loop
/// against such a server: each attempt's connection closed in turn starting the next.)
#[cfg(unix)]
#[tokio::test]
async fn connect_to_a_server_closing_as_it_connects_leaves_no_attempt_running() {
    closing_as_it_connects("?protocol=resp3").await;
}

/// As above on a runtime of two threads, where `connect()` may resume before the
/// connection's reader has read the close: the error and the link are the same.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_server_closing_as_it_connects_leaves_no_attempt_running_on_two_threads() {
    closing_as_it_connects("?protocol=resp3").await;
}

/// As above over RESP2, where nothing tells the store of the close: `connect()`'s `PING`
/// finds it, and records it as the notice does over RESP3.
#[cfg(unix)]
#[tokio::test]
async fn resp2_connect_to_a_server_closing_as_it_connects_leaves_no_attempt_running() {
    closing_as_it_connects("").await;
}

/// As above over RESP2, on a runtime of two threads.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_connect_to_a_server_closing_as_it_connects_on_two_threads() {
    closing_as_it_connects("").await;
}

/// `protocol`: the URL's query, `""` for RESP2.
#[cfg(unix)]
async fn closing_as_it_connects(protocol: &str) {
    let server = Server::start();
    let relay = CloseAfterSetup::start(&server);
    let store = RedisTokenCache::open(&format!("{}{protocol}", relay.url)).unwrap();
    for made in 1..=2 {
        let e = store.connect().await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("redis connection: the server closed the connection as it was made"),
            "{e}"
        );
        assert!(!e.is_connecting(), "{e}");
        let state = store.inner.link();
        assert!(matches!(state.link, Link::Idle), "an attempt runs");
        assert!(state.uncounted.is_some());
        drop(state);
        assert_eq!(relay.connections.load(Ordering::SeqCst), made);
    }
}

/// A server that is no longer the primary has the connection made again (the new one
/// reaches the new primary behind the address); a command's own error does not.
#[test]
fn a_server_no_longer_primary_drops_the_connection() {
    for kind in [ServerErrorKind::ReadOnly, ServerErrorKind::MasterDown] {
        let e = RedisError::from((ErrorKind::Server(kind), "not the primary"));
        assert!(drops(&e), "{e}");
    }
    for kind in [ServerErrorKind::NoScript, ServerErrorKind::BusyLoading] {
        let e = RedisError::from((ErrorKind::Server(kind), "the command's own"));
        assert!(!drops(&e), "{e}");
    }
    // Redis 6 wraps what a script's call met.
    for (detail, dropped) in [
        (
            "Error running script (call to f_0): @user_script:1: @user_script: 1: -READONLY \
             You can't write against a read only replica.",
            true,
        ),
        (
            "Error running script (call to f_0): -MASTERDOWN Link down",
            true,
        ),
        (
            "Error running script (call to f_0): WRONGTYPE Operation",
            false,
        ),
    ] {
        let e = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "An error was signalled by the server",
            detail.to_owned(),
        ));
        assert_eq!(drops(&e), dropped, "{e}");
    }
}

/// Every I/O error on a command replaces the connection, not only those the `redis`
/// crate calls unrecoverable (a closed or reset connection): a time-out
/// (`TCP_USER_TIMEOUT`), an unreachable host, a TLS record that does not decrypt.
#[test]
fn every_io_error_drops_the_connection() {
    use std::io;
    for kind in [
        io::ErrorKind::BrokenPipe,
        io::ErrorKind::TimedOut,
        io::ErrorKind::HostUnreachable,
        io::ErrorKind::InvalidData,
    ] {
        let e = RedisError::from(io::Error::from(kind));
        assert!(drops(&e), "{kind:?}");
    }
}

#[test]
fn px_is_never_zero_and_never_past_the_cap() {
    assert_eq!(px(Duration::ZERO), 1);
    assert_eq!(px(Duration::from_micros(1500)), 1);
    assert_eq!(px(Duration::from_secs(3)), 3000);
    // Redis refuses a PX that overflows when added to its clock: capped.
    assert_eq!(px(Duration::MAX), MAX_PX);
    assert_eq!(px(Duration::from_millis(MAX_PX + 1)), MAX_PX);
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
