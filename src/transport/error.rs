//! [`TransportError`]: what failed when no answer came, and how many attempts it took.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use super::proxy::{DirectFailure, ProxyError};
use crate::error::BoxError;

/// A failure of the default client. Reached through `CredentialError::source()`; the
/// [`CredentialError`](crate::CredentialError) answers the same questions
/// ([`is_timeout`](crate::CredentialError::is_timeout),
/// [`is_connect`](crate::CredentialError::is_connect), …).
#[derive(Debug)]
pub struct TransportError {
    kind: TransportErrorKind,
    message: String,
    source: Option<BoxError>,
    attempts: u32,
    elapsed: Duration,
}

/// What kind of transport failure: kept when the error is redacted for a credential's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransportErrorKind {
    Connect,
    Tls,
    Timeout,
    TooLarge,
    Io,
    /// The proxy refused the tunnel, or the proxy setting cannot work: final.
    Proxy,
    /// The client does not send this scheme (plain `http` from a client that sends `https`
    /// only): final, it would be refused again.
    Scheme,
}

/// How many attempts one request took and over how long; set by the default client's
/// retries on the final response's extensions (and on its final error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attempts {
    pub(crate) count: u32,
    pub(crate) elapsed: Duration,
}

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tenths of a second: enough to tell backoff from a hang, stable to read.
        let tenths = self.elapsed.as_millis() / 100;
        write!(
            f,
            "{} attempts over {}.{} s",
            self.count,
            tenths / 10,
            tenths % 10
        )
    }
}

impl TransportError {
    pub(super) fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            attempts: 1,
            elapsed: Duration::ZERO,
        }
    }

    /// The same failure, its whole text passed through `redact` and its source dropped (the
    /// source could quote what was sent): what a credential's error keeps.
    pub(crate) fn redacted(&self, redact: impl FnOnce(&str) -> String) -> Self {
        let mut text = self.message.clone();
        if let Some(root) = self.root_cause() {
            text.push_str(&format!(": {root}"));
        }
        Self {
            kind: self.kind,
            message: redact(&text),
            source: None,
            attempts: self.attempts,
            elapsed: self.elapsed,
        }
    }

    /// The innermost cause: it says what actually happened (refused, unknown issuer, …).
    fn root_cause(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| source_chain(s).last().unwrap_or(s))
    }

    pub(crate) fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// How many attempts were made before this error (1 without retries).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Records how many attempts the retries made before this error, and over how long.
    pub(super) fn record(&mut self, attempts: Attempts) {
        self.attempts = attempts.count;
        self.elapsed = attempts.elapsed;
    }

    pub(super) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The error of one exchange. A direct connection that failed says what the connector
    /// found about proxies ([`DirectFailure`]'s hint).
    pub(super) fn from_client(error: hyper_util::client::legacy::Error) -> Self {
        // Before TLS: a tunnel that failed never reached the handshake, and the message must
        // say that a proxy was in the way.
        let proxy = source_chain(&error)
            .find_map(|e| e.downcast_ref::<ProxyError>())
            .map(|proxy| {
                let kind = if proxy.is_connect() {
                    TransportErrorKind::Connect
                } else {
                    TransportErrorKind::Proxy
                };
                (kind, proxy.summary())
            });
        if let Some((kind, summary)) = proxy {
            return Self::new(kind, summary).with_source(error);
        }
        let tls = source_chain(&error).find_map(rustls_error);
        // A host no certificate can name (a label over 63 characters, say): refused before any
        // I/O by the TLS connector, as a connect error that would be retried to no end.
        let bad_name =
            source_chain(&error).any(|e| e.is::<rustls::pki_types::InvalidDnsNameError>());
        let (kind, message) = if bad_name {
            (
                TransportErrorKind::Tls,
                "the server's host name is not one a TLS certificate can name (fix the URL)",
            )
        } else if let Some(tls) = tls {
            let unknown_issuer = matches!(
                tls,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            );
            (
                TransportErrorKind::Tls,
                // The hint only where it helps: not for an expired certificate, a wrong name or
                // a pinned thumbprint that does not match.
                if unknown_issuer {
                    "TLS handshake failed (if the server uses a private CA, add it with \
                     HttpClient::builder().add_root_certificates_pem, or, if the CA is in the \
                     system's store as a TLS-inspecting proxy's is, choose \
                     .roots(Roots::BundledAndPlatform))"
                } else {
                    "TLS handshake failed"
                },
            )
        } else if error.is_connect() {
            let hint = source_chain(&error)
                .find_map(|e| e.downcast_ref::<DirectFailure>())
                .map(|direct| direct.hint);
            let message = match hint {
                Some(hint) => format!("connection failed ({hint})"),
                None => "connection failed".to_owned(),
            };
            return Self::new(TransportErrorKind::Connect, message).with_source(error);
        } else {
            (TransportErrorKind::Io, "the HTTP exchange failed")
        };
        Self::new(kind, message).with_source(error)
    }

    /// A request this client refuses to send: its URL's scheme is not one it sends.
    pub(super) fn unsupported_scheme(scheme: Option<&str>, allow_http: bool) -> Self {
        let shown = scheme.map_or_else(
            || "its URL names no scheme".to_owned(),
            |s| format!("its URL is {s}://"),
        );
        let message = if allow_http {
            format!("the request was not sent: {shown}, and this client sends http and https only")
        } else {
            // `allow_http` is crate-private: the clients that send plain `http` are managed
            // identity's own, or one of the user's given with `from_service`.
            format!(
                "the request was not sent: {shown}, and this client sends https only \
                 (a client built by HttpClient::builder() never sends plain http; for a \
                 plain-http endpoint, such as managed identity's, leave out the credential's \
                 http_client to use its built-in client, or give a client of your own that \
                 sends plain http, wrapped with HttpClient::from_service)"
            )
        };
        Self::new(TransportErrorKind::Scheme, message)
    }

    pub(super) fn too_large(limit: usize) -> Self {
        Self::new(
            TransportErrorKind::TooLarge,
            format!("the response body is larger than the {limit}-byte limit"),
        )
    }

    pub(super) fn timed_out(limit: Duration) -> Self {
        Self::new(
            TransportErrorKind::Timeout,
            format!("no complete response within {limit:?}"),
        )
    }

    pub(super) fn deadline(limit: Duration) -> Self {
        Self::new(
            TransportErrorKind::Timeout,
            format!("no complete response within the total deadline of {limit:?}"),
        )
    }

    /// Whether the request timed out.
    pub fn is_timeout(&self) -> bool {
        self.kind == TransportErrorKind::Timeout
    }

    /// Whether the response body was over the size cap.
    pub fn is_body_too_large(&self) -> bool {
        self.kind == TransportErrorKind::TooLarge
    }

    /// Whether the TLS handshake failed (for example an unknown CA).
    pub fn is_tls(&self) -> bool {
        self.kind == TransportErrorKind::Tls
    }

    /// Whether connecting failed.
    pub fn is_connect(&self) -> bool {
        self.kind == TransportErrorKind::Connect
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(root) = self.root_cause() {
            write!(f, ": {root}")?;
        }
        if self.attempts > 1 {
            let attempts = Attempts {
                count: self.attempts,
                elapsed: self.elapsed,
            };
            write!(f, " ({attempts})")?;
        }
        Ok(())
    }
}

impl StdError for TransportError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// hyper-rustls reports a handshake failure as an io::Error wrapping an io::Error wrapping
/// rustls::Error, and io::Error::source() skips the error it wraps: unwrap explicitly.
fn rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn StdError + 'static));
    }
    None
}

/// An error and its sources, outermost first.
pub(super) fn source_chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |e: &&'a (dyn StdError + 'static)| {
        (*e).source()
    })
}
