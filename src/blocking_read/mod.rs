//! Blocking work on a local file that may hang (a read of a token file or a key file, a step
//! of a token cache file's I/O), on a thread of its own, waited for [`READ_TIMEOUT`] at most.
//!
//! Such work is quick unless its file system does not answer (a hung mount); then it may
//! never return, and nothing can stop it. So it runs on a detached, named thread ([`detach`])
//! rather than tokio's blocking pool: dropping a runtime waits for every running blocking task
//! without a limit, so hung work there would hang a graceful shutdown until `SIGKILL`, and
//! hold a thread of the pool meanwhile. The thread starts at once, so the time waited is the
//! work's own running time, measured from when it was started. Three disciplines use it:
//! [`OneRead`] here, one read at a time, [`Steps`], several steps at a time, and
//! [`read_at_build`], a synchronous caller's (a builder's) read, waited for on its thread.
//!
//! At most one read runs at a time per [`OneRead`]: while a read that ran [`READ_TIMEOUT`] has
//! not returned, requests are refused at once ([`ReadFailure::Overran`]) instead of each
//! starting one more thread that would hang with it; the next request once it returned reads
//! again. A request that waits for another's read before its own ([`OneRead::own`]) is
//! answered within [`READ_TIMEOUT`] of its coming all the same, the wait included
//! ([`ReadFailure::Late`]): requests waiting race for the next read, so one could otherwise
//! wait for many. A read's thread marks it done and forgets it when the read returns, its
//! result with it (the requests still waiting have theirs): no later request is given an old
//! result.
//!
//! On tokio's paused clock (tests), work on a thread tokio does not know of would let the
//! clock jump to the deadline while the runtime waits for it; there a blocking task holds the
//! clock while the work runs, as a `spawn_blocking` task would, and lets it go when the work
//! returns or the runtime shuts down. So on a paused clock a hung step's caller times out
//! only when the test advances the clock, and auto-advance stays off for the whole runtime
//! until the work returns.

mod at_build;
mod steps;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::oneshot;
use tokio::time::Instant;

pub(crate) use self::at_build::read_at_build;
pub(crate) use self::steps::{StepFailure, Steps, WeakSteps};

/// How long work on a local file may run: a read of a token or key file, or one step of a
/// token cache file's I/O (a lock attempt, a read, a write). A local file of a few KiB is
/// read or written at once; work that takes this long is on a file system that does not
/// answer.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of a detached thread (in a debugger or `top -H`), also of one resolving a token
/// cache file's directory.
pub(crate) const THREAD_NAME: &str = "tower-identity-read";

/// Starts `work` on a thread of its own, at `now` (tokio's clock, as the caller read it: the
/// start its bound counts from). Its result, or the payload of its panic, comes through the
/// receiver. `returned` runs on that thread once the result is handed over or, when the
/// receiver was closed or dropped first, dropped there: what a result not taken holds (a
/// lock file's guard, which removes its file) is let go on the work's thread, before the
/// work's bookkeeping says it has returned. A receiver given the result runs its own
/// bookkeeping (the same, so it must be idempotent) before using it, as `returned` may not
/// have run yet. If no thread can be started, neither runs: both are dropped here.
///
/// On tokio's paused clock, a blocking task holds the clock until `returned` has run or the
/// runtime shuts down (see the module docs).
fn detach<T, W, R>(
    work: W,
    returned: R,
    now: Instant,
) -> std::io::Result<oneshot::Receiver<std::thread::Result<T>>>
where
    T: Send + 'static,
    W: FnOnce() -> T + Send + 'static,
    R: FnOnce() + Send + 'static,
{
    let (send, receive) = oneshot::channel();
    // Dropped by the thread once `returned` has run: releases the paused clock.
    let (sent, on_sent) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || {
            // The payload goes to the caller, who resumes it or drops it.
            let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            // Runs `returned` when dropped, also if the drop below panics: else the work
            // would count as running for the rest of the process's life.
            let _returned = Returned(Some((returned, sent)));
            // Either the receiver has it now, or it was closed and it comes back: dropped
            // here, before `returned`, so that its drop counts as part of the work.
            if let Err(value) = send.send(value) {
                drop(value);
            }
        })?;
    hold_a_paused_clock(on_sent, now);
    Ok(receive)
}

/// A detached work's `returned`, run when dropped (on unwinding too), then its `sent`
/// dropped (the paused clock released).
struct Returned<R: FnOnce()>(Option<(R, oneshot::Sender<()>)>);

impl<R: FnOnce()> Drop for Returned<R> {
    fn drop(&mut self) {
        if let Some((returned, sent)) = self.0.take() {
            returned();
            drop(sent);
        }
    }
}

/// [`READ_TIMEOUT`] after `start`: when work started then has overrun.
fn timeout_after(start: Instant) -> Instant {
    start.checked_add(READ_TIMEOUT).unwrap_or(start)
}

/// Why a read gave no result.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// It has run [`READ_TIMEOUT`] without returning (now, or an earlier read still running).
    Overran,
    /// The request's [`READ_TIMEOUT`], from when it came, passed while it waited for the reads
    /// ahead of it and its own, none of which has run that long (a slow file system). Only
    /// [`OneRead::own`]'s: a shared read is the request's own or started before it came.
    Late,
    /// It panicked (the payload, the reading code's text, may quote the file: not kept).
    Panicked,
    /// No thread could be started for it.
    NoThread(std::io::Error),
}

/// The read in flight.
struct Flight<T> {
    /// Its result; `None` when the read panicked.
    outcome: Shared<BoxFuture<'static, Option<T>>>,
    started: Instant,
    /// Set by the read's thread once the read returned (or panicked).
    done: Arc<AtomicBool>,
}

impl<T: Clone> Flight<T> {
    fn overran(&self, now: Instant) -> bool {
        !self.done.load(Ordering::Acquire) && now >= timeout_after(self.started)
    }

    /// Its result, waited for until [`READ_TIMEOUT`] after it started or the request's
    /// `deadline`, whichever comes first.
    async fn wait(&self, deadline: Instant) -> Result<T, ReadFailure> {
        let overrun = timeout_after(self.started);
        match tokio::time::timeout_at(overrun.min(deadline), self.outcome.clone()).await {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(ReadFailure::Panicked),
            Err(_elapsed) if deadline < overrun => Err(ReadFailure::Late),
            Err(_elapsed) => Err(ReadFailure::Overran),
        }
    }
}

type Slot<T> = Mutex<Option<Arc<Flight<T>>>>;

/// One owner's reads (a credential's): one at a time.
pub(crate) struct OneRead<T> {
    /// The read in flight until its thread forgets it. Locked briefly, never across an
    /// `await`.
    slot: Arc<Slot<T>>,
}

/// What a request does with the read in flight.
enum Next<T> {
    /// Its result is this request's (it started it, or shares it).
    Take(Arc<Flight<T>>),
    /// Another request's read of another file: wait for it to return, then read.
    After(Arc<Flight<T>>),
}

impl<T: Clone + Send + Sync + 'static> OneRead<T> {
    pub(crate) fn new() -> Self {
        Self {
            slot: Arc::new(Mutex::new(None)),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Option<Arc<Flight<T>>>> {
        lock(&self.slot)
    }

    /// Whether a read that ran [`READ_TIMEOUT`] has not returned (requests would be refused).
    pub(crate) fn overran(&self) -> bool {
        let now = Instant::now();
        self.slot().as_ref().is_some_and(|f| f.overran(now))
    }

    /// The result of the read in flight, which every request shares (they all read the same
    /// file), or of `read` started now.
    pub(crate) async fn shared(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ReadFailure> {
        self.run(read, true).await
    }

    /// The result of `read`, started once the read in flight (another request's, of another
    /// file) has returned; [`ReadFailure::Late`] once [`READ_TIMEOUT`] has passed since this
    /// call, the wait included.
    pub(crate) async fn own(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ReadFailure> {
        self.run(read, false).await
    }

    async fn run(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
        share: bool,
    ) -> Result<T, ReadFailure> {
        let mut read = Some(read);
        // One deadline for the whole request: an `own` request may wait for several reads
        // (those waiting race for the next) before its own. Taken from the first pass's `now`,
        // which also starts a read started then: on a running clock a later reading would
        // make that read's own overrun come after the deadline, and a read that hangs
        // would fail its request as late instead of overran.
        let mut deadline = None;
        loop {
            let (next, deadline) = {
                let mut slot = self.slot();
                let now = Instant::now();
                let deadline = *deadline.get_or_insert_with(|| timeout_after(now));
                let in_flight = slot
                    .as_ref()
                    .filter(|flight| !flight.done.load(Ordering::Acquire))
                    .map(Arc::clone);
                if in_flight.as_ref().is_some_and(|flight| flight.overran(now)) {
                    return Err(ReadFailure::Overran);
                }
                // Not on the first pass (`deadline` is later than `now`): no read is started
                // that the request would not wait for.
                if now >= deadline {
                    return Err(ReadFailure::Late);
                }
                let next = match in_flight {
                    Some(flight) if share => Next::Take(flight),
                    Some(flight) => Next::After(flight),
                    None => match read.take() {
                        Some(read) => {
                            let flight = self.start(read, now)?;
                            *slot = Some(Arc::clone(&flight));
                            Next::Take(flight)
                        }
                        // Not reached: a request starts one read and takes its result.
                        None => return Err(ReadFailure::Overran),
                    },
                };
                (next, deadline)
            };
            match next {
                Next::Take(flight) => return flight.wait(deadline).await,
                // Its result is not this request's; only its end matters.
                Next::After(flight) => match flight.wait(deadline).await {
                    Err(failure @ (ReadFailure::Overran | ReadFailure::Late)) => {
                        return Err(failure);
                    }
                    Ok(_) | Err(ReadFailure::Panicked | ReadFailure::NoThread(_)) => {}
                },
            }
        }
    }

    /// `read` on a thread of its own, started at `now`.
    fn start(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
        now: Instant,
    ) -> Result<Arc<Flight<T>>, ReadFailure> {
        let done = Arc::new(AtomicBool::new(false));
        let (marks, slot) = (Arc::clone(&done), Arc::downgrade(&self.slot));
        // On the read's thread once it returned, and by the first request given its result:
        // the caller holds the slot's lock until the flight is in it, so this finds it there.
        let returned = move || forget(&marks, &slot);
        let receive = detach(read, returned.clone(), now).map_err(ReadFailure::NoThread)?;
        // The read is forgotten before its result is given: a request that comes after is
        // never given it. A panic's payload is dropped here, not kept.
        let outcome = async move {
            let result = receive.await;
            returned();
            result.ok().and_then(Result::ok)
        }
        .boxed()
        .shared();
        Ok(Arc::new(Flight {
            outcome,
            started: now,
            done,
        }))
    }
}

/// Marks the read whose flag is `done` done, and forgets it if it is still in the `slot`.
fn forget<T>(done: &Arc<AtomicBool>, slot: &Weak<Slot<T>>) {
    done.store(true, Ordering::Release);
    if let Some(slot) = slot.upgrade() {
        let mut slot = lock(&slot);
        if slot
            .as_ref()
            .is_some_and(|flight| Arc::ptr_eq(&flight.done, done))
        {
            *slot = None;
        }
    }
}

fn lock<T>(slot: &Slot<T>) -> MutexGuard<'_, Option<Arc<Flight<T>>>> {
    // The slot holds no invariant a panic could break.
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// On tokio's paused clock (`now` read again unchanged), a blocking task that keeps the clock
/// from jumping by itself until `released` resolves (its sender dropped), or the runtime shuts
/// down (its tasks are dropped before it waits for blocking ones). On a running clock
/// nothing: no thread of the pool is taken.
fn hold_a_paused_clock(released: oneshot::Receiver<()>, now: Instant) {
    if Instant::now() != now {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (release, held) = std::sync::mpsc::channel::<()>();
    runtime.spawn_blocking(move || {
        // Returns once `release` is dropped.
        let _ = held.recv();
    });
    runtime.spawn(async move {
        let _release = release;
        let _ = released.await;
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    /// A read that counts its calls and returns `value` once the sender of its gate is
    /// dropped: a file on a mount that does not answer until the test lets it go.
    pub(super) fn held(
        calls: &Arc<AtomicUsize>,
        value: &'static str,
    ) -> (
        impl FnOnce() -> &'static str + Send + 'static,
        mpsc::Sender<()>,
    ) {
        let (release, gate) = mpsc::channel::<()>();
        let calls = Arc::clone(calls);
        let read = move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = gate.recv();
            value
        };
        (read, release)
    }

    /// Runs `body` on a thread; fails if it has not finished within a minute of real time: a
    /// test whose awaits stop resolving fails instead of hanging.
    pub(crate) fn within_a_minute(body: impl FnOnce() + Send + 'static) {
        let (done, finished) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            body();
            let _ = done.send(());
        });
        match finished.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(panic) = thread.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the test did not finish within a minute")
            }
        }
    }

    pub(crate) fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    }

    /// Yields until `done`.
    pub(crate) async fn until(mut done: impl FnMut() -> bool) {
        while !done() {
            tokio::task::yield_now().await;
        }
    }

    /// A request that joins a read 6 s after it started waits 4 s for it, not 10: the time
    /// is the read's own, measured from when it started. Both fail as overran, later
    /// requests at once, with no second read; once it returns, its result is given to nobody
    /// and the next request reads again.
    #[test]
    fn the_deadline_is_the_reads_own_and_an_overrun_refuses_until_it_returns() {
        within_a_minute(|| {
            paused_runtime().block_on(async {
                let reads = Arc::new(OneRead::<&'static str>::new());
                let calls = Arc::new(AtomicUsize::new(0));
                let (read, release) = held(&calls, "old");
                let first = tokio::spawn({
                    let reads = Arc::clone(&reads);
                    async move { reads.shared(read).await }
                });
                until(|| calls.load(Ordering::SeqCst) == 1).await;
                tokio::time::advance(Duration::from_secs(6)).await;
                let (unused, _unused) = held(&calls, "unused");
                let second = tokio::spawn({
                    let reads = Arc::clone(&reads);
                    async move { reads.shared(unused).await }
                });
                until(|| {
                    reads
                        .slot()
                        .as_ref()
                        .is_some_and(|flight| Arc::strong_count(flight) == 3)
                })
                .await;
                tokio::time::advance(Duration::from_secs(4)).await;
                for request in [first, second] {
                    assert!(matches!(request.await.unwrap(), Err(ReadFailure::Overran)));
                }
                assert!(reads.overran());
                let (again, _again) = held(&calls, "again");
                assert!(matches!(
                    reads.own(again).now_or_never(),
                    Some(Err(ReadFailure::Overran))
                ));
                assert_eq!(calls.load(Ordering::SeqCst), 1);

                drop(release);
                until(|| reads.slot().is_none()).await;
                assert!(!reads.overran());
                let fresh = reads.shared(|| "fresh").await.unwrap();
                assert_eq!(fresh, "fresh");
            });
        });
    }

    /// `own` waits for the read in flight (another file's) and then reads its own; a
    /// panicking read is reported as such.
    #[test]
    fn own_reads_follow_the_read_in_flight() {
        within_a_minute(|| {
            paused_runtime().block_on(async {
                let reads = Arc::new(OneRead::<&'static str>::new());
                let calls = Arc::new(AtomicUsize::new(0));
                let (read, release) = held(&calls, "first");
                let first = tokio::spawn({
                    let reads = Arc::clone(&reads);
                    async move { reads.own(read).await }
                });
                until(|| calls.load(Ordering::SeqCst) == 1).await;
                let second = tokio::spawn({
                    let reads = Arc::clone(&reads);
                    async move { reads.own(|| "second").await }
                });
                until(|| {
                    reads
                        .slot()
                        .as_ref()
                        .is_some_and(|flight| Arc::strong_count(flight) == 3)
                })
                .await;
                drop(release);
                assert_eq!(first.await.unwrap().unwrap(), "first");
                assert_eq!(second.await.unwrap().unwrap(), "second");
                let panicked = reads.own(|| panic!("quoted file")).await;
                assert!(matches!(panicked, Err(ReadFailure::Panicked)));
            });
        });
    }

    /// Yields until `request` has finished, a thousand times at most: a request the test
    /// expects answered without the clock moving again.
    async fn finished<R>(request: &tokio::task::JoinHandle<R>) -> bool {
        for _ in 0..1000 {
            if request.is_finished() {
                return true;
            }
            tokio::task::yield_now().await;
        }
        request.is_finished()
    }

    /// Three `own` requests come at once on a file system where a read takes 6 s: each is
    /// answered within [`READ_TIMEOUT`] of its coming, its wait for the reads ahead of it
    /// included. The first has its read; at 10 s the other two fail as late (one running its
    /// read, started at 6 s, the other waiting for it), and no third read is started.
    #[test]
    fn an_own_request_is_answered_within_the_timeout_of_its_coming() {
        within_a_minute(|| {
            paused_runtime().block_on(async {
                let reads = Arc::new(OneRead::<&'static str>::new());
                let calls = Arc::new(AtomicUsize::new(0));
                let mut releases = Vec::new();
                let mut requests = Vec::new();
                for value in ["first", "second", "third"] {
                    let (read, release) = held(&calls, value);
                    releases.push(release);
                    requests.push(tokio::spawn({
                        let reads = Arc::clone(&reads);
                        async move { reads.own(read).await }
                    }));
                }
                let waiting = |requests: usize| {
                    let reads = Arc::clone(&reads);
                    move || {
                        reads
                            .slot()
                            .as_ref()
                            .is_some_and(|flight| Arc::strong_count(flight) == requests + 1)
                    }
                };
                until(waiting(3)).await;
                tokio::time::advance(Duration::from_secs(6)).await;
                drop(releases.remove(0));
                let first = requests.remove(0).await.unwrap();
                assert_eq!(first.unwrap(), "first");
                until(|| calls.load(Ordering::SeqCst) == 2).await;
                until(waiting(2)).await;
                tokio::time::advance(Duration::from_secs(4)).await;
                for request in requests {
                    assert!(finished(&request).await, "answered after 10 s");
                    let result = request.await.unwrap();
                    assert!(matches!(result, Err(ReadFailure::Late)), "{result:?}");
                }
                assert_eq!(calls.load(Ordering::SeqCst), 2);
                // The second read has run 4 s: not overran, nothing is refused.
                assert!(!reads.overran());
                drop(releases);
                until(|| reads.slot().is_none()).await;
                assert_eq!(reads.own(|| "fresh").await.unwrap(), "fresh");
            });
        });
    }

    /// A request dropped while its read runs leaves the read to the next request: `shared`
    /// takes its result, `own` waits for it before reading; no second read runs meanwhile.
    #[test]
    fn a_request_dropped_mid_read_leaves_the_read_to_the_next() {
        within_a_minute(|| {
            paused_runtime().block_on(async {
                for share in [true, false] {
                    let reads = Arc::new(OneRead::<&'static str>::new());
                    let calls = Arc::new(AtomicUsize::new(0));
                    let (read, release) = held(&calls, "dropped");
                    let dropped = tokio::spawn({
                        let reads = Arc::clone(&reads);
                        async move { reads.run(read, share).await }
                    });
                    until(|| calls.load(Ordering::SeqCst) == 1).await;
                    dropped.abort();
                    assert!(dropped.await.unwrap_err().is_cancelled());
                    let (next, next_release) = held(&calls, "next");
                    let next = tokio::spawn({
                        let reads = Arc::clone(&reads);
                        async move { reads.run(next, share).await }
                    });
                    // The slot's and the next request's.
                    until(|| {
                        reads
                            .slot()
                            .as_ref()
                            .is_some_and(|flight| Arc::strong_count(flight) == 2)
                    })
                    .await;
                    assert_eq!(calls.load(Ordering::SeqCst), 1, "share: {share}");
                    assert!(!finished(&next).await, "share: {share}");
                    drop(release);
                    if share {
                        assert_eq!(next.await.unwrap().unwrap(), "dropped");
                        assert_eq!(calls.load(Ordering::SeqCst), 1);
                    } else {
                        until(|| calls.load(Ordering::SeqCst) == 2).await;
                        drop(next_release);
                        assert_eq!(next.await.unwrap().unwrap(), "next");
                    }
                }
            });
        });
    }

    /// Dropping a runtime while a read hangs returns (a `spawn_blocking` read made it wait
    /// for the read without a limit), on a paused clock and on a running one.
    #[test]
    fn a_hung_read_does_not_hold_up_runtime_shutdown() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut releases = Vec::new();
        runtimes_drop_while_work_hangs(
            |runtime| {
                let reads = Arc::new(OneRead::<&'static str>::new());
                let (read, release) = held(&calls, "never");
                releases.push(release);
                // The read starts at once, on its own thread.
                runtime.spawn(async move { reads.shared(read).await })
            },
            |n| calls.load(Ordering::SeqCst) > n,
        );
        // The reads' threads return.
        drop(releases);
    }

    /// On a paused runtime and on a running one in turn: `start` spawns work that hangs (the
    /// `n`th, zero first), and once `started(n)`, dropping its task and the runtime returns
    /// within a minute (not waiting for the work).
    pub(crate) fn runtimes_drop_while_work_hangs<T: Send + 'static>(
        mut start: impl FnMut(&tokio::runtime::Runtime) -> tokio::task::JoinHandle<T>,
        started: impl Fn(usize) -> bool,
    ) {
        let runtimes = [
            paused_runtime(),
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        ];
        for (n, runtime) in runtimes.into_iter().enumerate() {
            let task = start(&runtime);
            runtime.block_on(until(|| started(n)));
            let (dropped, is_dropped) = mpsc::channel();
            std::thread::spawn(move || {
                drop(task);
                drop(runtime);
                let _ = dropped.send(());
            });
            is_dropped
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("runtime {n}: dropping it waited for the work"));
        }
    }
}
