//! Recording a provider batch's results: every item once (`settled`), each job moved to its
//! next state with its ledger row, cost and spend in one statement. A result Postgres refuses
//! (a data or constraint error) never blocks the others: the set is split until the bad item
//! is alone, which is quarantined (its job failed with `result_unstorable`, still billed), and
//! the rest are booked. Only transient errors are handed back to be retried as they are.

use std::collections::HashSet;

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::DbError;
use super::errors::is_transient;
use super::provider_batches::Leased;
use crate::domain::state::JobState;
use crate::domain::state::sql::*;

/// Most items recorded in one transaction.
const RECORD_CHUNK: usize = 1000;

/// The error code of a job whose batch result could not be stored.
pub const UNSTORABLE: &str = "result_unstorable";

/// The result of one batch item, ready to record.
#[derive(Debug, Clone, Serialize)]
pub struct ItemOutcome {
    pub job_id: String,
    pub attempt: i32,
    /// The job's next state: `succeeded`, `failed`, `queued` (re-driven); a job no longer in
    /// the batch (re-routed, cancelled) is not moved, the item only adds its ledger row.
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

/// What recording a batch's results did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// Jobs moved out of the batch to their next state.
    pub moved: u64,
    /// Items Postgres refused, whose jobs were failed with [`UNSTORABLE`].
    pub quarantined: u64,
}

/// Records every item of an ended provider batch, then marks the batch `final_state` (with
/// `error`, if any). Jobs still in this batch move to their next state; a job that moved on
/// (re-routed) only gets its ledger row and cost. Items are settled once: a second call after a
/// crash records nothing twice. On a deterministic error the items are split in halves until
/// the offending one is alone and quarantined; a transient error is returned as it is.
pub async fn record_results(
    pool: &PgPool,
    batch: &Leased,
    outcomes: &[ItemOutcome],
    final_state: &str,
    error: Option<&str>,
) -> Result<Recorded, DbError> {
    let mut done = Recorded::default();
    // Parts of at most RECORD_CHUNK items keep each statement well within statement_timeout;
    // splits add at most 2n - 1 parts for n items (every split halves a part).
    let mut parts: Vec<&[ItemOutcome]> = outcomes.chunks(RECORD_CHUNK).rev().collect();
    let end = (final_state, error);
    let mut ended = false;
    while let Some(part) = parts.pop() {
        // The last part ends the batch in its own transaction: jobs and batch change together.
        let finish = parts.is_empty().then_some(end);
        match record_part(pool, batch, part, finish).await {
            Ok(n) => {
                done.moved += n;
                ended |= finish.is_some();
                // The batch path's attempts, by outcome (the real-time path counts its own in
                // the worker as `sluice_attempts_total`).
                for o in part {
                    metrics::counter!("sluice_batch_items_total", "outcome" => o.attempt_status)
                        .increment(1);
                }
            }
            Err(e) if is_transient(&e) => return Err(e),
            Err(e) if part.len() > 1 => {
                tracing::warn!(batch = %batch.id, items = part.len(), error = %e, "a batch result could not be stored; splitting to find it");
                let (a, b) = part.split_at(part.len() / 2);
                parts.push(b);
                parts.push(a);
            }
            Err(e) => {
                quarantine(pool, batch, &part[0], &e).await?;
                done.quarantined += 1;
            }
        }
    }
    if !ended {
        end_batch(pool, &batch.id, end).await?;
    }
    Ok(done)
}

/// Marks the batch ended in `final_state` (with an error, if any).
async fn end_batch<'c, E: sqlx::PgExecutor<'c>>(
    exec: E,
    id: &str,
    (final_state, error): (&str, Option<&str>),
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE provider_batches SET state = $2, error = COALESCE($3, error), ended_at = now(), lease_until = NULL
         WHERE id = $1",
    )
    .bind(id)
    .bind(final_state)
    .bind(error)
    .execute(exec)
    .await?;
    Ok(())
}

/// Records `part` in one transaction; returns how many jobs moved.
async fn record_part(
    pool: &PgPool,
    batch: &Leased,
    part: &[ItemOutcome],
    finish: Option<(&str, Option<&str>)>,
) -> Result<u64, DbError> {
    let mut tx = pool.begin().await?;
    if let Some(end) = finish {
        end_batch(&mut *tx, &batch.id, end).await?;
    }
    let ids: Vec<&str> = part.iter().map(|o| o.job_id.as_str()).collect();
    let settled: Vec<String> = sqlx::query_scalar(
        "UPDATE provider_batch_items SET settled = true
         WHERE provider_batch_id = $1 AND job_id = ANY($2) AND NOT settled RETURNING job_id",
    )
    .bind(&batch.id)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    if settled.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let unsettled: HashSet<&str> = settled.iter().map(String::as_str).collect();
    let fresh: Vec<&ItemOutcome> = part
        .iter()
        .filter(|o| unsettled.contains(o.job_id.as_str()))
        .collect();
    let (provider, model) = batch
        .deployment
        .split_once('/')
        .unwrap_or((batch.deployment.as_str(), ""));
    let moved: i64 = sqlx::query_scalar(&record_sql())
        .bind(sqlx::types::Json(&fresh))
        .bind(&batch.id)
        .bind(provider)
        .bind(model)
        .bind(&settled)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(u64::try_from(moved).unwrap_or(0))
}

/// Books `o` without its answer: the job fails with [`UNSTORABLE`] (if it still waits on this
/// batch), the ledger keeps its tokens and cost (the provider billed it). If even that is
/// refused, the item is only settled and its job failed, so the batch can end.
async fn quarantine(
    pool: &PgPool,
    batch: &Leased,
    o: &ItemOutcome,
    cause: &DbError,
) -> Result<(), DbError> {
    tracing::error!(batch = %batch.id, job_id = %o.job_id, error = %cause, "quarantining a batch result Postgres refused");
    let message = "the provider's answer could not be stored; the call is billed, the job failed";
    let entry = json!({"at": chrono::Utc::now(), "attempt": o.attempt, "code": UNSTORABLE,
        "message": message, "deployment": batch.deployment});
    let failed = ItemOutcome {
        status: JobState::Failed.as_str(),
        route_note: None,
        response: None,
        error: Some(entry.clone()),
        attempt_status: "failed",
        error_code: Some(UNSTORABLE.into()),
        provider_request_id: None,
        ..o.clone()
    };
    match record_part(pool, batch, std::slice::from_ref(&failed), None).await {
        Err(e) if !is_transient(&e) => {
            tracing::error!(batch = %batch.id, job_id = %o.job_id, error = %e, "could not book a quarantined batch result; failing its job without a ledger row");
        }
        other => return other.map(|_| ()),
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE provider_batch_items SET settled = true WHERE provider_batch_id = $1 AND job_id = $2",
    )
    .bind(&batch.id)
    .bind(&o.job_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "UPDATE jobs SET status = '{failed}', provider_batch_id = NULL, error = $3,
            errors = errors || jsonb_build_array($3), updated_at = now(), finalized_at = now()
         WHERE id = $1 AND status = '{waiting}' AND provider_batch_id = $2",
        failed = JobState::Failed.as_str(),
        waiting = JobState::InProviderBatch.as_str(),
    ))
    .bind(&o.job_id)
    .bind(&batch.id)
    .bind(&entry)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Moves jobs, writes the ledger, releases holds and adds spend for a set of item outcomes
/// (`$1`), of provider batch `$2` at provider `$3`, model `$4`; `$5` lists the items settled now.
fn record_sql() -> String {
    format!("WITH input AS (
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
                error = CASE WHEN i.status = '{SUCCEEDED}' THEN NULL ELSE COALESCE(i.error, j.error) END,
                errors = CASE WHEN i.error IS NULL THEN j.errors ELSE j.errors || jsonb_build_array(i.error) END,
                deployment_attempts = CASE WHEN i.status = '{QUEUED}' THEN j.deployment_attempts + 1 ELSE j.deployment_attempts END,
                input_tokens = j.input_tokens + i.input_tokens, output_tokens = j.output_tokens + i.output_tokens,
                cached_tokens = j.cached_tokens + i.cached_tokens, cost_usd = j.cost_usd + i.cost_usd,
                baseline_cost_usd = COALESCE(j.baseline_cost_usd, 0) + i.baseline_cost_usd,
                publish_after = CASE WHEN i.status = '{QUEUED}' AND i.route = 'cheap' THEN now() END,
                updated_at = now(),
                finalized_at = CASE WHEN i.status IN ('{SUCCEEDED}', '{FAILED}') THEN now() END
            FROM input i
            WHERE j.id = i.job_id AND j.status = '{IN_PROVIDER_BATCH}' AND j.provider_batch_id = $2
            RETURNING j.id
         ), late AS (
            -- The job moved on (re-routed or cancelled): the provider still billed this answer.
            UPDATE jobs j SET
                input_tokens = j.input_tokens + i.input_tokens, output_tokens = j.output_tokens + i.output_tokens,
                cached_tokens = j.cached_tokens + i.cached_tokens, cost_usd = j.cost_usd + i.cost_usd,
                baseline_cost_usd = COALESCE(j.baseline_cost_usd, 0) + i.baseline_cost_usd
            FROM input i
            WHERE j.id = i.job_id AND i.cost_usd <> 0
              AND NOT (j.status = '{IN_PROVIDER_BATCH}' AND j.provider_batch_id IS NOT DISTINCT FROM $2)
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
         SELECT count(*) FROM moved")
}
