//! [`DeviceCodeCredential`]: a user signs in on another device (RFC 8628).

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::env::Vars;
use super::refresh_tokens::{
    Redeem, Silent, Stores, answer_account, refused_for_this_request, refuses_the_grant, says_dead,
};
use super::settings::{Settings, settings_setters};
use super::shared_token_cache::AZURE_CLI_CLIENT_ID;
use super::{Plan, arc_credential_service};
use crate::cache::TokenCache;
use crate::encoding::number_field;
use crate::entra::authority::TenantPolicy;
use crate::entra::token_client::{
    TokenClient, TokenResponse, carries_a_challenge, device_authorization_form, device_code_form,
};
use crate::error::{ConfigError, CredentialError};
use crate::flight::{Commit, Flight, SingleFlight, WhenAbandoned};
use crate::token::{AccessToken, Secret, TokenRequest, instant_after};

pub(crate) const NAME: &str = "DeviceCodeCredential";
/// azure-identity's defaults: the Azure CLI's public client, any work or school account.
const DEFAULT_TENANT: &str = "organizations";
/// RFC 8628 §3.2: the interval when the answer names none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest polling interval: an answer naming 0 is not polled in a loop. There is no
/// longest: the client MUST wait at least the interval the provider gave (RFC 8628 §3.5); the
/// code's expiry (at most [`MAX_CODE_LIFETIME`]) and the builder's timeout bound the wait, and
/// the endpoint is polled at that deadline when the next poll would come later.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// RFC 8628 §3.5: `slow_down` adds 5 s to this and every later poll's interval.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// The longest a code is waited for (Entra gives 900 s). An acquisition's limit
/// (`crate::refresh::ACQUISITION_LIMIT`) lets a sign-in this long end.
pub(crate) const MAX_CODE_LIFETIME: Duration = Duration::from_secs(3600);

/// What the user needs to sign in: shown by the prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceCodeInfo {
    /// The code the user enters on the verification page.
    pub user_code: String,
    /// The page where the user enters the code (`https://microsoft.com/devicelogin`).
    pub verification_uri: String,
    /// When the code stops working (wall clock, for display).
    pub expires_on: SystemTime,
    /// How long the code works, from when Entra answered.
    pub expires_in: Duration,
    /// Entra's instructions for the user, naming the page and the code.
    pub message: String,
}

type Prompt = Arc<dyn Fn(DeviceCodeInfo) + Send + Sync>;

/// Authenticates a user with the device code flow: the user signs in on another device.
///
/// ```no_run
/// use tower_identity::{CredentialExt, DeviceCodeCredential};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let credential = DeviceCodeCredential::builder()
///     .tenant_id("contoso.onmicrosoft.com")
///     .prompt(|info| eprintln!("{}", info.message))
///     .build()?;
/// // Prompts, then waits until the user has signed in on another device.
/// let graph = credential.get_token(["https://graph.microsoft.com/User.Read"]).await?;
/// // No prompt: the refresh token serves any other resource the user consented to.
/// let arm = credential.get_token(["https://management.azure.com/user_impersonation"]).await?;
/// # let _ = (graph, arm); Ok(()) }
/// ```
///
/// * The first call asks `{authority}/{tenant}/oauth2/v2.0/devicecode` (for the AD FS tenant
///   `adfs`, `{authority}/adfs/oauth2/devicecode`) for a code (with
///   `openid profile offline_access` added to its scopes, as msal does), hands the user code,
///   verification URI and message to the prompt (default: the message on stderr), then polls
///   the token endpoint at the interval Entra gave (at least 1 s, and never less than Entra's,
///   as RFC 8628 §3.5 requires). `slow_down` adds 5 s to the interval (RFC 8628 §3.5);
///   `authorization_pending` keeps polling, and
///   so does a transient failure (no answer in time, a connection failure, a 5xx, throttling:
///   the next poll waits for the interval, or the `Retry-After` if later). The HTTP client
///   resends a poll itself only when it surely went unprocessed (no connection, a 429): the
///   poll that issues the token redeems the code. A declined
///   sign-in, an expired or unknown code, any other error, the code's expiry or the builder's
///   [`timeout`](DeviceCodeCredentialBuilder::timeout) end the sign-in with an *authentication
///   failed* error saying which. When that deadline comes before the next poll is due, the
///   endpoint is polled once more at the deadline, so there is always at least one poll.
/// * **One sign-in for concurrent callers**: calls made while a sign-in is pending wait for
///   it (one prompt). The sign-in runs in a task of its own that is aborted when **every**
///   waiting caller has dropped its future: polling stops at once (or, when a poll request
///   is in flight, as it answers without tokens), and the next call starts a new sign-in with
///   a new code. One caller giving up does not stop it for the others. A poll request is not
///   cut off (it may be the one that redeems the code): a call made while it is in flight
///   joins the sign-in.
///   Once the user has signed in (a poll answered with tokens), it is no longer aborted: the
///   tokens are recorded and the account pinned though every caller gave up (a timeout
///   firing as the record waits for the cache file's lock), and the next call joins it or
///   uses what it recorded, without a new prompt.
/// * After sign-in the account is pinned (its `uid.utid`), its tokens are recorded as
///   [`AuthorizationCodeCredential`](crate::AuthorizationCodeCredential) records them (in
///   memory, or in the shared MSAL cache file with
///   [`cache_options`](DeviceCodeCredentialBuilder::cache_options)), and later calls use a
///   cached access token or redeem the refresh token, for any scope, without a prompt. A
///   refresh token the cache file could not take is kept in memory and redeemed first. When
///   no refresh token can sign the account in any more (none left, or Entra says they are
///   dead: expired, revoked, the user disabled or deleted), the account and every token of it
///   kept in memory are forgotten, and that call prompts (perhaps another user signs in;
///   a call that has already prompted returns the error, and the next call prompts). A
///   refusal answered after a sign-in landed meanwhile (another user's, or the same user's
///   again) forgets nothing: the tokens refused were the ones held before, and the call is
///   served as the account signed in now, as is a call that shared that request for the
///   same scope after the sign-in landed. A token request already under way as another
///   user's sign-in lands may still succeed: its call (and any that shared it) gets the
///   previous account's token, which is not kept for later calls. When Entra refuses them
///   otherwise (for one request only — MFA, consent, a Conditional Access policy of that
///   resource, a claims challenge, the top-level errors `interaction_required` and
///   `consent_required` — or with a code not known here: the codes
///   [`AuthorizationCodeCredential`](crate::AuthorizationCodeCredential) lists), that
///   request prompts, and the account stays signed in for the others; a
///   different user signing in there replaces it.
/// * The claims of the request (a challenge, the CAE capability) are sent with the code
///   request and with every poll, as msal sends them.
/// * The device code is a secret: it never appears in `Debug` output or errors.
#[derive(Clone)]
pub struct DeviceCodeCredential {
    inner: Arc<Inner>,
}

struct Inner {
    tenants: TenantPolicy,
    client_id: String,
    client: TokenClient,
    memory: TokenCache,
    stores: Stores,
    prompt: Prompt,
    timeout: Option<Duration>,
    /// The pinned account, with the pending sign-in as its one flight. The flight is aborted
    /// when every caller has given up.
    state: SingleFlight<(), SignedIn, State>,
    /// Tests: the next call to read a pinned account stops before its token request (see
    /// [`Inner::hold_next_run`]).
    #[cfg(test)]
    before_run: std::sync::Mutex<Option<HeldRun>>,
}

/// A call held before its token request: told to the test as it stops, and let go by it.
#[cfg(test)]
type HeldRun = (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
);

#[derive(Default)]
struct State {
    account: Option<String>,
    /// How many sign-ins have pinned an account: a call that read the account before another
    /// landed (the same user's again, say) does not forget that one on a refusal of what the
    /// account held before.
    sign_ins: u64,
}

/// What a sign-in obtained, and for which request.
#[derive(Clone)]
struct SignedIn {
    token: AccessToken,
    tenant: String,
    scopes: Vec<String>,
    cae: bool,
    account: Option<String>,
}

/// A code as Entra issued it.
struct DeviceCode {
    device_code: Secret,
    info: DeviceCodeInfo,
    interval: Duration,
    expires_at: Instant,
}

impl DeviceCodeCredential {
    /// azure-identity's defaults: the Azure CLI's client id
    /// (`04b07795-8ddb-461a-bbee-02f9e1bf7b46`), tenant `organizations`, the message on
    /// stderr. Fails only when `AZURE_AUTHORITY_HOST` is not a valid authority.
    pub fn new() -> Result<Self, ConfigError> {
        Self::builder().build()
    }

    /// Starts a builder; nothing is validated until `build`.
    pub fn builder() -> DeviceCodeCredentialBuilder {
        DeviceCodeCredentialBuilder {
            client_id: None,
            tenant_id: None,
            prompt: None,
            timeout: None,
            settings: Settings::default(),
        }
    }
}

impl Inner {
    async fn get_token(
        self: &Arc<Self>,
        request: TokenRequest,
    ) -> Result<AccessToken, CredentialError> {
        // Set once this call has seen a sign-in through: it never prompts twice.
        let mut signed_in = false;
        // Set when Entra refused the account's refresh tokens for this request only: this
        // request signs in, the account staying pinned for the others meanwhile.
        let mut interactive = false;
        // Set once this call has planned again after the answer to a request it shared (see
        // the arm below): once before its sign-in, and once after it (reset there).
        let mut retried_stale = false;
        // The error that sent this call round again since its sign-in: what it returns if
        // the account is gone when it comes back.
        let mut last_error: Option<CredentialError> = None;
        loop {
            let plan = Plan::new(NAME, &request, |requested| {
                self.tenants.resolve_required(requested).map(str::to_owned)
            })?;
            // The account, its sign-in and the memory's generation, read together: a sign-in
            // lands (pins its account, clears the memory) under the same lock.
            let (pinned, sign_ins, generation) = {
                let state = self.state.lock();
                (
                    state.account.clone(),
                    state.sign_ins,
                    self.memory.generation(),
                )
            };
            let Some(account) = pinned.filter(|_| !interactive) else {
                // Signed out again (by another call) after this call's sign-in: it has
                // prompted once and does not again.
                if signed_in {
                    return Err(last_error.unwrap_or_else(|| {
                        CredentialError::authentication_failed(
                            NAME,
                            "the account signed in for this request was signed out again \
                             before its token was obtained; the next request signs the user \
                             in again",
                        )
                    }));
                }
                let (sign_in, mine) = self.join_or_start(&plan);
                let done = sign_in.await?;
                // The account holds new tokens: a request shared after this, made with those
                // held before, may be refused again, and planned again once more (at most
                // twice in all: a call that signed in does not sign in again).
                (signed_in, interactive, retried_stale, last_error) = (true, false, false, None);
                let same = done.tenant == plan.tenant
                    && done.scopes == plan.scopes
                    && done.cae == plan.cae;
                if mine || (same && !carries_a_challenge(plan.claims.as_deref())) {
                    return Ok(done.token);
                }
                if done.account.is_none() {
                    return Err(CredentialError::authentication_failed(
                        NAME,
                        "the user signed in for another request, but Entra's answer named no \
                         account, so its refresh token cannot serve this one; try again",
                    ));
                }
                continue;
            };
            #[cfg(test)]
            self.held_before_run().await;
            let this = Arc::clone(self);
            let claims = plan.claims.clone();
            // Whether this call sent the request answered, as of its own read above; else it
            // shared one another call sent for the scope, as of that call's read. Exact only
            // because the memory (`TokenCache::new(NAME)` in `build`) has no shared
            // (distributed) level: with one, the cache calls `acquire` eagerly, also when that
            // level then answers from a request another call (or process) sent.
            let mut started = false;
            let sent = &mut started;
            // On a multi-thread runtime another user's sign-in may land between the read above
            // and the cache lookup: the memory cleared since, no slot is made for the previous
            // account's token there (the next account's callers would get it); planned again.
            let Some(result) = plan
                .run_as_of(&self.memory, generation, move |plan| {
                    *sent = true;
                    async move { this.for_account(&account, sign_ins, &plan).await }
                })
                .await
            else {
                continue;
            };
            let (forgotten, landed_since) = {
                let state = self.state.lock();
                (state.account.is_none(), state.sign_ins != sign_ins)
            };
            match result {
                // Someone signed in since this call read the account: planned again with the
                // account pinned now. With none pinned (forgotten since), the arms below
                // decide whether this call signs in.
                Err(error) if landed_since && !forgotten => last_error = Some(error),
                // The account can no longer be signed in silently: sign in again, here.
                Err(_) if !signed_in && forgotten => {}
                // An answer that depends on the refresh tokens found (a refusal of the grant,
                // for dead tokens or for this request only: MFA, consent, Conditional Access;
                // or none left), to a request this call shared, not sent: that request found
                // the tokens as of another call's read of the account, perhaps before a sign-in
                // this call has seen (alice again, with new tokens). Planned again, once: this
                // call's own request is sent with the tokens held now. Were they the ones that
                // request found, it costs no request (a refusal is remembered, see `Refusals`;
                // none left is a look in the stores).
                Err(error)
                    if !started
                        && !retried_stale
                        && !forgotten
                        && !landed_since
                        && answered_by_the_tokens_found(&error) =>
                {
                    retried_stale = true;
                    last_error = Some(error);
                }
                // MFA, consent, a Conditional Access policy of this resource: the user may
                // meet it in a sign-in; the refresh tokens still serve other requests.
                Err(error) if !signed_in && refused_for_this_request(claims.as_deref(), &error) => {
                    interactive = true;
                }
                other => return other,
            }
        }
    }

    /// Holds the next call that has read a pinned account, between that read and its token
    /// request, until `go` is sent (or dropped); `reached` says it has stopped there.
    #[cfg(test)]
    fn hold_next_run(
        &self,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (stopped, reached) = tokio::sync::oneshot::channel();
        let (go, until_go) = tokio::sync::oneshot::channel();
        *self.before_run.lock().unwrap_or_else(|e| e.into_inner()) = Some((stopped, until_go));
        (reached, go)
    }

    #[cfg(test)]
    async fn held_before_run(&self) {
        let held = self
            .before_run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((stopped, until_go)) = held {
            let _ = stopped.send(());
            let _ = until_go.await;
        }
    }

    /// The pending sign-in, else a new one for `plan` (`true`: this caller started it).
    /// The sign-in is a flight aborted when every caller has given up (see
    /// [`crate::flight`]); the account it signed in is pinned as it ends.
    fn join_or_start(self: &Arc<Self>, plan: &Plan) -> (Flight<SignedIn>, bool) {
        let mut state = self.state.lock();
        if let Some(pending) = state.running(&()) {
            return (pending, false);
        }
        let this = Arc::clone(self);
        let (tenant, scopes, cae, claims) = (
            plan.tenant.clone(),
            plan.scopes.clone(),
            plan.cae,
            plan.claims.clone(),
        );
        // Aborted once every caller has given up, until the user has signed in (see
        // `sign_in`).
        let commit = Commit::default();
        let redeemed = commit.clone();
        let sign_in = async move { this.sign_in(tenant, scopes, cae, claims, redeemed).await };
        let landed = Arc::clone(self);
        let flight = state.start(
            (),
            WhenAbandoned::Abort(commit),
            sign_in,
            move |state, result| {
                if let Ok(done) = &result {
                    if done.account.is_some() {
                        // Someone else signed in: no token cached in memory for the account
                        // pinned before may serve them. Cleared here, as the account changes,
                        // not by the callers: they may have given up (a timeout) by now.
                        if state.account.is_some() && state.account != done.account {
                            landed.memory.clear();
                        }
                        state.account.clone_from(&done.account);
                        state.sign_ins = state.sign_ins.wrapping_add(1);
                    }
                }
                result
            },
        );
        (flight, true)
    }

    /// Asks for a code, prompts, polls until the user has signed in, and records the tokens.
    /// Once the code is redeemed, the flight is committed (`redeemed`): the tokens are
    /// recorded and the account pinned even when every caller gives up meanwhile (the record
    /// may wait for the cache file's lock), so the user is not asked to sign in again.
    async fn sign_in(
        &self,
        tenant: String,
        scopes: Vec<String>,
        cae: bool,
        claims: Option<String>,
        redeemed: Commit,
    ) -> Result<SignedIn, CredentialError> {
        // The claims go to the device authorization request and to every poll, as msal sends
        // them: the poll is the request that issues the token.
        let form = device_authorization_form(&self.client_id, &scopes, claims.clone());
        let (object, sent_at) = self
            .client
            .device_authorization(NAME, &tenant, form)
            .await?;
        let code = DeviceCode::parse(&object, sent_at).map_err(|reason| {
            CredentialError::authentication_failed(
                NAME,
                format!(
                    "Unexpected response from Microsoft Entra ID's device authorization \
                     endpoint: {reason}"
                ),
            )
        })?;
        // A prompt that panics is named in the error (not a bare "did not finish").
        let prompt = Arc::clone(&self.prompt);
        let info = code.info.clone();
        if std::panic::catch_unwind(AssertUnwindSafe(move || prompt(info))).is_err() {
            return Err(CredentialError::authentication_failed(
                NAME,
                "the prompt callback panicked; the user was not shown the code",
            ));
        }
        // Committed inside, as the redeeming poll answers (see `poll`).
        let response = self
            .poll(&tenant, &code, claims.as_deref(), &redeemed)
            .await?;
        let (store, _) = self.stores.for_request(cae);
        let redeem = Redeem {
            credential: NAME,
            client: &self.client,
            store,
            unwritten: Some(&self.stores.unwritten),
            refusals: None,
            client_id: &self.client_id,
            client_secret: None,
            tenant: &tenant,
            scopes: &scopes,
            claims: None,
            user_grant: true,
        };
        // A failed write is logged by `record`, and the refresh token kept in memory.
        let written = redeem.record(&response, None).await;
        let account = answer_account(&response);
        if account.is_none() {
            tracing::warn!(
                "the device code sign-in's answer named no account: later requests cannot use its refresh token"
            );
        }
        // Pinned only when its refresh token is kept, in the cache or in memory: else a later
        // request signs in again.
        let account = account.filter(|_| written || response.refresh_token.is_some());
        Ok(SignedIn {
            token: response.token,
            tenant,
            scopes,
            cae,
            account,
        })
    }

    /// Polls the token endpoint until the user has signed in, or the sign-in cannot succeed.
    /// A transient failure (no answer, a connection failure, a 5xx, throttling) is polled
    /// again as `authorization_pending` is, after the interval or the `Retry-After` if later:
    /// the code lives for minutes, and one failed poll does not end the user's sign-in.
    ///
    /// Each poll request is sent under a hold on the flight (`redeemed`): Entra consumes the
    /// code when it answers with tokens, so a request cut off by a caller giving up would lose
    /// them. The tokens commit the flight; any other answer releases it, and ends the sign-in
    /// if every caller gave up meanwhile.
    async fn poll(
        &self,
        tenant: &str,
        code: &DeviceCode,
        claims: Option<&str>,
        redeemed: &Commit,
    ) -> Result<TokenResponse, CredentialError> {
        // The outcome of a sign-in every caller gave up on: it reaches nobody.
        let gave_up = || {
            CredentialError::authentication_failed(
                NAME,
                "every caller gave up on the sign-in before the user signed in",
            )
        };
        let started = Instant::now();
        let timeout_at = self.timeout.and_then(|t| started.checked_add(t));
        let deadline = timeout_at.map_or(code.expires_at, |t| t.min(code.expires_at));
        let mut interval = code.interval;
        // The `Retry-After` of a throttled poll: no poll before it.
        let mut not_before: Option<Instant> = None;
        loop {
            // The last stretch is polled too: at the deadline when the next poll would be
            // later (a user who signed in just before it is not turned away). That last poll
            // may come sooner than the interval after the one before (RFC 8628 §3.5 asks for
            // the interval); a server that minds answers `slow_down`, which ends the wait as
            // the deadline would have.
            let next = Instant::now()
                .checked_add(interval)
                .map_or(deadline, |next| next.min(deadline));
            // Never past the deadline: a wait that would end later ended the sign-in.
            let next = not_before.take().map_or(next, |at| next.max(at));
            tokio::time::sleep_until(next).await;
            let form = device_code_form(
                &self.client_id,
                &code.device_code,
                claims.map(str::to_owned),
            );
            let hold = redeemed.hold().ok_or_else(gave_up)?;
            let error = match self.client.request(NAME, tenant, form).await {
                Ok(response) => {
                    // Never abandoned while held: commits.
                    let _ = hold.commit();
                    return Ok(response);
                }
                Err(error) => error,
            };
            if !hold.release() {
                return Err(gave_up());
            }
            let now = Instant::now();
            let prefix = match error.error_code() {
                Some("authorization_pending") if now < deadline => continue,
                // Uncapped, as RFC 8628 §3.5 says: the deadline bounds the wait anyway.
                Some("slow_down") if now < deadline => {
                    interval = interval.saturating_add(SLOW_DOWN_STEP);
                    continue;
                }
                Some("authorization_pending" | "slow_down") => {
                    let message = match (timeout_at, self.timeout) {
                        (Some(at), Some(timeout)) if at <= code.expires_at => format!(
                            "the user did not sign in within the timeout ({} s); try again",
                            timeout.as_secs()
                        ),
                        _ => "the code expired before the user signed in; try again".to_owned(),
                    };
                    return Err(CredentialError::authentication_failed(NAME, message));
                }
                // Entra's name, and RFC 8628's.
                Some("authorization_declined" | "access_denied") => "the user declined the sign-in",
                Some("expired_token") => "the code expired before the user signed in; try again",
                Some("bad_verification_code") => {
                    "Microsoft Entra ID did not recognise the device code; try again"
                }
                _ if error.is_transient() && now < deadline => {
                    let resume = error.retry_after().and_then(|wait| now.checked_add(wait));
                    if resume.is_none_or(|at| at <= deadline) {
                        tracing::debug!(
                            credential = NAME,
                            %error,
                            "device code poll failed transiently; polling again"
                        );
                        not_before = resume;
                        continue;
                    }
                    // Throttled past the deadline: no poll could be sent before it.
                    "the device code sign-in failed"
                }
                _ => "the device code sign-in failed",
            };
            return Err(error.with_message_prefix(&format!("{prefix}: ")));
        }
    }

    /// The pinned account's cached token, else its refresh tokens. When neither can sign it
    /// in any more (none, or Entra says they are dead), the account is forgotten: the next
    /// sign-in is interactive. A refusal for this request only keeps it, and so does any
    /// refusal once a sign-in landed after `sign_ins` (when the caller read the account):
    /// the tokens refused may be older than that sign-in's.
    async fn for_account(
        &self,
        account: &str,
        sign_ins: u64,
        plan: &Plan,
    ) -> Result<AccessToken, CredentialError> {
        let silent = Silent {
            credential: NAME,
            client: &self.client,
            stores: &self.stores,
            client_id: &self.client_id,
            client_secret: None,
        };
        let result = silent
            .token(
                account,
                &plan.tenant,
                &plan.scopes,
                plan.cae,
                plan.claims.clone(),
            )
            .await;
        let outcome = match result {
            Ok(Some(token)) => return Ok(token),
            Ok(None) => CredentialError::authentication_failed(NAME, NO_REFRESH_TOKEN),
            // Entra says the refresh tokens are dead (expired, revoked, the user gone).
            Err(error) if says_dead(plan.claims.as_deref(), &error) => error,
            Err(error) => return Err(error),
        };
        let mut state = self.state.lock();
        if state.account.as_deref() == Some(account) && state.sign_ins == sign_ins {
            state.account = None;
            // The next sign-in may be another user's: tokens cached for other scopes must not
            // serve them as the previous account until they expire. Cleared under the
            // sign-in's lock (the documented order: its lock, then the cache's map), so a
            // sign-in landing now cannot pin another user while the old tokens are still
            // there.
            self.memory.clear();
        }
        drop(state);
        Err(outcome)
    }
}

/// The error of a pinned account with no cached token and no refresh token left.
const NO_REFRESH_TOKEN: &str = "no cached token and no refresh token for the signed-in \
                                account; the next request signs the user in again";

/// Whether `error`, answered by [`Inner::for_account`], depends on which refresh tokens its
/// request found: a [refusal of the grant](refuses_the_grant) (any code: the tokens are dead,
/// or the request made with them is refused, for MFA, consent, a Conditional Access policy),
/// or no refresh token. A
/// request this call did not send may have found older ones than this call would. None left
/// is an error `for_account` builds, without a code: told apart by its message, as written
/// there.
fn answered_by_the_tokens_found(error: &CredentialError) -> bool {
    let refused = refuses_the_grant(error);
    let none_left = error.error_code().is_none()
        && error.credential() == NAME
        && error.message() == NO_REFRESH_TOKEN;
    refused || none_left
}

impl DeviceCode {
    /// Reads the device authorization answer (RFC 8628 §3.2; Entra adds `message`), sent at
    /// `sent_at`. Numbers are clamped: the interval to at least 1 s, the lifetime to an hour.
    fn parse(object: &Map<String, Value>, sent_at: Instant) -> Result<Self, String> {
        let text = |name: &str| match object.get(name) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            _ => None,
        };
        let seconds = |name: &str| number_field(object, name);
        let device_code = text("device_code").ok_or("the answer has no device_code")?;
        let user_code = text("user_code").ok_or("the answer has no user_code")?;
        // `verification_url`: the v1 endpoint's name for it.
        let verification_uri = text("verification_uri")
            .or_else(|| text("verification_url"))
            .ok_or("the answer has no verification_uri")?;
        let lifetime = seconds("expires_in")?.ok_or("the answer has no expires_in")?;
        let lifetime = lifetime.min(MAX_CODE_LIFETIME.as_secs());
        if lifetime == 0 {
            return Err("the code it issued has already expired".into());
        }
        let interval = seconds("interval")?
            .map_or(DEFAULT_INTERVAL, Duration::from_secs)
            .max(MIN_INTERVAL);
        let expires_in = Duration::from_secs(lifetime);
        let message = text("message").unwrap_or_else(|| {
            format!(
                "To sign in, use a web browser to open the page {verification_uri} and enter \
                 the code {user_code} to authenticate."
            )
        });
        Ok(Self {
            device_code: Secret::new(device_code),
            info: DeviceCodeInfo {
                user_code,
                verification_uri,
                expires_on: SystemTime::now()
                    .checked_add(expires_in)
                    .unwrap_or_else(SystemTime::now),
                expires_in,
                message,
            },
            interval,
            expires_at: instant_after(sent_at, lifetime),
        })
    }
}

arc_credential_service!(DeviceCodeCredential);

impl fmt::Debug for DeviceCodeCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct(NAME)
            .field(
                "tenant_id",
                &self.inner.tenants.tenant().unwrap_or_default(),
            )
            .field("client_id", &self.inner.client_id)
            .field("account", &state.account)
            .field("signing_in", &state.is_running(&()))
            .field("timeout", &self.inner.timeout)
            .field("store", &self.inner.stores.plain)
            .finish_non_exhaustive()
    }
}

/// Settings for a [`DeviceCodeCredential`].
pub struct DeviceCodeCredentialBuilder {
    client_id: Option<String>,
    tenant_id: Option<String>,
    prompt: Option<Prompt>,
    timeout: Option<Duration>,
    settings: Settings,
}

impl DeviceCodeCredentialBuilder {
    settings_setters!(settings; authority_host, additionally_allowed_tenants, http_client,
        cache_options, disable_multitenant_auth);
}

impl DeviceCodeCredentialBuilder {
    /// The public client (app) the user signs in to. Default: the Azure CLI's,
    /// `04b07795-8ddb-461a-bbee-02f9e1bf7b46`.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The tenant the user signs in to. Default: `organizations` (any work or school
    /// account); a request may then name any tenant unless tenants are restricted.
    pub fn tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// Shows the user what to do: called once per sign-in, before polling starts. It must
    /// not block (spawn a task for slow work). Default: the message printed to stderr.
    pub fn prompt(mut self, prompt: impl Fn(DeviceCodeInfo) + Send + Sync + 'static) -> Self {
        self.prompt = Some(Arc::new(prompt));
        self
    }

    /// How long a sign-in may wait for the user; `None` (the default) waits until the code
    /// expires (Entra: 15 minutes). The token endpoint is polled a last time at this deadline
    /// when the next poll would come later.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Validates (client id, tenant, timeout, authority, cache options) and builds.
    pub fn build(self) -> Result<DeviceCodeCredential, ConfigError> {
        let fail = |m: &str| ConfigError::new(format!("{NAME}: {m}"));
        let client_id = self
            .client_id
            .unwrap_or_else(|| AZURE_CLI_CLIENT_ID.to_owned());
        if client_id.trim().is_empty() {
            return Err(fail("client id is empty"));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(fail(
                "timeout is zero; give the user time to sign in, or None to wait until the code expires",
            ));
        }
        let tenant = self.tenant_id.as_deref().unwrap_or(DEFAULT_TENANT);
        let tenants = self.settings.tenants(NAME, Some(tenant))?;
        let client = self
            .settings
            .token_client(NAME, self.settings.env_authority(NAME, &Vars::default())?)?;
        let stores = Stores::from_settings(&self.settings, NAME)?;
        let prompt = self
            .prompt
            .unwrap_or_else(|| Arc::new(|info: DeviceCodeInfo| eprintln!("{}", info.message)));
        Ok(DeviceCodeCredential {
            inner: Arc::new(Inner {
                tenants,
                client_id,
                client,
                memory: TokenCache::new(NAME),
                stores,
                prompt,
                timeout: self.timeout,
                state: SingleFlight::new(NAME, "the sign-in", State::default()),
                #[cfg(test)]
                before_run: std::sync::Mutex::new(None),
            }),
        })
    }
}

impl fmt::Debug for DeviceCodeCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCodeCredentialBuilder")
            .field("client_id", &self.client_id)
            .field("tenant_id", &self.tenant_id)
            .field("prompt", &self.prompt.as_ref().map(|_| "custom"))
            .field("timeout", &self.timeout)
            .field("settings", &self.settings)
            .finish()
    }
}

#[cfg(test)]
mod tests;
