//! Credentials: tower services from [`TokenRequest`] to [`AccessToken`].
//!
//! Anything that is `Service<TokenRequest, Response = AccessToken, Error = CredentialError>`,
//! `Clone + Send + Sync + 'static` with a `Send` future is a [`TokenCredential`]: the
//! credentials of this crate, a [`ChainedTokenCredential`], a [`BoxCredential`], or your own
//! type. [`CredentialExt`] adds `get_token`, `get_token_with`, `boxed_credential`, `or` and
//! `with_middleware` to all of them.
//!
//! Every token names the credential that obtained it ([`AccessToken::credential`]), so the
//! token of a chain says which member answered.
//!
//! ```no_run
//! use tower_identity::{AzureCliCredential, CredentialExt, EnvironmentCredential};
//!
//! # async fn run() -> Result<(), tower_identity::CredentialError> {
//! let credential = EnvironmentCredential::new().or(AzureCliCredential::new());
//! let token = credential.get_token(["https://management.azure.com/.default"]).await?;
//! println!("expires in {:?}", token.expires_in());
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::task::{Context, Poll};

use tower::ServiceExt;
use tower::util::{BoxCloneSyncService, Oneshot};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{BoxError, CredentialError};
use crate::token::{AccessToken, TokenRequest};

mod authorization_code;
pub(crate) mod azure_cli;
pub(crate) mod azure_developer_cli;
mod cache_options;
pub(crate) mod certificate;
mod chain;
mod client_assertion;
mod client_secret;
mod default;
pub(crate) mod device_code;
mod env;
mod environment;
pub(crate) mod managed_identity;
mod middleware;
mod process;
mod refresh_tokens;
mod settings;
mod shared_token_cache;
mod tool;
mod workload_identity;

pub use authorization_code::{AuthorizationCodeCredential, AuthorizationCodeCredentialBuilder};
pub use azure_cli::{AzureCliCredential, AzureCliCredentialBuilder};
pub use azure_developer_cli::{AzureDeveloperCliCredential, AzureDeveloperCliCredentialBuilder};
pub(crate) use cache_options::CacheLocation;
pub use cache_options::TokenCachePersistenceOptions;
pub use certificate::{
    CertificateSignature, CertificateSource, ClientCertificateCredential,
    ClientCertificateCredentialBuilder,
};
pub use chain::{ChainedTokenCredential, Fallback, FallbackFuture};
pub use client_assertion::{
    AssertionRequest, AssertionService, AssertionSource, ClientAssertionCredential,
    ClientAssertionCredentialBuilder,
};
pub use client_secret::{ClientSecretCredential, ClientSecretCredentialBuilder};
pub use default::{DefaultAzureCredential, DefaultAzureCredentialBuilder};
pub use device_code::{DeviceCodeCredential, DeviceCodeCredentialBuilder, DeviceCodeInfo};
pub use environment::{EnvironmentCredential, EnvironmentCredentialBuilder};
pub use managed_identity::{
    ManagedIdentityCredential, ManagedIdentityCredentialBuilder, ManagedIdentitySource,
    UserAssignedId,
};
pub use shared_token_cache::{SharedTokenCacheCredential, SharedTokenCacheCredentialBuilder};
pub use workload_identity::{WorkloadIdentityCredential, WorkloadIdentityCredentialBuilder};

/// A credential: a cloneable, thread-safe tower service that answers token requests.
///
/// Implemented for every type of the right shape; never implement it by hand.
pub trait TokenCredential:
    Service<TokenRequest, Response = AccessToken, Error = CredentialError, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> TokenCredential for T where
    T: Service<
            TokenRequest,
            Response = AccessToken,
            Error = CredentialError,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The future of [`CredentialExt::get_token`]: drives the credential to readiness, then calls it.
pub type GetToken<C> = Oneshot<C, TokenRequest>;

/// Methods every [`TokenCredential`] gets.
pub trait CredentialExt: TokenCredential + Sized {
    /// Gets a token for these scopes.
    fn get_token<I, S>(&self, scopes: I) -> GetToken<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.get_token_with(TokenRequest::new(scopes))
    }

    /// Gets a token for a full request (claims, tenant, CAE).
    fn get_token_with(&self, request: TokenRequest) -> GetToken<Self> {
        self.clone().oneshot(request)
    }

    /// Erases the type, for a [`ChainedTokenCredential`] or a struct field. The box keeps the
    /// credential's type name for errors and traces. (Not `boxed`, which would clash with
    /// `tower::ServiceExt::boxed` wherever both traits are in scope.)
    fn boxed_credential(self) -> BoxCredential {
        BoxCredential::new(self)
    }

    /// Tries `self`, and when it is *unavailable*, `other`: a typed two-element chain.
    fn or<B: TokenCredential>(self, other: B) -> Fallback<Self, B> {
        Fallback::new(self, other)
    }

    /// Wraps the credential in tower middleware (`tower::timeout`, `buffer`, `retry`, a
    /// [`ServiceBuilder`](tower::ServiceBuilder) of several) and boxes the result as a
    /// credential again, named after this credential's type. The middleware's errors become
    /// [`CredentialError`]s as [`BoxCredential::from_service`] describes.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tower::ServiceBuilder;
    /// use tower_identity::{AzureCliCredential, CredentialExt, EnvironmentCredential};
    ///
    /// # async fn run() -> Result<(), tower_identity::CredentialError> {
    /// // At most 10 s for the environment's credential, then Azure CLI if it is unavailable.
    /// let credential = EnvironmentCredential::new()
    ///     .with_middleware(ServiceBuilder::new().timeout(Duration::from_secs(10)))
    ///     .or(AzureCliCredential::new());
    /// let token = credential.get_token(["https://management.azure.com/.default"]).await?;
    /// println!("{} answered", token.credential().unwrap_or("?"));
    /// # Ok(()) }
    /// ```
    fn with_middleware<L>(self, layer: L) -> BoxCredential
    where
        L: Layer<Self>,
        L::Service: Service<
                TokenRequest,
                Response = AccessToken,
                Error: Into<BoxError>,
                Future: Send + 'static,
            > + Clone
            + Send
            + Sync
            + 'static,
    {
        BoxCredential::from_service(short_type_name::<Self>(), layer.layer(self))
    }
}

impl<T: TokenCredential> CredentialExt for T {}

/// A type-erased credential with a name (for traces and chain messages).
///
/// A token that comes out of it without a [credential name](AccessToken::credential) (one of
/// your own credential) gets the box's name; tokens of this crate's credentials keep theirs.
#[derive(Clone)]
pub struct BoxCredential {
    name: Cow<'static, str>,
    inner: BoxCloneSyncService<TokenRequest, AccessToken, CredentialError>,
}

impl BoxCredential {
    /// Boxes a credential, naming it after its type (`ClientSecretCredential`, …).
    pub fn new<C: TokenCredential>(credential: C) -> Self {
        Self::named(short_type_name::<C>(), credential)
    }

    /// Boxes a credential under a name of your choice.
    pub fn named<C: TokenCredential>(name: impl Into<Cow<'static, str>>, credential: C) -> Self {
        let name = name.into();
        let answered_by_name = name.clone();
        let credential = credential.map_response(move |token: AccessToken| {
            answered_by(token, || answered_by_name.clone())
        });
        Self {
            name,
            inner: BoxCloneSyncService::new(credential),
        }
    }

    /// Boxes any token service whose error converts into a [`BoxError`] — a credential
    /// wrapped in tower middleware such as `tower::timeout::Timeout`, `tower::buffer::Buffer`
    /// (put `tower::limit::RateLimit`, which is not `Clone`, behind one) or
    /// `tower::retry::Retry` — as a credential named `name`, usable in a
    /// [`ChainedTokenCredential`], with [`or`](CredentialExt::or) and in the bearer layer.
    ///
    /// The middleware's errors become [`CredentialError`]s:
    ///
    /// * the credential's own error, passed through boxed, comes back unchanged (kind,
    ///   provider details, cause), so *unavailable* still lets a chain move on;
    /// * `tower::timeout`'s elapsed deadline is *authentication failed* with
    ///   [`is_timeout`](CredentialError::is_timeout) and
    ///   [`is_transient`](CredentialError::is_transient): the credential was asked and did not
    ///   answer, so a chain stops rather than silently switch identity;
    /// * any other middleware error (a buffer whose worker is gone, an overload) is
    ///   *authentication failed* under `name`, keeping the middleware's error as its
    ///   [`source`](std::error::Error::source).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tower::ServiceBuilder;
    /// use tower_identity::{BoxCredential, ChainedTokenCredential, CredentialExt, EnvironmentCredential};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// // One shared credential for many tasks, at most 5 calls a second, 10 s each.
    /// let service = ServiceBuilder::new()
    ///     .buffer(64)
    ///     .rate_limit(5, Duration::from_secs(1))
    ///     .timeout(Duration::from_secs(10))
    ///     .service(EnvironmentCredential::new());
    /// let credential = BoxCredential::from_service("EnvironmentCredential", service);
    /// let chain = ChainedTokenCredential::new([credential])?;
    /// let token = chain.get_token(["https://management.azure.com/.default"]).await?;
    /// # let _ = token; Ok(()) }
    /// ```
    pub fn from_service<S>(name: impl Into<Cow<'static, str>>, service: S) -> Self
    where
        S: Service<
                TokenRequest,
                Response = AccessToken,
                Error: Into<BoxError>,
                Future: Send + 'static,
            > + Clone
            + Send
            + Sync
            + 'static,
    {
        let name = name.into();
        let errors = name.clone();
        Self::named(
            name,
            service.map_err(move |error: S::Error| {
                middleware::credential_error(errors.clone(), error.into())
            }),
        )
    }

    /// The credential's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Service<TokenRequest> for BoxCredential {
    type Response = AccessToken;
    type Error = CredentialError;
    type Future = <BoxCloneSyncService<TokenRequest, AccessToken, CredentialError> as Service<
        TokenRequest,
    >>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        self.inner.call(request)
    }
}

impl fmt::Debug for BoxCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BoxCredential").field(&self.name).finish()
    }
}

/// `token`, named after `name()` unless it already names the credential that obtained it
/// (a token of the user's own credential, reaching a box or a chain).
fn answered_by<N: Into<Cow<'static, str>>>(
    token: AccessToken,
    name: impl FnOnce() -> N,
) -> AccessToken {
    if token.credential().is_some() {
        token
    } else {
        token.with_credential(name())
    }
}

/// The last path segment of a type's name, without generics: `a::b::Fallback<X, Y>` → `Fallback`.
pub(crate) fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    let head = full.split('<').next().unwrap_or(full);
    head.rsplit("::").next().unwrap_or(head)
}

/// A validated request, ready for a credential's in-memory cache and its acquisition.
pub(crate) struct Plan {
    pub(crate) tenant: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) cae: bool,
    /// The `claims` form field: the request's claims with the CAE capability merged in.
    pub(crate) claims: Option<String>,
    /// The tenant the request named, if any.
    pub(crate) requested_tenant: Option<String>,
    bypass: bool,
}

impl Plan {
    /// Validates `request` and resolves its tenant with `tenant` (given the requested one, or
    /// `None`); every failure is an invalid request of `credential`.
    pub(crate) fn new(
        credential: &'static str,
        request: &TokenRequest,
        tenant: impl FnOnce(Option<&str>) -> Result<String, String>,
    ) -> Result<Self, CredentialError> {
        request.validate(credential)?;
        let invalid = |m: String| CredentialError::invalid_request(credential, m);
        let resolved = tenant(request.tenant_id()).map_err(invalid)?;
        let claims = crate::entra::token_client::claims_field(request.claims(), request.is_cae())
            .map_err(invalid)?;
        Ok(Self {
            tenant: resolved,
            scopes: request.scopes().to_vec(),
            cae: request.is_cae(),
            claims,
            requested_tenant: request.tenant_id().map(str::to_owned),
            bypass: request.claims().is_some(),
        })
    }

    /// The cached token for this plan, or the result of `acquire` under the refresh rules.
    pub(crate) async fn run<F, Fut>(
        self,
        cache: &crate::cache::TokenCache,
        acquire: F,
    ) -> Result<AccessToken, CredentialError>
    where
        F: FnOnce(Plan) -> Fut,
        Fut: Future<Output = Result<AccessToken, CredentialError>> + Send + 'static,
    {
        let key = crate::cache::CacheKey::new(&self.tenant, &self.scopes, self.cae);
        let bypass = self.bypass;
        cache
            .get_or_acquire(key, bypass, move || acquire(self))
            .await
    }

    /// [`run`](Self::run) for a caller that chose whose token `acquire` obtains when the
    /// cache was at `generation`: `None` when the cache was cleared since (see
    /// [`TokenCache::get_or_acquire_as_of`](crate::cache::TokenCache::get_or_acquire_as_of)).
    pub(crate) async fn run_as_of<F, Fut>(
        self,
        cache: &crate::cache::TokenCache,
        generation: u64,
        acquire: F,
    ) -> Option<Result<AccessToken, CredentialError>>
    where
        F: FnOnce(Plan) -> Fut,
        Fut: Future<Output = Result<AccessToken, CredentialError>> + Send + 'static,
    {
        let key = crate::cache::CacheKey::new(&self.tenant, &self.scopes, self.cae);
        let bypass = self.bypass;
        cache
            .get_or_acquire_as_of(key, bypass, Some(generation), move || acquire(self))
            .await
    }
}

/// Boxed future for the credentials of this crate: their work is network-bound, so one
/// allocation per call does not matter, and it keeps their `Service` impls short.
pub(crate) type CredentialFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<AccessToken, CredentialError>> + Send>>;

/// Implements `Service<TokenRequest>` for a credential that is an `Arc` around a type with
/// `async fn get_token(&self, TokenRequest) -> Result<AccessToken, CredentialError>`.
macro_rules! arc_credential_service {
    ($credential:ty) => {
        impl tower_service::Service<$crate::TokenRequest> for $credential {
            type Response = $crate::AccessToken;
            type Error = $crate::CredentialError;
            type Future = $crate::credential::CredentialFuture;

            fn poll_ready(
                &mut self,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Self::Error>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: $crate::TokenRequest) -> Self::Future {
                let inner = std::sync::Arc::clone(&self.inner);
                Box::pin(async move { inner.get_token(request).await })
            }
        }
    };
}
pub(crate) use arc_credential_service;

#[cfg(test)]
mod tests {
    use super::*;

    struct Outer<T>(T);

    #[test]
    fn short_type_names_drop_paths_and_generics() {
        assert_eq!(short_type_name::<BoxCredential>(), "BoxCredential");
        assert_eq!(short_type_name::<Outer<BoxCredential>>(), "Outer");
    }
}
