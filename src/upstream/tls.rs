//! The TLS side of an `https://` backend, built once at start: whom its connections trust (the
//! system's roots, read once, or only the CAs the backend names), the client certificate the
//! gateway presents, and the name the backend's certificate must carry.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

use super::http1::TlsTarget;
use crate::config::TlsConfig;

/// Why a backend's TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(
        "backend `{backend}`: no system root certificates were found (install the \
         ca-certificates package, or name the backend's CA in tls.ca_file)"
    )]
    NoSystemRoots { backend: String },
    #[error("backend `{backend}`: {reason}")]
    Invalid { backend: String, reason: String },
}

/// The TLS target of backend `backend` whose URL names `host`.
pub fn target(
    backend: &str,
    host: &str,
    tls: Option<&TlsConfig>,
) -> Result<TlsTarget, TlsSetupError> {
    let invalid = |reason: String| TlsSetupError::Invalid {
        backend: backend.to_owned(),
        reason,
    };
    let roots = match tls.and_then(|t| t.ca.as_ref()) {
        Some(ca) => {
            let mut store = RootCertStore::empty();
            for certificate in ca {
                store
                    .add(certificate.clone())
                    .map_err(|e| invalid(format!("tls.ca_file: {e}")))?;
            }
            Arc::new(store)
        }
        None => system_roots().ok_or_else(|| TlsSetupError::NoSystemRoots {
            backend: backend.to_owned(),
        })?,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match tls.and_then(|t| t.client.as_ref()) {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| invalid(format!("tls.client_cert_file / client_key_file: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    // The inline client speaks HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = tls.and_then(|t| t.server_name.as_deref()).unwrap_or(host);
    let server_name = ServerName::try_from(name.to_owned())
        .map_err(|_| invalid(format!("`{name}` is not a DNS name or an IP address")))?;
    Ok(TlsTarget::new(Arc::new(config), server_name))
}

/// The system's trusted roots, read once (none found: `None`).
fn system_roots() -> Option<Arc<RootCertStore>> {
    static ROOTS: OnceLock<Option<Arc<RootCertStore>>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            let (added, _ignored) =
                store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            (added > 0).then(|| Arc::new(store))
        })
        .clone()
}
