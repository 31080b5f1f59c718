//! Cancelling jobs and native batches.
//!
//! A job that has not started (`queued`, `retry_scheduled`) is cancelled at once, and so is a
//! job waiting `in_provider_batch`: its item's result is discarded when it arrives (a ledger
//! row at no cost, nothing billed to the job), its USD hold is released now, and once every job
//! of a provider batch is cancelled the poller cancels the provider batch itself. A `running`
//! job gets `cancel_requested_at`: its worker sees it (it polls for its own jobs, see
//! `worker::cancel`) and aborts the provider call. Whatever was already recorded stays. The rows are locked
//! first, so a cancel racing a claim either wins (the claim skips the job) or sees it running.

use serde_json::json;
use sqlx::{PgPool, Postgres, Transaction};

use super::DbError;
use crate::domain::state::JobState;
use crate::domain::state::sql::*;

/// What a cancel did.
#[derive(Debug, Default)]
pub struct CancelReport {
    /// Cancelled at once (were queued or waiting for a retry).
    pub cancelled: Vec<String>,
    /// Asked to stop (running, or in a provider batch), now or by an earlier cancel.
    pub requested: Vec<String>,
    /// Already finished, with their state.
    pub finished: Vec<(String, String)>,
}

/// Cancels one job of `tenant`; `None` if there is no such job.
pub async fn cancel_job(
    pool: &PgPool,
    tenant: &str,
    id: &str,
) -> Result<Option<CancelReport>, DbError> {
    retry_on_deadlock(|| async {
        let mut tx = pool.begin().await?;
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, status FROM jobs WHERE id = $1 AND tenant = $2 FOR UPDATE")
                .bind(id)
                .bind(tenant)
                .fetch_all(&mut *tx)
                .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let report = apply(&mut tx, rows).await?;
        tx.commit().await?;
        Ok(Some(report))
    })
    .await
}

/// Who cancels a batch, for the `batch.cancel` audit row written in the cancel's transaction.
#[derive(Debug, Clone, Copy)]
pub struct CancelAudit<'a> {
    /// A key id (`key_…`) or `cli:<os user>`.
    pub actor: &'a str,
    /// An OpenAI batch's status move (`in_progress` → `cancelling`); `None` for a native batch.
    pub status: Option<(&'a str, &'a str)>,
}

/// Cancels every unfinished job of a batch of `tenant`'s; `None` if there is no such batch.
/// Finished jobs are not listed in the report. The audit row is written when anything changed.
pub async fn cancel_batch(
    pool: &PgPool,
    tenant: &str,
    batch_id: &str,
    by: CancelAudit<'_>,
) -> Result<Option<CancelReport>, DbError> {
    retry_on_deadlock(|| async {
        let mut tx = pool.begin().await?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM batches WHERE id = $1 AND tenant = $2)",
        )
        .bind(batch_id)
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
        if !exists {
            return Ok(None);
        }
        // Id order, as claims lock jobs, so the two never wait on each other in a cycle.
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, status FROM jobs WHERE batch_id = $1 AND tenant = $2 AND finalized_at IS NULL
             ORDER BY id FOR UPDATE",
        )
        .bind(batch_id)
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        let unfinished = rows.len();
        let report = apply(&mut tx, rows).await?;
        let (moved, stopping) = (report.cancelled.len(), report.requested.len());
        if by.status.is_some() || moved + stopping > 0 {
            let (before, after) = by.status.unwrap_or(if stopping > 0 {
                ("in_progress", "cancelling")
            } else {
                ("in_progress", "cancelled")
            });
            super::audit::record(
                &mut tx,
                &super::audit::Entry {
                    actor: by.actor,
                    action: "batch.cancel",
                    target: batch_id,
                    before: Some(json!({"status": before, "unfinished_jobs": unfinished})),
                    after: Some(json!({"status": after, "cancelled_jobs": moved,
                        "cancel_requested_jobs": stopping})),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(report))
    })
    .await
}

/// Cancels or marks the locked `rows` (id, status) by their state.
async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    rows: Vec<(String, String)>,
) -> Result<CancelReport, DbError> {
    let mut report = CancelReport::default();
    let (mut now, mut batched, mut later) = (Vec::new(), Vec::new(), Vec::new());
    for (id, status) in rows {
        match JobState::parse(&status) {
            Some(JobState::Queued | JobState::RetryScheduled) => now.push(id),
            Some(JobState::InProviderBatch) => batched.push(id),
            Some(JobState::Running) => later.push(id),
            _ => report.finished.push((id, status)),
        }
    }
    if !now.is_empty() {
        report.cancelled = sqlx::query_scalar(
            &format!("UPDATE jobs SET status = '{CANCELLED}', finalized_at = now(), updated_at = now(),
                publish_after = NULL, run_after = NULL, cancel_requested_at = now(),
                error = jsonb_build_object('at', now(), 'attempt', attempt, 'code', 'cancelled',
                    'message', 'cancelled on request before it ran'),
                errors = errors || jsonb_build_array(jsonb_build_object('at', now(), 'attempt', attempt,
                    'code', 'cancelled', 'message', 'cancelled on request before it ran'))
             WHERE id = ANY($1) AND status IN ('{QUEUED}', '{RETRY_SCHEDULED}') RETURNING id"),
        )
        .bind(&now)
        .fetch_all(&mut **tx)
        .await?;
    }
    if !batched.is_empty() {
        // `provider_batch_id` stays: the poller reads it to discard the item's late result.
        let cancelled: Vec<String> = sqlx::query_scalar(
            &format!("WITH c AS (
                UPDATE jobs SET status = '{CANCELLED}', finalized_at = now(), updated_at = now(),
                    cancel_requested_at = COALESCE(cancel_requested_at, now()),
                    error = jsonb_build_object('at', now(), 'attempt', attempt, 'code', 'cancelled',
                        'message', 'cancelled on request while in a provider batch; its result is discarded'),
                    errors = errors || jsonb_build_array(jsonb_build_object('at', now(), 'attempt', attempt,
                        'code', 'cancelled', 'message', 'cancelled on request while in a provider batch; its result is discarded'))
                WHERE id = ANY($1) AND status = '{IN_PROVIDER_BATCH}' RETURNING id, provider_batch_id
             ), released AS (
                DELETE FROM budget_holds h USING c WHERE h.job_id = c.id AND h.source = c.provider_batch_id
             )
             SELECT id FROM c"),
        )
        .bind(&batched)
        .fetch_all(&mut **tx)
        .await?;
        report.cancelled.extend(cancelled);
    }
    if !later.is_empty() {
        report.requested = sqlx::query_scalar(
            &format!("UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, now()), updated_at = now()
             WHERE id = ANY($1) AND status = '{RUNNING}' RETURNING id"),
        )
        .bind(&later)
        .fetch_all(&mut **tx)
        .await?;
    }
    Ok(report)
}

/// At claim time: cancels queued jobs whose cancel was asked while they ran (they were queued
/// again after a failed attempt, or re-queued from a dead worker). Returns their ids.
pub(crate) async fn cancel_requeued(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[&str],
) -> Result<Vec<String>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        &format!("UPDATE jobs SET status = '{CANCELLED}', finalized_at = now(), updated_at = now(), publish_after = NULL,
            error = jsonb_build_object('at', now(), 'attempt', attempt, 'code', 'cancelled',
                'message', 'cancelled on request while it was running'),
            errors = errors || jsonb_build_array(jsonb_build_object('at', now(), 'attempt', attempt,
                'code', 'cancelled', 'message', 'cancelled on request while it was running'))
         WHERE id = ANY($1) AND status = '{QUEUED}' AND cancel_requested_at IS NOT NULL RETURNING id"),
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await
}

/// Jobs this worker runs whose cancel was asked (for the worker's cancel watcher).
pub async fn requested_for(pool: &PgPool, worker: &str) -> Result<Vec<String>, DbError> {
    sqlx::query_scalar(
        &format!("SELECT id FROM jobs WHERE status = '{RUNNING}' AND attempted_by = $1 AND cancel_requested_at IS NOT NULL"),
    )
    .bind(worker)
    .fetch_all(pool)
    .await
}

/// Runs `f` again (twice at most, after a short jittered pause) when Postgres broke a deadlock
/// by aborting it: a batch cancel locks many rows and may cross a recording worker's statement.
async fn retry_on_deadlock<T, F, Fut>(f: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    use backon::Retryable;
    let pauses = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(10))
        .with_max_delay(std::time::Duration::from_millis(100))
        .with_jitter()
        .with_max_times(2);
    f.retry(pauses).when(is_deadlock).await
}

fn is_deadlock(e: &DbError) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40P01")
}
