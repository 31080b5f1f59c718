//! `POST /v1/jobs`, `GET /v1/jobs`, `GET /v1/jobs/{id}`.
//!
//! Idempotency follows Stripe: the first response to an `Idempotency-Key` is stored in the same
//! transaction as the jobs and replayed for the same key and body; the same key with another
//! body is refused with 422. Concurrent duplicates serialise on the key's primary key.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::responses::{NO_KEY, READ_FORBIDDEN, SUBMIT_FORBIDDEN, UNAVAILABLE, UNSTORABLE_URI};
use super::{ApiError, Submitter, Tenant};
use crate::app::Ctx;
use crate::db::jobs::{Inserted, JobFilter, JobRow};
use crate::domain::job::JobStatus;
use crate::ids::new_id;

/// Reads a JSON body, turning every failure into a clear API error.
pub fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<(Bytes, Value), ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("request body is too large: {e}"))
        } else {
            ApiError::bad(format!("could not read the request body: {e}"))
        }
    })?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad(format!("request body is not valid JSON: {e}")))?;
    Ok((bytes, value))
}

/// Submits one job, or `{"jobs": [...], "batch_id"?, "metadata"?}`.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", operation_id = "create_job",
    request_body(content = inline(super::schemas::CreateJobBody), description = "One job, or `{\"jobs\": [...], \"batch_id\"?, \"metadata\"?}`"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same key and body")),
    responses((status = 200, description = "The queued job (`{\"id\", \"object\": \"job\", \"status\": \"queued\", \"created\", …}`), \
                  or for `jobs` a list of them with their `batch_id`; a replayed `Idempotency-Key` gets the first answer", body = Object),
              (status = 400, description = "The body is not JSON, not a job or `{\"jobs\": [...]}`, or has a field of the \
                  wrong type, or `Idempotency-Key` is not 1 to 255 characters; `error.param` names the field", body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = SUBMIT_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = "`batch_id` names no batch of this key's tenant", body = super::ErrorBody),
              (status = 409, description = "The `batch_id` batch was cancelled or has finished (it takes no more jobs), or already holds a job \
                  with one of the `custom_id`s", body = super::ErrorBody),
              (status = 413, description = "The body is larger than `server.max_body_bytes`, or `jobs` lists more than \
                  `limits.max_jobs_per_request` jobs", body = super::ErrorBody),
              (status = 422, description = "The request failed validation, a job can never fit its budget, or its \
                  idempotency key was used for a different request; `error.param` names the field", body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(ctx): State<Arc<Ctx>>,
    Submitter { tenant, key_id }: Submitter,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (bytes, value) = parse_body(body)?;
    let idem_key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    if let Some(k) = &idem_key
        && (k.is_empty() || k.len() > 255)
    {
        return Err(ApiError::BadRequest {
            message: "Idempotency-Key must be 1 to 255 characters".into(),
            param: Some("Idempotency-Key".into()),
        });
    }
    let (inputs, batch_id, metadata, many) =
        split_submission(value, ctx.config.limits.max_jobs_per_request)?;
    let now = chrono::Utc::now();
    let mut rows = crate::submit::prepare(&ctx, &tenant, inputs, now)?;
    for r in &mut rows {
        r.api_key_id = Some(key_id.clone());
    }
    let unfit = crate::submit::never_fitting(&ctx, &tenant, &rows, now).await?;
    if let Some((i, e)) = unfit
        .into_iter()
        .enumerate()
        .find_map(|(i, e)| Some((i, e?)))
    {
        return Err(ApiError::Invalid(if many {
            e.within(&format!("jobs[{i}]."))
        } else {
            e
        }));
    }

    let mut tx = ctx.pool.begin().await?;
    let batch_id = match (many, batch_id) {
        (_, Some(b)) => {
            check_batch_open(&mut tx, &tenant, &b, &rows).await?;
            Some(b)
        }
        (true, None) => {
            let id = new_id("batch");
            crate::db::jobs::insert_batch(&mut tx, &id, &tenant, "api", &metadata).await?;
            Some(id)
        }
        (false, None) => None,
    };
    let inserted = crate::db::jobs::insert_jobs(
        &mut tx,
        &tenant,
        batch_id.as_deref(),
        &rows,
        ctx.config.worker.relay_grace,
    )
    .await?;
    let replayed: Vec<&crate::db::jobs::NewJobRow> = rows
        .iter()
        .zip(&inserted)
        .filter(|(_, i)| !i.created)
        .map(|(r, _)| r)
        .collect();
    let conflicts = crate::db::jobs::idempotency_conflicts(&mut tx, &tenant, &replayed).await?;
    if let Some(key) = conflicts.iter().next() {
        tx.rollback().await?;
        return Err(ApiError::Invalid(crate::domain::job::FieldError::new(
            "idempotency_key",
            format!(
                "`{key}` was already used for a job with a different request; use a new key for a new job"
            ),
        )));
    }
    let response = if many {
        list_response(&batch_id, &inserted)
    } else {
        single_response(&batch_id, &inserted[0])
    };

    if let Some(key) = &idem_key {
        let hash = Sha256::digest(&bytes).to_vec();
        let stored = sqlx::query(
            "INSERT INTO idempotency_keys (tenant, key, request_hash, status_code, response)
             VALUES ($1, $2, $3, 200, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&tenant)
        .bind(key)
        .bind(&hash)
        .bind(&response)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !stored {
            tx.rollback().await?;
            return replay(&ctx, &tenant, key, &hash).await;
        }
    }
    tx.commit().await?;
    crate::submit::dispatch(&ctx, &tenant, &inserted).await;
    Ok((StatusCode::OK, Json(response)))
}

/// Refuses adding to a batch that is missing, cancelled or finished, or adding a `custom_id`
/// the batch already has. Locks the batch row until the transaction ends.
async fn check_batch_open(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &str,
    batch_id: &str,
    rows: &[crate::db::jobs::NewJobRow],
) -> Result<(), ApiError> {
    use crate::db::jobs::BatchOpen;
    match crate::db::jobs::lock_batch_for_adding(tx, tenant, batch_id).await? {
        BatchOpen::Open => {}
        BatchOpen::Missing => return Err(ApiError::NotFound(format!("no batch `{batch_id}`"))),
        BatchOpen::Cancelled => {
            return Err(ApiError::Conflict(format!(
                "batch `{batch_id}` was cancelled and takes no more jobs; submit them as a new batch"
            )));
        }
        BatchOpen::Finished => {
            return Err(ApiError::Conflict(format!(
                "batch `{batch_id}` has finished (every job in it reached a final state) and takes no more jobs; submit them as a new batch"
            )));
        }
    }
    let ids: Vec<&str> = rows.iter().filter_map(|r| r.custom_id.as_deref()).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let taken = crate::db::jobs::custom_ids_in_batch(tx, batch_id, &ids).await?;
    if !taken.is_empty() {
        return Err(ApiError::Conflict(format!(
            "batch `{batch_id}` already has jobs with custom_id {}; each custom_id must be unique within a batch",
            taken
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

async fn replay(
    ctx: &Ctx,
    tenant: &str,
    key: &str,
    hash: &[u8],
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (stored_hash, status, response): (Vec<u8>, i32, Value) = sqlx::query_as(
        "SELECT request_hash, status_code, response FROM idempotency_keys WHERE tenant = $1 AND key = $2",
    )
    .bind(tenant)
    .bind(key)
    .fetch_one(&ctx.pool)
    .await?;
    if stored_hash != hash {
        return Err(ApiError::Invalid(crate::domain::job::FieldError::new(
            "Idempotency-Key",
            format!(
                "`{key}` was already used with a different request body; use a new key for a new request"
            ),
        )));
    }
    let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    Ok((status, Json(response)))
}

/// Splits a submission into job values, an optional target batch, metadata and whether it was a list.
fn split_submission(
    value: Value,
    max: usize,
) -> Result<(Vec<Value>, Option<String>, Value, bool), ApiError> {
    let Value::Object(mut obj) = value else {
        return Err(ApiError::bad(
            "the body must be a job object or {\"jobs\": [...]}",
        ));
    };
    let Some(jobs) = obj.remove("jobs") else {
        return Ok((vec![Value::Object(obj)], None, json!({}), false));
    };
    let Value::Array(list) = jobs else {
        return Err(ApiError::BadRequest {
            message: "`jobs` must be an array".into(),
            param: Some("jobs".into()),
        });
    };
    if list.is_empty() {
        return Err(ApiError::BadRequest {
            message: "`jobs` is empty".into(),
            param: Some("jobs".into()),
        });
    }
    if list.len() > max {
        return Err(ApiError::TooLarge(format!(
            "{} jobs in one request; the limit is {max}: split the submission",
            list.len()
        )));
    }
    let batch_id = match obj.remove("batch_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(b)) => {
            crate::domain::text::check_str("batch_id", &b)?;
            Some(b)
        }
        Some(_) => {
            return Err(ApiError::BadRequest {
                message: "`batch_id` must be a string".into(),
                param: Some("batch_id".into()),
            });
        }
    };
    let metadata = obj.remove("metadata").unwrap_or_else(|| json!({}));
    crate::domain::text::check_value("metadata", &metadata)?;
    if let Some(k) = obj.keys().next() {
        return Err(ApiError::BadRequest {
            message: format!("unknown field `{k}` beside `jobs`"),
            param: Some(k.clone()),
        });
    }
    Ok((list, batch_id, metadata, true))
}

fn submitted(i: &Inserted) -> Value {
    json!({"id": i.id, "object": "job", "custom_id": i.custom_id, "status": "queued", "created": i.created})
}

fn single_response(batch_id: &Option<String>, i: &Inserted) -> Value {
    let mut v = submitted(i);
    v["batch_id"] = json!(batch_id);
    v
}

fn list_response(batch_id: &Option<String>, inserted: &[Inserted]) -> Value {
    json!({"object": "list", "batch_id": batch_id, "data": inserted.iter().map(submitted).collect::<Vec<_>>()})
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[param(pattern = "^[^\\u0000]*$")]
    batch_id: Option<String>,
    #[param(value_type = Option<super::schemas::JobStatusName>, inline)]
    status: Option<String>,
    /// The last id of the previous page.
    #[param(pattern = "^[^\\u0000]*$")]
    after: Option<String>,
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Lists the tenant's jobs, oldest first, paginated with `after`.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs",
    params(ListQuery),
    responses((status = 200, description = "A page of the tenant's jobs, oldest first: \
                  `{\"object\": \"list\", \"data\", \"first_id\", \"last_id\", \"has_more\"}`", body = Object),
              (status = 400, description = "An unknown query parameter or `status`, or `limit` outside 1 to 1000", body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    if let Some(s) = &q.status
        && JobStatus::parse(s).is_none()
    {
        return Err(ApiError::BadRequest {
            message: format!(
                "unknown status `{s}`; one of {}",
                JobStatus::ALL.map(JobStatus::as_str).join(", ")
            ),
            param: Some("status".into()),
        });
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest {
            message: "limit must be between 1 and 1000".into(),
            param: Some("limit".into()),
        });
    }
    let filter = JobFilter {
        batch_id: q.batch_id,
        status: q.status,
        after: q.after,
        finished: false,
        limit: limit + 1,
    };
    let mut rows = crate::db::jobs::list(&ctx.pool, &tenant, &filter).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(Json(json!({
        "object": "list",
        "data": rows.iter().map(job_view).collect::<Vec<_>>(),
        "first_id": rows.first().map(|r| &r.id),
        "last_id": rows.last().map(|r| &r.id),
        "has_more": has_more,
    })))
}

/// One job of the tenant's; another tenant's job is indistinguishable from a missing one.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "get_job", params(("id" = String, Path)),
    responses((status = 200, description = "The job: its status, route, usage, cost, response or error, and each attempt's error", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = "No such job for this key's tenant", body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    crate::failpoint::panic_at("api.get_job");
    let row = crate::db::jobs::get(&ctx.pool, &tenant, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job `{id}`")))?;
    Ok(Json(job_view(&row)))
}

/// The API's view of a job.
pub fn job_view(r: &JobRow) -> Value {
    json!({
        "id": r.id,
        "object": "job",
        "batch_id": r.batch_id,
        "custom_id": r.custom_id,
        "model": r.model,
        "status": r.status,
        "route": r.route,
        "route_reason": r.route_reason,
        "deployment": r.deployment,
        "attempts": r.attempt,
        "max_attempts": r.max_attempts,
        "priority": r.priority,
        "tags": r.tags,
        "deadline": r.deadline,
        "usage": {"input_tokens": r.input_tokens, "output_tokens": r.output_tokens, "cached_tokens": r.cached_tokens},
        "cost_usd": r.cost_usd.to_string(),
        "baseline_cost_usd": r.baseline_cost_usd.map(|d| d.to_string()),
        "response": r.response,
        "error": r.error,
        "errors": r.errors,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "finalized_at": r.finalized_at,
        "cancel_requested_at": r.cancel_requested_at,
        "dead_letter_purged_at": r.dead_letter_purged_at,
    })
}
