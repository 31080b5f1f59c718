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
