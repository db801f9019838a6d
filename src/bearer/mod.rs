//! [`BearerTokenLayer`]: `Authorization: Bearer …` for any HTTP client service, with tokens
//! renewed in the background and CAE claims challenges answered.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_identity::bearer::BearerTokenLayer;
//! use tower_identity::{AzureCliCredential, CredentialExt, EnvironmentCredential};
//!
//! # async fn run() -> Result<(), tower_identity::BoxError> {
//! let https = hyper_rustls::HttpsConnectorBuilder::new()
//!     .with_webpki_roots()
//!     .https_only()
//!     .enable_http1()
//!     .build();
//! let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(https);
//! let credential = EnvironmentCredential::new().or(AzureCliCredential::new());
//! let service = ServiceBuilder::new()
//!     .layer(
//!         BearerTokenLayer::builder(credential, ["https://management.azure.com/.default"])
//!             .enable_cae(true)
//!             .build(),
//!     )
//!     .service(client);
//! let request = http::Request::get("https://management.azure.com/subscriptions?api-version=2022-12-01")
//!     .body(Full::default())?;
//! let response = service.oneshot(request).await?;
//! # let _ = response; Ok(()) }
//! ```
//!
//! # Redirects: follow them inside the layer
//!
//! A redirect follower must sit below the layer, between it and the client:
//! `ServiceBuilder::new().layer(bearer).layer(FollowRedirectLayer::new()).service(client)`.
//! There it sees the `Authorization` the layer set, and tower-http's default policy drops it
//! when the redirect leaves the origin. Above the layer, the follower rebuilds the redirected
//! request from the one it was given, which had no `Authorization` yet, so it has nothing to
//! drop; the layer cannot tell a redirected request from a new one and adds the token: a 307
//! to another host would get it. (reqwest follows redirects inside its client, below the
//! middleware, and drops `Authorization` when the host changes.)
//!
//! A 401 from another origin than the request's (scheme, host and port; the redirect's target)
//! answered a request that did not carry the token, and says nothing of it. With
//! [`enable_cae`](BearerTokenLayerBuilder::enable_cae) the layer knows the request's origin
//! from what it keeps for a re-send, and the answering one from the `RequestUri` tower-http's
//! `FollowRedirect` (0.6) puts in the response (the middleware: from the clone it keeps and
//! from `Response::url`): such a 401 is returned untouched, its claims challenge is not
//! answered and the token is kept. Without CAE the layer keeps nothing of the request (that
//! would cost every request), so it cannot tell: the 401 drops the token it rejected, as any
//! 401 does, and the next request asks the credential again. Nor can the middleware for a
//! request it could not clone (a streamed body). `FollowRedirect` goes directly below the
//! layer: a layer between them that rewrites the URI's host (a failover, host routing) makes
//! every 401 look foreign, so no claims challenge is answered and no rejected token dropped.
//!
//! # Behaviour
//!
//! * **Tokens**: clones of the service (and every service made by one built layer) share one
//!   token; see [what is shared](BearerTokenLayer#what-is-shared).
//!   While it is fresh, a request reads it without a lock or an allocation: each clone keeps
//!   the prepared header and checks a shared generation counter and the clock. A clone that
//!   has no header yet (cloned for each request from a service kept in state, say) takes the
//!   last one the layer's services got, read without a lock, and checks it the same way.
//! * **Renewal**: from `expires_on − 300 s + jitter(0..60 s)` (or the provider's `refresh_on`
//!   plus jitter when that is earlier; for tokens living less than 10 minutes the window is
//!   half the lifetime and the jitter shrinks with it; the
//!   [`refresh_window`](BearerTokenLayerBuilder::refresh_window) setting is at least 30 s and
//!   the jitter at most half of it), the request that notices starts one
//!   renewal in the background and every request keeps using the current token. Renewals are at least 30 s
//!   apart, counted from the end of the last one, so a failed renewal keeps the current token
//!   and is retried after 30 s. With no valid token, all requests wait on one acquisition and
//!   all get its result, the error included; a request that is dropped does not cancel it.
//! * **401**: a plain 401 is returned unchanged, and the token it rejected is dropped if it is
//!   still the current one (see *After a dropped token*). With
//!   [`enable_cae`](BearerTokenLayerBuilder::enable_cae), a Bearer challenge with
//!   `error="insufficient_claims"` and decodable `claims` gets a token for those claims
//!   (bypassing every cache) and the request is re-sent once, with the same body; a
//!   second 401 is returned as is. If that 401 carries the same claims challenge, the
//!   resource refused the token for its claims: for the next 30 s (as after a failed claims
//!   request, below) requests meeting that challenge get their 401 at once, keeping their
//!   token, and the claims are not asked for. If the credential cannot get a token with those claims,
//!   the request fails with its error (the same claims are not asked for again within 30 s,
//!   or a longer `Retry-After`, which the error's `retry_after()` gives, unless it was another
//!   transient failure: no connection, a timeout, a 5xx without `Retry-After`, a `Retry-After`
//!   of 0 or past, as after a plain 401; or a call cut off before the credential answered)
//!   and the rejected token is dropped, as for a plain 401;
//!   a credential answering with the rejected token itself (it ignored the claims) is one
//!   that cannot. A request that could not be re-sent anyway gets its 401 instead, once the
//!   acquisition has ended or after 5 s (see *Bodies*).
//! * **After a dropped token** (a 401, or a claims challenge the credential could not
//!   answer): the layer does not send that token again from its slot. The next request asks
//!   the credential for a token, and the requests that come meanwhile wait for that one
//!   call. If it fails for good (an error that is not
//!   [`is_transient`](crate::CredentialError::is_transient): `invalid_client`, a disabled
//!   account), the requests of the next 30 s get its error at once, without the credential
//!   being asked (as a failed renewal is retried after 30 s); the first request after that
//!   asks again. A throttled failure whose wait has not passed is answered so until the later
//!   of that and the end of the provider's wait, and its
//!   [`retry_after`](crate::CredentialError::retry_after) says when the layer asks again. Any
//!   other transient failure (no connection, a timeout, a 5xx without `Retry-After`, a
//!   `Retry-After` of 0, as a machine just woken from suspend may get) reaches only the
//!   requests that waited for that call, and the next request asks again; so does a call
//!   cut off before the credential answered (its runtime shut down). So N concurrent
//!   requests cost one call, and requests one after another one call if it succeeds, at most
//!   one per 30 s (or per the provider's longer wait) while it fails for good or is
//!   throttled, one per request while it fails transiently. A credential with
//!   a cache of its own (this crate's have one) may answer the very token that was
//!   rejected, since without claims it cannot be told to skip its cache: the layer sends
//!   it, and each 401 for it costs the credential one call (a cache lookup).
//! * **Bodies**: the re-send needs the body again ([`RetryBody`]): `Full<Bytes>` and `Empty`
//!   are cloned (no copy of the data); a `String` is copied, and `BoxBody`, `UnsyncBoxBody`
//!   and [`ReplayBody`] are recorded as they stream, up to the replay limit (64 KiB by
//!   default). A body over the limit, or still
//!   streaming when the 401 arrived, is not re-sent: the 401 is returned (the token for the
//!   claims is had all the same, for the requests after it). Over HTTP/1 a body that yielded
//!   the request's `Content-Length` has ended, as far as the re-send goes: hyper's HTTP/1
//!   client never polls it to its end. Over HTTP/2 (the 401's version tells) a client reads a
//!   body to its end and sends its trailers, announced or not: there a body must have ended
//!   or yielded its trailers (a recorded body is polled once more as soon as it has yielded
//!   its `Content-Length`, to see its end even if the client never asks again, if the body
//!   can tell its end without waiting: see [`ReplayBody`]; an inner
//!   service that builds its own `Response` leaves it at HTTP/1.1, and so gets the HTTP/1
//!   rule). A request that cannot be re-sent whatever the token (a `String` over
//!   the limit, which kept no copy, a recorded body that already failed, yielded more than
//!   the limit or declared more by its exact size hint, or a header field too long to keep)
//!   still waits for the token for the claims (5 s at most; the flight runs on), then gets
//!   its 401 whatever the credential answered: a failure is logged and kept as any failed
//!   claims request's is (above), but makes no error of that 401,
//!   and a caller that retries at once carries the new token instead of meeting the same
//!   challenge again. A recorded body still within the limit is judged once the token is
//!   had (it may still be sending until then); when the credential fails first, the answer
//!   is its error.
//! * **A runtime without timers** (built with `enable_io` alone, say, over a credential that
//!   needs none): tokio has no way to ask whether a runtime has timers and panics making one,
//!   so the layer makes one only where it needs it: on a current-thread runtime, with a
//!   credential that answers at once, never (a token acquisition is polled once before its
//!   time limit's timer is made). It needs one for its recheck timer on a multi-thread
//!   runtime, for the limit of an acquisition that does not answer at once, and for a claims
//!   challenge to a request that cannot be re-sent: the first such attempt panics, caught
//!   (the panic hook prints it once per layer, and once per token cache slot of a credential
//!   that waits); from then on the layer reads the clock on each request instead of relying
//!   on its timer, an acquisition runs without a time limit, and a request that cannot be
//!   re-sent gets its 401 at once rather than after waiting up to 5 s for the claims token
//!   (the token is still asked for, for the requests after it). Under `panic = "abort"` that
//!   panic aborts the process.
//! * **HTTPS only**: a request that is not `https` fails with a [`BearerError`], unless
//!   [`allow_insecure_http`](BearerTokenLayerBuilder::allow_insecure_http) is set.
//! * **reqwest**: with the feature `reqwest-middleware`, `BearerTokenLayer::middleware()`
//!   gives the same behaviour, sharing the layer's token, as a `reqwest_middleware::Middleware`
//!   (the module `bearer::reqwest`).
//! * **Errors** are [`BoxError`]s: a [`CredentialError`](crate::CredentialError) when no token
//!   could be had, a [`BearerError`], or the inner service's error unchanged.
//!
//! Why CAE gates the re-send: Entra and CAE-aware resources send claims challenges only to
//! clients that announce the `CP1` capability, and keeping a request's headers and body for a
//! possible re-send costs a copy of the head on every request, more than the rest of the
//! layer's work together (the README's Performance section has the figures). That copy
//! allocates nothing once the thread has had as many CAE requests in flight at once (each
//! thread keeps up to 65 such buffers for reuse). Keeping the body allocates nothing for `Empty`, nor for a `Full<Bytes>`
//! whose bytes are static or already shared; the first clone of a `Bytes` made from a `Vec`
//! allocates its small shared header, a `String` is copied, and a streaming body's recording
//! allocates. Without CAE the layer keeps nothing and a claims challenge is returned like any
//! 401.

mod builder;
mod cae;
mod error;
mod future;
mod head;
mod origin;
mod replay;
#[cfg(feature = "reqwest-middleware")]
pub mod reqwest;
mod source;
mod spare;
pub(crate) mod www_authenticate;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

pub use builder::BearerTokenLayerBuilder;
pub use cae::{ClaimsError, claims_challenge};
pub use error::BearerError;
pub use future::ResponseFuture;
pub use replay::{NotReplayable, Replay, ReplayBody, RetryBody};

use crate::credential::{BoxCredential, TokenCredential};
use crate::error::BoxError;
use crate::refresh::{Acquisition, Lookup, TokenId};
use future::{After, Challenge, ResendVia};
use head::Head;
use source::{Prepared, Source};

/// Default bound on a request body copied or recorded for a re-send (a `String`, a stream).
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;
/// Default jitter added to the renewal time (drawn per token).
pub const DEFAULT_REFRESH_JITTER: Duration = Duration::from_secs(60);
/// How much of a 401 body is read and discarded before the re-send.
pub(super) const DRAIN_LIMIT: usize = 64 * 1024;

/// Adds `Authorization: Bearer <token>` to requests; see the [module docs](self).
///
/// [`new`](Self::new) makes a layer with the default settings;
/// [`builder`](Self::builder) collects other settings and [`build`](BearerTokenLayerBuilder::build)s
/// the layer.
///
/// # What is shared
///
/// Building a layer makes its token source: the credential, the current token with at most
/// one renewal of it running, and at most one token request running per claims challenge
/// (requests meeting the same challenge wait for the same token). Every clone of the
/// layer, every [`BearerToken`] service it makes (and their clones) and every
/// [middleware](Self::middleware) made from it use that one source: one token, one renewal
/// and one claims acquisition for all of them. Two layers built separately share nothing,
/// even from clones of one credential: each keeps its own token and renews it on its own
/// (the credential's own cache, if it has one, may still answer both).
///
/// ```no_run
/// use tower::Layer;
/// use tower_identity::{AzureCliCredential, BearerTokenLayer};
/// # fn client() -> tower::util::BoxCloneSyncService<http::Request<String>, http::Response<String>, std::convert::Infallible> { unimplemented!() }
///
/// let layer = BearerTokenLayer::builder(AzureCliCredential::new(), ["https://management.azure.com/.default"])
///     .enable_cae(true)
///     .build();
/// // One token for both: same source.
/// let (a, b) = (layer.layer(client()), layer.clone().layer(client()));
/// # let _ = (a, b);
/// ```
///
/// The layer and its services carry no credential type: the credential is boxed once, here,
/// and called only to acquire a token, so a request that finds a fresh token makes no
/// dynamic call (the `hot_path` benchmark measures it).
pub struct BearerTokenLayer {
    source: Arc<Source>,
}

impl BearerTokenLayer {
    /// Tokens for these scopes from this credential, with the default settings: the same as
    /// `BearerTokenLayer::builder(credential, scopes).build()`.
    pub fn new<C, I, S>(credential: C, scopes: I) -> Self
    where
        C: TokenCredential,
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder(credential, scopes).build()
    }

    /// Settings for a layer getting tokens for these scopes from this credential; the layer
    /// and its token source are made by [`build`](BearerTokenLayerBuilder::build).
    pub fn builder<C, I, S>(credential: C, scopes: I) -> BearerTokenLayerBuilder
    where
        C: TokenCredential,
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let scopes = scopes.into_iter().map(Into::into).collect();
        BearerTokenLayerBuilder::new(BoxCredential::new(credential), scopes)
    }
}

impl Clone for BearerTokenLayer {
    fn clone(&self) -> Self {
        Self {
            source: Arc::clone(&self.source),
        }
    }
}

impl fmt::Debug for BearerTokenLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerTokenLayer")
            .field("source", &self.source)
            .finish()
    }
}

impl<S> Layer<S> for BearerTokenLayer {
    type Service = BearerToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerToken {
            inner,
            source: Arc::clone(&self.source),
            cached: None,
            // Made here, before any clone: a template that is cloned for every request and
            // never serves one itself would otherwise give each clone a `ResendVia` of its
            // own, an allocation and a clone of the inner service per request.
            resend: self.source.options.cae.then(SharedResend::default),
        }
    }
}

/// The service made by [`BearerTokenLayer`]: the inner service `S` and a handle on the
/// layer's shared token source. Its type names no credential, so it fits in a struct field
/// or an axum `State` as `BearerToken<YourClient>`.
///
/// ```no_run
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_rustls::HttpsConnector;
/// use hyper_util::client::legacy::{Client, connect::HttpConnector};
/// use tower::Layer;
/// use tower_identity::bearer::{BearerToken, BearerTokenLayer};
/// use tower_identity::{AzureCliCredential, CredentialExt, EnvironmentCredential};
///
/// type Https = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;
///
/// /// What the handlers share: the credential chain's type appears nowhere.
/// #[derive(Clone)]
/// struct AppState {
///     management: BearerToken<Https>,
/// }
///
/// fn state(client: Https) -> AppState {
///     let credential = EnvironmentCredential::new().or(AzureCliCredential::new());
///     let layer = BearerTokenLayer::new(credential, ["https://management.azure.com/.default"]);
///     AppState { management: layer.layer(client) }
/// }
/// ```
///
/// # Bounds
///
/// `BearerToken<S>` serves `Request<B>` when `S: Service<Request<B>, Response =
/// Response<ResB>> + Clone + Send + 'static` (its error `Into<BoxError>`, its future
/// `Send + 'static`) and `B: RetryBody` — with CAE off too. `S: Clone` because a request that
/// waits for a token is sent, as tower requires, by the instance that was made ready, and the
/// service keeps a clone; `B: RetryBody` because whether CAE is on is a setting, while the
/// bound is on the type: the same service must be able to re-send after a claims challenge.
///
/// A body type that is not [`RetryBody`] (`axum::body::Body`, `hyper::body::Incoming`, a
/// stream of your own) becomes one wrapped in [`ReplayBody::new`]; the inner client then takes
/// `ReplayBody<…>` bodies. Without CAE the wrapper is never asked to keep anything: it passes
/// the inner body's frames through, with no allocation and no copy. With CAE it records them as
/// they stream, up to the [replay limit](BearerTokenLayerBuilder::replay_limit).
///
/// ```no_run
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower::ServiceBuilder;
/// use tower_identity::bearer::{BearerTokenLayer, ReplayBody};
/// use tower_identity::AzureCliCredential;
///
/// # fn run() {
/// let https = hyper_rustls::HttpsConnectorBuilder::new()
///     .with_webpki_roots()
///     .https_only()
///     .enable_http1()
///     .build();
/// let client = Client::builder(TokioExecutor::new()).build::<_, ReplayBody<axum::body::Body>>(https);
/// let layer = BearerTokenLayer::new(AzureCliCredential::new(), ["https://management.azure.com/.default"]);
/// // Requests with axum bodies (a proxy's, say) go out through the layer.
/// let service = ServiceBuilder::new()
///     .map_request(|request: http::Request<axum::body::Body>| request.map(ReplayBody::new))
///     .layer(layer)
///     .service(client);
/// # fn serves<S: tower::Service<http::Request<axum::body::Body>>>(_: &S) {}
/// # serves(&service); }
/// ```
pub struct BearerToken<S> {
    inner: S,
    source: Arc<Source>,
    cached: Option<Cached>,
    /// With CAE, what a re-send goes through (see [`SharedResend`]).
    resend: Option<SharedResend<S>>,
}

/// The [`ResendVia`] of a service and its clones, made on the first CAE request any of them
/// sends (it holds a clone of the inner service, which `Layer::layer` has no bound to make).
type SharedResend<S> = Arc<OnceLock<Arc<ResendVia<S>>>>;

/// A clone's copy of the current token: valid while the slot's generation is unchanged and
/// the clock is before `recheck_at` — which, when `timed`, the slot's timer watches (see
/// [`crate::refresh`]).
#[derive(Clone)]
pub(super) struct Cached {
    generation: u64,
    recheck_at: Instant,
    timed: bool,
    header: HeaderValue,
    token_id: TokenId,
}

impl Cached {
    /// A clone of the header for one request, out of line on purpose. Inlined, it saved 8
    /// instructions but cost 7–8 ns a request in `hot_path` (133 against 125 ns): the caller
    /// read the clone's 32 bytes with 16-byte loads right after the clone's 8-byte stores,
    /// which stalls store-to-load forwarding (likely the cause; this VM has no counters to
    /// confirm it).
    #[inline(never)]
    fn header_for_request(&self) -> HeaderValue {
        self.header.clone()
    }

    /// A lookup in the slot (its lock, a clock read): the answer it finds, which it also
    /// leaves in the source for the layer's services and middleware that hold no fresh
    /// answer of their own (see `Source::current`), or the acquisition to wait for. Out of
    /// line: off the fast path, it only makes `call` larger (inlined, the code it replaced
    /// moved CAE over `Ok200` from 215 to 223–225 ns with the same instructions).
    #[inline(never)]
    fn look_up(source: &Source) -> Result<Self, Acquisition<Prepared>> {
        match source.lookup(Instant::now()) {
            Lookup::Use {
                entry,
                generation,
                recheck_at,
                timed,
            } => {
                let cached = Self {
                    generation,
                    recheck_at,
                    timed,
                    header: entry.value.header().clone(),
                    token_id: entry.id,
                };
                source.current.store(Some(Arc::new(cached.clone())));
                Ok(cached)
            }
            Lookup::Wait(acquisition) => Err(acquisition),
        }
    }

    /// `read` of the answer the source shares ([`look_up`](Self::look_up)), if it is fresh: no
    /// lock, no clock read unless the slot's timer does not watch its deadline.
    #[inline(always)]
    fn read_shared<R>(source: &Source, read: impl FnOnce(&Self) -> R) -> Option<R> {
        let shared = source.current.load();
        shared
            .as_deref()
            .filter(|answer| answer.is_fresh(source))
            .map(read)
    }

    /// Whether this answer still holds: the slot's generation is unchanged and, unless the
    /// slot's timer watches the deadline, the clock is before it.
    #[inline(always)]
    fn is_fresh(&self, source: &Source) -> bool {
        self.generation == source.slot.generation()
            && (self.timed || Instant::now() < self.recheck_at)
    }
}

impl<S> BearerToken<S> {
    /// Takes the answer the layer's services last got from the slot (see `Source::current`)
    /// if it is fresh; says whether it did. Out of line: a clone's first request comes here,
    /// and a clone's next after its own answer went stale.
    #[inline(never)]
    fn adopt_shared(&mut self) -> bool {
        // Cloned into place: returning the clone to store it cost 24 instructions a request
        // (`bearer_token_cloned`).
        Cached::read_shared(&self.source, |answer| self.cached = Some(answer.clone())).is_some()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably. With CAE, re-sends of later requests go through a clone of
    /// the service as changed here.
    pub fn get_mut(&mut self) -> &mut S {
        // The clone a re-send goes through is made again from the changed service, and shared
        // with the clones made of this one from now on.
        if self.resend.is_some() {
            self.resend = Some(SharedResend::default());
        }
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for BearerToken<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            source: Arc::clone(&self.source),
            // Clones start with the token the original holds: no lock on their first request.
            cached: self.cached.clone(),
            resend: self.resend.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for BearerToken<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerToken")
            .field("inner", &self.inner)
            .field("source", &self.source)
            .finish()
    }
}

impl<S, B, ResB> Service<Request<B>> for BearerToken<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: RetryBody,
    ResB: http_body::Body + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let options = &self.source.options;
        if !options.allow_http && !is_https(request.uri()) {
            return ResponseFuture::failed(BearerError::insecure(request.uri()).into());
        }
        // The fast path: the token this clone holds, while the slot's generation is unchanged
        // and, unless the slot's timer watches the deadline, the clock is before it.
        if let Some(cached) = &self.cached {
            if cached.is_fresh(&self.source) {
                // The header goes in here, in place: moving the request into `send` first
                // costs a copy of it (issue 12).
                request
                    .headers_mut()
                    .insert(AUTHORIZATION, cached.header_for_request());
                return send(
                    &mut self.inner,
                    &self.source,
                    &mut self.resend,
                    request,
                    cached.token_id,
                );
            }
        }
        // No fresh answer of its own (a clone of a service that never served a request, say):
        // the one the layer's services last got, if it is fresh. After the fast path, not
        // before it: checked first it cost every request 4–8 ns. The two lines below repeat
        // the fast path's on purpose: one helper for both cost 32 instructions a request.
        if self.adopt_shared() {
            if let Some(cached) = &self.cached {
                request
                    .headers_mut()
                    .insert(AUTHORIZATION, cached.header_for_request());
                return send(
                    &mut self.inner,
                    &self.source,
                    &mut self.resend,
                    request,
                    cached.token_id,
                );
            }
        }
        match Cached::look_up(&self.source) {
            Ok(cached) => {
                request
                    .headers_mut()
                    .insert(AUTHORIZATION, cached.header.clone());
                let token_id = cached.token_id;
                self.cached = Some(cached);
                send(
                    &mut self.inner,
                    &self.source,
                    &mut self.resend,
                    request,
                    token_id,
                )
            }
            Err(acquisition) => {
                self.cached = None;
                // tower's rule: the instance that was driven to readiness serves this call;
                // it goes into the future, and this service keeps a clone.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let source = Arc::clone(&self.source);
                let mut resend = self.resend.clone();
                ResponseFuture::boxed(Box::pin(async move {
                    let entry = acquisition.await?;
                    let mut request = request;
                    let header = entry.value.header().clone();
                    request.headers_mut().insert(AUTHORIZATION, header);
                    send(&mut inner, &source, &mut resend, request, entry.id).await
                }))
            }
        }
    }
}

/// Whether the URI's scheme is `https` as `http` parses it: the same answer as comparing with
/// `Scheme::HTTPS` (the parser turns exactly "https" into that, and any other spelling into an
/// "other" scheme), in a few inlined instructions where `Scheme`'s comparison is a call.
/// Strict on purpose: a connector such as hyper-rustls's decides on TLS by the same
/// comparison, so a scheme it would not treat as https must not get the token.
#[inline(always)]
fn is_https(uri: &http::Uri) -> bool {
    uri.scheme_str() == Some("https")
}

/// Sends the request, which carries the token `token_id`; with CAE, keeps what a re-send
/// needs (and makes `resend` if it is not made yet).
#[inline(always)]
fn send<S, B, ResB>(
    inner: &mut S,
    source: &Arc<Source>,
    resend: &mut Option<SharedResend<S>>,
    request: Request<B>,
    token_id: TokenId,
) -> ResponseFuture<S, B, ResB>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: RetryBody,
    ResB: http_body::Body + Send + 'static,
{
    if source.options.cae {
        return send_cae(inner, source, resend, request, token_id);
    }
    let after = After {
        token_id,
        challenge: spare::Reused::none(),
    };
    ResponseFuture::sent(inner.call(request), after)
}

/// [`send`] with CAE: out of line, so that a layer without CAE does not carry its code in
/// every caller.
#[inline(never)]
fn send_cae<S, B, ResB>(
    inner: &mut S,
    source: &Arc<Source>,
    resend: &mut Option<SharedResend<S>>,
    request: Request<B>,
    token_id: TokenId,
) -> ResponseFuture<S, B, ResB>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: RetryBody,
    ResB: http_body::Body + Send + 'static,
{
    let (parts, body) = request.into_parts();
    let (body, replay) = body.prepare(source.options.replay_limit);
    // A recorded body then looks for its end right after its declared bytes.
    replay.expect_length(&parts.headers);
    // `resend` is made with the service (`Layer::layer`); `get_or_insert_with` only spares
    // an `expect`.
    let via = resend
        .get_or_insert_with(SharedResend::default)
        .get_or_init(|| Arc::new(ResendVia::new(source, inner.clone())));
    let challenge = spare::Reused::new(head::FIRST_CAPACITY, |bytes| Challenge {
        via: Arc::clone(via),
        // The copy leaves the token's field out. None for a body already refused: the request
        // will not be re-sent, and the copy would hold its `Cookie` or SAS for nothing.
        head: if replay.refused_at_prepare().is_some() {
            Head::not_kept()
        } else {
            Head::of(&parts, bytes)
        },
        replay,
    });
    let after = After {
        token_id,
        challenge,
    };
    ResponseFuture::sent(inner.call(Request::from_parts(parts, body)), after)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{Empty, Full};
    use tower::ServiceExt;

    use super::source::{assert_the_shared_answer_serves, lookups};
    use super::*;
    use crate::credential::CredentialExt;
    use crate::{AccessToken, CredentialError, TokenRequest};

    /// Each request through a fresh clone of a template that never serves one, as handlers do
    /// with a service kept in axum's state: after the first answer, clones check the one the
    /// layer shares and take no lock; once it is stale, a clone looks again.
    #[tokio::test(start_paused = true)]
    async fn clones_of_a_template_use_the_shared_answer_until_it_is_stale() {
        let acquisitions = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&acquisitions);
        let credential = tower::service_fn(move |_: TokenRequest| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let expires = Instant::now() + std::time::Duration::from_secs(3600);
                Ok::<_, CredentialError>(AccessToken::new(format!("token-{n}"), expires))
            }
        });
        // Answers 200 with the token it was sent, in a header.
        let echo = tower::service_fn(|request: Request<Full<Bytes>>| async move {
            let mut response = Response::new(Empty::<Bytes>::new());
            if let Some(value) = request.headers().get(AUTHORIZATION) {
                response.headers_mut().insert("x-seen", value.clone());
            }
            Ok::<_, Infallible>(response)
        });
        let template = BearerTokenLayer::new(credential.boxed_credential(), ["s"]).layer(echo);
        let send = || async {
            let request = Request::get("https://x.test/")
                .body(Full::default())
                .unwrap();
            let response = template.clone().oneshot(request).await.unwrap();
            response.headers()["x-seen"].to_str().unwrap().to_owned()
        };

        let before = assert_the_shared_answer_serves(send).await;

        // The resource rejected the token: the shared answer is stale, the next clone looks
        // again and gets a new token.
        let id = template.source.current.load().as_ref().unwrap().token_id;
        assert!(template.source.slot.invalidate(id));
        assert_eq!(send().await, "Bearer token-2");
        assert_eq!(acquisitions.load(Ordering::SeqCst), 2);
        assert!(lookups() > before);
    }

    /// A `String` over the replay limit is refused as it is prepared: the request will not be
    /// re-sent, so its head (a `Cookie` here) is not copied.
    #[tokio::test]
    async fn a_body_refused_as_it_is_prepared_keeps_no_copy_of_the_head() {
        let credential = tower::service_fn(|_: TokenRequest| async {
            let expires = Instant::now() + Duration::from_secs(3600);
            Ok::<_, CredentialError>(AccessToken::new("token", expires))
        });
        let ok = tower::service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        });
        let layer = BearerTokenLayer::builder(credential.boxed_credential(), ["s"])
            .enable_cae(true)
            .replay_limit(4)
            .build();
        let mut service = layer.layer(ok);
        let request = |body: &str| {
            Request::post("https://x.test/")
                .header("cookie", "session=s3cr3t")
                .body(body.to_owned())
                .unwrap()
        };
        let first = service.ready().await.unwrap().call(request("")).await;
        assert_eq!(first.unwrap().status(), http::StatusCode::OK);

        let within = service.call(request("1234"));
        let kept = within.kept_head().expect("a challenge kept");
        assert!(
            kept.windows(6).any(|w| w == b"s3cr3t"),
            "copied within the limit"
        );
        drop(within);
        let over = service.call(request("12345"));
        assert_eq!(over.kept_head().expect("a challenge kept"), b"");
    }

    /// A multi-thread runtime built without timers, with the credential and the inner
    /// service in process (which need none): tokio panics making the recheck timer. It
    /// panics once (caught), then the clock is read on each request: the fast path stays. It
    /// used to be a timer task per lookup, each panicking and bumping the generation, so that
    /// every request looked the token up again. A claims challenge for a request that cannot
    /// be re-sent gets its 401 at once (waiting 5 s takes a timer).
    #[test]
    fn a_runtime_without_timers_keeps_the_fast_path_and_answers_challenges() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_io()
            .build()
            .unwrap();
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let credential = tower::service_fn(move |_: TokenRequest| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                let expires = Instant::now() + Duration::from_secs(3600);
                Ok::<_, CredentialError>(AccessToken::new("token", expires))
            }
        });
        // 200, or a claims challenge for a request with a body.
        let resource = tower::service_fn(|request: Request<String>| async move {
            let mut response = Response::new(Empty::<Bytes>::new());
            if !request.body().is_empty() {
                *response.status_mut() = http::StatusCode::UNAUTHORIZED;
                response.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        r#"Bearer error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsiZm9vIjoiYmFyIn19""#,
                    ),
                );
            }
            Ok::<_, Infallible>(response)
        });
        let layer = BearerTokenLayer::builder(credential.boxed_credential(), ["s"])
            .enable_cae(true)
            .replay_limit(4)
            .build();
        let mut service = layer.layer(resource);
        let request = |body: &str| {
            Request::get("https://x.test/")
                .body(body.to_owned())
                .unwrap()
        };
        runtime.block_on(async {
            let alive = || {
                tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks()
            };
            let first = (&mut service).oneshot(request("")).await.unwrap();
            assert_eq!(first.status(), http::StatusCode::OK);
            let before = lookups();
            for _ in 0..10 {
                let response = (&mut service).oneshot(request("")).await.unwrap();
                assert_eq!(response.status(), http::StatusCode::OK);
                // Whatever task the request spawned has ended (a timer task, panicking).
                while alive() > 0 {
                    tokio::task::yield_now().await;
                }
            }
            assert_eq!(lookups() - before, 1, "one lookup, then the fast path");
            assert_eq!(asked.load(Ordering::SeqCst), 1);

            // Over the replay limit: not re-sent, the 401 is the answer.
            let response = (&mut service).oneshot(request("12345")).await.unwrap();
            assert_eq!(response.status(), http::StatusCode::UNAUTHORIZED);
        });
    }

    /// A current-thread runtime built without timers, over a credential in process that
    /// answers at once: requests get their token and no panic is met (none printed; under
    /// `panic = "abort"`, none aborting the process). Before, the layer's first acquisition
    /// panicked making its time limit's timer.
    #[test]
    fn a_current_thread_runtime_without_timers_meets_no_panic() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let credential = tower::service_fn(|_: TokenRequest| async {
            let expires = Instant::now() + Duration::from_secs(3600);
            Ok::<_, CredentialError>(AccessToken::new("token", expires))
        });
        // 200 for the token, else 403.
        let seen = tower::service_fn(|request: Request<String>| async move {
            let mut response = Response::new(Empty::<Bytes>::new());
            if request.headers().get(http::header::AUTHORIZATION)
                != Some(&HeaderValue::from_static("Bearer token"))
            {
                *response.status_mut() = http::StatusCode::FORBIDDEN;
            }
            Ok::<_, Infallible>(response)
        });
        let layer = BearerTokenLayer::builder(credential.boxed_credential(), ["s"]).build();
        let mut service = layer.layer(seen);
        let ((), panics) = crate::flight::panics_on_this_thread(|| {
            runtime.block_on(async {
                for _ in 0..3 {
                    let request = Request::get("https://x.test/").body(String::new()).unwrap();
                    let response = (&mut service).oneshot(request).await.unwrap();
                    assert_eq!(response.status(), http::StatusCode::OK);
                }
            })
        });
        assert_eq!(panics, 0, "tokio's panic for a timer was met");
    }

    #[test]
    fn only_the_scheme_that_connectors_treat_as_https_is_https() {
        let built = |scheme: &str| {
            http::Uri::builder()
                .scheme(scheme)
                .authority("example.test")
                .path_and_query("/")
                .build()
                .unwrap()
        };
        assert!(is_https(&"https://example.test/".parse().unwrap()));
        assert!(
            is_https(&"HTTPS://example.test/".parse().unwrap()),
            "parsed: normalised"
        );
        assert!(is_https(&built("https")));
        for other in [
            built("HTTPS"),
            built("http"),
            built("ftp"),
            "/path".parse().unwrap(),
        ] {
            assert!(!is_https(&other), "{other}");
            assert_ne!(other.scheme(), Some(&http::uri::Scheme::HTTPS));
        }
    }
}
