//! Instructions per request of the `hot_path` contenders, counted by callgrind through gungraun:
//! unlike time, instruction counts do not move with the machine's load.
//!
//! Each contender serves `N` and then `2 × N` requests built beforehand (building the service
//! and the requests is setup, outside the count); `benches/report.sh` prints
//! `(Ir(2N) − Ir(N)) / N`, the instructions one more request costs, so what every run pays once
//! (the loop's entry, dropping the service and the emptied vector) cancels.
//!
//! Needs valgrind (`apt-get install valgrind`) and the runner at the library's exact version;
//! CI does not run it:
//!
//! ```text
//! cargo install gungraun-runner --version 0.18.2 --locked
//! cargo bench --bench hot_path_instructions
//! ```

mod contenders;

use std::hint::black_box;

use bytes::Bytes;
use futures_util::FutureExt;
use gungraun::{library_benchmark, library_benchmark_group, main};
use http::Request;
use http_body_util::Full;
use tower::Service;
use tower_http::set_header::SetRequestHeader;
use tower_identity::bearer::BearerToken;

use contenders::{Ok200, request};

/// Requests in the shorter run; the longer serves twice as many.
const N: usize = 1000;

type Requests = Vec<Request<Full<Bytes>>>;

/// Serves every request, each response dropped inside the loop as in `hot_path`.
fn serve<S: Service<Request<Full<Bytes>>>>(service: &mut S, requests: Requests) {
    for request in requests {
        black_box(service.call(black_box(request)).now_or_never());
    }
}

fn requests(n: usize) -> Requests {
    (0..n).map(|_| request()).collect()
}

fn bare(n: usize) -> (Ok200, Requests) {
    (Ok200, requests(n))
}

fn set_header(n: usize) -> (SetRequestHeader<Ok200, http::HeaderValue>, Requests) {
    (contenders::set_request_header_static(), requests(n))
}

fn bearer(n: usize) -> (BearerToken<Ok200>, Requests) {
    (contenders::bearer_token(false), requests(n))
}

fn bearer_cae(n: usize) -> (BearerToken<Ok200>, Requests) {
    (contenders::bearer_token(true), requests(n))
}

#[library_benchmark]
#[benches::calls(args = [N, 2 * N], setup = bare)]
fn bare_service((mut service, requests): (Ok200, Requests)) -> Ok200 {
    serve(&mut service, requests);
    service
}

#[library_benchmark]
#[benches::calls(args = [N, 2 * N], setup = set_header)]
fn set_request_header_static(
    (mut service, requests): (SetRequestHeader<Ok200, http::HeaderValue>, Requests),
) -> SetRequestHeader<Ok200, http::HeaderValue> {
    serve(&mut service, requests);
    service
}

#[library_benchmark]
#[benches::calls(args = [N, 2 * N], setup = bearer)]
fn bearer_token((mut service, requests): (BearerToken<Ok200>, Requests)) -> BearerToken<Ok200> {
    serve(&mut service, requests);
    service
}

#[library_benchmark]
#[benches::calls(args = [N, 2 * N], setup = bearer_cae)]
fn bearer_token_with_cae(
    (mut service, requests): (BearerToken<Ok200>, Requests),
) -> BearerToken<Ok200> {
    serve(&mut service, requests);
    service
}

library_benchmark_group!(
    name = hot_path;
    benchmarks = bare_service, set_request_header_static, bearer_token, bearer_token_with_cae
);

main!(library_benchmark_groups = hot_path);
