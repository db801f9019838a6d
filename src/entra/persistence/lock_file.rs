//! The lock-file protocol of `msal-extensions`: `<cache>.lockfile`, created exclusively,
//! holding `"<pid> <argv0>"`, removed when done; stale locks broken with care.
//!
//! Beyond `msal-extensions`' protocol, the holder `flock`s its lock file until it has removed
//! it (as `msal-extensions` with `portalocker` and MSAL.NET do). A breaker takes the `flock`
//! before it judges a lock old enough to be stale: a lock that is `flock`ed is never stale,
//! and a breaker removes a lock only while it holds that lock's `flock`, so it cannot remove
//! one taken after it looked. A lock not `flock`ed is judged by its age and pid alone, which
//! can break a live holder's (see the limits in the [module docs](super)).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::atomic_write::{create_dir, create_new_private, parent_dir};
use super::error::{Kind, PersistenceError};
use super::reader::{age, inode, is_missing};
use super::{CacheFile, Document, Step, run_blocking};
use crate::blocking_read::Steps;

/// Operation name of errors while taking the lock file.
pub(super) const CREATE: &str = "create the lock file";
/// Operation name of errors while checking that the lock file is still ours.
pub(super) const KEEP: &str = "keep the lock file";

/// Pause between two attempts to create the lock file.
pub(super) const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// A lock file older than this, not `flock`ed, is stale whoever it names. A write of the file
/// takes milliseconds, but a holder may hold the lock far longer: `msal-extensions` with the
/// Secret Service holds it through a keyring's unlock prompt (see the [module docs](super)).
pub(super) const STALE_LOCK_AGE: Duration = Duration::from_secs(60);
/// A lock file naming a process that does not exist here, not `flock`ed, is stale once it is
/// this old. A live holder in another pid namespace, whose pid is not seen here, loses its
/// lock too if it holds it longer (see the [module docs](super)).
pub(super) const DEAD_HOLDER_GRACE: Duration = Duration::from_secs(2);
/// Suffix of the lock file's name, after the cache file's full name.
const LOCK_SUFFIX: &str = ".lockfile";
/// Longest excerpt of a lock file's content quoted in errors and logs.
const HOLDER_MAX_CHARS: usize = 120;
/// Attempts made one right after another (the lock vanished or was broken) before pausing: a
/// name that keeps changing under us must not spin a core for the whole lock timeout.
const QUICK_RETRIES: u32 = 3;

impl<D: Document> CacheFile<D> {
    /// Creates the lock file `lock_path` (this file's, or the legacy file's), waiting for other
    /// holders until the lock timeout has passed since `started` (at least one attempt is
    /// made) and removing stale locks. A file it created and found `flock`ed by someone else
    /// is kept open from one attempt to the next, to be taken if it is left to us.
    pub(super) async fn acquire_lock(
        &self,
        lock_path: &Path,
        started: Instant,
    ) -> Result<HeldLock, PersistenceError> {
        let mut holder = None;
        let mut quick = 0_u32;
        // Closed off the executor whenever it is dropped: at the timeout, or on cancellation.
        let mut kept = KeptFile {
            file: None,
            path: lock_path.to_path_buf(),
            steps: self.steps.clone(),
        };
        loop {
            let attempt = lock_path.to_path_buf();
            // Also closed off the executor if the step is refused and dropped unrun.
            let last = KeptFile {
                file: kept.file.take(),
                path: lock_path.to_path_buf(),
                steps: self.steps.clone(),
            };
            let retry_now = match run_blocking(&self.steps, Step::Lock, lock_path, move || {
                let mut last = last;
                try_lock(&attempt, last.file.take())
            })
            .await?
            {
                LockAttempt::Acquired(guard) => {
                    return Ok(HeldLock {
                        guard: Some(guard),
                        steps: self.steps.clone(),
                    });
                }
                // Released between our attempt and our look, or removed as stale.
                LockAttempt::Vanished | LockAttempt::BrokeStale => true,
                LockAttempt::Contended(ours) => {
                    kept.file = ours;
                    false
                }
                LockAttempt::Busy(observed) => {
                    holder = Some(observed.holder());
                    false
                }
            };
            let waited = started.elapsed();
            if waited >= self.lock_timeout {
                return Err(PersistenceError {
                    kind: Kind::LockTimeout {
                        lock_path: lock_path.to_path_buf(),
                        timeout: self.lock_timeout,
                        holder,
                        queued: false,
                    },
                });
            }
            if retry_now && quick < QUICK_RETRIES {
                quick = quick.saturating_add(1);
            } else {
                quick = 0;
                let left = self.lock_timeout.saturating_sub(waited);
                tokio::time::sleep(LOCK_RETRY_INTERVAL.min(left)).await;
            }
        }
    }
}

/// The lock file of the cache file at `cache`: `<cache>.lockfile`.
pub(super) fn lock_path_of(cache: &Path) -> PathBuf {
    let mut name = cache.as_os_str().to_os_string();
    name.push(LOCK_SUFFIX);
    PathBuf::from(name)
}

/// The content of our lock files, as `msal-extensions` writes it: `"<pid> <argv0>"`.
pub(super) fn lock_content() -> String {
    let argv0 = std::env::args_os()
        .next()
        .map(|arg| arg.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{} {}", std::process::id(), argv0)
}

/// Our lock file, as a writer holds it between steps: a [`LockGuard`] whose removal, when it
/// is dropped on a tokio runtime's thread (a call cancelled, or ended by an error, between
/// two steps), runs as a step of the file's I/O of its own ([`Steps::drop_counted`]): off the
/// executor, and counted, so that while it hangs the file's steps are refused as for any
/// step that overran. Dropped elsewhere (on a step's thread), it is removed there.
pub(super) struct HeldLock {
    /// `None` once dropped.
    guard: Option<LockGuard>,
    /// The steps of the file that took it (its own lock, or the legacy file's).
    steps: Steps,
}

impl std::fmt::Debug for HeldLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HeldLock").field(&self.guard).finish()
    }
}

impl HeldLock {
    /// The lock file's path.
    #[cfg(all(feature = "keyring", target_os = "linux"))]
    pub(super) fn path(&self) -> &Path {
        self.guard
            .as_ref()
            .map_or(Path::new(""), |guard| &guard.path)
    }

    /// See [`LockGuard::check_held`].
    pub(super) fn check_held(&self) -> Result<(), PersistenceError> {
        self.guard.as_ref().map_or(Ok(()), LockGuard::check_held)
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            self.steps.drop_counted(guard);
        } else {
            drop(guard);
        }
    }
}

/// A lock file we created that another holder `flock`ed before us ([`LockAttempt::Contended`]),
/// kept open to be taken at a later attempt if its `flock` comes free while its name is still
/// ours: the one that `flock`ed it may have been a breaker, which leaves it as it was.
pub(super) struct ContendedFile {
    /// The file we created, not `flock`ed by us.
    file: File,
    /// Its inode.
    inode: u64,
}

impl std::fmt::Debug for ContendedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContendedFile")
            .field("inode", &self.inode)
            .finish_non_exhaustive()
    }
}

/// A [`ContendedFile`] kept between attempts: closed, when dropped on a tokio runtime's thread
/// (the lock timed out, the call was cancelled, or a step refused), as a step of its own
/// ([`Steps::drop_counted`]), as a [`HeldLock`] is removed: a close on a network file system
/// may wait for its server.
struct KeptFile {
    /// `None` once handed to an attempt, or dropped.
    file: Option<ContendedFile>,
    /// `<cache>.lockfile`.
    path: PathBuf,
    /// The steps of the file whose lock it is.
    steps: Steps,
}

impl Drop for KeptFile {
    fn drop(&mut self) {
        let Some(file) = self.file.take() else {
            return;
        };
        let abandoned = Abandoned {
            file,
            path: std::mem::take(&mut self.path),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            self.steps.drop_counted(abandoned);
        } else {
            drop(abandoned);
        }
    }
}

/// A kept file whose acquisition ended before it was taken. Dropped, it removes the name if
/// that is still this file, empty, and its `flock` now free and taken by us (a breaker left
/// it): else the empty lock would hold every writer off until it is stale (a minute). A file
/// its holder wrote in, or still holds, or removed, is left to it.
struct Abandoned {
    file: ContendedFile,
    path: PathBuf,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let ours = || inode_at(&self.path).ok().flatten() == Some(self.file.inode);
        let empty = || self.file.file.metadata().is_ok_and(|m| m.len() == 0);
        if try_flock(&self.file.file) == Flock::Held && ours() && empty() {
            // Under our flock: no breaker removes it meanwhile, no holder that flocks writes.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The lock file, taken: removed on drop, then closed, which releases its `flock`. A writer
/// holds it as a [`HeldLock`].
#[derive(Debug)]
pub(super) struct LockGuard {
    /// `<cache>.lockfile`.
    path: PathBuf,
    /// Our lock file's inode (0 off unix), so that a lock re-created by someone else after ours
    /// was broken as stale is left alone.
    inode: u64,
    /// The open lock file: its `flock` tells stale-lock breakers that it is held. Closed after
    /// the file is removed, so that no breaker can find the name free of a holder while it
    /// still names our file.
    file: File,
}

impl LockGuard {
    /// Fails unless the lock file's name still points to our file. Someone who removed it (by
    /// hand, or `msal-extensions` with `portalocker`, which removes the name when done even if
    /// it locked a file that was ours) may have let another writer in: writing now could undo
    /// that writer's change, so the caller writes nothing.
    pub(super) fn check_held(&self) -> Result<(), PersistenceError> {
        match inode_at(&self.path) {
            Ok(Some(inode)) if inode == self.inode => Ok(()),
            Ok(_) => Err(PersistenceError::io(
                KEEP,
                &self.path,
                io::Error::other(
                    "another process removed or replaced it while this one held it; the token \
                     cache was not written, so that its changes are kept",
                ),
            )),
            Err(e) => Err(PersistenceError::io(KEEP, &self.path, e)),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if inode(&meta) == self.inode => match fs::remove_file(&self.path) {
                Ok(()) => {
                    tracing::trace!(lock_file = %self.path.display(), "released the token cache lock file");
                }
                Err(error) if is_missing(&error) => {}
                Err(error) => {
                    tracing::warn!(lock_file = %self.path.display(), %error, "could not remove the token cache lock file");
                }
            },
            Ok(_) | Err(_) => tracing::warn!(
                lock_file = %self.path.display(),
                "the token cache lock file was removed or replaced by another process while this one held it"
            ),
        }
    }
}

/// A lock file someone else holds, as seen at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LockObservation {
    /// The start of its content, lossily decoded.
    pub(super) content: String,
    /// Its modification time (≈ when it was taken).
    pub(super) modified: Option<SystemTime>,
    /// Its inode (0 off unix).
    pub(super) inode: u64,
}

impl LockObservation {
    /// Looks at the open lock file.
    fn read(file: &File) -> io::Result<Self> {
        let meta = file.metadata()?;
        let mut content = Vec::new();
        // At most four bytes per character.
        file.take((HOLDER_MAX_CHARS as u64).saturating_mul(4))
            .read_to_end(&mut content)?;
        Ok(Self {
            content: String::from_utf8_lossy(&content).into_owned(),
            modified: meta.modified().ok(),
            inode: inode(&meta),
        })
    }

    /// The holder's pid, if the content starts with one.
    fn pid(&self) -> Option<u32> {
        let first = self.content.split_whitespace().next()?;
        first.parse().ok().filter(|pid| *pid > 0)
    }

    /// Who holds the lock, for messages: `pid 123 (python3)`.
    pub(super) fn holder(&self) -> String {
        let text: String = self
            .content
            .trim()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(HOLDER_MAX_CHARS)
            .collect();
        match (self.pid(), text.split_once(' ')) {
            (Some(pid), Some((_, program))) if !program.trim().is_empty() => {
                format!("pid {pid} ({})", program.trim())
            }
            (Some(pid), _) => format!("pid {pid}"),
            (None, _) if text.is_empty() => "an unknown process (empty lock file)".to_owned(),
            (None, _) => format!("an unknown process (lock file says {text:?})"),
        }
    }

    /// Why the lock is stale, if it is. Its age is its modification time's [`age`]: a lock
    /// dated ahead of the clock by less than [`STALE_LOCK_AGE`] is fresh, its pid unchecked
    /// (another host sharing the directory, whose clock runs ahead, holds it, and its pid
    /// means nothing here); one dated that far ahead or further (left by a holder that
    /// crashed before the clock was stepped back) is stale, as old as one dated as far
    /// behind, rather than holding writers off until the clock catches up. A lock left by a
    /// holder that crashed just before the clock was stepped back by less than a minute is
    /// fresh until the clock reaches its time, then ages from there: it holds writers off
    /// until the clock passes its time plus [`DEAD_HOLDER_GRACE`] (Linux, its process gone)
    /// or [`STALE_LOCK_AGE`], under two minutes in all.
    pub(super) fn stale_reason(&self) -> Option<String> {
        let lock_age = self.modified.map(age).unwrap_or_default();
        if lock_age >= STALE_LOCK_AGE {
            let ahead = self.modified.is_some_and(|at| at > SystemTime::now());
            let when = if ahead { "ahead of the clock" } else { "old" };
            return Some(format!("it is {} s {when}", lock_age.as_secs()));
        }
        if lock_age >= DEAD_HOLDER_GRACE {
            if let Some(pid) = self.pid() {
                if process_is_gone(pid) {
                    return Some(format!("process {pid} no longer exists"));
                }
            }
        }
        None
    }
}

/// Whether process `pid` certainly does not exist (Linux: no `/proc/<pid>`). Elsewhere, or
/// without `/proc`, nothing is certain.
fn process_is_gone(pid: u32) -> bool {
    cfg!(target_os = "linux")
        && Path::new("/proc/self").exists()
        && !Path::new(&format!("/proc/{pid}")).exists()
}

/// What one attempt to create the lock file found.
enum LockAttempt {
    /// We hold it.
    Acquired(LockGuard),
    /// Someone else holds it.
    Busy(LockObservation),
    /// We created it, but someone else had it `flock`ed before us (a peer that takes the lock
    /// without creating the file, or a breaker: see [`try_lock_with`]): its name left to
    /// them; busy, to be tried again after a pause, with our file if it is still worth
    /// taking.
    Contended(Option<ContendedFile>),
    /// It existed but was gone (or replaced) when we looked.
    Vanished,
    /// It was stale and has been removed: try again now.
    BrokeStale,
}

/// What an attempt to `flock` a lock file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flock {
    /// Ours until the file is closed.
    Held,
    /// Another open file holds it: a live holder (a dead one's locks are released by the
    /// kernel).
    Busy,
    /// Not available here (not unix, or a file system without `flock`): the lock file's name
    /// alone rules, as it does for `msal-extensions` without `portalocker`.
    Unsupported,
}

/// Tries to `flock` the open lock file exclusively, without waiting.
#[cfg(unix)]
fn try_flock(file: &File) -> Flock {
    use rustix::fs::{FlockOperation, flock};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Flock::Held,
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Flock::Busy,
        Err(_) => Flock::Unsupported,
    }
}

/// Tries to `flock` the open lock file exclusively, without waiting.
#[cfg(not(unix))]
fn try_flock(_file: &File) -> Flock {
    Flock::Unsupported
}

/// The inode the lock file's name points to now (a symbolic link's own); `None` if it is gone.
fn inode_at(lock_path: &Path) -> io::Result<Option<u64>> {
    match fs::symlink_metadata(lock_path) {
        Ok(meta) => Ok(Some(inode(&meta))),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Moments of one attempt at the lock at which the tests step in ([`try_lock_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Moment {
    /// The writer has created the lock file and not yet `flock`ed it.
    Created,
    /// A breaker holds the `flock` of a lock file it is about to judge.
    Judging,
}

/// Tries once to create the lock file (blocking), or to take the file `contended` the last
/// attempt created; creates the directory if missing.
fn try_lock(
    lock_path: &Path,
    contended: Option<ContendedFile>,
) -> Result<LockAttempt, PersistenceError> {
    try_lock_with(lock_path, contended, &mut |_, _| {})
}

/// [`try_lock`], calling `seam` at each [`Moment`] it reaches: the tests' way into moments
/// that other processes reach only by chance.
fn try_lock_with(
    lock_path: &Path,
    contended: Option<ContendedFile>,
    seam: &mut dyn FnMut(Moment, &Path),
) -> Result<LockAttempt, PersistenceError> {
    if let Some(contended) = contended {
        return take_contended(lock_path, contended);
    }
    let mut created_dir = false;
    let file = loop {
        match create_new_private(lock_path) {
            Ok(file) => break file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return observe_busy_lock(lock_path, seam);
            }
            Err(e) if is_missing(&e) && !created_dir => {
                create_dir(parent_dir(lock_path))?;
                created_dir = true;
            }
            Err(e) => return Err(PersistenceError::io(CREATE, lock_path, e)),
        }
    };
    seam(Moment::Created, lock_path);
    // Taken at once, before the content is written: the window in which the file exists
    // without its flock is as short as it can be.
    let flock = try_flock(&file);
    let inode = file.metadata().map(|meta| inode(&meta)).unwrap_or(0);
    if flock == Flock::Busy {
        // Someone opened the file we made and flocked it first. Most likely a holder that
        // opens the lock file without `O_EXCL` and flocks it: MSAL.NET's `CrossPlatLock`
        // (`FileMode.OpenOrCreate`, `FileShare.None`, which .NET takes as a `flock` on unix,
        // retried every 100 ms for 60 s), or `msal-extensions` with `portalocker` after it
        // waited 5 s for the name (`open(.., "wb+")`, then `flock`). It holds the lock now,
        // writes under it and removes the name when done (`DeleteOnClose`, `os.remove`).
        // Removing the name ourselves would let the next writer, us included, create a new
        // file and write beside it: the name is left to its holder. It may also be a breaker:
        // one of an older release (which flocked every lock it judged), or one of ours whose
        // network file system's server dates the file 2 s behind its clock. A breaker finds
        // it empty, not stale, and leaves it, empty and held by no one, which would hold
        // every writer off for `STALE_LOCK_AGE`: the file is kept open, and taken at a later
        // attempt if its flock comes free while the name is still ours (`take_contended`).
        let kept = (inode != 0).then_some(ContendedFile { file, inode });
        return Ok(LockAttempt::Contended(kept));
    }
    claim(lock_path, file, inode)
}

/// Takes the lock file we created at an earlier attempt and found `flock`ed by someone else
/// ([`LockAttempt::Contended`]), if its `flock` is free now and its name still ours.
///
/// Its name gone or replaced, its holder removed it when done (MSAL.NET's `DeleteOnClose`,
/// `portalocker`'s `os.remove`): the file is closed, and the lock tried afresh. Its name still
/// ours but the file not empty, a holder wrote in it: it may be between releasing its `flock`
/// and removing the name (`msal-extensions` releases `portalocker`'s lock, then calls
/// `os.remove`), so the file is closed and the name left to it and to the stale rules.
/// Empty, it was `flock`ed by a breaker, or by a holder that died before writing: ours, as if
/// we had just created it. A holder that removes the name after we took it is caught by
/// [`LockGuard::check_held`] before we write.
fn take_contended(
    lock_path: &Path,
    contended: ContendedFile,
) -> Result<LockAttempt, PersistenceError> {
    let ours = |lock_path: &Path| -> Result<bool, PersistenceError> {
        Ok(
            inode_at(lock_path).map_err(|e| PersistenceError::io(CREATE, lock_path, e))?
                == Some(contended.inode),
        )
    };
    // Only a flock we hold lets us on: an error now (`ENOLCK`: NFS's lock daemon out of
    // reach) is no sign that the holder the kernel reported has gone.
    if try_flock(&contended.file) != Flock::Held {
        if !ours(lock_path)? {
            return Ok(LockAttempt::Vanished);
        }
        return Ok(LockAttempt::Contended(Some(contended)));
    }
    // Under our flock now: no breaker removes the name, and no holder that flocks writes in it.
    if !ours(lock_path)? {
        return Ok(LockAttempt::Vanished);
    }
    let written = contended
        .file
        .metadata()
        .map_err(|e| PersistenceError::io(CREATE, lock_path, e))?
        .len();
    if written != 0 {
        return Ok(LockAttempt::Contended(None));
    }
    let ContendedFile { file, inode } = contended;
    claim(lock_path, file, inode)
}

/// Takes the lock file we created, `file` of inode `inode`, which we hold `flock`ed (where
/// `flock` works): writes our content, then checks that the name still points to it.
fn claim(lock_path: &Path, file: File, inode: u64) -> Result<LockAttempt, PersistenceError> {
    let guard = LockGuard {
        path: lock_path.to_path_buf(),
        inode,
        file,
    };
    // On failure the guard removes the half-made lock file, its flock held.
    (&guard.file)
        .write_all(lock_content().as_bytes())
        .map_err(|e| PersistenceError::io(CREATE, lock_path, e))?;
    // Taken for stale and removed between our creation and our flock (a clock far off on a
    // network file system): no longer ours.
    if inode_at(lock_path).map_err(|e| PersistenceError::io(CREATE, lock_path, e))?
        != Some(guard.inode)
    {
        return Ok(LockAttempt::Vanished);
    }
    Ok(LockAttempt::Acquired(guard))
}

/// Looks at a lock file that exists, and removes it if it is stale.
///
/// A lock younger than [`DEAD_HOLDER_GRACE`] is never stale, and is not `flock`ed to be
/// judged: its maker may be a writer of ours between its creation and its `flock`, which, if
/// it found the `flock` taken, would have to wait for the breaker as for a holder (see
/// [`try_lock_with`]). Its age is that of the file opened (`fstat`), not of a name looked at
/// before, which another file may have taken since.
///
/// An older lock is never stale while its file is `flock`ed: its holder is alive, however old
/// the lock or whatever its pid means here. Otherwise (a holder that does not `flock`, like
/// `msal-extensions` without `portalocker`, or one that has died) the age and pid rules decide.
/// The breaker removes the lock while holding its `flock` and after checking that the name
/// still points to the file it judged, so two breakers never remove a lock taken after the one
/// they looked at, and no writer of ours can take the name in between (it must remove the
/// file to do so, and only a flock holder does).
fn observe_busy_lock(
    lock_path: &Path,
    seam: &mut dyn FnMut(Moment, &Path),
) -> Result<LockAttempt, PersistenceError> {
    const READ: &str = "read the lock file";
    const REMOVE: &str = "remove the stale lock file";
    let meta = match fs::symlink_metadata(lock_path) {
        Ok(meta) => meta,
        Err(e) if is_missing(&e) => return Ok(LockAttempt::Vanished),
        Err(e) => return Err(PersistenceError::io(READ, lock_path, e)),
    };
    if !meta.is_file() {
        // A FIFO would block the open for ever, a directory would never go away, a symbolic
        // link (dangling, say) is no lock `msal-extensions` can take either.
        let error = io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file; remove it",
        );
        return Err(PersistenceError::io(READ, lock_path, error));
    }
    let file = match File::open(lock_path) {
        Ok(file) => file,
        Err(e) if is_missing(&e) => return Ok(LockAttempt::Vanished),
        Err(e) => return Err(PersistenceError::io(READ, lock_path, e)),
    };
    let opened = file
        .metadata()
        .map_err(|e| PersistenceError::io(READ, lock_path, e))?;
    // An unknown time counts as no age, as in `stale_reason`.
    if opened
        .modified()
        .map_or(true, |at| age(at) < DEAD_HOLDER_GRACE)
    {
        let observed =
            LockObservation::read(&file).map_err(|e| PersistenceError::io(READ, lock_path, e))?;
        return Ok(LockAttempt::Busy(observed));
    }
    let flock = try_flock(&file);
    if flock == Flock::Held {
        seam(Moment::Judging, lock_path);
    }
    let observed =
        LockObservation::read(&file).map_err(|e| PersistenceError::io(READ, lock_path, e))?;
    if flock == Flock::Busy {
        return Ok(LockAttempt::Busy(observed));
    }
    if inode_at(lock_path).map_err(|e| PersistenceError::io(READ, lock_path, e))?
        != Some(observed.inode)
    {
        return Ok(LockAttempt::Vanished);
    }
    let Some(reason) = observed.stale_reason() else {
        return Ok(LockAttempt::Busy(observed));
    };
    // Under its flock, no writer of ours can take or remove the name meanwhile; without one,
    // another breaker may have removed it since, and a writer taken the name.
    let removed = if flock == Flock::Held {
        match fs::remove_file(lock_path) {
            Ok(()) => true,
            Err(e) if is_missing(&e) => false,
            Err(e) => return Err(PersistenceError::io(REMOVE, lock_path, e)),
        }
    } else {
        break_unflocked(lock_path, &observed)?
    };
    if removed {
        tracing::warn!(
            lock_file = %lock_path.display(),
            holder = %observed.holder(),
            "removed a stale token cache lock file: {reason}"
        );
    }
    Ok(LockAttempt::BrokeStale)
}

/// Removes the stale lock `observed` where `flock` does not work: renamed aside first, and if
/// the file renamed is not the one judged stale (a writer took the name after another breaker
/// removed it), linked back while the name is still free. Returns whether it was removed.
fn break_unflocked(lock_path: &Path, observed: &LockObservation) -> Result<bool, PersistenceError> {
    const REMOVE: &str = "remove the stale lock file";
    // Moved aside under a fresh name `<lock>.stale.<pid>.<random>` beside it.
    let mut prefix = lock_path.file_name().unwrap_or_default().to_os_string();
    prefix.push(format!(".stale.{}.", std::process::id()));
    let aside = match tempfile::Builder::new()
        .prefix(&prefix)
        .make_in(parent_dir(lock_path), |name| fs::rename(lock_path, name))
    {
        Ok(aside) => aside,
        Err(e) if is_missing(&e) => return Ok(false),
        Err(e) => return Err(PersistenceError::io(REMOVE, lock_path, e)),
    };
    let moved = File::open(aside.path())
        .and_then(|file| LockObservation::read(&file))
        .ok();
    let was_stale_one = moved.as_ref() == Some(observed);
    if !was_stale_one {
        if let Err(error) = fs::hard_link(aside.path(), lock_path) {
            tracing::warn!(lock_file = %lock_path.display(), %error, "could not restore a token cache lock file taken for stale");
        }
    }
    let aside_path = aside.path().to_path_buf();
    if let Err(error) = aside.close() {
        tracing::warn!(path = %aside_path.display(), %error, "could not remove a stale token cache lock file");
    }
    Ok(was_stale_one)
}

/// [`break_unflocked`] for the tests, which cannot turn `flock` off.
#[cfg(test)]
pub(super) fn break_without_flock(
    lock_path: &Path,
    observed: &LockObservation,
) -> Result<bool, PersistenceError> {
    break_unflocked(lock_path, observed)
}

/// Looks at the lock file, for the tests.
#[cfg(test)]
pub(super) fn observe(lock_path: &Path) -> LockObservation {
    File::open(lock_path)
        .and_then(|file| LockObservation::read(&file))
        .expect("a lock file to look at")
}

/// One attempt to take the lock, named by its outcome; a lock taken is released at once.
#[cfg(test)]
pub(super) fn attempt_once(lock_path: &Path) -> Result<&'static str, PersistenceError> {
    attempt_with(lock_path, |_, _| {})
}

/// [`attempt_once`], calling `seam` at each [`Moment`] the attempt reaches.
#[cfg(test)]
pub(super) fn attempt_with(
    lock_path: &Path,
    mut seam: impl FnMut(Moment, &Path),
) -> Result<&'static str, PersistenceError> {
    Ok(Writer::default().attempt_with(lock_path, &mut seam)?.0)
}

/// A writer's attempts at the lock, one after another, as [`CacheFile::acquire_lock`] makes
/// them: the file of an attempt found contended is kept for the next.
#[cfg(test)]
#[derive(Debug, Default)]
pub(super) struct Writer {
    /// The file the last attempt created and found `flock`ed by someone else.
    contended: Option<ContendedFile>,
}

#[cfg(test)]
impl Writer {
    /// One attempt, named by its outcome, with the lock if it was taken.
    pub(super) fn attempt(
        &mut self,
        lock_path: &Path,
    ) -> Result<(&'static str, Option<LockGuard>), PersistenceError> {
        self.attempt_with(lock_path, &mut |_, _| {})
    }

    /// Ends the acquisition before it took the lock (a timeout, a cancellation): its kept
    /// file is dropped as [`KeptFile`] drops it.
    pub(super) fn give_up(&mut self, lock_path: &Path) {
        if let Some(file) = self.contended.take() {
            drop(Abandoned {
                file,
                path: lock_path.to_path_buf(),
            });
        }
    }

    /// [`Writer::attempt`], calling `seam` at each [`Moment`] the attempt reaches.
    pub(super) fn attempt_with(
        &mut self,
        lock_path: &Path,
        seam: &mut dyn FnMut(Moment, &Path),
    ) -> Result<(&'static str, Option<LockGuard>), PersistenceError> {
        Ok(
            match try_lock_with(lock_path, self.contended.take(), seam)? {
                LockAttempt::Acquired(guard) => ("acquired", Some(guard)),
                LockAttempt::Busy(_) => ("busy", None),
                LockAttempt::Contended(kept) => {
                    self.contended = kept;
                    ("contended", None)
                }
                LockAttempt::Vanished => ("vanished", None),
                LockAttempt::BrokeStale => ("broke stale", None),
            },
        )
    }
}

/// Takes the lock file, which the test knows to be free: the guard of one attempt.
#[cfg(test)]
pub(super) fn take(lock_path: &Path) -> LockGuard {
    match try_lock(lock_path, None) {
        Ok(LockAttempt::Acquired(guard)) => guard,
        Ok(_) | Err(_) => panic!("the lock file {} is not free", lock_path.display()),
    }
}
