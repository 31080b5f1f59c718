//! Cancellation over the API: waiting jobs stop at once, running ones have their provider call
//! aborted, batches cancel every unfinished job, finished jobs are a 409.

use std::time::Instant;

use serde_json::json;

use super::common::{Client, TestEnv, job, wait_until};
use super::{T, api_only, attempts, submit};

#[tokio::test]
async fn a_queued_or_waiting_job_is_cancelled_at_once_and_a_finished_one_is_a_conflict() {
    let env = TestEnv::new().await;
    let app = env.start(api_only()).await;
    let c = Client::new(&app, &env.key("acme").await);
    let queued = submit(&c, &job("never runs")).await;
    let waiting = submit(&c, &job("waits for a retry")).await;
    sqlx::query(
        "UPDATE jobs SET status = 'retry_scheduled', run_after = now() + interval '1 hour' WHERE id = $1",
    )
    .bind(&waiting)
    .execute(&env.pool)
    .await
    .unwrap();

    for id in [&queued, &waiting] {
        let (status, body) = c
            .post(&format!("/v1/jobs/{id}/cancel"), &json!({}), None)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "cancelled");
        assert_eq!(body["error"]["code"], "cancelled");
        assert!(body["finalized_at"].is_string());
    }
    let (status, err) = c
        .post(&format!("/v1/jobs/{queued}/cancel"), &json!({}), None)
        .await;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already finished (cancelled)"),
        "{err}"
    );
    assert_eq!(
        c.post("/v1/jobs/job_nope/cancel", &json!({}), None).await.0,
        404
    );
    let globex = Client::new(&app, &env.key("globex").await);
    let (status, _) = globex
        .post(&format!("/v1/jobs/{queued}/cancel"), &json!({}), None)
        .await;
    assert_eq!(status, 404, "another tenant's job is not found");
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn cancelling_a_running_job_aborts_its_provider_call_and_bills_nothing() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let id = submit(&c, &job("a long answer [[mock:sleep=30s]]")).await;
    wait_until(T, "the provider call is in flight", || async {
        env.mock.stats().calls_by_job.contains_key(&id) && env.status_of(&id).await == "running"
    })
    .await;

    let asked = Instant::now();
    let (status, body) = c
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["status"], "running",
        "a running job cannot stop at once"
    );
    assert!(body["cancel_requested_at"].is_string(), "{body}");
    let done = c.wait_job(&id, T).await;
    assert!(
        asked.elapsed().as_secs() < 10,
        "the call was aborted, not waited for"
    );
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["error"]["code"], "cancelled");
    let ledger = attempts(&env.pool, &id).await;
    assert_eq!(ledger.len(), 1, "the aborted attempt is in the ledger");
    assert_eq!(ledger[0].status, "cancelled");
    assert_eq!(ledger[0].cost_usd, rust_decimal::Decimal::ZERO);
    assert_eq!(
        c.post(&format!("/v1/jobs/{id}/cancel"), &json!({}), None)
            .await
            .0,
        409
    );
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn cancelling_a_batch_cancels_its_waiting_jobs_and_stops_its_running_one() {
    let mut env = TestEnv::new().await;
    // One call at a time: one slow job runs, the others stay queued behind it.
    env.config.worker.concurrency = 1;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let jobs: Vec<_> = (0..4)
        .map(|i| job(&format!("slow {i} [[mock:sleep=30s]]")))
        .collect();
    let (_, body) = c.post("/v1/jobs", &json!({"jobs": jobs}), None).await;
    let batch = body["batch_id"].as_str().unwrap().to_string();
    wait_until(T, "one job runs", || async {
        env.mock.stats().requests == 1
            && env
                .count("SELECT count(*) FROM jobs WHERE status = 'running'")
                .await
                == 1
    })
    .await;
    let slow: String = sqlx::query_scalar("SELECT id FROM jobs WHERE status = 'running'")
        .fetch_one(&env.pool)
        .await
        .unwrap();

    let (status, summary) = c
        .post(&format!("/v1/batches/{batch}/cancel"), &json!({}), None)
        .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["object"], "batch");
    assert_eq!(summary["cancelled"], 3, "{summary}");
    assert_eq!(summary["cancel_requested"], 1, "{summary}");
    wait_until(T, "every job of the batch is cancelled", || async {
        c.get(&format!("/v1/batches/{batch}")).await.1["counts"]["cancelled"] == 4
    })
    .await;
    assert_eq!(
        env.mock.stats().requests,
        1,
        "the waiting jobs were never sent"
    );
    assert_eq!(attempts(&env.pool, &slow).await[0].status, "cancelled");
    let (status, err) = c
        .post(&format!("/v1/batches/{batch}/cancel"), &json!({}), None)
        .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(
        c.post("/v1/batches/batch_nope/cancel", &json!({}), None)
            .await
            .0,
        404
    );
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

/// Makes `id` look claimed by `worker` (attempt 1), as if a worker were running it.
async fn mark_running(env: &TestEnv, id: &str, worker: &str) {
    sqlx::query(
        "UPDATE jobs SET status = 'running', attempt = 1, attempted_by = $2, attempted_at = now(),
            publish_after = NULL, deployment = deployments->>0 WHERE id = $1",
    )
    .bind(id)
    .bind(worker)
    .execute(&env.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_cancel_asked_of_a_dead_workers_job_is_honoured_when_the_job_is_requeued() {
    let env = TestEnv::new().await;
    let api = env.start(api_only()).await;
    let c = Client::new(&api, &env.key("acme").await);
    let id = submit(&c, &job("its worker died")).await;
    mark_running(&env, &id, "wrk_gone").await;
    let (_, asked) = c
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}), None)
        .await;
    assert_eq!(asked["status"], "running");

    // The rescuer re-queues the dead worker's job; the claim cancels it instead of running it.
    let worker = env.up().await;
    let done = c.wait_job(&id, T).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    let codes: Vec<&str> = done["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["code"].as_str())
        .collect();
    assert_eq!(codes, ["worker_lost", "cancelled"]);
    assert_eq!(env.mock.stats().requests, 0, "never sent");
    worker.stop().await;
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_failed_attempt_of_a_job_whose_cancel_was_asked_is_recorded_as_cancelled() {
    let env = TestEnv::new().await;
    let api = env.start(api_only()).await;
    let c = Client::new(&api, &env.key("acme").await);
    let id = submit(&c, &job("fails as it is cancelled")).await;
    mark_running(&env, &id, "wrk_here").await;
    c.post(&format!("/v1/jobs/{id}/cancel"), &json!({}), None)
        .await;

    // The call failed (retryable) before the worker saw the cancel: no retry is scheduled.
    let now = chrono::Utc::now();
    let outcome = sluice::db::jobs::Outcome {
        job_id: id.clone(),
        tenant: "acme".into(),
        attempt: 1,
        status: "retry_scheduled",
        run_after: Some(now),
        deployment: Some("openai/gpt-4o-mini".into()),
        next_deployment_index: 0,
        next_deployment_attempts: 1,
        response: None,
        error: Some(json!({"code": "http_500", "message": "boom", "attempt": 1})),
        called: true,
        attempt_id: sluice::ids::new_id("att"),
        provider: "openai".into(),
        upstream_model: "gpt-4o-mini".into(),
        route: "cheap",
        attempt_status: "failed",
        error_code: Some("http_500".into()),
        http_status: Some(500),
        input_tokens: 0,
        output_tokens: 0,
        cached_tokens: 0,
        input_usd_per_mtok: None,
        output_usd_per_mtok: None,
        cached_input_usd_per_mtok: None,
        discount: rust_decimal::Decimal::ZERO,
        cost_usd: rust_decimal::Decimal::ZERO,
        baseline_cost_usd: rust_decimal::Decimal::ZERO,
        saved_usd: rust_decimal::Decimal::ZERO,
        provider_batch_id: None,
        latency_ms: Some(5),
        provider_request_id: None,
        started_at: now,
        repair_note: None,
    };
    let recorded = sluice::db::jobs::record(&env.pool, "wrk_here", &[outcome])
        .await
        .unwrap();
    assert_eq!(recorded, std::slice::from_ref(&id));
    let (_, done) = c.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["error"]["code"], "cancelled");
    assert_eq!(
        done["errors"][0]["code"], "http_500",
        "the failure stays in the history"
    );
    assert!(done["finalized_at"].is_string());
    assert_eq!(attempts(&env.pool, &id).await[0].status, "failed");
    api.stop().await;
    env.cleanup().await;
}
