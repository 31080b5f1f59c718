//! Dead letters: jobs that finally `failed`. A dead letter keeps its whole history (`errors`,
//! `error` and its ledger rows in `attempts`). Nothing here deletes a row: requeueing sends the
//! job round again, and purging only takes it off the list (`dead_letter_purged_at`).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use super::DbError;
use super::jobs::{JOB_COLUMNS, JobRow};
use crate::domain::state::sql::*;

/// Which dead letters a command acts on; every set field narrows the selection.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only this tenant's (always set by the API; optional for admin commands).
    pub tenant: Option<String>,
    /// The alias or model the job asked for, or the deployment it last used.
    pub model: Option<String>,
    /// The code of the job's final error (`http_400`, `schema_validation_failed`, …).
    pub code: Option<String>,
    /// Failed at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only these jobs.
    pub ids: Option<Vec<String>>,
}

/// The condition every dead-letter statement shares; binds `$1`–`$5` from the filter.
fn dead_condition() -> String {
    format!("status = '{FAILED}' AND dead_letter_purged_at IS NULL
    AND ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR model = $2 OR deployment = $2)
    AND ($3::text IS NULL OR error->>'code' = $3) AND ($4::timestamptz IS NULL OR finalized_at >= $4)
    AND ($5::text[] IS NULL OR id = ANY($5))")
}

fn bind<'q, O>(
    q: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    f: &'q DeadLetterFilter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    q.bind(&f.tenant)
        .bind(&f.model)
        .bind(&f.code)
        .bind(f.since)
        .bind(&f.ids)
}

/// A page of dead letters in id (creation) order, after `after`.
pub async fn list(
    pool: &PgPool,
    f: &DeadLetterFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<JobRow>, DbError> {
    let dead = dead_condition();
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE {dead} AND ($6::text IS NULL OR id > $6) ORDER BY id LIMIT $7"
    );
    bind(sqlx::query_as(&sql), f)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// How many dead letters the filter selects.
pub async fn count(pool: &PgPool, f: &DeadLetterFilter) -> Result<i64, DbError> {
    let dead = dead_condition();
    let sql = format!("SELECT count(*) FROM jobs WHERE {dead}");
    let (n,): (i64,) = bind(sqlx::query_as(&sql), f).fetch_one(pool).await?;
    Ok(n)
}

/// Sends the selected dead letters round again: `queued` with a fresh set of tries on their
/// first deployment (`attempt` keeps counting, so ledger rows stay unique), their final error
/// cleared, a `requeued` entry added to their history, and marked for the relay to publish
/// (batch-route jobs wait for the batch packer instead, as at submission). Returns their ids.
pub async fn requeue(
    pool: &PgPool,
    f: &DeadLetterFilter,
    by: &str,
) -> Result<Vec<String>, DbError> {
    let dead = dead_condition();
    let sql = format!(
        "UPDATE jobs SET status = '{QUEUED}', deployment_index = 0, deployment_attempts = 0,
            finalized_at = NULL, error = NULL, run_after = NULL, repair_note = NULL,
            cancel_requested_at = NULL, updated_at = now(),
            publish_after = CASE WHEN route = 'batch' THEN NULL ELSE now() END,
            errors = errors || jsonb_build_array(jsonb_build_object('at', now(), 'attempt', attempt,
                'code', 'requeued', 'message', 'requeued from the dead letters by ' || $6::text))
         WHERE {dead} RETURNING id"
    );
    let rows: Vec<(String,)> = bind(sqlx::query_as(&sql), f)
        .bind(by)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Takes the selected dead letters off the list (the rows stay). Returns their ids.
pub async fn purge(pool: &PgPool, f: &DeadLetterFilter) -> Result<Vec<String>, DbError> {
    let dead = dead_condition();
    let sql = format!(
        "UPDATE jobs SET dead_letter_purged_at = now(), updated_at = now() WHERE {dead} RETURNING id"
    );
    let rows: Vec<(String,)> = bind(sqlx::query_as(&sql), f).fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Any job by id, whoever its tenant (admin), with its ledger rows oldest first.
pub async fn history(pool: &PgPool, id: &str) -> Result<Option<(JobRow, Value)>, DbError> {
    let job: Option<JobRow> =
        sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    let Some(job) = job else {
        return Ok(None);
    };
    let attempts: Value = sqlx::query_scalar(
        "SELECT COALESCE(jsonb_agg(to_jsonb(a) - 'job_id' - 'tenant' ORDER BY a.attempt), '[]'::jsonb)
         FROM attempts a WHERE a.job_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    Ok(Some((job, attempts)))
}
