//! [`TokenCachePersistenceOptions`]: where a credential keeps tokens across processes — the
//! MSAL token-cache file that Azure CLI, MSAL and azure-identity share.
//!
//! The file is `~/.IdentityService/<name>.nocae` for ordinary tokens and `<name>.cae` for
//! tokens requested with the CAE capability (`<name>` defaults to `msal.cache`; a file named
//! just `msal.cache`, written by older tools, is read when `msal.cache.nocae` does not exist).
//! It is plaintext JSON with mode `0600`, written under the lock-file protocol of
//! msal-extensions (`<file>.lockfile`), so that concurrent writers in other processes lose
//! nothing.
//!
//! **Encrypted storage is not implemented yet.** The reference stores the cache in the
//! desktop keyring (Secret Service) and falls back to plaintext only when allowed; this crate
//! has only the plaintext file, so a credential given these options must be allowed to use it
//! ([`allow_unencrypted_storage`](TokenCachePersistenceOptions::allow_unencrypted_storage)),
//! and says so clearly when it is not. The options type is where a keyring backend will plug
//! in.

use std::path::PathBuf;

use crate::error::ConfigError;

/// The default cache name: the file is `<name>.nocae` / `<name>.cae`.
pub(crate) const DEFAULT_CACHE_NAME: &str = "msal.cache";
const DIRECTORY: &str = ".IdentityService";

/// Where and how tokens are persisted: the shared MSAL cache file `<directory>/<name>.nocae`
/// (and `.cae`), plaintext JSON with mode `0600`, written under msal-extensions' lock-file
/// protocol. Encrypted (keyring) storage is not implemented yet, so using the file must be
/// allowed with [`allow_unencrypted_storage`](Self::allow_unencrypted_storage).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenCachePersistenceOptions {
    name: String,
    directory: Option<PathBuf>,
    allow_unencrypted_storage: bool,
}

impl Default for TokenCachePersistenceOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenCachePersistenceOptions {
    /// The shared cache (`msal.cache`) in `~/.IdentityService`, unencrypted storage not
    /// allowed (the reference's default; see the module docs).
    pub fn new() -> Self {
        Self {
            name: DEFAULT_CACHE_NAME.to_owned(),
            directory: None,
            allow_unencrypted_storage: false,
        }
    }

    /// A cache of its own, `<name>.nocae` / `<name>.cae`, instead of the shared one.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Another directory than `~/.IdentityService` (for tests, containers, service accounts).
    pub fn directory(mut self, directory: impl Into<PathBuf>) -> Self {
        self.directory = Some(directory.into());
        self
    }

    /// Allow the plaintext file (mode `0600`) — today the only storage there is.
    pub fn allow_unencrypted_storage(mut self, allow: bool) -> Self {
        self.allow_unencrypted_storage = allow;
        self
    }

    /// Whether the plaintext file may be used.
    pub fn unencrypted_storage_allowed(&self) -> bool {
        self.allow_unencrypted_storage
    }

    /// Checks the settings and resolves the directory.
    pub(crate) fn resolve(&self, credential: &str) -> Result<CachePaths, ConfigError> {
        if !self.allow_unencrypted_storage {
            return Err(ConfigError::new(format!(
                "{credential}: persistent token caching needs encrypted storage, which is not \
                 implemented yet; call TokenCachePersistenceOptions::allow_unencrypted_storage(true) \
                 to keep tokens in a plaintext file readable only by you (mode 0600)"
            )));
        }
        let name = self.name.trim();
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(ConfigError::new(format!(
                "{credential}: cache name {name:?} is not a plain file name"
            )));
        }
        let directory = match &self.directory {
            Some(dir) => dir.clone(),
            None => home_directory()
                .ok_or_else(|| {
                    ConfigError::new(format!(
                        "{credential}: no home directory (HOME is not set) for the token cache; \
                         set TokenCachePersistenceOptions::directory"
                    ))
                })?
                .join(DIRECTORY),
        };
        Ok(CachePaths {
            directory,
            name: name.to_owned(),
        })
    }
}

/// The files of one cache.
#[derive(Clone, Debug)]
pub(crate) struct CachePaths {
    directory: PathBuf,
    name: String,
}

impl CachePaths {
    /// `<name>.cae` or `<name>.nocae`; for the default name without CAE, the legacy
    /// `msal.cache` when only that exists.
    pub(crate) fn file(&self, cae: bool) -> PathBuf {
        let suffix = if cae { "cae" } else { "nocae" };
        let current = self.directory.join(format!("{}.{suffix}", self.name));
        if !cae && self.name == DEFAULT_CACHE_NAME && !current.exists() {
            let legacy = self.directory.join(DEFAULT_CACHE_NAME);
            if legacy.is_file() {
                return legacy;
            }
        }
        current
    }
}

/// `$HOME` (Unix) or `%USERPROFILE%` (Windows).
fn home_directory() -> Option<PathBuf> {
    let var = if cfg!(windows) { "USERPROFILE" } else { "HOME" };
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unencrypted_storage_must_be_allowed_explicitly() {
        let err = TokenCachePersistenceOptions::new()
            .directory("/tmp/x")
            .resolve("ClientSecretCredential")
            .unwrap_err();
        assert!(err.message().contains("not implemented yet"), "{err}");
        assert!(
            err.message().contains("allow_unencrypted_storage(true)"),
            "{err}"
        );
    }

    #[test]
    fn files_are_named_per_cae_and_the_legacy_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let paths = TokenCachePersistenceOptions::new()
            .directory(dir.path())
            .allow_unencrypted_storage(true)
            .resolve("Test")
            .unwrap();
        assert_eq!(paths.file(true), dir.path().join("msal.cache.cae"));
        assert_eq!(paths.file(false), dir.path().join("msal.cache.nocae"));
        std::fs::write(dir.path().join("msal.cache"), "{}").unwrap();
        assert_eq!(paths.file(false), dir.path().join("msal.cache"));
        std::fs::write(dir.path().join("msal.cache.nocae"), "{}").unwrap();
        assert_eq!(paths.file(false), dir.path().join("msal.cache.nocae"));
        let custom = TokenCachePersistenceOptions::new()
            .name("my-app")
            .directory(dir.path())
            .allow_unencrypted_storage(true)
            .resolve("Test")
            .unwrap();
        assert_eq!(custom.file(false), dir.path().join("my-app.nocae"));
    }

    #[test]
    fn a_name_must_be_a_plain_file_name() {
        for bad in ["", " ", "../x", "a/b", "..", "a\\b"] {
            let err = TokenCachePersistenceOptions::new()
                .name(bad)
                .directory("/tmp")
                .allow_unencrypted_storage(true)
                .resolve("Test")
                .unwrap_err();
            assert!(
                err.message().contains("not a plain file name"),
                "{bad:?}: {err}"
            );
        }
    }
}
