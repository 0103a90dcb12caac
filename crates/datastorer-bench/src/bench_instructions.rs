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
    Ok(vec![
        measurement(
            "I1. instructions per HTTP merge-patch update (PATCH …/session/data), every thread of the server",
            update,
        ),
        measurement("I2. instructions per HTTP durable save (PATCH …/session/data?save=normal)", saved),
    ])
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
