//! What the user credentials (authorization code, device code, shared token cache) do with an
//! MSAL cache document: find a cached access token worth returning, redeem refresh tokens in
//! turn, and record the answers — rotated refresh tokens included — the way MSAL does.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::settings::Settings;
use super::{device_code, shared_token_cache};
use crate::entra::msal_cache::{
    AccessTokenQuery, CacheDocument, NewTokens, RefreshToken, RefreshTokenQuery, newest_first,
};
use crate::entra::persistence::PersistenceError;
use crate::entra::store::TokenStore;
use crate::entra::token_client::{
    TokenClient, TokenResponse, carries_a_challenge, refresh_token_form,
};
use crate::error::{ConfigError, CredentialError, ErrorKind, ProviderDetails};
use crate::refresh::DEFAULT_RETRY_AFTER_FAILURE;
use crate::token::{AccessToken, Secret, instant_from_unix, unix_now};

/// A cached access token is returned only with more than this left (the reference's rule,
/// the same as the refresh window).
const MIN_REMAINING: Duration = Duration::from_secs(300);

/// A cached access token worth returning.
pub(crate) enum Cached {
    /// Before its refresh time: returned as it is.
    Fresh(AccessToken),
    /// Its refresh time (`refresh_on`) has come: msal's "aging" token. A new token is asked
    /// for first (a refresh token redeemed), and this one returned when that fails (see
    /// [`or_aging`]). Its `refresh_on`, past, stays on it: handed back to a refresh slot by a
    /// renewal, it counts as a failed renewal, tried again after the spacing. Handed back by
    /// a slot's first acquisition (nothing held yet), it is stored due, and the next request
    /// starts a renewal at once: one more attempt, then the spacing.
    Aging(AccessToken),
}

/// The cached access token for `query` with the most time left, if more than 300 s remain.
pub(crate) fn usable_access_token(
    doc: &CacheDocument,
    query: &AccessTokenQuery<'_>,
) -> Option<Cached> {
    let now = unix_now();
    doc.find_access_tokens(query)
        .into_iter()
        .filter(|at| at.expires_on > now.saturating_add(MIN_REMAINING.as_secs()))
        .max_by_key(|at| at.expires_on)
        .map(|at| {
            let expires_on = instant_from_unix(at.expires_on);
            // Never after the expiry: a file may say so, and two clamped times can too.
            let refresh_on = at.refresh_on.map(|r| instant_from_unix(r).min(expires_on));
            let token = AccessToken::new(at.secret, expires_on)
                .with_refresh_on(refresh_on)
                .with_token_type(at.token_type);
            // Reached in the same second counts: wall-clock seconds are floored, so a slot
            // renewing at the instant `refresh_on` names reads a Unix time at or past it.
            if at.refresh_on.is_some_and(|r| r <= now) {
                Cached::Aging(token)
            } else {
                Cached::Fresh(token)
            }
        })
}

/// What a request for an [aging](Cached::Aging) token's key came to: its token, else the
/// aging token (still valid) in place of its error, as msal does. Without an aging token, the
/// request's outcome as it is.
pub(crate) fn or_aging(
    credential: &'static str,
    requested: Result<AccessToken, CredentialError>,
    aging: Option<AccessToken>,
) -> Result<AccessToken, CredentialError> {
    match (requested, aging) {
        (Err(error), Some(cached)) => {
            tracing::debug!(credential, %error, "renewing a token past its refresh time failed; the cached token, still valid, is returned");
            Ok(cached)
        }
        (outcome, _) => outcome,
    }
}

/// The ordinary and the CAE cache documents of a user credential, and the refresh token
/// neither could be written with.
pub(crate) struct Stores {
    pub(crate) plain: TokenStore,
    pub(crate) cae: TokenStore,
    pub(crate) unwritten: Unwritten,
    pub(crate) refusals: Refusals,
}

/// The refresh token of the last answer the cache could not be written with (a read-only or
/// damaged cache file, a locked keyring), and its account: the only copy. It is newer than
/// any the cache holds, so it is redeemed first; it is forgotten once a write for the account
/// succeeds, or when Entra says it is dead (see [`refusal`]; a refusal for one request, or
/// with a code not known here, keeps it). Without it, a user credential whose cache cannot be
/// written loses the sign-in as soon as its first access token expires (the authorization
/// code is spent; a device code sign-in would prompt again).
#[derive(Default)]
pub(crate) struct Unwritten(Mutex<Option<(String, Secret)>>);

impl Unwritten {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, Secret)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token kept for `account`.
    fn for_account(&self, account: &str) -> Option<Secret> {
        self.lock()
            .as_ref()
            .filter(|(kept, _)| kept == account)
            .map(|(_, secret)| secret.clone())
    }

    /// After an answer for `account` was recorded (`written`) or not: keeps its refresh
    /// token when it was not; forgets the one kept once the cache holds a successor (an
    /// answer with a refresh token, written). An answer without one leaves the kept token as
    /// the only one.
    fn after_record(&self, account: Option<&str>, written: bool, refresh_token: Option<&Secret>) {
        let (Some(account), Some(secret)) = (account, refresh_token) else {
            return;
        };
        let mut kept = self.lock();
        if !written {
            *kept = Some((account.to_owned(), secret.clone()));
        } else if kept.as_ref().is_some_and(|(a, _)| a == account) {
            *kept = None;
        }
    }

    /// Forgets `rejected` unless a concurrent redemption has replaced it meanwhile.
    fn forget(&self, rejected: &Secret) {
        let mut kept = self.lock();
        if kept
            .as_ref()
            .is_some_and(|(_, secret)| secret.expose_secret() == rejected.expose_secret())
        {
            *kept = None;
        }
    }
}

/// A refresh token to redeem: one of a store's, by its key, or the one kept in memory.
pub(crate) struct Candidate<'a> {
    secret: Secret,
    /// The entry's key and the store that holds it; `None` for the one kept in memory.
    entry: Option<(String, &'a TokenStore)>,
}

impl<'a> Candidate<'a> {
    /// `token`, read from `store`.
    pub(crate) fn stored(token: RefreshToken, store: &'a TokenStore) -> Self {
        Self {
            secret: token.secret,
            entry: Some((token.key, store)),
        }
    }
}

impl Stores {
    /// The shared cache files when the builder has cache options, else private memory.
    pub(crate) fn from_settings(settings: &Settings, name: &str) -> Result<Self, ConfigError> {
        Ok(match settings.files(name)? {
            Some((plain, cae)) => Self {
                plain,
                cae,
                unwritten: Unwritten::default(),
                refusals: Refusals::default(),
            },
            None => Self {
                plain: TokenStore::memory(),
                cae: TokenStore::memory(),
                unwritten: Unwritten::default(),
                refusals: Refusals::default(),
            },
        })
    }

    /// This request's document, then the other one.
    pub(crate) fn for_request(&self, cae: bool) -> (&TokenStore, &TokenStore) {
        if cae {
            (&self.cae, &self.plain)
        } else {
            (&self.plain, &self.cae)
        }
    }
}

/// A user credential's account, and how it gets tokens for it without the user.
pub(crate) struct Silent<'a> {
    pub(crate) credential: &'static str,
    pub(crate) client: &'a TokenClient,
    pub(crate) stores: &'a Stores,
    pub(crate) client_id: &'a str,
    pub(crate) client_secret: Option<&'a Secret>,
}

impl Silent<'_> {
    /// The account's cached token for the request, else one of its refresh tokens redeemed.
    /// `Ok(None)`: neither a usable token nor a refresh token.
    pub(crate) async fn token(
        &self,
        account: &str,
        tenant: &str,
        scopes: &[String],
        cae: bool,
        claims: Option<String>,
    ) -> Result<Option<AccessToken>, CredentialError> {
        let (store, other) = self.stores.for_request(cae);
        let environments = [self.client.authority().host()];
        let kept = self.stores.unwritten.for_account(account);
        let read = store.read().await;
        let mut aging = None;
        if let (Ok(doc), false) = (&read, carries_a_challenge(claims.as_deref())) {
            let query = AccessTokenQuery {
                home_account_id: Some(Some(account)),
                environments: &environments,
                client_id: Some(self.client_id),
                realm: Some(tenant),
                scopes,
            };
            match usable_access_token(doc, &query) {
                Some(Cached::Fresh(token)) => return Ok(Some(token)),
                Some(Cached::Aging(token)) => aging = Some(token),
                None => {}
            }
        }
        // Refresh tokens are not CAE-specific: those of both documents are tried, newest first
        // (this request's first among equals), the next after a refusal — a dead one in one
        // document must not hide a fresh one in the other (a sign-in since, for the other
        // kind of request). The one kept in memory (the cache could not take it) is tried
        // before them; a document that cannot be read is an error only when no refresh token
        // is found.
        let query = RefreshTokenQuery {
            home_account_id: account,
            environments: &environments,
            client_id: Some(self.client_id),
            family_only: false,
        };
        let mut found = Vec::new();
        let mut unreadable = None;
        for (from, read) in [(store, read), (other, other.read().await)] {
            match read {
                Ok(doc) => found.extend(
                    doc.find_refresh_tokens(&query)
                        .into_iter()
                        .map(|token| (token, from)),
                ),
                Err(error) => {
                    unreadable.get_or_insert(error);
                }
            }
        }
        // The kept token may be in a document too (a write that failed after its rename), and
        // a token in both documents (one answer recorded in each): each sent once.
        let mut seen: Vec<Secret> = kept.iter().cloned().collect();
        found.retain(|(token, _)| {
            let new = !seen
                .iter()
                .any(|s| s.expose_secret() == token.secret.expose_secret());
            if new {
                seen.push(token.secret.clone());
            }
            new
        });
        newest_first(&mut found, |(token, _)| token);
        let candidates: Vec<Candidate> = kept
            .map(|secret| Candidate {
                secret,
                entry: None,
            })
            .into_iter()
            .chain(
                found
                    .into_iter()
                    .map(|(token, from)| Candidate::stored(token, from)),
            )
            .collect();
        let redeemed = match unreadable {
            Some(error) if candidates.is_empty() => Err(self.unreadable(&error)),
            unreadable => {
                if let Some(error) = unreadable {
                    tracing::debug!(credential = self.credential, %error, "a token cache document is not readable; redeeming the refresh tokens found");
                }
                let redeem = Redeem {
                    credential: self.credential,
                    client: self.client,
                    store,
                    unwritten: Some(&self.stores.unwritten),
                    refusals: Some(&self.stores.refusals),
                    client_id: self.client_id,
                    client_secret: self.client_secret,
                    tenant,
                    scopes,
                    claims,
                    user_grant: true,
                };
                redeem.first_success(candidates).await
            }
        };
        // No refresh token to redeem: the aging token, if any, is all there is.
        match redeemed.transpose() {
            Some(redeemed) => or_aging(self.credential, redeemed, aging).map(Some),
            None => Ok(aging),
        }
    }

    fn unreadable(&self, error: &PersistenceError) -> CredentialError {
        CredentialError::authentication_failed(
            self.credential,
            format!("the token cache could not be read: {error}"),
        )
    }
}

/// Who is asking and how, for a refresh-token redemption; and where and for what a token
/// answer is recorded ([`record`](Self::record), which uses neither the secret nor the claims).
pub(crate) struct Redeem<'a> {
    pub(crate) credential: &'static str,
    pub(crate) client: &'a TokenClient,
    pub(crate) store: &'a TokenStore,
    /// Where the refresh token of an answer the store could not be written with is kept;
    /// `None` for credentials whose answers carry none.
    pub(crate) unwritten: Option<&'a Unwritten>,
    /// Where the refusals of refresh tokens are remembered, to answer the same request again
    /// without sending it; `None` for credentials that redeem none.
    pub(crate) refusals: Option<&'a Refusals>,
    pub(crate) client_id: &'a str,
    pub(crate) client_secret: Option<&'a Secret>,
    pub(crate) tenant: &'a str,
    pub(crate) scopes: &'a [String],
    pub(crate) claims: Option<String>,
    /// Whether the answers are to a user's grant (see [`NewTokens::user_grant`]).
    pub(crate) user_grant: bool,
}

impl Redeem<'_> {
    /// Redeems `candidates` in turn: the first success wins and is recorded (its refresh
    /// token rotated in place); after one the provider [refuses](is_refusal) the next is
    /// tried, and any other failure is returned at once. A rejected token is dropped from a
    /// private in-memory store and from [`Unwritten`] only when Entra says it is
    /// [dead](Refusal::Dead); a shared cache file keeps it. Each
    /// [refusal of the grant](refuses_the_grant) is remembered in [`Refusals`]: the same request with the same token gets it again, not
    /// sent, for a while. `Ok(None)` when there is no candidate; when none worked, the last
    /// refusal that leaves its token alive if there is one, else the last error (a refusal
    /// of the grant saying what to do): a caller deciding from it whether the account
    /// is dead must not read "dead" while a token refused for this request only still
    /// serves others (a rotated one in the CAE document refused for MFA, then an older one
    /// expired from disuse).
    pub(crate) async fn first_success(
        &self,
        candidates: Vec<Candidate<'_>>,
    ) -> Result<Option<AccessToken>, CredentialError> {
        let mut refused = Refused::default();
        for candidate in candidates {
            if let Some(error) = self
                .refusals
                .and_then(|refusals| refusals.recent(&candidate.secret, self))
            {
                tracing::debug!(
                    credential = self.credential,
                    "refresh token refused for this request moments ago; not sent again yet"
                );
                refused.add(self.claims.as_deref(), error);
                continue;
            }
            let form = refresh_token_form(
                self.client_id,
                &candidate.secret,
                self.scopes,
                self.claims.clone(),
                self.client_secret,
            );
            let error = match self
                .client
                .request(self.credential, self.tenant, form)
                .await
            {
                Ok(response) => {
                    // Recorded in this request's document; a key read from the other one
                    // names the same account's entry there, if it has one.
                    let replaces = candidate
                        .entry
                        .map(|(key, from)| (key, std::ptr::eq(from, self.store)));
                    self.record(&response, replaces).await;
                    return Ok(Some(response.token));
                }
                Err(error) => error,
            };
            // An outage, throttling or no answer would meet the next token too: returned at
            // once (as msal does), not waited out once per refresh token.
            if !is_refusal(&error) {
                return Err(error);
            }
            if !refuses_the_grant(&error) {
                refused.add(self.claims.as_deref(), error);
                continue;
            }
            // A refusal of the grant does not always mean the token is dead: a claims
            // challenge, MFA, consent or a Conditional Access policy of one resource refuses it
            // for this request only, and it still serves other scopes and tenants; and the
            // token in a shared file is also Visual Studio's or another application's sign-in. Like msal
            // (unlike azure-identity), it stays in the file. A token of a private in-memory
            // store, or the one kept in memory, is ours alone: dropping it when Entra says it
            // is dead spares a doomed request on every later call; one refused for a reason
            // not known here is kept, as msal keeps it (the refusal may be this request's
            // only, and it may be the account's only refresh token), and spaced by
            // `Refusals`.
            let dead = says_dead(self.claims.as_deref(), &error);
            match candidate.entry {
                None if dead => {
                    if let Some(unwritten) = self.unwritten {
                        unwritten.forget(&candidate.secret);
                    }
                }
                None => {}
                Some((_, store)) if store.is_shared() => {
                    tracing::debug!(
                        credential = self.credential,
                        "refresh token refused; left in the shared token cache"
                    );
                }
                Some((key, store)) if dead => {
                    tracing::debug!(
                        credential = self.credential,
                        "refresh token refused as dead; dropped from memory"
                    );
                    // Only while the entry still holds the rejected token: a concurrent
                    // redemption may have rotated it to a fresh one meanwhile.
                    let rejected = candidate.secret.clone();
                    if let Err(e) = store
                        .modify(move |doc| doc.remove_refresh_token(&key, &rejected))
                        .await
                    {
                        tracing::warn!(credential = self.credential, error = %e, "could not remove a rejected refresh token from the token cache");
                    }
                }
                Some(_) => {}
            }
            let error = with_sign_in_advice(self.credential, error);
            if let Some(refusals) = self.refusals {
                refusals.remember(&candidate.secret, self, &error);
            }
            refused.add(self.claims.as_deref(), error);
        }
        refused.into_error().map_or(Ok(None), Err)
    }

    /// Records a token answer in the store, as MSAL does: the answer's scopes (else the
    /// requested ones) for the tenant, the refresh token replacing `replaces` (the key of the
    /// one redeemed, and whether it was read from this store). Returns whether it was written. A failure to write is logged, not
    /// returned: the token itself is good, and its refresh token is kept in [`Unwritten`].
    pub(crate) async fn record(
        &self,
        response: &TokenResponse,
        replaces: Option<(String, bool)>,
    ) -> bool {
        let (replaces, replaces_read_here) = replaces.map_or((None, false), |(k, h)| (Some(k), h));
        let scopes: Vec<String> = match &response.scope {
            Some(scope) if !scope.trim().is_empty() => {
                scope.split_whitespace().map(str::to_owned).collect()
            }
            _ => self.scopes.to_vec(),
        };
        let client_id = self.client_id.to_owned();
        let environment = self.client.authority().host().to_owned();
        let realm = self.tenant.to_owned();
        let access_token = response.token.secret().clone();
        let token_type = response.token.token_type().to_owned();
        let (cached_at, expires_on, extended_expires_on, refresh_on) = (
            response.cached_at,
            response.expires_on,
            response.extended_expires_on,
            response.refresh_on,
        );
        let refresh_token = response.refresh_token.clone();
        let id_token = response.id_token.clone();
        let client_info = response.client_info.clone();
        let foci = response.foci.clone();
        let requested = self.scopes.to_vec();
        let user_grant = self.user_grant;
        let written = self
            .store
            .modify(move |doc| {
                let account = doc.add_token_response(&NewTokens {
                    client_id: &client_id,
                    environment: &environment,
                    realm: &realm,
                    scopes: &scopes,
                    access_token: &access_token,
                    token_type: &token_type,
                    cached_at,
                    expires_on,
                    extended_expires_on,
                    refresh_on,
                    refresh_token: refresh_token.as_ref(),
                    id_token: id_token.as_ref(),
                    client_info: client_info.as_deref(),
                    foci: foci.as_deref(),
                    replaces: replaces.as_deref(),
                    replaces_read_here,
                    user_grant,
                });
                // msal deletes the expired access tokens its search finds; this request's
                // search found these (the new token's is not one of them).
                doc.remove_expired_access_tokens_found(
                    &AccessTokenQuery {
                        home_account_id: Some(account.as_deref()),
                        environments: &[environment.as_str()],
                        client_id: None,
                        realm: None,
                        scopes: &requested,
                    },
                    unix_now(),
                );
                account
            })
            .await;
        let written = match written {
            Ok(_) => true,
            // By design with only the legacy file (a reader of another tool's sign-in): on
            // every rotation, so not worth a warning.
            Err(error) if error.is_legacy_only() => {
                tracing::debug!(credential = self.credential, %error, "the token was obtained and kept in memory");
                false
            }
            Err(error) => {
                tracing::warn!(credential = self.credential, %error, "the token was obtained but could not be written to the token cache");
                false
            }
        };
        if let Some(unwritten) = self.unwritten {
            unwritten.after_record(
                answer_account(response).as_deref(),
                written,
                response.refresh_token.as_ref(),
            );
        }
        written
    }
}

/// The refusals of a request's refresh tokens, to answer with when none worked: the last one
/// that leaves its token alive (see [`says_dead`]) wins over any dead one, else the last.
#[derive(Default)]
struct Refused {
    alive: Option<CredentialError>,
    dead: Option<CredentialError>,
}

impl Refused {
    fn add(&mut self, claims: Option<&str>, error: CredentialError) {
        if says_dead(claims, &error) {
            self.dead = Some(error);
        } else {
            self.alive = Some(error);
        }
    }

    fn into_error(self) -> Option<CredentialError> {
        self.alive.or(self.dead)
    }
}

/// The `invalid_grant` codes that refuse a refresh token for one request only: the token
/// still serves other resources (or the same one once the user has met the requirement in a
/// sign-in). Each is a requirement of the resource, the policy or the user's session for this
/// request, not a verdict on the token:
/// * 50005 — the device platform is not one a Conditional Access policy allows;
/// * 50072 — the user must enroll for multi-factor authentication (an interrupt);
/// * 50074 — strong authentication required (an MFA interrupt);
/// * 50076 — multi-factor authentication required (a location or configuration change);
/// * 50078 — the multi-factor authentication presented has expired;
/// * 50079 — the user must register for multi-factor authentication;
/// * 50097 — device authentication required;
/// * 50129 — the device is not workplace-joined, as a policy requires;
/// * 50131 — a Conditional Access policy failed (the device or the request does not meet it);
/// * 50158 — an external security challenge was not satisfied;
/// * 50199 — the user must confirm this request (a security interrupt);
/// * 53000 — the device is not in the required state (compliant) for a Conditional Access
///   policy;
/// * 53001 — the device is not domain-joined, as a Conditional Access policy requires;
/// * 53002 — the application is not an approved client application for the policy;
/// * 53003 — access blocked by a Conditional Access policy (of this resource);
/// * 53004 — the user must complete multi-factor authentication registration first;
/// * 65001 — no consent for this resource (or scope) yet;
/// * 65002 — the resource has not preauthorized this (first-party) client;
/// * 70000 — one of the requested scopes is not authorized (or its consent expired); Entra
///   also answers 70000 for a grant it cannot accept at all, which its `suberror`
///   (`bad_token`, `token_expired`) tells: that one is dead (see [`refusal`]);
/// * 70043 — the token is refused by a Conditional Access sign-in frequency check (of this
///   resource's policy).
const REFUSED_FOR_THIS_REQUEST: [u32; 20] = [
    50_005, 50_072, 50_074, 50_076, 50_078, 50_079, 50_097, 50_129, 50_131, 50_158, 50_199, 53_000,
    53_001, 53_002, 53_003, 53_004, 65_001, 65_002, 70_000, 70_043,
];

/// Entra's `suberror`s that ask the user for something in this request (so the refresh token
/// is refused for it only): a sign-in for a policy (`basic_action`), a step beyond it such as
/// accepting terms (`additional_action`), reading a message (`message_only`), consent
/// (`consent_required`), a password change (`user_password_expired`).
const SUBERRORS_FOR_THIS_REQUEST: [&str; 5] = [
    "basic_action",
    "additional_action",
    "message_only",
    "consent_required",
    "user_password_expired",
];

/// The `invalid_grant` codes that say the refresh token can never be redeemed again:
/// * 70008 — expired or revoked (inactivity, or revoked by an administrator);
/// * 700081 — expired: its maximum age is reached;
/// * 700082 — expired: unused for too long (90 days);
/// * 700084 — a single-page application's token, past its fixed lifetime;
/// * 50173 — revoked (the grant was revoked, e.g. after a password change);
/// * 50132 — the session was revoked (a password change or expiry);
/// * 50133 — the session is invalid (expired, or a recent password change);
/// * 50057 — the user's account is disabled;
/// * 50034 — the user's account does not exist in the directory;
/// * 500341 — the user's account was deleted;
/// * 700003 — the device the token was issued to was deleted;
/// * 700007 — the token was issued to another client.
const DEAD: [u32; 12] = [
    70_008, 700_081, 700_082, 700_084, 50_173, 50_132, 50_133, 50_057, 50_034, 500_341, 700_003,
    700_007,
];

/// Entra's `suberror`s that say the refresh token itself is no good: `bad_token` (invalid or
/// revoked), `token_expired`.
const DEAD_SUBERRORS: [&str; 2] = ["bad_token", "token_expired"];

/// The top-level `error`s besides `invalid_grant` with which Entra's token endpoint refuses a
/// grant because the user must act in a sign-in (the Microsoft identity platform's token
/// endpoint errors: `interaction_required`, an additional authentication step such as MFA;
/// `consent_required`, consent not given). Neither is a verdict on the refresh token: each is
/// a refusal of this request only (see [`refusal`]).
const REFUSED_FOR_THIS_REQUEST_ERRORS: [&str; 2] = ["interaction_required", "consent_required"];

/// Whether `error` is Entra's refusal of the grant sent (a refresh token, an authorization
/// code) rather than of the client or the request's form: `invalid_grant`, or one of
/// [`REFUSED_FOR_THIS_REQUEST_ERRORS`]. The one definition the user credentials decide by:
/// what [`refusal`] reads, what [`Refusals`] remembers, what makes a device code request
/// prompt.
pub(crate) fn refuses_the_grant(error: &CredentialError) -> bool {
    match error.error_code() {
        Some("invalid_grant") => true,
        Some(code) => REFUSED_FOR_THIS_REQUEST_ERRORS.contains(&code),
        None => false,
    }
}

/// What a refusal of the grant (see [`refuses_the_grant`]) means for the refresh token that
/// was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It can never be redeemed again: dropped from the credential's own memory.
    Dead,
    /// Refused for this request only: it still serves others.
    ForThisRequest,
    /// A code (or none) this crate does not know: kept, as msal keeps every refused one, the
    /// refusal remembered so that the same request is not sent again at once (see
    /// [`Refusals`]).
    Unknown,
}

/// What Entra's refusal of the grant (see [`refuses_the_grant`]) says about the refresh token
/// of a request carrying `claims`. A refusal of a request carrying a claims challenge
/// concerns that request only, whatever its code (the token's session cannot meet it; the
/// CAE capability alone is no challenge), and so does an `interaction_required` or
/// `consent_required` one (the user must act in a sign-in). For `invalid_grant`, the codes win
/// over the `suberror` (Entra sends `bad_token` beside 70043, a sign-in frequency check of one
/// resource): a code of this request only, then a dead code, then the `suberror`s the same
/// way.
pub(crate) fn refusal(claims: Option<&str>, error: &CredentialError) -> Refusal {
    let for_this_request = error
        .error_code()
        .is_some_and(|code| REFUSED_FOR_THIS_REQUEST_ERRORS.contains(&code));
    if for_this_request || carries_a_challenge(claims) {
        return Refusal::ForThisRequest;
    }
    let codes = error.error_codes();
    let suberror = error.suberror().unwrap_or_default();
    // 70000 is both a scope not authorized and a grant not accepted at all: the dead
    // suberror tells the second.
    let bad_grant = codes.contains(&70_000) && DEAD_SUBERRORS.contains(&suberror);
    if !bad_grant && codes.iter().any(|c| REFUSED_FOR_THIS_REQUEST.contains(c)) {
        Refusal::ForThisRequest
    } else if bad_grant || codes.iter().any(|c| DEAD.contains(c)) {
        Refusal::Dead
    } else if SUBERRORS_FOR_THIS_REQUEST.contains(&suberror) {
        Refusal::ForThisRequest
    } else if DEAD_SUBERRORS.contains(&suberror) {
        Refusal::Dead
    } else {
        Refusal::Unknown
    }
}

/// Whether `error` is a refusal of the refresh tokens that leaves them alive (a
/// [refusal of the grant](refuses_the_grant) that does not say they are
/// [dead](Refusal::Dead)): they still serve other requests.
pub(crate) fn refused_for_this_request(claims: Option<&str>, error: &CredentialError) -> bool {
    refuses_the_grant(error) && !says_dead(claims, error)
}

/// Whether `error` is a [refusal of the grant](refuses_the_grant) saying the refresh token
/// sent is [dead](Refusal::Dead).
pub(crate) fn says_dead(claims: Option<&str>, error: &CredentialError) -> bool {
    refuses_the_grant(error) && refusal(claims, error) == Refusal::Dead
}

/// How many refusals [`Refusals`] remembers: a credential sends a handful of distinct
/// requests; past that the oldest is forgotten (it is sent again, no worse than without).
const REMEMBERED_REFUSALS: usize = 32;

/// A refresh token's refusal for one request, answered again without a request for
/// [`DEFAULT_RETRY_AFTER_FAILURE`].
struct Remembered {
    /// SHA-256 of the refused token: no copy of a token is kept for this (a dead one was
    /// dropped everywhere else).
    token: [u8; 32],
    tenant: String,
    scopes: Vec<String>,
    claims: Option<String>,
    at: Instant,
    error: CredentialError,
}

/// The refresh tokens Entra refused lately ([refusals of the grant](refuses_the_grant)), by
/// request. A refused token that
/// is kept (refused for this request only, or for a reason this crate does not know) would
/// otherwise be sent again by every call that misses the cache — a retry loop hammering Entra
/// with a request it refused. The same request with the same token gets the same refusal,
/// without a request, for [`DEFAULT_RETRY_AFTER_FAILURE`]; another request, or a new token,
/// is sent. Bounded: see [`REMEMBERED_REFUSALS`].
#[derive(Default)]
pub(crate) struct Refusals(Mutex<VecDeque<Remembered>>);

impl Refusals {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Remembered>> {
        // Every write is a push or a removal: a panic elsewhere cannot leave it torn.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The refusals still recent, the others dropped.
    fn recent_only(&self) -> std::sync::MutexGuard<'_, VecDeque<Remembered>> {
        let mut remembered = self.lock();
        let now = Instant::now();
        remembered.retain(|r| now.saturating_duration_since(r.at) < DEFAULT_RETRY_AFTER_FAILURE);
        remembered
    }

    /// The refusal of `secret` for this request, while it is recent.
    fn recent(&self, secret: &Secret, request: &Redeem<'_>) -> Option<CredentialError> {
        let token = digest(secret);
        self.recent_only()
            .iter()
            .find(|r| r.is_for(&token, request))
            .map(|r| r.error.clone())
    }

    fn remember(&self, secret: &Secret, request: &Redeem<'_>, error: &CredentialError) {
        let token = digest(secret);
        let mut remembered = self.recent_only();
        remembered.retain(|r| !r.is_for(&token, request));
        if remembered.len() >= REMEMBERED_REFUSALS {
            remembered.pop_front();
        }
        remembered.push_back(Remembered {
            token,
            tenant: request.tenant.to_owned(),
            scopes: request.scopes.to_vec(),
            claims: request.claims.clone(),
            at: Instant::now(),
            error: error.clone(),
        });
    }
}

impl Remembered {
    fn is_for(&self, token: &[u8; 32], request: &Redeem<'_>) -> bool {
        self.token == *token
            && self.tenant == request.tenant
            && self.scopes == request.scopes
            && self.claims == request.claims
    }
}

/// SHA-256 of a refresh token, to recognise it without keeping it.
fn digest(secret: &Secret) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.expose_secret().as_bytes());
    // SHA-256 is 32 bytes: the fallback is never taken.
    <[u8; 32]>::try_from(digest.as_ref()).unwrap_or_default()
}

/// Whether `error` is the provider's refusal of one refresh token (an OAuth error answer:
/// `invalid_grant` and the like), after which another refresh token may still work. Not a
/// failure worth trying again later (a transport failure, throttling, an answer the retries
/// retry) nor a server error: msal stops at those too.
fn is_refusal(error: &CredentialError) -> bool {
    error.error_code().is_some()
        && !error.is_transient()
        && !error
            .status()
            .is_some_and(|status| status.is_server_error())
}

/// The account a token answer names, as the cache files it. Read from the answer, not from
/// the cache write, so that an unwritable cache does not lose the account.
pub(crate) fn answer_account(response: &TokenResponse) -> Option<String> {
    crate::entra::msal_cache::answer_account(
        response.client_info.as_deref(),
        response.id_token.as_ref().map(Secret::expose_secret),
    )
}

/// A [refusal of the grant](refuses_the_grant) to a user credential (its refresh token or its
/// authorization code refused), with what the user must do to get past it: one piece of advice, this
/// credential's.
pub(crate) fn with_sign_in_advice(
    credential: &'static str,
    error: CredentialError,
) -> CredentialError {
    let advice = match credential {
        shared_token_cache::NAME => {
            "To fix, sign in again with the application that wrote the token cache (Visual \
             Studio: re-enter the account under Azure Service Authentication; an application \
             with a persistent MSAL cache: its own sign-in). The refresh token was left in the \
             cache"
        }
        device_code::NAME => {
            "To fix, sign in again: the next request shows a new device code sign-in"
        }
        _ => "To fix, sign the user in again to get a new authorization code",
    };
    let message = format!("{}. {advice}", error.message().trim_end_matches('.'));
    let details = ProviderDetails {
        status: error.status(),
        error: error.error_code().map(str::to_owned),
        error_codes: error.error_codes().to_vec(),
        correlation_id: error.correlation_id().map(str::to_owned),
        suberror: error.suberror().map(str::to_owned),
    };
    let rebuilt = match error.kind() {
        ErrorKind::Unavailable => CredentialError::unavailable(credential, message),
        ErrorKind::InvalidRequest => CredentialError::invalid_request(credential, message),
        ErrorKind::AuthenticationFailed => {
            CredentialError::authentication_failed(credential, message)
        }
    };
    rebuilt.with_provider(details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::MAX_TOKEN_LIFETIME;

    #[test]
    fn an_absurd_expiry_in_the_file_is_clamped_and_the_refresh_time_never_passes_it() {
        let doc = CacheDocument::parse(
            br#"{"AccessToken": {"at": {"secret": "s", "home_account_id": null, "environment": "e",
                "client_id": "c", "target": "t", "realm": "r", "cached_at": "18446744073709551615",
                "expires_on": "18446744073709551615", "refresh_on": 18446744073709551615}}}"#,
        )
        .unwrap();
        let query = AccessTokenQuery {
            home_account_id: Some(None),
            environments: &["e"],
            client_id: Some("c"),
            realm: Some("r"),
            scopes: &[],
        };
        let Some(Cached::Fresh(token)) = usable_access_token(&doc, &query) else {
            panic!("valid far into the future, and not due");
        };
        assert!(token.expires_in() <= MAX_TOKEN_LIFETIME, "{token:?}");
        assert!(token.refresh_on().is_some_and(|r| r <= token.expires_on()));
    }

    fn refused(codes: &[u32], suberror: Option<&str>) -> CredentialError {
        CredentialError::authentication_failed("C", "refused").with_provider(ProviderDetails {
            error: Some("invalid_grant".into()),
            error_codes: codes.to_vec(),
            suberror: suberror.map(str::to_owned),
            ..ProviderDetails::default()
        })
    }

    #[test]
    fn a_refusal_is_dead_for_this_request_or_unknown_by_code_then_suberror() {
        use Refusal::{Dead, ForThisRequest, Unknown};
        let cases: [(&[u32], Option<&str>, Refusal); 14] = [
            (&[50_072], None, ForThisRequest),
            (&[70_000], None, ForThisRequest),
            (&[70_000], Some("bad_token"), Dead),
            (&[70_000], Some("token_expired"), Dead),
            (&[50_057], None, Dead),
            (&[700_003], None, Dead),
            (&[9_999_999], None, Unknown),
            (&[], None, Unknown),
            (&[9_999_999], Some("bad_token"), Dead),
            (&[], Some("token_expired"), Dead),
            (&[9_999_999], Some("basic_action"), ForThisRequest),
            (&[], Some("user_password_expired"), ForThisRequest),
            // A code for this request only wins over a dead suberror (Entra's 70043 answer).
            (&[70_043], Some("bad_token"), ForThisRequest),
            (&[9_999_999], Some("an_unknown_suberror"), Unknown),
        ];
        for (codes, suberror, expected) in cases {
            assert_eq!(
                refusal(None, &refused(codes, suberror)),
                expected,
                "{codes:?} {suberror:?}"
            );
        }
        // A claims challenge: this request only, whatever the code.
        let challenge = r#"{"access_token":{"nbf":{"essential":true,"value":"1"}}}"#;
        assert_eq!(
            refusal(Some(challenge), &refused(&[50_057], Some("bad_token"))),
            ForThisRequest
        );
    }

    fn answered(error: &str, codes: &[u32]) -> CredentialError {
        CredentialError::authentication_failed("C", "refused").with_provider(ProviderDetails {
            error: Some(error.into()),
            error_codes: codes.to_vec(),
            ..ProviderDetails::default()
        })
    }

    /// Entra's token endpoint documents `interaction_required` and `consent_required` beside
    /// `invalid_grant`: each refuses the grant for this request only. Other OAuth errors are
    /// no refusal of the grant.
    #[test]
    fn interaction_and_consent_required_refuse_the_grant_for_this_request_only() {
        for (error, code) in [
            ("interaction_required", 50_076),
            ("consent_required", 65_001),
        ] {
            for codes in [&[][..], &[code], &[9_999_999]] {
                let refused = answered(error, codes);
                assert!(refuses_the_grant(&refused), "{error} {codes:?}");
                assert_eq!(refusal(None, &refused), Refusal::ForThisRequest);
                assert!(
                    refused_for_this_request(None, &refused),
                    "{error} {codes:?}"
                );
                assert!(!says_dead(None, &refused), "{error} {codes:?}");
            }
        }
        for error in [
            "invalid_client",
            "unauthorized_client",
            "invalid_request",
            "invalid_scope",
            "temporarily_unavailable",
            "server_error",
        ] {
            let other = answered(error, &[50_076]);
            assert!(!refuses_the_grant(&other), "{error}");
            assert!(!refused_for_this_request(None, &other), "{error}");
            assert!(!says_dead(None, &other), "{error}");
        }
    }
}
