//! Waiting for something the loopback servers' own tasks make true.

use std::time::{Duration, Instant};

/// Polls `condition` every millisecond of the machine's time until it holds, and fails the test
/// after 10 s. Tokio's clock is not the measure: a paused clock jumps ahead whenever the
/// runtime idles, so it would pass 10 s while the kernel still holds a segment for a few real
/// milliseconds (Nagle's algorithm behind a delayed ACK holds one for about 40 ms). The pause
/// between polls runs on a blocking thread, which holds a paused clock still: waiting moves
/// none of the test's timers.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after 10 s waiting until {what}"
        );
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1)))
            .await
            .expect("a sleep does not panic");
    }
}
