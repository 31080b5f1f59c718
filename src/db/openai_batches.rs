//! The OpenAI-shaped side of `batches`: creating a batch over an input file, its status moves
//! (`validating → in_progress → finalizing → completed | expired`, `→ failed`,
//! `→ cancelling → cancelled`), each conditional on the current status, and reading batches
//! back for the API. Native batches (status NULL) are read through the same record.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use super::DbError;
use crate::domain::state::sql::*;

/// A batch row as the API shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRecord {
    pub id: String,
    pub tenant: String,
    pub source: String,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
    pub endpoint: Option<String>,
    pub input_file_id: Option<String>,
    pub completion_window: Option<String>,
    /// OpenAI's status; `None` for a native batch (derived from its jobs).
    pub status: Option<String>,
    pub errors: Option<Value>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub in_progress_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub finalizing_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub cancelling_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, tenant, source, metadata, created_at, endpoint, input_file_id,
    completion_window, status, errors, output_file_id, error_file_id, in_progress_at, expires_at,
    finalizing_at, completed_at, failed_at, expired_at, cancelling_at, cancelled_at";

/// What `POST /v1/batches` records.
#[derive(Debug, Clone)]
pub struct NewBatch<'a> {
    pub id: &'a str,
    pub tenant: &'a str,
    pub input_file_id: &'a str,
    pub endpoint: &'a str,
    pub completion_window: &'a str,
    pub expires_at: DateTime<Utc>,
    pub metadata: &'a Value,
    /// The key that created the batch: its jobs record it, so its limits apply.
    pub api_key_id: &'a str,
}

/// Records a new batch in `validating`.
pub async fn create(pool: &PgPool, b: &NewBatch<'_>) -> Result<BatchRecord, DbError> {
    sqlx::query_as(&format!(
        "INSERT INTO batches (id, tenant, source, metadata, endpoint, input_file_id, completion_window,
            status, expires_at, api_key_id)
         VALUES ($1, $2, 'openai', $3, $4, $5, $6, 'validating', $7, $8)
         RETURNING {COLUMNS}"
    ))
    .bind(b.id)
    .bind(b.tenant)
    .bind(b.metadata)
    .bind(b.endpoint)
    .bind(b.input_file_id)
    .bind(b.completion_window)
    .bind(b.expires_at)
    .bind(b.api_key_id)
    .fetch_one(pool)
    .await
}

/// One batch of `tenant`'s.
pub async fn get(pool: &PgPool, tenant: &str, id: &str) -> Result<Option<BatchRecord>, DbError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM batches WHERE id = $1 AND tenant = $2"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

/// A page of `tenant`'s batches, newest first, before the cursor `after`.
pub async fn list(
    pool: &PgPool,
    tenant: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<BatchRecord>, DbError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM batches WHERE tenant = $1 AND ($2::text IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(tenant)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Asks to cancel an OpenAI batch that is validating or in progress. Returns the status it
/// had, or `None` if it is not such a batch of `tenant`'s.
pub async fn request_cancel(
    pool: &PgPool,
    tenant: &str,
    id: &str,
) -> Result<Option<String>, DbError> {
    sqlx::query_scalar(
        "UPDATE batches b SET status = 'cancelling', cancelling_at = now()
         FROM (SELECT id, status FROM batches WHERE id = $1 AND tenant = $2 FOR UPDATE) old
         WHERE b.id = old.id AND old.status IN ('validating', 'in_progress')
         RETURNING old.status",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

/// A batch waiting for validation, locked for this transaction (others skip it).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ToValidate {
    pub id: String,
    pub tenant: String,
    pub input_file_id: Option<String>,
    pub endpoint: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The key that created the batch, recorded on each of its jobs.
    pub api_key_id: Option<String>,
}

/// Locks the oldest batch in `validating` that no other process is validating.
pub async fn lock_validating(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<Option<ToValidate>, DbError> {
    sqlx::query_as(
        "SELECT id, tenant, input_file_id, endpoint, expires_at, api_key_id FROM batches
         WHERE status = 'validating' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut **tx)
    .await
}

/// `validating → in_progress`. False if the batch was no longer validating.
pub async fn mark_in_progress(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
) -> Result<bool, DbError> {
    Ok(sqlx::query(
        "UPDATE batches SET status = 'in_progress', in_progress_at = now()
         WHERE id = $1 AND status = 'validating'",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}

/// `validating | finalizing | cancelling → failed` with OpenAI's `errors` list object (from
/// `cancelling` only when its output cannot be written, so the batch does not stay stuck).
pub async fn mark_failed<'e, E>(ex: E, id: &str, errors: &Value) -> Result<bool, DbError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    // The `batch.failed` event is written by the same statement: a batch refused while
    // validating has no jobs, so the job triggers never speak for it.
    Ok(sqlx::query(
        "WITH u AS (
             UPDATE batches SET status = 'failed', failed_at = now(), errors = $2
             WHERE id = $1 AND status IN ('validating', 'finalizing', 'cancelling')
             RETURNING id, tenant)
         SELECT webhooks_emit(u.tenant, 'batch.failed', NULL, u.id, jsonb_build_object(
             'id', u.id, 'object', 'batch',
             'request_counts', jsonb_build_object('total', 0, 'completed', 0, 'failed', 0)), NULL)::text
         FROM u",
    )
    .bind(id)
    .bind(errors)
    .fetch_all(ex)
    .await?
    .len()
        == 1)
}

/// `in_progress → finalizing` for every batch whose jobs have all finished.
pub async fn to_finalizing(pool: &PgPool) -> Result<u64, DbError> {
    Ok(sqlx::query(
        "UPDATE batches b SET status = 'finalizing', finalizing_at = now()
         WHERE b.status = 'in_progress'
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id AND j.finalized_at IS NULL)",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// A batch ready for its output files, locked for this transaction.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ToFinish {
    pub id: String,
    pub tenant: String,
    pub status: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// Some job of it expired.
    pub any_expired: bool,
}

/// Locks a batch in `finalizing` or `cancelling` whose jobs have all finished.
pub async fn lock_finishable(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<Option<ToFinish>, DbError> {
    sqlx::query_as(
        &format!("SELECT b.id, b.tenant, b.status, b.expires_at,
            EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id AND j.status = '{EXPIRED}') AS any_expired
         FROM batches b
         WHERE b.status IN ('finalizing', 'cancelling')
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id AND j.finalized_at IS NULL)
         ORDER BY b.id LIMIT 1 FOR UPDATE OF b SKIP LOCKED"),
    )
    .fetch_optional(&mut **tx)
    .await
}

/// `finalizing | cancelling →` its final status, with its output and error files. The
/// timestamp column named after the final status is set. False if the status moved meanwhile.
pub async fn finish(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    from: &str,
    to: &str,
    output_file_id: Option<&str>,
    error_file_id: Option<&str>,
) -> Result<bool, DbError> {
    Ok(sqlx::query(
        "UPDATE batches SET status = $3, output_file_id = $4, error_file_id = $5,
            completed_at = CASE WHEN $3 = 'completed' THEN now() ELSE completed_at END,
            expired_at = CASE WHEN $3 = 'expired' THEN now() ELSE expired_at END,
            cancelled_at = CASE WHEN $3 = 'cancelled' THEN now() ELSE cancelled_at END
         WHERE id = $1 AND status = $2",
    )
    .bind(id)
    .bind(from)
    .bind(to)
    .bind(output_file_id)
    .bind(error_file_id)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}
