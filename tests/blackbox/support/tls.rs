//! Real TLS for the tests: a private PKI made with rcgen (a CA, a server certificate for
//! `localhost` (not for its address), an expired one, a second CA that signed nothing, a client CA and
//! a client certificate), written as PEM files, and a TLS upstream (rustls) on loopback that
//! answers chat completions, optionally demanding a client certificate.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::upstream::chunk;

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

/// A TLS upstream on loopback answering every request with a short chat completion (streamed
/// when asked), on keep-alive connections.
pub struct TlsUpstream {
    pub port: u16,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsUpstream {
    /// Serves with `cert`/`key`; with `client_ca`, only to clients whose certificate chains to it.
    pub async fn start(cert: &PathBuf, key: &PathBuf, client_ca: Option<&PathBuf>) -> Self {
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
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "the upstream serves for the whole test"
        )]
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                #[expect(clippy::disallowed_methods, reason = "one task per connection")]
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, &counted).await;
                    }
                });
            }
        });
        Self {
            port,
            requests,
            task,
        }
    }

    /// The base URL naming the upstream by `host` (`localhost`, the name its certificate
    /// carries, or `127.0.0.1`).
    pub fn base_url(&self, host: &str) -> String {
        format!("https://{host}:{}/v1", self.port)
    }

    /// Requests that arrived over a completed handshake.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    requests: &AtomicUsize,
) {
    let mut buf = Vec::new();
    loop {
        let Some(body) = read_request(&mut tls, &mut buf).await else {
            return;
        };
        requests.fetch_add(1, Ordering::SeqCst);
        let answer = if body.contains("\"stream\":true") {
            let mut events = String::new();
            for piece in ["Hello", " over", " TLS"] {
                events.push_str(&chunk(serde_json::json!({"content": piece}), None));
            }
            events.push_str(&chunk(serde_json::json!({}), Some("stop")));
            events.push_str("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"upstream-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\n");
            events.push_str("data: [DONE]\n\n");
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{events}",
                events.len()
            )
        } else {
            let json = r#"{"id":"c1","object":"chat.completion","created":1,"model":"upstream-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello over TLS"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#;
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                json.len()
            )
        };
        if tls.write_all(answer.as_bytes()).await.is_err() || tls.flush().await.is_err() {
            return;
        }
    }
}

/// Reads one request (head and `content-length` body) and returns its body.
async fn read_request(
    tls: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    buf: &mut Vec<u8>,
) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                buf.drain(..end + 4 + length);
                return Some(body);
            }
        }
        let mut chunk = [0u8; 4096];
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
