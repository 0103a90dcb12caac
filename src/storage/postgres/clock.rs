//! Database time as the lease clock.
//!
//! Owns: the estimate of the offset between this process's monotonic clock
//! and the database server's clock. Must not: block or query (samples come
//! from statements the backend runs anyway, and from the heartbeat).
//!
//! Each sample is `(sent, db_ms, received)`: the server's
//! `statement_timestamp()` lies between sending and receiving, so the
//! offset is `db_ms − midpoint` with an uncertainty of half the round trip.
//! The clock keeps the most certain sample of the last minute, so one slow
//! round trip cannot move it far, and a newer sample replaces an old one
//! even when less certain, so drift and NTP steps of the server are
//! followed. Local time is monotonic (`Instant`): a wall-clock step on this
//! host changes nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::warn;

use crate::storage::BackendClock;

/// How long the most certain sample is preferred over newer ones.
const KEEP_BEST_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Sample {
    offset_ms: i64,
    uncertainty_ms: u64,
    at: Instant,
}

/// The database's clock as seen from this process.
#[derive(Debug)]
pub(super) struct DbClock {
    anchor: Instant,
    anchor_ms: u64,
    best: Mutex<Option<Sample>>,
}

impl DbClock {
    pub(super) fn new() -> Self {
        let anchor_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Self { anchor: Instant::now(), anchor_ms, best: Mutex::new(None) }
    }

    /// This process's monotonic time on the wall-clock scale of its start.
    fn local_ms(&self, at: Instant) -> i64 {
        (self.anchor_ms + at.saturating_duration_since(self.anchor).as_millis() as u64) as i64
    }

    /// Records the database time `db_ms` seen by a statement sent at `sent`
    /// and answered at `received`.
    pub(super) fn sample(&self, sent: Instant, db_ms: i64, received: Instant) {
        let round_trip = received.saturating_duration_since(sent);
        let midpoint = sent + round_trip / 2;
        let candidate = Sample {
            offset_ms: db_ms - self.local_ms(midpoint),
            uncertainty_ms: (round_trip.as_millis() as u64).div_ceil(2),
            at: received,
        };
        let mut best = self.best.lock().unwrap_or_else(|p| p.into_inner());
        let replace = match *best {
            None => true,
            Some(b) => {
                candidate.uncertainty_ms <= b.uncertainty_ms || received.saturating_duration_since(b.at) > KEEP_BEST_FOR
            }
        };
        if replace {
            if let Some(b) = *best {
                let jump = (candidate.offset_ms - b.offset_ms).abs();
                if jump > 1000 {
                    warn!(target: "datastorer::postgres", jump_ms = jump,
                        "the database clock moved against this host's clock by more than a second");
                }
            }
            *best = Some(candidate);
        }
    }

    /// The offset (database − local) and its uncertainty, for diagnostics.
    pub(super) fn offset(&self) -> Option<(i64, u64)> {
        self.best.lock().unwrap_or_else(|p| p.into_inner()).map(|s| (s.offset_ms, s.uncertainty_ms))
    }
}

impl BackendClock for DbClock {
    fn now_ms(&self) -> u64 {
        let offset = self.offset().map_or(0, |(o, _)| o);
        (self.local_ms(Instant::now()) + offset).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_follows_the_database_not_this_host() {
        let clock = DbClock::new();
        let t0 = Instant::now();
        // The database is two minutes ahead of this host.
        let db = clock.local_ms(t0 + Duration::from_millis(5)) + 120_000;
        clock.sample(t0, db, t0 + Duration::from_millis(10));
        let (offset, uncertainty) = clock.offset().unwrap();
        assert_eq!((offset, uncertainty), (120_000, 5));
        let local = clock.local_ms(Instant::now()) as u64;
        assert!(clock.now_ms() >= local + 119_990, "database time, not local time");
    }

    #[test]
    fn a_slow_round_trip_does_not_displace_a_precise_sample() {
        let clock = DbClock::new();
        let t0 = Instant::now();
        clock.sample(t0, clock.local_ms(t0) + 1_000, t0 + Duration::from_millis(2));
        // A 4 s round trip reporting a wildly different time is ignored.
        clock.sample(t0, clock.local_ms(t0) + 60_000, t0 + Duration::from_secs(4));
        assert_eq!(clock.offset().map(|(o, _)| o), Some(999));
        // After a minute, a newer sample wins even if less precise.
        let later = t0 + Duration::from_secs(70);
        clock.sample(later, clock.local_ms(later) + 2_000, later + Duration::from_millis(40));
        assert_eq!(clock.offset().map(|(o, _)| o), Some(1_980));
    }
}
