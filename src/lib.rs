//! Microsoft Entra ID (Azure AD) authentication for HTTP clients, the tower way.
//!
//! * **Credentials are tower services** from [`TokenRequest`] to [`AccessToken`]:
//!   [`DefaultAzureCredential`] (the chain most applications start from),
//!   [`ManagedIdentityCredential`] and [`WorkloadIdentityCredential`] for deployed services,
//!   [`ClientSecretCredential`], [`ClientCertificateCredential`],
//!   [`ClientAssertionCredential`] and [`EnvironmentCredential`] for service principals, [`AzureCliCredential`], [`AzureDeveloperCliCredential`],
//!   [`SharedTokenCacheCredential`], [`AuthorizationCodeCredential`] and
//!   [`DeviceCodeCredential`] (a user signing in on another device) for developers and users,
//!   or any type of the same shape ([`TokenCredential`]).
//! * **Chains are fallbacks**: [`ChainedTokenCredential`] and `a.or(b)`. An *unavailable*
//!   credential passes to the next; one that tried and failed stops the chain; the error lists
//!   every attempt.
//! * **Tokens are cached and renewed** per credential: concurrent callers share one request,
//!   a token is renewed in the last 5 minutes of its life (the last half for tokens living
//!   less than 10 minutes) or at the provider's `refresh_in`. A token that Microsoft Entra ID
//!   or a managed identity endpoint answers, living 2 hours or more without `refresh_in`, is
//!   renewed at half-life (MSAL's rule); that rule belongs to those answers only, not to
//!   tokens from Azure CLI or Azure Developer CLI nor to a credential of your own
//!   ([`AccessToken::from_unix`]), which keep the 5-minute window unless given a refresh time
//!   ([`with_refresh_on_unix`](AccessToken::with_refresh_on_unix)). Renewals are at least 30 s
//!   apart, a failed renewal keeps the still-valid token, and an expired token is never
//!   returned.
//! * **Shared across a fleet** (optional): a [`DistributedCache`] under a credential's
//!   in-memory cache lets the processes of a service share one token request per token
//!   lifetime through Redis or any [`TokenStore`](distributed::TokenStore), sealed at rest,
//!   never failing a request because the store did (see [`distributed`]).
//! * **[`BearerTokenLayer`]** wraps any HTTP client service (hyper-util, reqwest-middleware,
//!   axum outbound calls): it adds the token to each request, renews it in the background
//!   before it expires without making requests wait, and answers a continuous access
//!   evaluation (CAE) claims challenge with one re-send.
//! * **Bounded**: one token request has a total deadline over its retries (30 s by default,
//!   see [`RetryOptions`]; 90 s for IMDS, enough to wait out an IMDS update), a provider's
//!   `Retry-After` is remembered per credential, lifetimes are clamped, and no input makes the
//!   crate panic.
//!
//! ```no_run
//! use tower_identity::{
//!     AzureCliCredential, CredentialExt, DefaultAzureCredential, EnvironmentCredential,
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Deployed: the service's identity; on a laptop: the developer's sign-in.
//! let credential = DefaultAzureCredential::new()?;
//! let token = credential
//!     .get_token(["https://management.azure.com/.default"])
//!     .await?;
//! println!("token expires in {} s", token.expires_in().as_secs());
//!
//! // Or a chain of your own.
//! let chain = EnvironmentCredential::new().or(AzureCliCredential::new());
//! # let _ = chain; Ok(()) }
//! ```
//!
//! Errors are [`CredentialError`]s: ask [`kind`](CredentialError::kind), the credential, and
//! when the provider answered its status, `error`, AADSTS codes and correlation id. No error,
//! `Debug` output or trace of this crate contains a secret.
//!
//! Everything runs on tokio; token acquisitions are spawned tasks so that a caller giving up
//! does not cancel them for others.

#![deny(missing_docs)]
#![forbid(unsafe_code)]
// No input from a provider, a file, a program or a caller may make the library panic: its
// own code (not its tests) neither unwraps nor indexes nor does unchecked arithmetic. The
// rare justified exception says why with `#[allow(…, reason = …)]`; clippy in CI holds it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod bearer;
mod blocking_read;
mod cache;
pub mod credential;
pub mod distributed;
mod encoding;
mod entra;
mod error;
mod flight;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod proptests;
mod redact;
mod refresh;
mod regular_file;
#[cfg(test)]
mod test_support;
mod throttle;
mod token;
pub mod transport;

pub use bearer::{BearerToken, BearerTokenLayer, BearerTokenLayerBuilder};
pub use credential::{
    AssertionRequest, AssertionService, AssertionSource, AuthorizationCodeCredential,
    AuthorizationCodeCredentialBuilder, AzureCliCredential, AzureCliCredentialBuilder,
    AzureDeveloperCliCredential, AzureDeveloperCliCredentialBuilder, BoxCredential,
    CertificateSignature, CertificateSource, ChainedTokenCredential, ClientAssertionCredential,
    ClientAssertionCredentialBuilder, ClientCertificateCredential,
    ClientCertificateCredentialBuilder, ClientSecretCredential, ClientSecretCredentialBuilder,
    CredentialExt, DefaultAzureCredential, DefaultAzureCredentialBuilder, DeviceCodeCredential,
    DeviceCodeCredentialBuilder, DeviceCodeInfo, EnvironmentCredential,
    EnvironmentCredentialBuilder, Fallback, ManagedIdentityCredential,
    ManagedIdentityCredentialBuilder, ManagedIdentitySource, SharedTokenCacheCredential,
    SharedTokenCacheCredentialBuilder, TokenCachePersistenceOptions, TokenCredential,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialBuilder,
};
pub use distributed::{DistributedCache, SealingKey};
pub use entra::authority::authority_hosts;
pub use error::{BoxError, ConfigError, CredentialError, ErrorKind};
pub use token::{AccessToken, Secret, TokenRequest};
pub use transport::{HttpClient, HttpClientBuilder, RetryOptions, Roots};

// Compiles the README's Rust fragments as doctests so they keep up with the API (one needs `redis`).
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
