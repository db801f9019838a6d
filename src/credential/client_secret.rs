//! [`ClientSecretCredential`]: a service principal authenticating with a client secret
//! (OAuth 2.0 client credentials grant).
//!
//! ```no_run
//! use tower_identity::{ClientSecretCredential, CredentialExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let credential = ClientSecretCredential::builder(
//!     "72f988bf-86f1-41af-91ab-2d7cd011db47",
//!     "00000000-1111-2222-3333-444444444444",
//!     std::env::var("CLIENT_SECRET")?,
//! )
//! .additionally_allowed_tenants(["*"])
//! .build()?;
//! let token = credential.get_token(["https://graph.microsoft.com/.default"]).await?;
//! # let _ = token; Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use super::arc_credential_service;
use crate::cache::{CacheKey, TokenCache};
use crate::entra::authority::{AZURE_AUTHORITY_HOST, Authority, TenantPolicy};
use crate::entra::token_client::{Form, TokenClient, claims_field, scope_field};
use crate::error::{ConfigError, CredentialError};
use crate::token::{AccessToken, Secret, TokenRequest};
use crate::transport::HttpClient;

const NAME: &str = "ClientSecretCredential";

/// Authenticates a service principal with a client secret.
///
/// Tokens are cached in memory per tenant and scope set (CAE and non-CAE apart) and renewed
/// under the rules of [`crate::refresh`]: concurrent callers share one request.
#[derive(Clone)]
pub struct ClientSecretCredential {
    inner: Arc<Inner>,
}

struct Inner {
    tenants: TenantPolicy,
    client_id: String,
    secret: Secret,
    client: TokenClient,
    cache: TokenCache,
}

impl ClientSecretCredential {
    /// Starts a builder. Nothing is validated until [`build`](ClientSecretCredentialBuilder::build).
    pub fn builder(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<Secret>,
    ) -> ClientSecretCredentialBuilder {
        ClientSecretCredentialBuilder {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            authority_host: None,
            additionally_allowed_tenants: Vec::new(),
            http_client: None,
            multitenant_disabled: None,
        }
    }
}

impl Inner {
    async fn get_token(
        self: &Arc<Self>,
        request: TokenRequest,
    ) -> Result<AccessToken, CredentialError> {
        request.validate(NAME)?;
        let tenant = self
            .tenants
            .resolve_required(request.requested_tenant())
            .map_err(|m| CredentialError::invalid_request(NAME, m))?
            .to_owned();
        let claims = claims_field(request.claims_json(), request.is_cae())
            .map_err(|m| CredentialError::invalid_request(NAME, m))?;
        let key = CacheKey::new(&tenant, request.scopes(), request.is_cae());
        let bypass = request.claims_json().is_some();
        let this = Arc::clone(self);
        let scopes = scope_field(request.scopes());
        self.cache
            .get_or_acquire(key, bypass, move || async move {
                let form = Form::new()
                    .field("client_id", this.client_id.as_str())
                    .secret("client_secret", &this.secret)
                    .field("grant_type", "client_credentials")
                    .field("scope", scopes)
                    .optional("claims", claims);
                Ok(this.client.request(NAME, &tenant, form).await?.token)
            })
            .await
    }
}

arc_credential_service!(ClientSecretCredential);

impl fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(NAME)
            .field(
                "tenant_id",
                &self.inner.tenants.tenant().unwrap_or_default(),
            )
            .field("client_id", &self.inner.client_id)
            .field("client_secret", &self.inner.secret)
            .field("authority", &self.inner.client.authority().as_str())
            .finish()
    }
}

/// Settings for a [`ClientSecretCredential`].
pub struct ClientSecretCredentialBuilder {
    tenant_id: String,
    client_id: String,
    client_secret: Secret,
    authority_host: Option<String>,
    additionally_allowed_tenants: Vec<String>,
    http_client: Option<HttpClient>,
    multitenant_disabled: Option<bool>,
}

impl ClientSecretCredentialBuilder {
    /// The authority host, e.g. [`AZURE_GOVERNMENT`](crate::authority_hosts::AZURE_GOVERNMENT).
    /// Default: `AZURE_AUTHORITY_HOST`, else the public cloud. Must be `https`.
    pub fn authority_host(mut self, host: impl Into<String>) -> Self {
        self.authority_host = Some(host.into());
        self
    }

    /// Tenants besides the configured one that requests may name; `"*"` allows any.
    pub fn additionally_allowed_tenants<I, S>(mut self, tenants: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.additionally_allowed_tenants = tenants.into_iter().map(Into::into).collect();
        self
    }

    /// The HTTP client for token requests. Default: [`HttpClient::new`].
    pub fn http_client(mut self, client: HttpClient) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Ignore per-request tenants and always use the configured one. Default: whether
    /// `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH` is set.
    pub fn disable_multitenant_auth(mut self, disable: bool) -> Self {
        self.multitenant_disabled = Some(disable);
        self
    }

    /// Validates the settings (tenant id, client id, secret, authority) and builds.
    pub fn build(self) -> Result<ClientSecretCredential, ConfigError> {
        let env_authority = std::env::var(AZURE_AUTHORITY_HOST).ok();
        self.build_with_env_authority(env_authority)
    }

    pub(crate) fn build_with_env_authority(
        self,
        env_authority: Option<String>,
    ) -> Result<ClientSecretCredential, ConfigError> {
        let fail = |m: String| ConfigError::new(format!("{NAME}: {m}"));
        if self.client_id.trim().is_empty() {
            return Err(fail("client id is empty; use the app's (client) id".into()));
        }
        if self.client_secret.expose_secret().is_empty() {
            return Err(fail(
                "client secret is empty; use the secret's value".into(),
            ));
        }
        let disabled = self
            .multitenant_disabled
            .unwrap_or_else(TenantPolicy::multitenant_disabled_by_env);
        let tenants = TenantPolicy::new(
            Some(&self.tenant_id),
            self.additionally_allowed_tenants,
            disabled,
        )
        .map_err(|e| fail(e.to_string()))?;
        let authority = Authority::resolve(self.authority_host.as_deref(), env_authority)
            .map_err(|e| fail(e.to_string()))?;
        let http = self.http_client.unwrap_or_default();
        Ok(ClientSecretCredential {
            inner: Arc::new(Inner {
                tenants,
                client_id: self.client_id,
                secret: self.client_secret,
                client: TokenClient::new(http, authority),
                cache: TokenCache::default(),
            }),
        })
    }
}

impl fmt::Debug for ClientSecretCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretCredentialBuilder")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("authority_host", &self.authority_host)
            .field(
                "additionally_allowed_tenants",
                &self.additionally_allowed_tenants,
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> ClientSecretCredentialBuilder {
        ClientSecretCredential::builder("contoso", "client", "super-secret-value")
    }

    #[test]
    fn build_validates_every_setting() {
        let cases: [(ClientSecretCredentialBuilder, &str); 5] = [
            (
                ClientSecretCredential::builder("bad tenant", "c", "s"),
                "only ASCII letters",
            ),
            (
                ClientSecretCredential::builder("t", " ", "s"),
                "client id is empty",
            ),
            (
                ClientSecretCredential::builder("t", "c", ""),
                "client secret is empty",
            ),
            (
                builder().authority_host("http://login.microsoftonline.com"),
                "https",
            ),
            (
                builder().additionally_allowed_tenants(["ok", "no/pe"]),
                "additionally_allowed_tenants",
            ),
        ];
        for (b, want) in cases {
            let err = b.build_with_env_authority(None).unwrap_err();
            assert!(err.message().starts_with(NAME), "{err}");
            assert!(err.message().contains(want), "{err} / {want}");
        }
    }

    #[test]
    fn debug_redacts_the_secret() {
        let b = builder();
        assert!(!format!("{b:?}").contains("super-secret-value"));
        let c = b.build_with_env_authority(None).unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("super-secret-value"), "{text}");
        assert!(text.contains("https://login.microsoftonline.com"), "{text}");
    }

    #[test]
    fn env_authority_applies_unless_explicit() {
        let env = Some("login.microsoftonline.us".to_owned());
        let c = builder().build_with_env_authority(env.clone()).unwrap();
        assert_eq!(
            c.inner.client.authority().as_str(),
            "https://login.microsoftonline.us"
        );
        let c = builder()
            .authority_host("https://login.chinacloudapi.cn")
            .build_with_env_authority(env)
            .unwrap();
        assert_eq!(
            c.inner.client.authority().as_str(),
            "https://login.chinacloudapi.cn"
        );
    }
}
