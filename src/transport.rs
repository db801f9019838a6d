//! [`HttpClient`]: the tower service credentials send their token requests through.
//!
//! The default is hyper-util's client over rustls (ring, Mozilla's roots from
//! `webpki-roots`, HTTPS only, HTTP/1.1 and HTTP/2) with:
//!
//! * a cap on response bodies (1 MiB by default), so a broken or hostile endpoint cannot
//!   exhaust memory;
//! * a per-attempt timeout (10 s by default);
//! * bounded retries of 408, 429, 500, 502, 503, 504 and connection failures (3 by default),
//!   with exponential backoff and jitter, honouring `Retry-After` (seconds or an HTTP date),
//!   `retry-after-ms` and `x-ms-retry-after-ms`. Other 4xx answers — the identity provider's
//!   `invalid_client`, `invalid_grant`, … — are final and never retried, and neither are
//!   TLS failures;
//! * a total deadline over all attempts and waits (30 s by default): an endpoint that accepts
//!   connections and never answers costs one call at most this long. The final error says how
//!   many attempts were made over how long.
//!
//! [`ManagedIdentityCredential`](crate::ManagedIdentityCredential) builds variants of its own:
//! plain `http` allowed (its endpoints are link-local or loopback), a connect timeout and
//! IMDS's retry schedule, or (Service Fabric) a server trusted by its certificate's thumbprint.
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

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{BoxError, ConfigError};

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
/// Default total deadline of one request, over its attempts and the waits between them.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait a server's `Retry-After` is read as (MSAL.NET caps it at one hour too):
/// larger values, up to `1e300` or `u64::MAX` seconds, mean "much later", not an overflow.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The HTTP client of the credentials: a cloneable, boxed tower service.
#[derive(Clone)]
pub struct HttpClient {
    inner: BoxCloneSyncService<HttpRequest, HttpResponse, BoxError>,
}

impl HttpClient {
    /// The default client (see the module docs).
    pub fn new() -> Self {
        Self::builder().build_with_roots(default_roots())
    }

    /// A builder for the default client with other settings.
    pub fn builder() -> HttpClientBuilder {
        HttpClientBuilder::default()
    }

    /// Uses any tower service of the right shape as the client (for example one with your
    /// own proxy connector). Nothing is added: no retries, no cap, no timeout.
    pub fn from_service<S>(service: S) -> Self
    where
        S: Service<HttpRequest, Response = HttpResponse> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Self {
            inner: BoxCloneSyncService::new(service.map_err(Into::into)),
        }
    }

    /// Wraps the whole client in a tower layer (timeout, concurrency limit, rate limit, …).
    pub fn layer<L>(self, layer: L) -> Self
    where
        L: Layer<HttpClient>,
        L::Service: Service<HttpRequest, Response = HttpResponse> + Clone + Send + Sync + 'static,
        <L::Service as Service<HttpRequest>>::Error: Into<BoxError>,
        <L::Service as Service<HttpRequest>>::Future: Send + 'static,
    {
        Self::from_service(layer.layer(self))
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

/// Settings for the default [`HttpClient`].
#[derive(Clone, Debug)]
pub struct HttpClientBuilder {
    extra_roots_pem: Vec<Vec<u8>>,
    timeout: Option<Duration>,
    max_response_bytes: usize,
    retry: Option<RetryOptions>,
    /// Crate-private: managed identity endpoints are plain `http` on link-local or loopback
    /// addresses.
    allow_http: bool,
    /// Crate-private: a connect timeout apart from the per-attempt one (IMDS: 2 s, so a host
    /// without IMDS is told quickly).
    connect_timeout: Option<Duration>,
    /// Crate-private: replaces the root store (Service Fabric pins its server's certificate).
    verifier: Option<Arc<dyn rustls::client::danger::ServerCertVerifier>>,
}

impl Default for HttpClientBuilder {
    fn default() -> Self {
        Self {
            extra_roots_pem: Vec::new(),
            timeout: Some(DEFAULT_TIMEOUT),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            retry: Some(RetryOptions::default()),
            allow_http: false,
            connect_timeout: None,
            verifier: None,
        }
    }
}

impl HttpClientBuilder {
    /// Trusts the certificates in this PEM text (one or more `CERTIFICATE` blocks) as roots,
    /// in addition to the public roots: for an authority behind a private CA.
    pub fn add_root_certificates_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.extra_roots_pem.push(pem.as_ref().to_vec());
        self
    }

    /// Per-attempt timeout covering connect, headers and body (default 10 s); `None` waits
    /// forever. The total deadline of [`RetryOptions::total_timeout`] applies as well.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Largest response body accepted; larger ones fail the request.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Retry settings for throttling, server errors and connection failures.
    pub fn retry(mut self, options: RetryOptions) -> Self {
        self.retry = Some(options);
        self
    }

    /// Never retry.
    pub fn no_retry(mut self) -> Self {
        self.retry = None;
        self
    }

    /// Also sends plain `http` requests (managed identity endpoints).
    pub(crate) fn allow_http(mut self) -> Self {
        self.allow_http = true;
        self
    }

    /// Gives up connecting after this long (the per-attempt timeout still applies).
    pub(crate) fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Trusts servers by this verifier instead of the root store.
    pub(crate) fn server_cert_verifier(
        mut self,
        verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    ) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Builds the client; fails if a PEM has no certificate or a certificate is invalid.
    pub fn build(self) -> Result<HttpClient, ConfigError> {
        let mut roots = default_roots();
        for pem in &self.extra_roots_pem {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    ConfigError::new("root certificate PEM could not be parsed").with_source(e)
                })?;
            if certs.is_empty() {
                return Err(ConfigError::new(
                    "root certificate PEM holds no \"-----BEGIN CERTIFICATE-----\" block",
                ));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    ConfigError::new("a root certificate was rejected").with_source(e)
                })?;
            }
        }
        Ok(self.build_with_roots(roots))
    }

    #[allow(
        clippy::expect_used,
        reason = "ring supports TLS 1.2 and 1.3, the safe defaults: this cannot fail"
    )]
    fn build_with_roots(self, roots: rustls::RootCertStore) -> HttpClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions");
        let tls = match self.verifier {
            Some(verifier) => config
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
            None => config.with_root_certificates(roots).with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let connector = if self.allow_http {
            connector.https_or_http()
        } else {
            connector.https_only()
        };
        let connector = connector.enable_http1().enable_http2().wrap_connector({
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(self.connect_timeout);
            http
        });
        let leaf = HyperLeaf {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout: self.timeout,
            max_response_bytes: self.max_response_bytes,
        };
        match self.retry {
            Some(options) => HttpClient::from_service(Retrying { leaf, options }),
            None => HttpClient::from_service(leaf),
        }
    }
}

fn default_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

type HyperClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// hyper-util's client, with the timeout and the body cap.
#[derive(Clone)]
struct HyperLeaf {
    client: HyperClient,
    timeout: Option<Duration>,
    max_response_bytes: usize,
}

impl Service<HttpRequest> for HyperLeaf {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<HttpResponse, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The legacy client is always ready; it queues on its pool internally.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let client = self.client.clone();
        let limit = self.max_response_bytes;
        let exchange = async move {
            let response = client
                .request(request)
                .await
                .map_err(TransportError::from_client)?;
            if let Some(length) = content_length(response.headers()) {
                if length > limit as u64 {
                    return Err(TransportError::too_large(limit));
                }
            }
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        TransportError::too_large(limit)
                    } else {
                        TransportError::new(
                            TransportErrorKind::Io,
                            "reading the response body failed",
                        )
                        .with_source(e)
                    }
                })?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body))
        };
        let timeout = self.timeout;
        Box::pin(async move {
            let result = match timeout {
                Some(limit) => tokio::time::timeout(limit, exchange)
                    .await
                    .unwrap_or_else(|_| Err(TransportError::timed_out(limit))),
                None => exchange.await,
            };
            result.map_err(BoxError::from)
        })
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A failure of the default client. Reached through `CredentialError::source()`; the
/// [`CredentialError`](crate::CredentialError) answers the same questions
/// ([`is_timeout`](crate::CredentialError::is_timeout),
/// [`is_connect`](crate::CredentialError::is_connect), …).
#[derive(Debug)]
pub struct TransportError {
    kind: TransportErrorKind,
    message: String,
    source: Option<BoxError>,
    attempts: u32,
    elapsed: Duration,
}

/// What kind of transport failure: kept when the error is redacted for a credential's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransportErrorKind {
    Connect,
    Tls,
    Timeout,
    TooLarge,
    Io,
}

/// How many attempts one request took and over how long; set by the default client's
/// retries on the final response's extensions (and on its final error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attempts {
    pub(crate) count: u32,
    pub(crate) elapsed: Duration,
}

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tenths of a second: enough to tell backoff from a hang, stable to read.
        let tenths = self.elapsed.as_millis() / 100;
        write!(
            f,
            "{} attempts over {}.{} s",
            self.count,
            tenths / 10,
            tenths % 10
        )
    }
}

impl TransportError {
    fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            attempts: 1,
            elapsed: Duration::ZERO,
        }
    }

    /// The same failure, its whole text passed through `redact` and its source dropped (the
    /// source could quote what was sent): what a credential's error keeps.
    pub(crate) fn redacted(&self, redact: impl FnOnce(&str) -> String) -> Self {
        let mut text = self.message.clone();
        if let Some(root) = self.root_cause() {
            text.push_str(&format!(": {root}"));
        }
        Self {
            kind: self.kind,
            message: redact(&text),
            source: None,
            attempts: self.attempts,
            elapsed: self.elapsed,
        }
    }

    /// The innermost cause: it says what actually happened (refused, unknown issuer, …).
    fn root_cause(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| source_chain(s).last().unwrap_or(s))
    }

    pub(crate) fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// How many attempts were made before this error (1 without retries).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    fn from_client(error: hyper_util::client::legacy::Error) -> Self {
        let tls = source_chain(&error).find_map(rustls_error);
        let (kind, message) = if let Some(tls) = tls {
            let unknown_issuer = matches!(
                tls,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            );
            (
                TransportErrorKind::Tls,
                // The hint only where it helps: not for an expired certificate, a wrong name or
                // a pinned thumbprint that does not match.
                if unknown_issuer {
                    "TLS handshake failed (if the server uses a private CA, add it with \
                     HttpClient::builder().add_root_certificates_pem)"
                } else {
                    "TLS handshake failed"
                },
            )
        } else if error.is_connect() {
            (TransportErrorKind::Connect, "connection failed")
        } else {
            (TransportErrorKind::Io, "the HTTP exchange failed")
        };
        Self::new(kind, message).with_source(error)
    }

    fn too_large(limit: usize) -> Self {
        Self::new(
            TransportErrorKind::TooLarge,
            format!("the response body is larger than the {limit}-byte limit"),
        )
    }

    fn timed_out(limit: Duration) -> Self {
        Self::new(
            TransportErrorKind::Timeout,
            format!("no complete response within {limit:?}"),
        )
    }

    fn deadline(limit: Duration) -> Self {
        Self::new(
            TransportErrorKind::Timeout,
            format!("no complete response within the total deadline of {limit:?}"),
        )
    }

    /// Whether the request timed out.
    pub fn is_timeout(&self) -> bool {
        self.kind == TransportErrorKind::Timeout
    }

    /// Whether the response body was over the size cap.
    pub fn is_body_too_large(&self) -> bool {
        self.kind == TransportErrorKind::TooLarge
    }

    /// Whether the TLS handshake failed (for example an unknown CA).
    pub fn is_tls(&self) -> bool {
        self.kind == TransportErrorKind::Tls
    }

    /// Whether connecting failed.
    pub fn is_connect(&self) -> bool {
        self.kind == TransportErrorKind::Connect
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(root) = self.root_cause() {
            write!(f, ": {root}")?;
        }
        if self.attempts > 1 {
            let attempts = Attempts {
                count: self.attempts,
                elapsed: self.elapsed,
            };
            write!(f, " ({attempts})")?;
        }
        Ok(())
    }
}

impl StdError for TransportError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// hyper-rustls reports a handshake failure as an io::Error wrapping an io::Error wrapping
/// rustls::Error, and io::Error::source() skips the error it wraps: unwrap explicitly.
fn rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn StdError + 'static));
    }
    None
}

/// An error and its sources, outermost first.
fn source_chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |e: &&'a (dyn StdError + 'static)| {
        (*e).source()
    })
}

/// How token requests are retried, and how long one request may take in all.
#[derive(Clone, Copy, Debug)]
pub struct RetryOptions {
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_retry_after: Duration,
    total_timeout: Option<Duration>,
    /// Crate-private: which answers are retried, and how long to wait.
    schedule: RetrySchedule,
}

/// What a [`RetryOptions`] retries and how it backs off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetrySchedule {
    /// 408, 429, 500, 502, 503, 504 and connection failures; the backoff doubles from
    /// `initial_backoff`, with jitter.
    Standard,
    /// IMDS (azure-identity's `imds.py` over azure-core's `RetryPolicy`): also 404 (the
    /// identity is not ready yet), 410 (IMDS is being updated) and every 5xx; no wait before
    /// the first retry, then `initial_backoff · 2^(n−1)` for the n-th, without jitter. After a
    /// 410 the factor is [`IMDS_GONE_BACKOFF`] for the rest of the request: Microsoft documents
    /// that an update can take up to 70 s, and 0 + 5 + 10 + 20 + 40 s outlasts it.
    Imds,
}

/// The IMDS backoff factor once it answered 410.
pub(crate) const IMDS_GONE_BACKOFF: Duration = Duration::from_millis(2500);

impl Default for RetryOptions {
    fn default() -> Self {
        // azure-core's defaults start at 0.8 s and double; three retries keep a failing
        // token request under ~6 s of backoff.
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(800),
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(60),
            total_timeout: Some(DEFAULT_TOTAL_TIMEOUT),
            schedule: RetrySchedule::Standard,
        }
    }
}

impl RetryOptions {
    /// Retries after the first attempt (default 3).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// First backoff; it doubles per retry, with ±20 % jitter (default 800 ms).
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Cap on a computed backoff (default 60 s).
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// A server asking to wait longer than this (`Retry-After`) is not retried: its answer is
    /// returned at once (default 60 s), and the credential sends that server nothing until
    /// the wait has passed (at most an hour).
    pub fn max_retry_after(mut self, wait: Duration) -> Self {
        self.max_retry_after = wait;
        self
    }

    /// The deadline of one request over all its attempts and the waits between them (default
    /// 30 s); `None` for none. An attempt still running at the deadline is abandoned, and a
    /// wait (backoff or `Retry-After`) that would end after it is not started: the last answer
    /// is returned instead.
    pub fn total_timeout(mut self, deadline: Option<Duration>) -> Self {
        self.total_timeout = deadline;
        self
    }

    /// The IMDS schedule (see [`RetrySchedule::Imds`]): 5 retries from 0.8 s, within `total`.
    pub(crate) fn imds(total: Duration) -> Self {
        Self {
            max_retries: 5,
            initial_backoff: Duration::from_millis(800),
            total_timeout: Some(total),
            schedule: RetrySchedule::Imds,
            ..Self::default()
        }
    }
}

/// The default client's retries and total deadline, around hyper-util.
#[derive(Clone)]
struct Retrying {
    leaf: HyperLeaf,
    options: RetryOptions,
}

impl Service<HttpRequest> for Retrying {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<HttpResponse, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let leaf = self.leaf.clone();
        let options = self.options;
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            // A deadline too far to represent is no deadline.
            let deadline = options
                .total_timeout
                .and_then(|limit| Some((started.checked_add(limit)?, limit)));
            let mut policy = RetryPolicy::new(options);
            let mut attempts = 0u32;
            loop {
                attempts = attempts.saturating_add(1);
                let attempt = leaf.clone().oneshot(clone_request(&request));
                let result = match deadline {
                    Some((at, limit)) => tokio::time::timeout_at(at, attempt)
                        .await
                        .unwrap_or_else(|_| Err(TransportError::deadline(limit).into())),
                    None => attempt.await,
                };
                let wait = (policy.retries < options.max_retries)
                    .then(|| policy.delay_for(&result))
                    .flatten()
                    .filter(|wait| {
                        deadline.is_none_or(|(at, _)| {
                            tokio::time::Instant::now()
                                .checked_add(*wait)
                                .is_some_and(|end| end < at)
                        })
                    });
                let Some(wait) = wait else {
                    let attempts = Attempts {
                        count: attempts,
                        elapsed: started.elapsed(),
                    };
                    return finish(result, attempts);
                };
                policy.retries = policy.retries.saturating_add(1);
                tracing::debug!(
                    retry = policy.retries,
                    ?wait,
                    status = result.as_ref().ok().map(|r| r.status().as_u16()),
                    "retrying token request"
                );
                tokio::time::sleep(wait).await;
            }
        })
    }
}

/// Records the attempts on the final answer: the response's extensions, or the error.
fn finish(
    result: Result<HttpResponse, BoxError>,
    attempts: Attempts,
) -> Result<HttpResponse, BoxError> {
    match result {
        Ok(mut response) => {
            response.extensions_mut().insert(attempts);
            Ok(response)
        }
        Err(error) => Err(match error.downcast::<TransportError>() {
            Ok(mut transport) => {
                transport.attempts = attempts.count;
                transport.elapsed = attempts.elapsed;
                transport
            }
            Err(other) => other,
        }),
    }
}

fn clone_request(request: &HttpRequest) -> HttpRequest {
    let mut clone = http::Request::new(request.body().clone());
    *clone.method_mut() = request.method().clone();
    *clone.uri_mut() = request.uri().clone();
    *clone.version_mut() = request.version();
    *clone.headers_mut() = request.headers().clone();
    clone
}

/// When to retry one request; counts its retries.
#[derive(Clone, Debug)]
struct RetryPolicy {
    options: RetryOptions,
    retries: u32,
    /// IMDS answered 410 during this request: it is being updated, back off longer.
    gone: bool,
}

impl RetryPolicy {
    fn new(options: RetryOptions) -> Self {
        Self {
            options,
            retries: 0,
            gone: false,
        }
    }

    fn backoff(&self) -> Duration {
        match self.options.schedule {
            RetrySchedule::Standard => {
                let exponential = self
                    .options
                    .initial_backoff
                    .saturating_mul(2u32.saturating_pow(self.retries));
                let factor = 0.8 + fastrand::f64() * 0.4;
                // Too long for a Duration is as long as the cap allows.
                let jittered = Duration::try_from_secs_f64(exponential.as_secs_f64() * factor)
                    .unwrap_or(Duration::MAX);
                jittered.min(self.options.max_backoff)
            }
            RetrySchedule::Imds => {
                let factor = if self.gone {
                    IMDS_GONE_BACKOFF
                } else {
                    self.options.initial_backoff
                };
                imds_backoff(
                    factor,
                    self.retries.saturating_add(1),
                    self.options.max_backoff,
                )
            }
        }
    }

    fn is_retryable(&self, status: StatusCode) -> bool {
        match self.options.schedule {
            RetrySchedule::Standard => is_retryable_status(status),
            RetrySchedule::Imds => is_imds_retryable_status(status),
        }
    }

    /// The wait before the next attempt, or `None` when the outcome is final.
    fn delay_for(&mut self, result: &Result<HttpResponse, BoxError>) -> Option<Duration> {
        match result {
            Ok(response) if self.is_retryable(response.status()) => {
                if response.status() == StatusCode::GONE {
                    self.gone = true;
                }
                match retry_after(response.headers(), SystemTime::now()) {
                    Some(wait) if wait > self.options.max_retry_after => {
                        tracing::debug!(
                            ?wait,
                            "server asked to wait longer than allowed; not retrying"
                        );
                        None
                    }
                    Some(wait) => Some(wait),
                    None => Some(self.backoff()),
                }
            }
            Ok(_) => None,
            Err(error) => is_retryable_error(error.as_ref()).then(|| self.backoff()),
        }
    }
}

/// azure-core's backoff for the `retry`-th retry (1-based): none before the first, then
/// `factor · 2^(retry−1)`, capped.
pub(crate) fn imds_backoff(factor: Duration, retry: u32, cap: Duration) -> Duration {
    if retry <= 1 {
        return Duration::ZERO;
    }
    factor
        .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
        .min(cap)
}

/// 408, 429 and the transient 5xx: what azure-core retries.
pub(crate) fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// What the IMDS schedule retries: 404, 408, 410, 429 and every 5xx.
fn is_imds_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 404 | 408 | 410 | 429) || status.is_server_error()
}

/// Connection failures and timeouts are worth another try; TLS failures and oversized
/// bodies are not (they would fail the same way). Errors from user layers are retried.
fn is_retryable_error(error: &(dyn StdError + 'static)) -> bool {
    match source_chain(error).find_map(|e| e.downcast_ref::<TransportError>()) {
        Some(t) => matches!(
            t.kind,
            TransportErrorKind::Connect | TransportErrorKind::Timeout | TransportErrorKind::Io
        ),
        None => true,
    }
}

/// The server's requested wait: `retry-after-ms`, `x-ms-retry-after-ms` (milliseconds) or
/// `Retry-After` (seconds, possibly fractional, or an HTTP date).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(wait) = text(name).and_then(|v| seconds(v, 1000.0)) {
            return Some(wait);
        }
    }
    let value = text("retry-after")?;
    if let Some(wait) = seconds(value, 1.0) {
        return Some(wait);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// A non-negative number of `1/per_second` units as a wait, capped at [`MAX_RETRY_AFTER`];
/// `None` for anything that is not such a number (negative, NaN, text).
fn seconds(value: &str, per_second: f64) -> Option<Duration> {
    let number = value.parse::<f64>().ok().filter(|n| *n >= 0.0)?;
    // Infinite or too large for a Duration: as long as we ever wait.
    Some(
        Duration::try_from_secs_f64(number / per_second)
            .unwrap_or(MAX_RETRY_AFTER)
            .min(MAX_RETRY_AFTER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")]), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "1.5")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after-ms", "250"), ("retry-after", "9")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(&headers(&[("x-ms-retry-after-ms", "100")]), now),
            Some(Duration::from_millis(100))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(7))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "NaN")]), now), None);
        // Absurdly long waits are one hour: no overflow, no panic.
        for (name, value) in [
            ("retry-after", "1e20"),
            ("retry-after", "18446744073709551616"),
            ("retry-after", "inf"),
            ("retry-after-ms", "1e300"),
            ("x-ms-retry-after-ms", "1e25"),
            ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ] {
            assert_eq!(
                retry_after(&headers(&[(name, value)]), now),
                Some(MAX_RETRY_AFTER),
                "{name}: {value}"
            );
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_cap() {
        let mut policy =
            RetryPolicy::new(RetryOptions::default().max_backoff(Duration::from_secs(3)));
        for (retries, base) in [(0u32, 0.8f64), (1, 1.6)] {
            policy.retries = retries;
            let b = policy.backoff().as_secs_f64();
            assert!(
                b >= base * 0.8 - 1e-9 && b <= base * 1.2 + 1e-9,
                "{retries}: {b}"
            );
        }
        policy.retries = 10;
        assert_eq!(policy.backoff(), Duration::from_secs(3));
        // Absurd settings are capped, not an overflow.
        let mut huge = RetryPolicy::new(
            RetryOptions::default()
                .initial_backoff(Duration::MAX)
                .max_backoff(Duration::MAX),
        );
        huge.retries = u32::MAX;
        for _ in 0..100 {
            // 0.8–1.2 × the saturated exponential: above 0.79 × Duration::MAX, or the cap.
            assert!(huge.backoff() > Duration::from_secs(u64::MAX / 100 * 79));
        }
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 501, 505] {
            assert!(
                !is_retryable_status(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }

    fn answer(status: u16) -> Result<HttpResponse, BoxError> {
        Ok(http::Response::builder()
            .status(status)
            .body(Bytes::new())
            .unwrap())
    }

    #[test]
    fn imds_schedule_is_azure_cores_without_jitter() {
        let cap = Duration::from_secs(60);
        let delays = |factor: Duration| -> Vec<f64> {
            (1..=5)
                .map(|n| imds_backoff(factor, n, cap).as_secs_f64())
                .collect()
        };
        assert_eq!(
            delays(Duration::from_millis(800)),
            [0.0, 1.6, 3.2, 6.4, 12.8]
        );
        assert_eq!(delays(IMDS_GONE_BACKOFF), [0.0, 5.0, 10.0, 20.0, 40.0]);
        // 75 s of waiting outlasts a 70 s IMDS update.
        assert_eq!(delays(IMDS_GONE_BACKOFF).iter().sum::<f64>(), 75.0);
        assert_eq!(imds_backoff(IMDS_GONE_BACKOFF, 30, cap), cap);
        assert_eq!(imds_backoff(Duration::MAX, u32::MAX, cap), cap);

        let options = RetryOptions::imds(Duration::from_secs(90));
        assert_eq!(options.max_retries, 5);
        let mut policy = RetryPolicy::new(options);
        let mut waits = Vec::new();
        for status in [500, 404, 410, 503, 429] {
            waits.push(policy.delay_for(&answer(status)).unwrap().as_secs_f64());
            policy.retries += 1;
        }
        // 0 and 1.6 s before the 410; from it on, factor 2.5 (10, 20, 40 s).
        assert_eq!(waits, [0.0, 1.6, 10.0, 20.0, 40.0]);
        // Connection failures are retried on the same schedule.
        let mut policy = RetryPolicy::new(options);
        policy.retries = 1;
        let refused: BoxError = TransportError::new(TransportErrorKind::Connect, "x").into();
        assert_eq!(
            policy.delay_for(&Err(refused)),
            Some(Duration::from_millis(1600))
        );
    }

    #[test]
    fn imds_retries_404_410_and_every_5xx_and_honours_retry_after() {
        let mut policy = RetryPolicy::new(RetryOptions::imds(Duration::from_secs(90)));
        for s in [404, 408, 410, 429, 500, 501, 505, 599] {
            assert!(policy.delay_for(&answer(s)).is_some(), "{s}");
        }
        for s in [200, 400, 401, 403, 409] {
            assert!(policy.delay_for(&answer(s)).is_none(), "{s}");
        }
        let mut asked = answer(503).unwrap();
        asked
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(policy.delay_for(&Ok(asked)), Some(Duration::from_secs(7)));
        // The standard schedule is unchanged: 404 and 410 are final there.
        let mut standard = RetryPolicy::new(RetryOptions::default());
        assert!(standard.delay_for(&answer(404)).is_none());
        assert!(standard.delay_for(&answer(410)).is_none());
    }

    #[test]
    fn tls_and_size_failures_are_not_retried() {
        let tls = TransportError::new(TransportErrorKind::Tls, "x");
        let big = TransportError::too_large(10);
        let conn = TransportError::new(TransportErrorKind::Connect, "x");
        assert!(!is_retryable_error(&tls));
        assert!(!is_retryable_error(&big));
        assert!(is_retryable_error(&conn));
        assert!(is_retryable_error(&TransportError::timed_out(
            Duration::from_secs(1)
        )));
    }

    #[test]
    fn bad_pem_is_a_config_error() {
        let err = HttpClient::builder()
            .add_root_certificates_pem("not a pem")
            .build()
            .unwrap_err();
        assert!(
            err.message().contains("no \"-----BEGIN CERTIFICATE-----\""),
            "{err}"
        );
    }
}
