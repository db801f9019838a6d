//! The error type of the cache file and the Secret Service.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why the token cache file could not be read or written. Messages name paths, never the
/// file's content.
#[derive(Debug, Clone)]
pub(crate) struct PersistenceError {
    /// What went wrong.
    pub(super) kind: Kind,
}

/// The kinds of [`PersistenceError`].
#[derive(Debug, Clone)]
pub(super) enum Kind {
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
        /// The document's error text (free of secrets by [`Document::Error`](super::Document::Error)'s contract).
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
        /// The time ran out queued behind this process's other writers of the file, before
        /// this writer's own first attempt.
        queued: bool,
    },
    /// Not written: only the legacy file exists, and the writer does not create the file from
    /// it (see [`LegacyWrites::Skip`](super::LegacyWrites::Skip)).
    LegacyOnly {
        /// The cache file.
        path: PathBuf,
        /// The legacy file.
        legacy: PathBuf,
    },
    /// The Secret Service could not be used (the text names what is missing and what to do).
    #[cfg(all(feature = "keyring", target_os = "linux"))]
    SecretService {
        /// What went wrong, free of secrets.
        detail: String,
    },
}

impl PersistenceError {
    /// A failed file operation.
    pub(super) fn io(operation: &'static str, path: &Path, error: io::Error) -> Self {
        Self {
            kind: Kind::Io {
                operation,
                path: path.to_path_buf(),
                error: Arc::new(error),
            },
        }
    }

    /// Not written, the legacy file being the only one (see [`Kind::LegacyOnly`]).
    pub(super) fn legacy_only(path: &Path, legacy: &Path) -> Self {
        Self {
            kind: Kind::LegacyOnly {
                path: path.to_path_buf(),
                legacy: legacy.to_path_buf(),
            },
        }
    }

    /// Whether nothing was written by design: only the legacy file exists and this writer
    /// does not create the file from it.
    pub(crate) fn is_legacy_only(&self) -> bool {
        matches!(self.kind, Kind::LegacyOnly { .. })
    }
}

/// A duration for humans: `10 s`, `2.5 s`, `300 ms`.
pub(super) fn seconds(duration: Duration) -> String {
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
                queued: true,
                ..
            } => write!(
                f,
                "timed out after {} waiting for {}: this process's other writers of the token \
                 cache were still waiting for it or writing; if another process holds it and is \
                 gone, delete the lock file",
                seconds(*timeout),
                lock_path.display(),
            ),
            Kind::LockTimeout {
                lock_path,
                timeout,
                holder,
                queued: false,
            } => write!(
                f,
                "timed out after {} waiting for {} held by {}: if that process is gone, delete the lock file",
                seconds(*timeout),
                lock_path.display(),
                holder.as_deref().unwrap_or("another process"),
            ),
            Kind::LegacyOnly { path, legacy } => write!(
                f,
                "the token cache was not written: only the legacy {} exists, which the \
                 application that signed in writes; a credential that reads its sign-in does \
                 not create {} from it, which would hide that application's later changes",
                legacy.display(),
                path.display(),
            ),
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            Kind::SecretService { detail } => write!(f, "Secret Service: {detail}"),
        }
    }
}

impl std::error::Error for PersistenceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Io { error, .. } => Some(&**error),
            _ => None,
        }
    }
}
