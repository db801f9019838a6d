//! The MSAL token-cache document: the JSON file that Azure CLI, MSAL (Python, .NET, JS) and
//! azure-identity share (`~/.IdentityService/msal.cache*`), read and written so that our
//! credentials and those tools see each other's tokens.
//!
//! # Exact preservation
//!
//! A read-modify-write keeps everything it does not touch exactly as it was. The document is
//! held as raw JSON at the granularity of the things we may change:
//!
//! * the top level is an ordered list of sections; the five sections we know (`AccessToken`,
//!   `RefreshToken`, `IdToken`, `Account`, `AppMetadata`) are split into ordered entries, any
//!   other section is one [`RawValue`](serde_json::value::RawValue) kept verbatim;
//! * an entry is an ordered list of fields, each a [`RawValue`](serde_json::value::RawValue); the typed views parse the
//!   fields they need on demand, and a change replaces only the fields it sets;
//! * every object key (section, entry, field) keeps the exact text it had in the file, escapes
//!   included; keys we create are written the way Python's `json` writes them.
//!
//! Serialization reproduces `json.dumps(doc, indent=4)`, which is how msal writes the file:
//! 4-space indentation, `": "` after keys, `,` + newline between items, `{}` for empty
//! objects, strings we write escaped like `ensure_ascii=True` (`\u00e9`, surrogate pairs for
//! astral characters), no trailing newline. Raw values are written verbatim: a multi-line raw
//! value (an unknown section, a nested unknown field) was indented for its depth in the file it
//! came from, and since we write it back at the same depth with the same indentation, its text
//! stays right. A document msal wrote therefore comes back byte for byte
//! (`parse(bytes)?.to_vec() == bytes`).
//!
//! Duplicate keys are resolved as Python's `json` does (the last value wins, at the position of
//! the first), which is what every other reader of the file sees.
//!
//! # What is written, and how it differs from msal
//!
//! [`CacheDocument::add_token_response`] records a token endpoint answer as msal 1.39 does
//! (`TokenCache.add`): same keys, same fields in the same order, same section order, an entry
//! with an existing key replaced at its position. Differences, all deliberate:
//!
//! * no `account_source` is written on new Account entries; fields of an existing Account
//!   entry that we do not set (`account_source` among them) are left as they are;
//! * we do not copy azure-identity's habit of recording an account without a username: when the
//!   answer yields no username (no id token, e.g. a refresh without `openid`) and an Account
//!   with the same `home_account_id` exists in any realm, no Account entry is written (that
//!   empty-username entry would shadow the real one for msal's and azure-identity's
//!   `username` filters);
//! * a refresh grant's answer that finds neither the redeemed refresh token nor any Account of
//!   its account (signed out by another application meanwhile) writes nothing of the account:
//!   msal only skips the Account entry, and so brings back the refresh token, id token and
//!   access token of the user who signed out. Like msal, a refresh creates no Account entry;
//!   unlike msal, it updates an existing one;
//! * `local_account_id` falls back to the client_info `uid` when the id token has neither
//!   `oid` nor `sub` (msal writes `null`), and the username falls back to the `email` claim;
//! * an answer carrying `client_info` or an id token from which no account id can be read is
//!   not cached at all (apart from AppMetadata): its access token must not pass for an
//!   app-only one. Nor is the answer to a user's grant that names no account (neither, and no
//!   redeemed refresh token of a known account): msal files that as app-only, where an
//!   application credential with the same client id would take the user's token.
//!
//! Secrets: token values are handed out as [`Secret`](crate::Secret)s (zeroed on drop), and every raw value
//! the document holds (each field value, each section kept verbatim) is zeroed when it is
//! dropped or replaced. Not zeroed, and left to the caller: the bytes
//! [`CacheDocument::to_vec`] returns (a plain `Vec<u8>` with every secret, for the caller to
//! write to the file and drop; nor the smaller buffers it grew through) and the bytes `parse`
//! borrows (the caller's read buffer). Not zeroed either, as they hold no token: object keys
//! (account ids, hosts, scopes) and the claims decoded from `client_info` and id tokens. Short
//! lived copies of a value made while it is read or escaped are not zeroed. No error or
//! `Debug` output contains a secret.

mod error;
#[cfg(any(test, feature = "fuzzing"))]
mod inspect;
mod keys;
mod queries;
mod raw;
#[cfg(test)]
mod tests;
mod update;
mod views;
mod writer;

use std::fmt;

pub use error::DocumentError;
pub use queries::{AccessTokenQuery, RefreshTokenQuery};
pub use update::{NewTokens, answer_account};
pub use views::{Account, RefreshToken, newest_first};
// What only the fuzz targets and the benchmark name.
#[cfg(feature = "fuzzing")]
pub use {
    inspect::{AppMetadata, IdToken, RawEntry},
    views::CachedAccessToken,
};

use error::ErrorKind;
use raw::{
    Body, Entry, Members, Name, RawJson, RawMembers, parse_entries, push_dedup, top_level_error,
};

/// Section of access tokens.
const ACCESS_TOKEN: &str = "AccessToken";
/// Section of refresh tokens.
const REFRESH_TOKEN: &str = "RefreshToken";
/// Section of id tokens.
const ID_TOKEN: &str = "IdToken";
/// Section of accounts.
const ACCOUNT: &str = "Account";
/// Section of per-application metadata.
const APP_METADATA: &str = "AppMetadata";
/// The sections parsed into entries; any other section is kept as one raw value.
const KNOWN_SECTIONS: [&str; 5] = [ACCESS_TOKEN, REFRESH_TOKEN, ID_TOKEN, ACCOUNT, APP_METADATA];

/// Counts the steps of name lookups and position reports, so that tests can prove the work of
/// a read grows linearly with the document (a time limit would be flaky). Nothing outside
/// tests.
#[cfg(test)]
mod work {
    use std::cell::Cell;

    thread_local! {
        /// Steps counted on this thread since the last [`take`].
        static STEPS: Cell<u64> = const { Cell::new(0) };
    }

    /// Counts `n` steps.
    pub(super) fn add(n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        STEPS.with(|steps| steps.set(steps.get().saturating_add(n)));
    }

    /// The steps counted on this thread since the last call.
    pub(super) fn take() -> u64 {
        STEPS.with(|steps| steps.replace(0))
    }
}

/// Outside tests, counting steps is free.
#[cfg(not(test))]
mod work {
    /// Nothing to count.
    #[inline(always)]
    pub(super) fn add(_: usize) {}
}

/// A parsed MSAL token cache. See the documentation of `entra::msal_cache` for how it is kept and
/// written.
#[derive(Clone, Default)]
pub struct CacheDocument {
    /// The top-level sections (name and body) in document order.
    sections: Vec<(Name, Body)>,
}

impl fmt::Debug for CacheDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (name, body) in &self.sections {
            match body {
                Body::Entries(entries) => {
                    m.entry(&name.text(), &format_args!("{} entries", entries.len()))
                }
                Body::Raw(_) => m.entry(&name.text(), &format_args!("(kept verbatim)")),
            };
        }
        m.finish()
    }
}

impl CacheDocument {
    /// A document with no sections (written as `{}`).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads a document. Empty or whitespace-only input is an empty document. Errors: not
    /// UTF-8, not JSON, a top level that is not an object, a known section that is not an
    /// object of objects. Entries lacking fields are not errors here: the views skip them.
    pub fn parse(bytes: &[u8]) -> Result<Self, DocumentError> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let src = std::str::from_utf8(bytes).map_err(|e| DocumentError {
            kind: ErrorKind::NotUtf8 {
                offset: e.valid_up_to(),
            },
        })?;
        if src.trim_matches([' ', '\t', '\n', '\r']).is_empty() {
            return Ok(Self::empty());
        }
        let top =
            serde_json::from_str::<RawMembers<'_>>(src).map_err(|e| top_level_error(src, &e))?;
        let mut sections = Members::<_>::with_capacity(top.0.len());
        for (key, value) in top.0 {
            let name = Name::from_raw(key.get());
            let body = if KNOWN_SECTIONS.contains(&name.text()) {
                Body::Entries(parse_entries(src, name.text(), value)?)
            } else {
                Body::Raw(RawJson(value.to_owned()))
            };
            sections.push(name, body);
        }
        Ok(Self {
            sections: sections.into_list(),
        })
    }

    /// The entries of a known section (none if it is absent).
    fn entries(&self, section: &str) -> &[(Name, Entry)] {
        self.sections
            .iter()
            .find(|(name, _)| {
                work::add(1);
                name.text() == section
            })
            .and_then(|(_, body)| match body {
                Body::Entries(entries) => Some(entries.as_slice()),
                Body::Raw(_) => None,
            })
            .unwrap_or(&[])
    }

    /// The entries of a known section, creating the section at the end if absent (as msal's
    /// `setdefault` does).
    fn entries_mut(&mut self, section: &str) -> Option<&mut Vec<(Name, Entry)>> {
        let index = match self
            .sections
            .iter()
            .position(|(name, _)| name.text() == section)
        {
            Some(i) => i,
            None => {
                self.sections
                    .push((Name::new(section), Body::Entries(Vec::new())));
                self.sections.len().saturating_sub(1)
            }
        };
        match &mut self.sections.get_mut(index)?.1 {
            Body::Entries(entries) => Some(entries),
            // Known sections are always parsed into entries.
            Body::Raw(_) => None,
        }
    }

    /// Inserts an entry, replacing (at its position) an entry with the same key.
    fn put_entry(&mut self, section: &str, key: String, entry: Entry) {
        if let Some(entries) = self.entries_mut(section) {
            push_dedup(entries, Name::new(key), entry);
        }
    }

    /// Removes the entry with `key` from a known section.
    #[cfg(any(test, feature = "fuzzing"))]
    fn remove_entry(&mut self, section: &str, key: &str) -> bool {
        self.remove_entries_where(section, |name| name == key) != 0
    }

    /// Removes, in one pass, the entries of a known section whose key `remove` accepts.
    /// Returns how many were removed.
    fn remove_entries_where(&mut self, section: &str, remove: impl Fn(&str) -> bool) -> usize {
        let Some((_, Body::Entries(entries))) = self
            .sections
            .iter_mut()
            .find(|(name, _)| name.text() == section)
        else {
            return 0;
        };
        let before = entries.len();
        entries.retain(|(name, _)| {
            work::add(1);
            !remove(name.text())
        });
        before.saturating_sub(entries.len())
    }
}
