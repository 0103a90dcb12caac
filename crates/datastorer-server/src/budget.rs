//! Request budgets: a token bucket per API key that has
//! `requests_per_minute` (the whole key's), and one per client under a key
//! that has `client_requests_per_minute` (each client named by its
//! `Datastorer-Client-Id`; requests naming none share one bucket), so one
//! misbehaving game server (in a retry loop) cannot starve the others that
//! share its key, as every server of a Roblox game does.
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
    /// Requests this bucket let through, and refused (for the console's
    /// charts, which turn two readings into rates).
    served: u64,
    refused: u64,
    /// When the bucket was made (a client's: its first request).
    created: Instant,
}

impl Bucket {
    /// Takes one token at `now`; when none is left, answers the whole
    /// seconds until one will be.
    fn take(&mut self, now: Instant) -> Result<(), u64> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.served += 1;
            return Ok(());
        }
        self.refused += 1;
        Err(((1.0 - self.tokens) / self.per_sec).ceil().max(1.0) as u64)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
    }

    /// A token handed back: the request it was taken for was not served.
    fn give_back(&mut self) {
        self.tokens += 1.0;
        self.served -= 1;
        self.refused += 1;
    }

    /// How full the bucket is being drawn now, with its counters.
    fn reading(&mut self, now: Instant) -> BucketReading {
        self.refill(now);
        BucketReading {
            used: if self.capacity > 0.0 { (1.0 - self.tokens / self.capacity).clamp(0.0, 1.0) } else { 0.0 },
            served: self.served,
            refused: self.refused,
            age_ms: now.saturating_duration_since(self.created).as_millis() as u64,
        }
    }
}

impl Bucket {
    fn full(rpm: u32, now: Instant) -> Self {
        let rpm = f64::from(rpm);
        Bucket { tokens: rpm, capacity: rpm, per_sec: rpm / 60.0, last: now, served: 0, refused: 0, created: now }
    }
}

/// The most clients a key keeps buckets for; past it, the buckets of the
/// clients idle longest are dropped (they would be full again anyway
/// after a minute).
const MAX_CLIENTS_PER_KEY: usize = 10_000;

/// One key's buckets.
struct KeyBudget {
    total: Option<Mutex<Bucket>>,
    per_client: Option<(u32, Mutex<HashMap<String, Bucket>>)>,
}

/// One bucket as read for the charts.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub(crate) struct BucketReading {
    /// The share of the burst spent now (0: full, 1: empty).
    pub(crate) used: f64,
    /// Requests it let through and refused, since the server started.
    pub(crate) served: u64,
    pub(crate) refused: u64,
    /// How long the bucket has existed: a reader that compares two
    /// readings knows a client it had not seen started from nothing.
    pub(crate) age_ms: u64,
}

/// A key's budgets as read for the charts: its own bucket, and its
/// clients' (the most drawn first, at most [`CLIENTS_SHOWN`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct KeyReading {
    pub(crate) key: String,
    pub(crate) requests_per_minute: Option<u32>,
    pub(crate) client_requests_per_minute: Option<u32>,
    pub(crate) total: Option<BucketReading>,
    pub(crate) clients: Vec<ClientReading>,
    /// Clients with a bucket, shown or not.
    pub(crate) client_count: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct ClientReading {
    /// `""`: the requests that named no client.
    pub(crate) client: String,
    #[serde(flatten)]
    pub(crate) reading: BucketReading,
}

/// The clients of a key shown on the charts: the ones nearest their limit.
const CLIENTS_SHOWN: usize = 8;

/// Which budget a refused request spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spent {
    /// The key's own: retry in so many seconds.
    Key(u64),
    /// The client's within the key.
    Client(u64),
}

/// The buckets of every key with a budget.
pub(crate) struct Budgets {
    keys: HashMap<String, KeyBudget>,
}

impl Budgets {
    /// Full buckets for `keys` that have a budget.
    pub(crate) fn new(keys: &[ApiKey]) -> Self {
        let now = Instant::now();
        let keys = keys
            .iter()
            .filter(|k| k.requests_per_minute.is_some() || k.client_requests_per_minute.is_some())
            .map(|k| {
                let budget = KeyBudget {
                    total: k.requests_per_minute.map(|rpm| Mutex::new(Bucket::full(rpm, now))),
                    per_client: k.client_requests_per_minute.map(|rpm| (rpm, Mutex::new(HashMap::new()))),
                };
                (k.name.clone(), budget)
            })
            .collect();
        Budgets { keys }
    }

    /// Charges one request to `key` and, where the key budgets its clients,
    /// to `client`; `Err` names the budget spent and the seconds until it
    /// has a request again. A request refused takes nothing from either.
    pub(crate) fn charge(&self, key: &str, client: Option<&str>) -> Result<(), Spent> {
        let Some(budget) = self.keys.get(key) else { return Ok(()) };
        let now = Instant::now();
        if let Some((rpm, clients)) = &budget.per_client {
            let mut clients = clients.lock().unwrap_or_else(|p| p.into_inner());
            if clients.len() >= MAX_CLIENTS_PER_KEY && !clients.contains_key(client.unwrap_or("")) {
                let mut idle: Vec<(Instant, String)> = clients.iter().map(|(c, b)| (b.last, c.clone())).collect();
                idle.sort();
                for (_, c) in idle.into_iter().take(MAX_CLIENTS_PER_KEY / 10) {
                    clients.remove(&c);
                }
            }
            let bucket = clients.entry(client.unwrap_or("").to_owned()).or_insert_with(|| Bucket::full(*rpm, now));
            bucket.take(now).map_err(Spent::Client)?;
            if let Some(total) = &budget.total {
                if let Err(wait) = total.lock().unwrap_or_else(|p| p.into_inner()).take(now) {
                    bucket.give_back(); // nothing was served
                    return Err(Spent::Key(wait));
                }
            }
            return Ok(());
        }
        match &budget.total {
            Some(total) => total.lock().unwrap_or_else(|p| p.into_inner()).take(now).map_err(Spent::Key),
            None => Ok(()),
        }
    }
}

impl Budgets {
    /// Every budgeted key's buckets as they stand now, by key name.
    pub(crate) fn readings(&self) -> Vec<KeyReading> {
        let now = Instant::now();
        let mut out: Vec<KeyReading> = self
            .keys
            .iter()
            .map(|(name, budget)| {
                let total = budget.total.as_ref().map(|b| {
                    let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
                    (b.capacity as u32, b.reading(now))
                });
                let (client_rpm, clients, client_count) = match &budget.per_client {
                    None => (None, Vec::new(), 0),
                    Some((rpm, clients)) => {
                        let mut clients = clients.lock().unwrap_or_else(|p| p.into_inner());
                        let count = clients.len();
                        // Read by reference; only the clients shown get their
                        // names copied (a key may have thousands).
                        let mut read: Vec<(&String, BucketReading)> =
                            clients.iter_mut().map(|(c, b)| (c, b.reading(now))).collect();
                        read.sort_by(|a, b| b.1.used.total_cmp(&a.1.used).then_with(|| a.0.cmp(b.0)));
                        read.truncate(CLIENTS_SHOWN);
                        let shown =
                            read.into_iter().map(|(c, reading)| ClientReading { client: c.clone(), reading }).collect();
                        (Some(*rpm), shown, count)
                    }
                };
                KeyReading {
                    key: name.clone(),
                    requests_per_minute: total.map(|(rpm, _)| rpm),
                    client_requests_per_minute: client_rpm,
                    total: total.map(|(_, reading)| reading),
                    clients,
                    client_count,
                }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_a_burst_then_one_request_per_refill() {
        let t0 = Instant::now();
        let mut b = Bucket { tokens: 3.0, capacity: 3.0, per_sec: 0.5, last: t0, served: 0, refused: 0, created: t0 };
        assert!((0..3).all(|_| b.take(t0).is_ok()));
        assert_eq!(b.take(t0), Err(2), "one token every 2 s");
        assert_eq!(b.take(t0 + Duration::from_millis(1000)), Err(1));
        assert!(b.take(t0 + Duration::from_millis(2000)).is_ok());
        assert!(b.take(t0 + Duration::from_secs(3600)).is_ok(), "a long pause refills, up to the burst");
        assert!(b.take(t0 + Duration::from_secs(3600)).is_ok());
    }

    fn key(rpm: Option<u32>, client_rpm: Option<u32>) -> ApiKey {
        ApiKey {
            name: "game".into(),
            key: "game-secret-0000000001".into(),
            role: crate::auth::Role::Write,
            stores: None,
            requests_per_minute: rpm,
            client_requests_per_minute: client_rpm,
        }
    }

    #[test]
    fn each_client_under_a_key_has_its_own_budget_within_the_keys() {
        let b = Budgets::new(&[key(Some(5), Some(2))]);
        // Server a spends its two; server b still has its own.
        assert!(b.charge("game", Some("a")).is_ok() && b.charge("game", Some("a")).is_ok());
        assert!(matches!(b.charge("game", Some("a")), Err(Spent::Client(_))));
        assert!(b.charge("game", Some("b")).is_ok() && b.charge("game", Some("b")).is_ok());
        // Requests naming no client share one bucket.
        assert!(b.charge("game", None).is_ok());
        // The key's total (5) is spent now: c is refused on the key's
        // budget, and keeps its own token for later.
        assert!(matches!(b.charge("game", Some("c")), Err(Spent::Key(_))));
        // A key without budgets, or unknown, is never refused.
        assert!(b.charge("other", Some("a")).is_ok());
    }

    #[test]
    fn a_key_budget_alone_is_shared_by_its_clients() {
        let b = Budgets::new(&[key(Some(2), None)]);
        assert!(b.charge("game", Some("a")).is_ok() && b.charge("game", Some("b")).is_ok());
        assert!(matches!(b.charge("game", Some("c")), Err(Spent::Key(_))));
    }

    #[test]
    fn readings_show_each_key_and_its_most_drawn_clients() {
        let b = Budgets::new(&[key(Some(10), Some(4))]);
        for _ in 0..3 {
            b.charge("game", Some("busy")).unwrap();
        }
        b.charge("game", Some("quiet")).unwrap();
        for _ in 0..2 {
            b.charge("game", Some("busy")).ok();
        }
        let r = b.readings();
        assert_eq!(r.len(), 1);
        let game = &r[0];
        assert_eq!((game.requests_per_minute, game.client_requests_per_minute), (Some(10), Some(4)));
        let total = game.total.unwrap();
        assert_eq!((total.served, total.refused), (5, 0), "the refused requests never reached the key's bucket");
        assert!((total.used - 0.5).abs() < 0.01, "{total:?}");
        assert_eq!(game.client_count, 2);
        let names: Vec<&str> = game.clients.iter().map(|c| c.client.as_str()).collect();
        assert_eq!(names, ["busy", "quiet"], "the most drawn first");
        assert_eq!((game.clients[0].reading.served, game.clients[0].reading.refused), (4, 1));
        assert!((game.clients[0].reading.used - 1.0).abs() < 0.01);
    }

    #[test]
    fn a_request_the_key_refuses_counts_as_refused_for_its_client_too() {
        let b = Budgets::new(&[key(Some(1), Some(5))]);
        b.charge("game", Some("a")).unwrap();
        assert!(matches!(b.charge("game", Some("a")), Err(Spent::Key(_))));
        let a = &b.readings()[0].clients[0];
        assert_eq!((a.reading.served, a.reading.refused), (1, 1));
    }
}
