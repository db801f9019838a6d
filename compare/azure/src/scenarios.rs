//! The six scenarios. Each builds a fresh stack, runs, and returns its figures; the server's
//! plan says how token requests are answered.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::alloc;
use crate::server::{Plan, Renewal, Server};
use crate::stacks::{self, Options, Side, Stack, StackFn};

const CONCURRENCY: usize = 64;
/// Opens the connections of all 64 workers before anything is measured.
const WARM_UP: Duration = Duration::from_millis(500);
/// Scenario 1 measures each stack for `STEADY_SLICES` × `STEADY_SLICE` (3 s).
const STEADY_SLICE: Duration = Duration::from_millis(500);
const STEADY_SLICES: usize = 6;
const ALLOC_REQUESTS: i64 = 20_000;
const SLOW_RENEWAL_DELAY: Duration = Duration::from_millis(500);
/// When the first token of scenarios 3 and 4 is due for renewal (see `server::Plan`).
const RENEWAL_DUE: Duration = Duration::from_secs(2);
/// Scenario 3's window opens this long before the renewal is due and lasts `RENEWAL_WINDOW`
/// (scenario 4's opens when it is due). Short, so that the 64 requests azure_core holds
/// during the renewal weigh in its p99: a few percent of one second's requests, but under
/// 1 % of three seconds'.
const RENEWAL_LEAD: Duration = Duration::from_millis(250);
const RENEWAL_WINDOW: Duration = Duration::from_secs(1);
const UNAVAILABLE_WINDOW: Duration = Duration::from_secs(6);
const COLD_REQUESTS: usize = 10_000;
const CAE_ROUNDS: usize = 20;

/// One figure of one run.
#[derive(Clone, Debug)]
pub enum Cell {
    Num(f64, u8),
    Text(String),
}

impl Cell {
    fn num(value: f64, decimals: u8) -> Cell {
        Cell::Num(value, decimals)
    }

    /// `ours ÷ azure` for numbers; `—` for text.
    pub fn ratio(ours: &Cell, azure: &Cell) -> String {
        match (ours, azure) {
            (Cell::Num(a, _), Cell::Num(b, _)) if *b != 0.0 => format!("{:.2}", a / b),
            (Cell::Num(a, _), Cell::Num(_, _)) if *a != 0.0 => "∞".to_owned(),
            (Cell::Num(..), Cell::Num(..)) => "—".to_owned(),
            _ => "—".to_owned(),
        }
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::Num(value, decimals) => write!(f, "{value:.*}", usize::from(*decimals)),
            Cell::Text(text) => f.write_str(text),
        }
    }
}

pub type Cells = Vec<(&'static str, Cell)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Steady,
    Allocations,
    SlowRenewal,
    UnavailableRenewal,
    Cold,
    Cae,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Steady,
        Scenario::Allocations,
        Scenario::SlowRenewal,
        Scenario::UnavailableRenewal,
        Scenario::Cold,
        Scenario::Cae,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "1. steady, concurrency 64",
            Scenario::Allocations => "2. allocations, steady",
            Scenario::SlowRenewal => "3. renewal taking 500 ms",
            Scenario::UnavailableRenewal => "4. renewal answered 503",
            Scenario::Cold => "5. 10 000 cold requests",
            Scenario::Cae => "6. CAE claims challenge",
        }
    }

    /// Both sides' figures, `sides[0]` run first (scenario 1 interleaves them).
    pub async fn run(self, sides: [Side; 2], server: &Server) -> [Cells; 2] {
        if self == Scenario::Steady {
            server.state.set_plan(Plan {
                short_tokens: 0,
                renewal: Renewal::Normal,
            });
            let first = PairFirst { server, sides };
            let [a, b] = stacks::with_stack(sides[0], server, Options::default(), first).await;
            return if sides[0] == Side::Ours {
                [a, b]
            } else {
                [b, a]
            };
        }
        let mut cells = [Vec::new(), Vec::new()];
        for side in sides {
            eprintln!("{} · {side:?}", self.name());
            cells[usize::from(side == Side::Azure)] = self.run_one(side, server).await;
        }
        cells
    }

    async fn run_one(self, side: Side, server: &Server) -> Cells {
        let (short_tokens, renewal) = match self {
            Scenario::SlowRenewal => (1, Renewal::Slow(SLOW_RENEWAL_DELAY)),
            Scenario::UnavailableRenewal => (1, Renewal::Unavailable),
            _ => (0, Renewal::Normal),
        };
        server.state.set_plan(Plan {
            short_tokens,
            renewal,
        });
        let options = Options {
            gate: (self == Scenario::Cold).then_some(CONCURRENCY),
            cae: self == Scenario::Cae,
        };
        let run = || Run {
            scenario: self,
            server,
        };
        if self != Scenario::Cae {
            return stacks::with_stack(side, server, options, run()).await;
        }
        // One challenge takes about a millisecond: a single one is at the mercy of the
        // scheduler, so take the median of several, each on a fresh stack.
        let mut rounds = Vec::with_capacity(CAE_ROUNDS);
        for _ in 0..CAE_ROUNDS {
            rounds.push(stacks::with_stack(side, server, options, run()).await);
        }
        cae_summary(&rounds)
    }
}

/// Scenario 6's rounds in one set of cells: the status if every round agreed, the mean
/// counts, the median time.
fn cae_summary(rounds: &[Cells]) -> Cells {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, (metric, cell))| {
            let cells = rounds.iter().map(|round| &round[i].1);
            let summary = match cell {
                Cell::Text(_) => {
                    let mut texts: Vec<String> = cells.map(ToString::to_string).collect();
                    texts.sort();
                    texts.dedup();
                    Cell::Text(texts.join(", "))
                }
                Cell::Num(_, decimals) => {
                    let mut values: Vec<f64> = cells
                        .filter_map(|cell| match cell {
                            Cell::Num(value, _) => Some(*value),
                            Cell::Text(_) => None,
                        })
                        .collect();
                    values.sort_by(f64::total_cmp);
                    if metric.starts_with("median") {
                        Cell::num(values[values.len() / 2], *decimals)
                    } else {
                        Cell::num(values.iter().sum::<f64>() / values.len() as f64, *decimals)
                    }
                }
            };
            (*metric, summary)
        })
        .collect()
}

struct Run<'a> {
    scenario: Scenario,
    server: &'a Server,
}

impl StackFn<Cells> for Run<'_> {
    async fn run<S: Stack>(self, stack: S) -> Cells {
        let state = &self.server.state;
        let tokens_before = state.token_requests.load(Ordering::SeqCst);
        let tokens = || {
            Cell::num(
                (state.token_requests.load(Ordering::SeqCst) - tokens_before) as f64,
                0,
            )
        };
        match self.scenario {
            Scenario::Steady => unreachable!("scenario 1 runs both stacks together: steady_pair"),
            Scenario::Allocations => {
                warm(&stack).await;
                let (load, allocations) =
                    alloc::counted(load(&stack, Stop::Count(ALLOC_REQUESTS), false)).await;
                vec![(
                    "heap allocations per request",
                    Cell::num(allocations as f64 / (load.ok + load.failed) as f64, 1),
                )]
            }
            Scenario::SlowRenewal => {
                let due = warm(&stack).await + RENEWAL_DUE;
                load(&stack, Stop::At(due - RENEWAL_LEAD), false).await;
                let load = load(&stack, Stop::For(RENEWAL_WINDOW), true).await;
                vec![
                    ("max latency, ms", Cell::num(load.percentile(1.0), 1)),
                    ("p99 latency, ms", Cell::num(load.percentile(0.99), 2)),
                    (
                        "requests served in the window (higher is better)",
                        Cell::num(load.ok as f64, 0),
                    ),
                    ("token requests", tokens()),
                ]
            }
            Scenario::UnavailableRenewal => {
                let due = warm(&stack).await + RENEWAL_DUE;
                load(&stack, Stop::At(due), false).await;
                let load = load(&stack, Stop::For(UNAVAILABLE_WINDOW), true).await;
                vec![
                    (
                        "requests served in the window (higher is better)",
                        Cell::num(load.ok as f64, 0),
                    ),
                    ("failed requests", Cell::num(load.failed as f64, 0)),
                    ("longest wait, ms", Cell::num(load.percentile(1.0), 0)),
                    ("token requests (with transport retries)", tokens()),
                ]
            }
            Scenario::Cold => {
                let start = Instant::now();
                let tasks: Vec<_> = (0..COLD_REQUESTS)
                    .map(|_| {
                        let stack = stack.clone();
                        tokio::spawn(async move { stack.get().await })
                    })
                    .collect();
                let mut failed = 0;
                for task in tasks {
                    if !matches!(task.await, Ok(Ok(200))) {
                        failed += 1;
                    }
                }
                vec![
                    (
                        "total time, ms",
                        Cell::num(start.elapsed().as_secs_f64() * 1e3, 0),
                    ),
                    ("token requests", tokens()),
                    ("failed requests", Cell::num(f64::from(failed), 0)),
                ]
            }
            Scenario::Cae => {
                // A token first, accepted; then the resource asks for claims once.
                let _ = stack.get().await;
                let resource = &state.resource_requests;
                let (hits, tokens_then) = (
                    resource.load(Ordering::SeqCst),
                    state.token_requests.load(Ordering::SeqCst),
                );
                state.cae_armed.store(true, Ordering::SeqCst);
                let start = Instant::now();
                let status = stack.get().await;
                let elapsed = start.elapsed();
                state.cae_armed.store(false, Ordering::SeqCst);
                vec![
                    (
                        "status the caller gets",
                        Cell::Text(match status {
                            Ok(status) => status.to_string(),
                            Err(error) => format!("error: {error}"),
                        }),
                    ),
                    (
                        "requests to the resource per challenge",
                        Cell::num((resource.load(Ordering::SeqCst) - hits) as f64, 0),
                    ),
                    (
                        "token requests per challenge",
                        Cell::num(
                            (state.token_requests.load(Ordering::SeqCst) - tokens_then) as f64,
                            0,
                        ),
                    ),
                    (
                        "median time per challenge, ms",
                        Cell::num(elapsed.as_secs_f64() * 1e3, 2),
                    ),
                ]
            }
        }
    }
}

/// Scenario 1: both stacks built and warmed, then measured in alternating slices (ABBA), so
/// that load from elsewhere on the machine falls on both alike.
struct PairFirst<'a> {
    server: &'a Server,
    sides: [Side; 2],
}

impl StackFn<[Cells; 2]> for PairFirst<'_> {
    async fn run<S: Stack>(self, first: S) -> [Cells; 2] {
        let second = PairSecond { first };
        stacks::with_stack(self.sides[1], self.server, Options::default(), second).await
    }
}

struct PairSecond<A> {
    first: A,
}

impl<A: Stack> StackFn<[Cells; 2]> for PairSecond<A> {
    async fn run<S: Stack>(self, second: S) -> [Cells; 2] {
        warm(&self.first).await;
        warm(&second).await;
        let (mut first, mut other) = (Load::default(), Load::default());
        for slice in 0..STEADY_SLICES {
            if matches!(slice % 4, 0 | 3) {
                first.add(load(&self.first, Stop::For(STEADY_SLICE), true).await);
                other.add(load(&second, Stop::For(STEADY_SLICE), true).await);
            } else {
                other.add(load(&second, Stop::For(STEADY_SLICE), true).await);
                first.add(load(&self.first, Stop::For(STEADY_SLICE), true).await);
            }
        }
        [steady_cells(first), steady_cells(other)]
    }
}

fn steady_cells(mut load: Load) -> Cells {
    load.latencies.sort_unstable();
    vec![
        (
            "requests/s (higher is better)",
            Cell::num(load.ok as f64 / load.elapsed.as_secs_f64(), 0),
        ),
        ("p50 latency, ms", Cell::num(load.percentile(0.50), 2)),
        ("p99 latency, ms", Cell::num(load.percentile(0.99), 2)),
        ("max latency, ms", Cell::num(load.percentile(1.0), 1)),
        ("failed requests", Cell::num(load.failed as f64, 0)),
    ]
}

/// The bare hyper-util client's allocations per request, measured as scenario 2 does.
pub async fn bare_allocations(server: &Server) -> f64 {
    let stack = stacks::bare(server);
    warm(&stack).await;
    let (load, allocations) =
        alloc::counted(load(&stack, Stop::Count(ALLOC_REQUESTS), false)).await;
    allocations as f64 / (load.ok + load.failed) as f64
}

/// One request (the token), then the 64 workers for a moment (their connections); when the
/// first request came back, i.e. about when the token was issued.
async fn warm<S: Stack>(stack: &S) -> Instant {
    let _ = stack.get().await;
    let token_at = Instant::now();
    load(stack, Stop::For(WARM_UP), false).await;
    token_at
}

enum Stop {
    For(Duration),
    At(Instant),
    Count(i64),
}

#[derive(Default)]
struct Load {
    ok: u64,
    failed: u64,
    /// Requests still waiting when a timed window closed.
    unfinished: u64,
    elapsed: Duration,
    /// Sorted.
    latencies: Vec<Duration>,
}

impl Load {
    /// Adds another slice's figures (the latencies are sorted again by the caller).
    fn add(&mut self, other: Load) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.unfinished += other.unfinished;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }

    /// Milliseconds; `1.0` is the maximum.
    fn percentile(&self, p: f64) -> f64 {
        let Some(last) = self.latencies.len().checked_sub(1) else {
            return f64::NAN;
        };
        let index = ((last as f64) * p).round() as usize;
        self.latencies[index.min(last)].as_secs_f64() * 1e3
    }
}

/// `CONCURRENCY` workers, each sending one request after the other.
async fn load<S: Stack>(stack: &S, stop: Stop, record: bool) -> Load {
    let start = Instant::now();
    let (deadline, remaining) = match stop {
        Stop::For(duration) => (Some(start + duration), None),
        Stop::At(deadline) => (Some(deadline), None),
        Stop::Count(count) => (None, Some(Arc::new(AtomicI64::new(count)))),
    };
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (stack, remaining) = (stack.clone(), remaining.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed, mut unfinished) = (0u64, 0u64, 0u64);
                let mut latencies = Vec::with_capacity(if record { 100_000 } else { 0 });
                loop {
                    if let Some(remaining) = &remaining
                        && remaining.fetch_sub(1, Ordering::Relaxed) <= 0
                    {
                        break;
                    }
                    let sent = Instant::now();
                    // A timed window is exact: a request still waiting when it closes is
                    // dropped and counted as unfinished (azure_core's renewal retries a 503
                    // for tens of seconds while every request waits on its lock).
                    let status = match deadline {
                        Some(deadline) => {
                            match tokio::time::timeout_at(deadline, stack.get()).await {
                                Ok(status) => status,
                                Err(_) => {
                                    unfinished += 1;
                                    if record {
                                        latencies.push(sent.elapsed());
                                    }
                                    break;
                                }
                            }
                        }
                        None => stack.get().await,
                    };
                    match status {
                        Ok(200) => ok += 1,
                        _ => failed += 1,
                    }
                    if record {
                        latencies.push(sent.elapsed());
                    }
                }
                (ok, failed, unfinished, latencies)
            })
        })
        .collect();
    let mut load = Load::default();
    for worker in workers {
        let (ok, failed, unfinished, latencies) = worker.await.expect("load worker");
        load.ok += ok;
        load.failed += failed;
        load.unfinished += unfinished;
        load.latencies.extend(latencies);
    }
    load.elapsed = start.elapsed();
    load.latencies.sort_unstable();
    load
}
