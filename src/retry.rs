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
