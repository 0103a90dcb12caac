//! The `datastorer` binary: a thin shell over `datastorer_server::cli`.

// mimalloc: the engine's save path makes many small, short-lived
// allocations; glibc's malloc spent ~27 % of a shutdown profile on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
    datastorer_server::cli::main()
}

/// Opts this process out of transparent huge pages (unless
/// `DATASTORER_ALLOW_THP=1`). With THP, mimalloc's arenas fault in 2 MiB
/// pages that the kernel zeroes whole: in a shutdown profile a third of the
/// main thread's time was `clear_page_erms`, and loading 1M keys took 11.0 s
/// instead of 8.2 s, for no saving in resident memory. Redis and MongoDB
/// give the same advice for the same reason.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var("DATASTORER_ALLOW_THP").as_deref() != Ok("1") {
        // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and only
        // sets a flag on this process; failure (old kernel) changes nothing.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}
