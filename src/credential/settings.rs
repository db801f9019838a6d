//! Settings that most credential builders share (authority, allowed tenants, HTTP client,
//! cache files), and how a builder turns them into the parts it needs.
//!
//! Each builder writes its own public setters, one line each, that call the `set_*` methods
//! here; a setter has the same name, signature and doc text on every builder that has it (a
//! sentence is added where a credential uses the value differently).

use std::fmt;

use super::cache_options::TokenCachePersistenceOptions;
use crate::entra::authority::{Authority, TenantPolicy};
use crate::entra::store::TokenStore;
use crate::entra::token_client::TokenClient;
use crate::error::ConfigError;
use crate::transport::HttpClient;

/// The shared settings of a builder.
#[derive(Clone, Default)]
pub(crate) struct Settings {
    authority_host: Option<String>,
    additionally_allowed_tenants: Vec<String>,
    http_client: Option<HttpClient>,
    cache_options: Option<TokenCachePersistenceOptions>,
    multitenant_disabled: Option<bool>,
}

impl Settings {
    pub(crate) fn set_authority_host(&mut self, host: String) {
        self.authority_host = Some(host);
    }

    pub(crate) fn set_additionally_allowed_tenants<I, S>(&mut self, tenants: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.additionally_allowed_tenants = tenants.into_iter().map(Into::into).collect();
    }

    pub(crate) fn set_http_client(&mut self, client: HttpClient) {
        self.http_client = Some(client);
    }

    pub(crate) fn set_cache_options(&mut self, options: TokenCachePersistenceOptions) {
        self.cache_options = Some(options);
    }

    pub(crate) fn set_multitenant_disabled(&mut self, disabled: bool) {
        self.multitenant_disabled = Some(disabled);
    }

    /// The authority host given to the builder, if any.
    pub(crate) fn authority_host(&self) -> Option<&str> {
        self.authority_host.as_deref()
    }

    /// The tenant rules: the configured tenant (validated), the allowed list, and whether
    /// per-request tenants are ignored (default: `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH`).
    pub(crate) fn tenants(
        &self,
        name: &str,
        tenant: Option<&str>,
    ) -> Result<TenantPolicy, ConfigError> {
        let disabled = self
            .multitenant_disabled
            .unwrap_or_else(TenantPolicy::multitenant_disabled_by_env);
        TenantPolicy::new(tenant, self.additionally_allowed_tenants.clone(), disabled)
            .map_err(|e| ConfigError::new(format!("{name}: {e}")))
    }

    /// The token client: the explicit authority, else `env_authority` (the value of
    /// `AZURE_AUTHORITY_HOST`), else the public cloud; the HTTP client given, else the default.
    pub(crate) fn token_client(
        &self,
        name: &str,
        env_authority: Option<String>,
    ) -> Result<TokenClient, ConfigError> {
        let authority = Authority::resolve(self.authority_host.as_deref(), env_authority)
            .map_err(|e| ConfigError::new(format!("{name}: {e}")))?;
        Ok(TokenClient::new(
            self.http_client.clone().unwrap_or_default(),
            authority,
        ))
    }

    /// The cache files (ordinary, CAE) when cache options were given.
    pub(crate) fn files(
        &self,
        name: &str,
    ) -> Result<Option<(TokenStore, TokenStore)>, ConfigError> {
        self.cache_options
            .as_ref()
            .map(|options| stores(name, options))
            .transpose()
    }

    /// The cache files (ordinary, CAE) of the cache options given, else of `default`.
    pub(crate) fn files_or(
        &self,
        name: &str,
        default: impl FnOnce() -> TokenCachePersistenceOptions,
    ) -> Result<(TokenStore, TokenStore), ConfigError> {
        match &self.cache_options {
            Some(options) => stores(name, options),
            None => stores(name, &default()),
        }
    }
}

fn stores(
    name: &str,
    options: &TokenCachePersistenceOptions,
) -> Result<(TokenStore, TokenStore), ConfigError> {
    let paths = options.resolve(name)?;
    Ok((
        TokenStore::file(paths.file(false)),
        TokenStore::file(paths.file(true)),
    ))
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("authority_host", &self.authority_host)
            .field(
                "additionally_allowed_tenants",
                &self.additionally_allowed_tenants,
            )
            .field("cache_options", &self.cache_options)
            .finish_non_exhaustive()
    }
}
