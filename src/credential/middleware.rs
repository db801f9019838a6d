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
///   error itself is not kept as the [`source`](std::error::Error::source): its `Display` or
///   `Debug` may quote a token, and `Debug` of ours or an error reporter's "caused by" would
///   print it.
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
    CredentialError::authentication_failed(
        name,
        format!("the middleware around the credential failed: {text}"),
    )
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
    fn other_errors_are_quoted_scrubbed_and_not_kept() {
        let back = credential_error(NAME, "buffer's worker closed unexpectedly".into());
        assert!(back.is_authentication_failed());
        assert!(!back.is_transient());
        assert_eq!(
            back.to_string(),
            "Wrapped: the middleware around the credential failed: buffer's worker closed unexpectedly"
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
