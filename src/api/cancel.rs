//! `POST /v1/jobs/{id}/cancel` and `POST /v1/batches/{id}/cancel` (native batches).
//!
//! A job not yet running is cancelled at once; a running one is asked to stop (its worker
//! aborts the provider call within a moment) and shows `cancel_requested_at` until it does.
//! Whatever was already recorded stays. Cancelling what has finished is a 409. A batch's
//! cancel is recorded in the audit log with the key id that asked for it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::admin::Caller;
use super::jobs::job_view;
use super::responses::{NO_KEY, SUBMIT_FORBIDDEN, UNAVAILABLE, UNSTORABLE_URI};
use super::{ApiError, Tenant};
use crate::app::Ctx;

/// Cancels one job; answers with the job.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", operation_id = "cancel_job", params(("id" = String, Path)),
    responses((status = 200, description = "The job, `cancelled`, or still `running` with `cancel_requested_at` until its worker stops", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = SUBMIT_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = "No such job for this key's tenant", body = super::ErrorBody),
              (status = 409, description = "The job has already finished", body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn job(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let report = crate::db::cancel::cancel_job(&ctx.pool, &tenant, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job `{id}`")))?;
    if let Some((_, status)) = report.finished.first() {
        return Err(ApiError::Conflict(format!(
            "job `{id}` has already finished ({status}); only a job that is queued, waiting for a retry or running can be cancelled"
        )));
    }
    let row = crate::db::jobs::get(&ctx.pool, &tenant, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job `{id}`")))?;
    Ok(Json(job_view(&row)))
}

/// Cancels a batch. An OpenAI batch moves to `cancelling` (then `cancelled` once its jobs have
/// stopped); a native batch has every unfinished job cancelled. Answers with the batch object,
/// a native one also with how many jobs were cancelled at once or asked to stop.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "batches", operation_id = "cancelBatch", params(("id" = String, Path)),
    responses((status = 200, description = "The batch: an OpenAI batch now `cancelling`; a native batch with how many jobs were \
                  `cancelled` and how many asked to stop (`cancel_requested`)", body = super::openai::batches::BatchObject),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = SUBMIT_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = "No such batch for this key's tenant", body = super::ErrorBody),
              (status = 409, description = "The batch can no longer be cancelled: an OpenAI batch that is not validating \
                  or in progress, or a native batch whose jobs have all finished", body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn batch(
    State(ctx): State<Arc<Ctx>>,
    Caller { tenant, actor }: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = crate::db::openai_batches::get(&ctx.pool, &tenant, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no batch `{id}`")))?;
    if let Some(status) = &record.status {
        return match super::openai::batches::cancel(&ctx, &actor, &tenant, &id).await? {
            Some(b) => Ok(Json(json!(b))),
            None => Err(ApiError::Conflict(format!(
                "batch `{id}` is {status}; only a batch that is validating or in progress can be cancelled"
            ))),
        };
    }
    // Closed to new jobs first, so none slips in after the cancel.
    crate::db::jobs::mark_batch_cancelled(&ctx.pool, &tenant, &id).await?;
    let by = crate::db::cancel::CancelAudit {
        actor: &actor,
        status: None,
    };
    let report = crate::db::cancel::cancel_batch(&ctx.pool, &tenant, &id, by)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no batch `{id}`")))?;
    if report.cancelled.is_empty() && report.requested.is_empty() {
        return Err(ApiError::Conflict(format!(
            "batch `{id}` has already finished: every job in it reached a final state"
        )));
    }
    let mut view = json!(super::openai::batches::load(&ctx, &tenant, &id).await?);
    view["cancelled"] = json!(report.cancelled.len());
    view["cancel_requested"] = json!(report.requested.len());
    Ok(Json(view))
}
