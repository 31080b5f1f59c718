//! The operator's admin API under `/v1/admin/…`, open only to the admin key (`SLUICE_ADMIN_KEY`):
//! tenants (list, create, disable), keys (create with their own rpm/tpm, list, revoke, rotate)
//! here; budgets of deployments, tenants and keys (get, set, clear) in `super::admin_budgets`
//! and tenants' webhook endpoints in `super::admin_webhooks`. Every change is recorded in the audit log with the actor
//! `admin-key`; every error is in OpenAI's shape, malformed bodies included.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::responses::{NO_KEY, UNAVAILABLE, UNSTORABLE_URI};
use crate::app::Ctx;
use crate::auth::http::{AuthError, authenticate};
use crate::auth::{Principal, Scope};
use crate::db::{audit, keys, tenants};

/// The routes of the admin API.
pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/v1/admin/tenants", get(list_tenants).post(create_tenant))
        .route("/v1/admin/tenants/{name}/disable", post(disable_tenant))
        .route("/v1/admin/keys", get(list_keys).post(create_key))
        .route("/v1/admin/keys/{id}/revoke", post(revoke_key))
        .route("/v1/admin/keys/{id}/rotate", post(rotate_key))
}

/// A JSON body, or a 400 in OpenAI's shape naming what is wrong with it.
pub(super) fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::bad(format!("invalid request body: {}", e.body_text())))
}

/// A request made with the admin key.
#[derive(Debug)]
pub struct AdminCaller(pub String);

impl FromRequestParts<Arc<Ctx>> for AdminCaller {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, AuthError> {
        match authenticate(&ctx.keys, parts).await? {
            p @ Principal::Admin => Ok(AdminCaller(p.actor())),
            Principal::Key { .. } => Err(AuthError::Forbidden(
                "this route needs the admin key (SLUICE_ADMIN_KEY)".into(),
            )),
        }
    }
}

/// A tenant-key request, with the key id that the audit log records as the actor.
#[derive(Debug)]
pub struct Caller {
    pub tenant: String,
    pub actor: String,
}

impl FromRequestParts<Arc<Ctx>> for Caller {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, AuthError> {
        match authenticate(&ctx.keys, parts).await? {
            Principal::Key { id, tenant, .. } => Ok(Caller { tenant, actor: id }),
            Principal::Admin => Err(AuthError::Forbidden(
                "the admin key manages sluice under /v1/admin/…; use a tenant key for this".into(),
            )),
        }
    }
}

/// Records an action a tenant's admin took on some of its jobs (none: nothing recorded).
pub async fn audit_jobs(
    pool: &sqlx::PgPool,
    actor: &str,
    action: &str,
    ids: &[String],
) -> Result<(), ApiError> {
    if ids.is_empty() {
        return Ok(());
    }
    let entry = audit::Entry {
        actor,
        action,
        target: &format!("{} job(s)", ids.len()),
        before: None,
        after: Some(json!({"jobs": ids})),
    };
    audit::record_alone(pool, &entry).await?;
    Ok(())
}

/// The paragraph every admin route's description starts with.
pub(super) const ADMIN_ONLY: &str = "Needs the admin key (`SLUICE_ADMIN_KEY`) as the bearer token; a tenant key is refused with 403.";

/// Every admin route's 403 in the OpenAPI document.
pub(super) const NOT_ADMIN: &str = "An admin key is required; a tenant key was given";

fn valid_tenant(name: &str) -> Result<(), ApiError> {
    if tenants::valid_tenant_name(name) {
        Ok(())
    } else {
        Err(ApiError::BadRequest {
            message: format!(
                "tenant `{name}` is not a valid name: use lowercase letters, digits, '-', '_' or '.'"
            ),
            param: Some("name".into()),
        })
    }
}

/// Lists every tenant.
#[utoipa::path(get, path = "/v1/admin/tenants", tag = "admin", operation_id = "admin_list_tenants",
    description = ADMIN_ONLY,
    responses((status = 200, description = "Every tenant: `{\"object\": \"list\", \"data\"}`", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn list_tenants(
    State(ctx): State<Arc<Ctx>>,
    _a: AdminCaller,
) -> Result<Json<Value>, ApiError> {
    let rows = tenants::list(&ctx.pool).await?;
    Ok(Json(json!({"object": "list", "data": rows})))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewTenant {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}(?![\\s\\S])")]
    name: String,
}

/// Creates a tenant.
#[utoipa::path(post, path = "/v1/admin/tenants", tag = "admin", operation_id = "admin_create_tenant",
    description = ADMIN_ONLY,
    request_body(content = inline(NewTenant), description = "`{\"name\"}`: lowercase letters, digits, '-', '_' or '.'"),
    responses((status = 200, description = "`{\"name\", \"created\": true}`", body = Object),
              (status = 400, description = "The body is not `{\"name\"}`, or the name is not valid", body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 409, description = "The tenant already exists", body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn create_tenant(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    b: Result<Json<NewTenant>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body(b)?;
    valid_tenant(&body.name)?;
    if !tenants::create(&ctx.pool, &body.name, &actor).await? {
        return Err(ApiError::Conflict(format!(
            "tenant `{}` already exists",
            body.name
        )));
    }
    Ok(Json(json!({"name": body.name, "created": true})))
}

/// Disables a tenant: its keys stop working.
#[utoipa::path(post, path = "/v1/admin/tenants/{name}/disable", tag = "admin",
    operation_id = "admin_disable_tenant", description = ADMIN_ONLY,
    params(("name" = String, Path, description = "The tenant")),
    responses((status = 200, description = "`{\"name\", \"disabled\": true, \"changed\"}`: `changed` is false if it was already disabled", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 404, description = "No such tenant", body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn disable_tenant(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match tenants::disable(&ctx.pool, &name, &actor).await? {
        tenants::Disabled::NoSuchTenant => {
            Err(ApiError::NotFound(format!("no tenant named `{name}`")))
        }
        d => Ok(Json(
            json!({"name": name, "disabled": true, "changed": d == tenants::Disabled::Now}),
        )),
    }
}

#[derive(Deserialize)]
struct KeyFilter {
    tenant: Option<String>,
}

/// Lists API keys (never the keys themselves), of one tenant or all.
#[utoipa::path(get, path = "/v1/admin/keys", tag = "admin", operation_id = "admin_list_keys",
    description = ADMIN_ONLY,
    params(("tenant" = Option<String>, Query, description = "Only this tenant's keys")),
    responses((status = 200, description = "The keys' rows, never the keys: `{\"object\": \"list\", \"data\"}`", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn list_keys(
    State(ctx): State<Arc<Ctx>>,
    _a: AdminCaller,
    Query(f): Query<KeyFilter>,
) -> Result<Json<Value>, ApiError> {
    let rows = keys::list(&ctx.pool, f.tenant.as_deref()).await?;
    Ok(Json(json!({"object": "list", "data": rows})))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewKeyBody {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}(?![\\s\\S])")]
    tenant: String,
    #[serde(default)]
    name: String,
    #[schema(value_type = super::schemas::KeyScopes, inline, required = false)]
    scopes: Option<Vec<String>>,
    /// e.g. `90d`.
    #[schema(pattern = "^[1-9][0-9]{0,3}[smhd](?![\\s\\S])")]
    expires_in: Option<String>,
    /// The key's own requests and tokens per minute.
    #[schema(minimum = 1)]
    rpm: Option<i64>,
    #[schema(minimum = 1)]
    tpm: Option<i64>,
}

/// Refuses a limit that is not a positive number, naming the field.
fn positive(field: &str, v: Option<i64>) -> Result<(), ApiError> {
    match v {
        Some(n) if n <= 0 => Err(ApiError::BadRequest {
            message: format!("{field} must be a positive number (leave it out for no limit)"),
            param: Some(field.into()),
        }),
        _ => Ok(()),
    }
}

/// Parses a duration such as `90d` or `24h`, naming the field on failure.
pub fn parse_span(field: &str, s: &str) -> Result<chrono::Duration, ApiError> {
    humantime::parse_duration(s)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .ok_or_else(|| ApiError::BadRequest {
            message: format!("`{s}` is not a duration like 90d or 24h"),
            param: Some(field.into()),
        })
}

/// Creates an API key for a tenant (creating the tenant if it is new); the key is shown once.
#[utoipa::path(post, path = "/v1/admin/keys", tag = "admin", operation_id = "admin_create_key",
    description = ADMIN_ONLY,
    request_body(content = inline(NewKeyBody), description = "`{\"tenant\", \"name\"?, \"scopes\"?, \"expires_in\"?, \"rpm\"?, \"tpm\"?}`: \
        `scopes` a list (default `submit`, `read`, `admin`), `expires_in` a duration like `90d`, \
        `rpm` and `tpm` the key's own positive limits per minute."),
    responses((status = 200, description = "`{\"id\", \"tenant\", \"key\", \"scopes\", \"rpm\", \"tpm\", \"tenant_created\"}`; `key` is shown only here", body = Object),
              (status = 400, description = "A malformed body, an invalid tenant name, scope or `expires_in`, \
                  or an `rpm` or `tpm` that is not positive; `error.param` names the field", body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn create_key(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    b: Result<Json<NewKeyBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body(b)?;
    valid_tenant(&body.tenant)?;
    positive("rpm", body.rpm)?;
    positive("tpm", body.tpm)?;
    let scopes = match &body.scopes {
        None => vec![
            "submit".to_string(),
            "read".to_string(),
            "admin".to_string(),
        ],
        Some(list) => {
            let parsed = Scope::parse_list(&list.join(",")).map_err(|m| ApiError::BadRequest {
                message: m,
                param: Some("scopes".into()),
            })?;
            parsed.iter().map(|s| s.as_str().to_string()).collect()
        }
    };
    let expires_in = match &body.expires_in {
        Some(s) => Some(parse_span("expires_in", s)?),
        None => None,
    };
    let new = keys::NewKey {
        tenant: body.tenant,
        name: body.name,
        scopes,
        expires_in,
        rpm: body.rpm,
        tpm: body.tpm,
    };
    let created = keys::create(&ctx.pool, &new, &actor).await?;
    Ok(Json(
        json!({"id": created.id, "tenant": created.tenant, "key": created.key,
        "scopes": new.scopes, "rpm": new.rpm, "tpm": new.tpm,
        "tenant_created": created.tenant_created}),
    ))
}

/// Revokes an API key at once.
#[utoipa::path(post, path = "/v1/admin/keys/{id}/revoke", tag = "admin", operation_id = "admin_revoke_key",
    description = ADMIN_ONLY,
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    responses((status = 200, description = "The key's row", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 404, description = "No such key", body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn revoke_key(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match keys::revoke(&ctx.pool, &id, &actor).await? {
        Some(row) => Ok(Json(json!(row))),
        None => Err(ApiError::NotFound(format!("no key `{id}`"))),
    }
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
struct RotateBody {
    #[schema(pattern = "^[1-9][0-9]{0,3}[smhd](?![\\s\\S])")]
    grace: Option<String>,
}

/// Replaces an API key with a new one (shown once); the old one works for a grace period.
#[utoipa::path(post, path = "/v1/admin/keys/{id}/rotate", tag = "admin", operation_id = "admin_rotate_key",
    description = ADMIN_ONLY,
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    request_body(content = inline(RotateBody), description = "`{\"grace\"?}`: how long the old key keeps working, a duration like `24h` (the default)"),
    responses((status = 200, description = "`{\"id\", \"key\", \"tenant\", \"old_key_id\", \"old_key_valid_until\"}`; the new `key` is shown only here", body = Object),
              (status = 400, description = "`grace` is not a duration like `24h` or is too long, or the key is already revoked", body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 404, description = "No such key", body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn rotate_key(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    Path(id): Path<String>,
    body: Option<Json<RotateBody>>,
) -> Result<Json<Value>, ApiError> {
    let grace = match body.and_then(|Json(b)| b.grace) {
        Some(g) => parse_span("grace", &g)?,
        None => chrono::Duration::hours(24),
    };
    match keys::rotate(&ctx.pool, &id, grace, &actor).await {
        Ok((new, old)) => Ok(Json(
            json!({"id": new.id, "key": new.key, "tenant": new.tenant,
            "old_key_id": old.id, "old_key_valid_until": old.revoked_at}),
        )),
        Err(keys::RotateError::NotFound) => Err(ApiError::NotFound(format!("no key `{id}`"))),
        Err(keys::RotateError::Db(e)) => Err(e.into()),
        Err(e) => Err(ApiError::bad(e.to_string())),
    }
}
