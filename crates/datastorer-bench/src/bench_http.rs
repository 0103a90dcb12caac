//! Figure 6 of `datastorer bench`: the server over HTTP against Redis and
//! PostgreSQL on 127.0.0.1, driven with the same concurrency in the same
//! run. A baseline that cannot be reached is reported as skipped; the other
//! comparisons still run.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::bench::{median, BenchConfig, Measurement};
use super::bench_pg::drive;

/// Connections per side.
pub const CONNECTIONS: usize = 64;

/// Our server as a child process on a free port; killed on drop.
pub(super) struct Child {
    process: std::process::Child,
    pub(super) base: String,
}

impl Child {
    /// CPU seconds the server has used so far (user and system, every
    /// thread), from `/proc`; `None` where there is no `/proc`.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.id())).ok()?;
        // Fields after the command's closing parenthesis (the command may
        // hold spaces): state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        // USER_HZ, fixed at 100 for every Linux architecture's user ABI.
        Some(ticks / 100.0)
    }
}

/// A rate measured with the server's CPU time spent meanwhile: answers
/// (requests/s, server CPU µs per request).
async fn with_server_cpu(
    server: &Child,
    duration: Duration,
    run: impl std::future::Future<Output = f64>,
) -> (f64, Option<f64>) {
    let before = server.cpu_seconds();
    let rate = run.await;
    let per_request = match (before, server.cpu_seconds()) {
        // Requests counted as rate × duration; no tick elapsed (a run far
        // shorter than the clock's 10 ms grain) gives no figure.
        (Some(b), Some(a)) if rate > 0.0 && a > b => Some((a - b) * 1e6 / (rate * duration.as_secs_f64())),
        _ => None,
    };
    (rate, per_request)
}

/// The queue's totals from the server's `/metrics`: (batches, flushes, writes).
async fn queue_totals(http: &reqwest::Client, base: &str) -> Option<[f64; 3]> {
    let text = http.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    let value =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok());
    Some([
        value("datastorer_queue_batches_total")?,
        value("datastorer_storage_flushes_total")?,
        value("datastorer_storage_writes_total")?,
    ])
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn start_server(dir: &Path) -> Result<Child, String> {
    let mut args: Vec<std::ffi::OsString> = vec!["--data-dir".into(), dir.into()];
    if !super::bench::versions_on() {
        let config = dir.with_extension("toml");
        std::fs::write(&config, "[stores.http]\nversions = false\n").map_err(|e| e.to_string())?;
        args.extend(["--config".into(), config.into()]);
    }
    spawn_server(&args)
}

/// `datastorer serve` on a free loopback port with `args`.
pub(super) fn spawn_server(args: &[std::ffi::OsString]) -> Result<Child, String> {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = std::process::Command::new(exe);
    command.args(["serve", "--listen", "127.0.0.1:0", "--client-lease-ttl-secs", "3600"]).args(args);
    let mut process = command
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

pub(super) fn payload(i: usize) -> String {
    json!({ "n": i, "pad": "x".repeat(1000) }).to_string()
}

/// Opens a session on `key` of store `http`; answers its lease token.
pub(super) async fn open_session(http: &reqwest::Client, base: &str, key: &str) -> Result<String, String> {
    open_session_in(http, base, "http", key).await
}

async fn open_session_in(http: &reqwest::Client, base: &str, store: &str, key: &str) -> Result<String, String> {
    let resp = http
        .post(format!("{base}/v1/stores/{store}/keys/{key}/session"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_slice(&resp.bytes().await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    Ok(v["lease_token"].as_str().ok_or("no lease token")?.to_owned())
}

async fn open_sessions(http: &reqwest::Client, base: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    for i in 0..CONNECTIONS {
        tokens.push(open_session(http, base, &format!("h{i}")).await?);
    }
    Ok(tokens)
}

/// A minimal HTTP/1.1 keep-alive client on one connection: prebuilt request
/// bytes out, status and a `Content-Length` body in. The same shape as the
/// Redis and PostgreSQL drivers, so that what is compared is the servers,
/// not client libraries (reqwest took half of the machine's CPU here).
pub(super) struct RawHttp {
    stream: BufReader<TcpStream>,
    host: String,
    line: String,
    body: Vec<u8>,
}

impl RawHttp {
    pub(super) async fn connect(base: &str) -> Option<RawHttp> {
        let host = base.strip_prefix("http://")?.trim_end_matches('/').to_owned();
        let stream = TcpStream::connect(&host).await.ok()?;
        stream.set_nodelay(true).ok()?;
        Some(RawHttp { stream: BufReader::new(stream), host, line: String::new(), body: Vec::new() })
    }

    /// Sends one request and reads the whole response; answers its status.
    pub(super) async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        content_type: &str,
        body: &[u8],
    ) -> Option<u16> {
        use tokio::io::AsyncReadExt;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nLease-Token: {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let mut out = Vec::with_capacity(head.len() + body.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(body);
        self.stream.get_mut().write_all(&out).await.ok()?;
        self.line.clear();
        self.stream.read_line(&mut self.line).await.ok()?;
        let status: u16 = self.line.split_whitespace().nth(1)?.parse().ok()?;
        let mut length = 0usize;
        loop {
            self.line.clear();
            if self.stream.read_line(&mut self.line).await.ok()? == 0 {
                return None;
            }
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().ok()?;
                }
            }
        }
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await.ok()?;
        Some(status)
    }
}

/// What one counted operation of [`ours`] is.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `PATCH …/data`.
    Update,
    /// `PATCH …/data?save=normal`: one request, answered when durable.
    UpdateSaved,
    /// `PATCH …/data`, then `POST …/save`.
    UpdateThenSave,
}

async fn ours(base: &str, tokens: &[String], duration: Duration, mode: Mode) -> f64 {
    ours_at(base, "/v1/stores/http/keys/h", tokens, duration, mode).await
}

/// [`ours`] on the keys `{keys}{i}` (`keys`: the path up to the key's index).
async fn ours_at(base: &str, keys: &str, tokens: &[String], duration: Duration, mode: Mode) -> f64 {
    let (base, keys) = (base.to_owned(), keys.to_owned());
    let tokens = Arc::new(tokens.to_vec());
    drive(CONNECTIONS, duration, move |i, stop, count| {
        let (base, tokens, keys) = (base.clone(), tokens.clone(), keys.clone());
        async move {
            let Some(mut http) = RawHttp::connect(&base).await else { return };
            let path = format!("{keys}{i}/session");
            let data =
                if mode == Mode::UpdateSaved { format!("{path}/data?save=normal") } else { format!("{path}/data") };
            let save = format!("{path}/save");
            let token = tokens[i].clone();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let patch = payload(n);
                let patched =
                    http.request("PATCH", &data, &token, "application/merge-patch+json", patch.as_bytes()).await;
                if !matches!(patched, Some(200..=299)) {
                    return;
                }
                if mode == Mode::UpdateThenSave {
                    let saved = http.request("POST", &save, &token, "application/json", b"").await;
                    if !matches!(saved, Some(200..=299)) {
                        return;
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await
}

/// `GET /healthz` on [`CONNECTIONS`] connections: what the HTTP server and
/// the middleware cost with no handler work (figure 6e, the floor under 6a).
async fn health_rate(base: &str, duration: Duration) -> f64 {
    let base = base.to_owned();
    drive(CONNECTIONS, duration, move |_, stop, count| {
        let base = base.clone();
        async move {
            let Some(mut http) = RawHttp::connect(&base).await else { return };
            while !stop.load(Ordering::SeqCst) {
                if http.request("GET", "/healthz", "-", "text/plain", b"").await != Some(200) {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await
}

/// Figure 6d's shape: connections that each hold `BATCH_KEYS` sessions (a
/// game server's players) and autosave them all in one batch request.
const BATCH_CONNECTIONS: usize = 4;
const BATCH_KEYS: usize = 100;

async fn open_batch_sessions(http: &reqwest::Client, base: &str) -> Result<Vec<Vec<String>>, String> {
    let mut all = Vec::new();
    for c in 0..BATCH_CONNECTIONS {
        let mut tokens = Vec::new();
        for k in 0..BATCH_KEYS {
            tokens.push(open_session(http, base, &format!("b{c}-{k}")).await?);
        }
        all.push(tokens);
    }
    Ok(all)
}

/// Durable saves per second through `POST /v1/batch`, each request a merge
/// patch with `save` of every one of a connection's keys; answers saves/s
/// and requests/s.
async fn batched(base: &str, tokens: &[Vec<String>], duration: Duration) -> (f64, f64) {
    let base = base.to_owned();
    let tokens = Arc::new(tokens.to_vec());
    let saves = drive(BATCH_CONNECTIONS, duration, move |c, stop, count| {
        let (base, tokens) = (base.clone(), tokens.clone());
        async move {
            let Some(mut http) = RawHttp::connect(&base).await else { return };
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let ops: Vec<serde_json::Value> = tokens[c]
                    .iter()
                    .enumerate()
                    .map(|(k, t)| {
                        json!({"op": "patch", "store": "http", "key": format!("b{c}-{k}"), "lease_token": t,
                            "data": { "n": n, "pad": "x".repeat(1000) }, "save": "normal"})
                    })
                    .collect();
                let body = json!({ "ops": ops }).to_string();
                let status = http.request("POST", "/v1/batch", "", "application/json", body.as_bytes()).await;
                let all_saved = http.body.windows(10).any(|w| w == b"\"failed\":0");
                if status != Some(200) || !all_saved {
                    return;
                }
                count.fetch_add(BATCH_KEYS as u64, Ordering::SeqCst);
            }
        }
    })
    .await;
    (saves, saves / BATCH_KEYS as f64)
}

async fn redis_set(duration: Duration) -> Result<f64, String> {
    TcpStream::connect("127.0.0.1:6379").await.map_err(|e| format!("Redis unreachable on 127.0.0.1:6379: {e}"))?;
    Ok(drive(CONNECTIONS, duration, |i, stop, count| async move {
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
    let rate = drive(CONNECTIONS, duration, |i, stop, count| async move {
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

/// One durable save of key `h0` through the session `token`; answers when
/// the request was sent.
async fn save_once(http: &reqwest::Client, base: &str, token: &str, n: usize) -> Result<std::time::Instant, String> {
    let sent = std::time::Instant::now();
    let r = http
        .patch(format!("{base}/v1/stores/http/keys/h0/session/data?save=normal"))
        .header("content-type", "application/merge-patch+json")
        .header("Lease-Token", token)
        .header("Prefer", "return=minimal")
        .body(format!("{{\"feed\": {n}}}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("save answered {}", r.status()));
    }
    Ok(sent)
}

/// Figure 6c, one repetition: the median time from sending a durable save
/// to a waiting long poll's answer holding its event, and to the SSE
/// event on an open stream (the baseline, which a Roblox server cannot use).
async fn feed_latency(base: &str, token: &str, samples: usize) -> Result<(f64, f64), String> {
    let http = reqwest::Client::new();
    let newest = |v: &serde_json::Value| v["next"].as_u64().unwrap_or(0);
    let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).map_err(|e| e.to_string());
    let start = http
        .get(format!("{base}/v1/changes/poll?wait_ms=0&store=http&limit=1000"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    let start = json(&start)?;
    let mut after = newest(&start);
    let (mut poll, mut sse) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let waiting = tokio::spawn(
            http.get(format!("{base}/v1/changes/poll?after={after}&wait_ms=20000&store=http&limit=1000")).send(),
        );
        // Let the poll reach the server and wait there (not a measurement).
        tokio::time::sleep(Duration::from_millis(5)).await;
        let sent = save_once(&http, base, token, i).await?;
        let answer = waiting.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        let page = json(&answer.bytes().await.map_err(|e| e.to_string())?)?;
        poll.push(sent.elapsed().as_secs_f64() * 1e3);
        after = newest(&page);
    }
    let mut feed = http.get(format!("{base}/v1/changes?store=http")).send().await.map_err(|e| e.to_string())?;
    let _connected = feed.chunk().await.map_err(|e| e.to_string())?;
    for i in 0..samples {
        let sent = save_once(&http, base, token, samples + i).await?;
        loop {
            let chunk = feed.chunk().await.map_err(|e| e.to_string())?.ok_or("the feed ended")?;
            if String::from_utf8_lossy(&chunk).contains("event: saved") {
                break;
            }
        }
        sse.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(&poll), median(&sse)))
}

/// Figure 6: update and durable-save request rates beside Redis and PostgreSQL.
pub async fn bench_http(cfg: &BenchConfig, scratch: &Path) -> Result<Vec<Measurement>, String> {
    let duration = if cfg.updates < 10_000 { Duration::from_millis(500) } else { Duration::from_secs(4) };
    let server = start_server(&scratch.join("http"))?;
    let http = reqwest::Client::new();
    let tokens = open_sessions(&http, &server.base).await?;
    let batch_tokens = open_batch_sessions(&http, &server.base).await?;
    let (mut batch_saves, mut batch_requests) = (Vec::new(), Vec::new());
    let (mut up, mut redis, mut saves, mut pg) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut two_requests = Vec::new();
    let mut health = Vec::new();
    let (mut update_cpu_us, mut save_cpu_us) = (Vec::new(), Vec::new());
    let (mut writes_per_batch, mut writes_per_flush) = (Vec::new(), Vec::new());
    let mut skipped = Vec::new();
    let (mut poll_ms, mut sse_ms) = (Vec::new(), Vec::new());
    let samples = if cfg.updates < 10_000 { 5 } else { 50 };
    for _ in 0..cfg.repeat {
        let (p, e) = feed_latency(&server.base, &tokens[0], samples).await?;
        poll_ms.push(p);
        sse_ms.push(e);
        let (rate, cpu) = with_server_cpu(&server, duration, ours(&server.base, &tokens, duration, Mode::Update)).await;
        up.push(rate);
        update_cpu_us.extend(cpu);
        health.push(health_rate(&server.base, duration).await);
        let totals_before = queue_totals(&http, &server.base).await;
        let (rate, cpu) =
            with_server_cpu(&server, duration, ours(&server.base, &tokens, duration, Mode::UpdateSaved)).await;
        saves.push(rate);
        save_cpu_us.extend(cpu);
        if let (Some(b), Some(a)) = (totals_before, queue_totals(&http, &server.base).await) {
            let writes = a[2] - b[2];
            if a[0] > b[0] && a[1] > b[1] {
                writes_per_batch.push(writes / (a[0] - b[0]));
                writes_per_flush.push(writes / (a[1] - b[1]));
            }
        }
        two_requests.push(ours(&server.base, &tokens, duration, Mode::UpdateThenSave).await);
        let (saves_per_s, requests_per_s) = batched(&server.base, &batch_tokens, duration).await;
        batch_saves.push(saves_per_s);
        batch_requests.push(requests_per_s);
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
    let mut out = vec![Measurement {
        name: "6c. change feed delivery: durable save sent → event at a waiting long poll".into(),
        unit: "ms".into(),
        higher_is_better: false,
        ours: poll_ms,
        baseline_name: "the same event on an open Server-Sent Events stream".into(),
        baseline: sse_ms,
        goal_ratio: None,
        notes: vec![format!(
            "median of {samples} saves per repetition, each a durable group commit on sled; one client"
        )],
    }];
    let note = format!("{CONNECTIONS} keep-alive connections, client and server on the same 2-core machine");
    out.push(Measurement {
        name: "6d. HTTP durable saves through POST /v1/batch (100 patch+save operations per request)".into(),
        unit: "saves/s".into(),
        higher_is_better: true,
        ours: batch_saves,
        baseline_name: format!("one save per request (6b: PATCH ?save=normal on {CONNECTIONS} connections)"),
        baseline: saves.clone(),
        goal_ratio: None,
        notes: vec![
            format!(
                "{BATCH_CONNECTIONS} connections, each a game server autosaving its {BATCH_KEYS} players (1 KiB each) per request"
            ),
            format!(
                "saves per request: {BATCH_KEYS} against 1; batch requests/s (median): {:.1}",
                median(&batch_requests)
            ),
        ],
    });
    if !redis.is_empty() {
        out.push(Measurement {
            name: "6e. the HTTP floor: GET /healthz on the same server (actix-web and the middleware, no handler work)"
                .into(),
            unit: "requests/s".into(),
            higher_is_better: true,
            ours: health.clone(),
            baseline_name: "Redis SET of 6a's bytes, same concurrency".into(),
            baseline: redis.clone(),
            goal_ratio: None,
            notes: vec![
                note.clone(),
                "6a's ratio cannot pass this one: an update does all a health check does, and more".into(),
            ],
        });
        out.push(Measurement {
            name: "6a. HTTP update requests (JSON merge patch, 1 KiB)".into(),
            unit: "requests/s".into(),
            higher_is_better: true,
            ours: up.clone(),
            baseline_name: "Redis SET of the same bytes, same concurrency".into(),
            baseline: redis,
            goal_ratio: Some(0.7),
            notes: vec![note.clone()],
        });
    }
    if !up.is_empty() {
        // Round 2 measures a durable save against an update of the same
        // run (what durability costs over HTTP); PostgreSQL's own UPDATE
        // stays beside it as a note.
        let mut notes = vec![
            note,
            format!("as two requests (patch, then POST save): {:.0} saves/s (median)", median(&two_requests)),
        ];
        if !update_cpu_us.is_empty() && update_cpu_us.len() == save_cpu_us.len() {
            // The client shares the machine's cores, so this is what bounds
            // 6b/6a where the CPU is the limit: their inverse ratio.
            let per_run: Vec<f64> = update_cpu_us.iter().zip(&save_cpu_us).map(|(u, s)| s / u).collect();
            notes.push(format!(
                "the server's CPU time per request (/proc, every thread): update {:.1} µs, durable save {:.1} µs (medians); \
                 a save costs {:.2}x an update (median of per-run ratios)",
                median(&update_cpu_us),
                median(&save_cpu_us),
                median(&per_run)
            ));
        }
        if !writes_per_flush.is_empty() {
            notes.push(format!(
                "group commit under this load: {:.1} writes per batch applied, {:.1} per flush (medians; /metrics)",
                median(&writes_per_batch),
                median(&writes_per_flush)
            ));
        }
        if !pg.is_empty() {
            notes.push(format!(
                "PostgreSQL single-row UPDATE of a jsonb document, synchronous_commit=on, same concurrency: {:.0}/s; \
                 ours is {:.2}x of that",
                median(&pg),
                median(&saves) / median(&pg)
            ));
        }
        out.push(Measurement {
            name: "6b. HTTP durable saves (merge patch with ?save=normal, answered when durable)".into(),
            unit: "saves/s".into(),
            higher_is_better: true,
            ours: saves.clone(),
            baseline_name: "6a: HTTP updates (the same patch, not waiting for the disk), same run".into(),
            baseline: up.clone(),
            goal_ratio: Some(0.5),
            notes,
        });
    }
    Ok(out)
}

/// The fleet figure: two servers on one PostgreSQL schema sharing a fleet
/// secret, the sessions held by the first; the same session updates sent
/// to the holder (direct) and to the other server (forwarded: it reads the
/// key's lease, then makes the hop), alternating, throughput on
/// [`CONNECTIONS`] connections and one connection's latency.
pub async fn bench_fleet(cfg: &BenchConfig, pg_url: &str, schema: &str) -> Result<Vec<Measurement>, String> {
    let duration = if cfg.updates < 10_000 { Duration::from_millis(500) } else { Duration::from_secs(4) };
    let server = |owner: &str| {
        let args: Vec<std::ffi::OsString> = [
            "--database-url",
            pg_url,
            "--postgres-schema",
            schema,
            "--owner-id",
            owner,
            "--fleet-secret",
            "bench-fleet-secret-0123456789-0123456789",
        ]
        .iter()
        .map(Into::into)
        .collect();
        spawn_server(&args)
    };
    let holder = server("bench-a")?;
    let other = server("bench-b")?;
    let http = reqwest::Client::new();
    let tokens = open_sessions(&http, &holder.base).await?;
    let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
    let (mut direct_ms, mut forwarded_ms) = (Vec::new(), Vec::new());
    let samples = if cfg.updates < 10_000 { 50 } else { 500 };
    for _ in 0..cfg.repeat {
        direct.push(ours(&holder.base, &tokens, duration, Mode::Update).await);
        forwarded.push(ours(&other.base, &tokens, duration, Mode::Update).await);
        direct_ms.push(one_connection_ms(&holder.base, &tokens[0], samples).await?);
        forwarded_ms.push(one_connection_ms(&other.base, &tokens[0], samples).await?);
    }
    let note = "both servers, PostgreSQL and the client on the same 2-core machine".to_owned();
    Ok(vec![
        Measurement {
            name: "F1. HTTP session updates (1 KiB merge patch) sent to another server of the fleet, forwarded".into(),
            unit: "requests/s".into(),
            higher_is_better: true,
            ours: forwarded,
            baseline_name: format!("the same sent to the holder ({CONNECTIONS} connections)"),
            baseline: direct,
            goal_ratio: None,
            notes: vec![note.clone()],
        },
        Measurement {
            name: "F2. one forwarded session update, p50 on one connection".into(),
            unit: "ms".into(),
            higher_is_better: false,
            ours: forwarded_ms,
            baseline_name: "the same sent to the holder".into(),
            baseline: direct_ms,
            goal_ratio: None,
            notes: vec![format!("median of {samples} sequential requests per repetition; {note}")],
        },
    ])
}

/// F3: durable HTTP saves (`PATCH ?save=normal`) on 1, 2 and 3 servers of
/// one PostgreSQL database at once, each with [`CONNECTIONS`] sessions on
/// keys of its own, beside the hand-written batch (b) from as many
/// connections (`UPDATE … FROM unnest(…)`, 22 rows a statement, as P3) on
/// as many rows of other stores (`batched(n)` writes stores `b{n}-{j}`).
pub async fn bench_fleet_scaling(
    cfg: &BenchConfig,
    pg_url: &str,
    schema: &str,
    batched: impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<f64, String>>>>,
) -> Result<Vec<Measurement>, String> {
    let duration = if cfg.updates < 10_000 { Duration::from_millis(500) } else { Duration::from_secs(4) };
    let mut out = Vec::new();
    let http = reqwest::Client::new();
    for n in [1usize, 2, 3] {
        let mut servers = Vec::new();
        for j in 0..n {
            let owner = format!("scale-{n}-{j}");
            let args: Vec<std::ffi::OsString> =
                ["--database-url", pg_url, "--postgres-schema", schema, "--owner-id", &owner]
                    .iter()
                    .map(Into::into)
                    .collect();
            let server = spawn_server(&args)?;
            let mut tokens = Vec::new();
            for i in 0..CONNECTIONS {
                tokens.push(open_session_in(&http, &server.base, &format!("f{n}-{j}"), &format!("k{i}")).await?);
                // The baseline's rows: the same records, written once and
                // released, so that (b) never writes behind a session.
                let (store, key) = (format!("b{n}-{j}"), format!("k{i}"));
                let token = open_session_in(&http, &server.base, &store, &key).await?;
                http.post(format!("{}/v1/stores/{store}/keys/{key}/session/release", server.base))
                    .header("Lease-Token", token)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
            }
            servers.push((server, tokens));
        }
        let (mut ours_v, mut base_v) = (Vec::new(), Vec::new());
        for _ in 0..cfg.repeat {
            let runs: Vec<_> = servers
                .iter()
                .enumerate()
                .map(|(j, (server, tokens))| {
                    let keys = format!("/v1/stores/f{n}-{j}/keys/k");
                    let (base, tokens) = (server.base.clone(), tokens.clone());
                    actix::spawn(async move { ours_at(&base, &keys, &tokens, duration, Mode::UpdateSaved).await })
                })
                .collect();
            let mut total = 0.0;
            for r in runs {
                total += r.await.map_err(|e| e.to_string())?;
            }
            ours_v.push(total);
            base_v.push(batched(n).await?);
        }
        drop(servers);
        out.push(Measurement {
            name: format!(
                "F3. HTTP durable saves, {n} server{} on one database, {CONNECTIONS} sessions each",
                if n == 1 { "" } else { "s" }
            ),
            unit: "saves/s".into(),
            higher_is_better: true,
            ours: ours_v,
            baseline_name: format!(
                "(b) UPDATE … FROM unnest(…), 22 rows a statement, from {n} connection{}",
                if n == 1 { "" } else { "s" }
            ),
            baseline: base_v,
            goal_ratio: None,
            notes: vec!["servers, their load, PostgreSQL and the baseline on the same 2-core machine".into()],
        });
    }
    Ok(out)
}

/// The median time of `samples` sequential session updates on one connection.
async fn one_connection_ms(base: &str, token: &str, samples: usize) -> Result<f64, String> {
    let mut http = RawHttp::connect(base).await.ok_or("cannot connect")?;
    let path = "/v1/stores/http/keys/h0/session/data";
    let mut times = Vec::with_capacity(samples);
    for n in 0..samples {
        let patch = payload(n);
        let started = std::time::Instant::now();
        let status = http.request("PATCH", path, token, "application/merge-patch+json", patch.as_bytes()).await;
        if !matches!(status, Some(200..=299)) {
            return Err(format!("a session update answered {status:?}"));
        }
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&times))
}
