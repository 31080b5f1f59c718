//! `GET /v1/dead_letters`, `POST /v1/dead_letters/requeue`, `POST /v1/dead_letters/purge`: the
//! tenant's jobs that finally failed, sent round again or taken off the list (never deleted).
//! Requeue and purge take `{"ids": [...]}` or `{"all": true}`, narrowed by `model` and `code`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::jobs::{job_view, parse_body};
use super::responses::{
    BODY_TOO_LARGE, NO_KEY, READ_FORBIDDEN, TENANT_ADMIN_FORBIDDEN, UNAVAILABLE, UNSTORABLE_URI,
};
use super::{ApiError, Tenant};
use crate::app::Ctx;
use crate::db::dead_letters::{self, DeadLetterFilter};

/// Requeue's and purge's 400 in the OpenAPI document.
const INVALID_SELECTION: &str = "The body is not `{\"ids\": [...]}` or `{\"all\": true}` (with `model` \
    and `code` optional), names both, or lists no ids or more than 10,000";

/// Requeue's and purge's 422 in the OpenAPI document.
const UNSTORABLE_SELECTION: &str = "An id, `model` or `code` in the body, or a query parameter, contains \
    a NUL character, which cannot be stored; `error.param` names it";

/// Most ids one requeue or purge may name.
const MAX_IDS: usize = 10_000;

/// Query of `GET /v1/dead_letters`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[param(pattern = "^[^\\u0000]*$")]
    model: Option<String>,
    #[param(pattern = "^[^\\u0000]*$")]
    code: Option<String>,
    /// The last id of the previous page.
    #[param(pattern = "^[^\\u0000]*$")]
    after: Option<String>,
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Lists the tenant's dead letters, oldest first, paginated with `after`.
#[utoipa::path(get, path = "/v1/dead_letters", tag = "dead_letters", operation_id = "list_dead_letters",
    params(ListQuery),
    responses((status = 200, description = "A page of the tenant's dead letters (jobs), oldest first: \
                   `{\"object\": \"list\", \"data\", \"first_id\", \"last_id\", \"has_more\"}`", body = Object),
              (status = 400, description = "An unknown query parameter, or `limit` outside 1 to 1000", body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest {
            message: "limit must be between 1 and 1000".into(),
            param: Some("limit".into()),
        });
    }
    let filter = DeadLetterFilter {
        tenant: Some(tenant),
        model: q.model,
        code: q.code,
        ..Default::default()
    };
    let mut rows = dead_letters::list(&ctx.pool, &filter, q.after.as_deref(), limit + 1).await?;
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

/// Which dead letters a requeue or purge acts on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

fn selection(
    tenant: String,
    body: Result<Bytes, BytesRejection>,
) -> Result<DeadLetterFilter, ApiError> {
    let (_, value) = parse_body(body)?;
    let s: Selection = serde_json::from_value(value).map_err(|e| {
        ApiError::bad(format!(
            "expected {{\"ids\": [...]}} or {{\"all\": true}}, optionally with \"model\" and \"code\": {e}"
        ))
    })?;
    for (field, v) in [("model", &s.model), ("code", &s.code)] {
        if let Some(v) = v {
            crate::domain::text::check_str(field, v)?;
        }
    }
    for (i, id) in s.ids.iter().flatten().enumerate() {
        crate::domain::text::check_str(&format!("ids[{i}]"), id)?;
    }
    let ids = match (s.ids, s.all) {
        (Some(_), true) => {
            return Err(ApiError::BadRequest {
                message: "give either `ids` or `all`, not both".into(),
                param: Some("all".into()),
            });
        }
        (None, false) => {
            return Err(ApiError::BadRequest {
                message: "name the dead letters: {\"ids\": [...]} or {\"all\": true}".into(),
                param: Some("ids".into()),
            });
        }
        (Some(ids), false) if ids.is_empty() || ids.len() > MAX_IDS => {
            return Err(ApiError::BadRequest {
                message: format!("`ids` must list 1 to {MAX_IDS} job ids"),
                param: Some("ids".into()),
            });
        }
        (ids, _) => ids,
    };
    Ok(DeadLetterFilter {
        tenant: Some(tenant),
        model: s.model,
        code: s.code,
        since: None,
        ids,
    })
}

/// The named ids that were not acted on (not dead letters of this tenant's, or no longer).
fn skipped(filter: &DeadLetterFilter, done: &[String]) -> Vec<String> {
    filter
        .ids
        .iter()
        .flatten()
        .filter(|id| !done.contains(id))
        .cloned()
        .collect()
}

/// Sends the selected dead letters round again.
#[utoipa::path(post, path = "/v1/dead_letters/requeue", tag = "dead_letters", operation_id = "requeue_dead_letters",
    request_body(content = inline(super::schemas::DeadLetterSelection), description = "`{\"ids\": [...]}` or `{\"all\": true}`, optionally narrowed by `model` and `code`"),
    responses((status = 200, description = "`{\"object\": \"dead_letters.requeue\", \"count\", \"requeued\", \"skipped\"}`: \
                   `skipped` lists the named ids that are not (or no longer) the tenant's dead letters", body = Object),
              (status = 400, description = INVALID_SELECTION, body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = TENANT_ADMIN_FORBIDDEN, body = super::ErrorBody),
              (status = 413, description = BODY_TOO_LARGE, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_SELECTION, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn requeue(
    State(ctx): State<Arc<Ctx>>,
    super::admin::Caller { tenant, actor }: super::admin::Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let by = format!("tenant {tenant} over the API");
    let filter = selection(tenant, body)?;
    let done = dead_letters::requeue(&ctx.pool, &filter, &by).await?;
    super::admin::audit_jobs(&ctx.pool, &actor, "dead_letters.requeue", &done).await?;
    Ok(Json(json!({
        "object": "dead_letters.requeue",
        "count": done.len(),
        "skipped": skipped(&filter, &done),
        "requeued": done,
    })))
}

/// Takes the selected dead letters off the list; the jobs and their history stay.
#[utoipa::path(post, path = "/v1/dead_letters/purge", tag = "dead_letters", operation_id = "purge_dead_letters",
    request_body(content = inline(super::schemas::DeadLetterSelection), description = "`{\"ids\": [...]}` or `{\"all\": true}`, optionally narrowed by `model` and `code`"),
    responses((status = 200, description = "`{\"object\": \"dead_letters.purge\", \"count\", \"purged\", \"skipped\"}`: \
                   `skipped` lists the named ids that are not (or no longer) the tenant's dead letters", body = Object),
              (status = 400, description = INVALID_SELECTION, body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = TENANT_ADMIN_FORBIDDEN, body = super::ErrorBody),
              (status = 413, description = BODY_TOO_LARGE, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_SELECTION, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn purge(
    State(ctx): State<Arc<Ctx>>,
    super::admin::Caller { tenant, actor }: super::admin::Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let filter = selection(tenant, body)?;
    let done = dead_letters::purge(&ctx.pool, &filter).await?;
    super::admin::audit_jobs(&ctx.pool, &actor, "dead_letters.purge", &done).await?;
    Ok(Json(json!({
        "object": "dead_letters.purge",
        "count": done.len(),
        "skipped": skipped(&filter, &done),
        "purged": done,
    })))
}
