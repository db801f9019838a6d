//! The per-request cost of `BearerToken` with a fresh token, over an inner service that is
//! always ready and answers at once: against the bare service and against tower-http's
//! `SetRequestHeader` with a static value (the floor for "add a header"). Allocation counts
//! come from divan's allocation profiler.
//!
//! ```text
//! cargo bench --bench hot_path
//! ```

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use divan::Bencher;
use futures_util::FutureExt;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use http_body_util::{Empty, Full};
use tower::{Layer, Service, ServiceExt};
use tower_http::set_header::SetRequestHeaderLayer;
use tower_identity::bearer::BearerTokenLayer;
use tower_identity::{AccessToken, CredentialError, CredentialExt, TokenRequest};

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

/// The runtime the layer lives in, as in an application: the first request acquires the token
/// in it, and the measured calls run inside it (entered), where the layer's recheck timer can
/// be armed.
static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
});

fn main() {
    let _entered = RUNTIME.enter();
    divan::main();
}

/// Always ready, answers at once: the cost measured is the wrapper's.
#[derive(Clone)]
struct Ok200;

impl Service<Request<Full<Bytes>>> for Ok200 {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        ready(Ok(Response::new(Empty::new())))
    }
}

/// A request as a client would build it, with room in its header map.
fn request() -> Request<Full<Bytes>> {
    Request::get("https://api.example.test/items/42")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from_static(b"")))
        .unwrap()
}

fn run<S>(bencher: Bencher, mut service: S)
where
    S: Service<Request<Full<Bytes>>>,
    S::Response: Send,
    S::Future: Send,
{
    bencher
        .with_inputs(request)
        .bench_local_values(|request| service.call(request).now_or_never());
}

#[divan::bench]
fn bare_service(bencher: Bencher) {
    run(bencher, Ok200);
}

#[divan::bench]
fn set_request_header_static(bencher: Bencher) {
    let value =
        HeaderValue::from_static("Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.static.token");
    run(
        bencher,
        SetRequestHeaderLayer::overriding(AUTHORIZATION, value).layer(Ok200),
    );
}

/// A warm BearerToken: the first call (in a runtime) acquires the token, the measured calls
/// find it fresh.
fn warm(
    cae: bool,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Empty<Bytes>>, Future: Send> {
    let credential = tower::service_fn(|_: TokenRequest| async {
        Ok::<_, CredentialError>(AccessToken::new(
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fresh.token",
            tokio::time::Instant::now() + Duration::from_secs(3600),
        ))
    });
    let mut service = BearerTokenLayer::builder(
        credential.boxed_credential(),
        ["https://api.example.test/.default"],
    )
    .enable_cae(cae)
    .build()
    .layer(Ok200);
    RUNTIME.block_on(async {
        service
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
    });
    service
}

#[divan::bench]
fn bearer_token(bencher: Bencher) {
    run(bencher, warm(false));
}

#[divan::bench]
fn bearer_token_with_cae(bencher: Bencher) {
    run(bencher, warm(true));
}

/// The clock reads a fresh-token check could make, for scale (tokio's clock is the one the
/// layer reads; with tokio's `test-util` feature, which the test suite enables, it also checks
/// for a paused clock).
#[divan::bench]
fn clock_tokio_instant_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

#[divan::bench]
fn clock_std_instant_now() -> std::time::Instant {
    std::time::Instant::now()
}
