//! sluicegate: an OpenAI-compatible LLM API gateway.
//!
//! # The request path
//!
//! ```text
//! server/      accept (hyper-util auto: h1 + h2c), header timeout, client-stall timeout
//! routes       request id, concurrency permit (server/admission), RequestGuard, dispatch
//! handlers/    chat: auth -> read body (capped) -> openai::request parse + validate
//!              -> limits admit -> upstream::retry (pool pick, breakers, retries, fallbacks,
//!              hedging; all before the first byte) -> sse::relay or JSON
//! settle       the guard drops with the response body: limits settled, permit released,
//!              access log written
//! ```
//!
//! # Module map
//!
//! - [`config`]: YAML file -> validated `Config`; the built-in development config.
//! - [`server`]: accept loop, admission (503 at the cap), graceful drain.
//! - [`routes`], [`handlers`]: (method, path) -> handler; chat, models, probes.
//! - [`auth`]: `Authorization: Bearer` -> `Principal` via SHA-256 digests.
//! - [`limits`]: requests/min, tokens/min and concurrent streams per key (token buckets).
//! - [`openai`]: the wire format: request validation, chunk and response rewriting, errors.
//! - [`sse`]: decoder, encoder and the pull-based relay.
//! - [`upstream`]: backends (the inline HTTP/1.1 client, over rustls for TLS; the mock), pools with circuit
//!   breakers, and the attempt loop.
//! - [`affinity`]: response id -> the backend that stored it (Redis, or in process).
//! - [`settle`]: the request guard: settlement, access log, request metrics and spans.
//! - [`telemetry`]: logs, Prometheus metrics, OTLP traces, per-key usage totals.
//! - [`error`]: `GatewayError`, the one error every stage returns.
//!
//! # Invariants
//!
//! - `sse/` knows nothing about OpenAI; `openai/` does no I/O; `config/` does not import `http`.
//! - Only `error.rs` renders error bodies, through `into_response`, `to_sse_event` or
//!   `to_responses_event`.
//! - Nothing between upstream and client is unbounded: the relay is pulled by hyper, and it
//!   pulls the upstream only when it needs bytes.
//! - A response body owns its request's guard, so settlement happens however the request ends.

pub mod affinity;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod forwarded;
pub mod handlers;
pub mod limits;
pub mod openai;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod settle;
pub mod sse;
pub mod state;
pub mod table;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
pub use error::GatewayError;
pub use state::BuildError;

/// A gateway built from a configuration, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    state: Arc<state::AppState>,
}

impl Gateway {
    pub fn build(config: &Config) -> Result<Self, BuildError> {
        // Installed before anything records, so no early series is lost.
        if config.telemetry.metrics {
            telemetry::metrics::exporter();
        }
        Ok(Self {
            state: state::AppState::build(config)?,
        })
    }

    /// Serves `listener` until `shutdown` resolves, then drains open requests for the grace
    /// period and returns. With `telemetry.metrics_listen` set, `/metrics` is served on that
    /// address, bound here.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let metrics = match self.state.metrics_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr).await?;
                tracing::info!(addr = %listener.local_addr()?, "metrics listening");
                Some(listener)
            }
            None => None,
        };
        self.serve_with_metrics(listener, metrics, shutdown).await
    }

    /// As `serve`, with the metrics listener bound by the caller (`None`: `/metrics` on the
    /// main listener).
    pub async fn serve_with_metrics(
        self,
        listener: TcpListener,
        metrics: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        server::serve(listener, metrics, self.state, shutdown).await
    }
}
