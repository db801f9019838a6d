//! A throwaway PKI for loopback HTTPS in tests.
//!
//! One CA and one server certificate (SANs `127.0.0.1` and `localhost`) are made with `rcgen`
//! the first time they are asked for and shared by the whole test process: key generation is
//! cheap, but doing it once keeps every server and client in the process agreeing on one root.
//! Nothing is written to disk and nothing here is trusted outside the test process.

use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The process-wide test CA and the server identity it signed.
pub struct TestPki {
    ca_pem: String,
    server_config: Arc<ServerConfig>,
}

impl TestPki {
    /// PEM of the CA certificate: what a client adds as its only root.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A rustls server config presenting the server certificate (and the CA, as a chain),
    /// offering ALPN `h2` and `http/1.1`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server_config)
    }
}

/// The PKI of this test process, generated on first use.
pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(generate)
}

// Failures below are bugs in this file or the environment, never input from a client, so
// panicking with a clear message is the most useful reaction.
fn generate() -> TestPki {
    let ca_key = KeyPair::generate().expect("test PKI: generate CA key");
    let ca_cert = ca_params()
        .self_signed(&ca_key)
        .expect("test PKI: self-sign CA");

    let server_key = KeyPair::generate().expect("test PKI: generate server key");
    let server_cert = server_params()
        .signed_by(&server_key, &ca_cert, &ca_key)
        .expect("test PKI: sign server certificate");

    let chain = vec![server_cert.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));

    TestPki {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(server_config(chain, key)),
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name("tower-identity test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn server_params() -> CertificateParams {
    // `CertificateParams::new` turns "127.0.0.1" into an IP SAN and "localhost" into a DNS SAN.
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("test PKI: server SANs");
    params.distinguished_name = name("tower-identity test authority");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn server_config(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> ServerConfig {
    // Only the ring provider is compiled in, so name it explicitly rather than relying on a
    // process-default provider being installed.
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("test PKI: protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("test PKI: server certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}
