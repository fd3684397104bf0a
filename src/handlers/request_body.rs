//! Reading a request body: at most `server.max_body_bytes`, whatever `Content-Length` claimed,
//! within `server.body_read_timeout`. A body refused for its size is not simply dropped: the
//! rest is read and discarded for a bounded time and size (nginx's lingering close), so a
//! client that sends its whole body before reading the answer gets the 413 instead of a reset
//! connection and a broken pipe.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{Instant, timeout_at};

use crate::error::GatewayError;

/// The longest a refused body is read on after its 413.
const LINGER_TIME: Duration = Duration::from_secs(10);
/// The most of a refused body read on after its 413.
const LINGER_BYTES: u64 = 64 * 1024 * 1024;

/// Reads the whole body, or fails with a 413, a 408 or a 400.
pub async fn read_capped(
    headers: &HeaderMap,
    mut body: Incoming,
    limit: usize,
    read_timeout: Duration,
) -> Result<Bytes, GatewayError> {
    let too_large = GatewayError::BodyTooLarge { limit_bytes: limit };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        linger(body);
        return Err(too_large);
    }
    let deadline = Instant::now() + read_timeout;
    let mut collected = BytesMut::new();
    loop {
        let frame = match timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(GatewayError::BodyTimeout {
                    timeout: read_timeout,
                });
            }
            Ok(None) => return Ok(collected.freeze()),
            Ok(Some(Err(_))) => {
                return Err(GatewayError::InvalidRequest {
                    message: "the request body could not be read".into(),
                    param: None,
                    code: "invalid_body",
                });
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limit {
                linger(body);
                return Err(too_large);
            }
            collected.extend_from_slice(&data);
        }
    }
}

/// Reads and discards what is left of `body` in the background while the 413 is written.
fn linger(mut body: Incoming) {
    #[expect(
        clippy::disallowed_methods,
        reason = "a refused body is drained after its response; bounded by LINGER_TIME and \
                  LINGER_BYTES"
    )]
    tokio::spawn(async move {
        let drain = async {
            let mut read = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                read = read.saturating_add(frame.data_ref().map_or(0, |d| d.len() as u64));
                if read > LINGER_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}
