//! Jobs, batches and the attempts ledger: inserting submissions, claiming work, recording
//! outcomes, and reading them back. Every state write is conditional on the current state.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use super::DbError;
use crate::domain::state::sql::*;

/// A validated job ready to insert.
#[derive(Debug, Clone, Serialize)]
pub struct NewJobRow {
    pub id: String,
    pub custom_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub model: String,
    pub deployments: Vec<String>,
    /// The deployment the first attempt uses.
    pub deployment_index: i32,
    pub request: Value,
    pub tags: Value,
    pub route_requested: &'static str,
    pub route: &'static str,
    pub route_reason: String,
    pub deadline: Option<DateTime<Utc>>,
    pub webhook_url: Option<String>,
    pub priority: i16,
    pub max_tokens: i32,
    pub max_attempts: i32,
    pub est_prompt_tokens: i32,
    pub premium: Option<String>,
    pub cache_ttl_secs: Option<i32>,
    /// Matches per PII detector (never the values), e.g. `{"card": 2}`.
    pub redactions: Value,
    /// Stored as submitted, masked whenever it is sent (a redaction policy with `restore`).
    pub mask_on_send: bool,
    /// The API key that submitted the job (`None`: AMQP, schedules); its limits apply.
    pub api_key_id: Option<String>,
}

/// What happened to one submitted job.
#[derive(Debug, Clone, Serialize)]
pub struct Inserted {
    pub id: String,
    pub custom_id: Option<String>,
    pub priority: i16,
    /// False when an earlier job with the same idempotency key was returned instead.
    pub created: bool,
    /// On the batch route: waits in Postgres for the packer instead of a work message.
    pub batch: bool,
}

/// Creates a batch row.
pub async fn insert_batch(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    tenant: &str,
    source: &str,
    metadata: &Value,
) -> Result<(), DbError> {
    sqlx::query("INSERT INTO batches (id, tenant, source, metadata) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(tenant)
        .bind(source)
        .bind(metadata)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Whether a batch can take more jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOpen {
    /// Open: the batch's row is locked until the transaction ends.
    Open,
    /// No such batch of this tenant's.
    Missing,
    /// The batch was cancelled.
    Cancelled,
    /// Every job of the batch has finished.
    Finished,
}

/// Locks a batch of `tenant`'s for adding jobs and says whether it can take them.
pub async fn lock_batch_for_adding(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    batch_id: &str,
) -> Result<BatchOpen, DbError> {
    let row: Option<(bool, bool)> = sqlx::query_as(
        &format!("SELECT b.cancelled_at IS NOT NULL,
                EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id)
                  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id
                    AND j.status IN ('{QUEUED}', '{RUNNING}', '{RETRY_SCHEDULED}', '{IN_PROVIDER_BATCH}'))
         FROM batches b WHERE b.id = $1 AND b.tenant = $2 FOR UPDATE OF b"),
    )
    .bind(batch_id)
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match row {
        None => BatchOpen::Missing,
        Some((true, _)) => BatchOpen::Cancelled,
        Some((_, true)) => BatchOpen::Finished,
        Some(_) => BatchOpen::Open,
    })
}

/// The `custom_id`s among `ids` that jobs of `batch_id` already use.
pub async fn custom_ids_in_batch(
    tx: &mut Transaction<'_, Postgres>,
    batch_id: &str,
    ids: &[&str],
) -> Result<Vec<String>, DbError> {
    sqlx::query_scalar(
        "SELECT DISTINCT custom_id FROM jobs WHERE batch_id = $1 AND custom_id = ANY($2) ORDER BY 1 LIMIT 20",
    )
    .bind(batch_id)
    .bind(ids)
    .fetch_all(&mut **tx)
    .await
}

/// Marks a batch of `tenant`'s cancelled, so it takes no more jobs; false if there is none.
pub async fn mark_batch_cancelled(
    pool: &PgPool,
    tenant: &str,
    batch_id: &str,
) -> Result<bool, DbError> {
    Ok(sqlx::query(
        "UPDATE batches SET cancelled_at = COALESCE(cancelled_at, now()) WHERE id = $1 AND tenant = $2",
    )
    .bind(batch_id)
    .bind(tenant)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Inserts jobs in one statement. A job whose idempotency key was seen before is not inserted
/// again; the earlier job is returned in its place. `publish_in` delays the relay's pick-up so
/// the submitter's own publish normally wins.
pub async fn insert_jobs(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    batch_id: Option<&str>,
    rows: &[NewJobRow],
    publish_in: std::time::Duration,
) -> Result<Vec<Inserted>, DbError> {
    let given: Vec<RowIn> = rows
        .iter()
        .map(|row| RowIn {
            row,
            reserved_tokens: None,
        })
        .collect();
    let created = insert_rows(tx, tenant, batch_id, &given, publish_in, None).await?;
    let created: std::collections::HashSet<String> = created.into_iter().collect();
    let missing: Vec<&str> = rows
        .iter()
        .filter(|r| !created.contains(&r.id))
        .filter_map(|r| r.idempotency_key.as_deref())
        .collect();
    let mut earlier: HashMap<String, (String, i16)> = HashMap::new();
    if !missing.is_empty() {
        let found: Vec<(String, String, i16)> = sqlx::query_as(
            "SELECT idempotency_key, id, priority FROM jobs WHERE tenant = $1 AND idempotency_key = ANY($2)",
        )
        .bind(tenant)
        .bind(&missing)
        .fetch_all(&mut **tx)
        .await?;
        earlier = found.into_iter().map(|(k, id, p)| (k, (id, p))).collect();
    }
    Ok(rows
        .iter()
        .map(|r| {
            if created.contains(&r.id) {
                Inserted {
                    id: r.id.clone(),
                    custom_id: r.custom_id.clone(),
                    priority: r.priority,
                    created: true,
                    batch: r.route == "batch",
                }
            } else {
                let (id, priority) = r
                    .idempotency_key
                    .as_ref()
                    .and_then(|k| earlier.get(k).cloned())
                    .unwrap_or_else(|| (r.id.clone(), r.priority));
                Inserted {
                    id,
                    custom_id: r.custom_id.clone(),
                    priority,
                    created: false,
                    batch: false,
                }
            }
        })
        .collect())
}

/// Who runs the jobs [`insert_admitted`] inserts already admitted, and the second their
/// reserved tokens count in.
#[derive(Debug, Clone, Copy)]
pub struct Running<'a> {
    pub worker: &'a str,
    pub sec: i64,
}

/// A row to insert; with `reserved_tokens`, admitted and `running` from the start.
#[derive(Serialize)]
struct RowIn<'a> {
    #[serde(flatten)]
    row: &'a NewJobRow,
    reserved_tokens: Option<i64>,
}

/// Inserts jobs of `tenant` admitted before their insert (`db::budgets::admit_new`): each with
/// its reserved tokens is `running` for `running.worker` (attempt 1), each without is `queued`
/// with the relay's pick-up `publish_in` ahead. The rows carry no idempotency key.
pub async fn insert_admitted(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    rows: &[(&NewJobRow, Option<i64>)],
    publish_in: std::time::Duration,
    running: Running<'_>,
) -> Result<(), DbError> {
    let given: Vec<RowIn> = rows
        .iter()
        .map(|&(row, reserved_tokens)| RowIn {
            row,
            reserved_tokens,
        })
        .collect();
    insert_rows(tx, tenant, None, &given, publish_in, Some(running)).await?;
    Ok(())
}

/// One statement for every row; the ids inserted (a row whose idempotency key is taken is not).
async fn insert_rows(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    batch_id: Option<&str>,
    rows: &[RowIn<'_>],
    publish_in: std::time::Duration,
    running: Option<Running<'_>>,
) -> Result<Vec<String>, DbError> {
    sqlx::query_scalar(
        &format!("INSERT INTO jobs (id, tenant, batch_id, custom_id, idempotency_key, model, deployments, deployment_index,
            request, tags, route_requested, route, route_reason, deadline, webhook_url, priority, max_tokens,
            max_attempts, est_prompt_tokens, premium, cache_ttl_secs, deployment, publish_after, redactions,
            mask_on_send, api_key_id, status, attempt, attempted_by, attempted_at, reserved_tokens, reserved_sec)
         SELECT x.id, $1, $2, x.custom_id, x.idempotency_key, x.model, x.deployments, x.deployment_index,
            x.request, x.tags, x.route_requested, x.route, x.route_reason, x.deadline, x.webhook_url, x.priority,
            x.max_tokens, x.max_attempts, x.est_prompt_tokens, x.premium, x.cache_ttl_secs,
            x.deployments->>x.deployment_index,
            CASE WHEN x.route = 'batch' OR x.reserved_tokens IS NOT NULL THEN NULL
                ELSE now() + make_interval(secs => $4) END,
            COALESCE(x.redactions, '{{}}'), COALESCE(x.mask_on_send, false), x.api_key_id,
            CASE WHEN x.reserved_tokens IS NULL THEN '{QUEUED}' ELSE '{RUNNING}' END,
            CASE WHEN x.reserved_tokens IS NULL THEN 0 ELSE 1 END,
            CASE WHEN x.reserved_tokens IS NOT NULL THEN $5 END,
            CASE WHEN x.reserved_tokens IS NOT NULL THEN now() END,
            COALESCE(x.reserved_tokens, 0),
            CASE WHEN x.reserved_tokens IS NOT NULL THEN $6::bigint END
         FROM jsonb_to_recordset($3) AS x(id text, custom_id text, idempotency_key text, model text,
            deployments jsonb, deployment_index integer, request jsonb, tags jsonb, route_requested text,
            route text, route_reason text, deadline timestamptz, webhook_url text, priority smallint,
            max_tokens integer, max_attempts integer, est_prompt_tokens integer, premium text,
            cache_ttl_secs integer, redactions jsonb, mask_on_send boolean, api_key_id text,
            reserved_tokens bigint)
         ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING id"),
    )
    .bind(tenant)
    .bind(batch_id)
    .bind(sqlx::types::Json(rows))
    .bind(publish_in.as_secs_f64())
    .bind(running.map(|r| r.worker))
    .bind(running.map(|r| r.sec))
    .fetch_all(&mut **tx)
    .await
}

/// The idempotency keys among `rows` (each already taken by an earlier job of `tenant`) whose
/// earlier job asked for something else: another model, request or tags. Such a reuse of a key
/// is refused rather than answered with the earlier job.
pub async fn idempotency_conflicts(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    rows: &[&NewJobRow],
) -> Result<std::collections::HashSet<String>, DbError> {
    if rows.is_empty() {
        return Ok(Default::default());
    }
    let keyed: Vec<(&str, &NewJobRow)> = rows
        .iter()
        .filter_map(|r| Some((r.idempotency_key.as_deref()?, *r)))
        .collect();
    let keys: Vec<&str> = keyed.iter().map(|(k, _)| *k).collect();
    let models: Vec<&str> = keyed.iter().map(|(_, r)| r.model.as_str()).collect();
    let requests: Vec<sqlx::types::Json<&Value>> = keyed
        .iter()
        .map(|(_, r)| sqlx::types::Json(&r.request))
        .collect();
    let tags: Vec<sqlx::types::Json<&Value>> = keyed
        .iter()
        .map(|(_, r)| sqlx::types::Json(&r.tags))
        .collect();
    let differ: Vec<String> = sqlx::query_scalar(
        "SELECT x.key FROM unnest($2::text[], $3::text[], $4::jsonb[], $5::jsonb[])
             AS x(key, model, request, tags)
         JOIN jobs j ON j.tenant = $1 AND j.idempotency_key = x.key
         WHERE j.model <> x.model OR j.request <> x.request OR j.tags <> x.tags",
    )
    .bind(tenant)
    .bind(&keys)
    .bind(&models)
    .bind(&requests)
    .bind(&tags)
    .fetch_all(&mut **tx)
    .await?;
    Ok(differ.into_iter().collect())
}

/// The publish mark of [`mark_published`]: `$1` the jobs' ids, `$2` the relay grace in seconds.
///
/// The update joins the locked rows by id alone. With `id = ANY($1)` in its own `WHERE` as
/// well, Postgres ran it as a nested loop that went over the whole array, or every locked row,
/// for each job: about a second for 2,000 jobs in `sluice bench e2e`, with their row locks held
/// and workers' claims of those jobs waiting as long (BENCHMARKS.md, "The publish mark").
pub const MARK_PUBLISHED: &str = "WITH free AS (
        SELECT id FROM jobs WHERE id = ANY($1)
          AND publish_after = updated_at + make_interval(secs => $2)
        ORDER BY id FOR UPDATE SKIP LOCKED)
     UPDATE jobs j SET publish_after = NULL FROM free WHERE j.id = free.id";

/// Notes that these jobs' work messages are in the broker, so the relay leaves them alone;
/// returns how many were marked. Only a job still as its publisher left it is marked: its
/// `publish_after` still `grace` past its `updated_at`, as the insert (`insert_jobs`) and the
/// retry stager (`stage_retries`) set them with `worker.relay_grace`. A job claimed meanwhile
/// needs no mark, and one parked since (`publish_after` moved to when its budget frees) must
/// keep its time.
/// A row locked by someone else (a worker claiming it, which clears the mark itself) is
/// skipped rather than waited for: waiting here held the claim's locks too, and a job left
/// marked is only published once more by the relay, a duplicate workers drop.
pub async fn mark_published(
    pool: &PgPool,
    ids: &[String],
    grace: std::time::Duration,
) -> Result<u64, DbError> {
    Ok(sqlx::query(MARK_PUBLISHED)
        .bind(ids)
        .bind(grace.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected())
}

/// Moves these retries back to `queued` if they still wait and are due, marked for the relay
/// `grace` from now (in case the caller's own publish never happens). Returns (id, priority,
/// tenant) of the jobs moved, for their work messages.
pub async fn stage_retries(
    pool: &PgPool,
    ids: &[String],
    grace: std::time::Duration,
) -> Result<Vec<(String, i16, String)>, DbError> {
    sqlx::query_as(&format!(
        "UPDATE jobs SET status = '{QUEUED}', publish_after = now() + make_interval(secs => $2),
            updated_at = now()
         WHERE id = ANY($1) AND status = '{RETRY_SCHEDULED}'
           AND run_after <= now() + interval '50 milliseconds'
         RETURNING id, priority, tenant"
    ))
    .bind(ids)
    .bind(grace.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// A job a worker has claimed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: String,
    pub tenant: String,
    pub model: String,
    pub deployments: sqlx::types::Json<Vec<String>>,
    /// The deployment this attempt uses (`deployments[deployment_index]`).
    pub deployment: Option<String>,
    pub request: Value,
    pub route: Option<String>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub deadline: Option<DateTime<Utc>>,
    pub deployment_index: i32,
    pub deployment_attempts: i32,
    pub max_tokens: i32,
    pub est_prompt_tokens: i32,
    pub premium: Option<String>,
    pub cache_ttl_secs: Option<i32>,
    pub custom_id: Option<String>,
    /// A schema-validation error of the previous answer, sent along as a repair message.
    #[sqlx(default)]
    pub repair_note: Option<String>,
    /// Masked whenever it is sent, its answer restored (a redaction policy with `restore`).
    #[sqlx(default)]
    pub mask_on_send: bool,
}

/// The recorded result of one claimed job: its next state, and the ledger row of the upstream
/// call if one was made.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub job_id: String,
    /// The job's tenant (from its claim): the ledger row's, without reading the job again.
    pub tenant: String,
    pub attempt: i32,
    /// `succeeded`, `failed`, `retry_scheduled`, `expired` or `queued`.
    pub status: &'static str,
    pub run_after: Option<DateTime<Utc>>,
    pub deployment: Option<String>,
    /// Which deployment the next attempt uses, and attempts already spent on it.
    pub next_deployment_index: i32,
    pub next_deployment_attempts: i32,
    pub response: Option<Value>,
    pub error: Option<Value>,
    /// Whether an upstream call was made (and so a ledger row is written).
    pub called: bool,
    pub attempt_id: String,
    pub provider: String,
    pub upstream_model: String,
    pub route: &'static str,
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
    /// A cache hit: what the call would have cost.
    pub saved_usd: Decimal,
    /// The provider batch this result came from, if any.
    pub provider_batch_id: Option<String>,
    pub latency_ms: Option<i32>,
    pub provider_request_id: Option<String>,
    pub started_at: DateTime<Utc>,
    /// Set when the answer missed the job's JSON schema: the repair attempt sends it along.
    pub repair_note: Option<String>,
}

/// In `record`: a job whose cancel was asked while it ran is not queued again (after a failed
/// attempt, a fallback or a lost reservation): it is cancelled instead.
fn record_cancels() -> String {
    format!("(j.cancel_requested_at IS NOT NULL AND i.status IN ('{QUEUED}', '{RETRY_SCHEDULED}'))")
}
/// The error entry of a job cancelled in `record`.
const RECORD_CANCELLED: &str =
    "jsonb_build_object('at', now(), 'attempt', i.attempt, 'code', 'cancelled',
    'message', 'cancelled on request while it was running')";

/// Records outcomes in one statement: each job's state moves only if this worker still holds
/// it at this attempt; for the jobs that moved, the ledger row is written, the budget
/// reservation is settled to actual usage, the USD hold released and the spend booked. A paid
/// call whose job this worker no longer holds is booked as `discarded` (cost and spend, no
/// state change). Returns the ids recorded; the others lost their claim (re-queued after a
/// presumed crash).
pub async fn record(
    pool: &PgPool,
    worker: &str,
    outcomes: &[Outcome],
) -> Result<Vec<String>, DbError> {
    sqlx::query_scalar(&format!(
        "WITH input AS (
            SELECT * FROM jsonb_to_recordset($1) AS x(job_id text, tenant text, attempt integer, status text,
                run_after timestamptz, deployment text, next_deployment_index integer,
                next_deployment_attempts integer, response jsonb, error jsonb, called boolean,
                attempt_id text, provider text, upstream_model text, route text, attempt_status text,
                error_code text, http_status integer, input_tokens bigint, output_tokens bigint,
                cached_tokens bigint, input_usd_per_mtok numeric, output_usd_per_mtok numeric,
                cached_input_usd_per_mtok numeric, discount numeric, cost_usd numeric,
                baseline_cost_usd numeric, saved_usd numeric, provider_batch_id text, latency_ms integer,
                provider_request_id text, started_at timestamptz, repair_note text)
         ), moved AS (
            UPDATE jobs j SET
                status = CASE WHEN {CANCELS} THEN '{CANCELLED}' ELSE i.status END,
                deployment = COALESCE(i.deployment, j.deployment),
                deployment_index = i.next_deployment_index,
                deployment_attempts = i.next_deployment_attempts,
                response = COALESCE(i.response, j.response),
                error = CASE WHEN i.status = '{SUCCEEDED}' THEN NULL WHEN {CANCELS} THEN {CANCELLED_ENTRY}
                             ELSE COALESCE(i.error, j.error) END,
                errors = j.errors || CASE WHEN i.error IS NULL THEN '[]'::jsonb ELSE jsonb_build_array(i.error) END
                    || CASE WHEN {CANCELS} THEN jsonb_build_array({CANCELLED_ENTRY}) ELSE '[]'::jsonb END,
                repair_note = COALESCE(i.repair_note, j.repair_note),
                input_tokens = j.input_tokens + i.input_tokens,
                output_tokens = j.output_tokens + i.output_tokens,
                cached_tokens = j.cached_tokens + i.cached_tokens,
                cost_usd = j.cost_usd + i.cost_usd,
                baseline_cost_usd = COALESCE(j.baseline_cost_usd, 0) + i.baseline_cost_usd,
                run_after = i.run_after,
                publish_after = CASE WHEN i.status = '{QUEUED}' AND NOT {CANCELS} THEN now() END,
                updated_at = now(),
                finalized_at = CASE WHEN i.status IN ('{SUCCEEDED}', '{FAILED}', '{CANCELLED}', '{EXPIRED}') OR {CANCELS}
                                    THEN now() END
            FROM input i
            WHERE j.id = i.job_id AND j.id = ANY($3) AND j.status = '{RUNNING}' AND j.attempted_by = $2
              AND j.attempt = i.attempt
            -- The input's own figures ride along, so the steps below read `moved` alone: a
            -- join of two CTEs is planned as a nested loop (the planner guesses one row for
            -- each), which is quadratic in the round's size.
            RETURNING j.id, j.tenant, j.api_key_id, j.reserved_tokens, j.reserved_sec, j.est_prompt_tokens,
                i.deployment, i.called, i.attempt_status, i.input_tokens, i.output_tokens, i.cost_usd,
                i.repair_note
         ), learned AS (
            -- What the provider reported for prompt tokens against sluice's estimate, so
            -- reservations can scale their estimates (`budget::learned_prompt_tokens`). Halved
            -- past ten million tokens, so the ratio follows a provider that changes its count.
            INSERT INTO deployment_usage AS u (deployment, est_prompt_tokens, actual_prompt_tokens)
            SELECT m.deployment, sum(m.est_prompt_tokens), sum(m.input_tokens)
            FROM moved m
            WHERE m.called AND m.attempt_status IN ('succeeded', 'refused') AND m.deployment IS NOT NULL
              AND m.input_tokens > 0 AND m.est_prompt_tokens > 0 AND m.repair_note IS NULL
            GROUP BY m.deployment
            ORDER BY m.deployment
            ON CONFLICT (deployment) DO UPDATE SET
                est_prompt_tokens = CASE WHEN u.est_prompt_tokens > 10000000
                    THEN u.est_prompt_tokens / 2 ELSE u.est_prompt_tokens END + excluded.est_prompt_tokens,
                actual_prompt_tokens = CASE WHEN u.est_prompt_tokens > 10000000
                    THEN u.actual_prompt_tokens / 2 ELSE u.actual_prompt_tokens END + excluded.actual_prompt_tokens,
                updated_at = now()
            RETURNING 1
         ), ledger AS (
            -- One row per call made. A call whose job this worker no longer holds (it lost the
            -- claim meanwhile) was billed all the same: it is booked as 'discarded', its answer
            -- unused (the attempt number is the lost claim's, so it is booked once).
            INSERT INTO attempts (id, job_id, tenant, attempt, provider, model, route, status, error_code,
                http_status, input_tokens, output_tokens, cached_tokens, input_usd_per_mtok,
                output_usd_per_mtok, cached_input_usd_per_mtok, discount, cost_usd, saved_usd,
                provider_batch_id, latency_ms, provider_request_id, worker, started_at, finished_at)
            -- `IN (SELECT id FROM moved)` is a hashed subplan; a join with `moved` would be a
            -- nested loop (see `moved`). The tenant comes with the outcome: a join with `jobs`
            -- here was run as a sequential scan of the whole table, 16 ms a round, in a young
            -- table Postgres had not analyzed yet (BENCHMARKS.md).
            SELECT i.attempt_id, i.job_id, i.tenant, i.attempt, i.provider, i.upstream_model, i.route,
                CASE WHEN i.job_id IN (SELECT id FROM moved) THEN i.attempt_status ELSE 'discarded' END,
                i.error_code, i.http_status, i.input_tokens, i.output_tokens, i.cached_tokens,
                i.input_usd_per_mtok, i.output_usd_per_mtok, i.cached_input_usd_per_mtok, i.discount,
                i.cost_usd,
                CASE WHEN i.job_id IN (SELECT id FROM moved) THEN i.saved_usd ELSE 0 END,
                i.provider_batch_id, i.latency_ms, i.provider_request_id, $2, i.started_at, now()
            FROM input i
            WHERE i.called
            ON CONFLICT (job_id, attempt) DO NOTHING
            RETURNING job_id, tenant, status, input_tokens, output_tokens, cached_tokens, cost_usd
         ), discarded AS (
            SELECT * FROM ledger WHERE status = 'discarded'
         ), discarded_cost AS (
            UPDATE jobs j SET input_tokens = j.input_tokens + d.input_tokens,
                output_tokens = j.output_tokens + d.output_tokens,
                cached_tokens = j.cached_tokens + d.cached_tokens,
                cost_usd = j.cost_usd + d.cost_usd
            FROM discarded d WHERE j.id = d.job_id AND j.id = ANY($3)
            RETURNING 1
         ), refunds AS (
            SELECT s.scope, s.key, m.reserved_sec AS sec,
                sum(m.reserved_tokens - m.input_tokens - m.output_tokens) AS tokens
            FROM moved m
            CROSS JOIN LATERAL (VALUES ('deployment', m.deployment), ('tenant', m.tenant),
                ('key', m.api_key_id)) AS s(scope, key)
            WHERE m.reserved_sec IS NOT NULL AND s.key IS NOT NULL
            GROUP BY 1, 2, 3
         ), settled AS (
            UPDATE budget_usage u SET tokens = u.tokens - r.tokens
            FROM refunds r WHERE u.scope = r.scope AND u.key = r.key AND u.sec = r.sec
            RETURNING 1
         ), released AS (
            DELETE FROM budget_holds h USING moved m WHERE h.job_id = m.id AND h.source = 'call' RETURNING 1
         ), spent AS (
            INSERT INTO tenant_spend (tenant, day, usd)
            SELECT c.tenant, (now() AT TIME ZONE 'utc')::date, sum(c.usd)
            FROM (SELECT m.tenant, m.cost_usd AS usd FROM moved m
                  UNION ALL SELECT d.tenant, d.cost_usd FROM discarded d) AS c
            GROUP BY c.tenant HAVING sum(c.usd) <> 0
            ON CONFLICT (tenant, day) DO UPDATE SET usd = tenant_spend.usd + excluded.usd
            RETURNING 1
         )
         SELECT id FROM moved",
        CANCELS = record_cancels(),
        CANCELLED_ENTRY = RECORD_CANCELLED,
    ))
    .bind(sqlx::types::Json(outcomes))
    .bind(worker)
    // The same ids as an array: the planner sizes `= ANY` right and probes the primary key,
    // where it guesses 100 rows for `jsonb_to_recordset` and may scan a young jobs table.
    .bind(outcomes.iter().map(|o| o.job_id.as_str()).collect::<Vec<_>>())
    .fetch_all(pool)
    .await
}

/// One retry as it happened: the delay the policy scheduled after a failed attempt, and how
/// long after that failure the next attempt really started (seconds).
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct RetryGap {
    pub scheduled: f64,
    pub actual: f64,
}

/// Every retry in the ledger: for each failed attempt whose error entry scheduled a retry
/// (`retry_at`, `retry_delay_ms`), the start of the next attempt of the same job.
pub async fn retry_gaps(pool: &PgPool) -> Result<Vec<RetryGap>, DbError> {
    sqlx::query_as(
        "SELECT (e->>'retry_delay_ms')::float8 / 1000 AS scheduled,
            extract(epoch FROM (next.started_at - ((e->>'retry_at')::timestamptz
                - make_interval(secs => (e->>'retry_delay_ms')::float8 / 1000))))::float8 AS actual
         FROM jobs j CROSS JOIN LATERAL jsonb_array_elements(j.errors) AS e
         JOIN attempts next ON next.job_id = j.id AND next.attempt = (e->>'attempt')::int + 1
         WHERE e ? 'retry_at' AND e ? 'retry_delay_ms'",
    )
    .fetch_all(pool)
    .await
}

/// A job as the API shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub tenant: String,
    pub batch_id: Option<String>,
    pub custom_id: Option<String>,
    pub model: String,
    pub status: String,
    pub route: Option<String>,
    pub route_reason: Option<String>,
    pub deployment: Option<String>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub priority: i16,
    pub tags: Value,
    pub deadline: Option<DateTime<Utc>>,
    pub response: Option<Value>,
    pub error: Option<Value>,
    pub errors: Value,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub cost_usd: Decimal,
    pub baseline_cost_usd: Option<Decimal>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
    /// When a cancel was asked for this job while it could not stop at once.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// When this failed job was purged from the dead letters (the row stays).
    pub dead_letter_purged_at: Option<DateTime<Utc>>,
}

/// The columns of a [`JobRow`].
pub(crate) const JOB_COLUMNS: &str = "id, tenant, batch_id, custom_id, model, status, route, route_reason, deployment,
    attempt, max_attempts, priority, tags, deadline, response, error, errors, input_tokens, output_tokens,
    cached_tokens, cost_usd, baseline_cost_usd, created_at, updated_at, finalized_at, cancel_requested_at,
    dead_letter_purged_at";

/// One job of `tenant`.
pub async fn get(pool: &PgPool, tenant: &str, id: &str) -> Result<Option<JobRow>, DbError> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND tenant = $2"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

/// The jobs among `ids`, of any tenant, in one statement (the caller checks the tenant).
pub async fn get_many(pool: &PgPool, ids: &[&str]) -> Result<Vec<JobRow>, DbError> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Filters for listing jobs.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub batch_id: Option<String>,
    pub status: Option<String>,
    pub after: Option<String>,
    /// Only finished jobs (for results).
    pub finished: bool,
    pub limit: i64,
}

/// A page of `tenant`'s jobs in id (creation) order.
pub async fn list(pool: &PgPool, tenant: &str, f: &JobFilter) -> Result<Vec<JobRow>, DbError> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs
         WHERE tenant = $1 AND ($2::text IS NULL OR batch_id = $2) AND ($3::text IS NULL OR status = $3)
           AND ($4::text IS NULL OR id > $4) AND (NOT $5 OR finalized_at IS NOT NULL)
         ORDER BY id LIMIT $6"
    ))
    .bind(tenant)
    .bind(&f.batch_id)
    .bind(&f.status)
    .bind(&f.after)
    .bind(f.finished)
    .bind(f.limit)
    .fetch_all(pool)
    .await
}

/// Totals of one batch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchSummary {
    pub id: String,
    pub created_at: Option<DateTime<Utc>>,
    pub counts: HashMap<String, i64>,
    pub total: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: Decimal,
}

/// Counts by state, tokens and cost of a batch of `tenant`'s; `None` if it is not theirs.
pub async fn batch_summary(
    pool: &PgPool,
    tenant: &str,
    batch_id: &str,
) -> Result<Option<BatchSummary>, DbError> {
    let created: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT created_at FROM batches WHERE id = $1 AND tenant = $2")
            .bind(batch_id)
            .bind(tenant)
            .fetch_optional(pool)
            .await?;
    let Some(created_at) = created else {
        return Ok(None);
    };
    let rows: Vec<(String, i64, Decimal, Decimal, Decimal)> = sqlx::query_as(
        "SELECT status, count(*), COALESCE(sum(input_tokens), 0)::numeric, COALESCE(sum(output_tokens), 0)::numeric,
                COALESCE(sum(cost_usd), 0)
         FROM jobs WHERE batch_id = $1 GROUP BY status",
    )
    .bind(batch_id)
    .fetch_all(pool)
    .await?;
    let mut s = BatchSummary {
        id: batch_id.to_string(),
        created_at: Some(created_at),
        ..Default::default()
    };
    for (status, n, input, output, cost) in rows {
        s.total += n;
        s.input_tokens += i64::try_from(input).unwrap_or(i64::MAX);
        s.output_tokens += i64::try_from(output).unwrap_or(i64::MAX);
        s.cost_usd += cost;
        s.counts.insert(status, n);
    }
    Ok(Some(s))
}
