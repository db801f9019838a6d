//! [`EnvironmentCredential`]: a service principal configured by environment variables.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::ServiceExt;
use tower_service::Service;

use super::env::{
    AZURE_ADDITIONALLY_ALLOWED_TENANTS, AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_USERNAME, Vars,
};
use super::settings::vars_setters;
use super::{
    CertificateSource, ClientCertificateCredential, ClientSecretCredential, CredentialFuture,
};
use crate::entra::authority::{AZURE_AUTHORITY_HOST, Authority, TenantPolicy, validate_tenant_id};
use crate::error::CredentialError;
use crate::token::{Secret, TokenRequest};
use crate::transport::HttpClient;

const NAME: &str = "EnvironmentCredential";
const AZURE_CLIENT_SECRET: &str = "AZURE_CLIENT_SECRET";
const AZURE_CLIENT_CERTIFICATE_PATH: &str = "AZURE_CLIENT_CERTIFICATE_PATH";
const AZURE_CLIENT_CERTIFICATE_PASSWORD: &str = "AZURE_CLIENT_CERTIFICATE_PASSWORD";
const AZURE_CLIENT_SEND_CERTIFICATE_CHAIN: &str = "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN";
/// A user's password, read only to say that username and password are not supported.
const AZURE_PASSWORD: &str = "AZURE_PASSWORD";

/// Authenticates a service principal from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
/// `AZURE_CLIENT_SECRET` or `AZURE_CLIENT_CERTIFICATE_PATH` (the variables below).
///
/// | variable | meaning |
/// |---|---|
/// | `AZURE_TENANT_ID` | the tenant (directory) id |
/// | `AZURE_CLIENT_ID` | the app's client id |
/// | `AZURE_CLIENT_SECRET` | one of the app's client secrets |
/// | `AZURE_CLIENT_CERTIFICATE_PATH` | or: a PEM or PKCS#12 file with the certificate and its RSA key |
/// | `AZURE_CLIENT_CERTIFICATE_PASSWORD` | optional; the PKCS#12 file's password, or the PEM file's encrypted key's |
/// | `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN` | optional; any non-empty value sends the chain (`x5c`) |
/// | `AZURE_AUTHORITY_HOST` | optional; default the public cloud |
/// | `AZURE_ADDITIONALLY_ALLOWED_TENANTS` | optional; tenants besides `AZURE_TENANT_ID` a request may name, separated by `;` (`*`: any), added to those given to the builder |
///
/// Variables are read once, when the credential is built. Values are trimmed, except the
/// secret and the certificate password, which are used exactly as set (as azure-identity
/// does). A value that is not Unicode counts as unset, except the certificate path, a path
/// like any other, and the authority host, which is then invalid (taken as unset, it would be
/// the public cloud). When any of the first three is missing or blank the credential is
/// *unavailable* (a chain moves on) and says which; when they are set but invalid (a malformed
/// tenant id, an `http` authority) it is an *invalid request*, which stops a chain — a
/// configuration mistake should be heard, not skipped.
///
/// As azure-identity, a client secret wins over a certificate, which wins over a username and
/// password. A certificate is a [`ClientCertificateCredential`] (the file is PEM when it
/// contains `-----BEGIN`, else PKCS#12), its file read when the credential is built, waited
/// for 10 seconds at most (see [`build`](crate::ClientCertificateCredentialBuilder::build)); a
/// certificate that cannot be loaded (missing file, wrong password, expired, a file system
/// that does not answer) is an *invalid request* naming the problem.
/// `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN` follows azure-identity, which sends the chain for any
/// non-empty value — even `false` or `0`: a deployment moving between the two SDKs behaves the
/// same. With `AZURE_CLIENT_ID`, `AZURE_USERNAME` and `AZURE_PASSWORD` set instead (what
/// azure-identity takes for username and password) the credential is *unavailable* and says
/// so: the resource owner password grant cannot satisfy multi-factor authentication, which
/// Entra now requires, and is not offered. `AZURE_USERNAME` alone, which also picks
/// `DefaultAzureCredential`'s shared-cache account, is not taken for it.
#[derive(Clone)]
pub struct EnvironmentCredential {
    state: Arc<State>,
}

enum State {
    Configured(ClientSecretCredential),
    Certificate(ClientCertificateCredential),
    Missing(Vec<&'static str>),
    /// Configured for a kind of authentication this crate does not offer: why.
    Unsupported(String),
    Invalid(String),
}

impl EnvironmentCredential {
    /// Reads the process environment now.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder, to set the HTTP client or read variables from somewhere else.
    pub fn builder() -> EnvironmentCredentialBuilder {
        EnvironmentCredentialBuilder::default()
    }

    /// Whether all required variables were present.
    pub fn is_configured(&self) -> bool {
        matches!(*self.state, State::Configured(_) | State::Certificate(_))
    }
}

impl Default for EnvironmentCredential {
    fn default() -> Self {
        Self::new()
    }
}

impl Service<TokenRequest> for EnvironmentCredential {
    type Response = crate::AccessToken;
    type Error = CredentialError;
    type Future = CredentialFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            match &*state {
                State::Configured(credential) => credential
                    .clone()
                    .oneshot(request)
                    .await
                    .map(|token| token.with_credential(NAME))
                    .map_err(|e| e.renamed(NAME)),
                State::Certificate(credential) => credential
                    .clone()
                    .oneshot(request)
                    .await
                    .map(|token| token.with_credential(NAME))
                    .map_err(|e| e.renamed(NAME)),
                State::Missing(missing) => Err(CredentialError::unavailable(
                    NAME,
                    format!(
                        "environment variables are not fully \
                         configured (missing {}). Set {AZURE_TENANT_ID}, {AZURE_CLIENT_ID} and \
                         {AZURE_CLIENT_SECRET} to authenticate a service principal with a \
                         client secret",
                        missing.join(", ")
                    ),
                )),
                State::Unsupported(message) => {
                    Err(CredentialError::unavailable(NAME, message.clone()))
                }
                State::Invalid(message) => {
                    Err(CredentialError::invalid_request(NAME, message.clone()))
                }
            }
        })
    }
}

impl fmt::Debug for EnvironmentCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.state {
            State::Configured(c) => f.debug_tuple(NAME).field(c).finish(),
            State::Certificate(c) => f.debug_tuple(NAME).field(c).finish(),
            State::Missing(m) => f.debug_struct(NAME).field("missing", m).finish(),
            State::Unsupported(m) => f.debug_struct(NAME).field("unsupported", m).finish(),
            State::Invalid(e) => f.debug_struct(NAME).field("invalid", e).finish(),
        }
    }
}

/// Settings for an [`EnvironmentCredential`].
#[derive(Default)]
pub struct EnvironmentCredentialBuilder {
    http_client: Option<HttpClient>,
    vars: Vars,
    distributed: Option<crate::DistributedCache>,
    additionally_allowed_tenants: Vec<String>,
}

impl EnvironmentCredentialBuilder {
    /// The HTTP client for token requests. Default: [`HttpClient::new`](crate::HttpClient::new).
    pub fn http_client(mut self, client: HttpClient) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Tenants besides the configured one that requests may name; `"*"` allows any. Those of
    /// `AZURE_ADDITIONALLY_ALLOWED_TENANTS` (separated by `;`, as the .NET, Go, JavaScript
    /// and Java azure-identity libraries read it) are allowed too.
    pub fn additionally_allowed_tenants<I, S>(mut self, tenants: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.additionally_allowed_tenants = tenants.into_iter().map(Into::into).collect();
        self
    }

    /// Share tokens with the other processes of a fleet through this
    /// [`DistributedCache`](crate::DistributedCache), a second level under the in-memory
    /// cache: one process asks Microsoft Entra ID, the others use its token.
    pub fn distributed_cache(mut self, cache: crate::DistributedCache) -> Self {
        self.distributed = Some(cache);
        self
    }

    vars_setters!(vars);

    /// Reads the variables and builds. Never fails: a missing or invalid configuration is
    /// reported by `get_token`, so the credential can sit in a chain.
    pub fn build(self) -> EnvironmentCredential {
        // Checked apart from the variables, so that a mistake in code is not reported as one
        // in the environment.
        if let Err(e) = TenantPolicy::new(None, self.additionally_allowed_tenants.clone(), false) {
            return EnvironmentCredential {
                state: Arc::new(State::Invalid(e.to_string())),
            };
        }
        let get = |name: &str| self.vars.get(name);
        let (tenant, client, secret) = (
            get(AZURE_TENANT_ID),
            get(AZURE_CLIENT_ID),
            self.vars.get_secret(AZURE_CLIENT_SECRET),
        );
        // Checked before either credential is built, though both builders check them too:
        // a mistake here is then named by its variable, not taken for the certificate's, and
        // is found before a certificate is read (a PKCS#12 key derivation can be slow).
        if let (Some(tenant), Some(_), true) = (
            &tenant,
            &client,
            secret.is_some() || self.vars.get_path(AZURE_CLIENT_CERTIFICATE_PATH).is_some(),
        ) {
            if let Err(e) = check_variables(&self.vars, tenant) {
                return EnvironmentCredential {
                    state: Arc::new(State::Invalid(format!(
                        "the environment variables are set but invalid: {e}"
                    ))),
                };
            }
        }
        let mut allowed_tenants = self.additionally_allowed_tenants;
        allowed_tenants.extend(self.vars.additionally_allowed_tenants());
        let state = match (tenant, client, secret) {
            (Some(tenant), Some(client), Some(secret)) => {
                let mut builder = ClientSecretCredential::builder(tenant, client, secret)
                    .additionally_allowed_tenants(allowed_tenants)
                    .disable_multitenant_auth(self.vars.multitenant_disabled());
                if let Some(http) = self.http_client {
                    builder = builder.http_client(http);
                }
                if let Some(cache) = self.distributed {
                    builder = builder.distributed_cache(cache);
                }
                match builder.build_with_env_authority(get(AZURE_AUTHORITY_HOST)) {
                    Ok(credential) => State::Configured(credential),
                    Err(e) => State::Invalid(format!(
                        "the environment variables are set but invalid: {e}"
                    )),
                }
            }
            (Some(tenant), Some(client), None)
                if self.vars.get_path(AZURE_CLIENT_CERTIFICATE_PATH).is_some() =>
            {
                // A path need not be Unicode: one that is not is set, not missing.
                let path = self
                    .vars
                    .get_path(AZURE_CLIENT_CERTIFICATE_PATH)
                    .unwrap_or_default();
                let password = self
                    .vars
                    .get_secret(AZURE_CLIENT_CERTIFICATE_PASSWORD)
                    .map(Secret::new);
                let source = CertificateSource::from_path(path, password);
                let mut builder = ClientCertificateCredential::builder(tenant, client, source)
                    .send_certificate_chain(get(AZURE_CLIENT_SEND_CERTIFICATE_CHAIN).is_some())
                    .additionally_allowed_tenants(allowed_tenants)
                    .disable_multitenant_auth(self.vars.multitenant_disabled());
                if let Some(http) = self.http_client {
                    builder = builder.http_client(http);
                }
                if let Some(cache) = self.distributed {
                    builder = builder.distributed_cache(cache);
                }
                // The tenant and authority were checked above: what is left to fail is
                // loading the certificate.
                match builder.build_with_env_authority(get(AZURE_AUTHORITY_HOST)) {
                    Ok(credential) => State::Certificate(credential),
                    Err(e) => State::Invalid(format!(
                        "{AZURE_CLIENT_CERTIFICATE_PATH} is set but the certificate cannot be \
                         used: {e}"
                    )),
                }
            }
            // What azure-identity takes for username and password: all three variables. A
            // username alone also picks DefaultAzureCredential's shared-cache account, and a
            // certificate path says what was meant.
            (_, Some(_), None)
                if get(AZURE_USERNAME).is_some()
                    && self.vars.get_secret(AZURE_PASSWORD).is_some()
                    && self.vars.get_path(AZURE_CLIENT_CERTIFICATE_PATH).is_none() =>
            {
                State::Unsupported(format!(
                    "{AZURE_USERNAME} and {AZURE_PASSWORD} are set, but username and password \
                     authentication is not supported (it cannot satisfy multi-factor \
                     authentication). Use a service principal: set {AZURE_TENANT_ID}, \
                     {AZURE_CLIENT_ID} and {AZURE_CLIENT_SECRET}"
                ))
            }
            (tenant, client, secret) => State::Missing(
                [
                    (AZURE_TENANT_ID, tenant.is_none()),
                    (AZURE_CLIENT_ID, client.is_none()),
                    (
                        AZURE_CLIENT_SECRET,
                        secret.is_none()
                            && self.vars.get_path(AZURE_CLIENT_CERTIFICATE_PATH).is_none(),
                    ),
                ]
                .into_iter()
                .filter_map(|(name, missing)| missing.then_some(name))
                .collect(),
            ),
        };
        EnvironmentCredential {
            state: Arc::new(state),
        }
    }
}

/// `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST` and `AZURE_ADDITIONALLY_ALLOWED_TENANTS`, with
/// the checks the credentials' builders make; the message names the variable.
fn check_variables(vars: &Vars, tenant: &str) -> Result<(), String> {
    validate_tenant_id(tenant).map_err(|e| format!("{AZURE_TENANT_ID}: {e}"))?;
    // Not Unicode is a mistake, not unset (which would be the public cloud).
    Authority::resolve(None, vars.text(AZURE_AUTHORITY_HOST)?).map_err(|e| e.to_string())?;
    for allowed in vars.additionally_allowed_tenants() {
        if allowed != "*" {
            validate_tenant_id(&allowed)
                .map_err(|e| format!("{AZURE_ADDITIONALLY_ALLOWED_TENANTS}: {e}"))?;
        }
    }
    Ok(())
}

impl fmt::Debug for EnvironmentCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvironmentCredentialBuilder")
            .field("vars", &self.vars)
            .field("distributed_cache", &self.distributed)
            .field(
                "additionally_allowed_tenants",
                &self.additionally_allowed_tenants,
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CredentialExt;

    #[tokio::test]
    async fn missing_variables_make_it_unavailable_and_are_named() {
        let c = EnvironmentCredential::builder()
            .vars([(AZURE_CLIENT_ID, "id"), (AZURE_CLIENT_SECRET, " ")])
            .build();
        assert!(!c.is_configured());
        let err = c.get_token(["s"]).await.unwrap_err();
        assert!(err.is_unavailable());
        assert_eq!(err.credential(), NAME);
        assert!(
            err.message()
                .contains("missing AZURE_TENANT_ID, AZURE_CLIENT_SECRET)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_secret_comes_first_then_a_certificate_and_a_username_is_unsupported() {
        let with_secret = EnvironmentCredential::builder()
            .vars([
                (AZURE_TENANT_ID, "t"),
                (AZURE_CLIENT_ID, "id"),
                (AZURE_CLIENT_SECRET, "env-secret-value"),
                (AZURE_CLIENT_CERTIFICATE_PATH, "/nonexistent/cert.pem"),
                (AZURE_USERNAME, "user@contoso.com"),
            ])
            .build();
        assert!(matches!(*with_secret.state, State::Configured(_)));
        // A certificate that cannot be loaded is a configuration mistake: it stops a chain.
        let c = EnvironmentCredential::builder()
            .vars([
                (AZURE_TENANT_ID, "t"),
                (AZURE_CLIENT_ID, "id"),
                (AZURE_CLIENT_CERTIFICATE_PATH, "/nonexistent/cert.pem"),
                (AZURE_USERNAME, "user@contoso.com"),
            ])
            .build();
        let err = c.get_token(["s"]).await.unwrap_err();
        assert!(err.is_invalid_request(), "{err}");
        assert!(
            err.message().contains(AZURE_CLIENT_CERTIFICATE_PATH),
            "{err}"
        );
        assert!(err.message().contains("/nonexistent/cert.pem"), "{err}");
        let c = EnvironmentCredential::builder()
            .vars([
                (AZURE_CLIENT_ID, "id"),
                (AZURE_USERNAME, "user@contoso.com"),
                (AZURE_PASSWORD, "user-password-value"),
            ])
            .build();
        assert!(!c.is_configured());
        let err = c.get_token(["s"]).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(err.message().contains(AZURE_USERNAME), "{err}");
        assert!(err.message().contains("multi-factor"), "{err}");
        assert!(!format!("{err} {err:?} {c:?}").contains("user-password-value"));
        // With a certificate path, a missing tenant is named, the secret is not.
        let c = EnvironmentCredential::builder()
            .vars([
                (AZURE_CLIENT_ID, "id"),
                (AZURE_CLIENT_CERTIFICATE_PATH, "/nonexistent/cert.pem"),
            ])
            .build();
        let err = c.get_token(["s"]).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(err.message().contains("(missing AZURE_TENANT_ID)"), "{err}");
    }

    /// Username and password is what azure-identity takes it for: a client id, a username
    /// and a password. Anything less says what is missing for a service principal.
    #[tokio::test]
    async fn a_username_without_client_id_and_password_is_not_taken_for_username_and_password() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            // Set for DefaultAzureCredential's shared token cache.
            (
                &[(AZURE_USERNAME, "user@contoso.com")],
                "(missing AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)",
            ),
            (
                &[
                    (AZURE_TENANT_ID, "t"),
                    (AZURE_CLIENT_ID, "id"),
                    (AZURE_USERNAME, "user@contoso.com"),
                ],
                "(missing AZURE_CLIENT_SECRET)",
            ),
            (
                &[
                    (AZURE_USERNAME, "user@contoso.com"),
                    (AZURE_PASSWORD, "user-password-value"),
                ],
                "(missing AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)",
            ),
            // A certificate path says what was meant: its tenant is missing.
            (
                &[
                    (AZURE_CLIENT_ID, "id"),
                    (AZURE_CLIENT_CERTIFICATE_PATH, "/nonexistent/cert.pem"),
                    (AZURE_USERNAME, "user@contoso.com"),
                    (AZURE_PASSWORD, "user-password-value"),
                ],
                "(missing AZURE_TENANT_ID)",
            ),
        ];
        for (vars, want) in cases {
            let err = EnvironmentCredential::builder()
                .vars(vars.iter().copied())
                .build()
                .get_token(["s"])
                .await
                .unwrap_err();
            assert!(err.is_unavailable(), "{err}");
            assert!(err.message().contains(want), "{vars:?}: {err}");
            assert!(!err.message().contains("not supported"), "{vars:?}: {err}");
        }
    }

    #[tokio::test]
    async fn invalid_variables_are_an_invalid_request_naming_the_problem() {
        let c = EnvironmentCredential::builder()
            .vars([
                (AZURE_TENANT_ID, "not a tenant"),
                (AZURE_CLIENT_ID, "id"),
                (AZURE_CLIENT_SECRET, "env-secret-value"),
            ])
            .build();
        let err = c.get_token(["s"]).await.unwrap_err();
        assert!(err.is_invalid_request(), "{err}");
        assert!(
            err.message()
                .contains("tenant id contains ' ' at character 4 of 12"),
            "{err}"
        );
        let err = EnvironmentCredential::builder()
            .vars([
                (AZURE_TENANT_ID, "t"),
                (AZURE_CLIENT_ID, "id"),
                (AZURE_CLIENT_SECRET, "env-secret-value"),
                (AZURE_AUTHORITY_HOST, "http://insecure"),
            ])
            .build()
            .get_token(["s"])
            .await
            .unwrap_err();
        assert!(err.message().contains("AZURE_AUTHORITY_HOST"), "{err}");
        assert!(!format!("{err} {err:?}").contains("env-secret-value"));
    }

    /// A certificate path that is not Unicode is a path like any other (its file is read,
    /// not reported missing); an authority host that is not Unicode is invalid, naming the
    /// variable, not the public cloud.
    #[tokio::test]
    async fn values_that_are_not_unicode_are_set_not_missing() {
        use crate::credential::env::not_unicode;

        let dir = tempfile::tempdir().unwrap();
        let path =
            std::path::PathBuf::from(not_unicode(&format!("{}/c\u{e9}rt-", dir.path().display())));
        // APFS (macOS) refuses a file name that is not UTF-8 (EILSEQ), as may a file system
        // that keeps names UTF-8 only: the path part then has no file to read.
        let written = match std::fs::write(&path, "not a certificate") {
            Ok(()) => true,
            Err(e) if cfg!(target_os = "macos") || e.kind() == std::io::ErrorKind::InvalidInput => {
                eprintln!("skipped the non-Unicode certificate path: {e}");
                false
            }
            Err(e) => panic!("{e}"),
        };
        let pairs = |more: Vec<(&'static str, std::ffi::OsString)>| {
            let mut pairs = vec![
                (AZURE_TENANT_ID, "t".into()),
                (AZURE_CLIENT_ID, "id".into()),
            ];
            pairs.extend(more);
            EnvironmentCredentialBuilder {
                vars: Vars::from_os_pairs(pairs),
                ..EnvironmentCredential::builder()
            }
            .build()
        };
        if written {
            let c = pairs(vec![(AZURE_CLIENT_CERTIFICATE_PATH, path.clone().into())]);
            let err = c.get_token(["s"]).await.unwrap_err();
            assert!(err.is_invalid_request(), "{err}");
            assert!(
                err.message().contains(AZURE_CLIENT_CERTIFICATE_PATH)
                    && err.message().contains("not PEM"),
                "{err}"
            );
        }

        let c = pairs(vec![
            (AZURE_CLIENT_SECRET, "env-secret-value".into()),
            (
                AZURE_AUTHORITY_HOST,
                not_unicode("https://login.microsoftonline.us/"),
            ),
        ]);
        let err = c.get_token(["s"]).await.unwrap_err();
        assert!(err.is_invalid_request(), "{err}");
        assert!(
            err.message()
                .contains("AZURE_AUTHORITY_HOST is set to a value that is not valid Unicode"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_authority_with_user_info_is_refused_without_quoting_it() {
        let c = EnvironmentCredential::builder()
            .vars([
                (AZURE_TENANT_ID, "t"),
                (AZURE_CLIENT_ID, "id"),
                (AZURE_CLIENT_SECRET, "env-secret-value"),
                (AZURE_AUTHORITY_HOST, "https://admin:pr0xy-pass@login.test/"),
            ])
            .build();
        let err = c.get_token(["s"]).await.unwrap_err();
        assert!(err.is_invalid_request(), "{err}");
        assert!(err.message().contains("user information"), "{err}");
        for text in [
            format!("{err}"),
            format!("{err:?}"),
            format!("{c:?}"),
            format!("{c:#?}"),
        ] {
            assert!(
                !text.contains("pr0xy-pass") && !text.contains("admin"),
                "{text}"
            );
        }
    }
}
