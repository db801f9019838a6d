//! Concurrency figures over real sockets (the loopback token endpoint and API of the
//! examples, HTTPS, one HTTP/2 connection): how many token requests a stampede makes, and
//! what the refresh window does to request latency when the token endpoint is slow or failing.
//! Prints a table; not a timing loop.
//!
//! ```text
//! cargo bench --bench stampede
//! ```

#[path = "../examples/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_identity::bearer::{BearerToken, BearerTokenLayer};
use tower_identity::{ClientSecretCredential, HttpClient};

use common::authority::{Authority, Fault, TokenShape};
use common::resource::Resource;

type Api = BearerToken<common::HyperClient<Full<Bytes>>>;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{:<58} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "scenario", "tokens", "p50 ms", "p90 ms", "p99 ms", "max ms", "ok"
    );
    runtime.block_on(async {
        cold_stampede(10_000).await;
        refresh_window(
            "refresh window, token endpoint slow (500 ms)",
            Fault::Delay(Duration::from_millis(500)),
        )
        .await;
        refresh_window(
            "refresh window, token endpoint failing (503)",
            Fault::ServerError(503),
        )
        .await;
    });
}

/// The API behind the layer, over one HTTP/2 connection.
fn api_client(layer: BearerTokenLayer) -> Api {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(common::tls_config())
        .https_only()
        .enable_http2()
        .build();
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(https);
    ServiceBuilder::new().layer(layer).service(client)
}

fn credential(authority: &Authority, retry: bool) -> ClientSecretCredential {
    let mut http = HttpClient::builder().add_root_certificates_pem(authority.ca_pem());
    if !retry {
        http = http.no_retry();
    }
    ClientSecretCredential::builder(
        "contoso",
        "00000000-0000-0000-0000-0000000000be",
        "bench-secret",
    )
    .authority_host(authority.url())
    .http_client(http.build().unwrap())
    .build()
    .unwrap()
}

/// `n` requests at once; their latencies and how many succeeded.
async fn burst(service: &Api, api: &Resource, n: usize) -> (Vec<Duration>, usize) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let request = http::Request::get(format!("{}/r/{i}", api.url()))
                .body(Full::default())
                .unwrap();
            let service = service.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let ok = match service.oneshot(request).await {
                    Ok(response) => {
                        let ok = response.status() == StatusCode::OK;
                        response.into_body().collect().await.is_ok() && ok
                    }
                    Err(_) => false,
                };
                (started.elapsed(), ok)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(n);
    let mut ok = 0;
    for task in tasks {
        let (latency, success) = task.await.unwrap();
        latencies.push(latency);
        ok += usize::from(success);
    }
    (latencies, ok)
}

fn row(scenario: &str, tokens: usize, mut latencies: Vec<Duration>, ok: usize) {
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    println!(
        "{scenario:<58} {tokens:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>7}",
        at(0.50),
        at(0.90),
        at(0.99),
        at(1.0),
        format!("{ok}/{}", latencies.len())
    );
}

async fn cold_stampede(n: usize) {
    let (authority, api) = (Authority::start().await, Resource::start().await);
    authority.push_fault(Fault::Delay(Duration::from_millis(200)));
    let service = api_client(BearerTokenLayer::new(
        credential(&authority, true),
        [common::SCOPE],
    ));
    let (latencies, ok) = burst(&service, &api, n).await;
    row(
        &format!("{n} concurrent cold requests (token endpoint 200 ms)"),
        authority.token_posts(),
        latencies,
        ok,
    );
}

/// Requests in waves of 100 through the refresh window while the token endpoint misbehaves,
/// compared with the same waves before the window.
async fn refresh_window(title: &str, fault: Fault) {
    let (authority, api) = (Authority::start().await, Resource::start().await);
    authority.set_response(TokenShape {
        expires_in: 3600,
        refresh_in: Some(2),
        ..TokenShape::default()
    });
    let layer = BearerTokenLayer::builder(credential(&authority, false), [common::SCOPE])
        .refresh_jitter(Duration::ZERO)
        .build();
    let service = api_client(layer);
    burst(&service, &api, 1).await;
    let (mut before, mut before_ok) = (Vec::new(), 0);
    for _ in 0..10 {
        let (l, ok) = burst(&service, &api, 100).await;
        before.extend(l);
        before_ok += ok;
    }
    row(
        &format!(
            "  baseline before the window ({})",
            title.split(", ").nth(1).unwrap_or("")
        ),
        0,
        before,
        before_ok,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..100 {
        authority.push_fault(fault.clone());
    }
    let posts_before = authority.token_posts();
    let (mut during, mut during_ok) = (Vec::new(), 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let (l, ok) = burst(&service, &api, 100).await;
        during.extend(l);
        during_ok += ok;
    }
    row(
        title,
        authority.token_posts() - posts_before,
        during,
        during_ok,
    );
}
