//! Fuzzing with seeded random inputs (no nightly toolchain is needed, unlike
//! cargo-fuzz): the record decoder and the load path (JSON parse, migration
//! steps, reconcile, deserialize) get arbitrary bytes and documents and must
//! answer a typed error, never panic or write.
//!
//! Executions per target: `DATASTORER_FUZZ_ITERS` (default 20 000).
//! Seed: `DATASTORER_FUZZ_SEED`.

mod common;

use common::{env_or, Rng};

use datastorer::storage::{storage_key, Record, RecordHeader};
use datastorer::testing::Cluster;
use datastorer::{Error, StoreSpec};
use datastorer_server::MigrationStep;
use serde_json::{json, Map, Value};

fn value(rng: &mut Rng, depth: u32) -> Value {
    let names = ["a", "b", "coins", "gold", "x", ""];
    match rng.below(if depth > 3 { 4 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next() as i64),
        3 => json!(names[rng.below(names.len() as u64) as usize]),
        4 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(5) {
                m.insert(names[rng.below(names.len() as u64) as usize].to_owned(), value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

fn step(rng: &mut Rng) -> MigrationStep {
    let f = |rng: &mut Rng| ["a", "b", "coins", "gold"][rng.below(4) as usize].to_owned();
    match rng.below(4) {
        0 => MigrationStep::AddField { field: f(rng), default: value(rng, 2) },
        1 => MigrationStep::Rename { from: f(rng), to: f(rng) },
        2 => MigrationStep::Remove { field: f(rng) },
        _ => MigrationStep::MergePatch { patch: value(rng, 1) },
    }
}

#[test]
fn the_record_decoder_never_panics() {
    let iters = env_or("DATASTORER_FUZZ_ITERS", 20_000);
    let mut rng = Rng(env_or("DATASTORER_FUZZ_SEED", 0xdec0de) | 1);
    let good = Record {
        header: RecordHeader { epoch: 1, revision: 2 },
        data_version: 0,
        data: b"{}".to_vec(),
        metadata: b"{}".to_vec(),
        user_ids: vec!["u".into()],
        lease: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
    .encode();
    let mut decoded = 0;
    for _ in 0..iters {
        let mut bytes = good.clone();
        // Keep the header valid half the time so the body decoder is reached.
        let n = 1 + rng.below(6);
        for _ in 0..n {
            let i = rng.below(bytes.len() as u64) as usize;
            bytes[i] = rng.next() as u8;
        }
        if rng.below(3) == 0 {
            let len = rng.below(bytes.len() as u64 + 40) as usize;
            bytes.resize(len, rng.next() as u8);
        }
        if Record::decode(&bytes).is_ok() {
            // The checksum covers every byte but the magic: only a mutation
            // that changed nothing may still decode.
            assert_eq!(bytes, good, "a damaged record decoded");
            decoded += 1;
        }
    }
    println!("fuzz: record decoder, {iters} executions, {decoded} unchanged by their mutation, all others refused");
}

#[actix_rt::test]
async fn the_load_path_answers_typed_errors_for_any_stored_document() {
    tokio::time::pause();
    let iters = env_or("DATASTORER_FUZZ_ITERS", 20_000) / 20;
    let mut rng = Rng(env_or("DATASTORER_FUZZ_SEED", 0x10ad) | 1);
    let cluster = Cluster::start(1).await;
    let (mut opened, mut refused) = (0, 0);
    for i in 0..iters {
        let steps: Vec<MigrationStep> = (0..rng.below(4)).map(|_| step(&mut rng)).collect();
        let mut spec = StoreSpec::new(value(&mut rng, 0)).metadata_template(json!({"m": 1}));
        for s in &steps {
            if s.validate().is_ok() {
                spec = spec.migration(s.to_migration());
            }
        }
        let store_name = format!("f{i}");
        let store = cluster.node(0).store(&store_name, spec).unwrap();
        let data = if rng.below(5) == 0 {
            (0..rng.below(30)).map(|_| rng.next() as u8).collect()
        } else {
            serde_json::to_vec(&value(&mut rng, 0)).unwrap()
        };
        let rec = Record {
            header: RecordHeader { epoch: 1, revision: 1 },
            data_version: rng.below(4) as u32,
            data,
            metadata: if rng.below(6) == 0 { b"\xff".to_vec() } else { b"{}".to_vec() },
            user_ids: vec![],
            lease: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
        .encode();
        let skey = storage_key(&store_name, "k");
        cluster.backend().raw_put(&skey, &rec);
        match store.open("k").await {
            Ok(s) => {
                opened += 1;
                s.close().await.unwrap();
            }
            Err(Error::Migration { .. } | Error::Deserialize { .. }) => {
                refused += 1;
                assert_eq!(cluster.backend().raw_get(&skey).unwrap(), rec, "a refused record is left untouched");
            }
            Err(other) => panic!("unexpected error kind: {other:?}"),
        }
    }
    println!("fuzz: load path, {iters} executions: {opened} opened, {refused} refused with a typed error");
}
