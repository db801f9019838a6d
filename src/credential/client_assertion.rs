//! [`ClientAssertionCredential`]: a client assertion your code supplies.

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::StatusCode;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use super::client_secret::AppTokenFiles;
use super::env::Vars;
use super::settings::{Settings, settings_setters};
use super::{Plan, arc_credential_service};
use crate::cache::TokenCache;
use crate::entra::authority::TenantPolicy;
use crate::entra::store::TokenStore;
use crate::entra::token_client::{TokenClient, client_assertion_form};
use crate::error::{BoxError, Cause, ConfigError, CredentialError};
use crate::flight::{SingleFlight, WhenAbandoned, deferred};
use crate::redact::{MAX_QUOTED_CHARS, scrub, truncate};
use crate::token::{AccessToken, Secret, TokenRequest, unix_now};

const NAME: &str = "ClientAssertionCredential";
/// What errors call the user's source.
const CALLBACK: &str = "the client assertion callback";
/// How long an assertion is reused by default. MSAL makes its own assertions live 10 minutes
/// and makes a new one after 9; a federated token from elsewhere may live shorter (an hour
/// for a Kubernetes service-account token, renewed at 80 %), so 5 minutes leaves room.
pub(crate) const DEFAULT_MAX_ASSERTION_AGE: Duration = Duration::from_secs(5 * 60);

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
/// ```no_run
/// use tower_identity::{BoxError, ClientAssertionCredential, CredentialExt};
///
/// # async fn fetch_federated_token() -> Result<String, BoxError> { Ok(String::new()) }
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let credential = ClientAssertionCredential::builder(
///     "72f988bf-86f1-41af-91ab-2d7cd011db47",
///     "00000000-1111-2222-3333-444444444444",
///     // Called for a first assertion, then whenever the one in hand is 5 minutes old.
///     || async { fetch_federated_token().await },
/// )
/// .build()?;
/// let token = credential.get_token(["https://graph.microsoft.com/.default"]).await?;
/// # let _ = token; Ok(()) }
/// ```
///
/// The request is the client-credentials grant with the assertion as a `jwt-bearer`
/// `client_assertion`. Assertions are kept per token endpoint (a signed assertion's audience)
/// and reused until older than [`max_assertion_age`](ClientAssertionCredentialBuilder::max_assertion_age)
/// (default 5 minutes) or until Microsoft Entra ID refuses one as expired or invalid
/// (AADSTS700024, 700027, 50027, 50013); then the source is asked again, and an assertion in
/// hand refused so is replaced for the same request, unless the source returns the same one
/// (a token file not rotated yet): that refusal is returned then, nothing sent again, and the
/// next request asks the source first. Other refusals (an invalid scope, no matching
/// federated credential) keep the assertion and are not retried. Concurrent callers share
/// one call of the source, and no lock is held while it is called or runs. A source that
/// fails or panics (as it is called, or in its future) makes `get_token` fail with
/// *authentication failed* ("the client assertion callback failed: …").
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
/// name of the credential using it. Called outside the assertions' lock; a panic as it is
/// called is one of its flight's work, as a panic in its future is (see [`Assertions::call`]).
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
        ClientAssertionCredentialBuilder::internal(
            NAME,
            CALLBACK,
            tenant_id.into(),
            client_id.into(),
            fetch,
            Settings::default(),
        )
    }
}

impl ClientAssertionCredential {
    /// The assertion a token request to `tenant` would send now (for tests of the credentials
    /// built on this one).
    #[cfg(test)]
    pub(crate) async fn assertion_for(&self, tenant: &str) -> Result<Secret, CredentialError> {
        let inner = &self.inner;
        let (assertion, _) = inner
            .assertions
            .get(inner.assertion_request(tenant))
            .await?;
        Ok(assertion)
    }
}

/// Calls the user's source; its error or panic becomes *authentication failed* naming it, the
/// text scrubbed (a careless source may put a token in its error). The source is called inside
/// the future, so a panic as it is called is caught as one in its future is.
fn call_source<A: AssertionSource>(
    source: &Arc<A>,
    request: AssertionRequest,
) -> BoxFuture<'static, Result<Secret, CredentialError>> {
    let source = Arc::clone(source);
    async move {
        let outcome = AssertUnwindSafe(async move { source.assertion(request).await })
            .catch_unwind()
            .await;
        let failed = |what: String| Err(source_failed(NAME, CALLBACK, what));
        match outcome {
            Ok(Ok(assertion)) if assertion.expose_secret().trim().is_empty() => {
                failed("it returned an empty assertion".into())
            }
            Ok(Ok(assertion)) => Ok(assertion),
            Ok(Err(error)) => failed(error_chain(error.as_ref())),
            Err(panic) => {
                let text = panic_text(panic.as_ref());
                // Forgotten, not dropped: a payload whose drop panics would escape this catch.
                std::mem::forget(panic);
                failed(format!("it panicked: {text}"))
            }
        }
    }
    .boxed()
}

/// *Authentication failed*: `what` (the source, as errors name it) failed with `text`,
/// scrubbed and bounded (a careless source may put a token in its error or panic).
fn source_failed(name: &'static str, what: &str, text: String) -> CredentialError {
    let text = truncate(&scrub(&text, &[]), MAX_QUOTED_CHARS);
    CredentialError::authentication_failed(name, format!("{what} failed: {text}"))
}

/// A panic's message, if it has one of the usual types.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
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

    fn assertion_request(&self, tenant: &str) -> AssertionRequest {
        AssertionRequest {
            token_endpoint: self.client.authority().token_endpoint(tenant),
            client_id: self.client_id.clone(),
            tenant_id: tenant.to_owned(),
        }
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
        files
            .or_request(|| async {
                let request = self.assertion_request(&plan.tenant);
                let (assertion, reused) = self.assertions.get(request.clone()).await?;
                match self.redeem(&plan, &request, &assertion, &files).await {
                    // An assertion in hand may have outlived its validity at Entra (a source
                    // of short-lived tokens): one fresh try, as azure-identity asks its source
                    // for every token request.
                    Err(error) if reused && refused(&error) => {
                        let (fresh, _) = self.assertions.get(request.clone()).await?;
                        // The source still has the refused one (a token file not rotated
                        // yet): sent again, it would be refused again. Not kept either, so
                        // that the next request asks the source before sending anything.
                        if same_assertion(&fresh, &assertion) {
                            self.assertions.forget(&request.token_endpoint, &fresh);
                            return Err(error);
                        }
                        self.redeem(&plan, &request, &fresh, &files).await
                    }
                    outcome => outcome,
                }
            })
            .await
    }

    /// One token request with `assertion`; a refused assertion is dropped, so that the next
    /// attempt asks the source again.
    async fn redeem(
        &self,
        plan: &Plan,
        request: &AssertionRequest,
        assertion: &Secret,
        files: &AppTokenFiles<'_>,
    ) -> Result<AccessToken, CredentialError> {
        let form = client_assertion_form(
            &self.client_id,
            assertion,
            &plan.scopes,
            plan.claims.clone(),
        );
        match self.client.request(self.name, &plan.tenant, form).await {
            Ok(response) => {
                files.record(&response).await;
                Ok(response.token)
            }
            Err(error) => {
                if refused(&error) {
                    self.assertions.forget(&request.token_endpoint, assertion);
                }
                Err(error)
            }
        }
    }
}

/// The AADSTS codes by which Entra says the assertion itself is no longer (or not yet) good, so
/// a new one may succeed: 700024 not within its valid time range (what a kept federated token
/// gets after about an hour, production-credentials.md §2), 700027 its signature failed (the
/// issuer rotated its key), 50027 an invalid JWT (among its reasons an expired one), 50013 an
/// invalid assertion (expired among them). Anything else (no matching federated credential,
/// an invalid scope, an unauthorized client) fails the same with a new assertion.
const STALE_ASSERTION_CODES: [u32; 4] = [700_024, 700_027, 50_027, 50_013];

/// Entra refused the assertion as stale (400 or 401 with one of [`STALE_ASSERTION_CODES`]),
/// which a new one may fix. Other refusals, a 5xx, a timeout or throttling say nothing about
/// the assertion: asking the source and posting again would only double the load.
fn refused(error: &CredentialError) -> bool {
    error
        .status()
        .is_some_and(|s| s == StatusCode::BAD_REQUEST || s == StatusCode::UNAUTHORIZED)
        && !error.is_throttled()
        && error
            .error_codes()
            .iter()
            .any(|code| STALE_ASSERTION_CODES.contains(code))
}

/// Whether two assertions are the same, in time independent of where they differ (an
/// assertion is a credential; its bytes are compared, never printed).
fn same_assertion(a: &Secret, b: &Secret) -> bool {
    let (a, b) = (a.expose_secret().as_bytes(), b.expose_secret().as_bytes());
    let differ = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && std::hint::black_box(differ) == 0
}

/// How long one call of an assertion source may take: an acquisition's overall deadline.
const SOURCE_TIMEOUT: Duration = crate::transport::DEFAULT_TOTAL_TIMEOUT;

/// The assertions in hand, one per token endpoint, and the source's calls in flight.
struct Assertions {
    /// The credential errors are reported under, and the source as they name it.
    name: &'static str,
    what: &'static str,
    fetch: Fetch,
    max_age: Duration,
    /// When every assertion of the source stops being usable (Unix s, by the wall clock), if
    /// it has such a date: a certificate's notAfter. Past it one in hand is not sent: Entra
    /// would refuse it (AADSTS700027), however young it is.
    usable_until: Option<u64>,
    /// Per token endpoint: the assertion in hand and when it was asked for; the calls of the
    /// source are flights keyed by the endpoint.
    held: SingleFlight<String, Secret, HashMap<String, (Secret, Instant)>>,
}

impl Assertions {
    /// `name`: the credential errors are reported under; `what`: the source, as errors name it.
    /// `usable_until`: see [`Assertions::usable_until`].
    fn new(
        name: &'static str,
        what: &'static str,
        fetch: Fetch,
        max_age: Duration,
        usable_until: Option<u64>,
    ) -> Self {
        Self {
            name,
            what,
            fetch,
            max_age,
            usable_until,
            held: SingleFlight::new(name, what, HashMap::new()),
        }
    }

    /// The assertion in hand for the request's endpoint if it is younger than the maximum
    /// age and the source's assertions are still usable (and `true`: it was in hand); else the
    /// result of one call of the source, shared by every caller meanwhile. The call runs in its
    /// own task (see [`crate::flight`]), which stores its assertion: callers that give up do
    /// not lose it for the others. The flight is recorded under the lock, and the source is
    /// called once the lock is released ([`deferred`]): a source may work before it returns
    /// its future (a signer, a user's closure), and neither that nor its future runs under the
    /// lock. A call gets [`SOURCE_TIMEOUT`]: a source that never answers would otherwise hold
    /// every later request to this endpoint in its flight.
    async fn get(&self, request: AssertionRequest) -> Result<(Secret, bool), CredentialError> {
        let (flight, made) = {
            let mut held = self.held.lock();
            if let Some((assertion, fetched_at)) = held.get(&request.token_endpoint) {
                let usable = self.usable_until.is_none_or(|until| unix_now() <= until);
                if fetched_at.elapsed() < self.max_age && usable {
                    return Ok((assertion.clone(), true));
                }
            }
            match held.running(request.token_endpoint.as_str()) {
                Some(flight) => (flight, None),
                None => {
                    let key = request.token_endpoint.clone();
                    let (name, what) = (self.name, self.what);
                    let (made, call) = deferred::<Secret>(name, what);
                    let asking = async move {
                        // Aged from the moment it was asked for: it cannot be younger than that.
                        let asked_at = Instant::now();
                        match tokio::time::timeout(SOURCE_TIMEOUT, call).await {
                            Ok(outcome) => outcome.map(|assertion| (assertion, asked_at)),
                            Err(_) => Err(CredentialError::authentication_failed(
                                name,
                                format!("{what} did not answer within {SOURCE_TIMEOUT:?}"),
                            )
                            .with_cause(Cause {
                                timeout: true,
                                transient: true,
                                ..Cause::default()
                            })),
                        }
                    };
                    let max_age = self.max_age;
                    let flight = held.start(
                        key.clone(),
                        WhenAbandoned::RunOn,
                        asking,
                        move |held, outcome| {
                            outcome.map(|(assertion, asked_at)| {
                                keep(held, key, assertion.clone(), asked_at, max_age);
                                assertion
                            })
                        },
                    );
                    (flight, Some(made))
                }
            }
        };
        if let Some(made) = made {
            made.make(|| self.call(request));
        }
        flight.await.map(|assertion| (assertion, false))
    }

    /// The flight's work, made outside the lock. A source that panics as it is called (a
    /// crate source; the user's is called inside its future) panics in the flight's task
    /// instead, with the same payload: the flight then ends for every waiter as it does when
    /// a source's future panics ("did not finish", see [`crate::flight`]), rather than only
    /// the caller that started it failing and the others getting "its work was never made".
    /// The payload is moved on into the flight's join error, not dropped here.
    fn call(
        &self,
        request: AssertionRequest,
    ) -> BoxFuture<'static, Result<Secret, CredentialError>> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| (self.fetch)(request))) {
            Ok(work) => work,
            Err(panic) => async move { std::panic::resume_unwind(panic) }.boxed(),
        }
    }

    /// Drops `assertion` if it is still the one in hand for `key`.
    fn forget(&self, key: &str, assertion: &Secret) {
        let mut held = self.held.lock();
        if held
            .get(key)
            .is_some_and(|(current, _)| current == assertion)
        {
            held.remove(key);
        }
    }
}

/// The most assertions kept, one per token endpoint: a credential that allows any tenant may
/// be asked for any number of them (as the throttle memory, `crate::throttle`, is bounded).
const MAX_HELD: usize = 64;

/// Keeps `assertion` for `key`, first dropping those too old to be used again (else each
/// tenant ever asked for would stay for the life of the credential) and, at [`MAX_HELD`], the
/// oldest (reused assertions are a saving, not a need: a dropped one is asked for again).
fn keep(
    held: &mut HashMap<String, (Secret, Instant)>,
    key: String,
    assertion: Secret,
    asked_at: Instant,
    max_age: Duration,
) {
    held.retain(|_, (_, at)| at.elapsed() < max_age);
    if held.len() >= MAX_HELD && !held.contains_key(&key) {
        let oldest = held
            .iter()
            .min_by_key(|(_, (_, at))| *at)
            .map(|(k, _)| k.clone());
        if let Some(oldest) = oldest {
            held.remove(&oldest);
        }
    }
    held.insert(key, (assertion, asked_at));
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
    /// The credential errors and traces name (another one's when built on this one).
    name: &'static str,
    /// The source, as the error of a call that never finished names it.
    what: &'static str,
    tenant_id: String,
    client_id: String,
    fetch: Fetch,
    max_assertion_age: Duration,
    /// See [`Assertions::usable_until`].
    usable_until: Option<u64>,
    settings: Settings,
}

impl ClientAssertionCredentialBuilder {
    settings_setters!(settings; authority_host, additionally_allowed_tenants, http_client,
        cache_options, disable_multitenant_auth, distributed_cache);
}

impl ClientAssertionCredentialBuilder {
    /// For a credential of the crate built on this one (workload identity, certificate): its
    /// name in errors, its source (whose errors are its own), its settings.
    pub(crate) fn internal(
        name: &'static str,
        what: &'static str,
        tenant_id: String,
        client_id: String,
        fetch: Fetch,
        settings: Settings,
    ) -> Self {
        Self {
            name,
            what,
            tenant_id,
            client_id,
            fetch,
            max_assertion_age: DEFAULT_MAX_ASSERTION_AGE,
            usable_until: None,
            settings,
        }
    }

    /// For a credential of the crate whose assertions all stop being usable at one time
    /// (Unix s): a certificate's notAfter. An assertion in hand is not reused past it.
    pub(crate) fn usable_until(mut self, until: u64) -> Self {
        self.usable_until = Some(until);
        self
    }

    /// How long an assertion is reused before the source is asked for a new one. Default:
    /// 5 minutes. Keep it well below the lifetime of the assertions the source returns.
    pub fn max_assertion_age(mut self, age: Duration) -> Self {
        self.max_assertion_age = age;
        self
    }

    /// Validates the settings (tenant id, client id, authority) and builds. An
    /// `AZURE_AUTHORITY_HOST` that is not Unicode is a [`ConfigError`] naming it, unless an
    /// authority host was set here.
    pub fn build(self) -> Result<ClientAssertionCredential, ConfigError> {
        let env_authority = self.settings.env_authority(self.name, &Vars::default())?;
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
                cache: self.settings.token_cache(name, &client, &self.client_id),
                client_id: self.client_id,
                client,
                files,
                assertions: Assertions::new(
                    name,
                    self.what,
                    self.fetch,
                    self.max_assertion_age,
                    self.usable_until,
                ),
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use super::*;
    use crate::CredentialExt;
    use crate::transport::{HttpClient, HttpRequest};

    const SCOPE: &str = "https://resource.test/.default";

    /// A source returning `assertion-1`, `assertion-2`, … and counting its calls.
    fn counting() -> (Arc<AtomicUsize>, impl AssertionSource) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let source = move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                // A signer takes a moment: concurrent callers find the call in flight.
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, BoxError>(format!("assertion-{n}"))
            }
        };
        (calls, source)
    }

    /// Entra's token endpoint in-process: refuses `stale` assertions as Entra does
    /// (AADSTS700024), issues a token for any other, and logs the assertions it got.
    fn entra() -> (Arc<Mutex<Vec<String>>>, HttpClient) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::clone(&log);
        let service = tower::service_fn(move |request: HttpRequest| {
            let sent = Arc::clone(&sent);
            async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let field = |name: &str| {
                    url::form_urlencoded::parse(&body)
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.into_owned())
                        .unwrap()
                };
                let assertion = field("client_assertion");
                // "stale" assertions are always refused; "once" ones the second time.
                let repeated = {
                    let mut sent = sent.lock().unwrap();
                    let repeated = sent.contains(&assertion);
                    sent.push(assertion.clone());
                    repeated
                };
                let refused = assertion.contains("stale") || assertion.contains("once") && repeated;
                let (status, body) = if field("scope").contains("invalid-scope") {
                    (
                        400,
                        serde_json::json!({
                            "error": "invalid_scope",
                            "error_description": "AADSTS70011: The provided value for the input parameter 'scope' is not valid.",
                            "error_codes": [70011],
                        }),
                    )
                } else if refused {
                    (
                        401,
                        serde_json::json!({
                            "error": "invalid_client",
                            "error_description": "AADSTS700024: Client assertion is not within its valid time range.",
                            "error_codes": [700024],
                        }),
                    )
                } else {
                    (
                        200,
                        serde_json::json!({
                            "token_type": "Bearer",
                            "expires_in": 3600,
                            "access_token": format!("token-for-{assertion}"),
                        }),
                    )
                };
                Ok::<_, BoxError>(
                    http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Bytes::from(body.to_string()))
                        .unwrap(),
                )
            }
        });
        (log, HttpClient::from_service(service))
    }

    fn build(source: impl AssertionSource, http: HttpClient) -> ClientAssertionCredential {
        ClientAssertionCredential::builder("contoso", "client", source)
            .additionally_allowed_tenants(["fabrikam"])
            .http_client(http)
            .build_with_env_authority(None)
            .unwrap()
    }

    fn sent(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        log.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn the_source_is_called_again_once_the_assertion_is_older_than_the_age() {
        let (calls, source) = counting();
        let c = ClientAssertionCredential::builder("contoso", "client", source)
            .max_assertion_age(Duration::from_secs(60))
            .build_with_env_authority(None)
            .unwrap();
        let get = || c.assertion_for("contoso");
        assert_eq!(get().await.unwrap().expose_secret(), "assertion-1");
        // Aged from when it was asked for, not from when the signer answered.
        tokio::time::advance(Duration::from_secs(59) - Duration::from_millis(10)).await;
        assert_eq!(get().await.unwrap().expose_secret(), "assertion-1");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(get().await.unwrap().expose_secret(), "assertion-1");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(get().await.unwrap().expose_secret(), "assertion-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// A credential that allows any tenant keeps an assertion per tenant asked for: those too
    /// old to be used again are dropped when another is kept, and no more than [`MAX_HELD`]
    /// are kept at once.
    #[tokio::test(start_paused = true)]
    async fn assertions_of_many_tenants_are_pruned_and_bounded() {
        let (calls, source) = counting();
        let c = ClientAssertionCredential::builder("contoso", "client", source)
            .additionally_allowed_tenants(["*"])
            .max_assertion_age(Duration::from_secs(60))
            .build_with_env_authority(None)
            .unwrap();
        let held = || c.inner.assertions.held.lock().len();
        for n in 0..MAX_HELD + 10 {
            c.assertion_for(&format!("tenant-{n}")).await.unwrap();
        }
        assert_eq!(held(), MAX_HELD);
        // The most recent are those kept.
        let last = format!("tenant-{}", MAX_HELD + 9);
        c.assertion_for(&last).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), MAX_HELD + 10);

        tokio::time::advance(Duration::from_secs(61)).await;
        c.assertion_for("one-more").await.unwrap();
        assert_eq!(held(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn each_token_endpoint_has_its_own_assertion_and_the_request_says_which() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let signer = AssertionService::new(tower::service_fn(move |r: AssertionRequest| {
            log.lock().unwrap().push(r.clone());
            async move { Ok::<_, BoxError>(format!("signed-for-{}", r.token_endpoint())) }
        }));
        let (_, http) = entra();
        let c = build(signer, http);
        for tenant in ["contoso", "fabrikam", "contoso"] {
            let a = c.assertion_for(tenant).await.unwrap();
            assert_eq!(
                a.expose_secret(),
                format!("signed-for-https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token")
            );
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[1].tenant_id(), "fabrikam");
        assert_eq!(seen[1].client_id(), "client");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_assertion_is_fetched_anew_and_a_good_one_is_kept() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let source = move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                Ok::<_, BoxError>(if n == 1 {
                    "stale-1".to_owned()
                } else {
                    format!("fresh-{n}")
                })
            }
        };
        let (log, http) = entra();
        let c = build(source, http);
        let err = c.get_token([SCOPE]).await.unwrap_err();
        assert!(err.is_authentication_failed(), "{err}");
        assert_eq!(err.error_codes(), [700024]);
        assert!(!format!("{err} {err:?}").contains("stale-1"), "{err:?}");
        // No wait for the age: the refusal dropped it.
        let token = c.get_token([SCOPE]).await.unwrap();
        assert_eq!(token.secret().expose_secret(), "token-for-fresh-2");
        // The good one is reused for the next request.
        c.get_token(["https://other.test/.default"]).await.unwrap();
        assert_eq!(sent(&log), ["stale-1", "fresh-2", "fresh-2"]);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// An assertion in hand that Entra now refuses is replaced at once, for the same request:
    /// azure-identity asks its source for every token request, so a source of short-lived
    /// assertions works there. A fresh one refused is not asked for again.
    #[tokio::test(start_paused = true)]
    async fn a_refused_assertion_in_hand_is_replaced_for_the_same_request() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let source = move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, BoxError>(format!("once-{n}")) }
        };
        let (log, http) = entra();
        let c = build(source, http);
        c.get_token([SCOPE]).await.unwrap();
        let token = c.get_token(["https://other.test/.default"]).await.unwrap();
        assert_eq!(token.secret().expose_secret(), "token-for-once-2");
        assert_eq!(sent(&log), ["once-1", "once-1", "once-2"]);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// A refused assertion in hand is replaced for the same request; but one the source
    /// returns again (a token file not rotated yet) would be refused again: the refusal is
    /// returned without a second POST, and the next request asks the source before sending
    /// anything, so an assertion rotated meanwhile is the one sent.
    #[tokio::test]
    async fn a_refused_assertion_the_source_returns_again_is_not_sent_again() {
        use crate::test_support::authority::{Authority, Fault, error_body};

        let authority = Authority::start().await;
        let http = HttpClient::builder()
            .add_root_certificates_pem(authority.ca_pem())
            .build()
            .unwrap();
        let current = Arc::new(Mutex::new("the-same-assertion"));
        let calls = Arc::new(AtomicUsize::new(0));
        let source = {
            let (current, calls) = (Arc::clone(&current), Arc::clone(&calls));
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                let assertion = *current.lock().unwrap();
                async move { Ok::<_, BoxError>(assertion) }
            }
        };
        let c = ClientAssertionCredential::builder("contoso", "client", source)
            .authority_host(authority.url())
            .http_client(http)
            .build_with_env_authority(None)
            .unwrap();
        c.get_token([SCOPE]).await.unwrap();
        assert_eq!(authority.token_posts(), 1);

        authority.push_fault(Fault::Respond {
            status: 401,
            body: error_body(
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range.",
            ),
            headers: Vec::new(),
        });
        let err = c
            .get_token(["https://other.test/.default"])
            .await
            .unwrap_err();
        assert_eq!(err.error_codes(), [700024], "{err}");
        assert!(!format!("{err} {err:?}").contains("the-same"), "{err:?}");
        assert_eq!(authority.token_posts(), 2, "one POST for the request");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the source was asked again"
        );

        *current.lock().unwrap() = "rotated-assertion";
        c.get_token(["https://third.test/.default"]).await.unwrap();
        let sent: Vec<_> = authority
            .requests()
            .iter()
            .map(|r| r.field("client_assertion").unwrap().to_owned())
            .collect();
        assert_eq!(
            sent,
            [
                "the-same-assertion",
                "the-same-assertion",
                "rotated-assertion"
            ]
        );
    }

    #[test]
    fn assertions_compare_by_their_whole_value() {
        let same = |a: &str, b: &str| same_assertion(&Secret::new(a), &Secret::new(b));
        assert!(same("abc", "abc") && same("", ""));
        assert!(!same("abc", "abd") && !same("abc", "ab") && !same("ab", "abc"));
    }

    /// A refusal that is not about the assertion (here an invalid scope) keeps the assertion
    /// in hand and is not retried with a new one: one POST, no call of the source.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_not_about_the_assertion_is_not_retried_with_a_new_one() {
        let (calls, source) = counting();
        let (log, http) = entra();
        let c = build(source, http);
        c.get_token([SCOPE]).await.unwrap();
        assert_eq!((sent(&log).len(), calls.load(Ordering::SeqCst)), (1, 1));
        let err = c
            .get_token(["https://invalid-scope.test/.default"])
            .await
            .unwrap_err();
        assert_eq!(err.error_codes(), [70011], "{err}");
        assert_eq!(sent(&log), ["assertion-1", "assertion-1"]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Still in hand for the next request.
        c.get_token(["https://other.test/.default"]).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A source that never answers fails its callers after the deadline, and is asked again
    /// by the next request instead of holding it in the same flight.
    #[tokio::test(start_paused = true)]
    async fn a_source_that_never_answers_times_out_and_is_asked_again() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let source = move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n == 1 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(format!("assertion-{n}"))
            }
        };
        let (_log, http) = entra();
        let c = build(source, http);
        let err = c.get_token([SCOPE]).await.unwrap_err();
        assert!(err.is_authentication_failed() && err.is_timeout(), "{err}");
        assert!(err.message().contains("did not answer within 30s"), "{err}");
        let token = c.get_token([SCOPE]).await.unwrap();
        assert_eq!(token.secret().expose_secret(), "token-for-assertion-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_call_of_the_source() {
        let (calls, source) = counting();
        let (log, http) = entra();
        let c = build(source, http);
        // Distinct scopes: each is its own token request, all needing an assertion at once.
        let requests = (0..20).map(|n| c.get_token([format!("https://r{n}.test/.default")]));
        for result in futures_util::future::join_all(requests).await {
            assert_eq!(
                result.unwrap().secret().expose_secret(),
                "token-for-assertion-1"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(sent(&log).len(), 20);
    }

    #[tokio::test]
    async fn a_failing_or_panicking_source_is_authentication_failed_naming_it() {
        let jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let (log, http) = entra();
        let c = build(
            move || async move {
                Err::<String, _>(std::io::Error::other(format!("vault said no; token {jwt}")))
            },
            http.clone(),
        );
        let err = c.get_token([SCOPE]).await.unwrap_err();
        assert!(err.is_authentication_failed(), "{err}");
        assert_eq!(err.credential(), NAME);
        assert!(
            err.message()
                .starts_with("the client assertion callback failed: vault said no"),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains("eyJ"), "{err:?}");

        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let c = build(
            move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async {
                    if true {
                        panic!("the signer exploded");
                    }
                    Ok::<String, BoxError>(String::new())
                }
            },
            http.clone(),
        );
        for _ in 0..2 {
            let err = c.get_token([SCOPE]).await.unwrap_err();
            assert!(err.is_authentication_failed(), "{err}");
            assert_eq!(
                err.message(),
                "the client assertion callback failed: it panicked: the signer exploded"
            );
        }
        // A panicked call is not joined again: the next request calls the source anew.
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let c = build(|| async { Ok::<_, BoxError>(" ") }, http);
        let err = c.get_token([SCOPE]).await.unwrap_err();
        assert!(err.message().contains("empty assertion"), "{err}");
        assert!(
            sent(&log).is_empty(),
            "nothing is sent without an assertion"
        );
    }

    /// A credential of the crate over `fetch` (as workload identity and certificate build
    /// theirs), its source named as the user's is.
    fn internal(fetch: Fetch, http: HttpClient) -> ClientAssertionCredential {
        ClientAssertionCredentialBuilder::internal(
            NAME,
            CALLBACK,
            "contoso".into(),
            "client".into(),
            fetch,
            Settings::default(),
        )
        .http_client(http)
        .build_with_env_authority(None)
        .unwrap()
    }

    type Probe = Arc<std::sync::OnceLock<Box<dyn Fn() -> bool + Send + Sync>>>;

    /// Whether the credential's assertions lock is taken, once `probe` is set.
    fn probed(probe: &Probe) -> bool {
        probe.get().expect("the probe is set before any call")()
    }

    /// The source may work as it is called, before it returns its future (a signer; a user's
    /// closure): neither that nor its future runs under the assertions' lock, for a source
    /// of the crate (`Fetch`) as for the user's.
    #[tokio::test]
    async fn the_source_is_called_and_runs_outside_the_assertions_lock() {
        let (_log, http) = entra();
        let probe = Probe::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let fetch: Fetch = {
            let (probe, seen) = (Arc::clone(&probe), Arc::clone(&seen));
            Arc::new(move |_request| {
                seen.lock().unwrap().push(("called", probed(&probe)));
                let (probe, seen) = (Arc::clone(&probe), Arc::clone(&seen));
                async move {
                    seen.lock().unwrap().push(("running", probed(&probe)));
                    Ok(Secret::new("assertion"))
                }
                .boxed()
            })
        };
        let c = internal(fetch, http.clone());
        let _ = probe.set(Box::new(c.inner.assertions.held.lock_probe()));
        let token = c.get_token([SCOPE]).await.unwrap();
        assert_eq!(token.secret().expose_secret(), "token-for-assertion");
        assert_eq!(
            *seen.lock().unwrap(),
            [("called", false), ("running", false)],
            "(step, lock taken)"
        );

        // The user's closure, through the public builder.
        let probe = Probe::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let source = {
            let (probe, seen) = (Arc::clone(&probe), Arc::clone(&seen));
            move || {
                seen.lock().unwrap().push(probed(&probe));
                async { Ok::<_, BoxError>("assertion") }
            }
        };
        let c = build(source, http);
        let _ = probe.set(Box::new(c.inner.assertions.held.lock_probe()));
        c.get_token([SCOPE]).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [false], "lock taken as it is called");
    }

    /// The user's source that panics as it is called, before it returns a future, fails every
    /// caller of its flight as one panicking in its future does (authentication failed naming
    /// it), and the next request calls it anew.
    #[tokio::test(start_paused = true)]
    async fn a_source_panicking_as_it_is_called_fails_its_flight_and_not_the_next() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let source = move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            if n == 1 {
                panic!("the signer exploded at once");
            }
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, BoxError>(format!("assertion-{n}"))
            }
        };
        let (_log, http) = entra();
        {
            let c = build(source, http);
            // Distinct scopes: concurrent token requests sharing the one call of the source.
            let requests = (0..3).map(|n| c.get_token([format!("https://r{n}.test/.default")]));
            for result in futures_util::future::join_all(requests).await {
                let err = result.unwrap_err();
                assert!(err.is_authentication_failed(), "{err}");
                assert_eq!(err.credential(), NAME);
                assert_eq!(
                    err.message(),
                    "the client assertion callback failed: it panicked: the signer exploded \
                     at once"
                );
            }
            assert_eq!(calls.load(Ordering::SeqCst), 1, "one call, shared");
            let token = c.get_token([SCOPE]).await.unwrap();
            assert_eq!(token.secret().expose_secret(), "token-for-assertion-2");
            assert_eq!(calls.load(Ordering::SeqCst), 2);
        }
    }

    /// The user's source panicking with a payload whose drop panics too still fails as
    /// "it panicked", an answer of the source, not a flight that did not finish.
    #[tokio::test]
    async fn a_user_panic_whose_payload_panics_on_drop_is_still_the_sources_failure() {
        struct PanicsOnDrop;
        impl Drop for PanicsOnDrop {
            fn drop(&mut self) {
                panic!("a payload whose drop panics");
            }
        }
        let source = || async {
            std::panic::panic_any(PanicsOnDrop);
            #[allow(unreachable_code)]
            Ok::<_, BoxError>("never")
        };
        let (_log, http) = entra();
        let err = build(source, http).get_token([SCOPE]).await.unwrap_err();
        assert!(
            err.is_authentication_failed() && !err.is_unfinished(),
            "{err}"
        );
        assert_eq!(
            err.message(),
            "the client assertion callback failed: it panicked: (no message)"
        );
    }

    /// A crate source that panics as it is called ends its flight as one panicking in its
    /// future does: every waiter gets "did not finish" marked as cut off (not remembered as
    /// an answer), none "its work was never made", and the next request calls it anew.
    #[tokio::test]
    async fn a_crate_source_panicking_as_it_is_called_or_in_its_future_ends_its_flight_alike() {
        for in_future in [false, true] {
            let calls = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&calls);
            let fetch: Fetch = Arc::new(move |_request| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(n > 1 || in_future, "the signer exploded at once");
                async move {
                    assert!(n > 1, "the signer exploded later");
                    Ok(Secret::new(format!("assertion-{n}")))
                }
                .boxed()
            });
            let (_log, http) = entra();
            let c = internal(fetch, http);
            let requests = (0..3).map(|n| c.get_token([format!("https://r{n}.test/.default")]));
            let expected = if in_future { "later" } else { "at once" };
            for result in futures_util::future::join_all(requests).await {
                let err = result.unwrap_err();
                assert!(
                    err.is_authentication_failed() && err.is_unfinished(),
                    "{err}"
                );
                assert!(
                    err.message()
                        .starts_with("the client assertion callback did not finish: ")
                        && err.message().contains(expected),
                    "{err}"
                );
            }
            assert_eq!(calls.load(Ordering::SeqCst), 1, "one call, shared");
            let token = c.get_token([SCOPE]).await.unwrap();
            assert_eq!(token.secret().expose_secret(), "token-for-assertion-2");
        }
    }

    /// Callers that give up before the source answers do not lose its assertion: it is kept
    /// for the next request, which does not call the source again.
    #[tokio::test(start_paused = true)]
    async fn an_assertion_is_kept_when_every_caller_gave_up() {
        let (calls, source) = counting();
        let (_log, http) = entra();
        let c = build(source, http);
        let gave_up = tokio::time::timeout(Duration::from_millis(1), c.assertion_for("contoso"));
        assert!(gave_up.await.is_err(), "the source takes 10ms");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(c.inner.assertions.held.lock().len(), 1);
        let assertion = c.assertion_for("contoso").await.unwrap();
        assert_eq!(assertion.expose_secret(), "assertion-1");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn debug_never_shows_the_assertion() {
        let (_, http) = entra();
        let b = ClientAssertionCredential::builder("contoso", "client", || async {
            Ok::<_, BoxError>("super-secret-assertion")
        })
        .http_client(http);
        let text = format!("{b:?}");
        assert!(text.contains("client") && text.contains("300s"), "{text}");
        let c = b.build_with_env_authority(None).unwrap();
        c.get_token([SCOPE]).await.unwrap();
        let text = format!("{c:?} {c:#?}");
        assert!(!text.contains("super-secret"), "{text}");
        for want in ["contoso", "client", "https://login.microsoftonline.com"] {
            assert!(text.contains(want), "{text} / {want}");
        }
    }

    #[test]
    fn build_validates_every_setting() {
        let b = |tenant: &str, client: &str| {
            ClientAssertionCredential::builder(tenant, client, || async { Ok::<_, BoxError>("a") })
        };
        let cases = [
            (b("bad tenant", "c"), "only ASCII letters"),
            (b("t", " "), "client id is empty"),
            (
                b("t", "c").max_assertion_age(Duration::ZERO),
                "max_assertion_age",
            ),
            (b("t", "c").authority_host("http://login.test"), "https"),
        ];
        for (builder, want) in cases {
            let err = builder.build_with_env_authority(None).unwrap_err();
            assert!(err.message().starts_with(NAME), "{err}");
            assert!(err.message().contains(want), "{err} / {want}");
        }
    }
}
