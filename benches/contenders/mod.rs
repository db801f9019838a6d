//! The contenders of the hot-path benches (`hot_path` by time, `hot_path_instructions` by
//! instruction count), built once here so that both measure the same services: the bare
//! service, tower-http's `SetRequestHeader` with a static value (the floor for "add a
//! header") and with a value made at run time, and `BearerToken` with a fresh token, without
//! and with `enable_cae(true)`, over [`Ok200`] and over [`OverClient`] (an inner service whose
//! clone costs what a real client's does). Both benches drive every contender with
//! [`poll_once`].

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::sync::{LazyLock, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use http_body_util::{Empty, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_http::set_header::{SetRequestHeader, SetRequestHeaderLayer};
use tower_identity::bearer::{BearerToken, BearerTokenLayer};
use tower_identity::{AccessToken, CredentialError, CredentialExt, TokenRequest};

/// Always ready, answers at once: the cost measured is the wrapper's.
#[derive(Clone)]
pub struct Ok200;

impl Service<Request<Full<Bytes>>> for Ok200 {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        ready(Ok(Response::new(Empty::new())))
    }
}

/// [`Ok200`] carrying a hyper-util HTTPS client that is cloned with it and never called: the
/// inner service's clone costs what a real client's does (~72 ns for a clone and its drop
/// here, against nothing for [`Ok200`]), for the wrappers that clone their inner service.
#[derive(Clone)]
pub struct OverClient {
    _client: HttpsClient,
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

impl OverClient {
    pub fn new() -> Self {
        let https = HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_only()
            .enable_http1()
            .build();
        Self {
            _client: Client::builder(TokioExecutor::new()).build(https),
        }
    }
}

impl Service<Request<Full<Bytes>>> for OverClient {
    type Response = <Ok200 as Service<Request<Full<Bytes>>>>::Response;
    type Error = Infallible;
    type Future = <Ok200 as Service<Request<Full<Bytes>>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Ok200.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        Ok200.call(request)
    }
}

/// Makes a future with `call` and polls it once where it lies, pinned, as an executor polls a
/// task or `.await` polls the future it waits on: its output, or `None` if it is pending.
///
/// Not `FutureExt::now_or_never`: that takes the future by value into its own frame, and is
/// inlined only for a future whose `poll` is small, so a wrapper with a cold path (the
/// layer's 401 handling) paid one more move of the whole future and of its output than a
/// pass-through future (`SetRequestHeader`'s is the inner one): through it `BearerToken`
/// measured 131 ns and `SetRequestHeader` 116, in place 125 and 114 (2026-11-30, commit
/// 560b0b4). Every contender is driven by this same function.
#[inline(always)]
pub fn poll_once<F: Future>(call: impl FnOnce() -> F) -> Option<F::Output> {
    let mut future = pin!(call());
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// A request as a client would build it, with room in its header map.
pub fn request() -> Request<Full<Bytes>> {
    Request::get("https://api.example.test/items/42")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from_static(b"")))
        .unwrap()
}

/// tower-http's `SetRequestHeader` with a value made at run time, as a token is: its bytes are
/// shared, so each request's copy is a reference count (an atomic increment, and a decrement
/// when the request is dropped), as with `BearerToken`'s header.
pub fn set_request_header_shared() -> SetRequestHeader<Ok200, HeaderValue> {
    in_runtime();
    let token = String::from("Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.shared.token");
    let value = HeaderValue::from_maybe_shared(Bytes::from(token)).unwrap();
    // The first clone makes the bytes shared; every request's clone after it counts.
    drop(value.clone());
    SetRequestHeaderLayer::overriding(AUTHORIZATION, value).layer(Ok200)
}

/// The bare service, in the same process state as the others (see [`in_runtime`]).
pub fn bare() -> Ok200 {
    in_runtime();
    Ok200
}

/// tower-http's `SetRequestHeader` with a static value over [`Ok200`].
pub fn set_request_header_static() -> SetRequestHeader<Ok200, HeaderValue> {
    in_runtime();
    let value =
        HeaderValue::from_static("Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.static.token");
    SetRequestHeaderLayer::overriding(AUTHORIZATION, value).layer(Ok200)
}

/// The runtime the layer lives in, as in an application.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
});

/// Enters [`RUNTIME`] on this thread for the rest of the process (once), as an application's
/// requests run inside theirs. Every contender does, not only the layer (which needs it for
/// its recheck timer, sparing fresh-token requests a clock read): the runtime's worker thread
/// makes the process multi-threaded, which puts glibc's `free` on its locking path (~47
/// instructions a request here), and a contender measured without it would gain that for
/// nothing the wrapper does.
fn in_runtime() {
    static ENTERED: Once = Once::new();
    ENTERED.call_once(|| std::mem::forget(RUNTIME.enter()));
}

/// A warm `BearerToken` over [`Ok200`]: the first call acquires the token, the measured calls
/// find it fresh, inside the runtime (see [`in_runtime`]).
pub fn bearer_token(cae: bool) -> BearerToken<Ok200> {
    bearer_token_over(Ok200, cae)
}

/// [`bearer_token`] over [`OverClient`].
pub fn bearer_token_over_client(cae: bool) -> BearerToken<OverClient> {
    in_runtime();
    bearer_token_over(OverClient::new(), cae)
}

fn bearer_token_over<S>(inner: S, cae: bool) -> BearerToken<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Empty<Bytes>>, Error = Infallible>,
    S: Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let credential = tower::service_fn(|_: TokenRequest| async {
        Ok::<_, CredentialError>(AccessToken::new(
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fresh.token",
            tokio::time::Instant::now() + Duration::from_secs(3600),
        ))
    });
    let mut service = BearerTokenLayer::builder(
        credential.boxed_credential(),
        ["https://api.example.test/.default"],
    )
    .enable_cae(cae)
    .build()
    .layer(inner);
    RUNTIME.block_on(async {
        service
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
    });
    in_runtime();
    service
}
