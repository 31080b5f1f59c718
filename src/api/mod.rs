//! The HTTP API (axum). Handlers are thin: parse, call, map. Every route under `/v1` needs a
//! tenant API key, and every query is scoped to that tenant.

mod admin;
mod admin_budgets;
mod admin_webhooks;
mod batches;
mod budgets;
mod cancel;
mod dead_letters;
mod error;
mod jobs;
mod layers;
mod metrics;
mod models;
pub mod openai;
pub mod openapi;
mod responses;
mod schemas;
mod webhook_endpoints;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;

pub use error::ApiError;
pub use openai::ErrorBody;

use crate::app::Ctx;

/// The operations routes alone (`/healthz`, `/readyz`, `/metrics`), for processes that run no
/// API: served on `[metrics] listen`.
pub fn ops_router(ctx: Arc<Ctx>) -> Router {
    crate::metrics::install();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::scrape))
        .fallback(|| async { ApiError::NotFound("no such route".into()) });
    layers::protect(router, 1024, ctx.config.server.request_timeout).with_state(ctx)
}

/// The API's routes over `ctx`; synchronous chat completions are claimed as `worker_id`.
pub fn router(ctx: Arc<Ctx>, worker_id: String) -> Router {
    let limit = ctx.config.server.max_body_bytes;
    let upload_limit = ctx.config.server.max_upload_bytes;
    crate::metrics::install();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/models", get(models::list))
        .route("/v1/limits", get(models::limits))
        .route("/v1/models/{*model}", get(models::get))
        .route("/v1/budgets", get(budgets::list))
        .route("/v1/jobs", post(jobs::create).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(cancel::job))
        .route("/v1/batches/{id}", get(batches::get))
        .route("/v1/batches/{id}/cancel", post(cancel::batch))
        .route("/v1/dead_letters", get(dead_letters::list))
        .route("/v1/dead_letters/requeue", post(dead_letters::requeue))
        .route("/v1/dead_letters/purge", post(dead_letters::purge))
        .route("/v1/batches/{id}/results", get(batches::results))
        .route(
            "/v1/webhook_endpoints",
            post(webhook_endpoints::create).get(webhook_endpoints::list),
        )
        .route(
            "/v1/webhook_endpoints/{id}",
            get(webhook_endpoints::retrieve)
                .post(webhook_endpoints::update)
                .delete(webhook_endpoints::delete),
        )
        .route(
            "/v1/webhook_endpoints/{id}/rotate_secret",
            post(webhook_endpoints::rotate_secret),
        )
        .route(
            "/v1/webhook_endpoints/{id}/test",
            post(webhook_endpoints::test),
        )
        .route("/openapi.json", get(openapi::document))
        .route(
            "/v1/files",
            post(openai::files::create)
                .layer(DefaultBodyLimit::max(upload_limit))
                .get(openai::files::list),
        )
        .route(
            "/v1/files/{id}",
            get(openai::files::get).delete(openai::files::delete),
        )
        .route("/v1/files/{id}/content", get(openai::files::content))
        .route(
            "/v1/batches",
            post(openai::batches::create).get(openai::batches::list),
        )
        .route("/v1/chat/completions", post(openai::chat::create))
        .merge(admin::routes())
        .merge(admin_budgets::routes())
        .merge(admin_webhooks::routes())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(openai::chat::ApiWorker(worker_id)))
        .route_layer(axum::middleware::from_fn(metrics::track));
    // The hard cap is the upload limit; every other route keeps `max_body_bytes` through
    // `DefaultBodyLimit`, which their extractors obey.
    layers::protect(
        router,
        limit.max(upload_limit),
        ctx.config.server.request_timeout,
    )
    .with_state(ctx)
}

/// Whether this process is up (it answers); says nothing of its dependencies, see `/readyz`.
#[utoipa::path(get, path = "/healthz", tag = "meta", operation_id = "get_health",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"status": "ok"}))
}

/// Whether this process can serve: database, broker and every supervised role.
#[utoipa::path(get, path = "/readyz", tag = "meta", operation_id = "get_readiness",
    responses((status = 200, description = "Ready: `{\"database\", \"broker\", \"roles\", \"down\": []}`", body = Object),
              (status = 503, description = "Not ready: the database or the broker does not answer, or the roles in \
                   `down` are down; the same shape", body = Object)))]
async fn readyz(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
    let (db, broker) = tokio::join!(crate::db::ping(&ctx.pool), ctx.broker.ping());
    let roles = ctx.health.snapshot();
    let down = ctx.health.down();
    let status = if db && broker && down.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"database": db, "broker": broker, "roles": roles, "down": down})),
    )
}

/// The tenant whose API key authenticated the request.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

impl FromRequestParts<Arc<Ctx>> for Tenant {
    type Rejection = crate::auth::http::AuthError;

    async fn from_request_parts(
        parts: &mut Parts,
        ctx: &Arc<Ctx>,
    ) -> Result<Self, Self::Rejection> {
        Submitter::from_request_parts(parts, ctx)
            .await
            .map(|s| Tenant(s.tenant))
    }
}

/// A tenant-key request that submits work: the tenant, and the key's id, which every job it
/// submits records so the key's own limits (`budgets` rows with `scope = 'key'`) apply.
#[derive(Debug, Clone)]
pub struct Submitter {
    pub tenant: String,
    pub key_id: String,
}

impl FromRequestParts<Arc<Ctx>> for Submitter {
    type Rejection = crate::auth::http::AuthError;

    async fn from_request_parts(
        parts: &mut Parts,
        ctx: &Arc<Ctx>,
    ) -> Result<Self, Self::Rejection> {
        match crate::auth::http::authenticate(&ctx.keys, parts).await? {
            crate::auth::Principal::Key { id, tenant, .. } => Ok(Submitter { tenant, key_id: id }),
            crate::auth::Principal::Admin => Err(crate::auth::http::AuthError::Forbidden(
                "the admin key manages sluice under /v1/admin/…; use a tenant key for this".into(),
            )),
        }
    }
}
