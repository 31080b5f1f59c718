//! Deadlines: a job whose deadline passes before it has a result becomes `expired`. Workers
//! expire a job they claim past its deadline (`worker::execute`); this sweeper catches the jobs
//! no worker will claim in time: those still `queued` (waiting for budget, a worker, or the
//! relay) or waiting for a retry.

use sqlx::PgPool;

use super::DbError;
use crate::domain::state::sql::*;

/// Most jobs expired in one statement, to keep each maintenance tick short.
const SWEEP_BATCH: i64 = 5000;

/// Expires queued and retry-scheduled jobs past their deadline; returns how many. Rows another
/// statement holds (the relay publishing them, a claim) are skipped until the next tick.
pub async fn expire_overdue(pool: &PgPool) -> Result<u64, DbError> {
    let done = sqlx::query(
        &format!("WITH due AS (
            SELECT id, jsonb_build_object('at', now(), 'attempt', attempt, 'code', 'deadline_exceeded',
                'message', 'the job''s deadline passed before it could run') AS entry
            FROM jobs WHERE status IN ('{QUEUED}', '{RETRY_SCHEDULED}') AND deadline <= now()
            LIMIT $1 FOR UPDATE SKIP LOCKED
         )
         UPDATE jobs j SET status = '{EXPIRED}', finalized_at = now(), updated_at = now(),
            publish_after = NULL, run_after = NULL, error = d.entry, errors = j.errors || jsonb_build_array(d.entry)
         FROM due d WHERE j.id = d.id AND j.status IN ('{QUEUED}', '{RETRY_SCHEDULED}')"),
    )
    .bind(SWEEP_BATCH)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
