//! [`AuthorizationCodeCredential`]: a user's authorization code, then its refresh token.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use super::env::Vars;
use super::refresh_tokens::{
    Redeem, Silent, Stores, answer_account, refuses_the_grant, with_sign_in_advice,
};
use super::settings::{Settings, settings_setters};
use super::{Plan, arc_credential_service};
use crate::cache::{CacheKey, TokenCache};
use crate::entra::authority::TenantPolicy;
use crate::entra::token_client::{TokenClient, authorization_code_form, carries_a_challenge};
use crate::error::{ConfigError, CredentialError};
use crate::flight::{Flight, FlightLock, SingleFlight, WhenAbandoned};
use crate::refresh::DEFAULT_RETRY_AFTER_FAILURE;
use crate::token::{AccessToken, Secret, TokenRequest};

const NAME: &str = "AuthorizationCodeCredential";

/// Authenticates a user with an authorization code from an interactive sign-in.
///
/// ```no_run
/// use tower_identity::{AuthorizationCodeCredential, CredentialExt};
///
/// # async fn run(code_from_redirect: String) -> Result<(), Box<dyn std::error::Error>> {
/// let credential = AuthorizationCodeCredential::builder(
///     "contoso.onmicrosoft.com",
///     "00000000-1111-2222-3333-444444444444",
///     code_from_redirect,
///     "http://localhost:8400/callback",
/// )
/// .build()?;
/// let graph = credential.get_token(["https://graph.microsoft.com/User.Read"]).await?;
/// // The refresh token serves any other resource the user consented to.
/// let arm = credential.get_token(["https://management.azure.com/user_impersonation"]).await?;
/// # let _ = (graph, arm); Ok(()) }
/// ```
///
/// * The first call redeems the code (`client_info=1`), for that call's scopes. The code is
///   sent again by later calls until a redemption succeeds, then forgotten; the account is
///   pinned to the `uid.utid` of the answer. Concurrent first calls share the one redemption.
///   A redemption with no definite answer (no answer in time, the connection lost after the
///   request was sent, a server error) keeps the code too: it usually was not consumed. When
///   a later redemption is then told the code was already redeemed (AADSTS54005), its error
///   says that the earlier one got no definite answer (and which kind), so it may have used
///   the code.
///   A code Entra refuses for good (`invalid_grant` with AADSTS54005 already redeemed, 70008
///   expired, 50148 or 501481 the PKCE verifier does not match, 9002313 malformed, 50011 or
///   500112 another redirect URI) is forgotten at once, and later calls get that refusal without a request (sign the user in
///   again for a new code). Any other refusal keeps the code. One for the request only (any
///   other `invalid_grant`: no consent, MFA, a Conditional Access policy of one resource, a
///   code not known here; `interaction_required`, `consent_required`; or `invalid_scope`,
///   `invalid_resource`) is also kept as the answer
///   to the calls for the same request (tenant, scopes, CAE, claims) only: for 30 s they get
///   it without a request, then that request sends the code again. These refusals are kept
///   per request, so requests retried in turn each send the code once per 30 s; at most 16
///   are kept (those older than 30 s are dropped as one is kept; a 17th replaces the oldest,
///   whose request sends the code again on its next call). A redemption that succeeds, or a
///   refusal that spends the code, forgets them all. Other refusals (`invalid_client`,
///   `unauthorized_client`, `invalid_request`, …) are not kept in the state: the calls for
///   that request still waiting in line get it as their answer (see below), and the next new
///   call, for any request, sends the code again.
/// * Concurrent calls: a call that waited for the redemption of its own request gets its
///   answer. One that waited for another request's gets its answer when it concerns the code
///   (a refusal that spends it) or when Entra refused nothing: no answer, an answer that is
///   no OAuth error, a server error or a 429 without `Retry-After` outlasting the retries, a
///   redemption that did not finish. After Entra's refusal of that request (its scopes or
///   claims; its tenant: AADSTS700016, the app not found in that directory, refuses one
///   tenant of a multi-tenant credential) or a throttled answer, it sends the code for its own
///   request (in its turn, see below), so it gets its own answer: a
///   `Retry-After` holds back the requests to that tenant's token endpoint only (one for the
///   same tenant is answered throttled at once, nothing sent). An `invalid_client` for a
///   wrong secret is so refused once per request waiting. Waiting calls are served in the
///   order they came: the call that finds no redemption running starts one for the request
///   of the oldest call still waiting (not one the failure of the redemption it waited for
///   answered), and that call gets its outcome, also when it ended before that call ran
///   again; so a call waits through the redemptions for the calls before it only, not for
///   calls that came after it. A call whose request has a kept refusal gets it at once,
///   without waiting for any redemption.
/// * Later calls: a cached access token (more than 300 s left; past its refresh time, a
///   refresh token is redeemed first and the cached token returned only if that fails, as in
///   msal), else a refresh token of the account — **for any scope**: Entra refresh tokens are not bound to the scopes of the
///   first request (the Python reference wrongly restricts them). A rotated refresh token
///   replaces the old one. One Entra refuses for a single request (`invalid_grant` for MFA,
///   consent, an unauthorized scope, a Conditional Access policy of one resource — AADSTS50005,
///   50072, 50074, 50076, 50078, 50079, 50097, 50129, 50131, 50158, 50199, 53000–53004, 65001,
///   65002, 70000, 70043, or the `suberror`s `basic_action`, `additional_action`,
///   `message_only`, `consent_required`, `user_password_expired`; the top-level errors
///   `interaction_required` and `consent_required`; or any refusal of a request carrying a
///   claims challenge) is kept for the others. One Entra says is dead (expired,
///   revoked, the user disabled or deleted, the device deleted: AADSTS70008, 700081, 700082,
///   700084, 50173, 50132, 50133, 50057, 50034, 500341, 700003, 700007, or the `suberror`
///   `bad_token` or `token_expired`, also beside 70000) is dropped from the credential's own
///   memory: it would be
///   refused on every later call. One refused with a code not known here is kept, as msal
///   keeps it. A cache file keeps every one (as msal does: other tools may share it). Any
///   refusal is the answer, without a request, to the same request with the same refresh
///   token for the next 30 s.
/// * Tokens live in memory, or in the shared MSAL cache file with
///   [`cache_options`](AuthorizationCodeCredentialBuilder::cache_options). When that file
///   cannot be written (or read), the last refresh token it could not take is kept in memory
///   and redeemed first, so the sign-in is not lost.
/// * No code, no token and no refresh token → an *authentication failed* error saying to
///   sign in again.
#[derive(Clone)]
pub struct AuthorizationCodeCredential {
    inner: Arc<Inner>,
}

struct Inner {
    tenants: TenantPolicy,
    client_id: String,
    client_secret: Option<Secret>,
    redirect_uri: String,
    client: TokenClient,
    memory: TokenCache,
    stores: Stores,
    /// The code and the account, with the redemption as their one flight.
    state: SingleFlight<(), Redeemed, CodeState>,
}

/// The code, until redeemed; then the account it signed in. Or Entra's refusal of the code,
/// once it refused it for good.
struct CodeState {
    code: Option<Code>,
    account: Option<String>,
    /// Entra's refusal of the code for good (see [`code_is_spent`]), the answer to every
    /// later call: sent again, the code could only be refused again.
    refused: Option<CredentialError>,
    /// What the last redemption that got no definite answer met instead (see
    /// [`no_definite_answer`]): Entra may have redeemed the code then, so a later refusal
    /// saying it was already redeemed (AADSTS54005) names this as the likely use.
    undecided: Option<String>,
    /// The refusals that kept the code (see [`keeps_the_code`]), one per request, each
    /// answered again to its request for [`DEFAULT_RETRY_AFTER_FAILURE`] without sending the
    /// code: callers retrying in a loop, for one request or several in turn, would otherwise
    /// send it each time. Bounded: see [`KEPT_REFUSALS`].
    kept_refusals: KeptRefusals,
    /// The request of the last redemption started: while one runs, the one its waiters
    /// joined. A waiter for another request answers its failure only when
    /// [`fails_every_waiter`].
    redeeming: Option<Asked>,
    /// How many redemptions were started: the last one's number, kept by the calls joining it
    /// (see [`Waiting::joined`]).
    redemptions: u64,
    /// The calls waiting for the code, served oldest first.
    line: Line,
}

/// The calls waiting for the code (for a redemption, or to start one), oldest first, each with
/// its request: the call that finds no redemption running starts one for the oldest request
/// without a kept refusal or an answer, its own or a call's that waited longer. Else a call on
/// another thread taking the lock before the woken waiters could start its own, again and
/// again. A call leaves the line as it ends ([`InLine`]). A redemption's end takes out the
/// calls that answer its outcome: those that joined it for its request, and every one that
/// joined it when its failure [`fails_every_waiter`]. The calls for its request that did not
/// join it (it was started for them while they were not running) keep a failure the state
/// does not keep, or a token whose answer named no account, as their answer, taken when they
/// run again; a kept refusal, a spent code or an account they find in the state, out of line. The others go round again from their place.
#[derive(Default)]
struct Line {
    /// The last ticket given: a call's place in line, kept when it goes back in.
    last: u64,
    calls: VecDeque<Waiting>,
}

/// A call in [`Line`].
struct Waiting {
    ticket: u64,
    request: Asked,
    /// The number of the redemption it last joined or started (see
    /// [`CodeState::redemptions`]).
    joined: u64,
    /// The outcome of the redemption started for its request while it was not running, taken
    /// as its answer when it runs again: a failure the state does not keep (sending the code
    /// again for it would only repeat that request), or a token whose answer named no account
    /// (no later call could find it again).
    answer: Option<Result<AccessToken, CredentialError>>,
}

impl Line {
    fn ticket(&mut self) -> u64 {
        self.last = self.last.wrapping_add(1);
        self.last
    }

    /// The call holding `ticket`, if in line.
    fn call(&mut self, ticket: u64) -> Option<&mut Waiting> {
        self.calls.iter_mut().find(|call| call.ticket == ticket)
    }

    /// Puts the call holding `ticket` in line for `request`, in its place, unless it is there.
    fn enter(&mut self, ticket: u64, request: &Asked) {
        let at = self.calls.partition_point(|call| call.ticket < ticket);
        if self.calls.get(at).is_none_or(|call| call.ticket != ticket) {
            let call = Waiting {
                ticket,
                request: request.clone(),
                joined: 0,
                answer: None,
            };
            self.calls.insert(at, call);
        }
    }

    /// The oldest request without a refusal kept at `now` or an answer: the next one to redeem
    /// the code for.
    fn next(&self, kept: &KeptRefusals, now: tokio::time::Instant) -> Option<Asked> {
        self.calls
            .iter()
            .filter(|call| call.answer.is_none())
            .map(|call| &call.request)
            .find(|request| kept.recent(request, now).is_none())
            .cloned()
    }
}

/// A call's place in [`Line`], given up however the call ends (an answer, a panic, dropped).
struct InLine<'a> {
    state: &'a SingleFlight<(), Redeemed, CodeState>,
    ticket: u64,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        // Never dropped under that lock: `acquire` declares it before taking the lock.
        let ticket = self.ticket;
        self.state
            .lock()
            .line
            .calls
            .retain(|call| call.ticket != ticket);
    }
}

/// A request, as refusals of the code are told apart: a refusal that keeps the code is the
/// answer to the same request only. Two requests are the same when their tenant, scopes (in
/// any order, as the token cache keys them), CAE and claims are.
#[derive(Clone)]
struct Asked {
    tenant: String,
    /// As the caller gave them: sent in that order.
    scopes: Vec<String>,
    cae: bool,
    claims: Option<String>,
    key: CacheKey,
}

impl PartialEq for Asked {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.claims == other.claims
    }
}

/// How many refusals that kept the code [`KeptRefusals`] holds: a credential asks for a
/// handful of distinct requests; past that, the oldest refusal is replaced (its request sends
/// the code again on its next call, as it would without it).
const KEPT_REFUSALS: usize = 16;

/// A refusal of the code that kept it: for which request, when, and what.
struct KeptRefusal {
    request: Asked,
    at: tokio::time::Instant,
    error: CredentialError,
}

/// The refusals that kept the code, at most one per request and at most [`KEPT_REFUSALS`],
/// oldest first: each is the answer to its request for [`DEFAULT_RETRY_AFTER_FAILURE`].
/// Those older than that are dropped as a refusal is kept; when full, the oldest is replaced. A
/// success, or a refusal that spends the code, clears them all.
#[derive(Default)]
struct KeptRefusals(VecDeque<KeptRefusal>);

impl KeptRefusals {
    /// The refusal of `request` kept less than [`DEFAULT_RETRY_AFTER_FAILURE`] ago.
    fn recent(&self, request: &Asked, now: tokio::time::Instant) -> Option<CredentialError> {
        self.0
            .iter()
            .find(|kept| kept.request == *request && is_recent(kept.at, now))
            .map(|kept| kept.error.clone())
    }

    /// Keeps `error` as the answer to `request`, in place of an earlier refusal of it.
    fn keep(&mut self, request: Asked, error: CredentialError, now: tokio::time::Instant) {
        self.0
            .retain(|kept| kept.request != request && is_recent(kept.at, now));
        if self.0.len() >= KEPT_REFUSALS {
            self.0.pop_front();
        }
        self.0.push_back(KeptRefusal {
            request,
            at: now,
            error,
        });
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Whether a refusal kept at `at` still answers its request at `now`.
fn is_recent(at: tokio::time::Instant, now: tokio::time::Instant) -> bool {
    now.saturating_duration_since(at) < DEFAULT_RETRY_AFTER_FAILURE
}

/// An authorization code and the PKCE verifier of the sign-in that issued it: sent together
/// by each redemption attempt until one succeeds (a failed attempt is not resent by the
/// transport, but a later call tries again), and forgotten (zeroed) together once redeemed
/// or refused for good.
#[derive(Clone)]
struct Code {
    code: Secret,
    verifier: Option<Secret>,
}

/// What the redemption obtained, and for which request.
#[derive(Clone)]
struct Redeemed {
    token: AccessToken,
    key: CacheKey,
    account: Option<String>,
}

enum Step {
    Account(String),
    Join {
        redemption: Flight<Redeemed>,
        /// It redeems the code for this call's own request (this call's, or another call's
        /// for the same tenant, scopes, CAE and claims).
        for_this_request: bool,
    },
}

impl AuthorizationCodeCredential {
    /// Starts a builder; nothing is validated until `build`.
    pub fn builder(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        authorization_code: impl Into<Secret>,
        redirect_uri: impl Into<String>,
    ) -> AuthorizationCodeCredentialBuilder {
        AuthorizationCodeCredentialBuilder {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            code: authorization_code.into(),
            redirect_uri: redirect_uri.into(),
            code_verifier: None,
            client_secret: None,
            settings: Settings::default(),
        }
    }
}

impl Inner {
    async fn get_token(
        self: &Arc<Self>,
        request: TokenRequest,
    ) -> Result<AccessToken, CredentialError> {
        let plan = Plan::new(NAME, &request, |requested| {
            self.tenants.resolve_required(requested).map(str::to_owned)
        })?;
        let this = Arc::clone(self);
        plan.run(&self.memory, move |plan| async move {
            this.acquire(&plan.tenant, &plan.scopes, plan.cae, plan.claims)
                .await
        })
        .await
    }

    async fn acquire(
        self: Arc<Self>,
        tenant: &str,
        scopes: &[String],
        cae: bool,
        claims: Option<String>,
    ) -> Result<AccessToken, CredentialError> {
        let key = CacheKey::new(tenant, scopes, cae);
        let asked = Asked {
            tenant: tenant.to_owned(),
            scopes: scopes.to_vec(),
            cae,
            claims: claims.clone(),
            key: key.clone(),
        };
        // Every pass either returns or waits for a redemption to end; it goes round again
        // only after another request's redemption succeeded (the account is then pinned, or
        // the next pass answers that none was named) or was refused for that request or
        // throttled, so it never spins. A call that finds no redemption running starts one
        // for the oldest waiting request without a kept refusal or an answer (see `Line`):
        // its own once the calls before it are served, not after those that came later.
        let mut place: Option<InLine<'_>> = None;
        loop {
            let step = {
                let mut state = self.state.lock();
                let now = tokio::time::Instant::now();
                // The outcome of the redemption another call started for this call's request
                // (see `Line`): first, whatever came since.
                let ticket = place.as_ref().map(|place| place.ticket);
                if let Some(answer) = ticket
                    .and_then(|ticket| state.line.call(ticket))
                    .and_then(|call| call.answer.take())
                {
                    return answer;
                }
                if let Some(account) = &state.account {
                    Step::Account(account.clone())
                } else if let Some(error) = state.kept_refusals.recent(&asked, now) {
                    // Before joining any redemption: it could not change this answer.
                    return Err(error);
                } else if let Some(code) = state.code.clone() {
                    let ticket = match &place {
                        Some(place) => place.ticket,
                        None => {
                            let ticket = state.line.ticket();
                            place = Some(InLine {
                                state: &self.state,
                                ticket,
                            });
                            ticket
                        }
                    };
                    state.line.enter(ticket, &asked);
                    let step = if let Some(redemption) = state.running(&()) {
                        let for_this_request = state.redeeming.as_ref() == Some(&asked);
                        Step::Join {
                            redemption,
                            for_this_request,
                        }
                    } else {
                        // This call is in line, its request without a kept refusal.
                        let next = state
                            .line
                            .next(&state.kept_refusals, now)
                            .unwrap_or_else(|| asked.clone());
                        Step::Join {
                            redemption: self.start_redemption(&mut state, code, next.clone()),
                            for_this_request: next == asked,
                        }
                    };
                    let joined = state.redemptions;
                    if let Some(call) = state.line.call(ticket) {
                        call.joined = joined;
                    }
                    step
                } else if let Some(refused) = &state.refused {
                    return Err(refused.clone());
                } else {
                    // The code is forgotten once redeemed or refused: this one was redeemed,
                    // but its answer named no account, so no refresh token of it can be found
                    // again.
                    return Err(sign_in_again(
                        "the authorization code was redeemed, but Microsoft Entra ID's answer \
                         named no account (no client_info, no id token), so its refresh token \
                         cannot serve other requests; include the openid and profile scopes in \
                         the sign-in that issues the code",
                    ));
                }
            };
            match step {
                Step::Join {
                    redemption,
                    for_this_request,
                } => {
                    let redeemed = match redemption.await {
                        Ok(redeemed) => redeemed,
                        // Entra's refusal of another request (its scopes, its tenant, a
                        // throttled tenant) says nothing of this one, never sent: the code is
                        // this call's to send (once the calls before it are served).
                        Err(error) if !for_this_request && !fails_every_waiter(&error) => {
                            continue;
                        }
                        Err(error) => return Err(error),
                    };
                    // Its token answers this request when it was redeemed for it (the same
                    // claims too), or for the same scopes when this request carries no
                    // challenge (a token obtained with one serves it all the same).
                    let same = redeemed.key == key;
                    if for_this_request || (same && !carries_a_challenge(claims.as_deref())) {
                        return Ok(redeemed.token);
                    }
                    // Another request's redemption: the account is pinned now; go on with it.
                }
                Step::Account(account) => {
                    return self
                        .for_account(&account, tenant, scopes, cae, claims)
                        .await;
                }
            }
        }
    }

    /// Starts the redemption of `code` for `request`, under the lock.
    fn start_redemption(
        self: &Arc<Self>,
        state: &mut FlightLock<'_, (), Redeemed, CodeState>,
        code: Code,
        request: Asked,
    ) -> Flight<Redeemed> {
        let redeem = self.redeem(
            code,
            &request.tenant,
            &request.scopes,
            request.cae,
            request.claims.clone(),
        );
        state.redeeming = Some(request.clone());
        state.redemptions = state.redemptions.wrapping_add(1);
        let this_redemption = state.redemptions;
        let refused_request = request;
        // The code is forgotten and the account pinned as the redemption ends; a code Entra
        // refused for good is forgotten too, its refusal kept as the answer to later calls. A
        // refusal of this request only (see `keeps_the_code`) keeps it: another request may
        // redeem it. The calls answering its outcome leave the line; see `Line`.
        state.start((), WhenAbandoned::RunOn, redeem, move |state, result| {
            // The code is retried after a redemption with no definite answer (it usually was
            // not consumed); if it was, the retry is told "already redeemed", which hides the
            // real failure: that error names it.
            let result = result.map_err(|error| match &state.undecided {
                Some(earlier) if error.error_codes().contains(&ALREADY_REDEEMED) => error
                    .with_message_prefix(&format!(
                        "an earlier redemption of this authorization code got no definite \
                         answer ({earlier}), so it may have used the code: "
                    )),
                _ => error,
            });
            if let Err(error) = &result {
                if let Some(cause) = no_definite_answer(error) {
                    state.undecided = Some(cause);
                }
            }
            let every = result.as_ref().is_err_and(fails_every_waiter);
            // An outcome not kept in the state (a failure, or a token of no account): the
            // answer of the calls for this request that did not join this redemption (they
            // were not running as it started).
            let answer = match &result {
                Ok(redeemed) if redeemed.account.is_none() => Some(Ok(&redeemed.token)),
                Err(error) if !code_is_spent(error) && !keeps_the_code(error) => Some(Err(error)),
                _ => None,
            };
            state.line.calls.retain_mut(|call| {
                if call.joined == this_redemption {
                    !every && call.request != refused_request
                } else if call.request != refused_request {
                    true
                } else if let Some(answer) = answer {
                    call.answer = Some(answer.cloned().map_err(Clone::clone));
                    true
                } else {
                    false
                }
            });
            match &result {
                Ok(redeemed) => {
                    state.code = None;
                    state.kept_refusals.clear();
                    state.account.clone_from(&redeemed.account);
                }
                Err(error) if code_is_spent(error) => {
                    state.code = None;
                    state.kept_refusals.clear();
                    state.refused = Some(error.clone());
                }
                Err(error) if keeps_the_code(error) => {
                    state.kept_refusals.keep(
                        refused_request,
                        error.clone(),
                        tokio::time::Instant::now(),
                    );
                }
                Err(_) => {}
            }
            result
        })
    }

    /// Redeems the code. Run once, as a flight in its own task (see [`crate::flight`]): a
    /// caller giving up does not lose the code's one use for the others.
    fn redeem(
        self: &Arc<Self>,
        code: Code,
        tenant: &str,
        scopes: &[String],
        cae: bool,
        claims: Option<String>,
    ) -> impl Future<Output = Result<Redeemed, CredentialError>> + Send + 'static {
        let this = Arc::clone(self);
        let (tenant, scopes) = (tenant.to_owned(), scopes.to_vec());
        async move {
            let form = authorization_code_form(
                &this.client_id,
                &code.code,
                code.verifier.as_ref(),
                &this.redirect_uri,
                &scopes,
                claims,
                this.client_secret.as_ref(),
            );
            // A code refused (expired, already redeemed) needs a new sign-in.
            let response = this
                .client
                .request(NAME, &tenant, form)
                .await
                .map_err(|error| {
                    if refuses_the_grant(&error) {
                        with_sign_in_advice(NAME, error)
                    } else {
                        error
                    }
                })?;
            let (store, _) = this.stores.for_request(cae);
            let redeem = Redeem {
                credential: NAME,
                client: &this.client,
                store,
                unwritten: Some(&this.stores.unwritten),
                refusals: None,
                client_id: &this.client_id,
                client_secret: this.client_secret.as_ref(),
                tenant: &tenant,
                scopes: &scopes,
                claims: None,
                user_grant: true,
            };
            // Kept in memory when the cache cannot be written (see `Unwritten`).
            redeem.record(&response, None).await;
            let account = answer_account(&response);
            if account.is_none() {
                tracing::warn!(
                    "the authorization code's answer named no account: later requests cannot use its refresh token"
                );
            }
            Ok(Redeemed {
                token: response.token,
                key: CacheKey::new(&tenant, &scopes, cae),
                account,
            })
        }
    }

    /// The pinned account's cached token, else its refresh tokens.
    async fn for_account(
        &self,
        account: &str,
        tenant: &str,
        scopes: &[String],
        cae: bool,
        claims: Option<String>,
    ) -> Result<AccessToken, CredentialError> {
        let silent = Silent {
            credential: NAME,
            client: &self.client,
            stores: &self.stores,
            client_id: &self.client_id,
            client_secret: self.client_secret.as_ref(),
        };
        match silent.token(account, tenant, scopes, cae, claims).await? {
            Some(token) => Ok(token),
            None => Err(sign_in_again(
                "no cached token and no refresh token for the account",
            )),
        }
    }
}

/// The `invalid_grant` codes that say the authorization code itself can never be redeemed,
/// whatever the request: Entra forgets nothing else about a code, so only these make it
/// forgotten before a success (the reference forgets it only after one).
/// * 54005 — the code was already redeemed;
/// * 70008 — the code has expired (or was revoked);
/// * 50148 — the PKCE `code_verifier` does not match the `code_challenge` of the sign-in;
/// * 501481 — the same, the code_verifier does not match the code_challenge;
/// * 9002313 — the request is malformed or invalid: for a redemption, a code Entra cannot
///   read (truncated, altered); the code and the verifier are what every redemption sends
///   again unchanged;
/// * 50011 and 500112 — the redirect URI does not match the one the code was issued for
///   (Entra answers 70002 with 50011 among its codes): this credential's redirect URI is
///   fixed, so no later redemption can succeed either.
const CODE_SPENT: [u32; 7] = [54_005, 70_008, 50_148, 501_481, 9_002_313, 50_011, 500_112];

/// AADSTS54005: the authorization code was already redeemed.
const ALREADY_REDEEMED: u32 = 54_005;

/// What a failed redemption met instead of a definite answer, when Entra may have redeemed the
/// code all the same: no answer in time, the connection lost after the request was sent, a
/// server error, an answer that could not be read, the redemption cut off. `None` when the
/// code surely was not used: a refusal (an OAuth error answer below 500), a connection that
/// could not be made, a TLS or proxy failure before anything was sent, throttling (a 429 is
/// not processed; a single-use request is retried only after those, see
/// [`SingleUse`](crate::transport::SingleUse)). Names a kind, never the error's text.
fn no_definite_answer(error: &CredentialError) -> Option<String> {
    use crate::transport::TransportErrorKind;
    if error.is_unfinished() {
        return Some("the redemption did not finish".to_owned());
    }
    if error.is_timeout() {
        return Some("no answer in time".to_owned());
    }
    if error.is_connect() || error.is_throttled() {
        return None;
    }
    if let Some(status) = error.status() {
        return if status.is_server_error() {
            Some(format!("a server error, HTTP {}", status.as_u16()))
        } else if error.error_code().is_none() {
            Some(format!(
                "an answer that could not be read, HTTP {}",
                status.as_u16()
            ))
        } else {
            None
        };
    }
    match error.transport_kind() {
        Some(
            TransportErrorKind::Connect
            | TransportErrorKind::Tls
            | TransportErrorKind::Proxy
            | TransportErrorKind::Scheme,
        ) => None,
        Some(TransportErrorKind::TooLarge) => Some("an answer too large to read".to_owned()),
        Some(TransportErrorKind::Timeout) => Some("no answer in time".to_owned()),
        Some(TransportErrorKind::Io) => {
            Some("the connection failed after the request was sent".to_owned())
        }
        None if error.error_code().is_some() => None,
        None => Some("the request failed without an answer".to_owned()),
    }
}

/// Whether Entra refused the authorization code for good (see [`CODE_SPENT`]).
fn code_is_spent(error: &CredentialError) -> bool {
    error.error_code() == Some("invalid_grant")
        && error.error_codes().iter().any(|c| CODE_SPENT.contains(c))
}

/// Whether Entra refused the authorization code for the request only, keeping it, with the
/// refusal kept as that request's answer (see [`CodeState::kept_refusals`]): another request
/// may redeem it. A [refusal of the grant](refuses_the_grant) other than [`CODE_SPENT`]
/// (consent or MFA for these scopes, `interaction_required` and `consent_required` too, a
/// Conditional Access policy of this resource, a code not known here), `invalid_scope` and
/// `invalid_resource` (a scope or resource this request named). Other refusals keep the code
/// too but are not kept in the state: `invalid_client` or `unauthorized_client` may refuse
/// the app in one tenant only (AADSTS700016: not found in that directory) or in all; the
/// calls for that request still in line get it as their answer ([`Line`]), and the next new
/// call, for any request, sends the code again. Which calls a refusal answers is
/// [`fails_every_waiter`]'s, not this.
fn keeps_the_code(error: &CredentialError) -> bool {
    match error.error_code() {
        Some("invalid_scope" | "invalid_resource") => true,
        _ => refuses_the_grant(error) && !code_is_spent(error),
    }
}

/// Whether a failure of the redemption for another request is also the answer of a call that
/// waited for it, its own request never sent. Yes when it concerns the code, not the request
/// ([`code_is_spent`]: sent again, it could only be refused again), or when Entra did not
/// refuse anything: no answer (a timeout, a connection failure), an answer that is no OAuth
/// error, Entra unavailable (a server error or a 429 without `Retry-After`, outlasting the
/// retries: sending again at once would only add load), the redemption not finished (a
/// panic, no runtime). No for Entra's refusals of that request (its scopes, its claims, its
/// tenant: `unauthorized_client` AADSTS700016 and `invalid_request` 90002 name one
/// directory): this call sends the code for its own request and gets its own answer (an
/// `invalid_client` for a wrong secret, say, is then refused again, once per request). No for
/// a throttled answer either: Entra throttles per tenant, and the token client keeps each
/// `Retry-After` per token endpoint, so this call's own request is answered at once, without
/// being sent, when it is for the same tenant, and sent when it is for another.
fn fails_every_waiter(error: &CredentialError) -> bool {
    if code_is_spent(error) {
        return true;
    }
    if error.is_throttled() {
        return false;
    }
    error.error_code().is_none() || error.is_transient()
}

fn sign_in_again(why: &str) -> CredentialError {
    CredentialError::authentication_failed(
        NAME,
        format!("{why}. Sign the user in again to get a new authorization code"),
    )
}

arc_credential_service!(AuthorizationCodeCredential);

impl fmt::Debug for AuthorizationCodeCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct(NAME)
            .field(
                "tenant_id",
                &self.inner.tenants.tenant().unwrap_or_default(),
            )
            .field("client_id", &self.inner.client_id)
            .field("redirect_uri", &self.inner.redirect_uri)
            .field(
                "code_redeemed",
                &(state.code.is_none() && state.refused.is_none()),
            )
            .field("code_refused", &state.refused.is_some())
            .field("account", &state.account)
            .field("store", &self.inner.stores.plain)
            .finish_non_exhaustive()
    }
}

/// Settings for an [`AuthorizationCodeCredential`].
pub struct AuthorizationCodeCredentialBuilder {
    tenant_id: String,
    client_id: String,
    code: Secret,
    redirect_uri: String,
    code_verifier: Option<Secret>,
    client_secret: Option<Secret>,
    settings: Settings,
}

impl AuthorizationCodeCredentialBuilder {
    settings_setters!(settings; authority_host, additionally_allowed_tenants, http_client,
        cache_options, disable_multitenant_auth);
}

impl AuthorizationCodeCredentialBuilder {
    /// The client secret, for a confidential (web) application.
    pub fn client_secret(mut self, secret: impl Into<Secret>) -> Self {
        self.client_secret = Some(secret.into());
        self
    }

    /// The PKCE code verifier (RFC 7636) of the sign-in that issued the code: the secret
    /// whose hash went with the authorization request as its `code_challenge`. Entra
    /// redeems such a code only with it (single-page-application redirect URIs always use
    /// PKCE, and so do msal's sign-ins). Sent with the code, by every redemption attempt
    /// until one succeeds (as azure-identity resends the code), and forgotten with it; a
    /// secret: never shown in `Debug` output, errors or traces. 43 to 128 characters of
    /// `A-Z a-z 0-9 - . _ ~`.
    pub fn code_verifier(mut self, verifier: impl Into<Secret>) -> Self {
        self.code_verifier = Some(verifier.into());
        self
    }

    /// Validates (tenant, client id, code, redirect URI, code verifier, authority, cache options) and builds.
    pub fn build(self) -> Result<AuthorizationCodeCredential, ConfigError> {
        let fail = |m: String| ConfigError::new(format!("{NAME}: {m}"));
        if self.client_id.trim().is_empty() {
            return Err(fail("client id is empty".into()));
        }
        if self.code.expose_secret().trim().is_empty() {
            return Err(fail("authorization code is empty".into()));
        }
        if self.redirect_uri.trim().is_empty() {
            return Err(fail(
                "redirect URI is empty; use the one the code was issued for".into(),
            ));
        }
        // What a verifier must be, never the value: it is a secret.
        if self
            .code_verifier
            .as_ref()
            .is_some_and(|v| !is_code_verifier(v.expose_secret()))
        {
            return Err(fail(
                "the code verifier is not a PKCE verifier (RFC 7636: 43 to 128 characters of \
                 A-Z, a-z, 0-9, '-', '.', '_', '~')"
                    .into(),
            ));
        }
        let tenants = self.settings.tenants(NAME, Some(&self.tenant_id))?;
        let client = self
            .settings
            .token_client(NAME, self.settings.env_authority(NAME, &Vars::default())?)?;
        let stores = Stores::from_settings(&self.settings, NAME)?;
        Ok(AuthorizationCodeCredential {
            inner: Arc::new(Inner {
                tenants,
                client_id: self.client_id,
                client_secret: self.client_secret,
                redirect_uri: self.redirect_uri,
                client,
                memory: TokenCache::new(NAME),
                stores,
                state: SingleFlight::new(
                    NAME,
                    "the code redemption",
                    CodeState {
                        code: Some(Code {
                            code: self.code,
                            verifier: self.code_verifier,
                        }),
                        account: None,
                        refused: None,
                        undecided: None,
                        kept_refusals: KeptRefusals::default(),
                        redeeming: None,
                        redemptions: 0,
                        line: Line::default(),
                    },
                ),
            }),
        })
    }
}

impl fmt::Debug for AuthorizationCodeCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCodeCredentialBuilder")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("authorization_code", &self.code)
            .field("redirect_uri", &self.redirect_uri)
            .field("code_verifier", &self.code_verifier)
            .field("client_secret", &self.client_secret)
            .field("settings", &self.settings)
            .finish()
    }
}

/// Whether `value` is a PKCE code verifier (RFC 7636 §4.1).
fn is_code_verifier(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::task::Poll;

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use super::*;
    use crate::error::BoxError;
    use crate::transport::{HttpClient, HttpRequest};

    /// `https://{name}.test/.default`: one request's scope.
    fn scope(name: &str) -> Vec<String> {
        vec![format!("https://{name}.test/.default")]
    }

    /// How the in-process Entra answers a request.
    #[derive(Clone, Copy)]
    enum Answer {
        /// Refused for the request (AADSTS65001: no consent), the code kept.
        NoConsent,
        /// Refused, the code kept and the refusal not (`invalid_client`).
        InvalidClient,
        /// No answer: the connection failed.
        NoConnection,
        /// A token, its answer naming no account (no `client_info`, no id token).
        TokenOfNoAccount,
    }

    /// A credential whose token requests Entra answers in-process: every one refused for its
    /// request (AADSTS65001: no consent), the code kept; the one for [`scope`]`("first")`
    /// only once `gate` is opened. Each request's scope goes to the log, in order.
    fn credential(gate: &Arc<tokio::sync::Notify>) -> (Arc<Mutex<Vec<String>>>, Arc<Inner>) {
        credential_answering(gate, |_| Answer::NoConsent)
    }

    /// [`credential`], each request answered as `answer` says for its [`scope`] name.
    fn credential_answering(
        gate: &Arc<tokio::sync::Notify>,
        answer: fn(&str) -> Answer,
    ) -> (Arc<Mutex<Vec<String>>>, Arc<Inner>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (sent, gate) = (Arc::clone(&log), Arc::clone(gate));
        let service = tower::service_fn(move |request: HttpRequest| {
            let (sent, gate) = (Arc::clone(&sent), Arc::clone(&gate));
            async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let scope = url::form_urlencoded::parse(&body)
                    .find(|(k, _)| k == "scope")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                sent.lock().unwrap().push(scope.clone());
                if scope.contains("first.test") {
                    gate.notified().await;
                }
                let name = name_of(&scope);
                let body = match answer(&name) {
                    Answer::NoConsent => serde_json::json!({
                        "error": "invalid_grant",
                        "error_description": "AADSTS65001: The user has not consented.",
                        "error_codes": [65001],
                    }),
                    Answer::InvalidClient => serde_json::json!({
                        "error": "invalid_client",
                        "error_description": "AADSTS7000215: Invalid client secret provided.",
                        "error_codes": [7000215],
                    }),
                    Answer::NoConnection => return Err(BoxError::from("connection refused")),
                    Answer::TokenOfNoAccount => serde_json::json!({
                        "token_type": "Bearer",
                        "access_token": format!("at-{name}"),
                        "expires_in": 3600,
                    }),
                };
                let status = if body.get("error").is_some() {
                    400
                } else {
                    200
                };
                Ok::<_, BoxError>(
                    http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Bytes::from(body.to_string()))
                        .unwrap(),
                )
            }
        });
        let credential = AuthorizationCodeCredential::builder(
            "contoso",
            "client",
            "code",
            "http://localhost/cb",
        )
        .http_client(HttpClient::from_service(service))
        .build()
        .unwrap();
        (log, credential.inner)
    }

    /// Lets the spawned calls run until `n` requests were sent.
    async fn until_sent(log: &Mutex<Vec<String>>, n: usize) {
        for _ in 0..100 {
            if log.lock().unwrap().len() >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{n} requests not sent: {:?}", log.lock().unwrap());
    }

    /// A request's [`scope`] name, from its `scope` parameter.
    fn name_of(scope: &str) -> String {
        let names = ["first", "waiting", "newer"];
        let name = names.iter().find(|n| scope.contains(&format!("{n}.test")));
        name.map_or_else(|| scope.to_owned(), |n| (*n).to_owned())
    }

    /// Which requests were sent, by their [`scope`] names.
    fn sent(log: &Mutex<Vec<String>>) -> Vec<String> {
        log.lock().unwrap().iter().map(|s| name_of(s)).collect()
    }

    /// A call for the [`scope`] `name` in tenant contoso.
    async fn call(inner: &Arc<Inner>, name: &str) -> Result<AccessToken, CredentialError> {
        Arc::clone(inner)
            .acquire("contoso", &scope(name), false, None)
            .await
    }

    /// A call not polled since it did (see [`waiting_behind_first`]).
    type Waiting =
        std::pin::Pin<Box<dyn Future<Output = Result<AccessToken, CredentialError>> + Send>>;

    /// A call for "first" sent, held at `gate`, and a call for "waiting" that joined its
    /// redemption and is not polled again: the gate, the log, the credential (each request
    /// answered as `answer` says), the first call's task and the waiting call.
    async fn waiting_behind_first(
        answer: fn(&str) -> Answer,
    ) -> (
        Arc<tokio::sync::Notify>,
        Arc<Mutex<Vec<String>>>,
        Arc<Inner>,
        tokio::task::JoinHandle<Result<AccessToken, CredentialError>>,
        Waiting,
    ) {
        let gate = Arc::new(tokio::sync::Notify::new());
        let (log, inner) = credential_answering(&gate, answer);
        let first = tokio::spawn({
            let inner = Arc::clone(&inner);
            async move { call(&inner, "first").await }
        });
        until_sent(&log, 1).await;
        let mut waiting: Waiting = Box::pin({
            let inner = Arc::clone(&inner);
            async move { call(&inner, "waiting").await }
        });
        let joined = std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx).is_pending()));
        assert!(joined.await, "the waiting call joined the redemption");
        (gate, log, inner, first, waiting)
    }

    /// A call that waited for the redemption for "first", refused (the code kept), has not
    /// taken the lock again (its thread busy) when a newer call for another request finds no
    /// redemption running: the newer call redeems the code for the waiting call's request
    /// first, then for its own; the waiting call, polled at last, answers its refusal without
    /// sending anything. Before, the newer call sent the code for its own request first (the
    /// waiting one could be overtaken so by every new request), and the waiting call after.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_is_served_before_a_newer_one() {
        let (gate, log, inner, first, waiting) = waiting_behind_first(|_| Answer::NoConsent).await;
        gate.notify_one();
        let first = first.await.unwrap().unwrap_err();
        assert_eq!(first.error_codes(), [65001], "{first}");

        // The waiting call has not run since: the newer one takes the lock first.
        let newer = call(&inner, "newer").await.unwrap_err();
        assert_eq!(newer.error_codes(), [65001], "{newer}");
        assert_eq!(sent(&log), ["first", "waiting", "newer"]);
        let waiting = waiting.await.unwrap_err();
        assert_eq!(waiting.error_codes(), [65001], "{waiting}");
        assert_eq!(sent(&log), ["first", "waiting", "newer"]);
        assert!(inner.state.lock().line.calls.is_empty());
    }

    /// A waiting call dropped (its task cancelled) leaves the line: the newer call redeems
    /// the code for its own request, not for the dropped call's.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiting_call_leaves_the_line() {
        let (gate, log, inner, first, waiting) = waiting_behind_first(|_| Answer::NoConsent).await;
        assert_eq!(inner.state.lock().line.calls.len(), 2);
        drop(waiting);
        assert_eq!(inner.state.lock().line.calls.len(), 1);
        gate.notify_one();
        first.await.unwrap().unwrap_err();
        let newer = call(&inner, "newer").await.unwrap_err();
        assert_eq!(newer.error_codes(), [65001], "{newer}");
        assert_eq!(sent(&log), ["first", "newer"]);
        assert!(inner.state.lock().line.calls.is_empty());
    }

    /// A call whose request was refused less than 30 s ago, the code kept, gets that refusal
    /// at once, also while a redemption for another request runs: that redemption could not
    /// change its answer. Before, it waited for that redemption first.
    #[tokio::test(start_paused = true)]
    async fn a_kept_refusal_answers_at_once_while_another_request_redeems() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let (log, inner) = credential(&gate);
        let refused = call(&inner, "waiting").await.unwrap_err();
        assert_eq!(refused.error_codes(), [65001], "{refused}");
        let first = tokio::spawn({
            let inner = Arc::clone(&inner);
            async move { call(&inner, "first").await }
        });
        until_sent(&log, 2).await;
        let again_scopes = scope("waiting");
        let mut again =
            std::pin::pin!(Arc::clone(&inner).acquire("contoso", &again_scopes, false, None));
        let answered = std::future::poll_fn(|cx| Poll::Ready(again.as_mut().poll(cx)));
        match answered.await {
            Poll::Ready(Err(error)) => assert_eq!(error.error_codes(), [65001], "{error}"),
            Poll::Ready(Ok(_)) => panic!("a token"),
            Poll::Pending => panic!("waited for the redemption for another request"),
        }
        gate.notify_one();
        first.await.unwrap().unwrap_err();
        assert_eq!(sent(&log), ["waiting", "first"]);
    }

    /// A request is the same whatever the order of its scopes (the token cache's rule): a
    /// refusal kept for `[a, b]` answers `[b, a]` without sending the code again. Before, the
    /// scopes were compared in order, and the code was sent once per order.
    #[tokio::test(start_paused = true)]
    async fn a_kept_refusal_answers_the_same_scopes_in_another_order() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let (log, inner) = credential(&gate);
        let mut scopes = scope("waiting");
        scopes.push("offline_access".to_owned());
        let ask = |scopes: Vec<String>| {
            let inner = Arc::clone(&inner);
            async move { inner.acquire("contoso", &scopes, false, None).await }
        };
        let refused = ask(scopes.clone()).await.unwrap_err();
        assert_eq!(refused.error_codes(), [65001], "{refused}");
        scopes.reverse();
        let again = ask(scopes).await.unwrap_err();
        assert_eq!(again.error_codes(), [65001], "{again}");
        let sent = log.lock().unwrap().clone();
        assert_eq!(sent.len(), 1, "the code sent again: {sent:?}");
    }

    /// The redemption for "first" gets no answer (the connection fails): the call that
    /// joined it for another request answers that failure too, so it leaves the line as the
    /// redemption ends, and a newer call taking the lock before it runs again redeems the
    /// code for its own request. Before, the waiting call stayed in line until it ran, and the
    /// newer call sent the code for the waiting call's request first (no call wanted that
    /// answer: the waiting call answers the failure).
    #[tokio::test(start_paused = true)]
    async fn a_failure_of_every_waiter_takes_them_all_out_of_line() {
        let (gate, log, inner, first, waiting) = waiting_behind_first(|name| match name {
            "first" => Answer::NoConnection,
            _ => Answer::NoConsent,
        })
        .await;
        gate.notify_one();
        let first = first.await.unwrap().unwrap_err();
        assert!(first.error_code().is_none(), "{first}");
        assert!(inner.state.lock().line.calls.is_empty());

        let newer = call(&inner, "newer").await.unwrap_err();
        assert_eq!(newer.error_codes(), [65001], "{newer}");
        assert_eq!(sent(&log), ["first", "newer"]);
        let waiting = waiting.await.unwrap_err();
        assert!(waiting.error_code().is_none(), "{waiting}");
        assert_eq!(sent(&log), ["first", "newer"]);
        assert!(inner.state.lock().line.calls.is_empty());
    }

    /// A call for "waiting" that joined the redemption for "first" (refused, the code kept) and
    /// is not polled again until a newer call has redeemed the code for its request, then for
    /// its own if the code is still there, with `answer` answering "waiting": the log, the
    /// credential, the newer call's outcome and the waiting call, still to be polled.
    async fn redeemed_for_a_waiting_call(
        answer: fn(&str) -> Answer,
    ) -> (
        Arc<Mutex<Vec<String>>>,
        Arc<Inner>,
        Result<AccessToken, CredentialError>,
        Waiting,
    ) {
        let (gate, log, inner, first, waiting) = waiting_behind_first(answer).await;
        gate.notify_one();
        let first = first.await.unwrap().unwrap_err();
        assert_eq!(first.error_codes(), [65001], "{first}");
        let newer = call(&inner, "newer").await;
        (log, inner, newer, waiting)
    }

    /// A newer call redeems the code for a waiting call's request, refused for it
    /// (`invalid_client`: the code kept, the refusal not) before the waiting call runs again:
    /// the waiting call gets that refusal, its request sent once. Before, the redemption's end
    /// took it out of line, and it sent the code for its request again.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_gets_the_outcome_of_the_redemption_for_its_request() {
        let (log, inner, newer, waiting) = redeemed_for_a_waiting_call(|name| match name {
            "waiting" => Answer::InvalidClient,
            _ => Answer::NoConsent,
        })
        .await;
        // The newer call redeemed the code for the waiting call's request, then for its own.
        let newer = newer.unwrap_err();
        assert_eq!(newer.error_codes(), [65001], "{newer}");
        assert_eq!(sent(&log), ["first", "waiting", "newer"]);
        let waiting = waiting.await.unwrap_err();
        assert_eq!(waiting.error_code(), Some("invalid_client"), "{waiting}");
        assert_eq!(sent(&log), ["first", "waiting", "newer"]);
        assert!(inner.state.lock().line.calls.is_empty());
    }

    /// The same when the redemption for the waiting call's request succeeds with a token whose
    /// answer named no account: the waiting call gets that token (no later call could find
    /// it). Before, it got the "named no account" error, the code spent on a token nobody got.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_gets_the_token_of_no_account_redeemed_for_its_request() {
        let (log, inner, newer, waiting) = redeemed_for_a_waiting_call(|name| match name {
            "waiting" => Answer::TokenOfNoAccount,
            _ => Answer::NoConsent,
        })
        .await;
        // The code is spent, on a token of no account.
        let newer = newer.unwrap_err();
        assert!(newer.message().contains("named no account"), "{newer}");
        let token = waiting.await.unwrap();
        assert_eq!(token.secret().expose_secret(), "at-waiting");
        assert_eq!(sent(&log), ["first", "waiting"]);
        assert!(inner.state.lock().line.calls.is_empty());
    }
}
