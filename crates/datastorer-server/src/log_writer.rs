//! The server's log output: one buffer in front of stderr. Info lines
//! (the access log above all) collect in it and go out in large writes, at
//! least every 200 ms; a warning or error is written at once, with
//! everything before it. Writing every access line with its own syscall
//! cost a quarter of the update throughput (bench figure 6a); a writer
//! thread fed by a channel cost more (its wake-ups on two cores).
//!
//! Owns: the buffer and its flush timer. Must not: hold a line longer than
//! the flush period, or lose one on a normal exit (`flush_all`).

use std::io::{BufWriter, Stderr, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Duration;

static BUFFER: Mutex<Option<BufWriter<Stderr>>> = Mutex::new(None);
static TIMER: Once = Once::new();
/// Lines go out without colour (stderr is not a terminal): the access log
/// may then write its lines itself, in the same shape (`access_log`).
static PLAIN: AtomicBool = AtomicBool::new(false);

/// How long an info line may wait in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

fn buffer() -> MutexGuard<'static, Option<BufWriter<Stderr>>> {
    BUFFER.lock().unwrap_or_else(|p| p.into_inner())
}

/// A `MakeWriter` for tracing-subscriber over the shared buffer.
#[derive(Clone, Copy, Default)]
pub(crate) struct LogWriter;

impl LogWriter {
    /// Sets up the buffer and starts its flush timer; `plain`: no colour.
    pub(crate) fn start(plain: bool) -> LogWriter {
        PLAIN.store(plain, Ordering::Relaxed);
        *buffer() = Some(BufWriter::with_capacity(64 * 1024, std::io::stderr()));
        TIMER.call_once(|| {
            let _ = std::thread::Builder::new().name("datastorer-log-flush".into()).spawn(|| loop {
                std::thread::sleep(FLUSH_EVERY);
                LogWriter::flush_all();
            });
        });
        LogWriter
    }

    /// Whether lines go out plain, through the buffer (set by `start`).
    pub(crate) fn is_plain() -> bool {
        PLAIN.load(Ordering::Relaxed)
    }

    /// Appends whole lines, formatted by the caller, to the buffer (an
    /// info line's way out: flushed with the others).
    pub(crate) fn write_lines(bytes: &[u8]) {
        match buffer().as_mut() {
            Some(b) => {
                let _ = b.write_all(bytes);
            }
            None => {
                let _ = std::io::stderr().write_all(bytes);
            }
        }
    }

    /// Writes out every line logged so far (call before exit).
    pub(crate) fn flush_all() {
        if let Some(b) = buffer().as_mut() {
            let _ = b.flush();
        }
    }
}

/// One event's writer: appends to the buffer, and flushes on drop when the
/// event is a warning or an error.
pub(crate) struct Line {
    urgent: bool,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match buffer().as_mut() {
            Some(b) => b.write(buf),
            None => std::io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        LogWriter::flush_all();
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.urgent {
            LogWriter::flush_all();
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line { urgent: true }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        Line { urgent: *meta.level() <= tracing::Level::WARN }
    }
}
