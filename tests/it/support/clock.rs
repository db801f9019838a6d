//! Tokio's paused clock next to peers in other processes.
//!
//! On a paused clock tokio jumps to the next timer whenever the runtime has nothing to do, so
//! while a request waits for a peer process (the node oidc peer answers in milliseconds of
//! real time) the request's own deadline would fire at once. Tokio does not auto-advance while
//! a blocking task runs: [`held`] keeps one running until the future is done.

use std::future::Future;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// How long [`held`] waits, in real time, before it fails its test: far longer than any peer
/// takes on a loaded machine, so that a future that never ends fails instead of hanging.
const HELD_AT_MOST: Duration = Duration::from_secs(300);

/// Runs `future` with the paused clock held still (on a running clock: just runs it). Fails
/// if it has not ended within [`HELD_AT_MOST`] of real time.
pub async fn held<F: Future>(future: F) -> F::Output {
    held_within(HELD_AT_MOST, future).await
}

/// [`held`], failing once `limit` of real time has passed: for a future that must end without
/// the clock moving (a sleep in it would never end).
pub async fn held_within<F: Future>(limit: Duration, future: F) -> F::Output {
    let (done, wait) = mpsc::channel::<()>();
    let (late, too_late) = tokio::sync::oneshot::channel::<()>();
    // Spawned (and counted as inhibiting) before the future is first polled.
    let holder = tokio::task::spawn_blocking(move || {
        if wait.recv_timeout(limit) == Err(RecvTimeoutError::Timeout) {
            let _ = late.send(());
        }
    });
    let output = tokio::select! {
        biased;
        output = future => output,
        Ok(()) = too_late => panic!("a held future had not ended after {limit:?}"),
    };
    drop(done);
    holder.await.expect("the clock holder ends");
    output
}

/// Lets work in the background (a credential's renewal over loopback) end. On a paused clock
/// a sleep ends only once no task can run, so with every server in this process the exchange
/// is over by then; 1 ms passes.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}
