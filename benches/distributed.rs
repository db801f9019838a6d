//! Figures for the distributed token cache. Prints two tables; not a timing loop.
//!
//! 1. What a shared-cache hit costs a process that has no token yet, next to a hit in its own
//!    memory and to asking the identity provider: a real `redis-server` started on loopback,
//!    the loopback authority of the examples (HTTPS), wall-clock time.
//! 2. Identity provider calls a fleet of N processes makes over ten token lifetimes, with and
//!    without the shared cache: N credentials in this process (each with its own in-memory
//!    cache and its own `DistributedCache`, as N processes have) over one store, the loopback
//!    authority issuing one-hour tokens, tokio's paused clock driving the hours.
//!
//! ```text
//! cargo bench --features redis --bench distributed
//! ```

#[path = "../examples/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::{BoxFuture, join_all};
use tokio::time::Instant;
use tower_identity::distributed::{
    DistributedCache, RedisTokenCache, SealingKey, StoreError, TokenStore,
};
use tower_identity::{ClientSecretCredential, CredentialExt, HttpClient, RetryOptions};

use common::authority::Authority;

/// Samples per row of the latency table.
const SAMPLES: usize = 300;
/// The authority's token lifetime (Entra's usual hour).
const LIFETIME: Duration = Duration::from_secs(3600);
/// How often each simulated process asks for its token.
const CALL_EVERY: Duration = Duration::from_secs(10);
const TENANT: &str = "contoso";
const CLIENT_ID: &str = "00000000-0000-0000-0000-0000000000be";

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(shared_hit_latency());

    // A fresh runtime on the paused clock: the simulated hours pass instantly.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(idp_calls_per_fleet());
}

fn sealing_key() -> SealingKey {
    SealingKey::new("bench", &[7; 32]).unwrap()
}

/// A credential of one simulated process; `cache` its shared level, if any.
fn credential(authority: &Authority, cache: Option<DistributedCache>) -> ClientSecretCredential {
    // No timeouts: on the paused clock an armed timer would jump while a socket is read.
    let http = HttpClient::builder()
        .add_root_certificates_pem(authority.ca_pem())
        .timeout(None)
        .retry(RetryOptions::default().total_timeout(None))
        .build()
        .unwrap();
    let mut builder = ClientSecretCredential::builder(TENANT, CLIENT_ID, "bench-secret")
        .authority_host(authority.url())
        .http_client(http);
    if let Some(cache) = cache {
        builder = builder.distributed_cache(cache);
    }
    builder.build().unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. The cost of a shared hit

async fn shared_hit_latency() {
    let server = common::redis::RedisServer::start();
    let authority = Authority::start().await;
    let cache = |url: &str| {
        DistributedCache::builder(RedisTokenCache::open(url).unwrap())
            .sealing_key(sealing_key())
            .build()
            .unwrap()
    };
    let connected = cache(&server.url());
    let warm = credential(&authority, Some(connected.clone()));
    warm.get_token([common::SCOPE]).await.unwrap();

    println!("| a process asks for its token | p50 | p90 | p99 |");
    println!("|---|---|---|---|");
    let mut local = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        warm.get_token([common::SCOPE]).await.unwrap();
        local.push(started.elapsed());
    }
    row("in its own memory (local hit)", local);

    let before = connected.stats();
    let mut shared = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let cold = credential(&authority, Some(connected.clone()));
        let started = Instant::now();
        cold.get_token([common::SCOPE]).await.unwrap();
        shared.push(started.elapsed());
    }
    let hits = connected.stats().shared_hits - before.shared_hits;
    assert_eq!(
        hits, SAMPLES as u64,
        "every cold credential hit the shared entry"
    );
    row("from Redis, connection open (shared hit)", shared);

    let mut first = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let own = cache(&server.url());
        let cold = credential(&authority, Some(own.clone()));
        let started = Instant::now();
        cold.get_token([common::SCOPE]).await.unwrap();
        first.push(started.elapsed());
        assert_eq!(
            own.stats().shared_hits,
            1,
            "a shared hit on a new connection"
        );
    }
    row("from Redis, first call of the process (connects)", first);

    let posts = authority.token_posts();
    let mut idp = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let cold = credential(&authority, None);
        let started = Instant::now();
        cold.get_token([common::SCOPE]).await.unwrap();
        idp.push(started.elapsed());
    }
    assert_eq!(
        authority.token_posts() - posts,
        SAMPLES,
        "one token request each"
    );
    row(
        "from the loopback authority (TLS handshake, token request)",
        idp,
    );
    println!();
}

fn row(case: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    let at = |q: f64| {
        let last = latencies.len() - 1;
        let i = ((last as f64) * q).round() as usize;
        format_duration(latencies[i])
    };
    println!("| {case} | {} | {} | {} |", at(0.5), at(0.9), at(0.99));
}

fn format_duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Identity provider calls per fleet

async fn idp_calls_per_fleet() {
    println!(
        "| processes | token requests over ten 1 h lifetimes, no shared cache | with the shared cache |"
    );
    println!("|---|---|---|");
    for n in [1, 16, 64] {
        let alone = fleet_token_requests(n, false).await;
        let shared = fleet_token_requests(n, true).await;
        println!("| {n} | {alone} | {shared} |");
    }
}

/// Token requests `n` processes make over ten lifetimes, each asking every [`CALL_EVERY`].
async fn fleet_token_requests(n: usize, shared: bool) -> usize {
    let authority = Authority::start().await;
    let store = MemoryStore::default();
    let credentials: Vec<_> = (0..n)
        .map(|_| {
            let cache = shared.then(|| {
                DistributedCache::builder(store.clone())
                    .sealing_key(sealing_key())
                    .build()
                    .unwrap()
            });
            credential(&authority, cache)
        })
        .collect();
    let end = Instant::now() + LIFETIME * 10;
    while Instant::now() < end {
        for result in join_all(credentials.iter().map(|c| c.get_token([common::SCOPE]))).await {
            result.unwrap();
        }
        tokio::time::sleep(CALL_EVERY).await;
    }
    authority.token_posts()
}

/// A store in this process, on tokio's clock: what Redis does for the four operations.
#[derive(Clone, Debug, Default)]
struct MemoryStore(Arc<Mutex<Entries>>);

/// Values and when they expire.
type Entries = HashMap<String, (Vec<u8>, Instant)>;

impl MemoryStore {
    /// The live value under `key`, expired ones removed.
    fn live(&self, key: &str) -> Option<Vec<u8>> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(key) {
            Some((value, until)) if *until > Instant::now() => Some(value.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(key.to_owned(), (value.to_vec(), Instant::now() + ttl));
    }
}

impl TokenStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move { Ok(self.live(key)) })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.set(key, value, ttl);
            Ok(())
        })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            // One lock for the check and the set, as SET NX is one command.
            let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if map.get(key).is_some_and(|(_, until)| *until > now) {
                return Ok(false);
            }
            map.insert(key.to_owned(), (holder.as_bytes().to_vec(), now + ttl));
            Ok(true)
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if map
                .get(key)
                .is_some_and(|(value, _)| value == holder.as_bytes())
            {
                map.remove(key);
            }
            Ok(())
        })
    }
}
