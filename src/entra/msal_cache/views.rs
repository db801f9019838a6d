//! The typed views: the entries of the five known sections read into structs, field by
//! field, on demand.

use serde_json::Value;

use crate::token::Secret;

use super::error::{DocumentError, FieldProblem, Problem};
use super::raw::Entry;
use super::{ACCESS_TOKEN, ACCOUNT, APP_METADATA, CacheDocument, ID_TOKEN, REFRESH_TOKEN};

/// An `Account` entry: a person signed in at an authority (environment) and tenant (realm).
#[derive(Debug, Clone)]
pub(crate) struct Account {
    /// The entry's key in the document.
    pub(crate) key: String,
    /// `uid.utid` from the sign-in's client_info.
    pub(crate) home_account_id: String,
    /// Authority host.
    pub(crate) environment: String,
    /// Tenant path segment used at sign-in.
    pub(crate) realm: String,
    /// The object id in the tenant; `None` when the file has `null` (azure-identity writes
    /// that after a refresh without id token) or anything but a string.
    pub(crate) local_account_id: Option<String>,
    /// The user name (`""` when unknown: missing, `null`, or written empty).
    pub(crate) username: String,
    /// `MSSTS` or `ADFS` (`""` when missing).
    pub(crate) authority_type: String,
}

/// A `RefreshToken` entry.
#[derive(Debug, Clone)]
pub(crate) struct RefreshToken {
    /// The entry's key in the document.
    pub(crate) key: String,
    /// The account (`""` when missing or `null`).
    pub(crate) home_account_id: String,
    /// Authority host.
    pub(crate) environment: String,
    /// The application the token was issued to.
    pub(crate) client_id: String,
    /// Scopes of the grant that produced it (informational: Entra refresh tokens are scope
    /// independent; `""` when missing).
    pub(crate) target: String,
    /// The refresh token.
    pub(crate) secret: Secret,
    /// The family (FOCI) id, e.g. `"1"`, when the token is a family refresh token.
    pub(crate) family_id: Option<String>,
    /// When it was written (Unix seconds), if recorded and readable.
    pub(crate) last_modification_time: Option<u64>,
}

/// An `AccessToken` entry.
#[derive(Debug, Clone)]
pub(crate) struct CachedAccessToken {
    /// The entry's key in the document.
    pub(crate) key: String,
    /// The account; `None` for app-only tokens (JSON `null`, missing, or `""`).
    pub(crate) home_account_id: Option<String>,
    /// Authority host.
    pub(crate) environment: String,
    /// The application the token was issued to.
    pub(crate) client_id: String,
    /// Tenant path segment of the request.
    pub(crate) realm: String,
    /// The scopes it covers, space-separated.
    pub(crate) target: String,
    /// The access token.
    pub(crate) secret: Secret,
    /// `Bearer` (or `pop`, `ssh-cert` for other msal flows); `Bearer` when missing.
    pub(crate) token_type: String,
    /// When it was obtained (Unix seconds).
    pub(crate) cached_at: u64,
    /// When it expires (Unix seconds).
    pub(crate) expires_on: u64,
    /// Extended expiry (Unix seconds), if recorded and readable.
    pub(crate) extended_expires_on: Option<u64>,
    /// When to refresh it proactively (Unix seconds), if recorded and readable.
    pub(crate) refresh_on: Option<u64>,
}

/// An `IdToken` entry.
#[derive(Debug, Clone)]
pub(crate) struct IdToken {
    /// The entry's key in the document.
    pub(crate) key: String,
    /// The account (`""` when missing or `null`).
    pub(crate) home_account_id: String,
    /// Authority host.
    pub(crate) environment: String,
    /// Tenant path segment of the request.
    pub(crate) realm: String,
    /// The application the token was issued to.
    pub(crate) client_id: String,
    /// The id token (a JWT).
    pub(crate) secret: Secret,
}

/// An `AppMetadata` entry.
#[derive(Debug, Clone)]
pub(crate) struct AppMetadata {
    /// The entry's key in the document.
    pub(crate) key: String,
    /// The application.
    pub(crate) client_id: String,
    /// Authority host.
    pub(crate) environment: String,
    /// The application's family (FOCI) id, if it is in one.
    pub(crate) family_id: Option<String>,
}

/// Reads an `Account` entry.
pub(super) fn account_view(key: &str, e: &Entry) -> Result<Account, FieldProblem> {
    Ok(Account {
        key: key.to_owned(),
        home_account_id: e.req_str("home_account_id")?,
        environment: e.req_str("environment")?,
        realm: e.req_str("realm")?,
        local_account_id: e.lenient_str("local_account_id"),
        username: e.opt_str("username")?.unwrap_or_default(),
        authority_type: e.opt_str("authority_type")?.unwrap_or_default(),
    })
}

/// Reads a `RefreshToken` entry.
pub(super) fn refresh_token_view(key: &str, e: &Entry) -> Result<RefreshToken, FieldProblem> {
    Ok(RefreshToken {
        key: key.to_owned(),
        secret: e.secret()?,
        home_account_id: e.opt_str("home_account_id")?.unwrap_or_default(),
        environment: e.req_str("environment")?,
        client_id: e.req_str("client_id")?,
        target: e.opt_str("target")?.unwrap_or_default(),
        family_id: e.lenient_str("family_id"),
        last_modification_time: e.lenient_time("last_modification_time"),
    })
}

/// Reads an `AccessToken` entry.
pub(super) fn access_token_view(key: &str, e: &Entry) -> Result<CachedAccessToken, FieldProblem> {
    Ok(CachedAccessToken {
        key: key.to_owned(),
        secret: e.secret()?,
        home_account_id: e.opt_str("home_account_id")?.filter(|h| !h.is_empty()),
        environment: e.req_str("environment")?,
        client_id: e.req_str("client_id")?,
        realm: e.req_str("realm")?,
        target: e.req_str("target")?,
        token_type: e
            .opt_str("token_type")?
            .unwrap_or_else(|| "Bearer".to_owned()),
        cached_at: e.req_time("cached_at")?,
        expires_on: e.req_time("expires_on")?,
        extended_expires_on: e.lenient_time("extended_expires_on"),
        refresh_on: e.lenient_time("refresh_on"),
    })
}

/// Reads an `IdToken` entry.
pub(super) fn id_token_view(key: &str, e: &Entry) -> Result<IdToken, FieldProblem> {
    Ok(IdToken {
        key: key.to_owned(),
        secret: e.secret()?,
        home_account_id: e.opt_str("home_account_id")?.unwrap_or_default(),
        environment: e.req_str("environment")?,
        realm: e.req_str("realm")?,
        client_id: e.req_str("client_id")?,
    })
}

/// Reads an `AppMetadata` entry.
pub(super) fn app_metadata_view(key: &str, e: &Entry) -> Result<AppMetadata, FieldProblem> {
    Ok(AppMetadata {
        key: key.to_owned(),
        client_id: e.req_str("client_id")?,
        environment: e.req_str("environment")?,
        family_id: e.lenient_str("family_id"),
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
    fn view<T>(&self, section: &str, read: fn(&str, &Entry) -> Result<T, FieldProblem>) -> Vec<T> {
        self.entries(section)
            .iter()
            .filter_map(|(name, entry)| read(name.text(), entry).ok())
            .collect()
    }

    /// Account entries the view can read.
    pub(crate) fn accounts(&self) -> Vec<Account> {
        self.view(ACCOUNT, account_view)
    }

    /// RefreshToken entries the view can read.
    pub(crate) fn refresh_tokens(&self) -> Vec<RefreshToken> {
        self.view(REFRESH_TOKEN, refresh_token_view)
    }

    /// AccessToken entries the view can read (any token type, expired ones included).
    pub(crate) fn access_tokens(&self) -> Vec<CachedAccessToken> {
        self.view(ACCESS_TOKEN, access_token_view)
    }

    /// IdToken entries the view can read.
    pub(crate) fn id_tokens(&self) -> Vec<IdToken> {
        self.view(ID_TOKEN, id_token_view)
    }

    /// AppMetadata entries the view can read.
    pub(crate) fn app_metadata(&self) -> Vec<AppMetadata> {
        self.view(APP_METADATA, app_metadata_view)
    }

    /// Why each entry the views ignore is ignored (for diagnostics; no values included).
    pub(crate) fn skipped(&self) -> Vec<DocumentError> {
        /// Collects the problems of one section.
        fn collect<T>(
            doc: &CacheDocument,
            section: &str,
            read: fn(&str, &Entry) -> Result<T, FieldProblem>,
            out: &mut Vec<DocumentError>,
        ) {
            for (name, entry) in doc.entries(section) {
                if let Err(p) = read(name.text(), entry) {
                    out.push(DocumentError::field(section, name.text(), p));
                }
            }
        }
        let mut out = Vec::new();
        for (name, _) in &self.sections {
            match name.text() {
                ACCESS_TOKEN => collect(self, ACCESS_TOKEN, access_token_view, &mut out),
                REFRESH_TOKEN => collect(self, REFRESH_TOKEN, refresh_token_view, &mut out),
                ID_TOKEN => collect(self, ID_TOKEN, id_token_view, &mut out),
                ACCOUNT => collect(self, ACCOUNT, account_view, &mut out),
                APP_METADATA => collect(self, APP_METADATA, app_metadata_view, &mut out),
                _ => {}
            }
        }
        out
    }
}
