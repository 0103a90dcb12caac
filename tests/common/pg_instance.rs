//! A private PostgreSQL server for tests that restart, reconfigure or stop
//! it: `initdb` into a temporary directory (as the `postgres` user, since
//! initdb refuses root), on a free loopback port, so the shared server on
//! 5432 is never disturbed. Skips like `common::pg` when PostgreSQL's
//! binaries are missing, unless `DATASTORER_REQUIRE_PG=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct PrivatePg {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
    _tmp: tempfile::TempDir,
}

fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> =
        std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
    versions.sort();
    versions.into_iter().rev().find(|b| b.join("initdb").exists())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(55432)
}

impl PrivatePg {
    /// A fresh server with `conf` appended to its postgresql.conf, or `None`
    /// (after printing why) when PostgreSQL's binaries are not installed.
    pub fn start(test: &str, conf: &str) -> Option<PrivatePg> {
        Self::start_with(test, |_| conf.to_owned())
    }

    /// Like `start`; `prepare` gets the temporary directory (owned by the
    /// server's user) to put files in, and answers the extra configuration.
    pub fn start_with(test: &str, prepare: impl FnOnce(&Path) -> String) -> Option<PrivatePg> {
        let required = std::env::var("DATASTORER_REQUIRE_PG").is_ok_and(|v| v == "1");
        let Some(bin) = find_bin() else {
            assert!(!required, "PostgreSQL is required here but initdb is not installed");
            println!("SKIPPED {test}: no initdb under /usr/lib/postgresql");
            return None;
        };
        let as_postgres = is_root();
        let tmp = tempfile::Builder::new().prefix("ds-pg-").tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        if as_postgres {
            let _ = Command::new("chown").args(["postgres:postgres"]).arg(tmp.path()).status();
        }
        let conf = prepare(tmp.path());
        if as_postgres {
            let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(tmp.path()).status();
        }
        let me = PrivatePg { dir, port: free_port(), bin, as_postgres, _tmp: tmp };
        let out = me.run(
            "initdb",
            &["-D", me.dir.to_str().unwrap(), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
        );
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let conf_path = me.dir.join("postgresql.conf");
        let extra = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = on\n{conf}\n",
            me.port,
            me.dir.display()
        );
        me.append_conf(&conf_path, &extra);
        me.pg_ctl(&["start", "-w", "-t", "60"]);
        Some(me)
    }

    fn append_conf(&self, path: &Path, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).expect("postgresql.conf");
        f.write_all(text.as_bytes()).unwrap();
    }

    fn run(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).output().expect("run a PostgreSQL tool")
    }

    /// `pg_ctl ARGS` on this server; panics when it fails.
    pub fn pg_ctl(&self, args: &[&str]) {
        let log = self.dir.with_extension("log");
        let mut all = vec!["-D", self.dir.to_str().unwrap(), "-l", log.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = self.run("pg_ctl", &all);
        assert!(
            out.status.success(),
            "pg_ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server (`fast` or `immediate`: a crash, recovered at start).
    pub fn stop(&self, mode: &str) {
        self.pg_ctl(&["stop", "-m", mode, "-w", "-t", "60"]);
    }

    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60"]);
    }

    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    pub fn sql(&self, statements: &str) -> Vec<Option<String>> {
        super::pg::sql(&self.url(), statements)
    }

    pub fn config(&self) -> datastorer::PostgresConfig {
        let mut c = datastorer::PostgresConfig::new(self.url());
        c.connect_timeout = Duration::from_secs(3);
        c
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", self.dir.to_str().unwrap(), "stop", "-m", "immediate", "-w"]);
    }
}

/// Whether this process runs as root (initdb must then run as `postgres`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}
