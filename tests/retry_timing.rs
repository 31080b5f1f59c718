//! Retry timing measured from the ledger against the policy: a retry starts within a second of
//! the delay the policy scheduled. A binary of its own: run after the soak in the same process,
//! the soak's teardown still loaded the two cores and made this measure the soak.

mod common;
#[path = "faults/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::Duration;

use sluice::mock::MockSettings;

use crate::common::{Client, TestEnv};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_starts_within_a_second_of_the_delay_the_policy_scheduled() {
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
    let ids = c.submit(many(200, |i| format!("timed {i}"))).await;
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
