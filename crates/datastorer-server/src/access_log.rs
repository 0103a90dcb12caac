//! The access log's line, one per request. Where the log goes out plain
//! (stderr is not a terminal: a server's usual case) the line is written
//! here, into a buffer this thread reuses, in exactly the shape
//! tracing's formatter gives it (`2026-12-07T06:48:33.094177Z  INFO
//! datastorer::access: request method=PUT route=… status=200
//! duration_ms=2.027 api_key="anonymous" client="-" code="-"`), without
//! its per-event machinery (field visitors, a timestamp formatted from
//! scratch, a `String` per line): that machinery cost 13 % of the HTTP
//! update throughput. A terminal gets tracing's coloured line; either way
//! the log's filter (`RUST_LOG`) decides whether the line is written.
//!
//! Owns: the line's format and the per-thread buffer and timestamp cache.
//! Must not: decide what is logged (the middleware does) or keep a line
//! (the log writer's buffer does).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::log_writer::LogWriter;

/// One request as the access log reports it.
pub(crate) struct Access<'a> {
    pub(crate) method: &'a str,
    pub(crate) route: &'a str,
    pub(crate) status: u16,
    pub(crate) took: Duration,
    pub(crate) api_key: &'a str,
    pub(crate) client: &'a str,
    pub(crate) code: &'a str,
}

struct ThreadState {
    line: String,
    /// The second the cached prefix is of, and the prefix
    /// (`2026-12-07T06:48:33.`).
    second: u64,
    prefix: String,
}

thread_local! {
    static STATE: RefCell<ThreadState> =
        const { RefCell::new(ThreadState { line: String::new(), second: u64::MAX, prefix: String::new() }) };
}

/// Logs `a`, if the log's filter lets `datastorer::access` info through.
pub(crate) fn log(a: &Access<'_>) {
    if !tracing::enabled!(target: "datastorer::access", tracing::Level::INFO) {
        return;
    }
    if !LogWriter::is_plain() {
        tracing::info!(target: "datastorer::access", method = a.method, route = a.route, status = a.status,
            duration_ms = %format_args!("{:.3}", a.took.as_secs_f64() * 1000.0), api_key = a.api_key,
            client = a.client, code = a.code, "request");
        return;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let s = &mut *s;
        format_line(&mut s.line, &mut s.second, &mut s.prefix, now, a);
        LogWriter::write_lines(s.line.as_bytes());
    });
}

/// The line for `a` at `now` (since the Unix epoch), ending in a newline,
/// into `line`; `second` and `prefix` cache the timestamp's first part.
fn format_line(line: &mut String, second: &mut u64, prefix: &mut String, now: Duration, a: &Access<'_>) {
    let secs = now.as_secs();
    if secs != *second {
        *second = secs;
        prefix.clear();
        let (y, m, d) = civil_from_days((secs / 86_400) as i64);
        let t = secs % 86_400;
        let _ = write!(prefix, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.", t / 3600, t % 3600 / 60, t % 60);
    }
    line.clear();
    line.push_str(prefix);
    let _ = write!(
        line,
        "{:06}Z  INFO datastorer::access: request method={} route={} status={} duration_ms=",
        now.subsec_micros(),
        a.method,
        a.route,
        a.status
    );
    let micros = a.took.as_micros();
    let _ = write!(line, "{}.{:03}", micros / 1000, micros % 1000);
    for (name, value) in [(" api_key=", a.api_key), (" client=", a.client), (" code=", a.code)] {
        line.push_str(name);
        quoted(line, value);
    }
    line.push('\n');
}

/// `value` as tracing writes a string field: in quotes, escaped as Rust's
/// `Debug` escapes it (only when it has to be: names and codes rarely do).
fn quoted(line: &mut String, value: &str) {
    if value.chars().all(|c| c != '"' && c != '\\' && !c.is_control()) {
        line.push('"');
        line.push_str(value);
        line.push('"');
    } else {
        let _ = write!(line, "{value:?}");
    }
}

/// The civil date (year, month, day) of a count of days since 1970-01-01
/// (the proleptic Gregorian calendar; Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_at(now: Duration, a: &Access<'_>) -> String {
        let (mut line, mut second, mut prefix) = (String::new(), u64::MAX, String::new());
        format_line(&mut line, &mut second, &mut prefix, now, a);
        line
    }

    #[test]
    fn the_line_is_the_one_tracing_writes() {
        let a = Access {
            method: "PUT",
            route: "/v1/stores/{store}/keys/{key}",
            status: 200,
            took: Duration::from_micros(2027),
            api_key: "anonymous",
            client: "-",
            code: "-",
        };
        // 2026-12-07T06:48:33.094177Z, as a server logged it.
        let now = Duration::new(1_796_626_113, 94_177_000);
        assert_eq!(
            line_at(now, &a),
            "2026-12-07T06:48:33.094177Z  INFO datastorer::access: request method=PUT \
             route=/v1/stores/{store}/keys/{key} status=200 duration_ms=2.027 api_key=\"anonymous\" \
             client=\"-\" code=\"-\"\n"
        );
        let odd = Access { client: "a\"b\\c\n", took: Duration::from_nanos(999), ..a };
        assert!(line_at(now, &odd).contains(r#"duration_ms=0.000 api_key="anonymous" client="a\"b\\c\n" code="-""#));
    }

    #[test]
    fn dates_match_the_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_794), (2026, 12, 7));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // Every day of four centuries, against a day-by-day count.
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for z in 0..146_097 {
            assert_eq!(civil_from_days(z), (y, m, d), "day {z}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m as usize - 1];
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn a_new_second_renews_the_cached_prefix() {
        let a = Access {
            method: "GET",
            route: "/healthz",
            status: 200,
            took: Duration::ZERO,
            api_key: "-",
            client: "-",
            code: "-",
        };
        let (mut line, mut second, mut prefix) = (String::new(), u64::MAX, String::new());
        format_line(&mut line, &mut second, &mut prefix, Duration::new(1_796_626_113, 5_000), &a);
        assert!(line.starts_with("2026-12-07T06:48:33.000005Z"), "{line}");
        format_line(&mut line, &mut second, &mut prefix, Duration::new(1_796_626_114, 0), &a);
        assert!(line.starts_with("2026-12-07T06:48:34.000000Z"), "{line}");
    }
}
