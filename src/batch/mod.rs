//! The provider batch path: the packer groups batch-route jobs per deployment into provider
//! batches (within the provider's size limits and the deployment's enqueued-token budget, and
//! sends a partial batch once its oldest job has waited `batch.max_wait`); the poller, which
//! any process can take over through a lease, follows each provider batch, downloads its
//! results and records them at batch prices, matched to jobs by `custom_id` (the job id).
//!
//! No AMQP delivery is held while a provider batch runs: batch-route jobs never get a work
//! message; their state lives in Postgres (`in_provider_batch`). Item errors follow the retry
//! policy; expired and cancelled items are re-driven into the next batch, or to the real-time
//! path when the deadline is near; a job still waiting in a provider batch when its deadline
//! draws near is moved to the real-time path at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::Ctx;
use crate::db::provider_batches::{self as q, ItemOutcome, Leased, Packable};
use crate::domain::catalog::Deployment;
use crate::domain::retry::ErrorClass;
use crate::ids::new_id;
use crate::providers::batch::{BatchItem, BatchState, ItemResult, pack};

/// Most provider batches one process handles per tick.
const POLLS_PER_TICK: usize = 20;

/// Runs the packer, the poller and the deadline watchdog until `shutdown`.
pub async fn run(ctx: Arc<Ctx>, owner: String, shutdown: CancellationToken) {
    let every = ctx
        .config
        .batch
        .poll_interval
        .min(ctx.config.batch.max_wait)
        .max(Duration::from_millis(100))
        / 2;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = tick(&ctx, &owner).await {
            tracing::warn!(error = %e, "batch path tick failed");
        }
    }
}

/// One round: pack what is due, follow open batches, rescue jobs near their deadline.
pub async fn tick(ctx: &Ctx, owner: &str) -> anyhow::Result<()> {
    let moved = q::rescue_near_deadline(&ctx.pool, ctx.config.routing.realtime_margin).await?;
    if moved > 0 {
        tracing::info!(
            jobs = moved,
            "moved batched jobs to real-time: their deadline drew near"
        );
    }
    pack_due(ctx, owner).await?;
    for _ in 0..POLLS_PER_TICK {
        let Some(batch) = q::lease_one(&ctx.pool, owner, ctx.config.batch.lease).await? else {
            break;
        };
        if let Err(e) = follow(ctx, owner, &batch).await {
            tracing::warn!(batch = %batch.id, error = %e, "following a provider batch failed; will retry");
        }
    }
    Ok(())
}

async fn pack_due(ctx: &Ctx, owner: &str) -> anyhow::Result<()> {
    let cfg = &ctx.config.batch;
    for (deployment, waiting, oldest) in q::waiting(&ctx.pool).await? {
        let Some(d) = Deployment::parse(&deployment) else {
            continue;
        };
        let limits = ctx.providers.batch_limits(&d);
        let max_items = cfg.max_items.min(limits.max_items).max(1);
        if (waiting as usize) < max_items && oldest < cfg.max_wait.as_secs_f64() {
            continue;
        }
        loop {
            let fits = |jobs: &[Packable]| {
                let sizes: Vec<usize> = jobs
                    .iter()
                    .map(|j| j.request.to_string().len() + 200)
                    .collect();
                pack(&sizes, limits).first().map_or(0, |r| r.len())
            };
            let catalog = ctx.catalog();
            let worst_cost = |j: &Packable| {
                catalog.worst_case_usd(
                    &deployment,
                    i64::from(j.est_prompt_tokens.max(0)),
                    i64::from(j.max_tokens.max(0)),
                    true,
                    Utc::now(),
                )
            };
            let Some((id, jobs)) = q::pack(
                &ctx.pool,
                &deployment,
                owner,
                cfg.lease,
                max_items as i64,
                fits,
                worst_cost,
            )
            .await?
            else {
                break;
            };
            let full = jobs.len() == max_items;
            submit(ctx, &id, &d, &jobs).await;
            if !full {
                break;
            }
        }
    }
    Ok(())
}

/// Sends a packed batch; a refusal moves its jobs to real-time, a transient failure leaves it
/// `submitting` for the poller to send again once the lease lapses.
async fn submit(ctx: &Ctx, id: &str, d: &Deployment, jobs: &[Packable]) {
    let items: Vec<BatchItem> = jobs
        .iter()
        .map(|j| BatchItem {
            custom_id: j.id.clone(),
            model: d.model.clone(),
            request: j.request.clone(),
        })
        .collect();
    let submitted = ctx
        .providers
        .submit_batch(d, &items, &ctx.config.batch.completion_window, id)
        .await;
    crate::failpoint::hit("batch.after_submit_before_record");
    match submitted {
        Ok(s) => {
            tracing::info!(batch = id, provider_batch = %s.provider_batch_id, items = items.len(), deployment = %d, "submitted a provider batch");
            if let Err(e) = q::submitted(
                &ctx.pool,
                id,
                &s.provider_batch_id,
                s.input_file_id.as_deref(),
                ctx.config.batch.poll_interval,
            )
            .await
            {
                tracing::error!(batch = id, error = %e, "could not record a submitted provider batch");
            }
        }
        Err(e) if e.class == ErrorClass::Fatal => {
            tracing::warn!(batch = id, error = %e, "the provider refused the batch; its jobs go real-time");
            if let Err(e) = q::submission_failed(&ctx.pool, id, &e.message).await {
                tracing::error!(batch = id, error = %e, "could not re-route a refused batch");
            }
        }
        Err(e) => {
            tracing::warn!(batch = id, error = %e, "submitting a provider batch failed; will retry")
        }
    }
}

async fn follow(ctx: &Ctx, owner: &str, batch: &Leased) -> anyhow::Result<()> {
    let d = Deployment::parse(&batch.deployment)
        .ok_or_else(|| anyhow::anyhow!("bad deployment {}", batch.deployment))?;
    let Some(pbid) = batch
        .provider_batch_id
        .clone()
        .filter(|_| batch.state == "in_progress")
    else {
        // Packed but never confirmed submitted (a crash or a transient error). The provider
        // may have created it all the same (the answer was lost): adopt that batch rather
        // than pay twice; otherwise send it now.
        if let Some(s) = ctx.providers.find_batch(&d, &batch.id).await? {
            tracing::info!(batch = %batch.id, provider_batch = %s.provider_batch_id, "found the provider batch of an unconfirmed submission; adopting it");
            q::submitted(
                &ctx.pool,
                &batch.id,
                &s.provider_batch_id,
                s.input_file_id.as_deref(),
                ctx.config.batch.poll_interval,
            )
            .await?;
            return Ok(());
        }
        let jobs = q::packed_jobs(&ctx.pool, &batch.id).await?;
        submit(ctx, &batch.id, &d, &jobs).await;
        return Ok(());
    };
    let poll = ctx.providers.poll_batch(&d, &pbid).await?;
    if !poll.state.is_terminal() {
        q::polled(&ctx.pool, &batch.id, owner, ctx.config.batch.poll_interval).await?;
        return Ok(());
    }
    if poll.state == BatchState::Failed {
        let reason = poll.message.unwrap_or_else(|| "validation failed".into());
        q::submission_failed(&ctx.pool, &batch.id, &reason).await?;
        return Ok(());
    }
    let results: HashMap<String, ItemResult> = ctx
        .providers
        .batch_results(&d, &pbid)
        .await?
        .into_iter()
        .collect();
    let items = q::items(&ctx.pool, &batch.id).await?;
    let ids: Vec<String> = items.iter().map(|(id, _)| id.clone()).collect();
    let info: HashMap<String, JobInfo> = q::deadlines(&ctx.pool, &ids)
        .await?
        .into_iter()
        .map(|(id, deadline, done, max, premium)| {
            (
                id,
                JobInfo {
                    deadline,
                    attempts_done: done,
                    max_attempts: max,
                    premium,
                },
            )
        })
        .collect();
    let mut results = results;
    let now = Utc::now();
    let outcomes: Vec<ItemOutcome> = items
        .into_iter()
        .map(|(job_id, attempt)| {
            let r = results.remove(&job_id);
            let job = info.get(&job_id).cloned().unwrap_or_default();
            outcome(ctx, &d, job_id, attempt, r, &job, now)
        })
        .collect();
    let final_state = if poll.state == BatchState::Cancelled {
        "cancelled"
    } else {
        "ended"
    };
    let moved = q::record_results(&ctx.pool, batch, &outcomes, final_state).await?;
    tracing::info!(batch = %batch.id, items = outcomes.len(), moved, "recorded a provider batch's results");
    Ok(())
}

#[derive(Debug, Clone, Default)]
struct JobInfo {
    deadline: Option<DateTime<Utc>>,
    attempts_done: i32,
    max_attempts: i32,
    premium: Option<String>,
}

/// Where a job whose batch item did not succeed goes next.
fn redrive_route(ctx: &Ctx, job: &JobInfo, now: DateTime<Utc>) -> (&'static str, Option<String>) {
    let d = |s: Duration| chrono::Duration::from_std(s).unwrap_or_default();
    let cfg = &ctx.config.routing;
    let needs = d(cfg.batch_turnaround) + d(cfg.realtime_margin);
    let near = job.deadline.is_some_and(|dl| dl - now < needs);
    let spent = job.attempts_done + 1 >= job.max_attempts.max(1);
    if near || spent {
        let why = if near {
            "the deadline is too near for another batch"
        } else {
            "batch attempts are spent"
        };
        ("cheap", Some(format!("re-driven to real-time: {why}")))
    } else {
        (
            "batch",
            Some("re-driven into the next provider batch".into()),
        )
    }
}

fn outcome(
    ctx: &Ctx,
    d: &Deployment,
    job_id: String,
    attempt: i32,
    r: Option<ItemResult>,
    job: &JobInfo,
    now: DateTime<Utc>,
) -> ItemOutcome {
    let mut o = ItemOutcome {
        job_id,
        attempt,
        status: "queued",
        route: "batch",
        route_note: None,
        response: None,
        error: None,
        attempt_status: "expired",
        error_code: None,
        http_status: None,
        input_tokens: 0,
        output_tokens: 0,
        cached_tokens: 0,
        input_usd_per_mtok: None,
        output_usd_per_mtok: None,
        cached_input_usd_per_mtok: None,
        discount: Decimal::ZERO,
        cost_usd: Decimal::ZERO,
        baseline_cost_usd: Decimal::ZERO,
        provider_request_id: None,
        attempt_id: new_id("att"),
    };
    let entry = |code: &str, message: &str| json!({"at": now, "attempt": attempt, "deployment": d.to_string(), "code": code, "message": message});
    match r {
        Some(ItemResult::Succeeded(c)) => {
            let catalog = ctx.catalog();
            if let Some(p) = catalog.price_of(d, now) {
                let cost = p.cost(c.usage, true);
                o.input_usd_per_mtok = Some(cost.input_usd_per_mtok);
                o.output_usd_per_mtok = Some(cost.output_usd_per_mtok);
                o.cached_input_usd_per_mtok = Some(cost.cached_input_usd_per_mtok);
                o.discount = cost.discount;
                o.cost_usd = cost.cost_usd;
            }
            let premium = job
                .premium
                .as_deref()
                .and_then(Deployment::parse)
                .unwrap_or_else(|| d.clone());
            o.baseline_cost_usd = catalog
                .price_of(&premium, now)
                .map(|p| p.cost(c.usage, false).cost_usd)
                .unwrap_or(o.cost_usd);
            o.input_tokens = c.usage.input_tokens;
            o.output_tokens = c.usage.output_tokens;
            o.cached_tokens = c.usage.cached_tokens;
            o.status = "succeeded";
            o.attempt_status = if c.refusal { "refused" } else { "succeeded" };
            o.provider_request_id = c.request_id;
            o.response = Some(c.body);
        }
        Some(ItemResult::Errored(e)) => {
            o.attempt_status = "failed";
            o.error_code = Some(e.code.clone());
            o.http_status = e.http_status.map(i32::from);
            o.error = Some(entry(&e.code, &e.message));
            if e.class == ErrorClass::Fatal || job.attempts_done + 1 >= job.max_attempts.max(1) {
                o.status = "failed";
            } else {
                (o.route, o.route_note) = redrive_route(ctx, job, now);
            }
        }
        other => {
            let (status, code, message) = match other {
                Some(ItemResult::Cancelled) => (
                    "cancelled",
                    "batch_cancelled",
                    "the provider batch was cancelled before this item ran",
                ),
                None => (
                    "expired",
                    "batch_item_missing",
                    "the provider returned no result for this item",
                ),
                _ => (
                    "expired",
                    "batch_expired",
                    "the provider batch's window passed before this item ran",
                ),
            };
            o.attempt_status = status;
            o.error = Some(entry(code, message));
            (o.route, o.route_note) = redrive_route(ctx, job, now);
            // Re-drives are bounded like retries: past the attempts, real-time takes over.
        }
    }
    o
}
