//! The separate metrics listener (`telemetry.metrics_listen`): `GET /metrics` and `GET /usage`
//! and nothing else, no key, so neither need be reachable where the API is.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::ACCEPT_ERROR_BACKOFF;
use crate::body::Body;
use crate::error::GatewayError;
use crate::handlers::{probes, usage};
use crate::state::AppState;

/// Accepts until the task is aborted (the server does so when it stops).
pub async fn serve(listener: TcpListener, state: Arc<AppState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(super::METRICS_HEADER_TIMEOUT)
            .serve_connection(
                TokioIo::new(stream),
                service_fn({
                    let state = state.clone();
                    move |request| answer(request, state.clone())
                }),
            );
        #[expect(
            clippy::disallowed_methods,
            reason = "a scrape connection lives as long as the scraper keeps it; the header \\
                      timeout bounds an idle one"
        )]
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    state: Arc<AppState>,
) -> Result<Response<Body>, Infallible> {
    let read = request.method() == Method::GET || request.method() == Method::HEAD;
    if read && state.metrics && request.uri().path() == "/metrics" {
        return Ok(probes::metrics());
    }
    if read && request.uri().path() == "/usage" {
        return Ok(usage::usage(request.uri(), &state)
            .await
            .unwrap_or_else(GatewayError::into_response));
    }
    Ok(GatewayError::UnknownRoute {
        method: request.method().to_string(),
        path: request.uri().path().chars().take(256).collect(),
    }
    .into_response())
}
