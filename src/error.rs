//! Errors: [`CredentialError`] for everything a credential answers, [`ConfigError`] for
//! everything a builder or constructor rejects.
//!
//! Neither ever carries a secret: messages are written from fields we choose, and text that
//! came from a provider is scrubbed of token values before it gets here.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// What kind of failure a [`CredentialError`] is. It decides what a chain does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The credential lacks configuration, data or platform support (no environment
    /// variables, no `az`, no cached account). A chain moves on to the next credential.
    Unavailable,
    /// The credential tried and failed: the identity provider said no, answered with something
    /// unusable, or could not be reached. A chain stops here.
    AuthenticationFailed,
    /// The request or the credential's configuration is wrong: no scope, a malformed tenant
    /// id, a tenant the credential may not use. A chain stops here.
    InvalidRequest,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::AuthenticationFailed => "authentication failed",
            ErrorKind::InvalidRequest => "invalid request",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The error of every credential.
///
/// Opaque, cheap to clone (callers that shared one token acquisition all receive it), and
/// free of secrets. Ask it what [kind](Self::kind) it is, which credential raised it and, when
/// the identity provider answered, the HTTP status, the OAuth `error` code, the AADSTS codes
/// and the correlation id to quote to support. A chain's error also lists every
/// [attempt](Self::attempts).
#[derive(Clone)]
pub struct CredentialError {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    credential: Cow<'static, str>,
    message: String,
    provider: Option<ProviderDetails>,
    attempts: Vec<CredentialError>,
    /// The name a chain gave the member that raised this error (a box's name, `primary`) when
    /// it differs from `credential`: the chain's message lists the attempt as `primary
    /// (ClientSecretCredential)`, while `credential()` stays the credential's own name.
    member: Option<Cow<'static, str>>,
    /// Advice a chain appended to its message about its attempts as a whole (what to set up):
    /// an outer chain that lists these attempts in its own message appends it too.
    notes: Vec<String>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
    cause: Cause,
}

/// What a caller's own retry policy needs to know about a failure, kept apart from the
/// message (which is scrubbed text) so that it survives redaction and chains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cause {
    /// No answer in time (an attempt's timeout or the total deadline).
    pub(crate) timeout: bool,
    /// The connection could not be made.
    pub(crate) connect: bool,
    /// Worth trying again later: a timeout, a connection or I/O failure, throttling, an answer
    /// the built-in retries retry that outlasted them.
    pub(crate) transient: bool,
    /// The provider asked for no request before this instant (`Retry-After`), or the bearer
    /// layer answers this remembered failure until then (its slot after a rejected token, its
    /// memory of failed claims: see `crate::refresh::kept_failure`).
    pub(crate) throttled_until: Option<Instant>,
    /// The work that was to answer was cut off (it panicked, its task was aborted or its
    /// runtime shut down: see `crate::flight`): the credential gave no answer, so there is
    /// nothing to remember about it (`crate::refresh::kept_failure`). Not for a retry policy:
    /// not shown.
    pub(crate) unfinished: bool,
}

/// What an identity provider said when it refused: already scrubbed of token values.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProviderDetails {
    pub(crate) status: Option<StatusCode>,
    pub(crate) error: Option<String>,
    pub(crate) error_codes: Vec<u32>,
    pub(crate) correlation_id: Option<String>,
    /// Entra's `suberror` (`bad_token`, `basic_action`, …): what its refusal of a refresh
    /// token means for the token. Only a short identifier is kept.
    pub(crate) suberror: Option<String>,
}

impl CredentialError {
    fn build(kind: ErrorKind, credential: impl Into<Cow<'static, str>>, message: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                credential: credential.into(),
                message,
                provider: None,
                attempts: Vec::new(),
                member: None,
                notes: Vec::new(),
                source: None,
                cause: Cause::default(),
            }),
        }
    }

    /// An *unavailable* error: `credential` lacks what it needs; `message` says what to do.
    /// Custom credentials use this so chains move past them.
    pub fn unavailable(
        credential: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self::build(ErrorKind::Unavailable, credential, message.into())
    }

    /// An *authentication failed* error: `credential` tried and the attempt failed.
    pub fn authentication_failed(
        credential: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self::build(ErrorKind::AuthenticationFailed, credential, message.into())
    }

    /// An *invalid request* error: the request or configuration cannot work as given.
    pub fn invalid_request(
        credential: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self::build(ErrorKind::InvalidRequest, credential, message.into())
    }

    /// Attaches the underlying cause (e.g. an I/O or TLS error). The cause must not hold a
    /// secret.
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.inner_mut().source = Some(Arc::from(source.into()));
        self
    }

    pub(crate) fn with_provider(mut self, details: ProviderDetails) -> Self {
        self.inner_mut().provider = Some(details);
        self
    }

    pub(crate) fn with_cause(mut self, cause: Cause) -> Self {
        self.inner_mut().cause = cause;
        self
    }

    /// What caused it, to carry over to an error made from this one (so that a timeout stays
    /// one, and work cut off is still not remembered: `crate::refresh::kept_failure`).
    pub(crate) fn cause(&self) -> Cause {
        self.inner.cause
    }

    /// The same error, throttled until `until` (the rest of its cause kept).
    pub(crate) fn throttled_until(mut self, until: Instant) -> Self {
        self.inner_mut().cause.throttled_until = Some(until);
        self
    }

    /// When the wait the error asks for ends, if it asks for one.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.inner.cause.throttled_until
    }

    /// Whether the work that was to answer was cut off (see [`Cause::unfinished`]).
    pub(crate) fn is_unfinished(&self) -> bool {
        self.inner.cause.unfinished
    }

    /// The message with `prefix` put before it (what led to the error).
    pub(crate) fn with_message_prefix(mut self, prefix: &str) -> Self {
        let inner = self.inner_mut();
        inner.message.insert_str(0, prefix);
        self
    }

    /// The message with `suffix` appended (details learnt after the error was built).
    pub(crate) fn with_message_suffix(mut self, suffix: &str) -> Self {
        self.inner_mut().message.push_str(suffix);
        self
    }

    /// The same error, reported under another credential's name (a credential that
    /// delegates, like `EnvironmentCredential`, reports under its own).
    pub(crate) fn renamed(mut self, credential: impl Into<Cow<'static, str>>) -> Self {
        self.inner_mut().credential = credential.into();
        self
    }

    /// The same error, as raised by the chain member given the name `member`, which the
    /// chain's message shows beside the credential's; `credential()` is unchanged, and so is
    /// anything else when that is the credential's own name.
    pub(crate) fn in_member(mut self, member: &str) -> Self {
        if member != self.credential() {
            self.inner_mut().member = Some(Cow::Owned(member.to_owned()));
        }
        self
    }

    /// How a chain's message names the attempt: the member's given name with the
    /// credential's, `primary (ClientSecretCredential)`, or the credential's alone.
    fn listed_name(&self) -> Cow<'_, str> {
        match &self.inner.member {
            Some(member) => Cow::Owned(format!("{member} ({})", self.inner.credential)),
            None => Cow::Borrowed(&self.inner.credential),
        }
    }

    /// A chain's error with `note` (advice about its attempts as a whole) on a line of its own
    /// after them; an outer chain listing these attempts keeps it (see [`chain`](Self::chain)).
    pub(crate) fn with_chain_note(mut self, note: &str) -> Self {
        let inner = self.inner_mut();
        inner.message.push('\n');
        inner.message.push_str(note);
        inner.notes.push(note.to_owned());
        self
    }

    /// The same error as *authentication failed*, message and cause kept: for a credential
    /// that may no longer let a caller's chain move on (the one `DefaultAzureCredential` chose).
    pub(crate) fn into_authentication_failed(mut self) -> Self {
        self.inner_mut().kind = ErrorKind::AuthenticationFailed;
        self
    }

    /// The same error as *unavailable*: for a chain member whose failures should let the
    /// chain move on (the developer tools inside `DefaultAzureCredential`).
    pub(crate) fn into_unavailable(mut self) -> Self {
        self.inner_mut().kind = ErrorKind::Unavailable;
        self
    }

    /// The error of a chain: every attempt in order; the last one decides the kind, unless
    /// every attempt was unavailable.
    pub(crate) fn chain(chain_name: &'static str, attempts: Vec<CredentialError>) -> Self {
        // A nested chain's advice (`DefaultAzureCredential`'s "Set up one of them…") is about
        // the attempts it listed, which this message lists too: kept, once each.
        let mut notes: Vec<String> = Vec::new();
        for note in attempts.iter().flat_map(|a| &a.inner.notes) {
            if !notes.contains(note) {
                notes.push(note.clone());
            }
        }
        // Nested chains list their own attempts: flatten so the user sees leaf credentials.
        let attempts: Vec<CredentialError> = attempts
            .into_iter()
            .flat_map(|a| {
                if a.inner.attempts.is_empty() {
                    vec![a]
                } else {
                    a.inner.attempts.clone()
                }
            })
            .collect();
        let stopper = attempts.last().filter(|a| !a.is_unavailable()).cloned();
        let mut message = match &stopper {
            Some(s) => format!(
                "{} failed ({}), so the chain stopped. Attempts, in order:",
                s.listed_name(),
                s.kind()
            ),
            None => "no credential in the chain could get a token. Attempts, in order:".into(),
        };
        for (i, a) in (1usize..).zip(&attempts) {
            message.push_str(&format!(
                "\n  {}. {} ({}): {}",
                i,
                a.listed_name(),
                a.kind(),
                a.message()
            ));
        }
        for note in &notes {
            message.push('\n');
            message.push_str(note);
        }
        let kind = stopper
            .as_ref()
            .map_or(ErrorKind::Unavailable, |s| s.kind());
        let mut err = Self::build(kind, chain_name, message);
        {
            let inner = err.inner_mut();
            inner.notes = notes;
            inner.provider = stopper.as_ref().and_then(|s| s.inner.provider.clone());
            inner.cause = stopper.as_ref().map(|s| s.inner.cause).unwrap_or_default();
            inner.source = stopper.map(|s| Arc::new(s) as Arc<dyn StdError + Send + Sync>);
            inner.attempts = attempts;
        }
        err
    }

    fn inner_mut(&mut self) -> &mut Inner {
        // Errors are built before they are shared; this only clones if someone holds a copy.
        Arc::make_mut(&mut self.inner)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether the credential was unavailable (a chain moves on).
    pub fn is_unavailable(&self) -> bool {
        self.inner.kind == ErrorKind::Unavailable
    }

    /// Whether the credential tried and failed (a chain stops).
    pub fn is_authentication_failed(&self) -> bool {
        self.inner.kind == ErrorKind::AuthenticationFailed
    }

    /// Whether the request or configuration was invalid.
    pub fn is_invalid_request(&self) -> bool {
        self.inner.kind == ErrorKind::InvalidRequest
    }

    /// The name of the credential that raised the error, e.g. `ClientSecretCredential`.
    pub fn credential(&self) -> &str {
        &self.inner.credential
    }

    /// The message without the credential name.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The HTTP status of the provider's answer, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.provider.as_ref().and_then(|p| p.status)
    }

    /// The OAuth `error` code of the provider's answer (`invalid_client`, `invalid_grant`, …).
    pub fn error_code(&self) -> Option<&str> {
        self.inner
            .provider
            .as_ref()
            .and_then(|p| p.error.as_deref())
    }

    /// The AADSTS codes of the provider's answer (e.g. `[7000215]`).
    pub fn error_codes(&self) -> &[u32] {
        self.inner
            .provider
            .as_ref()
            .map_or(&[], |p| p.error_codes.as_slice())
    }

    /// Entra's `suberror` of the provider's answer (`bad_token`, `consent_required`, …).
    pub(crate) fn suberror(&self) -> Option<&str> {
        self.inner
            .provider
            .as_ref()
            .and_then(|p| p.suberror.as_deref())
    }

    /// The correlation id of the provider's answer, to quote to support.
    pub fn correlation_id(&self) -> Option<&str> {
        self.inner
            .provider
            .as_ref()
            .and_then(|p| p.correlation_id.as_deref())
    }

    /// Whether no answer came in time: an attempt's timeout, or the total deadline of
    /// [`RetryOptions::total_timeout`](crate::RetryOptions::total_timeout).
    pub fn is_timeout(&self) -> bool {
        self.inner.cause.timeout
    }

    /// Whether the connection to the provider could not be made.
    pub fn is_connect(&self) -> bool {
        self.inner.cause.connect
    }

    /// Whether the failure may pass by itself, so that trying again later is reasonable: a
    /// timeout, a connection or I/O failure, throttling, or an answer the built-in retries
    /// retry (408, 429, 500, 502, 503, 504) that outlasted them. A refusal (`invalid_client`, `invalid_grant`), a TLS failure or a
    /// configuration mistake is not.
    pub fn is_transient(&self) -> bool {
        self.inner.cause.transient
    }

    /// Whether the provider is throttling this credential: it answered a status the built-in
    /// retries retry (429, 503, …) with a `Retry-After`, and until that passes the credential sends it no request (see
    /// [`retry_after`](Self::retry_after)).
    pub fn is_throttled(&self) -> bool {
        self.inner.cause.throttled_until.is_some()
    }

    /// How long the provider asked to wait, counted from now (zero once it has passed);
    /// `None` when the provider did not ask. A bearer layer answering with a throttled failure
    /// it remembers (after a rejected token) says here when it asks the credential again,
    /// which may be later than the provider's own wait.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner
            .cause
            .throttled_until
            .map(|until| until.saturating_duration_since(Instant::now()))
    }

    /// The default client's kind of transport failure, when the request got no answer and
    /// the failure came from it (possibly through the caller's layers).
    pub(crate) fn transport_kind(&self) -> Option<crate::transport::TransportErrorKind> {
        std::iter::successors(StdError::source(self), |e| (*e).source())
            .find_map(|e| e.downcast_ref::<crate::transport::TransportError>())
            .map(crate::transport::TransportError::kind)
    }

    /// For a chain's error: every credential tried, in order (nested chains flattened).
    /// Empty for a single credential's error.
    pub fn attempts(&self) -> &[CredentialError] {
        &self.inner.attempts
    }
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.credential, self.inner.message)
    }
}

impl fmt::Debug for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CredentialError");
        d.field("kind", &self.inner.kind)
            .field("credential", &self.inner.credential);
        if let Some(member) = &self.inner.member {
            d.field("member", member);
        }
        d.field("message", &self.inner.message);
        if let Some(p) = &self.inner.provider {
            d.field("status", &p.status)
                .field("error", &p.error)
                .field("error_codes", &p.error_codes)
                .field("correlation_id", &p.correlation_id);
            if let Some(suberror) = &p.suberror {
                d.field("suberror", suberror);
            }
        }
        if !self.inner.attempts.is_empty() {
            d.field("attempts", &self.inner.attempts.len());
        }
        let shown = Cause {
            unfinished: false,
            ..self.inner.cause
        };
        if shown != Cause::default() {
            d.field("timeout", &self.inner.cause.timeout)
                .field("connect", &self.inner.cause.connect)
                .field("transient", &self.inner.cause.transient)
                .field("retry_after", &self.retry_after());
        }
        if let Some(s) = &self.inner.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl StdError for CredentialError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// A builder or constructor rejected its input: the message names the setting and what
/// would be accepted.
#[derive(Debug)]
pub struct ConfigError {
    message: String,
    source: Option<BoxError>,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for ConfigError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_error_lists_attempts_in_order_with_kind() {
        let a = CredentialError::unavailable("A", "no config; set X");
        let b = CredentialError::authentication_failed("B", "provider said no");
        let err = CredentialError::chain("ChainedTokenCredential", vec![a, b]);
        assert!(err.is_authentication_failed());
        let text = err.to_string();
        assert!(
            text.starts_with("ChainedTokenCredential: B failed"),
            "{text}"
        );
        let a_at = text.find("1. A (unavailable): no config; set X").unwrap();
        let b_at = text
            .find("2. B (authentication failed): provider said no")
            .unwrap();
        assert!(a_at < b_at);
        assert_eq!(err.attempts().len(), 2);
        assert_eq!(err.source().unwrap().to_string(), "B: provider said no");
    }

    #[test]
    fn all_unavailable_chain_is_unavailable() {
        let err = CredentialError::chain(
            "ChainedTokenCredential",
            vec![
                CredentialError::unavailable("A", "a"),
                CredentialError::unavailable("B", "b"),
            ],
        );
        assert!(err.is_unavailable());
        assert!(err.source().is_none());
        assert!(err.to_string().contains("no credential in the chain"));
    }

    #[test]
    fn nested_chain_attempts_are_flattened() {
        let inner = CredentialError::chain(
            "ChainedTokenCredential",
            vec![
                CredentialError::unavailable("A", "a"),
                CredentialError::unavailable("B", "b"),
            ],
        );
        let outer = CredentialError::chain(
            "ChainedTokenCredential",
            vec![inner, CredentialError::unavailable("C", "c")],
        );
        let names: Vec<_> = outer.attempts().iter().map(|a| a.credential()).collect();
        assert_eq!(names, ["A", "B", "C"]);
    }

    /// A nested chain's advice about its attempts (`DefaultAzureCredential`'s "Set up one of
    /// them…") survives the flattening, once however deep. Before, the outer chain's message
    /// listed the attempts without it.
    #[test]
    fn a_nested_chains_note_is_kept_once() {
        let inner = CredentialError::chain(
            "Inner",
            vec![
                CredentialError::unavailable("A", "a"),
                CredentialError::unavailable("B", "b"),
            ],
        )
        .with_chain_note("Set up one of them");
        assert!(
            inner.to_string().ends_with("\nSet up one of them"),
            "{inner}"
        );
        let outer = CredentialError::chain(
            "Outer",
            vec![inner.clone(), CredentialError::unavailable("C", "c")],
        );
        let outermost = CredentialError::chain("Outermost", vec![outer, inner]);
        let text = outermost.to_string();
        assert!(text.ends_with("\nSet up one of them"), "{text}");
        assert_eq!(text.matches("Set up one of them").count(), 1, "{text}");
        let names: Vec<_> = outermost
            .attempts()
            .iter()
            .map(|a| a.credential())
            .collect();
        assert_eq!(names, ["A", "B", "C", "A", "B"]);
        // A chain without one has none.
        let plain = CredentialError::chain("Plain", vec![CredentialError::unavailable("A", "a")]);
        assert!(
            plain.to_string().ends_with("1. A (unavailable): a"),
            "{plain}"
        );
    }

    #[test]
    fn provider_details_survive_and_show_in_debug() {
        let err =
            CredentialError::authentication_failed("C", "no").with_provider(ProviderDetails {
                status: Some(StatusCode::UNAUTHORIZED),
                error: Some("invalid_client".into()),
                error_codes: vec![7000215],
                correlation_id: Some("corr".into()),
                suberror: None,
            });
        let chained = CredentialError::chain("Chain", vec![err.clone()]);
        for e in [&err, &chained] {
            assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED));
            assert_eq!(e.error_code(), Some("invalid_client"));
            assert_eq!(e.error_codes(), [7000215]);
            assert_eq!(e.correlation_id(), Some("corr"));
        }
        assert!(format!("{err:?}").contains("7000215"));
    }
}
