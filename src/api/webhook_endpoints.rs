//! `/v1/webhook_endpoints`: the tenant's webhook endpoints, in the shapes of OpenAI's API so
//! the official SDK's `client.webhooks.create / retrieve / update / list / delete /
//! rotate_secret / test` work against sluice. `signing_secret` is returned only by create and
//! rotate_secret; every other view carries `signing_secret_hint`. Every change is recorded in
//! the audit log with the key id that made it. The operator's admin key manages any tenant's
//! endpoints under `/v1/admin/tenants/{tenant}/webhook_endpoints` (`super::admin_webhooks`)
//! through the same functions, recorded as `admin-key`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::Caller;
use super::responses::{
    NO_KEY, READ_FORBIDDEN, TENANT_ADMIN_FORBIDDEN, UNAVAILABLE, UNSTORABLE_URI,
};
use super::{ApiError, Tenant};
use crate::app::Ctx;
use crate::db::webhooks::{self as db, Endpoint};
use crate::webhooks::deliver::{Attempt, Deliverer};
use crate::webhooks::{EVENT_TYPES, is_event_type, sign};

/// Longest endpoint URL accepted.
const MAX_URL_LEN: usize = 2048;

/// The API's view of an endpoint; `secret` only at creation and rotation.
fn view(e: &Endpoint, with_secret: bool) -> Value {
    let mut v = json!({
        "id": e.id,
        "object": "webhook_endpoint",
        "created_at": e.created_at.timestamp(),
        "updated_at": e.updated_at.timestamp(),
        "name": e.name,
        "url": e.url,
        "event_types": e.event_types,
        "signing_secret_hint": sign::hint(&e.secret),
        "status": e.status,
        "disabled_reason": e.disabled_reason,
    });
    if with_secret {
        v["signing_secret"] = json!(e.secret);
    }
    v
}

/// A JSON object body (an empty body reads as `{}`), or a 400 naming the problem.
fn object<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| ApiError::bad(e.body_text()))?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

fn bad_param(message: String, param: &str) -> ApiError {
    ApiError::BadRequest {
        message,
        param: Some(param.into()),
    }
}

fn check_url(ctx: &Ctx, url: &str) -> Result<(), ApiError> {
    let parsed = match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
        _ => {
            return Err(bad_param(format!("`{url}` is not an http(s) URL"), "url"));
        }
    };
    if url.len() > MAX_URL_LEN {
        return Err(bad_param(
            format!("url is longer than {MAX_URL_LEN} characters"),
            "url",
        ));
    }
    crate::webhooks::ssrf::Guard::new(ctx.config.webhooks.allow_private_networks.clone())
        .check_url(&parsed)
        .map_err(|r| bad_param(r.to_string(), "url"))
}

fn check_event_types(types: &[String]) -> Result<(), ApiError> {
    if types.is_empty() {
        return Err(bad_param(
            "event_types must name at least one event type".into(),
            "event_types",
        ));
    }
    match types.iter().find(|t| !is_event_type(t)) {
        Some(t) => Err(bad_param(
            format!(
                "unknown event type `{t}`; sluice sends {}",
                EVENT_TYPES.join(", ")
            ),
            "event_types",
        )),
        None => Ok(()),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no webhook endpoint `{id}`"))
}

/// What create reads from its body (the admin route's too).
pub(super) const CREATE_BODY: &str = "`{\"url\", \"event_types\", \"name\"?}`: `url` an http(s) URL \
    (at most 2048 characters, private networks refused unless allowed), `event_types` at least one \
    of sluice's event types (`job.succeeded`, `batch.completed`, …); no other fields.";

/// What update reads from its body (the admin route's too).
pub(super) const UPDATE_BODY: &str = "Any of `url`, `event_types` and `name`, checked as at \
    creation; no other fields. An empty body is `{}`.";

/// What rotate_secret reads from its body (the admin route's too).
pub(super) const ROTATE_BODY: &str = "`{\"keep_old_secret_active_for_24_hours\"?: bool}` \
    (default false); an empty body is `{}`.";

/// Create's and update's 400 in the OpenAPI document (the admin routes' too).
pub(super) const INVALID_ENDPOINT: &str = "The body is not a JSON object, has an unknown field, or \
    `url` or `event_types` is missing (at creation) or invalid; `error.param` names the field";

/// List's 400 in the OpenAPI document (the admin route's too).
pub(super) const INVALID_PAGE: &str = "An unknown query parameter, or `limit` outside 1 to 100";

/// Rotate_secret's 400 in the OpenAPI document (the admin route's too).
pub(super) const INVALID_ROTATE: &str = "The body is not a JSON object, or has an unknown field";

/// The 404 of every route that names an endpoint, in the OpenAPI document.
const NO_ENDPOINT: &str = "No such webhook endpoint for this key's tenant";

/// Body of create and update.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointBody {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    name: Option<String>,
}

/// Creates a webhook endpoint of the caller's tenant.
///
/// The answer carries `signing_secret`, shown here and at rotation only.
#[utoipa::path(post, path = "/v1/webhook_endpoints", tag = "webhooks",
    operation_id = "create_webhook_endpoint",
    request_body(content = inline(super::schemas::NewWebhookEndpoint), description = CREATE_BODY),
    responses((status = 200, description = "The endpoint, with `signing_secret`", body = Object),
              (status = 400, description = INVALID_ENDPOINT, body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = TENANT_ADMIN_FORBIDDEN, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(ctx): State<Arc<Ctx>>,
    Caller { tenant, actor }: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    create_for(&ctx, &tenant, &actor, body).await
}

/// Creates an endpoint of `tenant`'s, recorded as `actor`.
pub(super) async fn create_for(
    ctx: &Ctx,
    tenant: &str,
    actor: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let b: EndpointBody = object(body)?;
    let url = b
        .url
        .ok_or_else(|| bad_param("url is required".into(), "url"))?;
    check_url(ctx, &url)?;
    let types = b
        .event_types
        .ok_or_else(|| bad_param("event_types is required".into(), "event_types"))?;
    check_event_types(&types)?;
    let name = b.name.unwrap_or_default();
    let e = db::create_endpoint(
        &ctx.pool,
        actor,
        tenant,
        &name,
        &url,
        &types,
        &sign::new_secret(),
    )
    .await?;
    Ok(Json(view(&e, true)))
}

/// Query of `GET /v1/webhook_endpoints`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// The last id of the previous page.
    #[param(pattern = "^[^\\u0000]*$")]
    after: Option<String>,
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// Lists the tenant's webhook endpoints, newest first, cursor-paginated with `after`.
#[utoipa::path(get, path = "/v1/webhook_endpoints", tag = "webhooks",
    operation_id = "list_webhook_endpoints",
    params(ListQuery),
    responses((status = 200, description = "A page of the tenant's endpoints, newest first, each with \
                  `signing_secret_hint`: `{\"object\": \"list\", \"data\", \"first_id\", \"last_id\", \"has_more\"}`", body = Object),
              (status = 400, description = INVALID_PAGE, body = super::ErrorBody),
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
    list_for(&ctx, &tenant, query).await
}

/// A page of `tenant`'s endpoints.
pub(super) async fn list_for(
    ctx: &Ctx,
    tenant: &str,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(bad_param("limit must be between 1 and 100".into(), "limit"));
    }
    let mut rows = db::list_endpoints(&ctx.pool, tenant, q.after.as_deref(), limit + 1).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(Json(json!({
        "object": "list",
        "data": rows.iter().map(|e| view(e, false)).collect::<Vec<_>>(),
        "first_id": rows.first().map(|e| &e.id),
        "last_id": rows.last().map(|e| &e.id),
        "has_more": has_more,
    })))
}

/// One of the tenant's webhook endpoints (with `signing_secret_hint`, never the secret).
#[utoipa::path(get, path = "/v1/webhook_endpoints/{id}", tag = "webhooks",
    operation_id = "retrieve_webhook_endpoint", params(("id" = String, Path)),
    responses((status = 200, description = "The endpoint, with `signing_secret_hint`", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = NO_ENDPOINT, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn retrieve(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    retrieve_for(&ctx, &tenant, &id).await
}

/// One of `tenant`'s endpoints.
pub(super) async fn retrieve_for(
    ctx: &Ctx,
    tenant: &str,
    id: &str,
) -> Result<Json<Value>, ApiError> {
    let e = db::get_endpoint(&ctx.pool, tenant, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(view(&e, false)))
}

/// Changes a webhook endpoint's `url`, `event_types` or `name`.
#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}", tag = "webhooks",
    operation_id = "update_webhook_endpoint", params(("id" = String, Path)),
    request_body(content = inline(super::schemas::WebhookEndpointChange), description = UPDATE_BODY),
    responses((status = 200, description = "The changed endpoint, with `signing_secret_hint`", body = Object),
              (status = 400, description = INVALID_ENDPOINT, body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = TENANT_ADMIN_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = NO_ENDPOINT, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(ctx): State<Arc<Ctx>>,
    Caller { tenant, actor }: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    update_for(&ctx, &tenant, &actor, &id, body).await
}

/// Changes one of `tenant`'s endpoints, recorded as `actor`.
pub(super) async fn update_for(
    ctx: &Ctx,
    tenant: &str,
    actor: &str,
    id: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let b: EndpointBody = object(body)?;
    if let Some(u) = &b.url {
        check_url(ctx, u)?;
    }
    if let Some(t) = &b.event_types {
        check_event_types(t)?;
    }
    let change = db::EndpointChange {
        name: b.name.as_deref(),
        url: b.url.as_deref(),
        event_types: b.event_types.as_deref(),
        enabled: None,
    };
    let e = db::update_endpoint(&ctx.pool, actor, tenant, id, &change)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(view(&e, false)))
}

/// Deletes a webhook endpoint.
#[utoipa::path(delete, path = "/v1/webhook_endpoints/{id}", tag = "webhooks",
    operation_id = "delete_webhook_endpoint", params(("id" = String, Path)),
    responses((status = 200, description = "`{\"id\", \"object\": \"webhook_endpoint.deleted\", \"deleted\": true}`", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = TENANT_ADMIN_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = NO_ENDPOINT, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(ctx): State<Arc<Ctx>>,
    Caller { tenant, actor }: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    delete_for(&ctx, &tenant, &actor, &id).await
}

/// Deletes one of `tenant`'s endpoints, recorded as `actor`.
pub(super) async fn delete_for(
    ctx: &Ctx,
    tenant: &str,
    actor: &str,
    id: &str,
) -> Result<Json<Value>, ApiError> {
    if !db::delete_endpoint(&ctx.pool, actor, tenant, id).await? {
        return Err(not_found(id));
    }
    Ok(Json(
        json!({"id": id, "object": "webhook_endpoint.deleted", "deleted": true}),
    ))
}

/// Body of `rotate_secret`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    #[serde(default)]
    keep_old_secret_active_for_24_hours: bool,
}

/// Gives a webhook endpoint a new signing secret, returned once.
///
/// With `keep_old_secret_active_for_24_hours`, deliveries carry both signatures for 24 hours.
#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}/rotate_secret", tag = "webhooks",
    operation_id = "rotate_webhook_endpoint_secret", params(("id" = String, Path)),
    request_body(content = inline(RotateBody), description = ROTATE_BODY),
    responses((status = 200, description = "The endpoint, with the new `signing_secret`", body = Object),
              (status = 400, description = INVALID_ROTATE, body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = TENANT_ADMIN_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = NO_ENDPOINT, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate_secret(
    State(ctx): State<Arc<Ctx>>,
    Caller { tenant, actor }: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    rotate_secret_for(&ctx, &tenant, &actor, &id, body).await
}

/// Gives one of `tenant`'s endpoints a new secret, recorded as `actor`.
pub(super) async fn rotate_secret_for(
    ctx: &Ctx,
    tenant: &str,
    actor: &str,
    id: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let b: RotateBody = object(body)?;
    let grace = b
        .keep_old_secret_active_for_24_hours
        .then(|| chrono::Utc::now() + chrono::Duration::hours(24));
    let e = db::rotate_endpoint_secret(&ctx.pool, actor, tenant, id, &sign::new_secret(), grace)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(view(&e, true)))
}

/// Body of `test`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    event_type: Option<String>,
}

/// Sends a sample event to a webhook endpoint now and answers with the endpoint's HTTP status.
///
/// The event is signed and recorded like any delivery. An endpoint that does not answer is a 400.
#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}/test", tag = "webhooks",
    operation_id = "test_webhook_endpoint", params(("id" = String, Path)),
    request_body(content = inline(super::schemas::WebhookTest), description = "`{\"event_type\"}`: one of sluice's event types; no other fields."),
    responses((status = 200, description = "`webhook_endpoint.test` with the endpoint's `status_code`", body = Object),
              (status = 400, description = "`event_type` is missing or unknown, the body has another field, \
                  or the endpoint did not answer the test delivery", body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = TENANT_ADMIN_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = NO_ENDPOINT, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn test(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let b: TestBody = object(body)?;
    let event_type = b
        .event_type
        .ok_or_else(|| bad_param("event_type is required".into(), "event_type"))?;
    check_event_types(std::slice::from_ref(&event_type)).map_err(|_| {
        bad_param(
            format!(
                "unknown event type `{event_type}`; sluice sends {}",
                EVENT_TYPES.join(", ")
            ),
            "event_type",
        )
    })?;
    if db::get_endpoint(&ctx.pool, &tenant, &id).await?.is_none() {
        return Err(not_found(&id));
    }
    let deliverer = Deliverer::new(
        ctx.pool.clone(),
        ctx.config.webhooks.clone(),
        crate::ids::new_id("api"),
    )?;
    match deliverer.test(&tenant, &id, &event_type).await? {
        Attempt::Answered { status, .. } => Ok(Json(json!({
            "object": "webhook_endpoint.test",
            "webhook_endpoint_id": id,
            "event_type": event_type,
            "status_code": status,
            "success": true,
        }))),
        Attempt::Failed(why) | Attempt::Permanent(why) => Err(ApiError::BadRequest {
            message: format!("the test delivery got no answer: {why}"),
            param: None,
        }),
    }
}
