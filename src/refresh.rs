//! The refresh slot: one token, the rules for renewing it, and single-flight acquisition.
//! Credentials use it through [`crate::cache`]; the bearer layer uses one per layer.
//!
//! # Concurrency semantics
//!
//! * **Fresh** (before the token's refresh time): callers get the cached token (except a
//!   stacked slot's renewal of that very token: see "Stacked slots").
//! * **Refresh window** (refresh time reached, token still valid): exactly one acquisition
//!   runs, and nobody waits for it. [`TokenSlot::get`] (credentials) and
//!   [`TokenSlot::lookup`] (the bearer layer) alike start it in the background, or leave the
//!   running one alone, and hand out the current token at once (DESIGN: callers keep getting
//!   the current token while exactly one refresh runs). Its outcome lands when it ends: the
//!   next caller gets the new token; a failure leaves the current one in place. So a slow or
//!   failing provider never adds latency while the token is valid.
//! * **Spacing**: a renewal (an acquisition started while a valid token is held) starts at
//!   least `retry_after_failure` (30 s) after the previous renewal *ended* — whether that one
//!   failed, succeeded, or handed back the very token it was meant to replace (a credential
//!   that kept its still-valid token because its own refresh failed). So a renewal is never
//!   followed by another within 30 s, whatever the new token's lifetime, and the window never
//!   turns into one call per request. Counting from the end makes two stacked slots agree (the
//!   layer's slot over a credential's): the outer attempt ends after the inner one (see
//!   below), so when the outer slot tries again the inner one's spacing has passed too, and
//!   30 s holds end to end.
//!   A first acquisition is not a renewal: a token whose provider asks for an early renewal
//!   (`refresh_in`) gets it.
//! * **The same token back**: a renewal that brings the token already held is a failed
//!   attempt (the entry and its timing stay, the spacing applies) — unless the answer says by
//!   itself that it is not due: its `refresh_on` and the start of the full window
//!   (`expires_on − 300 s`, neither shrunk nor jittered) are both still ahead. IMDS and App
//!   Service keep their token in a cache of their own and answer it again, with the lifetime
//!   it has left, when asked at half-life; msal then takes the answer and renews at half of
//!   what is left (+6 h, +3 h … for a 24 h token). Such an answer replaces the entry's value
//!   and timing and keeps its id (it is the same token), so a 24 h token costs a handful of
//!   requests, not one per 30 s from half-life to the window (about 1400). A credential handing back its cached token because its own renewal failed
//!   hands back a token that is due (the slot renewed it at its `refresh_on` or in its
//!   window), so that still counts as failed, as does the same token with under 300 s left.
//! * **Stacked slots**: a renewal's task is marked (a tokio task-local set around the
//!   acquisition's work), and [`TokenSlot::get`] called from a renewal — the layer's renewal
//!   asking its credential, whose slot is in its window too — joins or starts that slot's
//!   renewal and waits for it (falling back to the valid cached token if it fails) instead of
//!   answering at once. Nobody waits on the outer renewal, so this costs no caller anything,
//!   and the layer takes the credential's new token as soon as it exists; answered at once,
//!   it would get the token it holds, count a failed attempt, and send the old token for 30 s
//!   more. The mark carries the token the renewal replaces, and a slot whose token that is
//!   renews it even before its own refresh time (a layer's `refresh_window` of 600 s over a
//!   credential's 300 s), the spacing applying. It does so once per token: whatever that
//!   early renewal brings — a new token, the same one (a provider answering from a cache of
//!   its own: az, azd, IMDS, a cache file; the entry then stays as it was, timing included),
//!   an error — the slot does not renew that token early again, and the asker's later
//!   renewals get it at once, each a failed attempt, spaced, until this slot's own refresh
//!   time. So a wider window costs such a credential one call per token, not one per 30 s.
//!   A slot's first acquisition (its callers wait for it) is not marked. The mark
//!   belongs to the task: a credential reached through something that runs it in another
//!   task (tower's `Buffer`) answers the layer's renewal at once with its current token,
//!   which counts as a failed attempt, tried again after the spacing.
//! * **No valid token**: every caller waits on one acquisition and receives its result, the
//!   error included (but for a token stored meanwhile: see below). An expired token is never
//!   returned. A failure reaches that
//!   acquisition's waiters only: the next caller starts another (concurrent callers share
//!   one), unless the slot's token was rejected (next).
//! * **A rejected token** ([`TokenSlot::invalidate`]: the bearer layer's answer to a 401, a
//!   plain one or a claims challenge it could not answer) is not handed out by the slot
//!   again. The next caller acquires a replacement, which its concurrent callers share. If
//!   it fails, what follows depends on the failure:
//!   - a final one (not [`is_transient`](CredentialError::is_transient): a refusal such as
//!     `invalid_client`, a disabled account) is remembered for `retry_after_failure` (30 s)
//!     from its end, as a failed renewal is spaced: callers get its error at once and the
//!     credential is not asked;
//!   - a throttled one ([`is_throttled`](CredentialError::is_throttled)) whose wait has not
//!     passed is remembered the same way until the later of that and the end of the
//!     provider's wait, and the error
//!     (its waiters' and every later caller's) is throttled until then: its
//!     [`retry_after`](CredentialError::retry_after) reaches zero as the slot asks again;
//!   - any other transient one (no connection, a timeout, a 5xx without `Retry-After`, a
//!     `Retry-After` of 0 or past) is not remembered: it reaches that acquisition's waiters only and the next caller asks
//!     again, as in a cold slot (a machine woken past its token's expiry, its network not
//!     back yet, fails one request: see "A suspended machine");
//!   - nor is an acquisition cut off before the credential answered (it panicked, or its
//!     runtime shut down; see [`crate::flight`]), nor one that waited on such an acquisition
//!     of another slot: it reached its own waiters only.
//!
//!   So after a rejection a credential failing for good is asked at most once per 30 s (or
//!   per its provider's longer wait) however many callers come, and a working one once; a
//!   token coming in (an acquisition's, or a claims token [`store`](TokenSlot::store)d)
//!   ends the memory and the rejection. Without a rejection (a cold slot, an expired token)
//!   no failure is remembered, as above. A credential answering from a cache of its own
//!   hands back the token that was rejected (it has no way to be told to skip its cache
//!   without claims): the slot takes it as a new token, and it costs the credential one
//!   call (a cache lookup) per 401 it meets.
//! * **A token stored meanwhile** ([`TokenSlot::store`]: the bearer layer's answer to a claims
//!   challenge) stays when an acquisition that started before it ends: that acquisition was
//!   asked for less, and its token would meet the same challenge again. It is also the answer
//!   of that acquisition's waiters, whatever the acquisition brought, a failure included
//!   (requests waiting on a plain 401's replacement while a claims token comes in): nobody
//!   gets an error while the slot holds a valid token it could hand out. A failure so
//!   answered is not remembered (the stored token ended the rejection).
//! * **A hung acquisition** is cut off [`ACQUISITION_LIMIT`] (65 min) after it started: its
//!   waiters get a transient timeout error ([`is_timeout`](CredentialError::is_timeout)), so,
//!   after a rejected token, it is not remembered (as any transient failure asking for no
//!   wait), and the next caller with no valid token starts anew. A renewal so ended counts
//!   as a failed one: while its token is still valid (cut off before expiry, as under a
//!   `refresh_window` of 65 min or more), callers keep getting it and the next renewal
//!   starts once the spacing (30 s) has passed since the cut-off; once it has expired, the
//!   next caller starts anew at once. Without it a credential that never answers (a user's credential type, an HTTP
//!   client without the default 30 s deadline) held the slot for good: every caller after the
//!   token's expiry joined it and waited for ever. The limit is far above what the crate's
//!   own credentials take (each request has a deadline: the transport's 30 s, IMDS's 90 s, a
//!   tool's 10 s) because a device code sign-in waits for its user, up to its code's
//!   lifetime (an hour at most), and the layer's acquisition over it must not cut it off
//!   (that would abort the sign-in). The bearer layer's claims flights have the same limit
//!   (`bearer/source.rs`). The timer is made only if the work has not answered at its first
//!   poll: a credential in process that answers at once needs none, and on a runtime without
//!   timers meets no panic. A work that does wait there is not bounded (tokio cannot make the
//!   timer; see [`TokenSlot::timer_until`]). It is a tokio timer: while an acquisition runs, a
//!   paused clock (tests) jumps to it when the runtime has nothing else to do, as it would
//!   to an HTTP client's deadline.
//! * **An expired token is never stored**, however it comes in: an acquisition's outcome and
//!   a token [`TokenSlot::store`]d (a claims answer with `expires_in: 0`) pass the same check;
//!   refused, it is an error for its callers and the current entry stays (a valid token is
//!   not thrown away for one that cannot be sent).
//! * **Cancellation**: the acquisition runs in its own task ([`WhenAbandoned::RunOn`]). A
//!   caller that drops its future does not cancel it for the others, and its result is stored
//!   even if nobody waits — as for a renewal in the window, which nobody waits for.
//! * **Mechanism**: the acquisition is a [`SingleFlight`] (see [`crate::flight`] for its
//!   contract): the token, the spacing and the running acquisition sit under its one mutex,
//!   so deciding fresh / join / start, and storing an outcome as the acquisition's record
//!   ends, are each one critical section. A panicking acquisition is an error for its
//!   waiters and, for a renewal, counts as a failed attempt; after a rejected token it is
//!   not remembered (see above). The mutex is never held across
//!   an `.await` or any I/O, nor while code that is not the slot's runs: an acquisition is
//!   recorded under it, and its work made once it is released ([`crate::flight`]'s deferred
//!   work): the `token_acquisition` span (a subscriber may write output as it is made) and
//!   the caller's `acquire` (the layer's clones the credential, a user's type).
//! * **Generation**: a counter bumped whenever the slot changes in a way readers must notice
//!   (a new token, an invalidation, an acquisition ending). A reader that keeps its own copy of
//!   the token checks the counter with one atomic load instead of taking the lock.
//! * **Token ids**: every stored token gets an id unique in the process (a relaxed atomic
//!   counter; ids are never reused), so "drop the token with this id" is safe to ask of any
//!   slot: [`TokenSlot::invalidate`] acts only on the slot whose current token it is, and says
//!   whether it did. The bearer layer relies on this to keep only a token's id in each
//!   response future (`bearer/source.rs`, `invalidate`).
//!
//! # Refresh time
//!
//! Computed once per token, when it is stored, from the lifetime `L` it has left then:
//!
//! * the window is `min(window, L / 2)` (300 s for tokens living 10 minutes or more; a 60 s
//!   token is renewed 30 s before expiry, so it is reused for about 30 s rather than fetched
//!   per call);
//! * the renewal starts at `expires_on − window + jitter`, or at `refresh_on + jitter` if
//!   that is earlier, never after `expires_on`. The jitter is drawn uniformly in
//!   `0..jitter`, per token, so that many processes started together do not renew together;
//!   it shrinks in proportion when the window does. (The distributed cache, which judges a
//!   shared entry at each read, draws it from the entry and when it was stored instead: one
//!   entry is always given the same refresh time.)
//!
//! **A suspended machine.** Tokio's clock stops while the machine sleeps; a token's expiry does
//! not. Every comparison of an entry's times goes through its token's
//! [`caught_up`](AccessToken::caught_up), which counts how far the wall clock ran ahead since
//! the token was made (a minute or more), so a slot woken past its token's expiry acquires
//! anew and one woken in the window renews. [`TokenSlot::lookup`] hands its caller `recheck_at`
//! on tokio's clock, so the layer's clock reads and timer need no wall clock. The other side
//! of that: a suspension after a lookup goes unseen by the layer's clones (they compare
//! tokio's clock, or wait for the timer, which fires late by the time asleep) until the
//! resource answers 401 to the expired token, which drops it; the next request acquires, and
//! the credential's slot, which compares through its token, asks for a new one. So a machine
//! woken past its token's expiry fails one request per layer, not every request until the
//! credential's renewal. If that acquisition fails because the network is not back yet (a
//! transient failure), the failure is not remembered: the next request asks again.
//!
//! The spacing above still applies: a token whose refresh time comes sooner than 30 s after
//! the last renewal ended (lifetimes under a minute) is renewed at the end of the spacing or,
//! if it expires first, acquired anew when it expires. Time is tokio's clock, so tests pause and advance
//! it.
//!
//! # The recheck timer (the layer's fast path)
//!
//! [`TokenSlot::lookup`] tells its caller until when its answer holds (`recheck_at`). Reading
//! the clock on every request to compare with it costs more than everything else the bearer
//! layer does per request (about 30 ns on the x86-64 VM the benchmarks run on, where the layer
//! adds about 45 ns in all over a static header). So the slot keeps one timer task per slot
//! that bumps the generation `TIMER_LEAD` (5 s) before `recheck_at`, and a lookup answers
//! `timed: true` when that timer is armed: its callers then check the generation alone until
//! it changes. The timer task holds a guard that bumps the generation however the task ends —
//! it fired, it was replaced by a timer for a new deadline, its runtime shut down — so a
//! reader never trusts a deadline nobody watches. The lead absorbs a late timer (a busy
//! runtime): within `TIMER_LEAD` of `recheck_at`, and whenever no timer can be armed, lookups
//! answer `timed: false` and callers read the clock on each request as before. An armed
//! timer within `TIMER_SLACK` (1 s) of a lookup's deadline serves it: after a suspension each
//! lookup measures the time missed anew, a few nanoseconds differently each time.
//!
//! No timer is armed outside a tokio runtime or while tokio's clock is paused (tests): a
//! pending timer would make a paused clock jump to it whenever the runtime waits on socket
//! I/O. Nor on a current-thread runtime: it runs timers only inside `block_on`, after polling
//! the future it was given, so a program that enters it now and then would send a token its
//! timer was to retire, even past expiry; there callers read the clock. Nor on a runtime
//! built without timers (`enable_io` alone, say): tokio panics making the timer, and the
//! slot, told so once ([`TokenSlot::timer_until`]), makes none from then on (neither this
//! one nor an acquisition's limit). A lookup reads the
//! clock again before it trusts an armed timer: one that has fired, whose bump the caller
//! may already have read, can still look unfinished for a moment. A paused clock is recognised by reading the same instant twice in a row; a real clock
//! read twice differs (the read takes tens of nanoseconds at nanosecond resolution), and if it
//! ever did not, the only effect is the clock-reading path. Credentials' slots
//! ([`TokenSlot::get`]) never arm one.
//!
//! # Beside the slot: the answer the layer's clones and middleware share
//!
//! Each `BearerToken` clone keeps the last answer it got from [`TokenSlot::lookup`] and checks
//! it (generation, then the clock unless `timed`) before taking the slot's lock. A clone made
//! from a service that never served a request has none: when handlers clone a service kept
//! in their state for each request, every request would take the lock and read the clock.
//! So every lookup that finds a token also writes its answer into the layer's
//! `Source::current` (an `ArcSwapOption`, read without a lock), and a clone without an answer
//! of its own takes that one and checks it the same way. It is the same answer another clone
//! holds, so the rules are the same: stale once the generation moves. Two lookups racing can
//! leave the older answer there: either the generation has moved since, or it is the same
//! token with the earlier deadline (whose timer, if it was replaced, bumped the generation),
//! so the worst it costs is one lookup more. A clone whose own answer went stale takes the
//! shared one too, if it is fresh. Measured: a clone per request costs 1596
//! instructions instead of 1961, against 1373 for `SetRequestHeader` cloned the same way
//! (`hot_path_instructions`, `bearer_token_cloned`). The reqwest middleware, which keeps no
//! answer of its own, checks the shared one before each lookup and writes it after one the
//! same way: without it, every request through the middleware took the slot's lock and read
//! the clock.
//!
//! # Beside the slot: the bearer layer's per-thread spares
//!
//! A CAE request keeps its re-send state, and its request head in a buffer inside it, in one
//! box taken from and given back to its thread's spares (`bearer/spare.rs`): as many as the
//! thread had CAE requests in flight at once, up to 65, no lock, their buffers bounded in
//! size, emptied (and the head wiped) when given back, so no spare holds a service, a body or
//! a header value. A future that moves threads gives
//! its box to the thread that drops it.
//!
//! # Beside the slot: the other one-at-a-time mechanisms
//!
//! Each keeps its own contract in its module docs; in short:
//!
//! * **A credential's acquisitions** go through this slot; the slot's one flight is a
//!   [`SingleFlight`] ([`crate::flight`]: its lock order, what an abandoned flight does).
//! * **Local file I/O** that may hang runs on a detached thread, waited for 10 s at most
//!   from when it started (`crate::blocking_read`), and a runtime's shutdown never waits for
//!   it. A workload identity's token file and Azure Arc's key file are read one at a time
//!   per credential; a token cache file's steps (a lock attempt, a read, a write under the
//!   lock, a lock release, the keyring's signal file) run several at a time per file
//!   (`crate::blocking_read::steps`), a lock file that a cancelled call lets go of included.
//!   Either way, while one that overran has not returned, requests (for the cache file, its
//!   steps) are refused at once, the work not run (but for the keyring's signal file's touch
//!   and a lock file's removal, counted all the same); a write that overran may still land,
//!   and its error says so. The cache file's one exception: its directory is resolved when the
//!   credential is built, by the synchronous builder, on its caller's thread.
//! * **The fleet's acquisitions** of one token go through the distributed cache's lease
//!   (`crate::distributed`): one process asks the identity provider, the others poll the
//!   store for its token within their wait limit. A holder refused for good leaves a mark
//!   (5 s) that sends the others to the provider on their own at once, instead of taking the
//!   lease in turn; a throttled one leaves a throttle mark the others answer from, sending
//!   nothing, for the `Retry-After` (by Redis's clock), while a token still valid keeps being
//!   served. Each of its store calls is bounded by the cache's budget and counted by its
//!   breaker; no lock is held across one.
//!
//! # Tracing
//!
//! Each acquisition runs in a `token_acquisition` span at DEBUG (`credential`, `attempt`: the
//! slot's how-many-th acquisition, `renewal`), entered by its task, so what the credential
//! logs while acquiring is attributed to it. The span is made when an acquisition starts,
//! once the slot's lock is released, never when a fresh token is handed out: the bearer
//! layer's hot path makes none.

use std::future::Future;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{Cause, CredentialError};
use crate::flight::{Deferred, Flight, FlightLock, SingleFlight, WhenAbandoned, deferred};
use crate::token::{AccessToken, Secret};

/// Refresh when at most this much lifetime is left (azure-identity and azure-core: 300 s).
pub(crate) const DEFAULT_REFRESH_WINDOW: Duration = Duration::from_secs(300);
/// Minimum spacing between refresh attempts while the token is valid (azure-identity: 30 s).
pub(crate) const DEFAULT_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// How long an acquisition's work may run before it is cut off (see "A hung acquisition" in
/// the module docs): the longest device code sign-in (the code's lifetime, an hour at most),
/// and ten requests at the transport's default deadline (30 s) for what surrounds it (the
/// code request, the last poll, the cache writes) and room to spare. Everything else the
/// crate's credentials do ends well within it.
pub(crate) const ACQUISITION_LIMIT: Duration = crate::credential::device_code::MAX_CODE_LIFETIME
    .saturating_add(crate::transport::DEFAULT_TOTAL_TIMEOUT.saturating_mul(10));
/// How long before a lookup's `recheck_at` its timer fires (see the module docs): room for a
/// late timer on a busy runtime.
const TIMER_LEAD: Duration = Duration::from_secs(5);
/// How far apart an armed timer and a lookup's deadline may be for the timer to serve it:
/// fired up to this much late, it still fires 4 s before the deadline (inside `TIMER_LEAD`);
/// early, it only makes readers look again.
const TIMER_SLACK: Duration = Duration::from_secs(1);

/// The timing rules of a slot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RefreshPolicy {
    pub(crate) window: Duration,
    pub(crate) jitter: Duration,
    pub(crate) retry_after_failure: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            window: DEFAULT_REFRESH_WINDOW,
            jitter: Duration::ZERO,
            retry_after_failure: DEFAULT_RETRY_AFTER_FAILURE,
        }
    }
}

/// Whether `runtime` runs a timer on time while nobody polls the code that armed it: a
/// multi-thread runtime's workers do. A current-thread runtime runs timers only inside
/// `block_on`, and polls the future it was given before them, so a program that calls
/// `block_on` now and then would send the token the timer was to retire, past its expiry
/// even. Lookups there answer `timed: false`: callers read the clock.
fn timers_run_unattended(runtime: &tokio::runtime::Handle) -> bool {
    runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        || current_thread_timers_in_tests()
}

/// This module's tests arm timers on a current-thread runtime too: only there can they pause
/// tokio's clock once a timer is armed.
#[cfg(test)]
fn current_thread_timers_in_tests() -> bool {
    tests::CURRENT_THREAD_TIMERS.with(std::cell::Cell::get)
}

#[cfg(not(test))]
fn current_thread_timers_in_tests() -> bool {
    false
}

/// `duration × factor` for a factor in `0..=1`, without `mul_f64`'s panic near
/// `Duration::MAX` (the settings are the caller's: `refresh_jitter(Duration::MAX)`), where the
/// float product can round past the largest duration.
fn scaled(duration: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor.clamp(0.0, 1.0))
        .map_or(duration, |scaled| scaled.min(duration))
}

impl RefreshPolicy {
    /// When a token stored at `now` should be renewed, with a fresh jitter draw (see the
    /// module docs).
    pub(crate) fn refresh_at(&self, token: &AccessToken, now: Instant) -> Instant {
        self.refresh_at_drawn(token, now, fastrand::f64())
    }

    /// [`refresh_at`](Self::refresh_at) with the jitter's draw given, in `0..1`: a caller that
    /// judges the same token more than once (the distributed cache, at each read of a shared
    /// entry) draws it from the token, so that each judgement agrees with the last.
    pub(crate) fn refresh_at_drawn(&self, token: &AccessToken, now: Instant, draw: f64) -> Instant {
        let expires_on = token.expires_on();
        let lifetime = expires_on.saturating_duration_since(now);
        let window = self.window.min(lifetime.checked_div(2).unwrap_or_default());
        // The jitter keeps its share of the window: 60 s of 300 s stays a fifth. More jitter
        // than window would only push every renewal to the expiry.
        let jitter_bound = if self.window.is_zero() {
            Duration::ZERO
        } else {
            let share = window.as_secs_f64() / self.window.as_secs_f64();
            scaled(self.jitter.min(self.window), share)
        };
        let jitter = scaled(jitter_bound, draw);
        let lead = window.saturating_sub(jitter);
        // An instant before the clock's origin cannot be represented; the token is then
        // already inside its window.
        let by_window = expires_on.checked_sub(lead).unwrap_or(now);
        match token.refresh_on() {
            Some(at) => {
                let jittered = at.checked_add(jitter).unwrap_or(expires_on);
                by_window.min(jittered.min(expires_on))
            }
            None => by_window,
        }
    }

    /// Whether `token`, handed back by a renewal of the same token, says by itself that it
    /// is not due yet (see "The same token back" in the module docs): its `refresh_on` and
    /// the start of the full window, with no jitter and no shrinking, are both after `now`.
    /// The window is not shrunk to the lifetime left, since that would move it later at
    /// every answer.
    fn answer_not_due(&self, token: &AccessToken, now: Instant) -> bool {
        let by_window = token.expires_on().checked_sub(self.window);
        let due = match token.refresh_on() {
            Some(at) => by_window.map(|w| w.min(at)),
            None => by_window,
        };
        due.is_some_and(|at| now < at)
    }
}

/// What a slot holds: a token, possibly with things derived from it once (a header value).
pub(crate) trait SlotValue: Clone + Send + Sync + 'static {
    fn token(&self) -> &AccessToken;
}

impl SlotValue for AccessToken {
    fn token(&self) -> &AccessToken {
        self
    }
}

/// A stored token's number, unique in the process (not only per slot): a response future
/// keeps only this number, and a 401 finds the slot that still holds the token by it
/// (`bearer::source::invalidate`). Never zero, so an `Option` of something holding one is no
/// larger than it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TokenId(NonZeroU64);

impl TokenId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        // 2^64 ids are never used up; `MAX` only keeps the conversion total.
        Self(NonZeroU64::new(NEXT.fetch_add(1, Ordering::Relaxed)).unwrap_or(NonZeroU64::MAX))
    }
}

/// A stored value with its identity and timing.
#[derive(Clone, Debug)]
pub(crate) struct Entry<V> {
    pub(crate) value: V,
    /// Distinct per stored token in the whole process: lets a caller say "invalidate the
    /// token I used" to whichever slot holds it.
    pub(crate) id: TokenId,
    pub(crate) refresh_at: Instant,
    pub(crate) expires_on: Instant,
}

impl<V: SlotValue> Entry<V> {
    /// `now` on the clock of this entry's times: moved on by a suspension of the machine
    /// since its token was made ([`AccessToken::caught_up`]).
    fn seen_at(&self, now: Instant) -> Instant {
        self.value.token().caught_up(now)
    }
}

pub(crate) type Acquisition<V> = Flight<Entry<V>>;

/// What the slot keeps under its flight's lock.
struct State<V> {
    current: Option<Entry<V>>,
    /// When the last renewal ended.
    last_attempt: Option<Instant>,
    /// The current token was dropped by [`TokenSlot::invalidate`] (a resource rejected it)
    /// and no token has come in since: an acquisition failing now may be remembered (see "A
    /// rejected token" in the module docs).
    rejected: bool,
    /// The failure of the last acquisition while `rejected`, if it is remembered: the answer,
    /// without asking, until its end.
    failure: Option<Remembered>,
    /// The token a renewal started early was for, for a stacked slot's wider window (see
    /// "Stacked slots" in the module docs): not renewed early again, whatever that renewal
    /// brought.
    tried_early: Option<TokenId>,
    /// Tokens stored by [`TokenSlot::store`], counted: an acquisition that ends after one
    /// leaves it in place, even when it is the token the acquisition started from.
    stores: u64,
    /// Acquisitions started, for the span's `attempt`.
    acquisitions: u64,
    /// The recheck timer, when one is armed (see the module docs).
    timer: Option<Timer>,
}

/// A failure to replace a rejected token, answered until `until` (see "A rejected token" in
/// the module docs).
struct Remembered {
    /// As its callers get it: a throttled one's wait ends at `until`.
    error: CredentialError,
    until: Instant,
}

/// An armed recheck timer: the instant it fires at, and its task, aborted when this is
/// dropped (replaced by a timer for a new deadline, or the slot dropped).
struct Timer {
    at: Instant,
    task: tokio::task::AbortHandle,
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Held by a recheck timer's task: bumps the slot's generation when the task ends, however it
/// ends. Weak, so a pending timer keeps no slot alive.
struct BumpOnDrop<V>(std::sync::Weak<TokenSlot<V>>);

impl<V> Drop for BumpOnDrop<V> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.upgrade() {
            slot.generation.fetch_add(1, Ordering::Release);
        }
    }
}

/// Whether `now` is within `spacing` after `at` (an attempt that failed, or ended, then): no
/// new attempt yet. A spacing past the clock's range is taken as over.
pub(crate) fn within_spacing(at: Instant, spacing: Duration, now: Instant) -> bool {
    at.checked_add(spacing).is_some_and(|end| now < end)
}

tokio::task_local! {
    /// The token a slot's renewal is to replace, when the task runs one (set around every
    /// acquisition's work, `None` for a first acquisition): a credential's slot asked from
    /// there waits for its own renewal, and takes its token as due when it is the one being
    /// replaced (see "Stacked slots" in the module docs).
    static RENEWING: Option<Secret>;
}

/// Whether this task runs a slot's renewal: a valid token is held and nobody waits for the
/// outcome. `false` in a first acquisition (its callers wait for it) and outside any slot. The
/// distributed cache hands a first acquisition a stored token due for renewal at once, and
/// lets a renewal wait for the fleet's holder (`crate::distributed`).
pub(crate) fn in_a_renewal() -> bool {
    RENEWING.try_with(Option::is_some).unwrap_or(false)
}

/// Runs `work` as a slot's renewal of the token `replaced` runs it ([`in_a_renewal`] is
/// `true` there): for tests of what a renewal asks.
#[cfg(test)]
pub(crate) async fn as_renewal<F: Future>(replaced: &str, work: F) -> F::Output {
    RENEWING.scope(Some(Secret::new(replaced)), work).await
}

/// Whether this task is a slot's renewal (the layer's, asking its credential), and if so
/// whether it is renewing `token`.
pub(crate) fn inside_a_renewal(token: &AccessToken) -> Option<bool> {
    RENEWING
        .try_with(|renewing| renewing.as_ref().map(|replaced| replaced == token.secret()))
        .ok()
        .flatten()
}

/// The slot's state and its one flight, locked.
type Locked<'a, V> = FlightLock<'a, (), Entry<V>, State<V>>;

/// One cached token and its single-flight acquisition.
pub(crate) struct TokenSlot<V = AccessToken> {
    /// The credential (or layer), for the acquisition span.
    name: &'static str,
    policy: RefreshPolicy,
    generation: AtomicU64,
    /// Set once making a tokio timer here panicked: the runtime has no timers (see
    /// [`TokenSlot::timer_until`]).
    no_timers: AtomicBool,
    flight: SingleFlight<(), Entry<V>, State<V>>,
}

/// The answer of [`TokenSlot::lookup`].
pub(crate) enum Lookup<V> {
    /// Use this value now; look again when the generation changes or at `recheck_at`. With
    /// `timed`, the generation changes before `recheck_at` (a timer is armed), so the clock
    /// need not be read until it does.
    Use {
        entry: Entry<V>,
        generation: u64,
        recheck_at: Instant,
        timed: bool,
    },
    /// No valid token: wait for this acquisition (after a rejection, possibly the last one's
    /// failure, remembered: see "A rejected token" in the module docs).
    Wait(Acquisition<V>),
}

impl<V: SlotValue> TokenSlot<V> {
    /// `name`: the credential (or layer) errors are reported under.
    pub(crate) fn new(name: &'static str, policy: RefreshPolicy) -> Arc<Self> {
        Arc::new(Self {
            name,
            policy,
            generation: AtomicU64::new(0),
            no_timers: AtomicBool::new(false),
            flight: SingleFlight::new(
                name,
                ACQUISITION,
                State {
                    current: None,
                    last_attempt: None,
                    rejected: false,
                    failure: None,
                    tried_early: None,
                    stores: 0,
                    acquisitions: 0,
                    timer: None,
                },
            ),
        })
    }

    /// The generation counter (see the module docs). `Acquire` pairs with the `Release`
    /// bump made under the lock after each change.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// See [`SingleFlight::lock_probe`].
    #[cfg(test)]
    pub(crate) fn lock_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        self.flight.lock_probe()
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Credential semantics: the cached value while it is valid — in the refresh window
    /// after starting the renewal in the background if none runs and the spacing allows
    /// (see the module docs); with no valid value, the result of the single acquisition that
    /// `acquire` starts or that another caller already started. Called from another slot's
    /// renewal (a layer's over this credential), it waits for this slot's renewal instead,
    /// falling back to the valid cached value if it fails, and renews a token not due yet
    /// when that renewal is replacing it (once per token: see "Stacked slots").
    pub(crate) async fn get<F, Fut>(self: &Arc<Self>, acquire: F) -> Result<V, CredentialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, CredentialError>> + Send + 'static,
    {
        // What to answer, and the work of an acquisition started, made once the lock is
        // released (see "Mechanism" in the module docs).
        let (answer, launch) = {
            let now = Instant::now();
            let mut state = self.flight.lock();
            let current = state.current.clone().map(|entry| {
                let seen = entry.seen_at(now);
                (entry, seen)
            });
            match current {
                Some((entry, seen)) if seen < entry.expires_on => {
                    let asker = inside_a_renewal(entry.value.token());
                    // Before this slot's refresh time, a renewal replacing this very token
                    // (a layer's wider `refresh_window`) still has it renewed, once.
                    let early = seen < entry.refresh_at;
                    let due_for_asker = asker == Some(true) && state.tried_early != Some(entry.id);
                    if early && !due_for_asker {
                        return Ok(entry.value);
                    }
                    let (renewal, launch) = match state.running(&()) {
                        Some(running) => (Some(running), None),
                        None if self.recently_attempted(&state, now) => (None, None),
                        None => {
                            let (renewal, launch) = self.start(&mut state, Start::renewal(early));
                            (Some(renewal), Some(launch))
                        }
                    };
                    match renewal {
                        Some(renewal) if asker.is_some() => {
                            (Answer::Wait(renewal, Some(entry.value)), launch)
                        }
                        // A renewal dropped unawaited runs on in its task
                        // (`WhenAbandoned::RunOn`) and its outcome lands.
                        _ => (Answer::Now(entry.value), launch),
                    }
                }
                _ => {
                    let (acquisition, launch) = self.join_or_start(&mut state, now);
                    (Answer::Wait(acquisition, None), launch)
                }
            }
        };
        if let Some(launch) = launch {
            launch.make(acquire);
        }
        let (acquisition, fallback) = match answer {
            Answer::Now(value) => return Ok(value),
            Answer::Wait(acquisition, fallback) => (acquisition, fallback),
        };
        match (acquisition.await, fallback) {
            (Ok(entry), _) => Ok(entry.value),
            (Err(error), Some(value)) if !value.token().is_expired() => {
                tracing::debug!(error = %error, "refresh failed; the cached token is still valid");
                Ok(value)
            }
            (Err(error), _) => Err(error),
        }
    }

    /// Layer semantics: never waits while a valid token exists. In the refresh window it
    /// starts the acquisition in the background (at most one, spaced by the failure wait) and
    /// hands out the current token.
    pub(crate) fn lookup<F, Fut>(self: &Arc<Self>, now: Instant, acquire: F) -> Lookup<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, CredentialError>> + Send + 'static,
    {
        let mut state = self.flight.lock();
        let generation = self.generation();
        let current = state.current.clone().map(|entry| {
            let seen = entry.seen_at(now);
            (entry, seen)
        });
        // The work of an acquisition started, made once the lock is released (see
        // "Mechanism" in the module docs).
        let mut launch = None;
        let lookup = match current {
            Some((entry, seen)) if seen < entry.expires_on => {
                // The entry's times are on its token's clock, ahead of `now` by a suspension
                // of the machine since it was made (see `AccessToken`): the caller, its
                // clock reads and the timer compare with `now`'s clock.
                let missed = seen.saturating_duration_since(now);
                let on_now = |at: Instant| at.checked_sub(missed).unwrap_or(now);
                let expires_on = on_now(entry.expires_on);
                let recheck_at = if seen < entry.refresh_at {
                    on_now(entry.refresh_at)
                } else if state.is_running(&()) {
                    // Its end bumps the generation: readers look again then.
                    expires_on
                } else if let Some(at) = state
                    .last_attempt
                    .filter(|_| self.recently_attempted(&state, now))
                {
                    at.checked_add(self.policy.retry_after_failure)
                        .unwrap_or(expires_on)
                        .min(expires_on)
                } else {
                    // The acquisition's future is dropped unawaited: it runs in its task.
                    let (renewal, started) = self.start(&mut state, Start::Renewal);
                    drop(renewal);
                    launch = Some(started);
                    expires_on
                };
                let timed = self.arm(&mut state, recheck_at);
                Lookup::Use {
                    entry,
                    generation,
                    recheck_at,
                    timed,
                }
            }
            _ => {
                let (acquisition, started) = self.join_or_start(&mut state, now);
                launch = started;
                Lookup::Wait(acquisition)
            }
        };
        drop(state);
        if let Some(launch) = launch {
            launch.make(acquire);
        }
        lookup
    }

    /// Stores a value obtained outside the slot (a claims token); returns its entry. Not a
    /// renewal: the spacing is left as it is. A token that has already expired is refused
    /// with the error an acquisition's would get, and the current entry stays. The same
    /// token as the current one keeps its id: a 401 for it still finds it, and a wider
    /// window's once-per-token memory still knows it.
    pub(crate) fn store(&self, value: V) -> Result<Entry<V>, CredentialError> {
        let now = Instant::now();
        let value = self.unexpired(value, now)?;
        let mut state = self.flight.lock();
        let same = state
            .current
            .as_ref()
            .filter(|current| current.value.token().secret() == value.token().secret())
            .map(|current| (current.id, current.refresh_at));
        let entry = match same {
            // Its timing stays too: drawn again from the lifetime left, the window would
            // shrink and the slot renew later (as for the same token back early, in `land`).
            Some((id, refresh_at)) => Entry {
                refresh_at,
                ..self.entry_with_id(value, now, id)
            },
            None => self.entry(value, now),
        };
        state.stores = state.stores.wrapping_add(1);
        state.current = Some(entry.clone());
        state.rejected = false;
        state.failure = None;
        self.bump();
        Ok(entry)
    }

    /// `value`, unless its token expired before it could be stored (a credential's own stale
    /// token, a slow answer with a short lifetime, a provider answering `expires_in: 0`): such
    /// a token is never stored nor handed out, whichever way it comes in.
    fn unexpired(&self, value: V, now: Instant) -> Result<V, CredentialError> {
        if !value.token().is_expired_at(now) {
            Ok(value)
        } else {
            Err(CredentialError::authentication_failed(
                self.name,
                "the credential returned a token that had already expired; check the \
                 credential's answer and this machine's clock",
            ))
        }
    }

    /// Forgets the current token if it is still the one with this id (a resource rejected
    /// it); says whether it was.
    pub(crate) fn invalidate(&self, id: TokenId) -> bool {
        let mut state = self.flight.lock();
        let current = state.current.as_ref().is_some_and(|e| e.id == id);
        if current {
            state.current = None;
            state.rejected = true;
            self.bump();
        }
        current
    }

    /// Whether the slot can serve nothing at `now`: no token still valid, no acquisition
    /// running. A cache may drop such a slot (`crate::cache`): what else it keeps is the
    /// renewals' spacing, which applies only while a valid token is held, and a rejected
    /// token's remembered failure, which only [`invalidate`](Self::invalidate) leads to. A
    /// credential's slots (the only ones a cache holds) are never invalidated; the bearer
    /// layer's slot, which is, is in no cache.
    pub(crate) fn holds_nothing_at(&self, now: Instant) -> bool {
        let state = self.flight.lock();
        let valid = state
            .current
            .as_ref()
            .is_some_and(|e| !e.value.token().is_expired_at(now));
        !valid && !state.is_running(&())
    }

    /// The cached entry, whatever its age.
    pub(crate) fn current_entry(&self) -> Option<Entry<V>> {
        self.flight.lock().current.clone()
    }

    /// Makes sure the recheck timer fires `TIMER_LEAD` before `recheck_at`; whether it will
    /// (see the module docs). The generation was read before this call, so a timer task that
    /// ends at once (a runtime shutting down drops it in `spawn`) leaves its caller with a
    /// stale generation, never with a deadline nobody watches.
    fn arm(self: &Arc<Self>, state: &mut State<V>, recheck_at: Instant) -> bool {
        // The clock read here, not the caller's `now`: that may be from before it waited for
        // the lock, and a timer that has fired (its bump already seen by the caller) may not
        // be finished yet; reused, it would leave a deadline nobody watches.
        let fresh = Instant::now();
        let Some(fire_at) = recheck_at.checked_sub(TIMER_LEAD).filter(|at| fresh < *at) else {
            return false;
        };
        if let Some(timer) = &state.timer {
            // The same deadline, give or take a suspension's measure (see `serves`): a new
            // timer each time would bump the generation for every request.
            if serves(timer.at, fire_at, fresh) && !timer.task.is_finished() {
                return true;
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if !timers_run_unattended(&runtime) {
            return false;
        }
        if Instant::now() == fresh {
            // tokio's clock is paused.
            return false;
        }
        let Some(sleep) = self.timer_until(fire_at) else {
            return false;
        };
        let bump = BumpOnDrop(Arc::downgrade(self));
        let task = runtime.spawn(async move {
            let _bump = bump;
            sleep.await;
        });
        state.timer = Some(Timer {
            at: fire_at,
            task: task.abort_handle(),
        });
        true
    }

    /// A tokio timer until `at`, or `None` where tokio cannot make one: outside a runtime, or
    /// on a runtime built without `enable_time`. tokio has no way to ask the latter and panics
    /// making the timer; the panic is caught here (the panic hook prints it) and remembered
    /// for the slot's life, so the slot's users stop asking: the recheck timer is not armed
    /// (callers read the clock), an acquisition that waits is not bounded, and the layer does
    /// not wait for a claims token a request cannot use (`bearer/future.rs`). Without the
    /// memory every lookup spawned a timer task that panicked and bumped the generation, so
    /// that every request took the lock. Asked only when a timer is needed — a multi-thread
    /// runtime's recheck timer, an acquisition or claims flight that did not answer at its
    /// first poll ([`bounded`](Self::bounded)), that claims wait — so a credential in process
    /// that answers at once never meets the panic. The memory is the slot's, not the
    /// process's: a process may run a runtime with timers beside one without, and a memory
    /// shared by both would take the former's limits and recheck timers away. Under
    /// `panic = "abort"` the process aborts instead, as on any of tokio's panics.
    pub(crate) fn timer_until(&self, at: Instant) -> Option<tokio::time::Sleep> {
        if self.no_timers.load(Ordering::Relaxed) || tokio::runtime::Handle::try_current().is_err()
        {
            return None;
        }
        let made = std::panic::catch_unwind(|| tokio::time::sleep_until(at)).ok();
        if made.is_none() {
            self.no_timers.store(true, Ordering::Relaxed);
        }
        made
    }

    fn recently_attempted(&self, state: &State<V>, now: Instant) -> bool {
        state
            .last_attempt
            .is_some_and(|at| within_spacing(at, self.policy.retry_after_failure, now))
    }

    fn entry(&self, value: V, now: Instant) -> Entry<V> {
        self.entry_with_id(value, now, TokenId::next())
    }

    fn entry_with_id(&self, value: V, now: Instant, id: TokenId) -> Entry<V> {
        Entry {
            id,
            refresh_at: self
                .policy
                .refresh_at(value.token(), value.token().caught_up(now)),
            expires_on: value.token().expires_on(),
            value,
        }
    }

    /// With no valid token: the running acquisition, or else the remembered failure to
    /// replace a rejected token until its end (see "A rejected token" in the module docs), or
    /// else a new acquisition, with its work to make once the lock is released.
    fn join_or_start(
        self: &Arc<Self>,
        state: &mut Locked<'_, V>,
        now: Instant,
    ) -> (Acquisition<V>, Option<Launch<V>>) {
        if let Some(acquisition) = state.running(&()) {
            return (acquisition, None);
        }
        match state.failure.as_ref().filter(|failure| now < failure.until) {
            Some(failure) => (Acquisition::failed(failure.error.clone()), None),
            None => {
                let (acquisition, launch) = self.start(state, Start::First);
                (acquisition, Some(launch))
            }
        }
    }

    /// Starts the acquisition (see [`crate::flight`]); its outcome is stored by
    /// [`land`](Self::land). Its work is made by the [`Launch`] returned, once the caller has
    /// released the lock: the span and the caller's `acquire` are not the slot's code (a
    /// subscriber may write output; `acquire` clones a credential), so they run outside it.
    /// The work runs within [`ACQUISITION_LIMIT`] (see "A hung acquisition").
    fn start(
        self: &Arc<Self>,
        state: &mut Locked<'_, V>,
        kind: Start,
    ) -> (Acquisition<V>, Launch<V>) {
        state.acquisitions = state.acquisitions.saturating_add(1);
        let renewal = kind != Start::First;
        let replaced = state
            .current
            .as_ref()
            .filter(|_| renewal)
            .map(|entry| entry.value.token().secret().clone());
        let (made, work) = deferred(self.name, ACQUISITION);
        let bounded = {
            let (slot, started) = (Arc::clone(self), Instant::now());
            let work = RENEWING.scope(replaced, work);
            async move { slot.bounded(ACQUISITION, started, work).await }
        };
        let slot = Arc::clone(self);
        let from = (state.current.as_ref().map(|entry| entry.id), state.stores);
        let acquisition = state.start((), WhenAbandoned::RunOn, bounded, move |state, result| {
            slot.land(state, result, kind, from)
        });
        let launch = Launch {
            made,
            name: self.name,
            attempt: state.acquisitions,
            renewal,
        };
        (acquisition, launch)
    }

    /// `work`, cut off with a transient timeout error if it has not ended
    /// [`ACQUISITION_LIMIT`] after `started`, when its flight started (its task may first be
    /// polled later): the slot's acquisitions and the bearer layer's claims flights (see "A
    /// hung acquisition" in the module docs). `what` names the work in the error. Polled once
    /// before the timer is made: work that answers at once needs none. Unbounded where tokio
    /// can make no timer (see [`timer_until`](Self::timer_until)).
    pub(crate) async fn bounded<W>(
        &self,
        what: &str,
        started: Instant,
        work: impl Future<Output = Result<W, CredentialError>>,
    ) -> Result<W, CredentialError> {
        // Polled once first: work that answers at once (a credential in process) needs no
        // timer, so a runtime without timers never meets tokio's panic for it.
        let mut work = std::pin::pin!(work);
        if let Poll::Ready(result) =
            std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await
        {
            return result;
        }
        let limit = started
            .checked_add(ACQUISITION_LIMIT)
            .and_then(|at| self.timer_until(at));
        let Some(limit) = limit else {
            return work.await;
        };
        tokio::select! {
            biased;
            result = &mut work => result,
            () = limit => Err(CredentialError::authentication_failed(
                self.name,
                format!(
                    "{what} did not end within {} s: the credential (or its HTTP client, if it \
                     has no deadline) never answered; the next request asks again",
                    ACQUISITION_LIMIT.as_secs()
                ),
            )
            .with_cause(Cause {
                timeout: true,
                transient: true,
                ..Cause::default()
            })),
        }
    }

    /// Stores an acquisition's outcome as it ends — normally, by panic, or by runtime
    /// shutdown (then with an error) — under the lock that ends its flight; the spacing after
    /// a renewal counts from here.
    /// `from`: the id of the token held when the acquisition started, and the count of
    /// stores then.
    fn land(
        &self,
        state: &mut State<V>,
        result: Result<V, CredentialError>,
        kind: Start,
        (from, stores): (Option<TokenId>, u64),
    ) -> Result<Entry<V>, CredentialError> {
        let now = Instant::now();
        // A token stored while this acquisition ran (a claims challenge's, by `store`)
        // answers more than this one was asked for: it stays, whatever this one brought, and
        // is its waiters' answer, after a failure too. Replaced, the next request would meet
        // the same challenge again; an error would fail requests that token can serve.
        let stored_meanwhile = state
            .current
            .as_ref()
            .filter(|current| {
                (Some(current.id) != from || state.stores != stores)
                    && !current.value.token().is_expired_at(now)
            })
            .cloned();
        let result = result.and_then(|value| self.unexpired(value, now));
        let outcome = match stored_meanwhile {
            Some(current) => Ok(current),
            None => result.map(|value| match &state.current {
                // The same token back from a renewal started early (see "Stacked slots"): the
                // entry stays as it was, timing included. Retimed from the lifetime left now, its
                // window would shrink (`min(window, L / 2)`) and the slot renew later than its own
                // refresh time.
                Some(current)
                    if kind == Start::Early
                        && current.value.token().secret() == value.token().secret()
                        && !current.value.token().is_expired_at(now) =>
                {
                    current.clone()
                }
                // The same token back, not due by its own timing: the provider's answer for now
                // (IMDS and App Service answer their cached token, with the time it has left).
                // The entry takes its value and timing and keeps its id (see the module docs).
                Some(current)
                    if current.value.token().secret() == value.token().secret()
                        && self
                            .policy
                            .answer_not_due(value.token(), value.token().caught_up(now)) =>
                {
                    let entry = self.entry_with_id(value, now, current.id);
                    state.current = Some(entry.clone());
                    entry
                }
                // Otherwise the same token back is a failed attempt: keep the entry (and its
                // timing), unless it has expired meanwhile (never handed out).
                Some(current)
                    if current.value.token().secret() == value.token().secret()
                        && !current.value.token().is_expired_at(now) =>
                {
                    current.clone()
                }
                _ => {
                    let entry = self.entry(value, now);
                    state.current = Some(entry.clone());
                    entry
                }
            }),
        };
        if kind != Start::First {
            state.last_attempt = Some(now);
        }
        let outcome = match outcome {
            Ok(entry) => {
                state.rejected = false;
                state.failure = None;
                Ok(entry)
            }
            // Replacing a rejected token failed: a final or throttled failure is the answer
            // until the slot asks again, its waiters' error too (see "A rejected token" in
            // the module docs).
            Err(error) if state.rejected => {
                state.failure = self.remembered(error.clone(), now);
                Err(state
                    .failure
                    .as_ref()
                    .map_or(error, |failure| failure.error.clone()))
            }
            Err(error) => Err(error),
        };
        // Once per token: asked early, a provider answering from a cache of its own (az, azd,
        // IMDS, a cache file) hands back the token it has until its own refresh time, and
        // one that failed is tried again in this slot's own window; asked again every time
        // the asker retries, each would cost a process, a file read or a request.
        if kind == Start::Early {
            state.tried_early = from;
        }
        self.bump();
        outcome
    }

    /// A failure to replace a rejected token, as remembered from `now` ([`kept_failure`]; see
    /// "A rejected token" in the module docs).
    fn remembered(&self, error: CredentialError, now: Instant) -> Option<Remembered> {
        let (error, until) = kept_failure(error, now, self.policy.retry_after_failure)?;
        Some(Remembered { error, until })
    }
}

/// How a memory of failures keeps `error` from `now` for `spacing`: the error to answer, and
/// until when. A final failure (not transient) is kept for the spacing; a throttled one whose
/// wait has not passed until the later of the spacing's end and the provider's wait, and says
/// that end (`retry_after()`), so a caller honouring it waits as long as the memory answers,
/// not less. `None`, not kept, for any other transient one (no connection, a timeout, a 5xx
/// without `Retry-After`, a `Retry-After` of 0 or past: asking again may work at once), for
/// one cut off before the credential answered (a panic, its runtime shutting down: the
/// credential refused nothing), and for a spacing past the clock's range. The one rule for
/// the slot's memory after a rejected token and the bearer layer's memory of failed claims.
pub(crate) fn kept_failure(
    error: CredentialError,
    now: Instant,
    spacing: Duration,
) -> Option<(CredentialError, Instant)> {
    let wait = error.retry_at().filter(|&at| at > now);
    if error.is_unfinished() || (error.is_transient() && wait.is_none()) {
        return None;
    }
    let spaced = now.checked_add(spacing)?;
    Some(match wait {
        Some(wait) => {
            let until = wait.max(spaced);
            (error.throttled_until(until), until)
        }
        None => (error, spaced),
    })
}

/// Whether a timer armed to fire at `timer_at` serves a lookup whose timer should fire at
/// `fire_at`, the clock reading `fresh`: within [`TIMER_SLACK`] either way it is the same
/// deadline (after a suspension each lookup measures the time missed anew, from two clocks
/// read moments apart); and it must not have fired: once it has, its bump may be the one the
/// caller just saw, though its task is not finished yet.
fn serves(timer_at: Instant, fire_at: Instant, fresh: Instant) -> bool {
    let apart = timer_at.max(fire_at).duration_since(timer_at.min(fire_at));
    apart <= TIMER_SLACK && fresh < timer_at
}

/// What the slot's flight does, as its errors name it.
const ACQUISITION: &str = "the token acquisition";

/// What [`TokenSlot::get`] answers: a value at once, or an acquisition's outcome (with, for a
/// stacked slot's renewal, the valid value to fall back on).
enum Answer<V> {
    Now(V),
    Wait(Acquisition<V>, Option<V>),
}

/// An acquisition started under the slot's lock, its work to make once the lock is released
/// (see "Mechanism" in the module docs). Dropped unmade (a panic), its flight ends with an
/// error (see [`deferred`]).
#[must_use]
struct Launch<V> {
    made: Deferred<V>,
    name: &'static str,
    /// The slot's how-many-th acquisition, for the span.
    attempt: u64,
    renewal: bool,
}

impl<V: Send + 'static> Launch<V> {
    /// Makes the acquisition's work: `acquire` is called inside the acquisition's span (see
    /// "Tracing" in the module docs), so spans it makes are children of it, and the task
    /// enters the span as it polls the work.
    fn make<F, Fut>(self, acquire: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, CredentialError>> + Send + 'static,
    {
        let Self {
            made,
            name,
            attempt,
            renewal,
        } = self;
        made.make(move || {
            let span =
                tracing::debug_span!("token_acquisition", credential = name, attempt, renewal);
            span.in_scope(acquire).instrument(span)
        });
    }
}

/// What [`TokenSlot::start`] starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// No valid token is held: its callers wait for it.
    First,
    /// A valid token is held, due by this slot's timing: the spacing follows its end.
    Renewal,
    /// A valid token is held that is not due yet by this slot's timing, asked for by a
    /// stacked slot's renewal of that same token (a wider window): a renewal, made once per
    /// token, whose same token back leaves the entry as it was.
    Early,
}

impl Start {
    fn renewal(early: bool) -> Self {
        if early { Self::Early } else { Self::Renewal }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use futures_util::future::BoxFuture;
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

    /// Lets renewals started in the background run to their end (they take no clock time
    /// here: `counting`'s answers come after one yield).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_token_is_served_without_acquiring() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        slot.store(token("t1", HOUR)).unwrap();
        let got = slot
            .get(counting(&calls, |_| Ok(token("t2", HOUR))))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "t1");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    /// A laptop that slept through a token's expiry: tokio's (monotonic) clock stood still,
    /// the wall clock ran on. The slot asks for a new token instead of handing out the dead
    /// one, and the token it gets afterwards is not aged by the sleep.
    #[tokio::test(start_paused = true)]
    async fn a_token_the_machine_slept_past_is_acquired_anew() {
        let clock = crate::token::tests::wall_clock();
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        slot.store(token("before", HOUR)).unwrap();
        clock.suspend(2 * HOUR);
        let got = slot
            .get(counting(&calls, |_| Ok(token("after", HOUR))))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "after");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let again = slot
            .get(counting(&calls, |_| Ok(token("third", HOUR))))
            .await
            .unwrap();
        assert_eq!(again.secret().expose_secret(), "after");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The layer's lookup: no usable token, it waits for the acquisition. And a cache
        // may drop the slot meanwhile: it holds nothing worth keeping.
        slot.store(token("before", HOUR)).unwrap();
        clock.suspend(2 * HOUR);
        assert!(slot.holds_nothing_at(Instant::now()));
        let lookup = slot.lookup(
            Instant::now(),
            counting(&calls, |_| Ok(token("fourth", HOUR))),
        );
        let Lookup::Wait(acquisition) = lookup else {
            panic!("an expired token was handed to the layer");
        };
        let entry = acquisition.await.unwrap();
        assert_eq!(entry.value.secret().expose_secret(), "fourth");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// Woken inside the refresh window: the token is still good, handed out at once, and
    /// renewed in the background; the layer is told to look again when it really expires,
    /// on its own clock.
    #[tokio::test(start_paused = true)]
    async fn a_sleep_into_the_refresh_window_renews_in_the_background() {
        let clock = crate::token::tests::wall_clock();
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        slot.store(token("before", HOUR)).unwrap();
        // 58 minutes asleep: 2 minutes left, inside the 5-minute window.
        clock.suspend(Duration::from_secs(58 * 60));
        let (done, wait) = tokio::sync::oneshot::channel::<()>();
        let lookup = slot.lookup(
            Instant::now(),
            counting(&calls, move |_| {
                drop(done);
                Ok(token("after", HOUR))
            }),
        );
        match lookup {
            Lookup::Use {
                entry, recheck_at, ..
            } => {
                assert_eq!(entry.value.secret().expose_secret(), "before");
                let left = recheck_at - Instant::now();
                assert!(left <= Duration::from_secs(120), "{left:?}");
                assert!(left >= Duration::from_secs(119), "{left:?}");
            }
            Lookup::Wait(_) => panic!("the token is still valid"),
        }
        let _ = wait.await;
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let got = slot
            .get(counting(&calls, |_| Ok(token("third", HOUR))))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "after");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_cold_callers_share_one_acquisition_and_its_error() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
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
    async fn refresh_window_refreshes_once_in_the_background_and_failure_keeps_the_cached_token() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        slot.store(token("old", Duration::from_secs(299))).unwrap();
        // A 299 s token is renewed in its last 149.5 s.
        tokio::time::advance(Duration::from_millis(149_400)).await;
        slot.get(counting(&calls, |_| Err(failure())))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0, "not yet in the window");
        tokio::time::advance(Duration::from_millis(100)).await;
        let got = slot
            .get(counting(&calls, |_| Err(failure())))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "old");
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Within 30 s of the failed attempt: no new attempt.
        tokio::time::advance(Duration::from_secs(29)).await;
        let got = slot
            .get(counting(&calls, |_| Err(failure())))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "old");
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // After 30 s: one more attempt, which succeeds; the caller that started it is given
        // the current token, the next one the new token.
        tokio::time::advance(Duration::from_secs(1)).await;
        let got = slot
            .get(counting(&calls, |_| Ok(token("new", HOUR))))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "old");
        settle().await;
        let got = slot
            .get(counting(&calls, |_| Err(failure())))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "new");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// In the refresh window no caller waits for the renewal (DESIGN: callers keep getting
    /// the current token while exactly one refresh runs). Before, every caller of `get`
    /// waited for it: here 5 s, past each caller's 1 s timeout.
    #[tokio::test(start_paused = true)]
    async fn callers_in_the_window_get_the_current_token_at_once_while_one_renewal_runs() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        slot.store(token("old", Duration::from_secs(600))).unwrap();
        tokio::time::advance(Duration::from_secs(301)).await;
        let slow = |calls: &Arc<AtomicUsize>| {
            let calls = Arc::clone(calls);
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(token("new", HOUR))
            }
        };
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (slot, acquire) = (Arc::clone(&slot), slow(&calls));
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_secs(1), slot.get(acquire)).await
                })
            })
            .collect();
        for task in tasks {
            let got = task.await.unwrap().expect("nobody waits for the renewal");
            assert_eq!(got.unwrap().secret().expose_secret(), "old");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "exactly one renewal");
        tokio::time::sleep(Duration::from_secs(5)).await;
        settle().await;
        let got = slot.get(slow(&calls)).await.unwrap();
        assert_eq!(got.secret().expose_secret(), "new");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// The layer's renewal asks its credential, whose slot is in its window too: that one
    /// renewal is waited for, and the layer has the new token once it exists (answered at
    /// once, the layer would get the old token back and send it for 30 s more).
    #[tokio::test(start_paused = true)]
    async fn a_renewal_asking_a_slot_in_its_window_waits_for_that_slots_renewal() {
        let inner = TokenSlot::new("Inner", RefreshPolicy::default());
        let outer = TokenSlot::new("Outer", RefreshPolicy::default());
        let old = token("old", Duration::from_secs(600));
        inner.store(old.clone()).unwrap();
        outer.store(old).unwrap();
        tokio::time::advance(Duration::from_secs(301)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let provider = {
            let calls = Arc::clone(&calls);
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(token("new", HOUR))
            }
        };
        let through = {
            let inner = Arc::clone(&inner);
            move || async move { inner.get(provider).await }
        };
        let (entry, _, _) = use_of(outer.lookup(Instant::now(), through));
        assert_eq!(entry.value.secret().expose_secret(), "old");
        settle().await;
        // A caller of the credential meanwhile is not a renewal: the current token at once.
        let direct = inner.get(|| async { Err(failure()) }).await.unwrap();
        assert_eq!(direct.secret().expose_secret(), "old");
        tokio::time::sleep(Duration::from_secs(5)).await;
        settle().await;
        let current = outer.current_entry().unwrap();
        assert_eq!(current.value.secret().expose_secret(), "new");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// Two slots holding `old`, living an hour: the credential's with the default window,
    /// the layer's with 600 s.
    fn wider_over_default() -> (Arc<TokenSlot>, Arc<TokenSlot>, AccessToken) {
        let inner = TokenSlot::new("Inner", RefreshPolicy::default());
        let outer = TokenSlot::new(
            "Outer",
            RefreshPolicy {
                window: Duration::from_secs(600),
                ..RefreshPolicy::default()
            },
        );
        let old = token("old", HOUR);
        inner.store(old.clone()).unwrap();
        outer.store(old.clone()).unwrap();
        (inner, outer, old)
    }

    /// The layer's renewal, asking the credential's slot through `acquire`.
    fn through<F, Fut>(
        inner: &Arc<TokenSlot>,
        acquire: F,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<AccessToken, CredentialError>> + use<F, Fut>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<AccessToken, CredentialError>> + Send + 'static,
    {
        let inner = Arc::clone(inner);
        move || async move { inner.get(acquire).await }.boxed()
    }

    /// The layer's lookup now, its renewal (if it starts one) asking `inner` through
    /// `acquire`, run to its end; the token the lookup handed out.
    async fn look_up_through<F, Fut>(
        outer: &Arc<TokenSlot>,
        inner: &Arc<TokenSlot>,
        acquire: F,
    ) -> String
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<AccessToken, CredentialError>> + Send + 'static,
    {
        let (entry, _, _) = use_of(outer.lookup(Instant::now(), through(inner, acquire)));
        settle().await;
        entry.value.secret().expose_secret().to_owned()
    }

    /// A layer with a 600 s window over a credential with the default 300 s: 590 s before
    /// expiry the layer's renewal asks the credential, whose token is not due by its own
    /// window but is the one the layer renews: the credential renews it then, and the layer
    /// has the new token 590 s before expiry. A direct caller of the credential is still
    /// served its cached token without a renewal.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_with_a_wider_window_has_the_slot_it_asks_renew_that_token() {
        let (inner, outer, _) = wider_over_default();
        tokio::time::advance(Duration::from_secs(3600 - 590)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let direct = inner
            .get(counting(&calls, |_| Ok(token("unused", HOUR))))
            .await
            .unwrap();
        assert_eq!(
            direct.secret().expose_secret(),
            "old",
            "not due by its window"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        let acquire = counting(&calls, |_| Ok(token("new", HOUR)));
        assert_eq!(look_up_through(&outer, &inner, acquire).await, "old");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let current = outer.current_entry().unwrap();
        assert_eq!(current.value.secret().expose_secret(), "new");
    }

    /// The same, over a credential that answers from a cache of its own (az, IMDS, a cache
    /// file): asked 590 s before expiry it hands back the token it has. It is not asked again
    /// before its own window, however often the layer tries (every 30 s, each a failed
    /// renewal), and in its own window it is asked and renews.
    #[tokio::test(start_paused = true)]
    async fn a_wider_window_renewal_answered_with_the_same_token_is_not_repeated_early() {
        let (inner, outer, old) = wider_over_default();
        tokio::time::advance(Duration::from_secs(3600 - 590)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let same = counting(&calls, {
            let old = old.clone();
            move |_| Ok(old)
        });
        look_up_through(&outer, &inner, same).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "asked early once");
        for _ in 0..9 {
            tokio::time::advance(Duration::from_secs(31)).await;
            let again = counting(&calls, {
                let old = old.clone();
                move |_| Ok(old)
            });
            assert_eq!(look_up_through(&outer, &inner, again).await, "old");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "not asked early again");
        // 311 s before expiry; 31 s on, the credential's own window has begun.
        tokio::time::advance(Duration::from_secs(31)).await;
        let fresh = counting(&calls, |_| Ok(token("new", HOUR)));
        look_up_through(&outer, &inner, fresh).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let current = outer.current_entry().unwrap();
        assert_eq!(current.value.secret().expose_secret(), "new");
    }

    /// An early renewal that fails is not repeated early either: the credential is asked
    /// again in its own window, not every time the layer retries.
    #[tokio::test(start_paused = true)]
    async fn a_wider_window_renewal_that_fails_is_not_repeated_early() {
        let (inner, outer, _) = wider_over_default();
        tokio::time::advance(Duration::from_secs(3600 - 590)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        for _ in 0..10 {
            let failing = counting(&calls, |_| Err(failure()));
            assert_eq!(look_up_through(&outer, &inner, failing).await, "old");
            tokio::time::advance(Duration::from_secs(31)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "tried early once");
        // 280 s before expiry, inside the credential's window: asked again.
        let fresh = counting(&calls, |_| Ok(token("new", HOUR)));
        look_up_through(&outer, &inner, fresh).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let current = outer.current_entry().unwrap();
        assert_eq!(current.value.secret().expose_secret(), "new");
    }

    /// The same token handed back to an early renewal 390 s before expiry leaves the
    /// credential's renewal where it was, 300 s before expiry. Retimed from the 390 s left
    /// (a window of `min(300, 390 / 2)`), it would come only 195 s before expiry.
    #[tokio::test(start_paused = true)]
    async fn the_same_token_back_early_keeps_the_credentials_own_renewal_time() {
        let inner = TokenSlot::new("Inner", RefreshPolicy::default());
        let outer = TokenSlot::new(
            "Outer",
            RefreshPolicy {
                window: Duration::from_secs(400),
                ..RefreshPolicy::default()
            },
        );
        let old = token("old", HOUR);
        inner.store(old.clone()).unwrap();
        outer.store(old.clone()).unwrap();
        tokio::time::advance(Duration::from_secs(3600 - 390)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let same = counting(&calls, move |_| Ok(old));
        look_up_through(&outer, &inner, same).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(100)).await;
        let fresh = counting(&calls, |_| Ok(token("new", HOUR)));
        look_up_through(&outer, &inner, fresh).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "renewed 290 s before expiry"
        );
        let current = outer.current_entry().unwrap();
        assert_eq!(current.value.secret().expose_secret(), "new");
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_on_starts_the_window_early() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        slot.store(
            token("old", HOUR).with_refresh_on(Some(Instant::now() + Duration::from_secs(60))),
        )
        .unwrap();
        slot.get(counting(&calls, |_| Ok(token("unused", HOUR))))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        tokio::time::advance(Duration::from_secs(60)).await;
        let got = slot
            .get(counting(&calls, |_| Ok(token("new", HOUR))))
            .await
            .unwrap();
        assert_eq!(
            got.secret().expose_secret(),
            "old",
            "renewed in the background"
        );
        settle().await;
        let got = slot
            .get(counting(&calls, |_| Err(failure())))
            .await
            .unwrap();
        assert_eq!(got.secret().expose_secret(), "new");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_token_is_never_returned_even_within_the_failure_wait() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        slot.store(token("old", Duration::from_secs(40))).unwrap();
        // The window opens at 20 s (a store is no renewal: no spacing follows it); the
        // renewal first asked for at 30 s fails: the cached token is returned.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(slot.get(counting(&calls, |_| Err(failure()))).await.is_ok());
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
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
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
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
        assert_eq!(
            slot.current_entry().unwrap().value.secret().expose_secret(),
            "slow"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn panicking_acquisition_is_an_error_and_not_joined_again() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
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

    fn use_of(lookup: Lookup<AccessToken>) -> (Entry<AccessToken>, u64, Instant) {
        match lookup {
            Lookup::Use {
                entry,
                generation,
                recheck_at,
                ..
            } => (entry, generation, recheck_at),
            Lookup::Wait(_) => panic!("expected a usable token"),
        }
    }

    thread_local! {
        /// See `current_thread_timers_in_tests`: set by the tests of the timer itself.
        pub(super) static CURRENT_THREAD_TIMERS: std::cell::Cell<bool> =
            const { std::cell::Cell::new(false) };
    }

    fn trust_current_thread_timers() {
        CURRENT_THREAD_TIMERS.with(|trusted| trusted.set(true));
    }

    fn is_timed(lookup: Lookup<AccessToken>) -> bool {
        match lookup {
            Lookup::Use { timed, .. } => timed,
            Lookup::Wait(_) => panic!("expected a usable token"),
        }
    }

    fn never() -> futures_util::future::Ready<Result<AccessToken, CredentialError>> {
        unreachable!("the token is fresh")
    }

    /// The recheck timer (module docs): armed on a running clock, it bumps the generation
    /// `TIMER_LEAD` before the deadline. The clock is paused only after arming, to advance it.
    #[tokio::test]
    async fn the_recheck_timer_bumps_the_generation_before_the_deadline() {
        trust_current_thread_timers();
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let entry = slot.store(token("t", HOUR)).unwrap();
        let generation = slot.generation();
        assert!(is_timed(slot.lookup(Instant::now(), never)));
        // A second lookup finds the same timer armed: no new task, no bump.
        assert!(is_timed(slot.lookup(Instant::now(), never)));
        assert_eq!(slot.generation(), generation);

        tokio::time::pause();
        let fire_at = entry.refresh_at - TIMER_LEAD;
        tokio::time::advance(fire_at - Instant::now() - Duration::from_millis(10)).await;
        assert_eq!(slot.generation(), generation, "not before its time");
        tokio::time::advance(Duration::from_millis(20)).await;
        tokio::task::yield_now().await;
        assert_ne!(slot.generation(), generation, "the timer fired");
        // Within the lead, and with the clock paused, no timer: callers read the clock.
        assert!(!is_timed(slot.lookup(Instant::now(), never)));
    }

    /// After a suspension the deadline moves back by the time missed, measured anew (from
    /// two clocks) at each lookup: the armed timer still serves lookups whose measure differs
    /// slightly, instead of a new timer, and a bump, for every request.
    #[tokio::test]
    async fn after_a_suspension_lookups_keep_the_armed_timer() {
        trust_current_thread_timers();
        let clock = crate::token::tests::wall_clock();
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        slot.store(token("t", HOUR)).unwrap();
        clock.suspend(Duration::from_secs(120));
        assert!(is_timed(slot.lookup(Instant::now(), never)));
        let generation = slot.generation();
        // A `now` read a moment before the lock was taken: the time missed measures longer.
        for early in [0, 1, 3, 250] {
            let now = Instant::now() - Duration::from_millis(early);
            assert!(is_timed(slot.lookup(now, never)));
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        }
        assert_eq!(slot.generation(), generation, "no timer replaced");
    }

    #[test]
    fn an_armed_timer_serves_a_deadline_within_the_slack_until_it_fires() {
        let t = Instant::now() + HOUR;
        let ms = Duration::from_millis;
        assert!(serves(t, t, t - ms(1)));
        assert!(
            serves(t, t + ms(500), t - ms(1)),
            "fires early: readers look again"
        );
        assert!(
            serves(t + ms(500), t, t - ms(1)),
            "fires late, inside the lead"
        );
        assert!(!serves(t, t + TIMER_SLACK + ms(1), t - ms(1)));
        // Fired (its task perhaps not finished yet): never trusted again.
        assert!(!serves(t, t + ms(500), t));
        assert!(!serves(t, t + ms(500), t + ms(1)));
    }

    /// The same token stored again keeps its timing: drawn again from the lifetime left, its
    /// window would shrink (`min(window, L / 2)`) and the slot renew later.
    #[tokio::test(start_paused = true)]
    async fn the_same_token_stored_again_keeps_its_refresh_time() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let first = slot.store(token("same", HOUR)).unwrap();
        tokio::time::advance(HOUR - Duration::from_secs(480)).await;
        let again = slot.store(first.value.clone()).unwrap();
        assert_eq!(again.refresh_at, first.refresh_at);
    }

    /// A renewal that started from the token a claims challenge then stored again (the same
    /// token, now answering those claims) leaves that stored entry in place, as it does a
    /// different stored token.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_ending_after_its_own_token_was_stored_again_leaves_it() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        slot.store(token("x", Duration::from_secs(600))).unwrap();
        tokio::time::advance(Duration::from_secs(301)).await;
        let (send, answer) = tokio::sync::oneshot::channel::<AccessToken>();
        let renewal = move || async move { Ok(answer.await.unwrap()) };
        assert!(matches!(
            slot.lookup(Instant::now(), renewal),
            Lookup::Use { .. }
        ));
        let stored = slot
            .store(token("x", Duration::from_secs(299)).with_token_type("stored"))
            .unwrap();
        let generation = slot.generation();
        send.send(token("z", HOUR)).unwrap();
        while slot.generation() == generation {
            tokio::task::yield_now().await;
        }
        let current = slot.current_entry().unwrap();
        assert_eq!(current.id, stored.id);
        assert_eq!(current.value.token_type(), "stored");
    }

    #[tokio::test(start_paused = true)]
    async fn no_timer_while_the_clock_is_paused() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        slot.store(token("t", HOUR)).unwrap();
        assert!(!is_timed(slot.lookup(Instant::now(), never)));
    }

    /// A current-thread runtime runs timers only while something is inside its `block_on`,
    /// and polls that future first: a program calling `block_on` now and then would use a
    /// token past its expiry if it trusted the timer. The multi-thread runtime's workers run
    /// it meanwhile.
    #[test]
    fn the_timer_is_trusted_only_on_a_multi_thread_runtime() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let current = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        current.block_on(async {
            slot.store(token("t", HOUR)).unwrap();
            assert!(!is_timed(slot.lookup(Instant::now(), never)));
        });
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        multi.block_on(async {
            assert!(is_timed(slot.lookup(Instant::now(), never)));
        });
        // Whatever runtime the caller is in, the timer armed runs on its own.
        current.block_on(async {
            assert!(is_timed(slot.lookup(Instant::now(), never)));
        });
    }

    #[test]
    fn no_timer_outside_a_runtime() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async { slot.store(token("t", HOUR)).unwrap() });
        drop(runtime);
        assert!(!is_timed(slot.lookup(Instant::now(), never)));
    }

    /// A timer task that ends without firing (its runtime shut down, or a new deadline
    /// replaced it) bumps the generation too: no reader trusts a deadline nobody watches.
    #[test]
    fn a_timer_that_ends_unfired_bumps_the_generation() {
        trust_current_thread_timers();
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let generation = runtime.block_on(async {
            slot.store(token("t", HOUR)).unwrap();
            assert!(is_timed(slot.lookup(Instant::now(), never)));
            slot.generation()
        });
        drop(runtime);
        assert_ne!(slot.generation(), generation, "shutdown dropped the timer");

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            assert!(is_timed(slot.lookup(Instant::now(), never)));
            let generation = slot.generation();
            slot.store(token("newer", 2 * HOUR)).unwrap();
            assert!(is_timed(slot.lookup(Instant::now(), never)));
            // The replaced timer's task is aborted; its guard bumps when it is dropped.
            tokio::task::yield_now().await;
            assert!(
                slot.generation() >= generation + 2,
                "store and replaced timer"
            );
        });
    }

    #[tokio::test(start_paused = true)]
    async fn lookup_without_a_token_waits_on_one_shared_acquisition() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let waits: Vec<_> = (0..10)
            .map(|_| {
                match slot.lookup(Instant::now(), counting(&calls, |_| Ok(token("t", HOUR)))) {
                    Lookup::Wait(acquisition) => acquisition,
                    Lookup::Use { .. } => panic!("no token yet"),
                }
            })
            .collect();
        for w in waits {
            assert_eq!(w.await.unwrap().value.secret().expose_secret(), "t");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let (entry, _, recheck_at) =
            use_of(slot.lookup(Instant::now(), counting(&calls, |_| Err(failure()))));
        assert_eq!(entry.value.secret().expose_secret(), "t");
        assert_eq!(recheck_at, entry.refresh_at);
        assert_eq!(recheck_at, entry.expires_on - DEFAULT_REFRESH_WINDOW);
    }

    #[tokio::test(start_paused = true)]
    async fn lookup_in_the_window_hands_out_the_current_token_and_refreshes_in_the_background() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let old = slot.store(token("old", Duration::from_secs(200))).unwrap();
        tokio::time::advance(Duration::from_secs(100)).await;
        let g0 = slot.generation();
        let slow = {
            let calls = Arc::clone(&calls);
            move || {
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(token("new", HOUR))
                }
                .boxed()
            }
        };
        let (entry, _, recheck_at) = use_of(slot.lookup(Instant::now(), slow));
        assert_eq!(entry.id, old.id);
        assert_eq!(
            recheck_at, entry.expires_on,
            "the acquisition's end will bump the generation"
        );
        // Many lookups during the refresh: same token, no second acquisition.
        for _ in 0..100 {
            let (e, _, _) =
                use_of(slot.lookup(Instant::now(), counting(&calls, |_| Err(failure()))));
            assert_eq!(e.id, old.id);
        }
        // Sleeping on the paused clock lets the background acquisition run to its end.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(slot.generation() > g0);
        let (e, _, _) = use_of(slot.lookup(Instant::now(), counting(&calls, |_| Err(failure()))));
        assert_eq!(e.value.secret().expose_secret(), "new");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_returning_the_same_token_counts_as_a_failed_attempt() {
        // Without a refresh time, or with one already reached (a credential's cached token,
        // handed back because its own renewal failed).
        for refresh_in in [None, Some(Duration::from_secs(50))] {
            same_token_without_timing_ahead(refresh_in).await;
        }
    }

    /// A token stored while a renewal ran stays, even when the renewal brings the same secret
    /// with timing of its own (the layer's renewal handing back the claims token its
    /// credential stored meanwhile): it keeps what was stored with it.
    #[tokio::test(start_paused = true)]
    async fn a_token_stored_during_a_renewal_stays_even_against_the_same_secret() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        slot.store(token("t1", Duration::from_secs(600))).unwrap();
        tokio::time::advance(Duration::from_secs(301)).await;
        let (answer, answered) = tokio::sync::oneshot::channel::<AccessToken>();
        let acquire = move || async move { answered.await.map_err(|_| failure()) };
        use_of(slot.lookup(Instant::now(), acquire));
        let stored = slot
            .store(token("c", HOUR).with_token_type("stored"))
            .unwrap();
        answer.send(token("c", HOUR)).unwrap();
        settle().await;
        let current = slot.current_entry().unwrap();
        assert_eq!(current.id, stored.id);
        assert_eq!(current.value.token_type(), "stored");
    }

    /// An acquisition that brings back the secret of a token that has expired meanwhile (a
    /// wall clock stepped between two answers giving `expires_on`) never hands out the
    /// expired entry: the new answer is stored.
    #[tokio::test(start_paused = true)]
    async fn the_same_secret_back_after_its_expiry_is_stored_anew_not_the_expired_entry() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        slot.store(token("same", Duration::from_secs(40))).unwrap();
        tokio::time::advance(Duration::from_secs(41)).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let got = slot
            .get(counting(&calls, |_| {
                Ok(token("same", Duration::from_secs(100)))
            }))
            .await
            .unwrap();
        assert!(!got.is_expired(), "{got:?}");
        assert!(got.expires_on() > Instant::now());
    }

    async fn same_token_without_timing_ahead(refresh_in: Option<Duration>) {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let same = token("same", Duration::from_secs(200))
            .with_refresh_on(refresh_in.map(|d| Instant::now() + d));
        let stored = slot.store(same.clone()).unwrap();
        tokio::time::advance(Duration::from_secs(100)).await;
        let again = same.clone();
        use_of(slot.lookup(Instant::now(), counting(&calls, move |_| Ok(again))));
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let (e, _, recheck_at) =
            use_of(slot.lookup(Instant::now(), counting(&calls, |_| Err(failure()))));
        assert_eq!(e.id, stored.id, "the entry is kept");
        assert_eq!(recheck_at, Instant::now() + DEFAULT_RETRY_AFTER_FAILURE);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "no second attempt within 30 s"
        );
    }

    /// IMDS and App Service answer their cached token until shortly before it expires: at
    /// half-life the renewal gets the same token back, with a refresh time of its own. Before,
    /// that counted as a failed attempt, and the slot asked every 30 s until the window.
    #[tokio::test(start_paused = true)]
    async fn the_same_token_with_a_refresh_time_ahead_moves_the_renewal() {
        const DAY: Duration = Duration::from_secs(86_400);
        // What the managed-identity parser makes of an answer: refresh at half the lifetime
        // given, for lifetimes of 2 h or more. `literal`: the answer says 86400 s each time;
        // else the token issued at `issued`, with the time it has left.
        let answer = move |literal: bool, issued: Instant| {
            move |_| {
                let now = Instant::now();
                let expires = if literal { now + DAY } else { issued + DAY };
                let left = expires - now;
                let refresh_on =
                    (left >= crate::token::HALF_LIFE_THRESHOLD).then(|| now + left / 2);
                Ok(AccessToken::new("same", expires).with_refresh_on(refresh_on))
            }
        };
        // Asked every 10 s for the 11 h 55 min from half-life to the 300 s window.
        const STEPS: u32 = (12 * 360) - 30;
        for (literal, expected) in [(true, 2), (false, 5)] {
            // A credential's slot over the provider…
            let slot = TokenSlot::new("Test", RefreshPolicy::default());
            let calls = Arc::new(AtomicUsize::new(0));
            let issued = Instant::now();
            slot.get(counting(&calls, answer(literal, issued)))
                .await
                .unwrap();
            tokio::time::advance(DAY / 2).await;
            let first = slot.current_entry().unwrap().id;
            for _ in 0..STEPS {
                let got = slot
                    .get(counting(&calls, answer(literal, issued)))
                    .await
                    .unwrap();
                assert_eq!(got.secret().expose_secret(), "same");
                tokio::time::advance(Duration::from_secs(10)).await;
            }
            // Initial, then 12 h (→ 36 h) / 12, 18, 21, 22.5 h (that answer has under 2 h
            // left, no refresh_in: renewed in its window, at 23 h 55).
            assert_eq!(calls.load(Ordering::SeqCst), expected, "literal: {literal}");
            assert_eq!(
                slot.current_entry().unwrap().id,
                first,
                "the same token's id"
            );
        }
        // The layer's slot over a credential's slot over the provider: both follow.
        let answer = answer(false, Instant::now());
        let inner = TokenSlot::new("Inner", RefreshPolicy::default());
        let outer = TokenSlot::new("Outer", RefreshPolicy::default());
        let (calls, asked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let through = || {
            let (inner, calls, asked) =
                (Arc::clone(&inner), Arc::clone(&calls), Arc::clone(&asked));
            move || async move {
                asked.fetch_add(1, Ordering::SeqCst);
                inner.get(counting(&calls, answer)).await
            }
        };
        outer.get(through()).await.unwrap();
        tokio::time::advance(DAY / 2).await;
        for _ in 0..STEPS {
            outer.get(through()).await.unwrap();
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 5, "provider requests");
        assert!(
            asked.load(Ordering::SeqCst) <= 10,
            "outer acquisitions: {asked:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_stored_during_a_renewal_is_not_replaced_by_its_outcome() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        slot.store(token("old", Duration::from_secs(600))).unwrap();
        tokio::time::advance(Duration::from_secs(301)).await;
        let (send, answer) = tokio::sync::oneshot::channel::<AccessToken>();
        let renewal = move || async move { Ok(answer.await.unwrap()) };
        assert!(matches!(
            slot.lookup(Instant::now(), renewal),
            Lookup::Use { .. }
        ));
        // A claims challenge's token lands while the renewal runs.
        let claims = slot.store(token("claims", HOUR)).unwrap();
        let generation = slot.generation();
        send.send(token("renewed", HOUR)).unwrap();
        while slot.generation() == generation {
            tokio::task::yield_now().await;
        }
        let current = slot.current_entry().unwrap();
        assert_eq!(current.id, claims.id);
        assert_eq!(current.value.secret().expose_secret(), "claims");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_that_expired_before_it_landed_is_an_error() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let late = || async { Ok(AccessToken::new("late", Instant::now())) };
        let err = slot.get(late).await.unwrap_err();
        assert!(err.is_authentication_failed(), "{err}");
        assert!(err.message().contains("already expired"), "{err}");
        assert!(slot.current_entry().is_none());
    }

    /// A token stored again (a claims answer that is the token the slot holds) is the same
    /// token: a 401 for it, which names the id it was sent with, forgets it.
    #[tokio::test(start_paused = true)]
    async fn the_same_token_stored_again_keeps_its_id() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let first = slot.store(token("same", HOUR)).unwrap();
        let again = slot.store(token("same", HOUR)).unwrap();
        assert_eq!(again.id, first.id);
        assert!(slot.invalidate(first.id));
        assert!(slot.current_entry().is_none());
        let other = slot.store(token("other", HOUR)).unwrap();
        assert_ne!(other.id, first.id);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_forgets_only_the_token_it_names() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let first = slot.store(token("a", HOUR)).unwrap();
        let second = slot.store(token("b", HOUR)).unwrap();
        slot.invalidate(first.id);
        assert_eq!(slot.current_entry().unwrap().id, second.id);
        let g = slot.generation();
        slot.invalidate(second.id);
        assert!(slot.current_entry().is_none());
        assert!(slot.generation() > g);
    }

    /// The slot's lookup, waited for: the layer's way in.
    async fn looked_up<F, Fut>(slot: &Arc<TokenSlot>, acquire: F) -> Result<String, CredentialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, CredentialError>> + Send + 'static,
    {
        let entry = match slot.lookup(Instant::now(), acquire) {
            Lookup::Use { entry, .. } => entry,
            Lookup::Wait(acquisition) => acquisition.await?,
        };
        Ok(entry.value.secret().expose_secret().to_owned())
    }

    /// A rejected token's replacement that fails is spaced as a failed renewal is: for 30 s
    /// from its end its error is the answer, the credential not asked; concurrent callers
    /// share one acquisition. Before, each caller after a failure asked again. A cold slot's
    /// failure is not remembered, and a token stored or acquired ends the memory and the
    /// rejection: the slot is a plain one again (an expired token's failures are not
    /// remembered, and a token rejected within its failed renewal's spacing is replaced at
    /// once).
    #[tokio::test(start_paused = true)]
    async fn a_failed_replacement_of_a_rejected_token_is_spaced() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let failing = || counting(&calls, |_| Err(failure()));
        let rejected = slot.store(token("rejected", HOUR)).unwrap();
        assert!(slot.invalidate(rejected.id));
        let concurrent: Vec<_> = (0..50).map(|_| looked_up(&slot, failing())).collect();
        for outcome in futures_util::future::join_all(concurrent).await {
            let error = outcome.unwrap_err();
            assert!(error.message().contains("provider down"), "{error}");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one for 50 concurrent callers"
        );
        for _ in 0..29 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let error = looked_up(&slot, failing()).await.unwrap_err();
            assert!(error.message().contains("provider down"), "{error}");
            assert!(slot.get(failing()).await.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "none within 30 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(looked_up(&slot, failing()).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "again after 30 s");
        // A claims token stored ends the memory: dropped in turn, it is replaced at once.
        let stored = slot.store(token("claims", HOUR)).unwrap();
        assert!(slot.invalidate(stored.id));
        let fresh = || counting(&calls, |n| Ok(token(&format!("t{n}"), HOUR)));
        assert_eq!(looked_up(&slot, fresh()).await.unwrap(), "t3");
        // As does an acquisition's token: the slot is a plain one again after it.
        let current = slot.current_entry().unwrap();
        assert!(slot.invalidate(current.id));
        assert!(looked_up(&slot, failing()).await.is_err());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(looked_up(&slot, fresh()).await.unwrap(), "t5");
        // Its renewal fails in its window (a renewal's spacing starts), and it is rejected
        // within that spacing: it is replaced at once, no earlier failure the answer.
        tokio::time::advance(HOUR - Duration::from_secs(200)).await;
        assert_eq!(looked_up(&slot, failing()).await.unwrap(), "t5");
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 6, "the renewal, failed");
        let current = slot.current_entry().unwrap();
        assert!(slot.invalidate(current.id));
        assert_eq!(looked_up(&slot, fresh()).await.unwrap(), "t7");
        // It expires, not rejected: each caller after a failure asks again.
        tokio::time::advance(HOUR).await;
        assert!(looked_up(&slot, failing()).await.is_err());
        assert!(looked_up(&slot, failing()).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 9, "not remembered");

        // A cold slot: each caller after a failure asks again, as before.
        let cold = TokenSlot::new("Test", RefreshPolicy::default());
        assert!(looked_up(&cold, failing()).await.is_err());
        assert!(looked_up(&cold, failing()).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 11);
    }

    /// A slot whose token was rejected.
    fn rejected_slot(name: &'static str) -> Arc<TokenSlot> {
        let slot = TokenSlot::new(name, RefreshPolicy::default());
        let rejected = slot.store(token("rejected", HOUR)).unwrap();
        assert!(slot.invalidate(rejected.id));
        slot
    }

    /// A failure that may pass by itself: no connection.
    fn unreachable() -> CredentialError {
        CredentialError::authentication_failed("Test", "connection refused").with_cause(
            crate::error::Cause {
                connect: true,
                transient: true,
                ..Default::default()
            },
        )
    }

    /// The provider asked to wait `wait` from now.
    fn throttled(wait: Duration) -> CredentialError {
        CredentialError::authentication_failed("Test", "throttled").with_cause(
            crate::error::Cause {
                transient: true,
                throttled_until: Some(Instant::now() + wait),
                ..Default::default()
            },
        )
    }

    /// After a rejection, a throttled failure is the answer until the slot asks again: at the
    /// end of the provider's wait or of the spacing, whichever is later; its `retry_after`
    /// counts down to that moment. Before, a credential throttled for 120 s was asked again
    /// after 30 s, and a 5 s wait read zero while the slot answered with it 25 s more (a
    /// caller honouring it would spin).
    #[tokio::test(start_paused = true)]
    async fn a_throttled_replacement_of_a_rejected_token_says_when_the_slot_asks_again() {
        let slot = rejected_slot("Test");
        let calls = Arc::new(AtomicUsize::new(0));
        let secs = Duration::from_secs;
        let start = Instant::now();
        let long = || counting(&calls, |_| Err(throttled(Duration::from_secs(120))));
        let error = looked_up(&slot, long()).await.unwrap_err();
        assert_eq!(error.retry_after(), Some(secs(120)));
        for at in [30, 60, 119] {
            tokio::time::advance(start + secs(at) - Instant::now()).await;
            let error = looked_up(&slot, long()).await.unwrap_err();
            assert!(error.is_throttled() && error.is_transient(), "{error:?}");
            assert_eq!(error.retry_after(), Some(secs(120 - at)), "at {at} s");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "not within the provider's wait"
        );

        tokio::time::advance(secs(1)).await;
        let start = Instant::now();
        let short = || counting(&calls, |_| Err(throttled(Duration::from_secs(5))));
        let error = looked_up(&slot, short()).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "asked at its end");
        assert_eq!(error.retry_after(), Some(secs(30)), "the spacing, longer");
        for at in [5, 10, 29] {
            tokio::time::advance(start + secs(at) - Instant::now()).await;
            let error = looked_up(&slot, short()).await.unwrap_err();
            assert!(error.is_throttled() && error.is_transient(), "{error:?}");
            assert_eq!(error.retry_after(), Some(secs(30 - at)), "at {at} s");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(secs(1)).await;
        assert!(looked_up(&slot, short()).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3, "asked again after 30 s");
    }

    /// After a rejection, a failure that may pass by itself (no connection, a timeout, a 5xx
    /// without a wait) is not remembered: the next caller asks again, as in a cold slot (a
    /// machine woken past its token's expiry, its network not back yet, fails one request,
    /// not those of 30 s). Concurrent callers still share one acquisition. A final failure
    /// (a refusal) is remembered for the spacing, without a `retry_after`. Before, the
    /// transient one was remembered too.
    #[tokio::test(start_paused = true)]
    async fn after_a_rejection_a_transient_failure_is_not_remembered() {
        let slot = rejected_slot("Test");
        let calls = Arc::new(AtomicUsize::new(0));
        let down = || counting(&calls, |_| Err(unreachable()));
        for n in 1..=3 {
            let error = looked_up(&slot, down()).await.unwrap_err();
            assert!(error.is_connect(), "{error:?}");
            assert_eq!(calls.load(Ordering::SeqCst), n, "asked each time");
        }
        let concurrent: Vec<_> = (0..10).map(|_| looked_up(&slot, down())).collect();
        for outcome in futures_util::future::join_all(concurrent).await {
            assert!(outcome.unwrap_err().is_connect());
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "one for 10 concurrent callers"
        );

        let refused = || counting(&calls, |_| Err(failure()));
        let error = looked_up(&slot, refused()).await.unwrap_err();
        assert!(!error.is_transient() && error.retry_after().is_none());
        tokio::time::advance(Duration::from_secs(29)).await;
        let error = looked_up(&slot, refused()).await.unwrap_err();
        assert!(error.message().contains("provider down"), "{error}");
        assert!(error.retry_after().is_none(), "not throttled");
        assert_eq!(calls.load(Ordering::SeqCst), 5, "remembered");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(looked_up(&slot, down()).await.is_err());
        let fresh = || counting(&calls, |n| Ok(token(&format!("t{n}"), HOUR)));
        assert_eq!(looked_up(&slot, fresh()).await.unwrap(), "t7");
    }

    /// After a rejection, a throttled failure whose wait is 0 or already past asks for no wait:
    /// a transient failure like any other, not remembered. Before, it was remembered for 30 s
    /// and its `retry_after()` raised from 0 to 30 s.
    #[tokio::test(start_paused = true)]
    async fn after_a_rejection_a_retry_after_of_0_is_not_remembered() {
        let slot = rejected_slot("Test");
        let calls = Arc::new(AtomicUsize::new(0));
        let now = || counting(&calls, |_| Err(throttled(Duration::ZERO)));
        for n in 1..=3 {
            let error = looked_up(&slot, now()).await.unwrap_err();
            assert_eq!(error.retry_after(), Some(Duration::ZERO), "{error:?}");
            assert_eq!(calls.load(Ordering::SeqCst), n, "asked each time");
        }
    }

    /// After a rejection, an acquisition that panicked gave no answer of the credential's: it
    /// is not remembered, and the next caller starts anew. Before, its "did not finish"
    /// error was every caller's answer for 30 s.
    #[tokio::test(start_paused = true)]
    async fn a_panicked_replacement_of_a_rejected_token_is_not_remembered() {
        let slot = rejected_slot("Test");
        let error = looked_up(&slot, || async { panic!("boom") }.boxed())
            .await
            .unwrap_err();
        assert!(error.message().contains("did not finish"), "{error}");
        let calls = Arc::new(AtomicUsize::new(0));
        let fresh = counting(&calls, |_| Ok(token("t1", HOUR)));
        assert_eq!(looked_up(&slot, fresh).await.unwrap(), "t1");
    }

    /// `acquire` panicking as it is called (not inside the future it returns), through `get`
    /// and through `lookup`, after a rejection (when failures may be remembered): the panic
    /// reaches its caller, a caller that joined the acquisition meanwhile gets the "work was
    /// never made" error, marked cut off, which is not remembered, and the next caller starts
    /// a new acquisition (`deferred`'s claim).
    #[tokio::test(start_paused = true)]
    async fn an_acquire_that_panics_as_it_is_called_is_not_remembered() {
        fn panicking() -> std::future::Ready<Result<AccessToken, CredentialError>> {
            panic!("acquire panicked")
        }
        for through_get in [true, false] {
            let slot = rejected_slot("Test");
            let panicked = if through_get {
                std::panic::AssertUnwindSafe(slot.get(panicking))
                    .catch_unwind()
                    .await
                    .is_err()
            } else {
                let lookup = || drop(slot.lookup(Instant::now(), panicking));
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(lookup)).is_err()
            };
            assert!(panicked, "the panic reaches the caller");
            // The acquisition is recorded, its task not run yet: this caller joins it.
            let error = slot.get(never).await.unwrap_err();
            assert!(error.is_unfinished(), "{error:?}");
            assert!(error.message().contains("never made"), "{error}");
            let calls = Arc::new(AtomicUsize::new(0));
            let fresh = counting(&calls, |_| Ok(token("t", HOUR)));
            assert_eq!(looked_up(&slot, fresh).await.unwrap(), "t");
            assert_eq!(calls.load(Ordering::SeqCst), 1, "asked anew");
        }
    }

    /// The same for an acquisition whose runtime shut down, and for one that waited on such
    /// an acquisition of another slot (a layer's over its credential's, on another runtime),
    /// whose error says so too.
    #[test]
    fn a_replacement_cut_off_by_a_runtime_shutdown_is_not_remembered() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        let never = || std::future::pending::<Result<AccessToken, CredentialError>>();
        let credential = TokenSlot::new("Credential", RefreshPolicy::default());
        let first = runtime();
        let (own, cut) = first.block_on(async {
            let own = rejected_slot("Own");
            let Lookup::Wait(cut) = own.lookup(Instant::now(), never) else {
                panic!("no token to use");
            };
            // Nobody waits for it yet: it runs on (`WhenAbandoned::RunOn`).
            drop(credential.lookup(Instant::now(), never));
            (own, cut)
        });
        let second = runtime();
        let (layer, waiting) = second.block_on(async {
            let layer = rejected_slot("Layer");
            let asked = Arc::clone(&credential);
            let through = move || async move { asked.get(never).await }.boxed();
            let Lookup::Wait(waiting) = layer.lookup(Instant::now(), through) else {
                panic!("no token to use");
            };
            // Its acquisition joins the credential's.
            settle().await;
            (layer, waiting)
        });
        drop(first);
        second.block_on(async {
            let calls = Arc::new(AtomicUsize::new(0));
            for (slot, acquisition) in [(own, cut), (layer, waiting)] {
                let error = acquisition.await.unwrap_err();
                assert!(error.message().contains("did not finish"), "{error}");
                let fresh = counting(&calls, |n| Ok(token(&format!("t{n}"), HOUR)));
                assert!(looked_up(&slot, fresh).await.is_ok(), "asked anew");
            }
            assert_eq!(calls.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn jitter_moves_refresh_time_later_within_bounds_and_refresh_on_wins_when_earlier() {
        let policy = RefreshPolicy {
            jitter: Duration::from_secs(60),
            ..RefreshPolicy::default()
        };
        let base = std::time::Instant::now();
        let now = Instant::from_std(base);
        let expires = now + HOUR;
        let t = AccessToken::new("t", expires);
        for _ in 0..200 {
            let at = policy.refresh_at(&t, now);
            assert!(
                at >= expires - Duration::from_secs(300)
                    && at <= expires - Duration::from_secs(240)
            );
        }
        let early = Instant::from_std(base) + Duration::from_secs(600);
        let t = t.with_refresh_on(Some(early));
        for _ in 0..200 {
            let at = policy.refresh_at(&t, now);
            assert!(at >= early && at <= early + Duration::from_secs(60));
        }
    }

    #[test]
    fn settings_up_to_the_largest_duration_do_not_panic() {
        let now = Instant::now();
        let t = AccessToken::new("t", now + Duration::from_secs(3600));
        for (window, jitter) in [
            (Duration::MAX, Duration::MAX),
            (Duration::from_secs(300), Duration::MAX),
            (Duration::MAX, Duration::ZERO),
            (Duration::ZERO, Duration::MAX),
        ] {
            let policy = RefreshPolicy {
                window,
                jitter,
                ..RefreshPolicy::default()
            };
            let at = policy.refresh_at(&t, now);
            assert!(at >= now && at <= t.expires_on(), "{window:?} {jitter:?}");
        }
        // Jitter past the window is the window: the renewal lands somewhere in it.
        let policy = RefreshPolicy {
            jitter: Duration::MAX,
            ..RefreshPolicy::default()
        };
        assert!(policy.refresh_at(&t, now) >= t.expires_on() - Duration::from_secs(300));
    }

    #[test]
    fn short_lifetimes_get_a_proportional_window_and_jitter() {
        let now = Instant::from_std(std::time::Instant::now());
        let plain = RefreshPolicy::default();
        for (lifetime_ms, renew_after_ms) in [
            (5_000, 2_500),
            (60_000, 30_000),
            (240_000, 120_000),
            (299_000, 149_500),
            (301_000, 150_500),
            (600_000, 300_000),
            (3_600_000, 3_300_000),
        ] {
            let t = AccessToken::new("t", now + Duration::from_millis(lifetime_ms));
            assert_eq!(
                plain.refresh_at(&t, now),
                now + Duration::from_millis(renew_after_ms),
                "{lifetime_ms}"
            );
        }
        // 60 s of jitter on a 300 s window is a fifth of it; on a 30 s window, 6 s.
        let jittered = RefreshPolicy {
            jitter: Duration::from_secs(60),
            ..RefreshPolicy::default()
        };
        let t = AccessToken::new("t", now + Duration::from_secs(60));
        for _ in 0..200 {
            let at = jittered.refresh_at(&t, now);
            assert!(
                at >= now + Duration::from_secs(30) && at <= now + Duration::from_secs(36),
                "{:?}",
                at - now
            );
        }
        // Already expired: renew now, never before the clock's origin.
        let expired = AccessToken::new("t", now);
        assert_eq!(plain.refresh_at(&expired, now), now);
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_refresh_on_is_honoured_after_a_first_acquisition_then_spaced() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let early =
            |name: &'static str| {
                move |_| {
                    Ok(token(name, HOUR)
                        .with_refresh_on(Some(Instant::now() + Duration::from_secs(3))))
                }
            };
        slot.get(counting(&calls, early("first"))).await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        // The first acquisition was no renewal: the provider's early refresh time holds.
        let got = slot.get(counting(&calls, early("second"))).await.unwrap();
        assert_eq!(
            got.secret().expose_secret(),
            "first",
            "renewed in the background"
        );
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // That renewal is followed by no other for 30 s.
        tokio::time::advance(Duration::from_secs(3)).await;
        let got = slot.get(counting(&calls, early("third"))).await.unwrap();
        assert_eq!(
            got.secret().expose_secret(),
            "second",
            "held by the spacing"
        );
        tokio::time::advance(Duration::from_secs(27)).await;
        let got = slot.get(counting(&calls, early("third"))).await.unwrap();
        assert_eq!(got.secret().expose_secret(), "second");
        settle().await;
        let got = slot.get(counting(&calls, early("fourth"))).await.unwrap();
        assert_eq!(got.secret().expose_secret(), "third");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// The layer's 240 s benchmark made hundreds of token requests per second: a renewal
    /// that brought a token already inside its window cleared the spacing, so the next
    /// request started another at once.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_is_never_followed_by_another_within_the_spacing() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        // Every acquisition hands back a token that wants renewing right away.
        let stale =
            |n: usize| Ok(token(&format!("t{n}"), HOUR).with_refresh_on(Some(Instant::now())));
        slot.get(counting(&calls, stale)).await.unwrap();
        for _ in 0..1000 {
            use_of(slot.lookup(Instant::now(), counting(&calls, stale)));
            tokio::task::yield_now().await;
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        // 10 s of lookups every 10 ms: the first acquisition, and one renewal at once (the
        // first acquisition was no renewal), then none.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(20)).await;
        for _ in 0..1000 {
            use_of(slot.lookup(Instant::now(), counting(&calls, stale)));
            tokio::task::yield_now().await;
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        // From 30 s on, one renewal per 30 s: at 30 s, and none again before 60 s.
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_spacing_counts_from_the_end_of_an_attempt() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        slot.store(token("old", Duration::from_secs(600))).unwrap();
        tokio::time::advance(Duration::from_secs(300)).await;
        // A refresh that takes 5 s and fails.
        let slow_failure = {
            let calls = Arc::clone(&calls);
            move || {
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Err(failure())
                }
                .boxed()
            }
        };
        assert_eq!(
            slot.get(slow_failure)
                .await
                .unwrap()
                .secret()
                .expose_secret(),
            "old"
        );
        // It ends 5 s later, in the background.
        tokio::time::sleep(Duration::from_secs(5)).await;
        settle().await;
        // 30 s after it started but 25 s after it ended: no attempt yet.
        tokio::time::advance(Duration::from_secs(25)).await;
        slot.get(counting(&calls, |_| Err(failure())))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        slot.get(counting(&calls, |_| Err(failure())))
            .await
            .unwrap();
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// A slot polled outside a tokio runtime (`futures::executor::block_on`): with no token,
    /// credentials' `get` and the layer's `lookup` get an error (before: `tokio::spawn`'s
    /// panic); a fresh token is handed out as ever.
    #[test]
    fn without_a_runtime_an_empty_slot_is_an_error_and_a_fresh_token_is_served() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let acquire = || async { Ok(AccessToken::new("t", Instant::now() + HOUR)) };
        let error = crate::flight::block_on(slot.get(acquire)).unwrap_err();
        assert!(error.is_invalid_request(), "{error}");
        assert!(error.message().contains("needs a tokio runtime"), "{error}");
        let Lookup::Wait(acquisition) = slot.lookup(Instant::now(), acquire) else {
            panic!("no token yet");
        };
        assert!(crate::flight::block_on(acquisition).is_err());
        slot.store(AccessToken::new("fresh", Instant::now() + HOUR))
            .unwrap();
        let got = crate::flight::block_on(slot.get(acquire)).unwrap();
        assert_eq!(got.secret().expose_secret(), "fresh");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_acquisition_names_the_credential() {
        let slot: Arc<TokenSlot> = TokenSlot::new("SomeCredential", RefreshPolicy::default());
        let err = slot
            .get(|| async { panic!("boom") }.boxed())
            .await
            .unwrap_err();
        assert_eq!(err.credential(), "SomeCredential");
    }

    /// A current-thread runtime built without timers, over a credential that answers at once
    /// (a setup the bearer layer supports: `bearer/mod.rs`): no acquisition makes a timer, so
    /// tokio's panic making one is never met — first acquisitions through `get` and `lookup`,
    /// and a renewal, on several slots. Before, every slot's first acquisition panicked
    /// making its limit's timer (caught, but printed by the panic hook; under
    /// `panic = "abort"` the process aborted).
    #[test]
    fn a_runtime_without_timers_acquires_at_once_without_panicking() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let at_once = |name: &'static str, lifetime: Duration| {
            move || async move {
                let token = AccessToken::new(name, Instant::now() + lifetime);
                Ok(token.with_refresh_on(Some(Instant::now())))
            }
        };
        let ((), panics) = crate::flight::panics_on_this_thread(|| {
            runtime.block_on(async {
                for _ in 0..3 {
                    let slot = TokenSlot::new("Test", RefreshPolicy::default());
                    let got = slot.get(at_once("a", HOUR)).await.unwrap();
                    assert_eq!(got.secret().expose_secret(), "a");
                    // Due at once: a renewal, in the background.
                    let got = slot.get(at_once("b", HOUR)).await.unwrap();
                    assert_eq!(got.secret().expose_secret(), "a");
                    settle().await;
                    let current = slot.current_entry().unwrap();
                    assert_eq!(current.value.secret().expose_secret(), "b");
                    let layer = TokenSlot::new("Layer", RefreshPolicy::default());
                    assert_eq!(looked_up(&layer, at_once("c", HOUR)).await.unwrap(), "c");
                    assert_eq!(looked_up(&layer, at_once("d", HOUR)).await.unwrap(), "c");
                    settle().await;
                    assert_eq!(looked_up(&layer, never).await.unwrap(), "d");
                }
            })
        });
        assert_eq!(panics, 0, "tokio's panic for a timer was met");
    }

    /// An acquisition that never ends: the credential (or an HTTP client without a deadline)
    /// never answers.
    fn hung(
        calls: &Arc<AtomicUsize>,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<AccessToken, CredentialError>> + use<> {
        let calls = Arc::clone(calls);
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending().boxed()
        }
    }

    /// `waiting`, which must end at [`ACQUISITION_LIMIT`] after `start`: a second later the
    /// test fails instead of hanging.
    async fn ends_at_the_limit<T>(start: Instant, waiting: impl Future<Output = T>) -> T {
        let ended = tokio::time::timeout(ACQUISITION_LIMIT + Duration::from_secs(1), waiting)
            .await
            .expect("waiters of a hung acquisition still wait after the limit");
        assert_eq!(
            Instant::now() - start,
            ACQUISITION_LIMIT,
            "ended at the limit"
        );
        ended
    }

    fn assert_cut_off(error: &CredentialError) {
        assert!(error.is_timeout() && error.is_transient(), "{error:?}");
        assert!(!error.is_unfinished(), "{error:?}");
        assert_eq!(error.credential(), "Test");
        assert!(error.message().contains("did not end within"), "{error}");
    }

    /// An acquisition that never ends is cut off at `ACQUISITION_LIMIT`: its waiters (of
    /// `get` and `lookup`, many) get a transient timeout error, and the next caller starts a
    /// new acquisition. Before, the flight stayed recorded for good: every caller joined it
    /// and waited for ever, and nothing asked the credential again.
    #[tokio::test(start_paused = true)]
    async fn an_acquisition_that_never_ends_is_cut_off_at_the_limit() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let got: Vec<_> = (0..50).map(|_| slot.get(hung(&calls))).collect();
        let looked: Vec<_> = (0..50).map(|_| looked_up(&slot, hung(&calls))).collect();
        let waiting = futures_util::future::join(
            futures_util::future::join_all(got),
            futures_util::future::join_all(looked),
        );
        let (got, looked) = ends_at_the_limit(start, waiting).await;
        for error in got.iter().map(|r| r.as_ref().unwrap_err()) {
            assert_cut_off(error);
        }
        for error in looked.iter().map(|r| r.as_ref().unwrap_err()) {
            assert_cut_off(error);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one for 100 callers");
        let fresh = counting(&calls, |_| Ok(token("t", HOUR)));
        assert_eq!(slot.get(fresh).await.unwrap().secret().expose_secret(), "t");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "asked anew");
    }

    /// A renewal that never ends holds the valid token's callers up no more than before (they
    /// never wait for it), but once the token has expired they join it: cut off at the limit,
    /// as a first acquisition is, and the next caller asks anew.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_never_ends_is_cut_off_at_the_limit() {
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let calls = Arc::new(AtomicUsize::new(0));
        slot.store(token("old", Duration::from_secs(600))).unwrap();
        tokio::time::advance(Duration::from_secs(301)).await;
        let start = Instant::now();
        assert_eq!(looked_up(&slot, hung(&calls)).await.unwrap(), "old");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the renewal started");
        tokio::time::advance(Duration::from_secs(300)).await;
        let waiting = futures_util::future::join_all((0..20).map(|_| slot.get(hung(&calls))));
        for outcome in ends_at_the_limit(start, waiting).await {
            assert_cut_off(&outcome.unwrap_err());
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the expired token's callers joined it"
        );
        let fresh = counting(&calls, |_| Ok(token("new", HOUR)));
        assert_eq!(looked_up(&slot, fresh).await.unwrap(), "new");
    }

    /// A renewal cut off while its token is still valid (a `refresh_window` of 65 min or more
    /// starts it that long before expiry) is a failed renewal: callers keep the valid token,
    /// and the next renewal starts once the spacing has passed since the cut-off, not at once.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_cut_off_while_its_token_is_valid_is_spaced() {
        let policy = RefreshPolicy {
            window: 2 * HOUR,
            ..RefreshPolicy::default()
        };
        let slot = TokenSlot::new("Test", policy);
        let calls = Arc::new(AtomicUsize::new(0));
        // Renewed 2 h before its expiry.
        slot.store(token("old", 4 * HOUR)).unwrap();
        tokio::time::advance(2 * HOUR + Duration::from_secs(1)).await;
        assert_eq!(looked_up(&slot, hung(&calls)).await.unwrap(), "old");
        tokio::time::advance(ACQUISITION_LIMIT).await;
        settle().await;
        let fresh = || counting(&calls, |_| Ok(token("new", HOUR)));
        for _ in 0..29 {
            assert_eq!(looked_up(&slot, fresh()).await.unwrap(), "old");
            settle().await;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "spaced from the cut-off");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(looked_up(&slot, fresh()).await.unwrap(), "old");
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "renewed after the spacing");
        assert_eq!(looked_up(&slot, never).await.unwrap(), "new");
    }

    /// After a rejected token, the cut-off replacement is a transient failure asking for no
    /// wait: not remembered (`kept_failure`), the next caller asks again at once.
    #[tokio::test(start_paused = true)]
    async fn a_cut_off_replacement_of_a_rejected_token_is_not_remembered() {
        let slot = rejected_slot("Test");
        let calls = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let error = ends_at_the_limit(start, looked_up(&slot, hung(&calls)))
            .await
            .unwrap_err();
        assert_cut_off(&error);
        let fresh = counting(&calls, |_| Ok(token("t", HOUR)));
        assert_eq!(looked_up(&slot, fresh).await.unwrap(), "t");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// A plain 401 drops the token; requests wait on its replacement; meanwhile a claims
    /// challenge's token is stored; the replacement fails. Its waiters get the stored token,
    /// which stays (a token stored meanwhile), whatever the failure. Before, every waiter got
    /// the failure while the slot held a valid token.
    #[tokio::test(start_paused = true)]
    async fn waiters_of_a_failed_acquisition_get_a_token_stored_meanwhile() {
        for error in [failure(), unreachable()] {
            let slot = rejected_slot("Test");
            let (fail, failed) = tokio::sync::oneshot::channel::<CredentialError>();
            let failing = move || async move { Err(failed.await.unwrap()) };
            let Lookup::Wait(acquisition) = slot.lookup(Instant::now(), failing) else {
                panic!("the token was rejected");
            };
            let joined = tokio::spawn({
                let slot = Arc::clone(&slot);
                async move { slot.get(never).await }
            });
            settle().await;
            let claims = slot.store(token("claims", HOUR)).unwrap();
            fail.send(error.clone()).unwrap();
            let entry = acquisition
                .await
                .expect("the stored token, not the failure");
            assert_eq!(entry.id, claims.id);
            let got = joined
                .await
                .unwrap()
                .expect("the stored token, not the failure");
            assert_eq!(got.secret().expose_secret(), "claims");
            assert_eq!(slot.current_entry().unwrap().id, claims.id, "it stays");
            assert_eq!(looked_up(&slot, never).await.unwrap(), "claims");
        }
    }

    /// A tracing layer that records, at each span made or entered, whether a slot's lock was
    /// held then.
    struct LockWatch {
        probe: Box<dyn Fn() -> bool + Send + Sync>,
        seen: Arc<AtomicUsize>,
        held: Arc<AtomicUsize>,
    }

    impl LockWatch {
        fn look(&self) {
            self.seen.fetch_add(1, Ordering::SeqCst);
            if (self.probe)() {
                self.held.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LockWatch {
        fn on_new_span(
            &self,
            _: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.look();
        }

        fn on_enter(&self, _: &tracing::span::Id, _: tracing_subscriber::layer::Context<'_, S>) {
            self.look();
        }
    }

    /// The acquisition's span (which a subscriber may log as it is made and entered) and the
    /// caller's `acquire` (a credential's `clone`, a user's code) run without the slot's lock:
    /// a first acquisition and a renewal, through `get` and `lookup`. Before, both ran under
    /// it (the module docs say it is never held across any I/O).
    #[tokio::test(start_paused = true)]
    async fn the_span_and_acquire_run_without_the_slots_lock() {
        use tracing_subscriber::layer::SubscriberExt;
        let slot = TokenSlot::new("Test", RefreshPolicy::default());
        let (seen, held) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let watch = LockWatch {
            probe: Box::new(slot.lock_probe()),
            seen: Arc::clone(&seen),
            held: Arc::clone(&held),
        };
        let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(watch));
        let (acquired, under_lock) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let acquire = |name: &'static str| {
            let probe = slot.lock_probe();
            let (acquired, under_lock) = (Arc::clone(&acquired), Arc::clone(&under_lock));
            move || {
                acquired.fetch_add(1, Ordering::SeqCst);
                if probe() {
                    under_lock.fetch_add(1, Ordering::SeqCst);
                }
                async move { Ok(token(name, Duration::from_secs(600))) }
            }
        };
        assert_eq!(
            slot.get(acquire("a"))
                .await
                .unwrap()
                .secret()
                .expose_secret(),
            "a"
        );
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(
            slot.get(acquire("b"))
                .await
                .unwrap()
                .secret()
                .expose_secret(),
            "a"
        );
        settle().await;
        assert!(slot.invalidate(slot.current_entry().unwrap().id));
        assert_eq!(looked_up(&slot, acquire("c")).await.unwrap(), "c");
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(looked_up(&slot, acquire("d")).await.unwrap(), "c");
        settle().await;
        assert_eq!(
            slot.current_entry().unwrap().value.secret().expose_secret(),
            "d"
        );
        assert_eq!(acquired.load(Ordering::SeqCst), 4);
        assert_eq!(
            under_lock.load(Ordering::SeqCst),
            0,
            "acquire ran under the lock"
        );
        assert!(
            seen.load(Ordering::SeqCst) >= 8,
            "each span made and entered"
        );
        assert_eq!(
            held.load(Ordering::SeqCst),
            0,
            "a span made or entered under the lock"
        );
    }
}
