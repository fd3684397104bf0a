//! `/healthz` (the process is alive), `/readyz` (it should get traffic: not draining, some
//! model has a usable backend, and the limiter can decide; Redis state is reported) and
//! `/metrics` (Prometheus).

use std::sync::atomic::Ordering;

use http::{HeaderValue, Response, StatusCode, header};

use super::json::json_response;
use crate::body::{Body, full};
use crate::state::AppState;
use crate::telemetry;

/// The Prometheus text exposition; no key needed, like the probes.
pub fn metrics() -> Response<Body> {
    let mut response = Response::new(full(telemetry::metrics::render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

pub fn health() -> Response<Body> {
    json_response(r#"{"status":"ok"}"#)
}

/// Ready unless draining, still loading tokenizers, or without a usable backend. Redis being down is reported but fails
/// readiness only with `on_error: deny`, where it means every request is refused.
pub fn ready(state: &AppState) -> Response<Body> {
    let redis = state.limiter.redis_up();
    let status = if state.drain.is_draining() {
        "draining"
    } else if !state.tokenizers_warm.load(Ordering::Relaxed) {
        "warming"
    } else if !state.models.any_usable() {
        "no_usable_backend"
    } else if redis == Some(false) && state.limiter.denies_without_redis() {
        "redis_unavailable"
    } else {
        "ready"
    };
    let redis = match redis {
        None => "",
        Some(true) => r#","redis":"up""#,
        Some(false) => r#","redis":"down""#,
    };
    let mut response = json_response(format!(r#"{{"status":"{status}"{redis}}}"#));
    if status != "ready" {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    response
}
