//! The error for a request that got no answer.

use crate::error::{Cause, CredentialError};
use crate::redact::scrub;
use crate::transport::{TransportError, TransportErrorKind};

/// The error for a request to `provider` that got no answer: the transport's kind (timeout,
/// connect, …) is kept, its text scrubbed.
pub(crate) fn transport_failure(
    credential: &'static str,
    provider: &str,
    url: &str,
    error: &(dyn std::error::Error + 'static),
    secrets: &[&str],
) -> CredentialError {
    let transport = std::iter::successors(Some(error), |e| e.source())
        .find_map(|e| e.downcast_ref::<TransportError>());
    let elapsed = std::iter::successors(Some(error), |e| e.source())
        .any(|e| e.is::<tower::timeout::error::Elapsed>());
    let kind = transport.map(TransportError::kind);
    let cause = Cause {
        timeout: elapsed || kind == Some(TransportErrorKind::Timeout),
        connect: kind == Some(TransportErrorKind::Connect),
        // A failure of a user's own layers is taken as transient: it is not a refusal.
        transient: !matches!(
            kind,
            Some(
                TransportErrorKind::Tls
                    | TransportErrorKind::TooLarge
                    | TransportErrorKind::Proxy
                    | TransportErrorKind::Scheme
            )
        ),
        throttled_until: None,
        unfinished: false,
    };
    let scrub_text = |text: &str| scrub(text, secrets);
    let reason = scrub_text(&error.to_string());
    let failure = CredentialError::authentication_failed(
        credential,
        format!("could not get a response from {provider} at {url}: {reason}"),
    )
    .with_cause(cause);
    match transport {
        Some(t) => failure.with_source(t.redacted(scrub_text)),
        None => failure.with_source(ScrubbedError(reason)),
    }
}

/// A transport failure's text, scrubbed, standing in for the original (which could quote
/// what it was sent).
#[derive(Debug)]
struct ScrubbedError(String);

impl std::fmt::Display for ScrubbedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScrubbedError {}
