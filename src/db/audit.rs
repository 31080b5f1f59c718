//! The audit trail: one row per admin action (keys, tenants, budgets, dead letters, batch
//! cancellations, webhook endpoints, manual schedule runs), with who did it, when, what it
//! touched and the values before and after.
//! Writes take a connection so they join the transaction of the change they record.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::DbError;
use crate::ids::new_id;

/// One admin action about to be recorded.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// Who: a key id (`key_…`), `cli:<os user>` or `admin-key`.
    pub actor: &'a str,
    /// What, as `noun.verb` (`key.create`, `tenant.disable`, `budget.set`, …).
    pub action: &'a str,
    /// What it touched (a key id, a tenant, `tenant:acme`, a batch id).
    pub target: &'a str,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Records `entry` on `conn` (inside the caller's transaction when it has one).
pub async fn record(conn: &mut PgConnection, entry: &Entry<'_>) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO audit_log (id, actor, action, target, before, after)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(new_id("audit"))
    .bind(entry.actor)
    .bind(entry.action)
    .bind(entry.target)
    .bind(&entry.before)
    .bind(&entry.after)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records `entry` on its own (for changes made by statements this module does not own).
pub async fn record_alone(pool: &PgPool, entry: &Entry<'_>) -> Result<(), DbError> {
    let mut conn = pool.acquire().await?;
    record(&mut conn, entry).await
}

/// One recorded action, as `sluice audit` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub id: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Actions recorded at or after `since`, oldest first, at most `limit`.
pub async fn list(
    pool: &PgPool,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<AuditRow>, DbError> {
    sqlx::query_as(
        "SELECT id, at, actor, action, target, before, after FROM audit_log
         WHERE at >= $1 ORDER BY at, id LIMIT $2",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The actor name of a command run by the operating-system user at the terminal.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// A budget row as JSON (for before/after values), `None` when the scope has none; locked
/// until the end of the caller's transaction.
async fn budget_json(
    conn: &mut PgConnection,
    scope: &crate::domain::budget::Scope,
) -> Result<Option<Value>, DbError> {
    let (s, k) = scope.parts();
    sqlx::query_scalar(
        "SELECT jsonb_build_object('tpm', tpm, 'rpm', rpm,
            'batch_enqueued_tokens', batch_enqueued_tokens, 'daily_usd', daily_usd,
            'monthly_usd', monthly_usd, 'usd_policy', usd_policy)
         FROM budgets WHERE scope = $1 AND key = $2 FOR UPDATE",
    )
    .bind(s)
    .bind(k)
    .fetch_optional(conn)
    .await
}

/// Sets a budget at run time (as `sluice budgets set` and the admin API do) and records the
/// change as `budget.set` with the values before and after.
pub async fn set_budget(
    pool: &PgPool,
    scope: &crate::domain::budget::Scope,
    settings: &crate::config::BudgetSettings,
    actor: &str,
) -> Result<(), DbError> {
    let mut conn = pool.acquire().await?;
    let before = budget_json(&mut conn, scope).await?;
    super::budgets::set(pool, scope, settings, "cli").await?;
    let after = budget_json(&mut conn, scope).await?;
    let (s, k) = scope.parts();
    let target = format!("{s}:{k}");
    record(
        &mut conn,
        &Entry {
            actor,
            action: "budget.set",
            target: &target,
            before,
            after,
        },
    )
    .await
}

/// Lifts `limits` of a budget back to unlimited (`sluice budgets clear`) and records
/// `budget.clear` with the values before and after, in one transaction. False, with nothing
/// recorded, when the scope has no budget to clear.
pub async fn clear_budget(
    pool: &PgPool,
    scope: &crate::domain::budget::Scope,
    limits: &[super::budgets::Limit],
    actor: &str,
) -> Result<bool, DbError> {
    let mut tx = pool.begin().await?;
    let Some(before) = budget_json(&mut tx, scope).await? else {
        return Ok(false);
    };
    super::budgets::clear(&mut tx, scope, limits).await?;
    let after = budget_json(&mut tx, scope).await?;
    let (s, k) = scope.parts();
    let target = format!("{s}:{k}");
    record(
        &mut tx,
        &Entry {
            actor,
            action: "budget.clear",
            target: &target,
            before: Some(before),
            after,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
