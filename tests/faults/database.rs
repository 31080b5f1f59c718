//! Database faults (matrix rows 10, 11, 12, 17) on this test's own database: killed backends,
//! a locked ledger, and an outage through a fault proxy.

use std::time::{Duration, Instant};

use crate::common::proxy::FaultProxy;
use crate::common::{Client, TestEnv, job, wait_until};
use crate::support::*;

/// Matrix row 10: sluice's database connections are killed four times mid-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connections_killed_mid_run_are_replaced_and_nothing_runs_twice() {
    let mut env = TestEnv::new().await;
    env.config.worker.concurrency = 8;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut ids = c
        .submit(many(100, |i| {
            format!("db kill run {i} [[mock:sleep=100ms]]")
        }))
        .await;
    for round in 1..=4 {
        wait_until(T, "jobs progress between kills", || async {
            finished(&env).await >= round * 20
        })
        .await;
        let killed = env.terminate_backends().await;
        assert!(killed > 0, "sluice had connections to kill");
        // A submission right after the kill may fail on a dead connection, but it is then
        // refused as a whole, never half-accepted.
        let (status, body) = c
            .post(
                "/v1/jobs",
                &job(&format!("submitted after kill {round}")),
                None,
            )
            .await;
        if status == 200 {
            ids.push(body["id"].as_str().unwrap().to_string());
        } else {
            assert!(status >= 500, "{status} {body}");
        }
    }

    env.wait_all_finished(T).await;
    env.assert_recorded(&ids).await;
    assert_eq!(
        env.count("SELECT count(*) FROM jobs").await,
        ids.len() as i64,
        "a refused submission left no job behind"
    );
    assert_all_succeeded(&env, &ids).await;
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}

/// Matrix row 12: `attempts` is locked for four seconds while jobs run. Results wait for the
/// lock (nothing is acknowledged before it is recorded), the API keeps accepting, and when the
/// lock goes every result is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_ledger_delays_results_but_loses_and_duplicates_nothing() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    c.submit(many(2, |i| format!("before the stall {i}"))).await;
    env.wait_all_finished(T).await;

    let mut lock = env.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE attempts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let stall = Instant::now();
    let t = Instant::now();
    let ids = c
        .submit(many(30, |i| format!("during the stall {i}")))
        .await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the API accepts jobs while the ledger is locked (took {:?})",
        t.elapsed()
    );
    wait_until(T, "the provider answered every job", || async {
        ids.iter().all(|id| calls(&env, id) == 1)
    })
    .await;
    assert_eq!(
        finished(&env).await,
        2,
        "no result is recorded (nor acknowledged) while the ledger is locked"
    );
    hold_fault(stall, Duration::from_secs(4)).await;
    lock.rollback().await.unwrap();

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

/// Matrix row 11 (isolated): the database disappears for three seconds, as in a restart
/// (connections reset, new ones refused). The API answers errors instead of hanging, and every
/// job it accepted, before or after, finishes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_answered_with_errors_and_accepted_jobs_finish_after_it() {
    let mut env = TestEnv::new().await;
    let db = FaultProxy::in_front_of(&env.db_url).await;
    env.config.database.url = db.url_for(&env.db_url);
    env.config.database.acquire_timeout = Duration::from_secs(2);
    env.config.worker.concurrency = 4;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut ids = c
        .submit(many(20, |i| {
            format!("db outage run {i} [[mock:sleep=300ms]]")
        }))
        .await;
    wait_until(T, "some jobs finish first", || async {
        finished(&env).await >= 4
    })
    .await;

    db.outage();
    let outage = Instant::now();
    // Budgets are reserved in Postgres at claim time: with it gone, no new call may start. Calls
    // already in flight (at most `concurrency`) may finish.
    let calls_at_outage = env.mock.stats().requests;
    let mut answers = Vec::new();
    for i in 0..2 {
        let t = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(8),
            c.post("/v1/jobs", &job(&format!("during the db outage {i}")), None),
        )
        .await;
        answers.push((answer, t.elapsed()));
    }
    hold_fault(outage, Duration::from_secs(3)).await;
    let calls_during_outage = env.mock.stats().requests - calls_at_outage;
    db.pass();

    assert!(
        calls_during_outage <= 4,
        "{calls_during_outage} provider calls started while the database (and so every budget) \
         was unreachable; only the 4 in flight may finish"
    );
    for (answer, took) in &answers {
        let Ok((status, body)) = answer else {
            panic!("POST /v1/jobs had no answer after {took:?} during a database outage");
        };
        assert_eq!(*status, 503, "a database outage is a 503: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    let (status, body) = c.post("/v1/jobs", &job("after the db outage"), None).await;
    assert_eq!(status, 200, "{body}");
    ids.push(body["id"].as_str().unwrap().to_string());

    env.wait_all_finished(T).await;
    assert_all_succeeded(&env, &ids).await;
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 21);
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}
