//! `GET /v1/batches/{id}` (progress, in OpenAI's batch shape plus sluice's totals) and
//! `GET /v1/batches/{id}/results` (JSONL of finished jobs, streamed, partial while running).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, Tenant};
use crate::app::Ctx;
use crate::db::jobs::{BatchSummary, JobFilter, JobRow};

/// A batch's progress.
pub async fn get(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = crate::db::jobs::batch_summary(&ctx.pool, &tenant, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no batch `{id}`")))?;
    Ok(Json(batch_view(&s)))
}

/// The API's view of a batch's progress.
pub fn batch_view(s: &BatchSummary) -> Value {
    let n = |k: &str| s.counts.get(k).copied().unwrap_or(0);
    let finished = n("succeeded") + n("failed") + n("cancelled") + n("expired");
    let status = if s.total > 0 && finished == s.total {
        "completed"
    } else {
        "in_progress"
    };
    json!({
        "id": s.id,
        "object": "batch",
        "status": status,
        "created_at": s.created_at.map(|t| t.timestamp()),
        "request_counts": {"total": s.total, "completed": n("succeeded"), "failed": n("failed") + n("expired") + n("cancelled")},
        "counts": s.counts,
        "usage": {"input_tokens": s.input_tokens, "output_tokens": s.output_tokens},
        "cost_usd": s.cost_usd.to_string(),
    })
}

/// Streams the finished jobs of a batch as JSONL, in job order.
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
