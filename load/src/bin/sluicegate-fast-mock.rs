//! The benchmarks' model upstream: an OpenAI-compatible chat completions server that costs
//! next to nothing per request, so a direct run measures the load generator and the proxies,
//! not the mock. Answers are rendered once at start; an unpaced stream leaves in one write, a
//! paced one a token per write. Keep-alive, HTTP/1.1 only, for loopback benchmarks. With
//! `--tls DIR` it serves TLS with a certificate for `localhost` signed by a CA it makes at
//! start and writes to `DIR/ca.pem` (for the client to trust).
//!
//!   sluicegate-fast-mock --port 9000 [--tokens 16] [--pace 0ms] [--tls DIR]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 9000)]
    port: u16,
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Time between tokens (`0ms`, `20ms`).
    #[arg(long, default_value = "0ms")]
    pace: String,
    /// Serve TLS; the CA that signed the certificate is written to `DIR/ca.pem`.
    #[arg(long, value_name = "DIR")]
    tls: Option<std::path::PathBuf>,
}

/// The rendered answers.
struct Answers {
    /// The stream's events, one per token and the framing ones, each a whole SSE event.
    events: Vec<String>,
    usage_event: String,
    json: Vec<u8>,
    pace: Duration,
}

const HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

impl Answers {
    fn new(tokens: u32, pace: Duration) -> Self {
        let chunk = |delta: &str, finish: &str| {
            format!(
                "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mock-model\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
            )
        };
        let mut events = vec![chunk(r#"{"role":"assistant","content":""}"#, "null")];
        for i in 0..tokens {
            events.push(chunk(&format!(r#"{{"content":"tok{i} "}}"#), "null"));
        }
        events.push(chunk("{}", "\"stop\""));
        let usage_event = format!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mock-model\",\"choices\":[],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\n",
            tokens + 5
        );
        let content: String = (0..tokens).map(|i| format!("tok{i} ")).collect();
        let body = format!(
            "{{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"mock-model\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{content}\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}",
            tokens + 5
        );
        let json = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Self {
            events,
            usage_event,
            json,
            pace,
        }
    }

    /// The whole unpaced stream as one chunked response.
    fn unpaced(&self, include_usage: bool) -> Vec<u8> {
        let mut body: String = self.events.concat();
        if include_usage {
            body.push_str(&self.usage_event);
        }
        body.push_str("data: [DONE]\n\n");
        format!("{HEAD}{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).into_bytes()
    }
}

fn chunk(bytes: &str) -> Vec<u8> {
    format!("{:x}\r\n{bytes}\r\n", bytes.len()).into_bytes()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pace = parse_ms(&args.pace).context("--pace such as 0ms or 20ms")?;
    let answers = Arc::new(Answers::new(args.tokens, pace));
    let rendered = Arc::new([answers.unpaced(false), answers.unpaced(true)]);
    let tls = args.tls.as_deref().map(acceptor).transpose()?;
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "fast mock listening on {scheme}://127.0.0.1:{}/v1",
        args.port
    );
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let (answers, rendered, tls) = (answers.clone(), rendered.clone(), tls.clone());
        #[expect(
            clippy::disallowed_methods,
            reason = "one task per benchmark connection; it ends with the connection"
        )]
        tokio::spawn(async move {
            let _ = match tls {
                Some(tls) => match tls.accept(socket).await {
                    Ok(socket) => serve(socket, &answers, &rendered).await,
                    Err(_) => Ok(()),
                },
                None => serve(socket, &answers, &rendered).await,
            };
        });
    }
}

/// A TLS acceptor with a certificate for `localhost` signed by a new CA, whose certificate is
/// written to `dir/ca.pem`.
fn acceptor(dir: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Names of their own: with the same subject as its issuer, OpenSSL (nginx) would take the
    // leaf for a self-signed certificate.
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "sluicegate bench CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let leaf = leaf.signed_by(&key, &ca)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    let chain = vec![CertificateDer::from(leaf.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn parse_ms(text: &str) -> Option<Duration> {
    text.strip_suffix("ms")?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

async fn serve(
    mut socket: impl AsyncRead + AsyncWrite + Unpin,
    answers: &Answers,
    rendered: &[Vec<u8>; 2],
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        // One request: its head, then as many body bytes as its content-length says.
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if read_more(&mut socket, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            if read_more(&mut socket, &mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        buf.drain(..head_end + length);
        let compact: String = body.split_whitespace().collect();
        let stream = compact.contains("\"stream\":true");
        let usage = compact.contains("\"include_usage\":true");
        if !stream {
            socket.write_all(&answers.json).await?;
            socket.flush().await?;
        } else if answers.pace.is_zero() {
            socket.write_all(&rendered[usize::from(usage)]).await?;
            socket.flush().await?;
        } else {
            socket.write_all(HEAD.as_bytes()).await?;
            for (i, event) in answers.events.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(answers.pace).await;
                }
                socket.write_all(&chunk(event)).await?;
                socket.flush().await?;
            }
            if usage {
                socket.write_all(&chunk(&answers.usage_event)).await?;
            }
            socket.write_all(&chunk("data: [DONE]\n\n")).await?;
            socket.write_all(b"0\r\n\r\n").await?;
            socket.flush().await?;
        }
    }
}

async fn read_more(
    socket: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> anyhow::Result<usize> {
    let start = buf.len();
    buf.resize(start + 8 * 1024, 0);
    let n = socket.read(&mut buf[start..]).await;
    buf.truncate(start + *n.as_ref().unwrap_or(&0));
    Ok(n?)
}
