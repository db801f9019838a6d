//! What only the unit tests, the fuzz targets and the benchmark read (feature `fuzzing`): every
//! view of the document, why entries are skipped, and pruning. Not compiled into the library
//! otherwise, so the credentials' build carries none of it.

use crate::token::Secret;

use super::error::{DocumentError, ErrorKind, FieldProblem};
use super::raw::{Body, Entry};
use super::views::{
    CachedAccessToken, RefreshToken, access_token_view, account_view, refresh_token_view,
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

impl DocumentError {
    /// The error for a field problem of an entry.
    pub(super) fn field(section: &str, entry: &str, p: FieldProblem) -> Self {
        Self {
            kind: ErrorKind::Field {
                section: section.to_owned(),
                entry: entry.to_owned(),
                field: p.field,
                problem: p.problem,
            },
        }
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

    /// Why each entry the views ignore is ignored (for diagnostics; no values included).
    pub fn skipped(&self) -> Vec<DocumentError> {
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
