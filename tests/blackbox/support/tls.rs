//! Real TLS for the tests: a private PKI made with rcgen (a CA, a server certificate for
//! `localhost` (not for its address), an expired one, a second CA that signed nothing, a client
//! CA and a client certificate), written as PEM files, and the acceptor a scripted upstream
//! serves TLS with, optionally demanding a client certificate.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The PEM files of a test PKI, in a directory removed when it drops.
pub struct Pki {
    _dir: tempfile::TempDir,
    /// The CA that signed the server certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Signed by `ca`, for the right names, but no longer valid.
    pub expired_cert: PathBuf,
    pub expired_key: PathBuf,
    /// The CA a client certificate must chain to.
    pub client_ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        let ca = authority("sluicegate test CA");
        let other_ca = authority("another CA");
        let client_ca = authority("client CA");
        let (server_cert, server_key) = leaf(&ca, |_| {});
        let (expired_cert, expired_key) = leaf(&ca, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        });
        let (client_cert, client_key) = leaf(&client_ca, |_| {});
        Self {
            ca: write("ca.pem", ca.pem()),
            other_ca: write("other-ca.pem", other_ca.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server-key.pem", server_key),
            expired_cert: write("expired.pem", expired_cert),
            expired_key: write("expired-key.pem", expired_key),
            client_ca: write("client-ca.pem", client_ca.pem()),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
            _dir: dir,
        }
    }
}

impl Pki {
    /// A PEM file whose CERTIFICATE block holds bytes that are no certificate.
    pub fn garbage_pem(&self) -> PathBuf {
        let path = self._dir.path().join("garbage.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        )
        .expect("write PEM");
        path
    }
}

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// A certificate for `localhost` signed by `issuer`, and its key, as PEM.
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    adjust: impl FnOnce(&mut CertificateParams),
) -> (String, String) {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    adjust(&mut params);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

/// A TLS acceptor serving `cert`/`key` (for `MockUpstream::tls`); with `client_ca`, only to
/// clients whose certificate chains to it.
pub fn acceptor(cert: &PathBuf, key: &PathBuf, client_ca: Option<&PathBuf>) -> TlsAcceptor {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(key).expect("key file");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).expect("ca file") {
                roots.add(cert.expect("ca cert")).expect("added");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .expect("server certificate");
    TlsAcceptor::from(Arc::new(config))
}
