//! HTTP clients for the bearer-layer tests, trusting the test CA.

use bytes::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;

use super::tls::pki;

pub type HyperClient<B> = Client<HttpsConnector<HttpConnector>, B>;

fn tls() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pki().ca_pem().as_bytes()) {
        roots.add(cert.expect("test CA PEM")).expect("test CA");
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports TLS 1.2 and 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// TCP under the test clients' TLS with Nagle off, as the library's transport and the test
/// servers have it: with Nagle on, a small write behind an unacknowledged one (an HTTP/2 frame
/// after the request, a RST_STREAM) waits for the peer's delayed ACK, about 40 ms of real time
/// while a paused tokio clock jumps to the next timer.
pub fn tcp() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http
}

fn connector() -> HttpsConnector<HttpConnector> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp())
}

/// HTTP/1.1 or HTTP/2 (ALPN decides), `https` or `http`.
pub fn hyper_client<B>() -> HyperClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build(connector())
}

/// HTTP/2 only: one connection multiplexes every request (for thousands at once).
pub fn h2_client<B>() -> HyperClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector())
}

/// HTTP/1.1 only (ALPN offers nothing else), `https` or `http`.
pub fn h1_client<B>() -> HyperClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls())
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp());
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A reqwest client trusting the test CA (ring, via a preconfigured rustls config).
#[cfg(feature = "reqwest-middleware")]
pub fn reqwest_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls())
        .build()
        .expect("reqwest client")
}
