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
use gungraun::{library_benchmark, library_benchmark_group, main};
use http::Request;
use http_body_util::Full;
use tower::Service;
use tower_http::set_header::SetRequestHeader;
use tower_identity::bearer::BearerToken;

use contenders::{Ok200, OverClient, poll_once, request};

/// Requests in the shorter run; the longer serves twice as many.
const N: usize = 1000;

type Requests = Vec<Request<Full<Bytes>>>;

/// All the contenders, built in every benchmark's process in the same order, then the
/// requests, then a small fence: the heap is in the same state whichever one is measured.
/// glibc's `free` costs ~50 to ~250 instructions more a request depending on what was
/// allocated before (chunks coalescing, `malloc_consolidate`), a difference that would
/// otherwise land on whichever contender's setup differs. The fence, allocated last, keeps
/// the last request's memory from bordering the heap's top chunk: freeing into the top
/// triggers one `malloc_consolidate` of everything freed so far, a cost that grows with `N`.
struct Contenders {
    bare: Ok200,
    set_header: SetRequestHeader<Ok200, http::HeaderValue>,
    set_header_shared: SetRequestHeader<Ok200, http::HeaderValue>,
    bearer: BearerToken<Ok200>,
    bearer_cae: BearerToken<Ok200>,
    bearer_client: BearerToken<OverClient>,
    bearer_cae_client: BearerToken<OverClient>,
    bearer_template: BearerToken<Ok200>,
    _fence: Box<[u8; 64]>,
}

fn setup(n: usize) -> (Contenders, Requests) {
    let bare = contenders::bare();
    let set_header = contenders::set_request_header_static();
    let set_header_shared = contenders::set_request_header_shared();
    let bearer = contenders::bearer_token(false);
    let bearer_cae = contenders::bearer_token(true);
    let bearer_client = contenders::bearer_token_over_client(false);
    let bearer_cae_client = contenders::bearer_token_over_client(true);
    let bearer_template = contenders::bearer_token(false);
    let requests = (0..n).map(|_| request()).collect();
    let contenders = Contenders {
        bare,
        set_header,
        set_header_shared,
        bearer,
        bearer_cae,
        bearer_client,
        bearer_cae_client,
        bearer_template,
        _fence: Box::new([0; 64]),
    };
    (contenders, requests)
}

/// Serves every request, each response dropped inside the loop as in `hot_path`.
fn serve<S: Service<Request<Full<Bytes>>>>(service: &mut S, requests: Requests) {
    for request in requests {
        black_box(poll_once(|| service.call(black_box(request))));
    }
}

#[library_benchmark]
#[benches::calls(args = [N, 2 * N], setup = setup)]
fn bare_service((mut all, requests): (Contenders, Requests)) -> Contenders {
    serve(&mut all.bare, requests);
    all
}

#[library_benchmark]
#[benches::calls(args = [N, 2 * N], setup = setup)]
fn set_request_header_static((mut all, requests): (Contenders, Requests)) -> Contenders {
    serve(&mut all.set_header, requests);
    all
}

#[library_benchmark]
#[benches::calls(args = [N, 2 * N], setup = setup)]
fn set_request_header_shared((mut all, requests): (Contenders, Requests)) -> Contenders {
    serve(&mut all.set_header_shared, requests);
    all
}

#[library_benchmark]
#[benches::calls(args = [N, 2 * N], setup = setup)]
fn bearer_token((mut all, requests): (Contenders, Requests)) -> Contenders {
    serve(&mut all.bearer, requests);
    all
}

#[library_benchmark]
#[benches::calls(args = [N, 2 * N], setup = setup)]
fn bearer_token_with_cae((mut all, requests): (Contenders, Requests)) -> Contenders {
    serve(&mut all.bearer_cae, requests);
    all
}

#[library_benchmark]
#[benches::calls(args = [N, 2 * N], setup = setup)]
fn bearer_token_over_client((mut all, requests): (Contenders, Requests)) -> Contenders {
    serve(&mut all.bearer_client, requests);
    all
}

#[library_benchmark]
#[benches::calls(args = [N, 2 * N], setup = setup)]
fn bearer_token_with_cae_over_client((mut all, requests): (Contenders, Requests)) -> Contenders {
    serve(&mut all.bearer_cae_client, requests);
    all
}

/// Serves every request through a clone of `template`, dropped after it (see `hot_path`'s
/// `run_cloned`).
fn serve_cloned<S: Service<Request<Full<Bytes>>> + Clone>(template: &S, requests: Requests) {
    for request in requests {
        black_box(poll_once(|| template.clone().call(black_box(request))));
    }
}

#[library_benchmark]
#[benches::calls(args = [N, 2 * N], setup = setup)]
fn set_request_header_shared_cloned((all, requests): (Contenders, Requests)) -> Contenders {
    serve_cloned(&all.set_header_shared, requests);
    all
}

#[library_benchmark]
#[benches::calls(args = [N, 2 * N], setup = setup)]
fn bearer_token_cloned((all, requests): (Contenders, Requests)) -> Contenders {
    serve_cloned(&all.bearer_template, requests);
    all
}

library_benchmark_group!(
    name = hot_path;
    benchmarks =
        bare_service,
        set_request_header_static,
        set_request_header_shared,
        bearer_token,
        bearer_token_with_cae,
        bearer_token_over_client,
        bearer_token_with_cae_over_client,
        set_request_header_shared_cloned,
        bearer_token_cloned
);

main!(library_benchmark_groups = hot_path);
