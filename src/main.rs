//! The `datastorer` binary: a thin shell over `datastorer::server::cli`.

fn main() -> std::process::ExitCode {
    datastorer::server::cli::main()
}
