//! Prometheus text exposition, rendered by hand from a few atomics: queue
//! depth per lane, budget left, save latency histogram, lease waits, errors
//! by kind, loaded keys.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::{BudgetLevels, QueueDepth};

const BUCKETS_MS: [f64; 12] = [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];

/// Counters kept by the server.
#[derive(Default)]
pub struct Metrics {
    save_buckets: [AtomicU64; 13],
    save_sum_us: AtomicU64,
    save_count: AtomicU64,
    lease_waits: AtomicU64,
    lease_wait_us: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

/// Values read from the engine at scrape time.
pub struct Gauges {
    /// Queue depth.
    pub depth: QueueDepth,
    /// Budget tokens.
    pub budgets: BudgetLevels,
    /// Keys loaded in the engine.
    pub loaded_keys: usize,
    /// Client sessions open.
    pub client_sessions: usize,
}

impl Metrics {
    /// Records one durable save's latency.
    pub fn observe_save(&self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let i = BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(BUCKETS_MS.len());
        self.save_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.save_sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.save_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a session open that had to wait for another holder.
    pub fn observe_lease_wait(&self, waited: Duration) {
        self.lease_waits.fetch_add(1, Ordering::Relaxed);
        self.lease_wait_us.fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts an error answer by its code.
    pub fn count_error(&self, code: &'static str) {
        *self.errors.lock().unwrap_or_else(|p| p.into_inner()).entry(code).or_default() += 1;
    }

    /// The exposition text.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP datastorer_queue_depth Requests held by the queue, by lane or state.");
        let _ = writeln!(out, "# TYPE datastorer_queue_depth gauge");
        for (lane, v) in [
            ("emergency", g.depth.emergency),
            ("normal", g.depth.normal),
            ("in_flight", g.depth.in_flight),
            ("retrying", g.depth.retrying),
        ] {
            let _ = writeln!(out, "datastorer_queue_depth{{lane=\"{lane}\"}} {v}");
        }
        let _ = writeln!(out, "# HELP datastorer_budget_tokens Tokens left per operation budget (absent: unlimited).");
        let _ = writeln!(out, "# TYPE datastorer_budget_tokens gauge");
        for (op, v) in [("get", g.budgets.get), ("write", g.budgets.write), ("scan", g.budgets.scan)] {
            if let Some(v) = v {
                let _ = writeln!(out, "datastorer_budget_tokens{{operation=\"{op}\"}} {v}");
            }
        }
        let _ = writeln!(out, "# HELP datastorer_save_duration_seconds Time from save request to durable write.");
        let _ = writeln!(out, "# TYPE datastorer_save_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            cumulative += self.save_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "datastorer_save_duration_seconds_bucket{{le=\"{}\"}} {cumulative}", b / 1000.0);
        }
        cumulative += self.save_buckets[BUCKETS_MS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "datastorer_save_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "datastorer_save_duration_seconds_sum {}",
            self.save_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "datastorer_save_duration_seconds_count {}", self.save_count.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP datastorer_lease_waits_total Session opens that waited for another holder.");
        let _ = writeln!(out, "# TYPE datastorer_lease_waits_total counter");
        let _ = writeln!(out, "datastorer_lease_waits_total {}", self.lease_waits.load(Ordering::Relaxed));
        let _ = writeln!(out, "# TYPE datastorer_lease_wait_seconds_total counter");
        let _ = writeln!(
            out,
            "datastorer_lease_wait_seconds_total {}",
            self.lease_wait_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "# HELP datastorer_errors_total Error answers by code.");
        let _ = writeln!(out, "# TYPE datastorer_errors_total counter");
        for (code, n) in self.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "datastorer_errors_total{{code=\"{code}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP datastorer_loaded_keys Keys loaded in the engine.");
        let _ = writeln!(out, "# TYPE datastorer_loaded_keys gauge");
        let _ = writeln!(out, "datastorer_loaded_keys {}", g.loaded_keys);
        let _ = writeln!(out, "# TYPE datastorer_client_sessions gauge");
        let _ = writeln!(out, "datastorer_client_sessions {}", g.client_sessions);
        out
    }
}
