//! Budgets in the admin API: `GET /v1/admin/budgets` (the report), `POST /v1/admin/budgets`
//! (set limits of a deployment, a tenant or an API key) and `POST /v1/admin/budgets/clear`
//! (lift them back to unlimited), with the checks and audit rows (`budget.set`,
//! `budget.clear`) of `sluice budgets set|clear`.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::admin::{ADMIN_ONLY, AdminCaller, NOT_ADMIN, body};
use super::responses::{NO_KEY, UNAVAILABLE};

/// The 422 of set and clear in the OpenAPI document.
const UNSTORABLE_BODY: &str = "A `tenant`, `deployment` or `key` in the body contains a NUL \
    character, which cannot be stored";
use crate::app::Ctx;
use crate::db::{audit, keys, tenants};
use crate::domain::budget::Scope as BudgetScope;

/// The budget routes of the admin API.
pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/v1/admin/budgets", get(list_budgets).post(set_budget))
        .route("/v1/admin/budgets/clear", post(clear_budget))
}

/// The report of every budget as the operator sees it (a deployment's spend is every tenant's).
#[utoipa::path(get, path = "/v1/admin/budgets", tag = "admin", operation_id = "admin_list_budgets",
    description = ADMIN_ONLY,
    responses((status = 200, description = "Every budget (deployments, tenants, keys): its limits, what is \
                  reserved or used in the current window, spend and reset times", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn list_budgets(
    State(ctx): State<Arc<Ctx>>,
    _a: AdminCaller,
) -> Result<Json<Value>, ApiError> {
    let rows = crate::db::budgets::report(&ctx.pool, None).await?;
    Ok(Json(json!({"object": "list", "data": rows})))
}

#[derive(Deserialize)]
struct BudgetBody {
    tenant: Option<String>,
    deployment: Option<String>,
    /// An API key's id (`key_…`).
    key: Option<String>,
    #[serde(flatten)]
    settings: crate::config::BudgetSettings,
}

/// The budget scope a body names: exactly one of `tenant`, `deployment` or `key`, which must
/// exist (a tenant, a key) or be `provider/model` (a deployment).
async fn scope_of(
    ctx: &Ctx,
    tenant: Option<String>,
    deployment: Option<String>,
    key: Option<String>,
) -> Result<BudgetScope, ApiError> {
    match (tenant, deployment, key) {
        (Some(t), None, None) => {
            if !tenants::exists(&ctx.pool, &t).await? {
                return Err(ApiError::NotFound(format!("no tenant named `{t}`")));
            }
            Ok(BudgetScope::Tenant(t))
        }
        (None, Some(d), None) => {
            if crate::domain::catalog::Deployment::parse(&d).is_none() {
                return Err(ApiError::BadRequest {
                    message: format!("deployment `{d}` is not `provider/model`"),
                    param: Some("deployment".into()),
                });
            }
            Ok(BudgetScope::Deployment(d))
        }
        (None, None, Some(k)) => {
            if k.starts_with(crate::db::tenants::KEY_PREFIX) {
                return Err(ApiError::BadRequest {
                    message: "`key` takes the key's id (key_…), not the key itself".into(),
                    param: Some("key".into()),
                });
            }
            if !keys::exists(&ctx.pool, &k).await? {
                return Err(ApiError::NotFound(format!("no API key with id `{k}`")));
            }
            Ok(BudgetScope::Key(k))
        }
        _ => Err(ApiError::bad(
            "name exactly one of `tenant`, `deployment` or `key`",
        )),
    }
}

/// Sets limits of a deployment, a tenant or an API key (audited as `budget.set`).
#[utoipa::path(post, path = "/v1/admin/budgets", tag = "admin", operation_id = "admin_set_budget",
    description = ADMIN_ONLY,
    request_body(content = inline(super::schemas::SetBudget), description = "Exactly one of `tenant`, `deployment` (`provider/model`) \
        or `key` (a key's id, `key_…`), and the limits to set: `tpm`, `rpm` (any scope), \
        `batch_enqueued_tokens` (deployment, tenant), `daily_usd`, `monthly_usd`, `policy` \
        (`defer` or `reject`) and `weight` (1 to 100) (tenant only)."),
    responses((status = 200, description = "`{\"scope\", \"key\", \"updated\": true}`", body = Object),
              (status = 400, description = "A malformed body, not exactly one of `tenant`, `deployment` and \
                  `key`, a deployment that is not `provider/model`, a limit that scope does not have, \
                  or a value out of range", body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_BODY, body = super::ErrorBody),
              (status = 404, description = "No such tenant or key", body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn set_budget(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    b: Result<Json<BudgetBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body(b)?;
    let scope = scope_of(&ctx, body.tenant, body.deployment, body.key).await?;
    let s = &body.settings;
    let tenant_only = s.daily_usd.is_some()
        || s.monthly_usd.is_some()
        || s.policy.is_some()
        || s.weight.is_some();
    match &scope {
        BudgetScope::Key(_) if tenant_only || s.batch_enqueued_tokens.is_some() => {
            return Err(ApiError::bad(
                "a key has only `rpm` and `tpm` of its own; USD caps, policy and weight apply to its tenant",
            ));
        }
        BudgetScope::Deployment(_) if tenant_only => {
            return Err(ApiError::bad(
                "USD caps, policy and weight apply to tenants; name a `tenant`",
            ));
        }
        _ => {}
    }
    if s.policy
        .as_deref()
        .is_some_and(|p| crate::domain::budget::UsdPolicy::parse(p).is_none())
    {
        return Err(ApiError::BadRequest {
            message: "policy must be `defer` or `reject`".into(),
            param: Some("policy".into()),
        });
    }
    if s.weight.is_some_and(|w| !(1..=100).contains(&w)) {
        return Err(ApiError::BadRequest {
            message: "weight must be between 1 and 100".into(),
            param: Some("weight".into()),
        });
    }
    let negative_int = [s.tpm, s.rpm, s.batch_enqueued_tokens]
        .iter()
        .any(|v| v.is_some_and(|v| v <= 0));
    let negative_usd = [s.daily_usd, s.monthly_usd]
        .iter()
        .any(|v| v.is_some_and(|v| v.is_sign_negative()));
    if negative_int || negative_usd {
        return Err(ApiError::bad(
            "limits must be positive numbers (USD caps may be 0)",
        ));
    }
    audit::set_budget(&ctx.pool, &scope, s, &actor).await?;
    let (sc, key) = scope.parts();
    Ok(Json(json!({"scope": sc, "key": key, "updated": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearBody {
    tenant: Option<String>,
    deployment: Option<String>,
    key: Option<String>,
    /// Which limits to lift: `tpm`, `rpm`, `batch_enqueued_tokens`, `daily_usd`, `monthly_usd`.
    limits: Vec<String>,
}

/// Lifts limits back to unlimited, like `sluice budgets clear` (audited as `budget.clear`).
#[utoipa::path(post, path = "/v1/admin/budgets/clear", tag = "admin", operation_id = "admin_clear_budget",
    description = ADMIN_ONLY,
    request_body(content = inline(super::schemas::ClearBudget), description = "Exactly one of `tenant`, `deployment` or `key`, and \
        `limits`: the limits to lift, among `tpm`, `rpm`, `batch_enqueued_tokens`, `daily_usd`, \
        `monthly_usd`; no other fields."),
    responses((status = 200, description = "`{\"scope\", \"key\", \"cleared\", \"updated\": true}`", body = Object),
              (status = 400, description = "A malformed body, not exactly one of `tenant`, `deployment` and \
                  `key`, no `limits`, or a limit that is unknown or that scope does not have", body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = NOT_ADMIN, body = super::ErrorBody),
              (status = 422, description = UNSTORABLE_BODY, body = super::ErrorBody),
              (status = 404, description = "No such tenant or key, or no budget to clear", body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
async fn clear_budget(
    State(ctx): State<Arc<Ctx>>,
    AdminCaller(actor): AdminCaller,
    b: Result<Json<ClearBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    use crate::db::budgets::Limit;
    let body = body(b)?;
    let scope = scope_of(&ctx, body.tenant, body.deployment, body.key).await?;
    if body.limits.is_empty() {
        return Err(ApiError::BadRequest {
            message: "name at least one limit to clear: tpm, rpm, batch_enqueued_tokens, daily_usd, monthly_usd".into(),
            param: Some("limits".into()),
        });
    }
    let mut limits = Vec::new();
    for name in &body.limits {
        let limit = Limit::ALL
            .into_iter()
            .find(|l| l.column() == name)
            .ok_or_else(|| ApiError::BadRequest {
                message: format!(
                    "unknown limit `{name}`: use tpm, rpm, batch_enqueued_tokens, daily_usd or monthly_usd"
                ),
                param: Some("limits".into()),
            })?;
        let fits = match &scope {
            BudgetScope::Key(_) => matches!(limit, Limit::Tpm | Limit::Rpm),
            BudgetScope::Deployment(_) => !matches!(limit, Limit::DailyUsd | Limit::MonthlyUsd),
            BudgetScope::Tenant(_) => true,
        };
        if !fits {
            let (s, _) = scope.parts();
            return Err(ApiError::BadRequest {
                message: format!("a {s} has no `{name}` limit"),
                param: Some("limits".into()),
            });
        }
        if !limits.contains(&limit) {
            limits.push(limit);
        }
    }
    let (sc, key) = scope.parts();
    if !audit::clear_budget(&ctx.pool, &scope, &limits, &actor).await? {
        return Err(ApiError::NotFound(format!(
            "{sc} {key} has no budget; nothing to clear"
        )));
    }
    let cleared: Vec<&str> = limits.iter().map(|l| l.column()).collect();
    Ok(Json(
        json!({"scope": sc, "key": key, "cleared": cleared, "updated": true}),
    ))
}
