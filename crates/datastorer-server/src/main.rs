//! The `datastorer` binary: a thin shell over `datastorer_server::cli`.

// mimalloc: the engine's save path makes many small, short-lived
// allocations; glibc's malloc spent ~27 % of a shutdown profile on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    datastorer_server::process_memory::tune();
    datastorer_server::cli::main()
}
