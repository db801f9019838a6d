//! The reloading reader: the file's stamp, and reading and parsing it again when it changed.

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::error::{Kind, PersistenceError};
use super::{CacheFile, Document, Step, run_blocking};
use crate::regular_file::{is_not_regular, open_regular_file};

/// How many times a file that fails to parse is read again before it is reported.
pub(super) const PARSE_RETRIES: u32 = 3;
/// Pause before reading a file that failed to parse again.
pub(super) const PARSE_RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// A file modified less than this long before it was read is read again next time, since a
/// later write within the same mtime tick could leave its stamp unchanged.
pub(super) const RECENT_WINDOW: Duration = Duration::from_secs(1);

/// How far ahead of the clock a modification time counts as just now (see [`age`]): a file
/// written by another host sharing the directory whose clock runs ahead by less than this.
/// The stale lock rule's minute ([`STALE_LOCK_AGE`]): a lock dated less far ahead is fresh,
/// and one dated that far ahead or further is stale at once, as one that old.
///
/// [`STALE_LOCK_AGE`]: super::lock_file::STALE_LOCK_AGE
pub(super) const RECENT_AHEAD: Duration = super::lock_file::STALE_LOCK_AGE;

/// The identity of one version of a file: when a reader finds the same stamp it keeps its copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
    /// Last modification (`None` where the platform does not report it).
    pub(super) modified: Option<SystemTime>,
    /// Length in bytes.
    pub(super) len: u64,
    /// Inode number (0 off unix): changes when a writer renames a new file over the old one.
    pub(super) inode: u64,
}

impl Stamp {
    /// The stamp of a file's metadata.
    pub(super) fn of(meta: &fs::Metadata) -> Self {
        Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: inode(meta),
        }
    }

    /// Whether the file was modified too recently for its stamp to prove it unchanged later:
    /// its [`age`] is under [`RECENT_WINDOW`] (or its time is unknown). So a file dated ahead
    /// of the clock by less than [`RECENT_AHEAD`] is read again at each read until its time
    /// is [`RECENT_WINDOW`] behind the clock, and one dated further ahead is not (its stamp is
    /// trusted, rather than the file parsed at every read until the clock catches up).
    pub(super) fn is_recent(&self) -> bool {
        self.modified
            .is_none_or(|modified| age(modified) < RECENT_WINDOW)
    }
}

/// The age of a modification time `at`, as every rule based on one judges it (recently
/// modified cache files, stale lock files, leftover temporary files):
///
/// * behind the clock: how long ago it was;
/// * ahead by less than [`RECENT_AHEAD`]: zero, just now. Another host sharing the directory
///   whose clock runs ahead wrote it: its lock is fresh, its file recent.
/// * ahead by [`RECENT_AHEAD`] or more: its distance from now, as one dated as far behind.
///   It is taken for a time from before the clock was stepped back (at boot, on a VM's
///   resume) rather than another host's, so that no rule waits for as long as the skew lasts.
pub(super) fn age(at: SystemTime) -> Duration {
    match SystemTime::now().duration_since(at) {
        Ok(age) => age,
        Err(ahead) if ahead.duration() < RECENT_AHEAD => Duration::ZERO,
        Err(ahead) => ahead.duration(),
    }
}

/// The version a document came from: the file's stamp (`None`: missing), and the legacy
/// file's when the document is its.
pub(super) type Stamps = (Option<Stamp>, Option<Stamp>);

/// The in-memory copy of the document and the version of the file it came from.
pub(super) struct Snapshot<D> {
    /// The document.
    pub(super) doc: Arc<D>,
    /// The file's stamp when it was read; `None` when the file did not exist.
    pub(super) file: Option<Stamp>,
    /// The legacy file's stamp when the document was read from it (the file did not exist).
    pub(super) legacy: Option<Stamp>,
    /// Read the file again next time whatever its stamp (see [`RECENT_WINDOW`]).
    pub(super) recheck: bool,
}

impl<D: Document> CacheFile<D> {
    /// The current document: read from disk when the file's (mtime, length, inode) changed
    /// since the last read or write (or was too recent to tell), else the in-memory copy. A
    /// missing file, or missing directory, is an empty document, or the legacy file's while
    /// that exists (checked at each read, as the file is). A file that does not parse is read
    /// up to [`PARSE_RETRIES`] more times before a malformed error.
    pub(crate) async fn read(&self) -> Result<Arc<D>, PersistenceError> {
        let known = self.snapshot_state();
        let path = self.path.clone();
        let legacy = self.legacy.get().cloned();
        let check = known
            .as_ref()
            .and_then(|(stamps, recheck, _)| (!recheck).then_some(*stamps));
        let loaded = run_blocking(&self.steps, Step::Read, &self.path, move || {
            if let Some(known) = check {
                let file = stat(&path).map_err(|e| PersistenceError::io(READ, &path, e))?;
                let legacy = match (&file, &legacy) {
                    (None, Some(legacy)) => legacy_stamp(legacy),
                    _ => None,
                };
                if (file, legacy) == known {
                    return Ok(None);
                }
            }
            load_or_legacy::<D>(&path, legacy.as_deref(), true).map(Some)
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
                    legacy: loaded.legacy,
                    recheck: loaded.recent,
                });
                Ok(doc)
            }
        }
    }
}

/// Operation name of errors while reading the cache file.
pub(super) const READ: &str = "read the token cache";

/// A document read from the file.
pub(super) struct Loaded<D> {
    /// The document (empty when the file does not exist).
    pub(super) doc: D,
    /// The file's stamp; `None` when it does not exist.
    pub(super) file: Option<Stamp>,
    /// The legacy file's stamp when the document is its (see [`load_or_legacy`]).
    pub(super) legacy: Option<Stamp>,
    /// Modified within [`RECENT_WINDOW`] of being read.
    pub(super) recent: bool,
    /// The file's bytes; `None` when it does not exist.
    pub(super) bytes: Option<Vec<u8>>,
}

/// Whether an error means "not there" (the file or its directory).
pub(super) fn is_missing(error: &io::Error) -> bool {
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

/// The largest cache file read. MSAL writes a few KiB an entry, so this is far above any cache;
/// it bounds what a stray file at the cache's path costs.
pub(super) const MAX_FILE_BYTES: u64 = 64 << 20;

/// The file's bytes and the stamp of the version they came from; `None` if it does not exist.
/// The stamp is taken before reading, so a write in between makes the next read load again.
fn read_file(path: &Path) -> io::Result<Option<(Vec<u8>, Stamp)>> {
    let file = match open_regular_file(path) {
        Ok(file) => file,
        Err(e) if is_missing(&e) => return Ok(None),
        // A write waits meanwhile with the cache's lock held: say what to do.
        Err(e) if is_not_regular(&e) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{e}; the token cache is a file: move this aside"),
            ));
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let stamp = Stamp::of(&meta);
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the file is larger than {} MiB, which no token cache is; move it aside",
                MAX_FILE_BYTES >> 20
            ),
        )
    };
    if stamp.len > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(stamp.len).unwrap_or(0).min(1 << 24));
    // It may grow while it is read.
    file.take(MAX_FILE_BYTES.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if !u64::try_from(bytes.len()).is_ok_and(|len| len <= MAX_FILE_BYTES) {
        return Err(too_large());
    }
    Ok(Some((bytes, stamp)))
}

/// Reads and parses the file (blocking), retrying a parse failure — and, with `settle_empty`,
/// an empty file modified just now — in case an in-place write was in progress.
pub(super) fn load<D: Document>(
    path: &Path,
    settle_empty: bool,
) -> Result<Loaded<D>, PersistenceError> {
    let mut attempt = 0;
    loop {
        let Some((bytes, stamp)) =
            read_file(path).map_err(|e| PersistenceError::io(READ, path, e))?
        else {
            return Ok(Loaded {
                doc: D::empty(),
                file: None,
                legacy: None,
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
                    legacy: None,
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

/// [`load`]s the file, or while it does not exist the `legacy` file, if that is a regular
/// file (anything else there is no cache of ours: it is ignored). What the legacy file holds
/// comes back with `file: None` and the legacy file's stamp in `legacy`.
///
/// The legacy file is always loaded with `settle_empty`: its writers write in place, and an
/// empty legacy file copied into the file would hide their entries for good.
pub(super) fn load_or_legacy<D: Document>(
    path: &Path,
    legacy: Option<&Path>,
    settle_empty: bool,
) -> Result<Loaded<D>, PersistenceError> {
    let loaded = load::<D>(path, settle_empty)?;
    let Some(legacy) = legacy.filter(|_| loaded.file.is_none()) else {
        return Ok(loaded);
    };
    if legacy_stamp(legacy).is_none() {
        return Ok(loaded);
    }
    let from_legacy = load::<D>(legacy, true)?;
    Ok(Loaded {
        legacy: from_legacy.file,
        file: None,
        ..from_legacy
    })
}

/// The legacy file's stamp if it is a regular file (a symlink to one included), else `None`,
/// as [`load_or_legacy`] sees it: a reader compares the two, so that a directory there does
/// not make every read load again.
fn legacy_stamp(legacy: &Path) -> Option<Stamp> {
    fs::metadata(legacy)
        .ok()
        .filter(fs::Metadata::is_file)
        .map(|meta| Stamp::of(&meta))
}

/// A file's inode number (0 off unix).
pub(super) fn inode(meta: &fs::Metadata) -> u64 {
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
