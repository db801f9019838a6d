//! Settings that most credential builders share (authority, allowed tenants, HTTP client,
//! cache files), their setters, and how a builder turns them into the parts it needs.

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
    pub(crate) authority_host: Option<String>,
    pub(crate) additionally_allowed_tenants: Vec<String>,
    pub(crate) http_client: Option<HttpClient>,
    pub(crate) cache_options: Option<TokenCachePersistenceOptions>,
    pub(crate) multitenant_disabled: Option<bool>,
}

impl Settings {
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
            .map(|options| {
                let paths = options.resolve(name)?;
                Ok((
                    TokenStore::file(paths.file(false)),
                    TokenStore::file(paths.file(true)),
                ))
            })
            .transpose()
    }
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

/// Setters for a builder with a `settings: Settings` field; name the ones that apply.
macro_rules! settings_setters {
    ($builder:ty { $($setter:ident),* $(,)? }) => {
        impl $builder {
            $( $crate::credential::settings::settings_setters!(@ $setter); )*
        }
    };
    (@authority_host) => {
        /// The authority host, e.g.
        /// [`AZURE_GOVERNMENT`](crate::authority_hosts::AZURE_GOVERNMENT). Default:
        /// `AZURE_AUTHORITY_HOST`, else the public cloud. Must be `https`.
        pub fn authority_host(mut self, host: impl Into<String>) -> Self {
            self.settings.authority_host = Some(host.into());
            self
        }
    };
    (@additionally_allowed_tenants) => {
        /// Tenants besides the configured one that requests may name; `"*"` allows any.
        pub fn additionally_allowed_tenants<I, S>(mut self, tenants: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.settings.additionally_allowed_tenants = tenants.into_iter().map(Into::into).collect();
            self
        }
    };
    (@http_client) => {
        /// The HTTP client for token requests. Default: [`HttpClient::new`](crate::HttpClient::new).
        pub fn http_client(mut self, client: $crate::HttpClient) -> Self {
            self.settings.http_client = Some(client);
            self
        }
    };
    (@cache_options) => {
        /// Keep tokens in the shared MSAL token-cache file (see
        /// [`TokenCachePersistenceOptions`](crate::TokenCachePersistenceOptions)): other
        /// processes of the same app, and MSAL-based tools, find them there.
        pub fn cache_options(mut self, options: $crate::TokenCachePersistenceOptions) -> Self {
            self.settings.cache_options = Some(options);
            self
        }
    };
    (@disable_multitenant_auth) => {
        /// Ignore per-request tenants and always use the configured one. Default: whether
        /// `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH` is set.
        pub fn disable_multitenant_auth(mut self, disable: bool) -> Self {
            self.settings.multitenant_disabled = Some(disable);
            self
        }
    };
}
pub(crate) use settings_setters;
