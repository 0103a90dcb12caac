//! The PostgreSQL backend's settings, and their validation.
//!
//! Owns: what a user may configure about the connection and the schema.
//! Must not: connect (that is `mod.rs`).

use std::time::Duration;

/// How the backend protects its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostgresTls {
    /// No TLS. Refused for a host that is not a loopback address or a Unix
    /// socket unless [`PostgresConfig::allow_plaintext`] is set.
    #[default]
    Disable,
    /// TLS with rustls (feature `postgres-tls`), verifying the server's
    /// certificate and host name against the Mozilla roots and the roots
    /// in `root_cert_path`, like libpq's `verify-full`.
    Require,
}

/// Where and how to reach PostgreSQL (see docs/postgres.md, "Several processes on
/// PostgreSQL").
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// A `postgres://user:pass@host:port/db` URL or a `host=… user=…` string.
    pub url: String,
    /// The schema holding datastorer's tables; one per deployment. Letters,
    /// digits and `_`, starting with a letter or `_`, at most 40 bytes.
    pub schema: String,
    /// TLS to the server.
    pub tls: PostgresTls,
    /// Extra PEM root certificates for `PostgresTls::Require`.
    pub root_cert_path: Option<std::path::PathBuf>,
    /// Allow a plaintext connection to a host that is not on this machine.
    pub allow_plaintext: bool,
    /// Accept a server whose `synchronous_commit` is `off` (commits are then
    /// acknowledged before they are durable: a crash of PostgreSQL can lose
    /// acknowledged saves). For throwaway test databases only.
    pub allow_async_commit: bool,
    /// How long connecting may take before it is an error.
    pub connect_timeout: Duration,
    /// How long one statement may wait for a row lock (`lock_timeout`)
    /// before the batch is retried.
    pub lock_timeout: Duration,
    /// Bound on one backend call (a batch, a read); past it the connection
    /// is dropped and the call fails as transient.
    pub request_timeout: Duration,
    /// The address this process gives others for reaching it (for example
    /// the URL of the service that embeds it), recorded beside its owner id
    /// for other processes to read ([`super::PgBackend::advertised_url`]).
    pub advertise_url: Option<String>,
    /// Send `Saved` notices to other processes (their change feeds show
    /// saves made here). Off saves one NOTIFY per batch; releases, deletes
    /// and lease notices always travel.
    pub notify_saves: bool,
    /// Write a batch of one save as a plain single-row `UPDATE` instead of
    /// the batch statement (fewer planner and executor steps; see the
    /// PostgreSQL figures in docs/performance.md). Off only to measure it.
    pub single_op_fast_path: bool,
    /// Carry notices through the polled `notices` table instead of
    /// LISTEN/NOTIFY (chosen automatically when the server has no LISTEN,
    /// as CockroachDB). Polled every 250 ms.
    pub poll_notices: bool,
    /// Connections writing batches, 1 to 16: the queue keeps as many
    /// batches in flight at once, each on a connection of its own and on
    /// keys no other in-flight batch has, so PostgreSQL runs one batch's
    /// statement while the next one is sent (see "Round 2 on PostgreSQL"
    /// in docs/performance.md). 1 writes one batch at a time.
    pub writer_connections: usize,
}

/// The most writer connections a process opens.
pub const MAX_WRITER_CONNECTIONS: usize = 16;

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("PostgresConfig")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("tls", &self.tls)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish_non_exhaustive()
    }
}

/// The URL with any password replaced, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")) {
        if let Some(at) = rest.find('@') {
            let (creds, host) = rest.split_at(at);
            if let Some(colon) = creds.find(':') {
                return format!("postgres://{}:***{host}", &creds[..colon]);
            }
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|part| if part.starts_with("password=") { "password=***" } else { part })
        .collect::<Vec<_>>()
        .join(" ")
}

impl PostgresConfig {
    /// Defaults for `url`: schema `datastorer`, no TLS, plaintext only on
    /// loopback, 10 s to connect, 5 s lock timeout, 60 s per call.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "datastorer".into(),
            tls: PostgresTls::Disable,
            root_cert_path: None,
            allow_plaintext: false,
            allow_async_commit: false,
            connect_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            advertise_url: None,
            notify_saves: true,
            single_op_fast_path: true,
            poll_notices: false,
            writer_connections: 2,
        }
    }

    /// Sets the schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Checks every field; the message names the field and the rule.
    pub fn validate(&self) -> Result<(), crate::Error> {
        self.check().map_err(crate::Error::Config)
    }

    fn check(&self) -> Result<(), String> {
        validate_schema(&self.schema)?;
        let cfg: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| format!("database_url {:?} is not a PostgreSQL URL: {e}", redact(&self.url)))?;
        if cfg.get_hosts().is_empty() {
            return Err(format!("database_url {:?} names no host", redact(&self.url)));
        }
        if self.tls == PostgresTls::Disable && !self.allow_plaintext {
            for host in cfg.get_hosts() {
                if !host_is_local(host) {
                    return Err(format!(
                        "database_url {:?}: host {} is not on this machine and TLS is off; \
                         turn on TLS (postgres_tls = \"require\") or set allow_plaintext",
                        redact(&self.url),
                        host_name(host)
                    ));
                }
            }
        }
        if self.tls == PostgresTls::Require && !cfg!(feature = "postgres-tls") {
            return Err("postgres TLS needs a build with the `postgres-tls` feature".into());
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("lock_timeout", self.lock_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("postgres {name} must be greater than zero"));
            }
        }
        if self.request_timeout <= self.lock_timeout {
            return Err("postgres request_timeout must be longer than lock_timeout".into());
        }
        if !(1..=MAX_WRITER_CONNECTIONS).contains(&self.writer_connections) {
            return Err(format!(
                "postgres writer_connections must be between 1 and {MAX_WRITER_CONNECTIONS}, not {}",
                self.writer_connections
            ));
        }
        Ok(())
    }
}

/// Schema names become SQL identifiers and NOTIFY channel names (at most
/// 63 bytes with a suffix), so they are kept to a safe alphabet.
pub(crate) fn validate_schema(schema: &str) -> Result<(), String> {
    let ok_first = schema.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let ok_rest = schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok_first || !ok_rest || schema.len() > 40 {
        return Err(format!(
            "postgres schema {schema:?} must be 1 to 40 lower-case letters, digits or `_`, not starting with a digit"
        ));
    }
    Ok(())
}

fn host_is_local(host: &tokio_postgres::config::Host) -> bool {
    match host {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    }
}

fn host_name(host: &tokio_postgres::config::Host) -> String {
    match host {
        tokio_postgres::config::Host::Tcp(name) => name.clone(),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_a_log_line() {
        assert_eq!(redact("postgres://u:secret@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(redact("host=db user=u password=secret"), "host=db user=u password=***");
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
        assert!(!format!("{:?}", PostgresConfig::new("postgres://u:secret@h/x")).contains("secret"));
    }

    #[test]
    fn plaintext_is_for_this_machine_only() {
        assert!(PostgresConfig::new("postgres://u@127.0.0.1/x").validate().is_ok());
        assert!(PostgresConfig::new("host=localhost user=u").validate().is_ok());
        let remote = PostgresConfig::new("postgres://u@db.example/x").validate().unwrap_err().to_string();
        assert!(remote.contains("not on this machine"), "{remote}");
        let mut allowed = PostgresConfig::new("postgres://u@db.example/x");
        allowed.allow_plaintext = true;
        assert!(allowed.validate().is_ok());
    }

    #[test]
    fn schema_names_are_safe_identifiers() {
        for good in ["datastorer", "_x", "ds_test_01"] {
            assert!(validate_schema(good).is_ok(), "{good}");
        }
        for bad in ["", "1x", "Upper", "a-b", "a\"b", &"x".repeat(41)] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
        assert!(PostgresConfig::new("not a url ::").validate().is_err());
    }
}
