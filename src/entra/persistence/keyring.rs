//! The encrypted token cache: the document kept in the Secret Service
//! ([`secret_service`](super::secret_service)), with msal-extensions' `LibsecretPersistence`
//! protocol around it, so that Python's `PersistedTokenCache` and this crate can share it:
//!
//! * Writers take the lock file beside the *signal file* (`<dir>/<name>.nocae.lockfile`, the
//!   [`lock_file`](super::lock_file) protocol), read the item again, apply their change, store
//!   the item and *touch* the signal file (created empty if missing; its content is never
//!   read or written), which tells msal-extensions' readers to reload.
//! * Readers take no lock and read the item each time: a read happens only on a miss of the
//!   credential's in-memory token cache, and one D-Bus round trip is cheaper than trusting a
//!   file's mtime.
//!
//! Whether the Secret Service is there is decided on first use (the builders are synchronous);
//! when it is not, the plaintext cache file is used if the options allowed it (as
//! azure-identity does), else every use fails with an error naming what is missing.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::atomic_write::{create_dir, create_new_private, parent_dir, write_target};
use super::error::{Kind, PersistenceError};
use super::lock_file::HeldLock;
use super::reader::is_missing;
use super::secret_service::{Keyring, OwnedObjectPath};
use super::{CacheFile, Document, LegacyWrites, Step, run_blocking};
use crate::blocking_read::Steps;
use crate::regular_file::{is_not_regular, open_regular_file};

/// Where a keyring-backed cache lives and what it may fall back to.
#[derive(Clone, Debug)]
pub(crate) struct KeyringTarget {
    /// The signal file: `<dir>/<name>.nocae` (or `.cae`); its name is the schema name.
    pub(crate) signal: PathBuf,
    /// The D-Bus session bus address, when not `DBUS_SESSION_BUS_ADDRESS`.
    pub(crate) bus: Option<String>,
    /// Whether the signal file is used as the plaintext cache file when there is no usable
    /// Secret Service (as azure-identity does when allowed): one file, one [`CacheFile`].
    pub(crate) fallback: bool,
    /// The legacy plaintext file the fallback reads while it does not exist (see
    /// [`CacheFile::shared`]); the Secret Service's item never comes from it.
    pub(crate) legacy: Option<PathBuf>,
}

/// The storage chosen on first use.
enum Backend<D: Document> {
    /// Shared with the task that stores the item (see [`KeyringCache::modify`]).
    Keyring(Arc<Keyring>),
    File(Arc<CacheFile<D>>),
}

/// A cache document in the Secret Service (or, if allowed, its plaintext fallback file).
pub(crate) struct KeyringCache<D: Document> {
    target: KeyringTarget,
    /// The schema name (the signal file's name).
    schema: String,
    /// The signal file, whose writer turns (in-process order, then its lock file) order
    /// writers.
    signal: Arc<CacheFile<D>>,
    /// Decided on first success; a failure is not kept, so a keyring started later is found.
    backend: tokio::sync::OnceCell<Backend<D>>,
    /// What a write to the fallback file does while only its legacy file exists.
    legacy_writes: LegacyWrites,
}

impl<D: Document> fmt::Debug for KeyringCache<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyringCache")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl<D: Document> KeyringCache<D> {
    pub(crate) fn new(target: KeyringTarget, legacy_writes: LegacyWrites) -> Arc<Self> {
        let schema = target
            .signal
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        Arc::new(Self {
            // With the fallback's legacy file: when the signal file is the fallback (always, as
            // configured), one object orders this process's writers to it.
            signal: CacheFile::shared(target.signal.clone(), target.legacy.clone()),
            schema,
            target,
            backend: tokio::sync::OnceCell::new(),
            legacy_writes,
        })
    }

    /// The signal file (also the plaintext fallback's path).
    pub(crate) fn path(&self) -> &Path {
        self.signal.path()
    }

    /// The files whose existence says there is a cache: the signal file (also the allowed
    /// plaintext file) and, when that is allowed, the legacy file it reads in its place.
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path().to_path_buf()];
        if self.target.fallback {
            files.extend(self.target.legacy.clone());
        }
        files
    }

    /// Whether one of [`files`](Self::files) exists, looked at as a step of the signal
    /// file's I/O, which is the plaintext file's too: a look that hangs refuses the steps of
    /// the file it looked at.
    pub(crate) async fn exists(&self) -> Result<bool, PersistenceError> {
        self.signal.any_exists(self.files()).await
    }

    async fn backend(&self) -> Result<&Backend<D>, PersistenceError> {
        self.backend
            .get_or_try_init(|| async {
                match Keyring::connect(
                    self.target.bus.as_deref(),
                    &self.schema,
                    self.target.fallback,
                )
                .await
                {
                    Ok(keyring) => Ok(Backend::Keyring(Arc::new(keyring))),
                    // The signal file's object, made when the store was built: nothing is
                    // resolved on the file system here, on the executor.
                    Err(error) if self.target.fallback => {
                        tracing::warn!(%error, file = %self.path().display(), "no usable Secret Service; the token cache falls back to the plaintext file, as allowed");
                        Ok(Backend::File(Arc::clone(&self.signal)))
                    }
                    Err(error) => Err(error),
                }
            })
            .await
    }

    /// The current document (empty when there is no item yet).
    pub(crate) async fn read(&self) -> Result<Arc<D>, PersistenceError> {
        match self.backend().await? {
            Backend::File(file) => file.read().await,
            Backend::Keyring(keyring) => {
                let stored = keyring.load().await?;
                self.parse(stored.as_deref()).map(Arc::new)
            }
        }
    }

    /// Read-modify-write under the signal file's lock file; stores the item and touches the
    /// signal file only when the document's bytes changed. Returns what `change` returned.
    ///
    /// Storing the item, touching the signal file and releasing the lock file run as one
    /// spawned task: once the item is stored, msal-extensions' readers must be told to reload
    /// even if this future is dropped (a device code sign-in whose callers all gave up is
    /// aborted), else they keep their copy and later write it back over ours. (A writer of
    /// this process that comes meanwhile waits on the lock file the task still holds.) The
    /// item's `Type` is set after that, with the lock file released: it is cosmetic, and may
    /// take up to the call timeout, longer than other writers wait for the lock.
    ///
    /// A signal file not touched once the item is stored (its touch failed or overran) is an
    /// error that says so: other processes may write their old copy back over the change, so
    /// the caller keeps what it would otherwise lose (a rotated refresh token, in memory).
    pub(crate) async fn modify<R, F>(&self, change: F) -> Result<R, PersistenceError>
    where
        F: FnOnce(&mut D) -> R + Send + 'static,
        R: Send + 'static,
    {
        let keyring = match self.backend().await? {
            Backend::File(file) => return file.modify_with(self.legacy_writes, change).await,
            Backend::Keyring(keyring) => Arc::clone(keyring),
        };
        let (_writers, lock) = self.signal.writer_turn(tokio::time::Instant::now()).await?;
        let (value, bytes) = match self.prepare(&keyring, change).await {
            Ok((value, bytes)) => (Ok(value), bytes),
            Err(error) => (Err(error), None),
        };
        let task = tokio::spawn(store_and_signal(
            Arc::clone(&keyring),
            lock,
            self.target.signal.clone(),
            self.signal.steps.clone(),
            bytes,
        ));
        let stored = match task.await {
            Ok(stored) => stored,
            Err(error) => match error.try_into_panic() {
                Ok(payload) => std::panic::resume_unwind(payload),
                Err(_) => Err(PersistenceError::io(
                    "use",
                    &self.target.signal,
                    io::Error::other("the tokio runtime is shutting down"),
                )),
            },
        };
        let value = value?;
        if let Some(item) = stored? {
            keyring.set_type(item).await;
        }
        Ok(value)
    }

    /// Reads the item (the lock held) and applies `change`. Returns what `change` returned
    /// and the document's bytes if they differ from the item's.
    async fn prepare<R, F>(
        &self,
        keyring: &Keyring,
        change: F,
    ) -> Result<(R, Option<Vec<u8>>), PersistenceError>
    where
        F: FnOnce(&mut D) -> R,
    {
        let stored = keyring.load().await?;
        let mut doc = self.parse(stored.as_deref())?;
        let value = change(&mut doc);
        let bytes = doc.to_bytes();
        let changed = stored.as_deref() != Some(bytes.as_slice());
        Ok((value, changed.then_some(bytes)))
    }

    fn parse(&self, stored: Option<&[u8]>) -> Result<D, PersistenceError> {
        let Some(bytes) = stored else {
            return Ok(D::empty());
        };
        D::parse(bytes).map_err(|e| PersistenceError {
            kind: Kind::SecretService {
                detail: format!(
                    "the token cache item {} is not a valid token cache ({e}): delete it \
                     (`secret-tool clear xdg:schema {}`); it was not changed",
                    self.schema, self.schema
                ),
            },
        })
    }
}

/// Stores `bytes` (if any) as the item and touches the signal file, then releases the lock
/// file, off the executor as all of the lock file's I/O, in steps of the signal file's
/// `steps`. Returns the stored item's path; an error once it is stored if the signal file was
/// not touched (see [`KeyringCache::modify`]).
async fn store_and_signal(
    keyring: Arc<Keyring>,
    lock: HeldLock,
    signal: PathBuf,
    steps: Steps,
    bytes: Option<Vec<u8>>,
) -> Result<Option<OwnedObjectPath>, PersistenceError> {
    let lock = Arc::new(lock);
    let saved = match bytes {
        None => Ok(None),
        Some(bytes) => match check_lock(&steps, &lock).await {
            Ok(()) => keyring.save(&bytes).await.map(Some),
            Err(error) => Err(error),
        },
    };
    finish(&steps, lock, signal, saved).await
}

/// Checks, as a step of the signal file's, that our lock file is still ours, as the file's
/// writer does before it writes (see `LockGuard::check_held`). Errors name the lock file.
pub(super) async fn check_lock(
    steps: &Steps,
    lock: &Arc<HeldLock>,
) -> Result<(), PersistenceError> {
    let held = Arc::clone(lock);
    let lock_path = lock.path().to_path_buf();
    run_blocking(steps, Step::CheckLock, &lock_path, move || {
        held.check_held()
    })
    .await
}

/// What a change comes to once the Secret Service answered (`saved`): an item stored is the
/// answer once the signal file is touched and the lock file released
/// ([`signal_and_release`]); else the error, which says the item was stored, so that the
/// change is not taken for safely made (the caller keeps what it would otherwise lose).
/// Nothing stored, or a failure: the lock file is released, and `saved` is the answer (a
/// failure to release is logged by the guard, and changes nothing for the caller).
pub(super) async fn finish<T>(
    steps: &Steps,
    lock: Arc<HeldLock>,
    signal: PathBuf,
    saved: Result<Option<T>, PersistenceError>,
) -> Result<Option<T>, PersistenceError> {
    match saved {
        Ok(Some(item)) => signal_and_release(steps, lock, signal)
            .await
            .map(|()| Some(item)),
        unchanged_or_failed => {
            let _ = release(steps, lock).await;
            unchanged_or_failed
        }
    }
}

/// Touches the signal file, the item being stored, then releases the lock file (the last
/// holder of `lock`), as one step of the signal file's, run even while its steps are refused
/// (see `Step::must_run`). Errors name the signal file and say that the item was stored
/// (also when no thread could be started for the step).
pub(super) async fn signal_and_release(
    steps: &Steps,
    lock: Arc<HeldLock>,
    signal: PathBuf,
) -> Result<(), PersistenceError> {
    let path = signal.clone();
    run_blocking(steps, Step::Signal, &path, move || {
        let _lock = lock;
        touch(&signal).map_err(|error| stored_not_signalled(&signal, error))
    })
    .await
}

/// `error`, the touch's of the `signal` file, saying what it means once the item is stored.
pub(super) fn stored_not_signalled(signal: &Path, error: PersistenceError) -> PersistenceError {
    const EFFECT: &str = "; the Secret Service's item was stored, but the signal file was not \
        touched: other processes (msal-extensions) are not told to reload the token cache, and \
        may keep their old copy and write it back over this change";
    match error.kind {
        Kind::Io {
            operation,
            path,
            error,
        } => PersistenceError::io(
            operation,
            &path,
            io::Error::new(error.kind(), format!("{error}{EFFECT}")),
        ),
        // Not made by `touch`, which fails with I/O errors only.
        kind => PersistenceError::io(
            TOUCH,
            signal,
            io::Error::other(format!("{}{EFFECT}", PersistenceError { kind })),
        ),
    }
}

/// Releases the lock file (the last holder of `lock`) as a step of the signal file's. Errors
/// name the lock file.
pub(super) async fn release(steps: &Steps, lock: Arc<HeldLock>) -> Result<(), PersistenceError> {
    let lock_path = lock.path().to_path_buf();
    run_blocking(steps, Step::Release, &lock_path, move || {
        drop(lock);
        Ok(())
    })
    .await
}

/// Operation name of errors while touching the signal file.
pub(super) const TOUCH: &str = "touch the token cache's signal file";

/// Sets the signal file's mtime to now, creating it (empty, mode 0600) if missing, as
/// msal-extensions' `Path.touch()` does. Only a regular file is touched: opening a FIFO for
/// writing would block until a reader came, with the lock held. A symlink is followed as the
/// cache file's writer follows it, a dangling one included: its target is created, the link
/// kept (the exclusive creation would not follow it).
pub(super) fn touch(path: &Path) -> Result<(), PersistenceError> {
    let target = write_target(path)?;
    let target = target.as_path();
    // Opened for reading, without blocking: setting the time needs no write access.
    let open = || match open_regular_file(target) {
        Err(e) if is_missing(&e) => match create_new_private(target) {
            // Created meanwhile by another writer (msal-extensions takes no care here).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open_regular_file(target),
            created => created,
        },
        opened => opened,
    };
    let opened = match open() {
        // The signal file's own directory only: a link into a missing one fails, as the cache
        // file's write does.
        Err(e) if is_missing(&e) => {
            create_dir(parent_dir(path))?;
            open()
        }
        opened => opened,
    };
    let file = opened.map_err(|e| {
        let e = if is_not_regular(&e) {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{e}; remove it: it is created again as an empty file"),
            )
        } else {
            e
        };
        PersistenceError::io(TOUCH, target, e)
    })?;
    file.set_modified(SystemTime::now())
        .map_err(|e| PersistenceError::io(TOUCH, target, e))
}
