//! Aborting provider calls whose job was cancelled while running.
//!
//! Each call in flight registers a token under its job id ([`Registry`]); [`watch`] polls
//! Postgres every [`POLL`] for this worker's running jobs whose cancel was asked and fires
//! their tokens; the executor races the provider call against its token.
//!
//! Polling rather than LISTEN/NOTIFY: the query is level-triggered (a job asked to stop is
//! found on every poll until it stops, so nothing is missed while a connection reconnects or a
//! call registers late), it needs no dedicated connection per process, and it is one indexed
//! query every quarter second, made only while this worker has calls in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::Ctx;

/// How often the watcher looks for cancel requests.
pub const POLL: Duration = Duration::from_millis(250);

/// The calls in flight in this process, by job id (each with the serial of its registration).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    calls: Arc<Mutex<Calls>>,
}

#[derive(Debug, Default)]
struct Calls {
    next: u64,
    by_job: HashMap<String, (u64, CancellationToken)>,
}

/// One registered call; dropping it unregisters the call.
#[derive(Debug)]
pub struct Registration {
    registry: Registry,
    job_id: String,
    serial: u64,
    token: CancellationToken,
}

impl Registration {
    /// Fires when the job is cancelled.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut calls = self.registry.lock();
        // Only our own entry: a later registration of the same job replaced it.
        if calls
            .by_job
            .get(&self.job_id)
            .is_some_and(|(serial, _)| *serial == self.serial)
        {
            calls.by_job.remove(&self.job_id);
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the call of `job_id` until the returned registration is dropped.
    pub fn register(&self, job_id: &str) -> Registration {
        let token = CancellationToken::new();
        let mut calls = self.lock();
        calls.next += 1;
        let serial = calls.next;
        calls
            .by_job
            .insert(job_id.to_string(), (serial, token.clone()));
        Registration {
            registry: self.clone(),
            job_id: job_id.to_string(),
            serial,
            token,
        }
    }

    /// Fires the tokens of the calls of `ids` running here; returns how many fired.
    pub fn fire(&self, ids: &[String]) -> usize {
        let calls = self.lock();
        ids.iter()
            .filter_map(|id| calls.by_job.get(id))
            .filter(|(_, t)| !t.is_cancelled())
            .map(|(_, t)| t.cancel())
            .count()
    }

    /// Those of `ids` with no call registered here.
    pub fn unregistered(&self, ids: Vec<String>) -> Vec<String> {
        let calls = self.lock();
        ids.into_iter()
            .filter(|id| !calls.by_job.contains_key(id))
            .collect()
    }

    /// Whether no call is in flight.
    pub fn is_empty(&self) -> bool {
        self.lock().by_job.is_empty()
    }
}

/// How often the watcher looks for strays: jobs Postgres says this worker runs, that it does
/// not (a claim whose commit answer was lost, so the deliveries were handed back).
const STRAY_EVERY: Duration = Duration::from_secs(15);
/// A claim this old without a registered call is a stray (calls register right after the claim).
pub const STRAY_AFTER: Duration = Duration::from_secs(60);

/// Fires the tokens of this worker's calls whose job was cancelled, and hands back strays,
/// until `stop`.
pub async fn watch(ctx: Arc<Ctx>, worker_id: String, registry: Registry, stop: CancellationToken) {
    let mut last_stray_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        if last_stray_check.elapsed() >= STRAY_EVERY {
            last_stray_check = tokio::time::Instant::now();
            hand_back_strays(&ctx, &worker_id, &registry).await;
        }
        if registry.is_empty() {
            continue;
        }
        match crate::db::cancel::requested_for(&ctx.pool, &worker_id).await {
            Ok(ids) if !ids.is_empty() => {
                let fired = registry.fire(&ids);
                if fired > 0 {
                    tracing::info!(calls = fired, "aborting provider calls of cancelled jobs");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not look for cancelled jobs"),
        }
    }
}

/// Re-queues the jobs this worker holds in Postgres without running them. Without this, such a
/// job would stay `running` for as long as this worker heartbeats: the rescuer only takes the
/// jobs of silent workers, and redeliveries of a running job are acknowledged without a call.
async fn hand_back_strays(ctx: &Ctx, worker_id: &str, registry: &Registry) {
    let held = match crate::db::maintenance::held_by(&ctx.pool, worker_id, STRAY_AFTER).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "could not look for stray claims");
            return;
        }
    };
    let strays = registry.unregistered(held);
    if strays.is_empty() {
        return;
    }
    match crate::db::maintenance::requeue_strays(&ctx.pool, worker_id, &strays, STRAY_AFTER).await {
        Ok(n) if n > 0 => {
            tracing::warn!(
                jobs = n,
                "re-queued jobs claimed by this worker but not running here"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not re-queue stray claims"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firing_cancels_only_the_named_calls_and_dropping_unregisters() {
        let r = Registry::default();
        let a = r.register("job_a");
        let b = r.register("job_b");
        assert_eq!(r.fire(&["job_a".into(), "job_gone".into()]), 1);
        assert!(a.token().is_cancelled());
        assert!(!b.token().is_cancelled());
        assert_eq!(
            r.fire(&["job_a".into()]),
            0,
            "a fired token is not fired again"
        );
        assert_eq!(
            r.unregistered(vec!["job_a".into(), "job_x".into()]),
            vec!["job_x".to_string()]
        );
        drop(a);
        drop(b);
        assert!(r.is_empty());
    }
}
