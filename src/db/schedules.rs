//! Schedules and their runs. A run is claimed with a conditional insert on
//! `(schedule, fire_time)` inside the transaction that creates its batch, so each fire time
//! fires once however many schedulers race for it; a scheduler that dies mid-run rolls back its
//! claim and another takes the tick.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use super::DbError;

/// Records (or refreshes) a schedule; returns when it was first seen, which bounds catch-up.
pub async fn upsert(
    pool: &PgPool,
    name: &str,
    tenant: &str,
    schedule: &str,
    timezone: &str,
    definition: &Value,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, DbError> {
    let first_seen: Option<DateTime<Utc>> = sqlx::query_scalar(
        "WITH up AS (
            INSERT INTO schedules (name, tenant, schedule, timezone, definition, first_seen_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $6)
            ON CONFLICT (name) DO UPDATE SET tenant = EXCLUDED.tenant, schedule = EXCLUDED.schedule,
                timezone = EXCLUDED.timezone, definition = EXCLUDED.definition, updated_at = EXCLUDED.updated_at
            WHERE (schedules.tenant, schedules.schedule, schedules.timezone, schedules.definition)
                IS DISTINCT FROM (EXCLUDED.tenant, EXCLUDED.schedule, EXCLUDED.timezone, EXCLUDED.definition)
            RETURNING first_seen_at)
         SELECT first_seen_at FROM up
         UNION ALL
         SELECT first_seen_at FROM schedules WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM up)",
    )
    .bind(name)
    .bind(tenant)
    .bind(schedule)
    .bind(timezone)
    .bind(definition)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    match first_seen {
        Some(t) => Ok(t),
        // Another scheduler inserted it after this statement's snapshot: read it now.
        None => {
            sqlx::query_scalar("SELECT first_seen_at FROM schedules WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await
        }
    }
}

/// The latest fire time a scheduler handled (fired, failed or skipped); manual runs excluded.
pub async fn last_fire(pool: &PgPool, name: &str) -> Result<Option<DateTime<Utc>>, DbError> {
    sqlx::query_scalar(
        "SELECT max(fire_time) FROM schedule_runs WHERE schedule = $1 AND trigger <> 'manual'",
    )
    .bind(name)
    .fetch_one(pool)
    .await
}

/// Locks the schedule's row for this run (runs of one schedule never overlap) and returns its
/// watermark.
pub async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<Option<String>, DbError> {
    sqlx::query_scalar("SELECT watermark FROM schedules WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_one(&mut **tx)
        .await
}

/// The latest run of a schedule (`{"run_id", "fire_time", "trigger", "outcome", "jobs"}`),
/// for the audit log's "before" of a manual run.
pub async fn last_run_json(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<Option<serde_json::Value>, DbError> {
    sqlx::query_scalar(
        "SELECT jsonb_build_object('run_id', id, 'fire_time', fire_time, 'trigger', trigger,
             'outcome', outcome, 'jobs', jobs)
         FROM schedule_runs WHERE schedule = $1 ORDER BY fire_time DESC, id DESC LIMIT 1",
    )
    .bind(name)
    .fetch_optional(&mut **tx)
    .await
}

/// Claims the run of `fire_time`; false when another scheduler already has it.
pub async fn claim_run(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    name: &str,
    fire_time: DateTime<Utc>,
    trigger: &str,
    outcome: &str,
    error: Option<&str>,
) -> Result<bool, DbError> {
    let claimed = sqlx::query(
        "INSERT INTO schedule_runs (id, schedule, fire_time, trigger, outcome, error)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (schedule, fire_time) DO NOTHING",
    )
    .bind(id)
    .bind(name)
    .bind(fire_time)
    .bind(trigger)
    .bind(outcome)
    .bind(error)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// Records how a claimed run ended.
pub async fn finish_run(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    outcome: &str,
    batch_id: Option<&str>,
    jobs: i32,
    error: Option<&str>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE schedule_runs SET outcome = $2, batch_id = $3, jobs = $4, error = $5, finished_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(outcome)
    .bind(batch_id)
    .bind(jobs)
    .bind(error)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Which of `paths` the schedule already took.
pub async fn taken_files(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    paths: &[String],
) -> Result<HashSet<String>, DbError> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT path FROM schedule_files WHERE schedule = $1 AND path = ANY($2)",
    )
    .bind(name)
    .bind(paths)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Records files as taken by a run (with the reason when one was set aside).
pub async fn take_files(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    run_id: &str,
    files: &BTreeMap<String, Option<String>>,
) -> Result<(), DbError> {
    if files.is_empty() {
        return Ok(());
    }
    let paths: Vec<&String> = files.keys().collect();
    let errors: Vec<Option<&String>> = files.values().map(Option::as_ref).collect();
    sqlx::query(
        "INSERT INTO schedule_files (schedule, path, run_id, error)
         SELECT $1, p, $2, e FROM unnest($3::text[], $4::text[]) AS x(p, e)
         ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .bind(run_id)
    .bind(&paths)
    .bind(&errors)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Stores the SQL source's watermark.
pub async fn set_watermark(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    value: Option<&str>,
) -> Result<(), DbError> {
    sqlx::query("UPDATE schedules SET watermark = $2 WHERE name = $1")
        .bind(name)
        .bind(value)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Whether the tenant exists (a run for an unknown tenant fails with that reason).
pub async fn tenant_exists(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
) -> Result<bool, DbError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE name = $1)")
        .bind(tenant)
        .fetch_one(&mut **tx)
        .await
}

/// One recorded run.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub id: String,
    pub schedule: String,
    pub fire_time: DateTime<Utc>,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub batch_id: Option<String>,
    pub jobs: i32,
    pub outcome: String,
    pub error: Option<String>,
}

/// The latest run of each schedule (by start time, manual runs included).
pub async fn last_runs(pool: &PgPool) -> Result<Vec<RunRow>, DbError> {
    sqlx::query_as(
        "SELECT DISTINCT ON (schedule) id, schedule, fire_time, trigger, started_at, batch_id, jobs, outcome, error
         FROM schedule_runs ORDER BY schedule, started_at DESC, fire_time DESC",
    )
    .fetch_all(pool)
    .await
}

/// Every run of one schedule, newest first (for tests and the CLI).
pub async fn runs(pool: &PgPool, name: &str, limit: i64) -> Result<Vec<RunRow>, DbError> {
    sqlx::query_as(
        "SELECT id, schedule, fire_time, trigger, started_at, batch_id, jobs, outcome, error
         FROM schedule_runs WHERE schedule = $1 ORDER BY fire_time DESC LIMIT $2",
    )
    .bind(name)
    .bind(limit)
    .fetch_all(pool)
    .await
}
