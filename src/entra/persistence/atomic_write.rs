//! Atomic writes: a temporary file beside the cache file (`tempfile`'s exclusive, randomly
//! named creation; mode 0600 from creation on unix, then the mode the replaced file had),
//! written, fsynced, renamed over the cache file, and marked modified after the rename.
//!
//! A temporary file holds the tokens in plaintext, so one left behind by a writer killed
//! between creating and renaming it is removed by the next write (see [`remove_leftovers`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tempfile::TempPath;

use super::error::PersistenceError;
use super::reader::{Stamp, is_missing};

/// The directory holding `path` (`.` for a bare file name).
pub(super) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The file a write replaces: `path`, or the target of `path` if it is a symlink (a dangling
/// one included), so that the link survives.
pub(super) fn write_target(path: &Path) -> Result<PathBuf, PersistenceError> {
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
pub(super) fn create_dir(dir: &Path) -> Result<(), PersistenceError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| PersistenceError::io("create the token cache directory", dir, e))
}

/// Opens a new file exclusively, mode 0600 from creation on unix.
pub(super) fn create_new_private(path: &Path) -> io::Result<File> {
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

/// Refuses to replace a file without its owner's write permission: the user froze it. The
/// rename needs only the directory's permission and would replace it anyway. Decided by the
/// mode bits, not by trying, so that root, whom permissions do not stop, honours it too.
#[cfg(unix)]
fn refuse_read_only(target: &Path) -> Result<(), PersistenceError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match fs::metadata(target) {
        Ok(meta) => meta.permissions().mode(),
        // A missing file is created; other errors show up when the file is replaced.
        Err(_) => return Ok(()),
    };
    if mode & 0o200 != 0 {
        return Ok(());
    }
    let error = io::Error::other(format!(
        "it is read-only (mode {:04o}), so it was left as it is: to let the token cache be \
         updated, make it writable (chmod u+w)",
        mode & 0o7777
    ));
    Err(PersistenceError::io(
        "replace the token cache",
        target,
        error,
    ))
}

#[cfg(not(unix))]
fn refuse_read_only(_target: &Path) -> Result<(), PersistenceError> {
    Ok(())
}

/// Writes `bytes` to a temporary file beside the cache file and renames it over the cache file
/// (blocking). Returns the new file's stamp. The temporary file is removed if anything fails.
pub(super) fn write_document(path: &Path, bytes: &[u8]) -> Result<Stamp, PersistenceError> {
    let target = write_target(path)?;
    refuse_read_only(&target)?;
    remove_leftovers(&target);
    let temp = written_beside(&target, bytes)?;
    install(temp, &target)
}

/// How old a temporary file beside the cache must be before it is taken for a dead writer's.
/// A write takes milliseconds, and writers hold the lock file while they write; the margin
/// covers a writer whose lock was broken as too old (60 s, see `lock_file.rs`) while it
/// still ran.
const LEFTOVER_AGE: Duration = Duration::from_secs(10 * 60);

/// Removes the temporary files of `target` ([`written_beside`]'s `<cache>.tmp.*`) that are
/// regular files last modified [`LEFTOVER_AGE`] ago or more: left by a writer that died
/// before renaming one, with the tokens in it. Called under the lock file. Best effort: a
/// failure is logged, and the write goes on.
fn remove_leftovers(target: &Path) {
    let Some(name) = target.file_name() else {
        return;
    };
    let mut prefix = name.to_os_string();
    prefix.push(".tmp.");
    let prefix = prefix.as_encoded_bytes();
    let Ok(entries) = fs::read_dir(parent_dir(target)) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        if !entry.file_name().as_encoded_bytes().starts_with(prefix) {
            continue;
        }
        // `DirEntry::metadata` does not follow a symbolic link: only regular files go.
        let old = entry.metadata().is_ok_and(|meta| {
            meta.is_file()
                && meta
                    .modified()
                    .ok()
                    .and_then(|at| now.duration_since(at).ok())
                    .is_some_and(|age| age >= LEFTOVER_AGE)
        });
        if !old {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => tracing::debug!(
                path = %path.display(),
                "removed a temporary token cache file a writer left behind"
            ),
            Err(error) if is_missing(&error) => {}
            Err(error) => tracing::warn!(
                path = %path.display(),
                %error,
                "could not remove a temporary token cache file a writer left behind"
            ),
        }
    }
}

/// A temporary file beside `target`, holding `bytes`, flushed to disk.
pub(super) fn written_beside(target: &Path, bytes: &[u8]) -> Result<TempPath, PersistenceError> {
    const WRITE: &str = "write the temporary token cache file";
    // `<cache>.tmp.<pid>.<random>`: a leftover after a crash says whose it was.
    let mut prefix = target.file_name().unwrap_or_default().to_os_string();
    prefix.push(format!(".tmp.{}.", std::process::id()));
    // The name tried last, for the error when no file could be created.
    let mut tried = PathBuf::new();
    let temp = tempfile::Builder::new()
        .prefix(&prefix)
        .make_in(parent_dir(target), |candidate| {
            candidate.clone_into(&mut tried);
            create_new_private(candidate)
        })
        .map_err(|e| PersistenceError::io(WRITE, &tried, e))?;
    if let Err(e) = fill(temp.as_file(), target, bytes) {
        let error = PersistenceError::io(WRITE, temp.path(), e);
        discard(temp.into_temp_path());
        return Err(error);
    }
    // Closed here: an open file cannot be renamed on every platform.
    Ok(temp.into_temp_path())
}

/// Renames `temp` over `target`, then marks it modified now. Returns its stamp.
///
/// Lock-free readers see the old file or the new one, never a partial one. The new
/// modification time matters to msal-extensions: a reader notes the time it read at, and
/// reloads only a file modified after that. A rename keeps the time the temporary file was
/// written, so a reader of the old file between that write and the rename would never
/// reload the new one, and its next write would put its stale copy back.
pub(super) fn install(temp: TempPath, target: &Path) -> Result<Stamp, PersistenceError> {
    temp.persist(target).map_err(|e| {
        discard(e.path);
        PersistenceError::io("replace the token cache", target, e.error)
    })?;
    let touched = OpenOptions::new()
        .write(true)
        .open(target)
        .and_then(|file| {
            file.set_modified(std::time::SystemTime::now())?;
            file.metadata()
        });
    let meta =
        touched.map_err(|e| PersistenceError::io("mark the token cache modified", target, e))?;
    Ok(Stamp::of(&meta))
}

/// Gives the new temporary file `target`'s mode, writes `bytes` to it and flushes it to disk.
fn fill(mut file: &File, target: &Path, bytes: &[u8]) -> io::Result<()> {
    // Set explicitly: the creation mode is subject to the umask, and an existing file's mode
    // is kept (it is never widened: it is the mode the file already had).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(replacement_mode(target)))?;
    }
    #[cfg(not(unix))]
    let _ = target;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Removes a temporary file that was not renamed into place.
fn discard(temp: TempPath) {
    let path = temp.to_path_buf();
    if let Err(error) = temp.close() {
        tracing::warn!(path = %path.display(), %error, "could not remove a temporary token cache file");
    }
}
