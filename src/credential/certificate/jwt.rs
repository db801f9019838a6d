//! The signed client assertion (RFC 7523 §2.2, Entra's certificate credential format).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
use ring::rand::SystemRandom;
use ring::signature::{self, RsaEncoding};
use serde_json::json;

use super::load::LoadedCertificate;

/// How long an assertion is valid. MSAL's figure (10 minutes); Entra refuses an assertion
/// whose lifetime it considers too long, and a short one limits a leaked assertion's use.
pub(crate) const ASSERTION_LIFETIME_SECS: u64 = 600;

/// The signature algorithm of the assertion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateSignature {
    /// RSASSA-PSS with SHA-256 (`PS256`), the default: what Microsoft's current
    /// certificate-credential documentation specifies (with `x5t#S256`), and what MSAL sends
    /// when it derives the thumbprints from the certificate itself, unless the authority is
    /// AD FS.
    #[default]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`RS256`): the older format, which Entra still accepts,
    /// which AD FS requires, and which azure-identity 1.27's synchronous `CertificateCredential`
    /// sends (it hands MSAL a SHA-1 thumbprint). The default for requests to the tenant `adfs`.
    Rs256,
}

impl CertificateSignature {
    fn name(self) -> &'static str {
        match self {
            Self::Ps256 => "PS256",
            Self::Rs256 => "RS256",
        }
    }

    fn encoding(self) -> &'static dyn RsaEncoding {
        match self {
            Self::Ps256 => &signature::RSA_PSS_SHA256,
            Self::Rs256 => &signature::RSA_PKCS1_SHA256,
        }
    }
}

/// Signs assertions for one certificate.
pub(crate) struct Signer {
    certificate: LoadedCertificate,
    /// The encoded PS256 and RS256 headers: fixed for the certificate and settings.
    ps256_header: String,
    rs256_header: String,
    /// The signature chosen with the builder; `None`: the default for each request's tenant
    /// ([`default_signature`]).
    chosen: Option<CertificateSignature>,
    rng: SystemRandom,
}

/// The signature when none was chosen: RS256 for AD FS (the tenant `adfs`, which AD FS
/// requires and which is how azure-identity and MSAL name it), else PS256. Decided by the
/// tenant a request resolves to, not the configured one: a credential configured for another
/// tenant may be asked for `adfs` (additionally allowed tenants), and AD FS refuses PS256
/// whichever tenant was configured.
pub(crate) fn default_signature(tenant_id: &str) -> CertificateSignature {
    if tenant_id.eq_ignore_ascii_case("adfs") {
        CertificateSignature::Rs256
    } else {
        CertificateSignature::default()
    }
}

impl Signer {
    /// `chosen`: the signature for every request, or `None` for the default of each
    /// request's tenant.
    pub(crate) fn new(
        certificate: LoadedCertificate,
        chosen: Option<CertificateSignature>,
        send_chain: bool,
    ) -> Self {
        let header = |algorithm: CertificateSignature| {
            let leaf = certificate.leaf();
            let mut header = json!({
                "alg": algorithm.name(),
                "typ": "JWT",
                // SHA-1 here is a certificate identifier Entra looks up, not a security check.
                "x5t": URL_SAFE_NO_PAD.encode(digest(&SHA1_FOR_LEGACY_USE_ONLY, leaf)),
                "x5t#S256": URL_SAFE_NO_PAD.encode(digest(&SHA256, leaf)),
            });
            if send_chain {
                // RFC 7515 §4.1.6: standard (not URL-safe) base64 DER, the leaf first.
                let chain: Vec<String> = certificate
                    .chain
                    .iter()
                    .map(|c| STANDARD.encode(c))
                    .collect();
                if let Some(object) = header.as_object_mut() {
                    object.insert("x5c".into(), chain.into());
                }
            }
            URL_SAFE_NO_PAD.encode(header.to_string())
        };
        Self {
            ps256_header: header(CertificateSignature::Ps256),
            rs256_header: header(CertificateSignature::Rs256),
            certificate,
            chosen,
            rng: SystemRandom::new(),
        }
    }

    pub(crate) fn certificate(&self) -> &LoadedCertificate {
        &self.certificate
    }

    /// A fresh assertion for `audience` (the token endpoint URL of `tenant`, the tenant the
    /// request resolved to), issued at `now` (Unix s). Refused once the certificate has
    /// expired: the leaf was chosen when building, and only a build can take its renewal.
    pub(crate) fn sign(
        &self,
        tenant: &str,
        audience: &str,
        client_id: &str,
        now: u64,
    ) -> Result<String, String> {
        if let Some(expired) = self.certificate.expired_at(now) {
            return Err(expired);
        }
        let algorithm = self.chosen.unwrap_or_else(|| default_signature(tenant));
        let claims = json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now.saturating_add(ASSERTION_LIFETIME_SECS),
        });
        let mut message = match algorithm {
            CertificateSignature::Ps256 => self.ps256_header.clone(),
            CertificateSignature::Rs256 => self.rs256_header.clone(),
        };
        message.push('.');
        message.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let key = &self.certificate.key;
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(
            algorithm.encoding(),
            &self.rng,
            message.as_bytes(),
            &mut sig,
        )
        .map_err(|_| "signing the client assertion failed (ring refused)".to_owned())?;
        message.push('.');
        message.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(message)
    }
}
