//! Provider faults (matrix rows 14, 15): 5xx storms, connection resets, timeouts and malformed
//! answers, from the mock's dials and markers or a fault proxy in front of it.

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::mock::MockSettings;

use crate::common::proxy::FaultProxy;
use crate::common::{Client, TestEnv, wait_until};
use crate::support::*;

/// Matrix row 14: half of all calls answer 500 (`--error-rate 0.5`, rolled per call, so a
/// retry may succeed), plus jobs that fail twice and then recover, jobs that fail on every
/// call (`[[mock:status=500]]`) and jobs that fail four times (their first deployment's
/// attempts). Jobs retry, fall back to the alias's second deployment, and fail only when both
/// are spent, never with more calls than allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_5xx_storm_is_retried_then_falls_back_then_fails_within_the_attempt_budget() {
    let mut env = TestEnv::with_mock(MockSettings {
        error_rate: 0.5,
        ..Default::default()
    })
    .await;
    // A breaker would open at once at a 50% failure rate and let probes through per cool-down;
    // this scenario is about the retry budget, so it runs without breakers.
    without_breakers(&mut env.config);
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let storm = c.submit(many(60, |i| format!("storm {i}"))).await;
    let flaky = c
        .submit(many(10, |i| format!("flaky {i} [[mock:fail-first=2]]")))
        .await;
    let permanent = c
        .submit(many(5, |i| format!("down {i} [[mock:status=500]]")))
        .await;
    let spent = c
        .submit(many(5, |i| format!("spent {i} [[mock:fail-first=4]]")))
        .await;
    env.wait_all_finished(T).await;

    let rows: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT id, status, deployment, jsonb_array_length(errors)::bigint FROM jobs",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let (mut failed, mut fell_back) = (0, 0);
    for (id, status, deployment, errors) in &rows {
        let n = calls(&env, id);
        match status.as_str() {
            "failed" => {
                failed += 1;
                assert_eq!(
                    n, 8,
                    "{id}: a failed job spent 4 attempts on each deployment"
                );
                assert_eq!(*errors, 8, "{id}: every failed attempt is in its history");
            }
            "succeeded" => {
                assert_eq!(*errors as u64, n - 1, "{id}: one error per failed call");
                if deployment.as_deref() == Some("openai/gpt-4.1-mini") {
                    fell_back += 1;
                }
            }
            other => panic!("{id} ended {other}"),
        }
    }
    assert!(
        fell_back > 0,
        "some jobs succeeded on the fallback deployment"
    );
    assert!(
        failed >= permanent.len() && failed < storm.len(),
        "{failed} failed"
    );
    for id in &permanent {
        assert_eq!(
            env.status_of(id).await,
            "failed",
            "{id} fails on every call"
        );
    }
    for id in &spent {
        assert!(
            calls(&env, id) >= 5,
            "{id} spent its first deployment's attempts"
        );
    }
    for id in &flaky {
        assert!(calls(&env, id) >= 3, "{id} failed twice before succeeding");
    }
    assert_eq!(
        env.count("SELECT count(*) FROM attempts WHERE http_status = 500")
            .await as u64,
        env.mock.stats().by_status[&500],
        "every 500 is in the ledger, once"
    );
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}

/// Matrix row 14: the provider's connections are reset and refused for a second and a half,
/// then it is back. Connection errors are retried with backoff and every job succeeds once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_connection_resets_are_retried_until_the_provider_is_back() {
    let mut env = TestEnv::new().await;
    let provider = FaultProxy::start(env.mock.addr).await;
    env.config
        .point_providers_at(&format!("http://{}/v1", provider.addr()));
    env.config.worker.retry_base = Duration::from_millis(300);
    env.config.worker.retry_max = Duration::from_secs(1);
    short_breaker_cooldown(&mut env.config);
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);

    provider.outage();
    let outage = Instant::now();
    let ids = c
        .submit(
            (0..20)
                .map(|i| job_with_attempts(&format!("through a flaky link {i}"), 8))
                .collect(),
        )
        .await;
    wait_until(
        T,
        "every job has failed to connect at least once",
        || async {
            env.count("SELECT count(*) FROM jobs WHERE jsonb_array_length(errors) > 0")
                .await
                == 20
        },
    )
    .await;
    hold_fault(outage, Duration::from_millis(1500)).await;
    provider.pass();

    env.wait_all_finished(T).await;
    assert_all_succeeded(&env, &ids).await;
    for id in &ids {
        assert_eq!(
            calls(&env, id),
            1,
            "{id}: only the call after the outage reached the provider"
        );
    }
    assert_eq!(
        env.count(
            "SELECT count(*) FROM attempts WHERE status = 'failed' AND error_code NOT IN ('connection', 'transport')"
        )
        .await,
        0,
        "every failed attempt was a connection error"
    );
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}

/// Matrix rows 14 and 15: a provider slower than the per-call timeout is cut off at the
/// timeout and retried until the attempts are spent; a slow answer within the timeout is a
/// result after one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_timeouts_are_retried_and_slow_answers_within_the_timeout_succeed() {
    let mut env = TestEnv::new().await;
    env.config.providers.get_mut("openai").unwrap().timeout = Duration::from_secs(1);
    short_breaker_cooldown(&mut env.config);
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let too_slow = c
        .submit(
            (0..4)
                .map(|i| job_with_attempts(&format!("too slow {i} [[mock:sleep=3s]]"), 2))
                .collect(),
        )
        .await;
    let slow = c
        .submit(many(8, |i| format!("slow {i} [[mock:sleep=400ms]]")))
        .await;
    env.wait_all_finished(T).await;

    assert_all_succeeded(&env, &slow).await;
    for id in &slow {
        assert_eq!(calls(&env, id), 1, "{id}: a slow answer is one call");
    }
    for id in &too_slow {
        let (status, code): (String, Option<String>) =
            sqlx::query_as("SELECT status, error->>'code' FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        assert_eq!(
            (status.as_str(), code.as_deref()),
            ("failed", Some("timeout"))
        );
        // 2 attempts on each of 2 deployments at most; a retry that finds the first
        // deployment's breaker open falls back to the second at once, skipping the rest.
        let n = calls(&env, id);
        assert!(
            (2..=4).contains(&n),
            "{id}: {n} calls, expected 2 to 4 (2 attempts on each of 2 deployments)"
        );
    }
    let (min, max): (Option<i32>, Option<i32>) = sqlx::query_as(
        "SELECT min(latency_ms), max(latency_ms) FROM attempts WHERE error_code = 'timeout'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let cut_at_timeout = |ms: Option<i32>| ms.is_some_and(|ms| (900..2500).contains(&ms));
    assert!(
        cut_at_timeout(min) && cut_at_timeout(max),
        "timed-out calls are cut at about 1 s ({min:?}..{max:?} ms)"
    );
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}

/// Matrix row 14: a 200 whose body is not JSON is a retryable failure, never a result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_provider_answers_are_retried_then_fail_closed() {
    let mut env = TestEnv::new().await;
    short_breaker_cooldown(&mut env.config);
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let broken = c
        .submit(
            (0..5)
                .map(|i| job_with_attempts(&format!("broken {i} [[mock:malformed]]"), 2))
                .collect(),
        )
        .await;
    let fine = c.submit(many(5, |i| format!("fine {i}"))).await;
    env.wait_all_finished(T).await;

    assert_all_succeeded(&env, &fine).await;
    for id in &broken {
        let (status, code, response): (String, Option<String>, Option<Value>) =
            sqlx::query_as("SELECT status, error->>'code', response FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        assert_eq!(status, "failed");
        assert_eq!(code.as_deref(), Some("malformed_response"));
        assert!(
            response.is_none(),
            "a malformed body is never stored as a result"
        );
        // 2 attempts on each of 2 deployments at most; a retry that finds the first
        // deployment's breaker open falls back to the second at once, skipping the rest.
        let n = calls(&env, id);
        assert!(
            (2..=4).contains(&n),
            "{id}: {n} calls, expected 2 to 4 (2 attempts on each of 2 deployments)"
        );
    }
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}
