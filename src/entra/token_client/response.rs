//! Answers of the token endpoint: the token, or the provider's error made readable.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::encoding::{number, number_field, string_field, token_lifetime};
use crate::error::{CredentialError, ProviderDetails};
use crate::redact::{excerpt, quoted_line};
use crate::token::{AccessToken, HALF_LIFE_THRESHOLD, Secret, clamped_lifetime, instant_after};

/// Longest excerpt of an unreadable body quoted in an error.
const BODY_EXCERPT_CHARS: usize = 200;

/// A successful answer of the token endpoint.
#[derive(Debug)]
pub(crate) struct TokenResponse {
    pub(crate) token: AccessToken,
    pub(crate) refresh_token: Option<Secret>,
    pub(crate) id_token: Option<Secret>,
    pub(crate) client_info: Option<String>,
    pub(crate) foci: Option<String>,
    pub(crate) scope: Option<String>,
    /// Wall-clock timestamps (Unix seconds), for caches written to disk.
    pub(crate) cached_at: u64,
    pub(crate) expires_on: u64,
    pub(crate) extended_expires_on: u64,
    pub(crate) refresh_on: Option<u64>,
}

/// Parses an answer of the token endpoint.
pub(crate) fn parse_response(
    credential: &'static str,
    status: StatusCode,
    body: &[u8],
    secrets: &[&str],
    sent_at: Instant,
    sent_at_unix: u64,
) -> Result<TokenResponse, CredentialError> {
    let object = parse_object(credential, status, body, secrets)?;
    parse_success(&object, sent_at, sent_at_unix).map_err(|reason| {
        CredentialError::authentication_failed(
            credential,
            format!("Unexpected response from Microsoft Entra ID: {reason}"),
        )
        .with_provider(ProviderDetails {
            status: Some(status),
            ..ProviderDetails::default()
        })
    })
}

/// The JSON object of a successful answer; an error answer (any `error` field, or a failure
/// status) or a body that is not a JSON object is the error it describes.
pub(super) fn parse_object(
    credential: &'static str,
    status: StatusCode,
    body: &[u8],
    secrets: &[&str],
) -> Result<Map<String, Value>, CredentialError> {
    let Some(Value::Object(object)) = serde_json::from_slice::<Value>(body).ok() else {
        let mut message = if status.is_success() {
            "Unexpected response from Microsoft Entra ID: the body is not a JSON object".to_owned()
        } else {
            format!("Microsoft Entra ID answered HTTP {status} without an error description")
        };
        let excerpt = excerpt(body, secrets, BODY_EXCERPT_CHARS);
        if !excerpt.is_empty() {
            // Quoted as it is: the excerpt has no control characters left, and escaping it
            // again would make a JSON body unreadable (`{\"error\":…`).
            message.push_str(&format!(" (body starts: \"{excerpt}\")"));
        }
        return Err(
            CredentialError::authentication_failed(credential, message).with_provider(
                ProviderDetails {
                    status: Some(status),
                    ..ProviderDetails::default()
                },
            ),
        );
    };
    if object.contains_key("error") || !status.is_success() {
        return Err(provider_error(credential, status, &object, secrets));
    }
    Ok(object)
}

fn parse_success(
    object: &Map<String, Value>,
    sent_at: Instant,
    sent_at_unix: u64,
) -> Result<TokenResponse, String> {
    let access_token = match object.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => Secret::new(t.as_str()),
        _ => return Err("the answer has no access_token".into()),
    };
    // `expires_in` wins, `expires_on` only without it: one rule with the managed identity
    // parser (see `token_lifetime`).
    // Every number is clamped to MAX_TOKEN_LIFETIME before it meets a clock: `"expires_in":
    // 1e20` is a broken provider, not a reason to overflow.
    let lifetime_secs = token_lifetime(object, sent_at_unix, |value| {
        number(value).ok_or_else(|| "expires_on is not a non-negative number".to_owned())
    })?;
    let lifetime_secs = clamped_lifetime(lifetime_secs).as_secs();
    if lifetime_secs == 0 {
        return Err("the token it issued has already expired".into());
    }
    // Hints: one that cannot be read is ignored, not a reason to refuse the token.
    let hint = |name: &str| {
        number_field(object, name).unwrap_or_else(|_| {
            ignored(name);
            None
        })
    };
    let refresh_in = match hint("refresh_in") {
        // A refresh time past expiry means nothing more than expiry.
        Some(secs) => Some(secs.min(lifetime_secs)),
        None if Duration::from_secs(lifetime_secs) >= HALF_LIFE_THRESHOLD => {
            Some(lifetime_secs / 2)
        }
        None => None,
    };
    let ext_expires_in =
        hint("ext_expires_in").map_or(lifetime_secs, |secs| clamped_lifetime(secs).as_secs());
    let token_type = match object.get("token_type") {
        Some(Value::String(t)) if !t.is_empty() => t.as_str(),
        _ => "Bearer",
    };
    let token = AccessToken::new(access_token, instant_after(sent_at, lifetime_secs))
        .with_refresh_on(refresh_in.map(|s| instant_after(sent_at, s)))
        .with_token_type(token_type);
    let string = |name: &str| string_field(object, name);
    Ok(TokenResponse {
        token,
        refresh_token: string("refresh_token").map(Secret::new),
        id_token: string("id_token").map(Secret::new),
        client_info: string("client_info"),
        foci: string("foci"),
        scope: string("scope"),
        cached_at: sent_at_unix,
        expires_on: sent_at_unix.saturating_add(lifetime_secs),
        extended_expires_on: sent_at_unix.saturating_add(ext_expires_in),
        refresh_on: refresh_in.map(|s| sent_at_unix.saturating_add(s)),
    })
}

/// Logs a field of a successful answer that was ignored because it is not a number (its value
/// is not logged: the answer holds tokens).
fn ignored(field: &str) {
    tracing::debug!(
        field,
        "token endpoint answer: ignored a field that is not a non-negative number"
    );
}

/// The longest text kept of an error answer's field: Entra's descriptions run to some 400
/// characters (the message, then trace and correlation ids and a timestamp).
const MAX_PROVIDER_TEXT_CHARS: usize = 2000;

/// An error answer: `Microsoft Entra ID error '(code) description'`, with the details kept
/// apart and a hint for the common mistakes.
fn provider_error(
    credential: &'static str,
    status: StatusCode,
    object: &Map<String, Value>,
    secrets: &[&str],
) -> CredentialError {
    // Every quoted field on one line, without characters that could forge log lines or
    // reorder text (an `error` of several lines went into the message as it was), and bounded.
    let text = |name: &str| {
        object
            .get(name)
            .and_then(Value::as_str)
            .map(|s| quoted_line(s, secrets, MAX_PROVIDER_TEXT_CHARS))
    };
    let error = text("error");
    let codes: Vec<u32> = object
        .get("error_codes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(number)
                .filter_map(|n| u32::try_from(n).ok())
                .collect()
        })
        .unwrap_or_default();
    let description = text("error_description");
    let mut message = match (&error, &description) {
        (Some(e), Some(d)) => format!("Microsoft Entra ID error '({e}) {d}'"),
        (Some(e), None) => format!("Microsoft Entra ID error '({e})'"),
        (None, _) => format!("Microsoft Entra ID answered HTTP {status} without an error code"),
    };
    if let Some(hint) = hint(credential, error.as_deref(), &codes) {
        message.push_str(". ");
        message.push_str(hint);
    }
    CredentialError::authentication_failed(credential, message).with_provider(ProviderDetails {
        status: Some(status),
        error,
        error_codes: codes,
        correlation_id: text("correlation_id"),
        suberror: object
            .get("suberror")
            .and_then(Value::as_str)
            .filter(|s| is_suberror(s))
            .map(str::to_owned),
    })
}

/// Longest `suberror` kept: Entra's are short identifiers (`user_password_expired`).
const MAX_SUBERROR_CHARS: usize = 64;

/// Whether `value` looks like one of Entra's `suberror` identifiers: short, ASCII letters,
/// digits and `_`. Anything else (a long or odd string) is dropped: the value only ever
/// selects what to do with a refresh token, and is never quoted.
fn is_suberror(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_SUBERROR_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// What to do about the errors people hit most, for `credential` (the name of the one that
/// asked). Not `invalid_grant`: what to do depends on the grant and the credential (a new
/// authorization code, a new device code sign-in, `az login`), so the user credentials say it
/// themselves.
fn hint(credential: &str, error: Option<&str>, codes: &[u32]) -> Option<&'static str> {
    let code = |c: u32| codes.contains(&c);
    Some(match error {
        _ if code(7000215) => {
            "Check that the client secret is the secret's value (not its id) and belongs to this app"
        }
        _ if code(7000222) => "The client secret has expired: create a new one for the app",
        _ if code(700016) => "Check the client id, and that the app is registered in this tenant",
        _ if code(90002) => "Check the tenant id: no such tenant was found",
        // Entra's code for an assertion out of its time range. Who dated the assertion says
        // where to look: a certificate credential's own by this host's clock, a workload
        // identity's token by the Kubernetes API server (the file is stale), a callback's by
        // the callback (or whatever signs it, often the callback's own host).
        _ if code(700024) => match credential {
            "ClientCertificateCredential" => {
                "The client assertion has expired or is not yet valid: check this host's clock \
                 (the certificate credential dates its assertion by it; keep it synchronised)"
            }
            "WorkloadIdentityCredential" => {
                "The client assertion, the service-account token of the token file, has \
                 expired or is not yet valid: the file must be the projected service-account \
                 token the kubelet keeps renewing, not a copy (its times are the Kubernetes API \
                 server's, not this host's)"
            }
            _ => {
                "The client assertion has expired or is not yet valid: the assertion source \
                 must return a current one (check its exp and nbf, and the clock of whatever \
                 signs it)"
            }
        },
        _ if [70021, 700211, 700212, 700213].iter().any(|c| code(*c)) => {
            "Check the app's federated identity credential: its issuer, subject and audience \
             must equal the assertion's iss, sub and aud exactly (case-sensitive)"
        }
        Some("invalid_scope") => {
            "Check the scope; app-only tokens need a \"<resource>/.default\" scope"
        }
        _ => return None,
    })
}
