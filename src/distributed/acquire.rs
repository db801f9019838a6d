//! The fleet-wide acquisition: store lookup, lease, publish; or wait for the holder.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;
use zeroize::Zeroizing;

use super::Shared;
use super::key::EntryKey;
use super::seal::Unopened;
use super::store::{LeaseTtl, MAX_ENTRY_BYTES, MAX_MARK_BYTES};
use crate::error::{Cause, CredentialError, ProviderDetails};
use crate::refresh::RefreshPolicy;
use crate::token::AccessToken;

/// The first wait of a process that lost the lease; doubled per poll up to [`LAST_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(10);
/// Polls stay this frequent at most: a holder's token is seen within a quarter second.
const LAST_POLL: Duration = Duration::from_millis(250);
/// A holder renews its lease this many times per lease: two renewals can fail (each given up
/// after the budget) before the lease runs out under a live holder.
const RENEWALS_PER_LEASE: u32 = 3;
/// How long a holder's failure mark lasts: long enough for every waiter to see it at its next
/// poll (every 250 ms at most, the mark read with the token), short enough that it says
/// nothing about a later acquisition.
const FAILURE_MARK: Duration = Duration::from_secs(5);
/// A throttle mark under the failure mark's key, as the release before throttle marks had
/// their own key wrote it, starts with this: it is no refusal (a failure mark is a holder id
/// alone, a UUID, a dot and a number), and says nothing of the wait.
const OLD_THROTTLE_MARK: &str = "throttled:";
/// A throttle mark lasts the provider's `Retry-After`, this long at most (as a credential
/// remembers one: larger values mean "much later").
const LONGEST_THROTTLE: Duration = crate::transport::MAX_RETRY_AFTER;
/// A holder renews its lease for this long at most, whatever `wait_limit` says (a
/// `wait_limit(Duration::MAX)` would otherwise let one hung request hold the fleet's lease for
/// good): a token request has a deadline of 30 s by default, throttling waits included, so
/// one still running after 10 minutes is stuck, and the lease is left to run out for another
/// process to ask.
const LONGEST_HOLD: Duration = Duration::from_secs(10 * 60);
/// A lease with more time left than twice the cache's `lease` and this was not written by a
/// live cache, which renews its lease to `lease` at most: no holder will fill it. The slack
/// tolerates a fleet whose processes were configured with leases that differ somewhat.
const STRAY_LEASE_SLACK: Duration = Duration::from_secs(60);
/// Renewals come no more often than this, however short the lease: never a busy loop.
const FASTEST_RENEWAL: Duration = Duration::from_millis(1);

/// What an acquisition's looks at the store have seen: whether one reported a value that does
/// not open (only its first look that finds one does, counted as a store error, logged; later
/// looks, at each poll while it waits, find the same value and stay quiet), and the failure
/// mark its first look found, if any: only a mark written since (another holder id) tells of
/// a failure of the holder this acquisition waits for.
#[derive(Default)]
struct Looks {
    /// The credential acquiring, named in the error a throttle mark answers.
    credential: &'static str,
    reported_unreadable: bool,
    /// The time left of a lease no live cache wrote, if the last look found one (see
    /// [`Shared::is_stray`]).
    stray_lease: Option<LeaseTtl>,
    /// `None` before the first look; then the mark it found, if any.
    first_mark: Option<Option<Vec<u8>>>,
    /// Whether the acquisition is a slot's renewal ([`crate::refresh::in_a_renewal`]): its
    /// slot holds a valid token and nobody waits for it. A first acquisition (its callers
    /// wait) is handed a stored token due for renewal at once instead while another process
    /// holds the lease.
    renewal: bool,
    /// Whether this acquisition holds the lease (its look after taking it): the lease it
    /// finds is its own, and nobody else is renewing.
    leased: bool,
    /// The last token a look found due for renewal but valid: the
    /// answer, while it is valid, to a request that fails in a way that is not the
    /// provider's final refusal (see [`Shared::or_due`]).
    due: Option<AccessToken>,
}

impl Looks {
    /// Whether `mark`, read now, was written since the first look (recorded here if this is
    /// it).
    fn is_new(&mut self, mark: Option<Vec<u8>>) -> bool {
        match &self.first_mark {
            None => {
                self.first_mark = Some(mark);
                false
            }
            Some(first) => mark.is_some() && mark != *first,
        }
    }
}

/// The store keys of the entry being acquired.
struct Keys<'a> {
    token: &'a str,
    failed: &'a str,
    lease: &'a str,
    throttled: &'a str,
}

/// The fleet's throttles this process has read (or caused), by entry: for
/// [`TRUSTED_THROTTLE`] after one is read (never past its end), the entry's acquisitions are
/// answered from here, without a store call; then the store is read again. At most
/// [`MAX_THROTTLED_ENTRIES`]; past that, the one trusted the shortest is forgotten first.
#[derive(Debug, Default)]
pub(super) struct FleetThrottles {
    known: std::sync::Mutex<Vec<Remembered>>,
    /// Whether a throttle mark no cache wrote was logged at WARN already.
    warned_stray: std::sync::atomic::AtomicBool,
    /// Whether a mark that does not verify was logged at WARN already.
    warned_unverified: std::sync::atomic::AtomicBool,
}

/// A throttle [`FleetThrottles`] remembers.
#[derive(Debug)]
struct Remembered {
    entry: String,
    status: http::StatusCode,
    /// The throttle's end, as read.
    end: Instant,
    /// Until when it is answered without a store read.
    trusted_until: Instant,
    /// Whose throttle it is, for the error's words.
    whose: Whose,
}

/// Which process the identity provider throttled, as a throttled error says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Whose {
    /// This process (a holder's own answer, or a mark one of its acquisitions wrote).
    This,
    /// Another process of the fleet (its throttle mark).
    Another,
}

/// A throttle mark with more time left than [`LONGEST_THROTTLE`] and this was not written by a
/// cache, which marks a throttle for an hour at most: it is ignored (a key set by hand, or by
/// another program, would otherwise block the fleet for as long as it says, silently). The
/// slack tolerates a store that reports a little more than was set, or, read from the end a
/// mark carries (a store that cannot tell a key's time left), a writer's clock somewhat ahead
/// of the reader's.
const STRAY_THROTTLE_SLACK: Duration = Duration::from_secs(60);

/// How long a throttle read from the store is answered from memory, without another read:
/// another process may publish a token meanwhile (and clear the mark), which a process that
/// trusted its memory for the whole wait (up to an hour) would not see, failing every request
/// while the store holds a token. The entry is read again at most this often during a throttle.
const TRUSTED_THROTTLE: Duration = Duration::from_secs(5);

/// Entries whose throttles one cache remembers (as `crate::throttle` bounds endpoints): a
/// credential allowed any tenant could otherwise be made to keep one for every tenant.
const MAX_THROTTLED_ENTRIES: usize = 64;

impl FleetThrottles {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Remembered>> {
        // Every write leaves the list whole: a panic elsewhere cannot leave it torn.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fleet's throttle of `entry` (its status and end), if one was read less than
    /// [`TRUSTED_THROTTLE`] ago and runs now.
    fn running(&self, entry: &str) -> Option<(http::StatusCode, Instant, Whose)> {
        let now = Instant::now();
        self.lock()
            .iter()
            .find(|known| known.entry == entry && now < known.trusted_until)
            .map(|known| (known.status, known.end, known.whose))
    }

    /// Remembers the throttle of `entry` until `end`, trusted for [`TRUSTED_THROTTLE`],
    /// replacing the one known.
    fn remember(&self, entry: &str, status: http::StatusCode, end: Instant, whose: Whose) {
        let now = Instant::now();
        let trusted_until = now
            .checked_add(TRUSTED_THROTTLE)
            .map_or(end, |trusted| trusted.min(end));
        let mut throttles = self.lock();
        throttles.retain(|known| known.entry != entry && now < known.trusted_until);
        if throttles.len() >= MAX_THROTTLED_ENTRIES {
            let first = throttles
                .iter()
                .enumerate()
                .min_by_key(|(_, known)| known.trusted_until)
                .map(|(i, _)| i);
            if let Some(first) = first {
                throttles.swap_remove(first);
            }
        }
        throttles.push(Remembered {
            entry: entry.to_owned(),
            status,
            end,
            trusted_until,
            whose,
        });
    }

    /// Forgets the throttle of `entry`: this process published a token for it.
    fn forget(&self, entry: &str) {
        self.lock().retain(|known| known.entry != entry);
    }
}

/// What the store holds for an entry.
enum Found {
    /// A token not due for renewal; or due but not expired while a throttle runs, or when
    /// the acquisition is not a renewal (see [`Shared::find`]).
    Usable(AccessToken),
    /// Nothing usable: no entry, one due for renewal (to a renewal), or one that did not
    /// open.
    Nothing,
    /// Nothing usable, and a holder's failure mark written since this acquisition's first
    /// look: the provider refused the holder it waited for.
    Refused,
    /// Nothing usable, and a holder's throttle mark (at any look): the provider asked the
    /// fleet to wait; the error to answer with, sending nothing.
    Throttled(CredentialError),
    /// The store failed (or the breaker is open): the process acts alone.
    Failed,
}

impl Shared {
    /// The token for `key`: a usable entry from the store, else the result of `idp` run by
    /// whichever process holds the lease (published for the others). `policy` is the slot's,
    /// so that an entry is renewed at the moment a slot holding it would renew it.
    pub(super) async fn acquire<Fut>(
        self: Arc<Self>,
        credential: &'static str,
        key: EntryKey,
        policy: RefreshPolicy,
        idp: Fut,
    ) -> Result<AccessToken, CredentialError>
    where
        Fut: Future<Output = Result<AccessToken, CredentialError>>,
    {
        let span = tracing::debug_span!("distributed_cache", entry = ?key);
        async move {
            let token_key = key.token();
            let failed_key = key.failed();
            let lease_key = key.lease();
            let throttled_key = key.throttled();
            let keys = Keys {
                token: &token_key,
                failed: &failed_key,
                lease: &lease_key,
                throttled: &throttled_key,
            };
            let mut looks = Looks {
                credential,
                renewal: crate::refresh::in_a_renewal(),
                ..Looks::default()
            };
            let result = self.acquire_looking(idp, &keys, policy, &mut looks).await;
            self.or_due(result, &looks)
        }
        .instrument(span)
        .await
    }

    /// [`acquire`](Self::acquire) for the entry's `keys`, its looks at the store recorded in
    /// `looks`.
    async fn acquire_looking<Fut>(
        &self,
        idp: Fut,
        keys: &Keys<'_>,
        policy: RefreshPolicy,
        looks: &mut Looks,
    ) -> Result<AccessToken, CredentialError>
    where
        Fut: Future<Output = Result<AccessToken, CredentialError>>,
    {
        // A throttle this process read less than 5 s ago is answered without reading the
        // store: every acquisition of a throttled entry would otherwise cost a store call
        // until its end. Past that the store is read again: a token published meanwhile
        // (the mark cleared) is taken within 5 s.
        if let Some((status, end, whose)) = self.throttles.running(keys.token) {
            return self.answer_throttled(throttled_error(looks.credential, status, end, whose));
        }
        match self.find(keys, policy, looks).await {
            Found::Usable(token) => return self.shared_hit(token),
            Found::Failed => return self.alone(idp, None).await,
            Found::Throttled(error) => return self.answer_throttled(error),
            // The first look records the mark it finds: never one written since.
            Found::Nothing | Found::Refused => {}
        }
        let holder = self.next_holder();
        // Measured as time waited, not as a deadline: a `wait_limit` past what the clock
        // can represent (`Duration::MAX`) then means no limit, never no wait.
        let start = Instant::now();
        let mut pause = FIRST_POLL;
        let mut lost = false;
        loop {
            let leased = self.breaker.call(
                "try_lease",
                || self.store.try_lease(keys.lease, &holder, self.lease),
                &self.stats,
            );
            match leased.await {
                Some(true) => {
                    // Another process may have published and released between our last
                    // look and this lease: look once more before asking the provider.
                    looks.leased = true;
                    match self.find(keys, policy, looks).await {
                        Found::Usable(token) => {
                            let release = || self.store.release(keys.lease, &holder);
                            self.breaker.call("release", release, &self.stats).await;
                            return self.shared_hit(token);
                        }
                        // The holder we waited for was refused and gave the lease back
                        // between two polls: the others ask on their own at their next
                        // poll; give the lease back and ask alone too.
                        Found::Refused => {
                            let release = || self.store.release(keys.lease, &holder);
                            self.breaker.call("release", release, &self.stats).await;
                            return self.refused_holder(idp, keys).await;
                        }
                        // Throttled since our last look: the mark lasts as long as the
                        // wait, so the lease goes back without a mark of ours.
                        Found::Throttled(error) => {
                            let release = || self.store.release(keys.lease, &holder);
                            self.breaker.call("release", release, &self.stats).await;
                            return self.answer_throttled(error);
                        }
                        Found::Nothing | Found::Failed => {}
                    }
                    return self.hold(idp, keys, &holder).await;
                }
                Some(false) if !lost => {
                    lost = true;
                    self.stats.lease_lost();
                }
                Some(false) => {}
                // The lease may be set all the same (a write applied, its answer late): the
                // holder's part, best-effort, so that nobody waits out `wait_limit` on a
                // lease no one fills. With the store down both calls are skipped or fail,
                // and the lease runs out. The release leaves a mark only if this process
                // did hold the lease (`release_with_mark`): one that never took it must
                // not send another holder's waiters to the provider.
                None => {
                    let alone = self.alone(idp, Some(keys));
                    let result = self.keeping_lease(alone, keys.lease, &holder).await;
                    self.give_back(&result, keys, &holder).await;
                    return result;
                }
            }
            // Nobody will fill a lease no cache wrote: waiting on it would cost every
            // acquisition `wait_limit`, for as long as the key is there.
            if let Some(seen) = looks.stray_lease {
                let lease_left = match seen {
                    LeaseTtl::Left(left) => format!("{left:?}"),
                    _ => "no expiry".to_owned(),
                };
                tracing::warn!(
                    entry = keys.lease,
                    lease_left = %lease_left,
                    our_lease = ?self.lease,
                    "distributed token cache: the entry's lease has more time left than \
                     this process's lease setting allows a cache (twice it and a minute); \
                     asking on our own instead of waiting for it. Likely a settings \
                     mismatch: processes of the fleet configured with different `lease` \
                     durations (make them agree); else a write to the key by something \
                     other than a cache"
                );
                return self.alone(idp, Some(keys)).await;
            }
            let left = self.wait_limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                tracing::debug!(wait_limit = ?self.wait_limit, "distributed token cache: the holder's token did not come in time");
                return self.alone(idp, Some(keys)).await;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = pause.saturating_mul(2).min(LAST_POLL);
            // Each poll reads the mark with the token: every waiter learns of the holder's
            // refusal at its next poll, none waits for the lease to come its way.
            match self.find(keys, policy, looks).await {
                Found::Usable(token) => return self.shared_hit(token),
                Found::Failed => return self.alone(idp, None).await,
                Found::Refused => return self.refused_holder(idp, keys).await,
                Found::Throttled(error) => return self.answer_throttled(error),
                Found::Nothing => {}
            }
        }
    }

    /// Answers an acquisition with the fleet's throttle (`error`), counted.
    fn answer_throttled(&self, error: CredentialError) -> Result<AccessToken, CredentialError> {
        self.stats.throttled();
        Err(error)
    }

    fn shared_hit(&self, token: AccessToken) -> Result<AccessToken, CredentialError> {
        self.stats.shared_hit();
        Ok(token)
    }

    /// `result`, unless it failed in a way that is not the identity provider's final refusal
    /// ([`is_final_refusal`]: a timeout, a connection failure, a 5xx, a throttle) while a look
    /// of this acquisition found a token due for renewal that is still valid: that token, as
    /// a slot whose renewal fails serves its own, with `now` as its `refresh_on` (a token due:
    /// the slot's spacing applies to its next renewal). A renewal of another token (the
    /// slot's own, got alone while the store was down: perhaps hours left) is not answered
    /// with it: the slot keeps its own, as when its renewal fails. Only a failure that passes
    /// is answered so (a timeout, a connection failure, a 5xx, a throttle), not the
    /// credential's own (a callback's error, `az` not signed in).
    fn or_due(
        &self,
        result: Result<AccessToken, CredentialError>,
        looks: &Looks,
    ) -> Result<AccessToken, CredentialError> {
        let error = match result {
            Ok(token) => return Ok(token),
            Err(error) => error,
        };
        let now = Instant::now();
        // A failure that passes: not a refusal, nor a failure of the credential itself (a
        // callback's error, `az` not signed in), which no stored token should hide.
        let passing = !is_final_refusal(&error)
            && (error.is_transient()
                || error.is_throttled()
                || error.is_timeout()
                || error.is_connect()
                || error
                    .status()
                    .is_some_and(|status| status.is_server_error()));
        match &looks.due {
            // A renewal replacing another token (its own, got alone, perhaps with hours left)
            // keeps it: the slot keeps its token when its renewal fails.
            Some(due) if looks.renewal && crate::refresh::inside_a_renewal(due) == Some(false) => {
                Err(error)
            }
            Some(due) if passing && !due.is_expired_at(now) => {
                tracing::debug!(
                    error = %error,
                    "distributed token cache: the request failed; the stored token due for \
                     renewal is still valid and answers"
                );
                self.shared_hit(due.clone().with_refresh_on(Some(now)))
            }
            _ => Err(error),
        }
    }

    /// This acquisition's lease holder id (see `Shared::holder`).
    fn next_holder(&self) -> String {
        let n = self.acquisitions.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n}", self.holder)
    }

    /// The lease holder: asks the identity provider, publishes (or marks its failure), gives
    /// the lease back.
    async fn hold<Fut>(
        &self,
        idp: Fut,
        keys: &Keys<'_>,
        holder: &str,
    ) -> Result<AccessToken, CredentialError>
    where
        Fut: Future<Output = Result<AccessToken, CredentialError>>,
    {
        self.stats.lease_won();
        self.stats.idp_call();
        let result = self.keeping_lease(idp, keys.lease, holder).await;
        if let Ok(token) = &result {
            self.publish(keys, token).await;
        }
        self.give_back(&result, keys, holder).await;
        result
    }

    /// Gives the lease back after the holder's request ended with `result`; a failed
    /// acquisition frees the lease too. A request the identity provider refused (see
    /// [`is_final_refusal`]) leaves the holder's mark, for [`FAILURE_MARK`], in the same store
    /// call ([`TokenStore::release_with_mark`](super::TokenStore::release_with_mark)): the
    /// waiters, seeing it, ask on their own at once instead of holding the lease, and none
    /// finds the lease free without the mark (it would hold the lease and ask for all, a turn
    /// in line). Without a mark (a holder that died, or a failure that may not be the others')
    /// the next to take the lease asks for all. The mark holds the holder's id, nothing of the
    /// error.
    ///
    /// A request the provider throttled ([`CredentialError::is_throttled`], with the
    /// `Retry-After` it came with) leaves a throttle mark instead, the same way, under the
    /// entry's throttle key, to expire after the wait asked ([`LONGEST_THROTTLE`] at most):
    /// until it expires, every process answers its acquisition with a throttled error at its
    /// first look or next poll, sending nothing, where each would otherwise take the lease in
    /// turn and send its own request into the throttle. The mark holds its status, its end
    /// in Unix ms and the holder's id; its end is the key's expiry, read from the store (no
    /// wall clock), the Unix end serving only a store that cannot tell a key's time left.
    /// Sealed, either mark carries a MAC under the fleet's key after its body
    /// ([`Sealing::mark`](super::seal::Sealing::mark)), and a mark that does not verify is
    /// none to a reader.
    async fn give_back(
        &self,
        result: &Result<AccessToken, CredentialError>,
        keys: &Keys<'_>,
        holder: &str,
    ) {
        let (lease_key, failed_key) = (keys.lease, keys.failed);
        match result {
            Err(error) if error.is_throttled() => {
                if let Some((status, wait)) = throttle_mark(error) {
                    let now = Instant::now();
                    let end = now.checked_add(wait);
                    // The end in Unix ms, for a store that cannot tell the mark's time left.
                    let end_ms = self.clock.followed().to_unix_ms(end.unwrap_or(now));
                    let body = format!("{}:{end_ms}:{holder}", status.as_u16());
                    let mark = self.sealing.mark(keys.throttled, body.as_bytes());
                    let release = || {
                        self.store
                            .release_with_mark(lease_key, holder, keys.throttled, &mark, wait)
                    };
                    let marked = self
                        .breaker
                        .call("release_with_mark", release, &self.stats)
                        .await;
                    // Remembered only when the call failed (or the breaker was open): a store
                    // that took the call keeps the mark, read at the next look, which serves a
                    // stored token still valid first (remembered now, this process's next
                    // acquisitions would answer the throttle for 5 s while the others were
                    // served that token). A call that succeeded without writing the mark (the
                    // lease lost to another holder, or a default `release_with_mark` that
                    // cannot read the lease back) is not remembered either: the next look
                    // finds the other holder's lease, or takes the lease and asks the
                    // credential, whose own memory of the `Retry-After` (each of this crate's
                    // HTTP credentials keeps one) answers it without a request.
                    if let (None, Some(end)) = (marked, end) {
                        self.throttles
                            .remember(keys.token, status, end, Whose::This);
                    }
                    return;
                }
            }
            Err(error) if is_final_refusal(error) => {
                let mark = self.sealing.mark(failed_key, holder.as_bytes());
                let release = || {
                    self.store
                        .release_with_mark(lease_key, holder, failed_key, &mark, FAILURE_MARK)
                };
                self.breaker
                    .call("release_with_mark", release, &self.stats)
                    .await;
                return;
            }
            Err(_) => tracing::debug!(
                "distributed token cache: the request failed in a way that may be this \
                 process's or brief; no failure mark, the next waiter asks for all"
            ),
            Ok(_) => {}
        }
        let release = || self.store.release(lease_key, holder);
        self.breaker.call("release", release, &self.stats).await;
    }

    /// The status and end of the throttle a throttle mark (`mark`: `{status}:{end in Unix
    /// ms}:{holder}`, its MAC verified and taken off, with `left` before it expires) tells of; `None` when `mark` is not one
    /// (empty: cleared by a publish), or neither the store nor the mark tells its end. The
    /// store's time left wins; the mark's end serves only a store that cannot tell one.
    fn throttled(
        &self,
        mark: &[u8],
        left: Option<Duration>,
    ) -> Option<(http::StatusCode, Instant, Whose)> {
        let mark = std::str::from_utf8(mark).ok()?;
        // The holder id is the last field (`{status}:{holder}` before marks carried an end):
        // this process's acquisitions hold as `{self.holder}.{n}`.
        let holder = mark.rsplit(':').next().unwrap_or_default();
        let whose = match holder.strip_prefix(self.holder.as_str()) {
            Some(rest) if rest.starts_with('.') => Whose::This,
            _ => Whose::Another,
        };
        let mut fields = mark.split(':');
        let status = http::StatusCode::from_bytes(fields.next()?.as_bytes()).ok()?;
        let wait = match left {
            // The store's expiry: no host's wall clock in it.
            Some(left) => left,
            // A store that cannot tell a key's time left: the end the mark carries, by this
            // host's clock, rather than no fleet throttle at all. A mark without one (a value
            // not a cache's) is none.
            None => {
                let end_ms: u64 = fields.next()?.parse().ok()?;
                let now_ms = self.clock.followed().to_unix_ms(Instant::now());
                Duration::from_millis(end_ms.checked_sub(now_ms)?)
            }
        };
        // Not a cache's mark (by either reckoning): ignored, WARN once per cache.
        if wait > LONGEST_THROTTLE.saturating_add(STRAY_THROTTLE_SLACK) {
            self.stray_throttle(wait);
            return None;
        }
        let wait = wait.min(LONGEST_THROTTLE);
        let end = Instant::now().checked_add(wait)?;
        if wait.is_zero() {
            return None;
        }
        Some((status, end, whose))
    }

    /// The body of the mark `value` read under `mark_key`, if it verifies (see
    /// [`Sealing::verified_mark`](super::seal::Sealing::verified_mark)); one that does not is
    /// none: WARN the first time per cache, DEBUG after. An empty mark (a throttle mark
    /// cleared by a publish, see [`TokenStore::put_clearing`](super::TokenStore::put_clearing))
    /// is none quietly.
    fn verified(&self, mark_key: &str, value: Vec<u8>) -> Option<Vec<u8>> {
        if value.is_empty() {
            return None;
        }
        let verified = self.sealing.verified_mark(mark_key, value);
        if verified.is_none() {
            let message = "distributed token cache: a mark does not verify under this cache's \
                           sealing key; ignored. Written by a process under another key name \
                           (a key rotation), by a release before marks were authenticated, or \
                           by something else with write access to the store";
            if self
                .throttles
                .warned_unverified
                .swap(true, Ordering::Relaxed)
            {
                tracing::debug!(mark = mark_key, "{message}");
            } else {
                tracing::warn!(mark = mark_key, "{message}");
            }
        }
        verified
    }

    /// A throttle mark with `left` to run, longer than a cache writes one: WARN the first
    /// time per cache, DEBUG after.
    fn stray_throttle(&self, left: Duration) {
        let message = "distributed token cache: the entry's throttle mark has more time left \
                       than a cache writes (an hour and a minute); ignored. Written by something \
                       other than a cache";
        if self.throttles.warned_stray.swap(true, Ordering::Relaxed) {
            tracing::debug!(throttle_left = ?left, "{message}");
        } else {
            tracing::warn!(throttle_left = ?left, "{message}");
        }
    }

    /// Asks on our own after the holder we waited for was refused (its mark is there): the
    /// others do the same, each with its own answer, instead of taking the lease in turn.
    async fn refused_holder<Fut>(
        &self,
        idp: Fut,
        keys: &Keys<'_>,
    ) -> Result<AccessToken, CredentialError>
    where
        Fut: Future<Output = Result<AccessToken, CredentialError>>,
    {
        tracing::debug!(
            "distributed token cache: the holder's request was refused; asking on our own"
        );
        self.alone(idp, Some(keys)).await
    }

    /// Runs `work` (the holder's token request) while renewing the lease `lease_key` for
    /// `holder` every third of the lease, so that the others keep waiting for as long as the
    /// request runs, not only for one lease. Renewing stops when `work` ends or is dropped (the
    /// process died, or gave up on it): the lease then expires as it would have. A renewal the
    /// store refuses (the lease expired and may be another's, or the store does not renew
    /// leases) ends the renewals; one that fails is tried again at the next tick, the lease
    /// possibly still ours. Renewals stop after `wait_limit`, or [`LONGEST_HOLD`] if that
    /// is shorter (see the comment inside).
    async fn keeping_lease<Fut: Future>(
        &self,
        work: Fut,
        lease_key: &str,
        holder: &str,
    ) -> Fut::Output {
        let every = self
            .lease
            .checked_div(RENEWALS_PER_LEASE)
            .unwrap_or(self.lease)
            .max(FASTEST_RENEWAL);
        // Never past `wait_limit`: by then every waiter has stopped waiting, and a request
        // that hangs (a user's assertion callback without a deadline) must not keep the
        // fleet's lease for good; nor past `LONGEST_HOLD`, for a `wait_limit` without end.
        let hold = self.wait_limit.min(LONGEST_HOLD);
        let started = tokio::time::Instant::now();
        let renew = async {
            loop {
                tokio::time::sleep(every).await;
                if started.elapsed() >= hold {
                    return std::future::pending::<std::convert::Infallible>().await;
                }
                let renew = || self.store.renew_lease(lease_key, holder, self.lease);
                if self.breaker.call("renew_lease", renew, &self.stats).await == Some(false) {
                    tracing::debug!(
                        "distributed token cache: the lease was not renewed (it expired, or the \
                         store does not renew leases); another process may ask too"
                    );
                    return std::future::pending::<std::convert::Infallible>().await;
                }
            }
        };
        tokio::select! {
            biased;
            output = work => output,
            never = renew => match never {},
        }
    }

    /// Asks the identity provider without the fleet; publishes when `publish_to` is given
    /// (the store works, the holder was only slow).
    async fn alone<Fut>(
        &self,
        idp: Fut,
        publish_to: Option<&Keys<'_>>,
    ) -> Result<AccessToken, CredentialError>
    where
        Fut: Future<Output = Result<AccessToken, CredentialError>>,
    {
        self.stats.idp_call();
        let result = idp.await;
        if let (Ok(token), Some(keys)) = (&result, publish_to) {
            self.publish(keys, token).await;
        }
        result
    }

    /// Stores `token` under the entry's token key until it expires, and clears its throttle
    /// mark: a usable token ends the fleet's wait.
    async fn publish(&self, keys: &Keys<'_>, token: &AccessToken) {
        let token_key = keys.token;
        let now = Instant::now();
        // The lifetime the token has left, on this process's monotonic clock: readers bound
        // the expiry by the entry's time left, so it must never be longer than this.
        let ttl = token
            .expires_on()
            .saturating_duration_since(token.caught_up(now));
        if ttl.is_zero() {
            return;
        }
        let Some(value) = self
            .sealing
            .seal(token_key, token, now, self.clock.followed())
        else {
            tracing::warn!(
                entry = token_key,
                "distributed token cache: the entry could not be sealed; not shared"
            );
            return;
        };
        if value.len() > MAX_ENTRY_BYTES {
            tracing::warn!(
                entry = token_key,
                bytes = value.len(),
                "distributed token cache: the entry is larger than readers accept (64 KiB); \
                 not shared"
            );
            return;
        }
        self.throttles.forget(token_key);
        let put = || {
            self.store
                .put_clearing(token_key, &value, ttl, keys.throttled)
        };
        self.breaker.call("put", put, &self.stats).await;
    }

    /// Looks `token_key` up, with the failure mark, the lease's time left and the throttle
    /// mark (one `get_with_throttle`); an entry is usable until the
    /// moment a slot that stored it when it was published would renew it, and its token
    /// carries that moment as its `refresh_on`. Its expiry is bounded by the time the store
    /// says it has left (see [`Sealing::open`](super::seal::Sealing::open)).
    async fn find(&self, keys: &Keys<'_>, policy: RefreshPolicy, looks: &mut Looks) -> Found {
        let token_key = keys.token;
        let get = || {
            self.store
                .get_with_throttle(token_key, keys.failed, keys.lease, keys.throttled)
        };
        let Some((((entry, mark), lease), throttle)) =
            self.breaker.call("get", get, &self.stats).await
        else {
            return Found::Failed;
        };
        // A mark longer than a cache writes (some 110 bytes) is none, whatever the store: a
        // `TokenStore` of the user's own need not bound what it reads as `RedisTokenCache`
        // does.
        let mark = mark.filter(|mark| mark.len() <= MAX_MARK_BYTES);
        let throttle = throttle.filter(|(mark, _)| mark.len() <= MAX_MARK_BYTES);
        // Sealed, a mark that does not verify was not written by this fleet's key: none (a
        // throttle mark set by anything with write access would stop the fleet's token
        // requests for an hour).
        let mark = mark.and_then(|mark| self.verified(keys.failed, mark));
        let throttle =
            throttle.and_then(|(mark, left)| Some((self.verified(keys.throttled, mark)?, left)));
        looks.stray_lease = self.is_stray(lease).then_some(lease);
        let throttled = throttle.and_then(|(mark, left)| self.throttled(&mark, left));
        // A throttle mark the release before throttle keys wrote under the failure mark's key
        // is no refusal: the waiter takes the lease and asks for all, as without a mark.
        let refusal = !mark
            .as_deref()
            .is_some_and(|mark| mark.starts_with(OLD_THROTTLE_MARK.as_bytes()));
        let refused = throttled.is_none() && looks.is_new(mark) && refusal;
        let credential = looks.credential;
        // A throttle is remembered only when no usable token answers: a publish may land
        // before the holder's mark, and a reader that got the token must not then answer the
        // entry's next acquisitions with the throttle.
        let nothing = || match throttled {
            Some((status, end, whose)) => {
                self.throttles.remember(token_key, status, end, whose);
                Found::Throttled(throttled_error(credential, status, end, whose))
            }
            None if refused => Found::Refused,
            None => Found::Nothing,
        };
        // A plaintext entry holds the token: the buffer is zeroized like every other copy.
        let (value, left) = match entry {
            None => return nothing(),
            Some((value, left)) => (Zeroizing::new(value), left),
        };
        let now = Instant::now();
        // Larger than a cache writes: unreadable, and not opened, whatever the store (only
        // `RedisTokenCache` leaves such a value unsent).
        let opened = if value.len() > MAX_ENTRY_BYTES {
            Err(Unopened::Unreadable)
        } else {
            self.sealing
                .open(token_key, &value, now, self.clock.followed(), left)
        };
        let stored = match opened {
            Ok(stored) => stored,
            Err(unopened) => {
                if !std::mem::replace(&mut looks.reported_unreadable, true) {
                    self.unreadable(token_key, unopened);
                }
                return nothing();
            }
        };
        // The jitter is drawn from the entry, not afresh: a slot handed this token renews at
        // `due`, and a new draw at that renewal's read could put the entry's time later, hand
        // the slot the same token back (a failed attempt, "The same token back" in
        // `crate::refresh`) and have it try again only 30 s on.
        let draw = entry_draw(token_key, stored.sealed_times);
        let due = policy.refresh_at_drawn(&stored.token, stored.stored_on, draw);
        if stored.token.is_expired_at(now) {
            nothing()
        } else if now >= due {
            match throttled {
                // Due, but still valid while the fleet waits out a throttle: served, as a
                // process holding it keeps serving its own (its renewals answered by the
                // throttle), not answered with the throttle while a valid token sits in the
                // store. It carries the throttle's end as its `refresh_on` (its expiry, if
                // sooner), for the slot to renew once the wait is over; the throttle is not
                // remembered, so the entry's next acquisitions read it again and serve it too.
                Some((_, end, _)) => {
                    let renew_on = end.min(stored.token.expires_on());
                    Found::Usable(stored.token.with_refresh_on(Some(renew_on)))
                }
                // Due, still valid, this process has none (its slot's first acquisition: its
                // callers wait for this answer), and another process holds the lease (is
                // renewing): served at once, as a slot in its window serves its own token while
                // one renewal runs. Waiting for the holder's token would have them wait for the
                // provider (a slow or failing one: up to `wait_limit`, then their own request)
                // while a valid token sits here. It carries `now` as its `refresh_on`: its slot
                // renews at its next request, in the background, and that renewal waits for the
                // holder's token (sending nothing), as a warm process's does. With no lease
                // held, this acquisition takes it and renews for the fleet: a fleet of
                // processes that each ask once would otherwise serve the token to its end and
                // none renew it.
                None if !looks.renewal
                    && !looks.leased
                    && matches!(lease, LeaseTtl::Left(_))
                    && !self.is_stray(lease) =>
                {
                    Found::Usable(stored.token.with_refresh_on(Some(now)))
                }
                // A renewal (its slot serves the token meanwhile) waits for the fleet's new
                // token, and a first acquisition renews; the due one answers only a request
                // that fails short of a refusal (`or_due`).
                None => {
                    looks.due = Some(stored.token);
                    nothing()
                }
            }
        } else {
            // The slot that takes the token computes its refresh time from the lifetime left
            // now, later than the fleet's for a token read late in its life (a shorter
            // window): handed the fleet's time as `refresh_on`, it renews with the fleet.
            // `due` already counts the token's own `refresh_on` (plus the jitter): the earlier
            // of the two could be past (`refresh_on` < now < `due`), and the slot would renew
            // at once, find this same token, count a failed attempt ("The same token back" in
            // `crate::refresh`) and do so again every 30 s until `due`.
            Found::Usable(stored.token.with_refresh_on(Some(due)))
        }
    }

    /// Whether a lease with `ttl` left was not written by a live cache: it has no expiry, or
    /// more time left than twice this cache's lease and [`STRAY_LEASE_SLACK`] (a cache
    /// renews its lease to `lease`, never more).
    fn is_stray(&self, ttl: LeaseTtl) -> bool {
        match ttl {
            LeaseTtl::NoExpiry => true,
            LeaseTtl::Left(left) => {
                left > self
                    .lease
                    .saturating_mul(2)
                    .saturating_add(STRAY_LEASE_SLACK)
            }
            LeaseTtl::Unknown => false,
        }
    }

    /// A value that does not open: a miss, counted; WARN the first time per cache. One sealed
    /// under another key name (the fleet rotating its key) is a miss only: DEBUG, counted in `other_key_misses`, not a store error.
    fn unreadable(&self, token_key: &str, unopened: Unopened) {
        if unopened == Unopened::OtherKey {
            self.stats.other_key_miss();
            let message = "distributed token cache: the entry is sealed under another key name \
                           (the fleet is rotating its sealing key); treated as a miss and replaced";
            tracing::debug!(entry = token_key, "{message}");
            return;
        }
        self.stats.store_error();
        let message = "distributed token cache: a stored value does not open (garbage, a value of \
                       another Redis type or over 64 KiB, another sealing key under the same name, \
                       another entry's value, sealed vs plaintext settings that differ between \
                       processes, or a plaintext value written before plaintext values named \
                       their entry); treated as a miss and replaced";
        if self.warned_unreadable.swap(true, Ordering::Relaxed) {
            tracing::debug!(entry = token_key, outcome = "store_error", "{message}");
        } else {
            tracing::warn!(entry = token_key, outcome = "store_error", "{message}");
        }
    }
}

/// A draw in `0..1` for the refresh jitter of the entry `token_key` whose sealed Unix times
/// (stored on, expires on) are `sealed_times`: the same at every read of that entry, whatever
/// the reader's clock or the store's time left (the instant a read maps the stored time to
/// moves with both), and on every host and toolchain (SHA-256, where std's `DefaultHasher`
/// leaves its algorithm unspecified: two builds could draw apart); another for the next entry
/// published.
fn entry_draw(token_key: &str, sealed_times: (u64, u64)) -> f64 {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    // The key's length first: no two inputs give the same bytes.
    context.update(&(token_key.len() as u64).to_be_bytes());
    context.update(token_key.as_bytes());
    context.update(&sealed_times.0.to_be_bytes());
    context.update(&sealed_times.1.to_be_bytes());
    let digest = context.finish();
    let mut first = [0u8; 8];
    for (to, from) in first.iter_mut().zip(digest.as_ref()) {
        *to = *from;
    }
    // The top 53 bits over 2^53: uniform in `0..1`, exact in an f64.
    let bits = u64::from_be_bytes(first) >> 11;
    #[expect(clippy::cast_precision_loss, reason = "53 bits fit an f64's mantissa")]
    let draw = bits as f64 / (1u64 << 53) as f64;
    draw
}

/// The status of the holder's throttled `error`, for its throttle mark, and how long the mark
/// lasts: the `Retry-After`, [`LONGEST_THROTTLE`] at most; `None` when there is no wait left.
fn throttle_mark(error: &CredentialError) -> Option<(http::StatusCode, Duration)> {
    let wait = error.retry_after()?.min(LONGEST_THROTTLE);
    if wait.is_zero() {
        return None;
    }
    let status = error
        .status()
        .unwrap_or(http::StatusCode::TOO_MANY_REQUESTS);
    Some((status, wait))
}

/// The throttled error answered, as `credential`, for the fleet's throttle (`status`) until
/// `end`, sending nothing; `whose` says which process the provider throttled.
fn throttled_error(
    credential: &'static str,
    status: http::StatusCode,
    end: Instant,
    whose: Whose,
) -> CredentialError {
    let wait = end.saturating_duration_since(Instant::now());
    let answered = match whose {
        Whose::This => "this process",
        Whose::Another => "another process of the fleet",
    };
    CredentialError::authentication_failed(
        credential,
        format!(
            "throttled: the identity provider answered {answered} HTTP {status} with a \
             Retry-After; no token request is sent for another {} s",
            wait.as_secs_f64().ceil()
        ),
    )
    .with_provider(ProviderDetails {
        status: Some(status),
        ..ProviderDetails::default()
    })
    .with_cause(Cause {
        transient: true,
        throttled_until: Some(end),
        ..Cause::default()
    })
}

/// Whether `error` is the identity provider's own final answer, the one every process of the
/// fleet would get for this entry: a 4xx refusal (`invalid_client`, `unauthorized_client`,
/// `invalid_scope` …), not worth trying again. Only such a failure is marked for the waiters
/// to ask on their own at once (throttling has a mark of its own: see `give_back`). Anything
/// else may be this host's (a connection, a timeout, its TLS roots, its assertion source) or
/// brief (408, 429 without a `Retry-After`, a 5xx that outlasted the retries without one):
/// there the next waiter holding the lease most likely succeeds for all, where twenty waiters
/// asking alone would be a burst of requests against a throttled or recovering provider.
///
/// A 4xx cannot tell the fleet's refusal from one host's: a stale federated token file
/// (AADSTS700024), a secret mid-rotation (AADSTS7000215), a skewed clock's assertion are
/// refused for this host alone, and marked all the same; its waiters then each ask on their
/// own (see the module docs).
fn is_final_refusal(error: &CredentialError) -> bool {
    let refused = error.status().is_some_and(|status| {
        status.is_client_error()
            && status != http::StatusCode::REQUEST_TIMEOUT
            && status != http::StatusCode::TOO_MANY_REQUESTS
    });
    refused
        && !error.is_transient()
        && !error.is_throttled()
        && !error.is_timeout()
        && !error.is_connect()
}

#[cfg(test)]
mod tests {
    /// The draw is SHA-256's, fixed for a fixed input on every host and toolchain: a golden
    /// value. (Before, std's `DefaultHasher`, whose algorithm may change between releases.)
    #[test]
    fn an_entrys_draw_is_fixed_for_its_key_and_times() {
        let draw = super::entry_draw("tower-identity:{abc}", (1_700_000_000, 1_700_003_600));
        assert_eq!(draw.to_bits(), GOLDEN, "{draw}");
        assert!((0.0..1.0).contains(&draw));
    }

    /// The draw's bits: SHA-256 of the input (as `entry_draw` lays it out), its first 53 bits over 2^53.
    const GOLDEN: u64 = 4_606_359_755_514_374_238;
}
