//! [`AuthorizationCodeCredential`]: a user's authorization code, redeemed once; then the
//! refresh token it brought.
//!
//! ```no_run
//! use tower_identity::{AuthorizationCodeCredential, CredentialExt};
//!
//! # async fn run(code_from_redirect: String) -> Result<(), Box<dyn std::error::Error>> {
//! let credential = AuthorizationCodeCredential::builder(
//!     "contoso.onmicrosoft.com",
//!     "00000000-1111-2222-3333-444444444444",
//!     code_from_redirect,
//!     "http://localhost:8400/callback",
//! )
//! .build()?;
//! let graph = credential.get_token(["https://graph.microsoft.com/User.Read"]).await?;
//! // The refresh token serves any other resource the user consented to.
//! let arm = credential.get_token(["https://management.azure.com/user_impersonation"]).await?;
//! # let _ = (graph, arm); Ok(()) }
//! ```
//!
//! * The first call redeems the code (`client_info=1`), for that call's scopes. The code is
//!   forgotten only after a successful redemption; the account is pinned to the `uid.utid`
//!   of the answer. Concurrent first calls share the one redemption.
//! * Later calls: a cached access token (more than 300 s left), else a refresh token of the
//!   account — **for any scope**: Entra refresh tokens are not bound to the scopes of the
//!   first request (the Python reference wrongly restricts them). A rotated refresh token
//!   replaces the old one; one rejected with `invalid_grant` is dropped from the credential's
//!   own memory, but kept in a cache file (as msal keeps it: other tools may share it).
//! * Tokens live in memory, or in the shared MSAL cache file with
//!   [`cache_options`](AuthorizationCodeCredentialBuilder::cache_options).
//! * No code, no token and no refresh token → an *authentication failed* error saying to
//!   sign in again.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::{BoxFuture, Shared};

use super::refresh_tokens::{Silent, Stores, record};
use super::settings::Settings;
use super::{Plan, arc_credential_service};
use crate::cache::TokenCache;
use crate::entra::authority::{AZURE_AUTHORITY_HOST, TenantPolicy};
use crate::entra::token_client::{TokenClient, authorization_code_form};
use crate::error::{ConfigError, CredentialError};
use crate::refresh::spawn_shared;
use crate::token::{AccessToken, Secret, TokenRequest};

const NAME: &str = "AuthorizationCodeCredential";

/// Authenticates a user with an authorization code from an interactive sign-in.
#[derive(Clone)]
pub struct AuthorizationCodeCredential {
    inner: Arc<Inner>,
}

struct Inner {
    tenants: TenantPolicy,
    client_id: String,
    client_secret: Option<Secret>,
    redirect_uri: String,
    client: TokenClient,
    memory: TokenCache,
    stores: Stores,
    state: Mutex<CodeState>,
}

type Redemption = Shared<BoxFuture<'static, Result<Redeemed, CredentialError>>>;

/// The code, until redeemed; then the account it signed in.
struct CodeState {
    code: Option<Secret>,
    account: Option<String>,
    redemption: Option<Redemption>,
}

/// What the redemption obtained, and for which request.
#[derive(Clone)]
struct Redeemed {
    token: AccessToken,
    tenant: String,
    scopes: Vec<String>,
    cae: bool,
}

enum Step {
    Account(String),
    Join { redemption: Redemption, mine: bool },
}

impl AuthorizationCodeCredential {
    /// Starts a builder; nothing is validated until `build`.
    pub fn builder(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        authorization_code: impl Into<Secret>,
        redirect_uri: impl Into<String>,
    ) -> AuthorizationCodeCredentialBuilder {
        AuthorizationCodeCredentialBuilder {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            code: authorization_code.into(),
            redirect_uri: redirect_uri.into(),
            client_secret: None,
            settings: Settings::default(),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, CodeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn get_token(
        self: &Arc<Self>,
        request: TokenRequest,
    ) -> Result<AccessToken, CredentialError> {
        let plan = Plan::new(NAME, &request, |requested| {
            self.tenants.resolve_required(requested).map(str::to_owned)
        })?;
        let this = Arc::clone(self);
        plan.run(&self.memory, move |plan| async move {
            this.acquire(&plan.tenant, &plan.scopes, plan.cae, plan.claims)
                .await
        })
        .await
    }

    async fn acquire(
        self: Arc<Self>,
        tenant: &str,
        scopes: &[String],
        cae: bool,
        claims: Option<String>,
    ) -> Result<AccessToken, CredentialError> {
        loop {
            let step = {
                let mut state = self.lock();
                match (&state.account, &state.redemption, &state.code) {
                    (Some(account), _, _) => Step::Account(account.clone()),
                    (None, Some(redemption), _) => Step::Join {
                        redemption: redemption.clone(),
                        mine: false,
                    },
                    (None, None, Some(code)) => {
                        let redemption = self.start_redemption(
                            code.clone(),
                            tenant,
                            scopes,
                            cae,
                            claims.clone(),
                        );
                        state.redemption = Some(redemption.clone());
                        Step::Join {
                            redemption,
                            mine: true,
                        }
                    }
                    (None, None, None) => {
                        return Err(sign_in_again(
                            "the authorization code was not redeemed and no account is known",
                        ));
                    }
                }
            };
            match step {
                Step::Join { redemption, mine } => {
                    let redeemed = redemption.await?;
                    let same = redeemed.tenant == tenant
                        && redeemed.scopes == scopes
                        && redeemed.cae == cae;
                    if mine || (same && claims.is_none()) {
                        return Ok(redeemed.token);
                    }
                    // Another request's redemption: the account is pinned now; go on with it.
                }
                Step::Account(account) => {
                    return self
                        .for_account(&account, tenant, scopes, cae, claims)
                        .await;
                }
            }
        }
    }

    /// Redeems the code once, in its own task: a caller giving up does not lose the code's
    /// one use for the others.
    fn start_redemption(
        self: &Arc<Self>,
        code: Secret,
        tenant: &str,
        scopes: &[String],
        cae: bool,
        claims: Option<String>,
    ) -> Redemption {
        let this = Arc::clone(self);
        let (tenant, scopes) = (tenant.to_owned(), scopes.to_vec());
        spawn_shared(NAME, "the code redemption", async move {
            // However the redemption ends (a panic included), later calls must not join it.
            let _done = RedemptionDone(Arc::clone(&this));
            let form = authorization_code_form(
                &this.client_id,
                &code,
                &this.redirect_uri,
                &scopes,
                claims,
                this.client_secret.as_ref(),
            );
            let response = this.client.request(NAME, &tenant, form).await?;
            let (store, _) = this.stores.for_request(cae);
            let account = record(
                NAME,
                &this.client,
                store,
                &this.client_id,
                &tenant,
                &scopes,
                &response,
                None,
            )
            .await;
            if account.is_none() {
                tracing::warn!(
                    "the authorization code's answer named no account: later requests cannot use its refresh token"
                );
            }
            {
                let mut state = this.lock();
                state.code = None;
                state.account = account;
            }
            Ok(Redeemed {
                token: response.token,
                tenant,
                scopes,
                cae,
            })
        })
    }

    /// The pinned account's cached token, else its refresh tokens.
    async fn for_account(
        &self,
        account: &str,
        tenant: &str,
        scopes: &[String],
        cae: bool,
        claims: Option<String>,
    ) -> Result<AccessToken, CredentialError> {
        let silent = Silent {
            credential: NAME,
            client: &self.client,
            stores: &self.stores,
            client_id: &self.client_id,
            client_secret: self.client_secret.as_ref(),
        };
        match silent.token(account, tenant, scopes, cae, claims).await? {
            Some(token) => Ok(token),
            None => Err(sign_in_again(
                "no cached token and no refresh token for the account",
            )),
        }
    }
}

/// Clears the in-flight redemption when dropped.
struct RedemptionDone(Arc<Inner>);

impl Drop for RedemptionDone {
    fn drop(&mut self) {
        self.0.lock().redemption = None;
    }
}

fn sign_in_again(why: &str) -> CredentialError {
    CredentialError::authentication_failed(
        NAME,
        format!("{why}. Sign the user in again to get a new authorization code"),
    )
}

arc_credential_service!(AuthorizationCodeCredential);

impl fmt::Debug for AuthorizationCodeCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct(NAME)
            .field(
                "tenant_id",
                &self.inner.tenants.tenant().unwrap_or_default(),
            )
            .field("client_id", &self.inner.client_id)
            .field("redirect_uri", &self.inner.redirect_uri)
            .field("code_redeemed", &state.code.is_none())
            .field("account", &state.account)
            .field("store", &self.inner.stores.plain)
            .finish_non_exhaustive()
    }
}

/// Settings for an [`AuthorizationCodeCredential`].
pub struct AuthorizationCodeCredentialBuilder {
    tenant_id: String,
    client_id: String,
    code: Secret,
    redirect_uri: String,
    client_secret: Option<Secret>,
    settings: Settings,
}

impl AuthorizationCodeCredentialBuilder {
    /// The authority host, e.g.
    /// [`AZURE_GOVERNMENT`](crate::authority_hosts::AZURE_GOVERNMENT). Default:
    /// `AZURE_AUTHORITY_HOST`, else the public cloud. Must be `https`.
    pub fn authority_host(mut self, host: impl Into<String>) -> Self {
        self.settings.set_authority_host(host.into());
        self
    }

    /// Tenants besides the configured one that requests may name; `"*"` allows any.
    pub fn additionally_allowed_tenants<I, S>(mut self, tenants: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.set_additionally_allowed_tenants(tenants);
        self
    }

    /// The HTTP client for token requests. Default: [`HttpClient::new`](crate::HttpClient::new).
    pub fn http_client(mut self, client: crate::HttpClient) -> Self {
        self.settings.set_http_client(client);
        self
    }

    /// Keep tokens in the shared MSAL token-cache file (see
    /// [`TokenCachePersistenceOptions`](crate::TokenCachePersistenceOptions)): other
    /// processes of the same app, and MSAL-based tools, find them there. Default: tokens are
    /// kept in memory only.
    pub fn cache_options(mut self, options: crate::TokenCachePersistenceOptions) -> Self {
        self.settings.set_cache_options(options);
        self
    }

    /// Ignore per-request tenants and always use the configured one. Default: whether
    /// `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH` is set.
    pub fn disable_multitenant_auth(mut self, disable: bool) -> Self {
        self.settings.set_multitenant_disabled(disable);
        self
    }
}

impl AuthorizationCodeCredentialBuilder {
    /// The client secret, for a confidential (web) application.
    pub fn client_secret(mut self, secret: impl Into<Secret>) -> Self {
        self.client_secret = Some(secret.into());
        self
    }

    /// Validates (tenant, client id, code, redirect URI, authority, cache options) and builds.
    pub fn build(self) -> Result<AuthorizationCodeCredential, ConfigError> {
        let fail = |m: String| ConfigError::new(format!("{NAME}: {m}"));
        if self.client_id.trim().is_empty() {
            return Err(fail("client id is empty".into()));
        }
        if self.code.expose_secret().trim().is_empty() {
            return Err(fail("authorization code is empty".into()));
        }
        if self.redirect_uri.trim().is_empty() {
            return Err(fail(
                "redirect URI is empty; use the one the code was issued for".into(),
            ));
        }
        let tenants = self.settings.tenants(NAME, Some(&self.tenant_id))?;
        let client = self
            .settings
            .token_client(NAME, std::env::var(AZURE_AUTHORITY_HOST).ok())?;
        let stores = Stores::from_settings(&self.settings, NAME)?;
        Ok(AuthorizationCodeCredential {
            inner: Arc::new(Inner {
                tenants,
                client_id: self.client_id,
                client_secret: self.client_secret,
                redirect_uri: self.redirect_uri,
                client,
                memory: TokenCache::new(NAME),
                stores,
                state: Mutex::new(CodeState {
                    code: Some(self.code),
                    account: None,
                    redemption: None,
                }),
            }),
        })
    }
}

impl fmt::Debug for AuthorizationCodeCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCodeCredentialBuilder")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("authorization_code", &self.code)
            .field("redirect_uri", &self.redirect_uri)
            .field("client_secret", &self.client_secret)
            .field("settings", &self.settings)
            .finish()
    }
}
