//! Where a credential's MSAL cache document lives: in memory (the default), or persistent
//! (opt-in, see `TokenCachePersistenceOptions`): the shared cache file, or with the `keyring`
//! feature on Linux the Secret Service. All answer `read` and `modify`; the persistent ones
//! read again under their lock file before every change, so other processes' entries survive.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::msal_cache::{CacheDocument, DocumentError};
#[cfg(not(all(feature = "keyring", target_os = "linux")))]
use super::persistence::CacheFile;
#[cfg(all(feature = "keyring", target_os = "linux"))]
use super::persistence::KeyringCache;
use super::persistence::{Document, LegacyWrites, PersistenceError};
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
    /// The file, and what a write does while only its legacy file exists.
    #[cfg(not(all(feature = "keyring", target_os = "linux")))]
    File(Arc<CacheFile<CacheDocument>>, LegacyWrites),
    #[cfg(all(feature = "keyring", target_os = "linux"))]
    Keyring(Arc<KeyringCache<CacheDocument>>),
}

impl TokenStore {
    pub(crate) fn memory() -> Self {
        TokenStore::Memory(Mutex::new(Arc::new(CacheDocument::empty())))
    }

    /// The persistent store at `location`: a cache file is shared with every credential of
    /// this process that uses it. `legacy_writes`: whether this credential's writes create the
    /// file from the legacy one while only that exists (see [`LegacyWrites`]).
    pub(crate) fn file(location: CacheLocation, legacy_writes: LegacyWrites) -> Self {
        match location {
            #[cfg(not(all(feature = "keyring", target_os = "linux")))]
            CacheLocation::File { path, legacy } => {
                TokenStore::File(CacheFile::shared(path, legacy), legacy_writes)
            }
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            CacheLocation::Keyring(target) => {
                TokenStore::Keyring(KeyringCache::new(target, legacy_writes))
            }
        }
    }

    /// The file's path (the signal file of the Secret Service's), for messages.
    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            TokenStore::Memory(_) => None,
            #[cfg(not(all(feature = "keyring", target_os = "linux")))]
            TokenStore::File(file, _) => Some(file.path()),
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            TokenStore::Keyring(keyring) => Some(keyring.path()),
        }
    }

    /// Whether other processes and tools share the document (persistent storage), as opposed
    /// to a credential's private memory.
    pub(crate) fn is_shared(&self) -> bool {
        !matches!(self, TokenStore::Memory(_))
    }

    /// Whether the file exists (for the Secret Service: its signal file, or the plaintext
    /// fallback file), or the legacy file read in its place; always true in memory. A look
    /// that fails (its file system does not answer) says yes: the read that follows reports
    /// why.
    pub(crate) async fn exists(&self) -> bool {
        let exists = match self {
            TokenStore::Memory(_) => return true,
            // A stat is file I/O: a step of the file's, off the executor and bounded in time.
            #[cfg(not(all(feature = "keyring", target_os = "linux")))]
            TokenStore::File(file, _) => file.any_exists(file.files()).await,
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            TokenStore::Keyring(keyring) => keyring.exists().await,
        };
        exists.unwrap_or(true)
    }

    pub(crate) async fn read(&self) -> Result<Arc<CacheDocument>, PersistenceError> {
        match self {
            TokenStore::Memory(doc) => {
                Ok(Arc::clone(&doc.lock().unwrap_or_else(|e| e.into_inner())))
            }
            #[cfg(not(all(feature = "keyring", target_os = "linux")))]
            TokenStore::File(file, _) => file.read().await,
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            TokenStore::Keyring(keyring) => keyring.read().await,
        }
    }

    /// Applies `change` to the current document and stores the result.
    pub(crate) async fn modify<R, F>(&self, change: F) -> Result<R, PersistenceError>
    where
        F: FnOnce(&mut CacheDocument) -> R + Send + 'static,
        R: Send + 'static,
    {
        match self {
            TokenStore::Memory(doc) => {
                let mut doc = doc.lock().unwrap_or_else(|e| e.into_inner());
                Ok(change(Arc::make_mut(&mut doc)))
            }
            #[cfg(not(all(feature = "keyring", target_os = "linux")))]
            TokenStore::File(file, legacy_writes) => file.modify_with(*legacy_writes, change).await,
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            TokenStore::Keyring(keyring) => keyring.modify(change).await,
        }
    }
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenStore::Memory(_) => f.write_str("TokenStore::Memory"),
            #[cfg(not(all(feature = "keyring", target_os = "linux")))]
            TokenStore::File(file, _) => f
                .debug_tuple("TokenStore::File")
                .field(&file.path())
                .finish(),
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            TokenStore::Keyring(keyring) => f
                .debug_tuple("TokenStore::Keyring")
                .field(&keyring.path())
                .finish(),
        }
    }
}
