//! What `deploy/` ships: the systemd unit passes `systemd-analyze verify`
//! with no warning (a directive systemd cannot parse is only a warning,
//! so the test reads them), and its `ExecStart` command line starts the
//! server, which on the unit's `KillSignal` exits 0 within the unit's
//! `TimeoutStopSec`. Without `systemd-analyze` the check skips and says
//! so; `DATASTORER_REQUIRE_SYSTEMD=1` (CI) makes that a failure.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::BIN;

fn unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/datastorer.service");
    std::fs::read_to_string(path).expect("deploy/datastorer.service")
}

fn directive<'a>(unit: &'a str, name: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("the unit has no {name}="))
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    let required = std::env::var("DATASTORER_REQUIRE_SYSTEMD").is_ok_and(|v| v == "1");
    if Command::new("systemd-analyze").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        assert!(!required, "systemd-analyze is required here but does not run");
        println!("SKIPPED: systemd-analyze not found (Debian: apt-get install systemd)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The binary where the unit expects it is not installed here: verify
    // the unit as shipped but for the path of the binary just built.
    let unit = unit().replace("/usr/local/bin/datastorer", BIN);
    let file = tmp.path().join("datastorer.service");
    std::fs::write(&file, unit).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&file).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let warnings: Vec<&str> = said.lines().filter(|l| l.contains("datastorer.service")).collect();
    assert!(warnings.is_empty(), "systemd-analyze warns about the unit:\n{}", warnings.join("\n"));
}

#[test]
fn the_units_command_line_starts_the_server_and_its_stop_signal_stops_it_cleanly_in_time() {
    let unit = unit();
    let exec = directive(&unit, "ExecStart");
    let stop_within = Duration::from_secs(directive(&unit, "TimeoutStopSec").parse().unwrap());
    let signal = directive(&unit, "KillSignal").trim_start_matches("SIG").to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("datastorer.toml");
    std::fs::write(&config, "").unwrap();
    let data = tmp.path().join("data");
    let args: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(|a| match a {
            "/etc/datastorer/datastorer.toml" => config.display().to_string(),
            "/var/lib/datastorer/data" => data.display().to_string(),
            other => other.to_owned(),
        })
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{exec}");
    let mut child = Command::new(BIN)
        .args(&args)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("datastorer listening on "), "{line:?}");
    assert!(data.exists(), "the data directory the unit names is used");
    let started = Instant::now();
    assert!(Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap().success());
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit {status} on {signal}");
            break;
        }
        assert!(started.elapsed() < stop_within, "not stopped within TimeoutStopSec ({stop_within:?})");
        std::thread::sleep(Duration::from_millis(20));
    }
}
