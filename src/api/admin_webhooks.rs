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
use super::admin::AdminCaller;
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

/// A 404 unless `tenant` exists (an endpoint cannot belong to no tenant).
async fn known(ctx: &Ctx, tenant: &str) -> Result<(), ApiError> {
    if crate::db::tenants::exists(&ctx.pool, tenant).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("no tenant named `{tenant}`")))
    }
}

async fn list(
    State(ctx): State<Arc<Ctx>>,
    _a: AdminCaller,
    Path(tenant): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    known(&ctx, &tenant).await?;
    we::list_for(&ctx, &tenant, query).await
}

async fn create(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    known(&ctx, &tenant).await?;
    we::create_for(&ctx, &tenant, &actor, body).await
}

async fn retrieve(
    State(ctx): State<Arc<Ctx>>,
    _a: AdminCaller,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    we::retrieve_for(&ctx, &tenant, &id).await
}

async fn update(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    Path((tenant, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    we::update_for(&ctx, &tenant, &actor, &id, body).await
}

async fn delete(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    we::delete_for(&ctx, &tenant, &actor, &id).await
}

async fn rotate_secret(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    Path((tenant, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    we::rotate_secret_for(&ctx, &tenant, &actor, &id, body).await
}
