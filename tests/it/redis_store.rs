//! `RedisTokenCache` against a real redis-server: the store operations, what they leave in
//! Redis (values, PTTLs, lease holders), and how the store behaves when Redis refuses, stops
//! answering, dies and comes back.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use redis::Commands;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};
use tower_identity::distributed::{LeaseTtl, RedisTokenCache, TokenStore};

use crate::support::clock::held;
use crate::support::creds::secs;
use crate::support::redis::RedisServer;
use crate::support::wait::wait_until;

/// Longer than anything a store could wait on its own; on a paused clock it passes at once.
const HOUR: Duration = Duration::from_secs(3600);

/// Takes the lease `p:{a}:lease` for 10 s as `holder`.
async fn lease(store: &RedisTokenCache, holder: &str) -> bool {
    store
        .try_lease("p:{a}:lease", holder, secs(10))
        .await
        .unwrap()
}

fn pttl(server: &RedisServer, key: &str) -> i64 {
    server.admin().pttl(key).unwrap()
}

#[tokio::test]
async fn put_then_get_round_trips_bytes_and_expires_with_the_ttl() {
    let server = RedisServer::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    assert_eq!(store.get("p:{a}:token").await.unwrap(), None);

    let value = b"\x01sealed\x00bytes\xff";
    store.put("p:{a}:token", value, secs(30)).await.unwrap();
    assert_eq!(
        store.get("p:{a}:token").await.unwrap().as_deref(),
        Some(&value[..])
    );
    let left = pttl(&server, "p:{a}:token");
    assert!(
        (29_000..=30_000).contains(&left),
        "PTTL {left} ms for a 30 s ttl"
    );

    // A put replaces the value and its expiry.
    store.put("p:{a}:token", b"newer", secs(5)).await.unwrap();
    assert_eq!(
        store.get("p:{a}:token").await.unwrap().as_deref(),
        Some(&b"newer"[..])
    );
    let left = pttl(&server, "p:{a}:token");
    assert!(
        (4_000..=5_000).contains(&left),
        "PTTL {left} ms for a 5 s ttl"
    );

    assert_eq!(
        server.dump(),
        [("p:{a}:token".to_owned(), b"newer".to_vec())]
    );

    // A clone shares the connection and sees the same data.
    let clone = store.clone();
    assert_eq!(
        clone.get("p:{a}:token").await.unwrap().as_deref(),
        Some(&b"newer"[..])
    );
}

/// `get_with_ttl` reads the value and its time left in one step; a key without an expiry has
/// no time left to report, and a missing one is `None`.
#[tokio::test]
async fn get_with_ttl_reads_the_value_with_its_time_left() {
    let server = RedisServer::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    assert_eq!(store.get_with_ttl("p:{a}:token").await.unwrap(), None);

    let value = b"\x01sealed\x00bytes\xff";
    store.put("p:{a}:token", value, secs(30)).await.unwrap();
    let (read, left) = store.get_with_ttl("p:{a}:token").await.unwrap().unwrap();
    assert_eq!(read, value);
    let left = left.expect("a key put with a TTL reports its time left");
    assert!(
        (secs(29)..=secs(30)).contains(&left),
        "{left:?} left of a 30 s ttl"
    );

    let _: () = server.admin().set("p:{b}:token", "no expiry").unwrap();
    assert_eq!(
        store.get_with_ttl("p:{b}:token").await.unwrap(),
        Some((b"no expiry".to_vec(), None))
    );

    // A value of another type (a GET would fail with WRONGTYPE), and a string over 64 KiB, are
    // answered as an empty value with their time left, none of their bytes read: no entry looks
    // like that, so the cache takes them for misses and replaces them.
    let _: () = server.admin().rpush("p:{c}:token", "garbage").unwrap();
    assert_eq!(
        store.get_with_ttl("p:{c}:token").await.unwrap(),
        Some((Vec::new(), None))
    );
    assert_eq!(store.get("p:{c}:token").await.unwrap(), Some(Vec::new()));
    const LIMIT: usize = 64 * 1024;
    let _: () = server
        .admin()
        .pset_ex("p:{d}:token", vec![b'x'; LIMIT + 1], 30_000)
        .unwrap();
    let (read, left) = store.get_with_ttl("p:{d}:token").await.unwrap().unwrap();
    assert!(read.is_empty(), "{} bytes read", read.len());
    assert!(left.is_some_and(|left| left > secs(29)), "{left:?}");
    assert_eq!(store.get("p:{d}:token").await.unwrap(), Some(Vec::new()));
    let _: () = server
        .admin()
        .set("p:{e}:token", vec![b'x'; LIMIT])
        .unwrap();
    let (read, _) = store.get_with_ttl("p:{e}:token").await.unwrap().unwrap();
    assert_eq!(read.len(), LIMIT, "64 KiB is read");
}

/// `get_with_mark` reads an entry as `get_with_ttl` does and its mark with it; a mark of
/// another type, or too long to be a holder id, is no mark.
#[tokio::test]
async fn get_with_mark_reads_the_entry_and_its_mark_together() {
    let server = RedisServer::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    let (token, mark) = ("p:{a}:token", "p:{a}:failed");
    assert_eq!(
        store.get_with_mark(token, mark).await.unwrap(),
        (None, None)
    );

    store.put_mark(mark, b"holder.7", secs(5)).await.unwrap();
    assert_eq!(
        store.get_with_mark(token, mark).await.unwrap(),
        (None, Some(b"holder.7".to_vec()))
    );
    store.put(token, b"sealed", secs(30)).await.unwrap();
    let (entry, read) = store.get_with_mark(token, mark).await.unwrap();
    assert_eq!(read.as_deref(), Some(&b"holder.7"[..]));
    let (value, left) = entry.unwrap();
    assert_eq!(value, b"sealed");
    assert!(
        left.is_some_and(|left| left <= secs(30) && left > secs(29)),
        "{left:?}"
    );

    // Not a mark a cache writes: another type, or over 1 KiB.
    let _: () = server.admin().del(mark).unwrap();
    let _: () = server.admin().rpush(mark, "garbage").unwrap();
    assert_eq!(store.get_with_mark(token, mark).await.unwrap().1, None);
    let _: () = server.admin().del(mark).unwrap();
    let _: () = server.admin().set(mark, vec![b'x'; 1025]).unwrap();
    assert_eq!(store.get_with_mark(token, mark).await.unwrap().1, None);
    // A value of another type under the entry is read as `get_with_ttl` reads it: empty.
    let _: () = server.admin().del(token).unwrap();
    let _: () = server.admin().rpush(token, "garbage").unwrap();
    assert_eq!(
        store.get_with_mark(token, mark).await.unwrap().0,
        Some((Vec::new(), None))
    );
}

/// `get_with_throttle` reads the throttle mark with its time left; one with no expiry
/// (`PTTL` -1: no cache writes one) or of another type is none, not an error.
#[tokio::test]
async fn get_with_throttle_reads_a_throttle_mark_that_expires_only() {
    let server = RedisServer::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    let (token, mark, lease, throttle) = (
        "p:{a}:token",
        "p:{a}:failed",
        "p:{a}:lease",
        "p:{a}:throttled",
    );
    let read = || store.get_with_throttle(token, mark, lease, throttle);
    assert_eq!(read().await.unwrap().1, None);

    store
        .put_mark(throttle, b"429:1:h.1", secs(120))
        .await
        .unwrap();
    let (value, left) = read().await.unwrap().1.unwrap();
    assert_eq!(value, b"429:1:h.1");
    assert!(
        left.is_some_and(|left| left <= secs(120) && left > secs(119)),
        "{left:?}"
    );

    // No expiry: not a cache's, whatever end its value says.
    let far = format!("429:{}:h.1", u64::MAX / 2);
    let _: () = server.admin().set(throttle, far).unwrap();
    assert_eq!(pttl(&server, throttle), -1);
    assert_eq!(read().await.unwrap().1, None);
    // Another type.
    let _: () = server.admin().del(throttle).unwrap();
    let _: () = server.admin().rpush(throttle, "429:1:h.1").unwrap();
    assert_eq!(read().await.unwrap().1, None);
}

/// Over RESP3 (`?protocol=resp3`, `HELLO 3`) every operation answers as over RESP2: a missing
/// key is none, not "GET answered an unexpected type".
#[tokio::test]
async fn every_operation_answers_alike_over_resp3() {
    let server = RedisServer::start();
    let store = RedisTokenCache::open(&format!("{}?protocol=resp3", server.url())).unwrap();
    assert_eq!(store.get_with_ttl("p:{a}:token").await.unwrap(), None);
    assert_eq!(store.get("p:{a}:token").await.unwrap(), None);
    assert_eq!(
        store
            .get_with_mark("p:{a}:token", "p:{a}:failed")
            .await
            .unwrap(),
        (None, None)
    );
    store.put("p:{a}:token", b"v", secs(30)).await.unwrap();
    store.put_mark("p:{a}:failed", b"h", secs(5)).await.unwrap();
    let (entry, mark) = store
        .get_with_mark("p:{a}:token", "p:{a}:failed")
        .await
        .unwrap();
    let (value, left) = entry.unwrap();
    assert_eq!(
        (value.as_slice(), mark.as_deref()),
        (&b"v"[..], Some(&b"h"[..]))
    );
    assert!(left.is_some_and(|left| left > secs(29)), "{left:?}");
    // The reads and the publish of the newest scripts.
    let (token, mark, lease_key, throttle) = (
        "p:{a}:token",
        "p:{a}:failed",
        "p:{a}:lease",
        "p:{a}:throttled",
    );
    let ((_, read_mark), no_lease) = store.get_with_lease(token, mark, lease_key).await.unwrap();
    assert_eq!(
        (read_mark.as_deref(), no_lease),
        (Some(&b"h"[..]), LeaseTtl::Unknown)
    );
    assert!(lease(&store, "one").await);
    let ((entry, _), leased) = store.get_with_lease(token, mark, lease_key).await.unwrap();
    assert_eq!(entry.unwrap().0, b"v");
    assert!(
        matches!(leased, LeaseTtl::Left(left) if left > secs(9) && left <= secs(10)),
        "{leased:?}"
    );
    let read = || store.get_with_throttle(token, mark, lease_key, throttle);
    let (((entry, _), _), unthrottled) = read().await.unwrap();
    assert_eq!((entry.unwrap().0, unthrottled), (b"v".to_vec(), None));
    store
        .put_mark(throttle, b"429:1:h.1", secs(120))
        .await
        .unwrap();
    let (_, throttled) = read().await.unwrap();
    let (value, left) = throttled.unwrap();
    assert_eq!(value, b"429:1:h.1");
    assert!(
        left.is_some_and(|left| left > secs(119) && left <= secs(120)),
        "{left:?}"
    );
    store
        .put_clearing(token, b"w", secs(30), throttle)
        .await
        .unwrap();
    let (((entry, _), _), cleared) = read().await.unwrap();
    let (value, left) = entry.unwrap();
    assert_eq!((value, cleared), (b"w".to_vec(), None));
    assert!(left.is_some_and(|left| left > secs(29)), "{left:?}");
    assert!(!lease(&store, "two").await);
    assert!(
        store
            .renew_lease("p:{a}:lease", "one", secs(60))
            .await
            .unwrap()
    );
    store.release("p:{a}:lease", "one").await.unwrap();
    assert!(lease(&store, "two").await);
    store
        .release_with_mark("p:{a}:lease", "two", "p:{a}:failed", b"two", secs(5))
        .await
        .unwrap();
    assert!(lease(&store, "three").await);

    // The store's connection speaks RESP3 (the URL's protocol was not ignored): the only other
    // client, this admin connection, speaks RESP2.
    let mut admin = server.admin();
    let admin_id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut admin).unwrap();
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
    let store_clients: Vec<&str> = clients
        .lines()
        .filter(|line| !line.starts_with(&format!("id={admin_id} ")))
        .collect();
    assert!(!store_clients.is_empty(), "{clients}");
    assert!(
        store_clients
            .iter()
            .all(|line| line.split(' ').any(|field| field == "resp=3")),
        "{clients}"
    );
}

/// `release_with_mark` gives back only its holder's lease, as `release` does, and leaves the
/// mark (with its TTL) only with that release: a caller that does not hold the lease marks
/// nothing; the script is loaded again after the server forgot it.
#[tokio::test]
async fn release_with_mark_releases_only_its_holders_lease_and_marks() {
    let server = RedisServer::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    let (lease_key, mark) = ("p:{a}:lease", "p:{a}:failed");
    assert!(lease(&store, "one").await);

    store
        .release_with_mark(lease_key, "two", mark, b"two", secs(5))
        .await
        .unwrap();
    let holder: Option<String> = server.admin().get(lease_key).unwrap();
    assert_eq!(holder.as_deref(), Some("one"), "another holder's lease");
    let written: Option<String> = server.admin().get(mark).unwrap();
    assert_eq!(written, None, "not the holder: no mark");

    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut server.admin())
        .unwrap();
    store
        .release_with_mark(lease_key, "one", mark, b"one", secs(5))
        .await
        .unwrap();
    let holder: Option<String> = server.admin().get(lease_key).unwrap();
    assert_eq!(holder, None);
    let written: Option<String> = server.admin().get(mark).unwrap();
    assert_eq!(written.as_deref(), Some("one"));
    let left = pttl(&server, mark);
    assert!((1..=5_000).contains(&left), "PTTL {left} ms for a 5 s mark");
    // Nothing to release: not an error, and no mark.
    let _: () = server.admin().del(mark).unwrap();
    store
        .release_with_mark(lease_key, "one", mark, b"one", secs(5))
        .await
        .unwrap();
    let written: Option<String> = server.admin().get(mark).unwrap();
    assert_eq!(written, None, "no lease released: no mark");
    assert!(lease(&store, "two").await);
}

/// A TTL past what Redis accepts (`lease(Duration::MAX)`, PX 18446744073709551615, which Redis
/// refuses as an invalid expire time) is capped at 100 years.
#[tokio::test]
async fn the_largest_ttl_is_capped_at_a_hundred_years() {
    let server = RedisServer::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    const CENTURY_MS: i64 = 3_155_760_000_000;
    assert!(
        store
            .try_lease("p:{a}:lease", "one", Duration::MAX)
            .await
            .unwrap()
    );
    store.put("p:{a}:token", b"v", Duration::MAX).await.unwrap();
    for key in ["p:{a}:lease", "p:{a}:token"] {
        let left = pttl(&server, key);
        assert!(
            (CENTURY_MS - 60_000..=CENTURY_MS).contains(&left),
            "PTTL {left} ms for {key}"
        );
    }
}

#[tokio::test]
async fn a_lease_has_one_holder_until_it_expires() {
    let server = RedisServer::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    assert!(lease(&store, "one").await);
    assert!(!lease(&store, "two").await);
    assert!(!lease(&store, "one").await);
    let holder: String = server.admin().get("p:{a}:lease").unwrap();
    assert_eq!(holder, "one");
    let left = pttl(&server, "p:{a}:lease");
    assert!(
        (1..=10_000).contains(&left),
        "PTTL {left} ms for a 10 s lease"
    );

    // A lease that expired (here: removed as Redis would) can be taken by another holder.
    let _: () = server.admin().del("p:{a}:lease").unwrap();
    assert!(lease(&store, "two").await);
}

/// Writes safe to repeat (a put, renewing and releasing a lease) that find the connection
/// dropped (`CLIENT KILL`: a restart, a failover) run once more on a new connection within
/// the call, instead of failing (a holder's publish after a failover reached no one); taking
/// a lease (`SET NX`) never is.
#[tokio::test]
async fn writes_safe_to_repeat_are_sent_again_over_a_new_connection() {
    let server = RedisServer::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    let kill = || {
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query(&mut server.admin())
            .unwrap();
        assert_eq!(killed, 1, "the store's connection");
    };
    assert!(lease(&store, "one").await);
    kill();
    store
        .renew_lease("p:{a}:lease", "one", secs(10))
        .await
        .unwrap();
    kill();
    store.put("p:{a}", b"value", secs(60)).await.unwrap();
    kill();
    store.release("p:{a}:lease", "one").await.unwrap();
    let value: Vec<u8> = server.admin().get("p:{a}").unwrap();
    assert_eq!(value, b"value");
    assert!(lease(&store, "two").await, "released");
    kill();
    assert!(
        store
            .try_lease("p:{b}:lease", "one", secs(10))
            .await
            .is_err(),
        "a lease is not taken twice"
    );
}

#[tokio::test]
async fn only_the_holder_releases_a_lease() {
    let server = RedisServer::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    assert!(lease(&store, "one").await);

    store.release("p:{a}:lease", "two").await.unwrap();
    let holder: Option<String> = server.admin().get("p:{a}:lease").unwrap();
    assert_eq!(
        holder.as_deref(),
        Some("one"),
        "another holder's release left it alone"
    );

    store.release("p:{a}:lease", "one").await.unwrap();
    let holder: Option<String> = server.admin().get("p:{a}:lease").unwrap();
    assert_eq!(holder, None);
    assert!(lease(&store, "two").await);

    // Releasing what is not there is not an error; the script also works after the server
    // forgot it (SCRIPT FLUSH, as after a restart or failover): EVALSHA falls back to loading.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut server.admin())
        .unwrap();
    store.release("p:{a}:lease", "two").await.unwrap();
    store.release("p:{a}:lease", "two").await.unwrap();
    let holder: Option<String> = server.admin().get("p:{a}:lease").unwrap();
    assert_eq!(holder, None);
}

/// A renewal extends the lease only for its holder, atomically: another holder's renewal
/// leaves it as it is, and a lease that is gone (expired) is not created again.
#[tokio::test]
async fn only_the_holder_renews_a_lease() {
    let server = RedisServer::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    assert!(lease(&store, "one").await);

    let renewed = store.renew_lease("p:{a}:lease", "two", secs(60)).await;
    assert!(!renewed.unwrap(), "another holder's renewal");
    let left = pttl(&server, "p:{a}:lease");
    assert!((1..=10_000).contains(&left), "PTTL {left} ms: not extended");
    let holder: String = server.admin().get("p:{a}:lease").unwrap();
    assert_eq!(holder, "one");

    assert!(
        store
            .renew_lease("p:{a}:lease", "one", secs(60))
            .await
            .unwrap()
    );
    let left = pttl(&server, "p:{a}:lease");
    assert!(
        (50_000..=60_000).contains(&left),
        "PTTL {left} ms: extended to 60 s"
    );

    // Gone (as when it expired): not recreated, also after the server forgot the script.
    let _: () = server.admin().del("p:{a}:lease").unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut server.admin())
        .unwrap();
    assert!(
        !store
            .renew_lease("p:{a}:lease", "one", secs(60))
            .await
            .unwrap()
    );
    assert!(server.dump().is_empty());
}

/// A key of another type: read as an empty value (see above); a lease call on one is an error
/// naming the operation; a put replaces it.
#[tokio::test]
async fn a_key_of_another_type_is_read_as_empty_and_replaced_by_a_put() {
    let server = RedisServer::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    let _: () = server.admin().rpush("p:{a}:token", "garbage").unwrap();
    let _: () = server.admin().rpush("p:{a}:lease", "garbage").unwrap();

    assert_eq!(store.get("p:{a}:token").await.unwrap(), Some(Vec::new()));
    let e = store.release("p:{a}:lease", "one").await.unwrap_err();
    assert!(e.to_string().contains("release"), "{e}");
    // Named as the cache's breaker logs the call.
    let e = store
        .release_with_mark("p:{a}:lease", "one", "p:{a}:failed", b"one", secs(5))
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("redis release_with_mark:"), "{e}");
    // A lease key that exists, whatever it holds, is held.
    assert!(!lease(&store, "one").await);
    // A put replaces a value of any type.
    store.put("p:{a}:token", b"v", secs(10)).await.unwrap();
    assert_eq!(
        store.get("p:{a}:token").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[tokio::test]
async fn a_wrong_password_is_an_error_that_never_shows_it() {
    let server = RedisServer::start_with(&["--requirepass", "right-password-7c1e"]);
    for url in [
        server.url_with_password("wrong-password-9d2f"),
        format!(
            "redis://user-4a5b:wrong-password-9d2f@127.0.0.1:{}/0",
            server.port()
        ),
    ] {
        let store = RedisTokenCache::open(&url).unwrap();
        let e = store.get("p:{a}:token").await.unwrap_err();
        let shown = format!("{e} {e:?} {store:?}");
        assert!(e.to_string().contains("redis GET"), "{e}");
        assert!(!shown.contains("wrong-password-9d2f"), "{shown}");
        let e = store
            .try_lease("p:{a}:lease", "one", secs(1))
            .await
            .unwrap_err();
        assert!(
            !format!("{e} {e:?}").contains("wrong-password-9d2f"),
            "{e:?}"
        );
    }
    // No password at all: refused too.
    let anonymous = format!("redis://127.0.0.1:{}/0", server.port());
    let e = RedisTokenCache::open(&anonymous)
        .unwrap()
        .get("k")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("redis GET"), "{e}");

    // The right one works.
    let store = RedisTokenCache::open(&server.url()).unwrap();
    store.put("p:{a}:token", b"v", secs(10)).await.unwrap();
    assert_eq!(
        store.get("p:{a}:token").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

/// A stopped server never answers, and the store adds no timer of its own to a call: on the
/// paused clock the first timer to fire is the test's hour-long one (a timeout or a retry delay
/// inside the store would have fired first and ended the call with an error). Bounding the call
/// is the distributed cache's budget's job. Only a connection's setup has a deadline of its own
/// (5 s): a store that never connected stops trying then, and `connect()` returns. (Before, it
/// never did: a start-up awaiting `connect()` hung.)
#[tokio::test(start_paused = true)]
async fn a_paused_server_leaves_calls_pending_until_the_caller_gives_up() {
    let server = RedisServer::start();
    let connected = RedisTokenCache::open(&server.url()).unwrap();
    held(connected.put("p:{a}:token", b"v", secs(60)))
        .await
        .unwrap();
    let fresh = RedisTokenCache::open(&server.url()).unwrap();

    server.pause();
    let start = Instant::now();
    let store = &connected;
    assert!(timeout(HOUR, store.get("p:{a}:token")).await.is_err());
    assert!(
        timeout(HOUR, store.try_lease("p:{a}:lease", "one", secs(1)))
            .await
            .is_err()
    );
    assert!(
        timeout(HOUR, store.put("p:{a}:token", b"w", secs(1)))
            .await
            .is_err()
    );
    assert!(
        timeout(HOUR, store.release("p:{a}:lease", "one"))
            .await
            .is_err()
    );
    assert!(
        timeout(HOUR, store.renew_lease("p:{a}:lease", "one", secs(1)))
            .await
            .is_err()
    );
    assert!(
        timeout(HOUR, store.get_with_ttl("p:{a}:token"))
            .await
            .is_err()
    );
    assert_eq!(start.elapsed(), HOUR * 6, "only the test's timeouts fired");

    for _ in 0..2 {
        let start = Instant::now();
        let e = timeout(HOUR, fresh.connect()).await.unwrap().unwrap_err();
        assert_eq!(start.elapsed(), secs(5), "{e}");
        assert!(
            e.to_string()
                .starts_with("redis connection: cannot connect"),
            "{e}"
        );
    }

    // Resumed: both answer again (the calls given up on meanwhile were answered and dropped).
    server.resume();
    for store in [&connected, &fresh] {
        let value = held(store.get("p:{a}:token")).await.unwrap();
        assert!(value.is_some(), "{store:?}");
    }
}

/// A put that Redis applies late (given up on while Redis was stopped, applied when it
/// resumes) expires when it would have had Redis applied it at once: its TTL counts from the
/// call. (Before, it counted from when Redis applied it: a put applied 1.5 s late outlived its
/// token by 1.5 s.) Real time: Redis's clock must move while it is stopped.
#[tokio::test]
async fn a_put_applied_late_expires_when_its_ttl_from_the_call_ends() {
    let server = RedisServer::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    store.put("p:{a}:token", b"old", secs(60)).await.unwrap();

    server.pause();
    // The put reads the wall clock when its future is made: `called`, taken right after, is
    // no earlier than that read, so the bound below holds however slowly this task runs.
    let put = store.put("p:{a}:token", b"new", secs(3));
    let called = Instant::now();
    let given_up = timeout(Duration::from_millis(50), put).await;
    assert!(given_up.is_err(), "Redis is stopped");
    // Redis stays stopped 1.5 s after the call.
    tokio::time::sleep_until(called + Duration::from_millis(1500)).await;
    server.resume();
    // Applied after the put: the put is applied.
    assert_eq!(
        store.get("p:{a}:token").await.unwrap().as_deref(),
        Some(&b"new"[..])
    );
    // The bound before the read: the PTTL read later can only be lower. (Computed after it,
    // the bound was short by however long the read took: a loaded machine failed the test.)
    // 2 ms of slack: the put's wall-clock read and Redis's clock are taken in whole ms.
    let bound = 3000 - i64::try_from(called.elapsed().as_millis()).unwrap();
    let left = pttl(&server, "p:{a}:token");
    assert!(
        (1..=bound + 2).contains(&left),
        "PTTL {left} ms, at most {bound} ms left of the 3 s from the call"
    );

    // A put applied after its whole TTL stores nothing.
    server.pause();
    let given_up = timeout(
        Duration::from_millis(50),
        store.put("p:{b}:token", b"late", Duration::from_millis(200)),
    )
    .await;
    assert!(given_up.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.resume();
    assert_eq!(store.get("p:{b}:token").await.unwrap(), None);
}

/// A loopback TCP relay to a server that holds the server's first reply on each connection
/// for a while: a connection whose setup (DNS, TCP, TLS, AUTH) takes longer than a call's
/// budget, as with `rediss://` to a server some way off. A connection the server closes is
/// closed to the client.
pub(crate) struct SlowSetupRelay {
    port: u16,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowSetupRelay {
    pub(crate) async fn start(server_port: u16, hold: Duration) -> SlowSetupRelay {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let server = TcpStream::connect((Ipv4Addr::LOCALHOST, server_port))
                        .await
                        .unwrap();
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = tokio::io::copy(&mut client_read, &mut server_write);
                    let down = async {
                        let mut first = vec![0; 16 * 1024];
                        let n = server_read.read(&mut first).await?;
                        tokio::time::sleep(hold).await;
                        client_write.write_all(&first[..n]).await?;
                        tokio::io::copy(&mut server_read, &mut client_write).await?;
                        // The server closed the connection (`CLIENT KILL`, a restart): so
                        // does the relay, as a proxy would.
                        client_write.shutdown().await
                    };
                    let _ = tokio::join!(up, down);
                });
            }
        });
        SlowSetupRelay {
            port,
            connections,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for SlowSetupRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback TCP relay to a server that closes each connection once it has passed on the
/// server's first answer, the replies to the connection's setup (`HELLO`, `CLIENT SETINFO`,
/// sent as one pipeline and answered in one write): a proxy or server that accepts each
/// connection and then drops it at once. After [`pass_through`](Self::pass_through), new
/// connections are relayed in full: the server keeps them again; after
/// [`hold`](Self::hold), they are held open once their setup is answered, and no answer
/// after it is passed on.
pub(crate) struct HandshakeThenCloseRelay {
    port: u16,
    connections: Arc<AtomicUsize>,
    /// What new connections get after their setup: [`CLOSED`], [`HELD`] or [`PASSED`].
    after_setup: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

/// [`HandshakeThenCloseRelay`]'s connections after their setup: closed, held open with
/// nothing passing, or relayed in full.
const CLOSED: u8 = 0;
const HELD: u8 = 1;
const PASSED: u8 = 2;

impl HandshakeThenCloseRelay {
    pub(crate) async fn start(server_port: u16) -> HandshakeThenCloseRelay {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let after_setup = Arc::new(AtomicU8::new(CLOSED));
        let mode = Arc::clone(&after_setup);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let after = mode.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut server) =
                        TcpStream::connect((Ipv4Addr::LOCALHOST, server_port)).await
                    else {
                        return;
                    };
                    if after == PASSED {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = tokio::io::copy(&mut client_read, &mut server_write);
                    let down = async {
                        let mut first = vec![0; 16 * 1024];
                        let n = server_read.read(&mut first).await?;
                        client_write.write_all(&first[..n]).await?;
                        if after == HELD {
                            // Kept open with no answer passed on: no answer, no close.
                            std::future::pending::<()>().await;
                        }
                        client_write.shutdown().await
                    };
                    // Both ends closed once the answer is passed on (unless held).
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        HandshakeThenCloseRelay {
            port,
            connections,
            after_setup,
            task,
        }
    }

    /// Relays new connections in full from now on, as a server that accepts clients again
    /// (back under its `maxclients`, a proxy whose backend is back); those made before stay
    /// closed.
    pub(crate) fn pass_through(&self) {
        self.after_setup.store(PASSED, Ordering::SeqCst);
    }

    /// Holds new connections open once their setup is answered, passing on no answer after
    /// it: a server that stops answering right after it accepted a connection.
    pub(crate) fn hold(&self) {
        self.after_setup.store(HELD, Ordering::SeqCst);
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Connections the relay has accepted.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for HandshakeThenCloseRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback TCP relay to a server, with the faults a network between them has: its
/// connections can be cut off without being closed ([`partition`](Self::partition)), and new
/// connections sent to another server ([`retarget`](Self::retarget), a failover behind one
/// address). A connection either end closes is closed to the other.
pub(crate) struct Relay {
    port: u16,
    target: Arc<AtomicU16>,
    connections: Arc<AtomicUsize>,
    cut: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub(crate) async fn start(server_port: u16) -> Relay {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(server_port));
        let connections = Arc::new(AtomicUsize::new(0));
        let cut = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn({
            let (target, connections, cut) = (target.clone(), connections.clone(), cut.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let server_port = target.load(Ordering::SeqCst);
                    let cut = cut.clone();
                    tokio::spawn(async move {
                        // Registered now: a partition cuts the connections made before it.
                        let partitioned = cut.notified_owned();
                        tokio::pin!(partitioned);
                        partitioned.as_mut().enable();
                        let Ok(mut server) =
                            TcpStream::connect((Ipv4Addr::LOCALHOST, server_port)).await
                        else {
                            return;
                        };
                        let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                        let cut_off = tokio::select! {
                            _ = copy => false,
                            () = &mut partitioned => true,
                        };
                        if cut_off {
                            // Both ends stay open and nothing passes: no reset, no answer.
                            std::future::pending::<()>().await;
                        }
                    });
                }
            }
        });
        Relay {
            port,
            target,
            connections,
            cut,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Connections the relay has accepted.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Stops forwarding on every connection made so far, leaving both ends open, as a
    /// partition or a host that died would (no reset reaches either end). New connections
    /// are forwarded.
    pub(crate) fn partition(&self) {
        self.cut.notify_waiters();
    }

    /// Sends new connections to the server on `port`; those made before stay where they are.
    pub(crate) fn retarget(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A failover that demotes the server without closing its clients (`REPLICAOF`, as some
/// failovers do; the endpoint's address now leads to the new primary): the first write
/// refused with READONLY has the connection made again, and the next writes reach the new
/// primary. (Before, the connection stayed: reads went on succeeding, and every write failed
/// with READONLY for good.) Real time: the demoted server's replication link is real.
#[tokio::test]
async fn a_demoted_server_is_left_for_the_new_primary() {
    let old = RedisServer::start();
    // Its first replica synchronised at once, not after the 5 s Redis waits for others.
    let new = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let relay = Relay::start(old.port()).await;
    let store = RedisTokenCache::open(&relay.url()).unwrap();
    store.put("p:{a}:token", b"v", secs(60)).await.unwrap();

    relay.retarget(new.port());
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(new.port())
        .query(&mut old.admin())
        .unwrap();
    // Synchronised (its load of the primary's data over): it answers READONLY, not LOADING.
    let start = Instant::now();
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut old.admin())
            .unwrap();
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(start.elapsed() < secs(10), "not a replica in 10 s: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reads still succeed on the demoted server.
    assert_eq!(store.get("p:{a}:token").await.unwrap(), None);
    let e = store
        .try_lease("p:{a}:lease", "one", secs(10))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("read only replica"), "{e}");

    store.put("p:{a}:token", b"w", secs(60)).await.unwrap();
    assert!(lease(&store, "one").await);
    assert_eq!(relay.connections(), 2);
    let on_new: Option<Vec<u8>> = new.admin().get("p:{a}:token").unwrap();
    assert_eq!(on_new.as_deref(), Some(&b"w"[..]));
}

/// A connection that takes 150 ms to set up, under calls given 50 ms each: the attempt goes on
/// after the first call gives up on it, and a later call uses it. (Before, each call's timeout
/// dropped the half-made connection and the next one started from zero: no call ever
/// succeeded, and the relay saw a connection per call.) Real time: the relay's hold is real.
#[tokio::test]
async fn a_connection_slower_than_the_budget_is_made_for_a_later_call() {
    let server = RedisServer::start();
    let relay = SlowSetupRelay::start(server.port(), Duration::from_millis(150)).await;
    let store = RedisTokenCache::open(&relay.url()).unwrap();
    let budget = Duration::from_millis(50);
    let start = Instant::now();
    let mut answered = None;
    let mut calls = 0;
    while answered.is_none() && start.elapsed() < secs(2) {
        calls += 1;
        if let Ok(Ok(value)) = timeout(budget, store.get("p:{a}:token")).await {
            answered = Some(value);
        }
    }
    assert_eq!(answered, Some(None), "no call answered in {calls} calls");
    assert!(calls > 1, "the first call waited out the setup");
    assert_eq!(
        relay.connections.load(Ordering::SeqCst),
        1,
        "one connection attempt at a time"
    );
}

#[tokio::test]
async fn a_killed_server_is_an_error_and_a_restarted_one_is_used_again() {
    let mut server = RedisServer::start();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    store.put("p:{a}:token", b"v", secs(60)).await.unwrap();

    server.kill();
    // Errors, not waits: a guard against a hang, far above what a refused connect takes.
    for _ in 0..3 {
        let e = timeout(secs(10), store.get("p:{a}:token"))
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().starts_with("redis GET"), "{e}");
        let e = timeout(secs(10), store.try_lease("p:{a}:lease", "one", secs(1)))
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().starts_with("redis SET NX"), "{e}");
    }

    // Back (empty: no persistence): the same store reconnects on its first call.
    server.restart();
    assert_eq!(store.get("p:{a}:token").await.unwrap(), None);
    store.put("p:{a}:token", b"again", secs(60)).await.unwrap();
    assert_eq!(
        store.get("p:{a}:token").await.unwrap().as_deref(),
        Some(&b"again"[..])
    );
}

#[tokio::test]
async fn a_store_opened_while_redis_is_down_connects_once_it_is_up() {
    let mut server = RedisServer::start();
    server.kill();
    let store = RedisTokenCache::open(&server.url()).unwrap();
    let e = timeout(secs(10), store.get("k"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
    assert!(
        format!("{store:?}").contains("connected: false"),
        "{store:?}"
    );

    let e = timeout(secs(10), store.connect())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("redis connection: cannot connect"),
        "{e}"
    );

    server.restart();
    store.connect().await.unwrap();
    assert!(
        format!("{store:?}").contains("connected: true"),
        "{store:?}"
    );
    store.put("k", b"v", secs(60)).await.unwrap();
    assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(
        format!("{store:?}").contains("connected: true"),
        "{store:?}"
    );
}

/// Over RESP3 the `redis` crate tells the store as a connection ends: one that the server (or
/// a proxy in front of it) closed right after its setup leaves the store none, and `connect()`
/// says so, with a hint, rather than `Ok` for a connection already gone. Redis itself does not
/// close a connection once it has answered its setup (at `maxclients` it closes it before
/// `HELLO` is answered, a reset; without the password it answers `HELLO` with `NOAUTH`: both
/// are "cannot connect"), so a relay does, as a proxy would. No attempt is made between the
/// calls (one connection per `connect()`), and once the server keeps its connections again
/// the next `connect()` succeeds and calls are served.
/// Real time: the relay's connections are real, and each `connect()` returns with its
/// attempt's outcome. On this one-thread runtime the connection's reader reads the close
/// before `connect()` resumes; see the next test for the other order.
#[tokio::test]
async fn connect_says_when_the_server_closed_the_connection_as_it_was_made() {
    closed_as_it_was_made("?protocol=resp3").await;
}

/// As above on a runtime of two threads, where `connect()` may resume before the
/// connection's reader has read the close (the store then holds the connection as made):
/// `connect()` still says it was closed, whichever task runs first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_says_when_the_server_closed_the_connection_as_it_was_made_on_two_threads() {
    closed_as_it_was_made("?protocol=resp3").await;
}

/// As above over RESP2, where nothing tells the store of the close: `connect()`'s `PING`
/// finds it, on either runtime.
#[tokio::test]
async fn resp2_connect_says_when_the_server_closed_the_connection_as_it_was_made() {
    closed_as_it_was_made("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_connect_says_when_the_server_closed_it_as_it_was_made_on_two_threads() {
    closed_as_it_was_made("").await;
}

/// `protocol`: the URL's query, `""` for RESP2 (the `redis` crate's default).
async fn closed_as_it_was_made(protocol: &str) {
    let server = RedisServer::start();
    let relay = HandshakeThenCloseRelay::start(server.port()).await;
    let store = RedisTokenCache::open(&format!("{}{protocol}", relay.url())).unwrap();
    for made in 1..=2 {
        let e = timeout(secs(10), store.connect())
            .await
            .unwrap()
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("redis connection: the server closed the connection as it was made"),
            "{e}"
        );
        assert!(
            text.contains("the next call connects again") && text.contains("a proxy"),
            "no hint: {e}"
        );
        assert!(std::error::Error::source(&e).is_none(), "{e:?}");
        assert!(
            format!("{store:?}").contains("connected: false"),
            "{store:?}"
        );
        assert_eq!(relay.connections(), made, "one connection per connect()");
    }

    relay.pass_through();
    timeout(secs(10), store.connect()).await.unwrap().unwrap();
    assert!(
        format!("{store:?}").contains("connected: true"),
        "{store:?}"
    );
    store.put("p:{a}:token", b"v", secs(60)).await.unwrap();
    assert_eq!(
        store.get("p:{a}:token").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(relay.connections(), 3, "the connection made is kept");
}

/// A server that answers a connection's setup and then nothing (stalled, or a proxy whose
/// backend went silent) has `connect()` give up on its `PING` after 2 s with an error, and
/// the connection taken for dropped and made again in the background, as a probe that gets
/// no answer does: `connect()` does not answer `Ok` for a connection that never answered.
/// The next `connect()`, called at once, waits on that attempt (on this one-thread runtime
/// its task has not run yet: this one has not waited since), and `PING`s its connection in
/// turn: the connection of its setup, however long this task waits to resume (the age of a
/// connection it waited on is not what tells). The relay then sees the next one made
/// without another call. Real time: the relay's connections are real, and the `PING`'s 2 s
/// run out on them.
#[tokio::test]
async fn connect_says_when_the_server_does_not_answer_after_the_connection_was_made() {
    let server = RedisServer::start();
    let relay = HandshakeThenCloseRelay::start(server.port()).await;
    relay.hold();
    let store = RedisTokenCache::open(&relay.url()).unwrap();
    for made in 1..=2 {
        let start = Instant::now();
        let e = timeout(secs(10), store.connect())
            .await
            .unwrap()
            .unwrap_err();
        assert!(start.elapsed() >= secs(2), "{e}");
        assert_eq!(
            e.to_string(),
            "redis connection: no answer to a PING within 2 s of the connection's setup; the \
             connection is being made again"
        );
        assert_eq!(relay.connections(), made, "one connection per attempt");
    }
    // Made again in the background: the relay accepts the next connection. (The link left
    // idle would make none until the next call.)
    wait_until("the connection is made again", || relay.connections() == 3).await;
}

/// A connection made in place of one that dropped, and idle since (no call made on it), that
/// the server then closes (its `timeout`: idle clients are closed after it), over RESP2 where
/// nothing tells the store: `connect()`'s `PING` finds it closed, and says the connection
/// had dropped and is being made again, which it is, not that the server closed it as it
/// was made (it lived 2 s). (Before, it said so of any connection that had not served.)
/// Real time: the server's `timeout` runs on its own clock.
#[tokio::test]
async fn connect_to_an_idle_connection_the_server_closed_says_it_dropped() {
    let server = RedisServer::start();
    let relay = Relay::start(server.port()).await;
    let store = RedisTokenCache::open(&relay.url()).unwrap();
    store.put("p:{a}:token", b"v", secs(60)).await.unwrap();

    // The store's connection closed (as by a restart): the next call finds it dropped, and a
    // new one is made in the background. Taking a lease is not sent again: no call serves it.
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut server.admin())
        .unwrap();
    let e = store
        .try_lease("p:{a}:lease", "one", secs(10))
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("redis SET NX"), "{e}");
    wait_until("the connection is made again", || {
        relay.connections() == 2 && format!("{store:?}").contains("connected: true")
    })
    .await;

    // Idle clients closed after 2 s: the server closes it, and the store is not told.
    server.config_set("timeout", "2");
    // One connection, asking every millisecond: never idle, the server keeps it.
    let mut admin = server.admin();
    wait_until("the server closed the idle connection", || {
        let info: String = redis::cmd("INFO").arg("clients").query(&mut admin).unwrap();
        info.contains("connected_clients:1\r\n")
    })
    .await;
    server.config_set("timeout", "0");

    let e = timeout(secs(10), store.connect())
        .await
        .unwrap()
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("redis connection: failed: ")
            && text.ends_with("(the connection had dropped; being made again)"),
        "{e}"
    );
    assert!(!text.contains("as it was made"), "{e}");
    wait_until("the connection is made again", || relay.connections() == 3).await;
    timeout(secs(10), store.connect()).await.unwrap().unwrap();
    assert_eq!(relay.connections(), 3, "the connection made is kept");
    assert_eq!(
        store.get("p:{a}:token").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

/// A connection made in place of one that dropped, idle since, on which the server then
/// answers nothing (a partition): `connect()`'s `PING` gets no answer in 2 s, and the error
/// says how old the connection was, not that it was the connection's setup that went
/// unanswered (the connection was made 2 s before). It is made again in the background, and
/// the next `connect()` takes it. Paused clock: the connection ages by `advance`, and the
/// `PING`'s 2 s pass once nothing else can run; the waits on loopback are `held`.
#[tokio::test(start_paused = true)]
async fn connect_to_an_old_connection_that_does_not_answer_says_how_old_it_is() {
    let server = RedisServer::start();
    let relay = Relay::start(server.port()).await;
    let store = RedisTokenCache::open(&relay.url()).unwrap();
    held(store.put("p:{a}:token", b"v", secs(60)))
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut server.admin())
        .unwrap();
    // Taking a lease is not sent again: no call serves the connection made in place.
    held(store.try_lease("p:{a}:lease", "one", secs(10)))
        .await
        .unwrap_err();
    held(wait_until("the connection is made again", || {
        relay.connections() == 2 && format!("{store:?}").contains("connected: true")
    }))
    .await;

    tokio::time::advance(secs(2)).await;
    relay.partition();
    let start = Instant::now();
    let e = timeout(secs(10), store.connect())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(start.elapsed(), secs(2), "{e}");
    assert_eq!(
        e.to_string(),
        "redis connection: no answer to a PING within 2 s on a connection made 2 s earlier that \
         has not answered yet; the connection is being made again"
    );
    held(wait_until("the connection is made again", || {
        relay.connections() == 3
    }))
    .await;
    held(store.connect()).await.unwrap();
    assert_eq!(relay.connections(), 3, "the connection made is kept");
}
