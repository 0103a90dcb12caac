//! The offline tools: inspect, export, import, check.

use std::path::Path;
use std::process::{Command, Output};

use datastorer::storage::sled_backend::SledBackend;
use datastorer::storage::{storage_key, Backend, LeaseHolder, Precondition, Record, RecordHeader, WriteOp};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_datastorer");

fn run(args: &[&str], dir: &Path, stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--data-dir").arg(dir);
    if let Some(input) = stdin {
        use std::io::Write;
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        return child.wait_with_output().unwrap();
    }
    cmd.output().unwrap()
}

fn put(b: &SledBackend, store: &str, key: &str, raw: Vec<u8>) {
    let op = WriteOp { key: storage_key(store, key), precondition: Precondition::Any, value: Some(raw) };
    b.write_batch(&[op]).pop().unwrap().unwrap();
}

fn record(data: Value, epoch: u64) -> Vec<u8> {
    Record {
        header: RecordHeader { epoch, revision: 3 },
        data_version: 1,
        data: serde_json::to_vec(&data).unwrap(),
        metadata: br#"{"m":1}"#.to_vec(),
        user_ids: vec!["7".into()],
        lease: Some(LeaseHolder { owner: "old-server".into(), expires_at_ms: 1 }),
        created_at_ms: 10,
        updated_at_ms: 20,
    }
    .encode()
}

/// Writes sample records (and a torn one); answers the torn record's bytes.
fn seed(dir: &Path, corrupt: bool) -> Vec<u8> {
    let b = SledBackend::open(dir).unwrap();
    for i in 0..5 {
        put(&b, "profiles", &format!("p{i}"), record(json!({"coins": i}), 2));
    }
    put(&b, "other", "x", record(json!({"n": "x"}), 1));
    let mut torn = record(json!({"coins": 99}), 1);
    torn.truncate(torn.len() - 4);
    if corrupt {
        put(&b, "profiles", "torn", torn.clone());
    }
    b.flush().unwrap();
    torn
}

#[test]
fn inspect_prints_the_decoded_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    seed(&dir, true);
    let out = run(&["inspect", "--store", "profiles", "--key", "p3"], &dir, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"], json!({"coins": 3}));
    assert_eq!((v["epoch"].clone(), v["revision"].clone(), v["data_version"].clone()), (json!(2), json!(3), json!(1)));
    assert_eq!(v["lease"]["owner"], "old-server");

    let out = run(&["inspect", "--store", "profiles", "--key", "torn"], &dir, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("profiles/torn is corrupt"));
    let out = run(&["inspect", "--store", "profiles", "--key", "nobody"], &dir, None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no record"));

    let missing = tmp.path().join("missing");
    let out = run(&["inspect", "--store", "s", "--key", "k"], &missing, None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no data directory"));
    assert!(!missing.exists(), "inspect never creates a data directory");
}

#[test]
fn check_reports_corrupt_records_and_leaves_them_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    seed(&dir, false);
    let out = run(&["check"], &dir, None);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("checked 6 records: 0 corrupt"));

    let before = seed(&dir, true);
    let out = run(&["check"], &dir, None);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("corrupt profiles/torn") && text.contains("checked 7 records: 1 corrupt"), "{text}");
    let after = SledBackend::open(&dir).unwrap().get(&storage_key("profiles", "torn")).unwrap();
    assert_eq!(Some(before), after);
}

#[test]
fn export_then_import_round_trips_and_import_validates_first() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    seed(&dir, true);
    let file = tmp.path().join("dump.jsonl");
    let out = run(&["export", "--output", file.to_str().unwrap()], &dir, None);
    // The corrupt record is reported (non-zero exit) and skipped; the rest is exported.
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped corrupt record profiles/torn"));
    let lines: Vec<Value> =
        std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().all(|l| l.get("lease").is_none()), "leases are not exported");

    let fresh = tmp.path().join("fresh");
    let out = run(&["import", "--input", file.to_str().unwrap()], &fresh, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["inspect", "--store", "profiles", "--key", "p4"], &fresh, None);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["data"].clone(), v["metadata"].clone(), v["data_version"].clone()),
        (json!({"coins": 4}), json!({"m": 1}), json!(1))
    );
    assert!(v["lease"].is_null());

    // Existing keys are refused without --overwrite; nothing is written.
    let out = run(&["import", "--input", file.to_str().unwrap()], &fresh, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists (use --overwrite)"));
    // With --overwrite the epoch still grows, fencing off any old holder.
    let out = run(&["import", "--overwrite", "--input", file.to_str().unwrap()], &fresh, None);
    assert!(out.status.success());
    let v: Value =
        serde_json::from_slice(&run(&["inspect", "--store", "profiles", "--key", "p4"], &fresh, None).stdout).unwrap();
    assert_eq!(v["epoch"], 2);

    // A bad line anywhere: every problem reported with its line, nothing imported.
    let bad =
        "{\"store\":\"s\",\"key\":\"a\",\"data\":{}}\n{not json}\n{\"store\":\"bad name\",\"key\":\"b\",\"data\":1}\n";
    let target = tmp.path().join("target");
    let out = run(&["import"], &target, Some(bad));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("line 2") && err.contains("line 3") && err.contains("nothing was imported"), "{err}");
    let out = run(&["check"], &target, None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("checked 0 records"));
}
