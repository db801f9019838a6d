//! [`ManagedIdentityCredential`]: the identity Azure gives the host the code runs on.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use url::Url;

use super::arc_credential_service;
use super::env::{AZURE_CLIENT_ID, AZURE_TENANT_ID, Vars};
use super::settings::token_cache;
use super::workload_identity::AZURE_FEDERATED_TOKEN_FILE;
use crate::CredentialExt;
use crate::WorkloadIdentityCredential;
use crate::cache::{CacheKey, TokenCache};
use crate::entra::authority::AZURE_AUTHORITY_HOST;
use crate::error::{ConfigError, CredentialError};
use crate::throttle::{Throttle, ThrottleMemory};
use crate::token::{AccessToken, Secret, TokenRequest};
use crate::transport::HttpClient;
use secret_get::SecretGet;

mod app_service;
mod azure_arc;
mod azure_ml;
mod cloud_shell;
mod imds;
mod request;
pub(crate) mod response;
mod secret_get;
mod service_fabric;

const NAME: &str = "ManagedIdentityCredential";

/// App Service, Functions, Service Fabric and Arc: the local token endpoint.
const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
/// App Service, Functions and Service Fabric: the secret the endpoint expects.
const IDENTITY_HEADER: &str = "IDENTITY_HEADER";
/// Service Fabric: SHA-1 thumbprint of the endpoint's certificate.
const IDENTITY_SERVER_THUMBPRINT: &str = "IDENTITY_SERVER_THUMBPRINT";
/// Azure Arc: set by the agent alongside `IDENTITY_ENDPOINT`.
const IMDS_ENDPOINT: &str = "IMDS_ENDPOINT";
/// Azure Machine Learning and Cloud Shell: the token endpoint.
const MSI_ENDPOINT: &str = "MSI_ENDPOINT";
/// Azure Machine Learning: the secret the endpoint expects.
const MSI_SECRET: &str = "MSI_SECRET";
/// IMDS: the base URL, instead of the link-local address (AAD Pod Identity, tests).
const AZURE_POD_IDENTITY_AUTHORITY_HOST: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";

/// Where a [`ManagedIdentityCredential`] gets its tokens (see its documentation).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagedIdentitySource {
    /// The Instance Metadata Service of VMs, scale sets and AKS nodes.
    Imds,
    /// App Service and Azure Functions.
    AppService,
    /// Service Fabric.
    ServiceFabric,
    /// Azure Arc-enabled servers.
    AzureArc,
    /// Azure Machine Learning compute.
    AzureMl,
    /// Azure Cloud Shell.
    CloudShell,
    /// A Kubernetes workload's federated token (AKS workload identity), as
    /// [`WorkloadIdentityCredential`] gets it.
    WorkloadIdentity,
}

impl ManagedIdentitySource {
    /// How messages name the source.
    fn describe(self) -> &'static str {
        match self {
            Self::Imds => "IMDS",
            Self::AppService => "App Service",
            Self::ServiceFabric => "Service Fabric",
            Self::AzureArc => "Azure Arc",
            Self::AzureMl => "Azure Machine Learning",
            Self::CloudShell => "Cloud Shell",
            Self::WorkloadIdentity => "workload identity",
        }
    }
}

impl fmt::Display for ManagedIdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A user-assigned managed identity, by one of its three ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserAssignedId {
    /// The identity's client (application) id.
    ClientId(String),
    /// The identity's object (principal) id.
    ObjectId(String),
    /// The identity's Azure resource id
    /// (`/subscriptions/…/resourceGroups/…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/…`).
    ResourceId(String),
}

impl UserAssignedId {
    /// Why this id cannot name an identity (it is empty), in words for a configuration error.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.value().trim().is_empty() {
            return Err(format!(
                "the user-assigned {} is empty; give the identity's id",
                self.kind()
            ));
        }
        Ok(())
    }

    fn value(&self) -> &str {
        match self {
            Self::ClientId(v) | Self::ObjectId(v) | Self::ResourceId(v) => v,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::ClientId(_) => "client id",
            Self::ObjectId(_) => "object id",
            Self::ResourceId(_) => "resource id",
        }
    }
}

impl fmt::Display for UserAssignedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.value())
    }
}

/// The names one source gives the three kinds of user-assigned id in its query.
#[derive(Clone, Copy, Debug)]
pub(super) struct IdParams {
    client_id: &'static str,
    object_id: &'static str,
    resource_id: &'static str,
}

impl IdParams {
    /// The query pair selecting `id`.
    fn pair(self, id: &UserAssignedId) -> (&'static str, &str) {
        let name = match id {
            UserAssignedId::ClientId(_) => self.client_id,
            UserAssignedId::ObjectId(_) => self.object_id,
            UserAssignedId::ResourceId(_) => self.resource_id,
        };
        (name, id.value())
    }
}

/// Authenticates as the identity Azure gives the host: see [`new`](Self::new) and
/// [`builder`](Self::builder).
///
/// ```no_run
/// use tower_identity::{CredentialExt, ManagedIdentityCredential};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // The system-assigned identity of whatever host this is.
/// let system = ManagedIdentityCredential::new();
/// // A user-assigned identity, by client id.
/// let user = ManagedIdentityCredential::builder()
///     .client_id("00000000-1111-2222-3333-444444444444")
///     .build()?;
/// let token = user.get_token(["https://management.azure.com/.default"]).await?;
/// # let _ = (system, token); Ok(()) }
/// ```
///
/// # Where the token comes from
///
/// The source is chosen once, when the credential is built, from the environment (the
/// process's, or the pairs given to [`vars`](ManagedIdentityCredentialBuilder::vars)); the
/// first that matches wins, as in azure-identity:
///
/// | source | environment | request | user-assigned id as |
/// |---|---|---|---|
/// | Service Fabric | `IDENTITY_ENDPOINT` (https), `IDENTITY_HEADER`, `IDENTITY_SERVER_THUMBPRINT` | `GET ?api-version=2019-07-01-preview`, header `Secret` | not supported |
/// | App Service, Functions | `IDENTITY_ENDPOINT`, `IDENTITY_HEADER` | `GET ?api-version=2019-08-01`, headers `X-IDENTITY-HEADER`, `Metadata: true` | `client_id`, `object_id`, `mi_res_id` |
/// | Azure Arc | `IDENTITY_ENDPOINT`, `IMDS_ENDPOINT` | `GET ?api-version=2020-06-01`, header `Metadata: true`, then again with the agent's key | `client_id`, `object_id`, `msi_res_id` |
/// | Azure Machine Learning | `MSI_ENDPOINT`, `MSI_SECRET` | `GET ?api-version=2017-09-01`, header `secret` | `clientid`, `object_id`, `msi_res_id` |
/// | Cloud Shell | `MSI_ENDPOINT` | `POST` form `resource=…`, header `Metadata: true` | not supported |
/// | workload identity (AKS) | `AZURE_AUTHORITY_HOST`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE` | as [`WorkloadIdentityCredential`]: the token file as a client assertion, for the client id given or `AZURE_CLIENT_ID` | client id only |
/// | IMDS (VMs, scale sets, AKS nodes, …) | optional `AZURE_POD_IDENTITY_AUTHORITY_HOST` (base URL, default `http://169.254.169.254`) | `GET /metadata/identity/oauth2/token?api-version=2018-02-01`, header `Metadata: true` | `client_id`, `object_id`, `msi_res_id` |
///
/// The workload identity source is azure-identity's: its `ManagedIdentityCredential` hands
/// an AKS pod set up for workload identity to `WorkloadIdentityCredential`. It needs a client
/// id (the builder's [`client_id`](ManagedIdentityCredentialBuilder::client_id), else
/// `AZURE_CLIENT_ID`; an object or resource id is a configuration error), and requests are
/// then the [`WorkloadIdentityCredential`]'s own: its scopes, tenant rules, cache and errors
/// (reported under this credential's name, with the variables that chose the source; its
/// tokens carry `WorkloadIdentityCredential`'s). To reach IMDS from such a pod (the node's identities), set
/// [`exclude_workload_identity`](ManagedIdentityCredentialBuilder::exclude_workload_identity).
/// `DefaultAzureCredential`'s managed identity keeps this source exactly
/// while the chain's own workload identity member is in it (as azure-identity does), so a pod
/// set up for workload identity never falls through to IMDS, which answers there as the node's
/// kubelet identity; the source then sends through the chain's
/// [`http_client`](crate::DefaultAzureCredentialBuilder::http_client), as that member does.
///
/// `IDENTITY_ENDPOINT` alone is a configuration error (it names what else to set). Like
/// azure-identity, and unlike MSAL, the presence of the Arc agent's `himds` program is not
/// looked for: an Arc server is recognised by its `IDENTITY_ENDPOINT` and `IMDS_ENDPOINT`.
/// Endpoints must be `http` or `https` URLs (Service Fabric: `https`).
///
/// A configuration error never fails [`ManagedIdentityCredential::new`]: it is reported by
/// every token request as an *invalid request* (a chain stops on it: a mistake should be
/// heard). [`build`](ManagedIdentityCredentialBuilder::build) reports it at once.
///
/// # Requests
///
/// * Exactly one scope, turned into the `resource` by stripping a trailing `/.default`. A
///   managed identity belongs to one tenant, so the request's tenant is ignored; CAE is not
///   offered; a request with claims skips the cache (a fresh token) but the claims are not
///   sent (no source takes them).
/// * Tokens are cached per resource and renewed in their last 300 s, or at half-life for tokens
///   living 2 hours or more (MSAL's rule; managed identity tokens usually live 24 hours), or at
///   the endpoint's `refresh_in`.
/// * **IMDS** is retried on 404, 408, 410, 429, every 5xx and connection failures: 5 retries,
///   waiting 0, 1.6, 3.2, 6.4 and 12.8 s, or 0, 5, 10, 20 and 40 s once IMDS answered 410 (it
///   is being updated, which Microsoft documents can take 70 s), or the `Retry-After` it asks
///   for; connecting gives up after 2 s; one request takes at most 90 s in all (the 75 s of
///   410 backoff plus its attempts). The other sources use the default
///   [`RetryOptions`](crate::RetryOptions) (30 s in all).
/// * On a host without IMDS, the request fails after its retries and the credential is
///   *unavailable* ("no managed identity endpoint answered"); so is an IMDS that answers 403
///   with `unreachable` (Docker Desktop), or any JSON 400 for the system-assigned identity but
///   `invalid_resource`: the host has no system-assigned identity to use, with advice for
///   "Identity not found" (enable it, or give a user-assigned id) and for "Multiple user
///   assigned identities exist" (give the client id of one of them). A 400 for a
///   user-assigned identity, and `invalid_resource` for either, is *authentication failed*,
///   with advice: a user-assigned id not assigned to this host, or a resource Microsoft Entra
///   ID does not know, is a mistake to report, not a reason for a chain to run on as another
///   identity. This is where the crate deliberately differs: azure-identity makes every IMDS
///   400 *unavailable*, azidentity every system-assigned one, `invalid_resource` included.
///   Once IMDS has answered the credential with JSON, as only IMDS does (a token, a JSON
///   error, the probe's 400), it is there: a request that then gets no answer is
///   *authentication failed* (a timeout or a connection failure), so a chain does not move on
///   to another identity while IMDS is slow. An answer that is not JSON (a captive portal's
///   page, a proxy's refusal, a 400 that is not a JSON object) does not count. This too is deliberate: azure-identity 1.27
///   makes a token request that gets no answer after a successful probe *unavailable*.
///   Any other failure is *authentication failed*, with the status and the endpoint's text,
///   scrubbed of every secret the credential holds and of token values.
/// * In a chain ([`ChainedTokenCredential`](crate::ChainedTokenCredential), `a.or(b)`,
///   `DefaultAzureCredential`), where another credential may answer, until IMDS first answers
///   with JSON each request is preceded by a probe (the same `GET` without `Metadata`, 1 s, no
///   retries), as azure-identity does in any chain: no HTTP answer (no connection, no reply in
///   time, a dropped connection or a reply that is not HTTP) makes the credential
///   *unavailable* at once instead of after the retries, and so does any failure to get an
///   answer to the token request; until IMDS has issued a token, so does an answer to the
///   token request that is not a JSON object (a proxy or firewall answering for the
///   link-local address). A client that cannot send the request at all (an `https`-only
///   client wrapped where the credential cannot see it, a proxy) is an *invalid request*
///   saying what to do, in a chain or not.
///   Asked on its own, it is not probed: a slow IMDS is waited for. Concurrent requests for
///   one resource share one acquisition, probed or not as the request that started it: a
///   direct request joining a chain's takes its probe, and a chain's joining a direct one
///   waits with it.
/// * **Azure Arc**: of the key file the agent names, only the file name is used (as MSAL
///   does): the file of that name is read only if it is a regular `*.key` file of at most
///   4096 bytes directly inside the agent's key directory (see
///   [`azure_arc_key_directory`](ManagedIdentityCredentialBuilder::azure_arc_key_directory)),
///   within 10 s. A read that takes longer (a hung file system) cannot be stopped: its
///   request fails, and until it returns, later requests fail at once, before asking the
///   agent, rather than start another; all with the same error, not marked transient, saying
///   so (fix the key directory's mount, or restart the process).
///   For a user-assigned identity the answer must name the same identity: older agents ignore
///   the request and return the system-assigned identity's token, which is refused.
/// * **Service Fabric**: the endpoint is trusted when the SHA-1 of its certificate matches
///   `IDENTITY_SERVER_THUMBPRINT` (its certificate is self-signed), over the built-in client.
#[derive(Clone)]
pub struct ManagedIdentityCredential {
    inner: Arc<Inner>,
}

struct Inner {
    source: ManagedIdentitySource,
    /// The configured endpoint, or why the configuration cannot work.
    state: Result<Arc<Configured>, String>,
}

struct Configured {
    source: ManagedIdentitySource,
    endpoint: Endpoint,
    cache: TokenCache,
    /// The endpoint's last `Retry-After`.
    throttle: ThrottleMemory,
}

/// One source's request logic.
enum Endpoint {
    /// Requests go to this credential as they are, bypassing this credential's cache.
    WorkloadIdentity(WorkloadIdentityCredential),
    Imds(imds::Imds),
    AppService(secret_get::SecretGet),
    ServiceFabric(secret_get::SecretGet),
    AzureArc(azure_arc::AzureArc),
    AzureMl(secret_get::SecretGet),
    CloudShell(cloud_shell::CloudShell),
}

impl Endpoint {
    /// `within_chain`: asked by a chain, which may fall back to another credential.
    async fn acquire(
        &self,
        resource: &str,
        within_chain: bool,
    ) -> Result<AccessToken, CredentialError> {
        match self {
            // Never here: `Inner::get_token` hands its requests to the credential.
            Self::WorkloadIdentity(_) => Err(CredentialError::invalid_request(
                NAME,
                "the workload identity takes requests whole",
            )),
            Self::Imds(s) => s.acquire(resource, within_chain).await,
            Self::AppService(s) | Self::AzureMl(s) | Self::ServiceFabric(s) => {
                s.acquire(resource).await
            }
            Self::AzureArc(s) => s.acquire(resource).await,
            Self::CloudShell(s) => s.acquire(resource).await,
        }
    }

    /// The endpoint's URL; `None` for the workload identity (its `Debug` says where it goes).
    fn url(&self) -> Option<&Url> {
        match self {
            Self::WorkloadIdentity(_) => None,
            Self::Imds(s) => Some(&s.url),
            Self::AppService(s) | Self::AzureMl(s) | Self::ServiceFabric(s) => Some(&s.url),
            Self::AzureArc(s) => Some(&s.url),
            Self::CloudShell(s) => Some(&s.url),
        }
    }

    fn identity(&self) -> Option<&UserAssignedId> {
        match self {
            // Its tokens are cached by the credential, keyed by its own client id.
            Self::WorkloadIdentity(_) => None,
            Self::Imds(s) => s.id.as_ref(),
            Self::AppService(s) | Self::AzureMl(s) | Self::ServiceFabric(s) => s.id.as_ref(),
            Self::AzureArc(s) => s.id.as_ref(),
            Self::CloudShell(_) => None,
        }
    }
}

impl ManagedIdentityCredential {
    /// The system-assigned identity, configured from the process environment. Never fails: a
    /// configuration error is reported by every token request (an invalid request).
    pub fn new() -> Self {
        Self::builder().build_lenient()
    }

    /// A builder: a user-assigned identity, another HTTP client, variables from elsewhere.
    pub fn builder() -> ManagedIdentityCredentialBuilder {
        ManagedIdentityCredentialBuilder::default()
    }

    /// Where tokens come from. For a configuration that cannot work, the source it was read
    /// as (`IDENTITY_ENDPOINT` alone reads as App Service).
    pub fn source(&self) -> ManagedIdentitySource {
        self.inner.source
    }
}

impl Default for ManagedIdentityCredential {
    fn default() -> Self {
        Self::new()
    }
}

impl Inner {
    async fn get_token(&self, request: TokenRequest) -> Result<AccessToken, CredentialError> {
        let configured = match &self.state {
            Ok(configured) => configured,
            Err(message) => return Err(CredentialError::invalid_request(NAME, message.clone())),
        };
        if let Endpoint::WorkloadIdentity(credential) = &configured.endpoint {
            return credential
                .get_token_with(request)
                .await
                .map_err(from_workload_identity);
        }
        let resource = resource_of(&request)?;
        // Read here, in the caller's task: the acquisition runs in a task of its own.
        let within_chain = super::chain::within_chain();
        // The identity is fixed per credential: the resource is the whole key.
        let key = CacheKey::new("", std::slice::from_ref(&resource), false);
        let this = Arc::clone(configured);
        configured
            .cache
            .get_or_acquire(key, request.claims().is_some(), move || async move {
                this.acquire(&resource, within_chain).await
            })
            .await
    }
}

impl Configured {
    /// A token from the endpoint, unless it asked to be left alone for a while: its
    /// `Retry-After` is remembered, as for every credential of this crate, so a throttled
    /// endpoint is not asked again for any resource until then (MSAL does the same for managed
    /// identity).
    async fn acquire(
        &self,
        resource: &str,
        within_chain: bool,
    ) -> Result<AccessToken, CredentialError> {
        let provider = format!("the {} managed identity endpoint", self.source);
        // One endpoint, one wait, whatever the resource: the key is empty.
        if let Some(refused) = self.throttle.refusal("", NAME, &provider) {
            return Err(refused);
        }
        let result = self.endpoint.acquire(resource, within_chain).await;
        if let Err(error) = &result {
            let until = error
                .retry_after()
                .and_then(|wait| tokio::time::Instant::now().checked_add(wait));
            if let (Some(until), Some(status)) = (until, error.status()) {
                self.throttle.remember("", Throttle { until, status });
            }
        }
        result
    }
}

arc_credential_service!(ManagedIdentityCredential);

/// The resource of a request: its one scope without a trailing `/.default`.
fn resource_of(request: &TokenRequest) -> Result<String, CredentialError> {
    request.validate(NAME)?;
    match request.scopes() {
        [scope] => {
            let scope = scope.trim();
            Ok(scope.strip_suffix("/.default").unwrap_or(scope).to_owned())
        }
        scopes => Err(CredentialError::invalid_request(
            NAME,
            format!(
                "a managed identity token is for exactly one resource, but {} scopes were \
                 requested; ask for one scope such as \"https://management.azure.com/.default\"",
                scopes.len()
            ),
        )),
    }
}

impl fmt::Debug for ManagedIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct(NAME);
        s.field("source", &self.inner.source);
        match &self.inner.state {
            Ok(configured) => match &configured.endpoint {
                Endpoint::WorkloadIdentity(credential) => s.field("credential", credential),
                endpoint => s
                    .field("endpoint", &endpoint.url().map_or("", Url::as_str))
                    .field("identity", &endpoint.identity()),
            },
            Err(message) => s.field("error", message),
        };
        s.finish()
    }
}

/// Settings for a [`ManagedIdentityCredential`].
#[derive(Default)]
pub struct ManagedIdentityCredentialBuilder {
    ids: Vec<UserAssignedId>,
    vars: Vars,
    http_client: Option<HttpClient>,
    /// The workload identity source's client when it is not `http_client`'s (see
    /// `workload_identity_http_client`).
    workload_http_client: Option<HttpClient>,
    /// `Some`: the workload identity source allows these tenants and those of
    /// `AZURE_ADDITIONALLY_ALLOWED_TENANTS`, as `DefaultAzureCredential`'s workload identity
    /// member does.
    workload_allowed_tenants: Option<Vec<String>>,
    arc_key_directory: Option<PathBuf>,
    /// `Some`: probe IMDS (or not) wherever the credential is asked; `None`: when a chain
    /// asks it.
    probe_imds: Option<bool>,
    /// Leave out the workload identity source (see `exclude_workload_identity`).
    no_workload_identity: bool,
    distributed: Option<crate::DistributedCache>,
    system_assigned_label: Option<String>,
}

impl ManagedIdentityCredentialBuilder {
    /// A user-assigned identity, by client id. Where the workload identity variables select
    /// the workload identity source (an AKS pod set up for it), this is the client id of the
    /// workload identity to authenticate as, not a node identity's: see
    /// [`exclude_workload_identity`](Self::exclude_workload_identity) to ask IMDS instead.
    pub fn client_id(self, id: impl Into<String>) -> Self {
        self.user_assigned_id(UserAssignedId::ClientId(id.into()))
    }

    /// A user-assigned identity, by object (principal) id. Where the workload identity
    /// variables select the workload identity source (an AKS pod set up for it), that source
    /// takes a client id only and [`build`](Self::build) fails: see
    /// [`exclude_workload_identity`](Self::exclude_workload_identity) to ask IMDS instead.
    pub fn object_id(self, id: impl Into<String>) -> Self {
        self.user_assigned_id(UserAssignedId::ObjectId(id.into()))
    }

    /// A user-assigned identity, by Azure resource id. Where the workload identity variables
    /// select the workload identity source (an AKS pod set up for it), that source takes a
    /// client id only and [`build`](Self::build) fails: see
    /// [`exclude_workload_identity`](Self::exclude_workload_identity) to ask IMDS instead.
    pub fn resource_id(self, id: impl Into<String>) -> Self {
        self.user_assigned_id(UserAssignedId::ResourceId(id.into()))
    }

    /// A user-assigned identity. Give exactly one id: more than one is a build error.
    pub fn user_assigned_id(mut self, id: UserAssignedId) -> Self {
        self.ids.push(id);
        self
    }

    /// Reads the environment variables from these pairs instead of the process
    /// environment (for tests, or configuration that comes from elsewhere).
    pub fn vars<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.vars = Vars::from_pairs(vars);
        self
    }

    /// The HTTP client for token requests. Default: a built-in client that allows plain
    /// `http`, on the IMDS retry schedule for IMDS. A client given here is used as it is: its
    /// retries replace the IMDS schedule of [`ManagedIdentityCredential`], and it must send
    /// plain `http` (every source but Service Fabric is `http` on a link-local or loopback
    /// address): a client of your own made with [`HttpClient::from_service`]. One built by
    /// [`HttpClient::builder`] sends `https` only, and [`build`](Self::build) refuses it for
    /// a plain-`http` endpoint. Not used for Service Fabric, whose endpoint is trusted by its certificate's
    /// thumbprint alone, which needs the built-in client. The workload identity source uses it
    /// as [`WorkloadIdentityCredential`] does, for `https` to Microsoft Entra ID. In a chain,
    /// IMDS's probe reads its answer with this client's own limits: the probe's 16 KiB cap
    /// (a larger answer, a web page, is no IMDS) is the built-in client's.
    pub fn http_client(mut self, client: HttpClient) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Share tokens with the other processes of a fleet through this
    /// [`DistributedCache`](crate::DistributedCache), a second level under the in-memory
    /// cache: one process asks Microsoft Entra ID, the others use its token. Entries are
    /// keyed by the managed identity source and the identity: the user-assigned id, or for
    /// the system-assigned identity the label given to
    /// [`system_assigned_identity_label`](Self::system_assigned_identity_label). Without a
    /// label the system-assigned identity's tokens stay in this process: nothing a process
    /// can see tells one host's system-assigned identity from another's.
    pub fn distributed_cache(mut self, cache: crate::DistributedCache) -> Self {
        self.distributed = Some(cache);
        self
    }

    /// Names the system-assigned identity in the
    /// [`distributed_cache`](Self::distributed_cache)'s keys, so its tokens are shared.
    /// Every process that shares the store (and prefix and sealing key) under this label
    /// must run as the same identity — say, the instances of one App Service app or of one
    /// VM scale set: a process given the label of another identity would use that
    /// identity's tokens. Ignored for a user-assigned identity, whose id names it.
    pub fn system_assigned_identity_label(mut self, label: impl Into<String>) -> Self {
        self.system_assigned_label = Some(label.into());
        self
    }

    /// Where the Azure Arc agent's key files must be: the agent names a file in its answer,
    /// and the credential reads the file of that name in this directory (only when it is
    /// directly in it, after symlinks), wherever the answer says it is. Default
    /// `/var/opt/azcmagent/tokens` on Linux, `%ProgramData%\AzureConnectedMachineAgent\Tokens`
    /// on Windows; on other systems Azure Arc is unsupported unless this is set.
    pub fn azure_arc_key_directory(mut self, dir: impl Into<PathBuf>) -> Self {
        self.arc_key_directory = Some(dir.into());
        self
    }

    /// Whether to probe IMDS until IMDS first answers with JSON (1 s, no retries, no
    /// `Metadata` header, so that a host without IMDS makes the credential *unavailable* at
    /// once instead of after the retries), wherever the credential is asked. Without it, only
    /// when a chain asks. For `DefaultAzureCredential`, whose managed identity named alone has
    /// nothing to fall back to.
    pub(crate) fn probe_imds(mut self, probe: bool) -> Self {
        self.probe_imds = Some(probe);
        self
    }

    /// The HTTP client of the workload identity source alone, instead of
    /// [`http_client`](Self::http_client)'s. For `DefaultAzureCredential`, whose client is
    /// for `https` to Microsoft Entra ID (proxies, custom roots), as its workload identity
    /// member's is, and must reach it from this source too; the other sources keep the
    /// built-in client, their endpoints being plain `http` on the host.
    pub(crate) fn workload_identity_http_client(mut self, client: HttpClient) -> Self {
        self.workload_http_client = Some(client);
        self
    }

    /// The tenants the workload identity source allows besides its own, with those of
    /// `AZURE_ADDITIONALLY_ALLOWED_TENANTS`. For `DefaultAzureCredential`, whose workload
    /// identity member allows them: this source asks as that member does.
    pub(crate) fn workload_identity_allowed_tenants(mut self, tenants: Vec<String>) -> Self {
        self.workload_allowed_tenants = Some(tenants);
        self
    }

    /// Leaves the workload identity source out, so that `AZURE_AUTHORITY_HOST`,
    /// `AZURE_TENANT_ID` and `AZURE_FEDERATED_TOKEN_FILE` do not select it, and the next
    /// source in the table, as a rule IMDS, is used (azure-identity's
    /// `_exclude_workload_identity_credential`). In an AKS pod set up for workload identity,
    /// this is the way to the node's managed identities: its system-assigned or kubelet
    /// identity, or a user-assigned one by [`client_id`](Self::client_id) (which would
    /// otherwise name the workload identity), [`object_id`](Self::object_id) or
    /// [`resource_id`](Self::resource_id) (which the workload identity source refuses).
    /// `DefaultAzureCredential` sets it when its own workload identity member is not in the
    /// chain. Default: `false`.
    pub fn exclude_workload_identity(mut self, exclude: bool) -> Self {
        self.no_workload_identity = exclude;
        self
    }

    /// Reads the environment and builds; fails when the configuration cannot work.
    pub fn build(self) -> Result<ManagedIdentityCredential, ConfigError> {
        let credential = self.build_lenient();
        match &credential.inner.state {
            Ok(_) => Ok(credential),
            Err(message) => Err(ConfigError::new(format!("{NAME}: {message}"))),
        }
    }

    /// Builds; a configuration error is kept for `get_token` to report.
    fn build_lenient(self) -> ManagedIdentityCredential {
        let get = |name: &str| self.vars.get(name);
        let selection = select(&get, !self.no_workload_identity);
        let source = selection.source;
        let state = self.configure(selection, &get);
        ManagedIdentityCredential {
            inner: Arc::new(Inner {
                source,
                state: state.map(|endpoint| {
                    let identity = match (endpoint.identity(), &self.system_assigned_label) {
                        (Some(id), _) => Some(format!("{NAME}/{}={}", id.kind(), id.value())),
                        (None, Some(label)) => Some(format!("{NAME}/system={label}")),
                        (None, None) => None,
                    };
                    // An unnamed system-assigned identity is the same key on every host, so
                    // sharing it would hand one identity's tokens to another. The workload
                    // identity's credential has the distributed cache itself, under its client
                    // id, and this credential's cache is never used for it.
                    let workload = matches!(endpoint, Endpoint::WorkloadIdentity(_));
                    let shared = match (&self.distributed, &identity) {
                        _ if workload => None,
                        (Some(cache), Some(_)) => Some(cache),
                        (Some(_), None) => {
                            tracing::debug!(
                                credential = NAME,
                                "the system-assigned identity's tokens are cached in this \
                                 process only: give system_assigned_identity_label to share \
                                 them through the distributed cache"
                            );
                            None
                        }
                        (None, _) => None,
                    };
                    let cache = token_cache(
                        NAME,
                        shared,
                        &format!("managed-identity/{source}"),
                        "",
                        identity.unwrap_or_else(|| format!("{NAME}/system")),
                    );
                    Arc::new(Configured {
                        source,
                        endpoint,
                        cache,
                        throttle: ThrottleMemory::default(),
                    })
                }),
            }),
        }
    }

    fn configure(
        &self,
        selection: Selection,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Endpoint, String> {
        let id = match self.ids.as_slice() {
            [] => None,
            [id] => {
                id.check()?;
                Some(id.clone())
            }
            _ => {
                return Err(format!(
                    "give exactly one user-assigned id (client id, object id or resource id), \
                     not {}",
                    self.ids.len()
                ));
            }
        };
        if let Some(label) = &self.system_assigned_label {
            check_label(label)?;
        }
        let Selection {
            source,
            endpoint,
            secret,
            thumbprint,
        } = selection;
        // The workload identity credential has no endpoint of this credential's to check.
        let workload = |id| {
            self.workload_identity(id, get)
                .map(Endpoint::WorkloadIdentity)
        };
        if source == ManagedIdentitySource::WorkloadIdentity {
            return workload(id);
        }
        let endpoint = endpoint?;
        if let Some(client) = &self.http_client {
            if client.https_only() && endpoint.scheme() == "http" {
                let mut shown = endpoint.clone();
                shown.set_query(None);
                return Err(format!(
                    "the http_client given sends https only (every client HttpClient::builder() \
                     builds does), but the {source} endpoint {shown} is plain http; leave out \
                     http_client to use the built-in client, or give a client of your own with \
                     HttpClient::from_service"
                ));
            }
        }
        let unsupported = |id: &UserAssignedId| {
            format!(
                "{source} supports only the system-assigned identity, but a user-assigned {id} \
                 was given; remove it, or configure the identity on the host"
            )
        };
        let http = self.http_client.clone();
        Ok(match source {
            ManagedIdentitySource::WorkloadIdentity => workload(id)?,
            ManagedIdentitySource::Imds => {
                Endpoint::Imds(imds::Imds::new(endpoint, id, http, self.probe_imds)?)
            }
            ManagedIdentitySource::AppService => Endpoint::AppService(SecretGet::new(
                &app_service::PROFILE,
                endpoint,
                required(secret)?,
                id,
                http.map_or_else(request::default_http, Ok)?,
            )?),
            ManagedIdentitySource::AzureMl => Endpoint::AzureMl(SecretGet::new(
                &azure_ml::PROFILE,
                endpoint,
                required(secret)?,
                id,
                http.map_or_else(request::default_http, Ok)?,
            )?),
            ManagedIdentitySource::AzureArc => {
                let dir = match &self.arc_key_directory {
                    Some(dir) => dir.clone(),
                    None => azure_arc::default_key_directory(get)?,
                };
                Endpoint::AzureArc(azure_arc::AzureArc::new(endpoint, dir, id, http)?)
            }
            ManagedIdentitySource::ServiceFabric => {
                if let Some(id) = &id {
                    return Err(unsupported(id));
                }
                Endpoint::ServiceFabric(SecretGet::new(
                    &service_fabric::PROFILE,
                    endpoint,
                    required(secret)?,
                    None,
                    service_fabric::client(thumbprint.as_deref().unwrap_or_default())?,
                )?)
            }
            ManagedIdentitySource::CloudShell => {
                if let Some(id) = &id {
                    return Err(unsupported(id));
                }
                Endpoint::CloudShell(cloud_shell::CloudShell::new(endpoint, http)?)
            }
        })
    }
}

impl ManagedIdentityCredentialBuilder {
    /// The workload identity source's credential, for the client id given or
    /// `AZURE_CLIENT_ID`; the rest it reads from the same variables.
    fn workload_identity(
        &self,
        id: Option<UserAssignedId>,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<WorkloadIdentityCredential, String> {
        let client_id = match id {
            Some(UserAssignedId::ClientId(id)) => id,
            Some(other) => {
                return Err(format!(
                    "the workload identity (selected by {AZURE_AUTHORITY_HOST}, \
                     {AZURE_TENANT_ID} and {AZURE_FEDERATED_TOKEN_FILE}) is chosen by client \
                     id, but a user-assigned {other} was given; give the client id, or \
                     exclude_workload_identity(true) to ask the host's managed identity \
                     endpoint (IMDS) for that identity (DefaultAzureCredential: \
                     exclude_workload_identity_credential(true))"
                ));
            }
            None => get(AZURE_CLIENT_ID).ok_or_else(|| {
                format!(
                    "the workload identity was selected ({AZURE_AUTHORITY_HOST}, \
                     {AZURE_TENANT_ID} and {AZURE_FEDERATED_TOKEN_FILE} are set) but no client \
                     id is known: set {AZURE_CLIENT_ID} or give client_id, or use the host's \
                     managed identity (IMDS) instead with exclude_workload_identity(true) \
                     (DefaultAzureCredential: exclude_workload_identity_credential(true))"
                )
            })?,
        };
        let mut builder = WorkloadIdentityCredential::builder().client_id(client_id);
        if let Some(tenants) = &self.workload_allowed_tenants {
            builder = builder
                .additionally_allowed_tenants(tenants.clone())
                .additionally_allowed_tenants_from_vars();
        }
        if let Some(pairs) = self.vars.pairs() {
            builder = builder.vars(pairs);
        }
        if let Some(client) = self
            .workload_http_client
            .as_ref()
            .or(self.http_client.as_ref())
        {
            builder = builder.http_client(client.clone());
        }
        if let Some(cache) = &self.distributed {
            builder = builder.distributed_cache(cache.clone());
        }
        builder.build().map_err(|e| {
            e.message()
                .trim_start_matches("WorkloadIdentityCredential: ")
                .to_owned()
        })
    }
}

/// An error of the workload identity source's credential, reported as this credential's (its
/// kind and cause kept): a chain's error would otherwise name `WorkloadIdentityCredential`
/// twice and never say why the managed identity asked it.
///
/// The way out (IMDS instead) is offered only when the source could not be used at all
/// (*unavailable*: a missing token file): a refusal or a bad scope is the workload identity's
/// own problem, and IMDS in a pod answers as the node's kubelet identity, which is rarely
/// what was meant.
fn from_workload_identity(error: CredentialError) -> CredentialError {
    let renamed = error.renamed(NAME);
    let why = format!(
        "; the managed identity used its workload identity source because \
         {AZURE_AUTHORITY_HOST}, {AZURE_TENANT_ID} and {AZURE_FEDERATED_TOKEN_FILE} are set"
    );
    let way_out = if renamed.is_unavailable() {
        ": to ask the host's managed identity endpoint (IMDS) instead, which in a Kubernetes \
         pod answers as the node's identity, give exclude_workload_identity(true) \
         (DefaultAzureCredential: exclude_workload_identity_credential(true))"
    } else {
        ""
    };
    renamed.with_message_suffix(&format!("{why}{way_out}"))
}

/// The secret of a source that needs one; `select` only picks such a source with one.
fn required(secret: Option<(&'static str, Secret)>) -> Result<(&'static str, Secret), String> {
    secret.ok_or_else(|| "the source's secret variable is not set".to_owned())
}

/// What the environment selects.
struct Selection {
    source: ManagedIdentitySource,
    /// The endpoint URL, or why there is none.
    endpoint: Result<Url, String>,
    /// The secret variable's name and value, for the sources that have one.
    secret: Option<(&'static str, Secret)>,
    thumbprint: Option<String>,
}

/// Picks the source from the variables, in azure-identity's order; `workload_identity`:
/// whether that source may be picked.
fn select(get: &dyn Fn(&str) -> Option<String>, workload_identity: bool) -> Selection {
    // Trimmed once: the value sent is the value scrubbed from answers.
    let secret = |name: &'static str| get(name).map(|v| (name, Secret::new(v.trim())));
    let selection = |source, endpoint, secret| Selection {
        source,
        endpoint,
        secret,
        thumbprint: None,
    };
    if let Some(endpoint) = get(IDENTITY_ENDPOINT) {
        let header = secret(IDENTITY_HEADER);
        let thumbprint = get(IDENTITY_SERVER_THUMBPRINT);
        if header.is_some() {
            return match thumbprint {
                Some(thumbprint) => Selection {
                    source: ManagedIdentitySource::ServiceFabric,
                    endpoint: endpoint_url(IDENTITY_ENDPOINT, &endpoint, true),
                    secret: header,
                    thumbprint: Some(thumbprint),
                },
                None => selection(
                    ManagedIdentitySource::AppService,
                    endpoint_url(IDENTITY_ENDPOINT, &endpoint, false),
                    header,
                ),
            };
        }
        if get(IMDS_ENDPOINT).is_some() {
            return selection(
                ManagedIdentitySource::AzureArc,
                endpoint_url(IDENTITY_ENDPOINT, &endpoint, false),
                None,
            );
        }
        return selection(
            ManagedIdentitySource::AppService,
            Err(format!(
                "{IDENTITY_ENDPOINT} is set but not what goes with it: set {IDENTITY_HEADER} \
                 too (App Service, Functions; with {IDENTITY_SERVER_THUMBPRINT} for Service \
                 Fabric) or {IMDS_ENDPOINT} (Azure Arc), or unset {IDENTITY_ENDPOINT} to use \
                 another source"
            )),
            None,
        );
    }
    if let Some(endpoint) = get(MSI_ENDPOINT) {
        let url = endpoint_url(MSI_ENDPOINT, &endpoint, false);
        return match secret(MSI_SECRET) {
            Some(secret) => selection(ManagedIdentitySource::AzureMl, url, Some(secret)),
            None => selection(ManagedIdentitySource::CloudShell, url, None),
        };
    }
    let workload = [
        AZURE_AUTHORITY_HOST,
        AZURE_TENANT_ID,
        AZURE_FEDERATED_TOKEN_FILE,
    ];
    if workload_identity && workload.iter().all(|name| get(name).is_some()) {
        // No URL of this credential's: the workload identity credential reads its own.
        return selection(
            ManagedIdentitySource::WorkloadIdentity,
            Err("the workload identity has no managed identity endpoint".to_owned()),
            None,
        );
    }
    let url = match get(AZURE_POD_IDENTITY_AUTHORITY_HOST) {
        Some(base) => endpoint_url(AZURE_POD_IDENTITY_AUTHORITY_HOST, &base, false)
            .and_then(|base| imds::token_url(&base)),
        None => imds::default_url(),
    };
    selection(ManagedIdentitySource::Imds, url, None)
}

/// `value` of variable `name` as an endpoint: an `http` (unless `https_only`) or `https` URL
/// with a host and no user information. Errors name the variable; they quote the value only
/// when it cannot hold a password.
fn endpoint_url(name: &str, value: &str, https_only: bool) -> Result<Url, String> {
    let url = Url::parse(value.trim())
        .map_err(|e| format!("{name} is not a URL ({e}); set it to the endpoint's URL"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{name} holds user information (a name or password before '@'), which a managed \
             identity endpoint never has; remove it"
        ));
    }
    let allowed = if https_only {
        url.scheme() == "https"
    } else {
        matches!(url.scheme(), "http" | "https")
    };
    if !allowed {
        let wanted = if https_only { "https" } else { "http or https" };
        return Err(format!(
            "{name} must be an {wanted} URL, not {}: \"{}\"",
            url.scheme(),
            url.as_str()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{name} has no host: \"{}\"", url.as_str()));
    }
    Ok(url)
}

impl fmt::Debug for ManagedIdentityCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedIdentityCredentialBuilder")
            .field("ids", &self.ids)
            .field("vars", &self.vars)
            .field("http_client", &self.http_client)
            .field("workload_identity_http_client", &self.workload_http_client)
            .field(
                "workload_identity_allowed_tenants",
                &self.workload_allowed_tenants,
            )
            .field("azure_arc_key_directory", &self.arc_key_directory)
            .field("probe_imds", &self.probe_imds)
            .field("exclude_workload_identity", &self.no_workload_identity)
            .field("distributed_cache", &self.distributed)
            .field(
                "system_assigned_identity_label",
                &self.system_assigned_label,
            )
            .finish()
    }
}

/// A system-assigned identity label must name something (see
/// [`ManagedIdentityCredentialBuilder::system_assigned_identity_label`]).
pub(crate) fn check_label(label: &str) -> Result<(), String> {
    if label.trim().is_empty() {
        return Err(
            "the system-assigned identity label is empty; give a name for the identity \
                    the processes sharing the distributed cache run as, or leave it out"
                .to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
