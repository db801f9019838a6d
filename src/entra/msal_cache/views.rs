//! The typed views: the entries of the five known sections read into structs, field by
//! field, on demand.

use serde_json::Value;

use crate::token::Secret;

use super::error::{FieldProblem, Problem};
use super::raw::Entry;
use super::{ACCOUNT, CacheDocument};

/// An `Account` entry: a person signed in at an authority (environment) and tenant (realm).
#[derive(Debug, Clone)]
pub struct Account {
    /// The entry's key in the document.
    #[cfg(any(test, feature = "fuzzing"))]
    pub key: String,
    /// `uid.utid` from the sign-in's client_info.
    pub home_account_id: String,
    /// Authority host.
    pub environment: String,
    /// Tenant path segment used at sign-in.
    #[cfg(any(test, feature = "fuzzing"))]
    pub realm: String,
    /// The object id in the tenant; `None` when the file has `null` (azure-identity writes
    /// that after a refresh without id token) or anything but a string.
    #[cfg(any(test, feature = "fuzzing"))]
    pub local_account_id: Option<String>,
    /// The user name (`""` when unknown: missing, `null`, or written empty).
    pub username: String,
    /// `MSSTS` or `ADFS` (`""` when missing).
    #[cfg(any(test, feature = "fuzzing"))]
    pub authority_type: String,
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
    /// Scopes of the grant that produced it (informational: Entra refresh tokens are scope
    /// independent; `""` when missing).
    #[cfg(any(test, feature = "fuzzing"))]
    pub target: String,
    /// The refresh token.
    pub secret: Secret,
    /// The family (FOCI) id, e.g. `"1"`, when the token is a family refresh token.
    pub family_id: Option<String>,
    /// When it was written (Unix seconds), if recorded and readable.
    #[cfg(any(test, feature = "fuzzing"))]
    pub last_modification_time: Option<u64>,
}

/// An `AccessToken` entry.
#[derive(Debug, Clone)]
pub struct CachedAccessToken {
    /// The entry's key in the document.
    #[cfg(any(test, feature = "fuzzing"))]
    pub key: String,
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
    /// When it was obtained (Unix seconds).
    #[cfg(any(test, feature = "fuzzing"))]
    pub cached_at: u64,
    /// When it expires (Unix seconds).
    pub expires_on: u64,
    /// Extended expiry (Unix seconds), if recorded and readable.
    #[cfg(any(test, feature = "fuzzing"))]
    pub extended_expires_on: Option<u64>,
    /// When to refresh it proactively (Unix seconds), if recorded and readable.
    pub refresh_on: Option<u64>,
}

/// Reads an `Account` entry.
pub(super) fn account_view(_key: &str, e: &Entry) -> Result<Account, FieldProblem> {
    let home_account_id = e.req_str("home_account_id")?;
    let environment = e.req_str("environment")?;
    // Checked in every build (an entry without them is skipped), read only by the diagnostics.
    let _realm = e.req_str("realm")?;
    let username = e.opt_str("username")?.unwrap_or_default();
    let _authority_type = e.opt_str("authority_type")?.unwrap_or_default();
    Ok(Account {
        #[cfg(any(test, feature = "fuzzing"))]
        key: _key.to_owned(),
        home_account_id,
        environment,
        #[cfg(any(test, feature = "fuzzing"))]
        realm: _realm,
        #[cfg(any(test, feature = "fuzzing"))]
        local_account_id: e.lenient_str("local_account_id"),
        username,
        #[cfg(any(test, feature = "fuzzing"))]
        authority_type: _authority_type,
    })
}

/// Reads a `RefreshToken` entry.
pub(super) fn refresh_token_view(key: &str, e: &Entry) -> Result<RefreshToken, FieldProblem> {
    let secret = e.secret()?;
    let home_account_id = e.opt_str("home_account_id")?.unwrap_or_default();
    let environment = e.req_str("environment")?;
    let client_id = e.req_str("client_id")?;
    // Checked in every build (an entry where it is not a string is skipped), read only by the
    // diagnostics.
    let _target = e.opt_str("target")?.unwrap_or_default();
    Ok(RefreshToken {
        key: key.to_owned(),
        secret,
        home_account_id,
        environment,
        client_id,
        #[cfg(any(test, feature = "fuzzing"))]
        target: _target,
        family_id: e.lenient_str("family_id"),
        #[cfg(any(test, feature = "fuzzing"))]
        last_modification_time: e.lenient_time("last_modification_time"),
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
    // Checked in every build (an entry without it is skipped), read only by the diagnostics.
    let _cached_at = e.req_time("cached_at")?;
    let expires_on = e.req_time("expires_on")?;
    Ok(CachedAccessToken {
        #[cfg(any(test, feature = "fuzzing"))]
        key: _key.to_owned(),
        secret,
        home_account_id,
        environment,
        client_id,
        realm,
        target,
        token_type,
        #[cfg(any(test, feature = "fuzzing"))]
        cached_at: _cached_at,
        expires_on,
        #[cfg(any(test, feature = "fuzzing"))]
        extended_expires_on: e.lenient_time("extended_expires_on"),
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

impl CacheDocument {
    /// Applies a view to every entry of a section, keeping the readable ones.
    pub(super) fn view<T>(
        &self,
        section: &str,
        read: fn(&str, &Entry) -> Result<T, FieldProblem>,
    ) -> Vec<T> {
        self.entries(section)
            .iter()
            .filter_map(|(name, entry)| read(name.text(), entry).ok())
            .collect()
    }

    /// Account entries the view can read.
    pub fn accounts(&self) -> Vec<Account> {
        self.view(ACCOUNT, account_view)
    }
}
