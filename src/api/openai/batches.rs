//! `POST /v1/batches`, `GET /v1/batches`, and the one batch object every batch route answers
//! with: OpenAI's `Batch`, field for field, with sluice's totals alongside (jobs per state,
//! cost). A batch created here is validated and finalized by `crate::openai_batches`; a native
//! batch (from `POST /v1/jobs`) is shown through the same object, its status derived from its
//! jobs.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::ListPage;
use crate::api::responses::{
    BODY_TOO_LARGE, NO_KEY, READ_FORBIDDEN, SUBMIT_FORBIDDEN, UNAVAILABLE, UNSTORABLE_URI,
};
use crate::api::{ApiError, Submitter, Tenant};
use crate::app::Ctx;
use crate::db::jobs::BatchSummary;
use crate::db::openai_batches::{BatchRecord, NewBatch};
use crate::domain::openai_batch::parse_window;

/// The only endpoint a batch may target.
pub const CHAT_ENDPOINT: &str = "/v1/chat/completions";

/// OpenAI's `request_counts`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestCounts {
    pub total: i64,
    pub completed: i64,
    /// Failed, expired or cancelled requests.
    pub failed: i64,
}

/// OpenAI's `usage` of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchUsage {
    pub input_tokens: i64,
    pub input_tokens_details: CachedTokens,
    pub output_tokens: i64,
    pub output_tokens_details: ReasoningTokens,
    pub total_tokens: i64,
}

/// `input_tokens_details`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CachedTokens {
    pub cached_tokens: i64,
}

/// `output_tokens_details`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReasoningTokens {
    pub reasoning_tokens: i64,
}

/// A batch: OpenAI's `Batch` object, plus sluice's `counts`, `cost_usd` and `source`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchObject {
    /// `batch_…`.
    pub id: String,
    /// Always `batch`.
    pub object: &'static str,
    pub endpoint: String,
    /// `{"object": "list", "data": [{"code", "message", "param", "line"}]}` when validation failed.
    #[schema(value_type = Option<Object>)]
    pub errors: Option<Value>,
    pub input_file_id: Option<String>,
    pub completion_window: String,
    /// `validating`, `failed`, `in_progress`, `finalizing`, `completed`, `expired`,
    /// `cancelling` or `cancelled`.
    pub status: String,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    pub usage: BatchUsage,
    /// sluice: jobs per state (`queued`, `running`, `succeeded`, …).
    pub counts: HashMap<String, i64>,
    /// sluice: what the batch has cost so far, in USD (a decimal string).
    pub cost_usd: String,
    /// sluice: `openai` (from `POST /v1/batches`) or how a native batch was submitted.
    pub source: String,
}

fn secs(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp())
}

/// The batch object of a batch row and its jobs' totals.
pub fn batch_object(b: &BatchRecord, s: &BatchSummary) -> BatchObject {
    let n = |k: &str| s.counts.get(k).copied().unwrap_or(0);
    // A native batch's status comes from its jobs: `cancelling` from a cancel until its running
    // jobs stop, then `cancelled` (or `completed` if the cancel found nothing left to stop).
    let status = b.status.clone().unwrap_or_else(|| {
        let finished = n("succeeded") + n("failed") + n("cancelled") + n("expired");
        let done = s.total > 0 && finished == s.total;
        match (b.cancelled_at.is_some(), done) {
            (true, true) if n("cancelled") > 0 => "cancelled",
            (true, false) => "cancelling",
            (_, true) => "completed",
            (false, false) => "in_progress",
        }
        .into()
    });
    let cached: i64 = 0;
    BatchObject {
        id: b.id.clone(),
        object: "batch",
        endpoint: b.endpoint.clone().unwrap_or_else(|| CHAT_ENDPOINT.into()),
        errors: b.errors.clone(),
        input_file_id: b.input_file_id.clone(),
        completion_window: b.completion_window.clone().unwrap_or_else(|| "24h".into()),
        status,
        output_file_id: b.output_file_id.clone(),
        error_file_id: b.error_file_id.clone(),
        created_at: b.created_at.timestamp(),
        in_progress_at: secs(b.in_progress_at),
        expires_at: secs(b.expires_at),
        finalizing_at: secs(b.finalizing_at),
        completed_at: secs(b.completed_at),
        failed_at: secs(b.failed_at),
        expired_at: secs(b.expired_at),
        cancelling_at: secs(b.cancelling_at),
        cancelled_at: secs(b.cancelled_at),
        request_counts: RequestCounts {
            total: s.total,
            completed: n("succeeded"),
            failed: n("failed") + n("expired") + n("cancelled"),
        },
        metadata: Some(b.metadata.clone()),
        usage: BatchUsage {
            input_tokens: s.input_tokens,
            input_tokens_details: CachedTokens {
                cached_tokens: cached,
            },
            output_tokens: s.output_tokens,
            output_tokens_details: ReasoningTokens {
                reasoning_tokens: 0,
            },
            total_tokens: s.input_tokens.saturating_add(s.output_tokens),
        },
        counts: s.counts.clone(),
        cost_usd: s.cost_usd.to_string(),
        source: b.source.clone(),
    }
}

/// Reads one batch of `tenant`'s as the batch object.
pub async fn load(ctx: &Ctx, tenant: &str, id: &str) -> Result<BatchObject, ApiError> {
    let not_found = || ApiError::NotFound(format!("no batch `{id}`"));
    let record = crate::db::openai_batches::get(&ctx.pool, tenant, id)
        .await?
        .ok_or_else(not_found)?;
    let summary = crate::db::jobs::batch_summary(&ctx.pool, tenant, id)
        .await?
        .ok_or_else(not_found)?;
    Ok(batch_object(&record, &summary))
}

/// The body of `POST /v1/batches`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateBatch {
    /// A file uploaded with purpose `batch`: one request per line.
    pub input_file_id: String,
    /// Must be `/v1/chat/completions`.
    #[schema(pattern = "^/v1/chat/completions(?![\\s\\S])")]
    pub endpoint: String,
    // `24h`, or another window from `1h` to `720h` (also `7d`); it becomes every job's deadline,
    // and routing picks real-time calls or a provider batch from it. (A `///` here would wrap the
    // written schema in an `allOf` with `type: object`; its description lives in the schema.)
    #[schema(value_type = crate::api::schemas::CompletionWindow, inline)]
    pub completion_window: String,
    // Up to 16 string pairs, returned as given (described in the schema, as above).
    #[serde(default)]
    #[schema(value_type = crate::api::schemas::BatchMetadata, inline, required = false)]
    pub metadata: Option<Value>,
    /// Accepted for compatibility; sluice keeps output files until they are deleted.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub output_expires_after: Option<Value>,
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::BadRequest {
        message: message.into(),
        param: Some(param.into()),
    }
}

fn check_metadata(m: &Option<Value>) -> Result<Value, ApiError> {
    let map = match m {
        None | Some(Value::Null) => return Ok(Value::Object(Map::new())),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(bad("metadata must be an object of strings", "metadata")),
    };
    if map.len() > 16 {
        return Err(bad("metadata holds at most 16 pairs", "metadata"));
    }
    for (k, v) in map {
        match v {
            Value::String(s) if k.chars().count() <= 64 && s.chars().count() <= 512 => {}
            _ => {
                return Err(bad(
                    format!(
                        "metadata `{k}`: keys are at most 64 characters and values strings of at most 512"
                    ),
                    "metadata",
                ));
            }
        }
    }
    Ok(Value::Object(map.clone()))
}

/// Creates a batch over an uploaded file. It starts `validating`; the batch loop checks every
/// line before anything is enqueued.
#[utoipa::path(post, path = "/v1/batches", tag = "batches", operation_id = "createBatch", request_body = CreateBatch,
    responses((status = 200, description = "The new batch, `validating`", body = BatchObject),
              (status = 400, description = "A malformed body, an `endpoint` other than `/v1/chat/completions`, an invalid \
                  `completion_window` or `metadata`, or an input file whose purpose is not `batch`; `error.param` \
                  names the field", body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = SUBMIT_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = "No such `input_file_id` for this key's tenant", body = super::ErrorBody),
              (status = 413, description = BODY_TOO_LARGE, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(ctx): State<Arc<Ctx>>,
    Submitter { tenant, key_id }: Submitter,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchObject>, ApiError> {
    let (_, value) = crate::api::jobs::parse_body(body)?;
    let req: CreateBatch = serde_json::from_value(value)
        .map_err(|e| ApiError::bad(format!("invalid batch request: {e}")))?;
    if req.endpoint != CHAT_ENDPOINT {
        return Err(bad(
            format!(
                "endpoint `{}` is not supported; sluice runs `{CHAT_ENDPOINT}` batches",
                req.endpoint
            ),
            "endpoint",
        ));
    }
    let window = parse_window(&req.completion_window).map_err(|m| bad(m, "completion_window"))?;
    let metadata = check_metadata(&req.metadata)?;
    let file = crate::db::files::get(&ctx.pool, &tenant, &req.input_file_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no file `{}`", req.input_file_id)))?;
    if file.purpose != "batch" {
        return Err(bad(
            format!(
                "file `{}` has purpose `{}`; upload the input with purpose `batch`",
                file.id, file.purpose
            ),
            "input_file_id",
        ));
    }
    let id = crate::ids::new_id("batch");
    let expires_at = Utc::now()
        .checked_add_signed(window)
        .ok_or_else(|| bad("completion_window is too long", "completion_window"))?;
    let record = crate::db::openai_batches::create(
        &ctx.pool,
        &NewBatch {
            id: &id,
            tenant: &tenant,
            input_file_id: &file.id,
            endpoint: CHAT_ENDPOINT,
            completion_window: &req.completion_window,
            expires_at,
            metadata: &metadata,
            api_key_id: &key_id,
        },
    )
    .await?;
    let summary = BatchSummary {
        id: id.clone(),
        created_at: Some(record.created_at),
        ..Default::default()
    };
    Ok(Json(batch_object(&record, &summary)))
}

/// Query of `GET /v1/batches`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListBatches {
    /// A batch id: list the batches created before it.
    #[param(pattern = "^[^\\u0000]*$")]
    after: Option<String>,
    /// 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// Lists the tenant's batches, newest first.
#[utoipa::path(get, path = "/v1/batches", tag = "batches", operation_id = "listBatches", params(ListBatches),
    responses((status = 200, description = "A page of the tenant's batches, newest first", body = ListPage<BatchObject>),
              (status = 400, description = "An unknown query parameter, or `limit` outside 1 to 100", body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    query: Result<Query<ListBatches>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ListPage<BatchObject>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let limit = super::check_limit(q.limit, 20, 100)?;
    let records =
        crate::db::openai_batches::list(&ctx.pool, &tenant, q.after.as_deref(), limit + 1).await?;
    let mut data = Vec::with_capacity(records.len());
    for r in &records {
        let summary = crate::db::jobs::batch_summary(&ctx.pool, &tenant, &r.id)
            .await?
            .unwrap_or_default();
        data.push(batch_object(r, &summary));
    }
    Ok(Json(ListPage::new(data, limit, |b| b.id.clone())))
}

/// Cancels an OpenAI batch: `cancelling` at once, its unfinished jobs cancelled (running ones
/// asked to stop); the batch loop moves it to `cancelled` with its files once they all stop.
/// `None` if `id` is not an OpenAI batch of `tenant`'s that can still be cancelled. Recorded in
/// the audit log as `actor`'s `batch.cancel`.
pub async fn cancel(
    ctx: &Ctx,
    actor: &str,
    tenant: &str,
    id: &str,
) -> Result<Option<BatchObject>, ApiError> {
    let Some(was) = crate::db::openai_batches::request_cancel(&ctx.pool, tenant, id).await? else {
        return Ok(None);
    };
    let by = crate::db::cancel::CancelAudit {
        actor,
        status: Some((was.as_str(), "cancelling")),
    };
    crate::db::cancel::cancel_batch(&ctx.pool, tenant, id, by).await?;
    load(ctx, tenant, id).await.map(Some)
}
