//! `GET /v1/models` and `GET /v1/models/{id}`, in OpenAI's shapes, showing only the models the
//! caller may use. A model the key may not use is reported as not found here, as OpenAI does.

use http::{HeaderMap, Response};
use serde::Serialize;

use super::json::json_response;
use crate::auth::Principal;
use crate::body::Body;
use crate::error::GatewayError;
use crate::settle::RequestGuard;
use crate::state::AppState;

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

pub fn list(
    headers: &HeaderMap,
    state: &AppState,
    guard: &mut RequestGuard,
) -> Result<Response<Body>, GatewayError> {
    let principal = authenticated(headers, state, guard)?;
    let data = state
        .models
        .names()
        .filter(|name| principal.models.allows(name))
        .map(|name| model_object(name, state))
        .collect();
    let list = ModelList {
        object: "list",
        data,
    };
    Ok(json_response(
        serde_json::to_vec(&list).expect("invariant: model list serialises"),
    ))
}

pub fn get(
    headers: &HeaderMap,
    id: &str,
    state: &AppState,
    guard: &mut RequestGuard,
) -> Result<Response<Body>, GatewayError> {
    let principal = authenticated(headers, state, guard)?;
    let pool = state.models.find(id)?;
    if !principal.models.allows(&pool.name) {
        return Err(GatewayError::ModelNotFound {
            model: id.to_owned(),
            api: None,
        });
    }
    let object = model_object(&pool.name, state);
    Ok(json_response(
        serde_json::to_vec(&object).expect("invariant: model serialises"),
    ))
}

fn authenticated(
    headers: &HeaderMap,
    state: &AppState,
    guard: &mut RequestGuard,
) -> Result<Principal, GatewayError> {
    let principal = state.auth.authenticate(headers)?;
    guard.set_key(principal.key_id.clone());
    Ok(principal)
}

fn model_object<'a>(name: &'a str, state: &AppState) -> ModelObject<'a> {
    ModelObject {
        id: name,
        object: "model",
        created: state.started_unix,
        owned_by: "sluicegate",
    }
}
