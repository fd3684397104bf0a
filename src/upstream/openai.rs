//! Backends that speak the OpenAI HTTP API, through one shared, pooled reqwest client.
//!
//! The client's `Authorization` header is never forwarded: the backend's own key is sent.
//! Redirects are not followed, and proxies from the environment are ignored.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};

use super::{ByteStream, UpstreamRequest};
use crate::config::{Secret, UpstreamConfig};
use crate::error::{GatewayError, TimeoutPhase};
use crate::openai::sanitize::upstream_message;

/// How much of an upstream error body is read to find its message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// How long reading an upstream error body may take.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// The one pooled client every OpenAI-kind backend shares.
pub fn http_client(timeouts: &UpstreamConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
}

#[derive(Debug)]
pub struct OpenAiBackend {
    client: reqwest::Client,
    url: String,
    authorization: Option<HeaderValue>,
}

impl OpenAiBackend {
    pub fn new(client: reqwest::Client, base_url: &str, api_key: Option<&Secret>) -> Self {
        let authorization = api_key.and_then(|key| {
            let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose())).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        Self {
            client,
            url: format!("{base_url}chat/completions"),
            authorization,
        }
    }

    pub async fn send(&self, request: UpstreamRequest) -> Result<ByteStream, GatewayError> {
        let accept = if request.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut call = self
            .client
            .post(&self.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, accept)
            .header("x-request-id", &*request.request_id)
            .body(request.body);
        if let Some(authorization) = &self.authorization {
            call = call.header(header::AUTHORIZATION, authorization.clone());
        }
        let response = call.send().await.map_err(send_error)?;
        if response.status().is_success() {
            return Ok(Box::pin(
                response
                    .bytes_stream()
                    .map(|chunk| chunk.map_err(body_error)),
            ));
        }
        Err(status_error(response).await)
    }
}

fn send_error(error: reqwest::Error) -> GatewayError {
    if error.is_timeout() {
        GatewayError::UpstreamTimeout {
            phase: TimeoutPhase::Connect,
        }
    } else {
        GatewayError::UpstreamUnavailable
    }
}

fn body_error(error: reqwest::Error) -> GatewayError {
    if error.is_timeout() {
        GatewayError::UpstreamTimeout {
            phase: TimeoutPhase::Idle,
        }
    } else {
        GatewayError::UpstreamDisconnected
    }
}

/// Maps a non-2xx upstream response. Request faults (4xx) pass through with a sanitised
/// message; the backend refusing the gateway's own credentials, redirects and 5xx are 502s.
async fn status_error(response: reqwest::Response) -> GatewayError {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let passes_through = status.is_client_error()
        && !matches!(
            status,
            StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::PROXY_AUTHENTICATION_REQUIRED
        );
    if !passes_through {
        return GatewayError::UpstreamFailed {
            status: status.as_u16(),
        };
    }
    let body = tokio::time::timeout(ERROR_BODY_TIMEOUT, read_capped(response))
        .await
        .unwrap_or_default();
    GatewayError::UpstreamRejected {
        status,
        message: upstream_message(&body).unwrap_or_else(|| {
            format!("the upstream model backend rejected the request ({status})")
        }),
        retry_after,
    }
}

async fn read_capped(response: reqwest::Response) -> Bytes {
    let mut body = BytesMut::new();
    let mut chunks = response.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        let room = MAX_ERROR_BODY_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_ERROR_BODY_BYTES {
            break;
        }
    }
    body.freeze()
}
