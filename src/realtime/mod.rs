//! Running one job to its end, for `POST /v1/chat/completions`: the same
//! claim (budgets, breakers, pauses), the same attempt (`worker::execute`: cache, call, price,
//! retry decision, fallback) and the same record (one ledger row per attempt, spend settled)
//! as the worker pool, looped until the job finishes. A budget wait longer than the caller will
//! wait cancels the job and says when to come back. The database steps of concurrent runs are
//! gathered into rounds (see [`rounds`]).
//!
//! The job is in Postgres before it is called: admitted at once, it is inserted already running
//! for this process's registered worker, and if the process dies the rescuer queues it again as
//! any dead worker's job; left waiting for budget, it keeps a publish mark far enough ahead that
//! the relay leaves it alone while this task waits, and publishes it if the process dies. A
//! worker finishes it either way, so its cost is recorded.

use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::app::Ctx;
use crate::db::jobs::{JobRow, NewJobRow};

pub mod rounds;

/// How a synchronous run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// The job finished (any final state); its row.
    Finished(Box<JobRow>),
    /// The job succeeded and its row holds this answer as it was recorded: no read needed.
    Succeeded(Box<serde_json::Value>),
    /// No budget before the caller's wait runs out; the job was cancelled. Retry after this.
    NoBudget(Duration),
    /// Admission refused the job (a hard spending cap, or a request over a limit); its row.
    Refused(Box<JobRow>),
}

/// Longest a run may take once admitted (retries and fallbacks included).
const RUN_AT_MOST: Duration = Duration::from_secs(600);
/// How often a job another worker picked up is looked at.
const POLL: Duration = Duration::from_millis(100);

/// Records `row` for `tenant` and runs it to its end as `worker_id` (a registered worker).
#[tracing::instrument(skip_all, fields(job_id = %row.id, tenant = %tenant))]
pub async fn run(
    ctx: &Ctx,
    worker_id: &str,
    tenant: &str,
    row: NewJobRow,
    budget_wait: Duration,
) -> anyhow::Result<RunEnd> {
    let id = row.id.clone();
    let ids = [id.clone()];
    let breakers = crate::worker::breaker_settings(ctx);
    // The job and its admission commit together, in a round with other requests' jobs.
    // The relay's safety net, set past any run: a crash leaves the job to the workers.
    let hold = budget_wait.saturating_add(RUN_AT_MOST);
    let admit = rounds::Admit {
        tenant: tenant.to_string(),
        row,
        hold,
    };
    let mut first = Some(rounds::admit(ctx, worker_id, admit).await?);

    let started = Instant::now();
    let give_up_budget = started + budget_wait;
    let give_up = started + budget_wait + RUN_AT_MOST;
    loop {
        if Instant::now() > give_up {
            anyhow::bail!("job {id} did not finish within {RUN_AT_MOST:?}");
        }
        let mut claim = match first.take() {
            Some(claim) => claim,
            None => {
                let catalog = ctx.catalog();
                crate::db::budgets::claim(&ctx.pool, &ids, worker_id, &catalog, breakers).await?
            }
        };
        if let Some(job) = claim.claimed.pop() {
            let claimed_at = Instant::now();
            let never = CancellationToken::new();
            let (outcome, signal) =
                crate::worker::execute::execute(ctx, worker_id, job, claimed_at, &never).await;
            let (status, run_after) = (outcome.status, outcome.run_after);
            let deployment = outcome.deployment.clone();
            // A success recorded as it was is answered from the outcome; anything else is
            // answered from the job's row, read back.
            let answer = outcome
                .response
                .clone()
                .filter(|_| status == crate::domain::state::sql::SUCCEEDED);
            crate::failpoint::hit("sync.after_call_before_record");
            let stored = rounds::record(ctx, worker_id, outcome).await?;
            if let (Some(deployment), Some(signal)) = (deployment, signal) {
                ctx.breaker_feed.send(crate::db::breakers::Event {
                    deployment,
                    job_id: id.clone(),
                    signal,
                });
            }
            if let (Some(answer), crate::worker::record::Stored::AsGiven) = (answer, stored) {
                return Ok(RunEnd::Succeeded(Box::new(answer)));
            }
            match status {
                "retry_scheduled" => {
                    let at = run_after.unwrap_or_else(Utc::now);
                    let wait = (at - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(wait.min(ctx.config.worker.retry_max)).await;
                    crate::db::maintenance::stage_due_retries(&ctx.pool).await?;
                }
                "queued" => {}
                _ => return finished(ctx, tenant, &id).await.map(RunEnd::Finished),
            }
            continue;
        }
        if let Some((_, until)) = claim.waiting.first() {
            let wait =
                Duration::from_secs(u64::try_from(until - Utc::now().timestamp()).unwrap_or(0))
                    .max(Duration::from_millis(100));
            if Instant::now() + wait > give_up_budget {
                crate::db::cancel::cancel_job(&ctx.pool, tenant, &id).await?;
                return Ok(RunEnd::NoBudget(wait.max(Duration::from_secs(1))));
            }
            tokio::time::sleep(wait).await;
            continue;
        }
        // Rejected, cancelled, or taken by a worker (after a fallback the relay may publish
        // it): follow the row until it finishes.
        let row = finished_or_not(ctx, tenant, &id).await?;
        if row.finalized_at.is_some() {
            return Ok(if claim.rejected.contains(&id) {
                RunEnd::Refused(Box::new(row))
            } else {
                RunEnd::Finished(Box::new(row))
            });
        }
        if row.status == "retry_scheduled" {
            crate::db::maintenance::stage_due_retries(&ctx.pool).await?;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn finished_or_not(ctx: &Ctx, tenant: &str, id: &str) -> anyhow::Result<JobRow> {
    rounds::read(ctx, tenant, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("job {id} vanished"))
}

async fn finished(ctx: &Ctx, tenant: &str, id: &str) -> anyhow::Result<Box<JobRow>> {
    finished_or_not(ctx, tenant, id).await.map(Box::new)
}
