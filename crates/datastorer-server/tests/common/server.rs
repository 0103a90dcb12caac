//! Starting the real `datastorer serve` process for tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_datastorer");

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub dir: PathBuf,
    stderr: PathBuf,
}

impl Server {
    pub fn start(dir: &Path, args: &[&str]) -> Server {
        Self::start_with_env(dir, args, &[])
    }

    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let data = dir.join("data");
        let data = data.to_str().expect("UTF-8 temp path");
        let mut all = vec!["--data-dir", data];
        all.extend_from_slice(args);
        Self::spawn(dir, &all, env)
    }

    /// A server on PostgreSQL (no data directory); `dir` holds its log.
    pub fn start_pg(dir: &Path, url: &str, schema: &str, args: &[&str]) -> Server {
        let mut all = vec!["--database-url", url, "--postgres-schema", schema];
        all.extend_from_slice(args);
        Self::spawn(dir, &all, &[])
    }

    fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let stderr = dir.with_extension("stderr.log");
        let mut child = Command::new(BIN)
            .envs(env.iter().copied())
            .env_remove("DATASTORER_DATA_DIR")
            .env_remove("DATASTORER_DATABASE_URL")
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn datastorer serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let base = line
            .trim()
            .strip_prefix("datastorer listening on ")
            .unwrap_or_else(|| {
                panic!("no listening line; stderr: {}", std::fs::read_to_string(&stderr).unwrap_or_default())
            })
            .to_owned();
        Server { child: Some(child), base, dir: dir.to_path_buf(), stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Server {
    /// SIGKILL: no shutdown at all.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The path of `key` in `store`.
pub fn key_url(store: &str, key: &str) -> String {
    format!("/v1/stores/{store}/keys/{key}")
}

/// One request; answers the status and the JSON body (or the text).
pub async fn call(
    c: &reqwest::Client,
    s: &Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (reqwest::StatusCode, serde_json::Value) {
    let mut req = c.request(method, s.url(path));
    if let Some(t) = token {
        req = req.header("Lease-Token", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// Opens a client session on `store`/`key`.
pub async fn open(
    c: &reqwest::Client,
    s: &Server,
    store: &str,
    key: &str,
    body: serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    call(c, s, reqwest::Method::POST, &format!("{}/session", key_url(store, key)), None, Some(body)).await
}

/// The lease token of an open session's answer.
pub fn token_of(v: &serde_json::Value) -> String {
    v["lease_token"].as_str().unwrap_or_else(|| panic!("no lease token in {v}")).to_owned()
}

/// Reads an SSE response until its text holds every one of `events`
/// (`event: NAME` lines), within 20 s; answers the text.
pub async fn read_feed_until(feed: &mut reqwest::Response, events: &[&str]) -> String {
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !events.iter().all(|e| text.contains(&format!("event: {e}"))) {
        assert!(Instant::now() < deadline, "feed so far: {text}");
        let chunk = tokio::time::timeout(Duration::from_secs(20), feed.chunk()).await.unwrap().unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

/// The data of the first `event` in an SSE text, as JSON.
pub fn event_data(text: &str, event: &str) -> serde_json::Value {
    let head = format!("event: {event}");
    text.lines()
        .skip_while(|l| *l != head)
        .find_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .unwrap_or_else(|| panic!("no {event} event in {text}"))
}
