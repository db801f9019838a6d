//! The refresh slot: one token, the rules for renewing it, and single-flight acquisition.
//!
//! # Concurrency semantics
//!
//! * **Fresh** (more than the refresh window left and `refresh_on` not reached): callers get
//!   the cached token; the only shared state touched is one short uncontended mutex.
//! * **Refresh window** (≤ `window` left, or `refresh_on` reached, token still valid): one
//!   acquisition runs; callers that asked for it wait on it, and if it fails they get the
//!   still-valid cached token. After an attempt, the next one waits `retry_after_failure`
//!   (30 s) — a refresh that handed back the very token it was meant to replace counts as a
//!   failed attempt, so the window never turns into one call per request.
//! * **No valid token**: every caller waits on one acquisition and receives its result, the
//!   error included. An expired token is never returned.
//! * **Cancellation**: the acquisition runs in its own task. A caller that drops its future
//!   does not cancel it for the others, and its result is stored even if nobody waits.
//! * **Locks**: the state mutex is never held across an `.await` or any I/O.
//!
//! Time is tokio's clock, so tests pause and advance it.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::time::Instant;

use crate::error::CredentialError;
use crate::token::AccessToken;

/// Refresh when at most this much lifetime is left (azure-identity and azure-core: 300 s).
pub(crate) const DEFAULT_REFRESH_WINDOW: Duration = Duration::from_secs(300);
/// Minimum spacing between refresh attempts while the token is valid (azure-identity: 30 s).
pub(crate) const DEFAULT_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// The timing rules of a slot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RefreshPolicy {
    pub(crate) window: Duration,
    pub(crate) retry_after_failure: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            window: DEFAULT_REFRESH_WINDOW,
            retry_after_failure: DEFAULT_RETRY_AFTER_FAILURE,
        }
    }
}

impl RefreshPolicy {
    /// Whether a still-valid token should be renewed now.
    pub(crate) fn wants_refresh(&self, token: &AccessToken, now: Instant) -> bool {
        token.refresh_on().is_some_and(|at| now >= at)
            || token.expires_on().saturating_duration_since(now) <= self.window
    }
}

type Acquisition = Shared<BoxFuture<'static, Result<AccessToken, CredentialError>>>;

#[derive(Default)]
struct State {
    current: Option<AccessToken>,
    last_attempt: Option<Instant>,
    flight: Option<(u64, Acquisition)>,
    next_flight_id: u64,
}

/// One cached token and its single-flight acquisition.
pub(crate) struct TokenSlot {
    policy: RefreshPolicy,
    state: Mutex<State>,
}

/// What a caller of [`TokenSlot::get`] does after looking at the state.
enum Plan {
    Ready(AccessToken),
    Wait {
        acquisition: Acquisition,
        fallback: Option<AccessToken>,
    },
}

impl TokenSlot {
    pub(crate) fn new(policy: RefreshPolicy) -> Arc<Self> {
        Arc::new(Self {
            policy,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding this lock cannot leave the state half-written
        // (every write is a single assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached token if it is fresh; otherwise the result of the single acquisition that
    /// `acquire` starts (or that another caller already started). See the module docs.
    pub(crate) async fn get<F, Fut>(
        self: &Arc<Self>,
        acquire: F,
    ) -> Result<AccessToken, CredentialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, CredentialError>> + Send + 'static,
    {
        let plan = {
            let now = Instant::now();
            let mut state = self.lock();
            match state.current.clone() {
                Some(token) if !token.is_expired_at(now) => {
                    if !self.policy.wants_refresh(&token, now) {
                        Plan::Ready(token)
                    } else if let Some((_, acquisition)) = &state.flight {
                        Plan::Wait {
                            acquisition: acquisition.clone(),
                            fallback: Some(token),
                        }
                    } else if state
                        .last_attempt
                        .is_some_and(|at| now < at + self.policy.retry_after_failure)
                    {
                        Plan::Ready(token)
                    } else {
                        Plan::Wait {
                            acquisition: self.start(&mut state, acquire(), now),
                            fallback: Some(token),
                        }
                    }
                }
                _ => Plan::Wait {
                    acquisition: match &state.flight {
                        Some((_, acquisition)) => acquisition.clone(),
                        None => self.start(&mut state, acquire(), now),
                    },
                    fallback: None,
                },
            }
        };
        match plan {
            Plan::Ready(token) => Ok(token),
            Plan::Wait {
                acquisition,
                fallback,
            } => match acquisition.await {
                Ok(token) => Ok(token),
                Err(error) => match fallback {
                    Some(token) if !token.is_expired() => {
                        tracing::debug!(error = %error, "refresh failed; the cached token is still valid");
                        Ok(token)
                    }
                    _ => Err(error),
                },
            },
        }
    }

    /// Stores a token obtained outside the slot (a claims request that bypassed it).
    pub(crate) fn store(&self, token: AccessToken) {
        self.lock().current = Some(token);
    }

    /// The cached token, whatever its age (tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn current(&self) -> Option<AccessToken> {
        self.lock().current.clone()
    }

    /// Spawns the acquisition and records it; called with the state locked, so the task
    /// cannot finish (and clear the record) before it is written.
    fn start<Fut>(self: &Arc<Self>, state: &mut State, acquire: Fut, now: Instant) -> Acquisition
    where
        Fut: Future<Output = Result<AccessToken, CredentialError>> + Send + 'static,
    {
        state.last_attempt = Some(now);
        let id = state.next_flight_id;
        state.next_flight_id += 1;
        let guard = FlightGuard {
            slot: Arc::clone(self),
            id,
        };
        let task = tokio::spawn(async move {
            let result = acquire.await;
            guard.finish(&result);
            result
        });
        let acquisition = async move {
            task.await.unwrap_or_else(|join_error| {
                Err(CredentialError::authentication_failed(
                    "TokenSlot",
                    format!("the token acquisition task did not finish: {join_error}"),
                ))
            })
        }
        .boxed()
        .shared();
        state.flight = Some((id, acquisition.clone()));
        acquisition
    }
}

/// Clears the slot's in-flight record when the acquisition ends — normally, by panic, or by
/// runtime shutdown — so a dead acquisition is never joined.
struct FlightGuard {
    slot: Arc<TokenSlot>,
    id: u64,
}

impl FlightGuard {
    fn finish(&self, result: &Result<AccessToken, CredentialError>) {
        let mut state = self.slot.lock();
        if let Ok(token) = result {
            state.current = Some(token.clone());
        }
        Self::clear(&mut state, self.id);
    }

    fn clear(state: &mut State, id: u64) {
        if state.flight.as_ref().is_some_and(|(f, _)| *f == id) {
            state.flight = None;
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        Self::clear(&mut self.slot.lock(), self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const HOUR: Duration = Duration::from_secs(3600);

    fn token(name: &str, lifetime: Duration) -> AccessToken {
        AccessToken::new(name, Instant::now() + lifetime)
    }

    /// An acquisition that counts its calls and answers from a closure.
    fn counting<F>(
        calls: &Arc<AtomicUsize>,
        answer: F,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<AccessToken, CredentialError>> + use<F>
    where
        F: FnOnce(usize) -> Result<AccessToken, CredentialError> + Send + 'static,
    {
        let calls = Arc::clone(calls);
        move || {
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::task::yield_now().await;
                answer(n)
            }
            .boxed()
        }
    }

    fn failure() -> CredentialError {
        CredentialError::authentication_failed("Test", "provider down")
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_token_is_served_without_acquiring() {
        let slot = TokenSlot::new(RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        slot.store(token("t1", HOUR));
        let got = slot
            .get(counting(&calls, |_| Ok(token("t2", HOUR))))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "t1");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_cold_callers_share_one_acquisition_and_its_error() {
        let slot = TokenSlot::new(RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let slot = Arc::clone(&slot);
            let acquire = counting(&calls, |_| Err(failure()));
            tasks.push(tokio::spawn(async move { slot.get(acquire).await }));
        }
        for t in tasks {
            assert!(t.await.unwrap().unwrap_err().is_authentication_failed());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_window_refreshes_once_and_failure_returns_cached_token() {
        let slot = TokenSlot::new(RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        slot.store(token("old", Duration::from_secs(299)));
        let got = slot
            .get(counting(&calls, |_| Err(failure())))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "old");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Within 30 s of the failed attempt: no new attempt.
        tokio::time::advance(Duration::from_secs(29)).await;
        let got = slot
            .get(counting(&calls, |_| Err(failure())))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "old");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // After 30 s: one more attempt, which succeeds.
        tokio::time::advance(Duration::from_secs(1)).await;
        let got = slot
            .get(counting(&calls, |_| Ok(token("new", HOUR))))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "new");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_on_starts_the_window_early() {
        let slot = TokenSlot::new(RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        slot.store(
            token("old", HOUR).with_refresh_on(Some(Instant::now() + Duration::from_secs(60))),
        );
        slot.get(counting(&calls, |_| Ok(token("unused", HOUR))))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        tokio::time::advance(Duration::from_secs(60)).await;
        let got = slot
            .get(counting(&calls, |_| Ok(token("new", HOUR))))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "new");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_token_is_never_returned_even_within_the_failure_wait() {
        let slot = TokenSlot::new(RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        slot.store(token("old", Duration::from_secs(10)));
        // The attempt in the window fails: cached token returned.
        assert!(slot.get(counting(&calls, |_| Err(failure()))).await.is_ok());
        tokio::time::advance(Duration::from_secs(10)).await;
        // Expired, 10 s after the last attempt: the 30 s wait does not apply, the error does.
        let err = slot
            .get(counting(&calls, |_| Err(failure())))
            .await
            .unwrap_err();
        assert!(err.is_authentication_failed());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_caller_does_not_cancel_the_acquisition() {
        let slot = TokenSlot::new(RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let slow = {
            let calls = Arc::clone(&calls);
            move || {
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(token("slow", HOUR))
                }
                .boxed()
            }
        };
        let first = tokio::time::timeout(Duration::from_secs(1), slot.get(slow)).await;
        assert!(first.is_err(), "the first caller gave up");
        tokio::time::advance(Duration::from_secs(5)).await;
        tokio::task::yield_now().await;
        let got = slot
            .get(counting(&calls, |_| Ok(token("other", HOUR))))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "slow");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(slot.current().unwrap().secret().expose_secret(), "slow");
    }

    #[tokio::test(start_paused = true)]
    async fn panicking_acquisition_is_an_error_and_not_joined_again() {
        let slot = TokenSlot::new(RefreshPolicy::default());
        let err = slot
            .get(|| async { panic!("boom") }.boxed())
            .await
            .unwrap_err();
        assert!(err.message().contains("did not finish"), "{err}");
        let got = slot
            .get(|| async { Ok(token("ok", HOUR)) }.boxed())
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "ok");
    }
}
