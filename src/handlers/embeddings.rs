//! `POST /v1/embeddings`: the same keys, limits, routing and breakers as chat, for an answer
//! sent whole. An embeddings call changes nothing upstream, so it may be hedged and resent.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use super::json::json_response;
use super::pipeline;
use crate::body::Body;
use crate::config::Api;
use crate::error::GatewayError;
use crate::openai::embeddings::EmbeddingsRequest;
use crate::openai::response::rewrite_completion;
use crate::openai::tokens::TokenCounter;
use crate::openai::{Metering, Reservation};
use crate::settle::RequestGuard;
use crate::state::AppState;
use crate::telemetry::traces::TraceHeaders;
use crate::upstream::pool::Eligible;
use crate::upstream::{Call, UpstreamRequest};

pub async fn embeddings(
    request: Request<Incoming>,
    state: &Arc<AppState>,
    guard: &mut RequestGuard,
) -> Result<Response<Body>, GatewayError> {
    let principal = pipeline::authenticate(request.headers(), state, guard)?;
    let body = pipeline::read_body(request, state).await?;
    let embed = Arc::new(EmbeddingsRequest::parse(&body)?);
    let pool = pipeline::model_for(state, &principal, &embed.model, Api::Embeddings)?;
    guard.set_route(&pool.name, false);
    let estimate = embed.prompt_tokens_estimate();
    let reserved = Reservation::new(estimate, embed.prompt_tokens_ceiling(), 0, 1);
    let rate = pipeline::admit(state, guard, &principal, reserved).await?;
    let plan = pipeline::plan(state, pool, Eligible::api(Api::Embeddings), true, guard);
    let request_id = guard.request_id().as_arc();
    let request_for = {
        let embed = embed.clone();
        move |backend: &crate::upstream::Backend| UpstreamRequest {
            call: Call::Create(Api::Embeddings),
            body: embed.upstream_body(&backend.upstream_model),
            stream: false,
            request_id: request_id.clone(),
            replayable: true,
            trace: TraceHeaders::default(),
        }
    };
    guard.mark_dispatched();
    let (answer, usage, _) = pipeline::whole_answer(
        state,
        plan,
        request_for,
        |_, body| rewrite_completion(body, &embed.model),
        pipeline::MAX_EMBEDDINGS_BYTES,
        guard,
    )
    .await?;
    // Without a report, the input is counted with the model's tokenizer (bounded work, off the
    // runtime's threads); embeddings produce no output tokens.
    let counted_prompt = match usage {
        Some(_) => None,
        None => {
            let counter = TokenCounter::new(pool.tokenizer);
            let embed = embed.clone();
            tokio::task::spawn_blocking(move || embed.prompt_tokens_counted(counter))
                .await
                .ok()
        }
    };
    *guard.meter_slot().lock().unwrap_or_else(|p| p.into_inner()) = Metering {
        usage,
        reported: usage.is_some(),
        counted_prompt,
        ..Metering::default()
    };
    let mut response = json_response(answer);
    pipeline::finish(&mut response, &rate, true, guard);
    Ok(response)
}
