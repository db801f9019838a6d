//! The `hot_path` contenders by time, interleaved: each round times one batch of every
//! contender, in an order that rotates from round to round, so that a burst of load or a
//! change of clock speed falls on all of them alike. It prints each contender's fast end (the
//! 5th percentile of its batches) and median, and the ratios of the fast ends.
//!
//! Why beside `hot_path` (divan): divan times each contender in its own stretch of the run,
//! so a quiet stretch for one and a busy one for the other moves their ratio. Here the
//! services live on the heap, as an application's do (in a task, an `Arc`, a client struct),
//! and the fast end of thousands of batches is not one lucky sample. A ratio of medians is
//! not printed: noise adds time to both sides alike and pulls it towards 1.
//!
//! **Placement.** At this scale a contender's time depends on where its data lies: the same
//! binary measures `BearerToken` anywhere from ~125 to ~138 ns, and `SetRequestHeader` from
//! ~120 to ~133 ns, as the heap's and the stack's addresses move (a guess at the cause: loads
//! that share 4 KiB offsets with earlier stores wait for them). The heap's addresses are the
//! same from run to run, so one run can land on a bad placement every time.
//! `PAIRS_HEAP_PAD=n` allocates `n` bytes before anything is built, which moves every later
//! allocation; `benches/report.sh` runs the bench over several paddings and prints the median
//! of each ratio over them, with the range.
//!
//! ```text
//! cargo bench --bench hot_path_pairs
//! PAIRS_HEAP_PAD=64 cargo bench --bench hot_path_pairs
//! ```
//!
//! `PAIRS_ROUNDS` (default 3000) sets the rounds and `PAIRS_CALLS` (default 200, as
//! `hot_path`'s sample size) the calls per batch.

mod contenders;

use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::Service;

use contenders::{poll_once, request};

/// A contender: its name and one timed batch, in nanoseconds per call.
struct Contender {
    name: &'static str,
    batch: Box<dyn FnMut() -> f64>,
}

/// Batches of calls through `service`.
fn contender<S>(name: &'static str, mut service: S) -> Contender
where
    S: Service<Request<Full<Bytes>>> + 'static,
{
    batches(name, move |request| poll_once(|| service.call(request)))
}

/// [`contender`], each call through a clone of `template`, dropped after it (as `hot_path`'s
/// `run_cloned`).
fn cloned<S>(name: &'static str, template: S) -> Contender
where
    S: Service<Request<Full<Bytes>>> + Clone + 'static,
{
    batches(name, move |request| {
        poll_once(|| template.clone().call(request))
    })
}

/// A batch: the requests are made before the clock starts and the outputs dropped after it
/// stops, as divan does with `with_inputs` and `bench_local_values`.
fn batches<O: 'static>(
    name: &'static str,
    mut call: impl FnMut(Request<Full<Bytes>>) -> O + 'static,
) -> Contender {
    let calls = calls();
    let mut requests = Vec::with_capacity(calls);
    let mut outputs = Vec::with_capacity(calls);
    Contender {
        name,
        batch: Box::new(move || {
            requests.extend((0..calls).map(|_| request()));
            let start = Instant::now();
            for request in requests.drain(..) {
                outputs.push(call(request));
            }
            let elapsed = start.elapsed();
            outputs.clear();
            elapsed.as_secs_f64() * 1e9 / calls as f64
        }),
    }
}

/// Calls per batch: `PAIRS_CALLS`, 200 by default (`hot_path`'s sample size), at least 1.
fn calls() -> usize {
    setting("PAIRS_CALLS", 200).max(1)
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

const SRH_STATIC: &str = "tower-http SetRequestHeader (static value)";
const SRH_SHARED_CLONED: &str = "SetRequestHeader (run-time value), cloned per request";
const BEARER: &str = "BearerToken";
const BEARER_CAE: &str = "BearerToken with enable_cae(true)";
const BEARER_CLIENT: &str = "BearerToken over the client";
const BEARER_CAE_CLIENT: &str = "BearerToken with CAE over the client";
const BEARER_CLONED: &str = "BearerToken, cloned per request";

/// The ratios issue 12's targets name, and those of the other shapes.
const PAIRS: [(&str, &str); 4] = [
    (BEARER, SRH_STATIC),
    (BEARER_CAE, BEARER),
    (BEARER_CAE_CLIENT, BEARER_CLIENT),
    (BEARER_CLONED, SRH_SHARED_CLONED),
];

fn main() {
    let rounds = setting("PAIRS_ROUNDS", 3000).max(1);
    // Kept for the whole run: everything allocated after it lies that much further on.
    let _pad = std::hint::black_box(vec![0u8; setting("PAIRS_HEAP_PAD", 0)]);
    let mut contenders = vec![
        contender(SRH_STATIC, contenders::set_request_header_static()),
        contender("bare ready service", contenders::bare()),
        contender(
            "tower-http SetRequestHeader (value made at run time)",
            contenders::set_request_header_shared(),
        ),
        contender(BEARER, contenders::bearer_token(false)),
        contender(BEARER_CAE, contenders::bearer_token(true)),
        contender(BEARER_CLIENT, contenders::bearer_token_over_client(false)),
        contender(
            BEARER_CAE_CLIENT,
            contenders::bearer_token_over_client(true),
        ),
        cloned(SRH_SHARED_CLONED, contenders::set_request_header_shared()),
        cloned(BEARER_CLONED, contenders::bearer_token(false)),
    ];
    let n = contenders.len();
    // Warm-up: a tenth of the rounds, not recorded.
    for _ in 0..rounds / 10 {
        for contender in &mut contenders {
            (contender.batch)();
        }
    }
    let mut times = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for step in 0..n {
            let i = (round + step) % n;
            times[i].push((contenders[i].batch)());
        }
    }
    let fast_end: Vec<f64> = times.iter().map(|t| percentile(t, 5)).collect();
    let index = |name: &str| contenders.iter().position(|c| c.name == name).unwrap();
    println!(
        "{rounds} rounds of {} calls a contender, interleaved",
        calls()
    );
    println!(
        "{:<55} {:>10} {:>10} {:>8}",
        "contender", "p5 (ns)", "median", "p5 ÷ SRH"
    );
    let base = fast_end[index(SRH_STATIC)];
    for (i, contender) in contenders.iter().enumerate() {
        println!(
            "{:<55} {:>10.1} {:>10.1} {:>7.3}×",
            contender.name,
            fast_end[i],
            percentile(&times[i], 50),
            fast_end[i] / base
        );
    }
    println!();
    for (over, base) in PAIRS {
        let ratio = fast_end[index(over)] / fast_end[index(base)];
        println!("pair: {over} ÷ {base}: {ratio:.3}×");
    }
}

/// The `p`th percentile of `values`.
fn percentile(values: &[f64], p: usize) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(sorted.len() - 1) * p / 100]
}
