//! Puts due retries back to work on time. A failed attempt scheduled for a retry in a few
//! seconds is staged (`retry_scheduled` → `queued`) and its work message published by the
//! worker that recorded the failure, at its `run_after`, instead of waiting for the next round
//! of the stager and relay (which poll, and fall behind under load). The stager and relay stay
//! the safety net: a worker that dies with timers pending leaves the jobs `retry_scheduled`,
//! and they stage them as before. Staging is conditional on the job still waiting, so the
//! stager and a timer never publish a retry twice but for a harmless duplicate message (claims
//! are conditional).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::app::Ctx;
use crate::queue::WorkItem;

/// Retries further out than this are left to the stager.
pub const TIMER_HORIZON: Duration = Duration::from_secs(120);

/// Retries due within this of each other are staged in one statement.
const COALESCE: Duration = Duration::from_millis(20);

/// Starts one timer task for the retries in `due` (job id, run_after), until `stop`.
pub fn schedule(ctx: &Arc<Ctx>, mut due: Vec<(String, DateTime<Utc>)>, stop: &CancellationToken) {
    let now = Utc::now();
    let horizon = chrono::Duration::from_std(TIMER_HORIZON).unwrap_or_default();
    due.retain(|(_, at)| *at - now <= horizon);
    if due.is_empty() {
        return;
    }
    due.sort_by_key(|(_, at)| *at);
    let ctx = ctx.clone();
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut due = std::collections::VecDeque::from(due);
        while let Some((_, first)) = due.front() {
            let wait = (*first - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let limit = Utc::now() + chrono::Duration::from_std(COALESCE).unwrap_or_default();
            let mut ids = Vec::new();
            while let Some((id, at)) = due.front() {
                if *at > limit {
                    break;
                }
                ids.push(id.clone());
                due.pop_front();
            }
            stage_and_publish(&ctx, &ids).await;
        }
    });
}

/// Stages these retries and publishes their work messages; on any failure the jobs are left to
/// the stager and relay.
async fn stage_and_publish(ctx: &Ctx, ids: &[String]) {
    let grace = ctx.config.worker.relay_grace;
    let staged = match crate::db::jobs::stage_retries(&ctx.pool, ids, grace).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, jobs = ids.len(), "could not stage due retries; the stager will");
            return;
        }
    };
    if staged.is_empty() {
        return;
    }
    let work: Vec<WorkItem> = staged
        .into_iter()
        .map(|(id, priority, tenant)| WorkItem {
            id,
            tenant,
            priority,
        })
        .collect();
    if let Err(e) = ctx.broker.publish_work(&work).await {
        tracing::warn!(error = %e, jobs = work.len(), "could not publish due retries; the relay will");
        return;
    }
    let ids: Vec<String> = work.into_iter().map(|w| w.id).collect();
    tracing::debug!(jobs = ?ids, "published due retries");
    ctx.publish_marks.mark_later(ctx, ids).await;
}
