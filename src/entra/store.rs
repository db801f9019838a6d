//! Where a credential's MSAL cache document lives: in memory (the default), or persistent
//! (opt-in, see `TokenCachePersistenceOptions`): the shared cache file, or with the `keyring`
//! feature on Linux the Secret Service. All answer `read` and `modify`; the persistent ones
//! read again under their lock file before every change, so other processes' entries survive.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::msal_cache::{CacheDocument, DocumentError};
#[cfg(not(all(feature = "keyring", target_os = "linux")))]
use super::persistence::CacheFile;
#[cfg(all(feature = "keyring", target_os = "linux"))]
use super::persistence::KeyringCache;
use super::persistence::{Document, PersistenceError};
use crate::credential::CacheLocation;

impl Document for CacheDocument {
    type Error = DocumentError;

    fn parse(bytes: &[u8]) -> Result<Self, Self::Error> {
        CacheDocument::parse(bytes)
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.to_vec()
    }

    fn empty() -> Self {
        CacheDocument::empty()
    }
}

/// A credential's token cache document.
pub(crate) enum TokenStore {
    Memory(Mutex<Arc<CacheDocument>>),
    #[cfg(not(all(feature = "keyring", target_os = "linux")))]
    File(Persistent),
    #[cfg(all(feature = "keyring", target_os = "linux"))]
    Keyring(Persistent),
    /// The default cache's ordinary document, where the legacy file may be the one in use.
    WithLegacy(Box<WithLegacy>),
}

/// The document a [`TokenStore`] uses for one read or change.
enum InUse<'a> {
    Memory(&'a Mutex<Arc<CacheDocument>>),
    Persistent(&'a Persistent),
}

/// A persistent document: the cache file, or the Secret Service (with its signal file).
#[cfg(not(all(feature = "keyring", target_os = "linux")))]
type Persistent = Arc<CacheFile<CacheDocument>>;
#[cfg(all(feature = "keyring", target_os = "linux"))]
type Persistent = Arc<KeyringCache<CacheDocument>>;

/// The files whose existence says `store` has a cache (with the Secret Service: its signal
/// file, and the plaintext fallback file if allowed).
fn files_of(store: &Persistent) -> Vec<PathBuf> {
    #[cfg(not(all(feature = "keyring", target_os = "linux")))]
    return vec![store.path().to_path_buf()];
    #[cfg(all(feature = "keyring", target_os = "linux"))]
    store.files()
}

/// The default cache's ordinary document: `msal.cache.nocae`, or the legacy `msal.cache`
/// while only that exists. Decided at each use (a metadata check), not when the credential
/// is built: a later sign-in that creates `msal.cache.nocae` is then seen at once.
pub(crate) struct WithLegacy {
    current: Persistent,
    legacy: Persistent,
    current_file: PathBuf,
    legacy_file: PathBuf,
}

impl WithLegacy {
    /// Whether the legacy file is the one in use.
    fn legacy_in_use(current_file: &Path, legacy_file: &Path) -> bool {
        !current_file.exists() && legacy_file.is_file()
    }

    /// The document in use now. A stat is file I/O: on the blocking pool.
    async fn pick(&self) -> &Persistent {
        let (current, legacy) = (self.current_file.clone(), self.legacy_file.clone());
        let legacy = tokio::task::spawn_blocking(move || Self::legacy_in_use(&current, &legacy))
            .await
            .unwrap_or(false);
        if legacy { &self.legacy } else { &self.current }
    }

    /// [`pick`](Self::pick) at once, for messages.
    fn pick_now(&self) -> &Persistent {
        if Self::legacy_in_use(&self.current_file, &self.legacy_file) {
            &self.legacy
        } else {
            &self.current
        }
    }
}

impl TokenStore {
    pub(crate) fn memory() -> Self {
        TokenStore::Memory(Mutex::new(Arc::new(CacheDocument::empty())))
    }

    /// The persistent store at `location`: a cache file is shared with every credential of
    /// this process that uses it.
    pub(crate) fn file(location: CacheLocation) -> Self {
        match location {
            #[cfg(not(all(feature = "keyring", target_os = "linux")))]
            CacheLocation::File(path) => TokenStore::File(CacheFile::shared(path)),
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            CacheLocation::Keyring(target) => TokenStore::Keyring(KeyringCache::new(target)),
        }
    }

    /// The default cache's ordinary document at `location`, or at `legacy` while only the
    /// `legacy_file` exists (see [`WithLegacy`]).
    pub(crate) fn with_legacy(
        location: CacheLocation,
        legacy: CacheLocation,
        current_file: PathBuf,
        legacy_file: PathBuf,
    ) -> Self {
        let persistent = |location| match location {
            #[cfg(not(all(feature = "keyring", target_os = "linux")))]
            CacheLocation::File(path) => CacheFile::shared(path),
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            CacheLocation::Keyring(target) => KeyringCache::new(target),
        };
        TokenStore::WithLegacy(Box::new(WithLegacy {
            current: persistent(location),
            legacy: persistent(legacy),
            current_file,
            legacy_file,
        }))
    }

    /// The document in use now: in memory, or the persistent one.
    async fn in_use(&self) -> InUse<'_> {
        match self {
            TokenStore::Memory(doc) => InUse::Memory(doc),
            #[cfg(not(all(feature = "keyring", target_os = "linux")))]
            TokenStore::File(file) => InUse::Persistent(file),
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            TokenStore::Keyring(keyring) => InUse::Persistent(keyring),
            TokenStore::WithLegacy(choice) => InUse::Persistent(choice.pick().await),
        }
    }

    /// The file's path (the signal file of the Secret Service's), for messages.
    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            TokenStore::Memory(_) => None,
            #[cfg(not(all(feature = "keyring", target_os = "linux")))]
            TokenStore::File(file) => Some(file.path()),
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            TokenStore::Keyring(keyring) => Some(keyring.path()),
            TokenStore::WithLegacy(choice) => Some(choice.pick_now().path()),
        }
    }

    /// Whether other processes and tools share the document (persistent storage), as opposed
    /// to a credential's private memory.
    pub(crate) fn is_shared(&self) -> bool {
        !matches!(self, TokenStore::Memory(_))
    }

    /// Whether the file exists (for the Secret Service: its signal file, or the plaintext
    /// fallback file); always true in memory.
    pub(crate) async fn exists(&self) -> bool {
        let files: Vec<PathBuf> = match self {
            TokenStore::Memory(_) => return true,
            #[cfg(not(all(feature = "keyring", target_os = "linux")))]
            TokenStore::File(file) => files_of(file),
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            TokenStore::Keyring(keyring) => files_of(keyring),
            TokenStore::WithLegacy(choice) => {
                let mut files = files_of(&choice.current);
                files.extend(files_of(&choice.legacy));
                files
            }
        };
        // A stat is file I/O: on the blocking pool. If the runtime is shutting down, the read
        // that follows reports it.
        tokio::task::spawn_blocking(move || files.iter().any(|file| file.exists()))
            .await
            .unwrap_or(true)
    }

    pub(crate) async fn read(&self) -> Result<Arc<CacheDocument>, PersistenceError> {
        match self.in_use().await {
            InUse::Memory(doc) => Ok(Arc::clone(&doc.lock().unwrap_or_else(|e| e.into_inner()))),
            InUse::Persistent(persistent) => persistent.read().await,
        }
    }

    /// Applies `change` to the current document and stores the result.
    pub(crate) async fn modify<R, F>(&self, change: F) -> Result<R, PersistenceError>
    where
        F: FnOnce(&mut CacheDocument) -> R + Send + 'static,
        R: Send + 'static,
    {
        match self.in_use().await {
            InUse::Memory(doc) => {
                let mut doc = doc.lock().unwrap_or_else(|e| e.into_inner());
                Ok(change(Arc::make_mut(&mut doc)))
            }
            InUse::Persistent(persistent) => persistent.modify(change).await,
        }
    }
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenStore::Memory(_) => f.write_str("TokenStore::Memory"),
            #[cfg(not(all(feature = "keyring", target_os = "linux")))]
            TokenStore::File(file) => f
                .debug_tuple("TokenStore::File")
                .field(&file.path())
                .finish(),
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            TokenStore::Keyring(keyring) => f
                .debug_tuple("TokenStore::Keyring")
                .field(&keyring.path())
                .finish(),
            TokenStore::WithLegacy(choice) => f
                .debug_struct("TokenStore::WithLegacy")
                .field("current", &choice.current_file)
                .field("legacy", &choice.legacy_file)
                .finish(),
        }
    }
}
