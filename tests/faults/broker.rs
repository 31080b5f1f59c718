//! Broker faults (matrix rows 4, 5, 6, 8), each through a fault proxy in front of this test's
//! own AMQP connections, or on this test's own topology.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::proxy::FaultProxy;
use crate::common::{Client, TestEnv, job, wait_until};
use crate::support::*;

/// Matrix row 5: every broker connection closed mid-run, three times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_reset_mid_run_lose_nothing_and_run_nothing_twice() {
    let mut env = TestEnv::new().await;
    let broker = FaultProxy::in_front_of(&env.config.amqp.url).await;
    env.config.amqp.url = broker.url_for(&env.config.amqp.url);
    env.config.worker.concurrency = 8;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    broker.set_latency(Duration::from_millis(2));

    let mut ids = c
        .submit(many(120, |i| format!("reset run {i} [[mock:sleep=100ms]]")))
        .await;
    for round in 1..=3 {
        let started = Instant::now();
        while finished(&env).await < round * 25 {
            assert!(
                started.elapsed() < T,
                "no progress for {T:?} before reset {round}; jobs by status: {}",
                env.job_summary().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = broker.accepted();
        broker.reset_all();
        // Jobs submitted while the publisher reconnects are not lost either.
        ids.extend(
            c.submit(many(5, |i| format!("after reset {round}.{i}")))
                .await,
        );
        wait_until(T, "sluice reconnects through the proxy", || async {
            broker.accepted() > before
        })
        .await;
    }

    env.wait_all_finished(T).await;
    env.assert_recorded(&ids).await;
    assert_all_succeeded(&env, &ids).await;
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}

/// Matrix row 4 (isolated): the broker goes away for four seconds. The API keeps accepting
/// jobs into Postgres (the outbox), `/readyz` says the broker is down, and once it is back the
/// relay publishes what was left behind and the workers reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_keeps_the_api_accepting_into_the_outbox_and_workers_reconnect() {
    let mut env = TestEnv::new().await;
    let broker = FaultProxy::in_front_of(&env.config.amqp.url).await;
    env.config.amqp.url = broker.url_for(&env.config.amqp.url);
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut ids = c
        .submit(many(3, |i| format!("before the outage {i}")))
        .await;
    env.wait_all_finished(T).await;

    broker.outage();
    let outage = Instant::now();
    let mut during = Vec::new();
    for round in 0..3 {
        let t = Instant::now();
        during.extend(
            c.submit(many(10, |i| format!("during the outage {round}.{i}")))
                .await,
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "POST /v1/jobs took {:?} during a broker outage",
            t.elapsed()
        );
    }
    let in_outbox = env
        .count(&format!(
            "SELECT count(*) FROM jobs WHERE id IN ({}) AND status = 'queued' AND publish_after IS NOT NULL",
            during
                .iter()
                .map(|id| format!("'{id}'"))
                .collect::<Vec<_>>()
                .join(",")
        ))
        .await;
    assert_eq!(
        in_outbox, 30,
        "jobs accepted during the outage wait in Postgres for the relay"
    );
    assert_eq!(readyz(&c).await, 503, "/readyz reports the broker down");
    wait_until(
        T,
        "the relay and workers keep trying the broker",
        || async { broker.refused() >= 5 },
    )
    .await;
    hold_fault(outage, Duration::from_secs(4)).await;
    broker.pass();

    ids.extend(during);
    env.wait_all_finished(T).await;
    env.assert_recorded(&ids).await;
    assert_all_succeeded(&env, &ids).await;
    env.check_exactly_once(&env.mock.stats()).await;
    assert_eq!(readyz(&c).await, 200, "/readyz recovers with the broker");
    app.stop().await;
    env.cleanup().await;
}

/// Matrix row 6 (isolated): the broker hangs (accepts bytes, answers nothing, as under
/// `kill -STOP`) for six seconds. A submission is already safe in Postgres before its work
/// message is published, so the API must answer promptly and leave publishing to the relay;
/// once the broker answers again everything runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_does_not_hang_the_api_and_work_resumes_when_it_answers() {
    let mut env = TestEnv::new().await;
    let broker = FaultProxy::in_front_of(&env.config.amqp.url).await;
    env.config.amqp.url = broker.url_for(&env.config.amqp.url);
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    c.submit(many(2, |i| format!("before the hang {i}"))).await;
    env.wait_all_finished(T).await;

    broker.blackhole();
    let hang = Instant::now();
    let mut during = job("submitted while the broker hangs");
    during["custom_id"] = json!("during-hang");
    let post = {
        let c = Client {
            http: c.http.clone(),
            base: c.base.clone(),
            key: c.key.clone(),
        };
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = c.post("/v1/jobs", &during, None).await;
            (answer, started.elapsed())
        })
    };
    wait_until(T, "the job is recorded in Postgres", || async {
        env.count("SELECT count(*) FROM jobs WHERE custom_id = 'during-hang'")
            .await
            == 1
    })
    .await;
    let ready_during_hang = tokio::time::timeout(Duration::from_secs(3), readyz(&c)).await;
    assert_eq!(
        ready_during_hang,
        Ok(503),
        "/readyz makes a broker round trip, so it reports a hung broker"
    );
    hold_fault(hang, Duration::from_secs(6)).await;
    broker.pass();

    let ((status, body), answered_in) = tokio::time::timeout(T, post).await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    env.wait_all_finished(T).await;
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status <> 'succeeded'")
            .await,
        0
    );
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
    assert!(
        answered_in < Duration::from_secs(3),
        "POST /v1/jobs during a broker hang must answer promptly (the job is committed before \
         its publish; the relay publishes it later), but it answered after {answered_in:?}, \
         when the broker came back (the hang lasted 6 s)"
    );
}

/// Matrix row 8: the binding of a tenant's work queue disappears at run time, so publishes
/// route nowhere. A returned (unroutable) message counts as a failed publish; the relay retries
/// after declaring the topology again, and every job runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_publish_is_retried_after_the_topology_is_declared_again() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    c.submit(many(2, |i| format!("before the unbind {i}")))
        .await;
    env.wait_all_finished(T).await;

    let conn = lapin::Connection::connect(&env.config.amqp.url, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topo = app.ctx.broker.topology();
    ch.queue_unbind(
        topo.work_queue("acme").as_str().into(),
        topo.work_exchange().as_str().into(),
        "acme".into(),
        Default::default(),
    )
    .await
    .unwrap();
    conn.close(200, "unbound".into()).await.unwrap();

    let ids = c.submit(many(5, |i| format!("while unroutable {i}"))).await;
    env.wait_all_finished(T).await;
    assert_all_succeeded(&env, &ids).await;
    assert!(
        ids.iter().all(|id| calls(&env, id) == 1),
        "no job ran twice"
    );
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}

/// A broker blip while long calls run: the worker reconnects at once and takes new work while
/// those calls finish in the background (they keep their call slots, and are recorded once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_reset_does_not_wait_for_long_calls_before_taking_new_work() {
    let mut env = TestEnv::new().await;
    let broker = FaultProxy::in_front_of(&env.config.amqp.url).await;
    env.config.amqp.url = broker.url_for(&env.config.amqp.url);
    env.config.worker.concurrency = 4;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let slow = c
        .submit(many(2, |i| format!("long call {i} [[mock:sleep=12s]]")))
        .await;
    wait_until(T, "both long calls are running", || async {
        env.count("SELECT count(*) FROM jobs WHERE status = 'running'")
            .await
            == 2
    })
    .await;
    broker.reset_all();
    let quick = c
        .submit(many(3, |i| format!("quick after the reset {i}")))
        .await;
    wait_until(T, "the quick jobs finish", || async {
        env.count(&format!(
            "SELECT count(*) FROM jobs WHERE id IN ({}) AND status = 'succeeded'",
            quick
                .iter()
                .map(|id| format!("'{id}'"))
                .collect::<Vec<_>>()
                .join(",")
        ))
        .await
            == 3
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'running'")
            .await,
        2,
        "the quick jobs ran while the long calls were still in flight"
    );
    env.wait_all_finished(T).await;
    let mut ids = slow;
    ids.extend(quick);
    env.assert_recorded(&ids).await;
    assert_all_succeeded(&env, &ids).await;
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}
