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
/// `Debug` prints `Secret(***)`; the value is zeroed when the last clone is dropped. Clones
/// share one allocation, so handing a token to many callers copies no secret bytes.
///
/// ```
/// use tower_identity::Secret;
/// let s = Secret::new("hunter2");
/// assert_eq!(format!("{s:?}"), "Secret(***)");
/// assert_eq!(format!("Bearer {}", s.expose_secret()), "Bearer hunter2");
/// ```
///
/// There is no `Display`: with one, `format!("Bearer {}", token.secret())` would compile and
/// silently send `Bearer ***`. [`expose_secret`](Secret::expose_secret) is the only way to the
/// value, so every place that reads it says so.
///
/// ```compile_fail,E0277
/// let s = tower_identity::Secret::new("hunter2");
/// let header = format!("Bearer {}", s); // error: `Secret` doesn't implement `Display`
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

/// What a credential is asked for: one or more scopes, and optionally CAE claims, a tenant
/// and the CAE capability.
///
/// ```
/// use tower_identity::TokenRequest;
/// let req = TokenRequest::new(["https://management.azure.com/.default"])
///     .with_tenant_id("contoso.onmicrosoft.com")
///     .with_cae(true);
/// assert_eq!(req.scopes(), ["https://management.azure.com/.default"]);
/// assert_eq!(req.tenant_id(), Some("contoso.onmicrosoft.com"));
/// assert!(req.is_cae());
/// assert_eq!(req.claims(), None);
/// ```
///
/// # Naming
///
/// `TokenRequest` and [`AccessToken`] are values that carry their settings, so they name
/// things as `http::Request` and `http::HeaderValue` do for reading, and as tower-http's
/// `ServeDir::with_buf_chunk_size` and axum's `Router::with_state` do for a setter on the
/// value itself:
///
/// * a getter is the plain noun of what it returns: [`scopes`](Self::scopes),
///   [`claims`](Self::claims), [`tenant_id`](Self::tenant_id),
///   [`AccessToken::expires_on`];
/// * a boolean getter is `is_*`: [`is_cae`](Self::is_cae), [`AccessToken::is_expired`];
/// * a setter consumes the value and returns it changed, named `with_` and the getter's
///   noun: [`with_claims`](Self::with_claims), [`with_tenant_id`](Self::with_tenant_id),
///   [`with_cae`](Self::with_cae), [`AccessToken::with_refresh_on`];
/// * a constructor is `new` or `from_*`: [`AccessToken::from_unix`].
///
/// Builders (the credential builders, [`BearerTokenLayerBuilder`](crate::bearer::BearerTokenLayerBuilder))
/// are the other shape, as `http::request::Builder` is: they hold settings only, name each
/// setter after its setting (no `with_` or `set_`; a switch says what it switches, as
/// `enable_cae(true)` or `allow_insecure_http(true)`), and end in `build()`.
///
/// A request without scopes can be built but every credential rejects it with an
/// [invalid request](crate::CredentialError::is_invalid_request) error.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRequest {
    scopes: Vec<String>,
    claims: Option<String>,
    tenant_id: Option<String>,
    cae: bool,
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
            cae: false,
        }
    }

    /// Additional claims the token must carry: the decoded JSON of a CAE claims challenge.
    /// A request with claims is never answered from a cache. Blank claims are no claims (as
    /// azure-identity, which ignores an empty `claims`).
    pub fn with_claims(mut self, claims: impl Into<String>) -> Self {
        let claims = claims.into();
        self.claims = (!claims.trim().is_empty()).then_some(claims);
        self
    }

    /// Ask for a token from this tenant instead of the credential's own. The credential
    /// must allow it (see `additionally_allowed_tenants` on the credential builders).
    pub fn with_tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// Announce (or not) the Continuous Access Evaluation capability (`CP1`) so the provider
    /// may issue a long-lived CAE token (default off). Only announce it when the caller
    /// handles claims challenges, as [`BearerTokenLayer`](crate::BearerTokenLayer) does.
    pub fn with_cae(mut self, cae: bool) -> Self {
        self.cae = cae;
        self
    }

    /// The requested scopes, in the order given.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// The requested claims (JSON), if any.
    pub fn claims(&self) -> Option<&str> {
        self.claims.as_deref()
    }

    /// The requested tenant, if any; `None` means the credential's own.
    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant_id.as_deref()
    }

    /// Whether the CAE capability is announced.
    pub fn is_cae(&self) -> bool {
        self.cae
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
            .field("cae", &self.cae)
            .finish()
    }
}

/// An access token and when it expires.
///
/// Times are instants of tokio's clock ([`tokio::time::Instant`]): they are what the refresh
/// logic compares, and tests can pause and advance that clock. Wall-clock timestamps from the
/// provider or a cache file are converted once, when the token is made.
///
/// **Suspended machines.** Tokio's clock is the monotonic clock, which on Linux and macOS
/// stops while the machine sleeps; the token's real expiry does not. So the token also
/// remembers the wall-clock time it was made at, and every check of its age
/// ([`is_expired`](Self::is_expired), [`expires_in`](Self::expires_in), and the refresh rules
/// of every cache in this crate) counts the time the wall clock ran ahead of tokio's since
/// then, once that is a minute or more: a laptop that slept through a token's expiry asks for
/// a new one when it wakes. A wall clock set back is not counted, and one set forward only
/// makes tokens renew early. The [`expires_on`](Self::expires_on) instant itself is
/// unchanged: compare with these methods, not with it.
///
/// [`credential`](Self::credential) names the credential that obtained the token. It is
/// provenance, not part of the token: equality compares the value, type and times only.
///
/// Names follow the rule written on [`TokenRequest`](TokenRequest#naming): plain-noun getters
/// ([`expires_on`](Self::expires_on), [`refresh_on`](Self::refresh_on),
/// [`credential`](Self::credential)), `is_*` for booleans, `with_*` consuming setters
/// ([`with_refresh_on`](Self::with_refresh_on), [`with_token_type`](Self::with_token_type)),
/// `*_unix` for the same time in Unix seconds.
#[derive(Clone)]
pub struct AccessToken {
    secret: Secret,
    token_type: Arc<str>,
    expires_on: Instant,
    refresh_on: Option<Instant>,
    credential: Option<Cow<'static, str>>,
    /// When it was made.
    made: ClockPair,
}

/// Tokio's clock and the wall clock, read together. The two run apart only while the machine
/// is suspended, when the monotonic clock tokio reads stops (`CLOCK_MONOTONIC` on Linux,
/// `CLOCK_UPTIME_RAW` on macOS; rust-lang/rust#87906), or when the wall clock is set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClockPair {
    at: Instant,
    wall: SystemTime,
}

impl ClockPair {
    pub(crate) fn now() -> Self {
        Self {
            at: Instant::now(),
            wall: wall_now(),
        }
    }

    /// How long the machine has been suspended since this reading, as far as the clocks
    /// tell: how far the wall clock ran ahead of tokio's until `now` (tokio's clock), when
    /// that is [`SUSPENSION_THRESHOLD`] or more; else zero. Reads the wall clock.
    pub(crate) fn suspended(&self, now: Instant) -> Duration {
        let ran = now.saturating_duration_since(self.at);
        // A wall clock set back: nothing to count.
        let wall_ran = wall_now().duration_since(self.wall).unwrap_or_default();
        wall_ran
            .checked_sub(ran)
            .filter(|missed| *missed >= SUSPENSION_THRESHOLD)
            .unwrap_or_default()
    }
}

/// How far the wall clock must run ahead of tokio's before a token's age counts it (see
/// [`AccessToken`]): a minute, so that ordinary steps of the wall clock (NTP corrections of
/// seconds) and a test's paused tokio clock while real time passes are not taken for a
/// suspension. Well under the 300 s refresh window: a shorter suspension still leaves the
/// token renewed before it expires.
const SUSPENSION_THRESHOLD: Duration = Duration::from_secs(60);

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
            made: ClockPair::now(),
        }
    }

    /// A bearer token valid until `expires_on_unix`, in seconds since the Unix epoch (wall
    /// clock): what a provider, a token file or another SDK usually gives, and what a credential
    /// you write yourself has at hand.
    ///
    /// The time is converted once, relative to now, to tokio's clock. A time in the past (or
    /// now) makes a token that is already expired; a time further ahead than seven days is
    /// treated as seven days, the longest lifetime this crate believes (no Entra token lives
    /// longer than 28 hours), so no input overflows the clock.
    ///
    /// No refresh time is derived from the lifetime: a credential's cache renews such a token
    /// in its last 300 s (the last half for one living under 10 minutes), however long it
    /// lives. The half-life rule this crate applies to long-lived tokens answered by Microsoft
    /// Entra ID and managed identity endpoints is theirs alone; to renew earlier, set
    /// [`with_refresh_on_unix`](Self::with_refresh_on_unix).
    ///
    /// ```
    /// use std::time::{SystemTime, UNIX_EPOCH};
    /// use tower_identity::AccessToken;
    ///
    /// let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    /// let token = AccessToken::from_unix("eyJ0eXAi…", now + 3600).with_refresh_on_unix(Some(now + 1800));
    /// assert!(!token.is_expired());
    /// assert!(token.expires_on_unix().abs_diff(now + 3600) <= 1);
    /// assert!(token.refresh_on_unix().unwrap().abs_diff(now + 1800) <= 1);
    ///
    /// assert!(AccessToken::from_unix("old", now - 10).is_expired());
    /// ```
    pub fn from_unix(secret: impl Into<Secret>, expires_on_unix: u64) -> Self {
        Self::new(secret, instant_from_unix(expires_on_unix))
    }

    /// When the provider suggests refreshing (Entra's `refresh_in`); builder style.
    pub fn with_refresh_on(mut self, refresh_on: Option<Instant>) -> Self {
        self.refresh_on = refresh_on;
        self
    }

    /// When the provider suggests refreshing, in Unix seconds (converted and clamped as in
    /// [`from_unix`](Self::from_unix)); builder style.
    pub fn with_refresh_on_unix(self, refresh_on_unix: Option<u64>) -> Self {
        self.with_refresh_on(refresh_on_unix.map(instant_from_unix))
    }

    /// The token type, `Bearer` unless the provider said otherwise; builder style.
    pub fn with_token_type(mut self, token_type: impl Into<Arc<str>>) -> Self {
        self.token_type = token_type.into();
        self
    }

    /// The token value (redacted in `Debug`; call [`expose_secret`](Secret::expose_secret) to
    /// read it).
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

    /// Time left before expiry (zero once expired), counting a suspension of the machine
    /// (see above).
    pub fn expires_in(&self) -> Duration {
        self.expires_on
            .saturating_duration_since(self.caught_up(Instant::now()))
    }

    /// Whether the token has expired, counting a suspension of the machine (see above).
    pub fn is_expired(&self) -> bool {
        self.is_expired_at(Instant::now())
    }

    /// Whether the token has expired at `now` (tokio's clock), counting a suspension.
    pub(crate) fn is_expired_at(&self, now: Instant) -> bool {
        self.caught_up(now) >= self.expires_on
    }

    /// `now` (tokio's clock) moved on by the time the wall clock ran ahead of tokio's since
    /// this token was made, once that is [`SUSPENSION_THRESHOLD`] or more: the instant to
    /// compare this token's times with. Reads the wall clock.
    pub(crate) fn caught_up(&self, now: Instant) -> Instant {
        let missed = self.made.suspended(now);
        // Past the clock's range: later than any time this token holds.
        now.checked_add(missed)
            .unwrap_or_else(|| now.max(self.expires_on))
    }

    /// Expiry as Unix seconds (wall clock), for display and for writing caches; now for an
    /// expired token.
    pub fn expires_on_unix(&self) -> u64 {
        self.unix_after_now(self.expires_on)
    }

    /// When the token should be refreshed, as Unix seconds (wall clock), if the provider said;
    /// now once that time has passed.
    pub fn refresh_on_unix(&self) -> Option<u64> {
        self.refresh_on.map(|at| self.unix_after_now(at))
    }

    /// The wall-clock time (Unix seconds) of one of this token's instants; now if it has
    /// passed.
    fn unix_after_now(&self, instant: Instant) -> u64 {
        let ahead = instant.saturating_duration_since(self.caught_up(Instant::now()));
        unix_now().saturating_add(ahead.as_secs())
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
                    .map(|r| r.saturating_duration_since(self.caught_up(Instant::now()))),
            )
            .finish()
    }
}

/// Seconds since the Unix epoch on the wall clock.
pub(crate) fn unix_now() -> u64 {
    wall_now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The wall clock: `SystemTime::now()`, moved by `ShiftedWallClock` in this crate's tests.
#[cfg(not(test))]
fn wall_now() -> SystemTime {
    SystemTime::now()
}

#[cfg(test)]
fn wall_now() -> SystemTime {
    let ahead = tests::WALL_AHEAD.with(std::cell::Cell::get);
    let by = Duration::from_secs(ahead.unsigned_abs());
    let moved = if ahead >= 0 {
        SystemTime::now().checked_add(by)
    } else {
        SystemTime::now().checked_sub(by)
    };
    moved.expect("a test's wall clock within range")
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
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// How many seconds this thread's wall clock runs ahead of the real one (behind, if
        /// negative; see `wall_now`).
        pub(super) static WALL_AHEAD: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
    }

    /// This thread's wall clock, to move; back to the real one when dropped (a failed test
    /// leaves no moved clock to the next test run on its thread).
    pub(crate) struct ShiftedWallClock(());

    pub(crate) fn wall_clock() -> ShiftedWallClock {
        WALL_AHEAD.with(|ahead| ahead.set(0));
        ShiftedWallClock(())
    }

    impl ShiftedWallClock {
        /// Moves the wall clock by `secs` (back, if negative) and not tokio's: a suspension
        /// of the machine, or the wall clock being set.
        pub(crate) fn shift(&self, secs: i64) {
            WALL_AHEAD.with(|ahead| ahead.set(ahead.get().saturating_add(secs)));
        }

        /// Suspends the machine for `time`: the wall clock moves on, tokio's does not.
        pub(crate) fn suspend(&self, time: Duration) {
            self.shift(i64::try_from(time.as_secs()).unwrap_or(i64::MAX));
        }
    }

    impl Drop for ShiftedWallClock {
        fn drop(&mut self) {
            WALL_AHEAD.with(|ahead| ahead.set(0));
        }
    }

    #[test]
    fn secret_never_prints_its_value() {
        let s = Secret::new("s3cr3t-value");
        let t = AccessToken::new(s.clone(), Instant::now() + Duration::from_secs(60));
        for text in [format!("{s:?}"), format!("{t:?}"), format!("{t:#?}")] {
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
        let req = TokenRequest::new(["a"]).with_claims("{\"secretish\":1}");
        assert!(!format!("{req:?}").contains("secretish"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_from_unix_times_round_trips_and_never_overflows() {
        // The wall clock runs while tokio's is paused: a second may tick between two reads.
        let near = |a: u64, b: u64| a.abs_diff(b) <= 1;
        let now = unix_now();
        let token = AccessToken::from_unix("t", now + 3600).with_refresh_on_unix(Some(now + 60));
        assert!(!token.is_expired());
        assert!(near(token.expires_in().as_secs(), 3600));
        assert!(near(token.expires_on_unix(), now + 3600));
        assert!(near(token.refresh_on_unix().unwrap(), now + 60));
        let refresh_in = token.refresh_on().unwrap() - Instant::now();
        assert!(near(refresh_in.as_secs(), 60));

        // Past times (the epoch included) make an expired token that reports now.
        for past in [0, 1, now - 1, now] {
            let token = AccessToken::from_unix("t", past).with_refresh_on_unix(Some(past));
            assert!(token.is_expired(), "{past}");
            assert!(near(token.expires_on_unix(), now));
            assert!(near(token.refresh_on_unix().unwrap(), now));
        }
        // Absurd times are clamped to the longest believable lifetime.
        let longest = now + MAX_TOKEN_LIFETIME.as_secs();
        for absurd in [u64::MAX, u64::MAX - 1, now + (1 << 40)] {
            let token = AccessToken::from_unix("t", absurd).with_refresh_on_unix(Some(absurd));
            assert_eq!(token.expires_in(), MAX_TOKEN_LIFETIME);
            assert!(near(token.expires_on_unix(), longest));
            assert!(near(token.refresh_on_unix().unwrap(), longest));
        }
        assert_eq!(AccessToken::from_unix("t", now).refresh_on_unix(), None);

        // The token expires when tokio's clock passes the time.
        let token = AccessToken::from_unix("t", now + 10);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(token.is_expired());
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

    #[tokio::test(start_paused = true)]
    async fn a_suspension_of_the_machine_counts_toward_expiry() {
        let clock = wall_clock();
        let now = unix_now();
        let token = AccessToken::from_unix("t", now + 3600).with_refresh_on_unix(Some(now + 1800));
        // Tokio's clock stood still while the wall clock ran on for two hours.
        clock.suspend(Duration::from_secs(2 * 3600));
        assert!(token.is_expired());
        assert_eq!(token.expires_in(), Duration::ZERO);
        assert!(token.expires_on_unix().abs_diff(unix_now()) <= 1);
        assert!(token.refresh_on_unix().unwrap().abs_diff(unix_now()) <= 1);
        assert!(!format!("{token:?}").contains("3599"), "{token:?}");
        // A token made after the suspension is not aged by it.
        let fresh = AccessToken::from_unix("t", unix_now() + 3600);
        assert!(!fresh.is_expired());
        assert!(fresh.expires_in() >= Duration::from_secs(3599));
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_suspension_or_a_wall_clock_set_back_is_not_counted() {
        let clock = wall_clock();
        let token = AccessToken::from_unix("t", unix_now() + 3600);
        // Under a minute: an NTP step, or a test's paused clock while real time passes.
        clock.suspend(Duration::from_secs(50));
        assert!(token.expires_in() >= Duration::from_secs(3599), "{token:?}");
        clock.shift(-50);
        // Set back by an hour: the monotonic clock still says how old the token is.
        clock.shift(-3600);
        assert!(token.expires_in() >= Duration::from_secs(3599), "{token:?}");
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(token.is_expired());
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspension_shorter_than_the_token_leaves_the_rest() {
        let clock = wall_clock();
        let token = AccessToken::from_unix("t", unix_now() + 3600);
        clock.suspend(Duration::from_secs(1000));
        let left = token.expires_in().as_secs();
        assert!((2599..=2600).contains(&left), "{left}");
        assert!(!token.is_expired());
    }
}
