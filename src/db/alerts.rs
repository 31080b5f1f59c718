//! Spend alerts: a tenant passing 50/80/100% of a USD cap (`budget.threshold`), and an hour's
//! spend above a multiple of its trailing hourly average (`spend.spike`). Each is inserted once
//! per dedupe key, so any number of processes may check at once.

use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgPool;

use super::DbError;

/// A newly raised alert.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Alert {
    pub kind: String,
    pub tenant: String,
    pub payload: Value,
}

/// Raises every alert due now that was not raised before; returns the new ones.
pub async fn check(
    pool: &PgPool,
    spike_multiple: Decimal,
    window_hours: u32,
) -> Result<Vec<Alert>, DbError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = 5000")
        .execute(&mut *tx)
        .await?;
    let mut raised: Vec<Alert> = sqlx::query_as(
        "WITH today AS (SELECT (now() AT TIME ZONE 'UTC')::date AS d),
         spend AS (
            SELECT b.key AS tenant, b.daily_usd, b.monthly_usd,
                coalesce((SELECT s.usd FROM tenant_spend s, today WHERE s.tenant = b.key AND s.day = today.d), 0) AS day_usd,
                coalesce((SELECT sum(s.usd) FROM tenant_spend s, today WHERE s.tenant = b.key
                          AND s.day >= date_trunc('month', today.d)::date), 0) AS month_usd
            FROM budgets b WHERE b.scope = 'tenant'),
         crossed AS (
            SELECT tenant, 'daily' AS period, (SELECT d FROM today)::text AS span, daily_usd AS cap, day_usd AS spent, p
            FROM spend CROSS JOIN unnest(ARRAY[50, 80, 100]) p
            WHERE daily_usd > 0 AND day_usd * 100 >= daily_usd * p
            UNION ALL
            SELECT tenant, 'monthly', to_char((SELECT d FROM today), 'YYYY-MM'), monthly_usd, month_usd, p
            FROM spend CROSS JOIN unnest(ARRAY[50, 80, 100]) p
            WHERE monthly_usd > 0 AND month_usd * 100 >= monthly_usd * p)
         INSERT INTO alerts (kind, tenant, dedupe, payload)
         SELECT 'budget.threshold', tenant, period || ':' || span || ':' || p,
             jsonb_build_object('tenant', tenant, 'period', period, 'span', span, 'percent', p,
                 'cap_usd', cap::text, 'spent_usd', spent::text)
         FROM crossed
         ON CONFLICT DO NOTHING
         RETURNING kind, tenant, payload",
    )
    .fetch_all(&mut *tx)
    .await?;
    let spikes: Vec<Alert> = sqlx::query_as(
        "WITH bounds AS (SELECT date_trunc('hour', now()) AS this_hour),
         hourly AS (
            SELECT tenant, date_trunc('hour', finished_at) AS hour, sum(cost_usd) AS usd
            FROM attempts, bounds
            WHERE finished_at >= this_hour - make_interval(hours => $2 + 1) AND finished_at < this_hour
            GROUP BY 1, 2),
         last AS (SELECT h.tenant, h.hour, h.usd FROM hourly h, bounds WHERE h.hour = this_hour - interval '1 hour'),
         trail AS (
            SELECT h.tenant, sum(h.usd) / $2 AS avg_usd FROM hourly h, bounds
            WHERE h.hour < this_hour - interval '1 hour' GROUP BY 1)
         INSERT INTO alerts (kind, tenant, dedupe, payload)
         SELECT 'spend.spike', l.tenant, 'hour:' || to_char(l.hour AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24'),
             jsonb_build_object('tenant', l.tenant, 'hour', l.hour, 'spent_usd', l.usd::text,
                 'trailing_avg_usd', round(t.avg_usd, 6)::text, 'multiple', $1::text)
         FROM last l JOIN trail t USING (tenant)
         WHERE t.avg_usd > 0 AND l.usd > t.avg_usd * $1
         ON CONFLICT DO NOTHING
         RETURNING kind, tenant, payload",
    )
    .bind(spike_multiple)
    .bind(i32::try_from(window_hours.max(1)).unwrap_or(24))
    .fetch_all(&mut *tx)
    .await?;
    raised.extend(spikes);
    // Each alert is also a webhook event to the tenant's endpoints subscribed to its type,
    // written in the transaction that raises it (so exactly once).
    for a in &raised {
        sqlx::query("SELECT webhooks_emit($1, $2, NULL, NULL, $3, NULL)::text")
            .bind(&a.tenant)
            .bind(&a.kind)
            .bind(&a.payload)
            .fetch_all(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(raised)
}
