//! The bounded reads behind `/metrics` gauges: each statement touches live rows only (unfinished
//! jobs, the last minute of the ledger and of budget usage), under a short statement timeout.

use rust_decimal::Decimal;
use sqlx::PgPool;

use super::DbError;
use crate::domain::state::sql::*;

/// What Postgres knows that `/metrics` shows.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Unfinished jobs by state.
    pub jobs_by_state: Vec<(String, i64)>,
    /// Queued jobs per tenant.
    pub queue_depth: Vec<(String, i64)>,
    /// Batch-route jobs waiting for or inside a provider batch.
    pub batch_pending: i64,
    /// Circuit breaker state per deployment.
    pub breakers: Vec<(String, String)>,
    /// Tokens used in the last minute and the TPM limit, per budget (scope, key).
    pub budget_tokens: Vec<(String, String, i64, Option<i64>)>,
    /// Spend in the last minute per tenant and model.
    pub cost_last_minute: Vec<(String, String, Decimal)>,
    /// Tokens (input + output) in the last minute per tenant and model.
    pub tokens_last_minute: Vec<(String, String, i64)>,
}

/// Reads every gauge in one short read-only transaction.
pub async fn snapshot(pool: &PgPool) -> Result<Snapshot, DbError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = 2000")
        .execute(&mut *tx)
        .await?;
    let jobs_by_state =
        sqlx::query_as("SELECT status, count(*) FROM jobs WHERE finalized_at IS NULL GROUP BY 1")
            .fetch_all(&mut *tx)
            .await?;
    let queue_depth = sqlx::query_as(&format!(
        "SELECT tenant, count(*) FROM jobs WHERE status = '{QUEUED}' GROUP BY 1"
    ))
    .fetch_all(&mut *tx)
    .await?;
    let batch_pending = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM jobs WHERE finalized_at IS NULL
             AND (status = '{IN_PROVIDER_BATCH}' OR (status = '{QUEUED}' AND route = 'batch'))"
    ))
    .fetch_one(&mut *tx)
    .await?;
    let breakers = sqlx::query_as("SELECT deployment, state FROM circuit_breakers")
        .fetch_all(&mut *tx)
        .await?;
    let budget_tokens = sqlx::query_as(
        "SELECT b.scope, b.key, coalesce(sum(u.tokens), 0)::bigint, b.tpm
         FROM budgets b LEFT JOIN budget_usage u ON u.scope = b.scope AND u.key = b.key
             AND u.sec >= extract(epoch FROM now())::bigint - 60
         GROUP BY b.scope, b.key, b.tpm",
    )
    .fetch_all(&mut *tx)
    .await?;
    let minute: Vec<(String, String, Decimal, i64)> = sqlx::query_as(
        "SELECT tenant, model, coalesce(sum(cost_usd), 0), coalesce(sum(input_tokens + output_tokens), 0)::bigint
         FROM attempts WHERE finished_at > now() - interval '1 minute' GROUP BY 1, 2",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    Ok(Snapshot {
        jobs_by_state,
        queue_depth,
        batch_pending,
        breakers,
        budget_tokens,
        cost_last_minute: minute
            .iter()
            .map(|(t, m, c, _)| (t.clone(), m.clone(), *c))
            .collect(),
        tokens_last_minute: minute.into_iter().map(|(t, m, _, n)| (t, m, n)).collect(),
    })
}
