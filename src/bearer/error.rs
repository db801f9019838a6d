//! The layer's own error: a request it refuses to send.

use std::fmt;

/// A request [`BearerToken`](super::BearerToken) refused to send.
///
/// The layer's errors are [`BoxError`](crate::BoxError)s holding one of: this type, a
/// [`CredentialError`](crate::CredentialError) when no token could be obtained, or the inner
/// service's own error, unchanged. Use `downcast_ref` to tell them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerError {
    kind: Kind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Insecure,
}

impl BearerError {
    pub(crate) fn insecure(uri: &http::Uri) -> Self {
        Self::insecure_at(uri.scheme_str(), uri.host())
    }

    /// [`insecure`](Self::insecure) from the request's scheme and host, for a URL that
    /// `http::Uri` may not parse (a reqwest URL longer than its limit, say).
    pub(crate) fn insecure_at(scheme: Option<&str>, host: Option<&str>) -> Self {
        // Only the scheme and host: a query could hold a secret.
        let target = match (scheme, host) {
            (Some(scheme), Some(host)) => format!("{scheme}://{host}"),
            (None, _) => "a request without a scheme (use an absolute https:// URI)".to_owned(),
            (Some(scheme), None) => format!("a {scheme} request without a host"),
        };
        Self {
            kind: Kind::Insecure,
            message: format!(
                "refusing to send a bearer token over {target}: tokens go over https only \
                 (BearerTokenLayer::builder(credential, scopes).allow_insecure_http(true) \
                 allows http, e.g. for loopback development)"
            ),
        }
    }

    /// Whether the request was refused because it was not `https`.
    pub fn is_insecure(&self) -> bool {
        self.kind == Kind::Insecure
    }
}

impl fmt::Display for BearerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BearerError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hint names the builder method that exists: `BearerTokenLayerBuilder` has
    /// `allow_insecure_http`, `BearerTokenLayer` has not.
    #[test]
    fn insecure_hint_names_the_builder_method() {
        let uri: http::Uri = "http://example.com/path?sig=secret".parse().unwrap();
        let error = BearerError::insecure(&uri);
        let text = error.to_string();
        assert!(
            text.contains(
                "BearerTokenLayer::builder(credential, scopes).allow_insecure_http(true)"
            ),
            "{text}"
        );
        assert!(
            !text.contains("BearerTokenLayer::allow_insecure_http"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
        // The method the hint names exists on the builder (compile-time check).
        let _ = crate::BearerTokenLayerBuilder::allow_insecure_http;
    }
}
