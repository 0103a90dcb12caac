//! The queue's scheduling, as plain logic: two lanes (emergency, normal),
//! per-key FIFO across them, rate budgets, and the composition of one batch
//! (emergency first with a share kept for the normal lane, count and byte
//! limits, one request per key, blocked keys skipped without losing their
//! place). The queue actor owns one `Lanes` and decides when to compose;
//! this decides what goes in.
//!
//! Owns: the lanes, the per-lane key counts, the token buckets and the
//! starvation counter. Must not: execute anything, answer requests or know
//! what a request carries beyond its key, lane, size and kind (so the rules
//! are unit-tested below with plain values).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Budget, Budgets};
use crate::types::{BudgetLevels, Priority};

/// Hashes a `u64` key hash to itself: the per-key maps are keyed by
/// seahash values already.
#[derive(Default)]
pub(crate) struct KeyHashHasher(u64);

impl std::hash::Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in, to stay correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type KeyHashSet = HashSet<u64, std::hash::BuildHasherDefault<KeyHashHasher>>;

/// How many requests of each key a place holds (the lanes, the retry
/// timers, the unflushed batches): a key is present while its count is
/// above zero.
#[derive(Default)]
pub(crate) struct KeyCounts(HashMap<u64, usize, std::hash::BuildHasherDefault<KeyHashHasher>>);

impl KeyCounts {
    pub(crate) fn add(&mut self, key: u64, n: usize) {
        *self.0.entry(key).or_default() += n;
    }
    /// One request of `key` left; the key is forgotten at zero.
    pub(crate) fn remove_one(&mut self, key: u64) {
        if let Some(n) = self.0.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&key);
            }
        }
    }
    /// Forgets `key` whatever its count; answers whether it was there.
    fn take(&mut self, key: u64) -> bool {
        self.0.remove(&key).is_some()
    }
    pub(crate) fn contains(&self, key: u64) -> bool {
        self.0.contains_key(&key)
    }
    pub(crate) fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.keys().copied()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Which budget a request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum BudgetClass {
    Get,
    Write,
    Scan,
}

impl BudgetClass {
    const COUNT: usize = 3;
}

struct Bucket {
    budget: Budget,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(budget: Budget) -> Self {
        Self { budget, tokens: budget.burst, refilled: Instant::now() }
    }
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.budget.per_second).min(self.budget.burst);
        self.refilled = now;
    }
    fn time_to_token(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens).max(0.0)) / self.budget.per_second)
    }
}

/// What the lanes need to know of a queued request.
pub(crate) trait Queued {
    /// Hash of the request's storage key.
    fn key_hash(&self) -> u64;
    fn lane(&self) -> Priority;
    fn set_lane(&mut self, lane: Priority);
    /// Bytes it writes (for the batch's byte limit).
    fn bytes(&self) -> usize;
    fn class(&self) -> BudgetClass;
}

/// The limits a batch is composed under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub max_batch: usize,
    pub max_batch_bytes: usize,
    /// One slot in `normal_share` is kept for the normal lane when it has
    /// work, and after `normal_share` batches without it the normal lane
    /// goes first.
    pub normal_share: usize,
}

/// The emergency and normal lanes. They never hold requests of one key at
/// once, which keeps per-key FIFO without scanning.
pub(crate) struct Lanes<P> {
    emergency: VecDeque<P>,
    normal: VecDeque<P>,
    emergency_keys: KeyCounts,
    normal_keys: KeyCounts,
    /// One per `BudgetClass` (by its index), `None` where unlimited: looked
    /// up for every request of every batch, so an array, not a map.
    buckets: [Option<Bucket>; BudgetClass::COUNT],
    limits: BatchLimits,
    /// Batches composed in a row while the normal lane had work and got none.
    normal_starved: usize,
    /// What waits in both lanes, counted.
    waiting: Waiting,
}

/// What waits in the lanes: the bytes its requests write and how many of
/// each `BudgetClass` (by its index). Kept apart from the lanes so a lane
/// can be borrowed while a request is counted out.
#[derive(Default)]
struct Waiting {
    bytes: usize,
    by_class: [usize; BudgetClass::COUNT],
}

impl Waiting {
    fn add(&mut self, p: &impl Queued) {
        self.bytes = self.bytes.saturating_add(p.bytes());
        self.by_class[p.class() as usize] += 1;
    }
    fn remove(&mut self, p: &impl Queued) {
        self.bytes = self.bytes.saturating_sub(p.bytes());
        self.by_class[p.class() as usize] -= 1;
    }
}

/// A batch being composed.
struct Batch<P> {
    requests: Vec<P>,
    /// Bytes of written values taken so far.
    bytes: usize,
    /// `max_batch_bytes` reached: no lane may add more.
    full: bool,
}

impl<P: Queued> Lanes<P> {
    pub(crate) fn new(limits: BatchLimits, budgets: &Budgets) -> Self {
        let mut buckets: [Option<Bucket>; BudgetClass::COUNT] = Default::default();
        for (class, budget) in
            [(BudgetClass::Get, budgets.get), (BudgetClass::Write, budgets.write), (BudgetClass::Scan, budgets.scan)]
        {
            buckets[class as usize] = budget.map(Bucket::new);
        }
        Self {
            emergency: VecDeque::new(),
            normal: VecDeque::new(),
            emergency_keys: KeyCounts::default(),
            normal_keys: KeyCounts::default(),
            buckets,
            limits,
            normal_starved: 0,
            waiting: Waiting::default(),
        }
    }

    /// Requests waiting in (emergency, normal).
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.emergency.len(), self.normal.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.emergency.is_empty() && self.normal.is_empty()
    }

    /// Requests of `class` waiting, both lanes.
    pub(crate) fn waiting(&self, class: BudgetClass) -> usize {
        self.waiting.by_class[class as usize]
    }

    /// Whether what waits would fill a whole batch, by count or by bytes
    /// (whatever keys, budgets or blocks then let in).
    pub(crate) fn would_fill_batch(&self) -> bool {
        let (emergency, normal) = self.len();
        emergency + normal >= self.limits.max_batch || self.waiting.bytes >= self.limits.max_batch_bytes
    }

    /// Queues `p` at the back of its lane (`front`: a retry, ahead of
    /// everything). A normal request of a key with queued emergency
    /// requests joins them; an emergency request pulls its key's (older)
    /// normal requests into the emergency lane ahead of itself.
    pub(crate) fn enqueue(&mut self, mut p: P, front: bool) {
        let key = p.key_hash();
        self.waiting.add(&p);
        if p.lane() == Priority::Normal && self.emergency_keys.contains(key) {
            p.set_lane(Priority::Emergency);
        }
        match p.lane() {
            Priority::Emergency => {
                if self.normal_keys.take(key) {
                    // Rare (one outstanding request per key is the rule), so a scan is fine.
                    // The moved requests keep their own lane label (what
                    // they asked for); only their place changes.
                    let (moved, kept): (VecDeque<_>, VecDeque<_>) =
                        self.normal.drain(..).partition(|q| q.key_hash() == key);
                    self.normal = kept;
                    self.emergency_keys.add(key, moved.len() + 1);
                    if front {
                        self.emergency.push_front(p);
                        for q in moved.into_iter().rev() {
                            self.emergency.push_front(q);
                        }
                    } else {
                        self.emergency.extend(moved);
                        self.emergency.push_back(p);
                    }
                    return;
                }
                self.emergency_keys.add(key, 1);
                if front {
                    self.emergency.push_front(p)
                } else {
                    self.emergency.push_back(p)
                }
            }
            Priority::Normal => {
                self.normal_keys.add(key, 1);
                if front {
                    self.normal.push_front(p)
                } else {
                    self.normal.push_back(p)
                }
            }
        }
    }

    /// Picks the next batch: emergency first, with `1/normal_share` of the
    /// slots kept for the normal lane when it has work, and the normal lane
    /// first after `normal_share` batches without it (budgets can leave
    /// room for one request per batch). Keys in `blocked` (retrying,
    /// unflushed) are skipped; with `scans_wait`, scans too (they could see
    /// an unflushed write). Costs O(batch), not O(queue): a lane is scanned
    /// only until the batch is full.
    pub(crate) fn compose(
        &mut self,
        blocked: &mut KeyHashSet,
        scans_wait: bool,
        is_scan: impl Fn(&P) -> bool,
    ) -> Vec<P> {
        if self.buckets.iter().any(Option::is_some) {
            let now = Instant::now();
            for b in self.buckets.iter_mut().flatten() {
                b.refill(now);
            }
        }
        let max = self.limits.max_batch;
        let share = self.limits.normal_share.max(1);
        let reserved = if self.normal.is_empty() { 0 } else { (max / share).max(1) };
        let mut batch = Batch { requests: Vec::new(), bytes: 0, full: false };
        let normal_waiting = !self.normal.is_empty();
        let skip_scans = |p: &P| scans_wait && is_scan(p);
        if normal_waiting && self.normal_starved >= share {
            self.take_from(Priority::Normal, reserved, blocked, &mut batch, &skip_scans);
        }
        self.take_from(Priority::Emergency, max.saturating_sub(reserved).max(1), blocked, &mut batch, &skip_scans);
        self.take_from(Priority::Normal, max, blocked, &mut batch, &skip_scans);
        self.take_from(Priority::Emergency, max, blocked, &mut batch, &skip_scans);
        let served_normal = batch.requests.iter().any(|p| p.lane() == Priority::Normal);
        if normal_waiting && !batch.requests.is_empty() && !served_normal {
            self.normal_starved += 1;
        } else if served_normal {
            self.normal_starved = 0;
        }
        batch.requests
    }

    fn take_from(
        &mut self,
        lane: Priority,
        cap: usize,
        blocked: &mut KeyHashSet,
        batch: &mut Batch<P>,
        skip: &impl Fn(&P) -> bool,
    ) {
        if batch.requests.len() >= cap || batch.full {
            return;
        }
        let max_bytes = self.limits.max_batch_bytes;
        let mut queue = match lane {
            Priority::Emergency => std::mem::take(&mut self.emergency),
            Priority::Normal => std::mem::take(&mut self.normal),
        };
        let mut kept = VecDeque::new();
        let keys = match lane {
            Priority::Emergency => &mut self.emergency_keys,
            Priority::Normal => &mut self.normal_keys,
        };
        while let Some(p) = queue.pop_front() {
            if batch.requests.len() >= cap {
                queue.push_front(p);
                break;
            }
            let size = p.bytes();
            if !batch.requests.is_empty() && batch.bytes.saturating_add(size) > max_bytes {
                // Full by bytes: nothing later may overtake this request.
                batch.full = true;
                queue.push_front(p);
                break;
            }
            // A key taken, blocked or skipped once stays so for the rest of
            // the batch: its later requests must not overtake it.
            if blocked.contains(&p.key_hash()) {
                kept.push_back(p);
                continue;
            }
            if skip(&p) {
                blocked.insert(p.key_hash());
                kept.push_back(p);
                continue;
            }
            if let Some(bucket) = &mut self.buckets[p.class() as usize] {
                if bucket.tokens < 1.0 {
                    blocked.insert(p.key_hash());
                    kept.push_back(p);
                    continue;
                }
                bucket.tokens -= 1.0;
            }
            blocked.insert(p.key_hash());
            keys.remove_one(p.key_hash());
            self.waiting.remove(&p);
            batch.bytes += size;
            batch.requests.push(p);
        }
        // Skipped requests go back in front of the untouched rest, in order.
        // Pushed onto the rest, not the rest appended to them: the rest can
        // be a shutdown's hundred thousand requests, moved for every batch.
        while let Some(p) = kept.pop_back() {
            queue.push_front(p);
        }
        match lane {
            Priority::Emergency => self.emergency = queue,
            Priority::Normal => self.normal = queue,
        }
    }

    /// Empties the normal lane (and with `emergency_too` the emergency
    /// lane): the requests, to be cancelled.
    pub(crate) fn drain(&mut self, emergency_too: bool) -> Vec<P> {
        let mut dropped: Vec<P> = self.normal.drain(..).collect();
        self.normal_keys.clear();
        if emergency_too {
            dropped.extend(self.emergency.drain(..));
            self.emergency_keys.clear();
        }
        for p in &dropped {
            self.waiting.remove(p);
        }
        dropped
    }

    /// How long until an exhausted budget has a token again (`None`: no
    /// budget is exhausted).
    pub(crate) fn time_to_token(&self) -> Option<Duration> {
        self.buckets.iter().flatten().filter(|b| b.tokens < 1.0).map(Bucket::time_to_token).min()
    }

    /// Tokens left per budget, refilled to now.
    pub(crate) fn budget_levels(&mut self) -> BudgetLevels {
        let now = Instant::now();
        let mut level = |class| {
            self.buckets[class as usize].as_mut().map(|b: &mut Bucket| {
                b.refill(now);
                b.tokens
            })
        };
        BudgetLevels { get: level(BudgetClass::Get), write: level(BudgetClass::Write), scan: level(BudgetClass::Scan) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct R {
        id: u32,
        key: u64,
        lane: Priority,
        bytes: usize,
        class: BudgetClass,
    }

    impl Queued for R {
        fn key_hash(&self) -> u64 {
            self.key
        }
        fn lane(&self) -> Priority {
            self.lane
        }
        fn set_lane(&mut self, lane: Priority) {
            self.lane = lane;
        }
        fn bytes(&self) -> usize {
            self.bytes
        }
        fn class(&self) -> BudgetClass {
            self.class
        }
    }

    fn r(id: u32, key: u64, lane: Priority) -> R {
        R { id, key, lane, bytes: 10, class: BudgetClass::Write }
    }
    const E: Priority = Priority::Emergency;
    const N: Priority = Priority::Normal;

    fn lanes(max_batch: usize, max_batch_bytes: usize, normal_share: usize) -> Lanes<R> {
        Lanes::new(BatchLimits { max_batch, max_batch_bytes, normal_share }, &Budgets::default())
    }

    fn ids(batch: &[R]) -> Vec<u32> {
        batch.iter().map(|r| r.id).collect()
    }

    fn compose(l: &mut Lanes<R>) -> Vec<u32> {
        ids(&l.compose(&mut KeyHashSet::default(), false, |_| false))
    }

    /// (requests in arrival order, limits) → the batches that come out.
    #[test]
    fn batches_serve_emergency_first_keep_a_share_for_normal_and_one_request_per_key() {
        // (what, arrivals, (max_batch, max_batch_bytes, normal_share), batches)
        type Case = (&'static str, Vec<R>, (usize, usize, usize), Vec<Vec<u32>>);
        let cases: Vec<Case> = vec![
            ("emergency before normal", vec![r(1, 1, N), r(2, 2, E)], (8, 1 << 20, 4), vec![vec![2, 1]]),
            (
                "a share of the batch kept for normal",
                vec![r(1, 1, E), r(2, 2, E), r(3, 3, E), r(4, 4, E), r(5, 5, N)],
                (4, 1 << 20, 4),
                vec![vec![1, 2, 3, 5], vec![4]],
            ),
            (
                "one request per key per batch, in order",
                vec![r(1, 1, N), r(2, 1, N), r(3, 2, N)],
                (8, 1 << 20, 4),
                vec![vec![1, 3], vec![2]],
            ),
            ("the count limit", vec![r(1, 1, N), r(2, 2, N), r(3, 3, N)], (2, 1 << 20, 4), vec![vec![1, 2], vec![3]]),
            (
                "the byte limit (10 bytes each)",
                vec![r(1, 1, N), r(2, 2, N), r(3, 3, N)],
                (8, 25, 4),
                vec![vec![1, 2], vec![3]],
            ),
        ];
        for (what, requests, (max, bytes, share), expected) in cases {
            let mut l = lanes(max, bytes, share);
            for q in requests {
                l.enqueue(q, false);
            }
            let mut got = Vec::new();
            while !l.is_empty() {
                got.push(compose(&mut l));
            }
            assert_eq!(got, expected, "{what}");
        }
    }

    #[test]
    fn an_emergency_request_pulls_its_keys_older_normal_requests_ahead_of_it() {
        let mut l = lanes(8, 1 << 20, 4);
        l.enqueue(r(1, 7, N), false);
        l.enqueue(r(2, 8, N), false);
        l.enqueue(r(3, 7, E), false);
        // Key 7's normal request moved to the emergency lane, before the emergency one.
        assert_eq!(l.len(), (2, 1));
        // A later normal request of key 7 joins the emergency lane too.
        l.enqueue(r(4, 7, N), false);
        assert_eq!(l.len(), (3, 1));
        let mut order = Vec::new();
        while !l.is_empty() {
            order.extend(compose(&mut l).into_iter().filter(|id| *id != 2));
        }
        assert_eq!(order, vec![1, 3, 4], "per-key FIFO across lanes");
    }

    #[test]
    fn blocked_keys_and_waiting_scans_keep_their_place() {
        let mut l = lanes(8, 1 << 20, 4);
        let scan = R { id: 3, key: 3, lane: N, bytes: 0, class: BudgetClass::Scan };
        for q in [r(1, 1, N), r(2, 2, N), scan, r(4, 1, N)] {
            l.enqueue(q, false);
        }
        let mut blocked: KeyHashSet = [1].into_iter().collect();
        let batch = l.compose(&mut blocked, true, |q| q.class == BudgetClass::Scan);
        assert_eq!(ids(&batch), vec![2], "key 1 blocked, the scan waits");
        assert_eq!(compose(&mut l), vec![1, 3], "back in arrival order; key 1's second request after its first");
        assert_eq!(compose(&mut l), vec![4]);
    }

    #[test]
    fn a_batch_would_be_full_by_count_or_by_the_bytes_waiting() {
        // (max_batch, max_batch_bytes), requests of 10 bytes, full?
        for (what, (max, bytes), n, full) in [
            ("fewer than max_batch, few bytes", (4, 1 << 20), 3, false),
            ("max_batch requests", (4, 1 << 20), 4, true),
            ("the byte limit reached first", (8, 30), 3, true),
            ("below both", (8, 31), 3, false),
        ] {
            let mut l = lanes(max, bytes, 4);
            for i in 0..n {
                l.enqueue(r(i, u64::from(i), N), false);
            }
            assert_eq!(l.would_fill_batch(), full, "{what}");
        }
        // What leaves the lanes leaves the count and the bytes.
        let mut l = lanes(8, 30, 4);
        for i in 0..3 {
            l.enqueue(r(i, u64::from(i), N), false);
        }
        assert!(l.would_fill_batch());
        assert_eq!(compose(&mut l), vec![0, 1, 2]);
        l.enqueue(r(9, 9, E), false);
        l.enqueue(r(10, 10, N), false);
        assert!(!l.would_fill_batch(), "bytes taken into a batch are not waiting any more");
        l.enqueue(R { id: 11, key: 11, lane: N, bytes: 0, class: BudgetClass::Get }, false);
        assert_eq!((l.waiting(BudgetClass::Write), l.waiting(BudgetClass::Get)), (2, 1));
        assert_eq!(l.drain(true).len(), 3);
        assert_eq!((l.waiting(BudgetClass::Write), l.waiting(BudgetClass::Get)), (0, 0));
        for i in 20..22 {
            l.enqueue(r(i, u64::from(i), N), false);
        }
        assert!(!l.would_fill_batch(), "drained bytes are not waiting any more");
        assert_eq!(l.waiting(BudgetClass::Write), 2);
    }

    #[test]
    fn a_starved_normal_lane_goes_first() {
        // Budgets leave room for one write per batch: emergency would take
        // every slot, but after `normal_share` batches the normal lane goes first.
        let budgets = Budgets { write: Some(Budget { per_second: 1e-9, burst: 4.0 }), ..Budgets::default() };
        let mut l: Lanes<R> =
            Lanes::new(BatchLimits { max_batch: 1, max_batch_bytes: 1 << 20, normal_share: 2 }, &budgets);
        for q in [r(1, 1, E), r(2, 2, E), r(3, 3, E), r(4, 4, E), r(10, 10, N)] {
            l.enqueue(q, false);
        }
        let order: Vec<Vec<u32>> = (0..4).map(|_| compose(&mut l)).collect();
        assert_eq!(order, vec![vec![1], vec![2], vec![10], vec![3]]);
        assert_eq!(compose(&mut l), Vec::<u32>::new(), "the budget is spent");
        assert!(l.time_to_token().is_some());
        assert_eq!(l.budget_levels().write.map(|t| t < 1.0), Some(true));
    }

    #[test]
    fn dropping_the_normal_lane_keeps_the_emergency_lane() {
        let mut l = lanes(8, 1 << 20, 4);
        for q in [r(1, 1, N), r(2, 2, E), r(3, 3, N)] {
            l.enqueue(q, false);
        }
        assert_eq!(ids(&l.drain(false)), vec![1, 3]);
        assert_eq!(l.len(), (1, 0));
        assert_eq!(ids(&l.drain(true)), vec![2]);
        assert!(l.is_empty());
    }
}
