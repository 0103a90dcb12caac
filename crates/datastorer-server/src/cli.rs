//! The `datastorer` command line: `serve`, and the offline tools under
//! `tools/` (`inspect`, `export`, `import`, `check`, `copy-sled-to-postgres`).
//!
//! Owns: argument parsing and exit codes. Must not: do a tool's work here;
//! each tool is a module of `tools`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ServerConfig, Settings};
use crate::tools::{self, DataDir};

/// datastorer: per-key, session-locked JSON documents.
#[derive(Debug, Parser)]
#[command(name = "datastorer", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (defaults: 127.0.0.1:7070, sled in ./data, no authentication).
    Serve(Box<Settings>),
    /// Print one record, decoded (a stopped sled directory, or PostgreSQL online).
    Inspect {
        #[command(flatten)]
        dir: DataDir,
        /// Store name.
        #[arg(long)]
        store: String,
        /// Key.
        #[arg(long)]
        key: String,
    },
    /// A key's kept versions, newest first, as JSON lines; or one version
    /// (--version) or the one current at a time (--at-ms), with its document.
    History {
        #[command(flatten)]
        dir: DataDir,
        /// Store name.
        #[arg(long)]
        store: String,
        /// Key.
        #[arg(long)]
        key: String,
        /// Show this version (EPOCH.REVISION, as listed).
        #[arg(long, conflicts_with = "at_ms")]
        version: Option<String>,
        /// Show the version current at this time (ms since the Unix epoch).
        #[arg(long)]
        at_ms: Option<u64>,
    },
    /// Write records as JSON lines (one object per record).
    Export {
        #[command(flatten)]
        dir: DataDir,
        /// Only this store.
        #[arg(long)]
        store: Option<String>,
        /// Output file (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Read JSON lines (as written by export) into a data directory or database.
    Import {
        #[command(flatten)]
        dir: DataDir,
        /// Input file (default: standard input).
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// Replace records that already exist (their epoch still grows).
        #[arg(long)]
        overwrite: bool,
        /// Replace records even while a live lease holds them (the holder is
        /// fenced off and loses its unsaved changes).
        #[arg(long)]
        force: bool,
        /// The server's config file: each record's data_version is checked
        /// against its store's migrations (a record newer than them could
        /// never be opened).
        #[arg(long, env = "DATASTORER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Restore an online backup (`GET /v1/backup`) into an empty data
    /// directory or database: checked whole first; every epoch is raised,
    /// so no holder from before the restore can ever write.
    RestoreBackup {
        #[command(flatten)]
        dir: DataDir,
        /// The backup file.
        #[arg(long, short)]
        input: PathBuf,
    },
    /// Restore a whole store to a point in time (or, with --dry-run, list
    /// what would change), running the engine here: on a stopped sled
    /// directory, or on PostgreSQL while servers run (their holders hand
    /// the keys over). Run again after an interruption, it resumes.
    RestoreStore {
        #[command(flatten)]
        dir: DataDir,
        /// The store.
        #[arg(long)]
        store: String,
        /// The point in time, in ms since the Unix epoch.
        #[arg(long)]
        at_ms: u64,
        /// Only list what would change.
        #[arg(long)]
        dry_run: bool,
        /// The server's config file, for the store's migrations.
        #[arg(long, env = "DATASTORER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Bring every record of a store to its newest data version with the
    /// migrations the config file declares (online on PostgreSQL; keys a
    /// session holds are left to it). Run again, it does what is left.
    MigrateStore {
        #[command(flatten)]
        dir: DataDir,
        /// The store.
        #[arg(long)]
        store: String,
        /// The server's config file (the store's migrations).
        #[arg(long, env = "DATASTORER_CONFIG")]
        config: PathBuf,
    },
    /// Copy a Roblox data store into a running datastorer server through
    /// Open Cloud: every key with its latest value, user ids and
    /// attributes (as metadata). Keys a session holds are left as they are
    /// and listed. Interrupted, run it again: it resumes from --state.
    ImportRoblox(Box<ImportRobloxArgs>),
    /// Scan every record and report those that do not decode.
    Check {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Copy every record of a (stopped) sled directory into PostgreSQL byte
    /// for byte: epochs, revisions, leases and corrupt values as they are.
    CopySledToPostgres {
        /// The sled data directory to copy from.
        #[arg(long)]
        data_dir: PathBuf,
        /// The PostgreSQL to copy into.
        #[arg(long, env = "DATASTORER_DATABASE_URL")]
        database_url: String,
        /// Its schema (default datastorer).
        #[arg(long, env = "DATASTORER_POSTGRES_SCHEMA")]
        postgres_schema: Option<String>,
        /// Replace records that already exist in PostgreSQL with different bytes.
        #[arg(long)]
        overwrite: bool,
    },
}

/// `datastorer import-roblox`'s flags.
#[derive(clap::Args, Debug)]
struct ImportRobloxArgs {
    /// The universe (experience) id.
    #[arg(long)]
    universe: u64,
    /// The data store's name.
    #[arg(long)]
    datastore: String,
    /// Its scope (default global).
    #[arg(long, conflicts_with = "all_scopes")]
    scope: Option<String>,
    /// Copy every scope (each into its own store).
    #[arg(long)]
    all_scopes: bool,
    /// Open Cloud's API key (needs universe-datastores.objects:read and :list).
    #[arg(long, env = "ROBLOX_API_KEY", hide_env_values = true)]
    roblox_api_key: String,
    /// Open Cloud's base URL.
    #[arg(long, default_value = "https://apis.roblox.com")]
    source: String,
    /// Source requests a minute (Roblox allows 300 a minute per class; 0: no pacing).
    #[arg(long, default_value_t = 300)]
    source_rate: u32,
    /// The datastorer server to copy into.
    #[arg(long, env = "DATASTORER_URL", default_value = "http://127.0.0.1:7070")]
    target: String,
    /// Its API key (a write key).
    #[arg(long, env = "DATASTORER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The store to copy into (default: the one the DataStoreService facade
    /// and the Open Cloud API map the data store and scope to).
    #[arg(long)]
    into: Option<String>,
    /// The facade's StorePrefix, for the default store.
    #[arg(long, default_value = "")]
    store_prefix: String,
    /// The values are ProfileStore profiles: copy their Data as the
    /// document and keep their MetaData in the metadata (needs --into).
    #[arg(long)]
    profilestore: bool,
    /// The state file, for resuming (default import-roblox-UNIVERSE-DATASTORE.json).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Stop after this many keys (run again to go on): an import in slices.
    #[arg(long)]
    limit: Option<u64>,
}

/// Entry point of the `datastorer` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// The same, with the arguments given (the first is the program name): a
/// benchmark that runs the server in a child process of its own calls this.
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => match from_the_environment(&e, &args) {
            Some(message) => {
                eprintln!("datastorer: {message}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Inspect { dir, store, key } => dir.open(false).and_then(|b| tools::inspect(&b, &store, &key)),
        Command::History { dir, store, key, version, at_ms } => {
            let which = match (version, at_ms) {
                (Some(v), _) => tools::Which::Version(v),
                (None, Some(t)) => tools::Which::At(t),
                (None, None) => tools::Which::All,
            };
            dir.open(false).and_then(|b| tools::history(&b, &store, &key, which))
        }
        Command::Export { dir, store, output } => {
            dir.open(false).and_then(|b| tools::export(&b, store.as_deref(), output.as_deref()))
        }
        Command::Import { dir, input, overwrite, force, config } => {
            tools::import(&dir, input.as_deref(), overwrite, force, config.as_deref())
        }
        Command::ImportRoblox(a) => {
            let state = a.state.clone().unwrap_or_else(|| {
                let safe: String =
                    a.datastore.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
                PathBuf::from(format!("import-roblox-{}-{safe}.json", a.universe))
            });
            tools::import_roblox(&tools::RobloxImport {
                source: a.source,
                source_key: a.roblox_api_key,
                universe: a.universe,
                datastore: a.datastore,
                scope: if a.all_scopes { None } else { Some(a.scope.unwrap_or_else(|| "global".into())) },
                target: a.target,
                target_key: a.api_key,
                into: a.into,
                store_prefix: a.store_prefix,
                profilestore: a.profilestore,
                state,
                source_rate: a.source_rate,
                limit: a.limit,
            })
        }
        Command::Check { dir } => dir.open(false).and_then(|b| tools::check(&b)),
        Command::RestoreStore { dir, store, at_ms, dry_run, config } => {
            dir.open(false).and_then(|b| tools::restore_store(b, &store, at_ms, dry_run, config.as_deref()))
        }
        Command::MigrateStore { dir, store, config } => {
            dir.open(false).and_then(|b| tools::migrate_store(b, &store, &config))
        }
        Command::RestoreBackup { dir, input } => dir.open(true).and_then(|b| tools::restore_backup(&b, &input)),
        Command::CopySledToPostgres { data_dir, database_url, postgres_schema, overwrite } => {
            tools::copy_sled_to_postgres(
                &data_dir,
                &tools::postgres_config(&database_url, postgres_schema.as_deref()),
                overwrite,
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("datastorer: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A bad value that came from an environment variable rather than a flag,
/// said with the variable's name (clap names only the flag, which the
/// user never typed): `DATASTORER_WORKERS=abc: invalid value 'abc' for
/// '--workers <WORKERS>': invalid digit found in string`.
fn from_the_environment(e: &clap::Error, args: &[std::ffi::OsString]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else { return None };
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let flag = format!("--{long}");
    let typed = args.iter().filter_map(|a| a.to_str()).any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if typed {
        return None;
    }
    fn find_env(cmd: &clap::Command, long: &str) -> Option<String> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|v| v.to_string_lossy().into_owned())
            .or_else(|| cmd.get_subcommands().find_map(|c| find_env(c, long)))
    }
    let var = find_env(&<Cli as clap::CommandFactory>::command(), long)?;
    let value = std::env::var_os(&var)?;
    let said = e.to_string();
    let first = said.lines().next().unwrap_or_default().trim_start_matches("error: ");
    Some(format!("{var}={}: {first}", value.to_string_lossy()))
}

fn serve(args: Box<Settings>) -> Result<(), String> {
    let colour = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(crate::log_writer::LogWriter::start(!colour))
        .with_ansi(colour)
        .init();
    let result = serve_logged(args);
    crate::log_writer::LogWriter::flush_all();
    result
}

fn serve_logged(args: Box<Settings>) -> Result<(), String> {
    let config = ServerConfig::load(&args).map_err(|e| e.to_string())?;
    let system = actix_web::rt::System::new();
    let listener = crate::bind(&config)?;
    let report = system.block_on(crate::run(config, listener, crate::app::wait_for_signal()))?;
    if report.is_clean() {
        Ok(())
    } else {
        Err(format!("shutdown incomplete: {report}"))
    }
}
