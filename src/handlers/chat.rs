//! `POST /v1/chat/completions` and `POST /v1/completions` (the legacy text completions): the
//! whole pipeline as a short list of calls, top to bottom, for any [`Generation`] request.

use std::sync::{Arc, OnceLock};

use futures_util::{StreamExt, stream};
use http::{Request, Response};
use hyper::body::Incoming;
use opentelemetry::KeyValue;

use super::json::{json_response, sse_response};
use super::pipeline;
use crate::body::{self, Body};
use crate::error::GatewayError;
use crate::openai::chunk::ChunkRewriter;
use crate::openai::generation::Generation;
use crate::openai::tokens::{TokenCounter, completion_tokens};
use crate::openai::{Metering, Reservation};
use crate::settle::RequestGuard;
use crate::sse::relay::{RelayOptions, relay};
use crate::state::AppState;
use crate::telemetry::traces::TraceHeaders;
use crate::upstream::pool::Verdict;
use crate::upstream::retry::{self, Plan};
use crate::upstream::{Backend, UpstreamRequest};

pub async fn generate<R: Generation>(
    request: Request<Incoming>,
    state: &Arc<AppState>,
    guard: &mut RequestGuard,
) -> Result<Response<Body>, GatewayError> {
    let principal = pipeline::authenticate(request.headers(), state, guard)?;
    let body = pipeline::read_body(request, state).await?;
    let chat = Arc::new(R::parse(&body)?);
    let pool = pipeline::model_for(state, &principal, chat.model(), R::API)?;
    if !pool.supports_choices(chat.choices()) {
        return Err(GatewayError::invalid(
            "n",
            "unsupported_value",
            "this model only supports n = 1",
        ));
    }
    guard.set_route(&pool.name, chat.stream());
    let counter = TokenCounter::new(pool.tokenizer);
    guard.count_prompt_with(&body, counter, R::count_prompt);
    let output_cap = principal.output.effective(chat.max_output_tokens());
    guard.trace().record([KeyValue::new(
        "gen_ai.request.max_tokens",
        i64::try_from(output_cap).unwrap_or(i64::MAX),
    )]);
    let prompt_estimate = chat.prompt_tokens_estimate();
    let reserved = Reservation::new(
        prompt_estimate,
        chat.prompt_tokens_ceiling(prompt_estimate),
        output_cap,
        chat.choices(),
    );
    let rate = pipeline::admit(state, guard, &principal, reserved).await?;
    let plan = pipeline::plan(state, pool, R::API, chat.is_safe_to_duplicate(), guard);
    let request_for = upstream_request(chat.clone(), output_cap, guard.request_id().as_arc());
    guard.mark_dispatched();
    let mut response = if chat.stream() {
        let response = stream_reply(state, plan, request_for, &*chat, counter, guard).await?;
        guard.mark_stream_open();
        response
    } else {
        let (response, metering) =
            complete_reply(state, plan, request_for, chat.model(), counter, guard).await?;
        *guard.meter_slot().lock().unwrap_or_else(|p| p.into_inner()) = metering;
        response
    };
    pipeline::finish(&mut response, &rate, !chat.stream(), guard);
    Ok(response)
}

/// Builds each attempt's request: the body names that backend's own model.
fn upstream_request<R: Generation>(
    chat: Arc<R>,
    output_cap: u64,
    request_id: Arc<str>,
) -> impl Fn(&Backend) -> UpstreamRequest + Send + Sync + 'static {
    move |backend| UpstreamRequest {
        api: R::API,
        body: chat.upstream_body(&backend.upstream_model, output_cap),
        stream: chat.stream(),
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
    chat: &impl Generation,
    counter: TokenCounter,
    guard: &RequestGuard,
) -> Result<Response<Body>, GatewayError> {
    let rewriter = ChunkRewriter::new(
        chat.model(),
        chat.include_usage(),
        counter,
        guard.meter_slot(),
    );
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
        let _ = backend_slot.set(pipeline::served(&routed));
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
    let (body, usage) = pipeline::whole_answer(
        state,
        plan,
        request_for,
        model,
        pipeline::MAX_COMPLETION_BYTES,
        guard,
    )
    .await?;
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
