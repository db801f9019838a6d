//! [`ManagedIdentityCredentialBuilder`]: the settings, and the source chosen from the
//! environment.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use url::Url;

use super::secret_get::SecretGet;
use super::{
    AZURE_POD_IDENTITY_AUTHORITY_HOST, Configured, Endpoint, IDENTITY_ENDPOINT, IDENTITY_HEADER,
    IDENTITY_SERVER_THUMBPRINT, IMDS_ENDPOINT, Inner, MSI_ENDPOINT, MSI_SECRET,
    ManagedIdentityCredential, ManagedIdentitySource, NAME, UserAssignedId, app_service, azure_arc,
    azure_ml, cloud_shell, imds, request, service_fabric,
};
use crate::WorkloadIdentityCredential;
use crate::credential::env::{AZURE_CLIENT_ID, AZURE_TENANT_ID, Vars};
use crate::credential::settings::{token_cache, vars_setters};
use crate::credential::workload_identity::AZURE_FEDERATED_TOKEN_FILE;
use crate::entra::authority::AZURE_AUTHORITY_HOST;
use crate::error::ConfigError;
use crate::throttle::ThrottleMemory;
use crate::token::Secret;
use crate::transport::HttpClient;

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
    /// Azure Machine Learning takes a client id only too (a build error).
    pub fn object_id(self, id: impl Into<String>) -> Self {
        self.user_assigned_id(UserAssignedId::ObjectId(id.into()))
    }

    /// A user-assigned identity, by Azure resource id. Where the workload identity variables
    /// select the workload identity source (an AKS pod set up for it), that source takes a
    /// client id only and [`build`](Self::build) fails: see
    /// [`exclude_workload_identity`](Self::exclude_workload_identity) to ask IMDS instead.
    /// Azure Machine Learning takes a client id only too (a build error).
    pub fn resource_id(self, id: impl Into<String>) -> Self {
        self.user_assigned_id(UserAssignedId::ResourceId(id.into()))
    }

    /// A user-assigned identity. Give exactly one id: more than one is a build error.
    /// Whitespace around it is dropped, as around an id read from a variable.
    pub fn user_assigned_id(mut self, id: UserAssignedId) -> Self {
        // Trimmed once, here: the id sent is the id the cache is keyed by.
        self.ids.push(id.trimmed());
        self
    }

    vars_setters!(vars);

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
    /// (a larger answer, a web page, is no IMDS) is the built-in client's. Azure Arc's
    /// acquisition (challenge, key read, keyed request) ends after 30 s whatever this client's
    /// own limits are.
    pub fn http_client(mut self, client: HttpClient) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Share tokens with the other processes of a fleet through this
    /// [`DistributedCache`](crate::DistributedCache), a second level under the in-memory
    /// cache: one process asks Microsoft Entra ID, the others use its token. Entries are
    /// keyed by the managed identity source and the identity configured: the user-assigned id
    /// given to this builder, or for the system-assigned identity the label given to
    /// [`system_assigned_identity_label`](Self::system_assigned_identity_label). Without a
    /// label the system-assigned identity's tokens stay in this process: nothing a process
    /// can see tells one host's system-assigned identity from another's. That holds where the
    /// source asks for the system-assigned identity by an id of the environment's (Azure
    /// Machine Learning's `DEFAULT_IDENTITY_CLIENT_ID`): the variable alone never shares
    /// tokens; under a label it is part of the key, so computes with different defaults do
    /// not share an entry, and a compute without one (no identity enabled: the endpoint
    /// answers with the compute user's token) shares nothing, label or not.
    pub fn distributed_cache(mut self, cache: crate::DistributedCache) -> Self {
        self.distributed = Some(cache);
        self
    }

    /// Names the system-assigned identity in the
    /// [`distributed_cache`](Self::distributed_cache)'s keys, so its tokens are shared.
    /// Every process that shares the store (and prefix and sealing key) under this label
    /// must run as the same identity — say, the instances of one App Service app or of one
    /// VM scale set: a process given the label of another identity would use that
    /// identity's tokens. Ignored for a user-assigned identity, whose id names it. On Azure
    /// Machine Learning the compute's own identity, asked for by `DEFAULT_IDENTITY_CLIENT_ID`,
    /// counts as the system-assigned identity: it needs the label too. Without an identity
    /// enabled (`DEFAULT_IDENTITY_CLIENT_ID` unset or not a GUID, such as the placeholder
    /// `clientid`) the endpoint answers with the compute user's token, which nothing here
    /// tells from another user's: such a compute's tokens stay in its process, label or not.
    /// Cloud Shell's tokens are always its signed-in user's, never a host identity's: they
    /// stay in the process too, label or not.
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
    pub(super) fn build_lenient(self) -> ManagedIdentityCredential {
        let get = |name: &str| self.vars.get(name);
        let selection = select(&self.vars, !self.no_workload_identity);
        let source = selection.source;
        let state = self.configure(selection, &get);
        ManagedIdentityCredential {
            inner: Arc::new(Inner {
                source,
                state: state.map(|endpoint| {
                    // Keyed by what was configured: an id the source took from the environment
                    // (Azure ML's `DEFAULT_IDENTITY_CLIENT_ID`) names no identity the user
                    // vouched for, so alone it never shares; under a label, Azure ML's GUID
                    // default is added to the key. `configure` allows at most one id.
                    let identity = match (self.ids.first(), &self.system_assigned_label) {
                        (Some(id), _) => Some(format!("{NAME}/{}={}", id.kind(), id.value())),
                        // Under one label, Azure ML computes whose defaults differ must not
                        // share an entry. One without a default gets its user's token: one
                        // user's compute would serve it to another's, so it is not shared.
                        (None, Some(label)) => match (&endpoint, endpoint.identity()) {
                            (Endpoint::AzureMl(_), Some(default)) => {
                                Some(format!("{NAME}/system={label}/default={}", default.value()))
                            }
                            (Endpoint::AzureMl(_), None) => {
                                if self.distributed.is_some() {
                                    tracing::debug!(
                                        credential = NAME,
                                        "the Azure ML compute has no identity enabled \
                                         (DEFAULT_IDENTITY_CLIENT_ID is not a GUID): its \
                                         tokens, its user's, are cached in this process only, \
                                         label or not"
                                    );
                                }
                                None
                            }
                            // The signed-in user's token, as for Azure ML without a default.
                            (Endpoint::CloudShell(_), _) => {
                                if self.distributed.is_some() {
                                    tracing::debug!(
                                        credential = NAME,
                                        "Cloud Shell's tokens, its signed-in user's, are \
                                         cached in this process only, label or not"
                                    );
                                }
                                None
                            }
                            _ => Some(format!("{NAME}/system={label}")),
                        },
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
                        (Some(_), None) if self.system_assigned_label.is_some() => None,
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
                        throttle: Arc::new(ThrottleMemory::default()),
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
                azure_ml::identity(id, get)?,
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
        builder = builder.vars_as_set(self.vars.clone());
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

/// The secret of a source that needs one; `select` only picks such a source with one.
fn required(secret: Option<(&'static str, Secret)>) -> Result<(&'static str, Secret), String> {
    secret.ok_or_else(|| "the source's secret variable is not set".to_owned())
}

/// What the environment selects.
pub(super) struct Selection {
    source: ManagedIdentitySource,
    /// The endpoint URL, or why there is none or a variable beside it cannot be used.
    endpoint: Result<Url, String>,
    /// The secret variable's name and value, for the sources that have one.
    pub(super) secret: Option<(&'static str, Secret)>,
    thumbprint: Option<String>,
}

/// Picks the source from the variables, in azure-identity's order; `workload_identity`:
/// whether that source may be picked. A variable selects when it is set and not blank, its
/// value Unicode or not: one that is not Unicode is a configuration error naming it (in the
/// selection's `endpoint`), not a reason to pick another source (IMDS, or Cloud Shell for an
/// unreadable `MSI_SECRET`).
pub(super) fn select(vars: &Vars, workload_identity: bool) -> Selection {
    let present = |name: &str| !matches!(vars.text(name), Ok(None));
    // A present variable's value, trimmed once (the value sent is the value scrubbed from
    // answers); an error naming it when it is not Unicode.
    let value = |name: &str| vars.text(name)?.ok_or_else(|| format!("{name} is not set"));
    // The endpoint, unless it or a value beside it cannot be used.
    fn checked(
        endpoint: Result<Url, String>,
        others: &[&Result<String, String>],
    ) -> Result<Url, String> {
        let endpoint = endpoint?;
        for other in others {
            other.as_ref().map_err(Clone::clone)?;
        }
        Ok(endpoint)
    }
    let secret = |name: &'static str, value: Result<String, String>| {
        value.ok().map(|v| (name, Secret::new(v)))
    };
    let selection = |source, endpoint, secret| Selection {
        source,
        endpoint,
        secret,
        thumbprint: None,
    };
    if present(IDENTITY_ENDPOINT) {
        let url = |https_only| {
            value(IDENTITY_ENDPOINT).and_then(|v| endpoint_url(IDENTITY_ENDPOINT, &v, https_only))
        };
        if present(IDENTITY_HEADER) {
            let header = value(IDENTITY_HEADER);
            if present(IDENTITY_SERVER_THUMBPRINT) {
                let thumbprint = value(IDENTITY_SERVER_THUMBPRINT);
                return Selection {
                    source: ManagedIdentitySource::ServiceFabric,
                    endpoint: checked(url(true), &[&header, &thumbprint]),
                    secret: secret(IDENTITY_HEADER, header),
                    thumbprint: thumbprint.ok(),
                };
            }
            return selection(
                ManagedIdentitySource::AppService,
                checked(url(false), &[&header]),
                secret(IDENTITY_HEADER, header),
            );
        }
        // Only its presence counts: its value is not used.
        if present(IMDS_ENDPOINT) {
            return selection(ManagedIdentitySource::AzureArc, url(false), None);
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
    if present(MSI_ENDPOINT) {
        let url = value(MSI_ENDPOINT).and_then(|v| endpoint_url(MSI_ENDPOINT, &v, false));
        if present(MSI_SECRET) {
            let ml_secret = value(MSI_SECRET);
            return selection(
                ManagedIdentitySource::AzureMl,
                checked(url, &[&ml_secret]),
                secret(MSI_SECRET, ml_secret),
            );
        }
        return selection(ManagedIdentitySource::CloudShell, url, None);
    }
    let workload = [
        AZURE_AUTHORITY_HOST,
        AZURE_TENANT_ID,
        AZURE_FEDERATED_TOKEN_FILE,
    ];
    // A token file path need not be Unicode, and an authority host that is not is the
    // workload identity's error to report, not a reason to ask IMDS (which answers in an AKS
    // pod as the node's identity).
    if workload_identity && workload.iter().all(|name| present(name)) {
        // No URL of this credential's: the workload identity credential reads its own.
        return selection(
            ManagedIdentitySource::WorkloadIdentity,
            Err("the workload identity has no managed identity endpoint".to_owned()),
            None,
        );
    }
    let url = if present(AZURE_POD_IDENTITY_AUTHORITY_HOST) {
        value(AZURE_POD_IDENTITY_AUTHORITY_HOST)
            .and_then(|base| endpoint_url(AZURE_POD_IDENTITY_AUTHORITY_HOST, &base, false))
            .and_then(|base| imds::token_url(&base))
    } else {
        imds::default_url()
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
