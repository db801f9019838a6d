//! Scrubbing secrets out of text that came from outside: a provider's error answer, a proxy's
//! error page, a program's output. Every error message built from such text goes through here.
//!
//! Three rules, applied in turn:
//!
//! 1. **Known secrets** (what the credential sent: client secret, authorization code, client
//!    assertion, refresh tokens) are found in every encoding they come back in: raw,
//!    percent-encoded (upper- or lower-case hex, `+` or `%20` for a space, fully or partly
//!    encoded), JSON-escaped (`\"`, `\\`, `\/`, `\uXXXX`, surrogate pairs included) and
//!    HTML-escaped (`&amp;`, `&lt;`, …), as well as any mix of these — an IdP that echoes the
//!    form body in a JSON `error_description` produces exactly such a mix. A server that
//!    echoes a request cut short leaves a *prefix* of a secret: one of at least
//!    [`MIN_PREFIX_CHARS`] characters and half the secret is masked too. A secret with a `\`
//!    is also looked for as a JSON decoder reads it: a server that pastes it unescaped into a
//!    JSON string (`"…xc\"y…"`) has its backslashes read as escapes by the time we see the text.
//! 2. **JWT-shaped runs** (`eyJ…` with a dot): access tokens, id tokens, assertions we did not
//!    send.
//! 3. **Values of secret fields**, JSON (`"refresh_token": "…"`) or form style
//!    (`client_secret=…`): any `…_token`, `client_secret`, `client_assertion`, `device_code`,
//!    `code_verifier` and `password`. A page that echoes a form body cut short leaves less than
//!    rule 1's prefix of a secret; its field name still gives it away.
//!
//! Matches become `***`. Secrets shorter than [`MIN_SECRET_LEN`] bytes are not searched for:
//! they would match ordinary text.
//!
//! The search for a secret takes time linear in the text and the secret, whatever either
//! holds (a text or secret chosen by the provider included): see [`mask_encoded`].

/// Secrets shorter than this are not searched for.
pub(crate) const MIN_SECRET_LEN: usize = 4;
/// The shortest prefix of a secret that is masked on its own (and at least half the secret):
/// shorter ones would match ordinary text.
pub(crate) const MIN_PREFIX_CHARS: usize = 8;
/// The most characters of a text we did not write (a helper program's stderr, a callback's or
/// a middleware's error, a panic message) that an error quotes, once scrubbed.
pub(crate) const MAX_QUOTED_CHARS: usize = 300;
/// What a match becomes.
const MASK: &str = "***";

/// `text` with secrets and token values replaced by `***` (see the module docs).
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    scrub_with(text, secrets, mask_encoded)
}

/// [`scrub`], each secret masked by `mask` (the tests' `reference` passes the old search).
fn scrub_with(text: &str, secrets: &[&str], mask: fn(&str, &str) -> String) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
        out = mask(&out, secret);
        if let Some(read) = json_read(secret).filter(|r| r.len() >= MIN_SECRET_LEN) {
            out = mask(&out, &read);
        }
    }
    SECRET_FIELDS
        .iter()
        .fold(scrub_jwts(&out), |text, name| scrub_fields(&text, name))
}

/// The start of a body that could not be read as expected: lossily decoded, scrubbed, control
/// characters replaced by spaces, at most `max_chars` characters, trimmed.
///
/// The whole body is scrubbed before it is cut: cutting first could split a secret (masked
/// copies before it shrink, so a byte window says nothing about where the shown text ends).
/// Bodies reaching here are bounded already (the transport's response cap, a helper program's
/// output cap).
pub(crate) fn excerpt(body: &[u8], secrets: &[&str], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(body);
    // Scrubbed again once control characters are spaces: a NUL where the secret has a space
    // would otherwise turn a harmless near-copy into the secret.
    let spaced: String = scrub(&text, secrets)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    scrub(&spaced, secrets)
        .chars()
        .take(max_chars)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// At most `max_chars` characters of `text`, with `…` when it was cut.
pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// `secret` as a JSON decoder reads it inside a string (`\"` → `"`, `\\` → `\`, `\uXXXX` →
/// the character, …), when that differs from the secret; escapes JSON does not know stay.
fn json_read(secret: &str) -> Option<String> {
    if !secret.contains('\\') {
        return None;
    }
    let mut out = String::with_capacity(secret.len());
    let mut chars = secret.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let mut ahead = chars.clone();
        let read = match ahead.next() {
            Some('"') => Some('"'),
            Some('\\') => Some('\\'),
            Some('/') => Some('/'),
            Some('b') => Some('\u{8}'),
            Some('f') => Some('\u{c}'),
            Some('n') => Some('\n'),
            Some('r') => Some('\r'),
            Some('t') => Some('\t'),
            Some('u') => {
                let hex: String = ahead.by_ref().take(4).collect();
                u32::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 4)
                    .and_then(char::from_u32)
            }
            _ => None,
        };
        match read {
            Some(decoded) => {
                out.push(decoded);
                chars = ahead;
            }
            None => out.push(c),
        }
    }
    (out != secret).then_some(out)
}

mod readings;
#[cfg(test)]
pub(crate) mod reference;
mod search;
#[cfg(test)]
mod tests;

use search::mask_encoded;
#[cfg(test)]
use search::mask_encoded_counted;

fn is_jwt_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | '+' | '/')
}

/// `eyJ…` runs that contain a dot: JWT/JWS/JWE compact serialisations.
fn scrub_jwts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("eyJ") {
        out.push_str(&rest[..at]);
        let candidate = &rest[at..];
        let len = candidate
            .find(|c| !is_jwt_char(c))
            .unwrap_or(candidate.len());
        if candidate[..len].contains('.') {
            out.push_str(MASK);
        } else {
            out.push_str(&candidate[..len]);
        }
        rest = &candidate[len..];
    }
    out.push_str(rest);
    out
}

/// The ends of field names whose values are masked (rule 3). Not `code`: error answers carry
/// `"code": "…"` fields worth reading, and an authorization code is one of rule 1's secrets.
const SECRET_FIELDS: [&str; 6] = [
    "_token",
    "client_secret",
    "client_assertion",
    "device_code",
    "code_verifier",
    "password",
];

/// Values of fields whose name ends in `name` (`_token`: `access_token`, `refresh_token`, …)
/// after `":"` or `=`.
fn scrub_fields(text: &str, name: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(name) {
        let Some((head, tail)) = rest.split_at_checked(at.saturating_add(name.len())) else {
            break;
        };
        out.push_str(head);
        // Skip a closing quote, spaces and the separator, then an opening quote.
        let after_name = tail.trim_start_matches(['"', '\\']).trim_start();
        let Some(after_sep) = after_name
            .strip_prefix(':')
            .or_else(|| after_name.strip_prefix('='))
        else {
            rest = tail;
            continue;
        };
        let after_sep = after_sep.trim_start();
        let quote = after_sep
            .strip_prefix("\\\"")
            .map(|_| "\\\"")
            .or_else(|| after_sep.starts_with('"').then_some("\""));
        let value_start = match quote {
            Some(q) => after_sep.get(q.len()..).unwrap_or_default(),
            None => after_sep,
        };
        let end = match quote {
            Some(q) => value_start.find(q),
            None => value_start.find(['&', ',', '}', ' ', '\r', '\n']),
        }
        .unwrap_or(value_start.len());
        if end == 0 {
            rest = tail;
            continue;
        }
        let separator = tail.len().saturating_sub(value_start.len());
        out.push_str(tail.get(..separator).unwrap_or_default());
        out.push_str(MASK);
        rest = value_start.get(end..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}
