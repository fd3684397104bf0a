//! The attempt loop: a request may go to another backend of its model, then to the model's
//! fallbacks, only until an upstream answered with a success status. After that, bytes may
//! reach the client, and a retry would duplicate output, so a later failure is the stream's
//! final error event instead (the relay's job).
//!
//! Each attempt waits at most `first_byte_timeout` for the response head; pauses between
//! attempts back off exponentially with jitter; everything stays within the request's total
//! deadline. A backend that answered 429 cools down for its `retry-after` and the next attempt
//! goes elsewhere.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, sleep_until, timeout_at};

use super::pool::{Attempt, Pool};
use super::{Backend, ByteStream, UpstreamRequest};
use crate::error::{GatewayError, TimeoutPhase};

/// Where and how a request may be sent.
#[derive(Debug)]
pub struct Plan {
    /// The requested model's pool, then its fallbacks'.
    pub pools: Vec<Arc<Pool>>,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    pub first_byte_timeout: Duration,
    pub deadline: Instant,
}

/// A successful upstream answer and the backend that gave it.
pub struct Routed {
    pub body: ByteStream,
    pub backend: Arc<Backend>,
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("backend", &self.backend.name)
            .finish_non_exhaustive()
    }
}

/// Sends the request built by `request_for` (the body names each backend's own model) until a
/// backend answers with a success status.
pub async fn send(
    plan: Plan,
    request_for: impl Fn(&Backend) -> UpstreamRequest,
) -> Result<Routed, GatewayError> {
    let mut last_error = None;
    let mut attempts = 0u32;
    for pool in &plan.pools {
        let mut tried = Vec::new();
        while tried.len() < plan.max_attempts as usize {
            let attempt = match pool.acquire(&tried) {
                Ok(attempt) => attempt,
                Err(unavailable) => {
                    last_error.get_or_insert(unavailable);
                    break;
                }
            };
            tried.push(attempt.index);
            if attempts > 0 {
                pause(&plan, attempts).await?;
            }
            attempts += 1;
            match call(&plan, &attempt, request_for(&attempt.backend)).await {
                Ok(body) => {
                    let backend = attempt.backend.clone();
                    return Ok(Routed {
                        body: Box::pin(Watched {
                            body,
                            attempt: Some(attempt),
                        }),
                        backend,
                    });
                }
                Err(error) => {
                    if let Some(wait) = error.upstream_cooldown() {
                        attempt.backend.health.cool_down(wait);
                    }
                    attempt.finish(error.breaker_outcome());
                    if !error.is_retryable_before_first_byte() {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
            }
        }
    }
    Err(last_error.unwrap_or(GatewayError::NoUsableBackend))
}

/// One attempt, bounded by the first-byte timeout and the total deadline.
async fn call(
    plan: &Plan,
    attempt: &Attempt,
    request: UpstreamRequest,
) -> Result<ByteStream, GatewayError> {
    let until = (Instant::now() + plan.first_byte_timeout).min(plan.deadline);
    match timeout_at(until, attempt.backend.send(request)).await {
        Ok(result) => result,
        Err(_) if until >= plan.deadline => Err(GatewayError::UpstreamTimeout {
            phase: TimeoutPhase::Total,
        }),
        Err(_) => Err(GatewayError::UpstreamTimeout {
            phase: TimeoutPhase::FirstByte,
        }),
    }
}

/// Waits before attempt number `attempts + 1`: the backoff doubled per attempt, times a jitter
/// between 0.5 and 1.5; a wait past the deadline ends the request instead.
async fn pause(plan: &Plan, attempts: u32) -> Result<(), GatewayError> {
    let base = plan
        .retry_backoff
        .saturating_mul(1 << (attempts - 1).min(10));
    let wait = base.mul_f64(0.5 + fastrand::f64());
    let until = Instant::now() + wait;
    if until >= plan.deadline {
        return Err(GatewayError::UpstreamTimeout {
            phase: TimeoutPhase::Total,
        });
    }
    sleep_until(until).await;
    Ok(())
}

/// An upstream body that records its backend's outcome when it fails or ends.
struct Watched {
    body: ByteStream,
    attempt: Option<Attempt>,
}

impl Stream for Watched {
    type Item = Result<Bytes, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.body.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Err(error))) = &polled
            && let Some(attempt) = self.attempt.take()
        {
            attempt.finish(error.breaker_outcome());
        }
        polled
    }
}
