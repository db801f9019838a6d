//! What only the unit tests, the fuzz targets and the benchmark read (feature `fuzzing`): every
//! view of the document, the entries behind them with the fields the views leave out, why
//! entries are skipped, and pruning. Not compiled into the library otherwise, so the
//! credentials' build carries none of it.

use std::fmt;

use crate::token::Secret;

use super::error::{DocumentError, FieldProblem};
use super::queries::AccessTokenQuery;
use super::raw::{Body, Entry};
use super::views::{
    CachedAccessToken, RefreshToken, View, access_token_view, account_view, refresh_token_view,
};
use super::{ACCESS_TOKEN, ACCOUNT, APP_METADATA, CacheDocument, ID_TOKEN, REFRESH_TOKEN};

/// An `IdToken` entry.
#[derive(Debug, Clone)]
pub struct IdToken {
    /// The entry's key in the document.
    pub key: String,
    /// The account (`""` when missing or `null`).
    pub home_account_id: String,
    /// Authority host.
    pub environment: String,
    /// Tenant path segment of the request.
    pub realm: String,
    /// The application the token was issued to.
    pub client_id: String,
    /// The id token (a JWT).
    pub secret: Secret,
}

/// An `AppMetadata` entry.
#[derive(Debug, Clone)]
pub struct AppMetadata {
    /// The entry's key in the document.
    pub key: String,
    /// The application.
    pub client_id: String,
    /// Authority host.
    pub environment: String,
    /// The application's family (FOCI) id, if it is in one.
    pub family_id: Option<String>,
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

/// An entry a view reads, as the file has it: its key and the fields the views leave out
/// (the credentials do not read them).
#[derive(Clone, Copy)]
pub struct RawEntry<'a> {
    /// The entry's key in the document.
    pub key: &'a str,
    /// The entry.
    entry: &'a Entry,
}

impl RawEntry<'_> {
    /// A string field: `None` when missing, `null` or not a string.
    pub fn str(&self, field: &str) -> Option<String> {
        self.entry.lenient_str(field)
    }

    /// A timestamp field (decimal string or JSON number): `None` when missing or unreadable.
    pub fn time(&self, field: &str) -> Option<u64> {
        self.entry.lenient_time(field)
    }
}

/// String fields some view checks or leaves out.
const UNVIEWED_STRINGS: [&str; 4] = ["realm", "local_account_id", "authority_type", "target"];
/// Timestamp fields some view checks or leaves out.
const UNVIEWED_TIMES: [&str; 3] = ["cached_at", "extended_expires_on", "last_modification_time"];

/// The key and the readings of the fields the views leave out (never the secret), so that
/// comparing two documents' entries compares those too.
impl fmt::Debug for RawEntry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RawEntry");
        d.field("key", &self.key);
        for name in UNVIEWED_STRINGS {
            d.field(name, &self.str(name));
        }
        for name in UNVIEWED_TIMES {
            d.field(name, &self.time(name));
        }
        d.finish()
    }
}

impl CacheDocument {
    /// RefreshToken entries the view can read.
    pub fn refresh_tokens(&self) -> Vec<RefreshToken> {
        self.view(REFRESH_TOKEN, refresh_token_view)
    }

    /// AccessToken entries the view can read (any token type, expired ones included).
    pub fn access_tokens(&self) -> Vec<CachedAccessToken> {
        self.view(ACCESS_TOKEN, access_token_view)
    }

    /// IdToken entries the view can read.
    pub fn id_tokens(&self) -> Vec<IdToken> {
        self.view(ID_TOKEN, id_token_view)
    }

    /// AppMetadata entries the view can read.
    pub fn app_metadata(&self) -> Vec<AppMetadata> {
        self.view(APP_METADATA, app_metadata_view)
    }

    /// The entries of a known section its view reads, in the order of the view's results
    /// (`raw_entries("AccessToken")[i]` is the entry of `access_tokens()[i]`).
    pub fn raw_entries(&self, section: &str) -> Vec<RawEntry<'_>> {
        let readable: fn(&str, &Entry) -> bool = match section {
            ACCESS_TOKEN => |k, e| access_token_view(k, e).is_ok(),
            REFRESH_TOKEN => |k, e| refresh_token_view(k, e).is_ok(),
            ID_TOKEN => |k, e| id_token_view(k, e).is_ok(),
            ACCOUNT => |k, e| account_view(k, e).is_ok(),
            APP_METADATA => |k, e| app_metadata_view(k, e).is_ok(),
            _ => |_, _| false,
        };
        self.entries(section)
            .iter()
            .filter(|(name, entry)| readable(name.text(), entry))
            .map(|(name, entry)| RawEntry {
                key: name.text(),
                entry,
            })
            .collect()
    }

    /// The keys of what [`find_access_tokens`](CacheDocument::find_access_tokens) finds, in
    /// the same order.
    pub fn find_access_token_keys(&self, q: &AccessTokenQuery<'_>) -> Vec<String> {
        self.matching_access_tokens(q)
            .map(|(key, _)| key.to_owned())
            .collect()
    }

    /// Why each entry the views ignore is ignored (for diagnostics; no values included).
    pub fn skipped(&self) -> Vec<DocumentError> {
        /// Collects the problems of one section.
        fn collect<T>(
            doc: &CacheDocument,
            section: &str,
            read: View<T>,
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

    /// No entries in the known sections and no other sections.
    pub fn is_empty(&self) -> bool {
        self.sections.iter().all(|(_, body)| match body {
            Body::Entries(entries) => entries.is_empty(),
            Body::Raw(_) => false,
        })
    }

    /// Removes an access token. Whether it was there.
    pub fn remove_access_token(&mut self, key: &str) -> bool {
        self.remove_entry(ACCESS_TOKEN, key)
    }

    /// Removes the access tokens whose `expires_on` is at or before `now_unix`; entries whose
    /// `expires_on` cannot be read are left alone. Returns how many were removed.
    pub fn remove_expired_access_tokens(&mut self, now_unix: u64) -> usize {
        let Some((_, Body::Entries(entries))) = self
            .sections
            .iter_mut()
            .find(|(name, _)| name.text() == ACCESS_TOKEN)
        else {
            return 0;
        };
        let before = entries.len();
        entries.retain(|(_, e)| e.req_time("expires_on").map_or(true, |t| t > now_unix));
        before.saturating_sub(entries.len())
    }
}
