//! [`ClientCertificateCredential`]: a service principal with a certificate.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt as _;
use tower::ServiceExt;
use tower_service::Service;

use super::env::Vars;
use super::settings::{Settings, settings_setters};
use super::{ClientAssertionCredential, CredentialFuture};
use crate::error::{ConfigError, CredentialError};
use crate::token::{Secret, TokenRequest, unix_now};

mod encrypted_key;
pub(crate) mod jwt;
mod load;
pub(crate) mod pkcs12_work;

pub use jwt::CertificateSignature;
pub use load::CertificateSource;

use super::client_assertion::{AssertionRequest, ClientAssertionCredentialBuilder, Fetch};
use jwt::Signer;

const NAME: &str = "ClientCertificateCredential";

/// Authenticates a service principal with a certificate (client credentials grant with a
/// signed JWT assertion).
///
/// ```no_run
/// use tower_identity::{CertificateSource, ClientCertificateCredential, CredentialExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let credential = ClientCertificateCredential::builder(
///     "72f988bf-86f1-41af-91ab-2d7cd011db47",
///     "00000000-1111-2222-3333-444444444444",
///     CertificateSource::from_path("/etc/app/cert.pem", None),
/// )
/// .build()?;
/// let token = credential.get_token(["https://graph.microsoft.com/.default"]).await?;
/// # let _ = token; Ok(()) }
/// ```
///
/// Tokens are cached in memory per tenant and scope set (CAE and non-CAE apart) and renewed
/// as [`ClientSecretCredential`](crate::ClientSecretCredential)'s are.
///
/// # The assertion
///
/// Header: `alg`, `typ: JWT`, `x5t` (base64url SHA-1 of the certificate's DER) and `x5t#S256`
/// (base64url SHA-256), plus `x5c` (the chain, standard base64 DER, leaf first) with
/// [`send_certificate_chain`](ClientCertificateCredentialBuilder::send_certificate_chain) for
/// subject name / issuer authentication. Claims: `aud` = the tenant's token endpoint URL,
/// `iss` = `sub` = the client id, `jti` (a random UUID), `nbf` = `iat` = now, `exp` = now +
/// 10 minutes. A new assertion is signed when the one in hand is 5 minutes old (the
/// [`ClientAssertionCredential`] default), once the certificate has expired (which then
/// fails, see below), or after Entra refused one.
///
/// The signature is **PS256** by default: Microsoft's current certificate-credential
/// documentation specifies PS256 with `x5t#S256`, and MSAL (Python 1.35+, .NET) sends that when
/// it derives the thumbprints from the certificate and the authority is not AD FS.
/// azure-identity 1.27's synchronous `CertificateCredential` still ends up with RS256 and
/// `x5t` (it hands MSAL a SHA-1 thumbprint), which Entra also accepts and AD FS requires:
/// [`signature`](ClientCertificateCredentialBuilder::signature) with
/// [`CertificateSignature::Rs256`] selects it. For a request to the tenant `adfs` (any case:
/// the configured tenant, as `AZURE_TENANT_ID=adfs` gives `EnvironmentCredential`, or a
/// request's [`TokenRequest::with_tenant_id`] that
/// [`additionally_allowed_tenants`](ClientCertificateCredentialBuilder::additionally_allowed_tenants)
/// lets through) the default is RS256 instead, as MSAL's is for an AD FS authority; an
/// explicit [`signature`](ClientCertificateCredentialBuilder::signature) is kept. Both
/// thumbprints are always sent, so either lookup finds the certificate.
///
/// # Checks when building
///
/// Inputs over 1 MiB, no key, no certificate, several different keys, an encrypted PEM key
/// without a password, a key that is not RSA (Entra accepts only RSA), a key that matches no
/// certificate, a certificate outside its validity period (both dates named; a notBefore up to
/// 5 minutes ahead of this host's clock is allowed, for clock skew), a wrong PKCS#12 or PEM
/// key password, and key derivations over the limits (checked before they run) are each a
/// [`ConfigError`] saying which. A key or certificate repeated byte for byte (one combined
/// file given as both files of [`CertificateSource::from_pem_files`]), or one key written as
/// PKCS#1 and as PKCS#8, counts once. The
/// certificate whose public key is the key's is the leaf, wherever it sits in the input. When
/// several are (a key kept through a renewal), the leaf is the one with the latest notAfter
/// among those valid now or with a notBefore within the 5-minute allowance (on a tie, one
/// valid by this host's clock). The leaf is chosen once, when building, and signs every
/// assertion after: a current certificate expiring in minutes beside its just-issued renewal
/// would fail every request once it expired, whereas a renewal a little ahead of this host's
/// clock is almost always this clock lagging (Entra accepts it already), or at worst refused
/// for those few minutes. The others are sent after the leaf in `x5c`. Once the leaf has
/// expired (after its notAfter, by this host's clock), nothing is signed or sent (an
/// assertion signed before is not reused either): each request fails as *authentication failed*, naming the certificate's subject and end date
/// and saying to renew it and build the credential again (Entra would refuse its assertions
/// with AADSTS700027).
///
/// The key's DER copies made here (a decrypted PEM key's too) are zeroized on drop and never
/// printed, nor is a password; ring keeps the parsed key in its own types, which it does not
/// zeroize.
#[derive(Clone)]
pub struct ClientCertificateCredential {
    inner: ClientAssertionCredential,
    signer: Arc<Signer>,
}

impl ClientCertificateCredential {
    /// Starts a builder. Nothing is read or validated until
    /// [`build`](ClientCertificateCredentialBuilder::build).
    pub fn builder(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        certificate: CertificateSource,
    ) -> ClientCertificateCredentialBuilder {
        ClientCertificateCredentialBuilder {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            certificate,
            send_chain: false,
            signature: None,
            settings: Settings::default(),
        }
    }
}

/// What errors about a signing that did not finish (a panic) name.
const SIGNING: &str = "signing the client assertion";

/// The assertion source: `sign` makes a fresh signed JWT for each request's token endpoint.
/// Its errors are this credential's own ("signing the client assertion failed …"), not those
/// of a user's callback. It runs in the flight's task, not under the assertions' lock, so a
/// panic there is reported as that flight's.
fn signing_source<F>(sign: F) -> Fetch
where
    F: Fn(&AssertionRequest) -> Result<String, String> + Send + Sync + 'static,
{
    let sign = Arc::new(sign);
    Arc::new(move |request: AssertionRequest| {
        let sign = Arc::clone(&sign);
        async move {
            sign(&request)
                .map(Secret::new)
                .map_err(|reason| CredentialError::authentication_failed(NAME, reason))
        }
        .boxed()
    })
}

impl Service<TokenRequest> for ClientCertificateCredential {
    type Response = crate::AccessToken;
    type Error = CredentialError;
    type Future = CredentialFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.oneshot(request).await.map_err(|e| e.renamed(NAME)) })
    }
}

impl fmt::Debug for ClientCertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(NAME)
            .field("certificate", self.signer.certificate())
            .field("assertion", &self.inner)
            .finish()
    }
}

/// Settings for a [`ClientCertificateCredential`].
pub struct ClientCertificateCredentialBuilder {
    tenant_id: String,
    client_id: String,
    certificate: CertificateSource,
    send_chain: bool,
    /// `None`: the default for each request's tenant ([`jwt::default_signature`]).
    signature: Option<CertificateSignature>,
    settings: Settings,
}

impl ClientCertificateCredentialBuilder {
    settings_setters!(settings; authority_host, additionally_allowed_tenants, http_client,
        cache_options, disable_multitenant_auth, distributed_cache);
}

impl ClientCertificateCredentialBuilder {
    /// Send the certificate chain (`x5c`) with each assertion, for subject name / issuer
    /// authentication (an app configured with `trustedCertificateSubjects`). Default: off.
    pub fn send_certificate_chain(mut self, send: bool) -> Self {
        self.send_chain = send;
        self
    }

    /// The assertion's signature algorithm. Default: [`CertificateSignature::Ps256`], or
    /// [`CertificateSignature::Rs256`] for a request whose tenant is `adfs` (any case; the
    /// configured tenant or a per-request one): AD FS does not accept PS256. A signature set
    /// here is used whatever the tenant.
    pub fn signature(mut self, signature: CertificateSignature) -> Self {
        self.signature = Some(signature);
        self
    }

    /// Reads and checks the certificate and key, validates the other settings, and builds.
    ///
    /// Blocking: the files of [`CertificateSource::from_pem_files`] and
    /// [`from_path`](CertificateSource::from_path) are read here, each on a thread of its own,
    /// waited for 10 seconds at most. On a file system that does not answer (a hung NFS or CSI
    /// mount) the build then fails with a [`ConfigError`] naming the file, instead of blocking
    /// its thread (a tokio worker, when built in `async fn main`) for good. The read cannot be
    /// stopped: it goes on on its thread, and until it returns, a build reading that file
    /// fails at once rather than starting another. `EnvironmentCredential::new()` and
    /// `DefaultAzureCredential::new()` build this credential for
    /// `AZURE_CLIENT_CERTIFICATE_PATH`, so the same holds there.
    ///
    /// An `AZURE_AUTHORITY_HOST` that is not Unicode is a [`ConfigError`] naming it, unless an
    /// authority host was set here.
    pub fn build(self) -> Result<ClientCertificateCredential, ConfigError> {
        let env_authority = self.settings.env_authority(NAME, &Vars::default())?;
        self.build_with_env_authority(env_authority)
    }

    pub(crate) fn build_with_env_authority(
        self,
        env_authority: Option<String>,
    ) -> Result<ClientCertificateCredential, ConfigError> {
        self.build_reading(env_authority, &load::Reading::files())
    }

    /// [`build_with_env_authority`](Self::build_with_env_authority), the files read as
    /// `reading` says (in tests, a file system that hangs).
    fn build_reading(
        self,
        env_authority: Option<String>,
        reading: &load::Reading,
    ) -> Result<ClientCertificateCredential, ConfigError> {
        let certificate = self
            .certificate
            .load_reading(unix_now(), reading)
            .map_err(|m| load::config_error(NAME, m))?;
        let signer = Arc::new(Signer::new(certificate, self.signature, self.send_chain));
        let signing = Arc::clone(&signer);
        self.assemble(
            signer,
            move |request| {
                signing.sign(
                    request.tenant_id(),
                    request.token_endpoint(),
                    request.client_id(),
                    unix_now(),
                )
            },
            env_authority,
        )
    }

    /// The credential around `signer`, whose assertions `sign` makes (the signer's own
    /// signing, or a failing one in tests).
    fn assemble<F>(
        self,
        signer: Arc<Signer>,
        sign: F,
        env_authority: Option<String>,
    ) -> Result<ClientCertificateCredential, ConfigError>
    where
        F: Fn(&AssertionRequest) -> Result<String, String> + Send + Sync + 'static,
    {
        // An assertion signed before the leaf's notAfter is not reused after it.
        let not_after = signer.certificate().not_after;
        let inner = ClientAssertionCredentialBuilder::internal(
            NAME,
            SIGNING,
            self.tenant_id,
            self.client_id,
            signing_source(sign),
            self.settings,
        )
        .usable_until(not_after)
        .build_with_env_authority(env_authority)?;
        Ok(ClientCertificateCredential { inner, signer })
    }
}

impl fmt::Debug for ClientCertificateCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificateCredentialBuilder")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("certificate", &self.certificate)
            .field("send_certificate_chain", &self.send_chain)
            .field("signature", &self.signature)
            .field("settings", &self.settings)
            .finish()
    }
}

#[cfg(test)]
mod tests;
