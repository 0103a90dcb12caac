//! Retry delays for transient storage failures: capped exponential backoff
//! with jitter. The only module that touches the `backoff` crate
//! (RUSTSEC-2025-0012, unmaintained): swapping it for `backon` changes this
//! file alone.
//!
//! Must not: sleep or schedule (the queue actor owns its timers).

use std::time::Duration;

use backoff::backoff::Backoff;

/// How the queue retries transient and throttling failures.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Delay before the first retry (before jitter).
    pub base_delay: Duration,
    /// Delays grow as `base_delay * 2^n` for n up to this exponent, then stay.
    pub max_exponent: u32,
    /// Total attempts (first try included) before the request fails.
    pub max_attempts: u32,
    /// Jitter as a fraction of the delay (0.0 = none, 0.5 = ±50 %).
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        // 50 ms .. 50 ms * 2^6 = 3.2 s, 10 attempts: about 15 s of trying,
        // inside the default shutdown deadline.
        Self { base_delay: Duration::from_millis(50), max_exponent: 6, max_attempts: 10, jitter: 0.5 }
    }
}

impl RetryConfig {
    /// The largest delay a retry may wait (jitter included).
    pub fn max_delay(&self) -> Duration {
        let capped = self.base_delay.saturating_mul(1u32 << self.max_exponent.min(20));
        capped.mul_f64(1.0 + self.jitter.clamp(0.0, 1.0))
    }

    /// An upper bound for the total time spent waiting between attempts.
    pub fn max_total_delay(&self) -> Duration {
        self.max_delay().saturating_mul(self.max_attempts.saturating_sub(1))
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("queue.retry.max_attempts must be at least 1".into());
        }
        if self.max_exponent > 20 {
            return Err("queue.retry.max_exponent must be at most 20".into());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err("queue.retry.jitter must be between 0.0 and 1.0".into());
        }
        Ok(())
    }
}

/// The retry state of one request.
pub(crate) struct RetryState {
    backoff: backoff::ExponentialBackoff,
}

impl RetryState {
    pub(crate) fn new(config: &RetryConfig) -> Self {
        let max_interval = config.base_delay.saturating_mul(1u32 << config.max_exponent.min(20));
        let backoff = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(config.base_delay)
            .with_multiplier(2.0)
            .with_randomization_factor(config.jitter.clamp(0.0, 1.0))
            .with_max_interval(max_interval)
            .with_max_elapsed_time(None)
            .build();
        Self { backoff }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // With no max_elapsed_time the crate always yields a delay.
        self.backoff.next_backoff().unwrap_or(self.backoff.max_interval)
    }
}

/// How long a step waits out other writers on the same thing (a
/// compare-and-swap that lost to another process, a one-shot turn taken)
/// before it gives up and says so.
pub(crate) const CONTENTION_WINDOW: Duration = Duration::from_secs(10);

/// The waits between tries of a step other writers are in the middle of:
/// short, growing and jittered (2 ms doubling to 100 ms, ±50 %), so
/// contenders in several processes spread out instead of colliding in
/// step, until `window` has passed. Computes delays only; the caller
/// sleeps (on tokio's clock, so a paused test clock applies).
pub(crate) struct Contention {
    state: RetryState,
    deadline: tokio::time::Instant,
}

impl Contention {
    pub(crate) fn new(window: Duration) -> Self {
        let config =
            RetryConfig { base_delay: Duration::from_millis(2), max_exponent: 6, max_attempts: u32::MAX, jitter: 0.5 };
        Self { state: RetryState::new(&config), deadline: tokio::time::Instant::now() + window }
    }

    /// The wait before the next try, or `None` once it would end past the
    /// deadline.
    pub(crate) fn next_wait(&mut self) -> Option<Duration> {
        let delay = self.state.next_delay().min(Duration::from_millis(100));
        (tokio::time::Instant::now() + delay <= self.deadline).then_some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn contention_waits_stay_short_and_end_at_the_deadline() {
        let mut contention = Contention::new(Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        let mut tries = 0;
        while let Some(wait) = contention.next_wait() {
            assert!(wait <= Duration::from_millis(100), "a wait of {wait:?}");
            tokio::time::sleep(wait).await;
            tries += 1;
        }
        // Time as the clock saw it: tokio's timer rounds a sleep up to its
        // millisecond, so the sum of the waits asked for falls short of it
        // (it once came to 899 ms with the clock at the deadline's edge).
        let waited = started.elapsed();
        assert!(waited <= Duration::from_secs(1), "waited {waited:?} past the window");
        assert!(waited >= Duration::from_millis(900), "gave up early, after {waited:?}");
        assert!(tries >= 10, "{tries} tries in a second: the waits do not stay short");
    }
}
