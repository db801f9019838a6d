//! Tokio's paused clock next to peers in other processes.
//!
//! On a paused clock tokio jumps to the next timer whenever the runtime has nothing to do, so
//! while a request waits for a peer process (the node oidc peer answers in milliseconds of
//! real time) the request's own deadline would fire at once. Tokio does not auto-advance while
//! a blocking task runs: [`held`] keeps one running until the future is done.

use std::future::Future;

/// Runs `future` with the paused clock held still (on a running clock: just runs it).
pub async fn held<F: Future>(future: F) -> F::Output {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    // Spawned (and counted as inhibiting) before the future is first polled.
    let holder = tokio::task::spawn_blocking(move || {
        let _ = wait.recv();
    });
    let output = future.await;
    drop(done);
    holder.await.expect("the clock holder ends");
    output
}

/// Lets work in the background (a credential's renewal over loopback) end. On a paused clock
/// a sleep ends only once no task can run, so with every server in this process the exchange
/// is over by then; 1 ms passes.
pub async fn settle() {
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
}
