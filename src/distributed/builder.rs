//! [`DistributedCacheBuilder`]: the settings of a [`DistributedCache`] and their checks.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::breaker::Breaker;
use super::clock::WallClock;
use super::seal::{Sealing, SealingKey};
use super::stats::Counters;
use super::{DistributedCache, Shared, TokenStore};
use crate::error::ConfigError;

const DEFAULT_PREFIX: &str = "tower-identity";
/// Tens of milliseconds: a store in the same region answers in one or two; a cold process
/// waits at most this long per call before asking the identity provider itself.
const DEFAULT_BUDGET: Duration = Duration::from_millis(50);
/// How soon a dead holder is replaced: a live one renews its lease while its request runs,
/// however long that takes.
const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// Two token requests at their default deadline (30 s over all attempts, throttling waits
/// included): a holder's request, and the next holder's after the first one failed. A waiter
/// that gave up sooner would ask a slow or throttling provider alongside the holder.
const DEFAULT_WAIT_LIMIT: Duration = crate::transport::DEFAULT_TOTAL_TIMEOUT.saturating_mul(2);
const DEFAULT_FAILURES: u32 = 3;
const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(30);

/// Settings for a [`DistributedCache`]; see [`DistributedCache::builder`].
pub struct DistributedCacheBuilder {
    store: Arc<dyn TokenStore>,
    prefix: String,
    key: Option<SealingKey>,
    plaintext: bool,
    budget: Duration,
    lease: Duration,
    wait_limit: Duration,
    failures: u32,
    open_for: Duration,
}

impl DistributedCacheBuilder {
    pub(super) fn new(store: Arc<dyn TokenStore>) -> Self {
        Self {
            store,
            prefix: DEFAULT_PREFIX.to_owned(),
            key: None,
            plaintext: false,
            budget: DEFAULT_BUDGET,
            lease: DEFAULT_LEASE,
            wait_limit: DEFAULT_WAIT_LIMIT,
            failures: DEFAULT_FAILURES,
            open_for: DEFAULT_OPEN_FOR,
        }
    }

    /// The namespace of every key (`{prefix}:{…}:token`), so that several applications can
    /// share one store. Default: `tower-identity`. No braces (they would break the hash tag).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Seals every entry with this key (AES-256-GCM). Required unless
    /// [`plaintext_at_rest`](Self::plaintext_at_rest) is chosen.
    pub fn sealing_key(mut self, key: SealingKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Stores tokens in clear: anyone who can read the store can then use them. Only for a
    /// store that is itself as protected as the tokens it holds. The store's client then
    /// holds them in clear too, in buffers the cache cannot zeroize (with `RedisTokenCache`,
    /// the `redis` crate's command and read buffers), where a sealed entry leaves only
    /// ciphertext there. Nor are the fleet's failure and throttle marks authenticated (a sealed
    /// cache checks a MAC under its key): anyone who can write to the store can hold every
    /// process's token requests back for up to an hour with a throttle mark.
    pub fn plaintext_at_rest(mut self) -> Self {
        self.plaintext = true;
        self
    }

    /// How long any one store call may take before the process stops waiting for it and acts
    /// on its own. Default: 50 ms.
    pub fn budget(mut self, per_call: Duration) -> Self {
        self.budget = per_call;
        self
    }

    /// How long a lease lasts unless renewed: the longest the others wait for a holder that
    /// died before one of them takes over. A live holder renews it every third of it while its
    /// token request runs (a store without [`TokenStore::renew_lease`] does not: there, keep
    /// the lease above the time a token request takes, or a second process asks too).
    /// Default: 10 s. A store may cap a longer one at what it can keep (`RedisTokenCache`:
    /// 100 years).
    pub fn lease(mut self, ttl: Duration) -> Self {
        self.lease = ttl;
        self
    }

    /// The longest a process that lost the lease waits for another's token, in all, before it
    /// asks the identity provider itself, however long the holder keeps its lease renewed.
    /// Within it the process waits for as long as a lease is held, and takes the lease itself
    /// when it is free (the holder gave it back after a failure, or died and it expired).
    /// Default: 60 s, two token requests at their default deadline (30 s). `Duration::MAX`
    /// means no limit: the process waits until a holder publishes or it takes the lease.
    ///
    /// A holder renews its lease for `wait_limit` at most, and never for more than 10 minutes:
    /// a request still running then is taken for hung, its lease runs out (within
    /// [`lease`](Self::lease)), and a waiting process takes it and asks. So one hung holder
    /// cannot hold the fleet for good, even under `Duration::MAX`.
    pub fn wait_limit(mut self, limit: Duration) -> Self {
        self.wait_limit = limit;
        self
    }

    /// After `failures` store calls in a row fail or outlive the budget, the store is not
    /// asked for `open_for`. Default: 3, 30 s. `Duration::MAX` keeps it open for the process's
    /// life once it opens.
    ///
    /// With [`RedisTokenCache`](super::RedisTokenCache), a call that gives up waiting on a
    /// connection attempt another call started is not counted (a cold process asking for
    /// several tokens at once over a connection slower to set up than the budget). That covers
    /// every connection the store makes: the first, a new one after an attempt failed, and a
    /// new one after a connection dropped (one failure per drop: the call that found it
    /// dropped, or over RESP3, where Redis's notice comes first, the first call that fails on
    /// it or gives up waiting on the new one; a call safe to repeat that finds it dropped and
    /// gets its answer over the new connection within its budget counts nothing). Against an address that never answers (black-holed),
    /// only the call that starts an attempt counts, one per attempt, and an attempt is given up
    /// after 5 s: the breaker opens about (`failures` − 1) × 5 s after the first call (some
    /// 10 s at the defaults), and every call until then spends the whole budget. When the
    /// address goes silent under a connection already made: within about 2 s if calls come
    /// faster than that (each sent on the silent connection counts while the store's `PING`
    /// of it waits), else some 2 s later than above (the attempt that replaces the silent
    /// connection is started by the `PING`, not by a call, and counts for none).
    pub fn breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.failures = failures;
        self.open_for = open_for;
        self
    }

    /// Checks the settings and builds the cache.
    pub fn build(self) -> Result<DistributedCache, ConfigError> {
        let fail = |m: &str| Err(ConfigError::new(format!("DistributedCache: {m}")));
        let sealing = match (self.key, self.plaintext) {
            (Some(key), false) => Sealing::Sealed(key),
            (None, true) => Sealing::Plaintext,
            (None, false) => {
                return fail(
                    "no sealing key: entries are bearer credentials and are sealed at rest; \
                     give one with `sealing_key(SealingKey::from_env(…)?)`, or choose \
                     `plaintext_at_rest()` for a store as protected as the tokens",
                );
            }
            (Some(_), true) => {
                return fail("both a sealing key and `plaintext_at_rest()` were given; choose one");
            }
        };
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return fail("the prefix must be non-empty and without `{` or `}`");
        }
        for (name, value) in [
            ("budget", self.budget),
            ("lease", self.lease),
            ("wait_limit", self.wait_limit),
            ("breaker's open_for", self.open_for),
        ] {
            if value.is_zero() {
                return fail(&format!("the {name} is zero; give a positive duration"));
            }
        }
        if self.failures == 0 {
            return fail("the breaker's failures is zero; give at least 1");
        }
        Ok(DistributedCache {
            shared: Arc::new(Shared {
                store: self.store,
                prefix: self.prefix,
                sealing,
                lease: self.lease,
                wait_limit: self.wait_limit,
                breaker: Breaker::new(self.budget, self.failures, self.open_for),
                stats: Counters::default(),
                holder: uuid::Uuid::new_v4().to_string(),
                acquisitions: std::sync::atomic::AtomicU64::new(0),
                clock: WallClock::now(),
                warned_unreadable: AtomicBool::new(false),
                throttles: Default::default(),
            }),
        })
    }
}

impl fmt::Debug for DistributedCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributedCacheBuilder")
            .field("store", &self.store)
            .field("prefix", &self.prefix)
            .field("sealing_key", &self.key)
            .field("plaintext_at_rest", &self.plaintext)
            .field("budget", &self.budget)
            .field("lease", &self.lease)
            .field("wait_limit", &self.wait_limit)
            .field("failures", &self.failures)
            .field("open_for", &self.open_for)
            .finish()
    }
}
