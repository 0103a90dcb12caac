//! The server under test: in the test process by default (`run` on its
//! own actix System on a thread, port 0, a channel as its shutdown), or as
//! the real `datastorer serve` process where the test is about processes
//! (signals, kill -9, THP, what the binary writes to its log).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use datastorer::ShutdownReport;
use datastorer_server::config::{ServerConfig, Settings};

pub const BIN: &str = env!("CARGO_BIN_EXE_datastorer");

pub struct Server {
    run: Running,
    pub base: String,
    pub dir: PathBuf,
    stderr: PathBuf,
}

enum Running {
    Process(Option<Child>),
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<Result<ShutdownReport, String>>>,
    },
}

/// How a server ended: a process's exit status, or what `run` answered.
#[derive(Debug)]
pub enum Exit {
    Process(ExitStatus),
    InProcess(Result<ShutdownReport, String>),
}

impl Exit {
    /// Exit status 0, or a clean shutdown report (what makes the binary exit 0).
    pub fn success(&self) -> bool {
        match self {
            Exit::Process(s) => s.success(),
            Exit::InProcess(r) => r.as_ref().is_ok_and(ShutdownReport::is_clean),
        }
    }

    /// The shutdown report of an in-process server.
    pub fn report(&self) -> &ShutdownReport {
        match self {
            Exit::InProcess(Ok(r)) => r,
            other => panic!("no shutdown report in {other:?}"),
        }
    }
}

/// `serve`'s flags, parsed the way the binary parses them.
#[derive(Parser)]
struct ServeArgs {
    #[command(flatten)]
    settings: Settings,
}

impl Server {
    /// A sled-backed server in the test process, with `args` as `serve`'s
    /// flags (and `--data-dir DIR/data`).
    pub fn start(dir: &Path, args: &[&str]) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let data = dir.join("data");
        let mut argv = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().expect("UTF-8 temp path")];
        argv.extend_from_slice(args);
        let mut settings = ServeArgs::try_parse_from(argv).unwrap_or_else(|e| panic!("test flags: {e}")).settings;
        settings.database_url = None;
        let config = ServerConfig::load(&settings).unwrap_or_else(|e| panic!("test config: {e}"));
        let listener = datastorer_server::bind(&config).expect("bind port 0");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(datastorer_server::run(config, listener, async move {
                let _ = stopped.await;
                "the test"
            }))
        });
        Server {
            run: Running::InProcess { stop: Some(stop), thread: Some(thread) },
            base,
            dir: dir.to_path_buf(),
            stderr: dir.with_extension("stderr.log"),
        }
    }

    /// The real `datastorer serve` process, sled-backed.
    pub fn process(dir: &Path, args: &[&str]) -> Server {
        Self::process_with_env(dir, args, &[])
    }

    pub fn process_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let data = dir.join("data");
        let data = data.to_str().expect("UTF-8 temp path");
        let mut all = vec!["--data-dir", data];
        all.extend_from_slice(args);
        Self::spawn(dir, &all, env)
    }

    /// A server process on PostgreSQL (no data directory); `dir` holds its log.
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
        Server { run: Running::Process(Some(child)), base, dir: dir.to_path_buf(), stderr }
    }

    fn child(&self) -> &Child {
        match &self.run {
            Running::Process(Some(c)) => c,
            Running::Process(None) => panic!("the server process has ended"),
            Running::InProcess { .. } => panic!("an in-process server has no pid; start it with Server::process"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Shuts the server down (SIGTERM to a process, the shutdown channel in
    /// process) and waits, bounded, for how it ended.
    pub fn stop(&mut self) -> Exit {
        match &mut self.run {
            Running::Process(child) => {
                let mut child = child.take().expect("running");
                let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
                assert!(status.success());
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Some(s) = child.try_wait().unwrap() {
                        return Exit::Process(s);
                    }
                    assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Running::InProcess { stop, thread } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                let thread = thread.take().expect("running");
                Exit::InProcess(thread.join().unwrap_or_else(|_| Err("the server thread panicked".into())))
            }
        }
    }

    /// What the server process wrote to stderr (its log).
    pub fn log(&self) -> String {
        assert!(
            matches!(self.run, Running::Process(_)),
            "an in-process server writes no log of its own; start it with Server::process"
        );
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGKILL: no shutdown at all.
    pub fn kill(&mut self) {
        match &mut self.run {
            Running::Process(child) => {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            Running::InProcess { .. } => panic!("an in-process server cannot be killed; start it with Server::process"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.run {
            Running::Process(_) => self.kill(),
            // Stopped and joined, so the data directory is free when the
            // test's temporary directory goes.
            Running::InProcess { thread: Some(_), .. } => {
                let _ = self.stop();
            }
            Running::InProcess { thread: None, .. } => {}
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
