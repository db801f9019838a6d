//! A real [`TokenStore`] in memory, for the protocol tests: values and leases with TTLs on
//! tokio's clock, shared by the caches ("processes") of a test, with a switch that makes every
//! call hang or fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::HOUR;
use crate::distributed::{
    LeaseTtl, StoreError, TokenStore, ValueWithLease, ValueWithMark, ValueWithThrottle,
    ValueWithTtl,
};

/// How the store answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Healthy,
    /// Every call hangs (a stopped server).
    Hang,
    /// Every call fails at once (a refused connection).
    Fail,
    /// The next lease is taken, and its answer comes this late (a slow reply to a write that
    /// was applied); every other call is healthy.
    LateLeaseAnswer(Duration),
}

/// A real store in memory: values and leases with TTLs on tokio's clock.
#[derive(Debug)]
pub(super) struct MemoryStore {
    entries: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
    mode: Mutex<Mode>,
    /// How long each answer takes (a round trip to a Redis some way off).
    delay: Mutex<Duration>,
    calls: AtomicUsize,
}

impl MemoryStore {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::default(),
            mode: Mutex::new(Mode::Healthy),
            delay: Mutex::new(Duration::ZERO),
            calls: AtomicUsize::new(0),
        })
    }

    /// Every answer from now on comes `delay` after the call (its effect at once).
    pub(super) fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub(super) fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub(super) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub(super) fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.live(key)
    }

    pub(super) fn set_raw(&self, key: &str, value: &[u8]) {
        self.set_raw_for(key, value, HOUR);
    }

    /// Stores `value` under `key` for `ttl`, as a write by something other than a cache.
    pub(super) fn set_raw_for(&self, key: &str, value: &[u8], ttl: Duration) {
        self.entries
            .lock()
            .unwrap()
            .insert(key.to_owned(), (value.to_vec(), Instant::now() + ttl));
    }

    /// Removes `key`, as Redis does when it evicts a key under `maxmemory`.
    pub(super) fn remove(&self, key: &str) {
        self.entries.lock().unwrap().remove(key);
    }

    pub(super) fn keys(&self) -> Vec<String> {
        self.entries.lock().unwrap().keys().cloned().collect()
    }

    fn live(&self, key: &str) -> Option<Vec<u8>> {
        let mut entries = self.entries.lock().unwrap();
        match entries.get(key) {
            Some((_, until)) if Instant::now() >= *until => {
                entries.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }

    /// Counts the call and answers per the mode.
    /// The time `key` has left, if it is there.
    fn left(&self, key: &str) -> Option<Duration> {
        self.live(key)?;
        let until = self.entries.lock().unwrap().get(key)?.1;
        Some(until.saturating_duration_since(Instant::now()))
    }

    fn with_lease(&self, key: &str, mark_key: &str, lease_key: &str) -> ValueWithLease {
        let entry = self
            .live(key)
            .and_then(|value| Some((value, Some(self.left(key)?))));
        let lease = self
            .left(lease_key)
            .map_or(LeaseTtl::Unknown, LeaseTtl::Left);
        ((entry, self.live(mark_key)), lease)
    }

    fn answer<T: Send + 'static>(
        &self,
        healthy: impl FnOnce() -> T,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mode = *self.mode.lock().unwrap();
        let delay = *self.delay.lock().unwrap();
        match mode {
            Mode::Healthy | Mode::LateLeaseAnswer(_) => {
                let value = healthy();
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok(value)
                }
                .boxed()
            }
            Mode::Hang => std::future::pending().boxed(),
            Mode::Fail => async { Err(StoreError::msg("connection refused")) }.boxed(),
        }
    }
}

/// One handle per "process" on the shared store.
#[derive(Debug)]
pub(super) struct Handle(pub(super) Arc<MemoryStore>);

impl TokenStore for Handle {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        self.0.answer(|| self.0.live(key))
    }

    fn get_with_ttl<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<ValueWithTtl>, StoreError>> {
        self.0.answer(|| {
            let value = self.0.live(key)?;
            let until = self.0.entries.lock().unwrap().get(key)?.1;
            Some((value, Some(until.saturating_duration_since(Instant::now()))))
        })
    }

    /// One call, as `RedisTokenCache` reads both in one script.
    fn get_with_mark<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithMark, StoreError>> {
        self.0.answer(|| {
            let entry = self.0.live(key).and_then(|value| {
                let until = self.0.entries.lock().unwrap().get(key)?.1;
                Some((value, Some(until.saturating_duration_since(Instant::now()))))
            });
            (entry, self.0.live(mark_key))
        })
    }

    /// One call, as `RedisTokenCache` reads all three in one script.
    fn get_with_lease<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
        lease_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithLease, StoreError>> {
        self.0
            .answer(|| self.0.with_lease(key, mark_key, lease_key))
    }

    /// One step, as `RedisTokenCache`'s script: the throttle mark's time left is the store's.
    fn get_with_throttle<'a>(
        &'a self,
        key: &'a str,
        mark_key: &'a str,
        lease_key: &'a str,
        throttle_key: &'a str,
    ) -> BoxFuture<'a, Result<ValueWithThrottle, StoreError>> {
        self.0.answer(|| {
            let throttle = self
                .0
                .live(throttle_key)
                .and_then(|value| Some((value, Some(self.0.left(throttle_key)?))));
            (self.0.with_lease(key, mark_key, lease_key), throttle)
        })
    }

    /// One step, as `RedisTokenCache`'s script: the put, then the throttle mark deleted.
    fn put_clearing<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
        clear_key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.answer(|| {
            let mut entries = self.0.entries.lock().unwrap();
            entries.insert(key.to_owned(), (value.to_vec(), Instant::now() + ttl));
            entries.remove(clear_key);
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.answer(|| {
            self.0
                .entries
                .lock()
                .unwrap()
                .insert(key.to_owned(), (value.to_vec(), Instant::now() + ttl));
        })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let answer = self.0.answer(|| {
            if self.0.live(key).is_some() {
                return false;
            }
            self.0.entries.lock().unwrap().insert(
                key.to_owned(),
                (holder.as_bytes().to_vec(), Instant::now() + ttl),
            );
            true
        });
        let mut mode = self.0.mode.lock().unwrap();
        match *mode {
            Mode::LateLeaseAnswer(late) => {
                // Once: the next lease call is answered in time.
                *mode = Mode::Healthy;
                async move {
                    tokio::time::sleep(late).await;
                    answer.await
                }
                .boxed()
            }
            _ => answer,
        }
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.answer(|| {
            if self.0.live(key).as_deref() == Some(holder.as_bytes()) {
                self.0.entries.lock().unwrap().remove(key);
            }
        })
    }

    /// One step, as `RedisTokenCache`'s script: the mark only with a release.
    fn release_with_mark<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        mark_key: &'a str,
        mark: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.answer(|| {
            if self.0.live(key).as_deref() == Some(holder.as_bytes()) {
                let mut entries = self.0.entries.lock().unwrap();
                entries.remove(key);
                entries.insert(mark_key.to_owned(), (mark.to_vec(), Instant::now() + ttl));
            }
        })
    }

    fn renew_lease<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.0.answer(|| {
            let mut entries = self.0.entries.lock().unwrap();
            match entries.get_mut(key) {
                Some((value, until)) if Instant::now() < *until && value == holder.as_bytes() => {
                    *until = Instant::now() + ttl;
                    true
                }
                _ => false,
            }
        })
    }
}
