//! Following one leased provider batch: sending it when it was packed but never confirmed,
//! asking the provider to cancel it when every job of it was cancelled, polling it, recording
//! its results once it ends, and giving it up when it can no longer be polled.

use std::collections::HashMap;

use chrono::Utc;

use super::outcome::outcome;
use super::submit;
use crate::app::Ctx;
use crate::db::provider_batches::{self as q, ItemOutcome, JobInfo, Leased};
use crate::domain::catalog::Deployment;
use crate::domain::retry::ErrorClass;
use crate::providers::ProviderError;
use crate::providers::batch::{BatchState, ItemResult};

/// The error code of jobs whose provider batch was given up.
pub const BATCH_LOST: &str = "provider_batch_lost";

/// One step on a leased batch.
pub(super) async fn follow(ctx: &Ctx, owner: &str, batch: &Leased) -> anyhow::Result<()> {
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
        submit(ctx, owner, &batch.id, &d, &jobs).await;
        return Ok(());
    };
    if batch.cancel_sent_at.is_none() && q::all_cancelled(&ctx.pool, &batch.id).await? {
        match ctx.providers.cancel_batch(&d, &pbid).await {
            Ok(_) => {
                tracing::info!(batch = %batch.id, provider_batch = %pbid, "every job of the batch was cancelled; cancelled the provider batch");
            }
            // Already ended (or gone): nothing to cancel; its results are discarded as usual.
            Err(e) if e.class == ErrorClass::Fatal => {
                tracing::info!(batch = %batch.id, error = %e, "the provider did not cancel the batch");
            }
            Err(e) => return Err(e.into()),
        }
        q::cancel_sent(&ctx.pool, &batch.id).await?;
    }
    let poll = match ctx.providers.poll_batch(&d, &pbid).await {
        Ok(p) => p,
        Err(e) => return poll_failed(ctx, batch, &d, e).await,
    };
    if !poll.state.is_terminal() {
        q::polled(&ctx.pool, &batch.id, owner, ctx.config.batch.poll_interval).await?;
        return Ok(());
    }
    if poll.state == BatchState::Failed {
        let reason = poll.message.unwrap_or_else(|| "validation failed".into());
        q::submission_failed(&ctx.pool, &batch.id, &reason).await?;
        return Ok(());
    }
    let results = match ctx.providers.batch_results(&d, &pbid).await {
        Ok(r) => r,
        Err(e) => return poll_failed(ctx, batch, &d, e).await,
    };
    let results: HashMap<String, ItemResult> = results.into_iter().collect();
    let final_state = if poll.state == BatchState::Cancelled {
        "cancelled"
    } else {
        "ended"
    };
    let outcomes = outcomes(ctx, batch, &d, results).await?;
    let done = q::record_results(&ctx.pool, batch, &outcomes, final_state, None).await?;
    tracing::info!(batch = %batch.id, items = outcomes.len(), moved = done.moved, quarantined = done.quarantined, "recorded a provider batch's results");
    Ok(())
}

/// Every item's outcome given the provider's `results` (an item missing from them is
/// re-driven or failed like an expired one).
async fn outcomes(
    ctx: &Ctx,
    batch: &Leased,
    d: &Deployment,
    mut results: HashMap<String, ItemResult>,
) -> anyhow::Result<Vec<ItemOutcome>> {
    let items = q::items(&ctx.pool, &batch.id).await?;
    let ids: Vec<String> = items.iter().map(|(id, _)| id.clone()).collect();
    let info: HashMap<String, JobInfo> = q::job_info(&ctx.pool, &ids)
        .await?
        .into_iter()
        .map(|j| (j.id.clone(), j))
        .collect();
    let now = Utc::now();
    Ok(items
        .into_iter()
        .map(|(job_id, attempt)| {
            let r = results.remove(&job_id);
            let job = info.get(&job_id).cloned().unwrap_or_default();
            outcome(ctx, d, &batch.id, job_id, attempt, r, &job, now)
        })
        .collect())
}

/// A poll or a download failed. Transient errors are retried when the lease lapses, as long as
/// it takes (jobs near their deadline move to real-time meanwhile). A deterministic error (the
/// batch or its files are gone: 404, the key lost access: 401) is counted, and after
/// `batch.max_poll_failures` in a row the batch is given up: each job is re-driven (next batch,
/// or real-time near its deadline) while its attempts allow, else failed with `provider_batch_lost`.
async fn poll_failed(
    ctx: &Ctx,
    batch: &Leased,
    d: &Deployment,
    e: ProviderError,
) -> anyhow::Result<()> {
    if e.class != ErrorClass::Fatal {
        return Err(e.into());
    }
    let failures = q::poll_failed(&ctx.pool, &batch.id, &e.to_string()).await?;
    let limit = ctx.config.batch.max_poll_failures.max(1);
    if u32::try_from(failures).unwrap_or(0) < limit {
        tracing::warn!(batch = %batch.id, failures, limit, error = %e, "a provider batch could not be polled");
        return Ok(());
    }
    let message =
        format!("the provider batch could not be polled {failures} times in a row ({e}); given up");
    tracing::error!(batch = %batch.id, error = %e, "giving up a provider batch that can no longer be polled; its jobs are re-driven or failed");
    let lost = ProviderError {
        http_status: e.http_status,
        ..ProviderError::new(ErrorClass::Retryable, BATCH_LOST, message.clone())
    };
    let results: HashMap<String, ItemResult> = q::items(&ctx.pool, &batch.id)
        .await?
        .into_iter()
        .map(|(id, _)| (id, ItemResult::Errored(lost.clone())))
        .collect();
    let outcomes = outcomes(ctx, batch, d, results).await?;
    let done = q::record_results(&ctx.pool, batch, &outcomes, "failed", Some(&message)).await?;
    tracing::info!(batch = %batch.id, moved = done.moved, "gave up a provider batch");
    Ok(())
}
