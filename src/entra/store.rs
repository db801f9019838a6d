//! Where a credential's MSAL cache document lives: in memory (the default), or in the shared
//! cache file (opt-in, see `TokenCachePersistenceOptions`). Both answer `read` and `modify`;
//! the file re-reads under its lock before every change, so other processes' entries survive.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::msal_cache::{CacheDocument, DocumentError};
use super::persistence::{CacheFile, Document, PersistenceError};

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
    File(Arc<CacheFile<CacheDocument>>),
}

impl TokenStore {
    pub(crate) fn memory() -> Self {
        TokenStore::Memory(Mutex::new(Arc::new(CacheDocument::empty())))
    }

    /// The cache file at `path`, shared with every credential of this process that uses it.
    pub(crate) fn file(path: PathBuf) -> Self {
        TokenStore::File(CacheFile::shared(path))
    }

    /// The file's path, for messages.
    pub(crate) fn path(&self) -> Option<&std::path::Path> {
        match self {
            TokenStore::Memory(_) => None,
            TokenStore::File(file) => Some(file.path()),
        }
    }

    /// Whether other processes and tools share the document (the cache file), as opposed to
    /// a credential's private memory.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, TokenStore::File(_))
    }

    /// Whether the file exists (always true in memory).
    pub(crate) fn exists(&self) -> bool {
        self.path().is_none_or(|p| p.exists())
    }

    pub(crate) async fn read(&self) -> Result<Arc<CacheDocument>, PersistenceError> {
        match self {
            TokenStore::Memory(doc) => {
                Ok(Arc::clone(&doc.lock().unwrap_or_else(|e| e.into_inner())))
            }
            TokenStore::File(file) => file.read().await,
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
            TokenStore::File(file) => file.modify(change).await,
        }
    }
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenStore::Memory(_) => f.write_str("TokenStore::Memory"),
            TokenStore::File(file) => f
                .debug_tuple("TokenStore::File")
                .field(&file.path())
                .finish(),
        }
    }
}
