//! A backend's `tls:` section: its PEM files read and parsed at start (so `check-config` names
//! a missing or broken file), and its server name checked.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::ConfigError;
use super::file::TlsFile;
use super::{ClientIdentity, TlsConfig};

/// The largest PEM file read (a CA bundle of a few hundred certificates fits).
const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

pub(super) fn tls(file: TlsFile, path: &str) -> Result<TlsConfig, ConfigError> {
    let ca = file
        .ca_file
        .map(|ca| certificates(&ca, &format!("{path}.ca_file")))
        .transpose()?;
    let client = match (file.client_cert_file, file.client_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(ClientIdentity {
            chain: certificates(&cert, &format!("{path}.client_cert_file"))?,
            key: Arc::new(private_key(&key, &format!("{path}.client_key_file"))?),
        }),
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                format!("{path}.client_key_file"),
                "required with client_cert_file",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                format!("{path}.client_cert_file"),
                "required with client_key_file",
            ));
        }
    };
    if let Some(name) = &file.server_name
        && ServerName::try_from(name.as_str()).is_err()
    {
        return Err(ConfigError::invalid(
            format!("{path}.server_name"),
            "not a DNS name or an IP address",
        ));
    }
    Ok(TlsConfig {
        ca,
        client,
        server_name: file.server_name,
    })
}

fn read(file: &Path, path: &str) -> Result<Vec<u8>, ConfigError> {
    let unreadable = |e: std::io::Error| {
        ConfigError::invalid(path, format!("cannot read {}: {e}", file.display()))
    };
    let size = std::fs::metadata(file).map_err(unreadable)?.len();
    if size > MAX_PEM_BYTES {
        return Err(ConfigError::invalid(
            path,
            format!("{} is larger than {MAX_PEM_BYTES} bytes", file.display()),
        ));
    }
    std::fs::read(file).map_err(unreadable)
}

/// Every certificate of a PEM file; at least one.
fn certificates(file: &Path, path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(file, path)?;
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ConfigError::invalid(path, format!("{} is not valid PEM: {e}", file.display()))
        })?;
    if certificates.is_empty() {
        return Err(ConfigError::invalid(
            path,
            format!("{} holds no CERTIFICATE", file.display()),
        ));
    }
    Ok(certificates)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(file: &Path, path: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read(file, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ConfigError::invalid(
            path,
            format!("{} holds no usable private key: {e}", file.display()),
        )
    })
}
