//! Upstream model backends: `send(UpstreamRequest)` -> a byte stream, or a typed error that
//! already says how the client should see the failure.

pub mod mock;
pub mod mock_server;
mod openai;
pub mod pool;

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use crate::config::{BackendConfig, BackendKind};
use crate::error::GatewayError;

pub use openai::http_client;

/// The body of a successful upstream response: SSE bytes for streams, JSON otherwise.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, GatewayError>> + Send>>;

/// One call to a backend, already in the upstream's terms.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// The JSON body (model rewritten, destination fields removed).
    pub body: Bytes,
    pub stream: bool,
    /// Forwarded as `x-request-id` so upstream logs can be joined with ours.
    pub request_id: Arc<str>,
}

/// A configured backend of a model.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub upstream_model: String,
    transport: Transport,
}

#[derive(Debug)]
enum Transport {
    OpenAi(openai::OpenAiBackend),
    Mock(mock::MockBackend),
}

impl Backend {
    pub fn new(config: &BackendConfig, http: &reqwest::Client) -> Self {
        let transport = match &config.kind {
            BackendKind::OpenAi { base_url, api_key } => Transport::OpenAi(
                openai::OpenAiBackend::new(http.clone(), base_url, api_key.as_ref()),
            ),
            BackendKind::Mock(script) => {
                Transport::Mock(mock::MockBackend::new(*script, &config.upstream_model))
            }
        };
        Self {
            name: config.name.clone(),
            upstream_model: config.upstream_model.clone(),
            transport,
        }
    }

    /// Sends the request; resolves when the response headers arrived with a 2xx status.
    pub async fn send(&self, request: UpstreamRequest) -> Result<ByteStream, GatewayError> {
        match &self.transport {
            Transport::OpenAi(backend) => backend.send(request).await,
            Transport::Mock(backend) => Ok(backend.respond(&request.body)),
        }
    }

    /// Whether the backend can produce `n` choices per request.
    pub fn supports_choices(&self, n: u64) -> bool {
        match &self.transport {
            Transport::OpenAi(_) => true,
            Transport::Mock(_) => n == 1,
        }
    }
}
