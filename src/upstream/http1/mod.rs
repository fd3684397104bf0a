//! The inline HTTP/1.1 client for plain `http://` backends (vLLM, llama.cpp, Ollama in the same
//! network). The relay polls the response body, and that poll reads the upstream socket
//! directly: no connection task, no channel, one 4 KiB read buffer per stream. Measured against
//! the pooled hyper client it replaced, it cut one client write and one task switch per chunk.
//!
//! Pooled keep-alive connections are reused newest first and kept for `pool_idle_timeout`. A
//! request whose reused connection failed while it was being written, or closed right after it
//! (the backend timed the connection out while idle), is sent once more on a fresh connection:
//! the backend cannot have acted on it. A close any later is an error, never a silent resend.

mod body;
mod chunked;
mod conn;
mod idle;
mod io;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::rejection::{ERROR_BODY_TIMEOUT, MAX_ERROR_BODY_BYTES, passes_through, rejection};
use super::retry_after::requested_wait;
use super::{ByteStream, Call, UpstreamRequest};
use crate::config::{Dialect, Secret, UpstreamConfig};
use crate::error::{GatewayError, TimeoutPhase};
use crate::openai::anthropic;
use crate::telemetry::metrics;
use body::Body;
pub use conn::TlsTarget;
use conn::{Conn, ConnectError, EarlyClose, ExchangeError, Head};
use idle::IdleConns;

/// Idle connections kept per backend.
const MAX_IDLE_PER_BACKEND: usize = 256;

#[derive(Debug)]
pub struct Http1Backend {
    /// The backend's name, for metrics.
    name: String,
    host: String,
    port: u16,
    /// Everything of the request head that is the same for every request.
    /// The base URL's path, ending in `/`: an API's path follows it.
    base_path: String,
    /// Its paths and how it takes its key.
    dialect: Dialect,
    head_prefix: HeadPrefix,
    /// For an `https://` backend: how its connections are secured.
    tls: Option<TlsTarget>,
    connect_timeout: Duration,
    max_retry_after: Duration,
    idle: Arc<IdleConns>,
}

impl Http1Backend {
    /// `base_url` is a validated `http://` or `https://` URL ending in `/`; `tls` secures the
    /// connections of an `https://` one.
    pub fn new(
        name: &str,
        base_url: &reqwest::Url,
        dialect: &Dialect,
        api_key: Option<&Secret>,
        tls: Option<TlsTarget>,
        config: &UpstreamConfig,
    ) -> Self {
        let host = base_url.host_str().unwrap_or_default();
        let port = base_url.port_or_known_default().unwrap_or(80);
        let authority = match base_url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let mut head_prefix = format!(
            "host: {authority}\r\ncontent-type: application/json\r\nuser-agent: sluicegate/{}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(key) = api_key {
            let header = match dialect {
                Dialect::OpenAi => format!("authorization: Bearer {}\r\n", key.expose()),
                Dialect::Azure { .. } => format!("api-key: {}\r\n", key.expose()),
                Dialect::Anthropic => format!("x-api-key: {}\r\n", key.expose()),
            };
            head_prefix.push_str(&header);
        }
        if *dialect == Dialect::Anthropic {
            head_prefix.push_str(&format!(
                "anthropic-version: {}\r\n",
                anthropic::API_VERSION
            ));
        }
        Self {
            name: name.to_owned(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            base_path: base_url.path().to_owned(),
            dialect: dialect.clone(),
            head_prefix: HeadPrefix(head_prefix.into_bytes()),
            tls,
            connect_timeout: config.connect_timeout,
            max_retry_after: config.max_retry_after,
            idle: Arc::new(IdleConns::new(
                MAX_IDLE_PER_BACKEND,
                config.pool_idle_timeout,
            )),
        }
    }

    pub async fn send(&self, request: UpstreamRequest) -> Result<ByteStream, GatewayError> {
        let wire = self.request_bytes(&request);
        let mut resent = false;
        loop {
            let pooled = if resent { None } else { self.idle.take() };
            let (mut conn, reused) = match pooled {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            match conn.exchange(&wire).await {
                Ok(head) => return self.respond(conn, head).await,
                // A pooled connection the backend closed before it could act on the request: sent
                // once more, on a fresh connection, never twice.
                Err(ExchangeError::ClosedEarly(when))
                    if reused && !resent && may_resend(when, request.replayable) =>
                {
                    resent = true;
                    metrics::record_upstream_resend(&self.name);
                }
                Err(ExchangeError::ClosedEarly(_) | ExchangeError::Broken) => {
                    return Err(GatewayError::UpstreamDisconnected);
                }
                Err(ExchangeError::Malformed(detail)) => {
                    return Err(GatewayError::UpstreamProtocol { detail });
                }
                Err(ExchangeError::Tls(reason)) => return Err(self.tls_failed(&reason)),
            }
        }
    }

    /// Closes idle connections past `pool_idle_timeout`.
    pub fn reap_idle(&self) {
        self.idle.reap();
    }

    async fn connect(&self) -> Result<Conn, GatewayError> {
        Conn::connect(
            &self.host,
            self.port,
            self.tls.as_ref(),
            self.connect_timeout,
        )
        .await
        .map_err(|error| match error {
            ConnectError::Refused => GatewayError::UpstreamUnavailable,
            ConnectError::TimedOut => GatewayError::UpstreamTimeout {
                phase: TimeoutPhase::Connect,
            },
            ConnectError::Tls(reason) => self.tls_failed(&reason),
        })
    }

    /// A TLS session the backend or the gateway refused: logged with why, and (never having
    /// carried a request) a 502 `upstream_unavailable` that counts against the breaker.
    fn tls_failed(&self, reason: &str) -> GatewayError {
        tracing::warn!(backend = %self.name, %reason, "TLS handshake with the backend failed");
        GatewayError::UpstreamUnavailable
    }

    async fn respond(&self, conn: Conn, head: Head) -> Result<ByteStream, GatewayError> {
        let body = Body::new(conn, head.framing, head.keep_alive, self.idle.clone());
        if head.status.is_success() {
            return Ok(Box::pin(body));
        }
        let text = if passes_through(head.status) {
            let read = body.collect_capped(MAX_ERROR_BODY_BYTES);
            tokio::time::timeout(ERROR_BODY_TIMEOUT, read)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
        } else {
            bytes::Bytes::new()
        };
        let retry_after = requested_wait(
            head.retry_after.as_deref(),
            head.retry_after_ms.as_deref(),
            SystemTime::now(),
            self.max_retry_after,
        );
        Err(rejection(head.status, retry_after, &text))
    }

    fn request_bytes(&self, request: &UpstreamRequest) -> Vec<u8> {
        let accept = if request.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let prefix = &self.head_prefix.0;
        let mut wire = Vec::with_capacity(prefix.len() + request.body.len() + 192);
        for part in [request.call.method().as_str(), " ", &self.base_path] {
            wire.extend_from_slice(part.as_bytes());
        }
        self.put_path(&request.call, &mut wire);
        wire.extend_from_slice(b" HTTP/1.1\r\n");
        wire.extend_from_slice(prefix);
        wire.extend_from_slice(
            format!(
                "accept: {accept}\r\nx-request-id: {}\r\ncontent-length: {}\r\n",
                request.request_id,
                request.body.len()
            )
            .as_bytes(),
        );
        // Header values cannot hold CR or LF, so nothing here can end the head early.
        for (name, value) in request.trace.iter() {
            wire.extend_from_slice(name.as_str().as_bytes());
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(value.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&request.body);
        wire
    }
}

impl Http1Backend {
    /// Appends the path of `call` under the base path, in the backend's dialect.
    fn put_path(&self, call: &Call, wire: &mut Vec<u8>) {
        match (&self.dialect, call) {
            (
                Dialect::Azure {
                    deployment,
                    api_version,
                },
                Call::Create(api),
            ) => {
                for part in [
                    "openai/deployments/",
                    deployment,
                    "/",
                    api.path(),
                    "?api-version=",
                    api_version,
                ] {
                    wire.extend_from_slice(part.as_bytes());
                }
            }
            (Dialect::Anthropic, Call::Create(_)) => wire.extend_from_slice(b"messages"),
            _ => wire.extend_from_slice(call.path().as_bytes()),
        }
    }
}

/// The resend rule of Go's and hyper's clients: a request whose write failed never reached
/// the backend whole, so it may go again; one whose connection closed right after the write
/// (the idle-close race) may go again only when sending it twice costs nothing but the work.
fn may_resend(when: EarlyClose, replayable: bool) -> bool {
    match when {
        EarlyClose::DuringWrite => true,
        EarlyClose::RightAfterWrite => replayable,
        EarlyClose::Later => false,
    }
}

/// The fixed headers of every request head. They carry the backend's key, so its `Debug` shows
/// only its length.
struct HeadPrefix(Vec<u8>);

impl std::fmt::Debug for HeadPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeadPrefix({} bytes, redacted)", self.0.len())
    }
}
