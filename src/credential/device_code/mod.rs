//! [`DeviceCodeCredential`]: a user signs in on another device (RFC 8628).

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::refresh_tokens::{Redeem, Silent, Stores, answer_account, refused_for_this_request};
use super::settings::Settings;
use super::shared_token_cache::AZURE_CLI_CLIENT_ID;
use super::{Plan, arc_credential_service};
use crate::cache::TokenCache;
use crate::encoding::number_field;
use crate::entra::authority::{AZURE_AUTHORITY_HOST, TenantPolicy};
use crate::entra::token_client::{
    TokenClient, TokenResponse, carries_a_challenge, device_authorization_form, device_code_form,
};
use crate::error::{ConfigError, CredentialError};
use crate::flight::{Flight, SingleFlight, WhenAbandoned};
use crate::token::{AccessToken, Secret, TokenRequest, instant_after};

pub(crate) const NAME: &str = "DeviceCodeCredential";
/// azure-identity's defaults: the Azure CLI's public client, any work or school account.
const DEFAULT_TENANT: &str = "organizations";
/// RFC 8628 §3.2: the interval when the answer names none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Bounds of the polling interval the provider gives: at least a second apart, and never so
/// far apart that a user waits minutes after signing in. `slow_down` may take it further.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// RFC 8628 §3.5: `slow_down` adds 5 s to this and every later poll's interval.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// The longest a code is waited for (Entra gives 900 s).
const MAX_CODE_LIFETIME: Duration = Duration::from_secs(3600);

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
///   the token endpoint at the interval Entra gave (clamped to 1–60 s). `slow_down` adds 5 s
///   to the interval (RFC 8628 §3.5), past 60 s too; `authorization_pending` keeps polling, and
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
///   waiting caller has dropped its future: polling stops at once, and the next call starts
///   a new sign-in with a new code. One caller giving up does not stop it for the others.
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
///   resource, a claims challenge — or with a code not known here: the codes
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
                // An answer that depends on the refresh tokens found (an `invalid_grant`, for
                // dead tokens or for this request only: MFA, consent, Conditional Access; or
                // none left), to a request this call shared, not sent: that request found the
                // tokens as of another call's read of the account, perhaps before a sign-in
                // this call has seen (alice again, with new tokens). Planned again, once: this
                // call's own request is sent with the tokens held now. Were they the ones that
                // request found, it costs no request (an `invalid_grant` is remembered, see
                // `Refusals`; none left is a look in the stores).
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
        let sign_in = async move { this.sign_in(tenant, scopes, cae, claims).await };
        let landed = Arc::clone(self);
        let flight = state.start((), WhenAbandoned::Abort, sign_in, move |state, result| {
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
        });
        (flight, true)
    }

    /// Asks for a code, prompts, polls until the user has signed in, and records the tokens.
    async fn sign_in(
        &self,
        tenant: String,
        scopes: Vec<String>,
        cae: bool,
        claims: Option<String>,
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
        let response = self.poll(&tenant, &code, claims.as_deref()).await?;
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
    async fn poll(
        &self,
        tenant: &str,
        code: &DeviceCode,
        claims: Option<&str>,
    ) -> Result<TokenResponse, CredentialError> {
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
            let error = match self.client.request(NAME, tenant, form).await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
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
            Err(error)
                if error.error_code() == Some("invalid_grant")
                    && !refused_for_this_request(plan.claims.as_deref(), &error) =>
            {
                error
            }
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
/// request found: an `invalid_grant` (any code: the tokens are dead, or the request made with
/// them is refused, for MFA, consent, a Conditional Access policy), or no refresh token. A
/// request this call did not send may have found older ones than this call would. None left
/// is an error `for_account` builds, without a code: told apart by its message, as written
/// there.
fn answered_by_the_tokens_found(error: &CredentialError) -> bool {
    let refused = error.error_code() == Some("invalid_grant");
    let none_left = error.error_code().is_none()
        && error.credential() == NAME
        && error.message() == NO_REFRESH_TOKEN;
    refused || none_left
}

impl DeviceCode {
    /// Reads the device authorization answer (RFC 8628 §3.2; Entra adds `message`), sent at
    /// `sent_at`. Numbers are clamped: the interval to 1–60 s, the lifetime to an hour.
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
            .clamp(MIN_INTERVAL, MAX_INTERVAL);
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
    /// The authority host, e.g.
    /// [`AZURE_GOVERNMENT`](crate::authority_hosts::AZURE_GOVERNMENT). Default:
    /// `AZURE_AUTHORITY_HOST`, else the public cloud. Must be `https`.
    pub fn authority_host(mut self, host: impl Into<String>) -> Self {
        self.settings.set_authority_host(host.into());
        self
    }

    /// Tenants besides the configured one that requests may name; `"*"` allows any.
    pub fn additionally_allowed_tenants<I, S>(mut self, tenants: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.set_additionally_allowed_tenants(tenants);
        self
    }

    /// The HTTP client for token requests. Default: [`HttpClient::new`](crate::HttpClient::new).
    pub fn http_client(mut self, client: crate::HttpClient) -> Self {
        self.settings.set_http_client(client);
        self
    }

    /// Keep tokens in the shared MSAL token-cache file (see
    /// [`TokenCachePersistenceOptions`](crate::TokenCachePersistenceOptions)): other
    /// processes of the same app, and MSAL-based tools, find them there. Default: tokens are
    /// kept in memory only.
    pub fn cache_options(mut self, options: crate::TokenCachePersistenceOptions) -> Self {
        self.settings.set_cache_options(options);
        self
    }

    /// Ignore per-request tenants and always use the configured one. Default: whether
    /// `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH` is set.
    pub fn disable_multitenant_auth(mut self, disable: bool) -> Self {
        self.settings.set_multitenant_disabled(disable);
        self
    }
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
            .token_client(NAME, std::env::var(AZURE_AUTHORITY_HOST).ok())?;
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
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<DeviceCode, String> {
        match value {
            Value::Object(map) => DeviceCode::parse(&map, Instant::now()),
            _ => unreachable!(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn device_code_answers_are_read_with_clamped_numbers() {
        let code = parse(json!({"device_code": "dc-secret", "user_code": "ABCD-EFGH",
            "verification_uri": "https://microsoft.com/devicelogin", "expires_in": "900",
            "interval": 5, "message": "Go to the page"}))
        .unwrap();
        assert_eq!(code.interval, Duration::from_secs(5));
        assert_eq!(code.expires_at, Instant::now() + Duration::from_secs(900));
        assert_eq!(code.info.user_code, "ABCD-EFGH");
        assert_eq!(code.info.message, "Go to the page");
        let debug = format!("{:?}", code.info);
        assert!(!debug.contains("dc-secret"), "{debug}");

        let absurd = parse(json!({"device_code": "d", "user_code": "u",
            "verification_url": "https://v", "expires_in": 1e30, "interval": 18446744073709551615u64}))
        .unwrap();
        assert_eq!(absurd.interval, MAX_INTERVAL);
        assert_eq!(absurd.info.expires_in, MAX_CODE_LIFETIME);
        assert!(absurd.info.message.contains("https://v") && absurd.info.message.contains(" u "));
        let eager = parse(json!({"device_code": "d", "user_code": "u",
            "verification_uri": "https://v", "expires_in": 900, "interval": 0}))
        .unwrap();
        assert_eq!(eager.interval, MIN_INTERVAL);
        let default = parse(json!({"device_code": "d", "user_code": "u",
            "verification_uri": "https://v", "expires_in": 900}))
        .unwrap();
        assert_eq!(default.interval, DEFAULT_INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn incomplete_device_code_answers_name_what_is_missing() {
        for (body, missing) in [
            (
                json!({"user_code": "u", "verification_uri": "v", "expires_in": 9}),
                "device_code",
            ),
            (
                json!({"device_code": "d", "verification_uri": "v", "expires_in": 9}),
                "user_code",
            ),
            (
                json!({"device_code": "d", "user_code": "u", "expires_in": 9}),
                "verification_uri",
            ),
            (
                json!({"device_code": "d", "user_code": "u", "verification_uri": "v"}),
                "expires_in",
            ),
            (
                json!({"device_code": "d", "user_code": "u", "verification_uri": "v", "expires_in": -1}),
                "expires_in",
            ),
            (
                json!({"device_code": "d", "user_code": "u", "verification_uri": "v", "expires_in": 0}),
                "expired",
            ),
        ] {
            let error = parse(body).err().expect("an error");
            assert!(error.contains(missing), "{error}");
        }
    }

    /// Races between a sign-in landing and the account being forgotten, against the loopback
    /// authority, each step held until the test lets it go.
    mod races {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::mpsc::TryRecvError;

        use base64::Engine;
        use tokio::sync::oneshot;

        use super::*;
        use crate::refresh::DEFAULT_RETRY_AFTER_FAILURE;
        use crate::test_support::authority::{Authority, Fault, error_body};
        use crate::test_support::clock::held;
        use crate::{HttpClient, RetryOptions};

        const RESOURCE: &str = "https://resource.test/.default";
        const OTHER: &str = "https://other.test/.default";
        const BLOCKED: &str = "https://blocked.test/.default";

        /// A token answer for `uid` (tenant `contoso`), with a refresh token.
        fn answer(uid: &str, access_token: &str, refresh_token: &str) -> Fault {
            let client_info = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!(r#"{{"uid":"{uid}","utid":"contoso"}}"#));
            Fault::Body(
                json!({
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "access_token": access_token,
                    "refresh_token": refresh_token,
                    "client_info": client_info,
                })
                .to_string(),
            )
        }

        fn refused(error: &str, code: u32, description: &str) -> Fault {
            Fault::Respond {
                status: 400,
                body: error_body(error, code, description),
                headers: Vec::new(),
            }
        }

        /// Entra's refusal of a dead refresh token: the account is forgotten.
        fn dead() -> Fault {
            refused(
                "invalid_grant",
                700082,
                "The refresh token has expired due to inactivity.",
            )
        }

        /// Entra's refusal of one request made with the refresh token (a Conditional Access
        /// policy of that resource): the account stays.
        fn refused_for_this_request_only() -> Fault {
            refused(
                "invalid_grant",
                53000,
                "Device is not in required device state: compliant.",
            )
        }

        /// A credential at `authority` counting its prompts.
        fn credential(authority: &Authority, prompts: &Arc<AtomicUsize>) -> DeviceCodeCredential {
            let http = HttpClient::builder()
                .add_root_certificates_pem(authority.ca_pem())
                .timeout(None)
                .retry(RetryOptions::default().total_timeout(None))
                .build()
                .unwrap();
            let prompts = Arc::clone(prompts);
            DeviceCodeCredential::builder()
                .tenant_id("contoso")
                .authority_host(authority.url())
                .http_client(http)
                .prompt(move |_| {
                    prompts.fetch_add(1, Ordering::SeqCst);
                })
                .build()
                .unwrap()
        }

        async fn token(
            credential: &DeviceCodeCredential,
            scope: &str,
        ) -> Result<AccessToken, CredentialError> {
            credential.inner.get_token(TokenRequest::new([scope])).await
        }

        fn secret(token: &AccessToken) -> &str {
            token.secret().expose_secret()
        }

        /// Waits until `done` holds, 1 ms of the paused clock at a time, and fails naming
        /// `what` after 60 s: a broken race fails its test instead of hanging it. Every server
        /// is in this process, so the clock moves only once nothing is in flight.
        async fn until(what: &str, mut done: impl FnMut() -> bool) {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done() {
                assert!(Instant::now() < deadline, "not after 60 s: {what}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }

        /// A spawned call's result, once it has returned (see [`until`]).
        async fn joined<T>(what: &str, call: tokio::task::JoinHandle<T>) -> T {
            until(what, || call.is_finished()).await;
            call.await.unwrap()
        }

        /// alice's refresh token found dead (the account forgotten, on another runtime) while
        /// bob's sign-in, for a request refused for alice only, lands: the forgetting is held
        /// as its clear of the memory begins, until that landing waits for it (or the test is
        /// done). The landing then pins bob only after alice's tokens are gone: bob is served
        /// none of them, and his own are kept. Before, the account was forgotten and the
        /// memory cleared in two critical sections: bob's sign-in landed between them, found
        /// no account to replace, and bob was served alice's token for OTHER.
        #[tokio::test(start_paused = true)]
        async fn a_sign_in_landing_as_the_account_is_forgotten_is_served_none_of_its_tokens() {
            let authority = Authority::start().await;
            let prompts = Arc::new(AtomicUsize::new(0));
            let credential = credential(&authority, &prompts);
            authority.push_fault(answer("alice", "at-alice", "rt-alice"));
            token(&credential, RESOURCE).await.unwrap();
            // Redeemed silently: kept in the credential's memory.
            authority.push_fault(answer("alice", "at-alice-other", "rt-alice"));
            token(&credential, OTHER).await.unwrap();

            // Refused for alice for this request only: bob signs in for it. His first poll
            // is pending; the next is due 5 s later, which the clock is held short of.
            authority.push_fault(refused(
                "invalid_grant",
                53000,
                "Device is not in required device state: compliant.",
            ));
            authority.push_fault(refused(
                "authorization_pending",
                70016,
                "Authorization is pending. Continue polling.",
            ));
            let for_bob = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, BLOCKED).await }
            });
            // alice's poll, OTHER's refresh, BLOCKED's refresh, bob's first poll.
            until("bob's first poll", || authority.requests().len() >= 4).await;

            // alice's refresh token is dead: a request for another scope forgets her, on a
            // runtime of its own, held as the clear begins.
            authority.push_fault(refused(
                "invalid_grant",
                700082,
                "The refresh token has expired due to inactivity.",
            ));
            authority.push_fault(answer("bob", "at-bob", "rt-bob"));
            let (reached, at_clear) = oneshot::channel();
            let (checked, until_checked) = std::sync::mpsc::channel::<()>();
            let waited = credential.inner.state.waited();
            let landing_waited = Arc::new(AtomicBool::new(false));
            credential.inner.memory.before_next_clear({
                let landing_waited = Arc::clone(&landing_waited);
                move || {
                    let before = waited.load(Ordering::SeqCst);
                    let _ = reached.send(());
                    // Held until bob's landing waits for the sign-in's lock (held here, with
                    // the fix) or the test has checked (without it, the landing never waits).
                    // Its runtime's other work (connections) goes on meanwhile.
                    tokio::task::block_in_place(|| {
                        loop {
                            if waited.load(Ordering::SeqCst) > before {
                                landing_waited.store(true, Ordering::SeqCst);
                                return;
                            }
                            match until_checked.try_recv() {
                                Err(TryRecvError::Empty) => std::thread::yield_now(),
                                _ => return,
                            }
                        }
                    });
                }
            });
            let (forgotten, forgotten_result) = oneshot::channel();
            let (test_done, until_test_done) = std::sync::mpsc::channel::<()>();
            let forgetting = std::thread::spawn({
                let credential = credential.clone();
                move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .unwrap();
                    let result = runtime.block_on(token(&credential, "https://x.test/.default"));
                    let _ = forgotten.send(result);
                    // Its connections stay up while the test may still use them.
                    let _ = until_test_done.recv();
                }
            });
            held(at_clear).await.unwrap();

            // bob's next poll: he has signed in, and his sign-in lands.
            let bob = for_bob.await.unwrap().unwrap();
            assert_eq!(secret(&bob), "at-bob");
            let other = token(&credential, OTHER).await.unwrap();
            assert_ne!(
                secret(&other),
                "at-alice-other",
                "bob is served alice's token"
            );
            drop(checked);
            assert!(
                landing_waited.load(Ordering::SeqCst),
                "bob's sign-in landed while alice was being forgotten"
            );
            // The request that forgot alice is served as bob, who signed in meanwhile.
            let x = held(forgotten_result).await.unwrap();
            assert!(!secret(&x.unwrap()).contains("alice"));
            drop(test_done);
            forgetting.join().unwrap();

            // bob stays signed in: OTHER and x came from his refresh token, BLOCKED is his
            // token, without a prompt.
            let requests = authority.requests();
            for scope in ["other.test", "x.test"] {
                let last = requests
                    .iter()
                    .rfind(|r| r.field("scope").is_some_and(|s| s.contains(scope)))
                    .unwrap();
                assert_eq!(last.field("refresh_token"), Some("rt-bob"), "{scope}");
            }
            let again = token(&credential, BLOCKED).await.unwrap();
            assert_eq!(secret(&again), "at-bob");
            assert_eq!(authority.requests().len(), requests.len(), "from the cache");
            assert_eq!(prompts.load(Ordering::SeqCst), 2, "alice's and bob's");
            let shown = format!("{credential:?}");
            assert!(shown.contains("bob"), "{shown}");
        }

        /// Two requests redeem alice's refresh token as it dies. The first one's refusal
        /// forgets her, and she signs in again there; the second one's refusal comes after
        /// that sign-in landed. It concerns the token she had before: her new sign-in stays,
        /// with the tokens cached since, and the second request is served by it. Before, the
        /// account was told by its id alone: the late refusal forgot her new sign-in and
        /// cleared its tokens, and the second request prompted her a third time.
        #[tokio::test(start_paused = true)]
        async fn a_refusal_sent_before_the_account_signed_in_again_does_not_forget_it() {
            let authority = Authority::start().await;
            let prompts = Arc::new(AtomicUsize::new(0));
            let credential = credential(&authority, &prompts);
            authority.push_fault(answer("alice", "at-alice", "rt-alice"));
            token(&credential, RESOURCE).await.unwrap();

            let gate = Arc::new(tokio::sync::Notify::new());
            authority.push_fault(Fault::HoldThen(Arc::clone(&gate), Box::new(dead())));
            let late = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, "https://late.test/.default").await }
            });
            until("the late request", || authority.requests().len() >= 2).await;
            // The first refusal: alice is forgotten, and signs in again for that request.
            authority.push_fault(dead());
            authority.push_fault(answer("alice", "at-alice-2", "rt-alice-2"));
            let first = token(&credential, "https://first.test/.default").await;
            assert_eq!(secret(&first.unwrap()), "at-alice-2");
            assert_eq!(prompts.load(Ordering::SeqCst), 2);
            authority.push_fault(answer("alice", "at-alice-other", "rt-alice-2"));
            token(&credential, OTHER).await.unwrap();

            // The late refusal of the token she had before.
            gate.notify_one();
            let late = joined("the late request", late).await;
            let sent: Vec<_> = authority
                .requests()
                .iter()
                .filter_map(|r| r.field("refresh_token").map(str::to_owned))
                .collect();
            assert_eq!(
                prompts.load(Ordering::SeqCst),
                2,
                "no new prompt; sent {sent:?}, got {late:?}"
            );
            // The late request is served by her new refresh token.
            let late = late.unwrap();
            assert_eq!(sent, ["rt-alice", "rt-alice", "rt-alice-2", "rt-alice-2"]);
            assert!(!secret(&late).contains("alice"), "a new token: {late:?}");
            let requests = authority.requests().len();
            let other = token(&credential, OTHER).await.unwrap();
            assert_eq!(secret(&other), "at-alice-other", "still in memory");
            assert_eq!(authority.requests().len(), requests);
        }

        /// A request for SHARED redeems alice's refresh token as it dies, held. Meanwhile she
        /// signs in again (for a request refused for her for that request only: the same
        /// account, the memory kept), and a second call for SHARED, reading the account after
        /// that sign-in, shares the held request. The refusal concerns the token she had
        /// before: both calls are served by her new one, without a prompt. Before, the second
        /// call took the refusal as if its own request had got it: alice still pinned and no
        /// sign-in since its read, it returned the error although she is signed in.
        #[tokio::test(start_paused = true)]
        async fn a_call_sharing_a_request_sent_before_a_sign_in_is_served_as_the_account_now() {
            const SHARED: &str = "https://shared.test/.default";
            let authority = Authority::start().await;
            let prompts = Arc::new(AtomicUsize::new(0));
            let credential = credential(&authority, &prompts);
            authority.push_fault(answer("alice", "at-alice", "rt-alice"));
            token(&credential, RESOURCE).await.unwrap();

            let gate = Arc::new(tokio::sync::Notify::new());
            authority.push_fault(Fault::HoldThen(Arc::clone(&gate), Box::new(dead())));
            let first = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, SHARED).await }
            });
            until("the first call's request", || {
                authority.requests().len() >= 2
            })
            .await;

            // alice signs in again, for a request refused for her for that request only.
            authority.push_fault(refused_for_this_request_only());
            authority.push_fault(answer("alice", "at-alice-2", "rt-alice-2"));
            let blocked = token(&credential, BLOCKED).await.unwrap();
            assert_eq!(secret(&blocked), "at-alice-2");
            assert_eq!(prompts.load(Ordering::SeqCst), 2);

            // A second call for SHARED shares the held request: it sends none of its own.
            let second = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, SHARED).await }
            });
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(!second.is_finished());
            // alice's poll, SHARED's held refresh, BLOCKED's refresh, alice's second poll.
            assert_eq!(authority.requests().len(), 4);

            gate.notify_one();
            let first = joined("the first call", first).await;
            let second = joined("the second call", second).await;
            let sent: Vec<_> = authority
                .requests()
                .iter()
                .filter_map(|r| r.field("refresh_token").map(str::to_owned))
                .collect();
            let second = second.unwrap_or_else(|e| panic!("{e}; sent {sent:?}"));
            let first = first.unwrap();
            // Both served by her new refresh token (the second call may share the first's
            // new request, or send its own).
            assert_eq!(sent[..3], ["rt-alice", "rt-alice", "rt-alice-2"]);
            assert!(sent[3..].iter().all(|t| t == "rt-alice-2"), "{sent:?}");
            for token in [&first, &second] {
                assert!(!secret(token).contains("alice"), "a new token: {token:?}");
            }
            assert_eq!(prompts.load(Ordering::SeqCst), 2, "no new prompt");
            let requests = authority.requests().len();
            let blocked_again = token(&credential, BLOCKED).await.unwrap();
            assert_eq!(secret(&blocked_again), "at-alice-2", "still in memory");
            assert_eq!(authority.requests().len(), requests);
        }

        /// A call that shared alice's sign-in for another request (its one prompt) redeems
        /// her refresh token for its own, held. Meanwhile bob signs in (for a request refused
        /// for alice only), and another call finds bob's refresh token dead, forgets him, and
        /// is declined in its own sign-in. The held answer then comes: a sign-in landed since
        /// the first call read alice, but no account is pinned now. That call has prompted
        /// once: it returns the error, and no sign-in starts. Before, it planned again as for
        /// any sign-in landed since, found no account, and prompted a fourth time.
        #[tokio::test(start_paused = true)]
        async fn a_call_that_signed_in_returns_the_error_when_the_account_is_forgotten_meanwhile() {
            const MINE: &str = "https://mine.test/.default";
            let authority = Authority::start().await;
            let prompts = Arc::new(AtomicUsize::new(0));
            let credential = credential(&authority, &prompts);

            // alice signs in for RESOURCE; the call for MINE shares that sign-in, then redeems
            // her refresh token for MINE, held.
            authority.push_fault(answer("alice", "at-alice", "rt-alice"));
            let gate = Arc::new(tokio::sync::Notify::new());
            authority.push_fault(Fault::HoldThen(Arc::clone(&gate), Box::new(dead())));
            let for_resource = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, RESOURCE).await }
            });
            until("alice's device code request", || {
                !authority.device_code_requests().is_empty()
            })
            .await;
            let mine = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, MINE).await }
            });
            // alice's poll, MINE's held refresh.
            until("MINE's request", || authority.requests().len() >= 2).await;
            let for_resource = joined("alice's sign-in", for_resource).await;
            assert_eq!(secret(&for_resource.unwrap()), "at-alice");
            assert_eq!(prompts.load(Ordering::SeqCst), 1);
            assert_eq!(
                authority.requests()[1].field("refresh_token"),
                Some("rt-alice")
            );

            // bob signs in, for a request refused for alice only.
            authority.push_fault(refused_for_this_request_only());
            authority.push_fault(answer("bob", "at-bob", "rt-bob"));
            let bob = token(&credential, BLOCKED).await.unwrap();
            assert_eq!(secret(&bob), "at-bob");
            // bob's refresh token is dead: he is forgotten, and declines the sign-in that
            // follows.
            authority.push_fault(dead());
            authority.push_fault(refused(
                "authorization_declined",
                70000,
                "The user declined the sign-in.",
            ));
            let declined = token(&credential, OTHER).await.unwrap_err();
            assert_eq!(declined.error_code(), Some("authorization_declined"));
            assert_eq!(prompts.load(Ordering::SeqCst), 3);
            let shown = format!("{credential:?}");
            assert!(!shown.contains("bob"), "{shown}");

            // The held refusal of alice's token.
            gate.notify_one();
            let result = joined("the call for MINE", mine).await;
            assert_eq!(
                prompts.load(Ordering::SeqCst),
                3,
                "no prompt more; got {result:?}"
            );
            let error = result.unwrap_err();
            assert_eq!(error.error_codes(), [700082], "{error}");
            assert_eq!(authority.device_code_requests().len(), 3);
        }

        /// A request for SHARED redeems alice's refresh token, held, and is refused for that
        /// request only. Meanwhile she signs in again (for another request refused for her),
        /// and a second call for SHARED, reading the account after that sign-in, shares the
        /// held request. That request was made with the token she had before: the second call
        /// sends its own request, with her new one, and is served without a prompt, as the
        /// call that sent the held one is. Before, the second call took the refusal as its
        /// own and prompted her a third time.
        #[tokio::test(start_paused = true)]
        async fn a_call_sharing_a_refusal_for_that_request_sent_before_a_sign_in_does_not_prompt() {
            const SHARED: &str = "https://shared.test/.default";
            let authority = Authority::start().await;
            let prompts = Arc::new(AtomicUsize::new(0));
            let credential = credential(&authority, &prompts);
            authority.push_fault(answer("alice", "at-alice", "rt-alice"));
            token(&credential, RESOURCE).await.unwrap();

            let gate = Arc::new(tokio::sync::Notify::new());
            authority.push_fault(Fault::HoldThen(
                Arc::clone(&gate),
                Box::new(refused_for_this_request_only()),
            ));
            let first = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, SHARED).await }
            });
            until("the first call's request", || {
                authority.requests().len() >= 2
            })
            .await;

            // alice signs in again, for a request refused for her for that request only.
            authority.push_fault(refused_for_this_request_only());
            authority.push_fault(answer("alice", "at-alice-2", "rt-alice-2"));
            let blocked = token(&credential, BLOCKED).await.unwrap();
            assert_eq!(secret(&blocked), "at-alice-2");
            assert_eq!(prompts.load(Ordering::SeqCst), 2);

            // A second call for SHARED shares the held request: it sends none of its own.
            let second = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, SHARED).await }
            });
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(!second.is_finished());
            assert_eq!(authority.requests().len(), 4);

            gate.notify_one();
            let first = joined("the first call", first).await;
            let second = joined("the second call", second).await;
            let sent: Vec<_> = authority
                .requests()
                .iter()
                .filter_map(|r| r.field("refresh_token").map(str::to_owned))
                .collect();
            assert_eq!(
                prompts.load(Ordering::SeqCst),
                2,
                "no new prompt; sent {sent:?}, got {second:?}"
            );
            assert_eq!(authority.device_code_requests().len(), 2);
            let second = second.unwrap();
            let first = first.unwrap();
            assert_eq!(sent[..3], ["rt-alice", "rt-alice", "rt-alice-2"]);
            assert!(sent[3..].iter().all(|t| t == "rt-alice-2"), "{sent:?}");
            for token in [&first, &second] {
                assert!(!secret(token).contains("alice"), "a new token: {token:?}");
            }
        }

        /// A call shares a request refused for that request only, with no sign-in since: it
        /// plans again, its own request answered by the refusal remembered (no request sent),
        /// and it shares the sign-in the first call starts: one prompt, and no request more
        /// than the first call's.
        #[tokio::test(start_paused = true)]
        async fn a_call_sharing_a_refusal_for_that_request_shares_its_sign_in() {
            const SHARED: &str = "https://shared.test/.default";
            let authority = Authority::start().await;
            let prompts = Arc::new(AtomicUsize::new(0));
            let credential = credential(&authority, &prompts);
            authority.push_fault(answer("alice", "at-alice", "rt-alice"));
            token(&credential, RESOURCE).await.unwrap();

            let gate = Arc::new(tokio::sync::Notify::new());
            authority.push_fault(Fault::HoldThen(
                Arc::clone(&gate),
                Box::new(refused_for_this_request_only()),
            ));
            let first = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, SHARED).await }
            });
            until("the first call's request", || {
                authority.requests().len() >= 2
            })
            .await;
            let second = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, SHARED).await }
            });
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(!second.is_finished());

            authority.push_fault(answer("alice", "at-alice-2", "rt-alice-2"));
            gate.notify_one();
            let first = joined("the first call", first).await.unwrap();
            let second = joined("the second call", second).await.unwrap();
            assert_eq!(secret(&first), "at-alice-2");
            assert_eq!(secret(&second), "at-alice-2");
            assert_eq!(prompts.load(Ordering::SeqCst), 2);
            assert_eq!(authority.device_code_requests().len(), 2);
            // alice's poll, SHARED's refused refresh, alice's second poll.
            assert_eq!(authority.requests().len(), 3);
        }

        /// A call whose own request is refused for that request only signs in at once: that
        /// request was made with the tokens it read, and planning again would only meet the
        /// refusal again (remembered). Before `started`, every such refusal was taken as perhaps another
        /// call's, and the call went round once more first.
        #[tokio::test(start_paused = true)]
        async fn a_call_refused_for_its_own_request_signs_in_without_planning_again() {
            let authority = Authority::start().await;
            let prompts = Arc::new(AtomicUsize::new(0));
            let credential = credential(&authority, &prompts);
            authority.push_fault(answer("alice", "at-alice", "rt-alice"));
            token(&credential, RESOURCE).await.unwrap();

            let gate = Arc::new(tokio::sync::Notify::new());
            authority.push_fault(Fault::HoldThen(
                Arc::clone(&gate),
                Box::new(refused_for_this_request_only()),
            ));
            authority.push_fault(answer("alice", "at-alice-2", "rt-alice-2"));
            let blocked = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, BLOCKED).await }
            });
            until("BLOCKED's request", || authority.requests().len() >= 2).await;
            // Past its read: a call planning again stops here.
            let (mut reached, _go) = credential.inner.hold_next_run();
            gate.notify_one();
            let mut planned_again = false;
            until("BLOCKED returns, or plans again", || {
                planned_again = planned_again || reached.try_recv().is_ok();
                planned_again || blocked.is_finished()
            })
            .await;
            assert!(
                !planned_again,
                "the call planned again after its own refusal"
            );
            let blocked = blocked.await.unwrap().unwrap();
            assert_eq!(secret(&blocked), "at-alice-2");
            assert_eq!(prompts.load(Ordering::SeqCst), 2);
            // alice's poll, BLOCKED's refused refresh, alice's second poll.
            assert_eq!(authority.requests().len(), 3);
        }

        /// A call that shared alice's sign-in for another request reads her account and is
        /// held before its own request; meanwhile another call finds her refresh token dead,
        /// forgets her, and is declined in its own sign-in. The held call, whose read is out
        /// of date (the memory cleared), plans again and finds no account: it has prompted
        /// once, and returns the error without a prompt or a request more.
        #[tokio::test(start_paused = true)]
        async fn a_call_that_signed_in_finds_the_account_signed_out_before_its_request() {
            const MINE: &str = "https://mine.test/.default";
            let authority = Authority::start().await;
            let prompts = Arc::new(AtomicUsize::new(0));
            let credential = credential(&authority, &prompts);

            authority.push_fault(answer("alice", "at-alice", "rt-alice"));
            let for_resource = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, RESOURCE).await }
            });
            until("alice's device code request", || {
                !authority.device_code_requests().is_empty()
            })
            .await;
            // The call for MINE shares the sign-in, then stops before its own request.
            let (mut reached, go) = credential.inner.hold_next_run();
            let mine = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, MINE).await }
            });
            until("the call for MINE stops before its request", || {
                reached.try_recv().is_ok()
            })
            .await;
            let for_resource = joined("alice's sign-in", for_resource).await;
            assert_eq!(secret(&for_resource.unwrap()), "at-alice");
            assert_eq!(prompts.load(Ordering::SeqCst), 1);

            // alice's refresh token is dead: she is forgotten, and declines the sign-in that
            // follows.
            authority.push_fault(dead());
            authority.push_fault(refused(
                "authorization_declined",
                70000,
                "The user declined the sign-in.",
            ));
            let declined = token(&credential, OTHER).await.unwrap_err();
            assert_eq!(declined.error_code(), Some("authorization_declined"));
            assert_eq!(prompts.load(Ordering::SeqCst), 2);
            let requests = authority.requests().len();

            go.send(()).unwrap();
            let result = joined("the call for MINE", mine).await;
            assert_eq!(
                prompts.load(Ordering::SeqCst),
                2,
                "no prompt more; got {result:?}"
            );
            let error = result.unwrap_err();
            assert!(error.message().contains("signed out again"), "{error}");
            assert_eq!(authority.device_code_requests().len(), 2);
            assert_eq!(authority.requests().len(), requests);
        }

        /// A call for SHARED shares a request refused for that request only and plans again
        /// (its own request answered by the refusal remembered), then shares alice's sign-in
        /// for BLOCKED. Meanwhile, once that refusal is no longer remembered, another call
        /// redeems her old refresh token for SHARED, held; her sign-in lands, and the first
        /// call shares that request, made with the token she had before and refused again. The
        /// sign-in gave her new tokens: the call plans again once more, and is served by them. Before,
        /// having planned again once, it returned the refusal although she is signed in.
        #[tokio::test(start_paused = true)]
        async fn a_call_that_planned_again_before_its_sign_in_plans_again_after_it() {
            const SHARED: &str = "https://shared.test/.default";
            let authority = Authority::start().await;
            let prompts = Arc::new(AtomicUsize::new(0));
            let credential = credential(&authority, &prompts);
            authority.push_fault(answer("alice", "at-alice", "rt-alice"));
            token(&credential, RESOURCE).await.unwrap();

            // A's request for SHARED, held, to be refused for it only; C shares it.
            let gate = Arc::new(tokio::sync::Notify::new());
            authority.push_fault(Fault::HoldThen(
                Arc::clone(&gate),
                Box::new(refused_for_this_request_only()),
            ));
            let spawn_shared = || {
                let credential = credential.clone();
                tokio::spawn(async move { token(&credential, SHARED).await })
            };
            let a = spawn_shared();
            until("A's request", || authority.requests().len() >= 2).await;
            let c = spawn_shared();
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(!c.is_finished());
            assert_eq!(authority.requests().len(), 2);

            // B, refused for BLOCKED, signs alice in again: the poll that says so is held.
            authority.push_fault(refused_for_this_request_only());
            let signed_in = Arc::new(tokio::sync::Notify::new());
            authority.push_fault(Fault::HoldThen(
                Arc::clone(&signed_in),
                Box::new(answer("alice", "at-alice-2", "rt-alice-2")),
            ));
            let b = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, BLOCKED).await }
            });
            until("B's sign-in's poll", || authority.requests().len() >= 4).await;
            assert_eq!(prompts.load(Ordering::SeqCst), 2);

            // The refusal: A shares B's sign-in; C plans again (the one call to reach its
            // request now), is answered by the refusal remembered, and shares it too.
            let (mut reached, go) = credential.inner.hold_next_run();
            gate.notify_one();
            until("C plans again after the refusal it shared", || {
                reached.try_recv().is_ok()
            })
            .await;
            go.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(!a.is_finished() && !c.is_finished());
            assert_eq!(authority.requests().len(), 4);

            // Past the refusal's memory, D redeems alice's old refresh token for SHARED, held.
            tokio::time::sleep(DEFAULT_RETRY_AFTER_FAILURE).await;
            let late = Arc::new(tokio::sync::Notify::new());
            authority.push_fault(Fault::HoldThen(
                Arc::clone(&late),
                Box::new(refused_for_this_request_only()),
            ));
            let d = spawn_shared();
            until("D's request", || authority.requests().len() >= 5).await;

            // alice's sign-in lands; A and C share D's request.
            signed_in.notify_one();
            let b = joined("B's sign-in", b).await;
            assert_eq!(secret(&b.unwrap()), "at-alice-2");
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(!a.is_finished() && !c.is_finished() && !d.is_finished());
            assert_eq!(authority.requests().len(), 5);

            late.notify_one();
            let a = joined("A", a).await;
            let c = joined("C", c).await;
            let d = joined("D", d).await;
            let sent: Vec<_> = authority
                .requests()
                .iter()
                .filter_map(|r| r.field("refresh_token").map(str::to_owned))
                .collect();
            let c = c.unwrap_or_else(|e| panic!("{e}; sent {sent:?}"));
            for token in [&a.unwrap(), &c, &d.unwrap()] {
                assert!(!secret(token).contains("alice"), "a new token: {token:?}");
            }
            assert_eq!(sent[..3], ["rt-alice", "rt-alice", "rt-alice"]);
            assert!(sent[3..].iter().all(|t| t == "rt-alice-2"), "{sent:?}");
            assert_eq!(prompts.load(Ordering::SeqCst), 2, "no new prompt");
            assert_eq!(authority.device_code_requests().len(), 2);
        }

        /// Two calls for SHARED share alice's sign-in for RESOURCE (their one prompt). One
        /// sends its request for SHARED with her new refresh token, held, and `refusal`
        /// answers it; the other (J) shares it. J plans again, the one time after its
        /// sign-in: its own request, with the same token, is answered by the refusal
        /// remembered, and J returns that refusal, without a request, a prompt or a third
        /// plan. Planning again is bounded: at most once before a call's sign-in and once
        /// after it.
        async fn a_call_that_signed_in_plans_again_once_after_it(refusal: Fault, code: u32) {
            const SHARED: &str = "https://shared.test/.default";
            let authority = Authority::start().await;
            let prompts = Arc::new(AtomicUsize::new(0));
            let credential = credential(&authority, &prompts);
            authority.push_fault(answer("alice", "at-alice", "rt-alice"));
            let gate = Arc::new(tokio::sync::Notify::new());
            authority.push_fault(Fault::HoldThen(Arc::clone(&gate), Box::new(refusal)));
            let for_resource = tokio::spawn({
                let credential = credential.clone();
                async move { token(&credential, RESOURCE).await }
            });
            until("alice's device code request", || {
                !authority.device_code_requests().is_empty()
            })
            .await;
            // J, the first of the two to read her account once she has signed in, stops
            // before its request.
            let (mut reached, go) = credential.inner.hold_next_run();
            let spawn_shared = || {
                let credential = credential.clone();
                tokio::spawn(async move { token(&credential, SHARED).await })
            };
            let (first, second) = (spawn_shared(), spawn_shared());
            // Both wait for her sign-in: its first poll is due 5 s after the code.
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(authority.requests().is_empty());
            until("J stops before its request", || reached.try_recv().is_ok()).await;
            let for_resource = joined("alice's sign-in", for_resource).await;
            assert_eq!(secret(&for_resource.unwrap()), "at-alice");
            // alice's poll, the other call's held request for SHARED.
            until("the other call's request", || {
                authority.requests().len() >= 2
            })
            .await;
            assert_eq!(
                authority.requests()[1].field("refresh_token"),
                Some("rt-alice")
            );

            // J shares that request: it sends none of its own.
            let (mut replanned, go_again) = credential.inner.hold_next_run();
            go.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(!first.is_finished() && !second.is_finished());
            assert!(replanned.try_recv().is_err(), "J did not share the request");
            assert_eq!(authority.requests().len(), 2);

            // The refusal: the call that sent the request returns it; J plans again.
            gate.notify_one();
            until("J plans again after the refusal it shared", || {
                replanned.try_recv().is_ok()
            })
            .await;
            until("the call that sent the request returns", || {
                first.is_finished() || second.is_finished()
            })
            .await;
            let (sender, j) = if first.is_finished() {
                (first, second)
            } else {
                (second, first)
            };
            let sent = joined("the call that sent the request", sender).await;
            assert_eq!(sent.unwrap_err().error_codes(), [code]);

            // J's own request is answered by the refusal remembered; it plans no third time.
            let (mut third, _go_third) = credential.inner.hold_next_run();
            go_again.send(()).unwrap();
            let mut planned_a_third_time = false;
            until("J returns, or plans a third time", || {
                planned_a_third_time = planned_a_third_time || third.try_recv().is_ok();
                planned_a_third_time || j.is_finished()
            })
            .await;
            assert!(!planned_a_third_time, "J planned a third time");
            let error = j.await.unwrap().unwrap_err();
            assert_eq!(error.error_code(), Some("invalid_grant"), "{error}");
            assert_eq!(error.error_codes(), [code], "{error}");
            assert_eq!(prompts.load(Ordering::SeqCst), 1, "no new prompt");
            assert_eq!(authority.device_code_requests().len(), 1);
            assert_eq!(authority.requests().len(), 2, "no request more");
        }

        #[tokio::test(start_paused = true)]
        async fn a_call_that_signed_in_plans_again_once_after_it_on_mfa() {
            let mfa = refused(
                "invalid_grant",
                50076,
                "Due to a configuration change made by your administrator, or because you \
                 moved to a new location, you must use multi-factor authentication.",
            );
            a_call_that_signed_in_plans_again_once_after_it(mfa, 50076).await;
        }

        #[tokio::test(start_paused = true)]
        async fn a_call_that_signed_in_plans_again_once_after_it_on_a_code_not_known_here() {
            let unknown = refused("invalid_grant", 9_999_999, "A refusal not known here.");
            a_call_that_signed_in_plans_again_once_after_it(unknown, 9_999_999).await;
        }
    }

    #[test]
    fn builder_defaults_and_bad_settings() {
        let credential = DeviceCodeCredential::builder().build().unwrap();
        let debug = format!("{credential:?}");
        assert!(
            debug.contains(AZURE_CLI_CLIENT_ID) && debug.contains("organizations"),
            "{debug}"
        );
        let error = DeviceCodeCredential::builder()
            .timeout(Some(Duration::ZERO))
            .build()
            .unwrap_err();
        assert!(error.message().contains("timeout is zero"), "{error}");
        let error = DeviceCodeCredential::builder()
            .client_id(" ")
            .build()
            .unwrap_err();
        assert!(error.message().contains("client id is empty"), "{error}");
        let error = DeviceCodeCredential::builder()
            .tenant_id("bad/tenant")
            .build()
            .unwrap_err();
        assert!(error.message().contains("tenant"), "{error}");
    }
}
