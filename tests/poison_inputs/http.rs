//! Poison over HTTP: every bad input is a 422 (or 409 for a batch that cannot take it) naming
//! the field, never a 500 or an empty answer, and nothing is enqueued.

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::T;
use crate::common::{Client, TestEnv, job};

fn with(mut j: Value, field: &str, v: Value) -> Value {
    j[field] = v;
    j
}

/// Finding 1: an overflowing or too distant deadline is a 422 naming `deadline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_deadline_over_http_is_a_422_naming_deadline() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    for deadline in [
        "99999999years",
        "18446744073709551615s",
        "2y",
        "9999-12-31T23:59:59Z",
    ] {
        let (status, body) = c
            .post(
                "/v1/jobs",
                &with(job("x"), "deadline", json!(deadline)),
                None,
            )
            .await;
        assert_eq!(status, 422, "{deadline}: {body}");
        assert_eq!(body["error"]["param"], "deadline", "{body}");
    }
    let (status, _) = c
        .post(
            "/v1/jobs",
            &with(job("x"), "deadline", json!("30days")),
            None,
        )
        .await;
    assert_eq!(status, 200, "a deadline within the limit is fine");
    app.stop().await;
    env.cleanup().await;
}

/// Finding 2: a NUL anywhere (job fields, batch fields, path ids, query parameters, dead-letter
/// selections) is a 422 naming the field, never a 500; nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_anywhere_in_a_request_is_a_422_naming_the_field() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let nul = "a\u{0}b";
    let mut tagged = job("x");
    tagged["tags"] = json!({"team": nul});
    let cases: Vec<(Value, &str)> = vec![
        (job(nul), "body.messages[0].content"),
        (with(job("x"), "custom_id", json!(nul)), "custom_id"),
        (tagged, "tags.team"),
        (
            with(job("x"), "idempotency_key", json!(nul)),
            "idempotency_key",
        ),
        (with(job("x"), "model", json!(nul)), "model"),
        (
            json!({"jobs": [job("x")], "metadata": {"k": nul}}),
            "metadata.k",
        ),
        (json!({"jobs": [job("x")], "batch_id": nul}), "batch_id"),
        (
            json!({"jobs": [job("x"), job(nul)]}),
            "jobs[1].body.messages[0].content",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = c.post("/v1/jobs", &body, None).await;
        assert_eq!(status, 422, "{field}: {answer}");
        assert_eq!(answer["error"]["param"], field, "{answer}");
    }
    for (path, field) in [
        ("/v1/jobs/job_%00", "id"),
        ("/v1/batches/batch_%00", "id"),
        ("/v1/batches/batch_%00/results", "id"),
        ("/v1/jobs?batch_id=%00", "batch_id"),
        ("/v1/jobs?after=job_%00", "after"),
        ("/v1/dead_letters?code=%00", "code"),
        ("/v1/dead_letters?model=x%00", "model"),
        ("/v1/models/gpt%00", "model"),
    ] {
        let (status, answer) = c.get(path).await;
        assert_eq!(status, 422, "{path}: {answer}");
        assert_eq!(answer["error"]["param"], field, "{path}: {answer}");
    }
    for (path, field) in [
        ("/v1/jobs/job_%00/cancel", "id"),
        ("/v1/batches/batch_%00/cancel", "id"),
    ] {
        let (status, answer) = c.post(path, &json!({}), None).await;
        assert_eq!(status, 422, "{path}: {answer}");
        assert_eq!(answer["error"]["param"], field, "{path}: {answer}");
    }
    for (body, field) in [
        (json!({"ids": ["job_\u{0}"]}), "ids[0]"),
        (json!({"all": true, "code": nul}), "code"),
    ] {
        let (status, answer) = c.post("/v1/dead_letters/requeue", &body, None).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["error"]["param"], field, "{answer}");
    }
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
    env.cleanup().await;
}

/// Finding 5: `max_tokens`, `max_completion_tokens` and `n` are bounded (by the model's
/// output limit where known); a job whose worst case alone is over the tenant's USD cap, or
/// that could never fit its deployment's `batch_enqueued_tokens`, is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_tokens_and_jobs_that_could_never_fit_a_budget_are_refused_at_submission() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let body = |extra: Value| {
        let mut b =
            json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"body": b})
    };
    for (extra, field) in [
        (json!({"max_tokens": 4_000_000_000u64}), "body.max_tokens"),
        (
            json!({"max_completion_tokens": 4_000_000_000u64}),
            "body.max_completion_tokens",
        ),
        (json!({"max_tokens": 200_000}), "body.max_tokens"),
        (json!({"n": 1000}), "body.n"),
        (json!({"n": 0}), "body.n"),
    ] {
        let (status, answer) = c.post("/v1/jobs", &body(extra.clone()), None).await;
        assert_eq!(status, 422, "{extra}: {answer}");
        assert_eq!(answer["error"]["param"], field, "{answer}");
    }
    // The reservation counts n and the larger of the two limits.
    let (status, answer) = c
        .post(
            "/v1/jobs",
            &body(json!({"max_tokens": 300, "max_completion_tokens": 100, "n": 3})),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let reserved: i32 = sqlx::query_scalar("SELECT max_tokens FROM jobs WHERE id = $1")
        .bind(answer["id"].as_str().unwrap())
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(reserved, 900);

    use sluice::config::BudgetSettings;
    use sluice::domain::budget::Scope;
    sluice::db::budgets::set(
        &env.pool,
        &Scope::Tenant("acme".into()),
        &BudgetSettings {
            daily_usd: Some(Decimal::new(1, 4)),
            policy: Some("defer".into()),
            ..Default::default()
        },
        "test",
    )
    .await
    .unwrap();
    let (status, answer) = c
        .post("/v1/jobs", &body(json!({"max_tokens": 16_000})), None)
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("USD cap"),
        "{answer}"
    );
    sluice::db::budgets::set(
        &env.pool,
        &Scope::Deployment("openai/gpt-4o-mini".into()),
        &BudgetSettings {
            batch_enqueued_tokens: Some(1_000),
            ..Default::default()
        },
        "test",
    )
    .await
    .unwrap();
    let mut batch = body(json!({"max_tokens": 5}));
    batch["route"] = json!("batch");
    batch["body"]["max_tokens"] = json!(2_000);
    let (status, answer) = c
        .post("/v1/jobs", &json!({"jobs": [job("fine"), batch]}), None)
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["param"], "jobs[1].body.max_tokens");
    app.stop().await;
    env.cleanup().await;
}

/// Finding 12: a job-level `idempotency_key` reused with another request is a 422, like the
/// `Idempotency-Key` header and the AMQP `message_id`; the same request again returns the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_idempotency_key_reused_with_another_request_is_a_422() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let first = with(job("first"), "idempotency_key", json!("k-1"));
    let (status, a) = c.post("/v1/jobs", &first, None).await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = c.post("/v1/jobs", &first, None).await;
    assert_eq!((status, &b["id"]), (200, &a["id"]), "{b}");
    let other = with(job("another"), "idempotency_key", json!("k-1"));
    let (status, answer) = c.post("/v1/jobs", &other, None).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["param"], "idempotency_key");
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 1);
    app.stop().await;
    env.cleanup().await;
}

/// Finding 12: adding to a batch refuses a custom_id the batch (or the request) already has,
/// and a batch that was cancelled or has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_to_a_batch_refuses_duplicate_custom_ids_and_closed_batches() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let named = |id: &str| with(job(id), "custom_id", json!(id));
    let (status, first) = c
        .post("/v1/jobs", &json!({"jobs": [named("a"), with(job("slow [[mock:sleep=3s]]"), "custom_id", json!("b"))]}), None)
        .await;
    assert_eq!(status, 200, "{first}");
    let batch = first["batch_id"].as_str().unwrap().to_string();
    let (status, answer) = c
        .post(
            "/v1/jobs",
            &json!({"jobs": [named("c"), named("a")], "batch_id": batch}),
            None,
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("`a`"));
    let (status, answer) = c
        .post(
            "/v1/jobs",
            &json!({"jobs": [named("d"), named("d")], "batch_id": batch}),
            None,
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    // (The slow job keeps the batch open until here.) Finished: every job reached a final state.
    for id in first["data"].as_array().unwrap() {
        c.wait_job(id["id"].as_str().unwrap(), T).await;
    }
    let (status, answer) = c
        .post(
            "/v1/jobs",
            &json!({"jobs": [named("e")], "batch_id": batch}),
            None,
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("finished")
    );
    // Cancelled.
    let (_, second) = c
        .post(
            "/v1/jobs",
            &json!({"jobs": [with(job("slow [[mock:sleep=5s]]"), "custom_id", json!("s"))]}),
            None,
        )
        .await;
    let batch2 = second["batch_id"].as_str().unwrap().to_string();
    let (status, answer) = c
        .post(&format!("/v1/batches/{batch2}/cancel"), &json!({}), None)
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = c
        .post(
            "/v1/jobs",
            &json!({"jobs": [named("f")], "batch_id": batch2}),
            None,
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cancelled")
    );
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 3);
    app.stop().await;
    env.cleanup().await;
}

/// Finding 12: a `[[prices]]` override of a built-in model without `effective_from` applies
/// now: jobs are costed at the configured price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_override_without_effective_from_applies_now() {
    let mut env = TestEnv::new().await;
    env.config.prices.push(sluice::config::PriceConfig {
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        input_usd_per_mtok: Decimal::from(70),
        output_usd_per_mtok: Decimal::from(80),
        cached_input_usd_per_mtok: None,
        batch_input_usd_per_mtok: None,
        batch_output_usd_per_mtok: None,
        effective_from: None,
    });
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut j = job("priced by config");
    j["model"] = json!("openai/gpt-4o-mini");
    let (status, answer) = c.post("/v1/jobs", &j, None).await;
    assert_eq!(status, 200, "{answer}");
    let done = c.wait_job(answer["id"].as_str().unwrap(), T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let input = Decimal::from(done["usage"]["input_tokens"].as_i64().unwrap());
    let output = Decimal::from(done["usage"]["output_tokens"].as_i64().unwrap());
    let expected =
        (input * Decimal::from(70) + output * Decimal::from(80)) / Decimal::from(1_000_000);
    let cost: Decimal = done["cost_usd"].as_str().unwrap().parse().unwrap();
    assert_eq!(cost.round_dp(6), expected.round_dp(6), "{done}");
    app.stop().await;
    env.cleanup().await;
}
