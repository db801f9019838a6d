//! A provider's `Retry-After`, remembered per credential and endpoint: until the time it asked
//! for has passed, the credential sends that endpoint nothing and answers at once with a
//! *throttled* error (`is_throttled()`, `retry_after()`). Entra throttles per application and
//! tenant, so an Entra credential keeps one wait per token endpoint URL (which names the
//! tenant): a wait one tenant asked for does not hold back requests to another. Asking again
//! early only extends the wait.
//!
//! The wait is remembered as soon as the answer asking for it arrives: when the transport waits
//! it out to send the request again (a `Retry-After` up to
//! [`max_retry_after`](crate::RetryOptions::max_retry_after)), its retry loop reports the
//! answer before it waits ([`BeforeRetry`]), so the credential's other requests to that
//! endpoint are answered throttled during the wait rather than sent into the throttle, each
//! to be waited out in turn. The final answer is remembered too; remembering is extend-only,
//! so reporting both is harmless. Requests already in their own retry loop when the wait is
//! asked for learn it there too: before each retry the loop asks until when the endpoint is
//! held back, and waits until then (or, when that is past the request's deadline or longer
//! than `max_retry_after`, returns its last answer or error at once) rather than send into
//! the throttle.
//!
//! The wait is read from the `Retry-After`, `retry-after-ms` or `x-ms-retry-after-ms` of an
//! answer that asks the client to wait: one the transport retries (408, 429, 503, …:
//! [`is_retryable_status`]) or any other 5xx, as msal remembers them. It is capped at
//! [`MAX_RETRY_AFTER`] (an hour): larger values mean "much later", not an overflow.

use std::sync::{Arc, Mutex, MutexGuard};

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use crate::error::{Cause, CredentialError, ProviderDetails};
use crate::transport::{
    BeforeRetry, HttpResponse, MAX_RETRY_AFTER, is_retryable_status, retry_after,
};

/// A wait a provider asked for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Throttle {
    pub(crate) until: Instant,
    pub(crate) status: StatusCode,
}

impl Throttle {
    /// The wait a throttling or unavailable answer asks for; `None` for any other status or
    /// no `Retry-After`. A refusal (400/401 `invalid_client`, …) is final whatever headers
    /// came with it: remembering its `Retry-After` would lock the credential out locally and
    /// call a configuration error transient.
    pub(crate) fn of(status: StatusCode, headers: &HeaderMap) -> Option<Self> {
        if !(is_retryable_status(status) || status.is_server_error()) {
            return None;
        }
        let wait = retry_after(headers, std::time::SystemTime::now())?;
        let until = Instant::now().checked_add(wait.min(MAX_RETRY_AFTER))?;
        Some(Self { until, status })
    }

    /// `error` (from the answer that asked for this wait) marked throttled and transient, its
    /// message saying that nothing is sent until then.
    pub(crate) fn mark(self, error: CredentialError) -> CredentialError {
        let wait = self.until.saturating_duration_since(Instant::now());
        error
            .with_cause(Cause {
                transient: true,
                throttled_until: Some(self.until),
                ..Cause::default()
            })
            .with_message_suffix(&format!(
                ". Throttled: the provider asked to wait {} s; until then this credential \
                 sends it no token request",
                wait.as_secs()
            ))
    }
}

/// The longest wait each endpoint asked one credential for, at most [`MAX_ENDPOINTS`] of them.
#[derive(Debug, Default)]
pub(crate) struct ThrottleMemory(Mutex<Vec<(String, Throttle)>>);

/// Endpoints whose waits one credential remembers: a credential allowed any tenant could
/// otherwise be made to keep one for every tenant named to it. Past this, the wait that ends
/// first is forgotten first.
const MAX_ENDPOINTS: usize = 64;

impl ThrottleMemory {
    fn lock(&self) -> MutexGuard<'_, Vec<(String, Throttle)>> {
        // Every write leaves the list whole: a panic elsewhere cannot leave it torn.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers `throttle` for `endpoint`, unless a wait it already asked for ends later:
    /// asking again early only extends the wait (a 429 for 300 s then a 503 for 2 s still
    /// holds requests back for 300 s). Returns the wait kept, for the error of the answer
    /// that asked: it must say the wait that holds, not the shorter one it asked for.
    pub(crate) fn remember(&self, endpoint: &str, throttle: Throttle) -> Throttle {
        let now = Instant::now();
        let mut waits = self.lock();
        let throttle = waits
            .iter()
            .find(|(known, _)| known == endpoint)
            .map(|(_, known)| *known)
            .filter(|known| known.until > throttle.until)
            .unwrap_or(throttle);
        waits.retain(|(known, wait)| known != endpoint && now < wait.until);
        if waits.len() >= MAX_ENDPOINTS {
            let first = waits
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, wait))| wait.until)
                .map(|(i, _)| i);
            if let Some(first) = first {
                waits.swap_remove(first);
            }
        }
        waits.push((endpoint.to_owned(), throttle));
        throttle
    }

    /// Remembers the wait `answer` asks for, if it asks for one (see [`Throttle::of`]).
    pub(crate) fn remember_answer(&self, endpoint: &str, answer: &HttpResponse) {
        if let Some(throttle) = Throttle::of(answer.status(), answer.headers()) {
            self.remember(endpoint, throttle);
        }
    }

    /// When the wait remembered for `endpoint` ends, if one is remembered and has not passed.
    pub(crate) fn held_until(&self, endpoint: &str) -> Option<Instant> {
        let now = Instant::now();
        self.lock()
            .iter()
            .find(|(known, _)| known == endpoint)
            .map(|(_, throttle)| throttle.until)
            .filter(|until| *until > now)
    }

    /// The request extension by which the transport's retry loop reports to this memory, for
    /// `endpoint`, each answer it waits out before sending again, and learns until when the
    /// endpoint is held back: the wait is remembered before the loop starts it, and the loop's
    /// retry waits for a wait another request was asked for.
    pub(crate) fn before_retry(self: &Arc<Self>, endpoint: &str) -> BeforeRetry {
        let memory = Arc::clone(self);
        let endpoint = endpoint.to_owned();
        BeforeRetry::new(move |answer| {
            if let Some(answer) = answer {
                memory.remember_answer(&endpoint, answer);
            }
            memory.held_until(&endpoint)
        })
    }

    /// While the wait remembered for `endpoint` has not passed: the error to answer with at once, as
    /// `credential`, naming `provider` ("Microsoft Entra ID at https://…").
    pub(crate) fn refusal(
        &self,
        endpoint: &str,
        credential: &'static str,
        provider: &str,
    ) -> Option<CredentialError> {
        let throttle = self
            .lock()
            .iter()
            .find(|(known, _)| known == endpoint)
            .map(|(_, throttle)| *throttle)?;
        let wait = throttle.until.checked_duration_since(Instant::now())?;
        if wait.is_zero() {
            return None;
        }
        Some(
            CredentialError::authentication_failed(
                credential,
                format!(
                    "throttled: {provider} answered HTTP {} with a Retry-After; no token \
                     request is sent for another {} s",
                    throttle.status,
                    wait.as_secs_f64().ceil()
                ),
            )
            .with_provider(ProviderDetails {
                status: Some(throttle.status),
                ..ProviderDetails::default()
            })
            .with_cause(Cause {
                transient: true,
                throttled_until: Some(throttle.until),
                ..Cause::default()
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_remembered_wait_refuses_until_it_has_passed() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "30".parse().unwrap());
        assert!(Throttle::of(StatusCode::OK, &headers).is_none());
        assert!(Throttle::of(StatusCode::BAD_REQUEST, &headers).is_none());
        assert!(Throttle::of(StatusCode::UNAUTHORIZED, &headers).is_none());
        assert!(Throttle::of(StatusCode::SERVICE_UNAVAILABLE, &headers).is_some());
        // A 5xx the transport does not retry still asks to wait.
        assert!(Throttle::of(StatusCode::INSUFFICIENT_STORAGE, &headers).is_some());
        assert!(Throttle::of(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()).is_none());
        let throttle = Throttle::of(StatusCode::TOO_MANY_REQUESTS, &headers).unwrap();
        let memory = ThrottleMemory::default();
        let (tenant_a, tenant_b) = ("https://idp.test/a/token", "https://idp.test/b/token");
        assert!(memory.refusal(tenant_a, "Test", "the provider").is_none());
        assert!(memory.held_until(tenant_a).is_none());
        memory.remember(tenant_a, throttle);
        assert_eq!(memory.held_until(tenant_a), Some(throttle.until));
        assert!(memory.held_until(tenant_b).is_none());
        let refused = memory.refusal(tenant_a, "Test", "the provider").unwrap();
        assert!(
            refused.is_throttled() && refused.is_transient(),
            "{refused}"
        );
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(30)));
        assert!(
            refused.message().contains("the provider answered HTTP 429"),
            "{refused}"
        );
        // Another endpoint (another tenant) is not held back.
        assert!(memory.refusal(tenant_b, "Test", "the provider").is_none());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(memory.refusal(tenant_a, "Test", "the provider").is_none());
        assert!(memory.held_until(tenant_a).is_none(), "passed");
        let marked = throttle.mark(CredentialError::authentication_failed("Test", "refused"));
        assert!(marked.is_throttled());
        assert!(
            marked.message().contains("sends it no token request"),
            "{marked}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_wait_asked_later_does_not_shorten_the_wait() {
        let memory = ThrottleMemory::default();
        let wait = |secs, status| Throttle {
            until: Instant::now() + Duration::from_secs(secs),
            status,
        };
        memory.remember("t", wait(300, StatusCode::TOO_MANY_REQUESTS));
        let kept = memory.remember("t", wait(2, StatusCode::SERVICE_UNAVAILABLE));
        // The error of the answer that asked 2 s says the 300 s that hold.
        let marked = kept.mark(CredentialError::authentication_failed("Test", "refused"));
        assert_eq!(marked.retry_after(), Some(Duration::from_secs(300)));
        assert!(marked.message().contains("wait 300 s"), "{marked}");
        tokio::time::advance(Duration::from_secs(2)).await;
        let refused = memory.refusal("t", "Test", "p").unwrap();
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(298)));
        assert!(refused.message().contains("HTTP 429"), "{refused}");
        // A longer one extends it.
        memory.remember("t", wait(600, StatusCode::SERVICE_UNAVAILABLE));
        tokio::time::advance(Duration::from_secs(300)).await;
        let refused = memory.refusal("t", "Test", "p").unwrap();
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(300)));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_kept_for_a_bounded_number_of_endpoints() {
        let memory = ThrottleMemory::default();
        let wait = |secs| Throttle {
            until: Instant::now() + Duration::from_secs(secs),
            status: StatusCode::TOO_MANY_REQUESTS,
        };
        // The first ends soonest, so it is the one forgotten.
        for n in 0..=MAX_ENDPOINTS {
            memory.remember(&format!("t{n}"), wait(100 + n as u64));
        }
        assert_eq!(memory.lock().len(), MAX_ENDPOINTS);
        assert!(memory.refusal("t0", "Test", "p").is_none());
        assert!(
            memory
                .refusal(&format!("t{MAX_ENDPOINTS}"), "Test", "p")
                .is_some()
        );
        // A wait that has passed makes room first.
        tokio::time::advance(Duration::from_secs(102)).await;
        memory.remember("new", wait(10));
        assert_eq!(memory.lock().len(), MAX_ENDPOINTS - 1);
    }
}
