//! [`HttpClient`]: the tower service credentials send their token requests through.
//!
//! ```
//! use std::time::Duration;
//! use tower_identity::{HttpClient, RetryOptions};
//!
//! # fn run(private_ca_pem: &[u8]) -> Result<(), tower_identity::ConfigError> {
//! let http = HttpClient::builder()
//!     .add_root_certificates_pem(private_ca_pem)  // a private CA, added to the public roots
//!     .timeout(Some(Duration::from_secs(10)))
//!     .retry(RetryOptions::default().max_retries(2))
//!     .build()?
//!     // any tower layer around the whole client: concurrency limits, your own retry, …
//!     .layer(tower::limit::ConcurrencyLimitLayer::new(4));
//! # let _ = http; Ok(()) }
//! # run(b"").unwrap_err();
//! ```
//!
//! The default is hyper-util's client over rustls (ring; Mozilla's roots from `webpki-roots`,
//! or the platform's store with [`HttpClientBuilder::roots`]; HTTPS only; HTTP/1.1 and
//! HTTP/2) with:
//!
//! * a cap on response bodies (1 MiB by default), so a broken or hostile endpoint cannot
//!   exhaust memory;
//! * a per-attempt timeout (10 s by default) and a connect timeout (8 s by default, shared
//!   among the addresses a name resolves to: those of one family, IPv6 or IPv4, are tried one
//!   after another, each with an even share among them, the other family's from 300 ms on;
//!   see [`HttpClientBuilder::connect_timeout`]): an address that drops packets costs its
//!   share of one attempt, not all of it, when the name has others. Through a proxy, the
//!   connect timeout bounds the whole tunnel: reaching the proxy, CONNECT and the TLS
//!   handshake through it;
//! * bounded retries of 408, 429, 500, 502, 503, 504, connection failures (a proxy answering
//!   CONNECT with 502, 503 or 504 among them), attempts that timed out and exchanges cut off
//!   by an I/O error (3 by default),
//!   with exponential backoff and jitter, honouring `Retry-After` (seconds or an HTTP date),
//!   `retry-after-ms` and `x-ms-retry-after-ms`. Other 4xx answers — the identity provider's
//!   `invalid_client`, `invalid_grant`, … — are final and never retried, and neither are
//!   TLS failures. A request carrying a single-use grant (an authorization code, which the
//!   provider may have redeemed although no answer came back) is retried only after a
//!   connection failure, when nothing was sent, or a 429 (throttled: not processed). A URL
//!   whose scheme the client does not send (plain `http`) fails at once, unsent;
//! * a total deadline over all attempts and waits (30 s by default): an endpoint that accepts
//!   connections and never answers costs one call at most this long. The final error says how
//!   many attempts were made over how long.
//!
//! * proxies from the environment, read when the client is built, with curl's rules:
//!   `https_proxy`, else `all_proxy` (each lower case first, then upper case; hyper-util's
//!   own reader prefers upper case, so we read them ourselves), and `no_proxy`/`NO_PROXY`
//!   entries (separated by commas or blanks) that are domain suffixes, IP addresses, CIDR
//!   blocks, or a host or address or block with a port (that port only, as Python `requests`
//!   has it); `*` as the whole value exempts every host, and among other entries matches
//!   none, as in curl and Python. `HTTPS` requests go
//!   through a CONNECT tunnel; plain `http` is never proxied (so `HTTP_PROXY`, which is for
//!   `http` destinations, is not read). Credentials in the proxy URL are sent as Basic
//!   `Proxy-Authorization` and never shown. [`HttpClientBuilder::proxy`] sets one proxy,
//!   [`no_proxy`](HttpClientBuilder::no_proxy) none, and
//!   [`proxy_from_vars`](HttpClientBuilder::proxy_from_vars) reads given variables instead of
//!   the environment. A variable that is no usable `http://` proxy URL fails each request
//!   it would carry (not those `no_proxy` exempts), naming the variable, rather than being
//!   silently ignored. A value that is not valid UTF-8 is set, and unusable, never taken for
//!   unset: in `https_proxy` or `all_proxy` it fails the requests it would carry, and in
//!   `no_proxy`, when a proxy is set, every `https` request (which hosts it exempts cannot be
//!   read, and proxying them all could send a host it exempts to the proxy).
//!
//! [`ManagedIdentityCredential`](crate::ManagedIdentityCredential) builds variants of its own:
//! plain `http` allowed (its endpoints are link-local or loopback), never a proxy (IMDS must be
//! reached directly, and a proxy cannot reach the local endpoints as us), a connect timeout and
//! IMDS's retry schedule, or (Service Fabric) a server trusted by its certificate's thumbprint.

mod builder;
mod error;
mod leaf;
mod proxy;
mod retry;
mod roots;
#[cfg(test)]
mod tests;

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::Full;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::BoxError;

pub use builder::HttpClientBuilder;
pub use error::TransportError;
pub(crate) use error::{Attempts, TransportErrorKind};
pub use retry::RetryOptions;
pub(crate) use retry::{
    Answered, BeforeRetry, MAX_RETRY_AFTER, SingleUse, is_imds_retryable_status,
    is_retryable_status, retry_after,
};
pub use roots::Roots;

/// A request as credentials send it: the body is a complete, cheaply cloned buffer.
pub type HttpRequest = http::Request<Full<Bytes>>;
/// A response as credentials read it: the body is collected (and size-capped).
pub type HttpResponse = http::Response<Bytes>;

/// Default cap on response bodies. Token responses are a few KiB; an id token with many
/// group claims stays well below this.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Default per-attempt timeout. Entra answers token requests within a second or two; an
/// attempt that takes longer is better abandoned for another, inside the total deadline.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout of the default client, shared among a name's addresses (see
/// [`HttpClientBuilder::connect_timeout`]): without one, an address that drops packets would
/// use up each attempt before the next address is tried. Below the per-attempt timeout, which
/// starts before the name is resolved: a connect that fails is reported as one (with its
/// proxy hint, and retried as unsent, single-use grants included) rather than as the
/// attempt's timeout, and DNS keeps 2 s. A name with 8 addresses (Entra's often has) still
/// gives each 1 s, enough for a slow link's round trip. A tunnel through a proxy is ready
/// within it or fails as a connection too (naming the proxy): CONNECT and the TLS handshake
/// through the tunnel are under it.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(8);
/// Default total deadline of one request, over its attempts and the waits between them.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client of the credentials: a cloneable, boxed tower service.
#[derive(Clone)]
pub struct HttpClient {
    inner: BoxCloneSyncService<HttpRequest, HttpResponse, BoxError>,
    /// Built by [`HttpClientBuilder`], which sends `https` only (managed identity's own
    /// clients aside): a credential whose endpoint is plain `http` refuses it when built.
    https_only: bool,
}

impl HttpClient {
    /// The default client (see the module docs).
    pub fn new() -> Self {
        Self::builder().build_with_roots(roots::bundled())
    }

    /// A builder for the default client with other settings.
    pub fn builder() -> HttpClientBuilder {
        HttpClientBuilder::default()
    }

    /// Uses any tower service of the right shape as the client (for example one over a
    /// SOCKS connector). Nothing is added: no retries, no cap, no timeout. An `HttpClient`
    /// given here is what it was: one built by [`HttpClient::builder`] still sends `https`
    /// only.
    pub fn from_service<S>(service: S) -> Self
    where
        S: Service<HttpRequest, Response = HttpResponse> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        // A credential refuses an https-only client for a plain-http endpoint when it is
        // built; wrapped again, the client must not lose that.
        let https_only = (&service as &dyn std::any::Any)
            .downcast_ref::<HttpClient>()
            .is_some_and(HttpClient::https_only);
        Self {
            inner: BoxCloneSyncService::new(service.map_err(Into::into)),
            https_only,
        }
    }

    /// Whether this client is known to refuse plain `http` (built by [`HttpClientBuilder`],
    /// possibly wrapped in layers since).
    pub(crate) fn https_only(&self) -> bool {
        self.https_only
    }

    pub(super) fn refusing_plain_http(mut self, https_only: bool) -> Self {
        self.https_only = https_only;
        self
    }

    /// Wraps the whole client in a tower layer (timeout, concurrency limit, rate limit, …).
    pub fn layer<L>(self, layer: L) -> Self
    where
        L: Layer<HttpClient>,
        L::Service: Service<HttpRequest, Response = HttpResponse> + Clone + Send + Sync + 'static,
        <L::Service as Service<HttpRequest>>::Error: Into<BoxError>,
        <L::Service as Service<HttpRequest>>::Future: Send + 'static,
    {
        let https_only = self.https_only;
        Self::from_service(layer.layer(self)).refusing_plain_http(https_only)
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HttpClient")
    }
}

impl Service<HttpRequest> for HttpClient {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<HttpResponse, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        self.inner.call(request)
    }
}
