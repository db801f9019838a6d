//! Loopback servers for the examples: an Entra-shaped token endpoint and a protected API,
//! both HTTPS with a throwaway CA (the test suite's support code), and clients that trust it.
#![allow(dead_code)]

#[path = "../../tests/it/support/authority.rs"]
pub mod authority;
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
use tower_identity::{ClientSecretCredential, HttpClient};

pub use authority::Authority;
pub use resource::Resource;

pub const SCOPE: &str = "https://example-api.test/.default";

pub type HyperClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// A token endpoint, a protected API, and a service principal of the token endpoint.
pub struct Loopback {
    pub authority: Authority,
    pub api: Resource,
    pub credential: ClientSecretCredential,
}

impl Loopback {
    pub async fn start() -> Self {
        let authority = Authority::start().await;
        let api = Resource::start().await;
        let http = HttpClient::builder()
            .add_root_certificates_pem(authority.ca_pem())
            .build()
            .expect("the example CA is valid PEM");
        let credential = ClientSecretCredential::builder(
            "contoso",
            "00000000-0000-0000-0000-0000000000e1",
            "example-secret",
        )
        .authority_host(authority.url())
        .http_client(http)
        .build()
        .expect("valid settings");
        Self {
            authority,
            api,
            credential,
        }
    }
}

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
