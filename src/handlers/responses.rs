//! The Responses API. `POST /v1/responses` streams typed events or answers a whole `response`
//! object: passed through to backends that serve the API, translated for backends that serve
//! only chat completions. A stored response (`store`, OpenAI's default) is remembered with the
//! backend that made it and the key that asked: its follow-ups (`previous_response_id`) and
//! `GET` / `DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel` and
//! `GET /v1/responses/{id}/input_items` go there, for that key only (any other key is told 404).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::future::Either;
use futures_util::{Stream, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;

use super::json::json_response;
use super::pipeline::{self, Around};
use crate::affinity::Owner;
use crate::auth::Principal;
use crate::body::Body;
use crate::config::Api;
use crate::error::GatewayError;
use crate::openai::Reservation;
use crate::openai::response::rewrite_response;
use crate::openai::responses::translate::{self, ChatToResponses, Echo};
use crate::openai::responses::{
    Created, CreatedSlot, ResponseEvents, ResponseId, ResponseStream, ResponsesRequest, Sequence,
    output_tokens,
};
use crate::openai::tokens::TokenCounter;
use crate::settle::RequestGuard;
use crate::state::AppState;
use crate::telemetry::traces::TraceHeaders;
use crate::upstream::pool::{Eligible, Pool};
use crate::upstream::retry::Plan;
use crate::upstream::{Backend, Call, UpstreamRequest};

/// What is done to a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredAction {
    Retrieve,
    Delete,
    Cancel,
    InputItems,
}

/// `POST /v1/responses`.
pub async fn create(
    request: Request<Incoming>,
    state: &Arc<AppState>,
    guard: &mut RequestGuard,
) -> Result<Response<Body>, GatewayError> {
    let principal = pipeline::authenticate(request.headers(), state, guard)?;
    let body = pipeline::read_body(request, state).await?;
    let asked = Arc::new(ResponsesRequest::parse(&body)?);
    let pool = pipeline::model_for(state, &principal, &asked.model, Api::Responses)?;
    let continued = continued(state, &principal, &asked).await?;
    let (pool, eligible) = destination(state, pool, &asked, continued.as_ref())?;
    guard.set_route(&asked.model, asked.stream);
    let counter = TokenCounter::new(pool.tokenizer);
    // A continuation's earlier turns are part of its prompt: reserved, and charged in full
    // should no usage be reported (the body alone would count only the new turn).
    let context = continued.as_ref().map_or(0, |(_, context)| *context);
    if continued.is_none() {
        guard.count_prompt_with(&body, counter, ResponsesRequest::count_prompt);
    }
    let estimate = asked.prompt_tokens_estimate().saturating_add(context);
    let (output_cap, reserved) = pipeline::reserve(
        guard,
        &principal,
        asked.max_output_tokens,
        (estimate, asked.prompt_tokens_ceiling(estimate)),
        1,
    );
    let rate = pipeline::admit(state, guard, &principal, reserved).await?;
    // Only a backend that serves the Responses API itself stores anything.
    let duplicable = asked.is_safe_to_duplicate()
        || !state
            .models
            .route(pool, &eligible)
            .iter()
            .any(|p| p.has(&Eligible::native(Api::Responses)));
    let plan = pipeline::plan(state, pool, eligible, duplicable, guard);
    let request_for = upstream_request(asked.clone(), output_cap, guard.request_id().as_arc());
    let answering = Answering {
        echo: Arc::new(Echo::new(asked.fields(), output_cap)),
        asked: asked.clone(),
        counter,
        keeper: Keeper {
            state: state.clone(),
            model: asked.model.clone(),
            key_id: principal.key_id.to_string(),
            store: asked.store,
        },
    };
    guard.mark_dispatched();
    let mut response = if asked.stream {
        let response = stream_reply(state, plan, request_for, answering, guard).await?;
        guard.mark_stream_open();
        response
    } else {
        whole_reply(state, plan, request_for, answering, guard).await?
    };
    pipeline::finish(&mut response, &rate, !asked.stream, guard);
    Ok(response)
}

/// `GET` / `DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`,
/// `GET /v1/responses/{id}/input_items`: sent to the backend that stored the response, when the
/// caller's key created it.
pub async fn stored(
    request: Request<Incoming>,
    raw_id: &str,
    action: StoredAction,
    state: &Arc<AppState>,
    guard: &mut RequestGuard,
) -> Result<Response<Body>, GatewayError> {
    let principal = pipeline::authenticate(request.headers(), state, guard)?;
    let not_found = || GatewayError::ResponseNotFound {
        id: raw_id.chars().take(128).collect(),
    };
    let id = ResponseId::parse(raw_id).ok_or_else(not_found)?;
    let owner = state
        .affinity
        .owner(&id)
        .await?
        .filter(|owner| *owner.key_id == *principal.key_id)
        .ok_or_else(not_found)?;
    let pool = state.models.find(&owner.pool).map_err(|_| not_found())?;
    principal.authorize(&owner.model)?;
    guard.set_route(&owner.model, false);
    let rate = pipeline::admit(state, guard, &principal, Reservation::new(0, 0, 0, 0)).await?;
    let plan = pipeline::plan(state, pool, pinned(&owner), true, guard);
    let call = match action {
        StoredAction::Retrieve => Call::Retrieve(id.clone()),
        StoredAction::Delete => Call::Delete(id.clone()),
        StoredAction::Cancel => Call::Cancel(id.clone()),
        StoredAction::InputItems => Call::InputItems(id.clone()),
    };
    let request_id = guard.request_id().as_arc();
    let request_for = move |_: &Backend| UpstreamRequest {
        call: call.clone(),
        body: Bytes::new(),
        stream: false,
        request_id: request_id.clone(),
        // Reading, deleting or cancelling twice leaves things as once does.
        replayable: true,
        trace: TraceHeaders::default(),
    };
    guard.mark_dispatched();
    let (answer, _, _) = pipeline::whole_answer(
        state,
        plan,
        request_for,
        |_, body| rewrite_response(body, &owner.model),
        pipeline::MAX_COMPLETION_BYTES,
        guard,
    )
    .await?;
    if action == StoredAction::Delete {
        state.affinity.forget(&id).await;
    }
    let mut response = json_response(answer);
    pipeline::finish(&mut response, &rate, true, guard);
    Ok(response)
}

/// The stored response a request continues, when it names one the caller's key created, with
/// the tokens it carries as context; a 400 naming `previous_response_id` otherwise (as OpenAI
/// answers), also when that response never finished through the gateway: its size, and so
/// what its continuation must reserve, is unknown.
async fn continued(
    state: &AppState,
    principal: &Principal,
    asked: &ResponsesRequest,
) -> Result<Option<(Owner, u64)>, GatewayError> {
    let Some(id) = &asked.previous_response_id else {
        return Ok(None);
    };
    match state.affinity.owner(id).await? {
        Some(owner) if *owner.key_id == *principal.key_id => match owner.context_tokens {
            Some(context) => Ok(Some((owner, context))),
            None => Err(GatewayError::invalid(
                "previous_response_id",
                "previous_response_incomplete",
                format!(
                    "Previous response with id '{id}' did not finish, so it cannot be continued."
                ),
            )),
        },
        _ => Err(GatewayError::invalid(
            "previous_response_id",
            "previous_response_not_found",
            format!("Previous response with id '{id}' not found."),
        )),
    }
}

/// Where a request may go: a continuation to the backend holding the response it continues
/// (the requested model's own or one of its fallbacks'); a request a chat backend cannot
/// serve, to backends that serve the Responses API themselves; anything else, to any backend
/// that serves it either way.
fn destination<'a>(
    state: &'a AppState,
    pool: &'a Arc<Pool>,
    asked: &ResponsesRequest,
    continued: Option<&(Owner, u64)>,
) -> Result<(&'a Arc<Pool>, Eligible), GatewayError> {
    if let Some((owner, _)) = continued {
        let reachable = owner.pool == pool.name || pool.fallbacks.contains(&owner.pool);
        let holder = state.models.find(&owner.pool).ok().filter(|_| reachable);
        return match holder {
            Some(holder) => Ok((holder, pinned(owner))),
            None => Err(GatewayError::invalid(
                "previous_response_id",
                "invalid_value",
                format!(
                    "the previous response was made by the model '{}'; continue it with that model",
                    owner.pool
                ),
            )),
        };
    }
    let eligible = state
        .models
        .eligible(pool, Api::Responses, || asked.untranslatable())?;
    Ok((pool, eligible))
}

/// Only the backend that holds `owner`'s response.
fn pinned(owner: &Owner) -> Eligible {
    Eligible {
        backend: Some(owner.backend.as_str().into()),
        ..Eligible::native(Api::Responses)
    }
}

/// Builds each attempt's request: passed through to a backend that serves the Responses API,
/// translated to chat completions for one that does not.
fn upstream_request(
    asked: Arc<ResponsesRequest>,
    output_cap: u64,
    request_id: Arc<str>,
) -> impl Fn(&Backend) -> UpstreamRequest + Send + Sync + 'static {
    move |backend| {
        let (call, body) = if backend.native(Api::Responses) {
            (
                Call::Create(Api::Responses),
                asked.upstream_body(&backend.upstream_model, output_cap),
            )
        } else {
            (
                Call::Create(Api::Chat),
                translate::chat_body(
                    asked.fields(),
                    &backend.upstream_model,
                    output_cap,
                    asked.stream,
                ),
            )
        };
        UpstreamRequest {
            call,
            body,
            stream: asked.stream,
            request_id: request_id.clone(),
            replayable: asked.is_safe_to_duplicate(),
            trace: TraceHeaders::default(),
        }
    }
}

/// What telling one answer needs besides the call: the request, what a translated response
/// repeats of it, the model's tokenizer, and where stored responses are remembered.
struct Answering {
    asked: Arc<ResponsesRequest>,
    echo: Arc<Echo>,
    counter: TokenCounter,
    keeper: Keeper,
}

/// Streams the typed events. A failure after the first byte is the stream's last event, an
/// `event: error` numbered after the events before it.
async fn stream_reply(
    state: &AppState,
    plan: Plan,
    request_for: impl Fn(&Backend) -> UpstreamRequest + Send + Sync + 'static,
    answering: Answering,
    guard: &RequestGuard,
) -> Result<Response<Body>, GatewayError> {
    let Answering {
        asked,
        echo,
        counter,
        keeper,
    } = answering;
    let sequence = Sequence::default();
    let created = CreatedSlot::default();
    let holder = Arc::new(OnceLock::<(String, String)>::new());
    let rewrite_for = {
        let (model, meter) = (asked.model.clone(), guard.meter_slot());
        let (sequence, created, holder) = (sequence.clone(), created.clone(), holder.clone());
        move |backend: &Backend| {
            if backend.native(Api::Responses) {
                let _ = holder.set((backend.model.clone(), backend.name.clone()));
                ResponseStream::PassThrough(Box::new(ResponseEvents::new(
                    &model, counter, meter, sequence, created,
                )))
            } else {
                ResponseStream::Translated(Box::new(ChatToResponses::new(
                    &model, echo, sequence, meter, counter,
                )))
            }
        }
    };
    pipeline::stream_answer(
        state,
        plan,
        request_for,
        rewrite_for,
        Recording {
            keeper,
            created,
            holder,
        },
        move |error: &GatewayError| error.to_responses_event(sequence.load(Ordering::Relaxed)),
        guard,
    )
    .await
}

/// Waits for the whole `response` object, told in the client's names, and remembers where it
/// is stored.
async fn whole_reply(
    state: &AppState,
    plan: Plan,
    request_for: impl Fn(&Backend) -> UpstreamRequest + Sync,
    answering: Answering,
    guard: &RequestGuard,
) -> Result<Response<Body>, GatewayError> {
    let Answering {
        asked,
        echo,
        counter,
        keeper,
    } = answering;
    let (body, usage, backend) = pipeline::whole_answer(
        state,
        plan,
        request_for,
        |backend, body| {
            if backend.native(Api::Responses) {
                rewrite_response(body, &asked.model)
            } else {
                translate::response_from_completion(body, &asked.model, &echo)
            }
        },
        pipeline::MAX_COMPLETION_BYTES,
        guard,
    )
    .await?;
    if backend.native(Api::Responses) {
        let created = Created {
            id: ResponseId::of_object(&body),
            context_tokens: usage.map(|u| u.context()),
        };
        keeper.keep(&created, &backend.model, &backend.name).await;
    }
    let metering = pipeline::whole_metering(&body, usage, counter, output_tokens).await;
    *guard.meter_slot().lock().unwrap_or_else(|p| p.into_inner()) = metering;
    Ok(json_response(body))
}

/// Remembers where a stored response lives, for the key that created it.
struct Keeper {
    state: Arc<AppState>,
    /// The model as the client named it.
    model: String,
    key_id: String,
    /// The request asked for the response to be stored.
    store: bool,
}

impl Keeper {
    /// Records `created` as held by `backend` of the model `pool`.
    async fn keep(&self, created: &Created, pool: &str, backend: &str) {
        let Some(id) = created.id.as_ref().filter(|_| self.store) else {
            return;
        };
        let owner = Owner {
            model: self.model.clone(),
            pool: pool.to_owned(),
            backend: backend.to_owned(),
            key_id: self.key_id.clone(),
            context_tokens: created.context_tokens,
        };
        self.state.affinity.record(id, &owner).await;
    }
}

/// Records a stored response's home before the bytes that first name it (and again with its
/// size at its end) reach the client, so a follow-up sent the moment the client reads its id
/// already finds it.
struct Recording {
    keeper: Keeper,
    created: CreatedSlot,
    /// The model and backend that answered, when they serve the Responses API themselves.
    holder: Arc<OnceLock<(String, String)>>,
}

impl Around for Recording {
    fn around<S>(
        self,
        events: S,
    ) -> impl Stream<Item = Result<Bytes, GatewayError>> + Send + 'static
    where
        S: Stream<Item = Result<Bytes, GatewayError>> + Send + 'static,
    {
        if !self.keeper.store {
            return Either::Left(events);
        }
        let Self {
            keeper,
            created,
            holder,
        } = self;
        Either::Right(async_stream::stream! {
            let mut events = std::pin::pin!(events);
            let mut recorded = Created::default();
            while let Some(item) = events.next().await {
                let seen = created.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some((pool, backend)) = holder.get().filter(|_| seen != recorded) {
                    keeper.keep(&seen, pool, backend).await;
                    recorded = seen;
                }
                yield item;
            }
        })
    }
}
