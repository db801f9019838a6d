//! One process of a fleet that shares its tokens through Redis: a client-secret credential
//! with a [`DistributedCache`] over [`RedisTokenCache`], behind a `BearerTokenLayer` over
//! hyper-util's client. Run many copies of it and the fleet makes one token request per token
//! lifetime, not one per process.
//!
//! Configuration, from the environment:
//!
//! * `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`: the service principal
//!   (`AZURE_AUTHORITY_HOST` for another cloud).
//! * `REDIS_URL`: `redis://[user:password@]host:port/db`, or `rediss://` for TLS.
//! * `TOKEN_CACHE_KEY`: the sealing key, base64 of 32 random bytes
//!   (`head -c 32 /dev/urandom | base64`); every process of the fleet uses the same one.
//! * `TOKEN_CACHE_PREFIX` (optional): the namespace of the fleet's keys in Redis.
//! * `TOKEN_CACHE_BUDGET_MS` (optional): how long one Redis call may take before the process
//!   stops waiting and asks for its token itself (default 50).
//! * `API_URL`, `API_SCOPE`: the API to call and the scope of its tokens.
//! * `REQUESTS` (default 1) requests, one every `INTERVAL_MS` (default 1000).
//!
//! Logs to stderr (`RUST_LOG`, default `info`: the cache's warnings when Redis fails). Prints one line: the requests that succeeded and failed, the first request's latency and
//! the largest latency after it, and the cache's figures. Exits non-zero if a request failed.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/0 TOKEN_CACHE_KEY="$(head -c 32 /dev/urandom | base64)" \
//! API_URL='https://management.azure.com/subscriptions?api-version=2022-12-01' \
//! API_SCOPE=https://management.azure.com/.default REQUESTS=10 INTERVAL_MS=500 \
//!   cargo run --features redis --example distributed_cache
//! ```

use std::process::ExitCode;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::{Instant, MissedTickBehavior};
use tower::{ServiceBuilder, ServiceExt};
use tower_identity::distributed::{DistributedCache, RedisTokenCache, SealingKey};
use tower_identity::{
    BearerTokenLayer, BoxError, ClientSecretCredential, CredentialError, HttpClient, Roots,
};
use tracing_subscriber::EnvFilter;

/// How long the process waits for Redis at start before it goes on without it.
const CONNECT_LIMIT: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> ExitCode {
    // The error's Display, not the Debug a `Result` returned from main prints: a chain's
    // attempts one per line.
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            // A CredentialError's message already says what its sources say; hyper's errors
            // keep the cause (a refused connection, a certificate) in their sources.
            let mut cause: &(dyn std::error::Error + 'static) = &*error;
            while let (false, Some(next)) = (cause.is::<CredentialError>(), cause.source()) {
                eprintln!("  caused by: {next}");
                cause = next;
            }
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    // The cache says on stderr when Redis fails it (WARN, once) and comes back (INFO);
    // RUST_LOG=tower_identity=debug shows every outcome.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let api_url = required("API_URL", "the API to call")?;
    let scope = required(
        "API_SCOPE",
        "the scope of the API's tokens, e.g. https://management.azure.com/.default",
    )?;
    let requests: u32 = number("REQUESTS")?.unwrap_or(1);
    let interval = match number("INTERVAL_MS")?.unwrap_or(1000) {
        0 => return Err("INTERVAL_MS must be at least 1 (milliseconds between requests)".into()),
        ms => Duration::from_millis(ms),
    };

    // The shared level: Redis, sealed with the fleet's key. A Redis that is down or slow
    // costs at most the cache's time budget per call; no request fails because of it.
    let store = RedisTokenCache::open(&required(
        "REDIS_URL",
        "the fleet's Redis, redis://host:port/db",
    )?)?;
    // Connecting up front keeps the connection out of the first token's per-call budget. A
    // Redis that is down is no reason not to start: the cache works around it.
    match tokio::time::timeout(CONNECT_LIMIT, store.connect()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("Redis: {e}; tokens are fetched without it until it answers"),
        Err(_) => eprintln!(
            "Redis: no answer within {CONNECT_LIMIT:?}; tokens are fetched without it until it answers"
        ),
    }
    let mut cache =
        DistributedCache::builder(store).sealing_key(SealingKey::from_env("TOKEN_CACHE_KEY")?);
    if let Ok(prefix) = std::env::var("TOKEN_CACHE_PREFIX") {
        cache = cache.prefix(prefix);
    }
    if let Some(ms) = number("TOKEN_CACHE_BUDGET_MS")? {
        cache = cache.budget(Duration::from_millis(ms));
    }
    let cache = cache.build()?;

    // Token requests trust Mozilla's roots and the platform's store (on Linux, SSL_CERT_FILE
    // or SSL_CERT_DIR name the store).
    let http = HttpClient::builder()
        .roots(Roots::BundledAndPlatform)
        .build()?;
    let mut credential = ClientSecretCredential::builder(
        required("AZURE_TENANT_ID", "the service principal's tenant")?,
        required(
            "AZURE_CLIENT_ID",
            "the service principal's application (client) id",
        )?,
        required(
            "AZURE_CLIENT_SECRET",
            "the service principal's client secret",
        )?,
    )
    .http_client(http)
    .distributed_cache(cache.clone());
    // Set but blank is unset, as the library reads its variables: the public cloud.
    let authority_host = std::env::var("AZURE_AUTHORITY_HOST").ok();
    if let Some(host) = authority_host.filter(|h| !h.trim().is_empty()) {
        credential = credential.authority_host(host);
    }
    let credential = credential.build()?;

    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_platform_verifier(rustls::crypto::ring::default_provider())?
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client = ServiceBuilder::new()
        .layer(BearerTokenLayer::new(credential, [scope]))
        .service(Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https));

    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut ok, mut failed) = (0u32, 0u32);
    let mut first = None;
    let mut max_after_first = Duration::ZERO;
    for _ in 0..requests {
        ticks.tick().await;
        let started = Instant::now();
        let request = http::Request::get(&api_url).body(Empty::new())?;
        let outcome = match client.clone().oneshot(request).await {
            Ok(response) if response.status().is_success() => response
                .into_body()
                .collect()
                .await
                .map(drop)
                .map_err(BoxError::from),
            Ok(response) => Err(format!("the API answered {}", response.status()).into()),
            Err(e) => Err(e),
        };
        let latency = started.elapsed();
        match first {
            None => first = Some(latency),
            Some(_) => max_after_first = max_after_first.max(latency),
        }
        match outcome {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                eprintln!("request failed: {e}");
            }
        }
    }

    let stats = cache.stats();
    println!(
        "ok={ok} failed={failed} first_ms={} max_ms={} local_hits={} shared_hits={} \
         leases_won={} leases_lost={} idp_calls={} store_errors={}",
        first.unwrap_or_default().as_millis(),
        max_after_first.as_millis(),
        stats.local_hits,
        stats.shared_hits,
        stats.leases_won,
        stats.leases_lost,
        stats.idp_calls,
        stats.store_errors,
    );
    if failed > 0 {
        return Err(format!("{failed} of {requests} requests failed").into());
    }
    Ok(())
}

/// The variable `name`, or an error saying what to set it to.
fn required(name: &str, what: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("set {name} to {what}").into())
}

/// The number in `name`, if it is set.
fn number<T: std::str::FromStr>(name: &str) -> Result<Option<T>, BoxError> {
    match std::env::var(name) {
        Ok(value) => match value.parse() {
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(format!("{name} is not a number: {value:?}").into()),
        },
        Err(_) => Ok(None),
    }
}
