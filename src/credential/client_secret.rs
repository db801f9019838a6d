//! [`ClientSecretCredential`]: a service principal with a client secret.

use std::fmt;
use std::sync::Arc;

use super::env::Vars;
use super::refresh_tokens::{Cached, Redeem, or_aging, usable_access_token};
use super::settings::{Settings, settings_setters};
use super::{Plan, arc_credential_service};
use crate::cache::TokenCache;
use crate::entra::authority::TenantPolicy;
use crate::entra::msal_cache::AccessTokenQuery;
use crate::entra::store::TokenStore;
use crate::entra::token_client::{
    TokenClient, TokenResponse, carries_a_challenge, client_credentials_form,
};
use crate::error::{ConfigError, CredentialError};
use crate::token::{AccessToken, Secret, TokenRequest};

const NAME: &str = "ClientSecretCredential";

/// Authenticates a service principal with a client secret.
///
/// ```no_run
/// use tower_identity::{ClientSecretCredential, CredentialExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let credential = ClientSecretCredential::builder(
///     "72f988bf-86f1-41af-91ab-2d7cd011db47",
///     "00000000-1111-2222-3333-444444444444",
///     std::env::var("CLIENT_SECRET")?,
/// )
/// .additionally_allowed_tenants(["*"])
/// .build()?;
/// let token = credential.get_token(["https://graph.microsoft.com/.default"]).await?;
/// # let _ = token; Ok(()) }
/// ```
///
/// Tokens are cached in memory per tenant and scope set (CAE and non-CAE apart) and renewed
/// in the last 300 s of their life (or at the provider's `refresh_in`); concurrent callers
/// share one request.
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
    /// The shared MSAL cache files (plain, CAE), when persistence was asked for.
    files: Option<(TokenStore, TokenStore)>,
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
            settings: Settings::default(),
        }
    }
}

impl Inner {
    async fn get_token(
        self: &Arc<Self>,
        request: TokenRequest,
    ) -> Result<AccessToken, CredentialError> {
        let plan = Plan::new(NAME, &request, |requested| {
            self.tenants.resolve_required(requested).map(str::to_owned)
        })?;
        let this = Arc::clone(self);
        plan.run(
            &self.cache,
            move |plan| async move { this.acquire(plan).await },
        )
        .await
    }

    /// From the shared cache file when persistence is on and it has a usable token; else
    /// from the token endpoint (recorded in the file when persistence is on).
    async fn acquire(&self, plan: Plan) -> Result<AccessToken, CredentialError> {
        let files = AppTokenFiles::new(
            NAME,
            &self.client,
            self.files.as_ref(),
            &self.client_id,
            &plan,
        );
        files
            .or_request(|| async {
                let form = client_credentials_form(
                    &self.client_id,
                    &self.secret,
                    &plan.scopes,
                    plan.claims.clone(),
                );
                let response = self.client.request(NAME, &plan.tenant, form).await?;
                files.record(&response).await;
                Ok(response.token)
            })
            .await
    }
}

/// The shared MSAL cache file of a confidential client (app-only tokens), when persistence
/// was asked for: where a token is looked for before asking the token endpoint, and where the
/// answer is recorded.
pub(crate) struct AppTokenFiles<'a> {
    name: &'static str,
    client: &'a TokenClient,
    store: Option<&'a TokenStore>,
    client_id: &'a str,
    plan: &'a Plan,
}

impl<'a> AppTokenFiles<'a> {
    /// `files` are the (plain, CAE) stores; the plan picks one.
    pub(crate) fn new(
        name: &'static str,
        client: &'a TokenClient,
        files: Option<&'a (TokenStore, TokenStore)>,
        client_id: &'a str,
        plan: &'a Plan,
    ) -> Self {
        let store = files.map(|(plain, with_cae)| if plan.cae { with_cae } else { plain });
        Self {
            name,
            client,
            store,
            client_id,
            plan,
        }
    }

    /// A usable token from the file, else `request`'s. For a token past its refresh time,
    /// `request`'s first, and the file's when that fails (see [`or_aging`]).
    pub(crate) async fn or_request<F, Fut>(
        &self,
        request: F,
    ) -> Result<AccessToken, CredentialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, CredentialError>>,
    {
        let aging = match self.cached().await {
            Some(Cached::Fresh(token)) => return Ok(token),
            Some(Cached::Aging(token)) => Some(token),
            None => None,
        };
        or_aging(self.name, request().await, aging)
    }

    /// A usable token from the file; never when the request carries a claims challenge (it
    /// asks for a new token). The CAE capability alone, which every CAE request announces, is
    /// no challenge.
    async fn cached(&self) -> Option<Cached> {
        let store = self
            .store
            .filter(|_| !carries_a_challenge(self.plan.claims.as_deref()))?;
        match store.read().await {
            Ok(doc) => {
                let environments = [self.client.authority().host()];
                let query = AccessTokenQuery {
                    home_account_id: Some(None),
                    environments: &environments,
                    client_id: Some(self.client_id),
                    realm: Some(&self.plan.tenant),
                    scopes: &self.plan.scopes,
                };
                usable_access_token(&doc, &query)
            }
            // The file is an optimisation here: an unreadable one is reported, not fatal.
            Err(error) => {
                tracing::warn!(credential = self.name, %error, "token cache file not readable; asking Microsoft Entra ID");
                None
            }
        }
    }

    /// Records the token endpoint's answer in the file, when persistence is on.
    pub(crate) async fn record(&self, response: &TokenResponse) {
        if let Some(store) = self.store {
            let answer = Redeem {
                credential: self.name,
                client: self.client,
                store,
                unwritten: None,
                refusals: None,
                client_id: self.client_id,
                client_secret: None,
                tenant: &self.plan.tenant,
                scopes: &self.plan.scopes,
                claims: None,
                user_grant: false,
            };
            answer.record(response, None).await;
        }
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
    settings: Settings,
}

impl ClientSecretCredentialBuilder {
    settings_setters!(settings; authority_host, additionally_allowed_tenants, http_client,
        cache_options, disable_multitenant_auth, distributed_cache);
}

impl ClientSecretCredentialBuilder {
    /// Validates the settings (tenant id, client id, secret, authority) and builds.
    pub fn build(self) -> Result<ClientSecretCredential, ConfigError> {
        let env_authority = self.settings.env_authority(NAME, &Vars::default())?;
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
        let tenants = self.settings.tenants(NAME, Some(&self.tenant_id))?;
        let client = self.settings.token_client(NAME, env_authority)?;
        let files = self.settings.files(NAME)?;
        Ok(ClientSecretCredential {
            inner: Arc::new(Inner {
                tenants,
                secret: self.client_secret,
                cache: self.settings.token_cache(NAME, &client, &self.client_id),
                client_id: self.client_id,
                client,
                files,
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
            .field("settings", &self.settings)
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
