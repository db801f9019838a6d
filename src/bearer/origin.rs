//! Whether a 401 came from the origin its request was sent to. A redirect follower below the
//! layer (tower-http's `FollowRedirect`, as the module docs ask; reqwest's own inside its
//! client) may have taken the request to another origin, and a 401 from there says nothing of
//! the token: both followers' default policies do not even send `Authorization` there. Taken
//! for the resource's own 401, it made the layer drop a valid shared token, or ask the
//! credential for a token with a third party's claims and re-send to the first origin.
//!
//! Only the 401 path reads this: the origin a request was sent to is read from what a CAE
//! request keeps for its re-send anyway (its head's copy, reqwest's clone), and the origin that
//! answered from the response (tower-http's `RequestUri`, reqwest's `Response::url`).

use http::Uri;

/// An origin as RFC 6454 §4 has it: the scheme and host, ASCII-lowercased, and the port, or
/// the scheme's default port when the URI names none (so `https://a.example` and
/// `https://A.example:443` are one origin, as for tower-http's policy except for the case of
/// the host, which it compares as written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// The origin of an absolute URI; `None` for one without a scheme or a host.
    pub(crate) fn of(uri: &Uri) -> Option<Self> {
        Some(Self::new(uri.scheme_str()?, uri.host()?, uri.port_u16()))
    }

    /// The origin of a URL (reqwest's).
    #[cfg(feature = "reqwest-middleware")]
    pub(crate) fn of_url(url: &url::Url) -> Option<Self> {
        Some(Self::new(url.scheme(), url.host_str()?, url.port()))
    }

    /// The origin of these parts of a URI: `port` as the URI gives it, if it does.
    pub(crate) fn new(scheme: &str, host: &str, port: Option<u16>) -> Self {
        let scheme = scheme.to_ascii_lowercase();
        let port = port.or(match scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        });
        Self {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        }
    }

    /// The origin that answered this tower response, when a redirect follower below the layer
    /// says so: tower-http's `FollowRedirect` puts the last hop's URI in every response's
    /// extensions (`RequestUri`, of tower-http 0.6: a follower of another version or another
    /// crate leaves nothing this finds, and its 401s are taken as the resource's own).
    pub(crate) fn answered<B>(response: &http::Response<B>) -> Option<Self> {
        let last = response
            .extensions()
            .get::<tower_http::follow_redirect::RequestUri>()?;
        Self::of(&last.0)
    }
}

/// Whether a 401 came from another origin than its request was sent to: only when both are
/// known, so that a client that says nothing of where it answered from keeps the layer's
/// behaviour (the 401 is the resource's). Traced at `DEBUG`.
pub(crate) fn from_elsewhere(sent_to: Option<&Origin>, answered: Option<Origin>) -> bool {
    let elsewhere =
        matches!((sent_to, &answered), (Some(sent), Some(answered)) if sent != answered);
    if elsewhere {
        tracing::debug!(
            "401 from another origin than the request was sent to (a redirect was followed): \
             returning it, the token kept"
        );
    }
    elsewhere
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(uri: &str) -> Option<Origin> {
        Origin::of(&uri.parse().unwrap())
    }

    #[test]
    fn origins_compare_by_scheme_host_and_port() {
        let a = origin("https://a.example/x?y");
        for same in [
            "https://a.example:443/",
            "https://A.EXAMPLE/other",
            "HTTPS://a.example/",
            "https://user:pw@a.example/",
        ] {
            assert_eq!(origin(same), a, "{same}");
        }
        for other in [
            "https://b.example/x?y",
            "http://a.example/x?y",
            "https://a.example:8443/x?y",
            "https://a.example.evil/x?y",
        ] {
            assert_ne!(origin(other), a, "{other}");
        }
        assert_eq!(origin("/relative"), None);
    }

    #[test]
    fn a_401_is_from_elsewhere_only_when_both_origins_are_known_and_differ() {
        let (a, b) = (origin("https://a.example/"), origin("https://b.example/"));
        assert!(from_elsewhere(a.as_ref(), origin("https://b.example/")));
        assert!(!from_elsewhere(a.as_ref(), origin("https://a.example/z")));
        assert!(!from_elsewhere(None, b));
        assert!(!from_elsewhere(a.as_ref(), None));
    }
}
