//! [`ManagedIdentityCredential`]: the identity Azure gives the host the code runs on.

use std::fmt;
use std::sync::Arc;

use url::Url;

use super::arc_credential_service;
use super::env::AZURE_TENANT_ID;
use super::workload_identity::AZURE_FEDERATED_TOKEN_FILE;
use crate::CredentialExt;
use crate::WorkloadIdentityCredential;
use crate::cache::{CacheKey, TokenCache};
use crate::entra::authority::AZURE_AUTHORITY_HOST;
use crate::error::CredentialError;
use crate::throttle::{Throttle, ThrottleMemory};
use crate::token::{AccessToken, TokenRequest};
use crate::transport::BeforeRetry;

pub use builder::ManagedIdentityCredentialBuilder;
pub(crate) use builder::check_label;

mod app_service;
mod azure_arc;
mod azure_ml;
mod builder;
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
/// Azure Machine Learning: the client id of the compute's own identity, which its endpoint
/// needs to be told (without one it answers as a user's identity).
const DEFAULT_IDENTITY_CLIENT_ID: &str = "DEFAULT_IDENTITY_CLIENT_ID";
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

    /// The id without surrounding whitespace, as an id read from a variable is: `"…\n"` (a
    /// value read from a file) would be sent as it is and name no identity.
    fn trimmed(self) -> Self {
        let trim = |v: String| v.trim().to_owned();
        match self {
            Self::ClientId(v) => Self::ClientId(trim(v)),
            Self::ObjectId(v) => Self::ObjectId(trim(v)),
            Self::ResourceId(v) => Self::ResourceId(trim(v)),
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
/// | Azure Machine Learning | `MSI_ENDPOINT`, `MSI_SECRET`; optional `DEFAULT_IDENTITY_CLIENT_ID` | `GET ?api-version=2017-09-01`, header `secret` | `clientid` only |
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
/// tokens carry `WorkloadIdentityCredential`'s). Its three variables select it when set and
/// not blank, their values Unicode or not: a token file path need not be Unicode, and an
/// `AZURE_AUTHORITY_HOST` that is not is that source's error, naming it, rather than a reason
/// to ask IMDS. To reach IMDS from such a pod (the node's identities), set
/// [`exclude_workload_identity`](ManagedIdentityCredentialBuilder::exclude_workload_identity).
/// `DefaultAzureCredential`'s managed identity keeps this source exactly
/// while the chain's own workload identity member is in it (as azure-identity does), so a pod
/// set up for workload identity never falls through to IMDS, which answers there as the node's
/// kubelet identity; the source then sends through the chain's
/// [`http_client`](crate::DefaultAzureCredentialBuilder::http_client), as that member does.
///
/// Azure Machine Learning's endpoint, asked without a `clientid`, answers with a token for a
/// *user's* identity rather than the compute's own (azure-sdk-for-python #36047): for the
/// system-assigned identity the credential sends `DEFAULT_IDENTITY_CLIENT_ID`, which Azure ML
/// sets to the compute's identity, as azidentity and MSAL for .NET and JavaScript do, when it
/// is a GUID. Azure ML sets it to the placeholder `clientid` when no identity is enabled;
/// then, as without the variable, the request has no `clientid` (as azure-identity for
/// Python sends it) and the token is for whatever identity the endpoint picks, a user's.
/// Either way the tokens are cached as the system-assigned identity's: shared through a
/// [`distributed_cache`](ManagedIdentityCredentialBuilder::distributed_cache) only under a
/// [`system_assigned_identity_label`](ManagedIdentityCredentialBuilder::system_assigned_identity_label),
/// and under a label only between computes whose variable names the same GUID. A compute
/// whose variable is no GUID (no identity enabled) gets its user's token, which nothing tells
/// from another user's: its tokens are not shared, label or not.
/// An object or resource id is a
/// configuration error there, as in azidentity: the endpoint selects a user-assigned
/// identity by client id only (MSAL sends them anyway, as `object_id` and `msi_res_id`).
/// In `DefaultAzureCredential` that error makes the managed identity *unavailable*.
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
/// * Exactly one scope, turned into the `resource` by stripping a trailing `/.default` (a
///   scope that leaves nothing, `/.default` alone, is an *invalid request*). A
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
///   [`RetryOptions`](crate::RetryOptions) (30 s in all); Azure Arc's challenge, key read and
///   request with the key share one 30 s deadline (past it, a transient timeout).
/// * On a host without IMDS, the request fails after its retries and the credential is
///   *unavailable* ("no managed identity endpoint answered"); so is an IMDS that answers 403
///   with `unreachable` (Docker Desktop), or, until IMDS has issued the credential a token, any
///   JSON 400 for the system-assigned identity but
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
///   link-local address). When the probe's answer is not IMDS's JSON either (AWS's IMDSv1
///   404 page, a firewall's 502), the token request goes through the probe's client within
///   what is left of its second, without IMDS's retry schedule, so such an address costs the
///   chain a second, not 24 s (404) or 75 s (410) of retries; if that answer is IMDS's JSON
///   after all, with a status the schedule retries (404, 408, 410, 429, 5xx), the request is
///   sent again with the whole schedule, starting from that answer (as from such a JSON
///   answer to the probe itself): with the built-in client, a `Retry-After` it carries is
///   remembered at once and waited out before the request goes again, as any the retries
///   wait out, or, longer than they wait, ends it throttled (a client given with
///   [`http_client`](ManagedIdentityCredentialBuilder::http_client) sends it again at once,
///   its own retries replacing the schedule). A
///   probe with no answer within its second is *unavailable* as a
///   [transient](crate::CredentialError::is_transient) failure (IMDS may be slow for a
///   moment), and so is an answer to that quick token request that is not JSON with a
///   status IMDS's schedule retries (404, 408, 410, 429, 5xx: a busy IMDS stand-in such as
///   aad-pod-identity's NMI, which answers plain-text 404s or 503s while it assigns the pod's
///   identity); a refused connection, or another answer from something other than IMDS, is
///   not. Asked alone, a refused connection is transient, as for any credential. A client
///   that cannot send the request at all (an `https`-only
///   client wrapped where the credential cannot see it, a proxy) is an *invalid request*
///   saying what to do, in a chain or not.
///   Asked on its own, it is not probed: a slow IMDS is waited for. Concurrent requests for
///   one resource share one acquisition, probed or not as the request that started it: a
///   direct request joining a chain's takes its probe, and a chain's joining a direct one
///   waits with it.
/// * **Azure Arc**: `IDENTITY_ENDPOINT` must be on this host (`localhost`, `127.0.0.0/8` or
///   `::1`), where the agent serves (`http://localhost:40342`): another is a configuration
///   error, as the agent's key is sent there in plain `http`. This is deliberate: MSAL and
///   azure-identity send the key wherever the variable points. Of the key file the agent
///   names, only the file name is used (as MSAL does): the file of that name is read only if it is a regular `*.key` file of at most
///   4096 bytes directly inside the agent's key directory (see
///   [`azure_arc_key_directory`](ManagedIdentityCredentialBuilder::azure_arc_key_directory)),
///   on a thread of its own, one read at a time, within 10 s of the agent's challenge, its
///   wait for a read ahead of it included (a request not answered by then fails as a
///   transient timeout, saying the key directory's file system is slow). A read that takes longer (a hung file system)
///   cannot be stopped: its request fails, and until it returns, later
///   requests fail at once, before asking the agent, rather than start another; all with the
///   same error, not marked transient, saying so (fix the key directory's mount; the read is
///   retried once it returns). Its thread is detached, so it does not hold up the runtime's
///   shutdown (a restart).
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
    /// The endpoint's last `Retry-After`; its requests' retry loops report each wait to it
    /// before they start it.
    throttle: Arc<ThrottleMemory>,
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
    /// `before_retry`: reports the answers the transport waits out to the credential's
    /// throttle memory.
    async fn acquire(
        &self,
        resource: &str,
        within_chain: bool,
        before_retry: &BeforeRetry,
    ) -> Result<AccessToken, CredentialError> {
        match self {
            // Never here: `Inner::get_token` hands its requests to the credential.
            Self::WorkloadIdentity(_) => Err(CredentialError::invalid_request(
                NAME,
                "the workload identity takes requests whole",
            )),
            Self::Imds(s) => s.acquire(resource, within_chain, before_retry).await,
            Self::AppService(s) | Self::AzureMl(s) | Self::ServiceFabric(s) => {
                s.acquire(resource, before_retry).await
            }
            Self::AzureArc(s) => s.acquire(resource, before_retry).await,
            Self::CloudShell(s) => s.acquire(resource, before_retry).await,
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
    /// identity). A wait is remembered as soon as it is asked for: the transport's retry loop
    /// reports it before waiting it out, so requests for other resources meanwhile are
    /// refused rather than sent into the throttle, and those already retrying wait it out.
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
        let before_retry = self.throttle.before_retry("");
        let result = self
            .endpoint
            .acquire(resource, within_chain, &before_retry)
            .await;
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
            let resource = scope.strip_suffix("/.default").unwrap_or(scope);
            // Sent empty, IMDS answers 400 as if the host had no identity (*unavailable*, and
            // a chain moves on): the request is the mistake.
            if resource.trim().is_empty() {
                return Err(CredentialError::invalid_request(
                    NAME,
                    format!(
                        "the scope \"{scope}\" names no resource; ask for one such as \
                         \"https://management.azure.com/.default\""
                    ),
                ));
            }
            Ok(resource.to_owned())
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

#[cfg(test)]
mod tests;
