//! Wall-clock seconds in the store, tokio's clock in the process.
//!
//! An entry's times travel between processes, so they are Unix seconds. Each cache reads the
//! wall clock and tokio's clock together once, when it is built, and converts through that
//! offset: the stored times then age with tokio's clock, the clock every slot of the crate
//! runs on (so a paused clock in tests ages a stored entry as it ages a cached one). Linux
//! slews both clocks alike under NTP. A suspension of the machine, which stops tokio's clock
//! and not the wall clock, is followed ([`WallClock::followed`]), and so is any forward step
//! of the wall clock of a minute or more (the two look alike); a smaller step, or one back,
//! after the cache was built is not.
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

use crate::token::{ClockPair, MAX_TOKEN_LIFETIME, unix_now};

/// The offset between tokio's clock and the wall clock, read once.
#[derive(Clone, Copy, Debug)]
pub(super) struct WallClock {
    instant: Instant,
    unix: u64,
    /// The same reading, to tell a suspension since (see [`followed`](Self::followed)).
    read: ClockPair,
}

impl WallClock {
    pub(super) fn now() -> Self {
        Self {
            instant: Instant::now(),
            unix: unix_now(),
            read: ClockPair::now(),
        }
    }

    /// This clock, moved on by the time the machine has been suspended since it was read
    /// ([`ClockPair::suspended`]): tokio's clock stood still meanwhile, so instants after the
    /// suspension map to wall-clock times that much later. Without it, a process woken from a
    /// suspension would publish times early by its length (its entries read as expired by
    /// the fleet) and read others' late.
    pub(super) fn followed(self) -> Self {
        let missed = self.read.suspended(Instant::now());
        Self {
            unix: self.unix.saturating_add(missed.as_secs()),
            ..self
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

    /// `instant` as Unix milliseconds (to the clock's reading, taken in whole seconds).
    pub(super) fn to_unix_ms(self, instant: Instant) -> u64 {
        let origin = self.unix.saturating_mul(1000);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match instant.checked_duration_since(self.instant) {
            Some(after) => origin.saturating_add(ms(after)),
            None => origin.saturating_sub(ms(self.instant.duration_since(instant))),
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

    /// Tokio's clock stood still for two hours of wall-clock time: times map across as if it
    /// had run. A step under a minute is not followed.
    #[tokio::test(start_paused = true)]
    async fn a_suspension_of_the_machine_is_followed() {
        let wall = crate::token::tests::wall_clock();
        let clock = WallClock::now();
        let later = Instant::now() + Duration::from_secs(3600);
        let unix = clock.to_unix(later);
        wall.suspend(Duration::from_secs(50));
        assert_eq!(clock.followed().to_unix(later), unix);
        wall.suspend(Duration::from_secs(7150));
        assert_eq!(clock.followed().to_unix(later), unix + 7200);
        let now = Instant::now();
        let an_hour_on = clock.followed().to_instant(unix_now() + 3600, now);
        let ahead = an_hour_on - now;
        assert!(ahead.as_secs().abs_diff(3600) <= 1, "{ahead:?}");
    }

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
