//! The attempt loop: a request may go to another backend of its model, then to the model's
//! fallbacks, only until an upstream answered with a success status and its first bytes. After
//! that, bytes may reach the client, and a retry would duplicate output, so a later failure is
//! the stream's final error event instead (the relay's job).
//!
//! Each attempt waits at most `first_byte_timeout` for the response head; pauses between
//! attempts back off exponentially with jitter; everything stays within the request's total
//! deadline. A backend that answered 429 cools down for its `retry-after` and the next attempt
//! goes elsewhere.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use tokio::time::{Instant, sleep_until, timeout_at};

use super::breaker::Outcome;
use super::pool::{Attempt, Eligible, Pool, Verdict};
use super::{Backend, ByteStream, UpstreamRequest};
use crate::error::{GatewayError, TimeoutPhase};
use crate::telemetry::metrics;
use crate::telemetry::traces::TraceCx;

/// Where and how a request may be sent.
#[derive(Debug)]
pub struct Plan {
    /// Which backends may be chosen.
    pub eligible: Eligible,
    /// The requested model's pool, then its fallbacks'.
    pub pools: Vec<Arc<Pool>>,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    pub first_byte_timeout: Duration,
    pub deadline: Instant,
    /// Sending the request twice costs only the work: a stalled attempt may be duplicated on a
    /// second backend (`hedge_after`), and one that failed after the backend may have acted on
    /// it may be sent again elsewhere. Not so for a request the backend stores (`store: true`):
    /// a second call would leave a second stored response behind.
    pub duplicable: bool,
    /// Each call gets a span in this trace, and the backend its `traceparent`.
    pub trace: TraceCx,
}

/// A successful upstream answer, the backend that gave it, and where to say how it ended.
pub struct Routed {
    pub body: ByteStream,
    pub backend: Arc<Backend>,
    /// Set by the consumer when the answer fails after its first bytes (the relay's idle
    /// timeout, an in-band error, an end without `[DONE]`): that reaches the backend's breaker.
    pub verdict: Verdict,
    /// Calls sent to backends for this answer, hedges included.
    pub attempts: u32,
    /// A hedge was sent.
    pub hedged: bool,
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
    request_for: impl Fn(&Backend) -> UpstreamRequest + Sync,
) -> Result<Routed, GatewayError> {
    let mut last_error = None;
    let mut attempts = 0u32;
    // Calls sent in earlier pools, hedges included.
    let mut calls_before = 0usize;
    for pool in &plan.pools {
        let mut tried = Vec::new();
        while tried.len() < plan.max_attempts as usize {
            // The pause comes before the backend is chosen, so no slot or probe permit is held
            // while waiting, and the choice sees the pools as they are after it.
            if attempts > 0 {
                pause(&plan, attempts).await?;
            }
            let attempt = match pool.acquire(&plan.eligible, &tried) {
                Ok(attempt) => attempt,
                Err(unavailable) => {
                    last_error.get_or_insert(unavailable);
                    break;
                }
            };
            tried.push(attempt.index);
            attempts += 1;
            let number = u32::try_from(calls_before + tried.len()).unwrap_or(u32::MAX);
            match call_hedged(&plan, pool, &mut tried, attempt, number, &request_for).await {
                Ok((body, attempt)) => {
                    let backend = attempt.backend.clone();
                    let verdict = attempt.verdict();
                    let calls = u32::try_from(calls_before + tried.len()).unwrap_or(u32::MAX);
                    return Ok(Routed {
                        body: Box::pin(Watched { body, attempt }),
                        backend,
                        verdict,
                        attempts: calls,
                        hedged: calls > attempts,
                    });
                }
                Err(error) if !error.is_retryable_before_first_byte() => return Err(error),
                Err(error) if !plan.duplicable && error.may_have_been_acted_on() => {
                    return Err(error);
                }
                Err(error) => last_error = Some(error),
            }
        }
        calls_before += tried.len();
    }
    Err(last_error.unwrap_or(GatewayError::NoUsableBackend))
}

/// One attempt, hedged when the pool says so: if `hedge_after` passes without an answer, a
/// second backend gets the same request; the first success wins and the other call is dropped,
/// which closes its connection. Every attempt that ends here has its outcome recorded: a first
/// attempt beaten by its hedge counts as a failure, a beaten hedge as nothing.
async fn call_hedged(
    plan: &Plan,
    pool: &Pool,
    tried: &mut Vec<usize>,
    first: Attempt,
    number: u32,
    request_for: &(impl Fn(&Backend) -> UpstreamRequest + Sync),
) -> Result<(ByteStream, Attempt), GatewayError> {
    let mut first_call = pin!(call(
        plan,
        first.backend.clone(),
        request_for(&first.backend),
        number,
    ));
    let Some(hedge_after) = pool.hedge_after.filter(|_| plan.duplicable) else {
        return settle(first, first_call.await);
    };
    tokio::select! {
        result = &mut first_call => return settle(first, result),
        () = tokio::time::sleep(hedge_after) => {}
    }
    let Ok(second) = pool.acquire(&plan.eligible, tried) else {
        return settle(first, first_call.await);
    };
    tried.push(second.index);
    let hedge = second.backend.clone();
    let mut second_call = pin!(call(
        plan,
        second.backend.clone(),
        request_for(&second.backend),
        number.saturating_add(1),
    ));
    let answer = tokio::select! {
        result = &mut first_call => match settle(first, result) {
            Ok(won) => {
                second.finish(Outcome::Neutral);
                Ok(won)
            }
            Err(_) => settle(second, second_call.await),
        },
        result = &mut second_call => match settle(second, result) {
            Ok(won) => {
                // Stalled past `hedge_after` and beaten: a health signal, so a backend that
                // keeps stalling opens its breaker instead of slowing every request it gets.
                first.finish(Outcome::Failure);
                Ok(won)
            }
            Err(_) => settle(first, first_call.await),
        },
    };
    let won = matches!(&answer, Ok((_, attempt)) if Arc::ptr_eq(&attempt.backend, &hedge));
    metrics::record_hedge(&hedge.name, if won { "won" } else { "lost" });
    answer
}

/// Pairs a successful answer with its attempt, or records the failure (and any cool-down).
fn settle(
    mut attempt: Attempt,
    result: Result<ByteStream, GatewayError>,
) -> Result<(ByteStream, Attempt), GatewayError> {
    match result {
        Ok(body) => {
            attempt.answered();
            Ok((body, attempt))
        }
        Err(error) => {
            metrics::record_upstream_error(&attempt.backend.name, error.kind());
            if let Some(wait) = error.upstream_cooldown() {
                attempt.backend.health.cool_down(wait);
            }
            attempt.finish(error.breaker_outcome());
            Err(error)
        }
    }
}

/// One call (the `number`th of the request), bounded by the first-byte timeout and the total
/// deadline, with its own span. It succeeds only once the first bytes of the body arrived, so a
/// backend that answers 200 and then fails before sending anything is still retried: nothing
/// of it can have reached the client.
async fn call(
    plan: &Plan,
    backend: Arc<Backend>,
    mut request: UpstreamRequest,
    number: u32,
) -> Result<ByteStream, GatewayError> {
    let mut span = plan
        .trace
        .attempt(&backend.name, &backend.upstream_model, number);
    request.trace = span.headers();
    let result = first_bytes(plan, &backend, request).await;
    match &result {
        Ok(_) => span.finish("answered", false),
        Err(error) => span.finish(error.kind(), true),
    }
    result
}

async fn first_bytes(
    plan: &Plan,
    backend: &Backend,
    request: UpstreamRequest,
) -> Result<ByteStream, GatewayError> {
    let until = (Instant::now() + plan.first_byte_timeout).min(plan.deadline);
    let first_bytes = async {
        let mut body = backend.send(request).await?;
        match body.next().await {
            Some(Ok(first)) => {
                Ok(Box::pin(stream::once(async { Ok(first) }).chain(body)) as ByteStream)
            }
            Some(Err(error)) => Err(error),
            None => Err(GatewayError::UpstreamDisconnected),
        }
    };
    match timeout_at(until, first_bytes).await {
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

/// An upstream body that carries its attempt (so it stays in flight until the body is
/// dropped) and notes a transport failure as the attempt's verdict.
struct Watched {
    body: ByteStream,
    attempt: Attempt,
}

impl Stream for Watched {
    type Item = Result<Bytes, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.body.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Err(error))) = &polled {
            let _ = self
                .attempt
                .verdict()
                .set(error.breaker_outcome_mid_answer());
        }
        polled
    }
}
