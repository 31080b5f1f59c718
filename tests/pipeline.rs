//! End-to-end tests of the core pipeline against real Postgres and RabbitMQ, with the app
//! in-process on port 0.

mod common;

use std::time::Duration;

use common::{Client, TestEnv, job, wait_until};
use serde_json::json;
use sluice::app::Roles;

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn an_http_job_runs_to_a_priced_result_with_one_ledger_row() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);

    let (status, body) = c
        .post("/v1/jobs", &job("Summarize: the printer is on fire"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let done = c.wait_job(&id, T).await;

    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["response"]["object"], "chat.completion");
    assert_eq!(done["deployment"], "openai/gpt-4o-mini");
    assert!(done["route_reason"].as_str().unwrap().contains("real-time"));
    let input = done["usage"]["input_tokens"].as_i64().unwrap();
    let output = done["usage"]["output_tokens"].as_i64().unwrap();
    assert!(input > 0 && output > 0);
    // gpt-4o-mini: $0.15 in, $0.60 out per million tokens.
    let expected = rust_decimal::Decimal::from(input * 15 + output * 60)
        / rust_decimal::Decimal::from(100_000_000);
    assert_eq!(
        done["cost_usd"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        expected
    );
    let (rows, unit_in): (i64, Option<rust_decimal::Decimal>) =
        sqlx::query_as("SELECT count(*), max(input_usd_per_mtok) FROM attempts WHERE job_id = $1")
            .bind(&id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(unit_in, Some("0.15".parse().unwrap()));
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_list_of_jobs_becomes_a_batch_whose_results_stream_as_jsonl() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let jobs: Vec<_> = (0..50)
        .map(|i| {
            let mut j = job(&format!("ticket {i}"));
            j["custom_id"] = json!(format!("t-{i}"));
            j
        })
        .collect();
    let (status, body) = c.post("/v1/jobs", &json!({"jobs": jobs}), None).await;
    assert_eq!(status, 200, "{body}");
    let batch = body["batch_id"].as_str().unwrap().to_string();
    assert_eq!(body["data"].as_array().unwrap().len(), 50);

    wait_until(T, "batch completes", || async {
        c.get(&format!("/v1/batches/{batch}")).await.1["status"] == "completed"
    })
    .await;
    let (_, summary) = c.get(&format!("/v1/batches/{batch}")).await;
    assert_eq!(summary["request_counts"]["completed"], 50);
    let (status, text) = c.get_text(&format!("/v1/batches/{batch}/results")).await;
    assert_eq!(status, 200);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 50);
    assert!(
        lines
            .iter()
            .all(|l| l["response"]["status_code"] == 200 && l["error"].is_null())
    );
    let (_, page) = c
        .get(&format!(
            "/v1/jobs?batch_id={batch}&status=succeeded&limit=20"
        ))
        .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 20);
    assert_eq!(page["has_more"], true);
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn results_are_partial_while_the_batch_runs() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let (_, body) = c
        .post(
            "/v1/jobs",
            &json!({"jobs": [job("fast one"), job("slow one [[mock:sleep=3s]]")]}),
            None,
        )
        .await;
    let batch = body["batch_id"].as_str().unwrap().to_string();
    wait_until(T, "one result", || async {
        c.get_text(&format!("/v1/batches/{batch}/results"))
            .await
            .1
            .lines()
            .count()
            == 1
    })
    .await;
    assert_eq!(
        c.get(&format!("/v1/batches/{batch}")).await.1["status"],
        "in_progress"
    );
    wait_until(T, "both results", || async {
        c.get_text(&format!("/v1/batches/{batch}/results"))
            .await
            .1
            .lines()
            .count()
            == 2
    })
    .await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn job_creation_is_idempotent_like_stripe() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let body = job("same request");

    // Concurrent duplicates: one job, the same answer twice.
    let (a, b) = tokio::join!(
        c.post("/v1/jobs", &body, Some("k-1")),
        c.post("/v1/jobs", &body, Some("k-1"))
    );
    assert_eq!((a.0, b.0), (200, 200));
    assert_eq!(a.1["id"], b.1["id"]);
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 1);

    // A later replay returns the original response.
    let (s, replay) = c.post("/v1/jobs", &body, Some("k-1")).await;
    assert_eq!(s, 200);
    assert_eq!(replay["id"], a.1["id"]);

    // The same key with another body is refused.
    let (s, err) = c
        .post("/v1/jobs", &job("a different request"), Some("k-1"))
        .await;
    assert_eq!(s, 422, "{err}");
    assert_eq!(err["error"]["param"], "Idempotency-Key");
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 1);

    // A job-level idempotency key dedupes across requests too.
    let mut keyed = job("keyed");
    keyed["idempotency_key"] = json!("job-key-7");
    let (_, first) = c.post("/v1/jobs", &keyed, None).await;
    let (_, second) = c.post("/v1/jobs", &keyed, None).await;
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["created"], false);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_jobs() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let acme = Client::new(&app, &env.key("acme").await);
    let globex = Client::new(&app, &env.key("globex").await);
    let (_, body) = acme
        .post("/v1/jobs", &json!({"jobs": [job("secret plan")]}), None)
        .await;
    let id = body["data"][0]["id"].as_str().unwrap().to_string();
    let batch = body["batch_id"].as_str().unwrap().to_string();
    acme.wait_job(&id, T).await;

    assert_eq!(globex.get(&format!("/v1/jobs/{id}")).await.0, 404);
    assert_eq!(globex.get(&format!("/v1/batches/{batch}")).await.0, 404);
    assert_eq!(
        globex
            .get_text(&format!("/v1/batches/{batch}/results"))
            .await
            .0,
        404
    );
    assert_eq!(
        globex.get("/v1/jobs").await.1["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        globex
            .post(
                "/v1/jobs",
                &json!({"jobs": [job("x")], "batch_id": batch}),
                None
            )
            .await
            .0,
        404
    );
    assert_eq!(
        acme.get("/v1/jobs").await.1["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let nobody = Client {
        key: "sk-sluice-wrong".into(),
        ..Client::new(&app, "")
    };
    let (s, err) = nobody.get("/v1/jobs").await;
    assert_eq!(s, 401);
    assert_eq!(err["error"]["type"], "authentication_error");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_nothing_enqueued() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);

    let (s, e) = c.post_raw("/v1/jobs", "{not json").await;
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );

    let mut unknown = job("x");
    unknown["model"] = json!("gpt-17-mega");
    let (s, e) = c
        .post("/v1/jobs", &json!({"jobs": [job("fine"), unknown]}), None)
        .await;
    assert_eq!(s, 422);
    assert_eq!(e["error"]["param"], "jobs[1].model", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-17-mega")
    );

    let (s, e) = c
        .post(
            "/v1/jobs",
            &json!({"model": "summarize", "body": {"messages": []}}),
            None,
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(e["error"]["param"], "body.messages");

    let (s, _) = c
        .post(
            "/v1/jobs",
            &json!({"jobs": [job("x")], "route": "fast"}),
            None,
        )
        .await;
    assert_eq!(s, 400);

    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 0);
    assert_eq!(c.get("/v1/nope").await.0, 404);
    assert_eq!(
        reqwest::get(format!("{}/readyz", c.base))
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_published_over_amqp_runs_like_an_http_job() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let key = env.key("acme").await;
    let c = Client::new(&app, &key);
    let mut body = job("from a python producer");
    body["custom_id"] = json!("amqp-1");
    let bytes = serde_json::to_vec(&body).unwrap();
    let headers = [("sluice-api-key", key.as_str()), ("sluice-schema", "1")];
    env.publish_job("acme", &bytes, &headers, Some("producer-msg-1"))
        .await;
    // The same message again (a producer retry): still one job.
    env.publish_job("acme", &bytes, &headers, Some("producer-msg-1"))
        .await;

    wait_until(T, "the AMQP job succeeds", || async {
        env.count("SELECT count(*) FROM jobs WHERE custom_id = 'amqp-1' AND status = 'succeeded'")
            .await
            == 1
    })
    .await;
    let (_, list) = c.get("/v1/jobs").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["custom_id"], "amqp-1");
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn malformed_or_unauthorised_amqp_messages_land_in_the_rejected_queue_with_a_reason() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let key = env.key("acme").await;
    let good_job = serde_json::to_vec(&job("ok")).unwrap();
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "acme",
            b"{not json".to_vec(),
            vec![("sluice-api-key", key.as_str())],
            "not valid JSON",
        ),
        (
            "acme",
            good_job.clone(),
            vec![],
            "missing header sluice-api-key",
        ),
        (
            "acme",
            good_job.clone(),
            vec![("sluice-api-key", "sk-sluice-forged")],
            "not a valid API key",
        ),
        (
            "globex",
            good_job.clone(),
            vec![("sluice-api-key", key.as_str())],
            "does not match",
        ),
        (
            "acme",
            br#"{"model": "nope-model", "body": {"messages": [{"role": "user", "content": "x"}]}}"#
                .to_vec(),
            vec![("sluice-api-key", key.as_str())],
            "nope-model",
        ),
        (
            "acme",
            good_job.clone(),
            vec![("sluice-api-key", key.as_str()), ("sluice-schema", "9")],
            "unsupported sluice-schema",
        ),
    ];
    for (rk, body, headers, _) in &cases {
        env.publish_job(rk, body, headers, None).await;
    }
    let mut reasons = Vec::new();
    let start = std::time::Instant::now();
    while reasons.len() < cases.len() {
        assert!(
            start.elapsed() < T,
            "only {} of {} messages were rejected: {reasons:?}",
            reasons.len(),
            cases.len()
        );
        match env.get_message("sluice.jobs.rejected").await {
            Some(d) => {
                let h = d.properties.headers();
                assert!(
                    sluice::queue::header_text(h, "sluice-api-key").is_none(),
                    "keys are never forwarded"
                );
                reasons.push(sluice::queue::header_text(h, "sluice-reject-reason").unwrap());
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    for (_, _, _, expected) in &cases {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no reason mentions `{expected}`: {reasons:?}"
        );
    }
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_redelivered_message_for_a_finished_job_is_acked_without_a_call_or_a_second_bill() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let (_, body) = c.post("/v1/jobs", &job("bill me once"), None).await;
    let id = body["id"].as_str().unwrap().to_string();
    c.wait_job(&id, T).await;
    assert_eq!(env.mock.stats().calls_by_job[&id], 1);

    // Duplicate work messages, as after a lost ack or a relay that published twice.
    let item = sluice::queue::WorkItem {
        id: id.clone(),
        tenant: "acme".into(),
        priority: 0,
    };
    for _ in 0..3 {
        app.ctx
            .broker
            .publish_work(std::slice::from_ref(&item))
            .await
            .unwrap();
    }
    // The job's own state says it is done, so the worker drops them. Wait for the queue to drain.
    wait_until(T, "the duplicates are consumed", || async {
        env.work_queue_depth("acme").await.0 == 0
    })
    .await;
    // Give an in-flight duplicate (if any were claimed) time to show up as a call.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.mock.stats().calls_by_job[&id],
        1,
        "no second provider call"
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM attempts WHERE job_id = '{id}'"
        ))
        .await,
        1,
        "no second ledger row"
    );
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_recorded_but_never_published_is_published_by_the_relay() {
    let env = TestEnv::new().await;
    // Only the API's database side: insert as the API would, then "crash" before publishing.
    let ctx = env.ctx().await;
    env.key("acme").await;
    let rows = sluice::submit::prepare(
        &ctx,
        "acme",
        vec![job("orphaned by a crash")],
        chrono::Utc::now(),
    )
    .unwrap();
    let mut tx = ctx.pool.begin().await.unwrap();
    let inserted = sluice::db::jobs::insert_jobs(&mut tx, "acme", None, &rows, Duration::ZERO)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let id = inserted[0].id.clone();

    // A worker alone never hears of it…
    let worker = env
        .start(Roles {
            worker: true,
            ..Default::default()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.status_of(&id).await, "queued");
    // …until the relay runs.
    sluice::worker::maintenance::tick(&ctx).await.unwrap();
    wait_until(T, "the relayed job succeeds", || async {
        env.status_of(&id).await == "succeeded"
    })
    .await;
    env.check_invariants().await;
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn transient_failures_are_retried_and_fatal_ones_are_not() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let (_, flaky) = c
        .post("/v1/jobs", &job("flaky [[mock:fail-first=2]]"), None)
        .await;
    let (_, bad) = c
        .post("/v1/jobs", &job("bad request [[mock:status=400]]"), None)
        .await;
    let (_, refused) = c
        .post("/v1/jobs", &job("refuse me [[mock:refuse]]"), None)
        .await;
    let flaky = c.wait_job(flaky["id"].as_str().unwrap(), T).await;
    let bad = c.wait_job(bad["id"].as_str().unwrap(), T).await;
    let refused = c.wait_job(refused["id"].as_str().unwrap(), T).await;

    assert_eq!(flaky["status"], "succeeded");
    assert_eq!(flaky["attempts"], 3);
    assert_eq!(flaky["errors"].as_array().unwrap().len(), 2);
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["attempts"], 1, "a 400 is never retried");
    assert_eq!(bad["error"]["code"], "http_400");
    assert_eq!(refused["status"], "succeeded", "a refusal is a result");
    assert_eq!(refused["attempts"], 1);
    assert_eq!(
        env.count("SELECT count(*) FROM attempts WHERE status = 'refused'")
            .await,
        1
    );
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

/// With `[amqp] queue_type = "quorum"`, every queue sluice declares is a quorum queue (a classic
/// redeclare is refused by the broker), and jobs run end to end over HTTP and over AMQP. A
/// deployment whose queues exist as classic gets an error naming the setting, not a bare 406.
#[tokio::test]
async fn quorum_queues_carry_http_and_amqp_jobs_and_a_type_mismatch_says_what_to_do() {
    let mut env = TestEnv::new().await;
    env.config.amqp.queue_type = sluice::config::QueueType::Quorum;
    let app = env.up().await;
    let key = env.key("acme").await;
    let c = Client::new(&app, &key);
    let (s, body) = c
        .post("/v1/jobs", &json!({"jobs": [job("over http")]}), None)
        .await;
    assert_eq!(s, 200, "{body}");
    let id = body["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(c.wait_job(&id, T).await["status"], "succeeded");
    let mut amqp = job("over amqp");
    amqp["custom_id"] = json!("quorum-amqp");
    let headers = [("sluice-api-key", key.as_str()), ("sluice-schema", "1")];
    env.publish_job("acme", &serde_json::to_vec(&amqp).unwrap(), &headers, None)
        .await;
    wait_until(T, "the AMQP job succeeds", || async {
        env.count(
            "SELECT count(*) FROM jobs WHERE custom_id = 'quorum-amqp' AND status = 'succeeded'",
        )
        .await
            == 1
    })
    .await;

    // The broker's own word on the type: declaring the queues as classic is refused.
    let conn =
        lapin::Connection::connect(&env.config.amqp.url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let classic = sluice::queue::Topology::new(&env.config.amqp.prefix);
    let ch = conn.create_channel().await.unwrap();
    let err = sluice::queue::declare_tenant(&ch, &classic, "acme")
        .await
        .expect_err("a classic declare of a quorum queue is refused")
        .to_string();
    assert!(
        err.contains(&classic.work_queue("acme")) && err.contains("classic"),
        "{err}"
    );
    let ch = conn.create_channel().await.unwrap();
    let err = sluice::queue::declare(&ch, &classic)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&classic.ingest_queue()) && err.contains("[amqp] queue_type"),
        "{err}"
    );
    conn.close(200, "done".into()).await.unwrap();
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}
