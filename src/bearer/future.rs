//! The response future of [`BearerToken`](super::BearerToken), and the rare path that answers
//! a 401: invalidating the rejected token, or getting a claims token and re-sending once.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;
use zeroize::Zeroizing;

use super::cae::claims_challenge;
use super::head::{self, Head};
use super::origin::{Origin, from_elsewhere};
use super::replay::{NotReplayable, Replay, RetryBody};
use super::source::Source;
use super::spare::Reused;
use crate::error::BoxError;
use crate::refresh::TokenId;

pin_project! {
    /// The response future of [`BearerToken`](super::BearerToken): `S` is the inner service,
    /// `B` the request body and `ResB` the response body.
    ///
    /// With a fresh token and no challenge it is the inner future plus a check of the status:
    /// no allocation (with CAE, what a re-send needs is kept in a reused box, see
    /// the [module docs](super#behaviour)). Waiting for a token, or answering a claims
    /// challenge, runs as a boxed future.
    pub struct ResponseFuture<S, B, ResB>
    where
        S: Service<Request<B>>,
        S: 'static,
        B: 'static,
    {
        #[pin]
        state: State<S, B, ResB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, ResB>
    where
        S: Service<Request<B>>,
        S: 'static,
        B: 'static,
    {
        Sent {
            #[pin]
            future: S::Future,
            after: Option<After<S, B>>,
        },
        Boxed {
            future: BoxFuture<'static, Result<Response<ResB>, BoxError>>,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<S: Service<Request<B>> + 'static, B: 'static, ResB> ResponseFuture<S, B, ResB> {
    #[inline]
    pub(crate) fn sent(future: S::Future, after: After<S, B>) -> Self {
        Self {
            state: State::Sent {
                future,
                after: Some(after),
            },
        }
    }

    pub(crate) fn boxed(future: BoxFuture<'static, Result<Response<ResB>, BoxError>>) -> Self {
        Self {
            state: State::Boxed { future },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }
}

#[cfg(test)]
impl<S: Service<Request<B>> + 'static, B: 'static, ResB> ResponseFuture<S, B, ResB> {
    /// The head bytes a sent request keeps for its re-send; `None` without a challenge kept.
    pub(crate) fn kept_head(&self) -> Option<Vec<u8>> {
        match &self.state {
            State::Sent {
                after: Some(after), ..
            } => after.challenge.get().map(|(_, bytes)| bytes.to_vec()),
            _ => None,
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B, ResB>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: RetryBody,
    ResB: Body + Send + 'static,
{
    type Output = Result<Response<ResB>, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The hot path, small enough to inline into the caller's poll: the inner response, and
        // anything but a 401 goes back as it is.
        if let StateProj::Sent { future, after } = this.state.as_mut().project() {
            return match future.poll(cx) {
                Poll::Ready(Ok(response)) => {
                    if response.status() == StatusCode::UNAUTHORIZED {
                        if let Some(after) = after.take() {
                            return unauthorized(this.state, after, response, cx);
                        }
                    }
                    Poll::Ready(Ok(response))
                }
                Poll::Ready(Err(error)) => Poll::Ready(Err(error.into())),
                Poll::Pending => Poll::Pending,
            };
        }
        poll_other(this.state, cx)
    }
}

/// A 401 came back: answer it (see [`After::on_unauthorized`]), then poll the re-send.
#[cold]
#[inline(never)]
fn unauthorized<S, B, ResB>(
    mut state: Pin<&mut State<S, B, ResB>>,
    after: After<S, B>,
    response: Response<ResB>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResB>, BoxError>>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: RetryBody,
    ResB: Body + Send + 'static,
{
    match after.on_unauthorized(response) {
        Outcome::Done(response) => Poll::Ready(Ok(response)),
        Outcome::Retry(future) => {
            state.set(State::Boxed { future });
            poll_other(state, cx)
        }
    }
}

/// The states off the hot path: waiting for a token or re-sending (boxed), or failed.
#[inline(never)]
fn poll_other<S, B, ResB>(
    state: Pin<&mut State<S, B, ResB>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResB>, BoxError>>
where
    S: Service<Request<B>> + 'static,
    B: 'static,
{
    match state.project() {
        StateProj::Boxed { future } => future.poll_unpin(cx),
        StateProj::Failed { error } => Poll::Ready(Err(error
            .take()
            .unwrap_or_else(|| "ResponseFuture polled after completion".into()))),
        // Only reached after `poll` handled `Sent`.
        StateProj::Sent { .. } => Poll::Ready(Err("ResponseFuture in an impossible state".into())),
    }
}

/// What to do if the answer is a 401: the token the request carried and, with CAE, what
/// answering a claims challenge needs. Without CAE the token's id is enough to find the slot
/// that still holds it (`source::invalidate`).
///
/// Sixteen bytes, with a niche: every response future carries one and is moved on every
/// request. The challenge is boxed because inline it would make every future larger by the
/// inner service, the body and the head, with CAE or without; the box, with the head's
/// buffer in it, is reused (see `spare.rs`).
pub(crate) struct After<S: 'static, B: 'static> {
    pub(crate) token_id: TokenId,
    /// [`Reused::none`] without CAE.
    pub(crate) challenge: Reused<Challenge<S, B>>,
}

/// What answering a claims challenge needs: the token source and the service to re-send
/// through (kept, so that a future outliving every service of its layer, as with `oneshot`,
/// can still answer) and what the re-send needs besides the head's bytes, which the box keeps
/// beside it ([`Reused`]).
pub(crate) struct Challenge<S, B> {
    pub(crate) via: Arc<ResendVia<S>>,
    pub(crate) head: Head,
    pub(crate) replay: Replay<B>,
}

/// The token source and a clone of the inner service, shared by the CAE requests of one
/// [`BearerToken`](super::BearerToken) and its clones: a request keeps one reference count to
/// them instead of a clone of the inner service. A real client's clone is not free (a
/// hyper-util HTTPS client's clone and drop take ~72 ns here, issue 12) and every CAE request
/// paid it for a re-send that is rare; the re-send clones the shared service then.
///
/// The mutex makes it shareable for an inner service that is `Send` but not `Sync` (tower's
/// `BoxCloneService`, say); it is held only while that clone is made.
pub(crate) struct ResendVia<S> {
    pub(crate) source: Arc<Source>,
    service: Mutex<S>,
}

impl<S: Clone> ResendVia<S> {
    pub(crate) fn new(source: &Arc<Source>, service: S) -> Self {
        Self {
            source: Arc::clone(source),
            service: Mutex::new(service),
        }
    }

    /// A clone of the service, for one re-send. A clone that panicked earlier does not stop
    /// this one: the service is never left half-changed by a clone.
    fn service(&self) -> S {
        self.service
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub(crate) enum Outcome<ResB> {
    Done(Response<ResB>),
    Retry(BoxFuture<'static, Result<Response<ResB>, BoxError>>),
}

/// What to do with a 401: answer its claims challenge, or give it back.
pub(super) enum Decision {
    Retry(String),
    GiveBack,
}

/// A claims challenge is answered when CAE is on (`cae`); any other 401 goes back unchanged.
/// The reasons are traced at `DEBUG` (or `WARN` for an unusable challenge).
pub(super) fn decide(headers: &http::HeaderMap, cae: bool) -> Decision {
    match claims_challenge(headers) {
        Ok(Some(claims)) if cae => return Decision::Retry(claims),
        Ok(Some(_)) => {
            tracing::debug!("401 with a claims challenge, but CAE is off: returning it");
        }
        Err(reason) => {
            tracing::warn!(%reason, "401 with a claims challenge that cannot be used: returning it");
        }
        Ok(None) => tracing::debug!("401 without a claims challenge: returning it"),
    }
    Decision::GiveBack
}

impl<S: 'static, B: 'static> After<S, B> {
    /// Answers the claims challenge when the layer may re-send; otherwise the 401 goes back
    /// and the token it rejected is dropped if it is still the current one. With CAE, a 401
    /// from another origin than the request's (a redirect followed below the layer) goes back
    /// untouched: it says nothing of the token (see `origin`).
    pub(crate) fn on_unauthorized<ResB>(self, response: Response<ResB>) -> Outcome<ResB>
    where
        S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: RetryBody,
        ResB: Body + Send + 'static,
    {
        let (token_id, mut challenge) = (self.token_id, self.challenge);
        let Some((challenge, bytes)) = challenge.take() else {
            // Without CAE a claims challenge is not answered; `decide` says why.
            decide(response.headers(), false);
            super::source::invalidate(token_id);
            return Outcome::Done(response);
        };
        let Challenge { via, head, replay } = challenge;
        let sent_to = head::origin(&bytes);
        if from_elsewhere(sent_to.as_ref(), Origin::answered(&response)) {
            return Outcome::Done(response);
        }
        match decide(response.headers(), true) {
            Decision::Retry(claims) => {
                let resend = TowerResend {
                    service: via.service(),
                    head,
                    bytes,
                    replay,
                    sent_to,
                };
                Outcome::Retry(Box::pin(async move {
                    answer_challenge(&via.source, &claims, token_id, response, resend).await
                }))
            }
            Decision::GiveBack => {
                via.source.slot.invalidate(token_id);
                Outcome::Done(response)
            }
        }
    }
}

/// One client's side of the re-send after a claims challenge: the inner tower service
/// ([`TowerResend`]) or the rest of a reqwest middleware chain (`bearer/reqwest.rs`).
pub(super) trait Resend {
    /// The client's response.
    type Response;
    /// The client's error.
    type Error;

    /// The response's status.
    fn status(response: &Self::Response) -> StatusCode;

    /// The response's header fields.
    fn headers(response: &Self::Response) -> &http::HeaderMap;

    /// The origin the request was sent to, if it is known (see `origin`).
    fn sent_to(&self) -> Option<&Origin>;

    /// The origin that answered, if the client tells (see `origin`).
    fn answered(response: &Self::Response) -> Option<Origin>;

    /// The HTTP version the response came over, and so the request went out over.
    fn version(response: &Self::Response) -> Version;

    /// How this client reports the credential's error.
    fn credential_error(error: crate::CredentialError) -> Self::Error;

    /// Reads and discards what of the 401's body is already there (see [`drain`]).
    fn discard(response: Self::Response, limit: usize);

    /// Why the request cannot be re-sent whatever token comes, if that is known already (a
    /// body over the replay limit, a head not kept, a body reqwest cannot clone).
    fn refusal(&self) -> Option<NotReplayable>;

    /// The request again with this `Authorization` value, ready to send, or why it cannot be
    /// re-sent. Asked only once the claims token is had. `version`, the first attempt's (see
    /// [`version`](Self::version)), tells whether a body stopped at its declared length was
    /// sent whole.
    fn again(
        self,
        authorization: HeaderValue,
        version: Version,
    ) -> Result<impl Future<Output = Result<Self::Response, Self::Error>>, NotReplayable>;
}

/// The challenge path, for either client: claims token, drain the 401, re-send once. Anything
/// that makes a faithful re-send impossible returns the 401 as it came.
///
/// Claims the resource has lately refused again (a re-send with a token for them met the same
/// challenge: see [`Source::claims_refused`]) are not asked for: the 401 goes back at once, and
/// the token it rejected is kept, since a new one would meet the same challenge.
pub(super) async fn answer_challenge<R: Resend>(
    source: &Source,
    claims: &str,
    rejected: TokenId,
    response: R::Response,
    resend: R,
) -> Result<R::Response, R::Error> {
    if source.claims_refused(claims) {
        tracing::debug!(
            "claims challenge: a token with these claims was refused with the same challenge \
             lately; returning the 401"
        );
        return Ok(response);
    }
    // The token first: hyper may still be sending the body of the first attempt, and the
    // body can only be replayed once it was sent whole.
    // A credential that cannot satisfy the claims (the user must sign in again, say) is the
    // answer: returning the 401 would leave the caller to resend the same rejected request.
    // Not for a request that could not be re-sent anyway: past the replay bound the answer is
    // the 401, whatever the credential did. It comes after the flight all the same, so that a
    // caller retrying at once carries the claims token rather than meeting the same challenge
    // (and re-sending a large body) again and again while the credential works.
    if let Some(reason) = resend.refusal() {
        // Known before the flight: the wait is bounded, so that a slow credential (a device
        // code sign-in, say) does not hold the 401 past a caller's own timeout; the flight
        // runs on for the requests after it. On a runtime without timers there is no bound:
        // the flight is started (its first poll) and the 401 returned at once.
        let mut flight = pin!(source.claims_token(claims, rejected));
        let mut bound = pin!(
            Instant::now()
                .checked_add(UNRESENDABLE_WAIT)
                .and_then(|at| source.slot.timer_until(at))
        );
        let outcome = std::future::poll_fn(|cx| match flight.as_mut().poll(cx) {
            Poll::Ready(outcome) => Poll::Ready(Some(outcome)),
            Poll::Pending => match bound.as_mut().as_pin_mut().map(|sleep| sleep.poll(cx)) {
                Some(Poll::Pending) => Poll::Pending,
                _ => Poll::Ready(None),
            },
        })
        .await;
        if let Some(Err(error)) = outcome {
            // Logged (warn) by `claims_failure`; the answer is the 401 all the same.
            drop(claims_failure(source, rejected, error));
        }
        tracing::debug!(%reason, "claims challenge: the request cannot be re-sent; returning the 401");
        return Ok(response);
    }
    let entry = match source.claims_token(claims, rejected).await {
        Ok(entry) => entry,
        Err(error) => {
            let error = claims_failure(source, rejected, error);
            if let Some(reason) = resend.refusal() {
                tracing::debug!(%reason, "claims challenge: the request cannot be re-sent; returning the 401");
                return Ok(response);
            }
            return Err(R::credential_error(error));
        }
    };
    let sent_to = resend.sent_to().cloned();
    let sent = match resend.again(entry.value.header().clone(), R::version(&response)) {
        Ok(sent) => sent,
        Err(reason) => {
            tracing::debug!(%reason, "claims challenge: the request cannot be re-sent; returning the 401");
            return Ok(response);
        }
    };
    R::discard(response, source.options.drain_limit);
    tracing::debug!("claims challenge answered with a new token; re-sending once");
    let response = sent.await?;
    if R::status(&response) == StatusCode::UNAUTHORIZED
        && !from_elsewhere(sent_to.as_ref(), R::answered(&response))
    {
        source.slot.invalidate(entry.id);
        // The token for these claims met the same challenge: asking again at once would
        // only get another such token (an uncached token request and two resource requests
        // per request), so these claims are not asked for again for a while.
        if matches!(claims_challenge(R::headers(&response)), Ok(Some(again)) if again == claims) {
            source.refuse_claims(claims);
        }
    }
    Ok(response)
}

/// How long a request known not to be re-sendable waits for the claims flight before its 401
/// is returned (the flight runs on): long enough for a token request, short of the timeouts
/// callers put around requests.
const UNRESENDABLE_WAIT: Duration = Duration::from_secs(5);

/// The tower flavour's re-send: the request rebuilt from its kept head and replayed body,
/// sent through a clone of the inner service.
struct TowerResend<S, B> {
    service: S,
    head: Head,
    /// The head's bytes ([`Head::of`]), wiped when dropped.
    bytes: Zeroizing<Vec<u8>>,
    replay: Replay<B>,
    /// The origin the request was sent to, read from `bytes`.
    sent_to: Option<Origin>,
}

impl<S, B, ResB> Resend for TowerResend<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    B: RetryBody,
    ResB: Body,
{
    type Response = Response<ResB>;
    type Error = BoxError;

    fn status(response: &Response<ResB>) -> StatusCode {
        response.status()
    }

    fn headers(response: &Response<ResB>) -> &http::HeaderMap {
        response.headers()
    }

    fn sent_to(&self) -> Option<&Origin> {
        self.sent_to.as_ref()
    }

    fn answered(response: &Response<ResB>) -> Option<Origin> {
        Origin::answered(response)
    }

    fn version(response: &Response<ResB>) -> Version {
        response.version()
    }

    fn credential_error(error: crate::CredentialError) -> BoxError {
        error.into()
    }

    fn discard(response: Response<ResB>, limit: usize) {
        drain(response.into_body(), limit);
    }

    fn refusal(&self) -> Option<NotReplayable> {
        self.replay.refusal().or_else(|| self.head.refusal())
    }

    fn again(
        self,
        authorization: HeaderValue,
        version: Version,
    ) -> Result<impl Future<Output = Result<Response<ResB>, BoxError>>, NotReplayable> {
        // A body refused as it was prepared first: no head was kept for it.
        if let Some(reason) = self.replay.refused_at_prepare() {
            return Err(reason.clone());
        }
        // The head first: its `Content-Length` tells whether a body that was not polled to
        // its end was sent whole (over HTTP/1).
        let request = self.head.into_request(&self.bytes, (), authorization)?;
        let body = self.replay.into_body_for(request.headers(), version)?;
        let request = request.map(|()| body);
        Ok(async move { self.service.oneshot(request).await.map_err(Into::into) })
    }
}

/// The error of a claims challenge the credential could not answer: the credential's own
/// error (kind, provider details), saying what asked for the claims. The token the resource
/// rejected is dropped, as for a plain 401: kept, every request would carry it again for the
/// failure's spacing.
fn claims_failure(
    source: &Source,
    rejected: TokenId,
    error: crate::CredentialError,
) -> crate::CredentialError {
    source.slot.invalidate(rejected);
    tracing::warn!(%error, "claims challenge: the credential could not get a token with the claims");
    error.with_message_prefix(
        "the resource answered 401 with a claims challenge (CAE), and no token with those \
             claims could be had: ",
    )
}

/// Reads and discards what of a 401 body is already available (up to `limit` bytes), so the
/// connection can carry the re-send. It never waits: no timers, no hang on a slow body.
pub(super) fn drain<ResB: Body>(body: ResB, limit: usize) {
    let mut body = pin!(body);
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut read = 0usize;
    while read <= limit {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    read = read.saturating_add(bytes::Buf::remaining(data));
                }
            }
            Poll::Ready(Some(Err(_)) | None) | Poll::Pending => break,
        }
    }
}
