//! [`RetryOptions`] and the one retry loop: which answers are retried (the standard schedule
//! or IMDS's), how long to wait, and the server's `Retry-After`.

use std::error::Error as StdError;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use tower::ServiceExt;
use tower_service::Service;

use super::error::{Attempts, TransportError, TransportErrorKind, source_chain};
use super::leaf::HyperLeaf;
use super::{DEFAULT_TOTAL_TIMEOUT, HttpRequest, HttpResponse};
use crate::error::BoxError;

/// The longest wait a server's `Retry-After` is read as (MSAL.NET caps it at one hour too):
/// larger values, up to `1e300` or `u64::MAX` seconds, mean "much later", not an overflow.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How token requests are retried, and how long one request may take in all.
#[derive(Clone, Copy, Debug)]
pub struct RetryOptions {
    pub(super) max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_retry_after: Duration,
    total_timeout: Option<Duration>,
    /// Crate-private: which answers are retried, and how long to wait.
    schedule: RetrySchedule,
}

/// What a [`RetryOptions`] retries and how it backs off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RetrySchedule {
    /// 408, 429, 500, 502, 503, 504, connection failures, timeouts and I/O errors; the
    /// backoff doubles from `initial_backoff`, with jitter.
    Standard,
    /// IMDS (azure-identity's `imds.py` over azure-core's `RetryPolicy`): also 404 (the
    /// identity is not ready yet), 410 (IMDS is being updated) and every 5xx; no wait before
    /// the first retry, then `initial_backoff · 2^(n−1)` for the n-th, without jitter. After a
    /// 410 the factor is [`IMDS_GONE_BACKOFF`] for the rest of the request: Microsoft documents
    /// that an update can take up to 70 s, and 0 + 5 + 10 + 20 + 40 s outlasts it.
    Imds,
}

/// The IMDS backoff factor once it answered 410.
pub(super) const IMDS_GONE_BACKOFF: Duration = Duration::from_millis(2500);

impl Default for RetryOptions {
    fn default() -> Self {
        // azure-core's defaults start at 0.8 s and double; three retries keep a failing
        // token request under ~6 s of backoff.
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(800),
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(60),
            total_timeout: Some(DEFAULT_TOTAL_TIMEOUT),
            schedule: RetrySchedule::Standard,
        }
    }
}

impl RetryOptions {
    /// Retries after the first attempt (default 3).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// First backoff; it doubles per retry, with ±20 % jitter (default 800 ms).
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Cap on a computed backoff (default 60 s).
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// A server asking to wait longer than this (`Retry-After`) is not retried: its answer is
    /// returned at once (default 60 s), and the credential sends that server nothing until
    /// the wait has passed (at most an hour). A credential's request already retrying when
    /// another of its requests is asked to wait waits that out before it sends again, unless
    /// it is longer than this: then its last answer is returned at once.
    pub fn max_retry_after(mut self, wait: Duration) -> Self {
        self.max_retry_after = wait;
        self
    }

    /// The deadline of one request over all its attempts and the waits between them (default
    /// 30 s); `None` for none. An attempt still running at the deadline is abandoned, and a
    /// wait (backoff or `Retry-After`) that would end after it is not started: the last answer
    /// is returned instead.
    pub fn total_timeout(mut self, deadline: Option<Duration>) -> Self {
        self.total_timeout = deadline;
        self
    }

    /// The IMDS schedule (see [`RetrySchedule::Imds`]): 5 retries from 0.8 s, within `total`.
    pub(crate) fn imds(total: Duration) -> Self {
        Self {
            max_retries: 5,
            initial_backoff: Duration::from_millis(800),
            total_timeout: Some(total),
            schedule: RetrySchedule::Imds,
            ..Self::default()
        }
    }
}

/// A request extension marking a request that carries a single-use grant (an authorization
/// code): the provider may have consumed it even when no answer came back, and a second
/// attempt would then be refused (`AADSTS54005`, code already redeemed) and hide the real
/// failure. Such a request is retried only after a connection failure, when nothing was sent,
/// or a 429 (throttled: not processed); never after a timeout, an I/O error or another answer.
/// (azure-core likewise does not resend a POST after a response error.)
#[derive(Clone, Copy, Debug)]
pub(crate) struct SingleUse;

/// A request extension: the retry loop's report to the credential that sent the request, made
/// before each wait between attempts. It is shown the answer about to be waited out (`None`
/// after a failure without one), so that the credential remembers the wait it asks for and
/// holds back its other requests to that endpoint during the wait, not only once the loop has
/// returned. It answers until when the credential holds that endpoint back (a wait another of
/// its requests was asked for meanwhile): the loop waits at least that long, so that a retry is
/// not sent into a throttle a sibling request has learned of; a hold that would outlast the
/// deadline or `max_retry_after` ends the loop with the last outcome instead (then also the
/// final one, which the caller gets). Asked again, shown nothing, once the wait is over, for a
/// hold learned during it. Not called when the loop's own wait is refused (no retries left,
/// past the deadline), so never shown an outcome only the caller sees.
#[derive(Clone)]
pub(crate) struct BeforeRetry(Arc<RetryHook>);

type RetryHook = dyn Fn(Option<&HttpResponse>) -> Option<tokio::time::Instant> + Send + Sync;

impl BeforeRetry {
    pub(crate) fn new(
        hook: impl Fn(Option<&HttpResponse>) -> Option<tokio::time::Instant> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(hook))
    }

    /// Reports `answer` (if any); returns until when the endpoint is held back, if it is.
    pub(crate) fn call(&self, answer: Option<&HttpResponse>) -> Option<tokio::time::Instant> {
        (self.0)(answer)
    }
}

/// A request extension: an answer the request already got from its endpoint through another
/// client (IMDS's quick token request, sent with the probe's client and no retries, that found
/// IMDS busy after all). The retry loop takes it as its first attempt's outcome instead of
/// sending: whether and when the request goes again (its `Retry-After` within
/// `max_retry_after` and the deadline, or the backoff), the report to [`BeforeRetry`] before the
/// wait, and the outcome when it is not waited out (this answer) are the loop's, as for any
/// answer it retries. A client without this retry loop sends the request as it is.
#[derive(Clone, Debug)]
pub(crate) struct Answered {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answered {
    pub(crate) fn new(status: StatusCode, headers: HeaderMap, body: Bytes) -> Self {
        Self {
            status,
            headers,
            body,
        }
    }

    fn into_response(self) -> HttpResponse {
        let mut response = http::Response::new(self.body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// The default client's retries and total deadline, around hyper-util.
#[derive(Clone)]
pub(super) struct Retrying {
    pub(super) leaf: HyperLeaf,
    pub(super) options: RetryOptions,
}

impl Service<HttpRequest> for Retrying {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<HttpResponse, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let leaf = self.leaf.clone();
        let options = self.options;
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            // A deadline too far to represent is no deadline.
            let deadline = options
                .total_timeout
                .and_then(|limit| Some((started.checked_add(limit)?, limit)));
            let mut policy = RetryPolicy::new(options);
            policy.single_use = request.extensions().get::<SingleUse>().is_some();
            let before_retry = request.extensions().get::<BeforeRetry>().cloned();
            let mut answered = request
                .extensions()
                .get::<Answered>()
                .cloned()
                .map(Answered::into_response);
            let mut attempts = 0u32;
            loop {
                attempts = attempts.saturating_add(1);
                let result = match (answered.take(), deadline) {
                    (Some(answer), _) => Ok(answer),
                    (None, Some((at, limit))) => {
                        let attempt = leaf.clone().oneshot(clone_request(&request));
                        tokio::time::timeout_at(at, attempt)
                            .await
                            .unwrap_or_else(|_| Err(TransportError::deadline(limit).into()))
                    }
                    (None, None) => leaf.clone().oneshot(clone_request(&request)).await,
                };
                let before_deadline = |wait: Duration| {
                    deadline.is_none_or(|(at, _)| {
                        tokio::time::Instant::now()
                            .checked_add(wait)
                            .is_some_and(|end| end < at)
                    })
                };
                let mut wait = (policy.retries < options.max_retries)
                    .then(|| policy.delay_for(&result))
                    .flatten()
                    .filter(|wait| before_deadline(*wait));
                if let (Some(own), Some(hook)) = (wait, &before_retry) {
                    // The endpoint may be held back longer than this request's own wait: a
                    // `Retry-After` another request of the credential was given meanwhile. A
                    // retry sent before it ends would go into that throttle; one that must wait
                    // longer than this request may is not made, as for its own `Retry-After`.
                    let held = hook
                        .call(result.as_ref().ok())
                        .map(|until| until.saturating_duration_since(tokio::time::Instant::now()))
                        .filter(|held| *held > own);
                    if let Some(held) = held {
                        wait = (held <= options.max_retry_after && before_deadline(held))
                            .then_some(held);
                        if wait.is_none() {
                            tracing::debug!(
                                ?held,
                                "endpoint held back longer than this request may wait; not \
                                 retrying"
                            );
                        }
                    }
                }
                let Some(wait) = wait else {
                    let attempts = Attempts {
                        count: attempts,
                        elapsed: started.elapsed(),
                    };
                    return finish(result, attempts);
                };
                policy.retries = policy.retries.saturating_add(1);
                tracing::debug!(
                    retry = policy.retries,
                    ?wait,
                    status = result.as_ref().ok().map(|r| r.status().as_u16()),
                    "retrying token request"
                );
                tokio::time::sleep(wait).await;
                // A wait a sibling request was given while this one slept: waited out as
                // well before sending, or, when longer than this request may wait, the loop
                // ends with the outcome it had.
                while let Some(held) = before_retry.as_ref().and_then(|hook| {
                    hook.call(None)
                        .map(|until| until.saturating_duration_since(tokio::time::Instant::now()))
                        .filter(|held| !held.is_zero())
                }) {
                    if held > options.max_retry_after || !before_deadline(held) {
                        tracing::debug!(
                            ?held,
                            "endpoint held back longer than this request may wait; not retrying"
                        );
                        let attempts = Attempts {
                            count: attempts,
                            elapsed: started.elapsed(),
                        };
                        return finish(result, attempts);
                    }
                    tokio::time::sleep(held).await;
                }
            }
        })
    }
}

/// Records the attempts on the final answer: the response's extensions, or the error.
fn finish(
    result: Result<HttpResponse, BoxError>,
    attempts: Attempts,
) -> Result<HttpResponse, BoxError> {
    match result {
        Ok(mut response) => {
            response.extensions_mut().insert(attempts);
            Ok(response)
        }
        Err(error) => Err(match error.downcast::<TransportError>() {
            Ok(mut transport) => {
                transport.record(attempts);
                transport
            }
            Err(other) => other,
        }),
    }
}

fn clone_request(request: &HttpRequest) -> HttpRequest {
    let mut clone = http::Request::new(request.body().clone());
    *clone.method_mut() = request.method().clone();
    *clone.uri_mut() = request.uri().clone();
    *clone.version_mut() = request.version();
    *clone.headers_mut() = request.headers().clone();
    clone
}

/// When to retry one request; counts its retries.
#[derive(Clone, Debug)]
pub(super) struct RetryPolicy {
    options: RetryOptions,
    pub(super) retries: u32,
    /// IMDS answered 410 during this request: it is being updated, back off longer.
    gone: bool,
    /// The request is [`SingleUse`]: retried only when it was never sent, or throttled.
    pub(super) single_use: bool,
}

impl RetryPolicy {
    pub(super) fn new(options: RetryOptions) -> Self {
        Self {
            options,
            retries: 0,
            gone: false,
            single_use: false,
        }
    }

    pub(super) fn backoff(&self) -> Duration {
        match self.options.schedule {
            RetrySchedule::Standard => {
                let exponential = self
                    .options
                    .initial_backoff
                    .saturating_mul(2u32.saturating_pow(self.retries));
                let factor = 0.8 + fastrand::f64() * 0.4;
                // Too long for a Duration is as long as the cap allows.
                let jittered = Duration::try_from_secs_f64(exponential.as_secs_f64() * factor)
                    .unwrap_or(Duration::MAX);
                jittered.min(self.options.max_backoff)
            }
            RetrySchedule::Imds => {
                let factor = if self.gone {
                    IMDS_GONE_BACKOFF
                } else {
                    self.options.initial_backoff
                };
                imds_backoff(
                    factor,
                    self.retries.saturating_add(1),
                    self.options.max_backoff,
                )
            }
        }
    }

    fn is_retryable(&self, status: StatusCode) -> bool {
        match self.options.schedule {
            RetrySchedule::Standard => is_retryable_status(status),
            RetrySchedule::Imds => is_imds_retryable_status(status),
        }
    }

    /// The wait before the next attempt, or `None` when the outcome is final.
    pub(super) fn delay_for(
        &mut self,
        result: &Result<HttpResponse, BoxError>,
    ) -> Option<Duration> {
        if self.single_use {
            match result {
                Err(error) if is_unsent(error.as_ref()) => return Some(self.backoff()),
                // Throttled, the request was not processed (the code is still unused): it is
                // waited for and sent again as any other.
                Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {}
                _ => return None,
            }
        }
        match result {
            Ok(response) if self.is_retryable(response.status()) => {
                if response.status() == StatusCode::GONE {
                    self.gone = true;
                }
                match retry_after(response.headers(), SystemTime::now()) {
                    Some(wait) if wait > self.options.max_retry_after => {
                        tracing::debug!(
                            ?wait,
                            "server asked to wait longer than allowed; not retrying"
                        );
                        None
                    }
                    // No wait asked for (0, or a date past): the backoff, as azure-core
                    // does, rather than an immediate retry.
                    Some(wait) if !wait.is_zero() => Some(wait),
                    Some(_) | None => Some(self.backoff()),
                }
            }
            Ok(_) => None,
            Err(error) => is_retryable_error(error.as_ref()).then(|| self.backoff()),
        }
    }
}

/// azure-core's backoff for the `retry`-th retry (1-based): none before the first, then
/// `factor · 2^(retry−1)`, capped.
pub(super) fn imds_backoff(factor: Duration, retry: u32, cap: Duration) -> Duration {
    if retry <= 1 {
        return Duration::ZERO;
    }
    factor
        .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
        .min(cap)
}

/// 408, 429 and the transient 5xx: what azure-core retries.
pub(crate) fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// What the IMDS schedule retries: 404, 408, 410, 429 and every 5xx.
pub(crate) fn is_imds_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 404 | 408 | 410 | 429) || status.is_server_error()
}

/// Connection failures and timeouts are worth another try; TLS failures and oversized
/// bodies are not (they would fail the same way). Errors from user layers are retried.
pub(super) fn is_retryable_error(error: &(dyn StdError + 'static)) -> bool {
    match transport_kind(error) {
        Some(kind) => matches!(
            kind,
            TransportErrorKind::Connect | TransportErrorKind::Timeout | TransportErrorKind::Io
        ),
        None => true,
    }
}

/// Whether the request surely never reached the server: the connection (or the proxy's
/// tunnel) was not established. Errors from user layers are not known to be so.
pub(super) fn is_unsent(error: &(dyn StdError + 'static)) -> bool {
    transport_kind(error) == Some(TransportErrorKind::Connect)
}

/// The kind of the first [`TransportError`] in `error`'s chain; `None` for an error of a user
/// layer.
fn transport_kind(error: &(dyn StdError + 'static)) -> Option<TransportErrorKind> {
    source_chain(error)
        .find_map(|e| e.downcast_ref::<TransportError>())
        .map(TransportError::kind)
}

/// The server's requested wait: `Retry-After` (seconds, possibly fractional, or an HTTP date),
/// else `retry-after-ms`, else `x-ms-retry-after-ms` (milliseconds): azure-core's order
/// (`get_retry_after`), so that a server sending both is read as there.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = text("retry-after") {
        if let Some(wait) = seconds(value, 1.0) {
            return Some(wait);
        }
        if let Ok(at) = httpdate::parse_http_date(value) {
            return Some(
                at.duration_since(now)
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_RETRY_AFTER),
            );
        }
    }
    ["retry-after-ms", "x-ms-retry-after-ms"]
        .into_iter()
        .find_map(|name| text(name).and_then(|v| seconds(v, 1000.0)))
}

/// A non-negative number of `1/per_second` units as a wait, capped at [`MAX_RETRY_AFTER`];
/// `None` for anything that is not such a number (negative, NaN, text).
fn seconds(value: &str, per_second: f64) -> Option<Duration> {
    let number = value.parse::<f64>().ok().filter(|n| *n >= 0.0)?;
    // Infinite or too large for a Duration: as long as we ever wait.
    Some(
        Duration::try_from_secs_f64(number / per_second)
            .unwrap_or(MAX_RETRY_AFTER)
            .min(MAX_RETRY_AFTER),
    )
}

#[cfg(test)]
mod tests;
