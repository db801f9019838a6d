//! One owner's steps of blocking file I/O (a token cache file's: a lock attempt, a read, a
//! write), several at a time, each on a thread of its own ([`detach`]) and waited for
//! [`READ_TIMEOUT`](super::READ_TIMEOUT) at most from when it started.
//!
//! Unlike [`OneRead`](super::OneRead)'s reads, steps do not wait for one another: a cache
//! file is read by many requests at once, each step its own work. What they keep is the rule
//! for a file system that stops answering: while a step that ran [`READ_TIMEOUT`](super::READ_TIMEOUT) has not
//! returned, new steps are refused at once ([`StepFailure::Refused`]), their work not run,
//! instead of each starting one more thread that would hang with it; once it has returned,
//! steps run again. A step counts from when it starts until its thread returns, whether its
//! caller still waits for it or gave up.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

use super::{detach, timeout_after};

/// Why a step gave no result.
pub(crate) enum StepFailure<W> {
    /// It has run [`READ_TIMEOUT`](super::READ_TIMEOUT) without returning. It goes on on its thread: what it does
    /// (a write included), it does when its file system answers, if ever.
    Overran,
    /// Not run: a step that ran [`READ_TIMEOUT`](super::READ_TIMEOUT) has not returned. The work comes back unrun,
    /// so that the caller chooses where to drop what it holds (a lock file's guard removes the
    /// file when dropped, which is I/O on that file system).
    Refused(W),
    /// Its thread could not be started (the work was dropped), or ended without its result.
    Thread(io::Error),
}

impl<W> std::fmt::Debug for StepFailure<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepFailure::Overran => f.write_str("Overran"),
            StepFailure::Refused(_) => f.write_str("Refused(..)"),
            StepFailure::Thread(error) => f.debug_tuple("Thread").field(error).finish(),
        }
    }
}

/// The steps of one owner (a token cache file: see the module docs). Clones share them.
#[derive(Clone, Default)]
pub(crate) struct Steps {
    /// Locked briefly, never across an `await` or I/O.
    running: Arc<Mutex<Running>>,
}

/// The steps whose threads have not returned.
#[derive(Default)]
struct Running {
    /// The number the next step gets.
    next: u64,
    /// Each running step's number and start.
    started: Vec<(u64, Instant)>,
}

impl Running {
    fn overran(&self, now: Instant) -> bool {
        self.started
            .iter()
            .any(|(_, started)| now >= timeout_after(*started))
    }

    fn forget(&mut self, step: u64) {
        self.started.retain(|(number, _)| *number != step);
    }
}

fn lock(running: &Mutex<Running>) -> MutexGuard<'_, Running> {
    // Whole entries are pushed and removed: a panic cannot leave one half made.
    running.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Steps {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Whether a step that ran [`READ_TIMEOUT`](super::READ_TIMEOUT) has not returned (new steps are refused).
    #[cfg(test)]
    pub(crate) fn overran(&self) -> bool {
        lock(&self.running).overran(Instant::now())
    }

    /// The result of `work`, run now on a thread of its own and waited for until it has run
    /// [`READ_TIMEOUT`](super::READ_TIMEOUT); refused at once, unrun, while a step that ran that long has not
    /// returned. A panic in `work` continues in the caller.
    pub(crate) async fn run<T, W>(&self, work: W) -> Result<T, StepFailure<W>>
    where
        T: Send + 'static,
        W: FnOnce() -> T + Send + 'static,
    {
        let (step, now) = {
            let mut running = lock(&self.running);
            let now = Instant::now();
            if running.overran(now) {
                return Err(StepFailure::Refused(work));
            }
            let step = running.next;
            running.next = step.wrapping_add(1);
            running.started.push((step, now));
            (step, now)
        };
        let forget = Arc::downgrade(&self.running);
        let returned = move || {
            if let Some(running) = forget.upgrade() {
                lock(&running).forget(step);
            }
        };
        // Started with the lock released: a thread that cannot be started drops the work
        // here, and what it holds may do I/O when dropped.
        let receive = match detach(work, returned, now) {
            Ok(receive) => receive,
            Err(error) => {
                lock(&self.running).forget(step);
                return Err(StepFailure::Thread(error));
            }
        };
        match tokio::time::timeout_at(timeout_after(now), receive).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(panic))) => std::panic::resume_unwind(panic),
            Ok(Err(_closed)) => Err(StepFailure::Thread(io::Error::other(
                "the step's thread ended without its result",
            ))),
            Err(_elapsed) => Err(StepFailure::Overran),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::super::tests::{paused_runtime, until, within_a_minute};
    use super::*;

    /// Two steps run at once (neither waits for the other); one that overruns fails as such
    /// and the next is refused at once, its work given back unrun, until it has returned;
    /// then steps run again. The other step, 4 s younger, had returned in time.
    #[test]
    fn steps_run_side_by_side_and_an_overrun_refuses_until_it_returns() {
        within_a_minute(|| {
            paused_runtime().block_on(async {
                let steps = Steps::new();
                let calls = Arc::new(AtomicUsize::new(0));
                let (release_first, first_gate) = mpsc::channel::<()>();
                let (release_second, second_gate) = mpsc::channel::<()>();
                let first = tokio::spawn({
                    let (steps, calls) = (steps.clone(), Arc::clone(&calls));
                    async move {
                        steps
                            .run(move || {
                                calls.fetch_add(1, Ordering::SeqCst);
                                let _ = first_gate.recv();
                                "first"
                            })
                            .await
                    }
                });
                until(|| calls.load(Ordering::SeqCst) == 1).await;
                tokio::time::advance(Duration::from_secs(4)).await;
                let second = tokio::spawn({
                    let (steps, calls) = (steps.clone(), Arc::clone(&calls));
                    async move {
                        steps
                            .run(move || {
                                calls.fetch_add(1, Ordering::SeqCst);
                                let _ = second_gate.recv();
                                "second"
                            })
                            .await
                    }
                });
                until(|| calls.load(Ordering::SeqCst) == 2).await;
                drop(release_second);
                assert!(matches!(second.await.unwrap(), Ok("second")));
                tokio::time::advance(Duration::from_secs(6)).await;
                assert!(matches!(first.await.unwrap(), Err(StepFailure::Overran)));
                assert!(steps.overran());
                let refused = steps
                    .run(|| "unrun")
                    .now_or_never()
                    .expect("refused at once");
                let Err(StepFailure::Refused(work)) = refused else {
                    panic!("not refused");
                };
                assert_eq!(work(), "unrun");

                drop(release_first);
                until(|| !steps.overran()).await;
                assert!(matches!(steps.run(|| "again").await, Ok("again")));
            });
        });
    }

    /// A panic in a step continues in its caller, payload and all.
    #[test]
    fn a_panic_in_a_step_continues_in_the_caller() {
        within_a_minute(|| {
            paused_runtime().block_on(async {
                let steps = Steps::new();
                let panicked = tokio::spawn(async move {
                    steps
                        .run(|| -> () { std::panic::panic_any("the step's own") })
                        .await
                })
                .await
                .unwrap_err()
                .into_panic();
                assert_eq!(panicked.downcast_ref(), Some(&"the step's own"));
            });
        });
    }
}
