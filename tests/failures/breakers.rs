//! Circuit breakers: a failure rate over a sliding window cuts a deployment off for a
//! cool-down, then one probe call decides whether it opens again or closes; a low error rate
//! under load never opens it.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::common::{Client, TestEnv, wait_until};
use super::{T, attempts, single, submit};

const DEPLOYMENT: &str = "openai/gpt-4o-mini";

async fn breaker(env: &TestEnv) -> Option<(String, i32, Option<DateTime<Utc>>)> {
    sqlx::query_as(
        "SELECT state, window_failures, opened_until FROM circuit_breakers WHERE deployment = $1",
    )
    .bind(DEPLOYMENT)
    .fetch_optional(&env.pool)
    .await
    .unwrap()
}

/// A test environment whose breakers open once 2 calls were made and half of them failed,
/// for `cooldown`.
async fn env_with_breakers(cooldown: Duration) -> TestEnv {
    let mut env = TestEnv::new().await;
    env.config.worker.breaker_failure_rate = 50;
    env.config.worker.breaker_min_calls = 2;
    env.config.worker.breaker_cooldown = cooldown;
    env
}

/// Fails two jobs on the deployment and waits until its breaker is open and its pause shared;
/// returns when the cool-down ends.
async fn open_breaker(env: &TestEnv, c: &Client) -> DateTime<Utc> {
    for i in 0..2 {
        let id = submit(c, &single(&format!("down {i} [[mock:status=503]]"), 1)).await;
        assert_eq!(c.wait_job(&id, T).await["status"], "failed");
    }
    wait_until(T, "the breaker opens and pauses the deployment", || async {
        let paused = env
            .count(&format!(
                "SELECT count(*) FROM budgets WHERE key = '{DEPLOYMENT}' AND paused_until > now()"
            ))
            .await;
        matches!(breaker(env).await, Some((s, 0, Some(_))) if s == "open") && paused == 1
    })
    .await;
    breaker(env).await.and_then(|b| b.2).unwrap()
}

#[tokio::test]
async fn a_failing_deployment_is_cut_off_then_one_probe_closes_its_breaker() {
    let env = env_with_breakers(Duration::from_secs(2)).await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let opened_until = open_breaker(&env, &c).await;

    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(submit(&c, &single(&format!("healthy again {i}"), 1)).await);
    }
    for id in &ids {
        assert_eq!(c.wait_job(id, T).await["status"], "succeeded");
    }
    let mut ledger = Vec::new();
    for id in &ids {
        ledger.extend(attempts(&env.pool, id).await);
    }
    ledger.sort_by_key(|a| a.started_at);
    let slack = chrono::Duration::milliseconds(50);
    assert!(
        ledger[0].started_at + slack >= opened_until,
        "nothing was sent during the cool-down: {:?} < {opened_until}",
        ledger[0].started_at
    );
    for later in &ledger[1..] {
        assert!(
            later.started_at >= ledger[0].finished_at,
            "one probe went first, alone: {ledger:?}"
        );
    }
    wait_until(T, "the breaker closes", || async {
        matches!(breaker(&env).await, Some((s, 0, None)) if s == "closed")
    })
    .await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_for_another_cool_down() {
    let cooldown = Duration::from_millis(1500);
    let env = env_with_breakers(cooldown).await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    open_breaker(&env, &c).await;

    // The probe fails once, then its retry (after the second cool-down) succeeds.
    let id = submit(&c, &single("recovering [[mock:fail-first=1]]", 3)).await;
    let done = c.wait_job(&id, T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let ledger = attempts(&env.pool, &id).await;
    assert_eq!(ledger.len(), 2);
    let gap = ledger[1].started_at - ledger[0].finished_at;
    assert!(
        gap >= chrono::Duration::milliseconds(1200),
        "the retry waited for the reopened breaker, not just its backoff: {gap:?}"
    );
    wait_until(T, "the breaker closes", || async {
        matches!(breaker(&env).await, Some((s, _, None)) if s == "closed")
    })
    .await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn fatal_errors_and_refusals_never_open_a_breaker() {
    let env = env_with_breakers(Duration::from_secs(30)).await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    for prompt in [
        "bad [[mock:status=400]]",
        "bad [[mock:status=422]]",
        "no [[mock:refuse]]",
        "bad [[mock:status=404]]",
    ] {
        let id = submit(&c, &single(prompt, 1)).await;
        c.wait_job(&id, T).await;
    }
    let id = submit(&c, &single("fine", 1)).await;
    assert_eq!(c.wait_job(&id, T).await["status"], "succeeded");
    assert!(
        breaker(&env).await.is_none_or(|(s, _, _)| s == "closed"),
        "{:?}",
        breaker(&env).await
    );
    app.stop().await;
    env.cleanup().await;
}

/// A job whose deployment's breaker is open does not wait out the cool-down when its alias has
/// another deployment: it falls back at once, and its history says why.
#[tokio::test]
async fn a_job_on_a_tripped_deployment_falls_back_instead_of_waiting_out_the_cool_down() {
    let env = env_with_breakers(Duration::from_secs(60)).await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let opened_until = open_breaker(&env, &c).await;

    // `summarize` runs on openai/gpt-4o-mini, then openai/gpt-4.1-mini.
    let id = submit(&c, &super::common::job("while the breaker is open")).await;
    let done = c.wait_job(&id, T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["deployment"], "openai/gpt-4.1-mini", "{done}");
    assert!(
        done["errors"].to_string().contains("circuit_open"),
        "{}",
        done["errors"]
    );
    let ledger = attempts(&env.pool, &id).await;
    assert_eq!(ledger.len(), 1, "no call to the tripped deployment");
    assert!(
        ledger[0].finished_at < opened_until,
        "answered during the cool-down, not after it"
    );
    app.stop().await;
    env.cleanup().await;
}

/// Submits `n` jobs on the breaker's deployment in one request; returns their ids.
async fn submit_many(c: &Client, n: usize, prompt: &str, max_attempts: u32) -> Vec<String> {
    let jobs: Vec<serde_json::Value> = (0..n)
        .map(|i| single(&format!("{prompt} {i}"), max_attempts))
        .collect();
    c.submit(jobs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_percent_transient_error_rate_under_load_never_opens_the_breaker() {
    let env = TestEnv::with_mock(sluice::mock::MockSettings {
        error_rate: 0.05,
        seed: 5,
        ..Default::default()
    })
    .await;
    // The default dials: open at 50% failures over 30 s once 20 calls were made.
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let ids = submit_many(&c, 400, "steady load", 4).await;
    env.wait_all_finished(T).await;
    let failed_calls = env.mock.stats().by_status.get(&500).copied().unwrap_or(0);
    assert!(
        failed_calls > 5,
        "the mock failed some calls: {failed_calls}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status <> 'succeeded'")
            .await,
        0,
        "every job succeeded on a retry"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE errors::text LIKE '%circuit_open%'")
            .await,
        0
    );
    let (state, calls): (String, i32) = sqlx::query_as(
        "SELECT state, window_calls + prev_calls FROM circuit_breakers WHERE deployment = $1",
    )
    .bind(DEPLOYMENT)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(state, "closed");
    assert!(calls > 20, "the window counted the calls: {calls}");
    assert_eq!(ids.len(), 400);
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_failing_every_call_opens_its_breaker_once_the_window_has_enough_calls() {
    let env = TestEnv::with_mock(sluice::mock::MockSettings {
        error_rate: 1.0,
        ..Default::default()
    })
    .await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let first = submit_many(&c, 19, "down", 1).await;
    for id in &first {
        assert_eq!(c.wait_job(id, T).await["status"], "failed");
    }
    assert!(
        breaker(&env).await.is_some_and(|(s, _, _)| s == "closed"),
        "19 calls are too few to judge: {:?}",
        breaker(&env).await
    );
    submit_many(&c, 5, "still down", 1).await;
    wait_until(T, "the breaker opens", || async {
        breaker(&env).await.is_some_and(|(s, _, _)| s == "open")
    })
    .await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn synchronous_calls_feed_the_breaker_in_rounds_and_a_signal_the_database_refuses_does_not_stop_the_feed()
 {
    let env = env_with_breakers(Duration::from_secs(60)).await;
    let app = env
        .start(sluice::app::Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&app, &env.key("acme").await);
    // Poison first: a deployment name Postgres cannot store (a NUL byte) fails its round.
    app.ctx.breaker_feed.send(sluice::db::breakers::Event {
        deployment: "openai/bad\0name".into(),
        job_id: "job_poison".into(),
        signal: sluice::domain::breaker::Signal::Failure,
    });
    // Failing synchronous calls: their signals still reach the deployment's breaker.
    for i in 0..2 {
        let c = c.clone();
        tokio::spawn(async move {
            let body = serde_json::json!({"model": DEPLOYMENT, "max_tokens": 8,
                "messages": [{"role": "user", "content": format!("down {i} [[mock:status=503]]")}]});
            c.post("/v1/chat/completions", &body, None).await
        });
    }
    wait_until(
        T,
        "the synchronous calls' failures open the breaker",
        || async { matches!(breaker(&env).await, Some((s, _, Some(_))) if s == "open") },
    )
    .await;
    let (status, ready) = c.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["roles"]["breaker_feed"]["up"], true, "{ready}");
    assert_eq!(ready["roles"]["breaker_feed"]["restarts"], 0, "{ready}");
    env.cleanup().await;
}
