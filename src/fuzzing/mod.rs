//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`; not a public API).
//!
//! One function per target. Each takes the fuzzer's bytes, runs one parser that reads
//! provider, file or process input, and checks the invariants below, **panicking** when one
//! is violated (libFuzzer reports any panic as a crash). Every call into the crate's internals
//! is in this module (one file per target; the helpers that tell a leak here), so a change of
//! an internal signature is fixed here alone.
//!
//! | function | parser | invariants (beyond "does not panic") |
//! | --- | --- | --- |
//! | [`www_authenticate`](fn@www_authenticate) | `bearer::www_authenticate::parse_challenges`, `claims_challenge` | returned claims are JSON objects; challenges are well-formed and survive a print and re-parse; errors are short |
//! | [`token_response`](fn@token_response) | `entra::token_client::parse_response` | a secret embedded in the body (raw, form-urlencoded, `%20`, JSON-escaped, …) is absent from the error's `Display`, `Debug` and `{:#?}`, and so is any prefix of it `redact` masks (a request echoed cut short) |
//! | [`mi_response`](fn@mi_response) | `credential::managed_identity::response::parse_answer` | as [`token_response`](fn@token_response), for the source's secret (`IDENTITY_HEADER`, `MSI_SECRET`, the Arc key) and for the `access_token` of an error answer; a token lives at most `MAX_TOKEN_LIFETIME` and is refreshed before it expires |
//! | [`msal_cache`](fn@msal_cache) | `entra::msal_cache::CacheDocument` | views and queries agree; `to_vec` re-parses and is a fixed point; `remove_expired_access_tokens` and `add_token_response` keep that, and what was added is found |
//! | [`az_output`](fn@az_output) | `credential::azure_cli::parse_output`, `credential::azure_developer_cli::parse_output` | a token's lifetime is bounded; an error never quotes the access token, whole or two thirds of it |
//! | [`certificate`](fn@certificate) | `CertificateSource` loading (PEM sections, PKCS#12) and assertion signing | errors are one short line that quotes no input; a certificate that loads signs a three-part JWT |
//! | [`retry_after`](fn@retry_after) | `transport::retry_after` | the wait is at most [`RETRY_AFTER_BOUND`] (one hour); a plain number of seconds is honoured up to it |
//! | [`posix_acl`](fn@posix_acl) | `entra::persistence::acl::Acl::parse`, `to_bytes` (Linux) | what parses is written back byte for byte; `permits` decides as the kernel does; the new file's mode, the ACL set on it and the takeover decisions hold what the module docs say |

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

mod az_output;
mod certificate;
mod mi_response;
mod msal_cache;
mod posix_acl;
mod retry_after;
mod token_response;
mod www_authenticate;

#[cfg(test)]
mod tests;

pub use az_output::az_output;
pub use certificate::certificate;
pub use mi_response::mi_response;
pub use msal_cache::msal_cache;
pub use posix_acl::posix_acl;
pub use retry_after::{RETRY_AFTER_BOUND, retry_after};
pub use token_response::token_response;
pub use www_authenticate::www_authenticate;

use std::collections::BTreeSet;
use std::fmt::Debug;

use crate::redact::MIN_PREFIX_CHARS;

/// The MSAL token-cache document and its queries, for `benches/msal_cache.rs`: the bench
/// measures the very code the credentials run.
pub mod msal {
    pub use crate::entra::msal_cache::{
        AccessTokenQuery, Account, AppMetadata, CacheDocument, CachedAccessToken, DocumentError,
        IdToken, NewTokens, RawEntry, RefreshToken, RefreshTokenQuery,
    };
}

/// One encoding of a secret.
type Encoder = fn(&str) -> String;

/// Placeholder bytes of a [`token_response`](fn@token_response) body template, and the encoding of the secret
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
