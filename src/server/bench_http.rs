//! Figure 6 of `datastorer bench`: the server over HTTP against Redis and
//! PostgreSQL on 127.0.0.1, driven with the same concurrency in the same
//! run. A baseline that cannot be reached is reported as skipped; the other
//! comparisons still run.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::bench::{BenchConfig, Measurement};

/// Connections per side.
pub const CONNECTIONS: usize = 64;

/// Our server as a child process on a free port; killed on drop.
struct Child {
    process: std::process::Child,
    base: String,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn start_server(dir: &Path) -> Result<Child, String> {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut process = std::process::Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--client-lease-ttl-secs", "3600", "--data-dir"])
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = process.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).map_err(|e| e.to_string())?;
    let base = line.trim().strip_prefix("datastorer listening on ").ok_or("the server did not start")?.to_owned();
    Ok(Child { process, base })
}

/// Runs `CONNECTIONS` loops of `op` for `duration`; answers operations/s.
async fn drive<F, Fut>(duration: Duration, op: F) -> f64
where
    F: Fn(usize, Arc<AtomicBool>, Arc<AtomicU64>) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CONNECTIONS).map(|i| actix::spawn(op(i, stop.clone(), count.clone()))).collect();
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let done = count.load(Ordering::SeqCst);
    let took = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    done as f64 / took
}

fn payload(i: usize) -> String {
    json!({ "n": i, "pad": "x".repeat(1000) }).to_string()
}

async fn open_sessions(http: &reqwest::Client, base: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    for i in 0..CONNECTIONS {
        let resp = http
            .post(format!("{base}/v1/stores/http/keys/h{i}/session"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value =
            serde_json::from_slice(&resp.bytes().await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        tokens.push(v["lease_token"].as_str().ok_or("no lease token")?.to_owned());
    }
    Ok(tokens)
}

async fn ours(base: &str, tokens: &[String], duration: Duration, with_save: bool) -> f64 {
    let http = reqwest::Client::builder().pool_max_idle_per_host(CONNECTIONS).build().unwrap_or_default();
    let base = base.to_owned();
    let tokens = Arc::new(tokens.to_vec());
    drive(duration, move |i, stop, count| {
        let (http, base, tokens) = (http.clone(), base.clone(), tokens.clone());
        async move {
            let url = format!("{base}/v1/stores/http/keys/h{i}/session");
            let token = tokens[i].clone();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let patched = http
                    .patch(format!("{url}/data"))
                    .header("Lease-Token", &token)
                    .header("content-type", "application/merge-patch+json")
                    .body(payload(n))
                    .send()
                    .await;
                if !matches!(patched, Ok(ref r) if r.status().is_success()) {
                    return;
                }
                if with_save {
                    let saved = http.post(format!("{url}/save")).header("Lease-Token", &token).send().await;
                    if !matches!(saved, Ok(ref r) if r.status().is_success()) {
                        return;
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await
}

async fn redis_set(duration: Duration) -> Result<f64, String> {
    TcpStream::connect("127.0.0.1:6379").await.map_err(|e| format!("Redis unreachable on 127.0.0.1:6379: {e}"))?;
    Ok(drive(duration, |i, stop, count| async move {
        let Ok(stream) = TcpStream::connect("127.0.0.1:6379").await else { return };
        let mut stream = BufReader::new(stream);
        let mut line = String::new();
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let key = format!("datastorer-bench:{i}");
            let value = payload(n);
            let cmd = format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n", key.len(), value.len());
            if stream.get_mut().write_all(cmd.as_bytes()).await.is_err() {
                return;
            }
            line.clear();
            if stream.read_line(&mut line).await.is_err() || !line.starts_with("+OK") {
                return;
            }
            count.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await)
}

const PG: &str = "host=127.0.0.1 user=postgres dbname=test";

async fn pg_connect() -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("PostgreSQL unreachable ({PG}): {e}"))?;
    actix::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn pg_update(duration: Duration) -> Result<f64, String> {
    let setup = pg_connect().await?;
    setup
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS datastorer_bench (id int PRIMARY KEY, doc jsonb NOT NULL);
             TRUNCATE datastorer_bench;",
        )
        .await
        .map_err(|e| e.to_string())?;
    for i in 0..CONNECTIONS as i32 {
        setup
            .execute("INSERT INTO datastorer_bench VALUES ($1, '{}'::jsonb)", &[&i])
            .await
            .map_err(|e| e.to_string())?;
    }
    let rate = drive(duration, |i, stop, count| async move {
        let Ok(client) = pg_connect().await else { return };
        if client.batch_execute("SET synchronous_commit = on").await.is_err() {
            return;
        }
        let Ok(stmt) = client.prepare("UPDATE datastorer_bench SET doc = $1::text::jsonb WHERE id = $2").await else {
            return;
        };
        let id = i as i32;
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            if client.execute(&stmt, &[&payload(n), &id]).await.is_err() {
                return;
            }
            count.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    let _ = setup.batch_execute("DROP TABLE datastorer_bench").await;
    Ok(rate)
}

/// Figure 6: update and durable-save request rates beside Redis and PostgreSQL.
pub async fn bench_http(cfg: &BenchConfig, scratch: &Path) -> Result<Vec<Measurement>, String> {
    let duration = if cfg.updates < 10_000 { Duration::from_millis(500) } else { Duration::from_secs(4) };
    let server = start_server(&scratch.join("http"))?;
    let http = reqwest::Client::new();
    let tokens = open_sessions(&http, &server.base).await?;
    let (mut up, mut redis, mut saves, mut pg) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut skipped = Vec::new();
    for _ in 0..cfg.repeat {
        up.push(ours(&server.base, &tokens, duration, false).await);
        saves.push(ours(&server.base, &tokens, duration, true).await);
        match redis_set(duration).await {
            Ok(r) => redis.push(r),
            Err(e) => skipped.push(e),
        }
        match pg_update(duration).await {
            Ok(r) => pg.push(r),
            Err(e) => skipped.push(e),
        }
    }
    drop(server);
    skipped.dedup();
    for s in &skipped {
        println!("6. skipped a baseline: {s}");
    }
    let mut out = Vec::new();
    let note = format!("{CONNECTIONS} keep-alive connections, client and server on the same 2-core machine");
    if !redis.is_empty() {
        out.push(Measurement {
            name: "6a. HTTP update requests (JSON merge patch, 1 KiB)".into(),
            unit: "requests/s".into(),
            higher_is_better: true,
            ours: up,
            baseline_name: "Redis SET of the same bytes, same concurrency".into(),
            baseline: redis,
            goal_ratio: Some(0.5),
            notes: vec![note.clone()],
        });
    }
    if !pg.is_empty() {
        out.push(Measurement {
            name: "6b. HTTP durable saves (merge patch + save, answered when durable)".into(),
            unit: "saves/s".into(),
            higher_is_better: true,
            ours: saves,
            baseline_name: "PostgreSQL single-row UPDATE of a jsonb document, synchronous_commit=on".into(),
            baseline: pg,
            goal_ratio: Some(5.0),
            notes: vec![note, "each of our saves is two requests (patch, then save)".into()],
        });
    }
    Ok(out)
}
