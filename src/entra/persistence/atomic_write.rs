//! Atomic writes: a temporary file beside the cache file, renamed over it.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::error::PersistenceError;
use super::reader::{Stamp, is_missing};

/// A fresh random number for temporary file names.
pub(super) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((COUNTER.fetch_add(1, Ordering::Relaxed), SystemTime::now()))
}

/// `path` with `suffix` appended to its file name.
pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The directory holding `path` (`.` for a bare file name).
pub(super) fn parent_dir(path: &Path) -> &Path {
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
pub(super) fn create_dir(dir: &Path) -> Result<(), PersistenceError> {
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

/// Writes `bytes` to a temporary file beside the cache file and renames it over the cache file
/// (blocking). Returns the new file's stamp.
pub(super) fn write_document(path: &Path, bytes: &[u8]) -> Result<Stamp, PersistenceError> {
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
