//! Single-flight: one spawned acquisition per key, shared by every caller that asks while it
//! runs, its outcome published in the same critical section that ends its record.
//!
//! A [`SingleFlight`] owns its owner's state `S` (a cached token, an assertion per endpoint,
//! an authorization code) and the records of the flights that are running, under one mutex.
//! The owner takes the lock ([`SingleFlight::lock`]), looks at its state and decides: use what
//! it holds, join the running flight ([`FlightLock::running`]), or start one
//! ([`FlightLock::start`]). Used by the refresh slot ([`crate::refresh`]), the bearer layer's
//! claims tokens, the authorization-code redemption, the client-assertion calls, the
//! device-code sign-in and Azure CLI's check of `az` on a claims challenge.
//!
//! # Contract
//!
//! * **One run per key**: while a flight is recorded under a key, [`FlightLock::running`]
//!   hands out a handle to it, and every handle resolves to the same outcome. An owner checks
//!   it before starting; [`FlightLock::start`] replaces the record of a flight of the same
//!   key (whose own waiters keep waiting on it).
//! * **Atomic decisions and outcomes**: the work runs in its own task. When it ends, `land`
//!   turns its result into the outcome — storing what the owner keeps in `S` — and the record
//!   is removed, both under the lock the owner decides under. So a caller sees either the
//!   flight running or its outcome stored, never a finished flight still recorded: a failure
//!   reaches every waiter of that flight and never a caller that comes after it (that caller
//!   starts anew, unless the owner's own state says otherwise, as the refresh slot's memory
//!   of a rejected token's failed replacement, the bearer layer's memory of failed claims and
//!   the authorization code's kept refusals do). `start` records the flight under the lock already held, so the task cannot end
//!   (and remove its record) before it is written.
//! * **Cancellation**: a caller that drops its handle does not cancel the work for the
//!   others; the outcome lands even if nobody waits ([`WhenAbandoned::RunOn`]). With
//!   [`WhenAbandoned::Abort`] the task is aborted when the last handle is dropped (a sign-in
//!   prompt nobody waits for must stop): the record holds only a weak reference, so a caller
//!   after that starts anew. Until the work [commits](Commit::commit): from then on it is not
//!   aborted (what it did cannot be undone — a device code redeemed — and what follows must
//!   land), and a caller after every handle was dropped joins it.
//! * **Holds**: a step that may commit without the work learning so at once (the poll request
//!   that redeems a device code: Entra consumes the code when it answers with tokens, and an
//!   aborted request loses them) is taken under a [`Hold`] ([`Commit::hold`]). A hold counts
//!   as a handle: while it lives the flight is not aborted, a caller that gives up only leaves
//!   the abandonment pending, and a caller meanwhile joins the flight (and the abandonment is
//!   off). When the step answers, the work either [commits](Hold::commit) (it runs on, and is
//!   joined as any committed flight) or [releases](Hold::release) the hold: if every handle
//!   was dropped meanwhile, the flight is abandoned then, `release` says so, and the work
//!   returns an error at once (the task is aborted too, at its next wait). Without holds an
//!   abortable flight behaves as before. A hold lasts as long as its step: the device code
//!   poll's is bounded by the HTTP client's deadline (`RetryOptions::total_timeout`; a client
//!   built without one holds a hung request as long as it hangs). A hold is not taken while
//!   the work waits between steps: abandoned then, the flight is aborted at once.
//! * **Panics, aborts, runtime shutdown**: a guard inside the task lands an *authentication
//!   failed* error ("… did not finish", naming the credential) and removes the record, in one
//!   critical section, however the task ends; waiters get the same kind of error with the
//!   task's join error ("… did not finish: task 7 panicked …"). Both are marked as cut off
//!   (`CredentialError::is_unfinished`): the work gave no answer, so an owner that remembers
//!   failures does not remember these (the refresh slot after a rejected token, the bearer
//!   layer's memory of failed claims), nor one
//!   that came from waiting on such a flight of another owner. The next caller starts anew.
//!   On a runtime already shutting down, spawning drops the task at once, inside
//!   `start` and under its lock: the guard then does nothing (it would wait for that lock
//!   forever), nothing is recorded, and the callers get the join error.
//! * **No runtime**: polled outside a tokio runtime (under `futures::executor::block_on`,
//!   say), [`FlightLock::start`] spawns nothing and records nothing: the flight's handle
//!   resolves at once to an *invalid request* error ("… needs a tokio runtime"), and `land`
//!   is not called. Only starting a flight needs the runtime; an owner answering from its
//!   state (a fresh token) does not look for one.
//! * **Which runtime runs it**: the work is spawned on the runtime of the caller that starts
//!   the flight, and makes progress only while that runtime runs. A credential or layer
//!   shared between runtimes is fine while every one of them is driven (a multi-thread
//!   runtime, or current-thread runtimes each inside a `block_on` that lasts, as web servers'
//!   workers are). A current-thread runtime whose `block_on` has returned (a synchronous
//!   wrapper calling `block_on` per request) holds its flights still until it is driven
//!   again: callers on other runtimes that wait for such a flight (no valid token) wait as
//!   long. Such programs should share one multi-thread runtime (or keep one credential per
//!   runtime). The flight is not moved to another runtime: its HTTP connections belong to
//!   the runtime that opened them.
//! * **Records carry an id**: a guard removes its own record only, never the record of a newer
//!   flight of the same key.
//! * **Locks**: the mutex is never held across an `.await`: `land` is synchronous, and the
//!   work runs outside it. Code that is not the owner's own (a credential's `clone`, a
//!   caller's closure, a tracing span, which a subscriber may log) need not run under it
//!   either: [`deferred`] work is recorded under the lock and made once it is released. A `land` may take another lock only in a fixed order: the bearer
//!   layer's claims flight stores its token into the layer's refresh slot, so its lock comes
//!   before the slot's, never after (no `land` of a refresh slot takes another lock). The
//!   device code credential's sign-in `land` clears its token cache when another account
//!   signs in, taking the cache's map lock under the sign-in flight's lock, and so does its
//!   forgetting of an account whose refresh tokens are dead (the account unpinned and the
//!   cache cleared in one critical section, so no sign-in lands between them); its callers
//!   read the cache's generation under that lock too: the flight's lock comes before the
//!   map's, never after. A credential's token cache takes a slot's lock briefly under its
//!   map's lock (its sweep, see `cache.rs`); no slot's lock is held while the map's is taken. The
//!   last handle of a [`WhenAbandoned::Abort`] flight is not dropped with the lock held (a
//!   task dropped at once, as on a runtime shutting down, lands under the same lock). Each
//!   write under the lock leaves the state whole, so a poisoned lock is still used.

use std::borrow::Borrow;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};
use std::thread::ThreadId;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::error::{Cause, CredentialError};
use crate::redact::{MAX_QUOTED_CHARS, scrub, truncate};

type Joined<T> = Shared<BoxFuture<'static, Result<T, CredentialError>>>;

/// Flights keyed by `K`, each ending in a `T`, over the owner's state `S`. See the module docs.
pub(crate) struct SingleFlight<K, T, S = ()> {
    inner: Arc<Inner<K, T, S>>,
}

struct Inner<K, T, S> {
    /// The credential errors are reported under.
    name: &'static str,
    /// What a flight does, as an error about one that did not finish names it.
    what: &'static str,
    locked: Mutex<Locked<K, T, S>>,
    /// How many times the lock was found taken and waited for: a test sees that a thread
    /// (a flight landing) waits behind the one holding it.
    #[cfg(test)]
    waited: Arc<std::sync::atomic::AtomicUsize>,
}

struct Locked<K, T, S> {
    state: S,
    records: Vec<Record<K, T>>,
    next_id: u64,
}

struct Record<K, T> {
    key: K,
    id: u64,
    joined: Joined<T>,
    /// Set when the flight is aborted once abandoned (until its work commits): its callers
    /// hold the only strong references.
    holders: Option<(Weak<AbortOnDrop>, Commit)>,
}

/// The state and the records, locked: where an owner decides.
pub(crate) struct FlightLock<'a, K, T, S> {
    inner: &'a Arc<Inner<K, T, S>>,
    locked: MutexGuard<'a, Locked<K, T, S>>,
}

/// A handle to a running flight: awaits its outcome.
pub(crate) struct Flight<T> {
    joined: Joined<T>,
    /// For a flight aborted once abandoned: keeps it running while this handle lives.
    _holder: Option<Arc<AbortOnDrop>>,
}

impl<T> Clone for Flight<T> {
    fn clone(&self) -> Self {
        Self {
            joined: self.joined.clone(),
            _holder: self._holder.clone(),
        }
    }
}

impl<T: Clone + Send + 'static> Flight<T> {
    /// A handle that resolves at once to `error`: an owner's answer from its state when it
    /// starts no flight (the refresh slot's spaced failure, no runtime to start one on).
    pub(crate) fn failed(error: CredentialError) -> Self {
        Self {
            joined: futures_util::future::ready(Err(error)).boxed().shared(),
            _holder: None,
        }
    }
}

impl<T: Clone> Future for Flight<T> {
    type Output = Result<T, CredentialError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.joined.poll_unpin(cx)
    }
}

/// Aborts the task when the last handle of its flight (or the last [`Hold`]) is dropped,
/// unless its work has committed. Made before the task is spawned, so that its work finds it
/// from its first poll; the task's abort handle is set once spawned.
struct AbortOnDrop(OnceLock<AbortHandle>, Commit);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if self.1.abandon() {
            if let Some(abort) = self.0.get() {
                // Also from inside the task, when its last hold is released: it is cancelled
                // at its next wait, unless it ends first (the work returns an error then).
                abort.abort();
            }
        }
    }
}

/// The point past which a [`WhenAbandoned::Abort`] flight runs on though abandoned: its work
/// calls [`commit`](Self::commit) once what it did cannot be undone (a device code redeemed),
/// so that what follows (the tokens recorded, the account pinned) lands. Either the work
/// commits or the flight is abandoned first, never both: the one that comes second learns it.
///
/// Until then the work may [`hold`](Self::hold) the flight around a step that may make it
/// irrevocable (the poll request that may redeem the code): see the module docs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Commit(Arc<CommitState>);

#[derive(Debug, Default)]
struct CommitState {
    state: AtomicU8,
    /// The flight's abort guard, once [`FlightLock::start`] has made it: what a [`Hold`]
    /// keeps alive. Unset for a commit no abortable flight was started with.
    holder: OnceLock<Weak<AbortOnDrop>>,
}

/// Keeps a [`WhenAbandoned::Abort`] flight from being aborted while it lives, as a handle
/// does: a caller that gives up meanwhile leaves the abandonment to the hold's release. Its
/// work ends it with [`commit`](Self::commit) or [`release`](Self::release) (dropping it
/// releases it too).
#[must_use = "the flight is held only while the hold lives"]
pub(crate) struct Hold {
    commit: Commit,
    _holder: Option<Arc<AbortOnDrop>>,
}

impl Hold {
    /// Commits the flight, then releases it: it runs on, abandoned or not. `false` only for a
    /// commit already abandoned, which a hold taken on it cannot be.
    pub(crate) fn commit(self) -> bool {
        self.commit.commit()
    }

    /// Releases the flight: `false` when every handle was dropped, meanwhile or now (the
    /// flight is abandoned, its task is being aborted; the work should return at once).
    pub(crate) fn release(self) -> bool {
        let commit = self.commit.clone();
        drop(self);
        !commit.is_abandoned()
    }
}

/// The states of a [`Commit`].
const OPEN: u8 = 0;
const COMMITTED: u8 = 1;
const ABANDONED: u8 = 2;

impl Commit {
    /// Commits the flight: `false` when it was abandoned first (its task is being aborted,
    /// and its outcome goes to nobody).
    pub(crate) fn commit(&self) -> bool {
        self.settle(COMMITTED)
    }

    /// Abandons the flight, once every handle is gone: `true` unless its work committed
    /// first (then it runs on).
    fn abandon(&self) -> bool {
        self.settle(ABANDONED)
    }

    /// Moves an open flight to `to`, once and for good: `true` if it is `to` now.
    fn settle(&self, to: u8) -> bool {
        match self
            .0
            .state
            .compare_exchange(OPEN, to, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == to,
        }
    }

    fn is_committed(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == COMMITTED
    }

    fn is_abandoned(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == ABANDONED
    }

    /// Holds the flight until the hold is committed or released: while it lives the flight is
    /// not aborted, though every handle is dropped, and a caller meanwhile joins it. `None`
    /// when every handle is already gone (the task is being aborted; the work should return at
    /// once). For a commit no abortable flight was started with, a hold that holds nothing.
    pub(crate) fn hold(&self) -> Option<Hold> {
        let holder = match self.0.holder.get() {
            Some(weak) => Some(weak.upgrade()?),
            None => None,
        };
        Some(Hold {
            commit: self.clone(),
            _holder: holder,
        })
    }
}

impl<K, T, S> SingleFlight<K, T, S>
where
    K: PartialEq + Send + 'static,
    T: Clone + Send + Sync + 'static,
    S: Send + 'static,
{
    /// `name`: the credential errors are reported under; `what`: what a flight does ("the
    /// token acquisition"), for the error of one that did not finish.
    pub(crate) fn new(name: &'static str, what: &'static str, state: S) -> Self {
        Self {
            inner: Arc::new(Inner {
                name,
                what,
                locked: Mutex::new(Locked {
                    state,
                    records: Vec::new(),
                    next_id: 0,
                }),
                #[cfg(test)]
                waited: Arc::default(),
            }),
        }
    }

    /// How many times [`lock`](Self::lock) found the lock taken and waited for it, counted as
    /// each wait begins.
    #[cfg(test)]
    pub(crate) fn waited(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        Arc::clone(&self.inner.waited)
    }

    /// Whether the lock is taken at the moment this is called (by this thread or another):
    /// tests check that code the owner does not control runs without it.
    #[cfg(test)]
    pub(crate) fn lock_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let inner = Arc::clone(&self.inner);
        move || {
            matches!(
                inner.locked.try_lock(),
                Err(std::sync::TryLockError::WouldBlock)
            )
        }
    }

    /// Locks the state and the records.
    pub(crate) fn lock(&self) -> FlightLock<'_, K, T, S> {
        FlightLock {
            inner: &self.inner,
            locked: self.inner.lock(),
        }
    }
}

impl<K, T, S> Inner<K, T, S> {
    fn lock(&self) -> MutexGuard<'_, Locked<K, T, S>> {
        #[cfg(test)]
        match self.locked.try_lock() {
            Ok(guard) => return guard,
            Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.waited.fetch_add(1, Ordering::SeqCst);
            }
        }
        // Each write leaves the state whole (see the module docs): a poisoned lock is usable.
        self.locked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K, T, S> Locked<K, T, S> {
    fn remove(&mut self, id: u64) {
        self.records.retain(|r| r.id != id);
    }
}

impl<K, T, S> Deref for FlightLock<'_, K, T, S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.locked.state
    }
}

impl<K, T, S> DerefMut for FlightLock<'_, K, T, S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.locked.state
    }
}

impl<K, T, S> FlightLock<'_, K, T, S>
where
    K: PartialEq + Send + 'static,
    T: Clone + Send + Sync + 'static,
    S: Send + 'static,
{
    /// The flight running under `key`, to join. `None` also for a flight every caller
    /// abandoned (it is being aborted).
    pub(crate) fn running<Q>(&self, key: &Q) -> Option<Flight<T>>
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        let record = self.record(key)?;
        let holder = match &record.holders {
            Some((weak, commit)) => match weak.upgrade() {
                Some(holder) => Some(holder),
                // Every handle is gone: joined only when its work committed first (decided
                // once, with the handle's drop, which aborts it otherwise).
                None if commit.abandon() => return None,
                None => None,
            },
            None => None,
        };
        Some(Flight {
            joined: record.joined.clone(),
            _holder: holder,
        })
    }

    /// Whether a flight runs under `key` (without a handle that would keep it running).
    pub(crate) fn is_running<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.record(key).is_some_and(|r| {
            r.holders
                .as_ref()
                .is_none_or(|(w, commit)| w.strong_count() > 0 || commit.is_committed())
        })
    }

    fn record<Q>(&self, key: &Q) -> Option<&Record<K, T>>
    where
        K: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.locked.records.iter().find(|r| r.key.borrow() == key)
    }

    /// Spawns `work` as the flight of `key` and records it. When `work` ends, `land` turns its
    /// result into the outcome every waiter gets, under the lock, as the record is removed.
    /// With [`WhenAbandoned::Abort`], dropping the last handle aborts the task (`land` then
    /// receives a "did not finish" error), unless its work has committed.
    pub(crate) fn start<W, F, L>(
        &mut self,
        key: K,
        when_abandoned: WhenAbandoned,
        work: F,
        land: L,
    ) -> Flight<T>
    where
        W: Send + 'static,
        F: Future<Output = Result<W, CredentialError>> + Send + 'static,
        L: FnOnce(&mut S, Result<W, CredentialError>) -> Result<T, CredentialError>
            + Send
            + 'static,
    {
        // Only here, where a flight starts, never on a path that finds a token: a poll
        // outside a tokio runtime (`futures::executor::block_on`) gets an error, not
        // `tokio::spawn`'s panic.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let error = CredentialError::invalid_request(
                self.inner.name,
                format!(
                    "{} needs a tokio runtime, and none is running on this thread; call it \
                     from within one (e.g. under `#[tokio::main]` or `Runtime::block_on`)",
                    self.inner.what
                ),
            );
            return Flight::failed(error);
        };
        let locked = &mut *self.locked;
        locked.next_id = locked.next_id.wrapping_add(1);
        let id = locked.next_id;
        // Made before the task, so that a hold its work takes at once finds it.
        let holder = match when_abandoned {
            WhenAbandoned::RunOn => None,
            WhenAbandoned::Abort(commit) => {
                let holder = Arc::new(AbortOnDrop(OnceLock::new(), commit));
                // A commit is one flight's: a second flight started with it is not held.
                let _ = holder.1.0.holder.set(Arc::downgrade(&holder));
                Some(holder)
            }
        };
        let armed = Arc::new(AtomicBool::new(false));
        let landing = Landing {
            inner: Arc::clone(self.inner),
            id,
            land: Some(land),
            work: PhantomData,
            starter: std::thread::current().id(),
            armed: Arc::clone(&armed),
        };
        // The lock is held: the task cannot land (and remove its record) before it is written.
        let task = runtime.spawn(async move {
            let result = work.await;
            landing.finish(result)
        });
        armed.store(true, Ordering::Release);
        let abort = task.abort_handle();
        if let Some(holder) = &holder {
            let _ = holder.0.set(abort.clone());
        }
        let (name, what) = (self.inner.name, self.inner.what);
        let joined = async move {
            task.await.unwrap_or_else(|join_error| {
                Err(did_not_finish(
                    name,
                    // A panic's message is the panicking code's text: it may quote a token.
                    format!(
                        "{what} did not finish: {}",
                        truncate(&scrub(&join_error.to_string(), &[]), MAX_QUOTED_CHARS)
                    ),
                ))
            })
        }
        .boxed()
        .shared();
        if abort.is_finished() {
            // Dropped inside `tokio::spawn` (a runtime shutting down; see `Landing::drop`):
            // nothing to record, its callers get the join error at once.
            return Flight {
                joined,
                _holder: holder,
            };
        }
        locked.records.retain(|r| r.key != key);
        locked.records.push(Record {
            key,
            id,
            joined: joined.clone(),
            holders: holder.as_ref().map(|h| (Arc::downgrade(h), h.1.clone())),
        });
        Flight {
            joined,
            _holder: holder,
        }
    }
}

/// A flight's work made after its record is written: [`FlightLock::start`] is given the
/// future [`deferred`] returns, under the lock, and the owner makes the work with
/// [`make`](Self::make) once it has released the lock. So the decision to start and the
/// record stay one critical section, while code the owner does not control (a credential's
/// `clone`, its caller's closure, a tracing span a subscriber may log) runs outside it.
pub(crate) struct Deferred<W> {
    send: oneshot::Sender<BoxFuture<'static, Result<W, CredentialError>>>,
}

/// The handle that makes a flight's work later, and the future to start the flight with: it
/// runs that work once made. If the handle is dropped unused (the code making the work
/// panicked), the flight ends with an error marked as cut off, as a panicking flight does.
pub(crate) fn deferred<W: Send + 'static>(
    name: &'static str,
    what: &'static str,
) -> (
    Deferred<W>,
    impl Future<Output = Result<W, CredentialError>> + Send + 'static,
) {
    let (send, made) = oneshot::channel();
    let work = async move {
        match made.await {
            Ok(work) => work.await,
            Err(_) => Err(did_not_finish(
                name,
                format!("{what} did not finish: its work was never made"),
            )),
        }
    };
    (Deferred { send }, work)
}

impl<W> Deferred<W> {
    /// Makes the work with `make`, outside the owner's lock, and hands it to the flight; not
    /// called when no flight waits for it (none was started: no runtime, or one shutting down,
    /// dropped it inside `start`).
    pub(crate) fn make<F, Fut>(self, make: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<W, CredentialError>> + Send + 'static,
    {
        if !self.send.is_closed() {
            // Closed meanwhile (a runtime shutting down), the work is dropped unpolled.
            let _ = self.send.send(make().boxed());
        }
    }
}

/// What becomes of a flight whose every handle was dropped.
#[derive(Clone, Debug)]
pub(crate) enum WhenAbandoned {
    /// It runs to its end and its outcome lands.
    RunOn,
    /// Its task is aborted (a prompt nobody waits for must stop), unless its work has passed
    /// the [`Commit`] (never, if it does not call it): then it runs on as `RunOn`.
    Abort(Commit),
}

/// Lands a flight's outcome and removes its record, inside its task, however the task ends.
struct Landing<K, T, S, W, L>
where
    L: FnOnce(&mut S, Result<W, CredentialError>) -> Result<T, CredentialError>,
{
    inner: Arc<Inner<K, T, S>>,
    id: u64,
    /// Taken when it runs: once.
    land: Option<L>,
    work: PhantomData<fn(W)>,
    /// The thread that started the flight, and whether `tokio::spawn` has returned there:
    /// on a runtime shutting down, `spawn` drops the task at once, on that thread, while it
    /// holds the lock — the guard must not wait for that lock then.
    starter: ThreadId,
    armed: Arc<AtomicBool>,
}

impl<K, T, S, W, L> Landing<K, T, S, W, L>
where
    L: FnOnce(&mut S, Result<W, CredentialError>) -> Result<T, CredentialError>,
{
    fn finish(mut self, result: Result<W, CredentialError>) -> Result<T, CredentialError> {
        let mut locked = self.inner.lock();
        locked.remove(self.id);
        match self.land.take() {
            Some(land) => land(&mut locked.state, result),
            None => Err(self.unfinished()),
        }
    }

    fn unfinished(&self) -> CredentialError {
        did_not_finish(
            self.inner.name,
            format!("{} did not finish", self.inner.what),
        )
    }
}

/// The error of a flight cut off before its work answered, marked so (see the module docs).
fn did_not_finish(name: &'static str, message: String) -> CredentialError {
    CredentialError::authentication_failed(name, message).with_cause(Cause {
        unfinished: true,
        ..Cause::default()
    })
}

impl<K, T, S, W, L> Drop for Landing<K, T, S, W, L>
where
    L: FnOnce(&mut S, Result<W, CredentialError>) -> Result<T, CredentialError>,
{
    /// The task panicked or was dropped (aborted, or its runtime shut down) before `finish`.
    fn drop(&mut self) {
        let inside_spawn =
            !self.armed.load(Ordering::Acquire) && std::thread::current().id() == self.starter;
        if inside_spawn {
            return;
        }
        if let Some(land) = self.land.take() {
            let error = self.unfinished();
            let mut locked = self.inner.lock();
            locked.remove(self.id);
            // Nobody gets this outcome: waiters get the task's join error.
            let _ = land(&mut locked.state, Err(error));
        }
    }
}

/// Runs `future` to completion on this thread with no tokio runtime, as
/// `futures::executor::block_on` does (std only: the tests need no executor crate).
#[cfg(test)]
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Runs `f` and counts the panics on this thread meanwhile, caught ones included (a caught
/// panic still goes through the panic hook, which prints it): a hook that counts them is put
/// in place around `f`, then one that hands every panic to the previous hook. Hooks are
/// process-wide, so these calls take turns.
#[cfg(test)]
pub(crate) fn panics_on_this_thread<T>(f: impl FnOnce() -> T) -> (T, usize) {
    type Hook = dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync;
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let counted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let here = std::thread::current().id();
    let previous: Arc<Hook> = Arc::from(std::panic::take_hook());
    {
        let (counted, previous) = (Arc::clone(&counted), Arc::clone(&previous));
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() == here {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    drop(std::panic::take_hook());
    std::panic::set_hook(Box::new(move |info| previous(info)));
    match result {
        Ok(value) => (value, counted.load(Ordering::SeqCst)),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    /// The owner's state in these tests: every outcome landed, in order.
    type Log = Vec<Result<u32, String>>;
    type Flights = SingleFlight<&'static str, u32, Log>;

    fn flights() -> Flights {
        SingleFlight::new("TestCredential", "the test flight", Vec::new())
    }

    fn land(log: &mut Log, result: Result<u32, CredentialError>) -> Result<u32, CredentialError> {
        log.push(result.clone().map_err(|e| e.message().to_owned()));
        result
    }

    fn failure(text: &str) -> CredentialError {
        CredentialError::authentication_failed("TestCredential", text)
    }

    /// Work that counts its runs, takes `secs` on the clock, then answers.
    fn work(
        runs: &Arc<AtomicUsize>,
        secs: u64,
        answer: Result<u32, CredentialError>,
    ) -> impl Future<Output = Result<u32, CredentialError>> + Send + 'static {
        let runs = Arc::clone(runs);
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            answer
        }
    }

    /// What an owner does: join the running flight, else start one with `make`.
    fn join_or_start<F>(
        flights: &Flights,
        key: &'static str,
        make: impl FnOnce() -> F,
    ) -> Flight<u32>
    where
        F: Future<Output = Result<u32, CredentialError>> + Send + 'static,
    {
        let mut lock = flights.lock();
        match lock.running(key) {
            Some(flight) => flight,
            None => lock.start(key, WhenAbandoned::RunOn, make(), land),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_share_one_run() {
        let flights = flights();
        let runs = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..20)
            .map(|_| join_or_start(&flights, "k", || work(&runs, 5, Ok(7))))
            .collect();
        // Another key is another flight.
        let other = join_or_start(&flights, "other", || work(&runs, 1, Ok(8)));
        for result in futures_util::future::join_all(waiters).await {
            assert_eq!(result.unwrap(), 7);
        }
        assert_eq!(other.await.unwrap(), 8);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        let lock = flights.lock();
        assert!(!lock.is_running("k") && lock.running("k").is_none());
        assert_eq!(*lock, [Ok(8), Ok(7)]);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_every_waiter_does_not_cancel_the_work_and_its_outcome_lands() {
        let flights = flights();
        let runs = Arc::new(AtomicUsize::new(0));
        let a = join_or_start(&flights, "k", || work(&runs, 5, Ok(7)));
        let b = join_or_start(&flights, "k", || work(&runs, 5, Ok(0)));
        assert!(
            tokio::time::timeout(Duration::from_secs(1), a)
                .await
                .is_err()
        );
        drop(b);
        assert!(
            flights.lock().is_running("k"),
            "nobody waits; it still runs"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let lock = flights.lock();
        assert_eq!(*lock, [Ok(7)], "the outcome landed with nobody waiting");
        assert!(!lock.is_running("k"));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_by_every_waiter_the_abortable_work_stops_and_the_next_caller_starts_anew() {
        let flights = flights();
        let finished = Arc::new(AtomicBool::new(false));
        let abortable = |finished: &Arc<AtomicBool>| {
            let finished = Arc::clone(finished);
            async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                finished.store(true, Ordering::SeqCst);
                Ok(7)
            }
        };
        let a = flights.lock().start(
            "k",
            WhenAbandoned::Abort(Commit::default()),
            abortable(&finished),
            land,
        );
        let b = flights.lock().running("k").expect("joined");
        drop(a);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(flights.lock().is_running("k"), "one waiter is left");
        drop(b);
        assert!(
            flights.lock().running("k").is_none(),
            "abandoned: not joined"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!finished.load(Ordering::SeqCst), "the work was aborted");
        {
            let lock = flights.lock();
            assert_eq!(*lock, [Err("the test flight did not finish".to_owned())]);
            assert!(!lock.is_running("k"));
        }
        let again = flights.lock().start(
            "k",
            WhenAbandoned::Abort(Commit::default()),
            abortable(&finished),
            land,
        );
        assert_eq!(again.await.unwrap(), 7);
        assert!(finished.load(Ordering::SeqCst));
    }

    /// Abandoned once its work has committed, an abortable flight runs on, its outcome lands,
    /// and a caller after every handle was dropped joins it. Abandoned before, its work
    /// learns so from the commit, which then fails.
    #[tokio::test(start_paused = true)]
    async fn abandoned_after_its_work_committed_the_flight_runs_on_and_is_joined() {
        let flights = flights();
        let commit = Commit::default();
        let (release, gate) = oneshot::channel::<()>();
        let work = {
            let commit = commit.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                assert!(commit.commit(), "nobody had given up yet");
                let _ = gate.await;
                Ok(7)
            }
        };
        let a = flights
            .lock()
            .start("k", WhenAbandoned::Abort(commit), work, land);
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(a);
        assert!(flights.lock().is_running("k"), "committed: it runs on");
        let b = flights
            .lock()
            .running("k")
            .expect("joined though abandoned");
        release.send(()).unwrap();
        assert_eq!(b.await.unwrap(), 7);
        let lock = flights.lock();
        assert_eq!(*lock, [Ok(7)]);
        assert!(!lock.is_running("k"));
        drop(lock);

        let commit = Commit::default();
        let c = flights.lock().start(
            "k",
            WhenAbandoned::Abort(commit.clone()),
            std::future::pending(),
            land,
        );
        drop(c);
        assert!(!commit.commit(), "abandoned first");
        assert!(flights.lock().running("k").is_none());
    }

    /// Every handle dropped while the work holds the flight (a poll request in flight): it is
    /// not aborted. A step answering with tokens commits it: it runs on and is joined. Any
    /// other answer ends it then. A caller coming while it is held joins it, and keeps it.
    #[tokio::test(start_paused = true)]
    async fn abandoned_while_held_the_flight_waits_for_the_step_then_commits_or_ends() {
        /// Work that holds the flight until released, then commits (`tokens`) or releases;
        /// then answers once released again.
        fn held_work(
            commit: &Commit,
            tokens: bool,
            after: &Arc<AtomicBool>,
        ) -> (
            oneshot::Sender<()>,
            oneshot::Sender<()>,
            impl Future<Output = Result<u32, CredentialError>> + Send + 'static,
        ) {
            let (commit, after) = (commit.clone(), Arc::clone(after));
            let (answer, answered) = oneshot::channel::<()>();
            let (release, gate) = oneshot::channel::<()>();
            (answer, release, async move {
                let hold = commit.hold().expect("a caller waits");
                let _ = answered.await;
                if tokens {
                    assert!(hold.commit());
                } else if !hold.release() {
                    return Err(failure("every caller gave up"));
                }
                after.store(true, Ordering::SeqCst);
                let _ = gate.await;
                Ok(7)
            })
        }
        let step = Duration::from_secs(1);

        // Tokens: committed, joinable, landed.
        let flights = super::tests::flights();
        let commit = Commit::default();
        let after = Arc::new(AtomicBool::new(false));
        let (answer, release, work) = held_work(&commit, true, &after);
        let a = flights
            .lock()
            .start("k", WhenAbandoned::Abort(commit), work, land);
        tokio::time::sleep(step).await;
        drop(a);
        tokio::time::sleep(step).await;
        assert!(flights.lock().is_running("k"), "held: not aborted");
        answer.send(()).unwrap();
        tokio::time::sleep(step).await;
        assert!(after.load(Ordering::SeqCst), "committed: it runs on");
        let b = flights.lock().running("k").expect("committed: joined");
        release.send(()).unwrap();
        assert_eq!(b.await.unwrap(), 7);
        assert_eq!(*flights.lock(), [Ok(7)]);

        // No tokens: ended as the step answers.
        let flights = super::tests::flights();
        let commit = Commit::default();
        let after = Arc::new(AtomicBool::new(false));
        let (answer, _release, work) = held_work(&commit, false, &after);
        let a = flights
            .lock()
            .start("k", WhenAbandoned::Abort(commit), work, land);
        tokio::time::sleep(step).await;
        drop(a);
        tokio::time::sleep(step).await;
        assert!(flights.lock().is_running("k"), "held: not aborted");
        answer.send(()).unwrap();
        tokio::time::sleep(step).await;
        assert!(!after.load(Ordering::SeqCst), "ended at once");
        let lock = flights.lock();
        assert_eq!(*lock, [Err("every caller gave up".to_owned())]);
        assert!(!lock.is_running("k") && lock.running("k").is_none());
        drop(lock);

        // A caller comes while it is held: it joins, and the flight goes on for it.
        let flights = super::tests::flights();
        let commit = Commit::default();
        let after = Arc::new(AtomicBool::new(false));
        let (answer, release, work) = held_work(&commit, false, &after);
        let a = flights
            .lock()
            .start("k", WhenAbandoned::Abort(commit.clone()), work, land);
        tokio::time::sleep(step).await;
        drop(a);
        let b = flights.lock().running("k").expect("held: joined");
        answer.send(()).unwrap();
        tokio::time::sleep(step).await;
        assert!(after.load(Ordering::SeqCst), "a caller waits: it goes on");
        release.send(()).unwrap();
        assert_eq!(b.await.unwrap(), 7);

        // Every caller gone before the hold: none is taken.
        let commit = Commit::default();
        let c = flights.lock().start(
            "k",
            WhenAbandoned::Abort(commit.clone()),
            std::future::pending(),
            land,
        );
        drop(c);
        assert!(commit.hold().is_none(), "abandoned: nothing to hold");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_reaches_every_waiter_and_the_next_caller_starts_anew() {
        let flights = flights();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                join_or_start(&flights, "k", || async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if true {
                        // A careless panic quoting a provider's answer.
                        panic!(
                            "boom {{\"access_token\":\"opaque-secret-123\"}} {}",
                            "x".repeat(5000)
                        );
                    }
                    Ok(0)
                })
            })
            .collect();
        for result in futures_util::future::join_all(waiters).await {
            let error = result.unwrap_err();
            assert!(error.is_authentication_failed());
            assert_eq!(error.credential(), "TestCredential");
            assert!(
                error
                    .message()
                    .starts_with("the test flight did not finish: ")
                    && error.message().contains("panicked")
                    && error.message().contains("boom"),
                "{error}"
            );
            assert!(!error.message().contains("opaque-secret-123"), "{error}");
            assert!(error.message().len() < 1000, "the message is bounded");
        }
        assert!(!flights.lock().is_running("k"), "the record is cleared");
        assert_eq!(
            *flights.lock(),
            [Err("the test flight did not finish".to_owned())],
            "the guard landed an error"
        );
        let runs = Arc::new(AtomicUsize::new(0));
        let next = join_or_start(&flights, "k", || work(&runs, 0, Ok(7)));
        assert_eq!(next.await.unwrap(), 7);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_reaches_every_waiter_of_its_flight_and_not_the_next_caller() {
        let flights = flights();
        let runs = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..5)
            .map(|_| join_or_start(&flights, "k", || work(&runs, 2, Err(failure("nope")))))
            .collect();
        for result in futures_util::future::join_all(waiters).await {
            assert_eq!(result.unwrap_err().message(), "nope");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Right after the failure, with no time for anything else to run.
        let next = join_or_start(&flights, "k", || work(&runs, 2, Ok(7)));
        assert_eq!(next.await.unwrap(), 7);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    /// Work that answers `answer` once released.
    fn gated(
        answer: u32,
    ) -> (
        oneshot::Sender<()>,
        impl Future<Output = Result<u32, CredentialError>> + Send + 'static,
    ) {
        let (release, gate) = oneshot::channel();
        (release, async move {
            let _ = gate.await;
            Ok(answer)
        })
    }

    /// `tokio::spawn` on a runtime that is shutting down drops the task at once, under the
    /// owner's lock: that must neither deadlock nor leave a flight later callers join.
    #[test]
    fn a_flight_started_on_a_runtime_shutting_down_neither_hangs_nor_is_joined() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        drop(runtime);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _context = handle.enter();
            let flights = flights();
            let runs = Arc::new(AtomicUsize::new(0));
            let flight = join_or_start(&flights, "k", || work(&runs, 1, Ok(1)));
            let joinable = flights.lock().running("k").is_some();
            let running = flights.lock().is_running("k");
            let outcome = futures_util::FutureExt::now_or_never(flight);
            let _ = done.send((joinable, running, outcome.map(|o| o.is_err())));
        });
        // A deadlock detector, not a timing assumption: the thread never blocks on time.
        let (joinable, running, failed) = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("starting a flight on a runtime shutting down hung");
        assert!(!joinable && !running, "a dead flight must not be joined");
        assert_eq!(failed, Some(true), "its callers get an error at once");
    }

    /// Outside a tokio runtime a flight cannot be spawned: its handle is an error (before,
    /// `tokio::spawn` panicked), nothing is recorded, and nothing lands.
    #[test]
    fn a_flight_started_outside_a_runtime_is_an_error_not_a_panic() {
        let flights = flights();
        let runs = Arc::new(AtomicUsize::new(0));
        let flight = join_or_start(&flights, "k", || work(&runs, 0, Ok(1)));
        let error = block_on(flight).unwrap_err();
        assert!(error.is_invalid_request(), "{error}");
        assert_eq!(error.credential(), "TestCredential");
        assert!(error.message().contains("needs a tokio runtime"), "{error}");
        assert!(!flights.lock().is_running("k"));
        assert!(flights.lock().is_empty(), "nothing landed");
        assert_eq!(runs.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_guard_never_clears_the_record_of_a_newer_flight() {
        // A flight replaced by a newer one of the same key ends: the newer one stays joinable.
        let flights = flights();
        let (release_old, old_work) = gated(1);
        let (release_new, new_work) = gated(2);
        let old = flights
            .lock()
            .start("k", WhenAbandoned::RunOn, old_work, land);
        let new = flights
            .lock()
            .start("k", WhenAbandoned::RunOn, new_work, land);
        release_old.send(()).unwrap();
        assert_eq!(old.await.unwrap(), 1);
        let joined = flights
            .lock()
            .running("k")
            .expect("the newer flight is recorded");
        release_new.send(()).unwrap();
        assert_eq!(joined.await.unwrap(), 2);
        assert_eq!(new.await.unwrap(), 2);
        assert!(!flights.lock().is_running("k"));

        // An abandoned flight is aborted after a new one has started: same.
        let abandoned = flights.lock().start(
            "k",
            WhenAbandoned::Abort(Commit::default()),
            std::future::pending(),
            land,
        );
        drop(abandoned);
        let runs = Arc::new(AtomicUsize::new(0));
        let current = join_or_start(&flights, "k", || work(&runs, 5, Ok(3)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            flights.lock().last().is_some_and(Result::is_err),
            "the abandoned flight landed"
        );
        assert!(flights.lock().is_running("k"), "the newer record stays");
        assert_eq!(current.await.unwrap(), 3);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
