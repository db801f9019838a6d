//! The MSAL token-cache document and its queries.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::entra::msal_cache::{
    AccessTokenQuery, CacheDocument, CachedAccessToken, NewTokens, RefreshToken, RefreshTokenQuery,
};
use crate::token::Secret;

use super::renderings;

/// The MSAL token-cache document: `data` is the file.
///
/// Checks, when it parses: every view, `skipped`, `Debug`; serialising, parsing that and
/// serialising again is byte-identical (the module's exact-preservation promise, which makes
/// `to_vec` a fixed point after one round) and reads the same views; queries return only
/// matching entries, and each Bearer access token and each refresh token is found by a query
/// built from its own fields; `remove_expired_access_tokens` leaves no expired token;
/// `add_token_response` (app-only, user with the document's own accounts and id tokens, with
/// and without a refresh token to replace) keeps the round trip and makes what it added
/// findable.
pub fn msal_cache(data: &[u8]) {
    let doc = match CacheDocument::parse(data) {
        Ok(doc) => doc,
        Err(e) => {
            let _ = renderings(&e);
            return;
        }
    };
    let _ = format!("{doc:?} {}", doc.is_empty());
    for e in doc.skipped() {
        let _ = renderings(&e);
    }
    let _ = (doc.accounts(), doc.id_tokens(), doc.app_metadata());
    round_trip(&doc, "parse");
    check_queries(&doc);

    // Expiry removal at a time that removes some tokens (and at 0 and u64::MAX).
    let mut times: Vec<u64> = doc
        .access_tokens()
        .iter()
        .map(|t| t.expires_on)
        .take(2)
        .collect();
    times.extend([0, u64::MAX]);
    for now in times {
        let mut pruned = doc.clone();
        let expired_before = doc
            .access_tokens()
            .iter()
            .filter(|t| t.expires_on <= now)
            .count();
        let removed = pruned.remove_expired_access_tokens(now);
        assert!(
            removed >= expired_before,
            "removed {removed} < {expired_before} expired"
        );
        assert!(
            pruned.access_tokens().iter().all(|t| t.expires_on > now),
            "an expired access token survived remove_expired_access_tokens({now})"
        );
        round_trip(&pruned, "remove_expired_access_tokens");
    }

    for answer in answers(&doc) {
        let mut updated = doc.clone();
        let tokens = answer.tokens();
        let returned = updated.add_token_response(&tokens);
        round_trip(&updated, "add_token_response");
        check_added(&updated, &answer, returned.as_deref());
        check_queries(&updated);
    }

    if let Some(at) = doc.raw_entries("AccessToken").first() {
        let mut smaller = doc.clone();
        assert!(smaller.remove_access_token(at.key), "{:?}", at.key);
        assert!(
            smaller
                .raw_entries("AccessToken")
                .iter()
                .all(|t| t.key != at.key)
        );
        round_trip(&smaller, "remove_access_token");
    }
    if let Some(rt) = doc.refresh_tokens().first() {
        let mut smaller = doc.clone();
        assert!(
            !smaller.remove_refresh_token(
                &rt.key,
                &Secret::new(format!("{}-other", rt.secret.expose_secret()))
            ),
            "{:?}",
            rt.key
        );
        assert!(
            smaller.remove_refresh_token(&rt.key, &rt.secret),
            "{:?}",
            rt.key
        );
        assert!(smaller.refresh_tokens().iter().all(|t| t.key != rt.key));
        round_trip(&smaller, "remove_refresh_token");
    }
}

/// Everything the views read, secrets included, for comparing documents.
fn views(doc: &CacheDocument) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(doc.accounts().iter().map(|v| format!("{v:?}")));
    out.extend(
        doc.refresh_tokens()
            .iter()
            .map(|v| format!("{v:?} {}", v.secret.expose_secret())),
    );
    out.extend(
        doc.access_tokens()
            .iter()
            .map(|v| format!("{v:?} {}", v.secret.expose_secret())),
    );
    out.extend(
        doc.id_tokens()
            .iter()
            .map(|v| format!("{v:?} {}", v.secret.expose_secret())),
    );
    out.extend(doc.app_metadata().iter().map(|v| format!("{v:?}")));
    // The keys and the fields the views leave out.
    for section in ["Account", "RefreshToken", "AccessToken"] {
        out.extend(doc.raw_entries(section).iter().map(|e| format!("{e:?}")));
    }
    out.extend(doc.skipped().iter().map(|e| e.to_string()));
    out
}

/// `to_vec` re-parses, re-serialises byte for byte, and reads the same.
fn round_trip(doc: &CacheDocument, after: &str) {
    let bytes = doc.to_vec();
    let again = CacheDocument::parse(&bytes).unwrap_or_else(|e| {
        panic!(
            "after {after}: to_vec output does not parse ({e}):\n{}",
            String::from_utf8_lossy(&bytes)
        )
    });
    let bytes_again = again.to_vec();
    assert!(
        bytes_again == bytes,
        "after {after}: serialisation is not a fixed point:\n{}\n---\n{}",
        String::from_utf8_lossy(&bytes),
        String::from_utf8_lossy(&bytes_again)
    );
    assert_eq!(views(&again), views(doc), "after {after}: views differ");
}

/// The scopes a query can ask for of a target: its whitespace-separated parts.
fn scopes_of(target: &str) -> Vec<String> {
    target.split_whitespace().map(str::to_owned).collect()
}

/// Queries agree with the views.
fn check_queries(doc: &CacheDocument) {
    let ats = doc.access_tokens();
    let rts = doc.refresh_tokens();
    let environments: BTreeSet<&str> = ats
        .iter()
        .map(|t| t.environment.as_str())
        .chain(rts.iter().map(|t| t.environment.as_str()))
        .collect();
    let environments: Vec<&str> = environments.into_iter().collect();

    // Any token: every Bearer token at these hosts.
    let any = AccessTokenQuery {
        home_account_id: None,
        environments: &environments,
        client_id: None,
        realm: None,
        scopes: &[],
    };
    let bearer = ats
        .iter()
        .filter(|t| t.token_type.eq_ignore_ascii_case("Bearer"))
        .count();
    assert_eq!(doc.find_access_tokens(&any).len(), bearer, "{any:?}");
    let nothing = AccessTokenQuery {
        environments: &[],
        ..any
    };
    assert!(doc.find_access_tokens(&nothing).is_empty());
    let app_only = AccessTokenQuery {
        home_account_id: Some(None),
        ..any
    };
    for found in doc.find_access_tokens(&app_only) {
        assert_eq!(found.home_account_id, None, "{app_only:?}");
    }

    // Each token is found by its own fields (first few, to bound the work).
    for (at, raw) in ats.iter().zip(doc.raw_entries("AccessToken")).take(8) {
        let scopes = scopes_of(&at.target);
        let environments = [at.environment.as_str()];
        let q = AccessTokenQuery {
            home_account_id: Some(at.home_account_id.as_deref()),
            environments: &environments,
            client_id: Some(&at.client_id),
            realm: Some(&at.realm),
            scopes: &scopes,
        };
        let found = doc.find_access_tokens(&q);
        for f in &found {
            assert_matches_access_query(f, &q);
        }
        let is_bearer = at.token_type.eq_ignore_ascii_case("Bearer");
        assert_eq!(
            doc.find_access_token_keys(&q).iter().any(|k| k == raw.key),
            is_bearer,
            "access token {:?} by its own fields",
            raw.key
        );
    }
    for rt in rts.iter().take(8) {
        let environments = [rt.environment.as_str()];
        for family_only in [false, true] {
            let q = RefreshTokenQuery {
                home_account_id: &rt.home_account_id,
                environments: &environments,
                client_id: Some(&rt.client_id),
                family_only,
            };
            let found = doc.find_refresh_tokens(&q);
            for f in &found {
                assert_matches_refresh_query(f, &q);
            }
            let expected = !family_only || rt.family_id.as_deref().is_some_and(|f| !f.is_empty());
            assert_eq!(
                found.iter().any(|f| f.key == rt.key),
                expected,
                "refresh token {:?} by its own fields, family_only {family_only}",
                rt.key
            );
        }
    }
}

fn assert_matches_access_query(at: &CachedAccessToken, q: &AccessTokenQuery<'_>) {
    assert!(at.token_type.eq_ignore_ascii_case("Bearer"), "{at:?}");
    if let Some(wanted) = q.home_account_id {
        assert_eq!(at.home_account_id.as_deref(), wanted, "{at:?}");
    }
    assert!(
        q.environments
            .iter()
            .any(|e| e.eq_ignore_ascii_case(&at.environment)),
        "{at:?}"
    );
    if let Some(c) = q.client_id {
        assert_eq!(at.client_id, c, "{at:?}");
    }
    if let Some(r) = q.realm {
        assert!(at.realm.eq_ignore_ascii_case(r), "{at:?}");
    }
}

fn assert_matches_refresh_query(rt: &RefreshToken, q: &RefreshTokenQuery<'_>) {
    assert_eq!(rt.home_account_id, q.home_account_id, "{rt:?}");
    assert!(
        q.environments
            .iter()
            .any(|e| e.eq_ignore_ascii_case(&rt.environment)),
        "{rt:?}"
    );
    if let Some(c) = q.client_id {
        assert_eq!(rt.client_id, c, "{rt:?}");
    }
    if q.family_only {
        assert!(rt.family_id.as_deref().is_some_and(|f| !f.is_empty()));
    }
}

/// What [`NewTokens`] borrows.
struct Answer {
    client_id: String,
    environment: String,
    realm: String,
    scopes: Vec<String>,
    access_token: Secret,
    refresh_token: Option<Secret>,
    id_token: Option<Secret>,
    client_info: Option<String>,
    foci: Option<String>,
    replaces: Option<String>,
    user_grant: bool,
}

impl Answer {
    fn tokens(&self) -> NewTokens<'_> {
        NewTokens {
            client_id: &self.client_id,
            environment: &self.environment,
            realm: &self.realm,
            scopes: &self.scopes,
            access_token: &self.access_token,
            token_type: "Bearer",
            cached_at: 1_700_000_000,
            expires_on: 1_700_003_600,
            extended_expires_on: 1_700_003_600,
            refresh_on: Some(1_700_001_800),
            refresh_token: self.refresh_token.as_ref(),
            id_token: self.id_token.as_ref(),
            client_info: self.client_info.as_deref(),
            foci: self.foci.as_deref(),
            replaces: self.replaces.as_deref(),
            replaces_read_here: true,
            user_grant: self.user_grant,
        }
    }
}

/// Answers to record, built from what the document holds so that they meet its entries: an
/// app-only answer, a user answer for its first account (replacing its first refresh token),
/// the same without `replaces`, and one identified by the document's first id token alone.
fn answers(doc: &CacheDocument) -> Vec<Answer> {
    let at = doc.access_tokens().into_iter().next();
    let rt = doc.refresh_tokens().into_iter().next();
    let account = doc.accounts().into_iter().next();
    let id_token = doc.id_tokens().into_iter().next();
    let client_id = at
        .as_ref()
        .map(|t| t.client_id.clone())
        .or_else(|| rt.as_ref().map(|t| t.client_id.clone()))
        .unwrap_or_else(|| "04b07795-8ddb-461a-bbee-02f9e1bf7b46".to_owned());
    let environment = account
        .as_ref()
        .map(|a| a.environment.clone())
        .or_else(|| at.as_ref().map(|t| t.environment.clone()))
        .unwrap_or_else(|| "login.microsoftonline.com".to_owned());
    let realm = at
        .as_ref()
        .map(|t| t.realm.clone())
        .or_else(|| {
            // The first account's (the entry behind `account`).
            doc.raw_entries("Account")
                .first()
                .and_then(|a| a.str("realm"))
        })
        .unwrap_or_else(|| "organizations".to_owned());
    let mut scopes = at
        .as_ref()
        .map(|t| scopes_of(&t.target))
        .unwrap_or_default();
    if scopes.is_empty() {
        scopes.push("https://management.azure.com/.default".to_owned());
    }
    let base = || Answer {
        client_id: client_id.clone(),
        environment: environment.clone(),
        realm: realm.clone(),
        scopes: scopes.clone(),
        access_token: Secret::new("fuzz-added-access-token"),
        refresh_token: None,
        id_token: None,
        client_info: None,
        foci: None,
        replaces: None,
        user_grant: false,
    };

    let mut out = vec![base()];
    let hid = account
        .as_ref()
        .map(|a| a.home_account_id.clone())
        .or_else(|| rt.as_ref().map(|t| t.home_account_id.clone()))
        .unwrap_or_default();
    let (uid, utid) = hid.split_once('.').unwrap_or((hid.as_str(), ""));
    let (uid, utid) = (
        if uid.is_empty() { "fuzz-uid" } else { uid },
        if utid.is_empty() { "fuzz-utid" } else { utid },
    );
    let client_info =
        URL_SAFE_NO_PAD.encode(serde_json::json!({ "uid": uid, "utid": utid }).to_string());
    let jwt = id_token
        .as_ref()
        .map(|t| t.secret.clone())
        .unwrap_or_else(|| {
            let claims = serde_json::json!({
                "sub": uid, "oid": uid, "tid": utid, "preferred_username": "fuzz@example.com",
            });
            Secret::new(format!(
                "eyJhbGciOiJub25lIn0.{}.sig",
                URL_SAFE_NO_PAD.encode(claims.to_string())
            ))
        });
    let user = |replaces: Option<String>| Answer {
        access_token: Secret::new("fuzz-added-user-access-token"),
        refresh_token: Some(Secret::new("fuzz-added-refresh-token")),
        id_token: Some(jwt.clone()),
        client_info: Some(client_info.clone()),
        foci: Some("1".to_owned()),
        replaces,
        user_grant: true,
        ..base()
    };
    out.push(user(rt.as_ref().map(|t| t.key.clone())));
    out.push(user(None));
    out.push(Answer {
        client_info: None,
        ..user(None)
    });
    out
}

/// What [`CacheDocument::add_token_response`] promises about what it wrote.
fn check_added(doc: &CacheDocument, answer: &Answer, returned: Option<&str>) {
    let app_only = !answer.user_grant && answer.client_info.is_none() && answer.id_token.is_none();
    if app_only {
        assert_eq!(returned, None, "app-only answer returned an account");
    }
    // A user's token whose account was not recorded is not recorded at all.
    if answer.user_grant && returned.is_none() {
        assert!(
            doc.access_tokens()
                .iter()
                .all(|t| t.secret.expose_secret() != answer.access_token.expose_secret()),
            "a user's access token was recorded without its account"
        );
    }
    let home = if app_only {
        Some(None)
    } else {
        returned.map(Some)
    };
    let Some(home) = home else {
        return; // Not cached: nothing more is promised.
    };
    // The access token is found by the fields it was recorded with, when its scopes can be
    // asked for (scopes containing whitespace are stored joined by spaces, as msal does).
    let scopes_are_words = answer
        .scopes
        .iter()
        .all(|s| !s.is_empty() && !s.contains(char::is_whitespace));
    if scopes_are_words {
        let environments = [answer.environment.as_str()];
        let q = AccessTokenQuery {
            home_account_id: Some(home),
            environments: &environments,
            client_id: Some(&answer.client_id),
            realm: Some(&answer.realm),
            scopes: &answer.scopes,
        };
        let found = doc.find_access_tokens(&q);
        assert!(
            found
                .iter()
                .any(|t| t.secret.expose_secret() == answer.access_token.expose_secret()),
            "the access token just added is not found by {q:?}"
        );
    }
    // A new refresh token (nothing to replace) is found for the account.
    if let (Some(hid), Some(rt), None) = (home, &answer.refresh_token, &answer.replaces) {
        let environments = [answer.environment.as_str()];
        let q = RefreshTokenQuery {
            home_account_id: hid,
            environments: &environments,
            client_id: Some(&answer.client_id),
            family_only: answer.foci.is_some(),
        };
        assert!(
            doc.find_refresh_tokens(&q)
                .iter()
                .any(|t| t.secret.expose_secret() == rt.expose_secret()),
            "the refresh token just added is not found by {q:?}"
        );
    }
}
