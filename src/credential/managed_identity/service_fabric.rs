//! Service Fabric: `GET $IDENTITY_ENDPOINT?api-version=2019-07-01-preview&resource=…` with
//! `Secret: $IDENTITY_HEADER`, over `https` to a server whose certificate is trusted only by
//! its SHA-1 thumbprint, `IDENTITY_SERVER_THUMBPRINT` (the cluster's certificate is
//! self-signed; MSAL trusts it the same way). Only the system-assigned identity (the
//! application's identity is chosen in the cluster's configuration).

use std::sync::Arc;

use http::HeaderName;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::secret_get::Profile;
use super::{IDENTITY_SERVER_THUMBPRINT, ManagedIdentitySource};
use crate::transport::HttpClient;

pub(super) static PROFILE: Profile = Profile {
    source: ManagedIdentitySource::ServiceFabric,
    api_version: "2019-07-01-preview",
    header: HeaderName::from_static("secret"),
    params: None,
    metadata: false,
};

/// The client for the endpoint: always the built-in one, since only it can pin the
/// certificate.
pub(super) fn client(thumbprint: &str) -> Result<HttpClient, String> {
    let verifier = PinnedSha1::new(parse_thumbprint(thumbprint)?);
    HttpClient::builder()
        .server_cert_verifier(Arc::new(verifier))
        // A local endpoint, never proxied: see `request::default_http`.
        .no_proxy()
        .build()
        .map_err(|e| format!("the HTTP client could not be built: {e}"))
}

/// A SHA-1 thumbprint as Windows and `openssl x509 -fingerprint` print it: 40 hex digits in
/// either case, spaces and colons ignored.
pub(super) fn parse_thumbprint(text: &str) -> Result<[u8; 20], String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !matches!(b, b' ' | b':')).collect();
    let invalid = || {
        format!(
            "{IDENTITY_SERVER_THUMBPRINT} must be the 40 hexadecimal digits of the endpoint \
             certificate's SHA-1 thumbprint (spaces and colons allowed); it has {} characters \
             after dropping those, or a character that is not a hex digit",
            digits.len()
        )
    };
    // Checked digit by digit first: `u8::from_str_radix` takes a leading `+` ("+a" is 10).
    if digits.len() != 40 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid());
    }
    let mut out = [0u8; 20];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| invalid())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
    }
    Ok(out)
}

/// Trusts exactly the server certificate with this SHA-1 (of its DER), whatever its issuer,
/// name or dates; the handshake's signatures are still verified, so the server must hold
/// that certificate's key.
#[derive(Debug)]
pub(crate) struct PinnedSha1 {
    thumbprint: [u8; 20],
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedSha1 {
    pub(crate) fn new(thumbprint: [u8; 20]) -> Self {
        Self {
            thumbprint,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedSha1 {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest =
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, end_entity.as_ref());
        if digest.as_ref() == self.thumbprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server certificate's SHA-1 thumbprint does not match \
                 {IDENTITY_SERVER_THUMBPRINT}"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789ABCDEF01234567";

    #[test]
    fn thumbprints_are_normalised() {
        let want = parse_thumbprint(HEX).unwrap();
        assert_eq!(want[0], 0x01);
        assert_eq!(want[19], 0x67);
        for form in [
            "0123456789ABCDEF0123456789abcdef01234567",
            "01 23 45 67 89 ab cd ef 01 23 45 67 89 ab cd ef 01 23 45 67",
            "01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67",
            " 0123456789abcdef0123456789abcdef01234567 ",
        ] {
            assert_eq!(parse_thumbprint(form).unwrap(), want, "{form}");
        }
        for bad in [
            "",
            "0123",
            &format!("{HEX}89"),
            &HEX.replace('0', "g"),
            "é".repeat(20).as_str(),
            // `u8::from_str_radix` would read "+1" as 1: a sign is no hex digit.
            &HEX.replace('0', "+"),
            &format!("+{}", &HEX[1..]),
        ] {
            let err = parse_thumbprint(bad).unwrap_err();
            assert!(err.contains("IDENTITY_SERVER_THUMBPRINT"), "{err}");
        }
    }

    #[test]
    fn pins_the_leaf_by_sha1() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = cert.cert.der().clone();
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
        let mut pin = [0u8; 20];
        pin.copy_from_slice(sha1.as_ref());
        let name = ServerName::try_from("localhost").unwrap();
        let ok = PinnedSha1::new(pin).verify_server_cert(&der, &[], &name, &[], UnixTime::now());
        assert!(ok.is_ok());
        pin[0] ^= 1;
        let err = PinnedSha1::new(pin)
            .verify_server_cert(&der, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        assert!(
            err.to_string().contains("thumbprint does not match"),
            "{err}"
        );
        assert!(!PinnedSha1::new(pin).supported_verify_schemes().is_empty());
    }

    #[test]
    fn query_and_header() {
        let sf = super::super::secret_get::SecretGet::new(
            &PROFILE,
            url::Url::parse("https://127.0.0.1:2377/metadata/identity/oauth2/token").unwrap(),
            ("IDENTITY_HEADER", crate::token::Secret::new("sf-secret")),
            None,
            client(HEX).unwrap(),
        )
        .unwrap();
        let r = sf.request("https://vault.azure.net").unwrap();
        assert_eq!(
            r.uri().to_string(),
            "https://127.0.0.1:2377/metadata/identity/oauth2/token?api-version=2019-07-01-preview&resource=https%3A%2F%2Fvault.azure.net"
        );
        assert_eq!(r.headers()["secret"], "sf-secret");
    }
}
