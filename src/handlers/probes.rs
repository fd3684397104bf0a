//! `/healthz` (the process is alive) and `/readyz` (it should get traffic: not draining, and
//! some model has a usable backend).

use http::{Response, StatusCode};

use super::json::json_response;
use crate::body::Body;
use crate::state::AppState;

pub fn health() -> Response<Body> {
    json_response(r#"{"status":"ok"}"#)
}

pub fn ready(state: &AppState) -> Response<Body> {
    let (status, body) = if state.drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else if !state.models.any_usable() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"no_usable_backend"}"#,
        )
    } else {
        (StatusCode::OK, r#"{"status":"ready"}"#)
    };
    let mut response = json_response(body);
    *response.status_mut() = status;
    response
}
