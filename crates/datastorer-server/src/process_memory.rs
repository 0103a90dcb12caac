//! How the server process asks the kernel and its allocator for memory:
//! transparent huge pages off, and mimalloc keeping freed memory a while
//! before handing it back. Called first thing by the `datastorer` binary
//! and by the bench (which hosts the engine in its own process), so both
//! run the engine the same way.
//!
//! Owns: process-wide memory settings, set once at start. Must not: choose
//! the allocator (each binary declares its `#[global_allocator]`); an
//! application embedding the engine keeps its own choices.

/// How long mimalloc keeps memory freed by the process before giving it
/// back to the OS, in milliseconds.
///
/// mimalloc's own default (1 s) returns a burst's memory long before the
/// next burst: an autosave tick every 30 s, a shutdown, a batch of
/// PostgreSQL writes. Each burst then faults its pages in afresh, and the
/// kernel zeroes every one: in a profile of a 10,000-key autosave burst on
/// PostgreSQL (`perf record -a`), `clear_page_erms` under mimalloc's fresh
/// pages was 22 % of all CPU time on the two cores the database shares
/// (record encodings, the statements' buffers, the batch vectors). A
/// minute covers two autosave intervals; resident memory then follows the
/// last minute's peak instead of the last second's. `MIMALLOC_PURGE_DELAY`
/// in the environment overrides it.
pub const PURGE_DELAY_MS: i64 = 60_000;

/// mimalloc's `mi_option_purge_delay` (its v3 option table, the version
/// `libmimalloc-sys` builds by default). The crate names only a few
/// options; a unit test pins this index by the option's documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies the process settings; the first thing a binary's `main` calls.
pub fn tune() {
    disable_transparent_huge_pages();
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer in mimalloc's option table; mimalloc
        // reads it each time it schedules a purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as _) }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn purge_delay() -> std::os::raw::c_long {
        // SAFETY: reads one integer of mimalloc's option table.
        unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
    }

    /// One test, because `tune` changes what the first half reads. The
    /// index names the purge delay: its default is 1,000 ms, which neither
    /// neighbouring option has, so a mimalloc upgrade that moves the table
    /// fails here instead of silently setting another option.
    #[test]
    fn tune_sets_mimallocs_purge_delay_unless_the_environment_chose_one() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            let before = purge_delay();
            tune();
            assert_eq!(purge_delay(), before, "the environment's choice was overridden");
            return;
        }
        assert_eq!(purge_delay(), 1000, "option {MI_OPTION_PURGE_DELAY} is not mimalloc's purge delay");
        for neighbour in [MI_OPTION_PURGE_DELAY - 1, MI_OPTION_PURGE_DELAY + 1] {
            // SAFETY: as in `purge_delay`.
            assert_ne!(unsafe { libmimalloc_sys::mi_option_get(neighbour) }, 1000);
        }
        tune();
        assert_eq!(purge_delay(), PURGE_DELAY_MS as std::os::raw::c_long);
    }
}
