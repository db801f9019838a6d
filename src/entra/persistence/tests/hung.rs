//! A cache file on a file system that stops answering: each step of its I/O is bounded in
//! time, refused at once while one that overran has not returned, and never holds up the
//! runtime's shutdown. A hung step is a step blocked on a channel the test holds (a change
//! made under the lock, or a step's own work), released when the test says.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use futures_util::FutureExt;

use super::super::{CacheFile, PersistenceError, Step, run_blocking};
use super::{JsonDoc, file_keys, lock_path_of};
use crate::blocking_read::READ_TIMEOUT;
use crate::blocking_read::tests::{
    paused_runtime, runtimes_drop_while_work_hangs, until, within_a_minute,
};

/// The error's I/O kind, if it is an I/O error.
fn io_kind(error: &PersistenceError) -> Option<io::ErrorKind> {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<io::Error>())
        .map(io::Error::kind)
}

/// A change that counts its calls, adds `key`, and returns once the sender of its gate is
/// dropped: a write whose file system does not answer until the test lets it go.
fn held_change(
    calls: &Arc<AtomicUsize>,
    key: &'static str,
) -> (impl FnOnce(&mut JsonDoc) + Send + 'static, mpsc::Sender<()>) {
    let (release, gate) = mpsc::channel::<()>();
    let calls = Arc::clone(calls);
    let change = move |doc: &mut JsonDoc| {
        calls.fetch_add(1, Ordering::SeqCst);
        let _ = gate.recv();
        doc.add(key);
    };
    (change, release)
}

/// A write that runs 10 s fails with a timeout naming the file and the bound, and saying it
/// may have been written; meanwhile every step of the file (a read, a look, a writer's lock
/// attempt) is refused at once, a refused writer's change not called. Once the write
/// returns, it has landed, its lock file is gone, and the file is read and written again.
#[test]
fn a_step_that_overruns_times_out_and_refuses_the_next_until_it_returns() {
    within_a_minute(|| {
        paused_runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("msal.cache.nocae");
            let file = CacheFile::<JsonDoc>::new(path.clone(), None);
            file.modify(|doc| doc.add("before")).await.unwrap();
            let calls = Arc::new(AtomicUsize::new(0));
            let (change, release) = held_change(&calls, "hung");
            let write = tokio::spawn({
                let file = Arc::clone(&file);
                async move { file.modify(change).await }
            });
            until(|| calls.load(Ordering::SeqCst) == 1).await;
            tokio::time::advance(READ_TIMEOUT).await;

            let error = write.await.unwrap().unwrap_err();
            assert_eq!(io_kind(&error), Some(io::ErrorKind::TimedOut), "{error}");
            let text = error.to_string();
            for expected in [
                "could not write the token cache",
                &path.display().to_string(),
                "10 s",
                "may or may not have been written",
            ] {
                assert!(text.contains(expected), "{expected:?} in {text}");
            }
            assert!(lock_path_of(&path).exists(), "held by the hung write");

            let refused = file.read().now_or_never().expect("refused at once");
            let error = refused.unwrap_err();
            assert_eq!(io_kind(&error), Some(io::ErrorKind::TimedOut));
            let text = error.to_string();
            for expected in [
                "could not read the token cache",
                &path.display().to_string(),
                "not tried",
                "10 s",
            ] {
                assert!(text.contains(expected), "{expected:?} in {text}");
            }
            let looked = file.any_exists(file.files()).now_or_never();
            assert!(matches!(looked, Some(Err(_))), "refused at once");
            let (unused, _unused) = held_change(&calls, "unused");
            let refused = file.modify(unused).now_or_never().expect("refused at once");
            let text = refused.unwrap_err().to_string();
            let lock = lock_path_of(&path).display().to_string();
            assert!(text.contains(&lock) && text.contains("not tried"), "{text}");
            assert_eq!(
                calls.load(Ordering::SeqCst),
                1,
                "a refused change is not called"
            );

            drop(release);
            until(|| !file.steps.overran()).await;
            assert!(!lock_path_of(&path).exists());
            let mut keys = file.read().await.unwrap().keys();
            keys.sort();
            assert_eq!(keys, ["before", "hung"]);
            file.modify(|doc| doc.add("after")).await.unwrap();
            let mut keys = file_keys(&path);
            keys.sort();
            assert_eq!(keys, ["after", "before", "hung"]);
        });
    });
}

/// Work refused while it holds something whose drop blocks (a lock file's guard, which
/// removes its file) is dropped off the executor: the refusal comes at once.
#[test]
fn refused_work_holding_a_lock_is_dropped_off_the_executor() {
    /// Blocks its drop until the test's sender is dropped.
    struct SlowDrop(mpsc::Receiver<()>);
    impl Drop for SlowDrop {
        fn drop(&mut self) {
            let _ = self.0.recv();
        }
    }

    within_a_minute(|| {
        paused_runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("msal.cache.nocae");
            let file = CacheFile::<JsonDoc>::new(path.clone(), None);
            let (release, gate) = mpsc::channel::<()>();
            let started = Arc::new(AtomicUsize::new(0));
            let hung = tokio::spawn({
                let (file, path, started) = (Arc::clone(&file), path.clone(), Arc::clone(&started));
                async move {
                    run_blocking(&file.steps, Step::Read, &path, move || {
                        started.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.recv();
                        Ok(())
                    })
                    .await
                }
            });
            until(|| started.load(Ordering::SeqCst) == 1).await;
            tokio::time::advance(READ_TIMEOUT).await;
            assert!(hung.await.unwrap().is_err());

            let (let_go, held) = mpsc::channel::<()>();
            let guard = SlowDrop(held);
            let refused = run_blocking(&file.steps, Step::Release, &path, move || {
                drop(guard);
                Ok(())
            })
            .now_or_never()
            .expect("refused at once");
            assert!(refused.is_err());
            drop((let_go, release));
        });
    });
}

/// Dropping a runtime while a step of the cache file hangs returns (a `spawn_blocking` step
/// made it wait for the step without a limit), on a paused clock and on a running one.
#[test]
fn a_hung_step_does_not_hold_up_runtime_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut releases = Vec::new();
    let mut n = 0;
    runtimes_drop_while_work_hangs(
        |runtime| {
            let file = CacheFile::<JsonDoc>::new(dir.path().join(format!("cache{n}")), None);
            n += 1;
            let (change, release) = held_change(&calls, "never");
            releases.push(release);
            runtime.spawn(async move { file.modify(change).await })
        },
        |n| calls.load(Ordering::SeqCst) > n,
    );
    // The steps' threads return.
    drop(releases);
}
