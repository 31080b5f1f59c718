//! Load with faults: the soak of 3,000 jobs through an API process and two `sluice worker`
//! processes with transient provider errors, a worker killed with `kill -9` and every broker
//! connection closed once; and retry timing measured from the ledger against the policy.

mod common;
#[path = "faults/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use sluice::mock::MockSettings;

use crate::common::proxy::FaultProxy;
use crate::common::{Client, TestEnv, wait_until};
use crate::support::*;

/// The soak saturates the machine, which would make the retry-timing measurement measure the
/// soak: the tests of this file run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Submits `jobs` in requests of 1,000; returns every id.
async fn submit_chunks(c: &Client, jobs: Vec<serde_json::Value>) -> Vec<String> {
    let mut ids = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(1000) {
        let (status, body) = c.post("/v1/jobs", &json!({"jobs": chunk}), None).await;
        assert_eq!(status, 200, "{body}");
        ids.extend(support::ids(&body));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_jobs_survive_transient_errors_a_killed_worker_and_a_broker_reset() {
    let _alone = ONE_AT_A_TIME.lock().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_starts_within_a_second_of_the_delay_the_policy_scheduled() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut env = TestEnv::with_mock(MockSettings {
        error_rate: 0.2,
        seed: 3,
        latency: Duration::from_millis(10),
        ..Default::default()
    })
    .await;
    env.config.worker.retry_base = Duration::from_secs(1);
    env.config.worker.retry_max = Duration::from_secs(4);
    // The stager's round as shipped, so only the retry timers can make retries punctual.
    env.config.worker.relay_interval = Duration::from_millis(500);
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let ids = submit(&c, many(200, |i| format!("timed {i}"))).await;
    env.wait_all_finished(T).await;
    assert_all_succeeded(&env, &ids).await;

    let gaps = sluice::db::jobs::retry_gaps(&env.pool).await.unwrap();
    let l = sluice::bench::lateness(&gaps);
    assert!(l.retries >= 20, "enough retries to judge: {l:?}");
    assert!(
        gaps.iter().all(|g| g.actual >= g.scheduled - 0.1),
        "no retry ran before its time: {gaps:?}"
    );
    assert!(l.p99 <= 1.0, "p99 lateness within 1 s of the policy: {l:?}");
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}
