//! Poison over AMQP: each bad message goes to `sluice.jobs.rejected` with a reason, once, and
//! the good messages of the same chunk (other tenants' too) are recorded and run.

use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};

use crate::common::{TestEnv, job, wait_until};
use crate::{T, reason, rejected};

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn with_custom_id(prompt: &str, id: &str) -> Value {
    let mut j = job(prompt);
    j["custom_id"] = json!(id);
    j
}

/// Messages waiting in one of this environment's queues.
async fn depth(env: &TestEnv, queue: &str) -> u32 {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            format!("{}{queue}", env.config.amqp.prefix).into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "".into()).await;
    q.message_count()
}

/// Publishes `poison` for tenant acme between good jobs of acme and beta (all before the app
/// starts, so they arrive in one chunk), then checks that the poison is rejected once with a
/// reason containing `why` and every good job succeeds.
async fn poison_in_a_chunk(env: &TestEnv, poison: &[u8], why: &str) {
    let acme = env.key("acme").await;
    let beta = env.key("beta").await;
    let h_acme = [("sluice-api-key", acme.as_str())];
    let h_beta = [("sluice-api-key", beta.as_str())];
    env.publish_job(
        "acme",
        &body(&with_custom_id("before", "good-1")),
        &h_acme,
        None,
    )
    .await;
    env.publish_job("acme", poison, &h_acme, None).await;
    env.publish_job(
        "beta",
        &body(&with_custom_id("other tenant", "good-2")),
        &h_beta,
        None,
    )
    .await;
    env.publish_job(
        "acme",
        &body(&with_custom_id("after", "good-3")),
        &h_acme,
        None,
    )
    .await;
    let app = env.up().await;
    wait_until(T, "the good jobs around the poison succeed", || async {
        env.count("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
            .await
            == 3
    })
    .await;
    let got = rejected(env, 1).await;
    assert!(
        reason(&got[0]).contains(why),
        "reason `{}` should mention `{why}`",
        reason(&got[0])
    );
    wait_until(T, "the ingest queue drains (no requeue loop)", || async {
        depth(env, "sluice.jobs.ingest").await == 0
    })
    .await;
    assert!(
        env.get_message("sluice.jobs.rejected").await.is_none(),
        "the poison is rejected once"
    );
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 3);
    app.stop().await;
}

/// Finding 1: an overflowing deadline is rejected with a reason; the chunk proceeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_deadline_over_amqp_is_rejected_and_the_rest_of_the_chunk_runs() {
    let env = TestEnv::new().await;
    let mut poison = job("far away");
    poison["deadline"] = json!("99999999years");
    poison_in_a_chunk(&env, &body(&poison), "deadline").await;
    env.cleanup().await;
}

/// Finding 2: a NUL in a prompt is rejected with a reason naming the field; no requeue loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_prompt_over_amqp_is_rejected_and_the_rest_of_the_chunk_runs() {
    let env = TestEnv::new().await;
    poison_in_a_chunk(
        &env,
        &body(&job("nul \u{0} here")),
        "body.messages[0].content",
    )
    .await;
    env.cleanup().await;
}

/// Finding 2: a job the database refuses for a reason validation cannot see (here a trigger
/// raising a data exception for one custom id) is isolated by splitting the insert, rejected,
/// and the rest of the chunk is recorded: no requeue loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_is_isolated_and_rejected_while_the_chunk_is_recorded() {
    let env = TestEnv::new().await;
    sqlx::raw_sql(
        "CREATE FUNCTION poison_guard() RETURNS trigger AS $$
         BEGIN
           IF NEW.custom_id = 'poison-db' THEN
             RAISE EXCEPTION 'refused by a test trigger' USING ERRCODE = '22023';
           END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql;
         CREATE TRIGGER poison_guard BEFORE INSERT ON jobs
           FOR EACH ROW EXECUTE FUNCTION poison_guard();",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    poison_in_a_chunk(
        &env,
        &body(&with_custom_id("refused by the database", "poison-db")),
        "database cannot store",
    )
    .await;
    env.cleanup().await;
}

/// Finding 5: a job whose reservation can never fit its deployment's `batch_enqueued_tokens`
/// is rejected at ingest with the reason; the rest of the chunk runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_job_larger_than_the_enqueued_token_limit_is_rejected_at_ingest() {
    let env = TestEnv::new().await;
    sluice::db::budgets::set(
        &env.pool,
        &sluice::domain::budget::Scope::Deployment("openai/gpt-4o-mini".into()),
        &sluice::config::BudgetSettings {
            batch_enqueued_tokens: Some(2_000),
            ..Default::default()
        },
        "test",
    )
    .await
    .unwrap();
    let poison = json!({"model": "openai/gpt-4o-mini", "route": "batch",
        "body": {"messages": [{"role": "user", "content": "big"}], "max_tokens": 5000}});
    poison_in_a_chunk(&env, &body(&poison), "batch_enqueued_tokens").await;
    env.cleanup().await;
}

/// Finding 12: a message id reused with a different body is rejected with a reason (never
/// acked and dropped); the same body again is a harmless duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_id_reused_with_another_body_is_rejected_not_dropped() {
    let env = TestEnv::new().await;
    let key = env.key("acme").await;
    let h = [("sluice-api-key", key.as_str())];
    let app = env.up().await;
    let first = body(&job("the first body"));
    env.publish_job("acme", &first, &h, Some("msg-1")).await;
    wait_until(T, "the first message is recorded", || async {
        env.count("SELECT count(*) FROM jobs").await == 1
    })
    .await;
    env.publish_job("acme", &body(&job("another body")), &h, Some("msg-1"))
        .await;
    let got = rejected(&env, 1).await;
    let why = reason(&got[0]);
    assert!(
        why.contains("msg-1") && why.contains("different body"),
        "{why}"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&got[0].data).unwrap()["body"]["messages"][0]["content"],
        "another body"
    );
    // The same body again is an idempotent duplicate: acked, nothing rejected, one job.
    env.publish_job("acme", &first, &h, Some("msg-1")).await;
    wait_until(T, "the duplicate is consumed", || async {
        depth(&env, "sluice.jobs.ingest").await == 0
    })
    .await;
    assert!(env.get_message("sluice.jobs.rejected").await.is_none());
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 1);
    app.stop().await;
    env.cleanup().await;
}

/// Finding 13: no credential header reaches the rejected queue, whatever its casing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_headers_in_any_casing_never_reach_the_rejected_queue() {
    let env = TestEnv::new().await;
    let key = env.key("acme").await;
    let app = env.up().await;
    let secrets = [
        ("Sluice-Api-Key", key.as_str()),
        ("SLUICE-API-KEY", "sk-sluice-upper"),
        ("Authorization", "Bearer sk-live-1"),
        ("authorization", "Bearer sk-live-2"),
        ("x-api-key", "sk-ant-3"),
        ("X-Auth-Token", "tok-4"),
        ("client_secret", "s-5"),
    ];
    let mut headers = secrets.to_vec();
    headers.push(("sluice-schema", "1"));
    // Valid key (in another casing), but the body is not JSON: rejected.
    env.publish_job("acme", b"{not json", &headers, None).await;
    // No usable key at all: rejected too.
    env.publish_job("acme", b"{}", &secrets[2..], None).await;
    let got = rejected(&env, 2).await;
    for d in &got {
        let table = d.properties.headers().clone().unwrap_or_default();
        let names: Vec<String> = table.inner().keys().map(|k| k.to_string()).collect();
        for (name, value) in secrets {
            assert!(
                !names.iter().any(|n| n.eq_ignore_ascii_case(name)),
                "{name} leaked into the rejected queue: {names:?}"
            );
            let text = format!("{table:?}");
            assert!(!text.contains(value), "a secret value leaked: {text}");
        }
        assert!(!reason(d).is_empty());
    }
    assert!(
        got.iter()
            .any(|d| names_of(d).contains(&"sluice-schema".to_string())),
        "other headers are kept"
    );
    app.stop().await;
    env.cleanup().await;
}

fn names_of(d: &lapin::message::Delivery) -> Vec<String> {
    d.properties
        .headers()
        .clone()
        .unwrap_or_default()
        .inner()
        .keys()
        .map(|k| k.to_string())
        .collect()
}
