//! The operator's view of every tenant's webhook endpoints, under
//! `/v1/admin/tenants/{tenant}/webhook_endpoints…`, open only to the admin key: the same
//! shapes, rules and audit rows as `/v1/webhook_endpoints` (see `super::webhook_endpoints`),
//! recorded as `admin-key`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use super::ApiError;
use super::admin::{ADMIN_ONLY, AdminCaller, NOT_ADMIN};
use super::responses::{NO_KEY, UNAVAILABLE, UNSTORABLE_URI};
use super::webhook_endpoints::{self as we, ListQuery};
use crate::app::Ctx;

/// The admin routes for tenants' webhook endpoints.
pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route(
            "/v1/admin/tenants/{tenant}/webhook_endpoints",
            get(list).post(create),
        )
        .route(
            "/v1/admin/tenants/{tenant}/webhook_endpoints/{id}",
            get(retrieve).post(update).delete(delete),
        )
        .route(
            "/v1/admin/tenants/{tenant}/webhook_endpoints/{id}/rotate_secret",
            post(rotate_secret),
        )
}

/// The 404 of the routes that name an endpoint, in the OpenAPI document.
const NO_ENDPOINT: &str = "That tenant has no such webhook endpoint";

/// A 404 unless `tenant` exists (an endpoint cannot belong to no tenant).
async fn known(ctx: &Ctx, tenant: &str) -> Result<(), ApiError> {
    if crate::db::tenants::exists(&ctx.pool, tenant).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("no tenant named `{tenant}`")))
    }
}

/// Lists a tenant's webhook endpoints, newest first, cursor-paginated with `after`.
#[utoipa::path(get, path = "/v1/admin/tenants/{tenant}/webhook_endpoints", tag = "admin",
    operation_id = "admin_list_webhook_endpoints", description = ADMIN_ONLY,
    params(("tenant" = String, Path), we::ListQuery),
    responses((status = 200, description = "A page of the tenant's endpoints, newest first, each with \
                  `signing_secret_hint`: `{\"object\": \"list\", \"data\", \"first_id\", \"last_id\", \"has_more\"}`", body = Object),
              (status = 400, description = we::INVALID_PAGE, body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 404, description = "No such tenant", body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn list(
    State(ctx): State<Arc<Ctx>>,
    _a: AdminCaller,
    Path(tenant): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    known(&ctx, &tenant).await?;
    we::list_for(&ctx, &tenant, query).await
}

/// Creates a webhook endpoint for a tenant; the answer carries `signing_secret`, shown once.
#[utoipa::path(post, path = "/v1/admin/tenants/{tenant}/webhook_endpoints", tag = "admin",
    operation_id = "admin_create_webhook_endpoint", description = ADMIN_ONLY,
    params(("tenant" = String, Path)),
    request_body(content = inline(super::schemas::NewWebhookEndpoint), description = we::CREATE_BODY),
    responses((status = 200, description = "The endpoint, with `signing_secret`", body = Object),
              (status = 400, description = we::INVALID_ENDPOINT, body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 404, description = "No such tenant", body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn create(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    known(&ctx, &tenant).await?;
    we::create_for(&ctx, &tenant, &actor, body).await
}

/// One of a tenant's webhook endpoints.
#[utoipa::path(get, path = "/v1/admin/tenants/{tenant}/webhook_endpoints/{id}", tag = "admin",
    operation_id = "admin_retrieve_webhook_endpoint", description = ADMIN_ONLY,
    params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "The endpoint, with `signing_secret_hint`", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 404, description = NO_ENDPOINT, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn retrieve(
    State(ctx): State<Arc<Ctx>>,
    _a: AdminCaller,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    we::retrieve_for(&ctx, &tenant, &id).await
}

/// Changes a tenant's webhook endpoint's `url`, `event_types` or `name`.
#[utoipa::path(post, path = "/v1/admin/tenants/{tenant}/webhook_endpoints/{id}", tag = "admin",
    operation_id = "admin_update_webhook_endpoint", description = ADMIN_ONLY,
    params(("tenant" = String, Path), ("id" = String, Path)),
    request_body(content = inline(super::schemas::WebhookEndpointChange), description = we::UPDATE_BODY),
    responses((status = 200, description = "The changed endpoint, with `signing_secret_hint`", body = Object),
              (status = 400, description = we::INVALID_ENDPOINT, body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 404, description = NO_ENDPOINT, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn update(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    Path((tenant, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    we::update_for(&ctx, &tenant, &actor, &id, body).await
}

/// Deletes a tenant's webhook endpoint.
#[utoipa::path(delete, path = "/v1/admin/tenants/{tenant}/webhook_endpoints/{id}", tag = "admin",
    operation_id = "admin_delete_webhook_endpoint", description = ADMIN_ONLY,
    params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "`{\"id\", \"object\": \"webhook_endpoint.deleted\", \"deleted\": true}`", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 404, description = NO_ENDPOINT, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn delete(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    we::delete_for(&ctx, &tenant, &actor, &id).await
}

/// Gives a tenant's webhook endpoint a new signing secret, returned once.
#[utoipa::path(post, path = "/v1/admin/tenants/{tenant}/webhook_endpoints/{id}/rotate_secret",
    tag = "admin", operation_id = "admin_rotate_webhook_endpoint_secret", description = ADMIN_ONLY,
    params(("tenant" = String, Path), ("id" = String, Path)),
    request_body(content = inline(we::RotateBody), description = we::ROTATE_BODY),
    responses((status = 200, description = "The endpoint, with the new `signing_secret`", body = Object),
              (status = 400, description = we::INVALID_ROTATE, body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 404, description = NO_ENDPOINT, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn rotate_secret(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    Path((tenant, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    we::rotate_secret_for(&ctx, &tenant, &actor, &id, body).await
}
