//! The settings of a [`BearerTokenLayer`], collected before its one token source is made.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::source::{Options, Source};
use super::{BearerTokenLayer, DEFAULT_REFRESH_JITTER, DEFAULT_REPLAY_LIMIT, DRAIN_LIMIT};
use crate::credential::BoxCredential;
use crate::refresh::{DEFAULT_REFRESH_WINDOW, DEFAULT_RETRY_AFTER_FAILURE, RefreshPolicy};

/// The shortest refresh window a layer keeps: a shorter one is raised to it
/// ([`BearerTokenLayerBuilder::refresh_window`]).
const MIN_REFRESH_WINDOW: Duration = Duration::from_secs(30);

/// Settings for a [`BearerTokenLayer`]; made by [`BearerTokenLayer::builder`].
///
/// The builder holds settings only. [`build`](Self::build) makes the layer's token source,
/// once; every clone of that layer, every service it makes and every
/// [middleware](BearerTokenLayer::middleware) made from it use that source.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_identity::{AzureCliCredential, BearerTokenLayer};
///
/// let layer = BearerTokenLayer::builder(AzureCliCredential::new(), ["https://management.azure.com/.default"])
///     .enable_cae(true)
///     .refresh_window(Duration::from_secs(240))
///     .build();
/// # let _ = layer;
/// ```
pub struct BearerTokenLayerBuilder {
    credential: BoxCredential,
    scopes: Vec<String>,
    options: Options,
}

impl BearerTokenLayerBuilder {
    pub(super) fn new(credential: BoxCredential, scopes: Vec<String>) -> Self {
        Self {
            credential,
            scopes,
            options: Options {
                cae: false,
                allow_http: false,
                replay_limit: DEFAULT_REPLAY_LIMIT,
                drain_limit: DRAIN_LIMIT,
                refresh: RefreshPolicy {
                    window: DEFAULT_REFRESH_WINDOW,
                    jitter: DEFAULT_REFRESH_JITTER,
                    retry_after_failure: DEFAULT_RETRY_AFTER_FAILURE,
                },
            },
        }
    }

    /// Announce the CAE capability and answer claims challenges by re-sending once (default
    /// off).
    pub fn enable_cae(mut self, enable: bool) -> Self {
        self.options.cae = enable;
        self
    }

    /// Renew when at most this much lifetime is left (default 300 s), minus the jitter.
    ///
    /// The layer renews by asking its credential. The credentials of this crate cache their
    /// tokens and renew them in their own window (the last 300 s of the token's life, the
    /// last half for a token living less than 10 minutes, earlier at the provider's
    /// `refresh_in`); asked by the layer's renewal of the token they hold, they renew it in
    /// the layer's window too, once per token. So a 600 s window over a
    /// `ClientSecretCredential` gets a new token about 600 s before expiry. That holds for
    /// the service principal credentials (client secret, certificate, assertion, workload
    /// identity) without a persistent or distributed cache: they ask Microsoft Entra ID.
    ///
    /// The others hand back the token they hold when asked that early: Azure CLI, Azure
    /// Developer CLI and managed identity endpoints answer from a cache of their own, and so
    /// do a persistent token cache file, a distributed cache, and the in-memory MSAL cache
    /// of the user credentials (device code, authorization code, shared token cache). Such a
    /// credential is asked once per token; the layer then keeps that token, trying again
    /// every 30 s without reaching the provider, and has a new one in the credential's own
    /// window. A credential reached through something that runs it in another task (tower's
    /// `Buffer`) does not see the layer's renewal and renews in its own window only. A
    /// shorter window than the credential's is fine: the layer takes the credential's new
    /// token when its own window comes.
    ///
    /// At least 30 s: a shorter window is raised to that when the layer is built. With no
    /// window (`Duration::ZERO`) the renewal would be due only at expiry, when the token can
    /// no longer be sent, so every request would wait for a new token at each expiry; 30 s is
    /// also the spacing between renewals and a token request's default deadline. Tokens
    /// living less than twice the window still get half their lifetime (see the
    /// [module docs](super#behaviour)).
    pub fn refresh_window(mut self, window: Duration) -> Self {
        self.options.refresh.window = window;
        self
    }

    /// Upper bound of the random delay added to each token's renewal time (default 60 s).
    ///
    /// At most half the [refresh window](Self::refresh_window): a larger jitter is lowered
    /// to that when the layer is built (30 s for a 60 s window), so a renewal still starts
    /// half the window before expiry at the latest. A jitter as large as the window would
    /// push some renewals to the moment of expiry, where every request waits for the new
    /// token.
    pub fn refresh_jitter(mut self, jitter: Duration) -> Self {
        self.options.refresh.jitter = jitter;
        self
    }

    /// Most bytes of a request body kept for a re-send, where keeping it copies or records
    /// it: a `String` or a streaming body (default 64 KiB). A `Full<Bytes>` is shared, not
    /// copied, whatever its size.
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.options.replay_limit = bytes;
        self
    }

    /// Send tokens over plain `http` too. Only for loopback development: anyone on the path
    /// can read and replay the token.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.options.allow_http = allow;
        self
    }

    /// The layer, with its one token source. Calling the credential waits for the first
    /// request.
    ///
    /// The refresh window and jitter are brought within their bounds here (see
    /// [`refresh_window`](Self::refresh_window) and [`refresh_jitter`](Self::refresh_jitter)).
    pub fn build(self) -> BearerTokenLayer {
        let mut options = self.options;
        options.refresh = bounded(options.refresh);
        BearerTokenLayer {
            source: Arc::new(Source::new(self.credential, self.scopes, options)),
        }
    }
}

/// The layer's refresh settings within their bounds: a window of at least
/// [`MIN_REFRESH_WINDOW`], a jitter of at most half the window.
fn bounded(mut refresh: RefreshPolicy) -> RefreshPolicy {
    refresh.window = refresh.window.max(MIN_REFRESH_WINDOW);
    let half = refresh.window.checked_div(2).unwrap_or_default();
    refresh.jitter = refresh.jitter.min(half);
    refresh
}

impl fmt::Debug for BearerTokenLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerTokenLayerBuilder")
            .field("credential", &self.credential)
            .field("scopes", &self.scopes)
            .field("options", &self.options)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Empty;
    use tokio::time::Instant;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::credential::CredentialExt;
    use crate::{AccessToken, CredentialError, TokenRequest};

    fn built(window: Option<Duration>, jitter: Option<Duration>) -> RefreshPolicy {
        let credential = tower::service_fn(|_: TokenRequest| async {
            Err::<AccessToken, _>(CredentialError::unavailable("None", "no token"))
        });
        let mut builder = BearerTokenLayer::builder(credential.boxed_credential(), ["s"]);
        if let Some(window) = window {
            builder = builder.refresh_window(window);
        }
        if let Some(jitter) = jitter {
            builder = builder.refresh_jitter(jitter);
        }
        builder.build().source.options.refresh
    }

    #[test]
    fn a_window_under_30_s_is_raised_and_the_jitter_is_at_most_half_the_window() {
        let secs = Duration::from_secs;
        let cases = [
            // (window, jitter) asked → kept
            ((None, None), (secs(300), secs(60))),
            ((Some(Duration::ZERO), None), (secs(30), secs(15))),
            (
                (Some(secs(29)), Some(Duration::ZERO)),
                (secs(30), Duration::ZERO),
            ),
            ((Some(secs(60)), None), (secs(60), secs(30))),
            ((Some(secs(300)), Some(secs(300))), (secs(300), secs(150))),
            ((None, Some(Duration::MAX)), (secs(300), secs(150))),
            (
                (Some(Duration::MAX), Some(Duration::MAX)),
                (Duration::MAX, Duration::MAX / 2),
            ),
            ((Some(secs(600)), Some(secs(90))), (secs(600), secs(90))),
        ];
        for ((window, jitter), expected) in cases {
            let refresh = built(window, jitter);
            assert_eq!(
                (refresh.window, refresh.jitter),
                expected,
                "{window:?}, {jitter:?}"
            );
        }
    }

    /// `refresh_window(Duration::ZERO)`: the renewal would be due at expiry, and the
    /// requests then would wait for the new token. Raised to 30 s, a request 10 s before
    /// expiry starts the renewal in the background and goes out at once with the token held.
    #[tokio::test(start_paused = true)]
    async fn a_zero_window_still_renews_before_expiry() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let credential = tower::service_fn(move |_: TokenRequest| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let expires = Instant::now() + Duration::from_secs(3600);
                Ok::<_, CredentialError>(AccessToken::new(format!("token-{n}"), expires))
            }
        });
        let echo = tower::service_fn(|request: Request<Empty<Bytes>>| async move {
            let mut response = Response::new(Empty::<Bytes>::new());
            if let Some(value) = request.headers().get(http::header::AUTHORIZATION) {
                response.headers_mut().insert("x-seen", value.clone());
            }
            Ok::<_, std::convert::Infallible>(response)
        });
        let service = BearerTokenLayer::builder(credential.boxed_credential(), ["s"])
            .refresh_window(Duration::ZERO)
            .refresh_jitter(Duration::ZERO)
            .build()
            .layer(echo);
        let send = || async {
            let request = Request::get("https://x.test/").body(Empty::new()).unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            response.headers()["x-seen"].to_str().unwrap().to_owned()
        };
        assert_eq!(send().await, "Bearer token-1");
        tokio::time::advance(Duration::from_secs(3590)).await;
        assert_eq!(send().await, "Bearer token-1", "no wait: the token held");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "renewed in the background");
        assert_eq!(send().await, "Bearer token-2");
    }
}
