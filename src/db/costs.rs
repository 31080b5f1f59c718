//! Spend reports over the `cost_attempts` view (the ledger with each job's tags).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use super::DbError;

/// What a report may be grouped by: each maps to one column of `cost_attempts`.
pub const GROUPS: &[(&str, &str)] = &[
    ("tenant", "tenant"),
    ("model", "model"),
    ("provider", "provider"),
    ("feature", "coalesce(feature, '')"),
    ("route", "route"),
    ("day", "day::text"),
    ("month", "date_trunc('month', day)::date::text"),
    ("user", "coalesce(\"user\", '')"),
    ("workflow", "coalesce(workflow, '')"),
    ("prompt_version", "coalesce(prompt_version, '')"),
    ("schedule", "coalesce(schedule, '')"),
    ("status", "status"),
];

/// One line of a cost report.
#[derive(Debug, Clone, Serialize)]
pub struct CostLine {
    /// The group's values, in the order asked for.
    pub group: Vec<String>,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub cost_usd: Decimal,
    pub baseline_cost_usd: Decimal,
    pub saving_usd: Decimal,
}

/// Sums spend since `since`, grouped by `by` (names from [`GROUPS`]; unknown names are the
/// caller's error to report), most expensive first.
pub async fn report(
    pool: &PgPool,
    since: DateTime<Utc>,
    by: &[&str],
    tenant: Option<&str>,
) -> Result<Vec<CostLine>, DbError> {
    let exprs: Vec<&str> = by
        .iter()
        .filter_map(|b| GROUPS.iter().find(|(n, _)| n == b).map(|(_, e)| *e))
        .collect();
    let group_select = if exprs.is_empty() {
        "ARRAY[]::text[]".to_string()
    } else {
        format!("ARRAY[{}]::text[]", exprs.join(", "))
    };
    let group_by = if exprs.is_empty() {
        String::new()
    } else {
        format!("GROUP BY {}", exprs.join(", "))
    };
    let sql = format!(
        "SELECT {group_select} AS grp, count(*)::bigint, coalesce(sum(input_tokens), 0)::bigint,
            coalesce(sum(output_tokens), 0)::bigint, coalesce(sum(cached_tokens), 0)::bigint,
            coalesce(sum(cost_usd), 0), coalesce(sum(baseline_cost_usd), 0), coalesce(sum(saving_usd), 0)
         FROM cost_attempts
         WHERE finished_at >= $1 AND ($2::text IS NULL OR tenant = $2)
         {group_by}
         ORDER BY 6 DESC, 1"
    );
    type Row = (Vec<String>, i64, i64, i64, i64, Decimal, Decimal, Decimal);
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(since)
        .bind(tenant)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| CostLine {
            group: r.0,
            requests: r.1,
            input_tokens: r.2,
            output_tokens: r.3,
            cached_tokens: r.4,
            cost_usd: r.5,
            baseline_cost_usd: r.6,
            saving_usd: r.7,
        })
        .collect())
}

/// Fills an empty (scratch) database with `rows` ledger rows: 20 tenants, 7 features, four
/// attempts per job, spread over 2026 minute by minute. One `INSERT … SELECT generate_series`
/// per table.
pub async fn generate_ledger(pool: &PgPool, rows: u64) -> Result<(), DbError> {
    let jobs = i64::try_from(rows.div_ceil(4)).unwrap_or(i64::MAX);
    sqlx::query("INSERT INTO tenants (name) SELECT 'tenant-' || i FROM generate_series(0, 19) i ON CONFLICT DO NOTHING")
        .execute(pool)
        .await?;
    sqlx::query(
        "INSERT INTO jobs (id, tenant, model, deployments, request, tags, max_tokens, max_attempts, status, finalized_at)
         SELECT 'job_' || g, 'tenant-' || (g % 20), 'summarize', '[\"openai/gpt-4o-mini\"]', '{}',
                jsonb_build_object('feature', 'f' || (g % 7), 'user', 'u' || (g % 100)), 64, 4, 'succeeded', now()
         FROM generate_series(1, $1::bigint) g",
    )
    .bind(jobs)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO attempts (id, job_id, tenant, attempt, provider, model, route, status, input_tokens,
             output_tokens, cost_usd, saved_usd, started_at, finished_at)
         SELECT 'att_' || g || '_' || a, 'job_' || g, 'tenant-' || (g % 20), a, 'openai', 'gpt-4o-mini',
                CASE WHEN g % 3 = 0 THEN 'batch' ELSE 'cheap' END, 'succeeded', 100, 50, 0.0001, 0.00005, ts, ts
         FROM generate_series(1, $1::bigint) g CROSS JOIN generate_series(1, 4) a
         CROSS JOIN LATERAL (SELECT timestamptz '2026-01-01' + ((g * 4 + a) % 524160) * interval '1 minute' AS ts) t",
    )
    .bind(jobs)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE attempts").execute(pool).await?;
    sqlx::query("ANALYZE jobs").execute(pool).await?;
    Ok(())
}

/// The analysts' query the ledger must keep fast: one tenant's month of `cost_daily`.
pub async fn one_tenant_month(pool: &PgPool) -> Result<usize, DbError> {
    let rows: Vec<(chrono::NaiveDate, Option<String>, Decimal)> = sqlx::query_as(
        "SELECT day, feature, cost_usd FROM cost_daily
         WHERE tenant = 'tenant-3' AND day >= '2026-06-01' AND day < '2026-07-01'",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.len())
}
