//! `https://` backends, through one shared, pooled reqwest client (rustls, HTTP/2 by ALPN).
//! Plain `http://` backends use the inline client in `http1/` instead.
//!
//! The client's `Authorization` header is never forwarded: the backend's own key is sent.
//! Redirects are not followed, and proxies from the environment are ignored.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderValue, header};

use super::rejection::{ERROR_BODY_TIMEOUT, MAX_ERROR_BODY_BYTES, passes_through, rejection};
use super::retry_after::requested_wait;
use super::{ByteStream, UpstreamRequest};
use crate::config::{Secret, UpstreamConfig};
use crate::error::{GatewayError, TimeoutPhase};

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
pub struct HttpsBackend {
    client: reqwest::Client,
    /// Ends in `/`: an API's path follows it.
    base_url: String,
    authorization: Option<HeaderValue>,
    max_retry_after: Duration,
}

impl HttpsBackend {
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        api_key: Option<&Secret>,
        max_retry_after: Duration,
    ) -> Self {
        let authorization = api_key.and_then(|key| {
            let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose())).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        Self {
            client,
            base_url: base_url.to_owned(),
            authorization,
            max_retry_after,
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
            .request(
                request.call.method(),
                format!("{}{}", self.base_url, request.call.path()),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, accept)
            .header("x-request-id", &*request.request_id)
            .body(request.body);
        if let Some(authorization) = &self.authorization {
            call = call.header(header::AUTHORIZATION, authorization.clone());
        }
        for (name, value) in request.trace.iter() {
            call = call.header(name, value.clone());
        }
        let response = call.send().await.map_err(send_error)?;
        if response.status().is_success() {
            return Ok(Box::pin(
                response
                    .bytes_stream()
                    .map(|chunk| chunk.map_err(body_error)),
            ));
        }
        Err(status_error(response, self.max_retry_after).await)
    }
}

/// Only a failure to connect means the backend never saw the request; anything later (a
/// connection that closed before the response head) may have been acted on.
fn send_error(error: reqwest::Error) -> GatewayError {
    match (error.is_connect(), error.is_timeout()) {
        (true, true) => GatewayError::UpstreamTimeout {
            phase: TimeoutPhase::Connect,
        },
        (true, false) => GatewayError::UpstreamUnavailable,
        (false, true) => GatewayError::UpstreamTimeout {
            phase: TimeoutPhase::FirstByte,
        },
        (false, false) => GatewayError::UpstreamDisconnected,
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

/// Maps a non-2xx upstream response, reading the body only when the client will see it.
async fn status_error(response: reqwest::Response, max_retry_after: Duration) -> GatewayError {
    let status = response.status();
    let headers = response.headers();
    let retry_after = requested_wait(
        headers.get(header::RETRY_AFTER).map(HeaderValue::as_bytes),
        headers.get("retry-after-ms").map(HeaderValue::as_bytes),
        SystemTime::now(),
        max_retry_after,
    );
    let body = if passes_through(status) {
        tokio::time::timeout(ERROR_BODY_TIMEOUT, read_capped(response))
            .await
            .unwrap_or_default()
    } else {
        Bytes::new()
    };
    rejection(status, retry_after, &body)
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
