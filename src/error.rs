//! `GatewayError`: every failure a client can see, with its status, OpenAI type, code and param.
//!
//! Variants say what the *client* may learn; internal causes are never rendered. Errors are
//! rendered in exactly two places: [`GatewayError::into_response`] before the first byte of a
//! response and [`GatewayError::to_sse_event`] after it.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{Body, full};
use crate::limits::{LimitKind, Refusal};
use crate::openai::error_body::{ErrorBody, ErrorDetail, ErrorEvent};
use crate::sse::relay::RelayError;
use crate::upstream::breaker::Outcome;

/// Which phase of an upstream call ran out of time; each is a distinct error and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// The TCP/TLS connection to the backend was not established in time.
    Connect,
    /// The backend accepted the request but produced no response or first event in time.
    FirstByte,
    /// The backend went silent between two chunks of a started response.
    Idle,
    /// The whole request exceeded its total deadline.
    Total,
}

/// Who caused a failure; feeds the access log and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Upstream,
    Gateway,
}

/// Every failure the gateway reports to a client.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    #[error("we could not parse the JSON body of your request: {detail}")]
    InvalidJson { detail: String },
    #[error("unsupported content-type; this endpoint only accepts 'application/json'")]
    UnsupportedContentType,
    #[error("the request body was not received within {}s", .timeout.as_secs())]
    BodyTimeout { timeout: Duration },
    #[error("request body exceeds the limit of {limit_bytes} bytes")]
    BodyTooLarge { limit_bytes: usize },
    /// No such model, or (with `api`) no backend of it serves that API, as OpenAI answers for a
    /// model that lacks an endpoint.
    #[error("{}", match .api {
        None => format!("the model '{model}' does not exist or you do not have access to it"),
        Some(api) => format!("the model '{model}' is not available on /v1/{api}"),
    })]
    ModelNotFound {
        model: String,
        api: Option<&'static str>,
    },
    #[error("missing API key; send it as 'Authorization: Bearer <key>'")]
    MissingApiKey,
    #[error("incorrect API key provided")]
    InvalidApiKey,
    /// A bearer JWT that was refused; the reason never quotes the token.
    #[error("invalid bearer token: {0}")]
    InvalidToken(crate::auth::TokenRefusal),
    #[error("this API key is not allowed to use the model '{model}'")]
    ModelNotAllowed { model: String },
    #[error("unknown URL: {method} {path}")]
    UnknownRoute { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        method: String,
        path: String,
        /// The methods the route answers (the `Allow` header).
        allow: &'static str,
    },
    #[error("{}", rate_limit_message(.0))]
    RateLimited(Box<Refusal>),
    #[error("the rate limiter is unavailable; retry shortly")]
    LimiterUnavailable,
    /// No stored response of this id was made for the caller's key (or it expired).
    #[error("Response with id '{id}' not found.")]
    ResponseNotFound { id: String },
    /// Where stored responses live cannot be read (Redis did not answer).
    #[error("stored responses cannot be located right now; retry shortly")]
    AffinityUnavailable,
    /// The usage totals could not be read (Redis did not answer).
    #[error("usage totals are unavailable; retry shortly")]
    UsageUnavailable,
    /// Revocations cannot be checked (Redis unreachable, `redis.on_error: deny`).
    #[error("credentials cannot be checked right now; retry shortly")]
    CredentialsUnavailable,
    #[error("the gateway is at its concurrent request limit; retry shortly")]
    Overloaded { retry_after: Duration },
    #[error("the gateway is shutting down; retry on another instance")]
    ShuttingDown,
    /// The client did not take the stream's next bytes within the stall timeout.
    #[error("the stream was not read for {}s and was ended", .timeout.as_secs())]
    ClientStalled { timeout: Duration },
    #[error("the upstream model backend could not be reached")]
    UpstreamUnavailable,
    #[error("no backend of this model is available right now; retry shortly")]
    NoUsableBackend,
    #[error("the upstream model backend timed out ({})", phase_text(*.phase))]
    UpstreamTimeout { phase: TimeoutPhase },
    #[error("the upstream model backend failed with status {status}")]
    UpstreamFailed { status: u16 },
    /// A 4xx from the backend caused by the request; the message is sanitised before it is kept.
    #[error("{message}")]
    UpstreamRejected {
        status: StatusCode,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("the upstream connection closed before the response was complete")]
    UpstreamDisconnected,
    #[error("the upstream model backend sent a malformed response: {detail}")]
    UpstreamProtocol { detail: &'static str },
    /// The upstream's whole answer was larger than the gateway keeps: the request asked for
    /// that much (many inputs, large vectors), so it says nothing about the backend's health.
    #[error("the upstream's answer exceeded the gateway's limit of {limit_bytes} bytes")]
    UpstreamAnswerTooLarge { limit_bytes: usize },
    /// An `error` object inside a 200 stream (vLLM, llama.cpp); the message is sanitised.
    /// `request_fault` when the error's own code or type blames the request (a 4xx).
    #[error("the upstream model backend reported an error: {message}")]
    UpstreamInBand {
        message: String,
        request_fault: bool,
    },
}

impl GatewayError {
    pub fn invalid(param: &str, code: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param.to_owned()),
            code,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } | Self::InvalidJson { .. } => StatusCode::BAD_REQUEST,
            Self::UnsupportedContentType => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } | Self::ClientStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::ModelNotFound { .. }
            | Self::ResponseNotFound { .. }
            | Self::UnknownRoute { .. } => StatusCode::NOT_FOUND,
            Self::MissingApiKey | Self::InvalidApiKey | Self::InvalidToken(_) => {
                StatusCode::UNAUTHORIZED
            }
            Self::ModelNotAllowed { .. } => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded { .. }
            | Self::ShuttingDown
            | Self::LimiterUnavailable
            | Self::UsageUnavailable
            | Self::AffinityUnavailable
            | Self::CredentialsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::NoUsableBackend => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamRejected { status, .. } => *status,
            Self::UpstreamDisconnected
            | Self::UpstreamProtocol { .. }
            | Self::UpstreamAnswerTooLarge { .. }
            | Self::UpstreamInBand { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The OpenAI `type` field.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. }
            | Self::InvalidJson { .. }
            | Self::UnsupportedContentType
            | Self::BodyTooLarge { .. }
            | Self::BodyTimeout { .. }
            | Self::ClientStalled { .. }
            | Self::ModelNotFound { .. }
            | Self::ResponseNotFound { .. }
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::InvalidToken(_)
            | Self::UnknownRoute { .. }
            | Self::MethodNotAllowed { .. } => "invalid_request_error",
            Self::ModelNotAllowed { .. } => "permission_error",
            Self::RateLimited(refusal) => match refusal.kind {
                LimitKind::Requests | LimitKind::Streams => "requests",
                LimitKind::Tokens => "tokens",
            },
            Self::Overloaded { .. }
            | Self::ShuttingDown
            | Self::LimiterUnavailable
            | Self::UsageUnavailable
            | Self::AffinityUnavailable
            | Self::CredentialsUnavailable => "server_error",
            Self::UpstreamUnavailable
            | Self::NoUsableBackend
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamFailed { .. }
            | Self::UpstreamDisconnected
            | Self::UpstreamProtocol { .. }
            | Self::UpstreamAnswerTooLarge { .. }
            | Self::UpstreamInBand { .. } => "upstream_error",
            Self::UpstreamRejected { status, .. } => {
                if *status == StatusCode::TOO_MANY_REQUESTS {
                    "rate_limit_error"
                } else {
                    "invalid_request_error"
                }
            }
        }
    }

    /// The OpenAI `code` field.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::InvalidRequest { code, .. } => Some(code),
            Self::InvalidJson { .. } => Some("invalid_json"),
            Self::UnsupportedContentType => Some("unsupported_content_type"),
            Self::BodyTooLarge { .. } => Some("request_too_large"),
            Self::BodyTimeout { .. } => Some("request_timeout"),
            Self::ClientStalled { .. } => Some("client_stall_timeout"),
            Self::ModelNotFound { .. } => Some("model_not_found"),
            Self::MissingApiKey | Self::InvalidApiKey | Self::InvalidToken(_) => {
                Some("invalid_api_key")
            }
            Self::ModelNotAllowed { .. } => Some("model_not_allowed"),
            Self::UnknownRoute { .. } => Some("unknown_url"),
            Self::MethodNotAllowed { .. } => Some("method_not_allowed"),
            Self::RateLimited(_) => Some("rate_limit_exceeded"),
            Self::Overloaded { .. } => Some("overloaded"),
            Self::LimiterUnavailable => Some("limiter_unavailable"),
            Self::UsageUnavailable => Some("usage_unavailable"),
            Self::AffinityUnavailable => Some("affinity_unavailable"),
            Self::ResponseNotFound { .. } => None,
            Self::CredentialsUnavailable => Some("credentials_unavailable"),
            Self::ShuttingDown => Some("shutting_down"),
            Self::UpstreamUnavailable => Some("upstream_unavailable"),
            Self::NoUsableBackend => Some("no_usable_backend"),
            Self::UpstreamTimeout { phase } => Some(match phase {
                TimeoutPhase::Connect => "upstream_connect_timeout",
                TimeoutPhase::FirstByte => "upstream_first_byte_timeout",
                TimeoutPhase::Idle => "upstream_idle_timeout",
                TimeoutPhase::Total => "upstream_total_timeout",
            }),
            Self::UpstreamFailed { .. } => Some("upstream_failed"),
            Self::UpstreamRejected { .. } => None,
            Self::UpstreamDisconnected => Some("upstream_disconnected"),
            Self::UpstreamProtocol { .. } => Some("upstream_protocol_error"),
            Self::UpstreamAnswerTooLarge { .. } => Some("upstream_answer_too_large"),
            Self::UpstreamInBand { .. } => Some("upstream_error"),
        }
    }

    /// The OpenAI `param` field: the request field at fault, when one is.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { param, .. } => param.as_deref(),
            Self::ModelNotFound { .. } | Self::ModelNotAllowed { .. } => Some("model"),
            Self::InvalidJson { .. }
            | Self::UnsupportedContentType
            | Self::BodyTooLarge { .. }
            | Self::BodyTimeout { .. }
            | Self::ClientStalled { .. }
            | Self::ResponseNotFound { .. }
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::InvalidToken(_)
            | Self::UnknownRoute { .. }
            | Self::MethodNotAllowed { .. }
            | Self::RateLimited(_)
            | Self::Overloaded { .. }
            | Self::ShuttingDown
            | Self::LimiterUnavailable
            | Self::UsageUnavailable
            | Self::AffinityUnavailable
            | Self::CredentialsUnavailable
            | Self::UpstreamUnavailable
            | Self::NoUsableBackend
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamFailed { .. }
            | Self::UpstreamRejected { .. }
            | Self::UpstreamDisconnected
            | Self::UpstreamProtocol { .. }
            | Self::UpstreamAnswerTooLarge { .. }
            | Self::UpstreamInBand { .. } => None,
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            // The request asked for an answer that large.
            Self::UpstreamAnswerTooLarge { .. } => Blame::Client,
            Self::InvalidRequest { .. }
            | Self::InvalidJson { .. }
            | Self::UnsupportedContentType
            | Self::BodyTooLarge { .. }
            | Self::BodyTimeout { .. }
            | Self::ClientStalled { .. }
            | Self::ModelNotFound { .. }
            | Self::ResponseNotFound { .. }
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::InvalidToken(_)
            | Self::ModelNotAllowed { .. }
            | Self::UnknownRoute { .. }
            | Self::MethodNotAllowed { .. }
            | Self::RateLimited(_)
            | Self::UpstreamRejected { .. } => Blame::Client,
            Self::Overloaded { .. }
            | Self::ShuttingDown
            | Self::LimiterUnavailable
            | Self::UsageUnavailable
            | Self::AffinityUnavailable
            | Self::CredentialsUnavailable => Blame::Gateway,
            Self::UpstreamUnavailable
            | Self::NoUsableBackend
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamFailed { .. }
            | Self::UpstreamDisconnected
            | Self::UpstreamProtocol { .. }
            | Self::UpstreamInBand { .. } => Blame::Upstream,
        }
    }

    /// A short, low-cardinality name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::InvalidJson { .. } => "invalid_json",
            Self::UnsupportedContentType => "unsupported_content_type",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::ClientStalled { .. } => "client_stalled",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::InvalidToken(_) => "invalid_token",
            Self::ModelNotAllowed { .. } => "model_not_allowed",
            Self::UnknownRoute { .. } => "unknown_route",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::RateLimited(refusal) => match refusal.kind {
                LimitKind::Requests => "rate_limited_requests",
                LimitKind::Tokens => "rate_limited_tokens",
                LimitKind::Streams => "rate_limited_streams",
            },
            Self::Overloaded { .. } => "overloaded",
            Self::LimiterUnavailable => "limiter_unavailable",
            Self::UsageUnavailable => "usage_unavailable",
            Self::AffinityUnavailable => "affinity_unavailable",
            Self::ResponseNotFound { .. } => "response_not_found",
            Self::CredentialsUnavailable => "credentials_unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::NoUsableBackend => "no_usable_backend",
            Self::UpstreamTimeout { phase } => match phase {
                TimeoutPhase::Connect => "upstream_connect_timeout",
                TimeoutPhase::FirstByte => "upstream_first_byte_timeout",
                TimeoutPhase::Idle => "upstream_idle_timeout",
                TimeoutPhase::Total => "upstream_total_timeout",
            },
            Self::UpstreamFailed { .. } => "upstream_failed",
            Self::UpstreamRejected { .. } => "upstream_rejected",
            Self::UpstreamDisconnected => "upstream_disconnected",
            Self::UpstreamProtocol { .. } => "upstream_protocol",
            Self::UpstreamAnswerTooLarge { .. } => "upstream_answer_too_large",
            Self::UpstreamInBand { .. } => "upstream_in_band",
        }
    }

    /// How long a client should wait before retrying, when the error says so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::UpstreamAnswerTooLarge { .. } => None,
            Self::Overloaded { retry_after } => Some(*retry_after),
            Self::RateLimited(refusal) => (!refusal.never_fits).then_some(refusal.retry_after),
            Self::UpstreamRejected { retry_after, .. } => *retry_after,
            Self::ShuttingDown
            | Self::LimiterUnavailable
            | Self::UsageUnavailable
            | Self::AffinityUnavailable
            | Self::CredentialsUnavailable
            | Self::NoUsableBackend => Some(Duration::from_secs(1)),
            Self::InvalidRequest { .. }
            | Self::InvalidJson { .. }
            | Self::UnsupportedContentType
            | Self::BodyTooLarge { .. }
            | Self::BodyTimeout { .. }
            | Self::ClientStalled { .. }
            | Self::ModelNotFound { .. }
            | Self::ResponseNotFound { .. }
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::InvalidToken(_)
            | Self::ModelNotAllowed { .. }
            | Self::UnknownRoute { .. }
            | Self::MethodNotAllowed { .. }
            | Self::UpstreamUnavailable
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamFailed { .. }
            | Self::UpstreamDisconnected
            | Self::UpstreamProtocol { .. }
            | Self::UpstreamInBand { .. } => None,
        }
    }

    /// Whether another backend may be tried. Only asked before the first byte reached the
    /// client: after it, a retry would duplicate output.
    pub fn is_retryable_before_first_byte(&self) -> bool {
        match self {
            // Another backend would answer as much.
            Self::UpstreamAnswerTooLarge { .. } => false,
            Self::UpstreamUnavailable
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamFailed { .. }
            | Self::UpstreamDisconnected
            | Self::UpstreamProtocol { .. } => true,
            Self::UpstreamRejected { status, .. } => *status == StatusCode::TOO_MANY_REQUESTS,
            Self::InvalidRequest { .. }
            | Self::InvalidJson { .. }
            | Self::UnsupportedContentType
            | Self::BodyTimeout { .. }
            | Self::ClientStalled { .. }
            | Self::BodyTooLarge { .. }
            | Self::ModelNotFound { .. }
            | Self::ResponseNotFound { .. }
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::InvalidToken(_)
            | Self::ModelNotAllowed { .. }
            | Self::UnknownRoute { .. }
            | Self::MethodNotAllowed { .. }
            | Self::RateLimited(_)
            | Self::LimiterUnavailable
            | Self::UsageUnavailable
            | Self::AffinityUnavailable
            | Self::CredentialsUnavailable
            | Self::Overloaded { .. }
            | Self::ShuttingDown
            | Self::NoUsableBackend
            | Self::UpstreamInBand { .. } => false,
        }
    }

    /// Whether the backend may have acted on the request before this failure: it was sent
    /// whole and not refused outright (a connection that never opened, or a 429, did nothing).
    pub fn may_have_been_acted_on(&self) -> bool {
        match self {
            Self::UpstreamUnavailable
            | Self::UpstreamTimeout {
                phase: TimeoutPhase::Connect,
            } => false,
            Self::UpstreamRejected { status, .. } => *status != StatusCode::TOO_MANY_REQUESTS,
            _ => true,
        }
    }

    /// What this error says about the backend that produced it, for its circuit breaker.
    pub fn breaker_outcome(&self) -> Outcome {
        match self {
            Self::UpstreamAnswerTooLarge { .. } => Outcome::Neutral,
            Self::UpstreamUnavailable
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamFailed { .. }
            | Self::UpstreamDisconnected
            | Self::UpstreamProtocol { .. } => Outcome::Failure,
            Self::UpstreamInBand { request_fault, .. } => {
                if *request_fault {
                    Outcome::Neutral
                } else {
                    Outcome::Failure
                }
            }
            Self::UpstreamRejected { .. }
            | Self::InvalidRequest { .. }
            | Self::InvalidJson { .. }
            | Self::UnsupportedContentType
            | Self::BodyTimeout { .. }
            | Self::ClientStalled { .. }
            | Self::BodyTooLarge { .. }
            | Self::ModelNotFound { .. }
            | Self::ResponseNotFound { .. }
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::InvalidToken(_)
            | Self::ModelNotAllowed { .. }
            | Self::UnknownRoute { .. }
            | Self::MethodNotAllowed { .. }
            | Self::RateLimited(_)
            | Self::LimiterUnavailable
            | Self::UsageUnavailable
            | Self::AffinityUnavailable
            | Self::CredentialsUnavailable
            | Self::Overloaded { .. }
            | Self::ShuttingDown
            | Self::NoUsableBackend => Outcome::Neutral,
        }
    }

    /// What this error says about a backend whose answer had already begun: the same, except
    /// that the request's own total deadline running out during a long answer is not the
    /// backend's fault.
    pub fn breaker_outcome_mid_answer(&self) -> Outcome {
        match self {
            Self::UpstreamTimeout {
                phase: TimeoutPhase::Total,
            } => Outcome::Neutral,
            other => other.breaker_outcome(),
        }
    }

    /// How long to keep routing away from a backend that answered this: an upstream 429 is
    /// busy, not broken, so it cools down for its `retry-after` (1 s when it gave none).
    pub fn upstream_cooldown(&self) -> Option<Duration> {
        match self {
            Self::UpstreamRejected {
                status,
                retry_after,
                ..
            } if *status == StatusCode::TOO_MANY_REQUESTS => {
                Some(retry_after.unwrap_or(Duration::from_secs(1)))
            }
            _ => None,
        }
    }

    /// The JSON error body, `{"error":{"message","type","param","code"}}`.
    pub fn to_json(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: ErrorDetail {
                message: &self.to_string(),
                r#type: self.error_type(),
                param: self.param(),
                code: self.code(),
            },
        };
        serde_json::to_vec(&body).expect("invariant: the error body serialises")
    }

    /// Renders the error as a complete HTTP response (before any byte was sent).
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(full(self.to_json()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(wait) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(wait_secs(wait)));
            headers.insert("retry-after-ms", HeaderValue::from(wait_millis(wait)));
        }
        if let Self::RateLimited(refusal) = &self {
            crate::limits::headers::put(headers, &refusal.state);
            if refusal.never_fits {
                headers.insert("x-should-retry", HeaderValue::from_static("false"));
            }
        }
        if let Self::MethodNotAllowed { allow, .. } = &self {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }

    /// Renders the error as the final SSE event of a stream that already started. No `[DONE]`
    /// follows it, so the SDKs raise instead of treating a cut-short answer as complete.
    pub fn to_sse_event(&self) -> Bytes {
        let json = self.to_json();
        let mut event = BytesMut::with_capacity(json.len() + 8);
        event.put_slice(b"data: ");
        event.put_slice(&json);
        event.put_slice(b"\n\n");
        event.freeze()
    }
}

impl GatewayError {
    /// Renders the error as the last event of a Responses API stream that already started:
    /// `event: error` in that API's shape (`type`, `code`, `message`, `param`, numbered after
    /// the events before it), with the `error` object the OpenAI SDKs raise on beside it.
    pub fn to_responses_event(&self, sequence_number: u64) -> Bytes {
        let message = self.to_string();
        let code = Some(self.code().unwrap_or(self.kind()));
        let event = ErrorEvent {
            r#type: "error",
            code,
            message: &message,
            param: self.param(),
            sequence_number,
            error: ErrorDetail {
                message: &message,
                r#type: self.error_type(),
                param: self.param(),
                code,
            },
        };
        let json = serde_json::to_vec(&event).expect("invariant: the error event serialises");
        let mut out = BytesMut::with_capacity(json.len() + 24);
        out.put_slice(b"event: error\ndata: ");
        out.put_slice(&json);
        out.put_slice(b"\n\n");
        out.freeze()
    }
}

impl From<RelayError> for GatewayError {
    fn from(error: RelayError) -> Self {
        match error {
            RelayError::FirstByteTimeout => Self::UpstreamTimeout {
                phase: TimeoutPhase::FirstByte,
            },
            RelayError::IdleTimeout => Self::UpstreamTimeout {
                phase: TimeoutPhase::Idle,
            },
            RelayError::TotalTimeout => Self::UpstreamTimeout {
                phase: TimeoutPhase::Total,
            },
            RelayError::Decode(_) => Self::UpstreamProtocol {
                detail: "a stream event exceeded the size limit",
            },
            RelayError::UpstreamEnded => Self::UpstreamDisconnected,
            RelayError::Stopped => Self::ShuttingDown,
        }
    }
}

fn rate_limit_message(refusal: &Refusal) -> String {
    let limit = refusal.limit;
    let retry = crate::limits::headers::reset_text(refusal.retry_after);
    match refusal.kind {
        LimitKind::Tokens if refusal.never_fits => format!(
            "this request reserves more tokens (prompt plus max_tokens) than the whole limit of \
             {limit} tokens per minute; lower max_tokens or shorten the prompt"
        ),
        LimitKind::Requests => {
            format!("rate limit reached for requests per minute (limit {limit}); retry in {retry}")
        }
        LimitKind::Tokens => {
            format!("rate limit reached for tokens per minute (limit {limit}); retry in {retry}")
        }
        LimitKind::Streams => format!(
            "too many concurrent requests for this key (limit {limit}); retry when one ends"
        ),
    }
}

fn phase_text(phase: TimeoutPhase) -> &'static str {
    match phase {
        TimeoutPhase::Connect => "connect",
        TimeoutPhase::FirstByte => "no first token in time",
        TimeoutPhase::Idle => "stalled between chunks",
        TimeoutPhase::Total => "total deadline exceeded",
    }
}

/// Whole seconds for `retry-after`, rounded up so a client never retries early.
fn wait_secs(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

fn wait_millis(wait: Duration) -> u64 {
    (wait.as_millis() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let rows = [(1, 1), (999, 1), (1000, 1), (1001, 2), (2500, 3)];
        for (millis, secs) in rows {
            assert_eq!(
                wait_secs(Duration::from_millis(millis)),
                secs,
                "{millis} ms"
            );
        }
    }

    #[test]
    fn a_responses_error_event_raises_in_both_sdks() {
        let event = GatewayError::UpstreamTimeout {
            phase: TimeoutPhase::Idle,
        }
        .to_responses_event(9);
        let text = std::str::from_utf8(&event).expect("UTF-8");
        let data = text
            .strip_prefix("event: error\ndata: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .expect("one typed event");
        let data: serde_json::Value = serde_json::from_str(data).expect("JSON");
        assert_eq!(data["type"], "error");
        assert_eq!(data["sequence_number"], 9);
        assert_eq!(data["code"], "upstream_idle_timeout");
        assert_eq!(
            data["code"], data["error"]["code"],
            "Python raises on `error`"
        );
        assert!(
            data["message"]
                .as_str()
                .is_some_and(|m| m.contains("timed out"))
        );
    }

    #[test]
    fn sse_event_is_one_data_line_with_the_openai_error_shape() {
        let event = GatewayError::UpstreamUnavailable.to_sse_event();
        let text = std::str::from_utf8(&event).expect("event is UTF-8");
        let json = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .expect("event is one data line");
        let value: serde_json::Value = serde_json::from_str(json).expect("data is JSON");
        assert_eq!(value["error"]["code"], "upstream_unavailable");
        assert_eq!(value["error"]["type"], "upstream_error");
        assert!(value["error"]["param"].is_null());
    }
}
