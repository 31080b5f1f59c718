//! Deadlines (the sweeper expires waiting jobs) and structured output (answers checked against
//! the job's JSON schema, repaired once, then failed closed).

use serde_json::{Value, json};

use super::common::{Client, TestEnv, job};
use super::{T, api_only, attempts, submit};

#[tokio::test]
async fn waiting_jobs_past_their_deadline_expire_even_without_a_worker() {
    let env = TestEnv::new().await;
    let app = env.start(api_only()).await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut with_deadline = job("too late");
    with_deadline["deadline"] = json!("1h");
    let queued = submit(&c, &with_deadline).await;
    let retrying = submit(&c, &with_deadline).await;
    let on_time = submit(&c, &with_deadline).await;
    // The first two pass their deadline; one of them while waiting for a retry.
    sqlx::query("UPDATE jobs SET deadline = now() - interval '1 second' WHERE id = ANY($1)")
        .bind([&queued, &retrying])
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE jobs SET status = 'retry_scheduled', run_after = now() + interval '1 hour' WHERE id = $1",
    )
    .bind(&retrying)
    .execute(&env.pool)
    .await
    .unwrap();

    sluice::worker::maintenance::tick(&app.ctx).await.unwrap();
    for id in [&queued, &retrying] {
        let (_, j) = c.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(j["status"], "expired", "{j}");
        assert_eq!(j["error"]["code"], "deadline_exceeded");
        assert!(j["finalized_at"].is_string());
    }
    assert_eq!(env.status_of(&on_time).await, "queued");
    assert_eq!(
        env.count("SELECT count(*) FROM attempts").await,
        0,
        "nothing was sent or billed"
    );
    app.stop().await;
    env.cleanup().await;
}

/// A job whose answer must be `{"a": <integer>}`.
fn structured(prompt: &str) -> Value {
    let mut j = job(prompt);
    j["body"]["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "answer",
        "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
                   "additionalProperties": false}}});
    j
}

fn content(job: &Value) -> Value {
    let text = job["response"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn an_answer_that_matches_the_schema_succeeds_on_the_first_call() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let good = submit(&c, &structured(r#"answer [[mock:json={"a":1}]]"#)).await;
    let refused = submit(&c, &structured("refuse [[mock:refuse]]")).await;
    let good = c.wait_job(&good, T).await;
    assert_eq!(good["status"], "succeeded", "{good}");
    assert_eq!(good["attempts"], 1);
    assert_eq!(content(&good), json!({"a": 1}));
    let refused = c.wait_job(&refused, T).await;
    assert_eq!(
        refused["status"], "succeeded",
        "a refusal is a result, not a schema miss"
    );
    assert_eq!(refused["attempts"], 1);
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_answer_that_misses_the_schema_is_retried_once_with_the_validation_error() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let id = submit(
        &c,
        &structured(r#"answer [[mock:json-first-bad]] [[mock:json={"a":2}]]"#),
    )
    .await;
    let done = c.wait_job(&id, T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2);
    assert_eq!(content(&done), json!({"a": 2}));
    assert_eq!(done["errors"][0]["code"], "schema_validation_failed");
    let note: Option<String> = sqlx::query_scalar("SELECT repair_note FROM jobs WHERE id = $1")
        .bind(&id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(
        note.unwrap().contains("not JSON"),
        "the repair said what was wrong"
    );
    let ledger = attempts(&env.pool, &id).await;
    assert_eq!(ledger.len(), 2);
    assert_eq!(
        ledger[0].error_code.as_deref(),
        Some("schema_validation_failed")
    );
    assert!(
        ledger
            .iter()
            .all(|a| a.cost_usd > rust_decimal::Decimal::ZERO),
        "both answers are billed"
    );
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_answer_that_misses_the_schema_twice_fails_closed_as_a_dead_letter() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let id = submit(&c, &structured(r#"answer [[mock:json={"a":"two"}]]"#)).await;
    let done = c.wait_job(&id, T).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempts"], 2, "one repair, no more");
    assert_eq!(done["error"]["code"], "schema_validation_failed");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("integer")
    );
    assert!(
        done["response"].is_null(),
        "an answer that breaks the schema is never returned"
    );
    let (_, dead) = c
        .get("/v1/dead_letters?code=schema_validation_failed")
        .await;
    assert_eq!(dead["data"][0]["id"], id.as_str());
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_broken_schema_is_refused_at_submission() {
    let env = TestEnv::new().await;
    let app = env.start(api_only()).await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut j = structured("x");
    j["body"]["response_format"]["json_schema"]["schema"] = json!({"type": "no-such-type"});
    let (status, err) = c.post("/v1/jobs", &j, None).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(
        err["error"]["param"],
        "body.response_format.json_schema.schema"
    );
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
    env.cleanup().await;
}
