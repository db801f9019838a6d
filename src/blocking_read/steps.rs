//! One owner's steps of blocking file I/O (a token cache file's: a lock attempt, a read, a
//! write), several at a time, each on a thread of its own ([`detach`]) and waited for
//! [`READ_TIMEOUT`](super::READ_TIMEOUT) at most from when it started.
//!
//! Unlike [`OneRead`](super::OneRead)'s reads, steps do not wait for one another: a cache
//! file is read by many requests at once, each step its own work. What they keep is the rule
//! for a file system that stops answering: while a step that ran [`READ_TIMEOUT`](super::READ_TIMEOUT) has not
//! returned, new steps are refused at once ([`StepFailure::Refused`]), their work not run,
//! instead of each starting one more thread that would hang with it; once it has returned,
//! steps run again. Work that must not be dropped unrun is run all the same
//! ([`Steps::run_counted`]), counted as any step. A step counts from when it starts until its thread returns, whether its
//! caller still waits for it or gave up; a result its caller did not take (a lock file's
//! guard) is dropped before, as part of the step.
//!
//! The steps of a directory ([`Steps::of_directory`]) are the process's, not their owner's:
//! every file in it shares them (a token cache file, the legacy file beside it, their lock and
//! temporary files, whichever object or document type uses them), as they share its file
//! system, and a step's thread holds them until it returns, a process-wide map finding them by
//! the directory's key while they are held. So while one step there that overran has not
//! returned, the steps of every file of the directory are refused, an owner made again once
//! every earlier one was dropped (a credential built again) included, instead of starting more
//! threads on the file system that does not answer. The key is a directory's, not a mount's:
//! another directory on the same mount has steps of its own. The map keeps no entry once its
//! steps are no longer held.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use tokio::sync::oneshot;
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

/// The steps of one owner, or of a directory's files (see the module docs). Clones share them.
#[derive(Clone)]
pub(crate) struct Steps {
    shared: Arc<Shared>,
}

/// What the clones of a [`Steps`] share, and each running step's thread holds.
struct Shared {
    /// The key of its entry in [`directories`], if it has one.
    directory: Option<PathBuf>,
    /// Locked briefly, never across an `await` or I/O.
    running: Mutex<Running>,
}

/// The steps of each directory whose steps are held (by an owner, or a step's thread that has
/// not returned), by the directory's key: held weakly, each entry removed when its steps are
/// dropped. Locked only to look up, add or remove an entry, never with a [`Running`] locked.
fn directories() -> MutexGuard<'static, HashMap<PathBuf, Weak<Shared>>> {
    static DIRECTORIES: OnceLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> = OnceLock::new();
    // Whole entries are added and removed: a panic cannot leave one half made.
    DIRECTORIES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Shared {
    fn drop(&mut self) {
        let Some(directory) = &self.directory else {
            return;
        };
        let mut directories = directories();
        // Unless [`Steps::of_directory`] made new ones for it since these were let go.
        if directories
            .get(directory)
            .is_some_and(|entry| entry.strong_count() == 0)
        {
            directories.remove(directory);
        }
    }
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
    /// Steps of their own, shared by no file.
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::made(None)
    }

    /// The steps of the files in the directory whose key is `directory` (one directory, one
    /// key, as its owners resolve it), the same while any are held, by an owner or a step that
    /// has not returned (see the module docs); new ones otherwise.
    pub(crate) fn of_directory(directory: PathBuf) -> Self {
        let mut directories = directories();
        if let Some(shared) = directories.get(&directory).and_then(Weak::upgrade) {
            return Self { shared };
        }
        let steps = Self::made(Some(directory.clone()));
        directories.insert(directory, Arc::downgrade(&steps.shared));
        steps
    }

    fn made(directory: Option<PathBuf>) -> Self {
        Self {
            shared: Arc::new(Shared {
                directory,
                running: Mutex::default(),
            }),
        }
    }

    /// The key these steps were made for ([`Steps::of_directory`]); none for an owner's own.
    #[cfg(test)]
    pub(crate) fn directory(&self) -> Option<&std::path::Path> {
        self.shared.directory.as_deref()
    }

    /// A handle that does not hold them: while anything does, it gives them back.
    pub(crate) fn downgrade(&self) -> WeakSteps {
        WeakSteps(Arc::downgrade(&self.shared))
    }

    /// Whether a step that ran [`READ_TIMEOUT`](super::READ_TIMEOUT) has not returned (new steps are refused).
    #[cfg(test)]
    pub(crate) fn overran(&self) -> bool {
        lock(&self.shared.running).overran(Instant::now())
    }

    /// How many steps have not returned.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        lock(&self.shared.running).started.len()
    }

    /// How many steps have ever started (refused ones not included): a test waits for a
    /// caller to have started a known number of them, not for a pause that may be a gap
    /// between two.
    #[cfg(test)]
    pub(crate) fn started(&self) -> u64 {
        lock(&self.shared.running).next
    }

    /// A new step, started `now`: its number.
    fn start(running: &mut Running, now: Instant) -> u64 {
        let step = running.next;
        running.next = step.wrapping_add(1);
        running.started.push((step, now));
        step
    }

    /// Forgets `step` (it has returned); idempotent. It holds the steps until dropped (by the
    /// step's thread, once the step has returned): an owner made again for the file finds
    /// them while the step runs.
    fn forgetter(&self, step: u64) -> impl Fn() + Clone + Send + 'static {
        let steps = self.clone();
        move || lock(&steps.shared.running).forget(step)
    }

    /// The result of `work`, run now on a thread of its own and waited for until it has run
    /// [`READ_TIMEOUT`](super::READ_TIMEOUT); refused at once, unrun, while a step that ran that long has not
    /// returned. A panic in `work` continues in the caller.
    ///
    /// A result its caller does not take (the caller gave up, or this future was dropped) is
    /// dropped as part of the step, on a thread that is not the executor's, the step counting
    /// until it is: a lock file's guard in it removes its file, which may hang like the step.
    pub(crate) async fn run<T, W>(&self, work: W) -> Result<T, StepFailure<W>>
    where
        T: Send + 'static,
        W: FnOnce() -> T + Send + 'static,
    {
        let (step, now) = {
            let mut running = lock(&self.shared.running);
            let now = Instant::now();
            if running.overran(now) {
                return Err(StepFailure::Refused(work));
            }
            (Self::start(&mut running, now), now)
        };
        self.wait_for(step, now, work).await
    }

    /// [`run`](Self::run) without the refusal: `work` runs (and counts) even while a step
    /// that overran has not returned. For work that must not be dropped unrun: the touch of
    /// a signal file whose lock file goes with it, which must come before the lock file's
    /// removal, else other processes take the lock, see no change and write their old copy
    /// back. Never [`StepFailure::Refused`].
    pub(crate) async fn run_counted<T, W>(&self, work: W) -> Result<T, StepFailure<W>>
    where
        T: Send + 'static,
        W: FnOnce() -> T + Send + 'static,
    {
        let now = Instant::now();
        let step = Self::start(&mut lock(&self.shared.running), now);
        self.wait_for(step, now, work).await
    }

    /// Runs `work`, counted as `step` since `now`, on a thread of its own and waits for it
    /// (see [`run`](Self::run)).
    async fn wait_for<T, W>(&self, step: u64, now: Instant, work: W) -> Result<T, StepFailure<W>>
    where
        T: Send + 'static,
        W: FnOnce() -> T + Send + 'static,
    {
        let forget = self.forgetter(step);
        // Started with the lock released: a thread that cannot be started drops the work
        // here, and what it holds may do I/O when dropped.
        let receive = match detach(work, forget.clone(), now) {
            Ok(receive) => receive,
            Err(error) => {
                forget();
                return Err(StepFailure::Thread(error));
            }
        };
        let mut waiting = Waiting {
            receive,
            steps: self.clone(),
        };
        let received = match tokio::time::timeout_at(timeout_after(now), &mut waiting.receive).await
        {
            Ok(received) => received.ok(),
            // Sent as the time ran out: the step has returned, and its result is taken, not
            // left for the receiver's drop to drop here.
            Err(_elapsed) => match waiting.give_up() {
                Some(received) => Some(received),
                None => return Err(StepFailure::Overran),
            },
        };
        // Forgotten before the caller is given the result (the step's thread may not have
        // done it yet): a step the caller starts next is not refused for this one.
        forget();
        match received {
            Some(Ok(value)) => Ok(value),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Err(StepFailure::Thread(io::Error::other(
                "the step's thread ended without its result",
            ))),
        }
    }

    /// Drops `value` as a step of its own, on a thread of its own, not waited for: its drop
    /// does I/O that may hang (a lock file's guard removes its file). It counts as any step
    /// does (while it has run [`READ_TIMEOUT`](super::READ_TIMEOUT), new steps are refused), but is never refused
    /// itself: what it holds must be let go. If no thread can be started, it is dropped here.
    pub(crate) fn drop_counted<V: Send + 'static>(&self, value: V) {
        let now = Instant::now();
        let step = Self::start(&mut lock(&self.shared.running), now);
        let forget = self.forgetter(step);
        // The receiver is dropped at once: the thread drops `()`, then forgets the step.
        if detach(move || drop(value), forget.clone(), now).is_err() {
            forget();
        }
    }
}

/// [`Steps`] not held ([`Steps::downgrade`]).
pub(crate) struct WeakSteps(Weak<Shared>);

impl WeakSteps {
    /// The steps, while an owner or a step that has not returned holds them.
    pub(crate) fn upgrade(&self) -> Option<Steps> {
        self.0.upgrade().map(|shared| Steps { shared })
    }

    /// Whether an owner or a step that has not returned holds them.
    pub(crate) fn is_held(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// A step's result on its way: on drop, a result sent but not taken is dropped as a step of
/// its own ([`Steps::drop_counted`]), not here: this may be the executor's thread, and the
/// step's thread may already have said it returned.
struct Waiting<T: Send + 'static> {
    receive: oneshot::Receiver<std::thread::Result<T>>,
    steps: Steps,
}

impl<T: Send + 'static> Waiting<T> {
    /// Stops waiting: the result if it has been sent; if not, the step's thread will drop it
    /// when it comes (the receiver is closed).
    fn give_up(&mut self) -> Option<std::thread::Result<T>> {
        self.receive.close();
        self.receive.try_recv().ok()
    }
}

impl<T: Send + 'static> Drop for Waiting<T> {
    fn drop(&mut self) {
        // Nothing once the result was taken.
        if let Some(untaken) = self.give_up() {
            self.steps.drop_counted(untaken);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::super::READ_TIMEOUT;
    use super::super::tests::{held, paused_runtime, until, within_a_minute};
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
                let (first, release_first) = held(&calls, "first");
                let (second, release_second) = held(&calls, "second");
                let first = tokio::spawn({
                    let steps = steps.clone();
                    async move { steps.run(first).await }
                });
                until(|| calls.load(Ordering::SeqCst) == 1).await;
                tokio::time::advance(Duration::from_secs(4)).await;
                let second = tokio::spawn({
                    let steps = steps.clone();
                    async move { steps.run(second).await }
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

    /// A directory's steps outlive their owners while a step of theirs runs: dropped while it
    /// hangs, the directory's steps made again are refused at once, another directory's run;
    /// once it returns, no entry is left of them, and the directory's steps made again run.
    #[test]
    fn a_directorys_steps_are_refused_for_it_until_its_hung_step_returns() {
        within_a_minute(|| {
            paused_runtime().block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let directory = dir.path().join("hung");
                let steps = Steps::of_directory(directory.clone());
                assert_eq!(steps.directory(), Some(directory.as_path()));
                let calls = Arc::new(AtomicUsize::new(0));
                let (hung, release) = held(&calls, "hung");
                let caller = tokio::spawn({
                    let steps = steps.clone();
                    async move { steps.run(hung).await }
                });
                until(|| calls.load(Ordering::SeqCst) == 1).await;
                tokio::time::advance(READ_TIMEOUT).await;
                assert!(matches!(caller.await.unwrap(), Err(StepFailure::Overran)));
                let weak = steps.downgrade();
                drop(steps);
                assert!(weak.is_held(), "held by the hung step");

                let again = Steps::of_directory(directory.clone());
                let refused = again.run(|| "unrun").now_or_never();
                assert!(matches!(refused, Some(Err(StepFailure::Refused(_)))));
                let other_directory = dir.path().join("other");
                let other = Steps::of_directory(other_directory.clone());
                assert!(matches!(other.run(|| "other").await, Ok("other")));
                drop((again, other));
                assert!(directories().contains_key(&directory));

                drop(release);
                until(|| {
                    let directories = directories();
                    !directories.contains_key(&directory)
                        && !directories.contains_key(&other_directory)
                })
                .await;
                assert!(!weak.is_held() && weak.upgrade().is_none());
                let again = Steps::of_directory(directory.clone());
                assert!(matches!(again.run(|| "again").await, Ok("again")));
            });
        });
    }

    /// A result sent but not taken, its caller's future dropped, is dropped as a step of its
    /// own, on a thread of its own: not on the executor, and counted until its drop returns
    /// (the step's thread has already said it returned).
    #[test]
    fn a_result_not_taken_is_dropped_as_a_step_of_its_own() {
        /// Names the thread its drop runs on; blocks it until the test lets it go, unless
        /// that is the test's own thread (the executor's), which must not hang.
        struct SlowDrop {
            gate: mpsc::Receiver<()>,
            dropped_on: Arc<std::sync::Mutex<Option<String>>>,
            executor: std::thread::ThreadId,
        }
        impl Drop for SlowDrop {
            fn drop(&mut self) {
                let thread = std::thread::current();
                *self.dropped_on.lock().unwrap() = Some(thread.name().unwrap_or("").to_owned());
                if thread.id() != self.executor {
                    let _ = self.gate.recv();
                }
            }
        }

        within_a_minute(|| {
            paused_runtime().block_on(async {
                let steps = Steps::new();
                let (release, gate) = mpsc::channel::<()>();
                let dropped_on = Arc::new(std::sync::Mutex::new(None));
                let slow = SlowDrop {
                    gate,
                    dropped_on: Arc::clone(&dropped_on),
                    executor: std::thread::current().id(),
                };
                let (go, wait) = mpsc::channel::<()>();
                let started = Arc::new(AtomicUsize::new(0));
                let caller = tokio::spawn({
                    let (steps, started) = (steps.clone(), Arc::clone(&started));
                    let work = move || {
                        started.fetch_add(1, Ordering::SeqCst);
                        let _ = wait.recv();
                        slow
                    };
                    async move { steps.run(work).await.map(drop) }
                });
                until(|| started.load(Ordering::SeqCst) == 1).await;
                // From here this thread, which runs the caller, does not yield: the step
                // sends its result, then says it returned, and the caller does not take it.
                drop(go);
                while steps.running() > 0 {
                    std::thread::yield_now();
                }
                caller.abort();
                assert!(caller.await.unwrap_err().is_cancelled());
                let executor = std::thread::current().name().map(str::to_owned);
                assert_ne!(
                    *dropped_on.lock().unwrap(),
                    Some(executor.unwrap_or_default()),
                    "dropped on the executor"
                );
                assert_eq!(steps.running(), 1, "its drop counts as a step");
                drop(release);
                until(|| steps.running() == 0).await;
                assert_eq!(
                    dropped_on.lock().unwrap().as_deref(),
                    Some(super::super::THREAD_NAME)
                );
            });
        });
    }

    /// A result not taken (its caller gave up: the step overran) whose drop panics still
    /// ends the step: the file is not refused for the rest of the process's life.
    #[test]
    fn a_result_whose_drop_panics_still_ends_its_step() {
        struct PanicsOnDrop;
        impl Drop for PanicsOnDrop {
            fn drop(&mut self) {
                panic!("a drop that panics");
            }
        }

        within_a_minute(|| {
            paused_runtime().block_on(async {
                let steps = Steps::new();
                let (release, gate) = mpsc::channel::<()>();
                let started = Arc::new(AtomicUsize::new(0));
                let caller = tokio::spawn({
                    let (steps, started) = (steps.clone(), Arc::clone(&started));
                    async move {
                        steps
                            .run(move || {
                                started.fetch_add(1, Ordering::SeqCst);
                                let _ = gate.recv();
                                PanicsOnDrop
                            })
                            .await
                            .map(std::mem::forget)
                    }
                });
                until(|| started.load(Ordering::SeqCst) == 1).await;
                tokio::time::advance(READ_TIMEOUT).await;
                assert!(matches!(caller.await.unwrap(), Err(StepFailure::Overran)));
                assert!(steps.overran());
                drop(release);
                until(|| !steps.overran()).await;
                assert_eq!(steps.running(), 0);
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
