//! Loopback servers for the demo: an Entra-shaped token endpoint and a protected API, both
//! HTTPS with a throwaway CA (the test suite's support code), and a client that trusts it.
//! The other examples configure a real credential and TLS themselves.

// Shared with benches/stampede.rs and benches/distributed.rs, and none uses every item (as in tests/it/support).
#![allow(dead_code)]

#[path = "../../tests/it/support/authority.rs"]
pub mod authority;
// benches/distributed.rs starts its redis-server with the test suite's harness.
#[cfg(feature = "redis")]
#[path = "../../tests/it/support/redis.rs"]
pub mod redis;
#[path = "../../tests/it/support/resource.rs"]
pub mod resource;
#[path = "../../tests/it/support/serve.rs"]
pub mod serve;
#[path = "../../tests/it/support/tls.rs"]
pub mod tls;

use std::sync::Arc;

use bytes::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The scope the loopback authority issues tokens for.
pub const SCOPE: &str = "https://example-api.test/.default";

pub type HyperClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// rustls trusting the loopback CA only.
pub fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls::pki().ca_pem().as_bytes()).flatten() {
        roots.add(cert).expect("the example CA is valid");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// hyper-util's client over rustls trusting the loopback CA.
pub fn hyper_client<B>() -> HyperClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}
