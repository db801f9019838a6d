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
//! once it has returned, the file is read again. The process keeps an entry only for a read
//! that overran, until it returns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{ReadFailure, detach};

/// The reads that overran and have not returned, by path; each one's flag is set once it has
/// returned. Locked briefly, never across I/O or a wait.
fn overran() -> MutexGuard<'static, HashMap<PathBuf, Arc<AtomicBool>>> {
    static OVERRAN: OnceLock<Mutex<HashMap<PathBuf, Arc<AtomicBool>>>> = OnceLock::new();
    // Whole entries are added and removed: a panic cannot leave one half made.
    OVERRAN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
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
    if overran().contains_key(path) {
        return Err(ReadFailure::Overran);
    }
    let done = Arc::new(AtomicBool::new(false));
    // Under the map's lock, as the entry is added: a read that returns as its wait gives up
    // either is never added or is removed here.
    let returned = {
        let (done, path) = (Arc::clone(&done), path.to_path_buf());
        move || {
            let mut overran = overran();
            done.store(true, Ordering::Release);
            if overran
                .get(&path)
                .is_some_and(|entry| Arc::ptr_eq(entry, &done))
            {
                overran.remove(&path);
            }
        }
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
    drop(detach(work, returned, Instant::now()).map_err(ReadFailure::NoThread)?);
    match receive.recv_timeout(timeout) {
        Ok(value) => Ok(value),
        Err(RecvTimeoutError::Disconnected) => Err(ReadFailure::Panicked),
        Err(RecvTimeoutError::Timeout) => {
            let mut overran = overran();
            if !done.load(Ordering::Acquire) {
                overran.insert(path.to_path_buf(), done);
            }
            Err(ReadFailure::Overran)
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
            assert!(!overran().contains_key(&path));
            let panicked = read_at_build(&path, || -> &str { panic!("quoted file") }, long);
            assert!(
                matches!(panicked, Err(ReadFailure::Panicked)),
                "{panicked:?}"
            );
        });
    }
}
