//! Micro-benchmarks of the hot paths, each beside the baseline it is judged
//! against (run with `cargo bench --bench micro`; filter with a name, e.g.
//! `cargo bench --bench micro -- record`).
//!
//! Divan prints time per operation and, through its allocation profiler,
//! allocations per operation: both sides of a pair appear next to each
//! other, measured in the same run. The end-to-end figures (durability,
//! shutdown, memory, HTTP) live in `datastorer bench`.

use std::sync::Arc;

use actix::prelude::*;
use datastorer::storage::memory::MemoryBackend;
use datastorer::storage::{storage_key, Backend, LeaseHolder, Precondition, Record, RecordHeader, WriteOp};
use datastorer::{AcquirePolicy, Config, Datastorer, Session, StoreSpec};
use divan::{black_box, AllocProfiler, Bencher};
use serde_json::{json, Value};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

fn main() {
    divan::main();
}

fn document(bytes: usize) -> Value {
    json!({ "coins": 10, "level": 3, "pad": "x".repeat(bytes.saturating_sub(40)) })
}

fn record(bytes: usize) -> Record {
    Record {
        header: RecordHeader { epoch: 3, revision: 41 },
        data_version: 2,
        data: serde_json::to_vec(&document(bytes)).unwrap_or_default(),
        metadata: b"{}".to_vec(),
        user_ids: vec!["user-1".into()],
        lease: Some(LeaseHolder { owner: "node-a".into(), expires_at_ms: 1_700_000_000_000 }),
        created_at_ms: 1_600_000_000_000,
        updated_at_ms: 1_700_000_000_000,
    }
}

/// The on-disk record format: what every save and load pays beyond the
/// document's own JSON.
mod record {
    use super::*;

    const SIZES: &[usize] = &[128, 1024, 16 * 1024];

    /// Baseline for `encode`: copying the document bytes once.
    #[divan::bench(args = SIZES)]
    fn baseline_copy_document(bencher: Bencher, bytes: usize) {
        let r = record(bytes);
        bencher.bench_local(|| black_box(&r.data).clone());
    }

    #[divan::bench(args = SIZES)]
    fn encode(bencher: Bencher, bytes: usize) {
        let r = record(bytes);
        bencher.bench_local(|| black_box(&r).encode());
    }

    #[divan::bench(args = SIZES)]
    fn decode(bencher: Bencher, bytes: usize) {
        let encoded = record(bytes).encode();
        bencher.bench_local(|| Record::decode(black_box(&encoded)).is_ok());
    }

    /// What a fencing check reads: the header only, no checksum, no body.
    #[divan::bench(args = SIZES)]
    fn peek_header(bencher: Bencher, bytes: usize) {
        let encoded = record(bytes).encode();
        bencher.bench_local(|| RecordHeader::peek(black_box(&encoded)));
    }

    /// Change detection hashes the document's JSON on every autosave tick.
    #[divan::bench(args = SIZES)]
    fn checksum(bencher: Bencher, bytes: usize) {
        let data = record(bytes).data;
        bencher.bench_local(|| seahash::hash(black_box(&data)));
    }

    /// ... after serializing it: usually the larger cost.
    #[divan::bench(args = SIZES)]
    fn serialize_document(bencher: Bencher, bytes: usize) {
        let doc = document(bytes);
        bencher.bench_local(|| serde_json::to_vec(black_box(&doc)).map(|v| v.len()).unwrap_or(0));
    }
}

/// One conditional write through the memory backend: precondition check
/// plus insert, per write, in batches as the queue sends them.
mod backend {
    use super::*;

    const BATCH: &[usize] = &[1, 64, 1024];

    fn ops(n: usize, backend: &MemoryBackend) -> Vec<WriteOp> {
        (0..n)
            .map(|i| {
                let key = storage_key("bench", &format!("k{i}"));
                let value = record(1024).encode();
                backend.raw_put(&key, &value);
                WriteOp::new(key, Precondition::Header(RecordHeader { epoch: 3, revision: 41 }), Some(value))
            })
            .collect()
    }

    /// Baseline: the same inserts into a `BTreeMap` behind a mutex, with no checks.
    #[divan::bench(args = BATCH)]
    fn baseline_btreemap_insert(bencher: Bencher, n: usize) {
        let map = std::sync::Mutex::new(std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new());
        let backend = MemoryBackend::unlogged();
        let ops = ops(n, &backend);
        bencher.counter(divan::counter::ItemsCount::new(n)).with_inputs(|| ops.clone()).bench_local_values(|ops| {
            let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
            for op in ops {
                if let Some(v) = op.value {
                    m.insert(op.key.to_vec(), v.to_vec());
                }
            }
        });
    }

    #[divan::bench(args = BATCH)]
    fn write_batch(bencher: Bencher, n: usize) {
        let backend = MemoryBackend::unlogged();
        let ops = ops(n, &backend);
        // The stored header stays at revision 41, so every write's precondition holds.
        bencher
            .counter(divan::counter::ItemsCount::new(n))
            .with_inputs(|| {
                for op in &ops {
                    if let Some(v) = &op.value {
                        backend.raw_put(&op.key, v);
                    }
                }
                ops.clone()
            })
            .bench_local_refs(|ops| backend.write_batch(ops).len());
    }
}

/// A trivial actor: the baseline for a session round trip.
struct Counter(u64);
impl Actor for Counter {
    type Context = Context<Self>;
}
#[derive(Message)]
#[rtype(result = "u64")]
struct Bump;
impl Handler<Bump> for Counter {
    type Result = u64;
    fn handle(&mut self, _: Bump, _: &mut Self::Context) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// A session call is one actor round trip plus the closure: judged against
/// a bare actix request to a trivial actor (goal: at least 60 % of its rate).
mod session {
    use super::*;

    fn open(system: &SystemRunner, doc: Value) -> Option<(Datastorer, Session<Value>)> {
        system.block_on(async move {
            let mut config = Config::memory().owner_id("bench");
            config.handle_signals = false;
            let ds = Datastorer::start(config).await.ok()?;
            let store = ds.store("bench", StoreSpec::new(doc)).ok()?;
            let session = store.open("k").policy(AcquirePolicy::Fail).await.ok()?;
            Some((ds, session))
        })
    }

    #[divan::bench]
    fn baseline_actix_round_trip(bencher: Bencher) {
        let system = System::new();
        let addr = system.block_on(async { Counter(0).start() });
        bencher.bench_local(|| system.block_on(addr.send(Bump)).unwrap_or(0));
    }

    fn bump(d: &mut Value) {
        d["coins"] = json!(d["coins"].as_u64().unwrap_or(0) + 1);
    }

    /// Update round trips on a session over `doc`.
    fn bench_update(bencher: Bencher, doc: Value) {
        let system = System::new();
        let Some((_ds, session)) = open(&system, doc) else { return };
        bencher.bench_local(|| system.block_on(session.update(bump)));
    }

    #[divan::bench]
    fn update(bencher: Bencher) {
        bench_update(bencher, json!({ "coins": 0 }));
    }

    #[divan::bench]
    fn read(bencher: Bencher) {
        let system = System::new();
        let Some((_ds, session)) = open(&system, json!({ "coins": 0 })) else { return };
        bencher.bench_local(|| system.block_on(session.read(|d| d["coins"].as_u64())));
    }

    /// An update of a 1 KiB document: the panic-restore copy grows with the document.
    #[divan::bench]
    fn update_1k_document(bencher: Bencher) {
        bench_update(bencher, document(1024));
    }

    /// Save of a dirty key on the memory backend: encode, queue, group commit, receipt.
    #[divan::bench]
    fn update_and_save(bencher: Bencher) {
        let system = System::new();
        let Some((_ds, session)) = open(&system, json!({ "coins": 0 })) else { return };
        let session = Arc::new(session);
        bencher.bench_local(|| {
            let s = session.clone();
            system.block_on(async move {
                let _ = s.update(bump).await;
                s.save(datastorer::Priority::Normal).await.is_ok()
            })
        });
    }
}
