//! Wall-clock seconds in the store, tokio's clock in the process.
//!
//! An entry's times travel between processes, so they are Unix seconds. Each cache reads the
//! wall clock and tokio's clock together once, when it is built, and converts through that
//! offset: the stored times then age with tokio's clock, the clock every slot of the crate
//! runs on (so a paused clock in tests ages a stored entry as it ages a cached one). Linux
//! slews both clocks alike under NTP; only a step of the wall clock after the cache was built
//! is not followed.
//!
//! Hosts' wall clocks differ, though: a reader whose clock runs behind the publisher's maps the
//! entry's times late by the difference, and would keep the token in memory past its expiry.
//! So the entry's time left in the store (its TTL: a duration, set from the token's relative
//! lifetime, so alike on every host) bounds what a reader derives, and where it ends sooner
//! every sealed time of the entry moves back to agree with it ([`Sealing::open`]).
//!
//! [`Sealing::open`]: super::seal::Sealing::open

use std::time::Duration;

use tokio::time::Instant;

use crate::token::{MAX_TOKEN_LIFETIME, unix_now};

/// The offset between tokio's clock and the wall clock, read once.
#[derive(Clone, Copy, Debug)]
pub(super) struct WallClock {
    instant: Instant,
    unix: u64,
}

impl WallClock {
    pub(super) fn now() -> Self {
        Self {
            instant: Instant::now(),
            unix: unix_now(),
        }
    }

    /// This clock as on a host whose wall clock runs `secs` seconds ahead.
    #[cfg(test)]
    pub(super) fn ahead(self, secs: u64) -> Self {
        Self {
            unix: self.unix.saturating_add(secs),
            ..self
        }
    }

    /// `instant` as Unix seconds (an instant before the reading maps to the seconds before it).
    pub(super) fn to_unix(self, instant: Instant) -> u64 {
        match instant.checked_duration_since(self.instant) {
            Some(after) => self.unix.saturating_add(after.as_secs()),
            None => self
                .unix
                .saturating_sub(self.instant.duration_since(instant).as_secs()),
        }
    }

    /// Unix seconds as an instant, at most [`MAX_TOKEN_LIFETIME`] after `now` and never before
    /// the clock's origin (then `now`, which treats the time as passed).
    pub(super) fn to_instant(self, unix: u64, now: Instant) -> Instant {
        let latest = now.checked_add(MAX_TOKEN_LIFETIME).unwrap_or(now);
        match unix.checked_sub(self.unix) {
            Some(ahead) => self
                .instant
                .checked_add(Duration::from_secs(ahead))
                .unwrap_or(latest)
                .min(latest),
            None => {
                let behind = Duration::from_secs(self.unix.saturating_sub(unix));
                self.instant.checked_sub(behind).unwrap_or(now).min(latest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stored_times_age_with_tokios_clock() {
        let clock = WallClock::now();
        let expires = Instant::now() + Duration::from_secs(3600);
        let unix = clock.to_unix(expires);
        tokio::time::advance(Duration::from_secs(1000)).await;
        let back = clock.to_instant(unix, Instant::now());
        assert_eq!(
            back.duration_since(Instant::now()),
            Duration::from_secs(2600)
        );
        // Absurd values neither overflow nor outlive the longest lifetime believed.
        let far = clock.to_instant(u64::MAX, Instant::now());
        assert_eq!(far, Instant::now() + MAX_TOKEN_LIFETIME);
        assert!(clock.to_instant(0, Instant::now()) <= Instant::now());
    }
}
