//! Load with faults: the soak of 3,000 jobs through an API process and two `sluice worker`
//! processes with transient provider errors, a worker killed with `kill -9` and every broker
//! connection closed once. (Retry timing is measured in `tests/retry_timing.rs`, a binary of its
//! own, so the soak's load and teardown never share the machine with it.)

mod common;
#[path = "faults/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use sluice::mock::MockSettings;

use crate::common::proxy::FaultProxy;
use crate::common::{Client, TestEnv, wait_until};
use crate::support::*;

/// Submits `jobs` in requests of 1,000; returns every id.
async fn submit_chunks(c: &Client, jobs: Vec<serde_json::Value>) -> Vec<String> {
    let mut ids = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(1000) {
        ids.extend(c.submit(chunk.to_vec()).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_jobs_survive_transient_errors_a_killed_worker_and_a_broker_reset() {
    let mut env = TestEnv::with_mock(MockSettings {
        error_rate: 0.05,
        seed: 8,
        latency: Duration::from_millis(5),
        ..Default::default()
    })
    .await;
    let broker = FaultProxy::in_front_of(&env.config.amqp.url).await;
    env.config.amqp.url = broker.url_for(&env.config.amqp.url);
    // The policy as shipped: 1 s base backoff.
    env.config.worker.retry_base = Duration::from_secs(1);
    env.config.worker.retry_max = Duration::from_secs(8);
    let api = env.start(api_and_maintenance()).await;
    let c = Client::new(&api, &env.key("acme").await);
    let globex = Client::new(&api, &env.key("globex").await);
    let mut doomed = WorkerProcess::spawn(&env);
    let _survivor = WorkerProcess::spawn(&env);

    let started = Instant::now();
    let mut ids = submit_chunks(&c, many(2000, |i| format!("soak acme {i}"))).await;
    ids.extend(submit_chunks(&globex, many(1000, |i| format!("soak globex {i}"))).await);
    assert_eq!(ids.len(), 3000);

    let limit = Duration::from_secs(300);
    wait_until(limit, "a fifth of the jobs finish", || async {
        finished(&env).await >= 600
    })
    .await;
    doomed.signal("KILL");
    doomed.wait_exit(T).await;
    wait_until(limit, "half of the jobs finish", || async {
        finished(&env).await >= 1500
    })
    .await;
    let before = broker.accepted();
    broker.reset_all();
    wait_until(T, "sluice reconnects to the broker", || async {
        broker.accepted() > before
    })
    .await;
    env.wait_all_finished(limit.saturating_sub(started.elapsed()))
        .await;
    let wall = started.elapsed();
    assert!(
        wall < limit,
        "every job terminal within 5 minutes: {wall:?}"
    );

    env.assert_recorded(&ids).await;
    assert_all_succeeded(&env, &ids).await;
    env.check_exactly_once(&env.mock.stats()).await;
    let failed_calls = env.mock.stats().by_status.get(&500).copied().unwrap_or(0);
    let l = sluice::bench::lateness(&sluice::db::jobs::retry_gaps(&env.pool).await.unwrap());
    eprintln!(
        "soak: 3000 jobs terminal in {:.1}s; {failed_calls} transient 500s; {} retries, \
         lateness p50 {:.2}s p99 {:.2}s max {:.2}s",
        wall.as_secs_f64(),
        l.retries,
        l.p50,
        l.p99,
        l.max
    );
    assert!(failed_calls > 50, "the mock failed calls: {failed_calls}");
    api.stop().await;
    env.cleanup().await;
}
