//! A cache file on a file system that stops answering: each step of its I/O is bounded in
//! time, refused at once while one that overran has not returned, and never holds up the
//! runtime's shutdown. A hung step is a step blocked on a channel the test holds (a change
//! made under the lock, or a step's own work), released when the test says.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use futures_util::FutureExt;

use super::super::directory::{resolving, steps_of};
use super::super::lock_file::take;
use super::super::{CacheFile, Document, LegacyWrites, PersistenceError, Step, run_blocking};
use super::{JsonDoc, file_keys, lock_path_of, plant_lock};
use crate::blocking_read::READ_TIMEOUT;
use crate::blocking_read::tests::{
    paused_runtime, runtimes_drop_while_work_hangs, until, within_a_minute,
};
use crate::entra::msal_cache::CacheDocument;
use crate::entra::store::TokenStore;
use crate::test_support::Logs;

/// The error's I/O kind, if it is an I/O error.
fn io_kind(error: &PersistenceError) -> Option<io::ErrorKind> {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<io::Error>())
        .map(io::Error::kind)
}

/// Starts a step of `file` that hangs until the returned sender is dropped; returns once it
/// has started. Once the test has let it run [`READ_TIMEOUT`], the file's steps are refused.
async fn hang<D: Document>(
    file: &CacheFile<D>,
) -> (
    tokio::task::JoinHandle<Result<(), PersistenceError>>,
    mpsc::Sender<()>,
) {
    let (release, gate) = mpsc::channel::<()>();
    let started = Arc::new(AtomicUsize::new(0));
    let hung = tokio::spawn({
        let (steps, path, started) = (file.steps.clone(), file.path.clone(), Arc::clone(&started));
        async move {
            run_blocking(&steps, Step::Read, &path, move || {
                started.fetch_add(1, Ordering::SeqCst);
                let _ = gate.recv();
                Ok(())
            })
            .await
        }
    });
    until(|| started.load(Ordering::SeqCst) == 1).await;
    (hung, release)
}

/// [`hang`], then [`READ_TIMEOUT`] on the clock: the file's steps are refused until the
/// returned sender is dropped.
async fn overrun<D: Document>(file: &CacheFile<D>) -> mpsc::Sender<()> {
    let (hung, release) = hang(file).await;
    tokio::time::advance(READ_TIMEOUT).await;
    assert!(hung.await.unwrap().is_err());
    assert!(file.steps.overran());
    release
}

/// Until a writer of `file` holds its lock file at `lock_path` and waits, between steps, for
/// another lock: it has started `started` steps of the file, `hung` ones included (its own
/// lock attempt, the look at the legacy file, its first attempt at the legacy lock), and
/// none is running but the `hung` ones. Counted, not guessed from a pause: a pause may be a
/// gap between two steps. Then one turn of the runtime, in which the writer takes its last
/// step's result (it was woken before the step was forgotten) and goes to sleep until its
/// next attempt, which the test's clock, kept from idling, does not reach.
async fn until_waiting_between_steps<D: Document>(
    file: &CacheFile<D>,
    lock_path: &std::path::Path,
    started: u64,
    hung: usize,
) {
    until(|| file.steps.started() == started && file.steps.running() == hung).await;
    assert!(lock_path.exists(), "the writer holds its lock");
    tokio::task::yield_now().await;
    assert_eq!(file.steps.started(), started, "no further step");
}

/// A signal file that cannot be touched, the Secret Service's item stored, fails the change
/// with an error that says the item was stored, the signal file not touched and what that
/// means (the caller keeps what it would lose); the lock file is released after the attempt.
#[cfg(all(feature = "keyring", target_os = "linux"))]
#[test]
fn a_signal_file_not_touched_fails_the_change_saying_the_item_was_stored() {
    use super::super::keyring::finish;

    within_a_minute(|| {
        paused_runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let signal = dir.path().join("msal.cache.nocae");
            // A directory is not touched (not a regular file).
            std::fs::create_dir(&signal).unwrap();
            let file = CacheFile::<JsonDoc>::new(signal.clone(), None);
            let lock_path = lock_path_of(&signal);
            let now = tokio::time::Instant::now();
            let lock = Arc::new(file.acquire_lock(&lock_path, now).await.unwrap());
            let error = finish(&file.steps, lock, signal.clone(), Ok(Some("item")))
                .await
                .unwrap_err();
            let text = error.to_string();
            for expected in [
                "could not touch the token cache's signal file",
                &signal.display().to_string(),
                "the Secret Service's item was stored, but the signal file was not touched",
                "not told to reload",
                "old copy",
            ] {
                assert!(text.contains(expected), "{expected:?} in {text}");
            }
            assert!(!lock_path.exists(), "released");

            // Nothing stored, or a failure: the lock file released, the answer as it was.
            let lock = Arc::new(file.acquire_lock(&lock_path, now).await.unwrap());
            let unchanged = finish(&file.steps, lock, signal.clone(), Ok(None::<&str>)).await;
            assert!(matches!(unchanged, Ok(None)));
            assert!(!lock_path.exists(), "released");
            let lock = Arc::new(file.acquire_lock(&lock_path, now).await.unwrap());
            let failed: Result<Option<&str>, _> = Err(PersistenceError::io(
                "store",
                &signal,
                io::Error::other("refused"),
            ));
            let failed = finish(&file.steps, lock, signal.clone(), failed).await;
            assert!(failed.unwrap_err().to_string().contains("refused"));
            assert!(!lock_path.exists(), "released");
        });
    });
}

/// What is logged on this thread while it lives: in a current-thread runtime, what the
/// executor logs, and not what the steps' threads do.
struct ThreadLogs {
    text: Logs,
    _default: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
}

impl ThreadLogs {
    fn capture() -> Self {
        let text = Logs::default();
        Self::capture_by(text.clone(), text)
    }

    /// Captures what `writer` is given, `text` being what it keeps.
    fn capture_by(text: Logs, writer: impl io::Write + Clone + Send + Sync + 'static) -> Self {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // Another test's thread, without a subscriber, may have registered the callsites
        // first: with two dispatchers alive, tracing asks the current one at each event.
        let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let default = tracing::subscriber::set_default(subscriber);
        tracing::callsite::rebuild_interest_cache();
        Self {
            text,
            _default: default,
            _second: second,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.0.lock().unwrap()).into_owned()
    }
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

/// The refusal outlives the file's objects: every one dropped while a step hangs (a read,
/// which holds nothing of the file's), one built again for the path (as a credential built
/// again does) is refused at once, with the same error, a change not called and no step
/// started, instead of starting steps of its own on the mount that does not answer. Once the
/// step returns, the new one reads and writes.
#[test]
fn a_file_built_again_while_a_step_hangs_is_refused_until_it_returns() {
    within_a_minute(|| {
        paused_runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("msal.cache.nocae");
            let file = CacheFile::<JsonDoc>::shared(path.clone(), None);
            file.modify(|doc| doc.add("before")).await.unwrap();
            let release = overrun(&file).await;
            let refused = file.read().now_or_never().expect("refused at once");
            let before = refused.unwrap_err().to_string();
            assert!(before.contains("not tried"), "{before}");

            let gone = Arc::downgrade(&file);
            drop(file);
            assert!(gone.upgrade().is_none(), "no object of the file is left");

            let again = CacheFile::<JsonDoc>::shared(path.clone(), None);
            let started = again.steps.started();
            let refused = again.read().now_or_never().expect("refused at once");
            assert_eq!(refused.unwrap_err().to_string(), before);
            let calls = Arc::new(AtomicUsize::new(0));
            let (unused, _unused) = held_change(&calls, "unused");
            let refused = again
                .modify(unused)
                .now_or_never()
                .expect("refused at once");
            assert!(refused.unwrap_err().to_string().contains("not tried"));
            assert_eq!(calls.load(Ordering::SeqCst), 0, "the change not called");
            assert_eq!(again.steps.started(), started, "no step started");
            assert_eq!(again.steps.running(), 1, "only the hung step");

            drop(release);
            until(|| !again.steps.overran()).await;
            assert_eq!(again.read().await.unwrap().keys(), ["before"]);
            again.modify(|doc| doc.add("after")).await.unwrap();
            let mut keys = file_keys(&path);
            keys.sort();
            assert_eq!(keys, ["after", "before"]);
        });
    });
}

/// A credential built again while a step hangs does not resolve its directory again (on a
/// mount that does not answer, that would hold `build()`): it gets the hung directory's
/// steps, and is refused. Seen through a symlink changed meanwhile, which a resolution would
/// follow to other steps; once nothing of the directory is held, the next build follows it.
#[test]
fn a_file_built_again_while_a_step_hangs_does_not_resolve_its_directory_again() {
    within_a_minute(|| {
        paused_runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let base = std::fs::canonicalize(dir.path()).unwrap();
            for real in ["first", "second"] {
                std::fs::create_dir(base.join(real)).unwrap();
            }
            let link = base.join("link");
            std::os::unix::fs::symlink(base.join("first"), &link).unwrap();
            let path = link.join("msal.cache.nocae");
            let file = CacheFile::<JsonDoc>::shared(path.clone(), None);
            let release = overrun(&file).await;
            drop(file);

            std::fs::remove_file(&link).unwrap();
            std::os::unix::fs::symlink(base.join("second"), &link).unwrap();
            let again = CacheFile::<JsonDoc>::shared(path.clone(), None);
            let refused = again.read().now_or_never().expect("refused at once");
            assert!(refused.unwrap_err().to_string().contains("not tried"));

            drop(release);
            until(|| !again.steps.overran()).await;
            let steps = again.steps.downgrade();
            drop(again);
            until(|| !steps.is_held()).await;
            let followed = CacheFile::<JsonDoc>::shared(path.clone(), None);
            let second = CacheFile::<JsonDoc>::shared(base.join("second/msal.cache.nocae"), None);
            assert!(Arc::ptr_eq(&followed, &second), "the symlink followed");
        });
    });
}

/// A resolution of the directory that hangs holds up one build for its timeout at most (here
/// none): the directory as named is its key, with a warning. Another build meanwhile, its
/// steps let go, waits for it no longer and starts none; once it has returned and nothing
/// of the directory is held, the next build resolves it.
#[test]
fn a_resolution_that_hangs_gives_the_directory_as_named_and_is_not_run_twice() {
    within_a_minute(|| {
        let logs = ThreadLogs::capture();
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("named");
        let resolved = dir.path().join("resolved");
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, gate) = mpsc::channel::<()>();
        let hung = {
            let (calls, resolved) = (Arc::clone(&calls), resolved.clone());
            move |_: &std::path::Path| {
                calls.fetch_add(1, Ordering::SeqCst);
                let _ = gate.recv();
                resolved
            }
        };
        let (key, steps) = steps_of(&named, hung, Duration::ZERO);
        assert_eq!(key, named);
        let text = logs.text();
        assert!(text.contains("not resolved within the timeout"), "{text}");
        // The bound it was waited for, not the usual one.
        assert!(text.contains("timeout=0 ms"), "{text}");
        assert!(text.contains(&*named.to_string_lossy()), "{text}");
        drop(steps);

        let unused_calls = Arc::new(AtomicUsize::new(0));
        let unused = {
            let (calls, other) = (Arc::clone(&unused_calls), dir.path().join("other"));
            move |_: &std::path::Path| {
                calls.fetch_add(1, Ordering::SeqCst);
                other
            }
        };
        let (key, steps) = steps_of(&named, unused, READ_TIMEOUT);
        assert_eq!(key, named, "the same key, at once");
        drop(steps);
        assert_eq!(unused_calls.load(Ordering::SeqCst), 0, "not resolved again");
        until_returned(&named, &calls, release);

        let calls = Arc::new(AtomicUsize::new(0));
        let counted = {
            let (calls, resolved) = (Arc::clone(&calls), resolved.clone());
            move |_: &std::path::Path| {
                calls.fetch_add(1, Ordering::SeqCst);
                resolved
            }
        };
        let (key, _steps) = steps_of(&named, counted, READ_TIMEOUT);
        assert_eq!((key, calls.load(Ordering::SeqCst)), (resolved, 1));
    });
}

/// A log writer that, before it writes, looks up from another thread whether a directory is
/// being resolved (which takes the resolution's lock), and counts it: a subscriber whose I/O
/// would wait for that lock.
#[derive(Clone)]
struct LooksUp {
    logs: Logs,
    directory: std::path::PathBuf,
    looked: Arc<AtomicUsize>,
}

impl io::Write for LooksUp {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let directory = self.directory.clone();
        let _ = std::thread::spawn(move || resolving(&directory)).join();
        self.looked.fetch_add(1, Ordering::SeqCst);
        io::Write::write(&mut self.logs, bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A resolution's warnings (it hung past its bound, or it panicked) are logged with no lock
/// held: a subscriber may do I/O, here wait for a thread that takes the resolution's lock.
/// Before, that waited for ever.
#[test]
fn a_resolutions_warning_is_logged_with_no_lock_held() {
    within_a_minute(|| {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("named");
        let looked = Arc::new(AtomicUsize::new(0));
        let writer = LooksUp {
            logs: Logs::default(),
            directory: named.clone(),
            looked: Arc::clone(&looked),
        };
        let logs = ThreadLogs::capture_by(writer.logs.clone(), writer);

        let (release, gate) = mpsc::channel::<()>();
        let hung = move |named: &std::path::Path| {
            let _ = gate.recv();
            named.to_path_buf()
        };
        let (key, steps) = steps_of(&named, hung, Duration::ZERO);
        assert_eq!(key, named);
        assert!(logs.text().contains("not resolved within the timeout"));
        assert_eq!(looked.load(Ordering::SeqCst), 1);
        drop((steps, release));
        while resolving(&named) {
            std::thread::yield_now();
        }

        let panics = |_: &std::path::Path| -> std::path::PathBuf { panic!("resolving") };
        let (key, _steps) = steps_of(&named, panics, READ_TIMEOUT);
        assert_eq!(key, named);
        assert!(logs.text().contains("resolving its directory panicked"));
        assert_eq!(looked.load(Ordering::SeqCst), 2);
    });
}

/// Once the hung resolution of `named` has been called, lets it return, and waits until it
/// has; it was called once.
fn until_returned(named: &std::path::Path, calls: &AtomicUsize, release: mpsc::Sender<()>) {
    while calls.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    drop(release);
    while resolving(named) {
        std::thread::yield_now();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// One step hung in a directory refuses the steps of every file there, whatever its object
/// or document type (the legacy file, another document's object), and not another
/// directory's: they share a file system, where more steps would only hang with it.
#[test]
fn a_hung_step_refuses_the_steps_of_every_file_in_its_directory() {
    within_a_minute(|| {
        paused_runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("msal.cache.nocae");
            let file = CacheFile::<JsonDoc>::shared(path.clone(), None);
            let release = overrun(&file).await;

            let legacy = CacheFile::<JsonDoc>::shared(dir.path().join("msal.cache"), None);
            let refused = legacy.read().now_or_never().expect("refused at once");
            assert!(refused.unwrap_err().to_string().contains("not tried"));
            let cae = CacheFile::<CacheDocument>::shared(dir.path().join("msal.cache.cae"), None);
            let refused = cae.read().now_or_never().expect("refused at once");
            assert!(refused.unwrap_err().to_string().contains("not tried"));

            let elsewhere = tempfile::tempdir().unwrap();
            let other = CacheFile::<JsonDoc>::shared(elsewhere.path().join("msal.cache"), None);
            other.modify(|doc| doc.add("other")).await.unwrap();

            drop(release);
            until(|| !file.steps.overran()).await;
            legacy.modify(|doc| doc.add("legacy")).await.unwrap();
        });
    });
}

/// A file object of its own (tests' [`CacheFile::new`]) has its directory's steps by the key
/// [`CacheFile::shared`] uses: named through a symlink, its hung step refuses a shared
/// object's named by the real directory.
#[test]
fn a_file_of_its_own_has_its_directorys_steps_by_the_shared_key() {
    within_a_minute(|| {
        paused_runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let base = std::fs::canonicalize(dir.path()).unwrap();
            std::fs::create_dir(base.join("real")).unwrap();
            std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
            let own = CacheFile::<JsonDoc>::new(base.join("link/msal.cache.nocae"), None);
            let release = overrun(&own).await;
            let shared = CacheFile::<JsonDoc>::shared(base.join("real/msal.cache.nocae"), None);
            let refused = shared.read().now_or_never().expect("refused at once");
            assert!(refused.unwrap_err().to_string().contains("not tried"));
            drop(release);
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

/// A lock step that overran, its lock file taken: once it returns, what it returned (its
/// caller gone) is dropped on its thread, the lock file's removal with it, before it counts
/// as returned. Until the lock file is removed, the file's steps are refused, as they were
/// while the step hung: that removal is I/O on the same file system. The error names the
/// lock file.
#[test]
fn a_lock_step_that_overran_refuses_steps_until_its_lock_file_is_removed() {
    /// Blocks its drop until the test lets it go; counts the drops started.
    #[derive(Debug)]
    struct SlowDrop {
        gate: mpsc::Receiver<()>,
        dropping: Arc<AtomicUsize>,
    }
    impl Drop for SlowDrop {
        fn drop(&mut self) {
            self.dropping.fetch_add(1, Ordering::SeqCst);
            let _ = self.gate.recv();
        }
    }

    within_a_minute(|| {
        paused_runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("msal.cache.nocae");
            let lock_path = lock_path_of(&path);
            let file = CacheFile::<JsonDoc>::new(path.clone(), None);
            let (release_step, step_gate) = mpsc::channel::<()>();
            let (release_drop, drop_gate) = mpsc::channel::<()>();
            let started = Arc::new(AtomicUsize::new(0));
            let dropping = Arc::new(AtomicUsize::new(0));
            let hung = tokio::spawn({
                let (steps, attempt) = (file.steps.clone(), lock_path.clone());
                let (started, dropping) = (Arc::clone(&started), Arc::clone(&dropping));
                async move {
                    let named = attempt.clone();
                    run_blocking(&steps, Step::Lock, &named, move || {
                        let guard = take(&attempt);
                        started.fetch_add(1, Ordering::SeqCst);
                        let _ = step_gate.recv();
                        // Dropped first: the lock file is still there while its drop hangs.
                        let slow = SlowDrop {
                            gate: drop_gate,
                            dropping,
                        };
                        Ok((slow, guard))
                    })
                    .await
                }
            });
            until(|| started.load(Ordering::SeqCst) == 1).await;
            tokio::time::advance(READ_TIMEOUT).await;
            let error = hung.await.unwrap().unwrap_err();
            assert_eq!(io_kind(&error), Some(io::ErrorKind::TimedOut), "{error}");
            let text = error.to_string();
            for expected in [
                "could not create the lock file",
                &lock_path.display().to_string(),
                "10 s",
                "a lock file it made is removed when it returns",
            ] {
                assert!(text.contains(expected), "{expected:?} in {text}");
            }

            drop(release_step);
            // The step returned; what it returned is being dropped, the lock file held.
            until(|| dropping.load(Ordering::SeqCst) == 1).await;
            assert!(lock_path.exists());
            assert!(file.steps.overran(), "refused while the lock file is held");
            let refused = file.read().now_or_never().expect("refused at once");
            assert!(refused.unwrap_err().to_string().contains("not tried"));

            drop(release_drop);
            until(|| !file.steps.overran()).await;
            assert!(!lock_path.exists(), "removed before steps run again");
            file.modify(|doc| doc.add("after")).await.unwrap();
            assert_eq!(file_keys(&path), ["after"]);
        });
    });
}

/// A writer holding the file's lock (waiting for the legacy file's, which another process
/// holds) when the file's steps start being refused fails at once, not tried, and its lock
/// file is removed all the same, while the step that overran still hangs; the other
/// process's lock is left alone.
#[test]
fn a_writer_refused_while_it_holds_the_lock_lets_its_lock_file_go() {
    within_a_minute(|| {
        paused_runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("msal.cache.nocae");
            let legacy = dir.path().join("msal.cache");
            std::fs::write(&legacy, "{}").unwrap();
            let legacy_lock = plant_lock(&legacy, std::process::id(), "python", Duration::ZERO);
            let file = CacheFile::<JsonDoc>::new(path.clone(), Some(legacy.clone()));
            let (hung, release) = hang(&file).await;
            let before = file.steps.started();
            let writer = tokio::spawn({
                let file = Arc::clone(&file);
                async move { file.modify(|doc| doc.add("refused")).await }
            });
            // Then no step of its is running when the clock reaches the overrun.
            until_waiting_between_steps(&file, &lock_path_of(&path), before + 3, 1).await;
            tokio::time::advance(READ_TIMEOUT).await;
            assert!(hung.await.unwrap().is_err());

            let error = writer.await.unwrap().unwrap_err();
            assert_eq!(io_kind(&error), Some(io::ErrorKind::TimedOut), "{error}");
            assert!(error.to_string().contains("not tried"), "{error}");
            until(|| !lock_path_of(&path).exists()).await;
            assert!(file.steps.overran(), "the hung step still hangs");
            assert!(
                legacy_lock.exists(),
                "the other process's lock is left alone"
            );
            assert!(!path.exists(), "nothing written");

            drop(release);
            until(|| !file.steps.overran()).await;
            std::fs::remove_file(&legacy_lock).unwrap();
            file.modify(|doc| doc.add("after")).await.unwrap();
            assert_eq!(file_keys(&path), ["after"]);
        });
    });
}

/// A writer cancelled while it holds the file's lock between steps (waiting for the legacy
/// file's lock, which another process holds) has its lock file removed off the executor, by
/// a step of its own: not on this thread, which runs the executor and whose logs are kept
/// (a lock file removed here is logged here).
#[test]
fn a_writer_cancelled_while_it_holds_the_lock_removes_it_off_the_executor() {
    within_a_minute(|| {
        let logs = ThreadLogs::capture();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("msal.cache.nocae");
        let lock_path = lock_path_of(&path);
        paused_runtime().block_on(async {
            let legacy = dir.path().join("msal.cache");
            std::fs::write(&legacy, "{}").unwrap();
            plant_lock(&legacy, std::process::id(), "python", Duration::ZERO);
            let file = CacheFile::<JsonDoc>::new(path.clone(), Some(legacy));
            let writer = tokio::spawn({
                let file = Arc::clone(&file);
                async move { file.modify(|doc| doc.add("cancelled")).await }
            });
            // Then its lock is in its hands, not in a step's.
            until_waiting_between_steps(&file, &lock_path, 3, 0).await;
            writer.abort();
            assert!(writer.await.unwrap_err().is_cancelled());
            until(|| !lock_path.exists()).await;
            until(|| file.steps.running() == 0).await;
        });
        // A lock file removed on this thread is logged here.
        let control = dir.path().join("control.lockfile");
        drop(take(&control));
        let text = logs.text();
        assert!(text.contains(&*control.to_string_lossy()), "{text}");
        assert!(
            !text.contains(&*lock_path.to_string_lossy()),
            "removed on the executor: {text}"
        );
    });
}

/// `TokenStore::exists` says yes when its look is refused (its file's steps are, a step
/// having overrun): the read that follows says why. (A look that times out is the same
/// error, answered the same way.)
#[test]
fn a_store_whose_look_is_refused_says_its_file_exists() {
    within_a_minute(|| {
        paused_runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("msal.cache.nocae");
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            let location = crate::credential::CacheLocation::Keyring(
                crate::entra::persistence::KeyringTarget {
                    signal: path.clone(),
                    bus: Some("unix:path=/nonexistent/x".to_owned()),
                    fallback: true,
                    legacy: None,
                },
            );
            #[cfg(not(all(feature = "keyring", target_os = "linux")))]
            let location = crate::credential::CacheLocation::File {
                path: path.clone(),
                legacy: None,
            };
            let store = TokenStore::file(location, LegacyWrites::Copy);
            assert!(!store.exists().await, "nothing there");
            // With the Secret Service, its backend is chosen: no usable one, the file.
            assert!(store.read().await.unwrap().is_empty());
            // The store's file, shared.
            let file = CacheFile::<CacheDocument>::shared(path.clone(), None);
            let release = overrun(&file).await;
            let exists = store.exists().now_or_never().expect("refused at once");
            assert!(exists, "a look refused says yes");
            let error = store.read().now_or_never().expect("refused at once");
            assert!(error.unwrap_err().to_string().contains("not tried"));
            drop(release);
            until(|| !file.steps.overran()).await;
            assert!(!store.exists().await);
        });
    });
}

/// The Secret Service's steps on the signal file, refused: the lock check's error names the
/// lock file, as the release's does. The signal file's step, after the item was stored, is
/// run all the same (the lock file goes with it, after the touch: refused, the lock file
/// would go with the signal file untouched). An overrun of the signal step says the item was
/// stored, and what an untouched signal file means.
#[cfg(all(feature = "keyring", target_os = "linux"))]
#[test]
fn refused_keyring_steps_name_the_lock_file_and_the_signal_step_runs_all_the_same() {
    use super::super::keyring::{check_lock, finish, release};

    within_a_minute(|| {
        paused_runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let signal = dir.path().join("msal.cache.nocae");
            let file = CacheFile::<JsonDoc>::new(signal.clone(), None);
            let now = tokio::time::Instant::now();
            let lock_path = lock_path_of(&signal);
            let lock = Arc::new(file.acquire_lock(&lock_path, now).await.unwrap());
            let other_path = lock_path_of(&dir.path().join("other"));
            let other = Arc::new(file.acquire_lock(&other_path, now).await.unwrap());
            let release_hung = overrun(&file).await;

            let checked = check_lock(&file.steps, &lock).now_or_never();
            let text = checked.expect("at once").unwrap_err().to_string();
            for expected in [
                "could not keep the lock file",
                &lock_path.display().to_string(),
                "not tried",
            ] {
                assert!(text.contains(expected), "{expected:?} in {text}");
            }

            let released = release(&file.steps, other).now_or_never();
            let text = released.expect("at once").unwrap_err().to_string();
            for expected in [
                "could not release the lock file",
                &other_path.display().to_string(),
                "not tried",
            ] {
                assert!(text.contains(expected), "{expected:?} in {text}");
            }

            // Run all the same, counted.
            // The refused release's lock file was let go of by a step of its own.
            until(|| !other_path.exists() && file.steps.running() == 1).await;
            let touched = tokio::spawn({
                let (steps, signal) = (file.steps.clone(), signal.clone());
                async move { finish(&steps, lock, signal, Ok(Some("item"))).await }
            });
            assert_eq!(touched.await.unwrap().unwrap(), Some("item"));
            assert!(signal.exists(), "touched");
            // Released too (the lock is dropped after the touch, in the same step; this does
            // not observe the order).
            assert!(!lock_path.exists(), "released");
            assert_eq!(file.steps.running(), 1, "only the hung step");

            // The lock check holds the lock: it stays taken while that step runs on.
            let text = Step::CheckLock.overran(&lock_path).to_string();
            assert!(
                text.contains("the lock file stays taken until the step returns"),
                "{text}"
            );
            let text = Step::Signal.overran(&signal).to_string();
            for expected in [
                "the Secret Service's item was stored",
                "may or may not have been touched",
                "old copy",
                "the lock file stays taken until the step returns",
            ] {
                assert!(text.contains(expected), "{expected:?} in {text}");
            }
            drop(release_hung);
        });
    });
}
