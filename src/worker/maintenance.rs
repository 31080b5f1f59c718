//! Small background loops: the heartbeat that proves a worker is alive, the rescuer that
//! re-queues a dead worker's jobs, the stager that moves due retries back to `queued`, the
//! sweeper that publishes again queued jobs whose work message was lost in the broker, and the
//! relay that publishes queued jobs whose work message never reached the broker. Every query is
//! conditional and idempotent, so any number of processes may run these loops at once.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::app::Ctx;
use crate::db::maintenance as q;
use crate::queue::WorkItem;

/// Most jobs the relay publishes in one transaction.
const RELAY_BATCH: i64 = 1000;
/// Most lost work messages the sweeper sends again per tick.
const REPUBLISH_BATCH: i64 = 1000;

/// Beats every `heartbeat_interval` until `stop`, then removes the worker row. `stop` fires
/// only after every other loop of the process has ended, so jobs still being finished during a
/// graceful shutdown keep a live owner and are never rescued from under it.
pub async fn heartbeat(ctx: Arc<Ctx>, worker_id: String, host: String, stop: CancellationToken) {
    let every = ctx.config.worker.heartbeat_interval;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = q::heartbeat(&ctx.beat_pool, &worker_id, &host, std::process::id()).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }
    if let Err(e) = q::deregister_worker(&ctx.beat_pool, &worker_id).await {
        tracing::warn!(error = %e, "could not deregister worker");
    }
}

/// Rescuer, stager and relay, every `relay_interval`.
pub async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let every = ctx.config.worker.relay_interval;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = tick(&ctx).await {
            tracing::warn!(error = %e, "maintenance tick failed");
        }
    }
}

/// One round of every maintenance duty (also called directly by tests to step the system).
/// Duties are independent: one that fails (a statement timeout, a broker hiccup) is logged and
/// the others still run; the first error is returned once the round is over.
pub async fn tick(ctx: &Ctx) -> anyhow::Result<()> {
    let mut first: Option<anyhow::Error> = None;
    let mut note = |duty: &str, r: anyhow::Result<()>| {
        if let Err(e) = r {
            tracing::warn!(duty, error = %e, "a maintenance duty failed; the others go on");
            first.get_or_insert(e);
        }
    };
    note("rescuer", rescue(ctx).await);
    note(
        "stager",
        q::stage_due_retries(&ctx.pool)
            .await
            .map(drop)
            .map_err(Into::into),
    );
    note("sweeper", sweep_lost(ctx).await);
    note(
        "expiry",
        crate::db::expiry::expire_overdue(&ctx.pool)
            .await
            .map(drop)
            .map_err(Into::into),
    );
    note(
        "budget pruning",
        crate::db::budgets::prune(&ctx.pool)
            .await
            .map_err(Into::into),
    );
    note(
        "cache pruning",
        crate::db::cache::prune(&ctx.pool).await.map_err(Into::into),
    );
    note("relay", relay(ctx).await);
    first.map_or(Ok(()), Err)
}

async fn rescue(ctx: &Ctx) -> anyhow::Result<()> {
    let rescued = q::rescue_orphans(&ctx.pool, ctx.config.worker.dead_after).await?;
    if rescued > 0 {
        tracing::warn!(
            jobs = rescued,
            "re-queued jobs of a worker that stopped answering"
        );
    }
    Ok(())
}

/// Republishes queued jobs whose work message is gone. A tenant whose work queue holds no
/// ready message gets its unclaimed jobs back after `republish_idle_after`. Otherwise jobs are
/// sent again after `republish_after` only as far as messages are missing: the jobs waiting
/// for a message outnumber what the queue holds (ready, plus at most `prefetch` handed to each
/// consumer). So a long backlog that is merely waiting is never duplicated.
async fn sweep_lost(ctx: &Ctx) -> anyhow::Result<()> {
    let w = &ctx.config.worker;
    let mut plan = Vec::new();
    for (tenant, old) in
        q::tenants_with_unclaimed(&ctx.pool, w.republish_idle_after, w.republish_after).await?
    {
        match ctx.broker.work_queue_counts(&tenant).await {
            Ok(counts @ (Some((0, _)) | None)) => {
                tracing::debug!(%tenant, ?counts, "work queue empty or gone: its unclaimed jobs are published again");
                plan.push((tenant, w.republish_idle_after, REPUBLISH_BATCH))
            }
            Ok(Some((ready, consumers))) if old => {
                let held = i64::from(ready)
                    .saturating_add(i64::from(consumers).saturating_mul(i64::from(w.prefetch)));
                let waiting = q::count_awaiting_message(
                    &ctx.pool,
                    &tenant,
                    held.saturating_add(REPUBLISH_BATCH),
                )
                .await?;
                let missing = waiting.saturating_sub(held).min(REPUBLISH_BATCH);
                tracing::debug!(%tenant, ready, consumers, waiting, missing, "work messages against jobs waiting for one");
                if missing > 0 {
                    plan.push((tenant, w.republish_after, missing));
                }
            }
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "could not look at a work queue; the sweeper tries again next round");
            }
        }
    }
    let lost = q::mark_lost_for_republish(&ctx.pool, &plan).await?;
    if lost > 0 {
        tracing::warn!(
            jobs = lost,
            "publishing again queued jobs not claimed since they were published (work messages lost?)"
        );
    }
    Ok(())
}

async fn relay(ctx: &Ctx) -> anyhow::Result<()> {
    while relay_once(ctx).await? == RELAY_BATCH as usize {}
    Ok(())
}

/// Publishes one batch of due jobs; the rows stay locked until the broker confirms.
async fn relay_once(ctx: &Ctx) -> anyhow::Result<usize> {
    let mut tx = ctx.pool.begin().await?;
    let due = q::pick_unpublished(&mut tx, RELAY_BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let work: Vec<WorkItem> = due
        .into_iter()
        .map(|(id, priority, tenant)| WorkItem {
            id,
            tenant,
            priority,
        })
        .collect();
    ctx.broker.publish_work(&work).await?;
    let ids: Vec<String> = work.into_iter().map(|w| w.id).collect();
    q::clear_publish_mark(&mut tx, &ids).await?;
    tx.commit().await?;
    tracing::debug!(jobs = ?ids, "relay published jobs");
    Ok(ids.len())
}
