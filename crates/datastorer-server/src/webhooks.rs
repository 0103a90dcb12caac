//! Webhooks: alerts to Discord, Slack or any JSON endpoint when saves fail,
//! when failures pile up (critical state: `CRITICAL_COUNT` within
//! `CRITICAL_WINDOW`, as ProfileStore's), when a lease is lost, and when
//! a shutdown leaves keys unsaved. Each endpoint has its own task and queue:
//! alerts are coalesced (one message per `COALESCE` with counts), sent at
//! most once per `COALESCE`, and retried with capped exponential backoff,
//! so a slow or dead webhook never slows a save — nothing on the save path
//! waits for it; a full queue drops the alert and counts it.
//!
//! Secrets: a webhook URL is a credential (Discord's carries its token), so
//! logs name only its scheme and host.
//!
//! Must not: touch the engine beyond reading its failure counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use datastorer::{Datastorer, FailedSave, SaveFailureReason};

/// Alerts of one kind within this long become one message.
pub(crate) const COALESCE: Duration = Duration::from_secs(2);
/// Failures within `CRITICAL_WINDOW` that make the critical state.
pub(crate) const CRITICAL_COUNT: u64 = 5;
/// See `CRITICAL_COUNT`.
pub(crate) const CRITICAL_WINDOW: Duration = Duration::from_secs(120);
const QUEUE: usize = 256;
const MAX_TRIES: u32 = 6;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AlertKind {
    /// Saves failed (any reason but a lost lease).
    SaveFailed,
    /// `CRITICAL_COUNT` failures within `CRITICAL_WINDOW`.
    Critical,
    /// A write was fenced off: another process holds the key now.
    LeaseLost,
    /// The shutdown left keys unsaved.
    ShutdownUnsaved,
    /// The critical state ended: fewer than `CRITICAL_COUNT` failures
    /// within `CRITICAL_WINDOW`.
    Recovered,
    /// Sent on request, to check the configuration.
    Test,
}

impl AlertKind {
    fn as_str(self) -> &'static str {
        match self {
            AlertKind::SaveFailed => "save_failed",
            AlertKind::Critical => "critical",
            AlertKind::LeaseLost => "lease_lost",
            AlertKind::ShutdownUnsaved => "shutdown_unsaved",
            AlertKind::Recovered => "recovered",
            AlertKind::Test => "test",
        }
    }
}

/// The payload shape an endpoint takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Format {
    /// `{"source", "server", "alerts": [{kind, count, message}]}`.
    #[default]
    Json,
    /// `{"content": "…"}` (Discord webhooks).
    Discord,
    /// `{"text": "…"}` (Slack incoming webhooks).
    Slack,
}

/// One `[[webhooks]]` table of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookDecl {
    /// `http://` or `https://` URL (a secret: never logged whole).
    pub(crate) url: String,
    /// Payload shape (default json).
    #[serde(default)]
    pub(crate) format: Format,
    /// The alerts it wants (default: all).
    pub(crate) events: Option<Vec<AlertKind>>,
    /// Signs each delivery (a secret: never logged): `X-Datastorer-Timestamp`
    /// (Unix seconds) and `X-Datastorer-Signature: sha256=HEX`, the
    /// HMAC-SHA256 of `TIMESTAMP.BODY` under this secret.
    pub(crate) secret: Option<String>,
}

/// Shortest signing secret accepted.
pub(crate) const MIN_SECRET_LEN: usize = 16;

/// The signature headers' value for `body` sent at `timestamp` (Unix
/// seconds): hex HMAC-SHA256 of `TIMESTAMP.BODY` under `secret`, as
/// receivers in the Stripe and GitHub style check it.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!("sha256={}", tag.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alert {
    /// What it is about.
    pub(crate) kind: AlertKind,
    /// How many events it stands for.
    pub(crate) count: u64,
    /// What happened, for people.
    pub(crate) message: String,
}

/// A parsed endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl Endpoint {
    /// Parses an `http://` or `https://` URL; the error never repeats it.
    pub(crate) fn parse(url: &str) -> Result<Endpoint, String> {
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(r), _) => (true, r),
            (_, Some(r)) => (false, r),
            _ => return Err("the URL must start with http:// or https://".into()),
        };
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
        if authority.is_empty() || authority.contains('@') || path.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err("the URL needs a host (no user info) and a path without spaces".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => (h, p.parse().map_err(|_| "the URL's port is not a number".to_owned())?),
            Some(_) => return Err("the URL needs a host".into()),
            None => (authority, if tls { 443 } else { 80 }),
        };
        Ok(Endpoint { tls, host: host.to_owned(), port, path: path.to_owned() })
    }

    /// What logs may say about it.
    pub(crate) fn redacted(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.host)
    }

    /// The `Host` header: the port only when it is not the scheme's own.
    fn host_header(&self) -> String {
        if self.port == if self.tls { 443 } else { 80 } {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// POSTs `body` as JSON, signed with `secret` if given; answers the status.
    async fn post(&self, body: &[u8], secret: Option<&str>) -> Result<u16, String> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| e.to_string())?;
        let signed = secret.map_or_else(String::new, |secret| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            format!("X-Datastorer-Timestamp: {now}\r\nX-Datastorer-Signature: {}\r\n", signature(secret, now, body))
        });
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: datastorer\r\nContent-Type: application/json\r\n{signed}Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.host_header(),
            body.len()
        );
        let mut answer = Vec::new();
        if self.tls {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name =
                tokio_rustls::rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| e.to_string())?;
            let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
            s.write_all(body).await.map_err(|e| e.to_string())?;
            let _ = s.read_to_end(&mut answer).await;
        } else {
            let mut s = tcp;
            s.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
            s.write_all(body).await.map_err(|e| e.to_string())?;
            let _ = s.read_to_end(&mut answer).await;
        }
        let line = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
        line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| "no HTTP answer".to_owned())
    }
}

/// The message for a batch of alerts, in `format`.
pub(crate) fn payload(format: Format, server: &str, alerts: &[Alert]) -> Value {
    let line = |a: &Alert| format!("{}× {}: {}", a.count, a.kind.as_str(), a.message);
    match format {
        Format::Json => json!({
            "source": "datastorer",
            "server": server,
            "alerts": alerts.iter().map(|a| json!({ "kind": a.kind.as_str(), "count": a.count, "message": a.message })).collect::<Vec<_>>(),
        }),
        Format::Discord => {
            let mut text =
                format!("**datastorer** `{server}`\n{}", alerts.iter().map(line).collect::<Vec<_>>().join("\n"));
            // Discord refuses content over 2000 characters.
            if text.chars().count() > 2000 {
                text = text.chars().take(1990).collect::<String>() + "…";
            }
            json!({ "content": text })
        }
        Format::Slack => {
            json!({ "text": format!("*datastorer* `{server}`\n{}", alerts.iter().map(line).collect::<Vec<_>>().join("\n")) })
        }
    }
}

/// Folds alerts of one kind together (counts add, the last message stays).
fn coalesce(pending: &mut BTreeMap<AlertKind, Alert>, a: Alert) {
    match pending.get_mut(&a.kind) {
        Some(p) => {
            p.count += a.count;
            p.message = a.message;
        }
        None => {
            pending.insert(a.kind, a);
        }
    }
}

struct Hook {
    endpoint: Endpoint,
    format: Format,
    wants: Option<Vec<AlertKind>>,
    tx: mpsc::Sender<Alert>,
}

/// Every configured webhook (none: alerts go nowhere, at no cost).
#[derive(Default)]
pub(crate) struct Webhooks {
    hooks: Vec<Hook>,
    /// Alerts dropped because a webhook's queue was full.
    pub(crate) dropped: AtomicU64,
    /// Messages delivered (2xx).
    pub(crate) delivered: Arc<AtomicU64>,
}

impl Webhooks {
    /// Starts one sender task per webhook (on the current runtime).
    pub(crate) fn start(decls: &[WebhookDecl], server: &str) -> Result<Webhooks, String> {
        let mut out = Webhooks::default();
        for (i, d) in decls.iter().enumerate() {
            let endpoint = Endpoint::parse(&d.url).map_err(|e| format!("webhooks[{i}].url: {e}"))?;
            if d.secret.as_ref().is_some_and(|s| s.len() < MIN_SECRET_LEN) {
                return Err(format!("webhooks[{i}].secret: at least {MIN_SECRET_LEN} characters"));
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            let task =
                deliver(endpoint.clone(), d.format, d.secret.clone(), server.to_owned(), rx, out.delivered.clone());
            actix_web::rt::spawn(task);
            out.hooks.push(Hook { endpoint, format: d.format, wants: d.events.clone(), tx });
        }
        Ok(out)
    }

    /// Queues `alert` for every webhook that wants it; never waits.
    pub(crate) fn alert(&self, alert: Alert) {
        for h in &self.hooks {
            if h.wants.as_ref().is_some_and(|w| !w.contains(&alert.kind)) {
                continue;
            }
            if h.tx.try_send(alert.clone()).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// How many webhooks are configured.
    pub(crate) fn len(&self) -> usize {
        self.hooks.len()
    }

    /// Whether none is.
    pub(crate) fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// The endpoints, as logs may name them.
    pub(crate) fn describe(&self) -> Vec<String> {
        self.hooks.iter().map(|h| format!("{} ({:?})", h.endpoint.redacted(), h.format)).collect()
    }
}

/// One webhook's sender: gathers alerts for `COALESCE`, sends one message,
/// retries it with capped backoff, then waits for the next alert.
async fn deliver(
    endpoint: Endpoint,
    format: Format,
    secret: Option<String>,
    server: String,
    mut rx: mpsc::Receiver<Alert>,
    delivered: Arc<AtomicU64>,
) {
    while let Some(first) = rx.recv().await {
        let mut pending = BTreeMap::new();
        coalesce(&mut pending, first);
        let window = tokio::time::sleep(COALESCE);
        tokio::pin!(window);
        loop {
            tokio::select! {
                () = &mut window => break,
                more = rx.recv() => match more {
                    Some(a) => coalesce(&mut pending, a),
                    None => break,
                },
            }
        }
        let alerts: Vec<Alert> = pending.into_values().collect();
        let body = payload(format, &server, &alerts).to_string();
        let mut backoff = Duration::from_secs(1);
        for attempt in 1..=MAX_TRIES {
            match tokio::time::timeout(SEND_TIMEOUT, endpoint.post(body.as_bytes(), secret.as_deref())).await {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    delivered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                outcome => {
                    let why = match outcome {
                        Ok(Ok(status)) => format!("answered {status}"),
                        Ok(Err(e)) => e,
                        Err(_) => "timed out".into(),
                    };
                    if attempt == MAX_TRIES {
                        warn!(target: "datastorer::webhooks", endpoint = %endpoint.redacted(), %why, "webhook alert dropped after retries");
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Turns the engine's failure counters into alerts, once a second.
pub(crate) async fn watch_failures(ds: Datastorer, hooks: Arc<Webhooks>) {
    let mut watch = FailureWatch::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let named = ds.recent_save_failures(watch.last_named);
        for alert in watch.observe(tokio::time::Instant::now(), &ds.save_failures(), &named) {
            hooks.alert(alert);
        }
    }
}

/// What the failure counters mean for alerts: new failures by reason, a
/// lost lease, and entering the critical state (left again once the
/// window holds fewer than `CRITICAL_COUNT`, so a later storm alerts again).
#[derive(Default)]
struct FailureWatch {
    seen: BTreeMap<&'static str, u64>,
    recent: std::collections::VecDeque<(tokio::time::Instant, u64)>,
    critical: bool,
    /// The last named failure seen (`FailedSave::seq`).
    last_named: u64,
}

/// Most keys one alert names; the rest are counted.
const NAMED_KEYS: usize = 5;

/// "profiles/42, profiles/7 and 3 more" for the failures of `reason`.
fn which_keys(named: &[FailedSave], reason: SaveFailureReason) -> String {
    let mut keys: Vec<String> = Vec::new();
    for f in named.iter().filter(|f| f.reason == reason) {
        let k = format!("{}/{}", f.store, f.key);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    match keys.len() {
        0 => String::new(),
        n if n <= NAMED_KEYS => keys.join(", "),
        n => format!("{} and {} more", keys[..NAMED_KEYS].join(", "), n - NAMED_KEYS),
    }
}

impl FailureWatch {
    fn observe(
        &mut self,
        now: tokio::time::Instant,
        totals: &[(SaveFailureReason, u64)],
        named: &[FailedSave],
    ) -> Vec<Alert> {
        if let Some(last) = named.last() {
            self.last_named = last.seq;
        }
        let mut alerts = Vec::new();
        let mut new_failures = 0;
        for (reason, total) in totals {
            let before = self.seen.insert(reason.as_str(), *total).unwrap_or(0);
            let fresh = total.saturating_sub(before);
            if fresh == 0 {
                continue;
            }
            new_failures += fresh;
            // The keys, never the documents.
            let keys = which_keys(named, *reason);
            let on = if keys.is_empty() { String::new() } else { format!(" on {keys}") };
            let (kind, message) = match reason {
                SaveFailureReason::LeaseLost => {
                    (AlertKind::LeaseLost, format!("a write{on} was fenced off: another process holds the key now"))
                }
                r => (
                    AlertKind::SaveFailed,
                    format!("saves failed{on} ({}); the data stays in memory and is retried", r.as_str()),
                ),
            };
            alerts.push(Alert { kind, count: fresh, message });
        }
        if new_failures > 0 {
            self.recent.push_back((now, new_failures));
        }
        while self.recent.front().is_some_and(|(t, _)| now.duration_since(*t) > CRITICAL_WINDOW) {
            self.recent.pop_front();
        }
        let in_window: u64 = self.recent.iter().map(|(_, n)| n).sum();
        if !self.critical && in_window >= CRITICAL_COUNT {
            self.critical = true;
            info!(target: "datastorer::webhooks", failures = in_window, "critical state");
            alerts.push(Alert {
                kind: AlertKind::Critical,
                count: in_window,
                message: format!(
                    "{in_window} failed saves within {} s: storage is in trouble",
                    CRITICAL_WINDOW.as_secs()
                ),
            });
        } else if self.critical && in_window < CRITICAL_COUNT {
            self.critical = false;
            info!(target: "datastorer::webhooks", failures = in_window, "critical state over");
            alerts.push(Alert {
                kind: AlertKind::Recovered,
                count: 1,
                message: format!(
                    "recovered: {in_window} failed saves within the last {} s (critical at {CRITICAL_COUNT})",
                    CRITICAL_WINDOW.as_secs()
                ),
            });
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_are_never_repeated_in_errors_or_logs() {
        let e = Endpoint::parse("https://discord.com/api/webhooks/1/SECRET").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.path.as_str()),
            (true, "discord.com", 443, "/api/webhooks/1/SECRET")
        );
        assert_eq!(e.redacted(), "https://discord.com");
        assert_eq!(Endpoint::parse("http://127.0.0.1:9/x").unwrap().port, 9);
        for bad in ["ftp://x/SECRET", "http:///SECRET", "http://u:SECRET@h/", "http://h:port/SECRET", "https://h/a b"] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(!err.contains("SECRET"), "{bad}: {err}");
        }
    }

    #[test]
    fn failures_become_alerts_and_five_within_two_minutes_are_critical_once() {
        let t0 = tokio::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = FailureWatch::default();
        let kinds = |alerts: Vec<Alert>| alerts.into_iter().map(|a| (a.kind, a.count)).collect::<Vec<_>>();
        assert!(w.observe(at(0), &[(SaveFailureReason::Storage, 0)], &[]).is_empty());
        assert_eq!(kinds(w.observe(at(1), &[(SaveFailureReason::Storage, 3)], &[])), [(AlertKind::SaveFailed, 3)]);
        assert!(w.observe(at(2), &[(SaveFailureReason::Storage, 3)], &[]).is_empty(), "only new failures alert");
        let both = [(SaveFailureReason::Storage, 4), (SaveFailureReason::LeaseLost, 1)];
        assert_eq!(
            kinds(w.observe(at(60), &both, &[])),
            [(AlertKind::SaveFailed, 1), (AlertKind::LeaseLost, 1), (AlertKind::Critical, 5)]
        );
        let more = [(SaveFailureReason::Storage, 5), (SaveFailureReason::LeaseLost, 1)];
        assert_eq!(kinds(w.observe(at(61), &more, &[])), [(AlertKind::SaveFailed, 1)], "critical is announced once");
        // Two minutes after the storm the window empties, which is said
        // once; a new storm alerts again.
        assert_eq!(kinds(w.observe(at(300), &more, &[])), [(AlertKind::Recovered, 1)]);
        assert!(w.observe(at(301), &more, &[]).is_empty(), "recovery is announced once");
        let storm = [(SaveFailureReason::Storage, 10), (SaveFailureReason::LeaseLost, 1)];
        assert_eq!(kinds(w.observe(at(302), &storm, &[])), [(AlertKind::SaveFailed, 5), (AlertKind::Critical, 5)]);
    }

    #[test]
    fn alerts_name_the_keys_that_failed_never_their_documents() {
        let mut w = FailureWatch::default();
        let failed = |seq, reason, key: &str| FailedSave { seq, reason, store: "profiles".into(), key: key.into() };
        let named: Vec<FailedSave> = (1..=8)
            .map(|i| failed(i, SaveFailureReason::Storage, &format!("k{}", i % 7)))
            .chain([failed(9, SaveFailureReason::LeaseLost, "42")])
            .collect();
        let totals = [(SaveFailureReason::Storage, 8), (SaveFailureReason::LeaseLost, 1)];
        let alerts = w.observe(tokio::time::Instant::now(), &totals, &named);
        assert_eq!(w.last_named, 9);
        assert_eq!(
            alerts[0].message,
            "saves failed on profiles/k1, profiles/k2, profiles/k3, profiles/k4, profiles/k5 and 2 more (storage); the data stays in memory and is retried"
        );
        assert_eq!(alerts[1].message, "a write on profiles/42 was fenced off: another process holds the key now");
    }

    #[test]
    fn deliveries_are_signed_over_timestamp_and_body_and_host_keeps_its_port() {
        let sig = signature("Jefe", 0, b"what do ya want for nothing?");
        assert_eq!(sig.len(), "sha256=".len() + 64);
        assert_eq!(sig, signature("Jefe", 0, b"what do ya want for nothing?"), "deterministic");
        assert_ne!(sig, signature("Jefe", 1, b"what do ya want for nothing?"), "the timestamp is signed");
        assert_ne!(sig, signature("Jefe", 0, b"what do ya want for nothing!"), "the body is signed");
        // Known answer (Python's hmac): HMAC-SHA256("key", "1.body").
        assert_eq!(
            signature("key", 1, b"body"),
            "sha256=91b5374b153842ad05b2c4eab9349b8321b14703165bd3fb8b034dfb8be98ae5"
        );
        assert_eq!(Endpoint::parse("http://127.0.0.1:9000/x").unwrap().host_header(), "127.0.0.1:9000");
        assert_eq!(Endpoint::parse("https://discord.com/x").unwrap().host_header(), "discord.com");
        assert_eq!(Endpoint::parse("http://h:80/x").unwrap().host_header(), "h");
    }

    #[test]
    fn alerts_of_one_kind_fold_into_one_line_with_their_count() {
        let mut pending = BTreeMap::new();
        let a = |kind, n: u64, m: &str| Alert { kind, count: n, message: m.into() };
        coalesce(&mut pending, a(AlertKind::SaveFailed, 2, "first"));
        coalesce(&mut pending, a(AlertKind::LeaseLost, 1, "fenced"));
        coalesce(&mut pending, a(AlertKind::SaveFailed, 3, "last"));
        let alerts: Vec<Alert> = pending.into_values().collect();
        assert_eq!(alerts, [a(AlertKind::SaveFailed, 5, "last"), a(AlertKind::LeaseLost, 1, "fenced")]);
        let v = payload(Format::Json, "srv", &alerts);
        assert_eq!(v["alerts"][0], json!({"kind": "save_failed", "count": 5, "message": "last"}));
        assert_eq!(
            payload(Format::Discord, "srv", &alerts)["content"],
            "**datastorer** `srv`\n5× save_failed: last\n1× lease_lost: fenced"
        );
        assert!(payload(Format::Slack, "srv", &alerts)["text"].as_str().unwrap().starts_with("*datastorer* `srv`"));
        let long = vec![a(AlertKind::Test, 1, &"x".repeat(5000))];
        assert!(payload(Format::Discord, "srv", &long)["content"].as_str().unwrap().chars().count() <= 2000);
    }
}
