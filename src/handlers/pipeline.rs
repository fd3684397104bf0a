//! The stages every model endpoint shares, so each handler reads as its own short list of
//! calls: who is asking, what they may spend, where the request may go, and, for an answer
//! sent whole, reading it back bounded and in the client's names.

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};
use http::{HeaderMap, HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use tokio::time::{Instant, timeout_at};

use super::json::sse_response;
use super::request_body::read_capped;
use crate::auth::Principal;
use crate::body::{self, Body};
use crate::config::Api;
use crate::error::{GatewayError, TimeoutPhase};
use crate::limits::{self, Ask, RateState};
use crate::openai::tokens::TokenCounter;
use crate::openai::{Metering, Reservation, Usage};
use crate::settle::{RequestGuard, Served};
use crate::sse::relay::{RelayOptions, Rewrite, relay};
use crate::state::AppState;
use crate::upstream::pool::{Eligible, Pool, Verdict};
use crate::upstream::retry::{self, Plan, Routed};
use crate::upstream::{Backend, ByteStream, UpstreamRequest};

/// The most a non-streamed completion may hold.
pub const MAX_COMPLETION_BYTES: usize = 16 * 1024 * 1024;
/// The most an embeddings answer may hold: 2,048 vectors of 3,072 dimensions as base64 (what
/// the SDKs ask for) is about 34 MB; as JSON floats, 2,048 of 1,536 about 60 MB.
pub const MAX_EMBEDDINGS_BYTES: usize = 64 * 1024 * 1024;

/// The caller's credential, checked; the guard learns the key and tier. The body must be JSON
/// (or say nothing of its type).
pub fn authenticate(
    headers: &HeaderMap,
    state: &AppState,
    guard: &mut RequestGuard,
) -> Result<Principal, GatewayError> {
    let authenticating = guard.trace().step("auth");
    let principal = state.auth.authenticate(headers)?;
    drop(authenticating);
    guard.set_key(principal.key_id.clone());
    guard.set_tier(&principal.tier);
    require_json(headers)?;
    Ok(principal)
}

/// The request's body, read whole within the configured size and time bounds.
pub async fn read_body(
    request: Request<Incoming>,
    state: &AppState,
) -> Result<Bytes, GatewayError> {
    let (parts, body) = request.into_parts();
    read_capped(
        &parts.headers,
        body,
        state.server.max_body_bytes.get(),
        state.server.body_read_timeout,
    )
    .await
}

/// The model `name` on `api`, when the caller may use it.
pub fn model_for<'a>(
    state: &'a AppState,
    principal: &Principal,
    name: &str,
    api: Api,
) -> Result<&'a Arc<Pool>, GatewayError> {
    let pool = state.models.get(name, api)?;
    principal.authorize(&pool.name)?;
    Ok(pool)
}

/// The output cap of the caller's tier for what the request `asked`, and what the request
/// reserves: its `prompt` (estimate, ceiling) and the cap for each of its `choices`.
pub fn reserve(
    guard: &RequestGuard,
    principal: &Principal,
    asked: Option<u64>,
    prompt: (u64, u64),
    choices: u64,
) -> (u64, Reservation) {
    let output_cap = principal.output.effective(asked);
    guard.trace().record([opentelemetry::KeyValue::new(
        "gen_ai.request.max_tokens",
        i64::try_from(output_cap).unwrap_or(i64::MAX),
    )]);
    let (estimate, ceiling) = prompt;
    (
        output_cap,
        Reservation::new(estimate, ceiling, output_cap, choices),
    )
}

/// Takes `reserved` from the caller's limits (one Redis round trip when limits are shared); the
/// guard settles it when the request ends, and records its usage.
pub async fn admit(
    state: &AppState,
    guard: &mut RequestGuard,
    principal: &Principal,
    reserved: Reservation,
) -> Result<RateState, GatewayError> {
    let ask = Ask {
        key_id: &principal.key_id,
        tier: &principal.tier,
        limits: &principal.limits,
        tokens: reserved.usage.total_tokens,
    };
    // Waiting on Redis is the gateway's own time (the handler's polls count only the work).
    let admitting = Instant::now();
    let span = guard.trace().step("admission");
    let admission = state.limiter.admit(ask).await;
    if let Err(error) = &admission {
        span.record(opentelemetry::KeyValue::new("error.type", error.kind()));
    }
    drop(span);
    guard.add_busy(admitting.elapsed());
    let admission = admission?;
    let rate = admission.state;
    guard.settle_with(state.limiter.clone(), admission, reserved);
    guard.total_usage_in(state.usage.clone());
    Ok(rate)
}

/// Where a request for `pool` may go: its `eligible` backends, then its fallbacks'.
pub fn plan(
    state: &AppState,
    pool: &Arc<Pool>,
    eligible: Eligible,
    duplicable: bool,
    guard: &RequestGuard,
) -> Plan {
    Plan {
        pools: state.models.route(pool, &eligible),
        eligible,
        max_attempts: state.upstream.max_attempts.get(),
        retry_backoff: state.upstream.retry_backoff,
        first_byte_timeout: state.upstream.first_byte_timeout,
        deadline: Instant::now() + state.upstream.total_timeout,
        duplicable,
        trace: guard.trace().clone(),
    }
}

/// Sends the request and reads the whole answer (at most `cap` bytes, bounded in time), told
/// for the client by `tell` (given the backend that answered); returns it with the usage it
/// reported, and that backend. A failure found in the answer reaches the backend's breaker
/// before its attempt ends.
pub async fn whole_answer(
    state: &AppState,
    plan: Plan,
    request_for: impl Fn(&Backend) -> UpstreamRequest + Sync,
    tell: impl FnOnce(&Backend, &[u8]) -> Result<(Bytes, Option<Usage>), GatewayError>,
    cap: usize,
    guard: &RequestGuard,
) -> Result<(Bytes, Option<Usage>, Arc<Backend>), GatewayError> {
    let deadline = plan.deadline;
    let mut routed = retry::send(plan, request_for).await?;
    let _ = guard.backend_slot().set(served(&routed));
    let answer = collect_capped(&mut routed.body, cap, state, deadline)
        .await
        .and_then(|body| tell(&routed.backend, &body));
    match answer {
        Ok((body, usage)) => Ok((body, usage, routed.backend)),
        Err(error) => {
            let _ = routed.verdict.set(error.breaker_outcome_mid_answer());
            Err(error)
        }
    }
}

/// The metering of an answer sent whole: its usage report, or without one its output counted
/// by `count` with the model's tokenizer (up to 16 MiB of JSON to parse: off the runtime's
/// threads).
pub async fn whole_metering(
    body: &Bytes,
    usage: Option<Usage>,
    counter: TokenCounter,
    count: fn(&[u8], TokenCounter) -> u64,
) -> Metering {
    let counted_completion = match usage {
        Some(_) => None,
        None => {
            let body = body.clone();
            tokio::task::spawn_blocking(move || count(&body, counter))
                .await
                .ok()
        }
    };
    Metering {
        usage,
        reported: usage.is_some(),
        counted_completion,
        ..Metering::default()
    }
}

/// What wraps a relayed answer on its way to the client; a generic method, so the chat path's
/// [`AsRelayed`] costs nothing.
pub trait Around {
    /// `events` (bytes for the client; an `Err` is the last item), wrapped.
    fn around<S>(
        self,
        events: S,
    ) -> impl Stream<Item = Result<Bytes, GatewayError>> + Send + 'static
    where
        S: Stream<Item = Result<Bytes, GatewayError>> + Send + 'static;
}

/// The relay's bytes as they are.
#[derive(Debug, Clone, Copy)]
pub struct AsRelayed;

impl Around for AsRelayed {
    fn around<S>(
        self,
        events: S,
    ) -> impl Stream<Item = Result<Bytes, GatewayError>> + Send + 'static
    where
        S: Stream<Item = Result<Bytes, GatewayError>> + Send + 'static,
    {
        events
    }
}

/// Streams the answer: the relay with the rewrite `rewrite_for` picks for the backend that
/// answered, wrapped by `around`. The status line waits for the first upstream event or
/// heartbeat, so a failure before either is still a proper error status; after it, the
/// stream's last event is `failure_event`'s telling of it.
pub async fn stream_answer<R: Rewrite<Error = GatewayError>>(
    state: &AppState,
    plan: Plan,
    request_for: impl Fn(&Backend) -> UpstreamRequest + Send + Sync + 'static,
    rewrite_for: impl FnOnce(&Backend) -> R + Send + 'static,
    around: impl Around,
    failure_event: impl Fn(&GatewayError) -> Bytes + Send + 'static,
    guard: &RequestGuard,
) -> Result<Response<Body>, GatewayError> {
    let options = RelayOptions {
        heartbeat_interval: state.stream.heartbeat_interval,
        first_byte_timeout: state.upstream.first_byte_timeout,
        idle_timeout: state.upstream.idle_timeout,
        deadline: plan.deadline,
        max_event_bytes: state.stream.max_event_bytes,
    };
    let backend_slot = guard.backend_slot();
    // The relay sees failures the upstream byte stream cannot (an idle timeout, an in-band
    // error, an end without its last event); they reach the backend's breaker through its
    // verdict.
    let verdict_slot = Arc::new(OnceLock::<Verdict>::new());
    let report = {
        let verdict_slot = verdict_slot.clone();
        move |error: &GatewayError| {
            if let Some(verdict) = verdict_slot.get() {
                let _ = verdict.set(error.breaker_outcome_mid_answer());
            }
        }
    };
    let connect = Box::pin(async move {
        let routed = retry::send(plan, request_for).await?;
        let _ = backend_slot.set(served(&routed));
        let _ = verdict_slot.set(routed.verdict);
        Ok((routed.body, rewrite_for(&routed.backend)))
    });
    let mut events = Box::pin(around.around(relay(connect, options, state.drain.expired())));
    let first = match events.next().await {
        Some(Ok(bytes)) => bytes,
        Some(Err(error)) => {
            report(&error);
            return Err(error);
        }
        None => return Err(GatewayError::UpstreamDisconnected),
    };
    let failure = guard.failure_slot();
    let rest = events.map(move |item| match item {
        Ok(bytes) => bytes,
        Err(error) => {
            report(&error);
            let _ = failure.set((error.kind(), error.blame()));
            failure_event(&error)
        }
    });
    Ok(sse_response(body::streamed(
        stream::once(async { first }).chain(rest),
    )))
}

/// The headers an answer ends with: the rate limits, for an answer sent whole the time it took
/// (`openai-processing-ms`, as OpenAI sends it), and the backend that served it.
pub fn finish(response: &mut Response<Body>, rate: &RateState, whole: bool, guard: &RequestGuard) {
    limits::headers::put(response.headers_mut(), rate);
    if whole {
        let took = u64::try_from(guard.elapsed().as_millis()).unwrap_or(u64::MAX);
        response
            .headers_mut()
            .insert("openai-processing-ms", HeaderValue::from(took));
    }
    if let Some(name) = guard
        .backend()
        .and_then(|name| HeaderValue::from_str(&name).ok())
    {
        response.headers_mut().insert("x-sluicegate-backend", name);
    }
}

/// What the access log says of the backend that answered.
pub fn served(routed: &Routed) -> Served {
    Served {
        backend: routed.backend.name.as_str().into(),
        attempts: routed.attempts,
        hedged: routed.hedged,
    }
}

async fn collect_capped(
    chunks: &mut ByteStream,
    cap: usize,
    state: &AppState,
    deadline: Instant,
) -> Result<Bytes, GatewayError> {
    let mut body = BytesMut::new();
    loop {
        let idle_until = (Instant::now() + state.upstream.idle_timeout).min(deadline);
        let next = timeout_at(idle_until, chunks.next())
            .await
            .map_err(|_| timeout_error(idle_until, deadline, TimeoutPhase::Idle))?;
        match next {
            Some(chunk) => body.extend_from_slice(&chunk?),
            None => return Ok(body.freeze()),
        }
        if body.len() > cap {
            return Err(GatewayError::UpstreamAnswerTooLarge { limit_bytes: cap });
        }
    }
}

/// The timeout error for a wait that ended at `at`: the total deadline when that was sooner.
fn timeout_error(at: Instant, deadline: Instant, phase: TimeoutPhase) -> GatewayError {
    let phase = if at >= deadline {
        TimeoutPhase::Total
    } else {
        phase
    };
    GatewayError::UpstreamTimeout { phase }
}

/// Accepts `application/json` (with parameters) or no content-type at all.
fn require_json(headers: &HeaderMap) -> Result<(), GatewayError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(GatewayError::UnsupportedContentType)
    }
}
