//! [`HttpClientBuilder`]: the default client's settings, and the TLS it is built on.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::leaf::HyperLeaf;
use super::proxy::{DirectConnector, ProxyConnector, ProxySetting, VarsFrom, direct_hint};
use super::retry::{RetryOptions, Retrying};
use super::roots::{Roots, root_store};
use super::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TIMEOUT, HttpClient};
use crate::error::ConfigError;
use crate::token::Secret;

/// Settings for the default [`HttpClient`].
#[derive(Clone)]
pub struct HttpClientBuilder {
    roots: Roots,
    extra_roots_pem: Vec<Vec<u8>>,
    timeout: Option<Duration>,
    max_response_bytes: usize,
    retry: Option<RetryOptions>,
    /// Crate-private: managed identity endpoints are plain `http` on link-local or loopback
    /// addresses.
    allow_http: bool,
    /// The connect timeout, shared among a name's addresses (IMDS: 2 s, so a host without
    /// IMDS is told quickly).
    connect_timeout: Option<Duration>,
    /// Crate-private: replaces the root store (Service Fabric pins its server's certificate).
    verifier: Option<Arc<dyn rustls::client::danger::ServerCertVerifier>>,
    /// Where the proxy comes from; its `Debug` never shows credentials.
    proxy: ProxySetting,
}

impl fmt::Debug for HttpClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every field named, so that a new one is not left out of `Debug` unnoticed.
        let Self {
            roots,
            extra_roots_pem,
            timeout,
            max_response_bytes,
            retry,
            allow_http,
            connect_timeout,
            verifier,
            proxy,
        } = self;
        // Lengths only: a PEM bundle may hold a private key beside its certificates.
        let pem_lengths = extra_roots_pem.iter().map(Vec::len).collect::<Vec<_>>();
        f.debug_struct("HttpClientBuilder")
            .field("roots", roots)
            .field(
                "extra_roots_pem",
                &format_args!("{} PEM(s) of {pem_lengths:?} bytes", pem_lengths.len()),
            )
            .field("timeout", timeout)
            .field("max_response_bytes", max_response_bytes)
            .field("retry", retry)
            .field("allow_http", allow_http)
            .field("connect_timeout", connect_timeout)
            .field("verifier", verifier)
            .field("proxy", proxy)
            .finish()
    }
}

impl Default for HttpClientBuilder {
    fn default() -> Self {
        Self {
            roots: Roots::default(),
            extra_roots_pem: Vec::new(),
            timeout: Some(DEFAULT_TIMEOUT),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            retry: Some(RetryOptions::default()),
            allow_http: false,
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            verifier: None,
            proxy: ProxySetting::default(),
        }
    }
}

impl HttpClientBuilder {
    /// Which roots to trust: the bundled ones (the default), the platform's store, or both.
    /// The platform's store is read by [`build`](Self::build), which fails only if no root
    /// is left at all (see [`Roots`]); parts that cannot be read are logged as warnings.
    pub fn roots(mut self, roots: Roots) -> Self {
        self.roots = roots;
        self
    }

    /// Trusts the certificates in this PEM text (one or more `CERTIFICATE` blocks) as roots,
    /// in addition to those chosen with [`roots`](Self::roots): for an authority behind a
    /// private CA.
    pub fn add_root_certificates_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.extra_roots_pem.push(pem.as_ref().to_vec());
        self
    }

    /// Per-attempt timeout covering connect, headers and body (default 10 s); `None` waits
    /// forever. Connecting alone has its own limit, [`connect_timeout`](Self::connect_timeout).
    /// The total deadline of [`RetryOptions::total_timeout`] applies as well.
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

    /// Sends every `https` request through this forward proxy, with a CONNECT tunnel (the
    /// TLS session stays end to end), whatever the environment says. The URL is
    /// `http://[user:password@]host:port`: credentials, percent-encoded, are sent as Basic
    /// `Proxy-Authorization` (the bytes they encode, UTF-8 or not, as curl sends them) and
    /// never appear in errors, logs or `Debug`. `build()` fails if
    /// the URL is not such a URL (`https://` and SOCKS proxies are not supported).
    ///
    /// The default is the environment (see the [module docs](crate::transport)).
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = ProxySetting::Url(Secret::new(url));
        self
    }

    /// Connects directly, ignoring any proxy the environment names.
    pub fn no_proxy(mut self) -> Self {
        self.proxy = ProxySetting::Off;
        self
    }

    /// Takes the proxy from these variables instead of the process environment, with the
    /// same names and rules (`https_proxy`, `all_proxy`, `no_proxy`, upper or lower case):
    /// for settings read from a configuration file, or a test (setting process variables
    /// from one thread races with every other). Unset names count as unset.
    pub fn proxy_from_vars<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars = vars
            .into_iter()
            .map(|(name, value)| (name.into(), Secret::new(value)))
            .collect();
        self.proxy = ProxySetting::Vars(vars);
        self
    }

    /// Also sends plain `http` requests (managed identity endpoints).
    pub(crate) fn allow_http(mut self) -> Self {
        self.allow_http = true;
        self
    }

    /// Gives up connecting after this long (default 8 s); `None`: only the per-attempt
    /// timeout limits connecting. `Some(Duration::ZERO)` gives up at once, as
    /// [`timeout`](Self::timeout) does: every connection fails.
    ///
    /// hyper-util shares this time among the addresses a name resolves to, family by family
    /// (RFC 6555's happy eyeballs): the addresses of the family of the first one (IPv6 or IPv4)
    /// are tried one after another, each with an even share of the timeout among them; when
    /// there are addresses of the other family, these are started after 300 ms (or when the
    /// first family fails) and tried in turn as well, each with an even share among its own
    /// family's. So with 8 IPv4 addresses, each gets 1/8 of it: an address that drops packets
    /// costs its share, not the whole attempt, when there are others. On a slow link, give
    /// more than the default so that each share still covers a connection's round trip. The
    /// per-attempt timeout still applies.
    ///
    /// Through a proxy, it bounds the whole of the tunnel's setup, counted from its start:
    /// reaching the proxy (as above), the CONNECT exchange and the TLS handshake with the server
    /// through the tunnel. A proxy that accepts the connection and never answers, or a tunnel
    /// in which the handshake stalls, fails as a connection naming the proxy: retried, even
    /// for an authorization code, since the request was not sent. Without a proxy, the TLS
    /// handshake is not part of it: a handshake that stalls there is bounded by the
    /// per-attempt timeout, and fails as a timeout.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
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

    /// Builds the client; fails if a PEM has no certificate or a certificate is invalid, or if
    /// [`Roots::Platform`] finds no root and no PEM adds one.
    pub fn build(self) -> Result<HttpClient, ConfigError> {
        self.proxy.check()?;
        let roots = root_store(self.roots, &self.extra_roots_pem)?;
        Ok(self.build_with_roots(roots))
    }

    #[allow(
        clippy::expect_used,
        reason = "ring supports TLS 1.2 and 1.3, the safe defaults: this cannot fail"
    )]
    pub(super) fn build_with_roots(self, roots: rustls::RootCertStore) -> HttpClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions");
        let mut tls = match self.verifier {
            Some(verifier) => config
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
            None => config.with_root_certificates(roots).with_no_client_auth(),
        };
        // What hyper-rustls's builder sets for `enable_http1().enable_http2()`: the tunnels'
        // handshakes, made by `ProxyConnector`, use this configuration too.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tls = Arc::new(tls);
        let routing = self.proxy.routing();
        // Managed identity's clients never use a proxy, and a client told which proxy to use
        // (or none) reads no variable: a failed connection hints at none.
        let vars = match self.proxy {
            _ if self.allow_http => None,
            ProxySetting::Environment => Some(VarsFrom::Environment),
            ProxySetting::Vars(_) => Some(VarsFrom::Given),
            ProxySetting::Url(_) | ProxySetting::Off => None,
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(self.connect_timeout);
        let direct = DirectConnector {
            http: http.clone(),
            hint: direct_hint(vars, &routing),
        };
        let direct = hyper_rustls::HttpsConnector::new(
            direct,
            Arc::clone(&tls),
            !self.allow_http,
            Arc::new(hyper_rustls::DefaultServerNameResolver::default()),
        );
        let connector = ProxyConnector {
            direct,
            http,
            tls,
            routing,
            connect_timeout: self.connect_timeout,
        };
        let leaf = HyperLeaf {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout: self.timeout,
            max_response_bytes: self.max_response_bytes,
            allow_http: self.allow_http,
        };
        let client = match self.retry {
            Some(options) => HttpClient::from_service(Retrying { leaf, options }),
            None => HttpClient::from_service(leaf),
        };
        client.refusing_plain_http(!self.allow_http)
    }
}
