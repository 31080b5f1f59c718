//! `GET /v1/budgets`: the caller's tenant budget and the deployments' budgets, with what is
//! reserved or used in the current window, what is spent (on a deployment: by the caller's own
//! calls only), and when each resets.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::responses::{NO_KEY, READ_FORBIDDEN, UNAVAILABLE};
use super::{ApiError, Tenant};
use crate::app::Ctx;

/// The budget report for the caller's tenant.
#[utoipa::path(get, path = "/v1/budgets", tag = "budgets", operation_id = "list_budgets",
    responses((status = 200, description = "The tenant's budget and the deployments': limits, what is reserved or \
                   used in the current window, spend and reset times", body = Object),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
) -> Result<Json<Value>, ApiError> {
    let rows = crate::db::budgets::report_for_tenant(&ctx.pool, &tenant).await?;
    Ok(Json(json!({"object": "list", "data": rows})))
}
