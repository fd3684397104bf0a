//! `POST /v1/chat/completions` and `POST /v1/completions` (the legacy text completions): the
//! whole pipeline as a short list of calls, top to bottom, for any [`Generation`] request.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use super::json::json_response;
use super::pipeline;
use crate::body::Body;
use crate::config::Dialect;
use crate::error::GatewayError;
use crate::openai::Metering;
use crate::openai::anthropic::{MessagesToChunks, completion_from_message};
use crate::openai::chunk::{ChatChunks, ChunkRewriter};
use crate::openai::generation::Generation;
use crate::openai::response::rewrite_completion;
use crate::openai::tokens::{TokenCounter, completion_tokens};
use crate::settle::RequestGuard;
use crate::state::AppState;
use crate::telemetry::traces::TraceHeaders;
use crate::upstream::retry::Plan;
use crate::upstream::{Backend, Call, UpstreamRequest};

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
    let estimate = chat.prompt_tokens_estimate();
    let (output_cap, reserved) = pipeline::reserve(
        guard,
        &principal,
        chat.max_output_tokens(),
        (estimate, chat.prompt_tokens_ceiling(estimate)),
        chat.choices(),
    );
    let eligible = state
        .models
        .eligible(pool, R::API, || chat.untranslatable())?;
    let rate = pipeline::admit(state, guard, &principal, reserved).await?;
    let plan = pipeline::plan(state, pool, eligible, chat.is_safe_to_duplicate(), guard);
    let request_for = upstream_request(chat.clone(), output_cap, guard.request_id().as_arc());
    guard.mark_dispatched();
    let mut response =
        if chat.stream() {
            let meter = guard.meter_slot();
            let asked = chat.clone();
            let rewrite_for =
                move |backend: &Backend| match backend.dialect {
                    Dialect::Anthropic => ChatChunks::FromMessages(Box::new(
                        MessagesToChunks::new(asked.model(), asked.include_usage(), counter, meter),
                    )),
                    Dialect::OpenAi | Dialect::Azure { .. } => ChatChunks::Relayed(
                        ChunkRewriter::new(asked.model(), asked.include_usage(), counter, meter),
                    ),
                };
            let response = pipeline::stream_answer(
                state,
                plan,
                request_for,
                rewrite_for,
                pipeline::AsRelayed,
                GatewayError::to_sse_event,
                guard,
            )
            .await?;
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
        call: Call::Create(R::API),
        body: chat.body_for(&backend.dialect, &backend.upstream_model, output_cap),
        stream: chat.stream(),
        request_id: request_id.clone(),
        replayable: chat.is_safe_to_duplicate(),
        trace: TraceHeaders::default(),
    }
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
    let (body, usage, _) = pipeline::whole_answer(
        state,
        plan,
        request_for,
        |backend, body| match backend.dialect {
            Dialect::Anthropic => completion_from_message(body, model),
            Dialect::OpenAi | Dialect::Azure { .. } => rewrite_completion(body, model),
        },
        pipeline::MAX_COMPLETION_BYTES,
        guard,
    )
    .await?;
    let metering = pipeline::whole_metering(&body, usage, counter, completion_tokens).await;
    Ok((json_response(body), metering))
}
