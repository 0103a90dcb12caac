//! TLS for the connections (feature `postgres-tls`): the connector that
//! verifies the server's certificate, or none where plaintext is allowed.
//!
//! Must not: open connections; `conn` does, with what this answers.

#[cfg(feature = "postgres-tls")]
use std::sync::Arc;

use super::{PostgresConfig, PostgresTls};
use crate::storage::StorageError;

/// The TLS connector for `PostgresTls::Require`: rustls with the Mozilla
/// roots and those in `root_cert_path`; certificates and host names are
/// always verified.
#[cfg(feature = "postgres-tls")]
pub(super) fn tls_connector(
    cfg: &PostgresConfig,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, StorageError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    if cfg.tls == PostgresTls::Disable {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.root_cert_path {
        let bad = |e: String| StorageError::permanent(format!("postgres root certificate {}: {e}", path.display()));
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
            roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("no certificate in the file".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StorageError::permanent(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

#[cfg(not(feature = "postgres-tls"))]
pub(super) fn tls_connector(cfg: &PostgresConfig) -> Result<Option<std::convert::Infallible>, StorageError> {
    match cfg.tls {
        PostgresTls::Disable => Ok(None),
        PostgresTls::Require => {
            Err(StorageError::permanent("postgres TLS needs a build with the `postgres-tls` feature"))
        }
    }
}
