//! The synchronous path's database work, gathered across concurrent requests (see
//! `crate::batcher`): each request's insert and first claim, its recorded outcome and its final
//! read go in rounds, one transaction for many requests, instead of one each.
//!
//! Measured before this (one transaction per step per request): about ten statements and three
//! commits per request, Postgres's CPU the bound at under 500 requests a second. A round does
//! the same work with the statements the worker pool uses for a batch: admission in fairness
//! order with budgets locked once per round (`db::budgets::admit_new`, which decides before it
//! inserts, so an admitted job is written once, already running), `worker::record::record_each`,
//! and one read by id (only for a job that did not simply succeed: a success recorded as it was
//! is answered from its outcome).
//!
//! No request can hold the others back: a round that Postgres refuses is split until the
//! offending request stands alone (`db::errors::isolate`); that request gets the error and the
//! rest go on. Each kind of round has its supervised loop (`sync_admit`, `sync_record`,
//! `sync_read` in `/readyz`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::Ctx;
use crate::batcher::{Batcher, CallError};
use crate::db::budgets::{ClaimOutcome, NewJob};
use crate::db::jobs::{JobRow, NewJobRow, Outcome};
use crate::worker::record::Stored;

/// Most requests in one round.
const ROUND: usize = 128;
/// Admit and record rounds run one at a time: measured with three of each at once, rounds got
/// smaller and slower (760 against 1,203 requests a second at concurrency 128), likely because
/// rounds of one kind lock the same budget rows. Reads lock nothing and run side by side.
const SERIAL: usize = 1;
const READS_AT_ONCE: usize = 2;
/// Requests waiting for a round at most; past this, callers wait for room.
const QUEUE: usize = 4_096;

/// One request's job to insert and claim.
#[derive(Debug)]
pub struct Admit {
    pub tenant: String,
    pub row: NewJobRow,
    /// How far ahead the relay's pick-up is set (see `realtime::run`).
    pub hold: Duration,
}

type AdmitAnswer = Result<ClaimOutcome, String>;
type ReadAnswer = Result<Option<JobRow>, String>;

/// The three round queues of one process.
#[derive(Debug, Clone)]
pub struct Rounds {
    admit: Batcher<Admit, AdmitAnswer>,
    record: Batcher<Outcome, Stored>,
    read: Batcher<(String, String), ReadAnswer>,
}

impl Default for Rounds {
    fn default() -> Self {
        Self {
            admit: Batcher::new("sync_admit", QUEUE),
            // A paid call's outcome is recorded even if its caller is gone.
            record: Batcher::new("sync_record", QUEUE).keeping_abandoned(),
            read: Batcher::new("sync_read", QUEUE),
        }
    }
}

impl Rounds {
    /// The admit loop, for the supervisor: claims as `worker` until `stop`.
    pub fn run_admit(
        &self,
        ctx: Arc<Ctx>,
        worker: String,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + use<> {
        self.admit.clone().run(ROUND, SERIAL, stop, move |items| {
            let (ctx, worker) = (ctx.clone(), worker.clone());
            async move { admit_round(&ctx, &worker, items).await }
        })
    }

    /// The record loop, for the supervisor.
    pub fn run_record(
        &self,
        ctx: Arc<Ctx>,
        worker: String,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + use<> {
        self.record.clone().run(ROUND, SERIAL, stop, move |items| {
            let (ctx, worker) = (ctx.clone(), worker.clone());
            async move { record_round(&ctx, &worker, items).await }
        })
    }

    /// The read loop, for the supervisor.
    pub fn run_read(
        &self,
        ctx: Arc<Ctx>,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + use<> {
        self.read
            .clone()
            .run(ROUND, READS_AT_ONCE, stop, move |items| {
                let ctx = ctx.clone();
                async move { read_round(&ctx, items).await }
            })
    }
}

/// Inserts the job and claims it, in a round with other requests' jobs.
pub async fn admit(ctx: &Ctx, worker: &str, item: Admit) -> anyhow::Result<ClaimOutcome> {
    let answer = match ctx.rounds.admit.call(item).await {
        Ok(answer) => answer,
        Err(CallError::Stopped(item)) => only(admit_round(ctx, worker, vec![item]).await)?,
        Err(e) => anyhow::bail!("{e}"),
    };
    answer.map_err(anyhow::Error::msg)
}

/// Records the outcome, in a round with other requests' outcomes; says whether the job row
/// now holds it as given.
pub async fn record(ctx: &Ctx, worker: &str, outcome: Outcome) -> anyhow::Result<Stored> {
    match ctx.rounds.record.call(outcome).await {
        Ok(stored) => Ok(stored),
        Err(CallError::Stopped(o)) => only(record_round(ctx, worker, vec![o]).await),
        Err(e) => anyhow::bail!("{e}"),
    }
}

/// The job `id` of `tenant`, read in a round with other requests' jobs.
pub async fn read(ctx: &Ctx, tenant: &str, id: &str) -> anyhow::Result<Option<JobRow>> {
    let item = (tenant.to_string(), id.to_string());
    let answer = match ctx.rounds.read.call(item).await {
        Ok(answer) => answer,
        Err(CallError::Stopped(item)) => only(read_round(ctx, vec![item]).await)?,
        Err(e) => anyhow::bail!("{e}"),
    };
    answer.map_err(anyhow::Error::msg)
}

fn only<T>(mut answers: Vec<T>) -> anyhow::Result<T> {
    answers
        .pop()
        .ok_or_else(|| anyhow::anyhow!("a round of one returned no answer"))
}

/// One admit round of `items` as `worker`: one answer per item, in order (the loop's work; public
/// for tests that feed a round poison).
pub async fn admit_round(
    ctx: &Ctx,
    worker: &str,
    items: Vec<Admit>,
) -> Vec<Result<ClaimOutcome, String>> {
    let out = crate::db::errors::isolate(&items, |chunk| admit_chunk(ctx, worker, chunk)).await;
    let mut by_id: HashMap<String, ClaimOutcome> = out.written.into_iter().collect();
    let mut refused: HashMap<usize, sqlx::Error> = out.rejected.into_iter().collect();
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match refused.remove(&i) {
            Some(e) => {
                tracing::warn!(job_id = %item.row.id, error = %e, "Postgres refused a synchronous job");
                Err(format!("the request could not be stored: {e}"))
            }
            None => by_id
                .remove(&item.row.id)
                .ok_or_else(|| format!("job {} was not stored", item.row.id)),
        })
        .collect()
}

/// One transaction: every job admitted and inserted in the state admission gave it
/// (`db::budgets::admit_new`). A round with an idempotency key among its jobs inserts them
/// first (a key taken earlier answers with the earlier job), then claims them.
async fn admit_chunk(
    ctx: &Ctx,
    worker: &str,
    chunk: &[Admit],
) -> Result<Vec<(String, ClaimOutcome)>, sqlx::Error> {
    let ids: Vec<String> = chunk.iter().map(|a| a.row.id.clone()).collect();
    let breakers = crate::worker::breaker_settings(ctx);
    let catalog = ctx.catalog();
    let started = std::time::Instant::now();
    let mut tx = ctx.pool.begin().await?;
    let begun = started.elapsed();
    let claim = if chunk.iter().any(|a| a.row.idempotency_key.is_some()) {
        let mut groups: BTreeMap<(&str, Duration), Vec<NewJobRow>> = BTreeMap::new();
        for a in chunk {
            groups
                .entry((a.tenant.as_str(), a.hold))
                .or_default()
                .push(a.row.clone());
        }
        for ((tenant, hold), rows) in &groups {
            crate::db::jobs::insert_jobs(&mut tx, tenant, None, rows, *hold).await?;
        }
        crate::db::budgets::claim_in(&mut tx, &ids, worker, &catalog, breakers).await?
    } else {
        let jobs: Vec<NewJob> = chunk
            .iter()
            .map(|a| NewJob {
                tenant: &a.tenant,
                row: &a.row,
                hold: a.hold,
            })
            .collect();
        crate::db::budgets::admit_new(&mut tx, &jobs, worker, &catalog, breakers).await?
    };
    let admitted = started.elapsed();
    tx.commit().await?;
    // Where a round's time goes (BENCHMARKS.md: `RUST_LOG=…,sluice::realtime=debug`).
    tracing::debug!(jobs = chunk.len(), ?begun, ?admitted, committed = ?started.elapsed(), "admit round");
    Ok(split(claim, ids))
}

/// One claim outcome per job id, each holding only what concerns that job.
fn split(mut claim: ClaimOutcome, ids: Vec<String>) -> Vec<(String, ClaimOutcome)> {
    let mut per: HashMap<String, ClaimOutcome> = ids
        .iter()
        .map(|id| (id.clone(), ClaimOutcome::default()))
        .collect();
    for c in claim.claimed.drain(..) {
        if let Some(o) = per.get_mut(&c.id) {
            o.claimed.push(c);
        }
    }
    for (id, until) in claim.waiting.drain(..) {
        if let Some(o) = per.get_mut(&id) {
            o.waiting.push((id, until));
        }
    }
    for id in claim.rejected.drain(..) {
        if let Some(o) = per.get_mut(&id) {
            o.rejected.push(id);
        }
    }
    for id in claim.cancelled.drain(..) {
        if let Some(o) = per.get_mut(&id) {
            o.cancelled.push(id);
        }
    }
    ids.into_iter()
        .map(|id| {
            let o = per.remove(&id).unwrap_or_default();
            (id, o)
        })
        .collect()
}

/// Records every outcome (`record_all` isolates one Postgres refuses and quarantines it).
async fn record_round(ctx: &Ctx, worker: &str, outcomes: Vec<Outcome>) -> Vec<Stored> {
    crate::worker::record::record_each(&ctx.pool, worker, &outcomes).await
}

/// Reads every job in one statement; each answer only if the job is its caller's tenant's.
async fn read_round(ctx: &Ctx, items: Vec<(String, String)>) -> Vec<ReadAnswer> {
    let ids: Vec<&str> = items.iter().map(|(_, id)| id.as_str()).collect();
    match crate::db::jobs::get_many(&ctx.pool, &ids).await {
        Err(e) => {
            let message = format!("reading the job failed: {e}");
            items.iter().map(|_| Err(message.clone())).collect()
        }
        Ok(rows) => {
            let mut by_id: HashMap<String, JobRow> =
                rows.into_iter().map(|r| (r.id.clone(), r)).collect();
            items
                .iter()
                .map(|(tenant, id)| Ok(by_id.remove(id).filter(|r| &r.tenant == tenant)))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(id: &str) -> crate::db::jobs::Claimed {
        crate::db::jobs::Claimed {
            id: id.into(),
            tenant: "t".into(),
            model: "m".into(),
            deployments: sqlx::types::Json(vec![]),
            deployment: None,
            request: serde_json::Value::Null,
            route: None,
            attempt: 1,
            max_attempts: 1,
            deadline: None,
            deployment_index: 0,
            deployment_attempts: 0,
            max_tokens: 1,
            est_prompt_tokens: 1,
            premium: None,
            cache_ttl_secs: None,
            custom_id: None,
            repair_note: None,
            mask_on_send: false,
        }
    }

    #[test]
    fn a_rounds_claim_is_split_so_each_request_sees_only_its_own_job() {
        let claim = ClaimOutcome {
            claimed: vec![claimed("b"), claimed("a")],
            waiting: vec![("c".into(), 42)],
            rejected: vec!["d".into()],
            cancelled: vec!["e".into(), "zzz".into()],
        };
        let ids: Vec<String> = ["a", "b", "c", "d", "e", "f"].map(String::from).into();
        let parts = split(claim, ids);
        let names: Vec<&str> = parts.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(parts[0].1.claimed[0].id, "a");
        assert_eq!(parts[1].1.claimed[0].id, "b");
        assert_eq!(parts[2].1.waiting, [("c".to_string(), 42)]);
        assert_eq!(parts[3].1.rejected, ["d"]);
        assert_eq!(parts[4].1.cancelled, ["e"]);
        let f = &parts[5].1;
        assert!(
            f.claimed.is_empty()
                && f.waiting.is_empty()
                && f.rejected.is_empty()
                && f.cancelled.is_empty()
        );
        for (id, o) in &parts[..5] {
            let n = o.claimed.len() + o.waiting.len() + o.rejected.len() + o.cancelled.len();
            assert_eq!(n, 1, "{id}");
        }
    }
}
