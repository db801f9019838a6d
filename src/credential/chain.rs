//! Fallback between credentials: [`ChainedTokenCredential`] and [`Fallback`] (`a.or(b)`).

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower::util::Oneshot;
use tower_service::Service;
use tracing::{Instrument, Span};

use super::{BoxCredential, CredentialFuture, TokenCredential, answered_by, short_type_name};
use crate::error::{ConfigError, CredentialError};
use crate::token::{AccessToken, TokenRequest};

const CHAIN: &str = "ChainedTokenCredential";
/// The name on a [`Fallback`]'s errors: the user wrote `a.or(b)`, and may never have named
/// the type.
const OR_CHAIN: &str = "Fallback (a.or(b))";

/// Names of the combinators: their success is reported by the leaf inside them.
fn is_combinator(name: &str) -> bool {
    name == CHAIN || name == "Fallback" || name == super::default::NAME
}

fn report_success(name: &str) {
    if !is_combinator(name) {
        tracing::debug!(credential = name, "credential answered");
    }
}

/// The span of one attempt of a chain (see [`ChainedTokenCredential`]); no secret in its fields.
fn attempt_span(name: &str, attempt: usize, request: &TokenRequest) -> Span {
    tracing::debug_span!(
        "credential_attempt",
        credential = name,
        attempt,
        scopes = ?request.scopes(),
        tenant = request.tenant_id()
    )
}

fn report_unavailable(name: &str, error: &CredentialError) {
    tracing::debug!(credential = name, reason = %error.message(), "credential unavailable, trying the next");
}

tokio::task_local! {
    /// Set while a chain asks one of its members (azure-identity's `within_credential_chain`):
    /// a member with a slow way of finding out that it has nothing to offer (the managed
    /// identity asking IMDS) then checks quickly first, because another credential may answer.
    static WITHIN_CHAIN: bool;
}

/// Whether this task is asking a member of a chain ([`ChainedTokenCredential`], [`Fallback`],
/// `DefaultAzureCredential`) for a token. Only the caller's task: read it before spawning.
pub(crate) fn within_chain() -> bool {
    WITHIN_CHAIN.try_with(|within| *within).unwrap_or(false)
}

/// Tries boxed credentials in order: the first token wins, the first error that is not
/// *unavailable* stops the chain. Chains nest.
///
/// A credential that is *unavailable* (no configuration, no `az`, no cached account) passes
/// the request to the next; any other error stops the chain, because a credential that was
/// configured and failed is something the user must hear about, not something to paper over
/// with another identity. The final error lists every attempt in order.
///
/// ```no_run
/// use tower_identity::{
///     AzureCliCredential, ChainedTokenCredential, CredentialExt, EnvironmentCredential,
/// };
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // Dynamic: any number of boxed credentials.
/// let chain = ChainedTokenCredential::new([
///     EnvironmentCredential::new().boxed_credential(),
///     AzureCliCredential::new().boxed_credential(),
/// ])?;
/// // Typed: no boxing, same rules.
/// let typed = EnvironmentCredential::new().or(AzureCliCredential::new());
/// let token = chain.get_token(["https://management.azure.com/.default"]).await?;
/// # let _ = (typed, token); Ok(()) }
/// ```
///
/// A [`ManagedIdentityCredential`](crate::ManagedIdentityCredential) asked by a chain probes
/// IMDS first (1 s, no retries), as in azure-identity: on a machine without IMDS, or where
/// something other than IMDS answers at its address, the chain moves on within about a second
/// instead of waiting out IMDS's retries (see its docs).
///
/// A member boxed under a name of your own ([`BoxCredential::named`]) is listed in the
/// error's message under that name with the credential that raised its error, `primary
/// (ClientSecretCredential)`, as traces name it; the attempt's
/// [`credential()`](CredentialError::credential) is still the credential's own name.
///
/// The token names the credential that answered ([`AccessToken::credential`]); a token of a
/// credential of yours, which has no name, gets the chain member's (the box's name, or for
/// a [`Fallback`] member that is not boxed, its type's). Each attempt runs in a `credential_attempt` span at `DEBUG`
/// (`credential`, `attempt`, `scopes`, `tenant`; target
/// `tower_identity::credential::chain`), in which the answer is a `DEBUG` event and each
/// unavailable credential's reason too. Nothing is logged above `DEBUG`: a library's success
/// is not news.
#[derive(Clone)]
pub struct ChainedTokenCredential {
    credentials: Arc<[BoxCredential]>,
}

impl ChainedTokenCredential {
    /// A chain of these credentials, tried in order. An empty list is an error.
    pub fn new(credentials: impl IntoIterator<Item = BoxCredential>) -> Result<Self, ConfigError> {
        let credentials: Arc<[BoxCredential]> = credentials.into_iter().collect();
        if credentials.is_empty() {
            return Err(ConfigError::new(
                "ChainedTokenCredential needs at least one credential; pass e.g. \
                 [EnvironmentCredential::new().boxed_credential(), AzureCliCredential::new().boxed_credential()]",
            ));
        }
        Ok(Self { credentials })
    }

    /// The credentials, in the order they are tried.
    pub fn credentials(&self) -> &[BoxCredential] {
        &self.credentials
    }
}

impl fmt::Debug for ChainedTokenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple(CHAIN).field(&self.credentials).finish()
    }
}

impl Service<TokenRequest> for ChainedTokenCredential {
    type Response = AccessToken;
    type Error = CredentialError;
    type Future = CredentialFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each member is driven to readiness when its turn comes (oneshot).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        let credentials = Arc::clone(&self.credentials);
        Box::pin(async move {
            first_token(&credentials, request, CHAIN)
                .await
                .map(|answered| answered.token)
        })
    }
}

/// What [`first_token`] got: the token, the index of the credential that answered, and
/// whether a credential before it was *unavailable* for a reason that may pass (a timeout,
/// an outage), so that it might have answered on another try.
pub(crate) struct Answered {
    pub(crate) index: usize,
    pub(crate) token: AccessToken,
    pub(crate) after_transient: bool,
}

/// Tries `credentials` in order under the chain rules; what answered (see [`Answered`]), or
/// the chain's error under `chain_name`.
pub(crate) async fn first_token(
    credentials: &[BoxCredential],
    request: TokenRequest,
    chain_name: &'static str,
) -> Result<Answered, CredentialError> {
    let mut attempts = Vec::new();
    let mut after_transient = false;
    for ((index, credential), attempt) in credentials.iter().enumerate().zip(1..) {
        let span = attempt_span(credential.name(), attempt, &request);
        let asked = credential
            .clone()
            .oneshot(request.clone())
            .instrument(span.clone());
        match WITHIN_CHAIN.scope(true, asked).await {
            Ok(token) => {
                span.in_scope(|| report_success(credential.name()));
                return Ok(Answered {
                    index,
                    token,
                    after_transient,
                });
            }
            Err(error) if error.is_unavailable() => {
                span.in_scope(|| report_unavailable(credential.name(), &error));
                after_transient |=
                    error.is_transient() || error.attempts().iter().any(|a| a.is_transient());
                attempts.push(attributed(credential.name(), error));
            }
            Err(error) => {
                attempts.push(attributed(credential.name(), error));
                break;
            }
        }
    }
    Err(CredentialError::chain(chain_name, attempts))
}

/// `error` as a chain lists it: raised by the member the chain's traces name (a box's name,
/// `primary`), which its message shows with the credential that raised it, `primary
/// (ClientSecretCredential)`, when the two differ; `credential()` stays the credential's
/// name. A nested chain's error as it is (its attempts are listed instead).
fn attributed(member: &str, error: CredentialError) -> CredentialError {
    if !error.attempts().is_empty() {
        return error;
    }
    error.in_member(member)
}

/// How a [`Fallback`] names its member: a box by its own name (a credential wrapped by
/// [`with_middleware`](super::CredentialExt::with_middleware) is boxed), anything else by its
/// type's.
fn member_name<C: 'static>(credential: &C) -> Cow<'static, str> {
    match (credential as &dyn Any).downcast_ref::<BoxCredential>() {
        Some(boxed) => boxed.name.clone(),
        None => Cow::Borrowed(short_type_name::<C>()),
    }
}

/// `a.or(b)`: tries `A`, and `B` only when `A` is *unavailable*. No boxing.
///
/// Its errors name the credential `Fallback (a.or(b))` and list the attempts, as a
/// [`ChainedTokenCredential`]'s do.
#[derive(Clone, Debug)]
pub struct Fallback<A, B> {
    first: A,
    second: B,
}

impl<A, B> Fallback<A, B> {
    /// A fallback from `first` to `second`.
    pub fn new(first: A, second: B) -> Self {
        Self { first, second }
    }
}

impl<A: TokenCredential, B: TokenCredential> Service<TokenRequest> for Fallback<A, B> {
    type Response = AccessToken;
    type Error = CredentialError;
    type Future = FallbackFuture<A, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Clones are driven to readiness inside the future (oneshot).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        let name = member_name(&self.first);
        FallbackFuture {
            state: State::First {
                span: attempt_span(&name, 1, &request),
                name,
                future: self.first.clone().oneshot(request.clone()),
                second: Some(self.second.clone()),
                request: Some(request),
            },
        }
    }
}

pin_project! {
    /// The future of [`Fallback`].
    pub struct FallbackFuture<A: Service<TokenRequest>, B: Service<TokenRequest>> {
        #[pin]
        state: State<A, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<A: Service<TokenRequest>, B: Service<TokenRequest>> {
        First {
            #[pin]
            future: Oneshot<A, TokenRequest>,
            span: Span,
            name: Cow<'static, str>,
            second: Option<B>,
            request: Option<TokenRequest>,
        },
        Second {
            #[pin]
            future: Oneshot<B, TokenRequest>,
            span: Span,
            name: Cow<'static, str>,
            first_error: Option<CredentialError>,
        },
    }
}

impl<A: TokenCredential, B: TokenCredential> Future for FallbackFuture<A, B> {
    type Output = Result<AccessToken, CredentialError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::First {
                    future,
                    span,
                    name,
                    second,
                    request,
                } => match ready!(
                    span.in_scope(|| WITHIN_CHAIN.sync_scope(true, || future.poll(cx)))
                ) {
                    Ok(token) => {
                        span.in_scope(|| report_success(name));
                        return Poll::Ready(Ok(answered_by(token, || name.clone())));
                    }
                    Err(error) if error.is_unavailable() => {
                        span.in_scope(|| report_unavailable(name, &error));
                        // Both are `Some` until this transition, which happens once.
                        let (Some(second), Some(request)) = (second.take(), request.take()) else {
                            return Poll::Ready(Err(error));
                        };
                        let first_error = attributed(name, error);
                        let name = member_name(&second);
                        this.state.set(State::Second {
                            span: attempt_span(&name, 2, &request),
                            name,
                            future: second.oneshot(request),
                            first_error: Some(first_error),
                        });
                    }
                    Err(error) => {
                        let error = attributed(name, error);
                        return Poll::Ready(Err(CredentialError::chain(OR_CHAIN, vec![error])));
                    }
                },
                StateProj::Second {
                    future,
                    span,
                    name,
                    first_error,
                } => {
                    let result =
                        ready!(span.in_scope(|| WITHIN_CHAIN.sync_scope(true, || future.poll(cx))));
                    if result.is_ok() {
                        span.in_scope(|| report_success(name));
                    }
                    return Poll::Ready(
                        result
                            .map(|token| answered_by(token, || name.clone()))
                            .map_err(|error| {
                                let error = attributed(name, error);
                                let attempts =
                                    first_error.take().into_iter().chain([error]).collect();
                                CredentialError::chain(OR_CHAIN, attempts)
                            }),
                    );
                }
            }
        }
    }
}
