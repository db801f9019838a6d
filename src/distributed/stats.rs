//! The cache's counters, and the events that name each outcome.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a [`DistributedCache`](super::DistributedCache) did since it was built, over every
/// credential that uses it (see [`DistributedCache::stats`](super::DistributedCache::stats)).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Token requests that started no acquisition through the store: answered from a
    /// credential's in-memory cache, or joined an acquisition already running in this
    /// process. A request in the refresh window that starts the background renewal (it is
    /// answered with the cached token at once) is counted by that acquisition's outcome
    /// instead, so that each request is counted once.
    pub local_hits: u64,
    /// Acquisitions answered by a token another process (or this one, earlier) published.
    pub shared_hits: u64,
    /// Leases this process took: it then asked the identity provider for the fleet.
    pub leases_won: u64,
    /// Acquisitions that found the lease held by another process and waited for its token.
    pub leases_lost: u64,
    /// Times this process asked the identity provider (as the lease holder, alone after a
    /// store failure or the wait limit, or for a claims request).
    pub idp_calls: u64,
    /// Store calls that failed or outlived the budget, and values that did not open.
    pub store_errors: u64,
    /// Entries found sealed under another key name: misses while a key rotation rolls out
    /// (see [`SealingKey`](super::SealingKey)), not errors. A count that keeps growing after
    /// every process has the new key says some process still seals with another (or
    /// something else writes values that look sealed).
    pub other_key_misses: u64,
    /// Acquisitions answered with a throttled error from the fleet's throttle mark (read from
    /// the store, or remembered from an earlier read), sending nothing.
    pub throttled: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub(super) struct Counters {
    local_hits: AtomicU64,
    shared_hits: AtomicU64,
    leases_won: AtomicU64,
    leases_lost: AtomicU64,
    idp_calls: AtomicU64,
    store_errors: AtomicU64,
    other_key_misses: AtomicU64,
    throttled: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(super) fn local_hit(&self) {
        bump(&self.local_hits);
        tracing::debug!(outcome = "local_hit", "distributed token cache");
    }

    pub(super) fn shared_hit(&self) {
        bump(&self.shared_hits);
        tracing::debug!(outcome = "shared_hit", "distributed token cache");
    }

    pub(super) fn lease_won(&self) {
        bump(&self.leases_won);
        tracing::debug!(outcome = "lease_won", "distributed token cache");
    }

    pub(super) fn lease_lost(&self) {
        bump(&self.leases_lost);
        tracing::debug!(
            outcome = "lease_lost",
            "distributed token cache: waiting for the holder's token"
        );
    }

    pub(super) fn idp_call(&self) {
        bump(&self.idp_calls);
        tracing::debug!(outcome = "idp_call", "distributed token cache");
    }

    pub(super) fn store_error(&self) {
        bump(&self.store_errors);
    }

    pub(super) fn other_key_miss(&self) {
        bump(&self.other_key_misses);
    }

    pub(super) fn throttled(&self) {
        bump(&self.throttled);
        tracing::debug!(
            outcome = "throttled",
            "distributed token cache: the fleet is throttled for this entry; nothing sent"
        );
    }

    pub(super) fn snapshot(&self) -> CacheStats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            local_hits: read(&self.local_hits),
            shared_hits: read(&self.shared_hits),
            leases_won: read(&self.leases_won),
            leases_lost: read(&self.leases_lost),
            idp_calls: read(&self.idp_calls),
            store_errors: read(&self.store_errors),
            other_key_misses: read(&self.other_key_misses),
            throttled: read(&self.throttled),
        }
    }
}
