//! What the user credentials (authorization code, shared token cache) do with an MSAL cache
//! document: find a cached access token worth returning, redeem refresh tokens in turn, and
//! record the answers — rotated refresh tokens included — the way MSAL does.

use std::time::Duration;

use crate::entra::msal_cache::{AccessTokenQuery, CacheDocument, NewTokens, RefreshToken};
use crate::entra::store::TokenStore;
use crate::entra::token_client::{TokenClient, TokenResponse, refresh_token_form};
use crate::error::CredentialError;
use crate::token::{AccessToken, Secret, instant_from_unix, unix_now};

/// A cached access token is returned only with more than this left (the reference's rule,
/// the same as the refresh window).
const MIN_REMAINING: Duration = Duration::from_secs(300);

/// The cached access token for `query` with the most time left, if more than 300 s remain.
pub(crate) fn usable_access_token(
    doc: &CacheDocument,
    query: &AccessTokenQuery<'_>,
) -> Option<AccessToken> {
    let now = unix_now();
    doc.find_access_tokens(query)
        .into_iter()
        .filter(|at| at.expires_on > now + MIN_REMAINING.as_secs())
        .max_by_key(|at| at.expires_on)
        .map(|at| {
            AccessToken::new(at.secret, instant_from_unix(at.expires_on))
                .with_refresh_on(at.refresh_on.filter(|r| *r > now).map(instant_from_unix))
                .with_token_type(at.token_type)
        })
}

/// Who is asking and how, for a refresh-token redemption.
pub(crate) struct Redeem<'a> {
    pub(crate) credential: &'static str,
    pub(crate) client: &'a TokenClient,
    pub(crate) store: &'a TokenStore,
    pub(crate) client_id: &'a str,
    pub(crate) client_secret: Option<&'a Secret>,
    pub(crate) tenant: &'a str,
    pub(crate) scopes: &'a [String],
    pub(crate) claims: Option<String>,
}

impl Redeem<'_> {
    /// Redeems `candidates` in turn: the first success wins and is recorded (its refresh
    /// token rotated in place); one the provider rejects with `invalid_grant` is removed from
    /// the cache and the next is tried. `Ok(None)` when there is no candidate; the last error
    /// when none worked.
    pub(crate) async fn first_success(
        &self,
        candidates: Vec<RefreshToken>,
    ) -> Result<Option<AccessToken>, CredentialError> {
        let mut last_error = None;
        for candidate in candidates {
            let form = refresh_token_form(
                self.client_id,
                &candidate.secret,
                self.scopes,
                self.claims.clone(),
                self.client_secret,
            );
            match self
                .client
                .request(self.credential, self.tenant, form)
                .await
            {
                Ok(response) => {
                    self.record(&response, Some(candidate.key)).await;
                    return Ok(Some(response.token));
                }
                Err(error) => {
                    if error.error_code() == Some("invalid_grant") {
                        let key = candidate.key;
                        tracing::debug!(
                            credential = self.credential,
                            "refresh token rejected (invalid_grant); removing it from the cache"
                        );
                        if let Err(e) = self
                            .store
                            .modify(move |doc| doc.remove_refresh_token(&key))
                            .await
                        {
                            tracing::warn!(credential = self.credential, error = %e, "could not remove a rejected refresh token from the token cache");
                        }
                    }
                    last_error = Some(error);
                }
            }
        }
        last_error.map_or(Ok(None), Err)
    }

    /// Writes an answer to the store. A failure to write is logged, not returned: the token
    /// itself is good.
    pub(crate) async fn record(
        &self,
        response: &TokenResponse,
        replaces: Option<String>,
    ) -> Option<String> {
        record(
            self.credential,
            self.client,
            self.store,
            self.client_id,
            self.tenant,
            self.scopes,
            response,
            replaces,
        )
        .await
    }
}

/// Records a token answer in `store` (see [`Redeem::record`]); returns the account id.
#[allow(clippy::too_many_arguments)] // the facts MSAL records; a struct would only rename them
pub(crate) async fn record(
    credential: &'static str,
    client: &TokenClient,
    store: &TokenStore,
    client_id: &str,
    tenant: &str,
    requested: &[String],
    response: &TokenResponse,
    replaces: Option<String>,
) -> Option<String> {
    let scopes: Vec<String> = match &response.scope {
        Some(scope) if !scope.trim().is_empty() => {
            scope.split_whitespace().map(str::to_owned).collect()
        }
        _ => requested.to_vec(),
    };
    let client_id = client_id.to_owned();
    let environment = client.authority().host().to_owned();
    let realm = tenant.to_owned();
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
    let written = store
        .modify(move |doc| {
            doc.add_token_response(&NewTokens {
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
            })
        })
        .await;
    match written {
        Ok(account) => account,
        Err(error) => {
            tracing::warn!(credential, %error, "the token was obtained but could not be written to the token cache");
            None
        }
    }
}
