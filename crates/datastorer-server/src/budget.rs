//! Request budgets per API key: a token bucket per key that has
//! `requests_per_minute`, so one misbehaving client (a game server in a
//! retry loop) cannot starve the others.
//!
//! Owns: the buckets. Must not: know anything about routes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::auth::ApiKey;

struct Bucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    last: Instant,
}

impl Bucket {
    /// Takes one token at `now`; when none is left, answers the whole
    /// seconds until one will be.
    fn take(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(((1.0 - self.tokens) / self.per_sec).ceil().max(1.0) as u64)
    }
}

/// The buckets of every key with a budget.
pub(crate) struct Budgets {
    buckets: HashMap<String, Mutex<Bucket>>,
}

impl Budgets {
    /// Full buckets for `keys` that have a budget.
    pub(crate) fn new(keys: &[ApiKey]) -> Self {
        let now = Instant::now();
        let buckets = keys
            .iter()
            .filter_map(|k| {
                let rpm = f64::from(k.requests_per_minute?);
                Some((
                    k.name.clone(),
                    Mutex::new(Bucket { tokens: rpm, capacity: rpm, per_sec: rpm / 60.0, last: now }),
                ))
            })
            .collect();
        Budgets { buckets }
    }

    /// Charges one request to `key`; `Err(seconds)` when its budget is spent.
    pub(crate) fn charge(&self, key: &str) -> Result<(), u64> {
        match self.buckets.get(key) {
            None => Ok(()),
            Some(b) => b.lock().unwrap_or_else(|p| p.into_inner()).take(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_a_burst_then_one_request_per_refill() {
        let t0 = Instant::now();
        let mut b = Bucket { tokens: 3.0, capacity: 3.0, per_sec: 0.5, last: t0 };
        assert!((0..3).all(|_| b.take(t0).is_ok()));
        assert_eq!(b.take(t0), Err(2), "one token every 2 s");
        assert_eq!(b.take(t0 + Duration::from_millis(1000)), Err(1));
        assert!(b.take(t0 + Duration::from_millis(2000)).is_ok());
        assert!(b.take(t0 + Duration::from_secs(3600)).is_ok(), "a long pause refills, up to the burst");
        assert!(b.take(t0 + Duration::from_secs(3600)).is_ok());
        assert!(b.take(t0 + Duration::from_secs(3600)).is_ok());
        assert!(b.take(t0 + Duration::from_secs(3600)).is_err());
    }
}
