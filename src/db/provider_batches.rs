//! SQL of the provider batch path: packing queued batch-route jobs into a provider batch,
//! leasing open batches to one poller at a time, recording item results exactly once, and
//! moving jobs whose deadline draws near to the real-time path.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use super::DbError;
use crate::domain::budget::{Decision, UsdCheck};

/// Deployments with batch-route jobs waiting, how many, and how long the oldest has waited.
pub async fn waiting(pool: &PgPool) -> Result<Vec<(String, i64, f64)>, DbError> {
    sqlx::query_as(
        "SELECT deployment, count(*), extract(epoch FROM now() - min(created_at))::float8
         FROM jobs WHERE status = 'queued' AND route = 'batch' AND deployment IS NOT NULL
         GROUP BY deployment",
    )
    .fetch_all(pool)
    .await
}

/// A job about to go into a provider batch.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Packable {
    pub id: String,
    pub tenant: String,
    pub request: Value,
    pub est_prompt_tokens: i32,
    pub max_tokens: i32,
}

/// Tokens enqueued in open provider batches of `deployment`, and its limit if any.
async fn enqueued(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    deployment: &str,
) -> Result<(i64, Option<i64>), DbError> {
    let (open, limit): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COALESCE((SELECT sum(est_tokens) FROM provider_batches
                 WHERE deployment = $1 AND state IN ('submitting', 'in_progress')), 0)::bigint,
                (SELECT batch_enqueued_tokens FROM budgets WHERE scope = 'deployment' AND key = $1 FOR UPDATE)",
    )
    .bind(deployment)
    .fetch_one(&mut **tx)
    .await?;
    Ok((open, limit))
}

/// Moves up to `max_items` queued batch-route jobs of `deployment` into a new provider batch
/// row (state `submitting`), within the enqueued-token budget and the provider's size limits
/// (`fits` decides, given the jobs in order). Returns the batch id and its jobs, or `None`.
pub async fn pack(
    pool: &PgPool,
    deployment: &str,
    owner: &str,
    lease: Duration,
    max_items: i64,
    fits: impl Fn(&[Packable]) -> usize,
    worst_cost: impl Fn(&Packable) -> Decimal,
) -> Result<Option<(String, Vec<Packable>)>, DbError> {
    let mut tx = pool.begin().await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await?;
    let (open, limit) = enqueued(&mut tx, deployment).await?;
    let mut jobs: Vec<Packable> = sqlx::query_as(
        "SELECT id, tenant, request, est_prompt_tokens, max_tokens FROM jobs
         WHERE status = 'queued' AND route = 'batch' AND deployment = $1
         ORDER BY priority DESC, created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(deployment)
    .bind(max_items)
    .fetch_all(&mut *tx)
    .await?;
    // USD caps: each job holds its worst-case batch cost until the batch's results are in.
    // Jobs over a cap are left queued (`defer`) or failed (`reject`), like on the real-time path.
    let mut tenants: Vec<String> = jobs.iter().map(|j| j.tenant.clone()).collect();
    tenants.sort();
    tenants.dedup();
    let mut caps = super::budgets::lock_usd_caps(&mut tx, &tenants, now).await?;
    let mut rejected = Vec::new();
    let mut holds: Vec<(String, String, Decimal)> = Vec::new();
    jobs.retain(|j| {
        let Some(usd) = caps.get_mut(&j.tenant) else {
            return true;
        };
        let cost = worst_cost(j);
        match usd.check(now, &j.tenant, cost) {
            UsdCheck::Fits => {
                usd.held += cost;
                holds.push((j.id.clone(), j.tenant.clone(), cost));
                true
            }
            UsdCheck::Over(Decision::Reject { code, reason }) => {
                rejected.push((j.id.clone(), code.to_string(), reason));
                false
            }
            UsdCheck::Over(_) | UsdCheck::InFlight(_) => false,
        }
    });
    if !rejected.is_empty() {
        super::budgets::reject(&mut tx, &rejected, now).await?;
        tracing::info!(
            jobs = rejected.len(),
            "failed batch-route jobs over their tenant's USD cap (policy reject)"
        );
    }
    if let Some(limit) = limit {
        let mut total = open;
        let keep = jobs
            .iter()
            .take_while(|j| {
                total += i64::from(j.est_prompt_tokens) + i64::from(j.max_tokens);
                total <= limit
            })
            .count();
        jobs.truncate(keep);
    }
    jobs.truncate(fits(&jobs));
    if jobs.is_empty() {
        tx.commit().await?;
        return Ok(None);
    }
    let id = crate::ids::new_id("pb");
    let provider = deployment.split('/').next().unwrap_or_default();
    let est: i64 = jobs
        .iter()
        .map(|j| i64::from(j.est_prompt_tokens) + i64::from(j.max_tokens))
        .sum();
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    // The packer holds the lease while it submits, so no poller submits the same batch.
    sqlx::query(
        "INSERT INTO provider_batches (id, deployment, provider, items, est_tokens, lease_owner, lease_until)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))",
    )
    .bind(&id)
    .bind(deployment)
    .bind(provider)
    .bind(jobs.len() as i32)
    .bind(est)
    .bind(owner)
    .bind(lease.as_secs_f64())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "WITH moved AS (
            UPDATE jobs SET status = 'in_provider_batch', attempt = attempt + 1, provider_batch_id = $2,
                attempted_at = now(), updated_at = now()
            WHERE id = ANY($1) AND status = 'queued' RETURNING id, attempt)
         INSERT INTO provider_batch_items (provider_batch_id, job_id, attempt) SELECT $2, id, attempt FROM moved",
    )
    .bind(&ids)
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    let packed: HashSet<&str> = ids.iter().copied().collect();
    let (hold_ids, hold_tenants, hold_usd): (Vec<String>, Vec<String>, Vec<Decimal>) = holds
        .into_iter()
        .filter(|(job, _, _)| packed.contains(job.as_str()))
        .fold(Default::default(), |(mut a, mut b, mut c), (j, t, u)| {
            a.push(j);
            b.push(t);
            c.push(u);
            (a, b, c)
        });
    if !hold_ids.is_empty() {
        // Held past the provider's completion window; released when the results are recorded.
        sqlx::query(
            "INSERT INTO budget_holds (job_id, source, tenant, usd, expires_at)
             SELECT j, $4, t, u, now() + interval '3 days'
             FROM unnest($1::text[], $2::text[], $3::numeric[]) AS x(j, t, u)",
        )
        .bind(&hold_ids)
        .bind(&hold_tenants)
        .bind(&hold_usd)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Some((id, jobs)))
}

/// An open provider batch this process now owns.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Leased {
    pub id: String,
    pub deployment: String,
    pub state: String,
    pub provider_batch_id: Option<String>,
}

/// Takes the lease of one open provider batch whose lease is free or expired. A poller keeps a
/// lease until its next poll is due, so a process that dies mid-batch is replaced after that.
pub async fn lease_one(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
) -> Result<Option<Leased>, DbError> {
    sqlx::query_as(
        "UPDATE provider_batches SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
         WHERE id = (SELECT id FROM provider_batches
                     WHERE state IN ('submitting', 'in_progress') AND (lease_until IS NULL OR lease_until < now())
                     ORDER BY last_polled_at NULLS FIRST LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id, deployment, state, provider_batch_id",
    )
    .bind(owner)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// Records a successful submission.
pub async fn submitted(
    pool: &PgPool,
    id: &str,
    provider_batch_id: &str,
    input_file_id: Option<&str>,
    next_poll_in: Duration,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE provider_batches SET state = 'in_progress', provider_batch_id = $2, input_file_id = $3,
            submitted_at = now(), last_polled_at = now(), lease_until = now() + make_interval(secs => $4)
         WHERE id = $1 AND state = 'submitting'",
    )
    .bind(id)
    .bind(provider_batch_id)
    .bind(input_file_id)
    .bind(next_poll_in.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Notes a poll that found the batch still running, and keeps the lease until the next one.
pub async fn polled(
    pool: &PgPool,
    id: &str,
    owner: &str,
    next_in: Duration,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE provider_batches SET last_polled_at = now(), lease_until = now() + make_interval(secs => $3)
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(next_in.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// The requests of a provider batch's jobs (to submit it again after a crash).
pub async fn packed_jobs(pool: &PgPool, id: &str) -> Result<Vec<Packable>, DbError> {
    sqlx::query_as(
        "SELECT j.id, j.tenant, j.request, j.est_prompt_tokens, j.max_tokens FROM provider_batch_items i
         JOIN jobs j ON j.id = i.job_id WHERE i.provider_batch_id = $1 ORDER BY j.id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

/// The jobs of a provider batch with their attempt numbers.
pub async fn items(pool: &PgPool, id: &str) -> Result<Vec<(String, i32)>, DbError> {
    sqlx::query_as("SELECT job_id, attempt FROM provider_batch_items WHERE provider_batch_id = $1")
        .bind(id)
        .fetch_all(pool)
        .await
}

/// The result of one batch item, ready to record.
#[derive(Debug, Clone, Serialize)]
pub struct ItemOutcome {
    pub job_id: String,
    pub attempt: i32,
    /// The job's next state: `succeeded`, `failed`, `queued` (re-driven), or `None` when the
    /// item only adds a ledger row (a late result for a job that moved on).
    pub status: &'static str,
    /// Re-driven jobs: `batch` again, or `cheap` when the deadline is near.
    pub route: &'static str,
    pub route_note: Option<String>,
    pub response: Option<Value>,
    pub error: Option<Value>,
    pub attempt_status: &'static str,
    pub error_code: Option<String>,
    pub http_status: Option<i32>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub input_usd_per_mtok: Option<Decimal>,
    pub output_usd_per_mtok: Option<Decimal>,
    pub cached_input_usd_per_mtok: Option<Decimal>,
    pub discount: Decimal,
    pub cost_usd: Decimal,
    pub baseline_cost_usd: Decimal,
    pub provider_request_id: Option<String>,
    pub attempt_id: String,
}

/// Records every item of an ended provider batch in one transaction: jobs still in this batch
/// move to their next state; a job that moved on (re-routed, cancelled) only gets its ledger row
/// and cost. Items are settled once: a second call after a crash records nothing twice.
pub async fn record_results(
    pool: &PgPool,
    batch: &Leased,
    outcomes: &[ItemOutcome],
    final_state: &str,
) -> Result<u64, DbError> {
    let mut tx = pool.begin().await?;
    let settled: Vec<String> = sqlx::query_scalar(
        "UPDATE provider_batch_items SET settled = true
         WHERE provider_batch_id = $1 AND NOT settled RETURNING job_id",
    )
    .bind(&batch.id)
    .fetch_all(&mut *tx)
    .await?;
    let unsettled: HashSet<&str> = settled.iter().map(String::as_str).collect();
    let fresh: Vec<&ItemOutcome> = outcomes
        .iter()
        .filter(|o| unsettled.contains(o.job_id.as_str()))
        .collect();
    let (provider, model) = batch
        .deployment
        .split_once('/')
        .unwrap_or((batch.deployment.as_str(), ""));
    let recorded: i64 = sqlx::query_scalar(
        "WITH input AS (
            SELECT * FROM jsonb_to_recordset($1) AS x(job_id text, attempt integer, status text, route text,
                route_note text, response jsonb, error jsonb, attempt_status text, error_code text,
                http_status integer, input_tokens bigint, output_tokens bigint, cached_tokens bigint,
                input_usd_per_mtok numeric, output_usd_per_mtok numeric, cached_input_usd_per_mtok numeric,
                discount numeric, cost_usd numeric, baseline_cost_usd numeric, provider_request_id text,
                attempt_id text)
         ), moved AS (
            UPDATE jobs j SET
                status = i.status,
                route = i.route,
                route_reason = CASE WHEN i.route_note IS NULL THEN j.route_reason ELSE j.route_reason || '; ' || i.route_note END,
                provider_batch_id = NULL,
                response = COALESCE(i.response, j.response),
                error = CASE WHEN i.status = 'succeeded' THEN NULL ELSE COALESCE(i.error, j.error) END,
                errors = CASE WHEN i.error IS NULL THEN j.errors ELSE j.errors || jsonb_build_array(i.error) END,
                deployment_attempts = CASE WHEN i.status = 'queued' THEN j.deployment_attempts + 1 ELSE j.deployment_attempts END,
                input_tokens = j.input_tokens + i.input_tokens, output_tokens = j.output_tokens + i.output_tokens,
                cached_tokens = j.cached_tokens + i.cached_tokens, cost_usd = j.cost_usd + i.cost_usd,
                baseline_cost_usd = COALESCE(j.baseline_cost_usd, 0) + i.baseline_cost_usd,
                publish_after = CASE WHEN i.status = 'queued' AND i.route = 'cheap' THEN now() END,
                updated_at = now(),
                finalized_at = CASE WHEN i.status IN ('succeeded', 'failed') THEN now() END
            FROM input i
            WHERE j.id = i.job_id AND j.status = 'in_provider_batch' AND j.provider_batch_id = $2
            RETURNING j.id
         ), late AS (
            -- The job moved on (re-routed or cancelled): the provider still billed this answer.
            UPDATE jobs j SET
                input_tokens = j.input_tokens + i.input_tokens, output_tokens = j.output_tokens + i.output_tokens,
                cached_tokens = j.cached_tokens + i.cached_tokens, cost_usd = j.cost_usd + i.cost_usd,
                baseline_cost_usd = COALESCE(j.baseline_cost_usd, 0) + i.baseline_cost_usd
            FROM input i
            WHERE j.id = i.job_id AND i.cost_usd <> 0
              AND NOT (j.status = 'in_provider_batch' AND j.provider_batch_id IS NOT DISTINCT FROM $2)
            RETURNING j.id
         ), ledger AS (
            INSERT INTO attempts (id, job_id, tenant, attempt, provider, model, route, status, error_code, http_status,
                input_tokens, output_tokens, cached_tokens, input_usd_per_mtok, output_usd_per_mtok,
                cached_input_usd_per_mtok, discount, cost_usd, provider_request_id, provider_batch_id,
                worker, started_at, finished_at)
            SELECT i.attempt_id, i.job_id, j.tenant, i.attempt, $3, $4, 'batch', i.attempt_status, i.error_code,
                i.http_status, i.input_tokens, i.output_tokens, i.cached_tokens, i.input_usd_per_mtok,
                i.output_usd_per_mtok, i.cached_input_usd_per_mtok, i.discount, i.cost_usd, i.provider_request_id,
                $2, 'batch-poller', COALESCE(j.attempted_at, now()), now()
            FROM input i JOIN jobs j ON j.id = i.job_id
            ON CONFLICT (job_id, attempt) DO NOTHING
            RETURNING 1
         ), released AS (
            DELETE FROM budget_holds WHERE source = $2 AND job_id = ANY($5) RETURNING 1
         ), spent AS (
            INSERT INTO tenant_spend (tenant, day, usd)
            SELECT j.tenant, (now() AT TIME ZONE 'utc')::date, sum(i.cost_usd)
            FROM input i JOIN jobs j ON j.id = i.job_id
            GROUP BY j.tenant HAVING sum(i.cost_usd) <> 0
            ON CONFLICT (tenant, day) DO UPDATE SET usd = tenant_spend.usd + excluded.usd
            RETURNING 1
         )
         SELECT count(*) FROM moved",
    )
    .bind(sqlx::types::Json(&fresh))
    .bind(&batch.id)
    .bind(provider)
    .bind(model)
    .bind(&settled)
    .fetch_one(&mut *tx)
    .await?;
    let moved: i64 = recorded;
    sqlx::query("UPDATE provider_batches SET state = $2, ended_at = now(), lease_until = NULL WHERE id = $1")
        .bind(&batch.id)
        .bind(final_state)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(moved as u64)
}

/// A submission the provider refused outright: its jobs go to the real-time path.
pub async fn submission_failed(pool: &PgPool, id: &str, reason: &str) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE provider_batches SET state = 'failed', error = $2, ended_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE jobs SET status = 'queued', route = 'cheap', provider_batch_id = NULL, publish_after = now(),
            route_reason = route_reason || '; moved to real-time: the provider refused the batch (' || $2 || ')',
            updated_at = now()
         WHERE provider_batch_id = $1 AND status = 'in_provider_batch'",
    )
    .bind(id)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE provider_batch_items SET settled = true WHERE provider_batch_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    // Nothing was sent, so nothing will be billed.
    sqlx::query("DELETE FROM budget_holds WHERE source = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Jobs waiting in a provider batch whose deadline is within `margin`: moved to the real-time
/// path now. A result that arrives for them later is still recorded (it was billed).
pub async fn rescue_near_deadline(pool: &PgPool, margin: Duration) -> Result<u64, DbError> {
    let done = sqlx::query(
        "UPDATE jobs SET status = 'queued', route = 'cheap', provider_batch_id = NULL, publish_after = now(),
            route_reason = route_reason || '; moved to real-time: the deadline drew near without a batch result',
            updated_at = now()
         WHERE status = 'in_provider_batch' AND deadline IS NOT NULL
           AND deadline < now() + make_interval(secs => $1)",
    )
    .bind(margin.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Whether any open provider batch exists (for tests and status).
pub async fn open_count(pool: &PgPool) -> Result<i64, DbError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM provider_batches WHERE state IN ('submitting', 'in_progress')",
    )
    .fetch_one(pool)
    .await
}

/// When the job's deadline is, for re-drive decisions.
pub async fn deadlines(
    pool: &PgPool,
    ids: &[String],
) -> Result<Vec<(String, Option<DateTime<Utc>>, i32, i32, Option<String>)>, DbError> {
    sqlx::query_as("SELECT id, deadline, deployment_attempts, max_attempts, premium FROM jobs WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await
}
