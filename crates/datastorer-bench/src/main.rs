//! `datastorer-bench`: the end-to-end benchmarks, each figure beside its
//! baseline measured in the same run, medians and spread, JSON and SVG.
//! Not part of the production binary; build it with `--release`:
//! `cargo run -p datastorer-bench --release -- [--only TAG]`.
//!
//! Figure 6 runs the real server in a child process of this binary (the
//! hidden `serve` subcommand is the server's own command line), so the
//! bench needs nothing else built.

// The same allocator as the `datastorer` binary (and its settings: main).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod bench_console;
mod bench_history;
mod bench_http;
mod bench_instructions;
mod bench_pg;
mod bench_scale;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// datastorer's benchmarks.
#[derive(Debug, Parser)]
#[command(name = "datastorer-bench", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    child: Option<Child>,
    /// Small sizes, to check the suite runs (figures are not meaningful).
    #[arg(long)]
    quick: bool,
    /// Repetitions of each measurement (default 5, quick 2).
    #[arg(long)]
    repeat: Option<usize>,
    /// Stores keep no versions (to compare a build's cost of history:
    /// alternate runs with and without this flag).
    #[arg(long)]
    no_versions: bool,
    /// Only benchmarks whose tag contains this: update, throughput, latency, shutdown, scale, http, history, console, cold; instructions (callgrind, only when named); pg (PostgreSQL, only when named; pg-saves, pg-notify, pg-burst, pg-latency, pg-handoff, pg-processes, pg-fleet for one part).
    #[arg(long)]
    only: Option<String>,
    /// Where results.json and results.svg go (scratch data too, removed after).
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

/// The bench's own child processes.
// The variants name the subcommands the parent spawns (`bench-pg-child`, …).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
enum Child {
    /// Internal: one process of the PostgreSQL scaling benchmark.
    #[command(hide = true)]
    BenchPgChild {
        #[arg(long)]
        schema: String,
        #[arg(long)]
        store: String,
        #[arg(long)]
        sessions: usize,
        #[arg(long)]
        millis: u64,
        #[arg(long)]
        doc_bytes: usize,
    },
    /// Internal: one operation counted under callgrind (`--only instructions`).
    #[command(hide = true)]
    BenchOpsChild {
        #[arg(long, value_enum)]
        op: bench_instructions::Op,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Internal: one side of the memory benchmark, in a fresh process.
    #[command(hide = true)]
    BenchScaleChild {
        #[arg(long, value_enum)]
        side: bench_scale::ScaleSide,
        #[arg(long, value_enum)]
        doc: bench_scale::ScaleDoc,
        #[arg(long)]
        keys: usize,
    },
}

fn main() -> ExitCode {
    // The server binary's memory settings, for the engine this process
    // hosts and for the server it runs as a child (figure 6).
    datastorer_server::process_memory::tune();
    // The server under test for figure 6: the server's own command line.
    if std::env::args_os().nth(1).is_some_and(|a| a == "serve") {
        return datastorer_server::cli::main_from(std::env::args_os());
    }
    let cli = Cli::parse();
    if cli.no_versions {
        // Read by this process and by the child processes it starts.
        std::env::set_var(bench::VERSIONS_OFF_VAR, "1");
    }
    let result = match cli.child {
        Some(Child::BenchPgChild { schema, store, sessions, millis, doc_bytes }) => actix::System::new()
            .block_on(bench_pg::child(&schema, &store, sessions, std::time::Duration::from_millis(millis), doc_bytes)),
        Some(Child::BenchOpsChild { op, dir }) => actix::System::new().block_on(bench_instructions::ops_child(op, dir)),
        Some(Child::BenchScaleChild { side, doc, keys }) => {
            actix::System::new().block_on(bench_scale::scale_child(side, doc, keys))
        }
        None => run(cli.quick, cli.repeat, cli.only, cli.out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("datastorer-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(quick: bool, repeat: Option<usize>, only: Option<String>, out: PathBuf) -> Result<(), String> {
    let mut cfg = if quick { bench::BenchConfig::quick() } else { bench::BenchConfig::full() };
    if let Some(r) = repeat {
        if r == 0 {
            return Err("--repeat must be at least 1".into());
        }
        cfg.repeat = r;
    }
    if cfg!(debug_assertions) && !quick {
        eprintln!(
            "warning: this is a debug build; run `cargo run -p datastorer-bench --release` for meaningful figures"
        );
    }
    actix::System::new().block_on(bench::run(cfg, out, only)).map(|_| ())
}
