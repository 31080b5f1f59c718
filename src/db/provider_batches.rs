//! SQL of the provider batch path: packing queued batch-route jobs into a provider batch,
//! leasing open batches to one poller at a time, recording item results exactly once, and
//! moving jobs whose deadline draws near to the real-time path.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgPool;

use super::DbError;
pub use super::batch_results::{ItemOutcome, Recorded, record_results};
use crate::domain::budget::{Decision, UsdCheck};
use crate::domain::state::sql::*;

/// Deployments with batch-route jobs waiting, how many, and how long the oldest has waited.
pub async fn waiting(pool: &PgPool) -> Result<Vec<(String, i64, f64)>, DbError> {
    sqlx::query_as(&format!(
        "SELECT deployment, count(*), extract(epoch FROM now() - min(created_at))::float8
         FROM jobs WHERE status = '{QUEUED}' AND route = 'batch' AND deployment IS NOT NULL
         GROUP BY deployment"
    ))
    .fetch_all(pool)
    .await
}

/// A job about to go into a provider batch.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Packable {
    pub id: String,
    pub tenant: String,
    /// The alias the job asked for (its redaction policy's key).
    pub model: String,
    pub request: Value,
    pub est_prompt_tokens: i32,
    pub max_tokens: i32,
    /// Masked before it goes into the batch file (a redaction policy with `restore`).
    pub mask_on_send: bool,
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
    let mut jobs: Vec<Packable> = sqlx::query_as(&format!(
        "SELECT id, tenant, model, request, est_prompt_tokens, max_tokens, mask_on_send FROM jobs
         WHERE status = '{QUEUED}' AND route = 'batch' AND deployment = $1
         ORDER BY priority DESC, created_at LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
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
        &format!("WITH moved AS (
            UPDATE jobs SET status = '{IN_PROVIDER_BATCH}', attempt = attempt + 1, provider_batch_id = $2,
                attempted_at = now(), updated_at = now()
            WHERE id = ANY($1) AND status = '{QUEUED}' RETURNING id, attempt)
         INSERT INTO provider_batch_items (provider_batch_id, job_id, attempt) SELECT $2, id, attempt FROM moved"),
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
    /// When sluice asked the provider to cancel it (every job of it was cancelled).
    pub cancel_sent_at: Option<DateTime<Utc>>,
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
         RETURNING id, deployment, state, provider_batch_id, cancel_sent_at",
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
        "UPDATE provider_batches SET last_polled_at = now(), poll_failures = 0,
            lease_until = now() + make_interval(secs => $3)
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
        "SELECT j.id, j.tenant, j.model, j.request, j.est_prompt_tokens, j.max_tokens, j.mask_on_send
         FROM provider_batch_items i
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
        &format!("UPDATE jobs SET status = '{QUEUED}', route = 'cheap', provider_batch_id = NULL, publish_after = now(),
            route_reason = route_reason || '; moved to real-time: the provider refused the batch (' || $2 || ')',
            updated_at = now()
         WHERE provider_batch_id = $1 AND status = '{IN_PROVIDER_BATCH}'"),
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
        &format!("UPDATE jobs SET status = '{QUEUED}', route = 'cheap', provider_batch_id = NULL, publish_after = now(),
            route_reason = route_reason || '; moved to real-time: the deadline drew near without a batch result',
            updated_at = now()
         WHERE status = '{IN_PROVIDER_BATCH}' AND deadline IS NOT NULL
           AND deadline < now() + make_interval(secs => $1)"),
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

/// What the batch path needs to know of a job to decide where it goes next.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct JobInfo {
    pub id: String,
    pub deadline: Option<DateTime<Utc>>,
    pub deployment_attempts: i32,
    pub max_attempts: i32,
    pub premium: Option<String>,
    pub status: String,
    pub provider_batch_id: Option<String>,
    pub tenant: String,
    pub model: String,
    /// The stored request of a job masked when sent (`mask_on_send`), to recompute the
    /// mapping that restores its answer; `None` for every other job.
    pub masked_request: Option<Value>,
}

/// The jobs `ids`, for re-drive decisions and to know which were cancelled.
pub async fn job_info(pool: &PgPool, ids: &[String]) -> Result<Vec<JobInfo>, DbError> {
    sqlx::query_as(
        "SELECT id, deadline, deployment_attempts, max_attempts, premium, status, provider_batch_id,
            tenant, model, CASE WHEN mask_on_send THEN request END AS masked_request
         FROM jobs WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Extends the lease of a batch `owner` is submitting or following, while an upload, a create
/// or a download runs (on the heartbeat pool). False when the lease was lost.
pub async fn renew_lease(
    pool: &PgPool,
    id: &str,
    owner: &str,
    lease: Duration,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE provider_batches SET lease_until = GREATEST(lease_until, now() + make_interval(secs => $3))
         WHERE id = $1 AND lease_owner = $2 AND state IN ('submitting', 'in_progress')",
    )
    .bind(id)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Counts one more failed poll in a row (with its error); returns how many so far.
pub async fn poll_failed(pool: &PgPool, id: &str, error: &str) -> Result<i32, DbError> {
    sqlx::query_scalar(
        "UPDATE provider_batches SET poll_failures = poll_failures + 1, error = $2
         WHERE id = $1 RETURNING poll_failures",
    )
    .bind(id)
    .bind(crate::domain::text::storable_str(error).as_ref())
    .fetch_one(pool)
    .await
}

/// Whether every job of the batch was cancelled (so the provider batch can be cancelled too).
pub async fn all_cancelled(pool: &PgPool, id: &str) -> Result<bool, DbError> {
    let all: Option<bool> = sqlx::query_scalar(&format!(
        "SELECT bool_and(j.status = '{CANCELLED}') FROM provider_batch_items i
         JOIN jobs j ON j.id = i.job_id WHERE i.provider_batch_id = $1"
    ))
    .bind(id)
    .fetch_one(pool)
    .await?;
    Ok(all.unwrap_or(false))
}

/// Notes that the provider was asked to cancel the batch.
pub async fn cancel_sent(pool: &PgPool, id: &str) -> Result<(), DbError> {
    sqlx::query("UPDATE provider_batches SET cancel_sent_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}
