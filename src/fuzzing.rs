//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`; not a public API).
//!
//! One function per target. Each takes the fuzzer's bytes, runs one parser that reads
//! provider, file or process input, and checks the invariants below, **panicking** when one
//! is violated (libFuzzer reports any panic as a crash). Every call into the crate's internals
//! is in this file, so a change of an internal signature is fixed here alone.
//!
//! | function | parser | invariants (beyond "does not panic") |
//! | --- | --- | --- |
//! | [`www_authenticate`] | `bearer::parse_challenges`, `claims_challenge` | returned claims are JSON; challenges are well-formed and survive a print and re-parse; errors are short |
//! | [`token_response`] | `entra::token_client::parse_response` | a secret embedded in the body (raw, form-urlencoded, `%20`, JSON-escaped, …) is absent from the error's `Display`, `Debug` and `{:#?}`, and so is any prefix of it `redact` masks (a request echoed cut short) |
//! | [`mi_response`] | `credential::managed_identity::response::parse_answer` | as [`token_response`], for the source's secret (`IDENTITY_HEADER`, `MSI_SECRET`, the Arc key) and for the `access_token` of an error answer; a token lives at most `MAX_TOKEN_LIFETIME` and is refreshed before it expires |
//! | [`msal_cache`] | `entra::msal_cache::CacheDocument` | views and queries agree; `to_vec` re-parses and is a fixed point; `remove_expired_access_tokens` and `add_token_response` keep that, and what was added is found |
//! | [`az_output`] | `credential::azure_cli::parse_output`, `credential::azure_developer_cli::parse_output` | a token's lifetime is bounded; an error never quotes the access token, whole or two thirds of it |
//! | [`certificate`] | `CertificateSource` loading (PEM sections, PKCS#12) and assertion signing | errors are one short line that quotes no input; a certificate that loads signs a three-part JWT |
//! | [`retry_after`] | `transport::retry_after` | the wait is at most [`RETRY_AFTER_BOUND`] (one hour); a plain number of seconds is honoured up to it |

#![deny(missing_docs)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "the fuzz targets' invariant checks: a violated one must panic"
)]

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{HeaderName, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

use crate::bearer::{Challenge, claims_challenge, parse_challenges};
use crate::credential::ManagedIdentitySource;
use crate::credential::azure_cli::parse_output;
use crate::credential::managed_identity::response::parse_answer;
use crate::entra::msal_cache::{
    AccessTokenQuery, CacheDocument, CachedAccessToken, NewTokens, RefreshToken, RefreshTokenQuery,
};
use crate::entra::token_client::parse_response;
use crate::redact::MIN_PREFIX_CHARS;
use crate::token::{MAX_TOKEN_LIFETIME, Secret, unix_now};

/// Longest `Display` of a claims-challenge error: it quotes at most 64 characters of the
/// header, plus the decoder's short reason.
const CLAIMS_ERROR_MAX_CHARS: usize = 512;

/// The longest wait [`retry_after`] may return: the crate reads any longer `Retry-After`
/// (up to `1e300` seconds or a date in the year 9999) as this.
pub const RETRY_AFTER_BOUND: Duration = crate::transport::MAX_RETRY_AFTER;

// ---------------------------------------------------------------------------------------------
// www_authenticate
// ---------------------------------------------------------------------------------------------

/// `WWW-Authenticate` parsing. `data` is split at `\n` into header lines (lines that are not
/// valid header values are dropped, as `http` would).
///
/// Checks: [`claims_challenge`] returns claims only when they are JSON text, and only when a
/// `Bearer` challenge with `error="insufficient_claims"` was parsed; its error is short;
/// parsed schemes and parameter names are tokens; printing the challenges canonically and
/// parsing that again gives the same challenges.
pub fn www_authenticate(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(WWW_AUTHENTICATE, value);
        }
    }
    let challenges = parse_challenges(&headers);
    for challenge in &challenges {
        assert!(is_token(challenge.scheme()), "scheme {challenge:?}");
        for (name, _) in challenge.params() {
            assert!(is_token(name), "parameter name {challenge:?}");
        }
        if let Some(token68) = challenge.token68() {
            assert!(
                challenge.params().next().is_none(),
                "token68 and params: {challenge:?}"
            );
            assert!(!token68.is_empty(), "empty token68: {challenge:?}");
        }
    }

    match claims_challenge(&headers) {
        Ok(Some(claims)) => {
            if let Err(e) = serde_json::from_str::<Value>(&claims) {
                panic!("claims_challenge returned claims that are not JSON ({e}): {claims:?}");
            }
            assert!(
                challenges
                    .iter()
                    .any(|c| c.is_scheme("Bearer")
                        && c.param("error") == Some("insufficient_claims")),
                "claims without an insufficient_claims Bearer challenge: {challenges:?}"
            );
        }
        Ok(None) => {}
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.chars().count() <= CLAIMS_ERROR_MAX_CHARS,
                "claims error of {} chars",
                shown.chars().count()
            );
            let _ = format!("{e:?}");
        }
    }

    // Canonical form: one line, `scheme token68` or `scheme name="value", …`, challenges
    // joined by `, `. It must parse back to the same challenges.
    if !challenges.is_empty() {
        let line = challenges
            .iter()
            .map(print_challenge)
            .collect::<Vec<_>>()
            .join(", ");
        let mut printed = HeaderMap::new();
        let value = HeaderValue::from_str(&line)
            .unwrap_or_else(|e| panic!("canonical form is not a header value ({e}): {line:?}"));
        printed.append(WWW_AUTHENTICATE, value);
        let reparsed = parse_challenges(&printed);
        assert_eq!(reparsed, challenges, "canonical form {line:?}");
    }
}

/// RFC 9110 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A challenge as RFC 9110 writes it, every parameter value quoted.
fn print_challenge(challenge: &Challenge) -> String {
    let mut out = challenge.scheme().to_owned();
    if let Some(token68) = challenge.token68() {
        out.push(' ');
        out.push_str(token68);
        return out;
    }
    for (i, (name, value)) in challenge.params().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// token_response
// ---------------------------------------------------------------------------------------------

/// One encoding of a secret.
type Encoder = fn(&str) -> String;

/// Placeholder bytes of a [`token_response`] body template, and the encoding of the secret
/// each one becomes.
const PLACEHOLDERS: [(u8, Encoder); 6] = [
    (0x01, |s| s.to_owned()),
    (0x02, form_urlencoded),
    (0x03, |s| form_urlencoded(s).replace('+', "%20")),
    (0x04, json_escaped),
    (0x05, percent_every_byte),
    (0x06, json_unicode_every_char),
];

fn form_urlencoded(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn json_escaped(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_owned()
}

fn percent_every_byte(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn json_unicode_every_char(s: &str) -> String {
    s.encode_utf16().map(|u| format!("\\u{u:04x}")).collect()
}

/// The encodings of `secret` whose presence in an error is a leak: those the body can carry,
/// and how `{:?}` prints the secret.
fn leak_forms(secret: &str) -> Vec<String> {
    let mut forms: Vec<String> = PLACEHOLDERS.iter().map(|(_, f)| f(secret)).collect();
    let debug = format!("{secret:?}");
    forms.push(debug[1..debug.len() - 1].to_owned());
    forms.sort();
    forms.dedup();
    forms
}

/// `Display`, `Debug` and `{:#?}` of a value.
fn renderings(value: &(impl std::fmt::Display + Debug)) -> [String; 3] {
    [
        value.to_string(),
        format!("{value:?}"),
        format!("{value:#?}"),
    ]
}

/// Panics if a form of the secret, or of a prefix of it as long as `redact` masks (at least
/// [`MIN_PREFIX_CHARS`] characters and half the secret: a request echoed cut short), shows in
/// `found` but not in `control` (the same input without the secret: what shows there anyway
/// is the crate's own text or the input's other text, not a leak).
fn assert_no_leak(what: &str, secret: &str, found: &[String], control: &[String]) {
    // The mask is not the secret: `s p&c$s` of the body before a masked copy reads as the
    // secret `s p&c$s*p&c=`'s prefix if the mask's `*` counts (no secret has a NUL).
    let found: Vec<String> = found.iter().map(|t| t.replace("***", "\0")).collect();
    let chars: Vec<char> = secret.chars().collect();
    let min_prefix = MIN_PREFIX_CHARS
        .max(chars.len().div_ceil(2))
        .min(chars.len());
    for len in (min_prefix..=chars.len()).rev() {
        let prefix: String = chars[..len].iter().collect();
        for form in leak_forms(&prefix) {
            if control.iter().any(|c| c.contains(form.as_str())) {
                continue;
            }
            if let Some(text) = found.iter().find(|t| t.contains(form.as_str())) {
                panic!(
                    "{what} leaks the secret {secret:?} ({len} of its {} characters, as \
                     {form:?}):\n{text}",
                    chars.len()
                );
            }
        }
    }
}

/// The token endpoint's answer parser.
///
/// Input layout: byte 0 chooses the secret's length (8 to 40), the next bytes are the secret
/// (printable ASCII; a space only between two other characters, and at least three
/// distinct characters), the next two the HTTP status (100 to 999),
/// and the rest is a body template in which the bytes `0x01`..=`0x06` stand for the secret
/// raw, form-urlencoded (`+`), percent-encoded with `%20`, JSON-escaped, `%XX` for every byte,
/// and `\uXXXX` for every character. The secret is passed to the parser as the request's
/// secret.
///
/// Checks: no panic for any status and body; an error's `Display`, `Debug` and `{:#?}` show
/// none of those encodings of the secret (nor its `{:?}` form), nor of a prefix of it that
/// `redact` promises to mask, unless they also show it for the same template with the
/// placeholders removed.
pub fn token_response(data: &[u8]) {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let len = 8 + usize::from(len) % 33;
    if rest.len() < len + 2 {
        return;
    }
    let (secret, rest) = rest.split_at(len);
    let Some(secret) = secret_from(secret) else {
        return;
    };
    let status = 100 + u16::from_le_bytes([rest[0], rest[1]]) % 900;
    let template = &rest[2..];
    let Ok(status) = StatusCode::from_u16(status) else {
        return;
    };

    let body = fill_template(template, &secret, true);
    let outcome = run_token_response(status, &body, &secret);
    let Err(found) = outcome else {
        return;
    };
    let control_body = fill_template(template, &secret, false);
    let control = run_token_response(status, &control_body, &secret)
        .err()
        .unwrap_or_default();
    assert_no_leak(
        "a token endpoint error",
        &secret,
        &found,
        &control.into_iter().collect::<Vec<_>>(),
    );
}

/// A secret from fuzzer bytes: printable ASCII; a space only between two other characters
/// (elsewhere it becomes `_`), at least three distinct other characters, none of them more than
/// a third of the secret (else `None`).
///
/// Real secrets look like that, and it keeps the check honest: the crate turns control
/// characters into spaces and joins lines with a space, which can turn text that is not the
/// secret into a run of spaces or a space-padded word, but never creates other characters.
fn secret_from(bytes: &[u8]) -> Option<String> {
    let mut secret = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        let c = char::from(b' ' + b % 95);
        let inner = i + 1 < bytes.len() && !secret.is_empty() && !secret.ends_with(' ');
        secret.push(if c == ' ' && !inner { '_' } else { c });
    }
    let distinct: BTreeSet<char> = secret.chars().filter(|&c| c != ' ').collect();
    // Nor is any character more than a third of it: a secret of mostly `\\` would be
    // "found" wherever an error's `Debug` doubles the backslashes of ordinary text.
    let most = distinct
        .iter()
        .map(|d| secret.chars().filter(|c| c == d).count())
        .max()
        .unwrap_or(0);
    (distinct.len() >= 3 && most * 3 <= secret.chars().count()).then_some(secret)
}

/// The body: each placeholder replaced by its encoding of `secret` (or removed).
fn fill_template(template: &[u8], secret: &str, embed: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(template.len() + 64);
    for &b in template {
        match PLACEHOLDERS.iter().find(|(p, _)| *p == b) {
            Some((_, encode)) if embed => body.extend_from_slice(encode(secret).as_bytes()),
            Some(_) => {}
            None => body.push(b),
        }
    }
    body
}

/// Parses `body`; for an error, its three renderings.
fn run_token_response(status: StatusCode, body: &[u8], secret: &str) -> Result<(), [String; 3]> {
    let sent_at_unix = unix_now();
    match parse_response(
        "FuzzCredential",
        status,
        body,
        &[secret],
        tokio::time::Instant::now(),
        sent_at_unix,
    ) {
        Ok(response) => {
            let _ = format!("{response:?}");
            Ok(())
        }
        Err(error) => Err(renderings(&error)),
    }
}

// ---------------------------------------------------------------------------------------------
// mi_response
// ---------------------------------------------------------------------------------------------

/// The managed identity endpoints' answer parser.
///
/// Input layout: as [`token_response`]; the secret stands for the source's own secret
/// (`IDENTITY_HEADER`, `MSI_SECRET`, the Arc agent's key).
///
/// Checks: no panic for any status and body; a token lives at most `MAX_TOKEN_LIFETIME` and
/// its refresh time is not after its expiry; an error's `Display`, `Debug` and `{:#?}` show
/// neither the secret (as [`token_response`] checks) nor the body's `access_token` when that
/// is secret-like (8 to 64 printable characters, at least three distinct, none more than a
/// third; not sharing 4 characters in a row with the secret, whose masking could cut it),
/// compared with the same body whose `access_token` is replaced.
pub fn mi_response(data: &[u8]) {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let len = 8 + usize::from(len) % 33;
    if rest.len() < len + 2 {
        return;
    }
    let (secret, rest) = rest.split_at(len);
    let Some(secret) = secret_from(secret) else {
        return;
    };
    let status = 100 + u16::from_le_bytes([rest[0], rest[1]]) % 900;
    let template = &rest[2..];
    let Ok(status) = StatusCode::from_u16(status) else {
        return;
    };

    let body = fill_template(template, &secret, true);
    let Err(found) = run_mi_response(status, &body, &secret) else {
        return;
    };
    let control_body = fill_template(template, &secret, false);
    let control = run_mi_response(status, &control_body, &secret)
        .err()
        .unwrap_or_default();
    assert_no_leak(
        "a managed identity error",
        &secret,
        &found,
        &control.into_iter().collect::<Vec<_>>(),
    );

    // The access token of an error answer.
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&body) else {
        return;
    };
    let Some(token) = object
        .get("access_token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .filter(|t| secret_like(t) && !shares_text(t, &secret))
    else {
        return;
    };
    object.insert("access_token".into(), Value::from("~".repeat(token.len())));
    let replaced = serde_json::to_vec(&object).unwrap();
    let control = run_mi_response(status, &replaced, &secret)
        .err()
        .unwrap_or_default();
    assert_no_leak(
        "a managed identity error (its access_token)",
        &token,
        &found,
        &control.into_iter().collect::<Vec<_>>(),
    );
}

/// What [`secret_from`] makes: printable ASCII, single inner spaces, at least three distinct
/// characters, none more than a third.
fn secret_like(s: &str) -> bool {
    let printable = s.bytes().all(|b| (0x20..0x7f).contains(&b));
    let spaces_ok = !s.starts_with(' ') && !s.ends_with(' ') && !s.contains("  ");
    let distinct: BTreeSet<char> = s.chars().filter(|&c| c != ' ').collect();
    let most = distinct
        .iter()
        .map(|d| s.chars().filter(|c| c == d).count())
        .max()
        .unwrap_or(0);
    (8..=64).contains(&s.len())
        && printable
        && spaces_ok
        && distinct.len() >= 3
        && most * 3 <= s.chars().count()
}

/// Whether `a` and `b` have 4 characters in a row in common.
fn shares_text(a: &str, b: &str) -> bool {
    let b: Vec<char> = b.chars().collect();
    b.windows(4)
        .any(|w| a.contains(w.iter().collect::<String>().as_str()))
}

/// Parses a managed identity answer; for an error, its three renderings.
fn run_mi_response(status: StatusCode, body: &[u8], secret: &str) -> Result<(), [String; 3]> {
    let now = tokio::time::Instant::now();
    match parse_answer(
        ManagedIdentitySource::AppService,
        status,
        body,
        &[secret],
        now,
        unix_now(),
    ) {
        Ok(answer) => {
            let token = &answer.token;
            assert!(
                token.expires_on() <= now + MAX_TOKEN_LIFETIME,
                "a token outlives MAX_TOKEN_LIFETIME: {answer:?}"
            );
            assert!(
                token.refresh_on().is_none_or(|r| r <= token.expires_on()),
                "refresh after expiry: {answer:?}"
            );
            Ok(())
        }
        Err(error) => Err(renderings(&error)),
    }
}

// ---------------------------------------------------------------------------------------------
// msal_cache
// ---------------------------------------------------------------------------------------------

/// The MSAL token-cache document and its queries, for `benches/msal_cache.rs`: the bench
/// measures the very code the credentials run.
pub mod msal {
    pub use crate::entra::msal_cache::{
        AccessTokenQuery, Account, AppMetadata, CacheDocument, CachedAccessToken, DocumentError,
        IdToken, NewTokens, RawEntry, RefreshToken, RefreshTokenQuery,
    };
}

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
        assert!(smaller.remove_refresh_token(&rt.key), "{:?}", rt.key);
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
    let app_only = answer.client_info.is_none() && answer.id_token.is_none();
    if app_only {
        assert_eq!(returned, None, "app-only answer returned an account");
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

// ---------------------------------------------------------------------------------------------
// az_output
// ---------------------------------------------------------------------------------------------

/// The output of `az account get-access-token --output json` and of
/// `azd auth token --output json`: `data` is stdout, read by both parsers.
///
/// Checks: a token's lifetime is at most the crate's maximum; an error shows no token value
/// (`accessToken` for az, `token` for azd) of 8 characters or more (unless it shows it with
/// the token replaced, i.e. the value is the crate's own text).
pub fn az_output(data: &[u8]) {
    tool_output(data, "Azure CLI", "accessToken", parse_output);
    tool_output(
        data,
        "Azure Developer CLI",
        "token",
        crate::credential::azure_developer_cli::parse_output,
    );
}

fn tool_output(
    data: &[u8],
    tool: &str,
    field: &str,
    parse_output: fn(&[u8]) -> Result<crate::AccessToken, crate::CredentialError>,
) {
    match parse_output(data) {
        Ok(token) => {
            assert!(
                token.expires_in() <= MAX_TOKEN_LIFETIME + Duration::from_secs(1),
                "lifetime {:?} beyond the maximum",
                token.expires_in()
            );
            let _ = format!("{token:?}");
        }
        Err(error) => {
            let Ok(mut json) = serde_json::from_slice::<Value>(data) else {
                return;
            };
            let Some(Value::String(secret)) = json.get(field).cloned() else {
                return;
            };
            if secret.chars().count() < 8 {
                return;
            }
            if let Some(object) = json.as_object_mut() {
                object.insert(
                    field.to_owned(),
                    Value::String("\u{1}".repeat(secret.chars().count())),
                );
            }
            let control = serde_json::to_vec(&json)
                .ok()
                .and_then(|bytes| parse_output(&bytes).err())
                .map(|e| renderings(&e).to_vec())
                .unwrap_or_default();
            assert_no_leak(
                &format!("a {tool} output error"),
                &secret,
                &renderings(&error),
                &control,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// retry_after
// ---------------------------------------------------------------------------------------------

/// The header names the retry policy reads, in the order a selector byte picks them.
const RETRY_HEADERS: [&str; 4] = [
    "retry-after",
    "retry-after-ms",
    "x-ms-retry-after-ms",
    "x-unrelated",
];

/// `Retry-After` and its millisecond variants.
///
/// Input layout: four bytes (little-endian) are "now" in seconds after the Unix epoch, then
/// `\n`-separated header lines whose first byte picks the name (`retry-after`,
/// `retry-after-ms`, `x-ms-retry-after-ms`, or an unrelated one) and whose rest is the value
/// (lines that are not valid header values are dropped).
///
/// Checks: no panic; the wait is at most [`RETRY_AFTER_BOUND`]; when the only header is
/// `retry-after` and its value is a plain number of seconds from 0 to 10⁹, the wait is that
/// number of seconds (to the millisecond), or the bound when it is larger.
pub fn retry_after(data: &[u8]) {
    let Some((now, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::from_le_bytes(*now)));
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some((&selector, value)) = line.split_first() else {
            continue;
        };
        let name = RETRY_HEADERS[usize::from(selector) % RETRY_HEADERS.len()];
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name), value);
        }
    }
    let wait = crate::transport::retry_after(&headers, now);
    if let Some(wait) = wait {
        assert!(
            wait <= RETRY_AFTER_BOUND,
            "retry_after({headers:?}) = {wait:?}, beyond {RETRY_AFTER_BOUND:?}"
        );
    }
    let only_retry_after = headers
        .keys()
        .all(|k| k == "retry-after" || k == "x-unrelated");
    let seconds = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| (0.0..=1e9).contains(s));
    if let (true, Some(seconds)) = (only_retry_after, seconds) {
        let wait = wait.unwrap_or_else(|| panic!("retry_after({headers:?}) ignored {seconds}"));
        let expected = seconds.min(RETRY_AFTER_BOUND.as_secs_f64());
        let diff = (wait.as_secs_f64() - expected).abs();
        assert!(
            diff < 1e-3,
            "retry_after({headers:?}) = {wait:?}, not {expected} s"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// certificate
// ---------------------------------------------------------------------------------------------

/// The longest load error: messages name what was wrong and quote no input.
const CERTIFICATE_ERROR_MAX_CHARS: usize = 600;

/// Certificate loading. Layout: byte 0 even = the rest is PEM text; odd = byte 1 is a password
/// length `n`, the next `n` bytes the password (lossy UTF-8), the rest a PKCS#12 archive.
///
/// Checks: an error is one line of at most `CERTIFICATE_ERROR_MAX_CHARS` characters with no
/// PEM armour and no base64 run from the input; a loaded certificate has a leaf, and signs an
/// assertion of three base64url parts.
pub fn certificate(data: &[u8]) {
    use crate::credential::certificate::CertificateSource;
    use crate::credential::certificate::jwt::{CertificateSignature, Signer};

    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let source = if kind % 2 == 0 {
        CertificateSource::from_pem(rest.to_vec())
    } else {
        let Some((&n, rest)) = rest.split_first() else {
            return;
        };
        let n = usize::from(n).min(rest.len());
        let password = String::from_utf8_lossy(&rest[..n]).into_owned();
        CertificateSource::from_pkcs12(rest[n..].to_vec(), Some(Secret::new(password)))
    };
    match source.load(unix_now()) {
        Ok(loaded) => {
            assert!(!loaded.leaf().is_empty());
            let signer = Signer::new(loaded, CertificateSignature::Ps256, true);
            let jwt = signer
                .sign(
                    "https://login.test/t/oauth2/v2.0/token",
                    "client",
                    unix_now(),
                )
                .expect("a loaded key signs");
            let parts: Vec<&str> = jwt.split('.').collect();
            assert_eq!(parts.len(), 3, "{jwt}");
            for part in parts {
                URL_SAFE_NO_PAD.decode(part).expect("base64url part");
            }
        }
        Err(message) => {
            assert!(
                message.chars().count() <= CERTIFICATE_ERROR_MAX_CHARS,
                "{message}"
            );
            assert!(!message.contains('\n'), "{message}");
            assert!(!message.contains("-----"), "{message}");
            // No run of 24+ input characters (a quoted key or certificate line).
            let text = String::from_utf8_lossy(data);
            for word in message.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
                if word.len() >= 24 {
                    assert!(!text.contains(word), "quotes input: {word} in {message}");
                }
            }
        }
    }
}
