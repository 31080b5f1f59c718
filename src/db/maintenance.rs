//! Queries of the maintenance loops: worker heartbeats, rescuing the jobs of dead workers,
//! staging due retries, and the relay that publishes what was recorded but not yet published.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};

use super::DbError;
use crate::domain::state::sql::*;

/// Registers a worker process.
pub async fn register_worker(pool: &PgPool, id: &str, host: &str, pid: u32) -> Result<(), DbError> {
    sqlx::query("INSERT INTO workers (id, host, pid) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()")
        .bind(id)
        .bind(host)
        .bind(pid as i32)
        .execute(pool)
        .await?;
    Ok(())
}

/// Proves the worker is alive.
pub async fn heartbeat(pool: &PgPool, id: &str, host: &str, pid: u32) -> Result<(), DbError> {
    // An upsert: a worker that was frozen (or cut off) long enough to be forgotten registers
    // again, instead of having every later job rescued from under it.
    register_worker(pool, id, host, pid).await
}

/// Removes a worker that stopped cleanly.
pub async fn deregister_worker(pool: &PgPool, id: &str) -> Result<(), DbError> {
    sqlx::query("DELETE FROM workers WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Re-queues running jobs whose worker is gone or silent for `dead_after`, recording the loss
/// in each job's history, and forgets such workers. Returns how many jobs were re-queued.
///
/// A claim is itself a sign of life: a job claimed less than `dead_after` ago is left alone
/// even when its worker has no row. A worker thawed after being written off (its row removed)
/// claims before its next heartbeat registers it again; without this, the rescuer could take
/// those fresh claims away from a live worker and the jobs would be called twice.
pub async fn rescue_orphans(pool: &PgPool, dead_after: Duration) -> Result<u64, DbError> {
    let secs = dead_after.as_secs_f64();
    // The lost attempt counts: a job whose worker keeps dying moves to its next deployment,
    // then fails, like any job whose attempts are spent.
    let done = sqlx::query(
        &format!("WITH lost AS (
            SELECT j.id, jsonb_build_object('at', now(), 'attempt', j.attempt, 'code', 'worker_lost',
                'message', 'the worker running this attempt stopped answering', 'worker', j.attempted_by) AS entry,
                j.deployment_attempts + 1 < j.max_attempts AS retry_here,
                j.deployment_index + 1 < jsonb_array_length(j.deployments) AS fall_back
            FROM jobs j
            WHERE j.status = '{RUNNING}'
              AND (j.attempted_at IS NULL OR j.attempted_at < now() - make_interval(secs => $1))
              AND NOT EXISTS (
                SELECT 1 FROM workers w WHERE w.id = j.attempted_by
                  AND w.heartbeat_at > now() - make_interval(secs => $1))
            FOR UPDATE OF j SKIP LOCKED)
         UPDATE jobs j SET
            status = CASE WHEN l.retry_here OR l.fall_back THEN '{QUEUED}' ELSE '{FAILED}' END,
            deployment_attempts = CASE WHEN l.retry_here THEN j.deployment_attempts + 1 ELSE 0 END,
            deployment_index = CASE WHEN NOT l.retry_here AND l.fall_back THEN j.deployment_index + 1 ELSE j.deployment_index END,
            publish_after = CASE WHEN l.retry_here OR l.fall_back THEN now() END,
            error = CASE WHEN l.retry_here OR l.fall_back THEN j.error ELSE l.entry END,
            finalized_at = CASE WHEN l.retry_here OR l.fall_back THEN NULL ELSE now() END,
            errors = j.errors || jsonb_build_array(l.entry),
            updated_at = now()
         FROM lost l WHERE j.id = l.id"),
    )
    .bind(secs)
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM workers WHERE heartbeat_at < now() - make_interval(secs => $1) * 4")
        .bind(secs)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// The jobs `worker` has held `running` for longer than `older_than`.
pub async fn held_by(
    pool: &PgPool,
    worker: &str,
    older_than: Duration,
) -> Result<Vec<String>, DbError> {
    sqlx::query_scalar(&format!(
        "SELECT id FROM jobs WHERE status = '{RUNNING}' AND attempted_by = $1
           AND attempted_at < now() - make_interval(secs => $2)"
    ))
    .bind(worker)
    .bind(older_than.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Puts back in the queue jobs among `ids` that `worker` holds `running` (for longer than
/// `older_than`) but is not running: no call was made, so the attempt does not count. Their
/// USD holds are released.
pub async fn requeue_strays(
    pool: &PgPool,
    worker: &str,
    ids: &[String],
    older_than: Duration,
) -> Result<u64, DbError> {
    let moved: Vec<i32> = sqlx::query_scalar(
        &format!("WITH stray AS (
            UPDATE jobs j SET status = '{QUEUED}', publish_after = now(), updated_at = now(),
                errors = j.errors || jsonb_build_array(jsonb_build_object('at', now(), 'attempt', j.attempt,
                    'code', 'claim_lost', 'worker', j.attempted_by,
                    'message', 'claimed but never started by its worker (the claim''s answer was lost); queued again')),
                reserved_sec = NULL
            WHERE j.id = ANY($1) AND j.status = '{RUNNING}' AND j.attempted_by = $2
              AND j.attempted_at < now() - make_interval(secs => $3)
            RETURNING j.id
         ), released AS (
            DELETE FROM budget_holds h USING stray s WHERE h.job_id = s.id AND h.source = 'call'
         )
         SELECT 1 FROM stray"),
    )
    .bind(ids)
    .bind(worker)
    .bind(older_than.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(moved.len() as u64)
}

/// Moves retries whose time has come back to `queued`, for the relay to publish.
pub async fn stage_due_retries(pool: &PgPool) -> Result<u64, DbError> {
    let done = sqlx::query(&format!(
        "UPDATE jobs SET status = '{QUEUED}', publish_after = now(), updated_at = now()
         WHERE status = '{RETRY_SCHEDULED}' AND run_after <= now()"
    ))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Tenants with real-time jobs published, still `queued` and untouched for `idle`; with each,
/// whether one of them is untouched for `after` too. One index probe per tenant.
pub async fn tenants_with_unclaimed(
    pool: &PgPool,
    idle: Duration,
    after: Duration,
) -> Result<Vec<(String, bool)>, DbError> {
    sqlx::query_as(&format!(
        "SELECT t.name, o.oldest < now() - make_interval(secs => $2) FROM tenants t
         CROSS JOIN LATERAL (
            SELECT min(j.updated_at) AS oldest FROM jobs j
            WHERE j.tenant = t.name AND j.status = '{QUEUED}' AND j.publish_after IS NULL
              AND j.route IS DISTINCT FROM 'batch') o
         WHERE o.oldest < now() - make_interval(secs => $1)
         ORDER BY t.name"
    ))
    .bind(idle.as_secs_f64())
    .bind(after.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// How many of `tenant`'s real-time jobs are published and still `queued` (each should have a
/// work message), counting no further than `cap`.
pub async fn count_awaiting_message(pool: &PgPool, tenant: &str, cap: i64) -> Result<i64, DbError> {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM (SELECT 1 FROM jobs j
            WHERE j.tenant = $1 AND j.status = '{QUEUED}' AND j.publish_after IS NULL
              AND j.route IS DISTINCT FROM 'batch' LIMIT $2) x"
    ))
    .bind(tenant)
    .bind(cap)
    .fetch_one(pool)
    .await
}

/// The sweeper for lost work messages: for each `(tenant, age, limit)` of `plan`, marks for the
/// relay up to `limit` of the tenant's real-time jobs that are still `queued` though published
/// (no publish mark) and untouched for `age`, oldest first. Their message went with a purged or
/// deleted queue, or was lost in transit. A duplicate message is harmless (claims are
/// conditional); `updated_at` moves, so a job is sent again at most once per period.
pub async fn mark_lost_for_republish(
    pool: &PgPool,
    plan: &[(String, Duration, i64)],
) -> Result<u64, DbError> {
    if plan.is_empty() {
        return Ok(0);
    }
    let tenants: Vec<&str> = plan.iter().map(|(t, _, _)| t.as_str()).collect();
    let ages: Vec<f64> = plan.iter().map(|(_, a, _)| a.as_secs_f64()).collect();
    let limits: Vec<i64> = plan.iter().map(|(_, _, n)| *n).collect();
    let done = sqlx::query(&format!(
        "WITH lost AS MATERIALIZED (
            -- Picked once: as an `IN (…)` subquery the planner may scan it again per row, and
            -- each new scan, seeing the rows just updated, would walk past the limit.
            SELECT l.id FROM unnest($1::text[], $2::float8[], $3::bigint[]) AS p(tenant, age, n)
            CROSS JOIN LATERAL (
                SELECT j.id FROM jobs j
                WHERE j.tenant = p.tenant AND j.status = '{QUEUED}' AND j.publish_after IS NULL
                  AND j.route IS DISTINCT FROM 'batch'
                  AND j.updated_at < now() - make_interval(secs => p.age)
                ORDER BY j.updated_at LIMIT p.n FOR UPDATE SKIP LOCKED) l)
         UPDATE jobs SET publish_after = now(), updated_at = now()
         FROM lost WHERE jobs.id = lost.id AND jobs.status = '{QUEUED}' AND jobs.publish_after IS NULL"
    ))
    .bind(&tenants)
    .bind(&ages)
    .bind(&limits)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Locks up to `limit` jobs due for publishing (skipping rows another relay holds) in `tx`.
pub async fn pick_unpublished(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> Result<Vec<(String, i16, String)>, DbError> {
    sqlx::query_as(&format!(
        "SELECT id, priority, tenant FROM jobs
         WHERE publish_after <= now() AND status = '{QUEUED}'
         ORDER BY publish_after LIMIT $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// Clears the publish mark of jobs the relay just published, inside its transaction.
pub async fn clear_publish_mark(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[String],
) -> Result<(), DbError> {
    sqlx::query("UPDATE jobs SET publish_after = NULL WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Parks queued jobs that wait for budget: the relay publishes each again at its Unix second.
pub async fn park(pool: &PgPool, ids: &[String], until: &[i64]) -> Result<(), DbError> {
    sqlx::query(&format!(
        "UPDATE jobs j SET publish_after = to_timestamp(x.until), updated_at = now()
         FROM unnest($1::text[], $2::bigint[]) AS x(id, until)
         WHERE j.id = x.id AND j.id = ANY($1) AND j.status = '{QUEUED}'"
    ))
    .bind(ids)
    .bind(until)
    .execute(pool)
    .await?;
    Ok(())
}
