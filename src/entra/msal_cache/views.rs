//! The typed views: the entries of the five known sections read into structs, field by
//! field, on demand.

use serde_json::Value;

use crate::token::Secret;

use super::error::{DocumentError, FieldProblem, Problem};
use super::raw::Entry;
use super::{ACCOUNT, CacheDocument};

/// An `Account` entry: a person signed in at an authority (environment) and tenant (realm).
#[derive(Debug, Clone)]
pub struct Account {
    /// `uid.utid` from the sign-in's client_info.
    pub home_account_id: String,
    /// Authority host.
    pub environment: String,
    /// The user name (`""` when unknown: missing, `null`, or written empty).
    pub username: String,
}

/// A `RefreshToken` entry.
#[derive(Debug, Clone)]
pub struct RefreshToken {
    /// The entry's key in the document.
    pub key: String,
    /// The account (`""` when missing or `null`).
    pub home_account_id: String,
    /// Authority host.
    pub environment: String,
    /// The application the token was issued to.
    pub client_id: String,
    /// The refresh token.
    pub secret: Secret,
    /// The family (FOCI) id, e.g. `"1"`, when the token is a family refresh token.
    pub family_id: Option<String>,
    /// `last_modification_time` (Unix seconds), 0 when missing or unreadable.
    pub last_modified: u64,
}

/// Orders refresh tokens newest first by `last_modification_time`, as msal tries them (a
/// token that failed stays in a shared file, and an old one first would cost a failed request
/// on every renewal); stable, so equals keep their order.
/// `token` finds each item's refresh token.
pub fn newest_first<T>(items: &mut [T], token: impl Fn(&T) -> &RefreshToken) {
    items.sort_by_key(|item| std::cmp::Reverse(token(item).last_modified));
}

/// An `AccessToken` entry.
#[derive(Debug, Clone)]
pub struct CachedAccessToken {
    /// The account; `None` for app-only tokens (JSON `null`, missing, or `""`).
    pub home_account_id: Option<String>,
    /// Authority host.
    pub environment: String,
    /// The application the token was issued to.
    pub client_id: String,
    /// Tenant path segment of the request.
    pub realm: String,
    /// The scopes it covers, space-separated.
    pub target: String,
    /// The access token.
    pub secret: Secret,
    /// `Bearer` (or `pop`, `ssh-cert` for other msal flows); `Bearer` when missing.
    pub token_type: String,
    /// When it expires (Unix seconds).
    pub expires_on: u64,
    /// When to refresh it proactively (Unix seconds), if recorded and readable.
    pub refresh_on: Option<u64>,
}

/// Reads an `Account` entry.
pub(super) fn account_view(_key: &str, e: &Entry) -> Result<Account, FieldProblem> {
    let home_account_id = e.req_str("home_account_id")?;
    let environment = e.req_str("environment")?;
    // Not read, but an entry without a realm or with a non-string authority type is skipped.
    e.req_str("realm")?;
    let username = e.opt_str("username")?.unwrap_or_default();
    e.opt_str("authority_type")?;
    Ok(Account {
        home_account_id,
        environment,
        username,
    })
}

/// Reads a `RefreshToken` entry.
pub(super) fn refresh_token_view(key: &str, e: &Entry) -> Result<RefreshToken, FieldProblem> {
    let secret = e.secret()?;
    let home_account_id = e.opt_str("home_account_id")?.unwrap_or_default();
    let environment = e.req_str("environment")?;
    let client_id = e.req_str("client_id")?;
    // Not read, but an entry whose target is not a string is skipped.
    e.opt_str("target")?;
    Ok(RefreshToken {
        key: key.to_owned(),
        secret,
        home_account_id,
        environment,
        client_id,
        family_id: e.lenient_str("family_id"),
        last_modified: e.lenient_time("last_modification_time").unwrap_or(0),
    })
}

/// Reads an `AccessToken` entry.
pub(super) fn access_token_view(_key: &str, e: &Entry) -> Result<CachedAccessToken, FieldProblem> {
    let secret = e.secret()?;
    let home_account_id = e.opt_str("home_account_id")?.filter(|h| !h.is_empty());
    let environment = e.req_str("environment")?;
    let client_id = e.req_str("client_id")?;
    let realm = e.req_str("realm")?;
    let target = e.req_str("target")?;
    let token_type = e
        .opt_str("token_type")?
        .unwrap_or_else(|| "Bearer".to_owned());
    // Not read, but an entry without a readable `cached_at` is skipped.
    e.req_time("cached_at")?;
    let expires_on = e.req_time("expires_on")?;
    Ok(CachedAccessToken {
        secret,
        home_account_id,
        environment,
        client_id,
        realm,
        target,
        token_type,
        expires_on,
        refresh_on: e.lenient_time("refresh_on"),
    })
}

impl Entry {
    /// A field that must be a string.
    pub(super) fn req_str(&self, name: &'static str) -> Result<String, FieldProblem> {
        match self.opt_str(name)? {
            Some(s) => Ok(s),
            None => Err(FieldProblem::new(name, Problem::Missing)),
        }
    }

    /// A field that may be missing or `null`, else a string.
    pub(super) fn opt_str(&self, name: &'static str) -> Result<Option<String>, FieldProblem> {
        let Some(raw) = self.raw(name) else {
            return Ok(None);
        };
        match serde_json::from_str::<Option<String>>(raw.text()) {
            Ok(v) => Ok(v),
            Err(_) => Err(FieldProblem::new(name, Problem::NotString)),
        }
    }

    /// An optional, informational string field: anything but a string reads as `None`.
    pub(super) fn lenient_str(&self, name: &str) -> Option<String> {
        self.raw(name)
            .and_then(|raw| serde_json::from_str::<String>(raw.text()).ok())
    }

    /// A secret field (required string).
    pub(super) fn secret(&self) -> Result<Secret, FieldProblem> {
        self.req_str("secret").map(Secret::new)
    }

    /// A required timestamp: a decimal string, or a JSON number (some tools write numbers).
    pub(super) fn req_time(&self, name: &'static str) -> Result<u64, FieldProblem> {
        let Some(raw) = self.raw(name) else {
            return Err(FieldProblem::new(name, Problem::Missing));
        };
        parse_time(raw.text()).map_err(|p| FieldProblem::new(name, p))
    }

    /// An optional, informational timestamp: missing, `null` or malformed reads as `None`.
    pub(super) fn lenient_time(&self, name: &str) -> Option<u64> {
        self.raw(name).and_then(|raw| parse_time(raw.text()).ok())
    }
}

/// Reads a timestamp: a decimal string of Unix seconds, or a non-negative JSON number.
pub(super) fn parse_time(text: &str) -> Result<u64, Problem> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::String(s)) => {
            let digits = s.trim_matches(|c: char| c.is_ascii_whitespace());
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Problem::NotDecimal);
            }
            digits.parse::<u64>().map_err(|_| Problem::OutOfRange)
        }
        Ok(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                return Ok(v);
            }
            match n.as_f64() {
                // Below 2^64, so the truncating conversion is exact to the second.
                Some(f) if f.is_finite() && (0.0..18_446_744_073_709_551_616.0).contains(&f) => {
                    Ok(f as u64)
                }
                _ => Err(Problem::OutOfRange),
            }
        }
        // A number too large for f64 (`1e400`; Python reads it as infinity), which serde_json
        // validates as JSON but will not read.
        Err(_) if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
            Err(Problem::OutOfRange)
        }
        _ => Err(Problem::NotDecimal),
    }
}

/// Reads an entry of a section into its typed view.
pub(super) type View<T> = fn(&str, &Entry) -> Result<T, FieldProblem>;

/// Reads an entry with `read`. An entry it cannot read is skipped, as msal skips it; which
/// field of which entry and why (never a value) is logged at debug level, for a user
/// wondering why a token in the file is not used.
pub(super) fn read_entry<T>(section: &str, key: &str, entry: &Entry, read: View<T>) -> Option<T> {
    match read(key, entry) {
        Ok(view) => Some(view),
        Err(problem) => {
            tracing::debug!(error = %DocumentError::field(section, key, problem), "token cache entry skipped");
            None
        }
    }
}

impl CacheDocument {
    /// Applies a view to every entry of a section, keeping the readable ones.
    pub(super) fn view<T>(&self, section: &str, read: View<T>) -> Vec<T> {
        self.entries(section)
            .iter()
            .filter_map(|(name, entry)| read_entry(section, name.text(), entry, read))
            .collect()
    }

    /// Account entries the view can read.
    pub fn accounts(&self) -> Vec<Account> {
        self.view(ACCOUNT, account_view)
    }
}
