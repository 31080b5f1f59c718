//! The provider batch path fed poison, end to end against real Postgres and RabbitMQ and the
//! mock speaking OpenAI's and Anthropic's batch APIs: a slow upload, a batch that answers 404,
//! jobs cancelled while in a provider batch, a NUL in a batch answer, a result Postgres refuses,
//! and a job larger than its tenant's whole USD cap.

mod common;

use std::time::Duration;

use common::{Client, TestEnv, job, wait_until};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sluice::app::Roles;
use sluice::db::provider_batches::{ItemOutcome, Leased};
use sluice::mock::MockSettings;

const T: Duration = Duration::from_secs(40);

fn with(model: &str, route: &str, prompt: &str) -> Value {
    let mut j = job(prompt);
    j["model"] = json!(model);
    j["route"] = json!(route);
    j
}

async fn in_provider_batch(env: &TestEnv, ids: &[String]) {
    wait_until(T, "the jobs are in a provider batch", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'in_provider_batch'",
        )
        .bind(ids)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        n == ids.len() as i64
            && env
                .count("SELECT count(*) FROM provider_batches WHERE state = 'submitting'")
                .await
                == 0
    })
    .await;
}

/// An upload that takes three times the lease: the packer keeps renewing its lease while it
/// runs, so the other process never takes the batch over and sends it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_batch_upload_keeps_its_lease_and_is_sent_once() {
    let env = TestEnv::with_mock(MockSettings {
        batch_delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    assert_eq!(env.config.batch.lease, Duration::from_secs(1));
    let api = env
        .start(Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let poller = || {
        env.start(Roles {
            maintenance: true,
            ..Default::default()
        })
    };
    let (a, b) = (poller().await, poller().await);
    let c = Client::new(&api, &env.key("acme").await);
    let ids = c
        .submit(vec![with(
            "openai/gpt-4o-mini",
            "batch",
            "a big file [[mock:upload-sleep=3s]]",
        )])
        .await;
    let done = c.wait_job(&ids[0], T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // Stopping waits for work in flight: a second submission would be finished by then.
    a.stop().await;
    b.stop().await;
    let stats = env.mock.stats();
    assert_eq!(stats.batches_created, 1, "one provider batch, not two");
    assert_eq!(stats.calls_by_job.get(&ids[0]).copied(), Some(1));
    assert_eq!(env.count("SELECT count(*) FROM provider_batches").await, 1);
    env.check_invariants().await;
    api.stop().await;
    env.cleanup().await;
}

/// The provider forgets its batches (every poll answers 404). After `max_poll_failures` failed
/// polls the batch is given up: a job with attempts left is re-driven into the next batch and
/// succeeds, one without fails with `provider_batch_lost`; nothing is polled forever.
#[tokio::test]
async fn a_provider_batch_that_answers_404_is_given_up_and_its_jobs_re_driven_or_failed() {
    let mut env = TestEnv::with_mock(MockSettings {
        batch_delay: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    env.config.batch.max_poll_failures = 3;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut last_try = with("openai/gpt-4o-mini", "batch", "no attempts left");
    last_try["max_attempts"] = json!(1);
    let ids = c
        .submit(vec![
            last_try,
            with("openai/gpt-4o-mini", "batch", "attempts left"),
            with("anthropic/claude-haiku-4-5", "batch", "attempts left too"),
        ])
        .await;
    in_provider_batch(&env, &ids).await;
    env.mock.forget_batches();

    let failed = c.wait_job(&ids[0], T).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "provider_batch_lost", "{failed}");
    for id in &ids[1..] {
        let done = c.wait_job(id, T).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["route"], "batch", "re-driven into the next batch");
    }
    assert_eq!(
        env.count(
            "SELECT count(*) FROM provider_batches WHERE state = 'failed' AND error LIKE '%404%'"
        )
        .await,
        2,
        "both lost batches (OpenAI's and Anthropic's) were given up"
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM provider_batches WHERE state IN ('submitting', 'in_progress')"
        )
        .await,
        0,
        "nothing is left to poll"
    );
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

/// Cancelling jobs in a provider batch ends them `cancelled` at once. A job whose batch still
/// runs for others has its result discarded when it comes (a ledger row at no cost); a batch
/// whose every job was cancelled is cancelled at the provider.
#[tokio::test]
async fn cancelling_jobs_in_a_provider_batch_discards_their_results_and_cancels_a_batch_they_all_left()
 {
    let env = TestEnv::with_mock(MockSettings {
        batch_delay: Duration::from_secs(4),
        ..Default::default()
    })
    .await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let ids = c
        .submit(vec![
            with("openai/gpt-4o-mini", "batch", "keep me"),
            with("openai/gpt-4o-mini", "batch", "drop me"),
            with(
                "anthropic/claude-haiku-4-5",
                "batch",
                "drop the whole batch",
            ),
        ])
        .await;
    in_provider_batch(&env, &ids).await;
    for id in &ids[1..] {
        let (s, body) = c
            .post(&format!("/v1/jobs/{id}/cancel"), &json!({}), None)
            .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["status"], "cancelled", "cancelled at once: {body}");
    }
    let kept = c.wait_job(&ids[0], T).await;
    assert_eq!(kept["status"], "succeeded", "{kept}");
    wait_until(T, "both provider batches are finished", || async {
        env.count("SELECT count(*) FROM provider_batches WHERE ended_at IS NULL")
            .await
            == 0
    })
    .await;
    let state = |deployment: &'static str| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT state FROM provider_batches WHERE deployment = $1",
            )
            .bind(deployment)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(state("openai/gpt-4o-mini").await, "ended");
    assert_eq!(
        state("anthropic/claude-haiku-4-5").await,
        "cancelled",
        "the batch every job left was cancelled at the provider"
    );
    assert!(
        !env.mock.stats().calls_by_job.contains_key(&ids[2]),
        "the cancelled batch's item never ran"
    );
    for id in &ids[1..] {
        let (_, j) = c.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(j["status"], "cancelled", "{j}");
        assert!(j["response"].is_null(), "the result is discarded: {j}");
        assert_eq!(j["cost_usd"], "0", "nothing billed to the job: {j}");
    }
    let dropped: Vec<(String, Decimal)> =
        sqlx::query_as("SELECT status, cost_usd FROM attempts WHERE job_id = $1")
            .bind(&ids[1])
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        dropped,
        vec![("cancelled".to_string(), Decimal::ZERO)],
        "the discarded result is in the ledger at no cost"
    );
    assert_eq!(env.count("SELECT count(*) FROM budget_holds").await, 0);
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

/// A NUL in a batch answer is stored with U+FFFD in its place; the batch's other result is
/// booked alongside it, and the batch ends (instead of being retried forever).
#[tokio::test]
async fn a_nul_in_a_batch_answer_is_stored_transformed_and_blocks_no_one() {
    let env = TestEnv::with_mock(MockSettings {
        batch_delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let ids = c
        .submit(vec![
            with(
                "openai/gpt-4o-mini",
                "batch",
                "answer with [[mock:batch-nul]]",
            ),
            with("openai/gpt-4o-mini", "batch", "a plain answer"),
        ])
        .await;
    let nul = c.wait_job(&ids[0], T).await;
    let plain = c.wait_job(&ids[1], T).await;
    assert_eq!(nul["status"], "succeeded", "{nul}");
    assert_eq!(
        nul["response"]["choices"][0]["message"]["content"],
        "before\u{FFFD}after"
    );
    assert_eq!(plain["status"], "succeeded", "{plain}");
    // The batch is marked ended just after its results are booked.
    wait_until(T, "the provider batch has ended", || async {
        env.count("SELECT count(*) FROM provider_batches WHERE state = 'ended'")
            .await
            == 1
    })
    .await;
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

fn succeeded(job_id: &str, attempt: i32, response: Value) -> ItemOutcome {
    ItemOutcome {
        job_id: job_id.into(),
        attempt,
        status: "succeeded",
        route: "batch",
        route_note: None,
        response: Some(response),
        error: None,
        attempt_status: "succeeded",
        error_code: None,
        http_status: None,
        input_tokens: 10,
        output_tokens: 5,
        cached_tokens: 0,
        input_usd_per_mtok: None,
        output_usd_per_mtok: None,
        cached_input_usd_per_mtok: None,
        discount: Decimal::ZERO,
        cost_usd: "0.001".parse().unwrap(),
        baseline_cost_usd: "0.002".parse().unwrap(),
        provider_request_id: None,
        attempt_id: sluice::ids::new_id("att"),
    }
}

/// The recorder's last line of defence: a result Postgres refuses (here a raw NUL that bypassed
/// the transformation) is split out and quarantined, its job failed with `result_unstorable`
/// and still billed, while the other results of the batch are booked.
#[tokio::test]
async fn a_batch_result_postgres_refuses_is_quarantined_and_the_rest_are_booked() {
    let env = TestEnv::with_mock(MockSettings {
        batch_delay: Duration::from_secs(600),
        ..Default::default()
    })
    .await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let ids = c
        .submit(
            (0..5)
                .map(|i| with("openai/gpt-4o-mini", "batch", &format!("item {i}")))
                .collect(),
        )
        .await;
    in_provider_batch(&env, &ids).await;
    app.stop().await;

    let batch: Leased = sqlx::query_as(
        "SELECT id, deployment, state, provider_batch_id, cancel_sent_at FROM provider_batches",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let items: Vec<(String, i32)> =
        sqlx::query_as("SELECT job_id, attempt FROM provider_batch_items ORDER BY job_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let bad = items[3].0.clone();
    let outcomes: Vec<ItemOutcome> = items
        .iter()
        .map(|(id, attempt)| {
            let text = if *id == bad { "raw \u{0} nul" } else { "fine" };
            succeeded(
                id,
                *attempt,
                json!({"choices": [{"message": {"content": text}}]}),
            )
        })
        .collect();
    let done =
        sluice::db::provider_batches::record_results(&env.pool, &batch, &outcomes, "ended", None)
            .await
            .unwrap();
    assert_eq!(done.quarantined, 1);
    assert_eq!(done.moved, 4);
    let (status, code, cost): (String, String, Decimal) =
        sqlx::query_as("SELECT status, error->>'code', cost_usd FROM jobs WHERE id = $1")
            .bind(&bad)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), code.as_str()),
        ("failed", "result_unstorable")
    );
    assert_eq!(cost, "0.001".parse::<Decimal>().unwrap(), "still billed");
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
            .await,
        4
    );
    assert_eq!(
        env.count("SELECT count(*) FROM provider_batches WHERE state = 'ended'")
            .await,
        1
    );
    // Recording again (a crash before the answer) books nothing twice.
    let again =
        sluice::db::provider_batches::record_results(&env.pool, &batch, &outcomes, "ended", None)
            .await
            .unwrap();
    assert_eq!((again.moved, again.quarantined), (0, 0));
    assert_eq!(env.count("SELECT count(*) FROM attempts").await, 5);
    env.check_invariants().await;
    env.cleanup().await;
}

/// A tenant's cap lowered after jobs were queued, below what one of them may cost: waiting can
/// never help, so with policy `defer` the jobs fail with `budget_exceeded` (real-time and batch
/// route alike) instead of being deferred forever.
#[tokio::test]
async fn a_queued_job_larger_than_its_tenants_whole_cap_fails_instead_of_deferring_forever() {
    let env = TestEnv::with_mock(MockSettings {
        batch_delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let api = env
        .start(Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&api, &env.key("acme").await);
    let ids = c
        .submit(vec![
            job("a real-time job"),
            with("openai/gpt-4o-mini", "batch", "a batch job"),
        ])
        .await;
    sluice::db::budgets::set(
        &env.pool,
        &sluice::domain::budget::Scope::Tenant("acme".into()),
        &sluice::config::BudgetSettings {
            daily_usd: Some("0.0000001".parse().unwrap()),
            policy: Some("defer".into()),
            ..Default::default()
        },
        "test",
    )
    .await
    .unwrap();
    let workers = env
        .start(Roles {
            worker: true,
            maintenance: true,
            ..Default::default()
        })
        .await;
    for id in &ids {
        let done = c.wait_job(id, T).await;
        assert_eq!(done["status"], "failed", "{done}");
        assert_eq!(done["error"]["code"], "budget_exceeded", "{done}");
    }
    assert!(
        env.mock.stats().calls_by_job.is_empty(),
        "nothing was called"
    );
    env.check_invariants().await;
    workers.stop().await;
    api.stop().await;
    env.cleanup().await;
}
