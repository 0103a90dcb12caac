//! Instructions per HTTP request, counted by valgrind's callgrind
//! (`--only instructions`; skipped, saying so, without valgrind). Unlike
//! time, an instruction count does not move with the machine's load, so
//! two builds compare on it run by run. The server runs under callgrind;
//! after a warm-up the counters are zeroed (`callgrind_control -z`), a
//! fixed number of requests is sent one after another on one keep-alive
//! connection, and the counters are dumped (`-d`): every thread of the
//! server is counted (workers, queue, flusher, sled's), so the figure is
//! what a request costs the whole process. The baseline is the same count
//! for `GET /healthz`, which passes the same middleware but no handler
//! work: what actix and the middleware cost on their own.
//! `DATASTORER_BENCH_SERVER=PATH` counts another build's server (its
//! `serve` subcommand) with the same client, for a before/after.
//!
//! The dumps are kept beside the results (`callgrind-update-0.out`, …).
//!
//! Must not: count the warm-up or the set-up (the zeroing is what
//! separates them), or leave the server running.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::bench::{BenchConfig, Measurement};
use super::bench_http::{open_session, payload, RawHttp};

/// Requests per count: enough that the background threads' periodic work
/// (sled's flush timer, the log's) is a small share.
const REQUESTS: usize = 2000;
const WARM_UP: usize = 300;

/// `datastorer serve` under callgrind; killed on drop.
struct Counted {
    process: std::process::Child,
    base: String,
    out: PathBuf,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn start(dir: &Path) -> Result<Counted, String> {
    use std::io::BufRead;
    // Another build's server may be counted with the same harness.
    let exe = match std::env::var_os("DATASTORER_BENCH_SERVER") {
        Some(exe) => PathBuf::from(exe),
        None => std::env::current_exe().map_err(|e| e.to_string())?,
    };
    let out = dir.join("callgrind.out");
    let mut process = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--client-lease-ttl-secs", "3600", "--data-dir"])
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    let stdout = process.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).map_err(|e| e.to_string())?;
    let base = line.trim().strip_prefix("datastorer listening on ").ok_or("the server did not start")?.to_owned();
    Ok(Counted { process, base, out })
}

fn control(flag: &str, pid: u32) -> Result<(), String> {
    let status = Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run callgrind_control: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("callgrind_control {flag} failed"))
    }
}

/// The instructions in the newest dump of `counted` (its `summary:` or
/// `totals:` line); the dump is kept as `keep` (for `callgrind_annotate`).
fn last_dump(counted: &Counted, keep: &Path) -> Result<u64, String> {
    let dir = counted.out.parent().ok_or("no directory")?;
    let name = counted.out.file_name().and_then(|n| n.to_str()).ok_or("no file name")?;
    // Dumps are `callgrind.out.1`, `.2`, …; the newest has the highest number.
    let mut dumps: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_str()?.strip_prefix(name)?.strip_prefix('.')?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    dumps.sort();
    let (_, path) = dumps.last().ok_or("callgrind wrote no dump")?;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    std::fs::copy(path, keep).map_err(|e| format!("cannot keep {}: {e}", keep.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals in {}", path.display()))
}

/// An operation counted in a child process of its own (figures I3, I4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    /// `Session::update` of a one-key document on the memory backend (1a).
    Update,
    /// The baseline of 1a: an actix `send` to a trivial actor and its answer.
    ActixSend,
    /// The floor of 1a: the same `send` to an actor that keeps a copy of
    /// its document and encodes it after the change (`bench::Keeper`).
    ActixKeep,
    /// An update and a durable `Session::save` of a 1 KiB document on sled (3a).
    Save,
    /// A raw sled insert of the same bytes and `flush`.
    SledInsertFlush,
}

/// Operations per count in the child.
const OPS: usize = 5000;

/// Reads one line of stdin (the parent's go-ahead).
fn wait_for_parent() -> Result<(), String> {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map(|_| ()).map_err(|e| e.to_string())
}

/// A child's count of actix sends of `Bump` to `to` and their answers:
/// `WARM_UP` of them, `ready`, then `OPS` counted, `done`.
async fn sends_counted<A>(to: actix::Addr<A>) -> Result<(), String>
where
    A: actix::Actor<Context = actix::Context<A>> + actix::Handler<super::bench::Bump>,
{
    for _ in 0..WARM_UP {
        to.send(super::bench::Bump).await.map_err(|e| e.to_string())?;
    }
    println!("ready");
    wait_for_parent()?;
    for _ in 0..OPS {
        to.send(super::bench::Bump).await.map_err(|e| e.to_string())?;
    }
    println!("done");
    wait_for_parent()
}

/// The child: sets `op` up and warms it up, says `ready`, waits for a line
/// on stdin, runs `OPS` of them, says `done`, waits for a line, exits. The
/// parent zeroes callgrind's counters between `ready` and its line, and
/// dumps them after `done`.
pub async fn ops_child(op: Op, dir: PathBuf) -> Result<(), String> {
    use datastorer::{Datastorer, Priority};
    use serde_json::{json, Value};
    let err = |e: datastorer::Error| e.to_string();
    match op {
        Op::Update => {
            let ds = Datastorer::start(super::bench::memory_config("bench")).await.map_err(err)?;
            let store = ds.store("b", super::bench::spec(json!({"n": 0}))).map_err(err)?;
            let s = store.open("k").await.map_err(err)?;
            let bump = |d: &mut Value| d["n"] = json!(d["n"].as_u64().unwrap_or(0) + 1);
            for _ in 0..WARM_UP {
                s.update(bump).await.map_err(err)?;
            }
            println!("ready");
            wait_for_parent()?;
            for _ in 0..OPS {
                s.update(bump).await.map_err(err)?;
            }
            println!("done");
            wait_for_parent()?;
            ds.shutdown().await;
        }
        Op::ActixSend => sends_counted(actix::Actor::start(super::bench::Echo(0))).await?,
        Op::ActixKeep => sends_counted(actix::Actor::start(super::bench::Keeper::new(json!({"n": 0})))).await?,
        Op::Save => {
            let ds = Datastorer::start(super::bench::sled_config(&dir)).await.map_err(err)?;
            let store = ds.store("b", super::bench::spec(json!({"n": 0}))).map_err(err)?;
            let s = store.open("k").await.map_err(err)?;
            for i in 0..WARM_UP + OPS {
                if i == WARM_UP {
                    println!("ready");
                    wait_for_parent()?;
                }
                let d = super::bench::doc(i, 1024);
                s.update(move |x| *x = d).await.map_err(err)?;
                s.save(Priority::Normal).await.map_err(err)?;
            }
            println!("done");
            wait_for_parent()?;
            ds.shutdown().await;
        }
        Op::SledInsertFlush => {
            let db = sled::open(&dir).map_err(|e| e.to_string())?;
            for i in 0..WARM_UP + OPS {
                if i == WARM_UP {
                    println!("ready");
                    wait_for_parent()?;
                }
                let value = serde_json::to_vec(&super::bench::doc(i, 1024)).map_err(|e| e.to_string())?;
                db.insert(b"k", value).map_err(|e| e.to_string())?;
                db.flush().map_err(|e| e.to_string())?;
            }
            println!("done");
            wait_for_parent()?;
        }
    }
    Ok(())
}

/// Instructions per operation of `op`, in a child under callgrind.
fn count_op(op: Op, dir: &Path, keep: &Path) -> Result<f64, String> {
    use std::io::{BufRead, Write};
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = dir.join("callgrind.out");
    let name = <Op as clap::ValueEnum>::to_possible_value(&op).map(|v| v.get_name().to_owned()).unwrap_or_default();
    let mut process = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .args(["bench-ops-child", "--op", &name, "--dir"])
        .arg(dir.join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    let mut from_child = std::io::BufReader::new(process.stdout.take().ok_or("no stdout")?);
    let mut to_child = process.stdin.take().ok_or("no stdin")?;
    let counted = Counted { process, base: String::new(), out };
    let mut expect = |word: &str| -> Result<(), String> {
        let mut line = String::new();
        from_child.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() == word {
            Ok(())
        } else {
            Err(format!("the {name} child said {line:?}, not {word}"))
        }
    };
    expect("ready")?;
    control("-z", counted.process.id())?;
    writeln!(to_child).map_err(|e| e.to_string())?;
    expect("done")?;
    control("-d", counted.process.id())?;
    let total = last_dump(&counted, keep)?;
    writeln!(to_child).map_err(|e| e.to_string())?;
    Ok(total as f64 / OPS as f64)
}

pub async fn bench_instructions(cfg: &BenchConfig, scratch: &Path) -> Result<Vec<Measurement>, String> {
    let valgrind = Command::new("valgrind").arg("--version").output();
    if !valgrind.is_ok_and(|o| o.status.success()) {
        println!("instructions: skipped (no valgrind: apt-get install valgrind)");
        return Ok(Vec::new());
    }
    let (mut update, mut saved, mut health) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..cfg.repeat.min(3) {
        let dir = scratch.join(format!("callgrind-{r}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let counted = start(&dir)?;
        let http = reqwest::Client::new();
        let token = open_session(&http, &counted.base, "h0").await?;
        let mut conn = RawHttp::connect(&counted.base).await.ok_or("cannot connect")?;
        let path = "/v1/stores/http/keys/h0/session/data";
        let saved_path = format!("{path}?save=normal");
        let merge = "application/merge-patch+json";
        // The dumps stay beside the results, for `callgrind_annotate`.
        let keep = |what: &str| scratch.parent().unwrap_or(scratch).join(format!("callgrind-{what}-{r}.out"));
        update.push(drive(&counted, &mut conn, "PATCH", path, &token, merge, &keep("update")).await?);
        saved.push(drive(&counted, &mut conn, "PATCH", &saved_path, &token, merge, &keep("save")).await?);
        health.push(drive(&counted, &mut conn, "GET", "/healthz", "", "text/plain", &keep("healthz")).await?);
    }
    let (mut update_op, mut send_op, mut save_op, mut flush_op) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut keep_op = Vec::new();
    for r in 0..cfg.repeat.min(3) {
        let keep = |what: &str| scratch.parent().unwrap_or(scratch).join(format!("callgrind-{what}-{r}.out"));
        let dir = |what: &str| scratch.join(format!("ops-{what}-{r}"));
        update_op.push(count_op(Op::Update, &dir("update"), &keep("engine-update"))?);
        send_op.push(count_op(Op::ActixSend, &dir("send"), &keep("actix-send"))?);
        keep_op.push(count_op(Op::ActixKeep, &dir("keep"), &keep("actix-keep"))?);
        save_op.push(count_op(Op::Save, &dir("save"), &keep("engine-save"))?);
        flush_op.push(count_op(Op::SledInsertFlush, &dir("sled"), &keep("sled-insert-flush"))?);
    }
    let engine = |name: &str, ours: Vec<f64>, baseline_name: &str, baseline: Vec<f64>| Measurement {
        name: name.to_owned(),
        unit: "instructions".into(),
        higher_is_better: false,
        ours,
        baseline_name: baseline_name.to_owned(),
        baseline,
        goal_ratio: None,
        notes: vec![format!("{OPS} operations after {WARM_UP} of warm-up, in a process of their own, every thread")],
    };
    let mut update_measurement = engine(
        "I3. instructions per in-memory update of one key (Session::update, figure 1a)",
        update_op,
        "an actix send to a trivial actor and its answer (1a's baseline)",
        send_op,
    );
    update_measurement.notes.push(format!(
        "floor, the same send to an actor that keeps a copy for a panic and encodes the changed document: {:.0} instructions (median)",
        super::bench::median(&keep_op)
    ));
    let mut out = vec![
        update_measurement,
        engine(
            "I4. instructions per durable save of a 1 KiB document on sled (update + Session::save, figure 3a)",
            save_op,
            "raw sled insert of the same bytes + flush",
            flush_op,
        ),
    ];
    let measurement = |name: &str, ours: Vec<f64>| Measurement {
        name: name.to_owned(),
        unit: "instructions".into(),
        higher_is_better: false,
        ours,
        baseline_name: "GET /healthz: actix and the middleware alone".into(),
        baseline: health.clone(),
        goal_ratio: None,
        notes: vec![format!("{REQUESTS} requests after {WARM_UP} of warm-up, one connection, access log on")],
    };
    out.extend([
        measurement(
            "I1. instructions per HTTP merge-patch update (PATCH …/session/data), every thread of the server",
            update,
        ),
        measurement("I2. instructions per HTTP durable save (PATCH …/session/data?save=normal)", saved),
    ]);
    Ok(out)
}

/// Instructions per request of one kind, sent one after another on
/// `conn`: `WARM_UP` of them, then `REQUESTS` counted.
async fn drive(
    counted: &Counted,
    conn: &mut RawHttp,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    keep: &Path,
) -> Result<f64, String> {
    async fn send(conn: &mut RawHttp, method: &str, path: &str, token: &str, ct: &str, i: usize) -> Result<(), String> {
        let body = if method == "GET" { String::new() } else { payload(i) };
        match conn.request(method, path, token, ct, body.as_bytes()).await {
            Some(200) => Ok(()),
            status => Err(format!("{method} {path} answered {status:?}")),
        }
    }
    for i in 0..WARM_UP {
        send(conn, method, path, token, content_type, i).await?;
    }
    // The warm-up's writes settle before the counters are zeroed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    control("-z", counted.process.id())?;
    for i in 0..REQUESTS {
        send(conn, method, path, token, content_type, WARM_UP + i).await?;
    }
    control("-d", counted.process.id())?;
    Ok(last_dump(counted, keep)? as f64 / REQUESTS as f64)
}
