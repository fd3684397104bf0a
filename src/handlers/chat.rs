//! `POST /v1/chat/completions`: the whole pipeline as a short list of calls, top to bottom.

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use http::{HeaderMap, HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use opentelemetry::KeyValue;
use tokio::time::{Instant, timeout_at};

use super::json::{json_response, sse_response};
use super::request_body::read_capped;
use crate::body::{self, Body};
use crate::config::Api;
use crate::error::{GatewayError, TimeoutPhase};
use crate::limits::{self, Ask};
use crate::openai::chunk::ChunkRewriter;
use crate::openai::response::rewrite_completion;
use crate::openai::tokens::{TokenCounter, completion_tokens};
use crate::openai::{ChatRequest, Metering, Reservation};
use crate::settle::{RequestGuard, Served};
use crate::sse::relay::{RelayOptions, relay};
use crate::state::AppState;
use crate::telemetry::traces::TraceHeaders;
use crate::upstream::pool::Verdict;
use crate::upstream::retry::{self, Plan, Routed};
use crate::upstream::{Backend, ByteStream, UpstreamRequest};

/// The most a non-streamed upstream answer may hold.
const MAX_COMPLETION_BYTES: usize = 16 * 1024 * 1024;

pub async fn chat_completions(
    request: Request<Incoming>,
    state: &Arc<AppState>,
    guard: &mut RequestGuard,
) -> Result<Response<Body>, GatewayError> {
    let authenticating = guard.trace().step("auth");
    let principal = state.auth.authenticate(request.headers())?;
    drop(authenticating);
    guard.set_key(principal.key_id.clone());
    guard.set_tier(&principal.tier);
    require_json(request.headers())?;
    let (parts, body) = request.into_parts();
    let body = read_capped(
        &parts.headers,
        body,
        state.server.max_body_bytes.get(),
        state.server.body_read_timeout,
    )
    .await?;
    let chat = Arc::new(ChatRequest::parse(&body)?);
    let pool = state.models.get(&chat.model, Api::Chat)?;
    principal.authorize(&pool.name)?;
    if !pool.supports_choices(chat.choices) {
        return Err(GatewayError::invalid(
            "n",
            "unsupported_value",
            "this model only supports n = 1",
        ));
    }
    guard.set_route(&pool.name, chat.stream);
    let counter = TokenCounter::new(pool.tokenizer);
    guard.count_prompt_with(&body, counter);
    let output_cap = principal.output.effective(chat.max_output_tokens);
    guard.trace().record([KeyValue::new(
        "gen_ai.request.max_tokens",
        i64::try_from(output_cap).unwrap_or(i64::MAX),
    )]);
    let prompt_estimate = chat.prompt_tokens_estimate();
    let reserved = Reservation::new(
        prompt_estimate,
        chat.prompt_tokens_ceiling(prompt_estimate),
        output_cap,
        chat.choices,
    );
    let ask = Ask {
        key_id: &principal.key_id,
        tier: &principal.tier,
        limits: &principal.limits,
        tokens: reserved.usage.total_tokens,
    };
    // Waiting on Redis is the gateway's own time (the handler's polls count only the work).
    let admitting = Instant::now();
    let admission_span = guard.trace().step("admission");
    let admission = state.limiter.admit(ask).await;
    if let Err(error) = &admission {
        admission_span.record(KeyValue::new("error.type", error.kind()));
    }
    drop(admission_span);
    guard.add_busy(admitting.elapsed());
    let admission = admission?;
    let rate = admission.state;
    guard.settle_with(state.limiter.clone(), admission, reserved);
    guard.total_usage_in(state.usage.clone());
    let plan = Plan {
        api: Api::Chat,
        pools: state.models.route(pool, Api::Chat),
        max_attempts: state.upstream.max_attempts.get(),
        retry_backoff: state.upstream.retry_backoff,
        first_byte_timeout: state.upstream.first_byte_timeout,
        deadline: Instant::now() + state.upstream.total_timeout,
        may_hedge: chat.is_safe_to_duplicate(),
        trace: guard.trace().clone(),
    };
    let request_for = upstream_request(chat.clone(), output_cap, guard.request_id().as_arc());
    guard.mark_dispatched();
    let mut response = if chat.stream {
        let response = stream_reply(state, plan, request_for, &chat, counter, guard).await?;
        guard.mark_stream_open();
        response
    } else {
        let (response, metering) =
            complete_reply(state, plan, request_for, &chat.model, counter, guard).await?;
        *guard.meter_slot().lock().unwrap_or_else(|p| p.into_inner()) = metering;
        response
    };
    limits::headers::put(response.headers_mut(), &rate);
    if !chat.stream {
        // As OpenAI sends it: the time the gateway took to produce the whole answer.
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
    Ok(response)
}

/// Builds each attempt's request: the body names that backend's own model.
fn upstream_request(
    chat: Arc<ChatRequest>,
    output_cap: u64,
    request_id: Arc<str>,
) -> impl Fn(&Backend) -> UpstreamRequest + Send + Sync + 'static {
    move |backend| UpstreamRequest {
        api: Api::Chat,
        body: chat.upstream_body(&backend.upstream_model, output_cap),
        stream: chat.stream,
        request_id: request_id.clone(),
        replayable: chat.is_safe_to_duplicate(),
        trace: TraceHeaders::default(),
    }
}

/// Streams the answer. The status line waits for the first upstream event or heartbeat, so a
/// failure before either is still a proper error status; after it, a final error event.
async fn stream_reply(
    state: &AppState,
    plan: Plan,
    request_for: impl Fn(&Backend) -> UpstreamRequest + Send + Sync + 'static,
    chat: &ChatRequest,
    counter: TokenCounter,
    guard: &RequestGuard,
) -> Result<Response<Body>, GatewayError> {
    let rewriter = ChunkRewriter::new(&chat.model, chat.include_usage, counter, guard.meter_slot());
    let options = RelayOptions {
        heartbeat_interval: state.stream.heartbeat_interval,
        first_byte_timeout: state.upstream.first_byte_timeout,
        idle_timeout: state.upstream.idle_timeout,
        deadline: plan.deadline,
        max_event_bytes: state.stream.max_event_bytes,
    };
    let backend_slot = guard.backend_slot();
    // The relay sees failures the upstream byte stream cannot (an idle timeout, an in-band
    // error, an end without `[DONE]`); they reach the backend's breaker through its verdict.
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
        Ok(routed.body)
    });
    let mut events = Box::pin(relay(connect, rewriter, options, state.drain.expired()));
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
            error.to_sse_event()
        }
    });
    Ok(sse_response(body::streamed(
        stream::once(async { first }).chain(rest),
    )))
}

/// Waits for the whole answer, then sends it as one JSON body. Without a usage report its
/// completion is counted with the model's tokenizer.
async fn complete_reply(
    state: &AppState,
    plan: Plan,
    request_for: impl Fn(&Backend) -> UpstreamRequest + Sync,
    model: &str,
    counter: TokenCounter,
    guard: &RequestGuard,
) -> Result<(Response<Body>, Metering), GatewayError> {
    let deadline = plan.deadline;
    let mut routed = retry::send(plan, request_for).await?;
    let _ = guard.backend_slot().set(served(&routed));
    // The upstream body stays alive until the answer is judged, so a failure found in it
    // reaches the backend's breaker before its attempt ends.
    let answer = collect_capped(&mut routed.body, state, deadline)
        .await
        .and_then(|body| rewrite_completion(&body, model));
    if let Err(error) = &answer {
        let _ = routed.verdict.set(error.breaker_outcome_mid_answer());
    }
    let (body, usage) = answer?;
    let counted_completion = match usage {
        Some(_) => None,
        // Up to 16 MiB of JSON to parse: off the runtime's threads.
        None => {
            let body = body.clone();
            tokio::task::spawn_blocking(move || completion_tokens(&body, counter))
                .await
                .ok()
        }
    };
    let metering = Metering {
        usage,
        reported: usage.is_some(),
        counted_completion,
        ..Metering::default()
    };
    Ok((json_response(body), metering))
}

async fn collect_capped(
    chunks: &mut ByteStream,
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
        if body.len() > MAX_COMPLETION_BYTES {
            return Err(GatewayError::UpstreamProtocol {
                detail: "the response body exceeded the size limit",
            });
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

/// What the access log says of the backend that answered.
fn served(routed: &Routed) -> Served {
    Served {
        backend: routed.backend.name.as_str().into(),
        attempts: routed.attempts,
        hedged: routed.hedged,
    }
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
