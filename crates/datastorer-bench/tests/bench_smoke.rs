//! The benchmark suite runs and writes its JSON and SVG (tiny sizes; the
//! figures themselves are not checked — speed is measured, not asserted).

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_quick_writes_json_and_svg_with_every_figure_beside_a_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_datastorer-bench"))
        .args(["--quick", "--repeat", "1", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&std::fs::read(tmp.path().join("results.json")).unwrap()).unwrap();
    let results = json["results"].as_array().unwrap();
    assert!(results.len() >= 9, "{results:?}");
    for r in results {
        assert!(r["ours_median"].as_f64().is_some_and(|v| v > 0.0), "{r}");
        assert!(r["baseline_median"].as_f64().is_some_and(|v| v >= 0.0), "{r}");
        assert!(!r["baseline_name"].as_str().unwrap().is_empty());
    }
    // 6b carries what compares builds where the rates drift: the server's
    // CPU per request (from /proc) and the queue's group sizes (/metrics).
    let saves = results.iter().find(|r| r["name"].as_str().unwrap().starts_with("6b.")).expect("figure 6b");
    let notes: Vec<&str> = saves["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    if cfg!(target_os = "linux") {
        assert!(notes.iter().any(|n| n.starts_with("the server's CPU time per request")), "{notes:?}");
    }
    assert!(notes.iter().any(|n| n.starts_with("group commit under this load")), "{notes:?}");
    let svg = std::fs::read_to_string(tmp.path().join("results.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<rect").count() > results.len());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ratio") && text.contains("baseline"));
    assert!(
        !tmp.path().read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("scratch")),
        "scratch removed"
    );
}

/// The PostgreSQL burst figures (P2a, P2b) run whole, every side from
/// settled tables (`VACUUM` and a checkpoint before each): tiny sizes.
/// Skips, saying so, without a reachable PostgreSQL (`DATASTORER_PG_URL`,
/// default the local one), unless `DATASTORER_REQUIRE_PG=1` (CI).
#[test]
fn bench_quick_pg_burst_runs_every_side_beside_its_baselines() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_datastorer-bench"))
        .args(["--quick", "--repeat", "1", "--only", "pg-burst", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() && text.contains("PostgreSQL unreachable") {
        let required = std::env::var("DATASTORER_REQUIRE_PG").is_ok_and(|v| v == "1");
        assert!(!required, "PostgreSQL is required here (DATASTORER_REQUIRE_PG=1) but unreachable: {text}");
        println!("SKIPPED bench_quick_pg_burst: PostgreSQL unreachable; set DATASTORER_PG_URL to run it");
        return;
    }
    assert!(out.status.success(), "{text}");
    let json: Value = serde_json::from_slice(&std::fs::read(tmp.path().join("results.json")).unwrap()).unwrap();
    let results = json["results"].as_array().unwrap();
    for figure in ["P2a.", "P2b."] {
        let sides: Vec<&Value> = results.iter().filter(|r| r["name"].as_str().unwrap().starts_with(figure)).collect();
        assert_eq!(sides.len(), 2, "{figure} against (b) and against (b+v): {results:?}");
        for r in sides {
            assert!(r["ours_median"].as_f64().is_some_and(|v| v > 0.0), "{r}");
            assert!(r["baseline_median"].as_f64().is_some_and(|v| v > 0.0), "{r}");
        }
    }
}
