//! Changing the document: a token endpoint answer recorded as msal records it, and entries
//! removed.

use serde_json::{Map, Value};

use crate::encoding::decode_base64;
use crate::token::Secret;

use super::keys::{
    access_token_key, account_key, app_metadata_key, id_token_key, refresh_token_key,
};
use super::raw::{Body, Entry, Name, RawJson};
use super::{ACCESS_TOKEN, ACCOUNT, APP_METADATA, CacheDocument, ID_TOKEN, REFRESH_TOKEN};

/// A successful token endpoint answer, to record with [`CacheDocument::add_token_response`].
#[derive(Debug, Clone, Copy)]
pub struct NewTokens<'a> {
    /// The application that asked.
    pub client_id: &'a str,
    /// Authority host, without port.
    pub environment: &'a str,
    /// Tenant path segment used for the request.
    pub realm: &'a str,
    /// What the answer covers: its `scope` split on spaces if present, else the requested
    /// scopes. Recorded sorted, as msal does.
    pub scopes: &'a [String],
    /// The access token.
    pub access_token: &'a Secret,
    /// The answer's `token_type` (`Bearer` if it had none).
    pub token_type: &'a str,
    /// When the request was made (Unix seconds).
    pub cached_at: u64,
    /// Expiry (Unix seconds).
    pub expires_on: u64,
    /// Extended expiry (Unix seconds; the expiry when the answer has no `ext_expires_in`).
    pub extended_expires_on: u64,
    /// Proactive refresh time (Unix seconds), if any.
    pub refresh_on: Option<u64>,
    /// The answer's refresh token, if any.
    pub refresh_token: Option<&'a Secret>,
    /// The answer's id token, if any.
    pub id_token: Option<&'a Secret>,
    /// The answer's `client_info` (base64url JSON `{"uid", "utid"}`), if any.
    pub client_info: Option<&'a str>,
    /// The answer's `foci` (family id), if any.
    pub foci: Option<&'a str>,
    /// Key of the refresh-token entry that was redeemed for this answer, if any.
    pub replaces: Option<&'a str>,
    /// Whether `replaces` was read from this document, not from another one (the other of
    /// the CAE and non-CAE pair). Only then is the answer kept from creating an Account, and
    /// does the absence of that entry and of every Account of the account mean a sign-out
    /// since: another document's key was never here.
    pub replaces_read_here: bool,
    /// Whether the answer is to a user's grant (authorization code, device code, refresh
    /// token), not an application's own (client credentials): such an answer that names no
    /// account is not an app-only token.
    pub user_grant: bool,
}

/// A base64(url) JSON object; `None` for anything else.
pub(super) fn decode_json_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = decode_base64(part).ok()?;
    match serde_json::from_slice::<Value>(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The claims of a JWT, unverified (they only name the account).
pub(super) fn jwt_claims(jwt: &str) -> Option<Map<String, Value>> {
    let mut parts = jwt.split('.');
    let _header = parts.next()?;
    decode_json_object(parts.next()?)
}

/// A non-empty string claim.
pub(super) fn claim<'m>(claims: &'m Map<String, Value>, name: &str) -> Option<&'m str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `(uid, utid)` from client_info.
pub(super) fn client_info_ids(client_info: &str) -> Option<(String, String)> {
    let map = decode_json_object(client_info)?;
    Some((
        claim(&map, "uid")?.to_owned(),
        claim(&map, "utid")?.to_owned(),
    ))
}

/// The account a token answer names, and the `uid` its Account entry falls back to: `uid.utid`
/// from `client_info`, else the id token's `sub` (msal's ADFS rule).
fn named_account(
    client_info: Option<&str>,
    claims: Option<&Map<String, Value>>,
) -> (Option<String>, Option<String>) {
    match (client_info.and_then(client_info_ids), claims) {
        (Some((uid, utid)), _) => (Some(format!("{uid}.{utid}")), Some(uid)),
        (None, Some(c)) => match claim(c, "sub") {
            Some(sub) => (Some(sub.to_owned()), Some(sub.to_owned())),
            None => (None, None),
        },
        (None, None) => (None, None),
    }
}

/// The `home_account_id` a token answer names, as [`CacheDocument::add_token_response`] files
/// it: for callers that must know the account even when the cache cannot be written.
pub fn answer_account(client_info: Option<&str>, id_token: Option<&str>) -> Option<String> {
    named_account(client_info, id_token.and_then(jwt_claims).as_ref()).0
}

impl CacheDocument {
    /// Records a token endpoint answer the way msal does, and returns the account's
    /// `home_account_id` (`None` for app-only answers, and for answers that name an account
    /// we cannot read — those are not cached).
    ///
    /// * The account: `uid.utid` from `client_info`; without client_info, the id token's `sub`
    ///   (msal's ADFS rule); without either, the account of the RefreshToken entry `replaces`
    ///   names (the answer to a refresh grant: no Account or IdToken is written then). None of
    ///   these: app-only for an application's grant; for a user's grant
    ///   ([`user_grant`](NewTokens::user_grant)) nothing but AppMetadata is written (the
    ///   token is the user's, and must not pass for an app-only one).
    /// * **AccessToken**: a new entry replacing, whole and at its position, any entry with the
    ///   same key (msal replaces the whole entry: unknown fields of the old one are dropped).
    ///   `home_account_id` is `null` for app-only tokens. `target` is the scopes sorted and
    ///   space-joined (msal sorts them).
    /// * **Account** (not for app-only): `username` from the id token's `preferred_username`,
    ///   else `upn`, else `email`, else `""`; `local_account_id` from `oid`, else `sub`, else
    ///   the client_info `uid`; `authority_type` `ADFS` for realm `adfs`, else `MSSTS`. An
    ///   existing entry with the same key gets these six fields and keeps its others
    ///   (`account_source`). When the username would be `""` and an Account with the same
    ///   `home_account_id` exists in any realm, nothing is written (see the module docs). The
    ///   answer to a refresh grant (`replaces` set, [read here](NewTokens::replaces_read_here))
    ///   only updates an existing entry, never creates one (msal's `skip_account_creation`,
    ///   which honours a concurrent sign-out).
    /// * **Signed out meanwhile**: when `replaces` is set (read here) but neither its entry nor any Account
    ///   of the account is left (another application removed the account while the refresh
    ///   was in flight), nothing of the account is written — no AccessToken, IdToken or
    ///   RefreshToken (msal would still write them) — and `None` is returned.
    /// * **IdToken** (if the answer has one, not for app-only): replaces the same key.
    /// * **RefreshToken** (if the answer has one, not for app-only — a refresh token without
    ///   an account could never be found again, so it is not recorded): when `replaces` names
    ///   an existing entry of the same account, that entry is updated in place as msal does on
    ///   rotation — new `secret`, `last_modification_time`, and `family_id` if the answer has
    ///   `foci`; its key, `target` and other fields stay — and no other entry is written.
    ///   Otherwise (no `replaces`, or its entry is gone while an Account of the account is
    ///   left) a new entry replaces the one with the same key; a `replaces` entry of another
    ///   account is removed.
    /// * **AppMetadata**: always, replacing the same key; `family_id` when `foci` is present.
    pub fn add_token_response(&mut self, r: &NewTokens<'_>) -> Option<String> {
        let claims = r.id_token.and_then(|t| jwt_claims(t.expose_secret()));
        let (home_account_id, uid) = named_account(r.client_info, claims.as_ref());
        // Neither names the account, but a refresh grant's answer belongs to the account whose
        // refresh token it redeemed (providers that send no client_info, such as ADFS).
        let (home_account_id, uid) = match (home_account_id, r.replaces) {
            (None, Some(key)) => (self.refresh_token_account(key), None),
            named => (named.0, uid),
        };
        // A user's token whose account cannot be told (Entra answers a sign-in without
        // `openid`/`profile` that way, AD FS too) is not filed as app-only: an application
        // credential with the same client id looking up its own tokens would take it and act
        // as the user.
        let app_only = !r.user_grant
            && r.client_info.is_none()
            && r.id_token.is_none()
            && home_account_id.is_none();
        // A refresh whose redeemed entry and every Account of its account are gone: another
        // application signed the user out (msal's remove_account) while the request was in
        // flight. Nothing of the account is written back, the access token included: the
        // user asked for their tokens to be forgotten, and a process looking tokens up by
        // account (one pinned to it, as ours are) would keep using one. The caller still
        // gets the token it asked for.
        let signed_out = match (r.replaces, home_account_id.as_deref()) {
            (Some(key), Some(hid)) if r.replaces_read_here => {
                !self.has_refresh_token(key) && !self.has_account(hid)
            }
            _ => false,
        };
        let cacheable = !signed_out && (app_only || home_account_id.is_some());

        let mut scopes: Vec<&str> = r.scopes.iter().map(String::as_str).collect();
        scopes.sort_unstable();
        let target = scopes.join(" ");
        let now = r.cached_at.to_string();

        if cacheable {
            let mut fields = vec![
                ("credential_type", RawJson::string("AccessToken")),
                ("secret", RawJson::string(r.access_token.expose_secret())),
                (
                    "home_account_id",
                    home_account_id
                        .as_deref()
                        .map_or_else(RawJson::null, RawJson::string),
                ),
                ("environment", RawJson::string(r.environment)),
                ("client_id", RawJson::string(r.client_id)),
                ("target", RawJson::string(&target)),
                ("realm", RawJson::string(r.realm)),
                ("token_type", RawJson::string(r.token_type)),
                ("cached_at", RawJson::string(&now)),
                ("expires_on", RawJson::string(&r.expires_on.to_string())),
                (
                    "extended_expires_on",
                    RawJson::string(&r.extended_expires_on.to_string()),
                ),
            ];
            if let Some(refresh_on) = r.refresh_on {
                fields.push(("refresh_on", RawJson::string(&refresh_on.to_string())));
            }
            let key = access_token_key(
                home_account_id.as_deref().unwrap_or(""),
                r.environment,
                r.client_id,
                r.realm,
                &target,
            );
            self.put_entry(ACCESS_TOKEN, key, Entry::with_fields(fields));
        }

        if let Some(hid) = home_account_id.as_deref().filter(|_| cacheable) {
            if let Some(uid) = uid.as_deref() {
                self.add_account_and_id_token(r, hid, uid, claims.as_ref());
            }
            if let Some(refresh_token) = r.refresh_token {
                self.add_refresh_token(r, hid, refresh_token, &target, &now);
            }
        }

        let mut fields = vec![
            ("client_id", RawJson::string(r.client_id)),
            ("environment", RawJson::string(r.environment)),
        ];
        if let Some(foci) = r.foci {
            fields.push(("family_id", RawJson::string(foci)));
        }
        let key = app_metadata_key(r.environment, r.client_id);
        self.put_entry(APP_METADATA, key, Entry::with_fields(fields));

        if cacheable { home_account_id } else { None }
    }

    /// The Account and IdToken parts of [`add_token_response`](Self::add_token_response).
    fn add_account_and_id_token(
        &mut self,
        r: &NewTokens<'_>,
        hid: &str,
        uid: &str,
        claims: Option<&Map<String, Value>>,
    ) {
        self.add_account(r, hid, uid, claims);
        if let Some(id_token) = r.id_token {
            let entry = Entry::with_fields(vec![
                ("credential_type", RawJson::string("IdToken")),
                ("secret", RawJson::string(id_token.expose_secret())),
                ("home_account_id", RawJson::string(hid)),
                ("environment", RawJson::string(r.environment)),
                ("realm", RawJson::string(r.realm)),
                ("client_id", RawJson::string(r.client_id)),
            ]);
            let key = id_token_key(hid, r.environment, r.client_id, r.realm);
            self.put_entry(ID_TOKEN, key, entry);
        }
    }

    /// Whether a RefreshToken entry has this key.
    fn has_refresh_token(&self, key: &str) -> bool {
        self.entries(REFRESH_TOKEN)
            .iter()
            .any(|(name, _)| name.text() == key)
    }

    /// Whether an Account entry (of any environment and realm) belongs to this account.
    fn has_account(&self, hid: &str) -> bool {
        self.entries(ACCOUNT)
            .iter()
            .any(|(_, e)| e.lenient_str("home_account_id").as_deref() == Some(hid))
    }

    /// The `home_account_id` of the RefreshToken entry with this key, if it has one.
    fn refresh_token_account(&self, key: &str) -> Option<String> {
        self.entries(REFRESH_TOKEN)
            .iter()
            .find(|(name, _)| name.text() == key)
            .and_then(|(_, entry)| entry.lenient_str("home_account_id"))
            .filter(|hid| !hid.is_empty())
    }

    /// The Account part of [`add_token_response`](Self::add_token_response).
    fn add_account(
        &mut self,
        r: &NewTokens<'_>,
        hid: &str,
        uid: &str,
        claims: Option<&Map<String, Value>>,
    ) {
        let username = claims
            .and_then(|c| {
                claim(c, "preferred_username")
                    .or_else(|| claim(c, "upn"))
                    .or_else(|| claim(c, "email"))
            })
            .unwrap_or("");
        if username.is_empty() && self.has_account(hid) {
            return;
        }
        let local_account_id = claims
            .and_then(|c| claim(c, "oid").or_else(|| claim(c, "sub")))
            .unwrap_or(uid);
        let authority_type = if r.realm.eq_ignore_ascii_case("adfs") {
            "ADFS"
        } else {
            "MSSTS"
        };
        let fields = [
            ("home_account_id", hid),
            ("environment", r.environment),
            ("realm", r.realm),
            ("local_account_id", local_account_id),
            ("username", username),
            ("authority_type", authority_type),
        ];
        let key = account_key(hid, r.environment, r.realm);
        let Some(entries) = self.entries_mut(ACCOUNT) else {
            return;
        };
        match entries.iter_mut().find(|(name, _)| name.text() == key) {
            Some((_, existing)) => {
                for (name, value) in fields {
                    existing.set(name, RawJson::string(value));
                }
            }
            // A refresh only updates an Account (msal's skip_account_creation, "to honor a
            // concurrent remove_account()"): one that is missing may have been removed by a
            // sign-out since the refresh token was read.
            None if r.replaces.is_some() && r.replaces_read_here => {}
            None => entries.push((
                Name::new(key),
                Entry::with_fields(
                    fields
                        .into_iter()
                        .map(|(n, v)| (n, RawJson::string(v)))
                        .collect(),
                ),
            )),
        }
    }

    /// The RefreshToken part of [`add_token_response`](Self::add_token_response).
    fn add_refresh_token(
        &mut self,
        r: &NewTokens<'_>,
        hid: &str,
        refresh_token: &Secret,
        target: &str,
        now: &str,
    ) {
        if let Some(old_key) = r.replaces {
            let Some(entries) = self.entries_mut(REFRESH_TOKEN) else {
                return;
            };
            if let Some(i) = entries.iter().position(|(name, _)| name.text() == old_key) {
                let same_account = entries
                    .get(i)
                    .and_then(|(_, e)| e.lenient_str("home_account_id"))
                    .is_some_and(|h| h == hid);
                if same_account {
                    if let Some((_, entry)) = entries.get_mut(i) {
                        entry.set("secret", RawJson::string(refresh_token.expose_secret()));
                        entry.set("last_modification_time", RawJson::string(now));
                        if let Some(foci) = r.foci {
                            entry.set("family_id", RawJson::string(foci));
                        }
                    }
                    return;
                }
                entries.remove(i);
            }
        }
        let mut fields = vec![
            ("credential_type", RawJson::string("RefreshToken")),
            ("secret", RawJson::string(refresh_token.expose_secret())),
            ("home_account_id", RawJson::string(hid)),
            ("environment", RawJson::string(r.environment)),
            ("client_id", RawJson::string(r.client_id)),
            ("target", RawJson::string(target)),
            ("last_modification_time", RawJson::string(now)),
        ];
        if let Some(foci) = r.foci {
            fields.push(("family_id", RawJson::string(foci)));
        }
        let key = refresh_token_key(hid, r.environment, r.client_id, target);
        self.put_entry(REFRESH_TOKEN, key, Entry::with_fields(fields));
    }

    /// Removes the refresh token at `key` (after `invalid_grant`) if its secret is still
    /// `secret`: a concurrent redemption may have rotated the entry to a fresh token since it
    /// was read, and that one must stay. Whether it was removed.
    pub fn remove_refresh_token(&mut self, key: &str, secret: &Secret) -> bool {
        // Not `entries_mut`: a removal must not add an absent section.
        let Some((_, Body::Entries(entries))) = self
            .sections
            .iter_mut()
            .find(|(name, _)| name.text() == REFRESH_TOKEN)
        else {
            return false;
        };
        let before = entries.len();
        entries.retain(|(name, entry)| {
            name.text() != key
                || entry
                    .lenient_str("secret")
                    .is_none_or(|s| s != secret.expose_secret())
        });
        entries.len() != before
    }
}
