//! The managed identity endpoints' answer parser.

use std::collections::BTreeSet;

use http::StatusCode;
use serde_json::Value;

use crate::credential::ManagedIdentitySource;
use crate::credential::managed_identity::response::parse_answer;
use crate::token::{MAX_TOKEN_LIFETIME, unix_now};

use super::{assert_no_leak, fill_template, renderings, secret_from};

/// The managed identity endpoints' answer parser.
///
/// Input layout: as [`token_response`](fn@super::token_response); the secret stands for the source's own secret
/// (`IDENTITY_HEADER`, `MSI_SECRET`, the Arc agent's key).
///
/// Checks: no panic for any status and body; a token lives at most `MAX_TOKEN_LIFETIME` and
/// its refresh time is not after its expiry; an error's `Display`, `Debug` and `{:#?}` show
/// neither the secret (as [`token_response`](fn@super::token_response) checks) nor the body's `access_token` when that
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
