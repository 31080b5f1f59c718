//! The budget limits a submission is checked against (read only; `db::budgets` owns them).

use std::collections::HashMap;

use rust_decimal::Decimal;
use sqlx::PgPool;

use super::DbError;

/// The tenant's smallest USD cap, and the `batch_enqueued_tokens` of those `deployments` that
/// have one.
pub async fn limits(
    pool: &PgPool,
    tenant: &str,
    deployments: &[String],
) -> Result<(Option<Decimal>, HashMap<String, i64>), DbError> {
    let cap: Option<Decimal> = sqlx::query_scalar(
        "SELECT LEAST(daily_usd, monthly_usd) FROM budgets WHERE scope = 'tenant' AND key = $1",
    )
    .bind(tenant)
    .fetch_optional(pool)
    .await?
    .flatten();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT key, batch_enqueued_tokens FROM budgets
         WHERE scope = 'deployment' AND key = ANY($1) AND batch_enqueued_tokens IS NOT NULL",
    )
    .bind(deployments)
    .fetch_all(pool)
    .await?;
    Ok((cap, rows.into_iter().collect()))
}
