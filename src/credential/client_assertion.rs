//! [`ClientAssertionCredential`]: a service principal proving itself with a client assertion
//! (a signed JWT) that your code supplies, as in federation with another identity provider.
//!
//! ```no_run
//! use tower_identity::{BoxError, ClientAssertionCredential, CredentialExt};
//!
//! # async fn fetch_federated_token() -> Result<String, BoxError> { Ok(String::new()) }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let credential = ClientAssertionCredential::builder(
//!     "72f988bf-86f1-41af-91ab-2d7cd011db47",
//!     "00000000-1111-2222-3333-444444444444",
//!     // Called for a first assertion, then whenever the one in hand is 5 minutes old.
//!     || async { fetch_federated_token().await },
//! )
//! .build()?;
//! let token = credential.get_token(["https://graph.microsoft.com/.default"]).await?;
//! # let _ = token; Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use super::client_secret::AppTokenFiles;
use super::settings::{Settings, settings_setters};
use super::{Plan, arc_credential_service};
use crate::cache::TokenCache;
use crate::entra::authority::{AZURE_AUTHORITY_HOST, TenantPolicy};
use crate::entra::store::TokenStore;
use crate::entra::token_client::{TokenClient, client_assertion_form};
use crate::error::{BoxError, ConfigError, CredentialError};
use crate::redact::{scrub, truncate};
use crate::refresh::spawn_shared;
use crate::token::{AccessToken, Secret, TokenRequest};

const NAME: &str = "ClientAssertionCredential";
/// What errors call the user's source.
const CALLBACK: &str = "the client assertion callback";
/// How long an assertion is reused by default. MSAL makes its own assertions live 10 minutes
/// and makes a new one after 9; a federated token from elsewhere may live shorter (an hour
/// for a Kubernetes service-account token, renewed at 80 %), so 5 minutes leaves room.
pub(crate) const DEFAULT_MAX_ASSERTION_AGE: Duration = Duration::from_secs(5 * 60);
/// The longest error text of a callback kept in a message.
const MAX_CALLBACK_ERROR_CHARS: usize = 300;

/// What a signer needs to make an assertion for one token request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssertionRequest {
    token_endpoint: String,
    client_id: String,
    tenant_id: String,
}

impl AssertionRequest {
    /// The token endpoint the assertion is sent to: a signed assertion's `aud`.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// The client (application) id: a signed assertion's `iss` and `sub`.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The tenant the token is requested from.
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }
}

/// Where a [`ClientAssertionCredential`] gets its assertions.
///
/// Implemented for closures `Fn() -> impl Future<Output = Result<S, E>>` with `S: Into<Secret>`
/// (a `String` will do) and `E: Into<BoxError>`, and through [`AssertionService`] for a tower
/// service from [`AssertionRequest`]. Implement it for a signer that needs the request (the
/// assertion's audience is the token endpoint).
pub trait AssertionSource: Send + Sync + 'static {
    /// A new assertion for `request`.
    fn assertion(&self, request: AssertionRequest) -> BoxFuture<'static, Result<Secret, BoxError>>;
}

impl<F, Fut, S, E> AssertionSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<S, E>> + Send + 'static,
    S: Into<Secret>,
    E: Into<BoxError>,
{
    fn assertion(
        &self,
        _request: AssertionRequest,
    ) -> BoxFuture<'static, Result<Secret, BoxError>> {
        let future = self();
        async move { future.await.map(Into::into).map_err(Into::into) }.boxed()
    }
}

/// A tower service from [`AssertionRequest`] to an assertion, as an [`AssertionSource`]
/// (`tower::service_fn(|request: AssertionRequest| async move { … })` makes one of a closure
/// that needs the request).
#[derive(Clone)]
pub struct AssertionService<S> {
    service: S,
}

impl<S> AssertionService<S> {
    /// Wraps `service`; each assertion is asked of a clone of it.
    pub fn new(service: S) -> Self {
        Self { service }
    }
}

impl<S> fmt::Debug for AssertionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionService").finish_non_exhaustive()
    }
}

impl<S> AssertionSource for AssertionService<S>
where
    S: Service<AssertionRequest> + Clone + Send + Sync + 'static,
    S::Response: Into<Secret>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    fn assertion(&self, request: AssertionRequest) -> BoxFuture<'static, Result<Secret, BoxError>> {
        let service = self.service.clone();
        async move {
            service
                .oneshot(request)
                .await
                .map(Into::into)
                .map_err(Into::into)
        }
        .boxed()
    }
}

/// Authenticates a service principal with a client assertion from your code: a JWT signed by
/// you, or a token from another identity provider trusted through a federated identity
/// credential.
///
/// The request is the client-credentials grant with the assertion as a `jwt-bearer`
/// `client_assertion`. Assertions are kept per token endpoint (a signed assertion's audience)
/// and reused until older than [`max_assertion_age`](ClientAssertionCredentialBuilder::max_assertion_age)
/// (default 5 minutes) or until Microsoft Entra ID refuses a request made with one; then the
/// source is asked again. Concurrent callers share one call of the source, and no lock is held
/// while it runs. A source that fails or panics makes `get_token` fail with *authentication
/// failed* ("the client assertion callback failed: …").
///
/// Tokens are cached in memory per tenant and scope set (CAE and non-CAE apart) and renewed
/// as [`ClientSecretCredential`](crate::ClientSecretCredential)'s are; with
/// [`cache_options`](ClientAssertionCredentialBuilder::cache_options) they are shared through
/// the MSAL token-cache file as well.
#[derive(Clone)]
pub struct ClientAssertionCredential {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    name: &'static str,
    pub(crate) tenants: TenantPolicy,
    pub(crate) client_id: String,
    pub(crate) client: TokenClient,
    cache: TokenCache,
    files: Option<(TokenStore, TokenStore)>,
    assertions: Assertions,
}

/// A source of assertions inside the crate: errors already say what went wrong, under the
/// name of the credential using it.
pub(crate) type Fetch = Arc<
    dyn Fn(AssertionRequest) -> BoxFuture<'static, Result<Secret, CredentialError>> + Send + Sync,
>;

impl ClientAssertionCredential {
    /// Starts a builder. Nothing is validated until [`build`](ClientAssertionCredentialBuilder::build).
    pub fn builder(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        source: impl AssertionSource,
    ) -> ClientAssertionCredentialBuilder {
        let source = Arc::new(source);
        let fetch: Fetch = Arc::new(move |request| call_source(&source, request));
        ClientAssertionCredentialBuilder {
            name: NAME,
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            fetch,
            max_assertion_age: DEFAULT_MAX_ASSERTION_AGE,
            settings: Settings::default(),
        }
    }
}

/// Calls the user's source; its error or panic becomes *authentication failed* naming it, the
/// text scrubbed (a careless source may put a token in its error).
fn call_source<A: AssertionSource>(
    source: &Arc<A>,
    request: AssertionRequest,
) -> BoxFuture<'static, Result<Secret, CredentialError>> {
    let source = Arc::clone(source);
    async move {
        let outcome = AssertUnwindSafe(async move { source.assertion(request).await })
            .catch_unwind()
            .await;
        let failed = |what: String| {
            let text = truncate(&scrub(&what, &[]), MAX_CALLBACK_ERROR_CHARS);
            Err(CredentialError::authentication_failed(
                NAME,
                format!("{CALLBACK} failed: {text}"),
            ))
        };
        match outcome {
            Ok(Ok(assertion)) if assertion.expose_secret().trim().is_empty() => {
                failed("it returned an empty assertion".into())
            }
            Ok(Ok(assertion)) => Ok(assertion),
            Ok(Err(error)) => failed(error_chain(error.as_ref())),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                failed(format!("it panicked: {message}"))
            }
        }
    }
    .boxed()
}

/// An error and its sources, `: `-joined.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Inner {
    async fn get_token(
        self: &Arc<Self>,
        request: TokenRequest,
    ) -> Result<AccessToken, CredentialError> {
        let plan = Plan::new(self.name, &request, |requested| {
            self.tenants.resolve_required(requested).map(str::to_owned)
        })?;
        let this = Arc::clone(self);
        plan.run(
            &self.cache,
            move |plan| async move { this.acquire(plan).await },
        )
        .await
    }

    /// From the shared cache file when persistence is on and it has a usable token (the source
    /// is not asked then); else from the token endpoint with an assertion.
    async fn acquire(&self, plan: Plan) -> Result<AccessToken, CredentialError> {
        let files = AppTokenFiles::new(
            self.name,
            &self.client,
            self.files.as_ref(),
            &self.client_id,
            &plan,
        );
        if let Some(token) = files.cached().await {
            return Ok(token);
        }
        let request = AssertionRequest {
            token_endpoint: self.client.authority().token_endpoint(&plan.tenant),
            client_id: self.client_id.clone(),
            tenant_id: plan.tenant.clone(),
        };
        let key = request.token_endpoint.clone();
        let assertion = self.assertions.get(request).await?;
        let form = client_assertion_form(
            &self.client_id,
            &assertion,
            &plan.scopes,
            plan.claims.clone(),
        );
        match self.client.request(self.name, &plan.tenant, form).await {
            Ok(response) => {
                files.record(&response).await;
                Ok(response.token)
            }
            Err(error) => {
                // Refused: most often an assertion expired or not yet valid (AADSTS700024),
                // which a new one may fix; the next attempt asks the source again.
                if error.is_authentication_failed() && error.status().is_some() {
                    self.assertions.forget(&key, &assertion);
                }
                Err(error)
            }
        }
    }
}

/// The assertions in hand, one per token endpoint, and the source's calls in flight.
struct Assertions {
    name: &'static str,
    fetch: Fetch,
    max_age: Duration,
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

type Flight = Shared<BoxFuture<'static, Result<Secret, CredentialError>>>;

#[derive(Default)]
struct Slot {
    held: Option<(Secret, Instant)>,
    flight: Option<(u64, Flight)>,
    flights: u64,
}

fn lock(slots: &Mutex<HashMap<String, Slot>>) -> MutexGuard<'_, HashMap<String, Slot>> {
    // Every change is a plain assignment: a panic elsewhere cannot leave a slot torn.
    slots.lock().unwrap_or_else(|e| e.into_inner())
}

impl Assertions {
    fn new(name: &'static str, fetch: Fetch, max_age: Duration) -> Self {
        Self {
            name,
            fetch,
            max_age,
            slots: Arc::default(),
        }
    }

    /// The assertion in hand for the request's endpoint if it is younger than the maximum
    /// age; else the result of one call of the source, shared by every caller meanwhile.
    async fn get(&self, request: AssertionRequest) -> Result<Secret, CredentialError> {
        let flight = {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(request.token_endpoint.clone()).or_default();
            if let Some((assertion, fetched_at)) = &slot.held {
                if fetched_at.elapsed() < self.max_age {
                    return Ok(assertion.clone());
                }
            }
            match &slot.flight {
                Some((_, flight)) => flight.clone(),
                None => {
                    slot.flights = slot.flights.wrapping_add(1);
                    let id = slot.flights;
                    let flight = self.start(request, id);
                    slot.flight = Some((id, flight.clone()));
                    flight
                }
            }
        };
        flight.await
    }

    /// Spawns one call of the source; its task records the outcome, so callers that give up
    /// do not lose it for the others.
    fn start(&self, request: AssertionRequest, id: u64) -> Flight {
        let guard = FlightGuard {
            slots: Arc::clone(&self.slots),
            key: request.token_endpoint.clone(),
            id,
        };
        let call = (self.fetch)(request);
        spawn_shared(self.name, CALLBACK, async move {
            // Aged from the moment it was asked for: it cannot be younger than that.
            let asked_at = Instant::now();
            let outcome = call.await;
            if let Ok(assertion) = &outcome {
                guard.record(assertion.clone(), asked_at);
            }
            drop(guard);
            outcome
        })
    }

    /// Drops `assertion` if it is still the one in hand for `key`.
    fn forget(&self, key: &str, assertion: &Secret) {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get_mut(key) {
            if slot
                .held
                .as_ref()
                .is_some_and(|(held, _)| held == assertion)
            {
                slot.held = None;
            }
        }
    }
}

/// Ends a flight however its task ends (a panic, a runtime shutting down), so a dead one is
/// never joined.
struct FlightGuard {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    key: String,
    id: u64,
}

impl FlightGuard {
    fn record(&self, assertion: Secret, fetched_at: Instant) {
        if let Some(slot) = lock(&self.slots).get_mut(&self.key) {
            slot.held = Some((assertion, fetched_at));
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if let Some(slot) = lock(&self.slots).get_mut(&self.key) {
            if slot.flight.as_ref().is_some_and(|(id, _)| *id == self.id) {
                slot.flight = None;
            }
        }
    }
}

arc_credential_service!(ClientAssertionCredential);

impl fmt::Debug for ClientAssertionCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(NAME)
            .field(
                "tenant_id",
                &self.inner.tenants.tenant().unwrap_or_default(),
            )
            .field("client_id", &self.inner.client_id)
            .field("max_assertion_age", &self.inner.assertions.max_age)
            .field("authority", &self.inner.client.authority().as_str())
            .finish_non_exhaustive()
    }
}

/// Settings for a [`ClientAssertionCredential`].
pub struct ClientAssertionCredentialBuilder {
    /// The name in errors and traces: a credential built on this one gives its own.
    name: &'static str,
    tenant_id: String,
    client_id: String,
    fetch: Fetch,
    max_assertion_age: Duration,
    settings: Settings,
}

settings_setters!(ClientAssertionCredentialBuilder {
    authority_host,
    additionally_allowed_tenants,
    http_client,
    cache_options,
    disable_multitenant_auth,
});

impl ClientAssertionCredentialBuilder {
    /// How long an assertion is reused before the source is asked for a new one. Default:
    /// 5 minutes. Keep it well below the lifetime of the assertions the source returns.
    pub fn max_assertion_age(mut self, age: Duration) -> Self {
        self.max_assertion_age = age;
        self
    }

    /// For a credential built on this one: its name (in errors and traces) and settings.
    pub(crate) fn for_credential(mut self, name: &'static str, settings: Settings) -> Self {
        self.name = name;
        self.settings = settings;
        self
    }

    /// Validates the settings (tenant id, client id, authority) and builds.
    pub fn build(self) -> Result<ClientAssertionCredential, ConfigError> {
        let env_authority = std::env::var(AZURE_AUTHORITY_HOST).ok();
        self.build_with_env_authority(env_authority)
    }

    pub(crate) fn build_with_env_authority(
        self,
        env_authority: Option<String>,
    ) -> Result<ClientAssertionCredential, ConfigError> {
        let name = self.name;
        let fail = |m: &str| ConfigError::new(format!("{name}: {m}"));
        if self.client_id.trim().is_empty() {
            return Err(fail("client id is empty; use the app's (client) id"));
        }
        if self.max_assertion_age.is_zero() {
            return Err(fail(
                "max_assertion_age is zero; every token request would ask for a new assertion \
                 even while others wait for one",
            ));
        }
        let tenants = self.settings.tenants(name, Some(&self.tenant_id))?;
        let client = self.settings.token_client(name, env_authority)?;
        let files = self.settings.files(name)?;
        Ok(ClientAssertionCredential {
            inner: Arc::new(Inner {
                name,
                tenants,
                client_id: self.client_id,
                client,
                cache: TokenCache::new(name),
                files,
                assertions: Assertions::new(name, self.fetch, self.max_assertion_age),
            }),
        })
    }
}

impl fmt::Debug for ClientAssertionCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAssertionCredentialBuilder")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("max_assertion_age", &self.max_assertion_age)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
