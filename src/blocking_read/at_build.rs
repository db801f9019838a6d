//! A file read by a builder: `build()` is synchronous, so its thread waits for the read, on a
//! thread of its own ([`detach`]), [`READ_TIMEOUT`](super::READ_TIMEOUT) at most (a
//! certificate or key file: `EnvironmentCredential::new()` and `DefaultAzureCredential::new()`
//! read one, often on a tokio worker in `async fn main`, which a hung mount would otherwise
//! block for good).
//!
//! The rule for a file system that stops answering is [`OneRead`](super::OneRead)'s, by path
//! and for the whole process (builders share no owner): while a read of a file that overran
//! has not returned, a build that would read that file again is refused at once
//! ([`ReadFailure::Overran`]) instead of starting one more thread that would hang with it;
//! once it has returned, the file is read again. The process keeps an entry for each read
//! until it returns (builds of one file at once each start theirs, and each read's return
//! removes only its own).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{ReadFailure, detach};

/// The reads of each path that have not returned, each by its flag, set once it overran;
/// a path is in the map while one of its reads is. Locked briefly, never across I/O or a
/// wait.
type Running = HashMap<PathBuf, Vec<Arc<AtomicBool>>>;

fn running() -> MutexGuard<'static, Running> {
    static RUNNING: OnceLock<Mutex<Running>> = OnceLock::new();
    // Whole entries are added and removed: a panic cannot leave one half made.
    RUNNING
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Drops the read `flag` of `path` from [`running`] (its own entry only: another read of
/// the same path, which may still hang, keeps its own).
fn forget(running: &mut Running, path: &Path, flag: &Arc<AtomicBool>) {
    if let Some(reads) = running.get_mut(path) {
        reads.retain(|read| !Arc::ptr_eq(read, flag));
        if reads.is_empty() {
            running.remove(path);
        }
    }
}

/// The result of `read` (of the file at `path`) on a thread of its own, waited for here,
/// blocking, `timeout` at most ([`READ_TIMEOUT`](super::READ_TIMEOUT) but in tests); refused at
/// once while a read of `path` that overran has not returned. A result that comes after the
/// wait gave up is dropped on the read's thread (zeroized, for a key file's bytes).
pub(crate) fn read_at_build<T: Send + 'static>(
    path: &Path,
    read: impl FnOnce() -> T + Send + 'static,
    timeout: Duration,
) -> Result<T, ReadFailure> {
    read_waiting(path, read, |receive| receive.recv_timeout(timeout))
}

/// [`read_at_build`], the result waited for by `wait` (in tests, a bound the test ends).
fn read_waiting<T: Send + 'static>(
    path: &Path,
    read: impl FnOnce() -> T + Send + 'static,
    wait: impl FnOnce(&mpsc::Receiver<T>) -> Result<T, RecvTimeoutError>,
) -> Result<T, ReadFailure> {
    // Checked and registered under one lock: two builds of the path at once each see the
    // other's read, and each read is removed only by its own return.
    let overran = Arc::new(AtomicBool::new(false));
    {
        let mut running = running();
        let reads = running.entry(path.to_path_buf()).or_default();
        if reads.iter().any(|read| read.load(Ordering::Acquire)) {
            return Err(ReadFailure::Overran);
        }
        reads.push(Arc::clone(&overran));
    }
    let returned = {
        let (overran, path) = (Arc::clone(&overran), path.to_path_buf());
        move || forget(&mut running(), &path, &overran)
    };
    // The result comes through a channel this thread can wait on with a bound (`detach`'s is
    // tokio's, which a synchronous caller inside a runtime may not block on); a panic drops
    // its sender.
    let (send, receive) = mpsc::sync_channel(1);
    let work = move || {
        if let Err(unsent) = send.send(read()) {
            drop(unsent);
        }
    };
    match detach(work, returned, Instant::now()) {
        Ok(result) => drop(result),
        Err(error) => {
            forget(&mut running(), path, &overran);
            return Err(ReadFailure::NoThread(error));
        }
    }
    match wait(&receive) {
        Ok(value) => Ok(value),
        Err(RecvTimeoutError::Disconnected) => Err(ReadFailure::Panicked),
        Err(RecvTimeoutError::Timeout) => {
            let running = running();
            // Under the lock `returned` takes: the read either has not returned (and is marked
            // so, refusing the path until it does) or has, its result sent before.
            match receive.try_recv() {
                Ok(value) => Ok(value),
                Err(_)
                    if running.get(path).is_some_and(|reads| {
                        reads.iter().any(|read| Arc::ptr_eq(read, &overran))
                    }) =>
                {
                    overran.store(true, Ordering::Release);
                    Err(ReadFailure::Overran)
                }
                Err(_) => Err(ReadFailure::Panicked),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::super::tests::{held, within_a_minute};
    use super::*;

    /// A read that hangs fails its build once the bound has passed; a build that would read
    /// the same file is refused at once, no second read started, while another file is read;
    /// once the read returns, the file is read again. A panicking read is reported as such.
    #[test]
    fn a_hung_read_fails_its_build_and_refuses_the_file_until_it_returns() {
        within_a_minute(|| {
            let dir = tempfile::tempdir().unwrap();
            let (path, other) = (dir.path().join("hung.pem"), dir.path().join("other.pem"));
            let bound = Duration::from_millis(50);
            let calls = Arc::new(AtomicUsize::new(0));
            let (read, release) = held(&calls, "late");
            let failure = read_at_build(&path, read, bound).unwrap_err();
            assert!(matches!(failure, ReadFailure::Overran), "{failure:?}");
            let (again, _again) = held(&calls, "again");
            let failure = read_at_build(&path, again, Duration::from_secs(3600)).unwrap_err();
            assert!(matches!(failure, ReadFailure::Overran), "{failure:?}");
            // The first read's thread may start late on a loaded machine.
            while calls.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            assert_eq!(calls.load(Ordering::SeqCst), 1, "no second read of it");
            let long = Duration::from_secs(600);
            assert_eq!(read_at_build(&other, || "other", long).unwrap(), "other");

            drop(release);
            let fresh = loop {
                match read_at_build(&path, || "fresh", long) {
                    Ok(value) => break value,
                    Err(ReadFailure::Overran) => std::thread::yield_now(),
                    Err(other) => panic!("{other:?}"),
                }
            };
            assert_eq!(fresh, "fresh");
            // Its entry goes once its read has returned (just after its result came).
            while running().contains_key(&path) {
                std::thread::yield_now();
            }
            let panicked = read_at_build(&path, || -> &str { panic!("quoted file") }, long);
            assert!(
                matches!(panicked, Err(ReadFailure::Panicked)),
                "{panicked:?}"
            );
        });
    }

    /// A wait that ends, as a timeout, once `end` is dropped: a bound the test ends.
    fn bound_ended_by(
        end: mpsc::Receiver<()>,
    ) -> impl FnOnce(&mpsc::Receiver<&'static str>) -> Result<&'static str, RecvTimeoutError> {
        move |_| {
            let _ = end.recv();
            Err(RecvTimeoutError::Timeout)
        }
    }

    /// Two builds of one file at once each start a read; both overrun. The second read
    /// returning does not free the file while the first still hangs: a third build is refused
    /// at once, no read started. Once the first returns too, the file is read again.
    #[test]
    fn a_read_returning_frees_its_file_only_once_every_overran_read_of_it_has() {
        within_a_minute(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("two.pem");
            let calls = Arc::new(AtomicUsize::new(0));
            let build = |value: &'static str, started: usize| {
                let (read, release) = held(&calls, value);
                let (end, ended) = mpsc::channel::<()>();
                let path = path.clone();
                let build =
                    std::thread::spawn(move || read_waiting(&path, read, bound_ended_by(ended)));
                while calls.load(Ordering::SeqCst) < started {
                    std::thread::yield_now();
                }
                (build, release, end)
            };
            let (first, release_first, end_first) = build("first", 1);
            let (second, release_second, end_second) = build("second", 2);
            drop(end_first);
            assert!(matches!(first.join().unwrap(), Err(ReadFailure::Overran)));
            drop(end_second);
            assert!(matches!(second.join().unwrap(), Err(ReadFailure::Overran)));

            drop(release_second);
            // Once the second read's return has removed its entry (its own only: the first's
            // stays), a third build is refused; one that started a read would end its wait
            // once that read has started.
            while running().get(&path).map_or(0, Vec::len) > 1 {
                std::thread::yield_now();
            }
            let (third, _third) = held(&calls, "third");
            let counted = Arc::clone(&calls);
            let until_started = move |_: &mpsc::Receiver<&'static str>| {
                while counted.load(Ordering::SeqCst) < 3 {
                    std::thread::yield_now();
                }
                Err(RecvTimeoutError::Timeout)
            };
            let failure = read_waiting(&path, third, until_started).unwrap_err();
            assert!(matches!(failure, ReadFailure::Overran), "{failure:?}");
            assert_eq!(
                calls.load(Ordering::SeqCst),
                2,
                "no read started on the hung file"
            );

            drop(release_first);
            let long = Duration::from_secs(600);
            let fresh = loop {
                match read_at_build(&path, || "fresh", long) {
                    Ok(value) => break value,
                    Err(ReadFailure::Overran) => std::thread::yield_now(),
                    Err(other) => panic!("{other:?}"),
                }
            };
            assert_eq!(fresh, "fresh");
            // Its entry goes once its read has returned (just after its result came).
            while running().contains_key(&path) {
                std::thread::yield_now();
            }
        });
    }

    /// A read that returned as its wait gave up, its `returned` run before the wait took the
    /// lock: its result is the build's, not a failure saying it has not returned.
    #[test]
    fn a_read_that_returned_as_the_wait_gave_up_is_the_result() {
        within_a_minute(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("just-in-time.pem");
            let returned_then_timed_out = {
                let path = path.clone();
                move |_: &mpsc::Receiver<&'static str>| {
                    while running().contains_key(&path) {
                        std::thread::yield_now();
                    }
                    Err(RecvTimeoutError::Timeout)
                }
            };
            let value = read_waiting(&path, || "read", returned_then_timed_out).unwrap();
            assert_eq!(value, "read");
            let panicked = read_waiting(
                &path,
                || -> &str { panic!("quoted file") },
                |_: &mpsc::Receiver<&'static str>| {
                    while running().contains_key(&path) {
                        std::thread::yield_now();
                    }
                    Err(RecvTimeoutError::Timeout)
                },
            );
            assert!(
                matches!(panicked, Err(ReadFailure::Panicked)),
                "{panicked:?}"
            );
            // Its entry goes once its read has returned (just after its result came).
            while running().contains_key(&path) {
                std::thread::yield_now();
            }
        });
    }
}
