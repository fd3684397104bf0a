//! Upstream model backends: `send(UpstreamRequest)` -> a byte stream, or a typed error that
//! already says how the client should see the failure.

pub mod breaker;
pub mod health;
mod http1;
mod https;
pub mod mock;
mod mock_embeddings;
pub mod mock_server;
pub mod pool;
mod rejection;
pub mod retry;
mod retry_after;

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use crate::config::{Api, Apis, BackendConfig, BackendKind, UpstreamConfig};
use crate::error::GatewayError;
use crate::telemetry::traces::TraceHeaders;

pub use https::http_client;

/// The body of a successful upstream response: SSE bytes for streams, JSON otherwise.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, GatewayError>> + Send>>;

/// One call to a backend, already in the upstream's terms.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// Which API it calls (the path under the backend's base URL).
    pub api: Api,
    /// The JSON body (model rewritten, destination fields removed).
    pub body: Bytes,
    pub stream: bool,
    /// Forwarded as `x-request-id` so upstream logs can be joined with ours.
    pub request_id: Arc<str>,
    /// Sending it twice costs only the work (not `store: true`): it may then be resent after a
    /// pooled connection closed right after the write.
    pub replayable: bool,
    /// `traceparent`/`tracestate` of this call, set per attempt.
    pub trace: TraceHeaders,
}

/// A configured backend of a model.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub upstream_model: String,
    /// The APIs it serves.
    pub apis: Apis,
    transport: Transport,
    /// Routing state: weight, in-flight count, breaker, 429 cool-down.
    pub health: health::BackendHealth,
}

/// How a backend is reached: plain HTTP through the inline client, TLS through reqwest, or
/// the in-process mock.
#[derive(Debug)]
enum Transport {
    Http1(http1::Http1Backend),
    Https(https::HttpsBackend),
    Mock(mock::MockBackend),
}

impl Backend {
    pub fn new(config: &BackendConfig, http: &reqwest::Client, timeouts: &UpstreamConfig) -> Self {
        let transport = match &config.kind {
            BackendKind::OpenAi { base_url, api_key } => {
                let url = reqwest::Url::parse(base_url).expect("invariant: base_url was validated");
                if url.scheme() == "http" {
                    Transport::Http1(http1::Http1Backend::new(
                        &config.name,
                        &url,
                        api_key.as_ref(),
                        timeouts,
                    ))
                } else {
                    Transport::Https(https::HttpsBackend::new(
                        http.clone(),
                        base_url,
                        api_key.as_ref(),
                        timeouts.max_retry_after,
                    ))
                }
            }
            BackendKind::Mock(script) => {
                Transport::Mock(mock::MockBackend::new(*script, &config.upstream_model))
            }
        };
        Self {
            name: config.name.clone(),
            upstream_model: config.upstream_model.clone(),
            apis: config.apis,
            transport,
            health: health::BackendHealth::new(
                config,
                &timeouts.breaker,
                timeouts.first_byte_timeout,
            ),
        }
    }

    /// Sends the request; resolves when the response headers arrived with a 2xx status.
    pub async fn send(&self, request: UpstreamRequest) -> Result<ByteStream, GatewayError> {
        match &self.transport {
            Transport::Http1(backend) => backend.send(request).await,
            Transport::Https(backend) => backend.send(request).await,
            Transport::Mock(backend) => Ok(backend.respond(request.api, &request.body)),
        }
    }

    /// Closes pooled connections idle for longer than `upstream.pool_idle_timeout`.
    pub fn reap_idle_connections(&self) {
        match &self.transport {
            Transport::Http1(backend) => backend.reap_idle(),
            Transport::Https(_) | Transport::Mock(_) => {}
        }
    }

    /// Whether the backend can produce `n` choices per request.
    pub fn supports_choices(&self, n: u64) -> bool {
        match &self.transport {
            Transport::Http1(_) | Transport::Https(_) => true,
            Transport::Mock(_) => n == 1,
        }
    }
}
