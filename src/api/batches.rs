//! `GET /v1/batches/{id}` (OpenAI's batch object plus sluice's totals) and
//! `GET /v1/batches/{id}/results` (JSONL of finished jobs, streamed, partial while running).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::responses::{NO_KEY, READ_FORBIDDEN, UNAVAILABLE, UNSTORABLE_URI};
use super::{ApiError, Tenant};
use crate::app::Ctx;
use crate::db::jobs::{JobFilter, JobRow};

/// A batch: OpenAI's batch object (for native and OpenAI batches alike) with sluice's totals.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches", operation_id = "retrieveBatch", params(("id" = String, Path)),
    responses((status = 200, description = "The batch object with sluice's totals", body = super::openai::batches::BatchObject),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = "No such batch for this key's tenant", body = super::openai::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<super::openai::batches::BatchObject>, ApiError> {
    Ok(Json(
        super::openai::batches::load(&ctx, &tenant, &id).await?,
    ))
}

/// Streams the finished jobs of a batch as JSONL, in job order.
#[utoipa::path(get, path = "/v1/batches/{id}/results", tag = "batches", operation_id = "get_batch_results",
    params(("id" = String, Path)),
    responses((status = 200, description = "One JSONL line per finished job, in job order; partial while the batch runs",
               content_type = "application/jsonl", body = String),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = "No such batch for this key's tenant", body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn results(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if crate::db::jobs::batch_summary(&ctx.pool, &tenant, &id)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no batch `{id}`")));
    }
    let stream = async_stream::stream! {
        let mut after: Option<String> = None;
        loop {
            let filter = JobFilter { batch_id: Some(id.clone()), status: None, after: after.clone(), finished: true, limit: 1000 };
            let rows = match crate::db::jobs::list(&ctx.pool, &tenant, &filter).await {
                Ok(r) => r,
                Err(e) => {
                    yield Err(std::io::Error::other(e));
                    break;
                }
            };
            let mut chunk = Vec::with_capacity(rows.len() * 512);
            for r in &rows {
                if serde_json::to_writer(&mut chunk, &result_line(r)).is_ok() {
                    chunk.push(b'\n');
                }
            }
            if !chunk.is_empty() {
                yield Ok::<_, std::io::Error>(chunk);
            }
            if rows.len() < 1000 {
                break;
            }
            after = rows.last().map(|r| r.id.clone());
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/jsonl")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// One result line: OpenAI's batch output fields (`id`, `custom_id`, `response`, `error`) plus
/// sluice's own (`status`, `deployment`, `route`, `cost_usd`).
pub fn result_line(r: &JobRow) -> Value {
    let response = (r.status == "succeeded").then(|| {
        json!({
            "status_code": 200,
            "request_id": r.response.as_ref().and_then(|b| b.get("id")).cloned(),
            "body": r.response,
        })
    });
    let error = (r.status != "succeeded").then(|| {
        let e = r.error.clone().unwrap_or(Value::Null);
        json!({
            "code": e.get("code").cloned().unwrap_or_else(|| json!(r.status)),
            "message": e.get("message").cloned().unwrap_or_else(|| json!(format!("job {}", r.status))),
        })
    });
    json!({
        "id": r.id,
        "custom_id": r.custom_id,
        "status": r.status,
        "response": response,
        "error": error,
        "deployment": r.deployment,
        "route": r.route,
        "usage": {"input_tokens": r.input_tokens, "output_tokens": r.output_tokens, "cached_tokens": r.cached_tokens},
        "cost_usd": r.cost_usd.to_string(),
    })
}
