//! Prometheus text exposition, rendered by hand from a few atomics: queue
//! depth per lane, queue batches and storage flushes, budget left, save latency histogram, lease waits, errors
//! by kind, loaded keys, failed saves by reason, client lease lapses, and
//! HTTP requests by route template and status with a latency histogram.
//!
//! Owns: the counters and their text. Must not: label by key or raw path
//! (unbounded label sets).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use datastorer::{BudgetLevels, QueueDepth, QueueStats};

const BUCKETS_MS: [f64; 12] = [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];

/// One route's request latencies.
#[derive(Default)]
struct RouteLatency {
    buckets: [u64; 13],
    sum_us: u64,
    count: u64,
}

/// Counters kept by the server.
#[derive(Default)]
pub(crate) struct Metrics {
    /// Requests by (route template, method, status).
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Latency by route template.
    latency: Mutex<BTreeMap<String, RouteLatency>>,
    save_buckets: [AtomicU64; 13],
    save_sum_us: AtomicU64,
    save_count: AtomicU64,
    lease_waits: AtomicU64,
    lease_wait_us: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

/// Values read from the engine at scrape time.
pub(crate) struct Gauges {
    /// Queue depth.
    pub(crate) depth: QueueDepth,
    /// Budget tokens.
    pub(crate) budgets: BudgetLevels,
    /// Keys loaded in the engine.
    pub(crate) loaded_keys: usize,
    /// Of those, hibernating now, and wake-ups since start.
    pub(crate) hibernation: datastorer::HibernationStats,
    /// Client sessions open.
    pub(crate) client_sessions: usize,
    /// Client sessions that ended because their client stopped renewing.
    pub(crate) client_lease_lapses: u64,
    /// Failed saves by reason, from the engine.
    pub(crate) save_failures: Vec<(datastorer::SaveFailureReason, u64)>,
    /// The queue's totals (batches and durable flushes: group commit).
    pub(crate) queue: QueueStats,
}

fn bucket_of(ms: f64) -> usize {
    BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(BUCKETS_MS.len())
}

fn histogram(out: &mut String, name: &str, labels: &str, buckets: &[u64; 13], sum_us: u64, count: u64) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (i, b) in BUCKETS_MS.iter().enumerate() {
        cumulative += buckets[i];
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}", b / 1000.0);
    }
    cumulative += buckets[BUCKETS_MS.len()];
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
    let braces = |l: &str| if l.is_empty() { String::new() } else { format!("{{{l}}}") };
    let _ = writeln!(out, "{name}_sum{} {}", braces(labels), sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
}

impl Metrics {
    /// One answered request: `route` is the matched route template
    /// (`/v1/stores/{store}/keys/{key}/session/data`), never the raw path,
    /// so the label set stays bounded.
    pub(crate) fn observe_request(&self, route: String, method: &str, status: u16, took: Duration) {
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let l = latency.entry(route.clone()).or_default();
        l.buckets[bucket_of(took.as_secs_f64() * 1000.0)] += 1;
        l.sum_us += took.as_micros() as u64;
        l.count += 1;
        drop(latency);
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route, method.to_owned(), status))
            .or_default() += 1;
    }

    /// Records one durable save's latency.
    pub(crate) fn observe_save(&self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let i = bucket_of(ms);
        self.save_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.save_sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.save_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a session open that had to wait for another holder.
    pub(crate) fn observe_lease_wait(&self, waited: Duration) {
        self.lease_waits.fetch_add(1, Ordering::Relaxed);
        self.lease_wait_us.fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts an error answer by its code.
    pub(crate) fn count_error(&self, code: &'static str) {
        *self.errors.lock().unwrap_or_else(|p| p.into_inner()).entry(code).or_default() += 1;
    }

    /// The same counters as JSON, for the console's live charts (which
    /// turn two snapshots into rates): requests and error answers by route,
    /// durable saves and their summed latency, lease waits, the queue, the
    /// sessions.
    pub(crate) fn snapshot(&self, g: &Gauges, webhooks_delivered: u64) -> serde_json::Value {
        let mut routes: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((route, _, status), n) in requests.iter() {
            let e = routes.entry(route.as_str()).or_default();
            e.0 += n;
            if *status >= 400 {
                e.1 += n;
            }
        }
        let routes: serde_json::Map<String, serde_json::Value> = routes
            .into_iter()
            .map(|(r, (total, errors))| (r.to_owned(), serde_json::json!({ "requests": total, "errors": errors })))
            .collect();
        drop(requests);
        serde_json::json!({
            "routes": routes,
            "saves": self.save_count.load(Ordering::Relaxed),
            "save_us": self.save_sum_us.load(Ordering::Relaxed),
            "lease_waits": self.lease_waits.load(Ordering::Relaxed),
            "queue": {
                "emergency": g.depth.emergency, "normal": g.depth.normal,
                "in_flight": g.depth.in_flight, "retrying": g.depth.retrying,
                "writes": g.queue.writes, "flushes": g.queue.flushes,
            },
            "storage_budgets": { "get": g.budgets.get, "write": g.budgets.write, "scan": g.budgets.scan },
            "loaded_keys": g.loaded_keys,
            "hibernating_keys": g.hibernation.hibernating,
            "key_wakeups": g.hibernation.woken,
            "client_sessions": g.client_sessions,
            "client_lease_lapses": g.client_lease_lapses,
            "webhooks_delivered": webhooks_delivered,
        })
    }

    /// The exposition text.
    pub(crate) fn render(&self, g: &Gauges) -> String {
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
        for (name, help, v) in [
            ("datastorer_queue_batches_total", "Batches of storage requests the queue executed.", g.queue.batches),
            (
                "datastorer_storage_flushes_total",
                "Durable flushes of the storage (one can cover many saves: group commit).",
                g.queue.flushes,
            ),
            (
                "datastorer_storage_writes_total",
                "Write operations sent to the storage, retries included.",
                g.queue.writes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
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
        let _ = writeln!(
            out,
            "# HELP datastorer_lease_wait_seconds_total Time session opens spent waiting for another holder."
        );
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
        let _ = writeln!(
            out,
            "# HELP datastorer_hibernating_keys Loaded keys hibernating (no actor; woken by the next request)."
        );
        let _ = writeln!(out, "# TYPE datastorer_hibernating_keys gauge");
        let _ = writeln!(out, "datastorer_hibernating_keys {}", g.hibernation.hibernating);
        let _ = writeln!(
            out,
            "# HELP datastorer_key_wakeups_total Hibernating keys woken by a request or a lease renewal."
        );
        let _ = writeln!(out, "# TYPE datastorer_key_wakeups_total counter");
        let _ = writeln!(out, "datastorer_key_wakeups_total {}", g.hibernation.woken);
        let _ = writeln!(out, "# HELP datastorer_client_sessions Open client sessions (HTTP lease tokens).");
        let _ = writeln!(out, "# TYPE datastorer_client_sessions gauge");
        let _ = writeln!(out, "datastorer_client_sessions {}", g.client_sessions);
        let _ = writeln!(
            out,
            "# HELP datastorer_client_lease_lapses_total Client sessions saved and ended because their client stopped renewing."
        );
        let _ = writeln!(out, "# TYPE datastorer_client_lease_lapses_total counter");
        let _ = writeln!(out, "datastorer_client_lease_lapses_total {}", g.client_lease_lapses);
        let _ = writeln!(
            out,
            "# HELP datastorer_save_failures_total Saves and releases that failed, by reason (each also logged at warn)."
        );
        let _ = writeln!(out, "# TYPE datastorer_save_failures_total counter");
        for (reason, n) in &g.save_failures {
            let _ = writeln!(out, "datastorer_save_failures_total{{reason=\"{}\"}} {n}", reason.as_str());
        }
        let _ = writeln!(
            out,
            "# HELP datastorer_http_requests_total HTTP requests answered, by route template, method and status."
        );
        let _ = writeln!(out, "# TYPE datastorer_http_requests_total counter");
        for ((route, method, status), n) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "datastorer_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP datastorer_http_request_duration_seconds Time to answer an HTTP request, by route template."
        );
        let _ = writeln!(out, "# TYPE datastorer_http_request_duration_seconds histogram");
        for (route, l) in self.latency.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let labels = format!("route=\"{route}\"");
            histogram(&mut out, "datastorer_http_request_duration_seconds", &labels, &l.buckets, l.sum_us, l.count);
        }
        out
    }
}
