//! How a non-2xx upstream answer is shown to the client, whatever transport carried it.
//! Request faults (4xx) pass through with a sanitised message; the backend refusing the
//! gateway's own credentials, redirects and 5xx become 502s.

use std::time::Duration;

use http::StatusCode;

use crate::error::GatewayError;
use crate::openai::sanitize::upstream_message;

/// How much of an upstream error body is read to find its message.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// How long reading an upstream error body may take.
pub const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the client gets to see this upstream status (and so its error body).
pub fn passes_through(status: StatusCode) -> bool {
    status.is_client_error()
        && !matches!(
            status,
            StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::PROXY_AUTHENTICATION_REQUIRED
        )
}

/// The error for an upstream answer with `status`, the wait it asked for (already bounded, see
/// `retry_after`) and (for statuses that pass through) the start of its body.
pub fn rejection(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> GatewayError {
    if !passes_through(status) {
        return GatewayError::UpstreamFailed {
            status: status.as_u16(),
        };
    }
    GatewayError::UpstreamRejected {
        status,
        message: upstream_message(body).unwrap_or_else(|| {
            format!("the upstream model backend rejected the request ({status})")
        }),
        retry_after,
    }
}
