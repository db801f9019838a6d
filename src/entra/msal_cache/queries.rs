//! The queries the credentials make: access tokens covering some scopes, refresh tokens of an
//! account, accounts holding a family refresh token.

use std::collections::{HashMap, HashSet};

use super::raw::Entry;
use super::views::{
    Account, CachedAccessToken, RefreshToken, access_token_view, newest_first, read_entry,
    refresh_token_view,
};
use super::{ACCESS_TOKEN, CacheDocument, REFRESH_TOKEN};

/// What [`CacheDocument::find_access_tokens`] looks for.
#[derive(Debug, Clone, Copy)]
pub struct AccessTokenQuery<'a> {
    /// `None`: any; `Some(None)`: app-only tokens only (`home_account_id` null, missing or
    /// empty); `Some(Some(id))`: that account's tokens only.
    pub home_account_id: Option<Option<&'a str>>,
    /// Accepted authority hosts (aliases of one cloud), compared ASCII-case-insensitively. An
    /// empty list matches nothing.
    pub environments: &'a [&'a str],
    /// The application, if it matters (exact).
    pub client_id: Option<&'a str>,
    /// The tenant path segment, if it matters (ASCII-case-insensitive).
    pub realm: Option<&'a str>,
    /// Scopes the token must cover; empty matches any target.
    pub scopes: &'a [String],
}

/// What [`CacheDocument::find_refresh_tokens`] looks for. Targets are not compared: Entra
/// refresh tokens are scope independent.
#[derive(Debug, Clone, Copy)]
pub struct RefreshTokenQuery<'a> {
    /// The account (exact).
    pub home_account_id: &'a str,
    /// Accepted authority hosts, compared ASCII-case-insensitively. Empty matches nothing.
    pub environments: &'a [&'a str],
    /// The application, if it matters (exact).
    pub client_id: Option<&'a str>,
    /// Only family (FOCI) refresh tokens: entries with a non-empty `family_id`.
    pub family_only: bool,
}
impl CacheDocument {
    /// Bearer access tokens matching every given field, whose target covers the requested
    /// scopes: each requested scope, compared ASCII-case-insensitively, is one of the entry's
    /// space-separated target scopes. Entries whose `token_type` is not `Bearer` (msal's PoP
    /// and SSH-certificate tokens) are never returned. Expired tokens are returned too (the
    /// caller judges lifetimes; see [`remove_expired_access_tokens_found`]). Document order.
    ///
    /// [`remove_expired_access_tokens_found`]: CacheDocument::remove_expired_access_tokens_found
    pub fn find_access_tokens(&self, q: &AccessTokenQuery<'_>) -> Vec<CachedAccessToken> {
        self.matching_access_tokens(q).map(|(_, at)| at).collect()
    }

    /// Removes the access tokens `q` finds that expired at or before `now_unix`, as msal's
    /// search deletes the expired access tokens it finds. Returns how many were removed.
    pub fn remove_expired_access_tokens_found(
        &mut self,
        q: &AccessTokenQuery<'_>,
        now_unix: u64,
    ) -> usize {
        let expired: HashSet<String> = self
            .matching_access_tokens(q)
            .filter(|(_, at)| at.expires_on <= now_unix)
            .map(|(key, _)| key.to_owned())
            .collect();
        if expired.is_empty() {
            return 0;
        }
        // One pass over the section, not one per key: this runs while the cache's lock file
        // is held, and a file with thousands of expired tokens must not hold it for long.
        self.remove_entries_where(ACCESS_TOKEN, |key| expired.contains(key))
    }

    /// [`find_access_tokens`](CacheDocument::find_access_tokens) with each entry's key.
    pub(super) fn matching_access_tokens<'d>(
        &'d self,
        q: &'d AccessTokenQuery<'_>,
    ) -> impl Iterator<Item = (&'d str, CachedAccessToken)> + 'd {
        // Entries of other accounts are passed over before their view (and secret) is built.
        let wanted_account = |e: &Entry| match q.home_account_id {
            None => true,
            Some(wanted) => {
                e.lenient_str("home_account_id")
                    .filter(|h| !h.is_empty())
                    .as_deref()
                    == wanted
            }
        };
        self.entries(ACCESS_TOKEN)
            .iter()
            // msal keeps tokens asked for with extra parameters (an FMI path, say) under an
            // `ext_cache_key`, for queries with the same key only; we never make one.
            .filter(|(_, e)| e.raw("ext_cache_key").is_none())
            .filter(move |(_, e)| wanted_account(e))
            .filter_map(|(name, e)| {
                read_entry(ACCESS_TOKEN, name.text(), e, access_token_view)
                    .map(|at| (name.text(), at))
            })
            .filter(|(_, at)| {
                at.token_type.eq_ignore_ascii_case("Bearer")
                    && match q.home_account_id {
                        None => true,
                        Some(wanted) => at.home_account_id.as_deref() == wanted,
                    }
                    && env_matches(q.environments, &at.environment)
                    && q.client_id.is_none_or(|c| at.client_id == c)
                    && q.realm.is_none_or(|r| at.realm.eq_ignore_ascii_case(r))
                    && q.scopes.iter().all(|wanted| {
                        at.target
                            .split_whitespace()
                            .any(|have| have.eq_ignore_ascii_case(wanted))
                    })
            })
    }

    /// Refresh tokens of an account at the given hosts, optionally of one client and
    /// optionally family tokens only. Newest first (`newest_first`); document order among
    /// equals.
    pub fn find_refresh_tokens(&self, q: &RefreshTokenQuery<'_>) -> Vec<RefreshToken> {
        // Entries of other accounts are passed over before their view (and secret) is built.
        let mut found: Vec<RefreshToken> = self
            .entries(REFRESH_TOKEN)
            .iter()
            .filter(|(_, e)| {
                e.lenient_str("home_account_id").unwrap_or_default() == q.home_account_id
            })
            .filter_map(|(name, e)| read_entry(REFRESH_TOKEN, name.text(), e, refresh_token_view))
            .filter(|rt| {
                rt.home_account_id == q.home_account_id
                    && env_matches(q.environments, &rt.environment)
                    && q.client_id.is_none_or(|c| rt.client_id == c)
                    && (!q.family_only || rt.family_id.as_deref().is_some_and(|f| !f.is_empty()))
            })
            .collect();
        newest_first(&mut found, |rt| rt);
        found
    }

    /// The accounts that have a family (FOCI) refresh token: `Account` entries at one of
    /// `environments` with a family refresh token of the same `home_account_id` at one of
    /// `environments`, one per `home_account_id` (the first in document order with a
    /// username, else the first: azure-identity writes accounts without one after a refresh,
    /// and a `username` filter must still find the account). What
    /// SharedTokenCacheCredential chooses from. Linear in the document: one pass over the
    /// refresh tokens, one over the accounts.
    pub fn accounts_with_family_refresh_tokens(&self, environments: &[&str]) -> Vec<Account> {
        let holders: HashSet<String> = self
            .entries(REFRESH_TOKEN)
            .iter()
            .filter_map(|(name, e)| read_entry(REFRESH_TOKEN, name.text(), e, refresh_token_view))
            .filter(|rt| {
                env_matches(environments, &rt.environment)
                    && rt.family_id.as_deref().is_some_and(|f| !f.is_empty())
            })
            .map(|rt| rt.home_account_id)
            .collect();
        let mut chosen: Vec<Account> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for account in self.accounts() {
            if !env_matches(environments, &account.environment)
                || !holders.contains(&account.home_account_id)
            {
                continue;
            }
            match at
                .get(&account.home_account_id)
                .and_then(|&i| chosen.get_mut(i))
            {
                Some(kept) if kept.username.is_empty() && !account.username.is_empty() => {
                    *kept = account;
                }
                Some(_) => {}
                None => {
                    at.insert(account.home_account_id.clone(), chosen.len());
                    chosen.push(account);
                }
            }
        }
        chosen
    }
}

/// Whether `environment` is one of `accepted` (ASCII-case-insensitive).
pub(super) fn env_matches(accepted: &[&str], environment: &str) -> bool {
    accepted.iter().any(|e| e.eq_ignore_ascii_case(environment))
}
