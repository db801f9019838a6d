//! [`TokenCachePersistenceOptions`]: where a credential keeps tokens across processes.

use std::path::PathBuf;

#[cfg(all(feature = "keyring", target_os = "linux"))]
use crate::entra::persistence::KeyringTarget;
use crate::error::ConfigError;

/// The default cache name: the file is `<name>.nocae` / `<name>.cae`.
pub(crate) const DEFAULT_CACHE_NAME: &str = "msal.cache";
const DIRECTORY: &str = ".IdentityService";

/// Where and how tokens are persisted: the shared MSAL cache (the one Visual Studio,
/// msal-extensions and azure-identity share; not Azure CLI's, which 2.30 and later keeps in
/// `~/.azure/msal_token_cache.json`), encrypted in the OS keyring where this build has one,
/// else — only if
/// [`allow_unencrypted_storage`](Self::allow_unencrypted_storage) allows it — the plaintext
/// file `<directory>/<name>.nocae` (and `.cae`).
///
/// ```no_run
/// use tower_identity::{ClientSecretCredential, TokenCachePersistenceOptions};
///
/// # fn main() -> Result<(), tower_identity::ConfigError> {
/// // Encrypted in the Secret Service (Linux, `keyring` feature); the plaintext file only if
/// // there is no usable keyring.
/// let credential = ClientSecretCredential::builder("my-tenant", "my-app-id", "my-secret")
///     .cache_options(TokenCachePersistenceOptions::new().allow_unencrypted_storage(true))
///     .build()?;
/// # drop(credential);
/// # Ok(()) }
/// ```
///
/// # Where the cache lives
///
/// * **Encrypted, in the Secret Service** (Linux with the `keyring` feature): one item per
///   document in the default collection, stored as Python msal-extensions'
///   `LibsecretPersistence` stores it for azure-identity (schema `<name>.nocae` /
///   `<name>.cae`, attribute `MsalClientID`, label `MSALCache`), so the two share it. The
///   file `~/.IdentityService/<name>.nocae` is then only a *signal file*, touched on every
///   write, and `<file>.lockfile` orders writers as for the plaintext file.
/// * **Plaintext**, `~/.IdentityService/<name>.nocae` for ordinary tokens and `<name>.cae` for
///   tokens requested with the CAE capability (`<name>` defaults to `msal.cache`; a file named
///   just `msal.cache`, written by older tools, is read while `msal.cache.nocae` does not
///   exist, and never written: a sign-in's first write (authorization code, device code, the
///   client credentials) creates `msal.cache.nocae` from it, while
///   [`SharedTokenCacheCredential`](crate::SharedTokenCacheCredential), which only reads
///   another tool's sign-in, writes nothing until that file exists): JSON with mode `0600`, written under msal-extensions' lock-file protocol
///   (`<file>.lockfile`), so that concurrent writers in other processes lose nothing.
///
/// Encrypted storage is preferred. Whether a Secret Service is usable (a D-Bus session bus, a
/// service on it, its default collection unlocked) is found out on first use; when it is not,
/// the plaintext file is used if [`allow_unencrypted_storage`](TokenCachePersistenceOptions::allow_unencrypted_storage)
/// allowed it, else each use fails with an error naming what is missing. Where this build has
/// no encrypted storage at all — without the `keyring` feature, and on macOS (Keychain) and
/// Windows (DPAPI), which are not implemented yet — building a credential with these options
/// fails with a [`ConfigError`] unless the plaintext file is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenCachePersistenceOptions {
    name: String,
    directory: Option<PathBuf>,
    allow_unencrypted_storage: bool,
    #[cfg(all(feature = "keyring", target_os = "linux"))]
    secret_service_bus: Option<String>,
}

impl Default for TokenCachePersistenceOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenCachePersistenceOptions {
    /// The shared cache (`msal.cache`) in `~/.IdentityService`, unencrypted storage not
    /// allowed (the reference's default; see [where the cache lives](Self#where-the-cache-lives)).
    pub fn new() -> Self {
        Self {
            name: DEFAULT_CACHE_NAME.to_owned(),
            directory: None,
            allow_unencrypted_storage: false,
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            secret_service_bus: None,
        }
    }

    /// A cache of its own, `<name>.nocae` / `<name>.cae`, instead of the shared one.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Another directory than `~/.IdentityService` (for tests, containers, service accounts):
    /// the plaintext files, or the signal and lock files of the encrypted cache.
    pub fn directory(mut self, directory: impl Into<PathBuf>) -> Self {
        self.directory = Some(directory.into());
        self
    }

    /// Allow the plaintext file (mode `0600`) where there is no encrypted storage: no usable
    /// Secret Service, or a build or platform without one. Encrypted storage is still used
    /// wherever it works.
    pub fn allow_unencrypted_storage(mut self, allow: bool) -> Self {
        self.allow_unencrypted_storage = allow;
        self
    }

    /// The D-Bus session bus on which to find the Secret Service, instead of
    /// `DBUS_SESSION_BUS_ADDRESS`: an address such as `unix:path=/run/user/1000/bus`, for
    /// services that run a bus of their own.
    #[cfg(all(feature = "keyring", target_os = "linux"))]
    pub fn secret_service_bus(mut self, address: impl Into<String>) -> Self {
        self.secret_service_bus = Some(address.into());
        self
    }

    /// Whether the plaintext file may be used.
    pub fn unencrypted_storage_allowed(&self) -> bool {
        self.allow_unencrypted_storage
    }

    /// Checks the settings and resolves the directory.
    pub(crate) fn resolve(&self, credential: &str) -> Result<CachePaths, ConfigError> {
        if !cfg!(all(feature = "keyring", target_os = "linux")) && !self.allow_unencrypted_storage {
            let missing = if cfg!(target_os = "linux") {
                "this build has none: enable tower-identity's `keyring` feature to keep the cache \
                 in the Secret Service"
            } else {
                "which tower-identity does not implement on this platform yet (macOS Keychain \
                 and Windows DPAPI are planned)"
            };
            return Err(ConfigError::new(format!(
                "{credential}: persistent token caching needs encrypted storage, {missing}; or \
                 call TokenCachePersistenceOptions::allow_unencrypted_storage(true) to keep \
                 tokens in a plaintext file readable only by you (mode 0600)"
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
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            allow_unencrypted_storage: self.allow_unencrypted_storage,
            #[cfg(all(feature = "keyring", target_os = "linux"))]
            secret_service_bus: self.secret_service_bus.clone(),
        })
    }
}

/// The storage of one cache document (ordinary or CAE).
#[derive(Clone, Debug)]
pub(crate) enum CacheLocation {
    /// The plaintext file (builds without encrypted storage), and the legacy file read in its
    /// place while it does not exist.
    #[cfg(not(all(feature = "keyring", target_os = "linux")))]
    File {
        path: PathBuf,
        legacy: Option<PathBuf>,
    },
    /// The Secret Service, with the file as its signal file (and fallback, if allowed).
    #[cfg(all(feature = "keyring", target_os = "linux"))]
    Keyring(KeyringTarget),
}

/// Where one cache's documents live.
#[derive(Clone, Debug)]
pub(crate) struct CachePaths {
    directory: PathBuf,
    name: String,
    #[cfg(all(feature = "keyring", target_os = "linux"))]
    allow_unencrypted_storage: bool,
    #[cfg(all(feature = "keyring", target_os = "linux"))]
    secret_service_bus: Option<String>,
}

impl CachePaths {
    /// The storage of the ordinary (`cae == false`) or CAE document.
    pub(crate) fn file(&self, cae: bool) -> CacheLocation {
        #[cfg(all(feature = "keyring", target_os = "linux"))]
        return CacheLocation::Keyring(KeyringTarget {
            signal: self.current(cae),
            bus: self.secret_service_bus.clone(),
            fallback: self.allow_unencrypted_storage,
            legacy: self
                .allow_unencrypted_storage
                .then(|| self.legacy(cae))
                .flatten(),
        });
        // `resolve` made sure that the file is allowed.
        #[cfg(not(all(feature = "keyring", target_os = "linux")))]
        CacheLocation::File {
            path: self.current(cae),
            legacy: self.legacy(cae),
        }
    }

    /// The legacy `msal.cache` that older tools (azure-identity before 1.16) wrote instead of
    /// `msal.cache.nocae`: for the default name's ordinary document only. It is only ever
    /// read, while `msal.cache.nocae` does not exist; the first write creates that from it.
    fn legacy(&self, cae: bool) -> Option<PathBuf> {
        (!cae && self.name == DEFAULT_CACHE_NAME).then(|| self.directory.join(DEFAULT_CACHE_NAME))
    }

    /// `<name>.cae` or `<name>.nocae`.
    fn current(&self, cae: bool) -> PathBuf {
        let suffix = if cae { "cae" } else { "nocae" };
        self.directory.join(format!("{}.{suffix}", self.name))
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
    use std::path::Path;

    use super::*;

    #[cfg(not(all(feature = "keyring", target_os = "linux")))]
    #[test]
    fn without_encrypted_storage_the_file_must_be_allowed_explicitly() {
        let err = TokenCachePersistenceOptions::new()
            .directory("/tmp/x")
            .resolve("ClientSecretCredential")
            .unwrap_err();
        let expected = if cfg!(target_os = "linux") {
            "enable tower-identity's `keyring` feature"
        } else {
            "not implement on this platform yet"
        };
        assert!(err.message().contains(expected), "{err}");
        assert!(
            err.message().contains("allow_unencrypted_storage(true)"),
            "{err}"
        );
        let allowed = TokenCachePersistenceOptions::new()
            .directory("/tmp/x")
            .allow_unencrypted_storage(true)
            .resolve("Test")
            .unwrap();
        assert!(matches!(
            allowed.file(true),
            CacheLocation::File { path, legacy: None } if path == Path::new("/tmp/x/msal.cache.cae")
        ));
        assert!(matches!(
            allowed.file(false),
            CacheLocation::File { path, legacy: Some(legacy) }
                if path == Path::new("/tmp/x/msal.cache.nocae") && legacy == Path::new("/tmp/x/msal.cache")
        ));
    }

    #[cfg(all(feature = "keyring", target_os = "linux"))]
    #[test]
    fn the_keyring_is_the_storage_and_the_file_its_signal_and_allowed_fallback() {
        let encrypted_only = TokenCachePersistenceOptions::new()
            .directory("/tmp/x")
            .secret_service_bus("unix:path=/tmp/bus")
            .resolve("Test")
            .unwrap();
        let CacheLocation::Keyring(target) = encrypted_only.file(false);
        assert_eq!(target.signal, Path::new("/tmp/x/msal.cache.nocae"));
        assert_eq!(target.bus.as_deref(), Some("unix:path=/tmp/bus"));
        assert!(!target.fallback);
        assert_eq!(target.legacy, None, "the legacy file is a plaintext one");
        let with_fallback = TokenCachePersistenceOptions::new()
            .name("app")
            .directory("/tmp/x")
            .allow_unencrypted_storage(true)
            .resolve("Test")
            .unwrap();
        let CacheLocation::Keyring(target) = with_fallback.file(true);
        assert_eq!(target.signal, Path::new("/tmp/x/app.cae"));
        assert_eq!(target.bus, None);
        assert!(target.fallback);
        assert_eq!(target.legacy, None);
        let default_name = TokenCachePersistenceOptions::new()
            .directory("/tmp/x")
            .allow_unencrypted_storage(true)
            .resolve("Test")
            .unwrap();
        let CacheLocation::Keyring(target) = default_name.file(false);
        assert!(target.fallback);
        assert_eq!(
            target.legacy.as_deref(),
            Some(Path::new("/tmp/x/msal.cache"))
        );
    }

    #[test]
    fn files_are_named_per_cae_and_the_legacy_file_is_the_default_ordinary_documents_only() {
        let dir = tempfile::tempdir().unwrap();
        let paths = TokenCachePersistenceOptions::new()
            .directory(dir.path())
            .allow_unencrypted_storage(true)
            .resolve("Test")
            .unwrap();
        assert_eq!(paths.current(true), dir.path().join("msal.cache.cae"));
        assert_eq!(paths.current(false), dir.path().join("msal.cache.nocae"));
        assert!(paths.legacy(true).is_none());
        assert_eq!(paths.legacy(false), Some(dir.path().join("msal.cache")));
        let custom = TokenCachePersistenceOptions::new()
            .name("my-app")
            .directory(dir.path())
            .allow_unencrypted_storage(true)
            .resolve("Test")
            .unwrap();
        assert_eq!(custom.current(false), dir.path().join("my-app.nocae"));
        assert!(custom.legacy(false).is_none());
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
