//! Upstream model backends: `send(UpstreamRequest)` -> a byte stream, or a typed error that
//! already says how the client should see the failure.

pub mod breaker;
pub mod health;
mod http1;
pub mod mock;
mod mock_embeddings;
mod mock_responses;
pub mod mock_server;
pub mod pool;
mod rejection;
pub mod retry;
mod retry_after;
pub mod tls;

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use crate::config::{Api, Apis, BackendConfig, BackendKind, Dialect, UpstreamConfig};
use crate::error::GatewayError;
use crate::openai::responses::ResponseId;
use crate::telemetry::traces::TraceHeaders;
use tls::TlsSetupError;

/// The body of a successful upstream response: SSE bytes for streams, JSON otherwise.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, GatewayError>> + Send>>;

/// What a call asks of a backend: the method and the path under its base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `POST {api}`: a new answer, described by the body.
    Create(Api),
    /// `GET responses/{id}`: a stored response.
    Retrieve(ResponseId),
    /// `DELETE responses/{id}`.
    Delete(ResponseId),
    /// `POST responses/{id}/cancel`: stops a background response.
    Cancel(ResponseId),
    /// `GET responses/{id}/input_items`: what the response was asked.
    InputItems(ResponseId),
}

impl Call {
    pub fn method(&self) -> http::Method {
        match self {
            Self::Create(_) | Self::Cancel(_) => http::Method::POST,
            Self::Retrieve(_) | Self::InputItems(_) => http::Method::GET,
            Self::Delete(_) => http::Method::DELETE,
        }
    }

    /// The path under the backend's base URL. A response id is URL-safe by construction.
    pub fn path(&self) -> Cow<'static, str> {
        match self {
            Self::Create(api) => Cow::Borrowed(api.path()),
            Self::Retrieve(id) | Self::Delete(id) => Cow::Owned(format!("responses/{id}")),
            Self::Cancel(id) => Cow::Owned(format!("responses/{id}/cancel")),
            Self::InputItems(id) => Cow::Owned(format!("responses/{id}/input_items")),
        }
    }
}

/// One call to a backend, already in the upstream's terms.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub call: Call,
    /// The JSON body (model rewritten, destination fields removed); empty for a read.
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
    /// The client-facing model whose pool holds it.
    pub model: String,
    pub name: String,
    pub upstream_model: String,
    /// The APIs it serves.
    pub apis: Apis,
    /// The API flavour it speaks (the mock speaks OpenAI's).
    pub dialect: Dialect,
    transport: Transport,
    /// Routing state: weight, in-flight count, breaker, 429 cool-down.
    pub health: health::BackendHealth,
}

/// How a backend is reached: the inline HTTP/1.1 client (over TLS for `https://`), or the
/// in-process mock.
#[derive(Debug)]
enum Transport {
    Http1(http1::Http1Backend),
    Mock(mock::MockBackend),
}

impl Backend {
    /// Fails only when an `https://` backend's TLS settings cannot be built.
    pub fn new(
        model: &str,
        config: &BackendConfig,
        timeouts: &UpstreamConfig,
    ) -> Result<Self, TlsSetupError> {
        let transport = match &config.kind {
            BackendKind::Http {
                dialect,
                base_url,
                api_key,
                tls,
            } => {
                let url = reqwest::Url::parse(base_url).expect("invariant: base_url was validated");
                let tls = match url.scheme() {
                    "https" => {
                        let host = url.host_str().unwrap_or_default();
                        let host = host.trim_start_matches('[').trim_end_matches(']');
                        Some(tls::target(&config.name, host, tls.as_ref())?)
                    }
                    _ => None,
                };
                Transport::Http1(http1::Http1Backend::new(
                    &config.name,
                    &url,
                    dialect,
                    api_key.as_ref(),
                    tls,
                    timeouts,
                ))
            }
            BackendKind::Mock(script) => {
                Transport::Mock(mock::MockBackend::new(*script, &config.upstream_model))
            }
        };
        Ok(Self {
            model: model.to_owned(),
            name: config.name.clone(),
            upstream_model: config.upstream_model.clone(),
            apis: config.apis,
            dialect: match &config.kind {
                BackendKind::Http { dialect, .. } => dialect.clone(),
                BackendKind::Mock(_) => Dialect::OpenAi,
            },
            transport,
            health: health::BackendHealth::new(
                config,
                &timeouts.breaker,
                timeouts.first_byte_timeout,
            ),
        })
    }

    /// Sends the request; resolves when the response headers arrived with a 2xx status.
    pub async fn send(&self, request: UpstreamRequest) -> Result<ByteStream, GatewayError> {
        match &self.transport {
            Transport::Http1(backend) => backend.send(request).await,
            Transport::Mock(backend) => backend
                .respond(&request.call, &request.body)
                .map_err(|refusal| rejection::rejection(refusal.status, None, &refusal.body)),
        }
    }

    /// Closes pooled connections idle for longer than `upstream.pool_idle_timeout`.
    pub fn reap_idle_connections(&self) {
        match &self.transport {
            Transport::Http1(backend) => backend.reap_idle(),
            Transport::Mock(_) => {}
        }
    }

    /// Whether it serves `api`: itself, or through translation (chat completions to
    /// Anthropic's Messages API; the Responses API to a backend's OpenAI chat completions).
    pub fn serves(&self, api: Api) -> bool {
        self.apis.contains(api)
            || (api == Api::Responses
                && self.apis.contains(Api::Chat)
                && self.dialect != Dialect::Anthropic)
    }

    /// Whether it serves `api` as asked, untranslated (a Responses request to it is passed
    /// through, and its stored responses live there).
    pub fn native(&self, api: Api) -> bool {
        self.apis.contains(api) && !(api == Api::Chat && self.dialect == Dialect::Anthropic)
    }

    /// Whether the backend can produce `n` choices per request.
    pub fn supports_choices(&self, n: u64) -> bool {
        match &self.transport {
            Transport::Http1(_) => true,
            Transport::Mock(_) => n == 1,
        }
    }
}
