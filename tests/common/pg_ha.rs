//! A private PostgreSQL cluster that fails over by itself, for tests that
//! kill its primary: pg_auto_failover's monitor and two nodes (a primary
//! and a synchronous standby) on free loopback ports, each under its own
//! `pg_autoctl run` in a process group of its own, so a test can SIGKILL a
//! node whole (keeper and PostgreSQL) as if its machine had died. Nothing
//! touches the shared server on 5432; everything lives in a temporary
//! directory (pg_autoctl's own config and state too, through XDG paths).
//!
//! Skips (prints `SKIPPED` and answers `None`) where `pg_autoctl` or the
//! monitor's extension is not installed, unless
//! `DATASTORER_REQUIRE_PG_FAILOVER=1` (set by `.ci/run`, which installs
//! Debian's `postgresql-NN-auto-failover`).
//!
//! The monitor's health checks are shortened (see [`MONITOR_SETTINGS`]) so
//! a failover takes seconds, not the minute the defaults take; the defaults
//! exist to tell a dead primary from a partitioned one, which a killed
//! process on one machine never is.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The monitor's settings for a quick failover in a test (the defaults, in
/// order: 5000, 2000, 5000, 2, 20000, 30000 ms or tries).
pub const MONITOR_SETTINGS: &[(&str, &str)] = &[
    ("pgautofailover.health_check_period", "1000"),
    ("pgautofailover.health_check_retry_delay", "500"),
    ("pgautofailover.health_check_timeout", "1000"),
    ("pgautofailover.health_check_max_retries", "1"),
    ("pgautofailover.node_considered_unhealthy_timeout", "2000"),
    ("pgautofailover.primary_demote_timeout", "2000"),
];

pub struct PgHa {
    pub ports: [u16; 2],
    monitor_port: u16,
    bin: PathBuf,
    autoctl: PathBuf,
    as_postgres: bool,
    /// The monitor's and the nodes' `pg_autoctl run`, by name.
    keepers: Vec<(String, Child)>,
    tmp: tempfile::TempDir,
}

fn required() -> bool {
    std::env::var("DATASTORER_REQUIRE_PG_FAILOVER").is_ok_and(|v| v == "1")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// PostgreSQL's binaries and pg_autoctl, when both and the monitor's
/// extension are installed.
fn find() -> Result<(PathBuf, PathBuf), String> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "no PostgreSQL under /usr/lib/postgresql".to_string())?
        .flatten()
        .map(|e| e.path())
        .collect();
    versions.sort();
    let dir = versions.into_iter().rev().find(|d| d.join("bin/initdb").exists()).ok_or("no initdb")?;
    let major = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    let extension = PathBuf::from(format!("/usr/share/postgresql/{major}/extension/pgautofailover.control"));
    if !extension.exists() {
        return Err(format!(
            "pg_auto_failover is not installed (no {}): apt-get install postgresql-{major}-auto-failover",
            extension.display()
        ));
    }
    let autoctl = [dir.join("bin/pg_autoctl"), PathBuf::from("/usr/bin/pg_autoctl")]
        .into_iter()
        .find(|p| p.exists())
        .ok_or("no pg_autoctl")?;
    Ok((dir.join("bin"), autoctl))
}

impl PgHa {
    /// A monitor, a primary and a synchronous standby, all running and in
    /// their steady states; or `None` (after printing why) where
    /// pg_auto_failover is not installed.
    pub fn start(test: &str) -> Option<PgHa> {
        let (bin, autoctl) = match find() {
            Ok(found) => found,
            Err(why) => {
                assert!(!required(), "pg_auto_failover is required here (DATASTORER_REQUIRE_PG_FAILOVER=1): {why}");
                println!("SKIPPED {test}: {why}");
                return None;
            }
        };
        let as_postgres = super::pg_instance::is_root();
        let tmp = tempfile::Builder::new().prefix("ds-pg-ha-").tempdir().expect("tempdir");
        for d in ["config", "data", "run"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        if as_postgres {
            let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(tmp.path()).status();
        }
        let mut ha = PgHa {
            ports: [free_port(), free_port()],
            monitor_port: free_port(),
            bin,
            autoctl,
            as_postgres,
            keepers: Vec::new(),
            tmp,
        };
        let monitor = ha.pgdata("monitor");
        let port = ha.monitor_port.to_string();
        ha.autoctl_ok(&[
            "create",
            "monitor",
            "--pgdata",
            &monitor,
            "--pgport",
            &port,
            "--hostname",
            "127.0.0.1",
            "--auth",
            "trust",
            "--no-ssl",
        ]);
        ha.run_keeper("monitor");
        ha.wait_for(Duration::from_secs(60), "the monitor to accept connections", |ha| {
            super::pg::with_client(&ha.monitor_url(), |c| {
                Box::pin(async move { c.simple_query("SELECT 1").await.is_ok() })
            })
            .unwrap_or(false)
        });
        for (name, value) in MONITOR_SETTINGS {
            ha.monitor_sql(&format!("ALTER SYSTEM SET {name} = {value}"));
        }
        ha.monitor_sql("SELECT pg_reload_conf()::text");
        let monitor_uri = format!("postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover", ha.monitor_port);
        for (i, name) in ["node1", "node2"].into_iter().enumerate() {
            let (pgdata, port) = (ha.pgdata(name), ha.ports[i].to_string());
            ha.autoctl_ok(&[
                "create",
                "postgres",
                "--pgdata",
                &pgdata,
                "--pgport",
                &port,
                "--hostname",
                "127.0.0.1",
                "--auth",
                "trust",
                "--no-ssl",
                "--dbname",
                "test",
                "--monitor",
                &monitor_uri,
                "--name",
                name,
            ]);
            ha.run_keeper(name);
            // Alone, the first node is `single`; with the second caught up,
            // `primary` and `secondary`.
            let want: &[(&str, &str)] =
                if i == 0 { &[("node1", "single")] } else { &[("node1", "primary"), ("node2", "secondary")] };
            ha.wait_for(Duration::from_secs(120), &format!("{want:?}"), |ha| {
                want.iter().all(|(n, w)| ha.state(n).is_some_and(|(reported, goal)| reported == *w && goal == *w))
            });
        }
        // With its standby caught up the primary commits synchronously.
        ha.wait_for(Duration::from_secs(60), "the primary to replicate synchronously", |ha| {
            ha.node_sql(0, "SHOW synchronous_standby_names").first().cloned().flatten().is_some_and(|s| !s.is_empty())
        });
        Some(ha)
    }

    fn pgdata(&self, name: &str) -> String {
        self.tmp.path().join(name).to_str().expect("UTF-8 temp path").to_owned()
    }

    fn command(&self, args: &[&str]) -> Command {
        let xdg = |d: &str| self.tmp.path().join(d);
        let envs = [
            ("XDG_CONFIG_HOME", xdg("config")),
            ("XDG_DATA_HOME", xdg("data")),
            ("XDG_RUNTIME_DIR", xdg("run")),
            ("PG_CONFIG", self.bin.join("pg_config")),
        ];
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default());
        // runuser keeps no environment of ours: `env` sets it on the far side.
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "env"]);
            c
        } else {
            Command::new("env")
        };
        c.arg(format!("PATH={path}"));
        for (k, v) in envs {
            c.arg(format!("{k}={}", v.display()));
        }
        c.arg(&self.autoctl).args(args);
        c
    }

    fn autoctl_ok(&self, args: &[&str]) {
        let out = self.command(args).output().expect("run pg_autoctl");
        assert!(
            out.status.success(),
            "pg_autoctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_autoctl run` for `name`, in a process group of its own.
    fn run_keeper(&mut self, name: &str) {
        let log = std::fs::File::create(self.tmp.path().join(format!("{name}.log"))).unwrap();
        let child = self
            .command(&["run", "--pgdata", &self.pgdata(name)])
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn pg_autoctl run");
        self.keepers.push((name.to_owned(), child));
    }

    fn wait_for(&self, within: Duration, what: &str, mut ok: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !ok(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; the monitor says {:?}", self.states());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn monitor_url(&self) -> String {
        format!("host=127.0.0.1 port={} user=autoctl_node dbname=pg_auto_failover", self.monitor_port)
    }

    fn monitor_sql(&self, statements: &str) -> Vec<Option<String>> {
        super::pg::sql(
            &format!("host=127.0.0.1 port={} user=postgres dbname=pg_auto_failover", self.monitor_port),
            statements,
        )
    }

    /// SQL on node `i` (0 or 1) directly, whatever its role.
    pub fn node_sql(&self, i: usize, statements: &str) -> Vec<Option<String>> {
        super::pg::sql(&format!("host=127.0.0.1 port={} user=postgres dbname=test", self.ports[i]), statements)
    }

    /// Every node's (name, reported state, goal state), as the monitor has them.
    pub fn states(&self) -> Vec<(String, String, String)> {
        let url = self.monitor_url();
        super::pg::with_client(&url, |c| {
            Box::pin(async move {
                c.query(
                    "SELECT nodename, reportedstate::text, goalstate::text FROM pgautofailover.node ORDER BY nodeid",
                    &[],
                )
                .await
                .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
                .unwrap_or_default()
            })
        })
        .unwrap_or_default()
    }

    fn state(&self, name: &str) -> Option<(String, String)> {
        self.states().into_iter().find(|(n, _, _)| n == name).map(|(_, r, g)| (r, g))
    }

    /// The multi-host URL an application uses: both nodes, the writable one chosen.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/test?target_session_attrs=read-write",
            self.ports[0], self.ports[1]
        )
    }

    pub fn config(&self) -> datastorer::PostgresConfig {
        let mut c = datastorer::PostgresConfig::new(self.url());
        c.connect_timeout = Duration::from_secs(2);
        c
    }

    /// SIGKILL to `name`'s keeper and its PostgreSQL together: the machine is gone.
    pub fn kill(&mut self, name: &str) {
        let at = self.keepers.iter().position(|(n, _)| n == name).expect("a running node of this cluster");
        let (_, mut child) = self.keepers.remove(at);
        let group = child.id().to_string();
        let status = Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status().expect("kill");
        assert!(status.success(), "kill -9 the process group of {name}");
        let _ = child.wait();
    }

    /// Waits (up to `within`) until node `name` takes writes as the primary
    /// (`wait_primary` while its old primary is gone, or `primary`).
    pub fn wait_promoted(&self, name: &str, within: Duration) {
        self.wait_for(within, &format!("{name} to be promoted"), |ha| {
            ha.state(name).is_some_and(|(r, _)| r == "wait_primary" || r == "primary")
        });
    }

    /// What pg_autoctl wrote for `name`, for failure messages.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.tmp.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
}

impl Drop for PgHa {
    fn drop(&mut self) {
        for (_, child) in &mut self.keepers {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
        }
    }
}
