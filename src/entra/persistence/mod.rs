//! The MSAL token-cache *file*, shared with Azure CLI, Python `msal-extensions` and
//! `azure-identity`: reading it (reloading when it changed) and read-modify-write under
//! `msal-extensions`' lock-file protocol, without ever losing what another process wrote.
//!
//! The module is generic over the [`Document`] stored in the file; it knows nothing of its
//! schema.
//!
//! # Protocol (what the other processes do, and what this module does)
//!
//! * **Writers** take the lock file `<cache>.lockfile`, named after the path they were given
//!   (a symbolic link's own name, unresolved), and delete it when done. `msal-extensions`
//!   creates it exclusively (`O_CREAT|O_EXCL`), holding `"<pid> <argv0>"`, retrying every
//!   0.25 s for 5 s, and never breaks a lock; with `portalocker` installed it then opens it
//!   without `O_EXCL` (`"wb+"`, also after 5 s in vain) and `flock`s it, retrying for 5 s
//!   more. MSAL.NET (Azure PowerShell) opens it without `O_EXCL` and `flock`s it
//!   (`FileShare.None`), deleting it on close, retrying every 100 ms for 60 s. This module
//!   creates it exclusively, retries every 100 ms for [`DEFAULT_LOCK_TIMEOUT`] (10 s) and
//!   removes *stale* locks: older than [`STALE_LOCK_AGE`](lock_file::STALE_LOCK_AGE), or
//!   (Linux) naming a process that no longer exists once the lock is older than
//!   [`DEAD_HOLDER_GRACE`](lock_file::DEAD_HOLDER_GRACE). A lock dated ahead of the clock by
//!   less than [`STALE_LOCK_AGE`](lock_file::STALE_LOCK_AGE) is fresh, its pid unchecked:
//!   another host sharing the directory, whose clock runs ahead, holds it. One dated that far
//!   ahead or further is as old as one dated as far behind (a clock stepped back after its
//!   holder crashed), so it is stale rather than holding writers off for as long as the skew
//!   lasts. A lock left by a holder that crashed just before the clock was stepped back by
//!   less than a minute is fresh until the clock reaches its time, and then holds writers off
//!   until the clock passes its time plus [`DEAD_HOLDER_GRACE`](lock_file::DEAD_HOLDER_GRACE)
//!   (Linux, its process gone) or [`STALE_LOCK_AGE`](lock_file::STALE_LOCK_AGE): under two
//!   minutes. The other rules below that look at a modification time judge its age the same
//!   way ([`reader::age`]).
//! * **What the stale rules can break.** A lock whose holder `flock`s it (ours,
//!   `msal-extensions` with `portalocker`, MSAL.NET) is never taken for stale (next item).
//!   One whose holder does not (`msal-extensions` without `portalocker`, as `pip install
//!   msal-extensions` installs it) is judged by its age and pid alone, and both rules can
//!   break it while its holder lives, letting a writer of ours read-modify-write beside it:
//!   the change written first is lost. The pid rule cannot see a holder in another pid
//!   namespace (a container sharing the home directory): its pid is absent from `/proc`
//!   here, so its lock is broken once [`DEAD_HOLDER_GRACE`](lock_file::DEAD_HOLDER_GRACE)
//!   old. A write of the file takes milliseconds, but `msal-extensions` holds the lock for
//!   its whole read-modify-write, which with its `LibsecretPersistence` (the Secret Service,
//!   as the `keyring` store here) includes the Secret Service's lookup and store:
//!   a locked keyring's unlock prompt keeps the lock held for as long as the user leaves it
//!   open, and past [`STALE_LOCK_AGE`](lock_file::STALE_LOCK_AGE) (or the grace, from
//!   another pid namespace) it is broken. Without these rules a holder that crashed would
//!   hold every writer off until someone deletes its lock file by hand; they are kept, for
//!   that, with these limits.
//! * Our writers also `flock` their lock file until they have removed it, as `msal-extensions`
//!   does when `portalocker` is installed. A lock that is `flock`ed is never stale, whatever
//!   its age or pid say; a breaker `flock`s a lock before judging it (only one at least
//!   [`DEAD_HOLDER_GRACE`](lock_file::DEAD_HOLDER_GRACE) old: a younger one is never stale)
//!   and removes it only then, after checking that the name still points to that file, so it
//!   never removes a lock taken after it looked. A writer that finds the file it has just
//!   created `flock`ed by someone else (MSAL.NET or `portalocker`, which open it without
//!   `O_EXCL`) leaves it, and its name, to that holder, and waits, keeping the file open: if
//!   its `flock` comes free while the name is still that file's and the file is still empty
//!   (a breaker `flock`ed it to judge it), the writer takes it. Without `flock` (not unix,
//!   or a file system without it) the age and pid rules alone decide, and a breaker renames a
//!   stale lock aside and links it back if it is not the file it judged. Right before it
//!   writes, a writer checks that the lock file's name still points to its own file; if
//!   someone removed it, it writes nothing and says so.
//! * Under the lock, a writer re-reads the file (the in-memory copy is never trusted there),
//!   applies its change and writes the result. A file that exists but does not parse is never
//!   overwritten: the error is returned and the file is left as it is.
//! * `msal-extensions` writes **in place** (`O_TRUNC` then `write`). This module writes a
//!   temporary file in the same directory (mode 0600 from creation, fsynced) and **renames** it
//!   over the cache. Both kinds of writer hold the lock, so they never interleave; the rename
//!   additionally means that lock-free readers (ours and Python's) always see a whole file
//!   rather than a truncated one. If the cache path is a symlink, the link's target is replaced
//!   and the link kept. The replacement gets the old file's permission bits (a file the user
//!   made 0640 stays 0640; nothing is ever widened) and, on unix, its owner and group (a
//!   process running as root on the user's home leaves the file the user's); a new file is
//!   0600 in a 0700 directory, owned by this process's user. On Linux the replacement also
//!   gets the old file's POSIX access ACL (a file with one shows the ACL's mask as its group
//!   bits: the mode alone would give the owning group the mask, and take from the users and
//!   groups the ACL names their access), less its entries naming ids this process's user
//!   namespace does not map (the kernel refuses them) and, when the replacement cannot have
//!   the old group, the owning group's permissions; if the ACL cannot be set, the
//!   replacement has the mode with what the owning group had as group bits. An ACL the
//!   replacement inherited from its directory's default ACL is removed first (the write
//!   fails if it cannot be): a file without an ACL, a new one included, is replaced by one
//!   without (see [`acl`]). That holds on file systems with POSIX ACLs (ext4, xfs, btrfs,
//!   tmpfs) and those without ACLs; on NFSv4 and SMB mounts, which refuse POSIX ACLs, the
//!   server's ACL rules apply, neither seen nor kept: a new file gets what the server gives
//!   it (a server-side default ACL included), whoever that lets in. Where this process
//!   may not give the replacement that owner and group: for a file of this process's user,
//!   the replacement keeps the group it was created with (this process's, or a setgid
//!   directory's) and gets none of the group permission bits; another user's file is replaced
//!   (becoming this process's user's, its mode and ACL kept) only when its directory is setgid
//!   to the file's group (every member's replacement then has that group, so each may update
//!   it in turn) and that group may read and write it, a cache its members share (with an
//!   ACL: the kernel lets the writer read and write it, and the writer and the former owner
//!   each read and write it by their named entries, or the group's entry for one not named,
//!   within the mask; an ACL not read or understood, or an NFSv4 one, shares it with nobody),
//!   the former owner is in the group too (as the user database says; an owner it does not
//!   know, as in a container without its entry, or whose groups could not be looked up, SSSD
//!   or LDAP being unreachable say, is taken to be, as is every owner on AIX, Solaris,
//!   illumos, Apple's systems, Redox and Emscripten, where the groups are not looked up),
//!   and the owner's bits give read and write (the writer becomes the owner, judged by
//!   them); its former owner
//!   keeps access as a member of the group or by its named entry, and may take it back the
//!   same way. In a user namespace that does not map every id (a rootless container), an owner
//!   or group shown as the overflow id (65534) is taken for one this process cannot name,
//!   never given (unless the owner is the one that may open the file
//!   with `O_NOATIME`, or the group is the process's own): the file is treated as one whose
//!   owner or group it may not give. A file is never replaced, the write failing and saying why, when it lacks its
//!   owner's write bit, when it is another user's file not shared that way, or when it has
//!   other hard links (a rename would separate them: a symbolic link is the way to give it
//!   another name).
//! * **Readers** take no lock. They reload when the file's (mtime, length, inode) changed since
//!   the last read. A file that fails to parse may be an in-place write in progress, so it is
//!   read again up to [`PARSE_RETRIES`](reader::PARSE_RETRIES) times, [`PARSE_RETRY_INTERVAL`](reader::PARSE_RETRY_INTERVAL) apart, before it is
//!   reported as malformed (likewise an empty file written in the last moment).
//! * A **legacy file** may stand behind the file (`msal.cache`, which azure-identity before
//!   1.16 wrote, behind `msal.cache.nocae`, the only file it reads now): read while the file
//!   does not exist, and never written. The first write that changes the document creates the
//!   file from the legacy file's content (a writer that only reads another tool's sign-in
//!   writes nothing instead: [`LegacyWrites::Skip`]), under the file's lock and then the legacy file's
//!   (its writers take only that one and write in place: see
//!   [`CacheFile::modify_with`]). Writing to the legacy file instead would leave our tokens
//!   where nobody reads once another tool creates the file. A file that *is* the legacy file
//!   (a symlink to it) is written under both locks too (a hard link to it is not written: see
//!   above).
//! * A file that is a **symbolic link** to another is written (its target replaced) under
//!   the link's lock and then `<target>.lockfile`, the lock a tool given the target's own name
//!   takes; a link to the legacy file takes the legacy lock (the same, unless the legacy file
//!   is itself a link), and while the file does not exist the legacy lock is the one taken
//!   (see [`CacheFile::modify_with`]).
//! * Modification times are coarse (a few ms on ext4, 1 s on some file systems), so two writes
//!   in one tick with equal lengths would look alike. As git does for its index, a file whose
//!   mtime is within [`RECENT_WINDOW`](reader::RECENT_WINDOW) before the moment it was read,
//!   or less than [`RECENT_AHEAD`](reader::RECENT_AHEAD) after it (another host's clock
//!   running ahead), is read again next time regardless of its stamp; a file dated further
//!   ahead is not (the clock was stepped back since: its stamp is trusted).
//!
//! # Locks inside this process
//!
//! The in-memory copy sits under a `std::sync::Mutex` held only for short get/set, never across
//! I/O or an `.await`. Writers of one [`CacheFile`] are ordered by a `tokio::sync::Mutex` held
//! for the whole of [`CacheFile::modify_with`], including its file I/O. That is an async lock
//! held across I/O on purpose: it only queues this process's writers (FIFO, without spinning
//! on the lock file), readers never take it, and the lock file still orders us against
//! everyone else.
//! The lock timeout counts from the call, the wait in that queue included.
//!
//! # A file system that does not answer
//!
//! Once a credential is built, all of the file's I/O runs in steps (a lock attempt, a read, a
//! read-change-write, a lock release, a look whether it exists; with the Secret Service, the
//! lock check and the signal file's touch), each on a thread of its own and waited for
//! [`READ_TIMEOUT`] at most, through the [`CacheFile`]'s [`Steps`]: a home directory on a
//! hung mount (NFS, FUSE) fails a call with a timeout naming the file, instead of holding it,
//! and the runtime's shutdown, for ever. While a step that overran has not returned, every
//! new step of that file is refused at once (its work not run) with an error saying so, and
//! the file is used again once it returns. The refusal is the process's, by the file's
//! directory as resolved ([`directory`]; as named if that timed out), whatever the file or
//! the document type ([`Steps::of_directory`]): the file, the legacy file beside it and their
//! lock files are in one directory, and one step hung there refuses the steps of all, instead
//! of each starting more threads on its file system. (A temporary file is made beside the
//! file's target, which for a symlinked cache file may be another directory: a write hung
//! there refuses this directory's steps, not those of a cache file in that one.) It is by directory, not
//! by mount: a file in another directory of the same mount has steps of its own, and may
//! start a thread that hangs there too. The credentials using files there share it while any
//! of them lives (see [`CacheFile::shared`]), and a step still hung holds it after all are
//! dropped, so a credential built again is refused as they were until that step returns. Run
//! all the same, besides the lock files' removals below: the signal file's touch after the Secret Service's item was stored
//! ([`Step::must_run`]), whose lock file goes with it, and must not go untouched. A step that overran goes on on its thread with
//! what it holds: a lock file stays taken until it returns, and a write it was making may
//! still land (the error says so). A lock file whose holder lets go of it between steps (a
//! call cancelled, or failed, while it holds the lock: a [`HeldLock`]), or that a step's
//! caller gave up on, is removed by a step of its own, counted as any.
//!
//! One piece of I/O is not a step: [`CacheFile::shared`] resolves the file's directory
//! (`canonicalize`) when a credential that uses the file is built (the builders are
//! synchronous), on a thread of its own but waited for by the builder, [`READ_TIMEOUT`] at
//! most; past that the directory as named is its key, with a warning. It is not resolved again
//! while its steps are held (by a credential, or a step hung), nor while its resolution has not
//! returned, so for a directory on a mount that does not answer, `build()` waits once at most
//! per name of the directory, not a later call (see [`directory`]).
//!
//! # Layout
//!
//! [`reader`] reads the file again when it changed, [`atomic_write`] replaces it, [`acl`] says
//! what the replacement keeps of the file's ACL, [`lock_file`] is `msal-extensions`' lock-file
//! protocol, [`directory`] resolves a file's directory (the key of its steps), [`registry`]
//! shares one [`CacheFile`] per path in this process, and [`error`] holds [`PersistenceError`]. With the `keyring` feature on Linux,
//! `keyring` keeps the document encrypted in the Secret Service instead (`secret_service`
//! talks to it), under the same lock-file protocol, with the file as its signal file and, if
//! allowed, its plaintext fallback.

pub(crate) mod acl;
mod atomic_write;
mod directory;
mod error;
#[cfg(all(feature = "keyring", target_os = "linux"))]
mod keyring;
mod lock_file;
mod reader;
mod registry;
#[cfg(all(feature = "keyring", target_os = "linux"))]
mod secret_service;
#[cfg(all(test, unix))]
mod tests;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use self::atomic_write::write_document;
pub(crate) use self::error::PersistenceError;
#[cfg(all(feature = "keyring", target_os = "linux"))]
pub(crate) use self::keyring::{KeyringCache, KeyringTarget};
use self::lock_file::{HeldLock, lock_path_of};
use self::reader::{Snapshot, Stamps, load_or_legacy};
use crate::blocking_read::{READ_TIMEOUT, StepFailure, Steps};

/// How long [`CacheFile::modify_with`] waits for another process's lock by default.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What a change made while only the legacy file exists does (see [`CacheFile::modify_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LegacyWrites {
    /// Creates the file from the legacy file's document: the credentials that put a new
    /// sign-in or their own tokens into the cache (authorization code, device code, client
    /// secret, client assertion), which would otherwise lose them once another tool creates
    /// the file.
    Copy,
    /// Writes nothing and fails (the caller keeps what it has, as when the file cannot be
    /// written): a credential that only reads another tool's sign-in there. A copy would make
    /// the legacy file, which that tool still writes, a file nobody here reads again.
    Skip,
}

/// The cache file at a path, shared by the clones of one credential and, through
/// [`CacheFile::shared`], by every credential of this process that uses the same path.
pub(crate) struct CacheFile<D: Document> {
    /// The cache file, as given (made absolute).
    path: PathBuf,
    /// `<path>.lockfile`.
    lock_path: PathBuf,
    /// A file an older tool wrote in this one's place (the legacy `msal.cache`), made
    /// absolute: read while `path` does not exist, copied into `path` by the first write (under
    /// `path`'s lock), and never written, so that what this process writes is never left in a
    /// file that stops being read once `path` exists. Set once: by the first caller of
    /// [`CacheFile::shared`] that names it, the object being shared whatever the legacy file
    /// its callers name (see there).
    legacy: OnceLock<PathBuf>,
    /// How long [`CacheFile::modify_with`] waits for the lock file.
    lock_timeout: Duration,
    /// Orders this process's writers to this file (see the module docs).
    writers: tokio::sync::Mutex<()>,
    /// The last document read or written; held only for short get/set.
    current: Mutex<Option<Snapshot<D>>>,
    /// Every step of this file's I/O, its directory's in this process (see the module docs).
    steps: Steps,
}

impl<D: Document> fmt::Debug for CacheFile<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheFile")
            .field("path", &self.path)
            .field("legacy", &self.legacy.get())
            .field("lock_timeout", &self.lock_timeout)
            .finish_non_exhaustive()
    }
}

impl<D: Document> CacheFile<D> {
    /// A cache file object of its own for `path` (standing in for `legacy`, see
    /// [`CacheFile::shared`]), waiting up to [`DEFAULT_LOCK_TIMEOUT`] for the lock file; its
    /// steps are its directory's all the same, by the key [`CacheFile::shared`] uses
    /// ([`directory`]).
    #[cfg(test)]
    pub(crate) fn new(path: PathBuf, legacy: Option<PathBuf>) -> Arc<Self> {
        Self::with_lock_timeout(path, legacy, DEFAULT_LOCK_TIMEOUT)
    }

    /// Like [`CacheFile::new`], waiting up to `lock_timeout` for another process's lock.
    #[cfg(test)]
    pub(crate) fn with_lock_timeout(
        path: PathBuf,
        legacy: Option<PathBuf>,
        lock_timeout: Duration,
    ) -> Arc<Self> {
        let (_key, steps) = directory::of_file(&path);
        Self::with_steps(path, legacy, lock_timeout, steps)
    }

    /// A cache file object of its own for `path` (standing in for `legacy`), waiting up to
    /// `lock_timeout` for the lock file, its I/O run through `steps` (its directory's:
    /// [`directory::of_file`]).
    fn with_steps(
        path: PathBuf,
        legacy: Option<PathBuf>,
        lock_timeout: Duration,
        steps: Steps,
    ) -> Arc<Self> {
        let path = std::path::absolute(&path).unwrap_or(path);
        let legacy = legacy.map(|legacy| std::path::absolute(&legacy).unwrap_or(legacy));
        Arc::new(Self {
            lock_path: lock_path_of(&path),
            path,
            legacy: legacy.map(OnceLock::from).unwrap_or_default(),
            lock_timeout,
            writers: tokio::sync::Mutex::new(()),
            current: Mutex::new(None),
            steps,
        })
    }

    /// The cache file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The files whose existence says there is a cache: the file and the legacy one.
    #[cfg(any(test, not(all(feature = "keyring", target_os = "linux"))))]
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(self.legacy.get().cloned());
        files
    }

    /// Whether one of `files` (this file's, or a store's that this file signals) exists,
    /// looked at as a step of this file's I/O.
    pub(crate) async fn any_exists(&self, files: Vec<PathBuf>) -> Result<bool, PersistenceError> {
        run_blocking(&self.steps, Step::Exists, &self.path, move || {
            Ok(files.iter().any(|file| file.exists()))
        })
        .await
    }

    /// [`CacheFile::modify_with`] [`LegacyWrites::Copy`].
    #[cfg(test)]
    pub(crate) async fn modify<R, F>(&self, change: F) -> Result<R, PersistenceError>
    where
        F: FnOnce(&mut D) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.modify_with(LegacyWrites::Copy, change).await
    }

    /// Read-modify-write: takes the lock file, reads the file again (never trusting the
    /// in-memory copy), applies `change`, writes the result if its bytes differ from the file's,
    /// and releases the lock, also when `change` panics (the panic then continues in the
    /// caller) or the write fails. Returns what `change` returned.
    ///
    /// While the file does not exist, the legacy file's document is the one changed, and the
    /// result is written to the file, never to the legacy one; the legacy file's lock is held
    /// too meanwhile, and an empty legacy file written just now is read again (both for its
    /// in-place writers). A file that is a symbolic link is written under its target's lock
    /// too (see [`CacheFile::second_lock`]). Whether the file exists is decided under its lock: one created by
    /// another writer meanwhile is the one changed. With [`LegacyWrites::Skip`], a change while
    /// only the legacy file exists is not made: `change` is not called and an error says why.
    ///
    /// If the file exists but does not parse, `change` is not called, nothing is written and a
    /// malformed error is returned. `change` runs in the step that reads and writes the file,
    /// on that step's thread while the lock is held, within its [`READ_TIMEOUT`]: keep it
    /// short. If that step overruns, the error says that the file may or may not have been
    /// written; if it is refused (an earlier step overran), `change` is not called.
    pub(crate) async fn modify_with<R, F>(
        &self,
        legacy_writes: LegacyWrites,
        change: F,
    ) -> Result<R, PersistenceError>
    where
        F: FnOnce(&mut D) -> R + Send + 'static,
        R: Send + 'static,
    {
        let started = tokio::time::Instant::now();
        // Read once: `CacheFile::shared` may set it meanwhile, and the legacy file whose lock
        // is taken must be the one copied.
        let legacy = self.legacy.get().cloned();
        let (_writers, lock) = self.writer_turn(started).await?;
        let (lock, second_lock) = self
            .second_lock(lock, legacy.as_deref(), legacy_writes, started)
            .await?;
        let path = self.path.clone();
        // The lock guards move into the step and are dropped on its thread, on every path (as
        // a step of their own if the step is refused, or its result not taken).
        let (value, snapshot) = run_blocking(&self.steps, Step::Write, &self.path, move || {
            let (lock, second_lock) = (lock, second_lock);
            let loaded = load_or_legacy::<D>(&path, legacy.as_deref(), false)?;
            // Created between the look under the lock and this load.
            if let (Some(legacy), Some(_), LegacyWrites::Skip) =
                (&legacy, loaded.legacy, legacy_writes)
            {
                return Err(PersistenceError::legacy_only(&path, legacy));
            }
            let mut doc = loaded.doc;
            // The legacy file's bytes are compared as this module would write them, so that a
            // change of nothing creates no file.
            let before = match loaded.legacy {
                Some(_) => Some(doc.to_bytes()),
                None => loaded.bytes,
            };
            let value = change(&mut doc);
            let bytes = doc.to_bytes();
            let (file, legacy, recent) = if before.as_deref() == Some(bytes.as_slice()) {
                (loaded.file, loaded.legacy, loaded.recent)
            } else {
                lock.check_held()?;
                if let Some(second_lock) = &second_lock {
                    second_lock.check_held()?;
                }
                // Under the lock nobody else creates the file: a rename over it is as
                // exclusive as a creation.
                let stamp = write_document(&path, &bytes)?;
                (Some(stamp), None, stamp.is_recent())
            };
            let snapshot = Snapshot {
                doc: Arc::new(doc),
                file,
                legacy,
                recheck: recent,
            };
            Ok((value, snapshot))
        })
        .await?;
        self.store(snapshot);
        Ok(value)
    }

    /// A writer's turn: this process's writers in order (see the module docs), then the lock
    /// file against every other process. The keyring store takes its turns here too, on its
    /// signal file, so one mechanism orders both kinds of writer.
    ///
    /// The lock timeout covers both waits, counted from `started`: otherwise, with another
    /// process holding the lock, the last of N queued writers would wait N timeouts.
    async fn writer_turn(
        &self,
        started: tokio::time::Instant,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, HeldLock), PersistenceError> {
        let Ok(writers) = tokio::time::timeout(self.lock_timeout, self.writers.lock()).await else {
            return Err(PersistenceError {
                kind: error::Kind::LockTimeout {
                    lock_path: self.lock_path.clone(),
                    timeout: self.lock_timeout,
                    holder: None,
                    queued: true,
                },
            });
        };
        let lock = self.acquire_lock(&self.lock_path, started).await?;
        Ok((writers, lock))
    }

    /// With the file's `lock` held: the legacy file's lock too when the file does not exist,
    /// so that a write copies the legacy file whole. The tools that write it (azure-identity
    /// before 1.16, MSAL.NET) take only its lock and write it in place, truncating first: a
    /// copy made meanwhile would create the file without their entries and hide them for
    /// good. Taken after the file's lock, in that order by every writer of ours; tools that
    /// take the legacy lock take no other, so the order cannot deadlock. The time left of the
    /// lock timeout since `started` applies.
    ///
    /// Also when the file is the legacy file (`msal.cache.nocae` a symlink to `msal.cache`, a
    /// workaround used after azure-identity 1.16): its writes replace the legacy file, which
    /// the older tools write under the legacy lock only.
    ///
    /// Otherwise, when the file is a symbolic link (`msal.cache.nocae` linked to a cache kept
    /// elsewhere), its target's lock, `<target>.lockfile`: its writes replace the target,
    /// which a tool given the target's own name writes under that lock only (the lock file
    /// is named after the path a tool is given, unresolved, by every `msal-extensions`).
    /// Taken after the link's, as the legacy lock is. No two writers of ours take two locks
    /// in opposite orders: a second lock is a target's (no link) or the legacy file's, and a
    /// writer whose own lock is a target's takes no second one but the legacy lock, which is
    /// no writer's own (their files are `<name>.nocae` and `<name>.cae`). A link to the
    /// legacy file takes the legacy lock, as above, and while the file does not exist the
    /// legacy lock is the one taken: one more lock at most.
    ///
    /// With [`LegacyWrites::Skip`], a legacy file without the file is an error instead.
    async fn second_lock(
        &self,
        lock: HeldLock,
        legacy: Option<&Path>,
        legacy_writes: LegacyWrites,
        started: tokio::time::Instant,
    ) -> Result<(HeldLock, Option<HeldLock>), PersistenceError> {
        let (path, legacy_path) = (self.path.clone(), legacy.map(Path::to_path_buf));
        // The guard goes along, so that it is released off the executor if this fails.
        let (lock, missing, legacy_only, same, target_lock) =
            run_blocking(&self.steps, Step::Look, &self.path, move || {
                let missing = matches!(fs::metadata(&path), Err(e) if reader::is_missing(&e));
                let (legacy_only, same) = legacy_path.as_deref().map_or((false, false), |legacy| {
                    (
                        missing && fs::metadata(legacy).is_ok_and(|m| m.is_file()),
                        !missing && same_file(&path, legacy),
                    )
                });
                Ok((lock, missing, legacy_only, same, target_lock_of(&path)))
            })
            .await?;
        let second = match (legacy, missing, legacy_only, legacy_writes) {
            (Some(legacy), true, true, LegacyWrites::Skip) => {
                Err(PersistenceError::legacy_only(&self.path, legacy))
            }
            (Some(legacy), true, _, _) => Ok(lock_path_of(legacy)),
            (Some(legacy), false, _, _) if same => Ok(lock_path_of(legacy)),
            _ => match target_lock {
                Some(target_lock) => Ok(target_lock),
                None => return Ok((lock, None)),
            },
        };
        let acquired = match second {
            Ok(second) => self.acquire_lock(&second, started).await,
            Err(error) => Err(error),
        };
        match acquired {
            Ok(second_lock) => Ok((lock, Some(second_lock))),
            Err(error) => {
                // Released off the executor, as the file's I/O is; a failure to release is
                // already logged by the guard.
                let _ = run_blocking(&self.steps, Step::Release, &self.lock_path, move || {
                    drop(lock);
                    Ok(())
                })
                .await;
                Err(error)
            }
        }
    }

    /// The snapshot's stamps (the file's, the legacy file's), recheck flag and document.
    fn snapshot_state(&self) -> Option<(Stamps, bool, Arc<D>)> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .map(|s| ((s.file, s.legacy), s.recheck, s.doc.clone()))
    }

    /// Replaces the snapshot. A concurrent reader may store an older version after a newer
    /// one; its stamp then differs from the file's and the next read loads the file again.
    fn store(&self, snapshot: Snapshot<D>) {
        // Plain assignment: a poisoned lock cannot hold a half-written value.
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot);
    }
}

/// The lock file a tool given the target of `path`, a symbolic link, takes to write it:
/// `<target>.lockfile`, the target as a write through `path` resolves it
/// ([`atomic_write::write_target`]). `None` when `path` is no symbolic link, its target's
/// directory does not exist (the write fails: no directory is made for its lock), or the
/// target's lock file is `path`'s own.
fn target_lock_of(path: &Path) -> Option<PathBuf> {
    if !fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink()) {
        return None;
    }
    let target = atomic_write::write_target(path).ok()?;
    if !fs::metadata(atomic_write::parent_dir(&target)).is_ok_and(|meta| meta.is_dir()) {
        return None;
    }
    let own = fs::canonicalize(atomic_write::parent_dir(path))
        .ok()?
        .join(path.file_name()?);
    let target_lock = lock_path_of(&target);
    (lock_path_of(&own) != target_lock).then_some(target_lock)
}

/// Whether two paths name one existing file (a symlink from one to the other, a hard link).
#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether two paths name one existing file (a symlink from one to the other).
#[cfg(not(unix))]
fn same_file(a: &Path, b: &Path) -> bool {
    matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(a), Ok(b)) if a == b)
}

/// A step of a cache file's I/O, for [`run_blocking`] and its errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// One attempt to create the lock file (breaking a stale one).
    Lock,
    /// Reading the file, or the legacy file in its place.
    Read,
    /// Looking at which of the file and the legacy file exist, the file's lock held.
    Look,
    /// Looking whether the file, or a file read in its place, exists (no lock held).
    Exists,
    /// Reading the file under its lock, changing the document and writing it.
    Write,
    /// Removing our lock file.
    Release,
    /// Checking that our lock file is still ours, before the Secret Service's item is stored.
    #[cfg(all(feature = "keyring", target_os = "linux"))]
    CheckLock,
    /// Touching the signal file once the Secret Service's item is stored, then releasing the
    /// lock file.
    #[cfg(all(feature = "keyring", target_os = "linux"))]
    Signal,
}

impl Step {
    /// What it does, as a verb phrase for "could not … `path`".
    fn operation(self) -> &'static str {
        match self {
            Step::Lock => lock_file::CREATE,
            Step::Read => reader::READ,
            Step::Look | Step::Exists => "look for the token cache",
            Step::Write => "write the token cache",
            Step::Release => "release the lock file",
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            Step::CheckLock => lock_file::KEEP,
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            Step::Signal => keyring::TOUCH,
        }
    }

    /// Whether its work holds a lock file's guard, which removes the file when dropped.
    fn holds_a_lock(self) -> bool {
        match self {
            Step::Look | Step::Write | Step::Release => true,
            Step::Lock | Step::Read | Step::Exists => false,
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            Step::Signal => true,
            // A clone of the guard, which the writer keeps.
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            Step::CheckLock => false,
        }
    }

    /// Whether its work runs even while the file's steps are refused: the signal file's
    /// touch, whose work also holds the lock file. Dropped unrun, the lock file would be
    /// removed with the signal file untouched, and msal-extensions, taking the lock next,
    /// would see no change and write its old copy over the item just stored.
    fn must_run(self) -> bool {
        #[cfg(all(feature = "keyring", target_os = "linux"))]
        if self == Step::Signal {
            return true;
        }
        false
    }

    /// The error of the step that ran [`READ_TIMEOUT`] without returning.
    fn overran(self, path: &Path) -> PersistenceError {
        let effect = match self {
            Step::Lock => "; a lock file it made is removed when it returns",
            Step::Look | Step::Release => "; the lock file stays taken until the step returns",
            // The step holds the lock too: the release after it cannot let it go.
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            Step::CheckLock => "; the lock file stays taken until the step returns",
            Step::Write => {
                "; the token cache may or may not have been written, and its lock file stays \
                 taken until the step returns"
            }
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            Step::Signal => {
                "; the Secret Service's item was stored, but the signal file may or may not \
                 have been touched: until it is, other processes (msal-extensions) are not \
                 told to reload the token cache, and may keep their old copy and write it \
                 back over this change; the lock file stays taken until the step returns"
            }
            _ => "",
        };
        let cause = io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "it has run {} without returning: the file system does not answer (a hung \
                 network or FUSE mount); fix the mount; this process uses the token cache again \
                 once the step returns{effect}",
                error::seconds(READ_TIMEOUT)
            ),
        );
        PersistenceError::io(self.operation(), path, cause)
    }

    /// The error of the step not run because an earlier one overran (never one that
    /// [`must_run`](Self::must_run)).
    fn refused(self, path: &Path) -> PersistenceError {
        let cause = io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "not tried: an earlier step of file I/O in this token cache's directory has run \
                 more than {} and has not returned: the file system does not answer (a hung \
                 network or FUSE mount); fix the mount; this process uses the token cache again \
                 once that step returns",
                error::seconds(READ_TIMEOUT)
            ),
        );
        PersistenceError::io(self.operation(), path, cause)
    }
}

/// Runs `step`'s blocking file I/O through the file's `steps`, on a thread of its own, waited
/// for [`READ_TIMEOUT`] at most; refused at once while a step that overran has not returned
/// (see the module docs), unless it [must run](Step::must_run). `path` is the file named in
/// its errors. A panic (from a caller's closure) continues in the caller.
async fn run_blocking<T, F>(
    steps: &Steps,
    step: Step,
    path: &Path,
    work: F,
) -> Result<T, PersistenceError>
where
    F: FnOnce() -> Result<T, PersistenceError> + Send + 'static,
    T: Send + 'static,
{
    let ran = match steps.run(work).await {
        // Not dropped unrun: see `Step::must_run`.
        Err(StepFailure::Refused(work)) if step.must_run() => steps.run_counted(work).await,
        ran => ran,
    };
    match ran {
        Ok(result) => result,
        Err(StepFailure::Overran) => Err(step.overran(path)),
        Err(StepFailure::Refused(work)) => {
            // Its guard's removal of the lock file may hang like the step that overran: a
            // step of its own, counted. A guard is held only by a writer that took the lock
            // before the overrun (no lock is taken after it until it returns), so few threads
            // are started.
            if step.holds_a_lock() {
                steps.drop_counted(work);
            }
            Err(step.refused(path))
        }
        Err(StepFailure::Thread(error)) => {
            let error = PersistenceError::io(step.operation(), path, error);
            // The item was stored all the same: the error says so, as the touch's own does.
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            if step == Step::Signal {
                return Err(keyring::stored_not_signalled(path, error));
            }
            Err(error)
        }
    }
}
