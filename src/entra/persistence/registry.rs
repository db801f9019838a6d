//! The process-wide registry behind [`CacheFile::shared`]: one object per file and document
//! type while one is alive.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use super::{CacheFile, DEFAULT_LOCK_TIMEOUT, Document, directory};

/// Key of the process-wide registry of [`CacheFile::shared`]: the path, its directory resolved
/// ([`directory`]), and the document type (two document types over one file are two objects,
/// still ordered by the lock file, their steps the directory's). Not the legacy file: one file
/// has one writer queue and one snapshot in this process, whether its callers name a legacy
/// file or not.
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
    /// The cache file object for `path`, the same `Arc` for every caller in this process while
    /// one is alive (paths are compared after resolving the directory: `dir/./f`, `dir/f` and
    /// a symlinked directory are one file). The registry holds it weakly.
    ///
    /// With a `legacy` file (the legacy `msal.cache` for `msal.cache.nocae`), the legacy file
    /// is read while `path` does not exist, and the first write creates `path` from it unless
    /// the writer skips it (see [`CacheFile::modify_with`]); the legacy file is never written. The legacy file is a
    /// property of the file (the legacy `msal.cache` beside it, whoever asks): an object made
    /// by a caller that named none (the Secret Service's signal file, without a plaintext
    /// fallback) gets the first one named later, and keeps it.
    ///
    /// Blocking: resolving the directory is file I/O, on a thread of its own but waited for
    /// here, [`READ_TIMEOUT`](crate::blocking_read::READ_TIMEOUT) at most, and not done again
    /// while the directory's steps are held (see [`directory`]). Called when a credential is
    /// built, never by a call.
    pub(crate) fn shared(path: PathBuf, legacy: Option<PathBuf>) -> Arc<Self> {
        // Resolved before taking the registry's lock: that lock is never held across I/O or a
        // wait. The steps are the directory's: those of an object of this path dropped while
        // a step of it hangs, of another document type's, or of another file beside it, are
        // this one's.
        let (key, steps) = directory::of_file(&path);
        let key = (key, TypeId::of::<D>());
        let mut registry = registry();
        if let Some(existing) = registry.get(&key).and_then(Weak::upgrade) {
            if let Ok(file) = existing.downcast::<Self>() {
                if let Some(legacy) = legacy {
                    let legacy = std::path::absolute(&legacy).unwrap_or(legacy);
                    // Already set: the same file beside it.
                    let _ = file.legacy.set(legacy);
                }
                return file;
            }
        }
        registry.retain(|_, entry| entry.strong_count() > 0);
        let file = Self::with_steps(path, legacy, DEFAULT_LOCK_TIMEOUT, steps);
        let entry: Arc<dyn Any + Send + Sync> = file.clone();
        registry.insert(key, Arc::downgrade(&entry));
        file
    }
}
