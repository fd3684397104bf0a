//! (method, path) -> handler, and the per-request frame around it: request id, concurrency
//! permit, guard, error rendering. Unknown paths are 404 and wrong methods 405, both as
//! OpenAI errors.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument;

use crate::body::Body;
use crate::error::GatewayError;
use crate::forwarded::client_addr;
use crate::handlers::responses::{self, StoredAction};
use crate::handlers::{chat, embeddings, models, probes, usage};
use crate::openai::ChatRequest;
use crate::openai::completions::CompletionRequest;
use crate::request_id::{self, RequestId};
use crate::settle::RequestGuard;
use crate::state::AppState;
use crate::telemetry::traces::TraceCx;

/// Handles one request from `peer`; never fails: every error becomes an OpenAI-shaped response.
pub async fn handle(
    request: Request<Incoming>,
    state: Arc<AppState>,
    peer: SocketAddr,
) -> Response<Body> {
    let request_id = RequestId::from_headers(request.headers());
    let http2 = request.version() == Version::HTTP_2;
    let span = tracing::info_span!("request", request_id = %request_id);
    let route = Route::of(request.uri().path());
    let trace = TraceCx::start_request(
        state.tracing.as_ref(),
        request.headers(),
        request.method().as_str(),
        route.template(),
    );
    let mut guard = RequestGuard::start(
        request_id.clone(),
        request.method().clone(),
        request.uri().path(),
        route.label(),
        trace,
    );
    guard.set_client(client_addr(
        peer.ip(),
        request.headers(),
        &state.server.trusted_proxies,
    ));
    // The time spent inside the handler's polls is the gateway's own work; waits on the
    // upstream or the client are not (`sluicegate_overhead_seconds`).
    let mut busy = Duration::ZERO;
    let result = {
        let mut handler = pin!(dispatch(request, route, &state, peer, &mut guard).instrument(span));
        poll_fn(|cx| {
            let started = Instant::now();
            let polled = handler.as_mut().poll(cx);
            busy += started.elapsed();
            polled
        })
        .await
    };
    guard.add_busy(busy);
    let response = result.unwrap_or_else(|error| {
        guard.record_failure(&error);
        error.into_response()
    });
    let (mut parts, body) = response.into_parts();
    parts
        .headers
        .insert(request_id::HEADER, request_id.header_value());
    let body = guard.attach(parts.status, body, http2.then_some(&state.stalls));
    Response::from_parts(parts, body)
}

async fn dispatch(
    request: Request<Incoming>,
    route: Route,
    state: &Arc<AppState>,
    peer: SocketAddr,
    guard: &mut RequestGuard,
) -> Result<Response<Body>, GatewayError> {
    let method = request.method().clone();
    let read = method == Method::GET || method == Method::HEAD;
    match route {
        Route::Health if read => Ok(probes::health()),
        Route::Metrics if read && state.metrics && state.metrics_listen.is_none() => {
            Ok(probes::metrics())
        }
        // Per-key usage is not for whoever can reach the API: without a metrics listener it is
        // served to this machine only.
        Route::Usage if read && state.metrics_listen.is_none() && peer.ip().is_loopback() => {
            usage::usage(request.uri(), state).await
        }
        Route::Metrics | Route::Usage if read => Err(GatewayError::UnknownRoute {
            method: method.to_string(),
            path: shortened(request.uri().path()),
        }),
        Route::Ready if read => Ok(probes::ready(state)),
        // Each model endpoint's future is boxed on its own: the request's future is only as
        // large as its own endpoint's, not the largest of them all (moving and allocating
        // that much on every request cost the chat path 4-5% of its throughput).
        Route::ChatCompletions if method == Method::POST => {
            guard.hold(state.admission.try_admit()?);
            Box::pin(chat::generate::<ChatRequest>(request, state, guard)).await
        }
        Route::Completions if method == Method::POST => {
            guard.hold(state.admission.try_admit()?);
            Box::pin(chat::generate::<CompletionRequest>(request, state, guard)).await
        }
        Route::Responses if method == Method::POST => {
            guard.hold(state.admission.try_admit()?);
            Box::pin(responses::create(request, state, guard)).await
        }
        Route::Response(id) if method == Method::GET || method == Method::DELETE => {
            guard.hold(state.admission.try_admit()?);
            let action = if method == Method::GET {
                StoredAction::Retrieve
            } else {
                StoredAction::Delete
            };
            Box::pin(responses::stored(request, &id, action, state, guard)).await
        }
        Route::ResponseInputItems(id) if read => {
            guard.hold(state.admission.try_admit()?);
            Box::pin(responses::stored(
                request,
                &id,
                StoredAction::InputItems,
                state,
                guard,
            ))
            .await
        }
        Route::ResponseCancel(id) if method == Method::POST => {
            guard.hold(state.admission.try_admit()?);
            Box::pin(responses::stored(
                request,
                &id,
                StoredAction::Cancel,
                state,
                guard,
            ))
            .await
        }
        Route::Embeddings if method == Method::POST => {
            guard.hold(state.admission.try_admit()?);
            Box::pin(embeddings::embeddings(request, state, guard)).await
        }
        Route::Models if read => {
            guard.hold(state.admission.try_admit()?);
            models::list(request.headers(), state, guard)
        }
        Route::Model(id) if read => {
            guard.hold(state.admission.try_admit()?);
            models::get(request.headers(), &id, state, guard)
        }
        Route::Unknown => Err(GatewayError::UnknownRoute {
            method: method.to_string(),
            path: shortened(request.uri().path()),
        }),
        route => Err(GatewayError::MethodNotAllowed {
            method: method.to_string(),
            path: shortened(request.uri().path()),
            allow: route.allowed_methods(),
        }),
    }
}

fn shortened(path: &str) -> String {
    path.chars().take(256).collect()
}

enum Route {
    ChatCompletions,
    Completions,
    Responses,
    /// `/v1/responses/{id}`
    Response(String),
    /// `/v1/responses/{id}/cancel`
    ResponseCancel(String),
    /// `/v1/responses/{id}/input_items`
    ResponseInputItems(String),
    Embeddings,
    Models,
    Model(String),
    Health,
    Ready,
    Metrics,
    Usage,
    Unknown,
}

impl Route {
    /// The methods the route answers, for a 405's `Allow`.
    fn allowed_methods(&self) -> &'static str {
        match self {
            Self::ChatCompletions
            | Self::Completions
            | Self::Responses
            | Self::ResponseCancel(_)
            | Self::Embeddings => "POST",
            Self::ResponseInputItems(_) => "GET, HEAD",
            Self::Response(_) => "GET, DELETE",
            Self::Models
            | Self::Model(_)
            | Self::Health
            | Self::Ready
            | Self::Metrics
            | Self::Usage
            | Self::Unknown => "GET, HEAD",
        }
    }

    /// The route's name in metric labels: a fixed set, whatever the path.
    fn label(&self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Completions => "completions",
            Self::Responses => "responses",
            Self::Response(_) => "response",
            Self::ResponseCancel(_) => "response_cancel",
            Self::ResponseInputItems(_) => "response_input_items",
            Self::Embeddings => "embeddings",
            Self::Models => "models",
            Self::Model(_) => "model",
            Self::Health => "healthz",
            Self::Ready => "readyz",
            Self::Metrics => "metrics",
            Self::Usage => "usage",
            Self::Unknown => "unknown",
        }
    }

    /// The route as a path template, as HTTP spans name it.
    fn template(&self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Responses => "/v1/responses",
            Self::Response(_) => "/v1/responses/{response_id}",
            Self::ResponseCancel(_) => "/v1/responses/{response_id}/cancel",
            Self::ResponseInputItems(_) => "/v1/responses/{response_id}/input_items",
            Self::Embeddings => "/v1/embeddings",
            Self::Models => "/v1/models",
            Self::Model(_) => "/v1/models/{model}",
            Self::Health => "/healthz",
            Self::Ready => "/readyz",
            Self::Metrics => "/metrics",
            Self::Usage => "/usage",
            Self::Unknown => "unknown",
        }
    }

    fn of(path: &str) -> Self {
        match path {
            "/v1/chat/completions" => Self::ChatCompletions,
            "/v1/completions" => Self::Completions,
            "/v1/responses" => Self::Responses,
            "/v1/embeddings" => Self::Embeddings,
            "/v1/models" => Self::Models,
            "/healthz" => Self::Health,
            "/readyz" => Self::Ready,
            "/metrics" => Self::Metrics,
            "/usage" => Self::Usage,
            _ => {
                if let Some(id) = path.strip_prefix("/v1/models/").filter(|id| !id.is_empty()) {
                    return Self::Model(id.to_owned());
                }
                match path
                    .strip_prefix("/v1/responses/")
                    .map(|rest| rest.split('/'))
                {
                    Some(mut parts) => match (parts.next(), parts.next(), parts.next()) {
                        (Some(id), None, None) if !id.is_empty() => Self::Response(id.to_owned()),
                        (Some(id), Some("cancel"), None) if !id.is_empty() => {
                            Self::ResponseCancel(id.to_owned())
                        }
                        (Some(id), Some("input_items"), None) if !id.is_empty() => {
                            Self::ResponseInputItems(id.to_owned())
                        }
                        _ => Self::Unknown,
                    },
                    None => Self::Unknown,
                }
            }
        }
    }
}
