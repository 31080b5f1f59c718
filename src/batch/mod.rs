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

mod follow;
mod outcome;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::app::Ctx;
use crate::db::provider_batches::{self as q, Packable};
use crate::domain::catalog::Deployment;
use crate::domain::retry::ErrorClass;
use crate::providers::batch::{BatchItem, pack};

pub use follow::BATCH_LOST;

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

/// One round: pack what is due, follow open batches, rescue jobs near their deadline. Each
/// duty runs even when another failed (logged); the first error is returned at the end.
pub async fn tick(ctx: &Ctx, owner: &str) -> anyhow::Result<()> {
    let mut first: Option<anyhow::Error> = None;
    match q::rescue_near_deadline(&ctx.pool, ctx.config.routing.realtime_margin).await {
        Ok(0) => {}
        Ok(moved) => tracing::info!(
            jobs = moved,
            "moved batched jobs to real-time: their deadline drew near"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not move batched jobs near their deadline");
            first = Some(e.into());
        }
    }
    if let Err(e) = pack_due(ctx, owner).await {
        tracing::warn!(error = %e, "packing provider batches failed");
        first.get_or_insert(e);
    }
    for _ in 0..POLLS_PER_TICK {
        let batch = match q::lease_one(&ctx.pool, owner, ctx.config.batch.lease).await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                first.get_or_insert(e.into());
                break;
            }
        };
        let followed = holding_lease(ctx, &batch.id, owner, follow::follow(ctx, owner, &batch));
        if let Err(e) = followed.await {
            tracing::warn!(batch = %batch.id, error = %e, "following a provider batch failed; will retry");
        }
    }
    first.map_or(Ok(()), Err)
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
            submit(ctx, owner, &id, &d, &jobs).await;
            if !full {
                break;
            }
        }
    }
    Ok(())
}

/// Sends a packed batch; a refusal moves its jobs to real-time, a transient failure leaves it
/// `submitting` for the poller to send again once the lease lapses.
async fn submit(ctx: &Ctx, owner: &str, id: &str, d: &Deployment, jobs: &[Packable]) {
    let mut items: Vec<BatchItem> = Vec::with_capacity(jobs.len());
    for j in jobs {
        let request = if j.mask_on_send {
            // Masked here, restored from a recomputed mapping when the results come back.
            match ctx
                .config
                .redaction
                .mask_for_call(&j.tenant, &j.model, &j.request)
            {
                Ok((masked, _)) => masked,
                Err(e) => {
                    tracing::error!(batch = id, job_id = %j.id, error = %e, "a request could not be masked; the batch is not sent");
                    return;
                }
            }
        } else {
            j.request.clone()
        };
        items.push(BatchItem {
            custom_id: j.id.clone(),
            model: d.model.clone(),
            request,
        });
    }
    let send = ctx
        .providers
        .submit_batch(d, &items, &ctx.config.batch.completion_window, id);
    // An upload may take longer than the lease: keep it, or another poller would send again.
    let submitted = holding_lease(ctx, id, owner, send).await;
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

/// Runs `work` on batch `id` while keeping `owner`'s lease on it alive: renewed every third of
/// `batch.lease` on the heartbeat pool, so an upload, a create or a download that outlasts the
/// lease never lets another process take the batch over and send it twice. Renewals stop with
/// `work`; a process that dies stops renewing, and its lease lapses as before.
async fn holding_lease<T>(ctx: &Ctx, id: &str, owner: &str, work: impl Future<Output = T>) -> T {
    let lease = ctx.config.batch.lease;
    let every = (lease / 3).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                match q::renew_lease(&ctx.beat_pool, id, owner, lease).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(batch = id, "lost the lease of a provider batch while working on it"),
                    Err(e) => tracing::warn!(batch = id, error = %e, "could not renew a provider batch's lease"),
                }
            }
        }
    }
}
