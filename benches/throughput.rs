//! Loopback throughput: hyper-util's client → a hyper server (HTTP/1.1, keep-alive, plain TCP so
//! that TLS does not hide the layer's cost), the bare client against the same client with
//! `BearerToken`, interleaved so that the machine's load falls on both alike.
//!
//! The contenders alternate in short rounds in ABBA order (bare, layer, layer, bare: a load that
//! drifts linearly within a round cancels), each block `BLOCK` requests at `CONCURRENCY` at a
//! time over the one connection pool both share. Each round gives one ratio (layer ÷ bare); the
//! bench prints the median ratio with its interquartile range and min–max, and the per-request
//! cost the median implies, for two measures:
//! - wall clock, which is what a caller sees but also carries the server's and the scheduler's
//!   noise;
//! - the client's CPU time: the client runs on a current-thread runtime on the main thread (its
//!   connection tasks too), the server on a runtime of its own, so the main thread's CPU clock
//!   counts the client's work alone.
//!
//! It also prints each contender's heap allocations per request, counted on the client's
//! thread (a thread-local counter, no atomic).
//!
//! With `THROUGHPUT_BASE=header`, the base is not the bare client but the client behind
//! tower-http's `SetRequestHeader`, sending an `Authorization` field of the same length as the
//! layer's: the ratio then leaves out what sending that field costs (hyper writes it on every
//! request), which any way of authenticating pays, and keeps what the layer itself adds.
//!
//! With `THROUGHPUT_BASE=layer`, the base is the layer and the contender the layer with
//! `enable_cae(true)`: what keeping each request's head for a claims challenge's re-send
//! costs over a real client.
//!
//! ```text
//! cargo bench --bench throughput
//! THROUGHPUT_BASE=header cargo bench --bench throughput
//! THROUGHPUT_BASE=layer cargo bench --bench throughput
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::runtime::Runtime;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::set_header::SetRequestHeader;
use tower_identity::bearer::BearerTokenLayer;
use tower_identity::{AccessToken, CredentialError, CredentialExt, TokenRequest};

#[global_allocator]
static ALLOC: Counting = Counting;

/// The system allocator, counting the allocations of each thread (`alloc`, `alloc_zeroed`; a
/// `realloc` is not a new allocation).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Allocations the calling thread has made.
fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn count() {
    // `try_with`: a thread being torn down has no counter left.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call goes to the system allocator unchanged; counting touches only a
// const-initialised thread-local (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Requests in flight at a time.
const CONCURRENCY: usize = 32;
/// Requests per block (one contender's turn in a round).
const BLOCK: usize = 8 * CONCURRENCY;
/// Rounds measured, after `WARMUP` rounds that are not.
const ROUNDS: usize = 400;
const WARMUP: usize = 20;

fn main() {
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = server(&server_runtime);
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = match std::env::var("THROUGHPUT_BASE").as_deref() {
        Ok("header") => Base::Header,
        Ok("layer") => Base::Layer,
        Ok("bare") | Err(_) => Base::Bare,
        Ok(other) => panic!("THROUGHPUT_BASE={other}: expected `bare`, `header` or `layer`"),
    };
    let rounds = client_runtime.block_on(measure(addr, base));
    report(&rounds, base);
}

/// What the layer is compared with.
#[derive(Clone, Copy)]
enum Base {
    /// The bare client.
    Bare,
    /// The client behind `SetRequestHeader`, sending the layer's `Authorization` value.
    Header,
    /// The client behind the layer; the contender is then the layer with CAE.
    Layer,
}

impl Base {
    fn name(self) -> &'static str {
        match self {
            Base::Bare => "bare client",
            Base::Header => "client with SetRequestHeader",
            Base::Layer => "client with the layer",
        }
    }

    /// What is compared with the base.
    fn contender(self) -> &'static str {
        match self {
            Base::Bare | Base::Header => "layer",
            Base::Layer => "layer with CAE",
        }
    }
}

/// The token the credential gives, and the `SetRequestHeader` base sends.
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fresh.token";

/// A keep-alive HTTP/1.1 server answering `200 ok` to everything, on `runtime`'s threads.
fn server(runtime: &Runtime) -> SocketAddr {
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                stream.set_nodelay(true).ok();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    })
}

/// One contender's turn: wall-clock and client CPU time for `BLOCK` requests, and the client
/// thread's allocations.
#[derive(Clone, Copy)]
struct Block {
    wall: Duration,
    cpu: Duration,
    allocations: u64,
}

/// One ABBA round: the base's two blocks and the layer's two.
struct Round {
    base: [Block; 2],
    layer: [Block; 2],
}

async fn measure(addr: SocketAddr, base: Base) -> Vec<Round> {
    let uri = format!("http://{addr}/items");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let credential = tower::service_fn(|_: TokenRequest| async {
        Ok::<_, CredentialError>(AccessToken::new(
            TOKEN,
            tokio::time::Instant::now() + Duration::from_secs(3600),
        ))
    });
    let credential = credential.boxed_credential();
    let layer = |cae| {
        ServiceBuilder::new()
            .layer(
                BearerTokenLayer::builder(
                    credential.clone(),
                    ["https://api.example.test/.default"],
                )
                .allow_insecure_http(true)
                .enable_cae(cae)
                .build(),
            )
            .service(client.clone())
    };
    let (layer, cae) = (layer(false), layer(true));
    match base {
        Base::Bare => rounds(|| block(&client, &uri), || block(&layer, &uri)).await,
        Base::Header => {
            // Made at run time, as a token is: its clone per request is a reference count.
            let value = HeaderValue::from_maybe_shared(Bytes::from(format!("Bearer {TOKEN}")))
                .expect("a valid header value");
            let header = SetRequestHeader::overriding(client, AUTHORIZATION, value);
            rounds(|| block(&header, &uri), || block(&layer, &uri)).await
        }
        Base::Layer => rounds(|| block(&layer, &uri), || block(&cae, &uri)).await,
    }
}

/// The ABBA rounds of `base` and `layer` (the contender), each call a block of requests.
async fn rounds<A, B>(base: impl Fn() -> A, layer: impl Fn() -> B) -> Vec<Round>
where
    A: Future<Output = Block>,
    B: Future<Output = Block>,
{
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..WARMUP + ROUNDS {
        let base_1 = base().await;
        let layer_1 = layer().await;
        let layer_2 = layer().await;
        let base_2 = base().await;
        if round >= WARMUP {
            rounds.push(Round {
                base: [base_1, base_2],
                layer: [layer_1, layer_2],
            });
        }
    }
    rounds
}

/// `BLOCK` requests through `service`, `CONCURRENCY` at a time, bodies read.
async fn block<S>(service: &S, uri: &str) -> Block
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<hyper::body::Incoming>>
        + Clone
        + Send
        + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    let wall = Instant::now();
    let cpu = thread_cpu();
    let allocated = allocations();
    for _ in 0..BLOCK / CONCURRENCY {
        let mut tasks = Vec::with_capacity(CONCURRENCY);
        for _ in 0..CONCURRENCY {
            let request = Request::get(uri).body(Full::default()).unwrap();
            let service = service.clone();
            tasks.push(tokio::spawn(async move {
                let response = service.oneshot(request).await.unwrap();
                response.into_body().collect().await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    }
    Block {
        wall: wall.elapsed(),
        cpu: thread_cpu() - cpu,
        allocations: allocations() - allocated,
    }
}

/// The calling thread's CPU time (user and system).
fn thread_cpu() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn report(rounds: &[Round], base: Base) {
    println!(
        "{} ABBA rounds, {BLOCK} requests per block, {CONCURRENCY} in flight, HTTP/1.1 keep-alive over loopback",
        rounds.len()
    );
    println!();
    println!(
        "| measure | {}, per request (median) | {contender} ÷ base, median of per-round ratios | IQR | min–max | {contender}'s cost implied |",
        base.name(),
        contender = base.contender(),
    );
    println!("|---|---|---|---|---|---|");
    row("wall clock", rounds, |block| block.wall);
    row("client CPU time", rounds, |block| block.cpu);
    let per_request = |blocks: fn(&Round) -> &[Block; 2]| {
        let mut counts: Vec<f64> = rounds
            .iter()
            .flat_map(|round| blocks(round).iter())
            .map(|block| block.allocations as f64 / BLOCK as f64)
            .collect();
        quantiles(&mut counts)
    };
    let (base_allocations, layer_allocations) = (
        per_request(|round| &round.base),
        per_request(|round| &round.layer),
    );
    println!();
    println!(
        "Heap allocations per request on the client's thread, median (min–max) over blocks: {} {:.2} ({:.2}–{:.2}), {} {:.2} ({:.2}–{:.2})",
        base.name(),
        base_allocations[2],
        base_allocations[0],
        base_allocations[4],
        base.contender(),
        layer_allocations[2],
        layer_allocations[0],
        layer_allocations[4],
    );
}

/// One measure's line: the per-round ratios' median, quartiles and range.
fn row(name: &str, rounds: &[Round], measure: fn(&Block) -> Duration) {
    let sum = |blocks: &[Block; 2]| blocks.iter().map(measure).sum::<Duration>().as_secs_f64();
    let mut ratios: Vec<f64> = rounds
        .iter()
        .map(|round| sum(&round.layer) / sum(&round.base))
        .collect();
    let mut base: Vec<f64> = rounds
        .iter()
        .map(|round| sum(&round.base) / (2 * BLOCK) as f64)
        .collect();
    let ratio = quantiles(&mut ratios);
    let base = quantiles(&mut base)[2];
    let cost = (ratio[2] - 1.0) * base;
    println!(
        "| {name} | {:.2} µs | {:.4} | {:.4}–{:.4} | {:.4}–{:.4} | {:+.0} ns ({:+.2} %) |",
        base * 1e6,
        ratio[2],
        ratio[1],
        ratio[3],
        ratio[0],
        ratio[4],
        cost * 1e9,
        (ratio[2] - 1.0) * 100.0,
    );
}

/// Minimum, first quartile, median, third quartile, maximum.
fn quantiles(values: &mut [f64]) -> [f64; 5] {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    [at(0.0), at(0.25), at(0.5), at(0.75), at(1.0)]
}
