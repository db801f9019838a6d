//! [`DefaultAzureCredential`]: the chain most applications start from.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use super::chain::first_token;
use super::env::{AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_USERNAME, Vars};
use super::managed_identity::{ManagedIdentityCredential, UserAssignedId, check_label};
use super::settings::vars_setters;
use super::{
    AzureCliCredential, AzureDeveloperCliCredential, BoxCredential, CredentialFuture,
    EnvironmentCredential, SharedTokenCacheCredential, TokenCredential, WorkloadIdentityCredential,
};
use crate::entra::authority::TenantPolicy;
use crate::error::{ConfigError, CredentialError};
use crate::token::{AccessToken, TokenRequest};
use crate::transport::HttpClient;

pub(crate) const NAME: &str = "DefaultAzureCredential";
/// Narrows the chain: `dev`, `prod` or one credential's name.
const AZURE_TOKEN_CREDENTIALS: &str = "AZURE_TOKEN_CREDENTIALS";
/// The struct's page: rustdoc puts an item of a private module at its first public path,
/// `credential::`, and the crate root's re-export only links there.
const DOCS: &str = "https://docs.rs/tower-identity/latest/tower_identity/credential/struct.DefaultAzureCredential.html";
/// How long a choice made after a transient skip (see **Sticky** on [`DefaultAzureCredential`])
/// answers alone before the chain is run once more to confirm or change it. Long enough that a
/// laptop, where the IMDS address swallows connections, pays the probe's second once more in
/// five minutes, not on every request; short enough that a VM whose IMDS was slow at the first
/// request (booting, a one-off stall, aad-pod-identity still assigning the pod's identity) runs
/// as the developer's or another fallback identity for minutes, not for good.
pub(crate) const RECHECK_AFTER: Duration = Duration::from_secs(5 * 60);

/// The members, in the order they are tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Member {
    Environment,
    WorkloadIdentity,
    ManagedIdentity,
    SharedTokenCache,
    AzureCli,
    AzureDeveloperCli,
}

impl Member {
    const ALL: [Member; 6] = [
        Member::Environment,
        Member::WorkloadIdentity,
        Member::ManagedIdentity,
        Member::SharedTokenCache,
        Member::AzureCli,
        Member::AzureDeveloperCli,
    ];

    fn name(self) -> &'static str {
        match self {
            Member::Environment => "EnvironmentCredential",
            Member::WorkloadIdentity => "WorkloadIdentityCredential",
            Member::ManagedIdentity => "ManagedIdentityCredential",
            Member::SharedTokenCache => "SharedTokenCacheCredential",
            Member::AzureCli => "AzureCliCredential",
            Member::AzureDeveloperCli => "AzureDeveloperCliCredential",
        }
    }

    /// The credentials a deployed service authenticates with (`prod`).
    fn is_production(self) -> bool {
        matches!(
            self,
            Member::Environment | Member::WorkloadIdentity | Member::ManagedIdentity
        )
    }
}

/// The members `AZURE_TOKEN_CREDENTIALS` selects, and whether it named exactly one.
fn selection(value: Option<&str>) -> Result<(Vec<Member>, bool), ConfigError> {
    let value = value.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Ok((Member::ALL.to_vec(), false));
    }
    let lower = value.to_ascii_lowercase();
    match lower.as_str() {
        "prod" => return Ok((filter(Member::is_production), false)),
        "dev" => return Ok((filter(|m| !m.is_production()), false)),
        _ => {}
    }
    // azure-identity does not accept the shared token cache by name either.
    let named = Member::ALL
        .into_iter()
        .filter(|m| *m != Member::SharedTokenCache)
        .find(|m| m.name().eq_ignore_ascii_case(&lower));
    match named {
        Some(member) => Ok((vec![member], true)),
        None => {
            let names: Vec<&str> = Member::ALL
                .iter()
                .filter(|m| **m != Member::SharedTokenCache)
                .map(|m| m.name())
                .collect();
            // Only a short, printable value is quoted: it is configuration, not a secret, but
            // it may be anything.
            let shown = crate::redact::excerpt(value.as_bytes(), &[], 60);
            Err(ConfigError::new(format!(
                "{NAME}: {AZURE_TOKEN_CREDENTIALS}=\"{shown}\" is not valid; use \"dev\", \
                 \"prod\" or one of {} (this crate has no Azure PowerShell, Visual Studio Code \
                 or broker credential)",
                names.join(", ")
            )))
        }
    }
}

fn filter(keep: impl Fn(Member) -> bool) -> Vec<Member> {
    Member::ALL.into_iter().filter(|m| keep(*m)).collect()
}

/// The chain most applications start from: the credentials a service is deployed with
/// first (environment, workload identity, managed identity), then the developer's own
/// sign-ins (shared token cache, Azure CLI, Azure Developer CLI).
///
/// ```no_run
/// use tower_identity::{CredentialExt, DefaultAzureCredential};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let credential = DefaultAzureCredential::new()?;
/// let token = credential.get_token(["https://management.azure.com/.default"]).await?;
/// # let _ = token; Ok(()) }
/// ```
///
/// Tried in this order (azure-identity's, without the Windows- and IDE-only credentials):
///
/// | # | credential | reads |
/// |---|---|---|
/// | 1 | [`EnvironmentCredential`] | `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`; optional `AZURE_ADDITIONALLY_ALLOWED_TENANTS` |
/// | 2 | [`WorkloadIdentityCredential`] | `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`; optional `AZURE_ADDITIONALLY_ALLOWED_TENANTS` |
/// | 3 | [`ManagedIdentityCredential`] | the host's managed identity; `AZURE_CLIENT_ID` picks a user-assigned one |
/// | 4 | [`SharedTokenCacheCredential`] | the MSAL cache in `~/.IdentityService` that Visual Studio and apps with a persistent MSAL cache write (not Azure CLI 2.30+); `AZURE_USERNAME` and `AZURE_TENANT_ID` pick the account |
/// | 5 | [`AzureCliCredential`] | `az login` |
/// | 6 | [`AzureDeveloperCliCredential`] | `azd auth login` |
///
/// While the workload identity member is in the chain, the managed identity keeps its own
/// workload identity source (as in azure-identity): in an AKS pod set up for workload identity
/// (`AZURE_AUTHORITY_HOST`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`) but without a client
/// id, both are *unavailable* saying so, and IMDS, which answers there as the node's kubelet
/// identity, is never asked. The managed identity's attempt is then reported under its own
/// name, saying that these variables chose its workload identity source.
///
/// `AZURE_ADDITIONALLY_ALLOWED_TENANTS` lists the tenants besides `AZURE_TENANT_ID` that a
/// request may name, separated by `;` (`*`: any), as the .NET SDK reads it for all its
/// members: here the environment and workload identity members (and the managed identity's
/// workload identity source), which add them to the builder's
/// [`additionally_allowed_tenants`](DefaultAzureCredentialBuilder::additionally_allowed_tenants).
/// The other members have no tenant of their own to hold a request to. A malformed entry is an
/// *invalid request* of the member, naming the variable.
///
/// With [`vars`](DefaultAzureCredentialBuilder::vars), every member reads these (and
/// `AZURE_AUTHORITY_HOST`, `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH`) from the pairs given.
///
/// Azure PowerShell, Visual Studio Code, the WAM broker and the interactive browser are not
/// part of it (this crate has none of them).
///
/// **Selection.** `AZURE_TOKEN_CREDENTIALS` narrows the chain: `prod` keeps 1–3, `dev` keeps
/// 4–6, and one credential's type name (`ManagedIdentityCredential`, `AzureCliCredential`, …;
/// any of the table but `SharedTokenCacheCredential`) keeps only that one. The value is
/// trimmed and compared ignoring case; anything else is a construction error. The builder's
/// `exclude_*` settings win over it, as azure-identity's do: `exclude_*(true)` leaves a member
/// out, and `exclude_*(false)` keeps one in that the variable leaves out.
///
/// **Failing fast.** Inside this chain, as in any chain, the managed identity, when it would
/// ask IMDS, first probes it without retries and with a 1 s timeout: on a machine that is not
/// an Azure VM the chain moves on within about a second instead of waiting out IMDS's retry
/// schedule. When something that is not IMDS answers the probe (an answer that is not IMDS's
/// JSON: AWS's IMDSv1 404, a firewall's 502), the token request goes within the same second,
/// without retries, too. What makes it *unavailable*, so that the chain moves on:
///
/// * no HTTP reply to the probe, or no answer to the token request, before IMDS has answered
///   this credential with JSON;
/// * until IMDS has issued a token, an answer at the IMDS address that is not a JSON object (a proxy,
///   firewall or captive portal answering for the link-local address), as in azure-identity;
/// * a 403 naming an `unreachable` network (Docker Desktop);
/// * until IMDS has issued it a token, any JSON 400 for the system-assigned identity but
///   `invalid_resource` (no identity, or several user-assigned ones and no id given).
///
/// Anything else stops the chain, so that it does not run on as another identity: a 400 for
/// a user-assigned identity (not assigned to this host), `invalid_resource` (a mistyped
/// scope), any other JSON error from IMDS, and a request left unanswered once IMDS has
/// answered with JSON (a token, a JSON error, the probe's 400), which is no longer probed
/// then. azure-identity 1.27 is more lenient on two points: every IMDS 400 is *unavailable*
/// there, and so is a token request with no answer after a successful probe. (azure-identity
/// also skips the probe when `AZURE_POD_IDENTITY_AUTHORITY_HOST` is set; this crate probes
/// there too, so a wrong override fails fast as well.) When
/// `AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential` names it alone there is nothing to fall
/// back to, and it is not probed (as in azure-identity, not even when an `exclude_*(false)`
/// puts another member back). Failures of the shared token cache, Azure CLI and Azure
/// Developer CLI (a refused refresh token, an outage, a tool that fails) are reported as
/// *unavailable* here, so the next developer sign-in gets its turn, as azure-identity does —
/// until one of them has answered: chosen (see below), it reports its own errors.
///
/// **Sticky.** The first credential that answers is used for every later request of this
/// `DefaultAzureCredential` (and its clones), without trying the others first — as
/// azure-identity and the Go SDK do (unless it answered after a transient skip: see
/// **Provisional choices** below). A developer signed in to Azure CLI does not pay for the
/// IMDS probe again on every new scope, and a deployed service does not silently switch
/// identity when its managed identity has a bad moment: it gets that credential's error, as
/// that credential reports it alone (an Azure CLI whose session expired is *authentication
/// failed*, not *unavailable*, so a fallback after this chain does not answer instead). Even
/// what it would report as *unavailable* (an `az` no longer signed in, an `az` that cannot
/// start) is *authentication failed* once it has been chosen, saying so. Build a new
/// `DefaultAzureCredential` to choose again.
///
/// **Provisional choices.** A credential that answers after one before it was *unavailable*
/// for a reason that may pass ([`is_transient`](crate::CredentialError::is_transient): an IMDS
/// probe with no answer within its second, a busy IMDS stand-in's plain-text 404 or 503, a
/// tool that timed out, an outage met by the shared token cache) is chosen *for now*. The exact
/// rule:
///
/// 1. A credential that answers with no transient skip before it is chosen for good at once.
/// 2. One that answers after a transient skip is chosen provisionally: it answers every
///    request alone (no probe, no other member asked) for 5 minutes (`RECHECK_AFTER`).
/// 3. The first request after that runs the whole chain once more (concurrent requests
///    meanwhile keep using the provisional choice). If the same credential answers after a
///    transient skip again (a second timeout: the member before it is really absent), or any
///    credential answers with no transient skip (the member before it answered this time:
///    a VM whose IMDS was slow at first gets its managed identity), that one is chosen for
///    good; an earlier credential answering after a transient skip is chosen provisionally
///    in its turn. If that run gets no token, the provisional choice is kept for another
///    interval.
///
/// So on a laptop where the IMDS address swallows connections, the first request waits the
/// probe's second, the requests of the next five minutes go straight to Azure CLI, one more
/// request waits the probe's second, and none does after that (azure-identity and the Go SDK
/// choose at once and never probe again). A refused connection, or something other than IMDS
/// answering there with a status IMDS does not retry, is not transient: the choice is final
/// at once. Concurrent first requests may be answered by different credentials, but only one
/// choice is ever made for good: a final choice is never changed, and a request whose run of
/// the chain found nothing while another request's made a choice asks the chosen credential
/// alone instead of returning the chain's *unavailable* (which would let an outer fallback
/// answer as another identity).
///
/// When nothing answers, the error lists every credential tried with what to set up.
#[derive(Clone)]
pub struct DefaultAzureCredential {
    inner: Arc<Inner>,
}

struct Inner {
    /// The members as the chain asks them.
    members: Arc<[BoxCredential]>,
    /// The same members as they answer once chosen (same order): the developer sign-ins
    /// without the chain's downgrade of their failures to *unavailable*, as azure-identity
    /// asks its `_successful_credential` outside `within_dac`.
    chosen: Arc<[BoxCredential]>,
    /// Which member answers without the chain being run; only read and written in short
    /// critical sections, never held across a member's call.
    choice: Mutex<Choice>,
}

/// What the chain has chosen (see **Sticky** on [`DefaultAzureCredential`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    /// Nothing yet: every request runs the chain.
    None,
    /// `index` answered after a member before it was *unavailable* for a reason that may pass:
    /// it answers alone until `until`; then one request (`rechecking`) runs the chain again.
    Provisional {
        index: usize,
        until: Instant,
        rechecking: bool,
    },
    /// `index` answers every request, for good.
    Final(usize),
}

impl Choice {
    /// The member that answers now, and whether for good.
    fn member(self) -> Option<(usize, bool)> {
        match self {
            Choice::None => None,
            Choice::Provisional { index, .. } => Some((index, false)),
            Choice::Final(index) => Some((index, true)),
        }
    }
}

/// What a call does, as decided under the lock.
enum Plan {
    /// Ask this member alone (`final`: chosen for good).
    Use { index: usize, for_good: bool },
    /// Run the chain; `Some(index)`: as the re-check of the provisional choice `index`.
    Run { recheck: Option<usize> },
}

impl Inner {
    fn choice(&self) -> MutexGuard<'_, Choice> {
        // Each write leaves the state whole: a poisoned lock is usable.
        self.choice.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn plan(&self, now: Instant) -> Plan {
        let mut choice = self.choice();
        match *choice {
            Choice::None => Plan::Run { recheck: None },
            Choice::Final(index) => Plan::Use {
                index,
                for_good: true,
            },
            Choice::Provisional {
                index,
                until,
                rechecking,
            } => {
                if now < until || rechecking {
                    return Plan::Use {
                        index,
                        for_good: false,
                    };
                }
                *choice = Choice::Provisional {
                    index,
                    until,
                    rechecking: true,
                };
                Plan::Run {
                    recheck: Some(index),
                }
            }
        }
    }

    /// Records that the chain's run got a token from `index` (`transient`: after a member
    /// before it was *unavailable* for a reason that may pass); `recheck`: this run was the
    /// re-check of that provisional choice. A final choice is never changed.
    fn settle(&self, index: usize, transient: bool, recheck: Option<usize>, now: Instant) {
        let provisional = Choice::Provisional {
            index,
            until: recheck_at(now),
            rechecking: false,
        };
        let mut choice = self.choice();
        let next = match *choice {
            Choice::Final(_) => return,
            Choice::None if transient => provisional,
            Choice::None => Choice::Final(index),
            Choice::Provisional {
                index: earlier,
                rechecking,
                ..
            } => {
                if rechecking && recheck == Some(earlier) {
                    // The re-check: the same member again after a transient skip (a repeated
                    // timeout: the member before it is really absent), or any member without
                    // one, is final; an earlier member answering after a transient skip is
                    // provisional in its turn.
                    if index == earlier || !transient {
                        Choice::Final(index)
                    } else {
                        provisional
                    }
                } else if !transient && index <= earlier {
                    // A concurrent first run that met no transient skip knows better.
                    Choice::Final(index)
                } else if transient && index < earlier {
                    provisional
                } else {
                    return;
                }
            }
        };
        *choice = next;
        let name = self.members.get(index).map(BoxCredential::name);
        match next {
            Choice::Final(_) => tracing::debug!(
                credential = name,
                "DefaultAzureCredential will use this credential from now on"
            ),
            _ => tracing::debug!(
                credential = name,
                recheck_after = ?RECHECK_AFTER,
                "DefaultAzureCredential uses this credential for now: one before it failed in \
                 a way that may pass, and the chain is run again after the re-check interval"
            ),
        }
    }

    /// Ends the re-check of the provisional choice `index` without a new choice: it stays
    /// provisional, until `until` of the end it had. A re-check that got no token waits
    /// another interval; one whose call was dropped keeps its end (the next call re-checks).
    fn end_recheck(&self, index: usize, until: impl FnOnce(Instant) -> Instant) {
        let mut choice = self.choice();
        if let Choice::Provisional {
            index: current,
            until: end,
            rechecking: true,
        } = *choice
        {
            if current == index {
                *choice = Choice::Provisional {
                    index,
                    until: until(end),
                    rechecking: false,
                };
            }
        }
    }

    /// Asks the member chosen (`final`: for good) alone, with its own errors.
    async fn ask_chosen(
        &self,
        index: usize,
        for_good: bool,
        request: TokenRequest,
    ) -> Result<AccessToken, CredentialError> {
        let Some(credential) = self.chosen.get(index).cloned() else {
            return Err(CredentialError::invalid_request(
                NAME,
                "internal error: the chosen credential is missing",
            ));
        };
        credential
            .oneshot(request)
            .await
            .map_err(|error| chosen_failure(error, for_good))
    }
}

/// When a choice made for now at `now` is checked again (at once if the clock cannot count
/// that far).
fn recheck_at(now: Instant) -> Instant {
    now.checked_add(RECHECK_AFTER).unwrap_or(now)
}

/// A re-check in flight: if its call is dropped before it settles, the next call re-checks.
struct Recheck<'a> {
    inner: &'a Inner,
    index: usize,
    armed: bool,
}

impl Drop for Recheck<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.end_recheck(self.index, |end| end);
        }
    }
}

impl DefaultAzureCredential {
    /// The whole chain, configured from the process environment. Fails only on an invalid
    /// `AZURE_TOKEN_CREDENTIALS`.
    pub fn new() -> Result<Self, ConfigError> {
        Self::builder().build()
    }

    /// A builder: exclude members, choose the managed identity, set the HTTP client.
    pub fn builder() -> DefaultAzureCredentialBuilder {
        DefaultAzureCredentialBuilder::default()
    }

    /// The names of the credentials in the chain, in the order they are tried.
    pub fn credentials(&self) -> impl Iterator<Item = &str> {
        self.inner.members.iter().map(BoxCredential::name)
    }

    /// The name of the credential chosen to answer requests without running the chain
    /// (shared by clones), for good or for now (see **Sticky** above: a choice made after a
    /// transient skip is checked again, and may change once); `None` until one has answered.
    pub fn answered(&self) -> Option<&str> {
        let (index, _) = self.inner.choice().member()?;
        self.inner.members.get(index).map(BoxCredential::name)
    }
}

impl Service<TokenRequest> for DefaultAzureCredential {
    type Response = AccessToken;
    type Error = CredentialError;
    type Future = CredentialFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let recheck = match inner.plan(Instant::now()) {
                Plan::Use { index, for_good } => {
                    return inner.ask_chosen(index, for_good, request).await;
                }
                Plan::Run { recheck } => recheck,
            };
            let mut guard = recheck.map(|index| Recheck {
                inner: &inner,
                index,
                armed: true,
            });
            let result = first_token(&inner.members, request.clone(), NAME).await;
            let now = Instant::now();
            match result {
                Ok(answered) => {
                    inner.settle(answered.index, answered.after_transient, recheck, now);
                    if let Some(guard) = guard.as_mut() {
                        guard.armed = false;
                    }
                    Ok(answered.token)
                }
                Err(error) => {
                    if let Some(index) = recheck {
                        inner.end_recheck(index, |_| recheck_at(now));
                    }
                    if let Some(guard) = guard.as_mut() {
                        guard.armed = false;
                    }
                    drop(guard);
                    if !error.is_unavailable() {
                        return Err(error);
                    }
                    // A member is chosen now (this run was the re-check, or a concurrent first
                    // run was answered meanwhile): its failure in this run was made
                    // *unavailable* for the chain, which must not let an outer fallback answer
                    // as another identity. It is asked alone, as any later request would be.
                    let chosen = inner.choice().member();
                    if let Some((index, for_good)) = chosen {
                        return inner.ask_chosen(index, for_good, request).await;
                    }
                    Err(error.with_chain_note(&format!(
                        "Set up one of them as its line says; {DOCS} lists what each reads"
                    )))
                }
            }
        })
    }
}

/// The chosen credential's error: its own, except that *unavailable* becomes *authentication
/// failed* (message and cause kept). It answered before, so it is configured; an outer
/// fallback (`DefaultAzureCredential::new()?.or(…)`) moving on would switch identity silently
/// (an `az` whose account was cleared, or that can no longer start).
fn chosen_failure(error: CredentialError, for_good: bool) -> CredentialError {
    if !error.is_unavailable() {
        return error;
    }
    let when = if for_good {
        format!("build a new {NAME} to choose again")
    } else {
        format!(
            "it runs the chain again {} min after choosing it for now, or build a new {NAME}",
            RECHECK_AFTER.as_secs() / 60
        )
    };
    error
        .into_authentication_failed()
        .with_message_suffix(&format!(
            "; {NAME} chose this credential when it answered and asks no other now, so this \
             fails instead of letting a fallback answer as another identity: {when}"
        ))
}

impl fmt::Debug for DefaultAzureCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(NAME)
            .field("credentials", &self.inner.members)
            .field("answered", &self.answered())
            .finish()
    }
}

/// Settings for a [`DefaultAzureCredential`].
#[derive(Default)]
pub struct DefaultAzureCredentialBuilder {
    /// The `exclude_*` values given, the last one per member: each wins over
    /// `AZURE_TOKEN_CREDENTIALS` both ways, as azure-identity's keyword arguments do.
    exclusions: Vec<(Member, bool)>,
    /// `None`: `AZURE_CLIENT_ID` when set, else system-assigned; `Some(None)`: system-assigned.
    managed_identity: Option<Option<UserAssignedId>>,
    workload_identity_client_id: Option<String>,
    workload_identity_tenant_id: Option<String>,
    http_client: Option<HttpClient>,
    vars: Vars,
    shared_token_cache: Option<SharedTokenCacheCredential>,
    azure_cli: Option<AzureCliCredential>,
    azure_developer_cli: Option<AzureDeveloperCliCredential>,
    /// For the Azure CLI and Azure Developer CLI members built here.
    process_timeout: Option<Duration>,
    distributed: Option<crate::DistributedCache>,
    system_assigned_label: Option<String>,
    additionally_allowed_tenants: Vec<String>,
}

impl DefaultAzureCredentialBuilder {
    /// `true` leaves out [`EnvironmentCredential`]; `false` keeps it even where
    /// `AZURE_TOKEN_CREDENTIALS` leaves it out. Unset: as that variable selects.
    pub fn exclude_environment_credential(self, exclude: bool) -> Self {
        self.exclude(Member::Environment, exclude)
    }

    /// `true` leaves out [`WorkloadIdentityCredential`], and with it the managed identity's
    /// workload identity source (as in azure-identity): the workload identity variables then
    /// select nothing, and the managed identity is the host's (IMDS on an AKS node). `false`
    /// keeps it even where `AZURE_TOKEN_CREDENTIALS` leaves it out. Unset: as that variable
    /// selects.
    pub fn exclude_workload_identity_credential(self, exclude: bool) -> Self {
        self.exclude(Member::WorkloadIdentity, exclude)
    }

    /// `true` leaves out [`ManagedIdentityCredential`]; `false` keeps it even where
    /// `AZURE_TOKEN_CREDENTIALS` leaves it out. Unset: as that variable selects.
    pub fn exclude_managed_identity_credential(self, exclude: bool) -> Self {
        self.exclude(Member::ManagedIdentity, exclude)
    }

    /// `true` leaves out [`SharedTokenCacheCredential`]; `false` keeps it even where
    /// `AZURE_TOKEN_CREDENTIALS` leaves it out. Unset: as that variable selects.
    pub fn exclude_shared_token_cache_credential(self, exclude: bool) -> Self {
        self.exclude(Member::SharedTokenCache, exclude)
    }

    /// `true` leaves out [`AzureCliCredential`]; `false` keeps it even where
    /// `AZURE_TOKEN_CREDENTIALS` leaves it out. Unset: as that variable selects.
    pub fn exclude_azure_cli_credential(self, exclude: bool) -> Self {
        self.exclude(Member::AzureCli, exclude)
    }

    /// `true` leaves out [`AzureDeveloperCliCredential`]; `false` keeps it even where
    /// `AZURE_TOKEN_CREDENTIALS` leaves it out. Unset: as that variable selects.
    pub fn exclude_azure_developer_cli_credential(self, exclude: bool) -> Self {
        self.exclude(Member::AzureDeveloperCli, exclude)
    }

    /// The user-assigned managed identity to use. Default: the one whose client id is
    /// `AZURE_CLIENT_ID` when that is set, else the system-assigned identity.
    pub fn managed_identity_id(mut self, id: UserAssignedId) -> Self {
        self.managed_identity = Some(Some(id));
        self
    }

    /// The user-assigned managed identity with this client id (see
    /// [`managed_identity_id`](Self::managed_identity_id)).
    pub fn managed_identity_client_id(self, client_id: impl Into<String>) -> Self {
        self.managed_identity_id(UserAssignedId::ClientId(client_id.into()))
    }

    /// The system-assigned managed identity, even when `AZURE_CLIENT_ID` is set.
    pub fn managed_identity_system_assigned(mut self) -> Self {
        self.managed_identity = Some(None);
        self
    }

    /// Names the system-assigned managed identity in the
    /// [`distributed_cache`](Self::distributed_cache)'s keys, so its tokens are shared; without
    /// it they stay in this process. Every process sharing the store under this label must run
    /// as the same identity (say, the instances of one App Service app or VM scale set). See
    /// [`ManagedIdentityCredentialBuilder::system_assigned_identity_label`](crate::ManagedIdentityCredentialBuilder::system_assigned_identity_label).
    pub fn managed_identity_system_assigned_label(mut self, label: impl Into<String>) -> Self {
        self.system_assigned_label = Some(label.into());
        self
    }

    /// The workload identity's client id. Default: the managed identity's client id when
    /// [`managed_identity_client_id`](Self::managed_identity_client_id) gave one (as in
    /// azure-identity), else `AZURE_CLIENT_ID`.
    pub fn workload_identity_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.workload_identity_client_id = Some(client_id.into());
        self
    }

    /// The workload identity's tenant. Default: `AZURE_TENANT_ID`.
    pub fn workload_identity_tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.workload_identity_tenant_id = Some(tenant_id.into());
        self
    }

    /// Tenants besides the configured one that requests may name; `"*"` allows any. Given to
    /// the credentials with a tenant of their own (environment, workload identity, and the
    /// managed identity's workload identity source), with those of
    /// `AZURE_ADDITIONALLY_ALLOWED_TENANTS`; the others do not restrict a request's tenant.
    pub fn additionally_allowed_tenants<I, S>(mut self, tenants: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.additionally_allowed_tenants = tenants.into_iter().map(Into::into).collect();
        self
    }

    /// The HTTP client for token requests. Default: [`HttpClient::new`](crate::HttpClient::new).
    /// Given to the Microsoft Entra ID credentials (environment, workload identity, shared
    /// token cache) and to the managed identity's workload identity source, which asks
    /// Microsoft Entra ID as the workload identity does; the managed identity's other sources
    /// keep its own client: their endpoints are plain `http` on the host, which the default
    /// client refuses.
    pub fn http_client(mut self, client: HttpClient) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Share tokens with the other processes of a fleet through this
    /// [`DistributedCache`](crate::DistributedCache), a second level under the in-memory
    /// cache: one process asks Microsoft Entra ID, the others use its token. Given to
    /// the service credentials (environment, workload identity, managed identity); the
    /// developer credentials keep their tokens to themselves, and so does a system-assigned
    /// managed identity without
    /// [`managed_identity_system_assigned_label`](Self::managed_identity_system_assigned_label).
    pub fn distributed_cache(mut self, cache: crate::DistributedCache) -> Self {
        self.distributed = Some(cache);
        self
    }

    vars_setters!(vars;
        /// These are azure-identity's variables (the [`DefaultAzureCredential`] docs list them).
        /// What locates the developer's own sign-ins stays the process's: the shared token cache
        /// is found under the process's `HOME`, and `az` and `azd` run with its `PATH` and `HOME`.
        /// To point them elsewhere, give the chain a
        /// [`shared_token_cache_credential`](Self::shared_token_cache_credential) with a
        /// [`directory`](crate::TokenCachePersistenceOptions::directory), or tool credentials of
        /// your own.
    );

    /// Use this [`SharedTokenCacheCredential`] (another cache file, username or tenant).
    pub fn shared_token_cache_credential(mut self, credential: SharedTokenCacheCredential) -> Self {
        self.shared_token_cache = Some(credential);
        self
    }

    /// Use this [`AzureCliCredential`] (a tenant, a timeout, another `az`).
    pub fn azure_cli_credential(mut self, credential: AzureCliCredential) -> Self {
        self.azure_cli = Some(credential);
        self
    }

    /// How long `az` and `azd` may take, for the Azure CLI and Azure Developer CLI members
    /// built here (default 10 s each), as azure-identity's `process_timeout`. A credential given
    /// with [`azure_cli_credential`](Self::azure_cli_credential) or
    /// [`azure_developer_cli_credential`](Self::azure_developer_cli_credential) keeps its own.
    pub fn process_timeout(mut self, timeout: Duration) -> Self {
        self.process_timeout = Some(timeout);
        self
    }

    /// Use this [`AzureDeveloperCliCredential`] (a tenant, a timeout, another `azd`).
    pub fn azure_developer_cli_credential(
        mut self,
        credential: AzureDeveloperCliCredential,
    ) -> Self {
        self.azure_developer_cli = Some(credential);
        self
    }

    /// Reads `AZURE_TOKEN_CREDENTIALS`, applies the `exclude_*` values and builds every member
    /// left. Fails when that
    /// variable is invalid, nothing is left to try, or a value given to this builder for a
    /// selected member cannot work (an empty managed identity id, an invalid workload identity
    /// tenant, …), as azure-identity raises at construction. The same mistakes in the
    /// environment do not fail `build()`: a managed identity or shared token cache setting
    /// that cannot work makes that member *unavailable*, so the developer tools after it still
    /// answer; an invalid `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST` or
    /// `AZURE_ADDITIONALLY_ALLOWED_TENANTS` is an *invalid request* when a token is asked for.
    pub fn build(mut self) -> Result<DefaultAzureCredential, ConfigError> {
        // The IMDS probe is off only when the variable names the managed identity alone (as
        // azure-identity's `_enable_imds_probe`), whatever `exclude_*(false)` puts back: a
        // managed identity put back beside another named credential still probes.
        let (selected, alone) = selection(self.vars.get(AZURE_TOKEN_CREDENTIALS).as_deref())?;
        let imds_alone = alone && selected == [Member::ManagedIdentity];
        let members: Vec<Member> = Member::ALL
            .into_iter()
            .filter(|m| match self.exclusions.iter().find(|(e, _)| e == m) {
                Some(&(_, exclude)) => !exclude,
                None => selected.contains(m),
            })
            .collect();
        if members.is_empty() {
            return Err(ConfigError::new(format!(
                "{NAME}: every credential is excluded (by the builder's exclude_* settings \
                 and {AZURE_TOKEN_CREDENTIALS}); leave at least one"
            )));
        }
        // The managed identity's id given in code is the workload identity's default client
        // id too: checked first, so that the error names the setting that was wrong.
        let uses_id = [Member::WorkloadIdentity, Member::ManagedIdentity];
        if let Some(Some(id)) = &self.managed_identity {
            if members.iter().any(|m| uses_id.contains(m)) {
                id.check().map_err(|m| {
                    ConfigError::new(format!("{NAME}: the managed identity given: {m}"))
                })?;
            }
        }
        let takes_tenants = [Member::Environment, Member::WorkloadIdentity];
        if members.iter().any(|m| takes_tenants.contains(m)) {
            TenantPolicy::new(None, self.additionally_allowed_tenants.clone(), false)
                .map_err(|e| ConfigError::new(format!("{NAME}: {e}")))?;
        }
        if let Some(label) = &self.system_assigned_label {
            if members.contains(&Member::ManagedIdentity) {
                check_label(label).map_err(|m| ConfigError::new(format!("{NAME}: {m}")))?;
            }
        }
        let with_workload = members.contains(&Member::WorkloadIdentity);
        let mut chain = Vec::with_capacity(members.len());
        let mut chosen = Vec::with_capacity(members.len());
        for member in &members {
            let built = self.member(*member, imds_alone, with_workload)?;
            chain.push(built.in_chain);
            chosen.push(built.chosen);
        }
        Ok(DefaultAzureCredential {
            inner: Arc::new(Inner {
                members: chain.into(),
                chosen: chosen.into(),
                choice: Mutex::new(Choice::None),
            }),
        })
    }

    /// Leaves `member` out, or keeps it in, whatever `AZURE_TOKEN_CREDENTIALS` says.
    fn exclude(mut self, member: Member, exclude: bool) -> Self {
        self.exclusions.retain(|(m, _)| *m != member);
        self.exclusions.push((member, exclude));
        self
    }

    /// The workload identity's client id given here: its own, else the managed identity's.
    fn workload_client_id(&self) -> Option<String> {
        match (&self.workload_identity_client_id, &self.managed_identity) {
            (Some(id), _) | (None, Some(Some(UserAssignedId::ClientId(id)))) => Some(id.clone()),
            _ => None,
        }
    }

    /// Builds `member`; `imds_alone`: the managed identity is named alone by
    /// `AZURE_TOKEN_CREDENTIALS` (no IMDS probe); `with_workload`:
    /// the workload identity member is in the chain. Fails only on a value given in code (a
    /// program's mistake, as azure-identity raises at construction); a misconfigured
    /// environment makes the member *unavailable* instead (see [`built`]).
    fn member(
        &mut self,
        member: Member,
        imds_alone: bool,
        with_workload: bool,
    ) -> Result<Built, ConfigError> {
        // `vars` is handed on as set (`vars_as_set`): a value that is not Unicode, such as a
        // token file's path, must reach the member as it is, not as text with U+FFFD in it.
        let http = self.http_client.clone();
        let shared = self.distributed.clone();
        match member {
            Member::Environment => {
                let mut b = EnvironmentCredential::builder()
                    .vars_as_set(self.vars.clone())
                    .additionally_allowed_tenants(self.additionally_allowed_tenants.clone());
                if let Some(http) = http {
                    b = b.http_client(http);
                }
                if let Some(cache) = shared {
                    b = b.distributed_cache(cache);
                }
                Ok(named(member, b.build()).into())
            }
            Member::WorkloadIdentity => {
                // With those of AZURE_ADDITIONALLY_ALLOWED_TENANTS from `vars`, which the .NET
                // SDK gives all its members (the environment member reads it itself).
                let mut b = WorkloadIdentityCredential::builder()
                    .vars_as_set(self.vars.clone())
                    .additionally_allowed_tenants(self.additionally_allowed_tenants.clone())
                    .additionally_allowed_tenants_from_vars();
                if let Some(id) = self.workload_client_id() {
                    b = b.client_id(id);
                }
                if let Some(tenant) = self.workload_identity_tenant_id.clone() {
                    b = b.tenant_id(tenant);
                }
                if let Some(http) = http {
                    b = b.http_client(http);
                }
                if let Some(cache) = shared {
                    b = b.distributed_cache(cache);
                }
                // Its build() fails only on the values given here in code; a mistake in the
                // environment is kept for get_token.
                Ok(named(member, b.build()?).into())
            }
            Member::ManagedIdentity => {
                let id = match self.managed_identity.clone() {
                    Some(id) => id,
                    None => self.vars.get(AZURE_CLIENT_ID).map(UserAssignedId::ClientId),
                };
                // Its workload identity source is kept exactly while the workload identity
                // member is in the chain, as in azure-identity: a pod set up for workload
                // identity whose member cannot work (no client id) must not fall through to
                // IMDS, which answers there as the node's kubelet identity. The source's own
                // configuration error then makes this member unavailable too (see `built`).
                // Without the member (excluded, or this one named alone), the workload
                // identity variables select nothing and the host's managed identity is used.
                let mut b = ManagedIdentityCredential::builder()
                    .vars_as_set(self.vars.clone())
                    .exclude_workload_identity(!with_workload)
                    .workload_identity_allowed_tenants(self.additionally_allowed_tenants.clone());
                // Asked by this chain, it probes IMDS as in any chain; named alone, it has
                // nothing to fall back to.
                if imds_alone {
                    b = b.probe_imds(false);
                }
                // Its workload identity source asks Microsoft Entra ID as the workload identity
                // member does, so through the same client (a proxy, custom roots); its own
                // endpoints are plain http on the host, which that client refuses.
                if let Some(http) = http {
                    b = b.workload_identity_http_client(http);
                }
                if let Some(id) = id {
                    b = b.user_assigned_id(id);
                }
                if let Some(cache) = shared {
                    b = b.distributed_cache(cache);
                }
                if let Some(label) = self.system_assigned_label.clone() {
                    b = b.system_assigned_identity_label(label);
                }
                // The id and label given in code were checked in build(): what fails now is
                // the host's.
                Ok(built(member, b.build()).into())
            }
            Member::SharedTokenCache => {
                let c = match self.shared_token_cache.take() {
                    Some(c) => Ok(c),
                    None => shared_token_cache(&self.vars, http),
                };
                Ok(match c {
                    Ok(c) => developer_sign_in(member, c),
                    Err(error) => built::<SharedTokenCacheCredential>(member, Err(error)).into(),
                })
            }
            Member::AzureCli => Ok(developer_sign_in(member, self.azure_cli_member())),
            Member::AzureDeveloperCli => {
                Ok(developer_sign_in(member, self.azure_developer_cli_member()))
            }
        }
    }

    /// The Azure CLI member: the one given, else one built from `vars` and `process_timeout`.
    fn azure_cli_member(&mut self) -> AzureCliCredential {
        let timeout = self.process_timeout;
        self.azure_cli
            .take()
            .unwrap_or_else(|| azure_cli(&self.vars, timeout))
    }

    /// The Azure Developer CLI member, as [`azure_cli_member`](Self::azure_cli_member).
    fn azure_developer_cli_member(&mut self) -> AzureDeveloperCliCredential {
        let timeout = self.process_timeout;
        self.azure_developer_cli
            .take()
            .unwrap_or_else(|| azure_developer_cli(&self.vars, timeout))
    }
}

/// The shared token cache as azure-identity's chain configures it: the account named by
/// `AZURE_USERNAME`, in the home tenant `AZURE_TENANT_ID`, at `AZURE_AUTHORITY_HOST`, per-request
/// tenants ignored with `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH` — all read from `vars`.
fn shared_token_cache(
    vars: &Vars,
    http: Option<HttpClient>,
) -> Result<SharedTokenCacheCredential, ConfigError> {
    let mut b =
        SharedTokenCacheCredential::builder().disable_multitenant_auth(vars.multitenant_disabled());
    if let Some(username) = vars.get(AZURE_USERNAME) {
        b = b.username(username);
    }
    if let Some(tenant) = vars.get(AZURE_TENANT_ID) {
        b = b.tenant_id(tenant);
    }
    if let Some(http) = http {
        b = b.http_client(http);
    }
    b.build_with_vars(vars)
}

// The tools have their own tenant, authority and cache: of the variables, only
// `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH` applies. Without a tenant to validate, building
// cannot fail; the fallback is the same credential from the process environment.

fn azure_cli(vars: &Vars, timeout: Option<Duration>) -> AzureCliCredential {
    let mut b = AzureCliCredential::builder().disable_multitenant_auth(vars.multitenant_disabled());
    if let Some(timeout) = timeout {
        b = b.process_timeout(timeout);
    }
    b.build().unwrap_or_default()
}

fn azure_developer_cli(vars: &Vars, timeout: Option<Duration>) -> AzureDeveloperCliCredential {
    let mut b = AzureDeveloperCliCredential::builder()
        .disable_multitenant_auth(vars.multitenant_disabled());
    if let Some(timeout) = timeout {
        b = b.process_timeout(timeout);
    }
    b.build().unwrap_or_default()
}

/// A member as the chain asks it, and as it answers once it has been chosen.
struct Built {
    in_chain: BoxCredential,
    chosen: BoxCredential,
}

impl From<BoxCredential> for Built {
    fn from(credential: BoxCredential) -> Self {
        Self {
            in_chain: credential.clone(),
            chosen: credential,
        }
    }
}

fn named<C: TokenCredential>(member: Member, credential: C) -> BoxCredential {
    BoxCredential::named(member.name(), credential)
}

/// A member that could not be built is *unavailable* with the reason: one misconfigured
/// source (say, `AZURE_CLIENT_ID` set for a service principal on a host whose managed identity
/// cannot take a user-assigned id) must not keep the developer tools after it from answering.
fn built<C: TokenCredential>(member: Member, credential: Result<C, ConfigError>) -> BoxCredential {
    match credential {
        Ok(c) => named(member, c),
        Err(error) => {
            let name = member.name();
            // The member's own message already names it: the error adds the name once.
            let message = error.message();
            let message: Arc<str> = Arc::from(
                message
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(": "))
                    .unwrap_or(message),
            );
            named(
                member,
                tower::service_fn(move |_: TokenRequest| {
                    let message = Arc::clone(&message);
                    async move { Err(CredentialError::unavailable(name, message.to_string())) }
                }),
            )
        }
    }
}

/// The developer's own sign-ins (the shared token cache, Azure CLI, Azure Developer CLI):
/// inside this chain each of their failures lets the next one try, as in azure-identity — a
/// stale refresh token in the shared cache, or an outage while redeeming it, must not keep a
/// signed-in Azure CLI from answering. Invalid requests still stop the chain. Once chosen, it
/// answers with its own errors, as in azure-identity: a sign-in that answered and now fails
/// (an expired session, AADSTS70043) is *authentication failed*, so that an outer fallback
/// (`DefaultAzureCredential::new()?.or(…)`) does not silently switch identity.
fn developer_sign_in<C: TokenCredential>(member: Member, credential: C) -> Built {
    Built {
        in_chain: named(
            member,
            tower::ServiceBuilder::new()
                .map_err(|e: CredentialError| {
                    if e.is_authentication_failed() {
                        e.into_unavailable()
                    } else {
                        e
                    }
                })
                .service(credential.clone()),
        ),
        chosen: named(member, credential),
    }
}

impl fmt::Debug for DefaultAzureCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultAzureCredentialBuilder")
            .field("exclusions", &self.exclusions)
            .field("managed_identity", &self.managed_identity)
            .field("vars", &self.vars)
            .field("process_timeout", &self.process_timeout)
            .field("distributed_cache", &self.distributed)
            .field(
                "managed_identity_system_assigned_label",
                &self.system_assigned_label,
            )
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

    fn names(members: &[Member]) -> Vec<&'static str> {
        members.iter().map(|m| m.name()).collect()
    }

    /// The error's hint sends users to the struct's page for what each member reads, so the
    /// struct's own docs carry that table: this module is private, its docs are on no page.
    #[test]
    fn the_page_the_error_names_lists_what_each_member_reads() {
        assert!(DOCS.ends_with("/tower_identity/credential/struct.DefaultAzureCredential.html"));
        let source = include_str!("default.rs");
        let before_struct = source
            .split("\npub struct DefaultAzureCredential {")
            .next()
            .unwrap();
        // The struct's doc block (and attributes): nothing but `///` and `#[` lines.
        let docs = before_struct.rsplit("\n\n").next().unwrap();
        assert!(
            docs.lines()
                .all(|l| l.starts_with("///") || l.starts_with("#[")),
            "{docs}"
        );
        assert!(docs.contains("/// | # | credential | reads |"), "{docs}");
        for member in Member::ALL {
            assert!(docs.contains(&format!("[`{}`] |", member.name())), "{docs}");
        }
        assert!(docs.contains("AZURE_TOKEN_CREDENTIALS"), "{docs}");
    }

    #[test]
    fn azure_token_credentials_selects_as_azure_identity_does() {
        let all = names(&Member::ALL);
        assert_eq!(names(&selection(None).unwrap().0), all);
        assert_eq!(names(&selection(Some("  ")).unwrap().0), all);
        for prod in ["prod", "PROD", " Prod "] {
            assert_eq!(
                names(&selection(Some(prod)).unwrap().0),
                [
                    "EnvironmentCredential",
                    "WorkloadIdentityCredential",
                    "ManagedIdentityCredential"
                ]
            );
        }
        assert_eq!(
            names(&selection(Some("dev")).unwrap().0),
            [
                "SharedTokenCacheCredential",
                "AzureCliCredential",
                "AzureDeveloperCliCredential"
            ]
        );
        for member in Member::ALL {
            let result = selection(Some(&member.name().to_ascii_lowercase()));
            if member == Member::SharedTokenCache {
                assert!(result.is_err());
            } else {
                assert_eq!(result.unwrap(), (vec![member], true));
            }
        }
        for bad in [
            "production",
            "AzurePowerShellCredential",
            "VisualStudioCodeCredential",
            "dev,prod",
        ] {
            let err = selection(Some(bad)).unwrap_err();
            assert!(err.message().contains(AZURE_TOKEN_CREDENTIALS), "{err}");
            assert!(err.message().contains("\"dev\", \"prod\""), "{err}");
        }
    }

    /// The members built here take azure-identity's variables from the builder's `vars`, not
    /// from the process environment.
    #[test]
    fn default_members_read_the_builders_vars() {
        let vars = Vars::from_pairs([
            ("AZURE_USERNAME", "bob@fabrikam.test"),
            ("AZURE_TENANT_ID", "fabrikam.test"),
            ("AZURE_AUTHORITY_HOST", "https://login.vars.test"),
            ("AZURE_IDENTITY_DISABLE_MULTITENANTAUTH", "1"),
        ]);
        let shared = format!("{:?}", shared_token_cache(&vars, None).unwrap());
        for expected in [
            "\"bob@fabrikam.test\"",
            "\"fabrikam.test\"",
            "https://login.vars.test",
            "multitenant_disabled: true",
        ] {
            assert!(shared.contains(expected), "{expected}: {shared}");
        }
        for tool in [
            format!("{:?}", azure_cli(&vars, None)),
            format!("{:?}", azure_developer_cli(&vars, None)),
        ] {
            assert!(tool.contains("multitenant_disabled: true"), "{tool}");
        }
        let none = Vars::from_pairs([("AZURE_USERNAME", "")]);
        let shared = format!("{:?}", shared_token_cache(&none, None).unwrap());
        assert!(shared.contains("username: None"), "{shared}");
        assert!(shared.contains("multitenant_disabled: false"), "{shared}");
        assert!(format!("{:?}", azure_cli(&none, None)).contains("multitenant_disabled: false"));
    }

    /// `process_timeout` reaches the tool members built here (as azure-identity passes it to
    /// its CLI credentials), not the ones the program gave.
    #[test]
    fn process_timeout_reaches_the_tool_members_built_here() {
        let mut b = DefaultAzureCredential::builder()
            .vars(Vec::<(String, String)>::new())
            .process_timeout(Duration::from_secs(3));
        for tool in [
            format!("{:?}", b.azure_cli_member()),
            format!("{:?}", b.azure_developer_cli_member()),
        ] {
            assert!(tool.contains("timeout: 3s"), "{tool}");
        }
        let mut b = DefaultAzureCredential::builder()
            .process_timeout(Duration::from_secs(3))
            .azure_cli_credential(AzureCliCredential::new())
            .azure_developer_cli_credential(
                AzureDeveloperCliCredential::builder()
                    .process_timeout(Duration::from_secs(7))
                    .build()
                    .unwrap(),
            );
        let (az, azd) = (
            format!("{:?}", b.azure_cli_member()),
            format!("{:?}", b.azure_developer_cli_member()),
        );
        assert!(az.contains("timeout: 10s"), "{az}");
        assert!(azd.contains("timeout: 7s"), "{azd}");
        // Unset, the tools' own default.
        let mut b = DefaultAzureCredential::builder().vars(Vec::<(String, String)>::new());
        let az = format!("{:?}", b.azure_cli_member());
        assert!(az.contains("timeout: 10s"), "{az}");
    }

    /// The managed identity's workload identity source asks Microsoft Entra ID as the
    /// workload identity member does, so through the chain's `http_client` (a proxy, custom
    /// roots): here the only client trusting the loopback authority. The member is asked
    /// directly: in the chain it is asked after the workload identity member could not use
    /// the token file, and answers when the file appeared between their reads (the kubelet
    /// mounting it as the pod starts).
    #[tokio::test]
    async fn the_managed_identitys_workload_identity_source_uses_the_chains_http_client() {
        use crate::test_support::authority::Authority;
        use tower::ServiceExt;

        let authority = Authority::start().await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "projected-service-account-token").unwrap();
        let (url, file) = (authority.url(), file.display().to_string());
        let pod = [
            ("AZURE_AUTHORITY_HOST", url.as_str()),
            ("AZURE_TENANT_ID", "contoso"),
            ("AZURE_CLIENT_ID", "workload-app"),
            ("AZURE_FEDERATED_TOKEN_FILE", file.as_str()),
        ];
        let managed_identity = |chain: &DefaultAzureCredential| {
            chain
                .inner
                .members
                .iter()
                .find(|m| m.name() == "ManagedIdentityCredential")
                .cloned()
                .unwrap()
        };
        let request = || TokenRequest::new(["https://resource.test/.default"]);

        let http = HttpClient::builder()
            .add_root_certificates_pem(authority.ca_pem())
            .build()
            .unwrap();
        let chain = DefaultAzureCredential::builder()
            .vars(pod)
            .http_client(http)
            .build()
            .unwrap();
        let token = managed_identity(&chain)
            .oneshot(request())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.secret().expose_secret(), "at-1-contoso");
        let sent = authority.requests();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(
            sent[0].field("client_assertion"),
            Some("projected-service-account-token")
        );
        assert_eq!(sent[0].field("client_id"), Some("workload-app"));

        // The built-in client does not trust the loopback authority: without the chain's
        // client the source cannot reach it.
        let chain = DefaultAzureCredential::builder().vars(pod).build().unwrap();
        let err = managed_identity(&chain)
            .oneshot(request())
            .await
            .unwrap_err();
        assert!(err.message().contains("certificate"), "{err}");
        assert_eq!(authority.requests().len(), 1);
    }

    /// The managed identity's workload identity source allows the tenants the workload
    /// identity member does (the builder's and `AZURE_ADDITIONALLY_ALLOWED_TENANTS`), as
    /// azure-identity passes the chain's settings on to it.
    #[tokio::test]
    async fn the_managed_identitys_workload_identity_source_allows_the_chains_tenants() {
        use crate::test_support::authority::Authority;
        use tower::ServiceExt;

        let authority = Authority::start().await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "projected-service-account-token").unwrap();
        let (url, file) = (authority.url(), file.display().to_string());
        let http = HttpClient::builder()
            .add_root_certificates_pem(authority.ca_pem())
            .build()
            .unwrap();
        let chain = DefaultAzureCredential::builder()
            .vars([
                ("AZURE_AUTHORITY_HOST", url.as_str()),
                ("AZURE_TENANT_ID", "contoso"),
                ("AZURE_CLIENT_ID", "workload-app"),
                ("AZURE_FEDERATED_TOKEN_FILE", file.as_str()),
                ("AZURE_ADDITIONALLY_ALLOWED_TENANTS", "fabrikam"),
            ])
            .additionally_allowed_tenants(["northwind"])
            .http_client(http)
            .build()
            .unwrap();
        let managed_identity = chain
            .inner
            .members
            .iter()
            .find(|m| m.name() == "ManagedIdentityCredential")
            .cloned()
            .unwrap();
        for (n, tenant) in [(1, "fabrikam"), (2, "northwind")] {
            let request =
                TokenRequest::new(["https://resource.test/.default"]).with_tenant_id(tenant);
            let token = managed_identity
                .clone()
                .oneshot(request)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(token.secret().expose_secret(), format!("at-{n}-{tenant}"));
        }
        let request = TokenRequest::new(["https://resource.test/.default"]).with_tenant_id("other");
        let err = managed_identity.oneshot(request).await.unwrap_err();
        assert!(
            err.message().contains("not configured to acquire tokens"),
            "{err}"
        );
        assert_eq!(authority.requests().len(), 2);
    }

    /// The chain hands its `vars` to its members as set, not as text: a token file path that
    /// is not Unicode reaches the workload identity member and the managed identity's workload
    /// identity source as it is (each reads the file there and gets a token), and an authority
    /// host that is not Unicode is each service member's error naming the variable, not a
    /// host with U+FFFD in it (which here would reach the loopback authority).
    #[tokio::test]
    async fn values_that_are_not_unicode_reach_the_members_as_set() {
        use crate::credential::env::not_unicode;
        use crate::test_support::authority::Authority;
        use std::ffi::OsString;
        use tower::ServiceExt;

        let authority = Authority::start().await;
        let dir = tempfile::tempdir().unwrap();
        let odd = std::path::PathBuf::from(not_unicode(&format!(
            "{}/t\u{f6}ken-",
            dir.path().display()
        )));
        // APFS (macOS) refuses a file name that is not UTF-8 (EILSEQ), as may a file system
        // that keeps names UTF-8 only: the path part then has no file to read.
        let written = match std::fs::write(&odd, "projected-service-account-token") {
            Ok(()) => true,
            Err(e) if cfg!(target_os = "macos") || e.kind() == std::io::ErrorKind::InvalidInput => {
                eprintln!("skipped the non-Unicode token file path: {e}");
                false
            }
            Err(e) => panic!("{e}"),
        };
        let chain = |host: OsString| {
            let http = HttpClient::builder()
                .add_root_certificates_pem(authority.ca_pem())
                .build()
                .unwrap();
            DefaultAzureCredential::builder()
                .vars_as_set(Vars::from_os_pairs([
                    ("AZURE_AUTHORITY_HOST", host),
                    ("AZURE_TENANT_ID", "contoso".into()),
                    ("AZURE_CLIENT_ID", "workload-app".into()),
                    ("AZURE_CLIENT_SECRET", "env-secret-value".into()),
                    ("AZURE_FEDERATED_TOKEN_FILE", odd.clone().into_os_string()),
                ]))
                .http_client(http)
                .build()
                .unwrap()
        };
        let member = |chain: &DefaultAzureCredential, name: &str| {
            let found = chain.inner.members.iter().find(|m| m.name() == name);
            found.cloned().unwrap()
        };
        let request = || TokenRequest::new(["https://resource.test/.default"]);

        if written {
            let chain = chain(authority.url().into());
            for (n, name) in [
                (1, "WorkloadIdentityCredential"),
                (2, "ManagedIdentityCredential"),
            ] {
                let token = member(&chain, name)
                    .oneshot(request())
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(!token.secret().expose_secret().is_empty());
                let sent = authority.requests();
                assert_eq!(sent.len(), n, "{sent:?}");
                assert_eq!(
                    sent[n - 1].field("client_assertion"),
                    Some("projected-service-account-token"),
                    "{name}"
                );
            }
        }

        let before = authority.requests().len();
        let chain = chain(not_unicode(&format!("{}/", authority.url())));
        for name in [
            "EnvironmentCredential",
            "WorkloadIdentityCredential",
            "ManagedIdentityCredential",
        ] {
            let err = member(&chain, name).oneshot(request()).await.unwrap_err();
            assert!(
                err.message()
                    .contains("AZURE_AUTHORITY_HOST is set to a value that is not valid Unicode"),
                "{name}: {err}"
            );
            assert!(!format!("{err} {err:?}").contains("env-secret-value"));
        }
        assert_eq!(authority.requests().len(), before);
    }

    /// The managed identity's own endpoints keep its built-in client: the chain's sends https
    /// only, and IMDS is plain http. Nothing listens here: the request fails as unanswered,
    /// not as a configuration that cannot work.
    #[tokio::test(start_paused = true)]
    async fn the_managed_identitys_own_endpoints_keep_its_built_in_client() {
        use tower::ServiceExt;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let imds = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let chain = DefaultAzureCredential::builder()
            .vars([("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.as_str())])
            .http_client(HttpClient::new())
            .build()
            .unwrap();
        let managed_identity = chain
            .inner
            .members
            .iter()
            .find(|m| m.name() == "ManagedIdentityCredential")
            .cloned()
            .unwrap();
        let err = managed_identity
            .oneshot(TokenRequest::new(["https://resource.test/.default"]))
            .await
            .unwrap_err();
        assert!(!err.message().contains("https only"), "{err}");
        assert!(err.message().contains(&imds), "{err}");
    }

    /// A value the program gave that cannot work fails build(), naming it, instead of making
    /// a member unavailable so that the chain answers as another identity; the same mistake
    /// in the environment builds, and is reported when a token is asked for.
    #[tokio::test]
    async fn invalid_values_given_in_code_fail_build() {
        let vars = || DefaultAzureCredential::builder().vars(Vec::<(String, String)>::new());
        let err = vars()
            .managed_identity_system_assigned_label(" ")
            .build()
            .unwrap_err();
        assert!(err.message().contains("label is empty"), "{err}");
        let err = vars()
            .workload_identity_tenant_id("a b")
            .build()
            .unwrap_err();
        assert!(
            err.message().contains("WorkloadIdentityCredential"),
            "{err}"
        );
        assert!(err.message().contains("tenant"), "{err}");
        let err = vars().workload_identity_client_id(" ").build().unwrap_err();
        assert!(err.message().contains("client id is empty"), "{err}");
        let err = vars().managed_identity_client_id("").build().unwrap_err();
        assert!(
            err.message()
                .contains("the managed identity given: the user-assigned client id is empty"),
            "{err}"
        );
        let err = vars()
            .exclude_workload_identity_credential(true)
            .managed_identity_id(UserAssignedId::ResourceId(" ".into()))
            .build()
            .unwrap_err();
        assert!(err.message().contains("resource id is empty"), "{err}");
        // From the environment, the same values build; asking for a token is then the
        // workload identity's invalid request (its tenant), which stops the chain: the
        // environment member before it is unavailable (no secret), and nothing after it is
        // asked (IMDS points at a closed loopback port all the same).
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let imds = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let chain = DefaultAzureCredential::builder()
            .vars([
                ("AZURE_TENANT_ID", "a b"),
                ("AZURE_CLIENT_ID", "c"),
                ("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent"),
                ("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.as_str()),
            ])
            .exclude_shared_token_cache_credential(true)
            .exclude_azure_cli_credential(true)
            .exclude_azure_developer_cli_credential(true)
            .build()
            .unwrap();
        let err = crate::CredentialExt::get_token(&chain, ["https://resource.test/.default"])
            .await
            .unwrap_err();
        assert!(err.is_invalid_request(), "{err}");
        let attempts: Vec<(&str, bool)> = err
            .attempts()
            .iter()
            .map(|a| (a.credential(), a.is_unavailable()))
            .collect();
        assert_eq!(
            attempts,
            [
                ("EnvironmentCredential", true),
                ("WorkloadIdentityCredential", false)
            ],
            "{err}"
        );
        assert!(err.attempts()[1].is_invalid_request(), "{err}");
        assert!(chain.answered().is_none());
    }

    /// An `AZURE_AUTHORITY_HOST` that is not Unicode is the shared token cache member's
    /// build error, naming it (its builder's `build()` refuses it too), not the public cloud.
    #[test]
    fn a_shared_token_cache_authority_host_that_is_not_unicode_is_its_build_error() {
        let vars = Vars::from_os_pairs([(
            "AZURE_AUTHORITY_HOST",
            crate::credential::env::not_unicode("https://login.microsoftonline.us/"),
        )]);
        let err = shared_token_cache(&vars, None).unwrap_err();
        assert!(
            err.message().starts_with("SharedTokenCacheCredential: ")
                && err
                    .message()
                    .contains("AZURE_AUTHORITY_HOST is set to a value that is not valid Unicode"),
            "{err}"
        );
        let vars = Vars::from_pairs([("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us")]);
        let c = shared_token_cache(&vars, None).unwrap();
        assert!(
            format!("{c:?}").contains("login.microsoftonline.us"),
            "{c:?}"
        );
    }

    /// A member's configuration error already names it: the unavailable error carries the
    /// name once (its message without the prefix); a message without it is kept whole.
    #[tokio::test]
    async fn a_member_that_could_not_be_built_is_named_once() {
        for (given, want) in [
            ("SharedTokenCacheCredential: bad tenant", "bad tenant"),
            ("something else", "something else"),
        ] {
            let member = built::<SharedTokenCacheCredential>(
                Member::SharedTokenCache,
                Err(ConfigError::new(given)),
            );
            let err = crate::CredentialExt::get_token(&member, ["s/.default"])
                .await
                .unwrap_err();
            assert!(err.is_unavailable(), "{err}");
            assert_eq!(err.message(), want);
            let text = err.to_string();
            assert_eq!(
                text.matches("SharedTokenCacheCredential").count(),
                1,
                "{text}"
            );
        }
    }
}
