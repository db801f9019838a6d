//! The lock-file protocol of `msal-extensions`: `<cache>.lockfile`, created exclusively,
//! holding `"<pid> <argv0>"`, removed when done; stale locks broken with care.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::atomic_write::{create_dir, create_new_private, parent_dir};
use super::error::{Kind, PersistenceError};
use super::reader::{inode, is_missing};
use super::{CacheFile, Document, run_blocking};

/// Pause between two attempts to create the lock file.
pub(super) const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// A lock file older than this is stale whoever holds it (writers hold it for milliseconds).
pub(super) const STALE_LOCK_AGE: Duration = Duration::from_secs(60);
/// A lock file naming a process that does not exist is stale once it is this old.
pub(super) const DEAD_HOLDER_GRACE: Duration = Duration::from_secs(2);
/// Suffix of the lock file's name, after the cache file's full name.
const LOCK_SUFFIX: &str = ".lockfile";
/// Longest excerpt of a lock file's content quoted in errors and logs.
const HOLDER_MAX_CHARS: usize = 120;

impl<D: Document> CacheFile<D> {
    /// Creates the lock file, waiting for other holders up to the lock timeout and removing
    /// stale locks.
    pub(super) async fn acquire_lock(&self) -> Result<LockGuard, PersistenceError> {
        let started = Instant::now();
        let mut holder = None;
        loop {
            let lock_path = self.lock_path.clone();
            let retry_now =
                match run_blocking(&self.lock_path, move || try_lock(&lock_path)).await? {
                    LockAttempt::Acquired(guard) => return Ok(guard),
                    // Released between our attempt and our look, or removed as stale.
                    LockAttempt::Vanished | LockAttempt::BrokeStale => true,
                    LockAttempt::Busy(observed) => {
                        holder = Some(observed.holder());
                        false
                    }
                };
            let waited = started.elapsed();
            if waited >= self.lock_timeout {
                return Err(PersistenceError {
                    kind: Kind::LockTimeout {
                        lock_path: self.lock_path.clone(),
                        timeout: self.lock_timeout,
                        holder,
                    },
                });
            }
            if !retry_now {
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

/// The lock file, held: removed on drop (on the blocking thread that ran the modification, or
/// wherever a cancelled acquisition drops it).
#[derive(Debug)]
pub(super) struct LockGuard {
    /// `<cache>.lockfile`.
    path: PathBuf,
    /// Our lock file's inode (0 off unix), so that a lock re-created by someone else after ours
    /// was broken as stale is left alone.
    inode: u64,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if inode(&meta) == self.inode => {
                if let Err(error) = fs::remove_file(&self.path) {
                    if !is_missing(&error) {
                        tracing::warn!(lock_file = %self.path.display(), %error, "could not remove the token cache lock file");
                    }
                }
            }
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
    /// Looks at the lock file; `None` if it is gone.
    pub(super) fn of(path: &Path) -> io::Result<Option<Self>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let mut content = Vec::new();
        // At most four bytes per character.
        file.take((HOLDER_MAX_CHARS as u64).saturating_mul(4))
            .read_to_end(&mut content)?;
        Ok(Some(Self {
            content: String::from_utf8_lossy(&content).into_owned(),
            modified: meta.modified().ok(),
            inode: inode(&meta),
        }))
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

    /// Why the lock is stale, if it is.
    pub(super) fn stale_reason(&self) -> Option<String> {
        let age = self
            .modified
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .unwrap_or_default();
        if age >= STALE_LOCK_AGE {
            return Some(format!("it is {} s old", age.as_secs()));
        }
        if age >= DEAD_HOLDER_GRACE {
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
    /// It existed but was gone when we looked.
    Vanished,
    /// It was stale and has been removed (or was already replaced): try again now.
    BrokeStale,
}

/// Tries once to create the lock file (blocking); creates the directory if missing.
fn try_lock(lock_path: &Path) -> Result<LockAttempt, PersistenceError> {
    const CREATE: &str = "create the lock file";
    let mut created_dir = false;
    let mut file = loop {
        match create_new_private(lock_path) {
            Ok(file) => break file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return observe_busy_lock(lock_path);
            }
            Err(e) if is_missing(&e) && !created_dir => {
                create_dir(parent_dir(lock_path))?;
                created_dir = true;
            }
            Err(e) => return Err(PersistenceError::io(CREATE, lock_path, e)),
        }
    };
    let guard = LockGuard {
        path: lock_path.to_path_buf(),
        inode: file.metadata().map(|meta| inode(&meta)).unwrap_or(0),
    };
    // On failure the guard removes the half-made lock file.
    file.write_all(lock_content().as_bytes())
        .map_err(|e| PersistenceError::io(CREATE, lock_path, e))?;
    Ok(LockAttempt::Acquired(guard))
}

/// Looks at a lock file that exists, and removes it if it is stale.
fn observe_busy_lock(lock_path: &Path) -> Result<LockAttempt, PersistenceError> {
    let observed = LockObservation::of(lock_path)
        .map_err(|e| PersistenceError::io("read the lock file", lock_path, e))?;
    let Some(observed) = observed else {
        return Ok(LockAttempt::Vanished);
    };
    let Some(reason) = observed.stale_reason() else {
        return Ok(LockAttempt::Busy(observed));
    };
    if break_stale_lock(lock_path, &observed)? {
        tracing::warn!(
            lock_file = %lock_path.display(),
            holder = %observed.holder(),
            "removed a stale token cache lock file: {reason}"
        );
    }
    Ok(LockAttempt::BrokeStale)
}

/// Removes the stale lock file `observed`, unless it was replaced since: it is renamed aside
/// first, and if the file renamed is not the one judged stale it is linked back (when the name
/// is still free). Returns whether the stale file was removed.
pub(super) fn break_stale_lock(
    lock_path: &Path,
    observed: &LockObservation,
) -> Result<bool, PersistenceError> {
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
    let moved = LockObservation::of(aside.path()).ok().flatten();
    let was_stale_one = moved.as_ref() == Some(observed);
    if !was_stale_one {
        // A live writer's lock: give it back unless another writer has taken the name since.
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
