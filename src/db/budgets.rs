//! Budgets in Postgres: claiming jobs within shared TPM/RPM and USD limits (one transaction per
//! batch, budget rows locked so every process sees one truth), provider pauses, and the
//! settings and report (in `budget_settings`) behind `sluice budgets` and `GET /v1/budgets`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::{PgPool, Postgres, Transaction};

use super::DbError;
use super::jobs::{Claimed, NewJobRow};
use crate::domain::breaker::{self, Breaker};
use crate::domain::budget::{self, BudgetState, Candidate, Decision, RateState, Scope, UsdState};
use crate::domain::catalog::Catalog;
use crate::domain::state::sql::*;

/// What a claim round did with each delivered job id.
#[derive(Debug, Default)]
pub struct ClaimOutcome {
    /// Admitted and now `running` for this worker.
    pub claimed: Vec<Claimed>,
    /// Still `queued`: no budget before this Unix second.
    pub waiting: Vec<(String, i64)>,
    /// Failed by admission (a hard cap with `reject`, or a request larger than a limit).
    pub rejected: Vec<String>,
    /// Cancelled instead of claimed: a cancel was asked while they ran, then they were queued
    /// again (a failed attempt, or a dead worker's job re-queued by the rescuer).
    pub cancelled: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct CandidateRow {
    id: String,
    tenant: String,
    deployment: Option<String>,
    deployments: sqlx::types::Json<Vec<String>>,
    deployment_index: i32,
    est_prompt_tokens: i32,
    max_tokens: i32,
    priority: i16,
    weight: i32,
    /// The API key that submitted the job (its `scope = 'key'` budget applies).
    api_key_id: Option<String>,
    cancel_requested: bool,
    /// No attempt of this job has failed yet (a better circuit-breaker probe).
    fresh: bool,
    /// The database's clock, the one every budget window is counted in.
    now: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct BudgetRow {
    scope: String,
    key: String,
    tpm: Option<i64>,
    rpm: Option<i64>,
    daily_usd: Option<Decimal>,
    monthly_usd: Option<Decimal>,
    usd_policy: String,
    paused_until: Option<DateTime<Utc>>,
    breaker_state: Option<String>,
    breaker_until: Option<DateTime<Utc>>,
    breaker_probe: Option<String>,
}

/// Claims the queued jobs among `ids` that fit every budget; the rest wait or are rejected.
/// Rows are locked in id order and without SKIP LOCKED: a job briefly locked by the relay or
/// the API's publish mark must be waited for, not mistaken for one taken elsewhere.
///
/// An open circuit breaker holds its deployment's jobs like a pause (see `domain::breaker`);
/// once its cool-down is over, the first admitted job goes through as the probe and the
/// deployment is paused again until the probe's grant lapses.
pub async fn claim(
    pool: &PgPool,
    ids: &[String],
    worker: &str,
    catalog: &Catalog,
    breakers: breaker::Settings,
) -> Result<ClaimOutcome, DbError> {
    let mut tx = pool.begin().await?;
    let out = claim_in(&mut tx, ids, worker, catalog, breakers).await?;
    tx.commit().await?;
    Ok(out)
}

/// [`claim`] inside the caller's transaction (the synchronous path inserts its job and claims
/// it in one commit). Budget rows stay locked until that transaction ends.
pub async fn claim_in(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[String],
    worker: &str,
    catalog: &Catalog,
    breakers: breaker::Settings,
) -> Result<ClaimOutcome, DbError> {
    // The statements below join a round's ids (`unnest` of the bound arrays) to `jobs`. The
    // planner guesses one row for `jobs` under `id = ANY(..) AND status = ..` and picks a
    // nested loop that re-reads the whole array for each job: quadratic, 23 of 35 ms in a
    // round of 175 (auto_explain, BENCHMARKS.md). A hash join is linear at any round size.
    sqlx::query("SET LOCAL enable_nestloop = off")
        .execute(&mut **tx)
        .await?;
    let rows: Vec<CandidateRow> = sqlx::query_as(
        &format!("SELECT j.id, j.tenant, j.deployments->>j.deployment_index AS deployment, j.deployments,
            j.deployment_index, j.est_prompt_tokens,
            j.max_tokens, j.priority, t.weight, j.api_key_id, j.cancel_requested_at IS NOT NULL AS cancel_requested,
            COALESCE(jsonb_array_length(j.errors), 0) = 0 AS fresh, now() AS now
         FROM jobs j JOIN tenants t ON t.name = j.tenant
         WHERE j.id = ANY($1) AND j.status = '{QUEUED}'
         ORDER BY j.id
         FOR UPDATE OF j"),
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    let now = rows.first().map_or_else(Utc::now, |r| r.now);
    let (cancel, rows): (Vec<CandidateRow>, Vec<CandidateRow>) =
        rows.into_iter().partition(|r| r.cancel_requested);
    let cancel: Vec<&str> = cancel.iter().map(|r| r.id.as_str()).collect();
    let cancelled = super::cancel::cancel_requeued(tx, &cancel).await?;
    let rows = in_fair_order(rows);
    if rows.is_empty() {
        return Ok(ClaimOutcome {
            cancelled,
            ..ClaimOutcome::default()
        });
    }
    let Decided {
        admitted,
        holds,
        waiting,
        rejected,
        fallbacks,
        sec,
    } = decide(tx, &rows, catalog, now, breakers).await?;
    let mut out = ClaimOutcome {
        cancelled,
        waiting,
        ..ClaimOutcome::default()
    };
    hold_usd(tx, &holds).await?;
    if !admitted.is_empty() {
        let (admit_ids, admit_tokens): (Vec<String>, Vec<i64>) = admitted.into_iter().unzip();
        out.claimed = sqlx::query_as(
            &format!("UPDATE jobs j SET status = '{RUNNING}', attempt = j.attempt + 1, attempted_by = $2, attempted_at = now(),
                updated_at = now(), publish_after = NULL, reserved_tokens = x.tokens, reserved_sec = $4,
                deployment = j.deployments->>j.deployment_index
             FROM unnest($1::text[], $3::bigint[]) AS x(id, tokens)
             WHERE j.id = x.id AND j.id = ANY($1) AND j.status = '{QUEUED}'
             RETURNING j.id, j.tenant, j.model, j.deployments, j.deployment, j.request, j.route, j.attempt,
                j.max_attempts, j.deadline, j.deployment_index, j.deployment_attempts, j.max_tokens,
                j.est_prompt_tokens, j.premium, j.cache_ttl_secs, j.custom_id, j.repair_note,
                j.mask_on_send"),
        )
        .bind(&admit_ids)
        .bind(worker)
        .bind(&admit_tokens)
        .bind(sec)
        .fetch_all(&mut **tx)
        .await?;
    }
    fall_back(tx, fallbacks).await?;
    out.rejected = reject(tx, &rejected, now).await?;
    Ok(out)
}

/// A new job of `tenant`'s, for [`admit_new`].
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    pub tenant: &'a str,
    pub row: &'a NewJobRow,
    /// How far ahead the relay's pick-up is set if the job is not admitted now.
    pub hold: std::time::Duration,
}

/// Admission before insert, for jobs that are not in `jobs` yet (the synchronous path): the
/// same decisions as [`claim_in`], made from the jobs in memory, then every job inserted in
/// the state they give, an admitted one already `running` for `worker`. Against inserting the
/// jobs and then claiming them, this saves the claim's read of the rows and its update (a
/// second version of each row and of its index entries).
///
/// The jobs must carry no idempotency key: one that an earlier job already took would not be
/// inserted, and its admission would hold budget for nothing. Callers with keys insert, then
/// [`claim_in`].
pub async fn admit_new(
    tx: &mut Transaction<'_, Postgres>,
    jobs: &[NewJob<'_>],
    worker: &str,
    catalog: &Catalog,
    breakers: breaker::Settings,
) -> Result<ClaimOutcome, DbError> {
    let tenants: Vec<&str> = jobs
        .iter()
        .map(|j| j.tenant)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // A job of a tenant without a row is not admitted, as in `claim_in` (which joins tenants).
    let found: Vec<(String, i32, DateTime<Utc>)> =
        sqlx::query_as("SELECT name, weight, now() FROM tenants WHERE name = ANY($1)")
            .bind(&tenants)
            .fetch_all(&mut **tx)
            .await?;
    let now = found.first().map_or_else(Utc::now, |f| f.2);
    let weights: BTreeMap<&str, i32> = found.iter().map(|(t, w, _)| (t.as_str(), *w)).collect();
    let rows: Vec<CandidateRow> = jobs
        .iter()
        .filter_map(|j| {
            let weight = *weights.get(j.tenant)?;
            Some(CandidateRow {
                id: j.row.id.clone(),
                tenant: j.tenant.to_string(),
                deployment: deployment_of(j.row),
                deployments: sqlx::types::Json(j.row.deployments.clone()),
                deployment_index: j.row.deployment_index,
                est_prompt_tokens: j.row.est_prompt_tokens,
                max_tokens: j.row.max_tokens,
                priority: j.row.priority,
                weight,
                api_key_id: j.row.api_key_id.clone(),
                cancel_requested: false,
                fresh: true,
                now,
            })
        })
        .collect();
    let rows = in_fair_order(rows);
    let decided = if rows.is_empty() {
        Decided::default()
    } else {
        decide(tx, &rows, catalog, now, breakers).await?
    };
    let admitted: BTreeMap<&str, i64> = decided
        .admitted
        .iter()
        .map(|(id, tokens)| (id.as_str(), *tokens))
        .collect();
    // Rows grouped by tenant and hold, each with the tokens it reserves if admitted.
    type Group<'r> = Vec<(&'r NewJobRow, Option<i64>)>;
    let mut groups: BTreeMap<(&str, std::time::Duration), Group> = BTreeMap::new();
    for j in jobs {
        let tokens = admitted.get(j.row.id.as_str()).copied();
        groups
            .entry((j.tenant, j.hold))
            .or_default()
            .push((j.row, tokens));
    }
    let running = super::jobs::Running {
        worker,
        sec: decided.sec,
    };
    for ((tenant, hold), rows) in &groups {
        super::jobs::insert_admitted(tx, tenant, rows, *hold, running).await?;
    }
    hold_usd(tx, &decided.holds).await?;
    fall_back(tx, decided.fallbacks).await?;
    let rejected = reject(tx, &decided.rejected, now).await?;
    let claimed = jobs
        .iter()
        .filter(|j| admitted.contains_key(j.row.id.as_str()))
        .map(|j| Claimed {
            id: j.row.id.clone(),
            tenant: j.tenant.to_string(),
            model: j.row.model.clone(),
            deployments: sqlx::types::Json(j.row.deployments.clone()),
            deployment: deployment_of(j.row),
            request: j.row.request.clone(),
            route: Some(j.row.route.to_string()),
            attempt: 1,
            max_attempts: j.row.max_attempts,
            deadline: j.row.deadline,
            deployment_index: j.row.deployment_index,
            deployment_attempts: 0,
            max_tokens: j.row.max_tokens,
            est_prompt_tokens: j.row.est_prompt_tokens,
            premium: j.row.premium.clone(),
            cache_ttl_secs: j.row.cache_ttl_secs,
            custom_id: j.row.custom_id.clone(),
            repair_note: None,
            mask_on_send: j.row.mask_on_send,
        })
        .collect();
    Ok(ClaimOutcome {
        claimed,
        waiting: decided.waiting,
        rejected,
        cancelled: Vec::new(),
    })
}

/// `deployments[deployment_index]`, as Postgres's `deployments->>deployment_index` gives it.
fn deployment_of(row: &NewJobRow) -> Option<String> {
    usize::try_from(row.deployment_index)
        .ok()
        .and_then(|i| row.deployments.get(i))
        .cloned()
}

/// Admission order is the fairness order: tenants interleaved by weight, priority within.
fn in_fair_order(rows: Vec<CandidateRow>) -> Vec<CandidateRow> {
    let keys: Vec<(&str, i64, i16, &str)> = rows
        .iter()
        .map(|r| {
            (
                r.tenant.as_str(),
                i64::from(r.weight),
                r.priority,
                r.id.as_str(),
            )
        })
        .collect();
    let order = budget::fair_order(&keys);
    let mut slots: Vec<Option<CandidateRow>> = rows.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// What admission decided for a round of candidates, with the budget usage and waiters it
/// implies already written; the jobs themselves are the caller's to change.
#[derive(Debug, Default)]
struct Decided {
    /// Admitted jobs and the tokens each reserves.
    admitted: Vec<(String, i64)>,
    /// USD held for admitted jobs of capped tenants: (job, tenant, usd).
    holds: Vec<(String, String, Decimal)>,
    waiting: Vec<(String, i64)>,
    /// (job, code, reason).
    rejected: Vec<(String, String, String)>,
    /// (job, next deployment index, error entry).
    fallbacks: Vec<(String, i32, serde_json::Value)>,
    /// The second the reserved tokens count in.
    sec: i64,
}

/// Decides each candidate (in the order given) under the budgets, which it locks until the
/// transaction ends, and writes the usage of the admitted ones.
async fn decide(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[CandidateRow],
    catalog: &Catalog,
    now: DateTime<Utc>,
    breakers: breaker::Settings,
) -> Result<Decided, DbError> {
    let (mut state, probing, tripped) = load_state(tx, rows, now, breakers).await?;
    let learned = learned_usage(tx, rows).await?;
    let candidates: Vec<Candidate> = rows
        .iter()
        .map(|r| candidate(r, catalog, now, &learned))
        .collect();
    let mut decisions = budget::admit(now, &candidates, &mut state);
    if !probing.is_empty() {
        let jobs: Vec<(&str, &str, bool)> = rows
            .iter()
            .zip(&candidates)
            .map(|(r, c)| (r.id.as_str(), c.deployment.as_str(), r.fresh))
            .collect();
        super::breakers::grant_probes(tx, &jobs, &probing, &mut decisions, now, breakers).await?;
    }

    let mut out = Decided {
        sec: now.timestamp(),
        ..Decided::default()
    };
    let mut usage = BTreeMap::<(String, String), (i64, i64)>::new();
    for ((row, cand), decision) in rows.iter().zip(&candidates).zip(decisions) {
        // A job waiting on a deployment whose breaker is open falls back to its next
        // deployment now rather than wait out the cool-down (a 429 pause is waited out).
        if let (Decision::Wait { .. }, Some(until)) = (&decision, tripped.get(&cand.deployment))
            && let Some(next) = catalog.next_fitting(
                &row.deployments.0,
                row.deployment_index.max(0) as usize,
                i64::from(row.est_prompt_tokens),
                i64::from(row.max_tokens),
                now,
            )
        {
            let entry = json!({"at": now, "code": "circuit_open",
                "message": format!("{}'s circuit breaker is open until {until}; falling back to {}",
                    cand.deployment, row.deployments.0[next])});
            out.fallbacks.push((row.id.clone(), next as i32, entry));
            out.waiting.push((row.id.clone(), now.timestamp()));
            continue;
        }
        match decision {
            Decision::Admit => {
                out.admitted.push((row.id.clone(), cand.tokens));
                for scope in cand.scopes() {
                    if state.rates.contains_key(&scope) {
                        let (s, k) = scope.parts();
                        let slot = usage.entry((s.to_string(), k.to_string())).or_default();
                        slot.0 += cand.tokens;
                        slot.1 += 1;
                    }
                }
                if state.usd.contains_key(&cand.tenant) {
                    out.holds
                        .push((row.id.clone(), cand.tenant.clone(), cand.usd));
                }
            }
            Decision::Wait { until, .. } => out.waiting.push((row.id.clone(), until)),
            Decision::Reject { code, reason } => {
                out.rejected
                    .push((row.id.clone(), code.to_string(), reason))
            }
        }
    }
    // Per-tenant use of paced deployments, for the fairness shares.
    let admitted: BTreeSet<&String> = out.admitted.iter().map(|(id, _)| id).collect();
    for (id, cand) in rows.iter().map(|r| &r.id).zip(&candidates) {
        if state.shares.contains_key(&cand.deployment) && admitted.contains(id) {
            let slot = usage
                .entry((
                    "share".to_string(),
                    format!("{}|{}", cand.deployment, cand.tenant),
                ))
                .or_default();
            slot.0 += cand.tokens;
            slot.1 += 1;
        }
    }
    let waiting: Vec<(String, String, i64)> = state
        .shares
        .iter()
        .flat_map(|(d, sh)| {
            sh.newly_waiting.iter().map(move |t| {
                (
                    d.clone(),
                    t.clone(),
                    sh.weights.get(t).copied().unwrap_or(1),
                )
            })
        })
        .collect();
    if !waiting.is_empty() {
        let (ds, rest): (Vec<String>, Vec<(String, i64)>) =
            waiting.into_iter().map(|(d, t, w)| (d, (t, w))).unzip();
        let (ts, ws): (Vec<String>, Vec<i64>) = rest.into_iter().unzip();
        sqlx::query(
            "INSERT INTO budget_waiters (deployment, tenant, weight, seen_at)
             SELECT DISTINCT ON (d, t) d, t, w::int, now() FROM unnest($1::text[], $2::text[], $3::bigint[]) AS x(d, t, w)
             ON CONFLICT (deployment, tenant) DO UPDATE SET seen_at = now(), weight = excluded.weight",
        )
        .bind(&ds)
        .bind(&ts)
        .bind(&ws)
        .execute(&mut **tx)
        .await?;
    }
    if !usage.is_empty() {
        let mut scopes = Vec::new();
        let mut keys = Vec::new();
        let mut tokens = Vec::new();
        let mut requests = Vec::new();
        for ((s, k), (t, r)) in usage {
            scopes.push(s);
            keys.push(k);
            tokens.push(t);
            requests.push(r);
        }
        sqlx::query(
            "INSERT INTO budget_usage (scope, key, sec, tokens, requests)
             SELECT s, k, $3, t, r FROM unnest($1::text[], $2::text[], $4::bigint[], $5::bigint[]) AS x(s, k, t, r)
             ON CONFLICT (scope, key, sec) DO UPDATE
             SET tokens = budget_usage.tokens + excluded.tokens, requests = budget_usage.requests + excluded.requests",
        )
        .bind(&scopes)
        .bind(&keys)
        .bind(out.sec)
        .bind(&tokens)
        .bind(&requests)
        .execute(&mut **tx)
        .await?;
    }
    Ok(out)
}

/// Holds the estimated USD of admitted jobs of capped tenants until their records settle it.
async fn hold_usd(
    tx: &mut Transaction<'_, Postgres>,
    holds: &[(String, String, Decimal)],
) -> Result<(), DbError> {
    if holds.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(holds.len());
    let mut tenants = Vec::with_capacity(holds.len());
    let mut usd = Vec::with_capacity(holds.len());
    for (id, tenant, u) in holds {
        ids.push(id.as_str());
        tenants.push(tenant.as_str());
        usd.push(*u);
    }
    sqlx::query(
        "INSERT INTO budget_holds (job_id, tenant, usd, expires_at)
         SELECT j, t, u, now() + interval '15 minutes' FROM unnest($1::text[], $2::text[], $3::numeric[]) AS x(j, t, u)
         ON CONFLICT (job_id, source) DO UPDATE SET usd = excluded.usd, expires_at = excluded.expires_at",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&usd)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves jobs waiting on an open breaker to their next deployment: (job, index, error entry).
async fn fall_back(
    tx: &mut Transaction<'_, Postgres>,
    fallbacks: Vec<(String, i32, serde_json::Value)>,
) -> Result<(), DbError> {
    if fallbacks.is_empty() {
        return Ok(());
    }
    let (ids, rest): (Vec<String>, Vec<(i32, serde_json::Value)>) = fallbacks
        .into_iter()
        .map(|(id, next, entry)| (id, (next, entry)))
        .unzip();
    let (next, entries): (Vec<i32>, Vec<serde_json::Value>) = rest.into_iter().unzip();
    sqlx::query(&format!(
        "UPDATE jobs j SET deployment_index = x.next, deployment_attempts = 0,
            errors = j.errors || jsonb_build_array(x.entry), updated_at = now()
         FROM unnest($1::text[], $2::int[], $3::jsonb[]) AS x(id, next, entry)
         WHERE j.id = x.id AND j.id = ANY($1) AND j.status = '{QUEUED}'"
    ))
    .bind(&ids)
    .bind(&next)
    .bind(&entries)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Fails queued jobs that no budget will ever admit, each with its code and reason.
pub async fn reject(
    tx: &mut Transaction<'_, Postgres>,
    rejected: &[(String, String, String)],
    now: DateTime<Utc>,
) -> Result<Vec<String>, DbError> {
    let mut ids = Vec::with_capacity(rejected.len());
    for (id, code, reason) in rejected {
        let entry = json!({"at": now, "code": code, "message": reason});
        sqlx::query(
            &format!("UPDATE jobs SET status = '{FAILED}', error = $2, errors = errors || jsonb_build_array($2::jsonb),
                finalized_at = now(), updated_at = now(), publish_after = NULL
             WHERE id = $1 AND status = '{QUEUED}'"),
        )
        .bind(id)
        .bind(&entry)
        .execute(&mut **tx)
        .await?;
        ids.push(id.clone());
    }
    Ok(ids)
}

/// Total estimated and reported prompt tokens per deployment (`deployment_usage`).
async fn learned_usage(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[CandidateRow],
) -> Result<BTreeMap<String, (i64, i64)>, DbError> {
    let deployments: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.deployment.as_deref())
        .collect();
    let found: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT deployment, est_prompt_tokens, actual_prompt_tokens FROM deployment_usage
         WHERE deployment = ANY($1)",
    )
    .bind(&deployments)
    .fetch_all(&mut **tx)
    .await?;
    Ok(found.into_iter().map(|(d, e, a)| (d, (e, a))).collect())
}

/// A job as admission sees it: its prompt estimate scaled by what its deployment's provider
/// has been reporting (`budget::learned_prompt_tokens`), plus `max_tokens`.
fn candidate(
    r: &CandidateRow,
    catalog: &Catalog,
    now: DateTime<Utc>,
    learned: &BTreeMap<String, (i64, i64)>,
) -> Candidate {
    let deployment = r.deployment.clone().unwrap_or_default();
    let prompt = budget::learned_prompt_tokens(
        i64::from(r.est_prompt_tokens.max(0)),
        learned.get(&deployment).copied(),
    );
    let output = i64::from(r.max_tokens.max(0));
    let usd = catalog.worst_case_usd(&deployment, prompt, output, false, now);
    Candidate {
        deployment,
        tenant: r.tenant.clone(),
        tokens: prompt + output,
        usd,
        weight: i64::from(r.weight),
        key: r.api_key_id.clone(),
    }
}

/// Budget state for admission, and the deployments whose breaker waits for a probe.
async fn load_state(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[CandidateRow],
    now: DateTime<Utc>,
    breakers: breaker::Settings,
) -> Result<
    (
        BudgetState,
        BTreeMap<String, Breaker>,
        BTreeMap<String, DateTime<Utc>>,
    ),
    DbError,
> {
    let deployments: Vec<String> = rows
        .iter()
        .filter_map(|r| r.deployment.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let tenants: Vec<String> = rows
        .iter()
        .map(|r| r.tenant.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let keys: Vec<String> = rows
        .iter()
        .filter_map(|r| r.api_key_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // A breaker that opened paused its deployment, so its row is among the budget rows.
    let budgets: Vec<BudgetRow> = sqlx::query_as(
        "SELECT b.scope, b.key, b.tpm, b.rpm, b.daily_usd, b.monthly_usd, b.usd_policy, b.paused_until,
            c.state AS breaker_state, c.opened_until AS breaker_until, c.probe_owner AS breaker_probe
         FROM budgets b LEFT JOIN circuit_breakers c ON b.scope = 'deployment' AND c.deployment = b.key
         WHERE (b.scope = 'deployment' AND b.key = ANY($1)) OR (b.scope = 'tenant' AND b.key = ANY($2))
            OR (b.scope = 'key' AND b.key = ANY($3))
         ORDER BY b.scope, b.key FOR UPDATE OF b",
    )
    .bind(&deployments)
    .bind(&tenants)
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await?;
    let mut state = BudgetState::default();
    let mut probing = BTreeMap::new();
    // Deployments whose breaker is open, and until when.
    let mut tripped = BTreeMap::new();
    for b in &budgets {
        let Some(scope) = Scope::from_parts(&b.scope, &b.key) else {
            continue;
        };
        let cb = super::breakers::from_columns(
            b.breaker_state.as_deref(),
            b.breaker_until,
            b.breaker_probe.clone(),
        );
        let mut paused_until = b.paused_until;
        match breaker::gate(&cb, now) {
            _ if !breakers.enabled() => {}
            breaker::Gate::Pass => {}
            breaker::Gate::Blocked(until) => {
                paused_until = paused_until.max(Some(until));
                tripped.insert(b.key.clone(), until);
            }
            breaker::Gate::Probe => {
                if paused_until.is_none_or(|p| p <= now) {
                    probing.insert(b.key.clone(), cb);
                }
            }
        }
        let paused = paused_until
            .filter(|p| *p > now)
            .map(|p| p.timestamp() + i64::from(p.timestamp_subsec_nanos() > 0));
        if b.tpm.is_some() || b.rpm.is_some() || paused.is_some() {
            state.rates.insert(
                scope.clone(),
                RateState {
                    tpm: b.tpm,
                    rpm: b.rpm,
                    paused_until: paused,
                    ..Default::default()
                },
            );
        }
        if b.scope == "tenant" && (b.daily_usd.is_some() || b.monthly_usd.is_some()) {
            state.usd.insert(
                b.key.clone(),
                UsdState::caps(b.daily_usd, b.monthly_usd, &b.usd_policy),
            );
        }
    }
    if !state.rates.is_empty() {
        let (scopes, keys): (Vec<&str>, Vec<&str>) = state.rates.keys().map(Scope::parts).unzip();
        let usage: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT u.scope, u.key, u.sec, u.tokens, u.requests FROM budget_usage u
             JOIN unnest($1::text[], $2::text[]) AS x(s, k) ON u.scope = x.s AND u.key = x.k
             WHERE u.sec >= $3",
        )
        .bind(&scopes)
        .bind(&keys)
        .bind(now.timestamp() - budget::WINDOW_SECS)
        .fetch_all(&mut **tx)
        .await?;
        for (s, k, sec, tokens, requests) in usage {
            if let Some(rate) = Scope::from_parts(&s, &k).and_then(|sc| state.rates.get_mut(&sc)) {
                rate.slots.insert(sec, (tokens, requests));
            }
        }
    }
    let paced: Vec<String> = state
        .rates
        .iter()
        .filter_map(|(scope, r)| match scope {
            Scope::Deployment(d) if r.tpm.is_some() => Some(d.clone()),
            _ => None,
        })
        .collect();
    if !paced.is_empty() {
        load_shares(tx, &paced, now, &mut state).await?;
    }
    read_spend(tx, &mut state.usd, now).await?;
    Ok((state, probing, tripped))
}

/// Fills in what each capped tenant has spent today and this month, and holds in flight.
///
/// Spend and holds are read in ONE statement, so one snapshot: a result's record releases its
/// hold and books its spend in one commit, and two separate reads could straddle that commit
/// and see the cost in neither (then admit past the cap). Callers hold the tenants' budget rows
/// locked, so no other admission adds holds meanwhile.
async fn read_spend(
    tx: &mut Transaction<'_, Postgres>,
    usd: &mut BTreeMap<String, UsdState>,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    if usd.is_empty() {
        return Ok(());
    }
    let capped: Vec<String> = usd.keys().cloned().collect();
    let today = now.date_naive();
    let month_start = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
    let spend: Vec<(String, Decimal, Decimal, Decimal)> = sqlx::query_as(
        "SELECT t.tenant,
            COALESCE((SELECT sum(s.usd) FROM tenant_spend s WHERE s.tenant = t.tenant AND s.day = $2), 0),
            COALESCE((SELECT sum(s.usd) FROM tenant_spend s WHERE s.tenant = t.tenant AND s.day >= $3), 0),
            COALESCE((SELECT sum(h.usd) FROM budget_holds h WHERE h.tenant = t.tenant AND h.expires_at > now()), 0)
         FROM unnest($1::text[]) AS t(tenant)",
    )
    .bind(&capped)
    .bind(today)
    .bind(month_start)
    .fetch_all(&mut **tx)
    .await?;
    for (t, day, month, held) in spend {
        if let Some(u) = usd.get_mut(&t) {
            u.spent_today = day;
            u.spent_month = month;
            u.held = held;
        }
    }
    Ok(())
}

/// The USD caps of `tenants` that have any, with what is spent and held, their budget rows
/// locked until the transaction ends (admissions of the same tenants wait meanwhile).
pub async fn lock_usd_caps(
    tx: &mut Transaction<'_, Postgres>,
    tenants: &[String],
    now: DateTime<Utc>,
) -> Result<BTreeMap<String, UsdState>, DbError> {
    let rows: Vec<(String, Option<Decimal>, Option<Decimal>, String)> = sqlx::query_as(
        "SELECT key, daily_usd, monthly_usd, usd_policy FROM budgets
         WHERE scope = 'tenant' AND key = ANY($1) AND (daily_usd IS NOT NULL OR monthly_usd IS NOT NULL)
         ORDER BY key FOR UPDATE",
    )
    .bind(tenants)
    .fetch_all(&mut **tx)
    .await?;
    let mut usd: BTreeMap<String, UsdState> = rows
        .into_iter()
        .map(|(tenant, daily, monthly, policy)| (tenant, UsdState::caps(daily, monthly, &policy)))
        .collect();
    read_spend(tx, &mut usd, now).await?;
    Ok(usd)
}

/// Which tenants compete for each paced deployment: those that waited for it lately and those
/// that used it in the current pacing span (with how much).
async fn load_shares(
    tx: &mut Transaction<'_, Postgres>,
    deployments: &[String],
    now: DateTime<Utc>,
    state: &mut BudgetState,
) -> Result<(), DbError> {
    let waiters: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT deployment, tenant, weight FROM budget_waiters
         WHERE deployment = ANY($1) AND seen_at > now() - make_interval(secs => $2)",
    )
    .bind(deployments)
    .bind((budget::PACE_SECS + 5) as f64)
    .fetch_all(&mut **tx)
    .await?;
    let prefixes: Vec<String> = deployments.iter().map(|d| format!("{d}|")).collect();
    let used: Vec<(String, i64)> = sqlx::query_as(
        "SELECT key, sum(tokens)::bigint FROM budget_usage
         WHERE scope = 'share' AND sec > $2 AND split_part(key, '|', 1) || '|' = ANY($1)
         GROUP BY key",
    )
    .bind(&prefixes)
    .bind(now.timestamp() - budget::PACE_SECS)
    .fetch_all(&mut **tx)
    .await?;
    for d in deployments {
        state.shares.insert(d.clone(), budget::Shares::default());
    }
    for (d, t, w) in waiters {
        if let Some(sh) = state.shares.get_mut(&d) {
            sh.weights.insert(t, i64::from(w));
        }
    }
    for (key, tokens) in used {
        let Some((d, t)) = key.split_once('|') else {
            continue;
        };
        if let Some(sh) = state.shares.get_mut(d) {
            sh.weights.entry(t.to_string()).or_insert(1);
            sh.used.insert(t.to_string(), tokens);
        }
    }
    Ok(())
}

/// After a provider's 429 or exhausted rate-limit headers: no worker calls the deployment
/// before `until`.
pub async fn pause_deployment(
    pool: &PgPool,
    deployment: &str,
    until: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO budgets (scope, key, paused_until, source) VALUES ('deployment', $1, $2, 'feedback')
         ON CONFLICT (scope, key) DO UPDATE SET paused_until = GREATEST(budgets.paused_until, excluded.paused_until),
            updated_at = now()",
    )
    .bind(deployment)
    .bind(until)
    .execute(pool)
    .await?;
    Ok(())
}

pub use super::budget_settings::{
    BudgetReport, BudgetSettings, Limit, clear, report, report_for_tenant, set,
};

/// Drops usage slots and holds that can no longer count.
pub async fn prune(pool: &PgPool) -> Result<(), DbError> {
    sqlx::query("DELETE FROM budget_usage WHERE sec < extract(epoch FROM now())::bigint - 300")
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM budget_holds WHERE expires_at < now() - interval '1 hour'")
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM budget_waiters WHERE seen_at < now() - interval '1 hour'")
        .execute(pool)
        .await?;
    Ok(())
}
