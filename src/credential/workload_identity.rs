//! [`WorkloadIdentityCredential`]: a Kubernetes workload's federated token (AKS).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use super::client_assertion::{
    ClientAssertionCredential, ClientAssertionCredentialBuilder, DEFAULT_MAX_ASSERTION_AGE, Fetch,
};
use super::env::{AZURE_ADDITIONALLY_ALLOWED_TENANTS, AZURE_CLIENT_ID, AZURE_TENANT_ID, Vars};
use super::settings::{Settings, settings_setters, vars_setters};
use super::{CredentialExt, arc_credential_service};
use crate::blocking_read::{OneRead, READ_TIMEOUT, ReadFailure};
use crate::entra::authority::{Authority, validate_tenant_id};
use crate::error::{Cause, ConfigError, CredentialError};
use crate::regular_file::open_regular_file;
use crate::token::{AccessToken, Secret, TokenRequest};

const NAME: &str = "WorkloadIdentityCredential";
pub(crate) const AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";

/// An assertion read longer ago than this is read again. A token read once and kept is refused
/// about an hour later with AADSTS700024 "Client assertion is not within its valid time range"
/// (Azure/azure-workload-identity#693). The kubelet renews the file at 80 % of the token's
/// lifetime (an hour at least), i.e. 12 minutes or more before it expires; reading again after
/// 5 minutes (azure-identity and the Go SDK wait 10) always picks up the renewed token in time.
const MAX_ASSERTION_AGE: Duration = DEFAULT_MAX_ASSERTION_AGE;
/// The largest token file read. A service-account JWT is one to two KiB; anything far bigger
/// is not one (a wrong path), and is not sent.
const MAX_TOKEN_FILE_BYTES: usize = 64 * 1024;

/// Authenticates a Kubernetes workload with its projected service-account token, through an
/// app's federated identity credential (AKS workload identity).
///
/// ```no_run
/// use tower_identity::{CredentialExt, WorkloadIdentityCredential};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // In a pod the AKS webhook sets AZURE_TENANT_ID, AZURE_CLIENT_ID,
/// // AZURE_FEDERATED_TOKEN_FILE and AZURE_AUTHORITY_HOST.
/// let credential = WorkloadIdentityCredential::new();
/// let token = credential.get_token(["https://storage.azure.com/.default"]).await?;
/// # let _ = token; Ok(()) }
/// ```
///
/// | variable | meaning | builder |
/// |---|---|---|
/// | `AZURE_TENANT_ID` | the tenant (directory) id | [`tenant_id`](WorkloadIdentityCredentialBuilder::tenant_id) |
/// | `AZURE_CLIENT_ID` | the client id of the app with the federated credential | [`client_id`](WorkloadIdentityCredentialBuilder::client_id) |
/// | `AZURE_FEDERATED_TOKEN_FILE` | the file holding the service-account token | [`token_file_path`](WorkloadIdentityCredentialBuilder::token_file_path) |
/// | `AZURE_AUTHORITY_HOST` | optional; default the public cloud | [`authority_host`](WorkloadIdentityCredentialBuilder::authority_host) |
///
/// The token request is the client-credentials grant with the file's contents as a
/// `jwt-bearer` client assertion. The kubelet rewrites the file before the token in it expires
/// (at 80 % of its lifetime, an hour at least), so the file is read again whenever the
/// assertion in hand was read more than 5 minutes ago, and after Entra refused it as expired or
/// invalid (see [`ClientAssertionCredential`]).
///
/// A missing value, or a missing or empty token file, makes the credential *unavailable* (a
/// chain moves on) with what to set; a value from the environment that is set but invalid is an
/// *invalid request* (an `AZURE_AUTHORITY_HOST` that is not Unicode among them; a token file
/// path need not be Unicode), as is a token file that cannot be read (one this process may
/// not read says to set the pod's `securityContext.fsGroup`). The file is read once at a
/// time, however many tenants are asked, on a thread of its own: requests meanwhile share the
/// read.
/// A read that has run more than 10 seconds (a volume that does not answer) fails the requests
/// waiting for it, and every later one at once (not transient) until it returns: its thread
/// cannot be stopped, and no other is started meanwhile; the next request after it returned
/// reads the file again. The thread is detached: a read that hangs does not hold up the
/// runtime's shutdown, so restarting the process works.
///
/// Tokens are cached in memory per tenant and scope set (CAE and non-CAE apart) and renewed
/// as [`ClientSecretCredential`](crate::ClientSecretCredential)'s are.
#[derive(Clone)]
pub struct WorkloadIdentityCredential {
    inner: Arc<State>,
}

enum State {
    Configured(Arc<Inner>),
    Missing(Vec<&'static str>),
    Invalid(String),
}

/// A [`ClientAssertionCredential`] whose assertions are the token file's contents.
struct Inner {
    credential: ClientAssertionCredential,
    token_file: PathBuf,
}

impl WorkloadIdentityCredential {
    /// Reads the process environment now. Never fails: what is missing or invalid is reported
    /// by `get_token`, so the credential can sit in a chain.
    pub fn new() -> Self {
        // A builder without values of its own has nothing to refuse; should that change, the
        // refusal is still reported by get_token.
        Self::builder().build().unwrap_or_else(|e| Self {
            inner: Arc::new(State::Invalid(e.to_string())),
        })
    }

    /// A builder, to set values in code or read the environment from somewhere else.
    pub fn builder() -> WorkloadIdentityCredentialBuilder {
        WorkloadIdentityCredentialBuilder::default()
    }

    /// Whether the tenant id, client id and token file path are all known and valid (the file
    /// itself is read when a token is needed).
    pub fn is_configured(&self) -> bool {
        matches!(*self.inner, State::Configured(_))
    }
}

impl Default for WorkloadIdentityCredential {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    async fn get_token(&self, request: TokenRequest) -> Result<AccessToken, CredentialError> {
        match self {
            State::Configured(inner) => inner.credential.get_token_with(request).await,
            State::Missing(missing) => Err(CredentialError::unavailable(
                NAME,
                format!(
                    "not configured (missing {}). Set {AZURE_TENANT_ID}, {AZURE_CLIENT_ID} and \
                     {AZURE_FEDERATED_TOKEN_FILE} (the AKS workload identity webhook sets them \
                     in a pod labelled azure.workload.identity/use=true), or give the values \
                     to WorkloadIdentityCredential::builder()",
                    missing.join(", ")
                ),
            )),
            State::Invalid(message) => Err(CredentialError::invalid_request(NAME, message.clone())),
        }
    }
}

/// Reads the token file ([`read_token_file`]; another in tests).
type Reader = Arc<dyn Fn(&Path) -> Result<Secret, CredentialError> + Send + Sync>;

/// The token file and its read.
struct TokenFile {
    path: PathBuf,
    read: Reader,
    /// One read at a time whatever the number of tenants asked (one request per token
    /// endpoint): requests meanwhile share it.
    reads: OneRead<Result<Secret, CredentialError>>,
}

impl TokenFile {
    /// The failure of every request while a read that ran [`READ_TIMEOUT`] has not returned.
    /// Not transient: the read may never return, and retrying cannot help until the file
    /// system answers.
    fn stuck(&self) -> CredentialError {
        CredentialError::authentication_failed(
            NAME,
            format!(
                "a read of the token file {} ({AZURE_FEDERATED_TOKEN_FILE}) has run more than \
                 {READ_TIMEOUT:?} and has not returned: the file system does not answer; fix \
                 the volume mount of the token file; the read is retried once it returns",
                self.path.display()
            ),
        )
    }

    /// The file read on a thread of its own (a slow volume must not stall the runtime),
    /// shared with the requests that need it meanwhile, waited for until it has run
    /// [`READ_TIMEOUT`]; refused at once while a read that ran that long has not returned.
    async fn read(&self) -> Result<Secret, CredentialError> {
        let path = self.path.clone();
        let reader = Arc::clone(&self.read);
        match self.reads.shared(move || reader(&path)).await {
            Ok(outcome) => outcome,
            // Not late: a request shares the read in flight, which started before it came.
            Err(ReadFailure::Overran | ReadFailure::Late) => Err(self.stuck()),
            Err(ReadFailure::Panicked) => Err(CredentialError::authentication_failed(
                NAME,
                format!(
                    "reading the token file {} ({AZURE_FEDERATED_TOKEN_FILE}) failed: the read \
                     panicked",
                    self.path.display()
                ),
            )),
            Err(ReadFailure::NoThread(e)) => Err(CredentialError::authentication_failed(
                NAME,
                format!(
                    "the token file {} ({AZURE_FEDERATED_TOKEN_FILE}) could not be read: no \
                     thread could be started: {e}",
                    self.path.display()
                ),
            )
            .with_cause(Cause {
                transient: true,
                ..Cause::default()
            })),
        }
    }
}

/// The token file as an assertion source, its errors this credential's own.
fn file_source(path: PathBuf, read: Reader) -> Fetch {
    let file = Arc::new(TokenFile {
        path,
        read,
        reads: OneRead::new(),
    });
    Arc::new(move |_request| {
        let file = Arc::clone(&file);
        async move { file.read().await }.boxed()
    })
}

/// What to do about a token file this process may not read. Kubernetes gives the projected
/// token to the pod's `fsGroup`, or to the containers' user when they all run as one; else
/// only root may read it.
const TOKEN_ACCESS_ADVICE: &str = "this process may not read it: set the pod's \
    securityContext.fsGroup (or one runAsUser for all its containers) so that the projected \
    service-account token is readable by the user this process runs as";
/// What the token file is, for a file that is not it.
const TOKEN_CONTENT_ADVICE: &str = "it must hold the projected service-account token";

/// The file's contents, trimmed. Missing or empty: unavailable; unreadable, too large or not
/// text: an invalid request (the variable points at the wrong thing, or the pod's security
/// context keeps this process from reading it).
fn read_token_file(path: &Path) -> Result<Secret, CredentialError> {
    let shown = path.display();
    let invalid = |what: String| unusable(path, &what, TOKEN_CONTENT_ADVICE);
    let file = match open_regular_file(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CredentialError::unavailable(
                NAME,
                format!(
                    "the token file {shown} does not exist. Set {AZURE_FEDERATED_TOKEN_FILE} to \
                     the path of the projected service-account token (the AKS workload \
                     identity webhook mounts it)"
                ),
            ));
        }
        Err(e) => return Err(io_failure(path, "cannot be opened", &e)),
    };
    // Room for the whole read, so no copy of the token is left behind by a reallocation.
    // One byte more than allowed tells a file at the limit from a bigger one.
    let read_limit = MAX_TOKEN_FILE_BYTES.saturating_add(1);
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(read_limit));
    file.take(u64::try_from(read_limit).unwrap_or(u64::MAX))
        .read_to_end(&mut bytes)
        .map_err(|e| io_failure(path, "cannot be read", &e))?;
    if bytes.len() > MAX_TOKEN_FILE_BYTES {
        return Err(invalid(format!(
            "is larger than {} KiB",
            MAX_TOKEN_FILE_BYTES / 1024
        )));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid("is not UTF-8 text".into()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CredentialError::unavailable(
            NAME,
            format!(
                "the token file {shown} is empty. Check that {AZURE_FEDERATED_TOKEN_FILE} \
                 names the projected service-account token file"
            ),
        ));
    }
    Ok(Secret::new(token))
}

/// The token file at `path` is not one (`what` it is), an invalid request saying what to do.
fn unusable(path: &Path, what: &str, advice: &str) -> CredentialError {
    CredentialError::invalid_request(
        NAME,
        format!(
            "the token file {} ({AZURE_FEDERATED_TOKEN_FILE}) {what}; {advice}",
            path.display()
        ),
    )
}

/// The token file at `path` could not be opened or read (`what`): a refusal is the pod's
/// security context, anything else a path that names the wrong thing.
fn io_failure(path: &Path, what: &str, error: &std::io::Error) -> CredentialError {
    let advice = if error.kind() == std::io::ErrorKind::PermissionDenied {
        TOKEN_ACCESS_ADVICE
    } else {
        TOKEN_CONTENT_ADVICE
    };
    unusable(path, &format!("{what}: {error}"), advice)
}

arc_credential_service!(WorkloadIdentityCredential);

impl fmt::Debug for WorkloadIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.inner {
            State::Configured(inner) => {
                let core = &inner.credential.inner;
                f.debug_struct(NAME)
                    .field("tenant_id", &core.tenants.tenant().unwrap_or_default())
                    .field("client_id", &core.client_id)
                    .field("token_file_path", &inner.token_file)
                    .field("authority", &core.client.authority().as_str())
                    .finish()
            }
            State::Missing(m) => f.debug_struct(NAME).field("missing", m).finish(),
            State::Invalid(e) => f.debug_struct(NAME).field("invalid", e).finish(),
        }
    }
}

/// Settings for a [`WorkloadIdentityCredential`]; a value not set here is read from the
/// environment (see [`WorkloadIdentityCredential`]).
#[derive(Default)]
pub struct WorkloadIdentityCredentialBuilder {
    tenant_id: Option<String>,
    client_id: Option<String>,
    token_file_path: Option<PathBuf>,
    vars: Vars,
    settings: Settings,
    /// Whether `AZURE_ADDITIONALLY_ALLOWED_TENANTS` adds to the allowed tenants: in
    /// `DefaultAzureCredential`, which reads it for all its members as the .NET SDK does.
    tenants_from_vars: bool,
    /// Reads the token file instead of [`read_token_file`] (a file system that hangs).
    #[cfg(test)]
    reader: Option<Reader>,
}

impl WorkloadIdentityCredentialBuilder {
    settings_setters!(settings; authority_host, additionally_allowed_tenants, http_client,
        disable_multitenant_auth, distributed_cache);
}

impl WorkloadIdentityCredentialBuilder {
    /// The tenant id. Default: `AZURE_TENANT_ID`.
    pub fn tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// The client id of the app whose federated credential trusts the token. Default:
    /// `AZURE_CLIENT_ID`. Blanks around it are dropped, as from the variable (an id read from
    /// a file keeps its newline otherwise, and Entra knows no such client).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into().trim().to_owned());
        self
    }

    /// The file holding the service-account token. Default: `AZURE_FEDERATED_TOKEN_FILE`.
    pub fn token_file_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file_path = Some(path.into());
        self
    }

    vars_setters!(vars);

    /// The tenants of `AZURE_ADDITIONALLY_ALLOWED_TENANTS` (read from `vars`) are allowed
    /// too; a malformed one makes a configured credential invalid, naming the variable.
    pub(crate) fn additionally_allowed_tenants_from_vars(mut self) -> Self {
        self.tenants_from_vars = true;
        self
    }

    /// Builds. Fails only for an invalid value given to this builder; missing values, or
    /// invalid ones from the environment, are reported by `get_token`.
    pub fn build(mut self) -> Result<WorkloadIdentityCredential, ConfigError> {
        self.settings = self.settings.with_multitenant_default(&self.vars);
        let fail = |m: &str| ConfigError::new(format!("{NAME}: {m}"));
        // Values given in code first: a mistake there is a construction error.
        self.settings.tenants(NAME, self.tenant_id.as_deref())?;
        if let Some(host) = self.settings.authority_host() {
            Authority::parse(host).map_err(|e| fail(e.message()))?;
        }
        if self.client_id.as_ref().is_some_and(|c| c.trim().is_empty()) {
            return Err(fail("client id is empty; use the app's (client) id"));
        }
        if self
            .token_file_path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(fail("token file path is empty"));
        }

        let env = |name: &str| self.vars.get(name);
        let tenant = self.tenant_id.clone().or_else(|| env(AZURE_TENANT_ID));
        let client_id = self.client_id.clone().or_else(|| env(AZURE_CLIENT_ID));
        // A path need not be Unicode: one that is not is set, not missing.
        let path = self
            .token_file_path
            .clone()
            .or_else(|| self.vars.get_path(AZURE_FEDERATED_TOKEN_FILE));
        let state = match (tenant, client_id, path) {
            (Some(tenant), Some(client_id), Some(path)) => {
                // Anything wrong now came from the environment.
                match self.configured(&tenant, client_id, path) {
                    Ok(inner) => State::Configured(Arc::new(inner)),
                    Err(e) => State::Invalid(format!(
                        "the environment variables are set but invalid: {}",
                        e.message()
                            .trim_start_matches(NAME)
                            .trim_start_matches(": ")
                    )),
                }
            }
            (tenant, client_id, path) => State::Missing(
                [
                    (AZURE_TENANT_ID, tenant.is_none()),
                    (AZURE_CLIENT_ID, client_id.is_none()),
                    (AZURE_FEDERATED_TOKEN_FILE, path.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, missing)| missing.then_some(name))
                .collect(),
            ),
        };
        Ok(WorkloadIdentityCredential {
            inner: Arc::new(state),
        })
    }

    fn configured(
        &self,
        tenant: &str,
        client_id: String,
        path: PathBuf,
    ) -> Result<Inner, ConfigError> {
        let env_authority = self.settings.env_authority(NAME, &self.vars)?;
        let mut settings = self.settings.clone();
        if self.tenants_from_vars {
            let tenants = self.vars.additionally_allowed_tenants();
            for tenant in tenants.iter().filter(|t| *t != "*") {
                validate_tenant_id(tenant).map_err(|e| {
                    ConfigError::new(format!("{AZURE_ADDITIONALLY_ALLOWED_TENANTS}: {e}"))
                })?;
            }
            settings.add_additionally_allowed_tenants(tenants);
        }
        // No cache_options setter here: the settings hold no cache file.
        let credential = ClientAssertionCredentialBuilder::internal(
            NAME,
            "reading the token file",
            tenant.to_owned(),
            client_id,
            file_source(path.clone(), self.reader()),
            settings,
        )
        .max_assertion_age(MAX_ASSERTION_AGE)
        .build_with_env_authority(env_authority)?;
        Ok(Inner {
            credential,
            token_file: path,
        })
    }
}

impl WorkloadIdentityCredentialBuilder {
    #[cfg(not(test))]
    fn reader(&self) -> Reader {
        Arc::new(read_token_file)
    }

    #[cfg(test)]
    fn reader(&self) -> Reader {
        self.reader
            .clone()
            .unwrap_or_else(|| Arc::new(read_token_file))
    }
}

impl fmt::Debug for WorkloadIdentityCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentityCredentialBuilder")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("token_file_path", &self.token_file_path)
            .field("vars", &self.vars)
            .field("settings", &self.settings)
            .field("tenants_from_vars", &self.tenants_from_vars)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
    use std::sync::{Mutex, PoisonError};

    use super::*;
    use crate::CredentialExt;
    use crate::blocking_read::tests::within_a_minute;
    use crate::entra::authority::AZURE_AUTHORITY_HOST;

    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJlLXNlY3JldA";

    fn vars(path: &Path) -> Vec<(&'static str, String)> {
        vec![
            (AZURE_TENANT_ID, "contoso".into()),
            (
                AZURE_CLIENT_ID,
                "33333333-3333-3333-3333-333333333333".into(),
            ),
            (AZURE_FEDERATED_TOKEN_FILE, path.display().to_string()),
        ]
    }

    fn inner(credential: &WorkloadIdentityCredential) -> &Inner {
        match &*credential.inner {
            State::Configured(inner) => inner,
            _ => panic!("not configured: {credential:?}"),
        }
    }

    #[tokio::test]
    async fn missing_values_make_it_unavailable_and_are_each_named() {
        let c = WorkloadIdentityCredential::builder()
            .vars([(AZURE_CLIENT_ID, "id"), (AZURE_TENANT_ID, " ")])
            .build()
            .unwrap();
        assert!(!c.is_configured());
        let err = c.get_token(["s"]).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert_eq!(err.credential(), NAME);
        assert!(
            err.message()
                .contains("missing AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE)"),
            "{err}"
        );
        // Builder values count as set.
        let c = WorkloadIdentityCredential::builder()
            .vars([(AZURE_CLIENT_ID, "id")])
            .tenant_id("contoso")
            .token_file_path("/var/run/secrets/azure/tokens/azure-identity-token")
            .build()
            .unwrap();
        assert!(c.is_configured(), "{c:?}");
    }

    #[test]
    fn invalid_builder_values_are_construction_errors() {
        let b = || WorkloadIdentityCredential::builder().vars([("X", "y")]);
        let cases = [
            (b().tenant_id("bad tenant"), "only ASCII letters"),
            (b().client_id(" "), "client id is empty"),
            (b().token_file_path(""), "token file path is empty"),
            (b().authority_host("http://login.test"), "https"),
            (
                b().additionally_allowed_tenants(["no/pe"]),
                "additionally_allowed_tenants",
            ),
        ];
        for (builder, want) in cases {
            let err = builder.build().unwrap_err();
            assert!(err.message().starts_with(NAME), "{err}");
            assert!(err.message().contains(want), "{err} / {want}");
        }
    }

    #[tokio::test]
    async fn invalid_environment_values_are_an_invalid_request_at_get_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        for (name, value, want) in [
            (
                AZURE_TENANT_ID,
                "not a tenant",
                "contains ' ' at character 4 of 12",
            ),
            (
                AZURE_AUTHORITY_HOST,
                "http://insecure",
                "AZURE_AUTHORITY_HOST",
            ),
        ] {
            let mut vars = vars(&path);
            vars.retain(|(n, _)| *n != name);
            vars.push((name, value.into()));
            let c = WorkloadIdentityCredential::builder()
                .vars(vars)
                .build()
                .unwrap();
            assert!(!c.is_configured());
            let err = c.get_token(["s"]).await.unwrap_err();
            assert!(err.is_invalid_request(), "{err}");
            assert!(err.message().contains(want), "{err}");
        }
    }

    /// A token file path that is not Unicode is a path like any other: the credential is
    /// configured with it (not "missing AZURE_FEDERATED_TOKEN_FILE"). An authority host that
    /// is not Unicode is invalid, naming the variable (not the public cloud), unless one was
    /// set in code.
    #[tokio::test]
    async fn values_that_are_not_unicode_are_set_not_missing() {
        use crate::credential::env::not_unicode;

        let odd = not_unicode("/var/run/secrets/t\u{f6}ken-");
        let pairs = |authority: Option<std::ffi::OsString>| {
            let mut pairs = vec![
                (AZURE_TENANT_ID, "contoso".into()),
                (
                    AZURE_CLIENT_ID,
                    "33333333-3333-3333-3333-333333333333".into(),
                ),
                (AZURE_FEDERATED_TOKEN_FILE, odd.clone()),
            ];
            pairs.extend(authority.map(|host| (AZURE_AUTHORITY_HOST, host)));
            Vars::from_os_pairs(pairs)
        };
        let mut builder = WorkloadIdentityCredential::builder();
        builder.vars = pairs(None);
        let c = builder.build().unwrap();
        assert_eq!(inner(&c).token_file, PathBuf::from(&odd));

        let mut builder = WorkloadIdentityCredential::builder();
        builder.vars = pairs(Some(not_unicode("https://login.microsoftonline.us/")));
        let c = builder.build().unwrap();
        assert!(!c.is_configured(), "{c:?}");
        let err = c.get_token(["s"]).await.unwrap_err();
        assert!(err.is_invalid_request(), "{err}");
        assert!(
            err.message()
                .contains("AZURE_AUTHORITY_HOST is set to a value that is not valid Unicode"),
            "{err}"
        );
        let mut builder =
            WorkloadIdentityCredential::builder().authority_host("https://login.chinacloudapi.cn");
        builder.vars = pairs(Some(not_unicode("https://login.microsoftonline.us/")));
        let c = builder.build().unwrap();
        assert_eq!(
            inner(&c).credential.inner.client.authority().as_str(),
            "https://login.chinacloudapi.cn"
        );
    }

    /// A client id given in code loses its blanks, as one from `AZURE_CLIENT_ID` does, so
    /// `DefaultAzureCredential` sends the same id from its workload and managed identity
    /// members.
    #[test]
    fn a_client_id_given_in_code_is_trimmed() {
        let c = WorkloadIdentityCredential::builder()
            .tenant_id("tenant")
            .client_id(" code-client\n")
            .token_file_path("/code/token")
            .build()
            .unwrap();
        assert_eq!(inner(&c).credential.inner.client_id, "code-client");
    }

    #[test]
    fn builder_values_win_over_the_environment() {
        let c = WorkloadIdentityCredential::builder()
            .vars([
                (AZURE_TENANT_ID, "env-tenant"),
                (AZURE_CLIENT_ID, "env-client"),
                (AZURE_FEDERATED_TOKEN_FILE, "/env/token"),
                (AZURE_AUTHORITY_HOST, "https://login.microsoftonline.us"),
            ])
            .tenant_id("code-tenant")
            .client_id("code-client")
            .token_file_path("/code/token")
            .authority_host("https://login.chinacloudapi.cn")
            .build()
            .unwrap();
        let inner = inner(&c);
        let core = &inner.credential.inner;
        assert_eq!(core.tenants.tenant(), Some("code-tenant"));
        assert_eq!(core.client_id, "code-client");
        assert_eq!(inner.token_file, Path::new("/code/token"));
        assert_eq!(
            core.client.authority().as_str(),
            "https://login.chinacloudapi.cn"
        );
        let c = WorkloadIdentityCredential::builder()
            .vars([
                (AZURE_TENANT_ID, " env-tenant "),
                (AZURE_CLIENT_ID, "env-client"),
                (AZURE_FEDERATED_TOKEN_FILE, "/env/token"),
                (AZURE_AUTHORITY_HOST, "https://login.microsoftonline.us"),
            ])
            .build()
            .unwrap();
        let text = format!("{c:?}");
        for want in [
            "env-tenant\"",
            "env-client",
            "/env/token",
            "https://login.microsoftonline.us",
        ] {
            assert!(text.contains(want), "{text} / {want}");
        }
    }

    #[tokio::test]
    async fn a_missing_or_empty_token_file_is_unavailable_naming_path_and_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("azure-identity-token");
        let c = WorkloadIdentityCredential::builder()
            .vars(vars(&path))
            .build()
            .unwrap();
        assert!(c.is_configured());
        for contents in [None, Some(""), Some(" \n\t\n")] {
            if let Some(contents) = contents {
                std::fs::write(&path, contents).unwrap();
            }
            let err = c.get_token(["https://x.test/.default"]).await.unwrap_err();
            assert!(err.is_unavailable(), "{contents:?}: {err}");
            let message = err.message();
            assert!(message.contains(&path.display().to_string()), "{err}");
            assert!(message.contains(AZURE_FEDERATED_TOKEN_FILE), "{err}");
        }
    }

    #[test]
    fn the_file_is_trimmed_bounded_and_must_be_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("\n {JWT}\r\n")).unwrap();
        assert_eq!(read_token_file(&path).unwrap().expose_secret(), JWT);

        let limit = MAX_TOKEN_FILE_BYTES;
        std::fs::write(&path, "a".repeat(limit)).unwrap();
        assert_eq!(read_token_file(&path).unwrap().expose_secret().len(), limit);
        std::fs::write(&path, "a".repeat(limit + 1)).unwrap();
        let err = read_token_file(&path).unwrap_err();
        assert!(err.is_invalid_request(), "{err}");
        assert!(err.message().contains("larger than 64 KiB"), "{err}");

        std::fs::write(&path, [0xff, 0xfe, b'a']).unwrap();
        let err = read_token_file(&path).unwrap_err();
        assert!(err.message().contains("not UTF-8"), "{err}");

        // A directory is not a token file: a mistake to hear about, not to skip.
        let err = read_token_file(dir.path()).unwrap_err();
        assert!(err.is_invalid_request(), "{err}");
        assert!(err.message().contains("not a regular file"), "{err}");
        assert!(err.message().contains(AZURE_FEDERATED_TOKEN_FILE), "{err}");
    }

    /// A token file this process may not read is the pod's security context to fix, not a
    /// wrong file: the message says so, without the advice about the file's contents. Built
    /// from the error, as tests may run as root, who may read a file of mode 000.
    #[test]
    fn a_refused_token_file_says_to_let_the_process_read_it() {
        let path = Path::new("/var/run/secrets/azure/tokens/azure-identity-token");
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        for what in ["cannot be opened", "cannot be read"] {
            let err = io_failure(path, what, &denied);
            let message = err.message();
            assert!(err.is_invalid_request(), "{err}");
            assert!(
                message.contains(&format!(
                    "{} ({AZURE_FEDERATED_TOKEN_FILE}) {what}",
                    path.display()
                )) && message.contains("securityContext.fsGroup")
                    && message.contains("runAsUser")
                    && !message.contains(TOKEN_CONTENT_ADVICE),
                "{err}"
            );
        }
        let other = std::io::Error::from(std::io::ErrorKind::InvalidData);
        let message = io_failure(path, "cannot be read", &other)
            .message()
            .to_owned();
        assert!(
            message.contains(TOKEN_CONTENT_ADVICE) && !message.contains("fsGroup"),
            "{message}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_assertion_is_read_again_once_older_than_five_minutes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let c = WorkloadIdentityCredential::builder()
            .vars(vars(&path))
            .build()
            .unwrap();
        let credential = &inner(&c).credential;
        let read = || credential.assertion_for("contoso");
        std::fs::write(&path, "first").unwrap();
        assert_eq!(read().await.unwrap().expose_secret(), "first");

        std::fs::write(&path, "second").unwrap();
        tokio::time::advance(MAX_ASSERTION_AGE - Duration::from_secs(1)).await;
        assert_eq!(read().await.unwrap().expose_secret(), "first");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(read().await.unwrap().expose_secret(), "second");
    }

    /// A reader that counts its calls and waits on `gate` (until its sender is dropped) before
    /// returning a token: a token file on a volume that does not answer.
    fn held_reader(
        started: &Arc<AtomicUsize>,
        gate: Mutex<std::sync::mpsc::Receiver<()>>,
    ) -> Reader {
        let started = Arc::clone(started);
        Arc::new(move |_: &Path| {
            started.fetch_add(1, AtomicOrdering::SeqCst);
            let _ = gate.lock().unwrap_or_else(PoisonError::into_inner).recv();
            Ok(Secret::new("the-token"))
        })
    }

    /// A token file read that does not return (a hung mount) holds its thread after the
    /// request gave up on it; later requests are refused at once (not transient, saying what
    /// to do) instead of each starting one more thread, until it returns.
    #[test]
    fn a_token_file_read_that_does_not_return_holds_one_thread_at_most() {
        within_a_minute(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async {
                let started = Arc::new(AtomicUsize::new(0));
                let (release, gate) = std::sync::mpsc::channel::<()>();
                let path = PathBuf::from("/nonexistent/token");
                let mut builder = WorkloadIdentityCredential::builder().vars(vars(&path));
                builder.reader = Some(held_reader(&started, Mutex::new(gate)));
                let c = builder.build().unwrap();

                let mut failures = Vec::new();
                for n in 1..=3 {
                    let request = tokio::spawn({
                        let c = c.clone();
                        async move { c.get_token(["https://x.test/.default"]).await }
                    });
                    if n == 1 {
                        while started.load(AtomicOrdering::SeqCst) == 0 {
                            tokio::task::yield_now().await;
                        }
                        assert!(!finished(&request).await, "the first request waits");
                        // A running read keeps the paused clock from advancing by itself.
                        tokio::time::advance(Duration::from_secs(31)).await;
                    }
                    // The first fails once its read overran; later ones are refused at once,
                    // the clock not moved for them (a wait for a read would not end).
                    assert!(finished(&request).await, "request {n} waits on a read");
                    failures.push(request.await.unwrap().unwrap_err());
                    assert_eq!(started.load(AtomicOrdering::SeqCst), 1, "request {n}");
                }
                for err in &failures {
                    let message = err.message();
                    assert!(
                        message.contains("/nonexistent/token (AZURE_FEDERATED_TOKEN_FILE)")
                            && message.contains("has not returned")
                            && message.contains("does not answer")
                            && message.contains("fix the volume mount")
                            && message.contains("retried once it returns")
                            && !message.contains("restart"),
                        "{err}"
                    );
                    assert!(err.is_authentication_failed(), "{err}");
                    assert!(!err.is_transient() && !err.is_timeout(), "{err}");
                    assert_eq!(message, failures[0].message());
                }

                // Once it returns, the next request reads again.
                drop(release);
                let file = inner(&c);
                loop {
                    match file.credential.assertion_for("contoso").await {
                        Ok(token) => {
                            assert_eq!(token.expose_secret(), "the-token");
                            break;
                        }
                        Err(err) => assert!(err.message().contains("has not returned"), "{err}"),
                    }
                    tokio::task::yield_now().await;
                }
                assert_eq!(started.load(AtomicOrdering::SeqCst), 2);
            });
        });
    }

    /// Yields until `request` has finished, a thousand times at most: whether it is answered
    /// without the clock moving.
    async fn finished<R>(request: &tokio::task::JoinHandle<R>) -> bool {
        for _ in 0..1000 {
            if request.is_finished() {
                return true;
            }
            tokio::task::yield_now().await;
        }
        request.is_finished()
    }

    /// A reader that panics: the request fails saying so, without the panic's text (the
    /// reading code's, which may quote the file).
    #[tokio::test]
    async fn a_panicking_read_is_reported_without_its_payload() {
        let mut builder =
            WorkloadIdentityCredential::builder().vars(vars(Path::new("/nonexistent/token")));
        builder.reader = Some(Arc::new(|_: &Path| panic!("secret-xyz")));
        let err = builder
            .build()
            .unwrap()
            .get_token(["https://x.test/.default"])
            .await
            .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("secret-xyz"), "{err:?}");
        assert!(err.message().contains("the read panicked"), "{err}");
        assert!(
            err.message()
                .contains("/nonexistent/token (AZURE_FEDERATED_TOKEN_FILE)"),
            "{err}"
        );
    }

    /// Yields until `done` holds (every wait on the other side is bounded by
    /// [`within_a_minute`]).
    async fn until(mut done: impl FnMut() -> bool) {
        while !done() {
            tokio::task::yield_now().await;
        }
    }

    /// Two tenants asked at once (a flight per token endpoint) share one read of the token
    /// file: on a file system that hangs, one thread is held, not one per tenant.
    #[test]
    fn tenants_asked_at_once_share_one_read() {
        within_a_minute(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async {
                let started = Arc::new(AtomicUsize::new(0));
                let (release, gate) = std::sync::mpsc::channel::<()>();
                let mut builder = WorkloadIdentityCredential::builder()
                    .vars(vars(Path::new("/nonexistent/token")))
                    .additionally_allowed_tenants(["*"]);
                builder.reader = Some(held_reader(&started, Mutex::new(gate)));
                let c = builder.build().unwrap();
                let requests: Vec<_> = ["contoso", "fabrikam"]
                    .into_iter()
                    .map(|tenant| {
                        let c = c.clone();
                        tokio::spawn(
                            async move { inner(&c).credential.assertion_for(tenant).await },
                        )
                    })
                    .collect();
                until(|| started.load(AtomicOrdering::SeqCst) >= 1).await;
                tokio::time::advance(Duration::from_secs(11)).await;
                for request in requests {
                    let err = request.await.unwrap().unwrap_err();
                    assert!(err.message().contains("has not returned"), "{err}");
                }

                // Once the read returns, the next request reads again: two reads in all.
                drop(release);
                loop {
                    match inner(&c).credential.assertion_for("contoso").await {
                        Ok(token) => break assert_eq!(token.expose_secret(), "the-token"),
                        Err(err) => assert!(err.message().contains("has not returned"), "{err}"),
                    }
                    tokio::task::yield_now().await;
                }
                assert_eq!(started.load(AtomicOrdering::SeqCst), 2);
            });
        });
    }

    /// A graceful restart while a token file read hangs: dropping the runtime returns (it
    /// waited for a `spawn_blocking` read without a limit, until `SIGKILL`).
    #[test]
    fn a_hung_token_file_read_does_not_hold_up_runtime_shutdown() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let started = Arc::new(AtomicUsize::new(0));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let mut builder =
            WorkloadIdentityCredential::builder().vars(vars(Path::new("/nonexistent/token")));
        builder.reader = Some(held_reader(&started, Mutex::new(gate)));
        let c = builder.build().unwrap();
        let request = runtime.spawn(async move { c.get_token(["https://x.test/.default"]).await });
        runtime.block_on(until(|| started.load(AtomicOrdering::SeqCst) == 1));
        let (dropped, is_dropped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(request);
            drop(runtime);
            let _ = dropped.send(());
        });
        let shut_down = is_dropped.recv_timeout(Duration::from_secs(60));
        // The read's thread returns either way.
        drop(release);
        shut_down.expect("dropping the runtime waited for the hung read");
    }

    #[tokio::test]
    async fn debug_never_shows_the_assertion() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, JWT).unwrap();
        let c = WorkloadIdentityCredential::builder()
            .vars(vars(&path))
            .build()
            .unwrap();
        // Read it, so the credential holds it.
        let assertion = inner(&c).credential.assertion_for("contoso").await.unwrap();
        assert_eq!(assertion.expose_secret(), JWT);
        let text = format!("{c:?} {c:#?}");
        assert!(
            !text.contains("eyJ") && !text.contains("c2lnbmF0dXJl"),
            "{text}"
        );
        for want in [
            "contoso",
            "33333333-3333-3333-3333-333333333333",
            "token",
            "https://login.microsoftonline.com",
        ] {
            assert!(text.contains(want), "{text} / {want}");
        }
    }
}
