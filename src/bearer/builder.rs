//! The settings of a [`BearerTokenLayer`], collected before its one token source is made.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::source::{Options, Source};
use super::{BearerTokenLayer, DEFAULT_REFRESH_JITTER, DEFAULT_REPLAY_LIMIT, DRAIN_LIMIT};
use crate::credential::BoxCredential;
use crate::refresh::{DEFAULT_REFRESH_WINDOW, DEFAULT_RETRY_AFTER_FAILURE, RefreshPolicy};

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
    pub fn refresh_window(mut self, window: Duration) -> Self {
        self.options.refresh.window = window;
        self
    }

    /// Upper bound of the random delay added to each token's renewal time (default 60 s).
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
    pub fn build(self) -> BearerTokenLayer {
        BearerTokenLayer {
            source: Arc::new(Source::new(self.credential, self.scopes, self.options)),
        }
    }
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
