//! The token model: what a credential is asked for ([`TokenRequest`]) and what it answers
//! ([`AccessToken`]), and the [`Secret`] wrapper that keeps token values out of logs.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::error::CredentialError;

/// A secret string: a client secret, an access or refresh token, an authorization code.
///
/// `Debug` and `Display` print `***`; the value is zeroed when the last clone is dropped.
/// Clones share one allocation, so handing a token to many callers copies no secret bytes.
///
/// ```
/// use tower_identity::Secret;
/// let s = Secret::new("hunter2");
/// assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
/// assert_eq!(s.expose_secret(), "hunter2");
/// ```
#[derive(Clone)]
pub struct Secret(Arc<Zeroizing<String>>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::new(Zeroizing::new(value.into())))
    }

    /// The secret value. Keep the borrow short and never log it.
    pub fn expose_secret(&self) -> &str {
        self.0.as_str()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.expose_secret() == other.expose_secret()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What a credential is asked for: one or more scopes, and optionally CAE claims, a tenant
/// and the CAE capability.
///
/// ```
/// use tower_identity::TokenRequest;
/// let req = TokenRequest::new(["https://management.azure.com/.default"])
///     .tenant_id("contoso.onmicrosoft.com")
///     .enable_cae(true);
/// assert_eq!(req.scopes(), ["https://management.azure.com/.default"]);
/// ```
///
/// A request without scopes can be built but every credential rejects it with an
/// [invalid request](crate::CredentialError::is_invalid_request) error.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRequest {
    scopes: Vec<String>,
    claims: Option<String>,
    tenant_id: Option<String>,
    enable_cae: bool,
}

impl TokenRequest {
    /// A request for these scopes, e.g. `["https://management.azure.com/.default"]`.
    pub fn new<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            scopes: scopes.into_iter().map(Into::into).collect(),
            claims: None,
            tenant_id: None,
            enable_cae: false,
        }
    }

    /// Additional claims the token must carry: the decoded JSON of a CAE claims challenge.
    /// A request with claims is never answered from a cache.
    pub fn claims(mut self, claims: impl Into<String>) -> Self {
        self.claims = Some(claims.into());
        self
    }

    /// Ask for a token from this tenant instead of the credential's own. The credential
    /// must allow it (see `additionally_allowed_tenants` on the credential builders).
    pub fn tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// Announce the Continuous Access Evaluation capability (`CP1`) so the provider may issue
    /// a long-lived CAE token. Only enable this when the caller handles claims challenges,
    /// as [`BearerTokenLayer`](crate) does.
    pub fn enable_cae(mut self, enable: bool) -> Self {
        self.enable_cae = enable;
        self
    }

    /// The requested scopes, in the order given.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// The requested claims, if any.
    pub fn claims_json(&self) -> Option<&str> {
        self.claims.as_deref()
    }

    /// The requested tenant, if any.
    pub fn requested_tenant(&self) -> Option<&str> {
        self.tenant_id.as_deref()
    }

    /// Whether the CAE capability is announced.
    pub fn is_cae(&self) -> bool {
        self.enable_cae
    }

    /// Checks what every credential needs: at least one scope, no empty scope.
    pub(crate) fn validate(&self, credential: &'static str) -> Result<(), CredentialError> {
        if self.scopes.is_empty() {
            return Err(CredentialError::invalid_request(
                credential,
                "at least one scope is required, e.g. \"https://management.azure.com/.default\"",
            ));
        }
        if self.scopes.iter().any(|s| s.trim().is_empty()) {
            return Err(CredentialError::invalid_request(
                credential,
                "a scope is empty; pass scopes such as \"https://management.azure.com/.default\"",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("scopes", &self.scopes)
            .field("claims", &self.claims.as_ref().map(|_| "<claims>"))
            .field("tenant_id", &self.tenant_id)
            .field("enable_cae", &self.enable_cae)
            .finish()
    }
}

/// An access token and when it expires.
///
/// Times are instants of tokio's clock ([`tokio::time::Instant`]): they are what the refresh
/// logic compares, and tests can pause and advance that clock. Wall-clock timestamps from the
/// provider or a cache file are converted once, when the token is made.
///
/// [`credential`](Self::credential) names the credential that obtained the token. It is
/// provenance, not part of the token: equality compares the value, type and times only.
#[derive(Clone)]
pub struct AccessToken {
    secret: Secret,
    token_type: Arc<str>,
    expires_on: Instant,
    refresh_on: Option<Instant>,
    credential: Option<Cow<'static, str>>,
}

impl PartialEq for AccessToken {
    fn eq(&self, other: &Self) -> bool {
        self.secret == other.secret
            && self.token_type == other.token_type
            && self.expires_on == other.expires_on
            && self.refresh_on == other.refresh_on
    }
}

impl Eq for AccessToken {}

impl AccessToken {
    /// A bearer token valid until `expires_on`.
    pub fn new(secret: impl Into<Secret>, expires_on: Instant) -> Self {
        Self {
            secret: secret.into(),
            token_type: Arc::from("Bearer"),
            expires_on,
            refresh_on: None,
            credential: None,
        }
    }

    /// When the provider suggests refreshing (Entra's `refresh_in`); builder style.
    pub fn with_refresh_on(mut self, refresh_on: Option<Instant>) -> Self {
        self.refresh_on = refresh_on;
        self
    }

    /// The token type, `Bearer` unless the provider said otherwise; builder style.
    pub fn with_token_type(mut self, token_type: impl Into<Arc<str>>) -> Self {
        self.token_type = token_type.into();
        self
    }

    /// The token value (redacted in `Debug`/`Display`; call
    /// [`expose_secret`](Secret::expose_secret) to read it).
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// When the token expires, on tokio's clock.
    pub fn expires_on(&self) -> Instant {
        self.expires_on
    }

    /// When the token should be refreshed, if the provider said.
    pub fn refresh_on(&self) -> Option<Instant> {
        self.refresh_on
    }

    /// The credential that obtained the token: the type name of the credential of this crate
    /// that asked the provider, tool or cache for it (`ClientSecretCredential`,
    /// `AzureCliCredential`, …; `EnvironmentCredential` under its own name), kept through
    /// caches, chains and [`BoxCredential`](crate::BoxCredential)s. A token of your own
    /// credential has none until it passes a `BoxCredential`, which gives it the box's name.
    /// So a chain's token says which member answered.
    pub fn credential(&self) -> Option<&str> {
        self.credential.as_deref()
    }

    /// The same token, naming `credential` as the one that obtained it.
    pub(crate) fn with_credential(mut self, credential: impl Into<Cow<'static, str>>) -> Self {
        self.credential = Some(credential.into());
        self
    }

    /// The token type, usually `Bearer`.
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// Time left before expiry (zero once expired).
    pub fn expires_in(&self) -> Duration {
        self.expires_on.saturating_duration_since(Instant::now())
    }

    /// Whether the token has expired.
    pub fn is_expired(&self) -> bool {
        self.is_expired_at(Instant::now())
    }

    pub(crate) fn is_expired_at(&self, now: Instant) -> bool {
        now >= self.expires_on
    }

    /// Expiry as Unix seconds (wall clock), for display and for writing caches.
    pub fn expires_on_unix(&self) -> u64 {
        let now_unix = unix_now();
        now_unix.saturating_add(self.expires_in().as_secs())
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &self.secret)
            .field("token_type", &self.token_type)
            .field("credential", &self.credential)
            .field("expires_in", &self.expires_in())
            .field(
                "refresh_in",
                &self
                    .refresh_on
                    .map(|r| r.saturating_duration_since(Instant::now())),
            )
            .finish()
    }
}

/// Seconds since the Unix epoch on the wall clock.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The longest token lifetime this crate believes. Entra's access tokens live at most
/// 28 hours (CAE), managed identity tokens 24 hours; a provider, a cache file or a program
/// claiming more (`"expires_in": 1e20`) is broken, and its token is treated as living this
/// long. Clamped rather than refused: a too-long lifetime only makes us renew sooner than we
/// were told, while refusing would turn a provider's quirk into an outage. It also keeps every
/// instant computed from a provider's number far from the clock's overflow.
pub(crate) const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// A token without the provider's `refresh_in` that lives at least this long is refreshed at
/// half-life (MSAL's rule, for Entra and managed identity answers alike).
pub(crate) const HALF_LIFE_THRESHOLD: Duration = Duration::from_secs(2 * 3600);

/// A lifetime in seconds from a provider, clamped to [`MAX_TOKEN_LIFETIME`].
pub(crate) fn clamped_lifetime(secs: u64) -> Duration {
    Duration::from_secs(secs).min(MAX_TOKEN_LIFETIME)
}

/// `base + lifetime`, the lifetime clamped to [`MAX_TOKEN_LIFETIME`]: never overflows.
pub(crate) fn instant_after(base: Instant, secs: u64) -> Instant {
    let lifetime = clamped_lifetime(secs);
    base.checked_add(lifetime).unwrap_or(base)
}

/// Converts a Unix timestamp (seconds) to an instant of tokio's clock, relative to now.
/// A time in the past maps to now (the caller treats it as expired); one further ahead than
/// [`MAX_TOKEN_LIFETIME`] is clamped to it.
pub(crate) fn instant_from_unix(epoch_secs: u64) -> Instant {
    let now = Instant::now();
    match epoch_secs.checked_sub(unix_now()) {
        Some(ahead) => instant_after(now, ahead),
        None => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let s = Secret::new("s3cr3t-value");
        let t = AccessToken::new(s.clone(), Instant::now() + Duration::from_secs(60));
        for text in [
            format!("{s}"),
            format!("{s:?}"),
            format!("{t:?}"),
            format!("{t:#?}"),
        ] {
            assert!(!text.contains("s3cr3t"), "{text}");
        }
    }

    #[test]
    fn request_without_scopes_is_an_invalid_request() {
        let err = TokenRequest::new(Vec::<String>::new())
            .validate("TestCredential")
            .unwrap_err();
        assert!(err.is_invalid_request());
        assert!(err.to_string().contains("at least one scope"), "{err}");
        let err = TokenRequest::new([" "])
            .validate("TestCredential")
            .unwrap_err();
        assert!(err.to_string().contains("scope is empty"), "{err}");
    }

    #[test]
    fn request_debug_hides_claims_content() {
        let req = TokenRequest::new(["a"]).claims("{\"secretish\":1}");
        assert!(!format!("{req:?}").contains("secretish"));
    }

    #[tokio::test(start_paused = true)]
    async fn unix_timestamps_convert_relative_to_now() {
        let later = instant_from_unix(unix_now() + 100);
        let left = later - Instant::now();
        assert!(left >= Duration::from_secs(99) && left <= Duration::from_secs(100));
        assert_eq!(instant_from_unix(1), Instant::now());
        // Absurd timestamps are clamped, never an overflow.
        for absurd in [u64::MAX, u64::MAX / 2, unix_now() + (1 << 40)] {
            assert_eq!(
                instant_from_unix(absurd) - Instant::now(),
                MAX_TOKEN_LIFETIME
            );
        }
    }
}
