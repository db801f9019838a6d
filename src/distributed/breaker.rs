//! The time budget of every store call, and the circuit breaker over them.
//!
//! A call that errs or outlives the budget is a failure, except a call that gave up waiting on
//! a connection attempt another call started ([`StoreError::connecting`]): only the call that
//! started it counts its wait. After `failures` consecutive ones the breaker opens for
//! `open_for`: calls are not made, and the cache goes straight to the identity provider. When
//! `open_for` has passed, calls are tried again; the first that succeeds closes the breaker, a
//! failure opens it for another `open_for`. Opening is logged once at WARN, closing once at
//! INFO; the rest is DEBUG. Time is tokio's clock.
//!
//! `RedisTokenCache` reports such waits for every connection it makes: the first, one after a
//! failed attempt, and one after a connection dropped (one failure per drop: the call that
//! found it dropped, or over RESP3 the first call that fails on it or gives up waiting on the
//! new one; not the others, nor a call safe to repeat answered over the new connection within its budget). Against an address that never answers, one
//! failure is counted per attempt (given up after 5 s): the breaker opens some (`failures` − 1)
//! × 5 s after the first call, every call meanwhile spending the whole budget. When the
//! address goes silent under a connection already made, within about 2 s if calls come
//! faster than that (each sent on the silent connection counts while the store's `PING` of it
//! waits), else some 2 s later than that (the attempt the `PING` starts counts for no call).

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::stats::Counters;
use super::store::{StoreError, with_deadline};

/// The budget and the breaker's state.
#[derive(Debug)]
pub(super) struct Breaker {
    budget: Duration,
    failures: u32,
    open_for: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Failures in a row.
    consecutive: u32,
    /// While open: since when. Compared as time elapsed, not as an end instant: an
    /// `open_for` past what the clock can represent (`Duration::MAX`) then keeps the breaker
    /// open for the process's life, never not at all.
    opened_at: Option<Instant>,
}

impl Breaker {
    pub(super) fn new(budget: Duration, failures: u32, open_for: Duration) -> Self {
        Self {
            budget,
            failures,
            open_for,
            state: Mutex::default(),
        }
    }

    pub(super) fn budget(&self) -> Duration {
        self.budget
    }

    /// Makes the store call `op` (named for the logs) and waits for it within the budget;
    /// `None` when the breaker is open (the call is not even made) or the call failed.
    pub(super) async fn call<T, F>(
        &self,
        op: &'static str,
        call: impl FnOnce() -> F,
        stats: &Counters,
    ) -> Option<T>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        if self.is_open(Instant::now()) {
            tracing::debug!(op, "distributed token cache: breaker open, store not asked");
            return None;
        }
        let call = call();
        // A store can stop waiting on another call's connection attempt at the budget's end and
        // say so (`StoreError::connecting`). The timeout polls the call before its own timer,
        // so at the shared instant the call's answer wins.
        let answer = match Instant::now().checked_add(self.budget) {
            Some(deadline) => {
                tokio::time::timeout_at(deadline, with_deadline(deadline, call)).await
            }
            None => tokio::time::timeout(self.budget, call).await,
        };
        let failure = match answer {
            Ok(Ok(value)) => {
                self.succeeded();
                return Some(value);
            }
            Ok(Err(error)) if error.is_connecting() => {
                // A miss for this call, not a failure of the store: not counted.
                stats.store_error();
                tracing::debug!(op, error = %error, outcome = "store_error", "distributed token cache: store call missed while the connection is being made");
                return None;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {:?}", self.budget),
        };
        stats.store_error();
        tracing::debug!(op, error = %failure, outcome = "store_error", "distributed token cache: store call failed");
        self.failed(&failure);
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Each write leaves the state whole: a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_open(&self, now: Instant) -> bool {
        self.lock()
            .opened_at
            .is_some_and(|at| now.saturating_duration_since(at) < self.open_for)
    }

    fn succeeded(&self) {
        let mut state = self.lock();
        state.consecutive = 0;
        if state.opened_at.take().is_some() {
            tracing::info!(
                "distributed token cache: the store answers again; sharing tokens again"
            );
        }
    }

    fn failed(&self, failure: &str) {
        let mut state = self.lock();
        state.consecutive = state.consecutive.saturating_add(1);
        if state.consecutive < self.failures {
            return;
        }
        if state.opened_at.replace(Instant::now()).is_none() {
            tracing::warn!(
                error = %failure,
                failures = state.consecutive,
                open_for = ?self.open_for,
                "distributed token cache: the store keeps failing; each process asks the identity provider on its own for now"
            );
        } else {
            tracing::debug!(error = %failure, "distributed token cache: the store still fails; breaker stays open");
        }
    }
}
