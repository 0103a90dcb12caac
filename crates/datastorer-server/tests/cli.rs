//! The offline tools: inspect, export, import, check — on a stopped sled
//! directory, and online on PostgreSQL — and the copy from sled into
//! PostgreSQL.

mod common;

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
    let op = WriteOp::new(storage_key(store, key), Precondition::Any, Some(raw));
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

// ---- On PostgreSQL ------------------------------------------------------

fn run_pg(args: &[&str], pg: &common::pg::PgSchema, stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(BIN);
    cmd.args(args).args(["--database-url", &pg.url, "--postgres-schema", &pg.schema]);
    cmd.env_remove("DATASTORER_DATA_DIR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// The copy keeps every record byte for byte (epochs, revisions, leases,
/// and a torn record as it is), and running it again changes nothing.
#[test]
fn copy_sled_to_postgres_keeps_every_record_byte_for_byte() {
    let Some(pg) = common::pg::PgSchema::new("copy_sled_to_postgres_keeps_every_record_byte_for_byte") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    seed(&dir, true);
    // A deleted key left its store an epoch floor: it must travel too.
    let floor = Record {
        header: RecordHeader { epoch: 41, revision: 3 },
        data_version: 0,
        data: b"null".to_vec(),
        metadata: b"{}".to_vec(),
        user_ids: vec![],
        lease: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    };
    let floor_key = datastorer::storage::epoch_floor_key("profiles");
    {
        let b = SledBackend::open(&dir).unwrap();
        b.write_batch(&[WriteOp::new(floor_key.clone(), Precondition::Any, Some(floor.encode()))]);
        b.flush().unwrap();
    }
    let copy = |extra: &[&str]| {
        let mut args = vec!["copy-sled-to-postgres", "--data-dir", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = run_pg(&args, &pg, None);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, log) = copy(&[]);
    assert!(ok, "{log}");
    assert!(log.contains("copied 7 records (1 of them corrupt") && log.contains("1 epoch floors raised"), "{log}");
    let source = SledBackend::open(&dir).unwrap();
    let target = pg.backend();
    // Regression (issue 22): the copy left the epoch floors behind.
    let copied_floor = target.get(&floor_key).unwrap().expect("the epoch floor was copied");
    assert_eq!(RecordHeader::peek(&copied_floor).map(|h| h.epoch), Some(41));
    let all = source.scan_prefix(b"d\0", None, 100).unwrap();
    assert_eq!(all.len(), 7);
    for (k, v) in &all {
        assert_eq!(target.get(k).unwrap().as_ref(), Some(v), "{:?}", String::from_utf8_lossy(k));
    }
    drop(source);
    let (ok, log) = copy(&[]);
    assert!(ok && log.contains("7 were already there"), "{log}");
    // A record that differs is not replaced without --overwrite.
    pg.sql("UPDATE $S.records SET value = '\\x00' WHERE key = 'p1'");
    let (ok, log) = copy(&[]);
    assert!(!ok && log.contains("profiles/p1 exists in PostgreSQL with other contents"), "{log}");
    let (ok, log) = copy(&["--overwrite"]);
    assert!(ok, "{log}");
    assert_eq!(target.get(&storage_key("profiles", "p1")).unwrap(), Some(record(json!({"coins": 1}), 2)));
}

/// Online on PostgreSQL: export, check and inspect read while a lease is
/// live; import refuses to replace a record whose lease is live (by the
/// database's clock) unless forced, and a forced import fences the holder.
#[test]
fn tools_run_online_on_postgres_and_import_respects_live_leases() {
    let Some(pg) = common::pg::PgSchema::new("tools_run_online_on_postgres") else { return };
    let b = pg.backend();
    let now = b.clock().unwrap().now_ms();
    let mut live = Record::decode(&record(json!({"coins": 1}), 4)).unwrap();
    live.lease = Some(LeaseHolder { owner: "srv-live".into(), expires_at_ms: now + 600_000 });
    let op = |key: &str, value: Vec<u8>| WriteOp::new(storage_key("profiles", key), Precondition::Any, Some(value));
    b.write_batch(&[
        op("held", live.encode()),
        op("free", record(json!({"coins": 2}), 1)),
        op("bad", b"junk".to_vec()),
    ]);

    let out = run_pg(&["inspect", "--store", "profiles", "--key", "held"], &pg, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["lease"]["owner"], "srv-live");

    let out = run_pg(&["check"], &pg, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("corrupt profiles/bad"));

    let out = run_pg(&["export", "--store", "profiles"], &pg, None);
    let exported = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(exported.lines().count(), 2, "{exported}");
    assert_eq!(b.get(&storage_key("profiles", "bad")).unwrap(), Some(b"junk".to_vec()), "kept untouched");

    let input = "{\"store\":\"profiles\",\"key\":\"held\",\"data\":{\"coins\":50}}\n";
    let out = run_pg(&["import", "--overwrite"], &pg, Some(input));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("profiles/held is held by \"srv-live\"") && err.contains("--force"), "{err}");
    assert_eq!(b.get(&storage_key("profiles", "held")).unwrap(), Some(live.encode()), "nothing imported");

    let out = run_pg(&["import", "--overwrite", "--force"], &pg, Some(input));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = Record::decode(&b.get(&storage_key("profiles", "held")).unwrap().unwrap()).unwrap();
    assert_eq!(after.header.epoch, 5, "a higher epoch fences the old holder off");
    assert!(after.lease.is_none());
    assert_eq!(after.data, br#"{"coins":50}"#.to_vec());
}

#[test]
fn the_tools_refuse_two_places_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["check", "--data-dir", tmp.path().to_str().unwrap(), "--database-url", "host=127.0.0.1 user=postgres"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name two places"));
}

/// Import checks every line by the server's rules (metadata an object, user
/// ids non-empty printable strings, each key once) before writing anything.
#[test]
fn import_refuses_what_the_server_would_refuse_and_a_key_named_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let cases = [
        (
            "a key twice",
            concat!(
                r#"{"store":"profiles","key":"a","data":{"n":1}}"#,
                "\n",
                r#"{"store":"profiles","key":"a","data":{"n":2}}"#,
                "\n"
            ),
            "also on line 1",
        ),
        (
            "metadata not an object",
            r#"{"store":"profiles","key":"m","data":{},"metadata":[1]}"#,
            "metadata must be a JSON object",
        ),
        ("an empty user id", r#"{"store":"profiles","key":"u","data":{},"user_ids":[""]}"#, "user id"),
        // Regression (issue 22, F5): import accepted a reserved store that
        // HTTP refuses.
        ("a reserved store", r#"{"store":"p:inbox","key":"x","data":{"weird":1}}"#, "reserved for messages"),
    ];
    for (what, input, expected) in cases {
        let out = run(&["import"], &dir, Some(input));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(err.contains(expected) && err.contains("nothing was imported"), "{what}: {err}");
    }
    let b = SledBackend::open(&dir).unwrap();
    for key in ["a", "m", "u"] {
        assert_eq!(b.get(&storage_key("profiles", key)).unwrap(), None, "nothing written for {key}");
    }
    drop(b);
    // What HTTP accepts, import accepts: integer user ids (Roblox's), an
    // inbox as export writes it; a missing creation time is the import's.
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let input = concat!(
        r#"{"store":"profiles","key":"ok","data":{},"user_ids":[123456, "u-7"]}"#,
        "\n",
        r#"{"store":"profiles:inbox","key":"ok","data":{"last_id":1,"messages":[{"id":1,"sent_at_ms":5,"body":"hi"}]}}"#,
        "\n"
    );
    let out = run(&["import"], &dir, Some(input));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let b = SledBackend::open(&dir).unwrap();
    let rec = Record::decode(&b.get(&storage_key("profiles", "ok")).unwrap().unwrap()).unwrap();
    assert_eq!(rec.user_ids, ["123456", "u-7"]);
    assert!(rec.created_at_ms >= before, "created_at_ms {} is not the import's time", rec.created_at_ms);
    assert!(b.get(&storage_key("profiles:inbox", "ok")).unwrap().is_some());
}

/// Regression (issue 22, F4): a reserved store name in the config was
/// checked only after the engine had started, and the teardown panicked.
/// It is refused like every other config error, before anything starts.
#[test]
fn a_reserved_store_name_in_the_config_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("c.toml");
    std::fs::write(&config, "[stores.\"a:inbox\"]\ntemplate = {}\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("reserved for messages") && err.contains("a:inbox"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("datastorer started"), "{err}");
    assert!(!tmp.path().join("data").exists(), "nothing was created");
}

#[test]
fn a_bad_value_from_the_environment_names_the_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let serve = |env: Option<&str>, flag: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).arg("--data-dir").arg(tmp.path().join("data"));
        cmd.env_remove("DATASTORER_WORKERS");
        if let Some(v) = env {
            cmd.env("DATASTORER_WORKERS", v);
        }
        if let Some(v) = flag {
            cmd.args(["--workers", v]);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "a usage error");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(Some("abc"), None);
    assert!(err.contains("DATASTORER_WORKERS=abc") && err.contains("invalid digit"), "{err}");
    // Typed as a flag, the flag is what the message names.
    let err = serve(None, Some("abc"));
    assert!(err.contains("'--workers <WORKERS>'") && !err.contains("DATASTORER_WORKERS"), "{err}");
    assert!(!tmp.path().join("data").exists(), "nothing was created");
}

/// Regression (issue 22): a record whose data_version is newer than its
/// store's migrations was imported and broke the next open.
#[test]
fn import_refuses_a_data_version_newer_than_the_stores_migrations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let config = tmp.path().join("c.toml");
    std::fs::write(&config, "[stores.profiles]\nmigrations = [{ op = \"rename\", from = \"gold\", to = \"coins\" }]\n")
        .unwrap();
    let config = config.to_str().unwrap();
    let line = |store: &str, v: u32| format!(r#"{{"store":"{store}","key":"k","data":{{}},"data_version":{v}}}"#);
    for (input, expected) in [
        (line("profiles", 2), "its 1 migration(s)"),
        (line("other", 1), "does not declare it"),
        (line("profiles:inbox", 1), "an inbox has no migrations"),
    ] {
        let out = run(&["import", "--config", config], &dir, Some(&input));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{input}: accepted");
        assert!(err.contains(expected) && err.contains("could never open it"), "{input}: {err}");
    }
    // At the store's own version it goes in; without the config, with a note.
    let out = run(&["import", "--config", config], &dir, Some(&line("profiles", 1)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["import", "--overwrite"], &dir, Some(&line("profiles", 1)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("pass --config"), "{err}");
}
