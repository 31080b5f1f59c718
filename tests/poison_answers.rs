//! Poison from the provider side: answers Postgres cannot store, headers with absurd numbers,
//! redirects, and a panic inside a call. Each ends as a recorded outcome of its own job (a
//! success or a failed attempt with a clear code) while every other job proceeds.

mod common;
#[path = "faults/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sluice::app::Roles;

use crate::common::{Client, TestEnv, job, wait_until};
use crate::support::*;

/// The content of a finished job's answer.
fn content(job: &Value) -> String {
    job["response"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_model_answer_is_stored_replaced_and_billed_and_the_rest_of_its_batch_succeeds()
{
    let env = TestEnv::new().await;
    let app = env.up().await;
    let acme = Client::new(&app, &env.key("acme").await);
    let globex = Client::new(&app, &env.key("globex").await);
    let mut acme_jobs = many(30, |i| format!("acme {i}"));
    acme_jobs.insert(7, job("answer with a nul [[mock:nul]]"));
    let acme_ids = acme.submit(acme_jobs).await;
    let globex_ids = globex.submit(many(30, |i| format!("globex {i}"))).await;
    env.wait_all_finished(Duration::from_secs(30)).await;

    assert_all_succeeded(&env, &acme_ids).await;
    assert_all_succeeded(&env, &globex_ids).await;
    let poisoned = acme.wait_job(&acme_ids[7], T).await;
    let text = content(&poisoned);
    assert!(
        text.contains("with a NUL \u{FFFD} inside"),
        "the NUL is replaced with U+FFFD: {text:?}"
    );
    let (status, cost): (String, rust_decimal::Decimal) =
        sqlx::query_as("SELECT status, cost_usd FROM attempts WHERE job_id = $1")
            .bind(&acme_ids[7])
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(status, "succeeded");
    assert!(cost > rust_decimal::Decimal::ZERO, "the answer is billed");
    assert_eq!(calls(&env, &acme_ids[7]), 1, "called once, never again");
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_retry_after_and_rate_limit_reset_headers_do_not_panic_the_call() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut jobs = many(10, |i| format!("plain {i}"));
    jobs.push(job_with_attempts(
        "down [[mock:status=503]] [[mock:retry-after=1e20]]",
        1,
    ));
    jobs.push(job("spent [[mock:ratelimit-reset=99999999999999999999h]]"));
    jobs.push(job_with_attempts(
        "down [[mock:status=503]] [[mock:retry-after=-inf]]",
        1,
    ));
    let ids = c.submit(jobs).await;
    env.wait_all_finished(Duration::from_secs(30)).await;

    assert_all_succeeded(&env, &ids[..10]).await;
    for id in [&ids[10], &ids[12]] {
        let j = c.wait_job(id, T).await;
        assert_eq!(j["status"], "failed", "{j}");
        assert_eq!(j["error"]["code"], "http_503", "{j}");
    }
    let spent = c.wait_job(&ids[11], T).await;
    assert_eq!(spent["status"], "succeeded", "{spent}");
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_the_provider_is_not_followed_and_fails_the_job_clearly() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let ids = c
        .submit(vec![
            job("go elsewhere [[mock:redirect]]"),
            job("stay here"),
        ])
        .await;
    let redirected = c.wait_job(&ids[0], T).await;
    assert_eq!(redirected["status"], "failed", "{redirected}");
    assert_eq!(redirected["error"]["code"], "provider_redirect");
    assert_eq!(redirected["error"]["http_status"], 307);
    let message = redirected["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("does not follow redirects") && message.contains("/mock/redirected"),
        "{message}"
    );
    assert_eq!(c.wait_job(&ids[1], T).await["status"], "succeeded");
    let stats = env.mock.stats();
    assert_eq!(
        stats.redirects_followed, 0,
        "no request followed the redirect"
    );
    assert_eq!(calls(&env, &ids[0]), 1, "a redirect is not retried");
    env.check_exactly_once(&stats).await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_inside_a_call_is_a_failed_attempt_and_the_worker_serves_on() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let api = env
        .start(Roles {
            api: true,
            maintenance: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&api, &env.key("acme").await);
    let mut worker = env.spawn_worker(
        dir.path(),
        &[("SLUICE_FAILPOINT", sluice::worker::execute::PANIC_FAILPOINT)],
    );
    let ids = c.submit(many(20, |i| format!("panics first {i}"))).await;
    env.wait_all_finished(T).await;

    // Every first attempt panicked inside its call; each is in the ledger as a failed attempt
    // with a clear code, and the retry (in the same worker process) succeeded.
    assert_all_succeeded(&env, &ids).await;
    let panicked: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT job_id, attempt, status FROM attempts WHERE error_code = $1 ORDER BY job_id",
    )
    .bind(sluice::worker::execute::PANICKED)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(panicked.len(), ids.len(), "{panicked:?}");
    assert!(
        panicked.iter().all(|(_, a, s)| *a == 1 && s == "failed"),
        "{panicked:?}"
    );
    for id in &ids {
        let j = c.wait_job(id, T).await;
        assert_eq!(j["attempts"], 2, "{j}");
        assert!(
            j["errors"][0]["code"] == json!(sluice::worker::execute::PANICKED),
            "{j}"
        );
    }
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker process lives on"
    );
    // And it keeps serving new work.
    let more = c.submit(many(5, |i| format!("after the panics {i}"))).await;
    wait_until(T, "the later jobs finish", || async {
        env.count(&format!(
            "SELECT count(*) FROM jobs WHERE status = 'succeeded' AND id IN ({})",
            more.iter()
                .map(|i| format!("'{i}'"))
                .collect::<Vec<_>>()
                .join(",")
        ))
        .await
            == 5
    })
    .await;
    env.check_invariants().await;
    api.stop().await;
    env.cleanup().await;
}
