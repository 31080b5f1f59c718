//! `GET /v1/models`: the aliases a tenant may ask for, and whether a model name resolves.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::responses::{NO_KEY, READ_FORBIDDEN, UNAVAILABLE, UNSTORABLE_URI};
use super::{ApiError, Tenant};
use crate::app::Ctx;

/// Lists the configured aliases in OpenAI's list shape.
#[utoipa::path(get, path = "/v1/models", tag = "models", operation_id = "listModels",
    responses((status = 200, description = "The aliases as model objects: `{\"object\": \"list\", \"data\"}`", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(ctx): State<Arc<Ctx>>, _t: Tenant) -> Json<Value> {
    let catalog = ctx.catalog();
    let data: Vec<Value> = catalog
        .alias_names()
        .filter_map(|a| catalog.resolve(a).ok().map(|r| (a, r)))
        .map(|(a, r)| model_object(a, &r))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// Resolves one alias or model name; 404 with the reason if it does not resolve.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "models", operation_id = "retrieveModel",
    params(("model" = String, Path)),
    responses((status = 200, description = "The model object, with the `deployments` it resolves to and its `max_output_tokens`", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = "The name does not resolve; `error.message` says why", body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(ctx): State<Arc<Ctx>>,
    _t: Tenant,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = ctx.catalog().resolve(&model).map_err(ApiError::NotFound)?;
    Ok(Json(model_object(&model, &r)))
}

fn model_object(id: &str, r: &crate::domain::catalog::Resolved) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": 0,
        "owned_by": "sluice",
        "deployments": r.deployments.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "max_output_tokens": r.max_output_tokens,
    })
}

/// The input limits jobs are checked against.
///
/// So clients (`sluice submit`) can check a whole file with the server's own rules before
/// uploading anything: `{"object": "limits", "job": {...}, "max_jobs_per_request": n}`.
#[utoipa::path(get, path = "/v1/limits", tag = "models", operation_id = "get_limits",
    responses((status = 200, description = "`{\"object\": \"limits\", \"job\": {...}, \"max_jobs_per_request\"}`", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn limits(State(ctx): State<Arc<Ctx>>, _t: Tenant) -> Json<Value> {
    Json(json!({
        "object": "limits",
        "job": crate::submit::limits(&ctx.config),
        "max_jobs_per_request": ctx.config.limits.max_jobs_per_request,
    }))
}
