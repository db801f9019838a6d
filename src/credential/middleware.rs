//! Credentials inside tower middleware: the errors of `tower::timeout`, `buffer`, `retry`
//! and friends (a [`BoxError`]) turned back into a [`CredentialError`], so that a wrapped
//! credential is a [`TokenCredential`](super::TokenCredential) again. The entry points are
//! [`BoxCredential::from_service`](super::BoxCredential::from_service) and
//! [`CredentialExt::with_middleware`](super::CredentialExt::with_middleware).

use std::borrow::Cow;

use crate::error::{BoxError, Cause, CredentialError};
use crate::redact::MAX_QUOTED_CHARS;

/// The [`CredentialError`] for an error that came out of the middleware around the
/// credential called `name`.
///
/// * A `CredentialError` (the credential's own answer, boxed by the middleware) is returned
///   unchanged: its kind, provider details and cause survive.
/// * `tower::timeout`'s `Elapsed` is *authentication failed* with
///   [`is_timeout`](CredentialError::is_timeout) and
///   [`is_transient`](CredentialError::is_transient). Not *unavailable*: the credential was
///   configured and asked, and did not answer in time. A chain that moved on would silently
///   switch identity whenever the provider is slow (a managed identity handing over to a
///   developer's `az login`), which is what the chain's "only unavailable passes" rule is there
///   to prevent.
/// * Anything else (a buffer whose worker closed, a load shedder's overload, an error of your
///   own layer) is *authentication failed* too, quoting the middleware's error, scrubbed. The
///   error is kept as the [`source`](std::error::Error::source) (to downcast, say to
///   `tower::load_shed::error::Overloaded`) only when neither it nor its own sources show
///   anything scrubbing would mask, in `Display` or `Debug`: our `Debug`, and an error
///   reporter's "caused by", print it.
pub(super) fn credential_error(name: Cow<'static, str>, error: BoxError) -> CredentialError {
    let error = match error.downcast::<CredentialError>() {
        Ok(error) => return *error,
        Err(error) => error,
    };
    if error.is::<tower::timeout::error::Elapsed>() {
        return CredentialError::authentication_failed(
            name,
            "no token within the timeout of the tower::timeout layer around the credential; \
             the identity provider or tool did not answer in time. Check that it is reachable, \
             or allow more time",
        )
        .with_cause(Cause {
            timeout: true,
            transient: true,
            ..Cause::default()
        })
        .with_source(error);
    }
    let text = crate::redact::excerpt(error.to_string().as_bytes(), &[], MAX_QUOTED_CHARS);
    let failed = CredentialError::authentication_failed(
        name,
        format!("the middleware around the credential failed: {text}"),
    );
    if shows_no_secret(&*error) {
        failed.with_source(error)
    } else {
        failed
    }
}

/// Whether `error` and its sources show nothing [`scrub`](crate::redact::scrub) would mask,
/// in `Display` or `Debug`. A chain deeper than any real one counts as showing something.
fn shows_no_secret(error: &(dyn std::error::Error + 'static)) -> bool {
    const MAX_DEPTH: usize = 16;
    let mut next = Some(error);
    for _ in 0..MAX_DEPTH {
        let Some(error) = next else {
            return true;
        };
        for text in [error.to_string(), format!("{error:?}")] {
            if crate::redact::scrub(&text, &[]) != text {
                return false;
            }
        }
        next = error.source();
    }
    next.is_none()
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    const NAME: Cow<'static, str> = Cow::Borrowed("Wrapped");

    #[test]
    fn a_credential_error_comes_back_unchanged() {
        let original = CredentialError::unavailable("ClientSecretCredential", "not configured");
        let back = credential_error(NAME, Box::new(original.clone()));
        assert!(back.is_unavailable());
        assert_eq!(back.credential(), "ClientSecretCredential");
        assert_eq!(back.message(), original.message());
    }

    #[test]
    fn elapsed_is_a_timeout_that_stops_a_chain() {
        let back = credential_error(NAME, Box::new(tower::timeout::error::Elapsed::new()));
        assert!(back.is_authentication_failed());
        assert!(back.is_timeout() && back.is_transient());
        assert_eq!(back.credential(), "Wrapped");
        assert!(
            back.source()
                .is_some_and(|s| s.is::<tower::timeout::error::Elapsed>())
        );
    }

    #[test]
    fn other_errors_are_quoted_scrubbed_and_kept_only_when_they_show_no_secret() {
        let back = credential_error(NAME, "buffer's worker closed unexpectedly".into());
        assert!(back.is_authentication_failed());
        assert!(!back.is_transient());
        assert_eq!(
            back.to_string(),
            "Wrapped: the middleware around the credential failed: buffer's worker closed unexpectedly"
        );
        assert_eq!(
            back.source().map(ToString::to_string).as_deref(),
            Some("buffer's worker closed unexpectedly"),
            "kept, to downcast"
        );

        // An error of the user's own layer that quotes a token: masked in the message, and
        // neither `Debug` nor the source chain shows the original.
        let back = credential_error(NAME, "refresh failed: access_token=opaque123456".into());
        assert_eq!(
            back.to_string(),
            "Wrapped: the middleware around the credential failed: refresh failed: access_token=***"
        );
        assert!(!format!("{back:?}").contains("opaque123456"), "{back:?}");
        assert!(back.source().is_none());
    }
}
