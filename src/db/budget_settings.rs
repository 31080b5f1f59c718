//! Budget settings and the budget report: the limits an operator sets on a deployment, a
//! tenant or an API key (`sluice budgets set|clear`, the admin API, start-up seeding from config), and what
//! `sluice budgets show` and `GET /v1/budgets` read back — each limit beside what is reserved
//! or spent against it.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::DbError;
use crate::domain::budget::{self, Scope, UsdPolicy};

pub use crate::config::BudgetSettings;

/// Upserts limits for a scope. `source` is `config` (start-up seeding, never overriding a
/// `cli` row) or `cli` (run-time changes, which win).
pub async fn set(
    pool: &PgPool,
    scope: &Scope,
    s: &BudgetSettings,
    source: &str,
) -> Result<(), DbError> {
    let (sc, key) = scope.parts();
    let policy = s
        .policy
        .clone()
        .unwrap_or_else(|| UsdPolicy::Defer.as_str().into());
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO budgets (scope, key, tpm, rpm, batch_enqueued_tokens, daily_usd, monthly_usd, usd_policy, source)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (scope, key) DO UPDATE SET
            tpm = COALESCE(excluded.tpm, budgets.tpm), rpm = COALESCE(excluded.rpm, budgets.rpm),
            batch_enqueued_tokens = COALESCE(excluded.batch_enqueued_tokens, budgets.batch_enqueued_tokens),
            daily_usd = COALESCE(excluded.daily_usd, budgets.daily_usd),
            monthly_usd = COALESCE(excluded.monthly_usd, budgets.monthly_usd),
            usd_policy = CASE WHEN $10 THEN excluded.usd_policy ELSE budgets.usd_policy END,
            source = CASE WHEN budgets.source = 'cli' THEN 'cli' ELSE excluded.source END,
            updated_at = now()
         WHERE excluded.source = 'cli' OR budgets.source <> 'cli'",
    )
    .bind(sc)
    .bind(key)
    .bind(s.tpm)
    .bind(s.rpm)
    .bind(s.batch_enqueued_tokens)
    .bind(s.daily_usd)
    .bind(s.monthly_usd)
    .bind(&policy)
    .bind(source)
    .bind(s.policy.is_some())
    .execute(&mut *tx)
    .await?;
    if let (Scope::Tenant(t), Some(w)) = (scope, s.weight) {
        sqlx::query("UPDATE tenants SET weight = $2 WHERE name = $1")
            .bind(t)
            .bind(w)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// One line of the budget report.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetReport {
    pub scope: String,
    pub key: String,
    pub tpm: Option<i64>,
    pub rpm: Option<i64>,
    /// Tokens and requests counted in the current 60-second window (reserved or used).
    pub tokens_in_window: i64,
    pub requests_in_window: i64,
    pub daily_usd: Option<Decimal>,
    pub monthly_usd: Option<Decimal>,
    pub usd_policy: String,
    /// USD spent today and this month (UTC): a tenant's settled spend, or a deployment's from
    /// the ledger (`attempts`).
    pub spent_today_usd: Decimal,
    pub spent_month_usd: Decimal,
    pub held_usd: Decimal,
    pub paused_until: Option<DateTime<Utc>>,
    /// When the rate window frees fully, and when the daily and monthly caps reset.
    pub window_resets_at: DateTime<Utc>,
    pub day_resets_at: DateTime<Utc>,
    pub month_resets_at: DateTime<Utc>,
}

/// The report for every budget, or only those touching `tenant` (its own row and deployments),
/// as the operator sees it: a deployment's spend is every tenant's.
pub async fn report(pool: &PgPool, tenant: Option<&str>) -> Result<Vec<BudgetReport>, DbError> {
    report_as(pool, tenant, None).await
}

/// The report `tenant` itself may see (`GET /v1/budgets`): its own row and the deployments',
/// a deployment's spend counting only `tenant`'s own calls, so no tenant learns another's.
pub async fn report_for_tenant(pool: &PgPool, tenant: &str) -> Result<Vec<BudgetReport>, DbError> {
    report_as(pool, Some(tenant), Some(tenant)).await
}

/// The report of `tenant`'s budgets (all with `None`); deployments' spend summed over the
/// ledger rows of `spender` (every tenant with `None`).
async fn report_as(
    pool: &PgPool,
    tenant: Option<&str>,
    spender: Option<&str>,
) -> Result<Vec<BudgetReport>, DbError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        scope: String,
        key: String,
        tpm: Option<i64>,
        rpm: Option<i64>,
        daily_usd: Option<Decimal>,
        monthly_usd: Option<Decimal>,
        usd_policy: String,
        paused_until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        tokens: i64,
        requests: i64,
        last_sec: Option<i64>,
        today: Decimal,
        month: Decimal,
        held: Decimal,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT b.scope, b.key, b.tpm, b.rpm, b.daily_usd, b.monthly_usd, b.usd_policy, b.paused_until, now() AS now,
            COALESCE(u.tokens, 0)::bigint AS tokens, COALESCE(u.requests, 0)::bigint AS requests, u.last_sec,
            COALESCE(s.today, d.today, 0) AS today, COALESCE(s.month, d.month, 0) AS month,
            COALESCE(h.held, 0) AS held
         FROM budgets b
         LEFT JOIN LATERAL (SELECT sum(tokens) AS tokens, sum(requests) AS requests, max(sec) AS last_sec FROM budget_usage
             WHERE scope = b.scope AND key = b.key AND sec >= extract(epoch FROM now())::bigint - 60) u ON true
         LEFT JOIN LATERAL (SELECT sum(usd) FILTER (WHERE day = (now() AT TIME ZONE 'utc')::date) AS today, sum(usd) AS month
             FROM tenant_spend WHERE b.scope = 'tenant' AND tenant = b.key
               AND day >= date_trunc('month', now() AT TIME ZONE 'utc')::date) s ON true
         LEFT JOIN LATERAL (SELECT sum(cost_usd) FILTER (WHERE finished_at >= date_trunc('day', now() AT TIME ZONE 'utc') AT TIME ZONE 'utc') AS today,
                 sum(cost_usd) AS month
             FROM attempts WHERE b.scope = 'deployment'
               AND provider = split_part(b.key, '/', 1)
               AND model = substr(b.key, length(split_part(b.key, '/', 1)) + 2)
               AND finished_at >= date_trunc('month', now() AT TIME ZONE 'utc') AT TIME ZONE 'utc'
               AND ($2::text IS NULL OR tenant = $2)) d ON true
         LEFT JOIN LATERAL (SELECT sum(usd) AS held FROM budget_holds
             WHERE b.scope = 'tenant' AND tenant = b.key AND expires_at > now()) h ON true
         WHERE $1::text IS NULL OR (b.scope = 'tenant' AND b.key = $1) OR b.scope = 'deployment'
            OR (b.scope = 'key' AND b.key IN (SELECT id FROM api_keys WHERE tenant = $1))
         ORDER BY b.scope, b.key",
    )
    .bind(tenant)
    .bind(spender)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| BudgetReport {
            scope: r.scope,
            key: r.key,
            tpm: r.tpm,
            rpm: r.rpm,
            tokens_in_window: r.tokens,
            requests_in_window: r.requests,
            daily_usd: r.daily_usd,
            monthly_usd: r.monthly_usd,
            usd_policy: r.usd_policy,
            spent_today_usd: r.today,
            spent_month_usd: r.month,
            held_usd: r.held,
            paused_until: r.paused_until.filter(|p| *p > r.now),
            window_resets_at: r
                .last_sec
                .and_then(|s| DateTime::from_timestamp(s + budget::WINDOW_SECS + 1, 0))
                .unwrap_or(r.now),
            day_resets_at: budget::next_day(r.now),
            month_resets_at: budget::next_month(r.now),
        })
        .collect())
}

/// A limit that `sluice budgets clear` can lift (back to unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Tpm,
    Rpm,
    BatchEnqueuedTokens,
    DailyUsd,
    MonthlyUsd,
}

impl Limit {
    /// Every limit, in the order the report shows them.
    pub const ALL: [Limit; 5] = [
        Limit::Tpm,
        Limit::Rpm,
        Limit::BatchEnqueuedTokens,
        Limit::DailyUsd,
        Limit::MonthlyUsd,
    ];

    /// Its column in `budgets` (also its key in the audit log's before/after values).
    pub fn column(self) -> &'static str {
        match self {
            Limit::Tpm => "tpm",
            Limit::Rpm => "rpm",
            Limit::BatchEnqueuedTokens => "batch_enqueued_tokens",
            Limit::DailyUsd => "daily_usd",
            Limit::MonthlyUsd => "monthly_usd",
        }
    }
}

/// Lifts `limits` of a scope (sets them unlimited) as a run-time change, so the config's
/// seeding never puts them back. False when the scope has no budget row.
pub async fn clear(
    conn: &mut PgConnection,
    scope: &Scope,
    limits: &[Limit],
) -> Result<bool, DbError> {
    let (sc, key) = scope.parts();
    let sets: Vec<String> = limits
        .iter()
        .map(|l| format!("{} = NULL", l.column()))
        .collect();
    if sets.is_empty() {
        return Ok(false);
    }
    // Column names come from `Limit::column`, never from input.
    let done = sqlx::query(&format!(
        "UPDATE budgets SET {}, source = 'cli', updated_at = now() WHERE scope = $1 AND key = $2",
        sets.join(", ")
    ))
    .bind(sc)
    .bind(key)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
