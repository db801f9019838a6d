//! The per-request cost of `BearerToken` with a fresh token, over an inner service that is
//! always ready and answers at once: against the bare service and against tower-http's
//! `SetRequestHeader` with a static value (the floor for "add a header") and with a value made
//! at run time (shared bytes, as a token's are). Every contender runs inside an entered tokio
//! runtime, and each call's future is polled once in place (see `contenders`). Allocation
//! counts come from divan's allocation profiler; `hot_path_instructions` counts the same
//! contenders' instructions.
//!
//! Samples are fixed and large (2000 samples of 200 calls): when divan sizes them itself it
//! picks 100–3200 calls per sample, and at ~200 ns a call the timer's own cost then inflates
//! the ratios between contenders. `--sample-count`/`--sample-size` on the command line still
//! override these.
//!
//! ```text
//! cargo bench --bench hot_path
//! ```

mod contenders;

use bytes::Bytes;
use divan::Bencher;
use http::Request;
use http_body_util::Full;
use tower::Service;

use contenders::{poll_once, request};

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

/// Samples per contender.
const SAMPLES: u32 = 2000;
/// Calls per sample: at ~200 ns a call a sample lasts ~40 µs, so the two clock reads that
/// bound it are ~0.1 % of it.
const CALLS: u32 = 200;

fn main() {
    divan::main();
}

fn run<S>(bencher: Bencher, mut service: S)
where
    S: Service<Request<Full<Bytes>>>,
    S::Response: Send,
    S::Future: Send,
{
    bencher
        .with_inputs(request)
        .bench_local_values(|request| poll_once(|| service.call(request)));
}

#[divan::bench(sample_count = SAMPLES, sample_size = CALLS)]
fn bare_service(bencher: Bencher) {
    run(bencher, contenders::bare());
}

#[divan::bench(sample_count = SAMPLES, sample_size = CALLS)]
fn set_request_header_static(bencher: Bencher) {
    run(bencher, contenders::set_request_header_static());
}

#[divan::bench(sample_count = SAMPLES, sample_size = CALLS)]
fn set_request_header_shared(bencher: Bencher) {
    run(bencher, contenders::set_request_header_shared());
}

#[divan::bench(sample_count = SAMPLES, sample_size = CALLS)]
fn bearer_token(bencher: Bencher) {
    run(bencher, contenders::bearer_token(false));
}

#[divan::bench(sample_count = SAMPLES, sample_size = CALLS)]
fn bearer_token_with_cae(bencher: Bencher) {
    run(bencher, contenders::bearer_token(true));
}

/// The two above over an inner service whose clone costs what a hyper-util HTTPS client's
/// does: what a wrapper that clones its inner service on every request pays with a real
/// client.
#[divan::bench(sample_count = SAMPLES, sample_size = CALLS)]
fn bearer_token_over_client(bencher: Bencher) {
    run(bencher, contenders::bearer_token_over_client(false));
}

#[divan::bench(sample_count = SAMPLES, sample_size = CALLS)]
fn bearer_token_with_cae_over_client(bencher: Bencher) {
    run(bencher, contenders::bearer_token_over_client(true));
}

/// Each request through a clone of the service, dropped after it, as handlers do with a
/// service kept in axum's state (`state.client.clone().oneshot(request)`): the template
/// itself never serves a request.
fn run_cloned<S>(bencher: Bencher, template: S)
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Response: Send,
    S::Future: Send,
{
    bencher
        .with_inputs(request)
        .bench_local_values(|request| poll_once(|| template.clone().call(request)));
}

#[divan::bench(sample_count = SAMPLES, sample_size = CALLS)]
fn set_request_header_shared_cloned(bencher: Bencher) {
    run_cloned(bencher, contenders::set_request_header_shared());
}

#[divan::bench(sample_count = SAMPLES, sample_size = CALLS)]
fn bearer_token_cloned(bencher: Bencher) {
    run_cloned(bencher, contenders::bearer_token(false));
}

/// The clock reads a fresh-token check could make, for scale (tokio's clock is the one the
/// layer reads; with tokio's `test-util` feature, which the dev-dependencies enable for the
/// benches too, it also checks for a paused clock). Ten times the calls per sample: a read
/// takes ~25 ns.
#[divan::bench(sample_count = SAMPLES, sample_size = 10 * CALLS)]
fn clock_tokio_instant_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

#[divan::bench(sample_count = SAMPLES, sample_size = 10 * CALLS)]
fn clock_std_instant_now() -> std::time::Instant {
    std::time::Instant::now()
}
