//! The MSAL token-cache *file*, shared with Azure CLI, Python `msal-extensions` and
//! `azure-identity`: reading it (reloading when it changed) and read-modify-write under
//! `msal-extensions`' lock-file protocol, without ever losing what another process wrote.
//!
//! The module is generic over the [`Document`] stored in the file; it knows nothing of its
//! schema.
//!
//! # Protocol (what the other processes do, and what this module does)
//!
//! * **Writers** take the lock file `<cache>.lockfile`: created exclusively (`O_CREAT|O_EXCL`),
//!   holding `"<pid> <argv0>"`, deleted when done. `msal-extensions` retries every 0.25 s for
//!   5 s and never breaks a lock; this module retries every 100 ms for
//!   [`DEFAULT_LOCK_TIMEOUT`] (configurable) and removes *stale* locks: older than
//!   [`STALE_LOCK_AGE`], or (Linux) naming a process that no longer exists once the lock is
//!   older than [`DEAD_HOLDER_GRACE`]. The grace period protects live holders in another pid
//!   namespace (a container sharing the home directory), whose pid we cannot see: they hold the
//!   lock for milliseconds. A stale lock is first renamed aside and checked to still be the file
//!   that was judged stale, so a lock re-created in between by a live writer is put back.
//! * Under the lock, a writer re-reads the file (the in-memory copy is never trusted there),
//!   applies its change and writes the result. A file that exists but does not parse is never
//!   overwritten: the error is returned and the file is left as it is.
//! * `msal-extensions` writes **in place** (`O_TRUNC` then `write`). This module writes a
//!   temporary file in the same directory (mode 0600 from creation, fsynced) and **renames** it
//!   over the cache. Both kinds of writer hold the lock, so they never interleave; the rename
//!   additionally means that lock-free readers (ours and Python's) always see a whole file
//!   rather than a truncated one. If the cache path is a symlink, the link's target is replaced
//!   and the link kept. The replacement gets the old file's permission bits (a file the user
//!   made 0640 stays 0640; nothing is ever widened); a new file is 0600 in a 0700 directory.
//! * **Readers** take no lock. They reload when the file's (mtime, length, inode) changed since
//!   the last read. A file that fails to parse may be an in-place write in progress, so it is
//!   read again up to [`PARSE_RETRIES`] times, [`PARSE_RETRY_INTERVAL`] apart, before it is
//!   reported as malformed (likewise an empty file written in the last moment).
//! * Modification times are coarse (a few ms on ext4, 1 s on some file systems), so two writes
//!   in one tick with equal lengths would look alike. As git does for its index, a file whose
//!   mtime is within [`RECENT_WINDOW`] of the moment it was read is read again next time
//!   regardless of its stamp.
//!
//! # Locks inside this process
//!
//! The in-memory copy sits under a `std::sync::Mutex` held only for short get/set, never across
//! I/O or an `.await`. Writers of one [`CacheFile`] are ordered by a `tokio::sync::Mutex` held
//! for the whole of [`CacheFile::modify`], including its file I/O. That is an async lock held
//! across I/O on purpose: it only queues this process's writers (FIFO, without spinning on the
//! lock file), readers never take it, and the lock file still orders us against everyone else.
//! All file I/O runs in `tokio::task::spawn_blocking`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// How long [`CacheFile::modify`] waits for another process's lock by default.
pub(crate) const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two attempts to create the lock file.
const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// A lock file older than this is stale whoever holds it (writers hold it for milliseconds).
pub(crate) const STALE_LOCK_AGE: Duration = Duration::from_secs(60);
/// A lock file naming a process that does not exist is stale once it is this old.
pub(crate) const DEAD_HOLDER_GRACE: Duration = Duration::from_secs(2);
/// How many times a file that fails to parse is read again before it is reported.
pub(crate) const PARSE_RETRIES: u32 = 3;
/// Pause before reading a file that failed to parse again.
pub(crate) const PARSE_RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// A file modified less than this long before it was read is read again next time, since a
/// later write within the same mtime tick could leave its stamp unchanged.
pub(crate) const RECENT_WINDOW: Duration = Duration::from_secs(1);
/// Suffix of the lock file's name, after the cache file's full name.
const LOCK_SUFFIX: &str = ".lockfile";
/// Longest excerpt of a lock file's content quoted in errors and logs.
const HOLDER_MAX_CHARS: usize = 120;

/// A document stored in the cache file.
pub(crate) trait Document: Sized + Send + Sync + 'static {
    /// Why bytes could not be parsed. Its text goes into error messages, so it must never
    /// contain secrets from the file.
    type Error: fmt::Display + Send + Sync + 'static;

    /// Parses the file's bytes. Empty input is a valid, empty document if the implementation
    /// says so (the file of `msal-extensions` starts empty).
    fn parse(bytes: &[u8]) -> Result<Self, Self::Error>;

    /// The bytes to store.
    fn to_bytes(&self) -> Vec<u8>;

    /// The document of a file that does not exist.
    fn empty() -> Self;
}

/// The identity of one version of a file: when a reader finds the same stamp it keeps its copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    /// Last modification (`None` where the platform does not report it).
    modified: Option<SystemTime>,
    /// Length in bytes.
    len: u64,
    /// Inode number (0 off unix): changes when a writer renames a new file over the old one.
    inode: u64,
}

impl Stamp {
    /// The stamp of a file's metadata.
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: inode(meta),
        }
    }

    /// Whether the file was modified too recently for its stamp to prove it unchanged later.
    fn is_recent(&self) -> bool {
        self.modified.is_none_or(|modified| {
            SystemTime::now()
                .duration_since(modified)
                .map_or(true, |age| age < RECENT_WINDOW)
        })
    }
}

/// The in-memory copy of the document and the version of the file it came from.
struct Snapshot<D> {
    /// The document.
    doc: Arc<D>,
    /// The file's stamp when it was read; `None` when the file did not exist.
    file: Option<Stamp>,
    /// Read the file again next time whatever its stamp (see [`RECENT_WINDOW`]).
    recheck: bool,
}

/// The cache file at a path, shared by the clones of one credential and, through
/// [`CacheFile::shared`], by every credential of this process that uses the same path.
pub(crate) struct CacheFile<D: Document> {
    /// The cache file, as given (made absolute).
    path: PathBuf,
    /// `<path>.lockfile`.
    lock_path: PathBuf,
    /// How long [`CacheFile::modify`] waits for the lock file.
    lock_timeout: Duration,
    /// Orders this process's writers to this file (see the module docs).
    writers: tokio::sync::Mutex<()>,
    /// The last document read or written; held only for short get/set.
    current: Mutex<Option<Snapshot<D>>>,
}

impl<D: Document> fmt::Debug for CacheFile<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheFile")
            .field("path", &self.path)
            .field("lock_timeout", &self.lock_timeout)
            .finish_non_exhaustive()
    }
}

/// Key of the process-wide registry of [`CacheFile::shared`]: the canonical path and the
/// document type (two document types over one file are two objects, still ordered by the lock
/// file).
type RegistryKey = (PathBuf, TypeId);

/// The process-wide registry behind [`CacheFile::shared`].
fn registry() -> MutexGuard<'static, HashMap<RegistryKey, Weak<dyn Any + Send + Sync>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<RegistryKey, Weak<dyn Any + Send + Sync>>>> =
        OnceLock::new();
    // The map is only ever read or assigned whole entries, so a panic elsewhere while the lock
    // was held cannot leave it half-updated: a poisoned lock is still usable.
    REGISTRY
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

impl<D: Document> CacheFile<D> {
    /// A cache file object of its own for `path`, waiting up to [`DEFAULT_LOCK_TIMEOUT`] for the
    /// lock file. Prefer [`CacheFile::shared`] unless the object must not be shared.
    pub(crate) fn new(path: PathBuf) -> Arc<Self> {
        Self::with_lock_timeout(path, DEFAULT_LOCK_TIMEOUT)
    }

    /// Like [`CacheFile::new`], waiting up to `lock_timeout` for another process's lock.
    pub(crate) fn with_lock_timeout(path: PathBuf, lock_timeout: Duration) -> Arc<Self> {
        let path = std::path::absolute(&path).unwrap_or(path);
        let mut lock_name = path.clone().into_os_string();
        lock_name.push(LOCK_SUFFIX);
        Arc::new(Self {
            lock_path: PathBuf::from(lock_name),
            path,
            lock_timeout,
            writers: tokio::sync::Mutex::new(()),
            current: Mutex::new(None),
        })
    }

    /// The cache file object for `path`, the same `Arc` for every caller in this process while
    /// one is alive (paths are compared after resolving the directory: `dir/./f`, `dir/f` and
    /// a symlinked directory are one file). The registry holds it weakly.
    pub(crate) fn shared(path: PathBuf) -> Arc<Self> {
        // Resolved before taking the registry's lock: that lock is never held across I/O.
        let key = (canonical_key(&path), TypeId::of::<D>());
        let mut registry = registry();
        if let Some(existing) = registry.get(&key).and_then(Weak::upgrade) {
            if let Ok(file) = existing.downcast::<Self>() {
                return file;
            }
        }
        registry.retain(|_, entry| entry.strong_count() > 0);
        let file = Self::new(path);
        let entry: Arc<dyn Any + Send + Sync> = file.clone();
        registry.insert(key, Arc::downgrade(&entry));
        file
    }

    /// The cache file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The current document: read from disk when the file's (mtime, length, inode) changed
    /// since the last read or write (or was too recent to tell), else the in-memory copy. A
    /// missing file, or missing directory, is an empty document. A file that does not parse is
    /// read up to [`PARSE_RETRIES`] more times before a malformed error.
    pub(crate) async fn read(&self) -> Result<Arc<D>, PersistenceError> {
        let known = self.snapshot_state();
        let path = self.path.clone();
        let check = known
            .as_ref()
            .and_then(|(file, recheck, _)| (!recheck).then_some(*file));
        let loaded = run_blocking(&self.path, move || {
            if let Some(known) = check {
                let current = stat(&path).map_err(|e| PersistenceError::io(READ, &path, e))?;
                if current == known {
                    return Ok(None);
                }
            }
            load::<D>(&path, true).map(Some)
        })
        .await?;
        match (loaded, known) {
            // Only asked "unchanged?" when there was a snapshot.
            (None, Some((_, _, doc))) => Ok(doc),
            (None, None) => Ok(Arc::new(D::empty())),
            (Some(loaded), _) => {
                let doc = Arc::new(loaded.doc);
                tracing::debug!(path = %self.path.display(), "token cache file (re)loaded");
                self.store(Snapshot {
                    doc: doc.clone(),
                    file: loaded.file,
                    recheck: loaded.recent,
                });
                Ok(doc)
            }
        }
    }

    /// Read-modify-write: takes the lock file, reads the file again (never trusting the
    /// in-memory copy), applies `change`, writes the result if its bytes differ from the file's,
    /// and releases the lock, also when `change` panics (the panic then continues in the
    /// caller) or the write fails. Returns what `change` returned.
    ///
    /// If the file exists but does not parse, `change` is not called, nothing is written and a
    /// malformed error is returned. `change` runs on a blocking-pool thread while the lock is
    /// held: keep it short.
    pub(crate) async fn modify<R, F>(&self, change: F) -> Result<R, PersistenceError>
    where
        F: FnOnce(&mut D) -> R + Send + 'static,
        R: Send + 'static,
    {
        let _writers = self.writers.lock().await;
        let lock = self.acquire_lock().await?;
        let path = self.path.clone();
        // The lock guard moves into the blocking task and is dropped there, on every path.
        let (value, snapshot) = run_blocking(&self.path, move || {
            let _lock = lock;
            let loaded = load::<D>(&path, false)?;
            let mut doc = loaded.doc;
            let value = change(&mut doc);
            let bytes = doc.to_bytes();
            let (file, recent) = if loaded.bytes.as_deref() == Some(bytes.as_slice()) {
                (loaded.file, loaded.recent)
            } else {
                let stamp = write_document(&path, &bytes)?;
                (Some(stamp), stamp.is_recent())
            };
            let snapshot = Snapshot {
                doc: Arc::new(doc),
                file,
                recheck: recent,
            };
            Ok((value, snapshot))
        })
        .await?;
        self.store(snapshot);
        Ok(value)
    }

    /// Creates the lock file, waiting for other holders up to the lock timeout and removing
    /// stale locks.
    async fn acquire_lock(&self) -> Result<LockGuard, PersistenceError> {
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

    /// The snapshot's stamp, recheck flag and document.
    fn snapshot_state(&self) -> Option<(Option<Stamp>, bool, Arc<D>)> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|s| (s.file, s.recheck, s.doc.clone()))
    }

    /// Replaces the snapshot. A concurrent reader may store an older version after a newer
    /// one; its stamp then differs from the file's and the next read loads the file again.
    fn store(&self, snapshot: Snapshot<D>) {
        // Plain assignment: a poisoned lock cannot hold a half-written value.
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot);
    }
}

/// The registry key of a path: absolute, with its directory resolved (the file itself may not
/// exist yet, and a symlinked file keeps its own lock file, as with `msal-extensions`).
fn canonical_key(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => match fs::canonicalize(parent) {
            Ok(parent) => parent.join(name),
            Err(_) => absolute,
        },
        _ => absolute,
    }
}

/// Runs blocking file I/O on tokio's blocking pool. A panic (from a caller's closure) continues
/// in the caller.
async fn run_blocking<T, F>(path: &Path, work: F) -> Result<T, PersistenceError>
where
    F: FnOnce() -> Result<T, PersistenceError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => match error.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(_) => Err(PersistenceError::io(
                "use",
                path,
                io::Error::other("the tokio runtime is shutting down"),
            )),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Operation name of errors while reading the cache file.
const READ: &str = "read the token cache";

/// A document read from the file.
struct Loaded<D> {
    /// The document (empty when the file does not exist).
    doc: D,
    /// The file's stamp; `None` when it does not exist.
    file: Option<Stamp>,
    /// Modified within [`RECENT_WINDOW`] of being read.
    recent: bool,
    /// The file's bytes; `None` when it does not exist.
    bytes: Option<Vec<u8>>,
}

/// Whether an error means "not there" (the file or its directory).
fn is_missing(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound
}

/// The file's stamp, `None` if it does not exist.
fn stat(path: &Path) -> io::Result<Option<Stamp>> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some(Stamp::of(&meta))),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The file's bytes and the stamp of the version they came from; `None` if it does not exist.
/// The stamp is taken before reading, so a write in between makes the next read load again.
fn read_file(path: &Path) -> io::Result<Option<(Vec<u8>, Stamp)>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let stamp = Stamp::of(&file.metadata()?);
    let mut bytes = Vec::with_capacity(usize::try_from(stamp.len).unwrap_or(0).min(1 << 24));
    file.read_to_end(&mut bytes)?;
    Ok(Some((bytes, stamp)))
}

/// Reads and parses the file (blocking), retrying a parse failure — and, with `settle_empty`,
/// an empty file modified just now — in case an in-place write was in progress.
fn load<D: Document>(path: &Path, settle_empty: bool) -> Result<Loaded<D>, PersistenceError> {
    let mut attempt = 0;
    loop {
        let Some((bytes, stamp)) =
            read_file(path).map_err(|e| PersistenceError::io(READ, path, e))?
        else {
            return Ok(Loaded {
                doc: D::empty(),
                file: None,
                recent: false,
                bytes: None,
            });
        };
        let retry_left = attempt < PARSE_RETRIES;
        let recent = stamp.is_recent();
        match D::parse(&bytes) {
            Ok(_) if settle_empty && retry_left && bytes.is_empty() && recent => {}
            Ok(doc) => {
                return Ok(Loaded {
                    doc,
                    file: Some(stamp),
                    recent,
                    bytes: Some(bytes),
                });
            }
            Err(error) if !retry_left => {
                return Err(PersistenceError {
                    kind: Kind::Malformed {
                        path: path.to_path_buf(),
                        detail: error.to_string(),
                    },
                });
            }
            Err(_) => {}
        }
        attempt = attempt.saturating_add(1);
        std::thread::sleep(PARSE_RETRY_INTERVAL);
    }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// A fresh random number for temporary file names.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((COUNTER.fetch_add(1, Ordering::Relaxed), SystemTime::now()))
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The file a write replaces: `path`, or the target of `path` if it is a symlink (a dangling
/// one included), so that the link survives.
fn write_target(path: &Path) -> Result<PathBuf, PersistenceError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => match fs::canonicalize(path) {
            Ok(target) => Ok(target),
            Err(e) if is_missing(&e) => {
                let link = fs::read_link(path)
                    .map_err(|e| PersistenceError::io("follow the symlink", path, e))?;
                Ok(parent_dir(path).join(link))
            }
            Err(e) => Err(PersistenceError::io("follow the symlink", path, e)),
        },
        _ => Ok(path.to_path_buf()),
    }
}

/// Creates `dir` and its missing ancestors, mode 0700.
fn create_dir(dir: &Path) -> Result<(), PersistenceError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| PersistenceError::io("create the token cache directory", dir, e))
}

/// Removes a temporary file unless it was renamed into place.
struct TempFile {
    /// The temporary file; `None` once renamed.
    path: Option<PathBuf>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "could not remove a temporary token cache file");
            }
        }
    }
}

/// Opens a new file exclusively, mode 0600 from creation on unix.
fn create_new_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// The permission bits a replacement of `target` gets: those of the existing file, else 0600.
#[cfg(unix)]
fn replacement_mode(target: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(target).map_or(0o600, |meta| meta.permissions().mode() & 0o777)
}

/// Writes `bytes` to a temporary file beside the cache file and renames it over the cache file
/// (blocking). Returns the new file's stamp.
fn write_document(path: &Path, bytes: &[u8]) -> Result<Stamp, PersistenceError> {
    let target = write_target(path)?;
    let mut temp_name = target.file_name().unwrap_or_default().to_os_string();
    temp_name.push(format!(".tmp.{}.{:016x}", std::process::id(), random_u64()));
    let temp_path = parent_dir(&target).join(temp_name);
    let write_err = |e| PersistenceError::io("write the temporary token cache file", &temp_path, e);
    let mut file = create_new_private(&temp_path).map_err(write_err)?;
    let mut temp = TempFile {
        path: Some(temp_path.clone()),
    };
    // Set explicitly: the creation mode is subject to the umask, and an existing file's mode
    // is kept (it is never widened: it is the mode the file already had).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = replacement_mode(&target);
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(write_err)?;
    }
    file.write_all(bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    let stamp = Stamp::of(&file.metadata().map_err(write_err)?);
    drop(file);
    fs::rename(&temp_path, &target)
        .map_err(|e| PersistenceError::io("replace the token cache", &target, e))?;
    temp.path = None;
    Ok(stamp)
}

// ---------------------------------------------------------------------------------------------
// Lock file
// ---------------------------------------------------------------------------------------------

/// The content of our lock files, as `msal-extensions` writes it: `"<pid> <argv0>"`.
fn lock_content() -> String {
    let argv0 = std::env::args_os()
        .next()
        .map(|arg| arg.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{} {}", std::process::id(), argv0)
}

/// The lock file, held: removed on drop (on the blocking thread that ran the modification, or
/// wherever a cancelled acquisition drops it).
#[derive(Debug)]
struct LockGuard {
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
struct LockObservation {
    /// The start of its content, lossily decoded.
    content: String,
    /// Its modification time (≈ when it was taken).
    modified: Option<SystemTime>,
    /// Its inode (0 off unix).
    inode: u64,
}

impl LockObservation {
    /// Looks at the lock file; `None` if it is gone.
    fn of(path: &Path) -> io::Result<Option<Self>> {
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
    fn holder(&self) -> String {
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
    fn stale_reason(&self) -> Option<String> {
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
fn break_stale_lock(
    lock_path: &Path,
    observed: &LockObservation,
) -> Result<bool, PersistenceError> {
    const REMOVE: &str = "remove the stale lock file";
    let aside = with_suffix(
        lock_path,
        &format!(".stale.{}.{:016x}", std::process::id(), random_u64()),
    );
    match fs::rename(lock_path, &aside) {
        Ok(()) => {}
        Err(e) if is_missing(&e) => return Ok(false),
        Err(e) => return Err(PersistenceError::io(REMOVE, lock_path, e)),
    }
    let moved = LockObservation::of(&aside).ok().flatten();
    let was_stale_one = moved.as_ref() == Some(observed);
    if !was_stale_one {
        // A live writer's lock: give it back unless another writer has taken the name since.
        if let Err(error) = fs::hard_link(&aside, lock_path) {
            tracing::warn!(lock_file = %lock_path.display(), %error, "could not restore a token cache lock file taken for stale");
        }
    }
    if let Err(error) = fs::remove_file(&aside) {
        tracing::warn!(path = %aside.display(), %error, "could not remove a stale token cache lock file");
    }
    Ok(was_stale_one)
}

/// A file's inode number (0 off unix).
fn inode(meta: &fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        std::os::unix::fs::MetadataExt::ino(meta)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why the token cache file could not be read or written. Messages name paths, never the
/// file's content.
#[derive(Debug, Clone)]
pub(crate) struct PersistenceError {
    /// What went wrong.
    kind: Kind,
}

/// The kinds of [`PersistenceError`].
#[derive(Debug, Clone)]
enum Kind {
    /// A file operation failed.
    Io {
        /// What we were doing, as a verb phrase: "read the token cache".
        operation: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        error: Arc<io::Error>,
    },
    /// The file exists but its document does not parse.
    Malformed {
        /// The cache file.
        path: PathBuf,
        /// The document's error text (free of secrets by [`Document::Error`]'s contract).
        detail: String,
    },
    /// Another process held the lock file for the whole timeout.
    LockTimeout {
        /// The lock file.
        lock_path: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// Who held it, from the lock file's content (`None` if never seen).
        holder: Option<String>,
    },
}

impl PersistenceError {
    /// A failed file operation.
    fn io(operation: &'static str, path: &Path, error: io::Error) -> Self {
        Self {
            kind: Kind::Io {
                operation,
                path: path.to_path_buf(),
                error: Arc::new(error),
            },
        }
    }

    /// Whether the file exists but does not parse (it was left unchanged).
    #[cfg_attr(not(test), allow(dead_code))] // tests ask; callers only display the error
    pub(crate) fn is_malformed(&self) -> bool {
        matches!(self.kind, Kind::Malformed { .. })
    }

    /// Whether another process held the lock file for the whole timeout.
    #[cfg_attr(not(test), allow(dead_code))] // tests ask; callers only display the error
    pub(crate) fn is_lock_timeout(&self) -> bool {
        matches!(self.kind, Kind::LockTimeout { .. })
    }
}

/// A duration for humans: `10 s`, `2.5 s`, `300 ms`.
fn seconds(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{} ms", duration.as_millis())
    } else if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{:.1} s", duration.as_secs_f64())
    }
}

impl fmt::Display for PersistenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Io {
                operation,
                path,
                error,
            } => {
                write!(f, "could not {operation} {}: {error}", path.display())?;
                if error.kind() == io::ErrorKind::PermissionDenied {
                    f.write_str(": check the owner and permissions of the file and its directory")?;
                }
                Ok(())
            }
            Kind::Malformed { path, detail } => write!(
                f,
                "token cache {} is not a valid token cache ({detail}): fix or delete the file; it was not changed",
                path.display()
            ),
            Kind::LockTimeout {
                lock_path,
                timeout,
                holder,
            } => write!(
                f,
                "timed out after {} waiting for {} held by {}: if that process is gone, delete the lock file",
                seconds(*timeout),
                lock_path.display(),
                holder.as_deref().unwrap_or("another process"),
            ),
        }
    }
}

impl std::error::Error for PersistenceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Io { error, .. } => Some(&**error),
            Kind::Malformed { .. } | Kind::LockTimeout { .. } => None,
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::AtomicUsize;

    use serde_json::{Map, Value, json};

    use super::*;

    /// A JSON object, as the real cache document is.
    #[derive(Debug, Default)]
    struct JsonDoc(Map<String, Value>);

    impl Document for JsonDoc {
        type Error = String;

        fn parse(bytes: &[u8]) -> Result<Self, String> {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Self::default());
            }
            match serde_json::from_slice(bytes) {
                Ok(Value::Object(map)) => Ok(Self(map)),
                Ok(_) => Err("not a JSON object".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        }

        fn to_bytes(&self) -> Vec<u8> {
            serde_json::to_vec_pretty(&self.0).expect("a JSON map serializes")
        }

        fn empty() -> Self {
            Self::default()
        }
    }

    impl JsonDoc {
        /// Adds `AccessToken[key]`, where `msal-ext-writer` puts its entries.
        fn add(&mut self, key: &str) {
            let section = self.0.entry("AccessToken").or_insert_with(|| json!({}));
            if let Value::Object(section) = section {
                section.insert(key.to_owned(), json!({ "secret": "x" }));
            }
        }

        fn keys(&self) -> Vec<String> {
            match self.0.get("AccessToken") {
                Some(Value::Object(section)) => section.keys().cloned().collect(),
                _ => Vec::new(),
            }
        }
    }

    /// Parses counted per `N`, one `N` per test.
    static PARSES: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];

    /// A [`JsonDoc`] whose parses are counted in `PARSES[N]`.
    #[derive(Debug)]
    struct Counted<const N: usize>(JsonDoc);

    impl<const N: usize> Document for Counted<N> {
        type Error = String;
        fn parse(bytes: &[u8]) -> Result<Self, String> {
            PARSES[N].fetch_add(1, Ordering::SeqCst);
            JsonDoc::parse(bytes).map(Self)
        }
        fn to_bytes(&self) -> Vec<u8> {
            self.0.to_bytes()
        }
        fn empty() -> Self {
            Self(JsonDoc::empty())
        }
    }

    fn parses<const N: usize>() -> usize {
        PARSES[N].load(Ordering::SeqCst)
    }

    /// The other side of [`Finishing`]: the file an in-place writer is writing, and what it
    /// holds once the writer is done.
    static IN_PLACE_WRITE: Mutex<Option<(PathBuf, &'static str)>> = Mutex::new(None);

    /// A [`JsonDoc`] read while an in-place writer is busy: when a read finds the file unfinished
    /// (empty, or not JSON yet), the writer finishes it before the next read. Deterministic,
    /// where a writer task and a timer would race the retry interval.
    struct Finishing(JsonDoc);

    impl Document for Finishing {
        type Error = String;
        fn parse(bytes: &[u8]) -> Result<Self, String> {
            let parsed = JsonDoc::parse(bytes);
            if parsed.is_err() || bytes.is_empty() {
                let pending = IN_PLACE_WRITE.lock().unwrap().take();
                if let Some((path, content)) = pending {
                    fs::write(path, content).unwrap();
                }
            }
            parsed.map(Self)
        }
        fn to_bytes(&self) -> Vec<u8> {
            self.0.to_bytes()
        }
        fn empty() -> Self {
            Self(JsonDoc::empty())
        }
    }

    /// The in-place writer will have written `content` to `path` by the read after the next
    /// one that finds the file unfinished.
    fn writer_finishing(path: &Path, content: &'static str) {
        *IN_PLACE_WRITE.lock().unwrap() = Some((path.to_path_buf(), content));
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn lock_of(path: &Path) -> PathBuf {
        with_suffix(path, LOCK_SUFFIX)
    }

    fn set_mtime(path: &Path, age: Duration) {
        let file = File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
    }

    fn file_keys(path: &Path) -> Vec<String> {
        JsonDoc::parse(&fs::read(path).unwrap()).unwrap().keys()
    }

    /// Content of a lock file for `pid`, modified `age` ago.
    fn plant_lock(path: &Path, pid: u32, program: &str, age: Duration) -> PathBuf {
        let lock = lock_of(path);
        fs::write(&lock, format!("{pid} {program}")).unwrap();
        set_mtime(&lock, age);
        lock
    }

    #[tokio::test]
    async fn missing_file_or_directory_reads_as_empty_document() {
        let dir = tempfile::tempdir().unwrap();
        for path in [
            dir.path().join("cache.json"),
            dir.path().join("no/such/dir/cache.json"),
        ] {
            let file = CacheFile::<JsonDoc>::new(path.clone());
            assert!(file.read().await.unwrap().0.is_empty());
            assert!(file.read().await.unwrap().0.is_empty());
            assert!(!path.exists(), "reading creates nothing");
        }
    }

    #[tokio::test]
    async fn created_file_is_0600_in_new_0700_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/msal.cache.nocae");
        let file = CacheFile::<JsonDoc>::new(path.clone());
        file.modify(|doc| doc.add("k")).await.unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(file_keys(&path), ["k"]);
        assert!(!lock_of(&path).exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("a/b")).unwrap().collect();
        assert_eq!(
            leftovers.len(),
            1,
            "no temporary or lock file left: {leftovers:?}"
        );
    }

    #[tokio::test]
    async fn existing_file_keeps_its_mode_after_modify() {
        let dir = tempfile::tempdir().unwrap();
        for existing in [0o640, 0o600] {
            let path = dir.path().join(format!("cache-{existing:o}"));
            fs::write(&path, r#"{"AccessToken": {"old": {}}}"#).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(existing)).unwrap();
            let file = CacheFile::<JsonDoc>::new(path.clone());
            file.modify(|doc| doc.add("new")).await.unwrap();
            assert_eq!(mode(&path), existing);
            assert_eq!(file_keys(&path), ["old", "new"]);
        }
    }

    #[tokio::test]
    async fn read_reloads_only_when_mtime_length_or_inode_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let an_hour = Duration::from_secs(3600);
        fs::write(&path, r#"{"AccessToken": {"a": {}}}"#).unwrap();
        set_mtime(&path, an_hour);
        let file = CacheFile::<Counted<0>>::new(path.clone());

        assert_eq!(file.read().await.unwrap().0.keys(), ["a"]);
        assert_eq!(file.read().await.unwrap().0.keys(), ["a"]);
        assert_eq!(parses::<0>(), 1, "unchanged file is not parsed again");

        // Same mtime and inode, other length.
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        fs::write(&path, r#"{"AccessToken": {"bb": {}}}"#).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(file.read().await.unwrap().0.keys(), ["bb"]);
        assert_eq!(parses::<0>(), 2);

        // Same length and inode, other mtime.
        fs::write(&path, r#"{"AccessToken": {"cc": {}}}"#).unwrap();
        set_mtime(&path, an_hour / 2);
        assert_eq!(file.read().await.unwrap().0.keys(), ["cc"]);
        assert_eq!(parses::<0>(), 3);

        // Same length and mtime, other inode (renamed over).
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        let other = dir.path().join("other.json");
        fs::write(&other, r#"{"AccessToken": {"dd": {}}}"#).unwrap();
        File::options()
            .write(true)
            .open(&other)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        fs::rename(&other, &path).unwrap();
        assert_eq!(file.read().await.unwrap().0.keys(), ["dd"]);
        assert_eq!(file.read().await.unwrap().0.keys(), ["dd"]);
        assert_eq!(parses::<0>(), 4);
    }

    #[tokio::test]
    async fn recently_modified_file_is_read_again_until_its_mtime_is_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        fs::write(&path, r#"{"AccessToken": {"a": {}}}"#).unwrap();
        // Stamped in the future, the file counts as recent however slowly this test runs.
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        let file = CacheFile::<Counted<1>>::new(path.clone());
        file.read().await.unwrap();
        // An in-place write in the same mtime tick with the same length looks unchanged...
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        fs::write(&path, r#"{"AccessToken": {"b": {}}}"#).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        // ...but a recent file is not trusted to be unchanged.
        assert_eq!(file.read().await.unwrap().0.keys(), ["b"]);
        assert_eq!(parses::<1>(), 2);
        set_mtime(&path, Duration::from_secs(60));
        file.read().await.unwrap();
        file.read().await.unwrap();
        assert_eq!(parses::<1>(), 3, "cached again once the file is old enough");
    }

    #[tokio::test]
    async fn modify_reads_the_file_again_so_other_writers_changes_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        fs::write(&path, r#"{"AccessToken": {"a1": {}}}"#).unwrap();
        set_mtime(&path, Duration::from_secs(3600));
        let file = CacheFile::<JsonDoc>::new(path.clone());
        assert_eq!(file.read().await.unwrap().keys(), ["a1"]);
        // Another writer's change that even the stamp does not show.
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        fs::write(&path, r#"{"AccessToken": {"b2": {}}}"#).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();

        let seen = file.modify(|doc| {
            let seen = doc.keys();
            doc.add("c3");
            seen
        });
        assert_eq!(seen.await.unwrap(), ["b2"]);
        assert_eq!(file_keys(&path), ["b2", "c3"]);
        assert_eq!(file.read().await.unwrap().keys(), ["b2", "c3"]);
    }

    #[tokio::test]
    async fn modify_without_change_leaves_the_file_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let file = CacheFile::<JsonDoc>::new(path.clone());
        file.modify(|doc| doc.add("a")).await.unwrap();
        let before = fs::metadata(&path).unwrap();
        file.modify(|_| ()).await.unwrap();
        let after = fs::metadata(&path).unwrap();
        assert_eq!(Stamp::of(&before), Stamp::of(&after));
        assert!(!lock_of(&path).exists());
    }

    #[tokio::test]
    async fn malformed_file_is_reported_never_overwritten_and_the_lock_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("msal.cache.nocae");
        let bytes = br#"{"AccessToken": {"k": {"secret": "hunter2"} oops"#;
        fs::write(&path, bytes).unwrap();
        let file = CacheFile::<Counted<2>>::new(path.clone());

        let err = file.read().await.unwrap_err();
        assert!(err.is_malformed() && !err.is_lock_timeout(), "{err}");
        let attempts = usize::try_from(PARSE_RETRIES).unwrap() + 1;
        assert_eq!(parses::<2>(), attempts, "read again before it is reported");

        let called = Arc::new(AtomicUsize::new(0));
        let counter = called.clone();
        let err = file
            .modify(move |doc| {
                counter.fetch_add(1, Ordering::SeqCst);
                doc.0.add("x")
            })
            .await
            .unwrap_err();
        assert!(err.is_malformed(), "{err}");
        assert_eq!(called.load(Ordering::SeqCst), 0, "change not applied");
        assert_eq!(fs::read(&path).unwrap(), bytes, "file unchanged");
        assert!(!lock_of(&path).exists(), "lock released");

        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "token cache {} is not a valid token cache (",
                path.display()
            )),
            "{message}"
        );
        assert!(
            message.ends_with("): fix or delete the file; it was not changed"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[tokio::test]
    async fn read_waits_out_an_in_place_write_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let file = CacheFile::<Finishing>::new(path.clone());

        // Half written: read again until the writer is done.
        fs::write(&path, r#"{"AccessToken": {"#).unwrap();
        writer_finishing(&path, r#"{"AccessToken": {"done": {}}}"#);
        assert_eq!(file.read().await.unwrap().0.keys(), ["done"]);

        // The same for an empty file just truncated by an in-place writer. Its mtime is set
        // ahead of the clock, which counts as recent whatever the time the test takes.
        fs::write(&path, "").unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        writer_finishing(&path, r#"{"AccessToken": {"again": {}}}"#);
        assert_eq!(file.read().await.unwrap().0.keys(), ["again"]);

        // An empty file that stays empty is an empty document.
        fs::write(&path, "").unwrap();
        assert!(file.read().await.unwrap().0.0.is_empty());
        assert!(IN_PLACE_WRITE.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn lock_file_holds_pid_and_program_like_msal_extensions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let lock = lock_of(&path);
        let file = CacheFile::<JsonDoc>::new(path.clone());
        let content = file
            .modify(move |_| fs::read_to_string(&lock).unwrap())
            .await
            .unwrap();
        assert_eq!(content, lock_content());
        assert!(
            content.starts_with(&format!("{} ", std::process::id())),
            "{content}"
        );
        assert!(!lock_of(&path).exists());
    }

    // The lock is polled with tokio's timers, so the paused clock measures the wait exactly.
    #[tokio::test(start_paused = true)]
    async fn lock_held_by_a_live_process_times_out_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("msal.cache.nocae");
        let pid = std::process::id();
        let lock = plant_lock(&path, pid, "python3", Duration::ZERO);
        let timeout = Duration::from_millis(300);
        let file = CacheFile::<JsonDoc>::with_lock_timeout(path.clone(), timeout);

        let started = Instant::now();
        let err = file.modify(|doc| doc.add("x")).await.unwrap_err();
        let waited = started.elapsed();
        assert!(err.is_lock_timeout() && !err.is_malformed(), "{err}");
        assert!(
            waited >= timeout && waited < timeout + LOCK_RETRY_INTERVAL,
            "waited the timeout, polling: {waited:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "timed out after 300 ms waiting for {} held by pid {pid} (python3): \
                 if that process is gone, delete the lock file",
                lock.display()
            )
        );
        assert_eq!(
            fs::read_to_string(&lock).unwrap(),
            format!("{pid} python3"),
            "live lock left alone"
        );
        assert!(!path.exists());
        // Reads take no lock.
        assert!(file.read().await.unwrap().0.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn lock_of_a_dead_process_is_removed_once_past_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();

        // Fresh: it may be a live holder in another pid namespace; respected for now.
        let lock = plant_lock(&path, dead, "gone", Duration::ZERO);
        let file =
            CacheFile::<JsonDoc>::with_lock_timeout(path.clone(), Duration::from_millis(300));
        let err = file.modify(|doc| doc.add("x")).await.unwrap_err();
        assert!(err.is_lock_timeout(), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("held by pid {dead} (gone)")),
            "{err}"
        );

        // Past the grace period: removed at once, without a pause to poll it again.
        set_mtime(&lock, DEAD_HOLDER_GRACE + Duration::from_secs(1));
        let started = Instant::now();
        file.modify(|doc| doc.add("x")).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "no retry pause");
        assert_eq!(file_keys(&path), ["x"]);
        assert!(!lock.exists());
    }

    #[tokio::test]
    async fn old_lock_is_removed_even_if_its_process_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let lock = plant_lock(
            &path,
            std::process::id(),
            "old",
            STALE_LOCK_AGE + Duration::from_secs(5),
        );
        let file =
            CacheFile::<JsonDoc>::with_lock_timeout(path.clone(), Duration::from_millis(300));
        file.modify(|doc| doc.add("x")).await.unwrap();
        assert_eq!(file_keys(&path), ["x"]);
        assert!(!lock.exists());
    }

    #[test]
    fn stale_lock_replaced_by_a_live_one_is_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let lock = plant_lock(&path, std::process::id(), "old", STALE_LOCK_AGE * 2);
        let observed = LockObservation::of(&lock).unwrap().unwrap();
        assert!(observed.stale_reason().is_some());
        // Between our look and our removal, the holder finished and a live writer took the lock.
        fs::remove_file(&lock).unwrap();
        fs::write(&lock, "4242 live").unwrap();
        assert!(!break_stale_lock(&lock, &observed).unwrap());
        assert_eq!(fs::read_to_string(&lock).unwrap(), "4242 live");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [lock.file_name().unwrap()], "nothing left aside");
    }

    #[test]
    fn lock_holder_is_described_from_the_lock_file_without_control_characters() {
        let look = |content: &str| LockObservation {
            content: content.to_owned(),
            modified: Some(SystemTime::now()),
            inode: 1,
        };
        assert_eq!(look("16131 peer.py").holder(), "pid 16131 (peer.py)");
        assert_eq!(look("77").holder(), "pid 77");
        assert_eq!(look("").holder(), "an unknown process (empty lock file)");
        assert_eq!(
            look("x\ny").holder(),
            r#"an unknown process (lock file says "x y")"#
        );
        assert_eq!(look("").stale_reason(), None);
    }

    #[tokio::test]
    async fn lock_is_released_when_change_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let file = CacheFile::<JsonDoc>::new(path.clone());
        let task = {
            let file = file.clone();
            tokio::spawn(async move { file.modify(|_| -> () { panic!("change failed") }).await })
        };
        assert!(
            task.await.unwrap_err().is_panic(),
            "the panic reaches the caller"
        );
        assert!(!lock_of(&path).exists());
        assert!(!path.exists(), "nothing written");
        file.modify(|doc| doc.add("after")).await.unwrap();
        assert_eq!(file_keys(&path), ["after"]);
    }

    #[tokio::test]
    async fn lock_is_released_when_the_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        // A symlink into a directory that does not exist: reads as missing, cannot be written.
        std::os::unix::fs::symlink(dir.path().join("gone/cache.json"), &path).unwrap();
        let file = CacheFile::<JsonDoc>::new(path.clone());
        let err = file.modify(|doc| doc.add("x")).await.unwrap_err();
        assert!(!err.is_malformed() && !err.is_lock_timeout(), "{err}");
        assert!(
            err.to_string()
                .starts_with("could not write the temporary token cache file "),
            "{err}"
        );
        assert!(err.to_string().contains("gone/cache.json.tmp."), "{err}");
        assert!(std::error::Error::source(&err).is_some());
        assert!(!lock_of(&path).exists());
    }

    #[tokio::test]
    async fn symlinked_cache_file_is_written_through_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real/cache.json");
        fs::create_dir(dir.path().join("real")).unwrap();
        fs::write(&real, r#"{"AccessToken": {"a": {}}}"#).unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let file = CacheFile::<JsonDoc>::new(link.clone());
        file.modify(|doc| doc.add("b")).await.unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(file_keys(&real), ["a", "b"]);
        assert_eq!(mode(&real), 0o644, "the target's mode is kept");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_modifies_in_this_process_keep_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let file = CacheFile::<JsonDoc>::shared(path.clone());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20 {
            let file = file.clone();
            tasks.spawn(async move { file.modify(move |doc| doc.add(&format!("e{i}"))).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let mut keys = file_keys(&path);
        keys.sort();
        let mut wanted: Vec<_> = (0..20).map(|i| format!("e{i}")).collect();
        wanted.sort();
        assert_eq!(keys, wanted);
        assert_eq!(file.read().await.unwrap().keys().len(), 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn separate_objects_for_one_path_are_ordered_by_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let mut tasks = tokio::task::JoinSet::new();
        for object in 0..2 {
            let file = CacheFile::<JsonDoc>::new(path.clone());
            tasks.spawn(async move {
                for i in 0..10 {
                    file.modify(move |doc| doc.add(&format!("o{object}-{i}")))
                        .await
                        .unwrap();
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        assert_eq!(file_keys(&path).len(), 20);
    }

    #[test]
    fn shared_returns_one_object_per_path_and_holds_it_weakly() {
        let dir = tempfile::tempdir().unwrap();
        let a = CacheFile::<JsonDoc>::shared(dir.path().join("cache.json"));
        let b = CacheFile::<JsonDoc>::shared(dir.path().join(".").join("cache.json"));
        let other = CacheFile::<JsonDoc>::shared(dir.path().join("other.json"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(
            Arc::strong_count(&a),
            2,
            "the registry holds no strong reference"
        );
        assert_eq!(a.path(), dir.path().join("cache.json"));
    }

    #[test]
    fn durations_are_written_for_humans() {
        assert_eq!(seconds(Duration::from_secs(10)), "10 s");
        assert_eq!(seconds(Duration::from_millis(2500)), "2.5 s");
        assert_eq!(seconds(Duration::from_millis(300)), "300 ms");
    }
}
