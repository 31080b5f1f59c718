//! The worker pool: take job ids from every tenant's work queue, claim them in Postgres within
//! the shared budgets (in batches), call the provider (bounded by a semaphore), record each
//! outcome with its ledger row (in batches), and only then acknowledge the delivery.
//!
//! A delivery whose job is not `queued` (finished, running elsewhere, cancelled) is acknowledged
//! without a call: redeliveries never run a job twice nor bill it twice. A job over budget waits:
//! briefly in this worker (its delivery unacknowledged, so still owned by RabbitMQ), or, for
//! longer waits, in Postgres (`publish_after`), republished by the relay when its budget frees.
//! A worker that dies mid-call leaves its job `running`; the rescuer re-queues it once the
//! heartbeat stops.

pub mod breaker_feed;
pub mod cancel;
pub mod execute;
pub mod maintenance;
pub mod record;
pub mod retry_timer;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Acker, Channel};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::Ctx;
use crate::db::jobs::Outcome;
use crate::domain::breaker::{self, Signal};
use crate::domain::state::sql as job_state;

/// An attempt's outcome, what it said about its deployment, the delivery to acknowledge, and
/// the call's registration (kept until the outcome is recorded, so the job never looks like a
/// stray claim meanwhile).
/// The call's slot rides along and is freed only once the outcome is recorded: a new claim
/// then sees what this call cost and what its provider counted (learned usage), so at most one
/// wave of calls is ever reserved on stale figures.
type Recorded = (
    Outcome,
    Option<Signal>,
    Acker,
    cancel::Registration,
    Option<OwnedSemaphorePermit>,
);

/// Where claimed jobs' calls run: tracked tasks, registered for cancellation, whose outcomes
/// go to the recorder.
struct Runner {
    record_tx: mpsc::Sender<Recorded>,
    tasks: TaskTracker,
    calls: cancel::Registry,
    /// Call slots, shared by every session of this pool.
    permits: Arc<Semaphore>,
}

/// What outlives one broker session: the calls in flight (for cancellation and the stray
/// check), the call slots, and the drains of sessions whose connection broke.
struct Shared {
    calls: cancel::Registry,
    permits: Arc<Semaphore>,
    drains: TaskTracker,
}

/// Most deliveries claimed in one transaction.
const CLAIM_BATCH: usize = 256;
/// Most outcomes recorded in one statement.
const RECORD_BATCH: usize = 512;
/// A budget wait longer than this is parked in Postgres instead of holding the delivery.
const HOLD_AT_MOST: Duration = Duration::from_secs(20);
/// How often the worker looks for new tenants to consume.
const TENANT_REFRESH: Duration = Duration::from_secs(2);

/// The circuit-breaker dials from config.
pub fn breaker_settings(ctx: &Ctx) -> breaker::Settings {
    breaker::Settings {
        failure_rate: ctx.config.worker.breaker_failure_rate.min(100),
        min_calls: ctx.config.worker.breaker_min_calls,
        window: ctx.config.worker.breaker_window,
        cooldown: ctx.config.worker.breaker_cooldown,
    }
}

/// Runs the pool until `shutdown`, reconnecting to the broker whenever the connection drops.
pub async fn run(ctx: Arc<Ctx>, worker_id: String, shutdown: CancellationToken) {
    let shared = Shared {
        calls: cancel::Registry::default(),
        permits: Arc::new(Semaphore::new(ctx.config.worker.concurrency)),
        drains: TaskTracker::new(),
    };
    // The watcher outlives the sessions: calls still draining after shutdown can be cancelled.
    let stop_watch = CancellationToken::new();
    let watcher = tokio::spawn(cancel::watch(
        ctx.clone(),
        worker_id.clone(),
        shared.calls.clone(),
        stop_watch.clone(),
    ));
    crate::queue::reconnecting("worker", &shutdown, || {
        run_session(&ctx, &worker_id, &shared, &shutdown)
    })
    .await;
    // Sessions whose connection broke may still be finishing calls: record them all.
    shared.drains.close();
    shared.drains.wait().await;
    stop_watch.cancel();
    let _ = watcher.await;
}

/// One connection's worth of consuming. On shutdown, returns after every claimed job has been
/// recorded and acknowledged. On a broker error, returns at once so the pool reconnects while
/// the calls in flight finish and are recorded in the background (their acknowledgements are
/// moot: the broker redelivers, and a redelivery of a finished job is acknowledged without a
/// call); they keep their call slots meanwhile, so the pool's concurrency holds.
async fn run_session(
    ctx: &Arc<Ctx>,
    worker_id: &str,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let topo = ctx.broker.topology().clone();
    let conn = crate::queue::connect(ctx.broker.url(), &format!("{worker_id}-work")).await?;
    let channel = conn.create_channel().await?;
    crate::queue::declare(&channel, &topo).await?;

    let (claim_tx, claim_rx) = mpsc::channel::<Delivery>(CLAIM_BATCH * 4);
    let (record_tx, record_rx) = mpsc::channel::<Recorded>(RECORD_BATCH * 2);
    let (err_tx, mut err_rx) = mpsc::channel::<anyhow::Error>(4);
    let tasks = TaskTracker::new();
    let recorder = tokio::spawn(record_loop(
        ctx.clone(),
        worker_id.to_string(),
        record_rx,
        shutdown.clone(),
    ));
    let runner = Runner {
        record_tx,
        tasks: tasks.clone(),
        calls: shared.calls.clone(),
        permits: shared.permits.clone(),
    };
    // Cancelled on shutdown, or when this session's connection breaks: deliveries already
    // prefetched from a dead channel are then handed back (the broker redelivers them on the
    // next session) instead of being claimed.
    let stop_claiming = shutdown.child_token();
    let claimer = tokio::spawn(claim_loop(
        ctx.clone(),
        worker_id.to_string(),
        claim_rx,
        runner,
        stop_claiming.clone(),
    ));

    let mut consuming: HashSet<String> = HashSet::new();
    let mut tags = Vec::new();
    let mut refresh = tokio::time::interval(TENANT_REFRESH);
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(e) = err_rx.recv() => break Err(e),
            _ = refresh.tick() => {
                if !conn.status().connected() {
                    break Err(anyhow::anyhow!("the broker connection is closed"));
                }
                match consume_new_tenants(ctx, &channel, worker_id, &mut consuming, &claim_tx, &err_tx).await {
                    Ok(new_tags) => tags.extend(new_tags),
                    Err(e) => break Err(e),
                }
            }
        }
    };
    // Stop new deliveries; forwarders end with their consumers and drop their senders.
    for tag in tags {
        let cancel = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
        let _ = tokio::time::timeout(Duration::from_secs(5), cancel).await;
    }
    drop(claim_tx);
    let drain = async move {
        let _ = claimer.await;
        tasks.close();
        tasks.wait().await;
        let _ = recorder.await;
    };
    if result.is_err() {
        stop_claiming.cancel();
        // The channel is gone: forwarders will not end by themselves.
        crate::queue::close(&conn, "worker reconnecting").await;
        shared.drains.spawn(drain);
        return result;
    }
    drain.await;
    crate::queue::close(&conn, "worker stopping").await;
    result
}

/// Starts consuming the work queue of every tenant not consumed yet, with a prefetch
/// proportional to the tenant's weight.
async fn consume_new_tenants(
    ctx: &Ctx,
    channel: &Channel,
    worker_id: &str,
    consuming: &mut HashSet<String>,
    claim_tx: &mpsc::Sender<Delivery>,
    err_tx: &mpsc::Sender<anyhow::Error>,
) -> anyhow::Result<Vec<String>> {
    // A database error here is not the broker's fault: keep the session, try next tick.
    let tenants: Vec<(String, i32)> =
        match sqlx::query_as("SELECT name, weight FROM tenants ORDER BY name")
            .fetch_all(&ctx.pool)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "could not look up tenants; will try again");
                return Ok(Vec::new());
            }
        };
    let topo = ctx.broker.topology();
    let mut tags = Vec::new();
    for (tenant, weight) in tenants {
        if consuming.contains(&tenant) {
            continue;
        }
        crate::queue::declare_tenant(channel, topo, &tenant).await?;
        let prefetch = (u32::from(ctx.config.worker.prefetch) * weight.max(1) as u32)
            .min(u32::from(u16::MAX)) as u16;
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await?;
        let tag = format!("{worker_id}-{tenant}");
        let consumer = channel
            .basic_consume(
                topo.work_queue(&tenant).into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(worker = worker_id, tenant = %tenant, prefetch, "consuming tenant work queue");
        let tx = claim_tx.clone();
        let err = err_tx.clone();
        tokio::spawn(async move {
            let mut consumer = consumer;
            while let Some(next) = consumer.next().await {
                match next {
                    Ok(d) => {
                        if tx.send(d).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = err.send(e.into()).await;
                        return;
                    }
                }
            }
        });
        consuming.insert(tenant);
        tags.push(tag);
    }
    Ok(tags)
}

/// Deliveries waiting for budget, with the moment to try again.
#[derive(Default)]
struct Deferred {
    items: Vec<(Instant, Delivery)>,
}

impl Deferred {
    fn push(&mut self, at: Instant, d: Delivery) {
        self.items.push((at, d));
        self.items.sort_by_key(|(at, _)| *at);
    }
    fn extend_due(&mut self, ds: Vec<Delivery>) {
        if ds.is_empty() {
            return;
        }
        let now = Instant::now();
        self.items.extend(ds.into_iter().map(|d| (now, d)));
        self.items.sort_by_key(|(at, _)| *at);
    }
    fn next_due(&self) -> Option<Instant> {
        self.items.first().map(|(at, _)| *at)
    }
    fn take_due(&mut self, limit: usize) -> Vec<Delivery> {
        let now = Instant::now();
        let n = self
            .items
            .iter()
            .take_while(|(at, _)| *at <= now)
            .count()
            .min(limit);
        self.items.drain(..n).map(|(_, d)| d).collect()
    }
    fn drain_all(&mut self) -> Vec<Delivery> {
        self.items.drain(..).map(|(_, d)| d).collect()
    }
}

/// Up to `limit` deliveries taken round-robin by tenant (the routing key), keeping each
/// tenant's order; returns them and the rest.
fn take_fair(ready: Vec<Delivery>, limit: usize) -> (Vec<Delivery>, Vec<Delivery>) {
    if ready.len() <= limit {
        return (ready, Vec::new());
    }
    let mut by_tenant: Vec<(String, std::collections::VecDeque<Delivery>)> = Vec::new();
    for d in ready {
        let tenant = d.routing_key.to_string();
        match by_tenant.iter_mut().find(|(t, _)| *t == tenant) {
            Some((_, q)) => q.push_back(d),
            None => by_tenant.push((tenant, std::collections::VecDeque::from([d]))),
        }
    }
    let mut batch = Vec::with_capacity(limit);
    while batch.len() < limit {
        let mut took = false;
        for (_, q) in by_tenant.iter_mut() {
            if batch.len() < limit
                && let Some(d) = q.pop_front()
            {
                batch.push(d);
                took = true;
            }
        }
        if !took {
            break;
        }
    }
    let rest = by_tenant.into_iter().flat_map(|(_, q)| q).collect();
    (batch, rest)
}

async fn nack_all(deliveries: Vec<Delivery>) {
    crate::queue::requeue_all(deliveries.iter().map(|d| &d.acker)).await;
}

/// Claims deliveries in batches within the budgets and starts a call for each claimed job.
async fn claim_loop(
    ctx: Arc<Ctx>,
    worker_id: String,
    mut rx: mpsc::Receiver<Delivery>,
    runner: Runner,
    stop: CancellationToken,
) {
    let permits = runner.permits.clone();
    let mut deferred = Deferred::default();
    let mut open = true;
    loop {
        // Claim no more than can start at once: a reservation must be used within a second.
        let free = permits.available_permits();
        if free == 0 {
            drop(permits.acquire().await);
            continue;
        }
        let limit = free.min(CLAIM_BATCH);
        // Everything ready now: due retries of budget waits and fresh deliveries alike.
        let mut ready = deferred.take_due(usize::MAX);
        while let Ok(d) = rx.try_recv() {
            ready.push(d);
        }
        if ready.is_empty() {
            if !open {
                nack_all(deferred.drain_all()).await;
                return;
            }
            let wake = deferred.next_due().map(tokio::time::Instant::from_std);
            tokio::select! {
                n = rx.recv_many(&mut ready, limit) => if n == 0 { open = false; continue; },
                _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => continue,
            }
        }
        // Take the batch round-robin across tenants, so a tenant whose backlog waits for budget
        // cannot crowd out another tenant's fresh work; the rest stays due for the next round.
        let (batch, rest) = take_fair(ready, limit);
        deferred.extend_due(rest);
        if stop.is_cancelled() {
            // Stopping: hand prefetched work back to the broker for another worker.
            nack_all(batch).await;
            nack_all(deferred.drain_all()).await;
            continue;
        }
        claim_batch(&ctx, &worker_id, batch, &permits, &runner, &mut deferred).await;
    }
}

async fn claim_batch(
    ctx: &Arc<Ctx>,
    worker_id: &str,
    batch: Vec<Delivery>,
    permits: &Arc<Semaphore>,
    runner: &Runner,
    deferred: &mut Deferred,
) {
    let mut by_id: HashMap<String, Delivery> = HashMap::with_capacity(batch.len());
    for d in batch {
        match std::str::from_utf8(&d.data) {
            Ok(id) if id.starts_with("job_") => {
                // A duplicate id in one batch: acknowledge the extra copy now.
                if let Some(extra) = by_id.insert(id.to_string(), d) {
                    crate::queue::ack(&extra.acker).await;
                }
            }
            _ => {
                tracing::warn!("dropping a work message that is not a job id");
                crate::queue::ack(&d.acker).await;
            }
        }
    }
    let ids: Vec<String> = by_id.keys().cloned().collect();
    let catalog = ctx.catalog();
    let breakers = breaker_settings(ctx);
    let claimed = crate::db::budgets::claim(&ctx.pool, &ids, worker_id, &catalog, breakers).await;
    let outcome = match claimed {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "claim failed; handing the deliveries back");
            nack_all(by_id.into_values().collect()).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
    };
    let claimed_at = Instant::now();
    for job in outcome.claimed {
        let Some(delivery) = by_id.remove(&job.id) else {
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Cannot happen: the batch was sized to the free permits. Be safe anyway.
            tracing::warn!(job_id = %job.id, "no free slot for a claimed job; it will be rescued");
            continue;
        };
        let ctx = ctx.clone();
        let tx = runner.record_tx.clone();
        let worker_id = worker_id.to_string();
        let call = runner.calls.register(&job.id);
        runner.tasks.spawn(async move {
            let (outcome, signal) =
                execute::execute_caught(&ctx, &worker_id, job, claimed_at, call.token()).await;
            let _ = tx
                .send((outcome, signal, delivery.acker, call, Some(permit)))
                .await;
        });
    }
    let now_sec = chrono::Utc::now().timestamp();
    let mut park = Vec::new();
    for (id, until) in outcome.waiting {
        let Some(delivery) = by_id.remove(&id) else {
            continue;
        };
        let wait = Duration::from_secs(until.saturating_sub(now_sec).max(0) as u64);
        if wait <= HOLD_AT_MOST {
            deferred.push(
                Instant::now() + wait.max(Duration::from_millis(100)),
                delivery,
            );
        } else {
            park.push((id, until, delivery));
        }
    }
    if !park.is_empty() {
        let ids: Vec<String> = park.iter().map(|(id, _, _)| id.clone()).collect();
        let untils: Vec<i64> = park.iter().map(|(_, u, _)| *u).collect();
        match crate::db::maintenance::park(&ctx.pool, &ids, &untils).await {
            Ok(()) => crate::queue::ack_all(park.iter().map(|(_, _, d)| &d.acker)).await,
            Err(e) => {
                tracing::warn!(error = %e, "could not park budget-blocked jobs; handing them back");
                nack_all(park.into_iter().map(|(_, _, d)| d).collect()).await;
            }
        }
    }
    // Rejected by admission (already failed in Postgres), finished, running elsewhere, or gone.
    if !by_id.is_empty() {
        tracing::debug!(jobs = ?by_id.keys().collect::<Vec<_>>(), "acknowledging deliveries of jobs that are not queued");
    }
    crate::queue::ack_all(by_id.values().map(|d| &d.acker)).await;
}

/// Records outcomes in batches, then acknowledges their deliveries. A transient failure is
/// retried (the outcomes stay in memory: acknowledging first could lose a result); an outcome
/// Postgres refuses is isolated from the rest of its batch and made storable or quarantined
/// (see [`record::record_all`]), so one bad answer never holds back anyone else's.
async fn record_loop(
    ctx: Arc<Ctx>,
    worker_id: String,
    mut rx: mpsc::Receiver<Recorded>,
    shutdown: CancellationToken,
) {
    let mut buf = Vec::with_capacity(RECORD_BATCH);
    loop {
        buf.clear();
        if rx.recv_many(&mut buf, RECORD_BATCH).await == 0 {
            return;
        }
        crate::failpoint::hit("worker.after_call_before_record");
        let outcomes: Vec<Outcome> = buf.iter().map(|(o, ..)| o.clone()).collect();
        let recorded: HashSet<String> = record::record_all(&ctx.pool, &worker_id, &outcomes)
            .await
            .into_iter()
            .collect();
        let retries: Vec<(String, chrono::DateTime<chrono::Utc>)> = outcomes
            .iter()
            .filter(|o| o.status == job_state::RETRY_SCHEDULED && recorded.contains(&o.job_id))
            .filter_map(|o| Some((o.job_id.clone(), o.run_after?)))
            .collect();
        retry_timer::schedule(&ctx, retries, &shutdown);
        // Recorded: the calls' slots are free for the next claims (before the acknowledgements,
        // which may wait on a slow broker).
        for (.., slot) in buf.iter_mut() {
            slot.take();
        }
        crate::failpoint::hit("worker.after_record_before_ack");
        let events: Vec<crate::db::breakers::Event> = buf
            .iter()
            .filter_map(|(o, signal, ..)| {
                Some(crate::db::breakers::Event {
                    deployment: o.deployment.clone()?,
                    job_id: o.job_id.clone(),
                    signal: (*signal)?,
                })
            })
            .collect();
        crate::queue::ack_all(buf.iter().map(|(_, _, acker, ..)| acker)).await;
        buf.clear();
        update_breakers(&ctx, &events).await;
    }
}

/// Feeds recorded outcomes to the deployments' circuit breakers (which pause or resume the
/// deployments whose breaker opened or closed). Best effort: a failure only loses signals.
pub(crate) async fn update_breakers(ctx: &Ctx, events: &[crate::db::breakers::Event]) {
    match crate::db::breakers::observe(&ctx.pool, events, breaker_settings(ctx)).await {
        Ok(changes) => {
            for (deployment, until) in changes.opened {
                tracing::warn!(%deployment, %until, "circuit breaker opened: no calls to this deployment until then");
            }
            for (deployment, _) in changes.closed {
                tracing::info!(%deployment, "circuit breaker closed: the probe call succeeded");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not update circuit breakers"),
    }
}
