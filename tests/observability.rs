//! With `datastorer=debug`, every queue operation is visible with store,
//! key, operation, lane, attempt, outcome and duration.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use datastorer::storage::memory::{MemoryBackend, OpKind};
use datastorer::{ErrorKind, Priority};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap().lines().map(str::to_owned).collect()
    }
}

#[actix_rt::test]
async fn debug_logging_shows_every_queue_operation() {
    tokio::time::pause();
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_env_filter(EnvFilter::new("datastorer=debug"))
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let s = profiles(&ds).open("k1").await.unwrap();
    s.update(|p| p.coins = 1).await.unwrap();
    backend.fail_next(OpKind::Write, None, 1, ErrorKind::Transient);
    s.save(Priority::Emergency).await.unwrap();

    let lines = out.lines();
    let has = |parts: &[&str]| lines.iter().any(|l| parts.iter().all(|p| l.contains(p)));
    let dump = lines.join("\n");
    for fields in [
        &[
            "request done",
            "store=profiles",
            "key=k1",
            "op=\"get\"",
            "lane=\"normal\"",
            "attempt=1",
            "outcome=\"missing\"",
            "duration_us=",
        ][..],
        &["request done", "key=k1", "op=\"write\"", "lane=\"normal\"", "attempt=1", "outcome=\"applied\""][..],
        &["retrying", "key=k1", "op=\"write\"", "lane=\"emergency\"", "attempt=1", "outcome=\"retry\"", "delay_ms="][..],
        &["request done", "key=k1", "op=\"write\"", "lane=\"emergency\"", "attempt=2", "outcome=\"applied\""][..],
        &["write done", "store=profiles", "key=k1", "write=\"save\"", "outcome=\"durable\""][..],
        &["batch done", "size=1"][..],
    ] {
        assert!(has(fields), "no line with {fields:?} in:\n{dump}");
    }
}
