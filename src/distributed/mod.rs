//! A distributed token cache: a second level under a credential's in-process cache, shared by
//! every process of a fleet through a store such as Redis, so that a fleet makes one token
//! request per token lifetime instead of one per process.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_identity::distributed::{DistributedCache, SealingKey, TokenStore};
//! use tower_identity::{ClientSecretCredential, CredentialExt};
//!
//! # async fn run(store: impl TokenStore) -> Result<(), Box<dyn std::error::Error>> {
//! // `store`: a `RedisTokenCache` (feature `redis`) or any `TokenStore`.
//! let cache = DistributedCache::builder(store)
//!     .prefix("orders-api")
//!     .sealing_key(SealingKey::from_env("TOKEN_CACHE_KEY")?)
//!     .budget(Duration::from_millis(50))
//!     .build()?;
//! let credential = ClientSecretCredential::builder("tenant", "client", std::env::var("SECRET")?)
//!     .distributed_cache(cache.clone())
//!     .build()?;
//! let token = credential.get_token(["https://graph.microsoft.com/.default"]).await?;
//! println!("{:?}", cache.stats());
//! # let _ = token; Ok(()) }
//! ```
//!
//! # Contract
//!
//! * **Two levels.** A credential's in-memory cache answers first; a request it answers never
//!   touches the store. When it would acquire (no token, or its token is due for renewal),
//!   which already happens once per key per process, the acquisition asks the store first.
//! * **Shared hit.** An entry is used if it is not due for renewal by the rule the in-memory
//!   cache applies (the last 5 minutes of its life, the last half for short-lived tokens, or
//!   the provider's `refresh_in`), counted from when the entry was published: every process
//!   renews a shared token at the same moment (the token it takes carries that moment as its
//!   `refresh_on`, also when read late in its life), and none keeps a token it would itself
//!   renew (but during the fleet's throttle, and a process with no token while another renews: below). A refresh jitter, if the rule has one,
//!   is drawn from the entry (its key and the Unix times sealed in it, alike on every read
//!   and every host), not afresh at each read, nor from the instant a read maps its stored
//!   time to (that moves with the reader's clock and the store's time left): every read of an
//!   entry gives it the same refresh time, so a renewal at that time never finds the entry it
//!   renews still usable (but during a throttle).
//! * **A token due but valid serves a process that has none while another renews it.** An
//!   entry due for renewal but not expired answers a process with no token of its own (its
//!   slot's first acquisition, which its callers wait for: a new pod, a new scope) at once
//!   while another process holds the lease (is renewing it), its `refresh_on` now: its slot
//!   renews at its next request, in the background, and that renewal waits for the holder's
//!   token as below. So a slow or failing identity provider during the fleet's renewal (a
//!   holder's request taking 30 s, or failing with a 503) costs such a process nothing while
//!   the token is valid. With no lease held, it takes the lease and renews for the fleet, as
//!   any acquisition of a due entry does: handed the due token instead, a fleet of processes
//!   that each ask once (jobs, a scope used hourly) would serve it to its end with none
//!   renewing. An acquisition that asks and fails in a way that passes (a timeout, a
//!   connection failure, a 5xx, a throttle; not a refusal, nor the credential's own failure)
//!   is answered with the due token, still valid, as a slot whose renewal fails keeps its
//!   own; a renewal of another token (the slot's own, got alone while the store was down)
//!   keeps that one instead.
//! * **Single-flight across the fleet.** Otherwise the process takes the entry's lease
//!   ([`TokenStore::try_lease`], for [`lease`](DistributedCacheBuilder::lease), default
//!   10 s, under a holder id drawn at random for each cache and numbered per acquisition).
//!   The holder asks the identity provider, publishes the token (sealed, to expire with it)
//!   and gives the lease back, also when the request failed. The others poll the store
//!   (10 ms, doubling to 250 ms), trying the lease again on each poll, until a usable token
//!   appears, they take the lease themselves, a holder's refusal is marked (below), or
//!   [`wait_limit`](DistributedCacheBuilder::wait_limit) (default 60 s) has passed since they
//!   started waiting; then they ask the identity provider themselves and publish. Proactive
//!   renewal goes the same way.
//! * **A refusal is not waited out in turn.** A holder whose request the identity provider
//!   refused with a final answer (a 4xx such as `invalid_client` or `unauthorized_client`,
//!   neither transient nor throttled) gives the lease back leaving a mark
//!   (`{prefix}:{hash}:failed`, its holder id, for 5 s; sealed, with a MAC: below), both in
//!   one atomic step with `RedisTokenCache` ([`TokenStore::release_with_mark`], one script):
//!   a waiter never finds the lease free without the mark, which would have it hold the lease
//!   and ask for all, one more turn in line. The mark is written only with the release of a lease the process
//!   holds: one that never took it (its lease call failed) or whose lease ran out and went to
//!   another process leaves none, which the other holder's waiters would take for their
//!   holder's. A store without that method reads the lease, then releases it (compare and
//!   delete, always) and, only if it read this holder, puts the mark concurrently, the mark
//!   first, which is not atomic: over several connections the release may land first. Each poll of a waiter reads the mark with the
//!   token ([`TokenStore::get_with_mark`]); a mark written since the waiter started waiting
//!   (another holder id than its first look found) makes it ask on its own at once, and so
//!   does one found by a waiter that has just taken the lease (it gives the lease back):
//!   against a refused client, each process has its own answer one poll after the holder's,
//!   instead of taking the lease one after another, each refused in its turn. Any other
//!   failure but throttling (a timeout, a connection failure, a 5xx that outlasted the
//!   retries without a `Retry-After`: one host's trouble, or brief) leaves no mark: the next waiter takes the lease and asks for
//!   all, so a recovering provider gets one more request, not one per process. A waiter that
//!   takes over a lease that ran out (its holder died) finds no mark either and holds it for
//!   all. A process that starts acquiring after the failure takes the lease as usual.
//! * **Throttling is the fleet's.** A holder the identity provider throttled (its error
//!   [`is_throttled`](crate::CredentialError::is_throttled): a status the retries retry, 429
//!   or a 5xx, with a `Retry-After` longer than the retries wait or that outlasted them) gives
//!   the lease back leaving a throttle mark under a key of its own,
//!   `{prefix}:{hash}:throttled` (its status, its end in Unix ms and the holder id; sealed,
//!   with a MAC: below), in the same step ([`TokenStore::release_with_mark`]), to expire
//!   after the `Retry-After` (an hour at most).
//!   Until it expires, every process that looks (a waiter at its next poll, a process
//!   starting an acquisition at its first look) answers at once with a throttled error
//!   (`is_throttled`, `retry_after`: the mark's time left), sending nothing; a usable token in
//!   the store still answers first, and a publish of one ([`TokenStore::put_clearing`])
//!   deletes the mark, so a process that got a token during the wait ends it for the fleet.
//!   A stored token due for renewal but not expired (a holder throttled at its renewal
//!   leaves one) answers first too: a process holding it keeps serving its own (its
//!   renewals answered by the throttle), and one that starts meanwhile, its slot empty, is
//!   handed the stored token, its `refresh_on` the throttle's end (its expiry, if sooner),
//!   instead of failing every request for the wait. A renewal before the mark ends (a slot
//!   renews somewhat before its `refresh_on`) is answered by the same token, a failed attempt
//!   tried again 30 s later at one store read; a throttle that outlasts the token is answered
//!   from the token's expiry. A process remembers a throttle it read, or caused when its call
//!   to leave the mark failed, for 64 entries at most, and answers
//!   that entry's acquisitions from memory, without a store call, for 5 s after it read it
//!   (never past its end); then it reads the store again. A process that had read the mark
//!   before such a publish answers the throttle for 5 s at most after that read, and its
//!   next acquisition takes the published token; a process that had not read it takes the
//!   token at its first look. A throttle is remembered only by a look
//!   that found no usable token (a publish that lands before the holder's mark answers with
//!   its token, and is not taken for a throttle).
//!   The time left is the store's expiry of the mark (Redis's `PTTL`, read with the token:
//!   [`TokenStore::get_with_throttle`], one script), never a wall clock: hosts whose clocks
//!   disagree answer the same wait, and none sends into the throttle early. A mark with more
//!   time left than a cache writes (an hour and a minute) was not written by a cache: it is
//!   ignored, with a WARN the first time per cache. A store that cannot tell a key's time
//!   left (the default [`TokenStore::get_with_ttl`]) has the end the mark carries read
//!   instead, by the reader's wall clock, and an end more than an hour and a minute on is
//!   ignored the same way. Entra throttles per application and tenant, so every process
//!   of the fleet would be throttled too: one request into the throttle instead of one per
//!   process. Processes of a release before throttle keys read neither the key nor write it
//!   (they take the lease in turn, as without a mark, and their failure marks, under
//!   `…:failed`, leave a throttle alone); the failure mark is the holder id alone, as before
//!   throttle marks, and a `throttled:…` value the release before wrote there is no refusal.
//!   The limit: a managed identity's endpoint (IMDS, App Service's) throttles each host on
//!   its own, so there one host's wait holds the fleet back; such waits are short (seconds)
//!   and mostly waited out inside the request by the retries, but one the holder answers
//!   throttled with is marked all the same.
//!
//!   The limit: a final refusal is taken for the fleet's, but some 4xx answers are one host's
//!   alone: a stale federated token file (`AADSTS700024`, an expired assertion), a client
//!   secret mid-rotation that one host still sends (`AADSTS7000215`), an assertion signed by
//!   a host whose clock is off. If that host holds the lease, its mark sends every waiter to
//!   the identity provider on its own (each gets its own answer, most likely a token, and
//!   publishes it): that acquisition costs one request per waiting process instead of one
//!   for the fleet, though no other process's request fails for it. While one host's
//!   credential differs from the others' (a rotation not yet everywhere), each of its
//!   refusals as a holder costs that again.
//! * **The lease lives as long as the holder's request.** While its request runs, the holder
//!   renews its lease every third of the lease ([`TokenStore::renew_lease`]: compare and
//!   extend, so only a lease it still holds), so a provider that answers slowly or throttles
//!   (a `Retry-After` honoured by the retry loop) is asked by one process, however long that
//!   takes. Renewals stop when the request ends or its task is dropped: a holder that dies
//!   stops renewing, its lease expires within `lease`, and a waiting process takes it over.
//!   A holder renews for `wait_limit` at most, and 10 minutes at most whatever `wait_limit`
//!   says: a request running longer is hung, and its lease is left to run out.
//!   The bound every caller keeps: it waits for others at most `wait_limit` in all, renewed
//!   lease or not, then makes (at most) its own request, bounded by that request's own
//!   deadline (`RetryOptions::total_timeout`).
//! * **A lease no cache wrote is not waited for.** Each look reads the lease's time left with
//!   the token and the marks ([`TokenStore::get_with_lease`] within
//!   [`TokenStore::get_with_throttle`], one script). A cache's lease
//!   always expires, within `lease` (renewals set it to `lease`, never more); a lease key with
//!   no expiry, or more than twice `lease` and a minute left, was not written by a cache with
//!   this process's settings, and this process does not wait for its holder: the process asks on its own
//!   at once, publishes its token, and logs a WARN naming the key, the time left it saw and
//!   this process's `lease` (most likely a fleet whose `lease` settings disagree: make them
//!   agree; else a write by something other than a cache), instead of
//!   waiting `wait_limit` at every acquisition for as long as the key is there. Processes of
//!   a fleet whose `lease` settings differ by more than that take each other's leases for
//!   such keys. A store without `get_with_lease` (the default reports nothing of the lease)
//!   waits such a lease out.
//! * **Marks are authenticated when sealed.** With a [`SealingKey`], a failure or throttle mark
//!   carries an HMAC-SHA256 over its store key and its body, under a key derived from the
//!   sealing key; a mark that does not verify (written by anything without the key, sealed
//!   under another key name during a rotation, copied from another entry, or by a release
//!   before marks carried one) is none, with a WARN the first time per cache. So whoever can
//!   write to the store, but does not have the sealing key, cannot stop the fleet's token
//!   requests with a throttle mark (for up to an hour), nor send every waiter to the identity
//!   provider with a failure mark. Two limits. With the plaintext opt-out there is nothing to
//!   authenticate with: a throttle mark written by anyone with write access holds every process
//!   back for as long as it says (an hour and a minute at most; longer ones are ignored), so the
//!   store must be as protected as the tokens it holds in clear. Leases are not authenticated in
//!   either mode (the store interface reads a lease's time left, not its holder): a lease set by
//!   another writer costs each acquisition that finds it at most `wait_limit` of waiting before
//!   the process asks on its own (none, for one with more time left than a cache writes: above),
//!   and never fails a request.
//! * **Claims bypass it.** A request with claims (a CAE challenge) neither reads nor writes the
//!   store, as it bypasses the in-memory cache.
//! * **The store is never a point of failure.** Every store call has a
//!   [`budget`](DistributedCacheBuilder::budget) (default 50 ms). A call that fails or
//!   outlives it makes the process act alone for that acquisition (ask the identity provider,
//!   publish nothing). A lease call is the exception: its write may have been applied with the
//!   answer late, so the process also renews the lease while it asks, publishes its token and
//!   gives the lease back, best-effort, rather than leave the others waiting on a lease nobody
//!   fills. After 3 such failures in a row the [breaker](DistributedCacheBuilder::breaker)
//!   opens for 30 s (one WARN), during which the store is not asked; the first call that
//!   succeeds afterwards closes it (one INFO). With `RedisTokenCache`, a call that gave up
//!   waiting on a connection attempt another call started (the first connection, a new one
//!   after an attempt failed, or a new one after the connection dropped) is a miss, not a
//!   failure: only the call that started the attempt counts its wait, and after a drop, only
//!   the call that found the connection dropped (it starts the new attempt in the background)
//!   counts, not the other calls already sent on it; a call safe to repeat (any but taking a
//!   lease) that found it dropped runs again on the new connection within its budget, and
//!   counts nothing if that succeeds. Against an
//!   address that never answers (black-holed), one failure is counted per connection attempt,
//!   each given up after 5 s: the breaker opens about (`failures` − 1) × 5 s after the first
//!   call (some 10 s at the defaults), and until then every call spends the whole budget. No
//!   token request fails because the store did.
//! * **Sealed at rest.** Entries are sealed with AES-256-GCM under a [`SealingKey`], bound to
//!   the key's name and the entry's store key; the plaintext opt-out is explicit
//!   ([`plaintext_at_rest`](DistributedCacheBuilder::plaintext_at_rest)). A value that does not
//!   open (garbage, another key under the same name, another entry's value, the other mode;
//!   a value over 64 KiB, which is not opened, from any store (`RedisTokenCache` does not even
//!   read it, nor a value of another Redis type)) is a miss, counted as a store error, logged
//!   once per cache at WARN naming the entry's store key, and replaced by the next publish. One sealed under another key name (a key
//!   rotation rolling out, see [`SealingKey`]) is a miss only: DEBUG, counted in
//!   `CacheStats::other_key_misses`, not a store error.
//! * **Keys.** `{prefix}:{hash}:token`, `{prefix}:{hash}:lease`, `{prefix}:{hash}:failed`
//!   (a failure mark) and `{prefix}:{hash}:throttled` (a throttle mark; a mark over 1 KiB,
//!   which no cache writes, is none, from any store);
//!   the hash (SHA-256 of the authority's whole normalised URL (host, port and path), tenant, client id, identity, scope set and CAE flag)
//!   in braces is a Redis Cluster hash tag, so an entry's keys share a slot for a store over a cluster
//!   (a [`TokenStore`] of your own: `RedisTokenCache` talks to one endpoint, a single server
//!   or a cluster behind a proxy). Keys name no tenant, app or scope in clear.
//! * **Times.** Entries carry Unix seconds; each process maps them onto tokio's clock through
//!   the offset it read when the cache was built, moved on by any suspension of the machine
//!   since (which stops tokio's clock). Hosts' wall clocks may differ, so the time
//!   the entry has left in the store ([`TokenStore::get_with_ttl`], set from the token's
//!   relative lifetime when it was published) bounds what a reader derives: a reader never
//!   holds a shared token past the entry's end, whatever its clock says.
//! * **Figures.** [`DistributedCache::stats`] counts local hits, shared hits, leases won and
//!   lost, identity provider calls, store errors, acquisitions answered from the fleet's
//!   throttle and entries found sealed under another key name; DEBUG events (`outcome` = `local_hit`, `shared_hit`, `lease_won`,
//!   `lease_lost`, `idp_call`, `store_error`, `throttled`) inside a
//!   `distributed_cache` span naming the entry. Never a token.
//!
//! One cache can serve several credentials (their entries have different keys); its
//! counters add up over them.

mod acquire;
mod breaker;
mod builder;
mod clock;
mod key;
#[cfg(feature = "redis")]
mod redis;
mod seal;
mod stats;
mod store;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use builder::DistributedCacheBuilder;
pub(crate) use key::Identity;
#[cfg(feature = "redis")]
pub use redis::RedisTokenCache;
pub use seal::SealingKey;
pub use stats::CacheStats;
pub use store::{
    LeaseTtl, StoreError, TokenStore, ValueWithLease, ValueWithMark, ValueWithThrottle,
    ValueWithTtl,
};

use breaker::Breaker;
use clock::WallClock;
use key::EntryKey;
use seal::Sealing;
use stats::Counters;

use crate::error::CredentialError;
use crate::refresh::RefreshPolicy;
use crate::token::AccessToken;

/// A token cache shared by the processes of a fleet through a [`TokenStore`]; give it to a
/// credential's builder (`distributed_cache`). Cloning shares it. See the
/// [module docs](self) for its contract.
#[derive(Clone)]
pub struct DistributedCache {
    shared: Arc<Shared>,
}

/// What the clones of a cache share.
struct Shared {
    store: Arc<dyn TokenStore>,
    prefix: String,
    sealing: Sealing,
    lease: Duration,
    wait_limit: Duration,
    breaker: Breaker,
    stats: Counters,
    /// This cache's lease holder id: random, so two processes never share one. Each
    /// acquisition holds leases as `{holder}.{n}` ([`Shared::next_holder`]): two credentials
    /// over one cache can acquire one entry at once, and one's release must not free the
    /// other's lease.
    holder: String,
    /// Acquisitions made, for their holder ids.
    acquisitions: std::sync::atomic::AtomicU64,
    clock: WallClock,
    /// Whether an unreadable value was logged at WARN already.
    warned_unreadable: AtomicBool,
    /// The fleet's throttles this process knows of, answered without a store call.
    throttles: acquire::FleetThrottles,
}

impl DistributedCache {
    /// Starts a builder over `store`. A sealing key (or the plaintext opt-out) is required.
    pub fn builder(store: impl TokenStore) -> DistributedCacheBuilder {
        DistributedCacheBuilder::new(Arc::new(store))
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        self.shared.stats.snapshot()
    }
}

impl fmt::Debug for DistributedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        f.debug_struct("DistributedCache")
            .field("store", &shared.store)
            .field("prefix", &shared.prefix)
            .field("sealing", &shared.sealing)
            .field("budget", &shared.breaker.budget())
            .field("lease", &shared.lease)
            .field("wait_limit", &shared.wait_limit)
            .field("stats", &shared.stats.snapshot())
            .finish_non_exhaustive()
    }
}

/// A distributed cache as one credential uses it: the cache and the credential's part of the
/// entry keys. Held by the credential's [`TokenCache`](crate::cache::TokenCache).
#[derive(Clone, Debug)]
pub(crate) struct SharedLevel {
    cache: DistributedCache,
    identity: Arc<Identity>,
}

impl SharedLevel {
    pub(crate) fn new(cache: DistributedCache, identity: Identity) -> Self {
        Self {
            cache,
            identity: Arc::new(identity),
        }
    }

    /// A request for `tenant`, `scopes`, `cae` answered from memory.
    pub(crate) fn local_hit(&self, tenant: &str, scopes: &[String], cae: bool) {
        let _entered = self.entry_span(tenant, scopes, cae).entered();
        self.cache.shared.stats.local_hit();
    }

    /// A request that goes to the identity provider past the shared level (claims).
    pub(crate) fn bypassed(&self, tenant: &str, scopes: &[String], cae: bool) {
        let _entered = self.entry_span(tenant, scopes, cae).entered();
        self.cache.shared.stats.idp_call();
    }

    /// The `distributed_cache` span naming the entry, as an acquisition's. The entry (a
    /// SHA-256) is computed only when the span is enabled: a local hit costs nothing more
    /// without DEBUG logs.
    fn entry_span(&self, tenant: &str, scopes: &[String], cae: bool) -> tracing::Span {
        let span = tracing::debug_span!("distributed_cache", entry = tracing::field::Empty);
        if !span.is_disabled() {
            let shared = &self.cache.shared;
            let key = EntryKey::new(&shared.prefix, &self.identity, tenant, scopes, cae);
            span.record("entry", tracing::field::debug(&key));
        }
        span
    }

    /// The fleet-wide acquisition of the token for `tenant`, `scopes`, `cae`; `idp` is the
    /// credential's own acquisition, run only if this process is to ask. `credential` names
    /// the credential in an error the shared level answers itself (a throttle mark's).
    pub(crate) fn acquire<Fut>(
        &self,
        credential: &'static str,
        tenant: &str,
        scopes: &[String],
        cae: bool,
        policy: RefreshPolicy,
        idp: Fut,
    ) -> impl Future<Output = Result<AccessToken, CredentialError>> + Send + 'static
    where
        Fut: Future<Output = Result<AccessToken, CredentialError>> + Send + 'static,
    {
        let shared = Arc::clone(&self.cache.shared);
        let key = EntryKey::new(&shared.prefix, &self.identity, tenant, scopes, cae);
        shared.acquire(credential, key, policy, idp)
    }
}
