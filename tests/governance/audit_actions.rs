//! The audit rows of admin actions on webhook endpoints, whole batches and schedules, over HTTP
//! (actor: the key id) and the CLI (actor: the OS user).

use serde_json::{Value, json};

use super::batches_list::{native_batch, openai_batch};
use super::{api_only, ok};
use crate::common::{Client, TestEnv, sluice_cmd};

type Row = (String, String, Option<Value>, Option<Value>);

/// `(actor, target, before, after)` of every `action` row, oldest first.
async fn rows(env: &TestEnv, action: &str) -> Vec<Row> {
    sqlx::query_as(
        "SELECT actor, target, before, after FROM audit_log WHERE action = $1 ORDER BY at, id",
    )
    .bind(action)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// The only `action` row.
async fn one(env: &TestEnv, action: &str) -> Row {
    let mut r = rows(env, action).await;
    assert_eq!(r.len(), 1, "{action}: {r:?}");
    r.remove(0)
}

/// The real binary run as the operating-system user `alice`.
fn as_alice(cfg: &std::path::Path, args: &[&str]) -> String {
    ok(&sluice_cmd()
        .env("RUST_LOG", "warn")
        .env("USER", "alice")
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_endpoint_changes_are_audited_with_the_key_or_the_os_user() {
    let mut env = TestEnv::new().await;
    env.config.webhooks.allow_private_networks = vec!["127.0.0.0/8".parse().unwrap()];
    let app = env.start(api_only()).await;
    let key = sluice::db::tenants::create_key(&env.pool, "acme")
        .await
        .unwrap();
    let c = Client::new(&app, &key.key);

    let (status, e) = c
        .post(
            "/v1/webhook_endpoints",
            &json!({"url": "http://127.0.0.1:9/hooks", "event_types": ["batch.completed"]}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{e}");
    let id = e["id"].as_str().unwrap().to_string();
    let (status, _) = c
        .post(
            &format!("/v1/webhook_endpoints/{id}"),
            &json!({"name": "ops"}),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, rotated) = c
        .post(
            &format!("/v1/webhook_endpoints/{id}/rotate_secret"),
            &json!({}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let resp = c
        .http
        .delete(format!("{}/v1/webhook_endpoints/{id}", c.base))
        .bearer_auth(&c.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let (actor, target, before, after) = one(&env, "webhook_endpoint.create").await;
    assert_eq!(
        (actor.as_str(), target.as_str()),
        (key.id.as_str(), id.as_str())
    );
    assert_eq!(before, None);
    assert_eq!(after.unwrap()["url"], "http://127.0.0.1:9/hooks");
    let (actor, _, before, after) = one(&env, "webhook_endpoint.update").await;
    assert_eq!(actor, key.id);
    assert_eq!(
        (
            before.unwrap()["name"].clone(),
            after.unwrap()["name"].clone()
        ),
        (json!(""), json!("ops"))
    );
    let (actor, _, before, after) = one(&env, "webhook_endpoint.rotate_secret").await;
    assert_eq!(actor, key.id);
    let (before, after) = (before.unwrap(), after.unwrap());
    assert_ne!(before["signing_secret_hint"], after["signing_secret_hint"]);
    assert_eq!(after["signing_secret_hint"], rotated["signing_secret_hint"]);
    let (actor, _, before, after) = one(&env, "webhook_endpoint.delete").await;
    assert_eq!(actor, key.id);
    assert_eq!(before.unwrap()["name"], "ops");
    assert_eq!(after, None);
    app.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let cfg = env.write_config(dir.path());
    as_alice(
        &cfg,
        &[
            "webhooks",
            "add",
            "http://127.0.0.1:9/cli",
            "--tenant",
            "acme",
        ],
    );
    let (actor, cli_id, _, after) = rows(&env, "webhook_endpoint.create").await.remove(1);
    assert_eq!(actor, "cli:alice");
    assert_eq!(after.unwrap()["url"], "http://127.0.0.1:9/cli");
    as_alice(
        &cfg,
        &["webhooks", "rotate-secret", &cli_id, "--tenant", "acme"],
    );
    let (actor, target, before, after) =
        rows(&env, "webhook_endpoint.rotate_secret").await.remove(1);
    assert_eq!(
        (actor.as_str(), target.as_str()),
        ("cli:alice", cli_id.as_str())
    );
    assert!(before.is_some() && after.is_some());
    as_alice(
        &cfg,
        &["webhooks", "rotate-secret", "job-urls", "--tenant", "acme"],
    );
    let (actor, target, _, after) = one(&env, "webhook_secret.rotate").await;
    assert_eq!(
        (actor.as_str(), target.as_str()),
        ("cli:alice", "tenant:acme")
    );
    assert!(after.unwrap()["signing_secret_hint"].is_string());
    as_alice(
        &cfg,
        &["webhooks", "replay", "--tenant", "acme", "--since", "1h"],
    );
    let (actor, _, before, after) = one(&env, "webhook.replay").await;
    assert_eq!(actor, "cli:alice");
    assert_eq!(before.unwrap()["failed_only"], false);
    assert_eq!(after.unwrap()["messages"], 0);

    let log: Vec<String> =
        sqlx::query_scalar("SELECT concat(before::text, after::text) FROM audit_log")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    for secret in [&e["signing_secret"], &rotated["signing_secret"]] {
        let secret = secret.as_str().unwrap();
        assert!(
            log.iter().all(|l| !l.contains(secret)),
            "no signing secret in the audit log"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_whole_batch_is_audited_on_every_door() {
    let env = TestEnv::new().await;
    // No workers: the jobs stay queued, the OpenAI batch stays validating.
    let app = env.start(api_only()).await;
    let key = sluice::db::tenants::create_key(&env.pool, "acme")
        .await
        .unwrap();
    let c = Client::new(&app, &key.key);

    let native = native_batch(&c, 2).await;
    let (status, body) = c
        .post(&format!("/v1/batches/{native}/cancel"), &json!({}), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (actor, target, before, after) = one(&env, "batch.cancel").await;
    assert_eq!(
        (actor.as_str(), target.as_str()),
        (key.id.as_str(), native.as_str())
    );
    let (before, after) = (before.unwrap(), after.unwrap());
    assert_eq!(
        (&before["status"], &before["unfinished_jobs"]),
        (&json!("in_progress"), &json!(2))
    );
    assert_eq!(
        (&after["status"], &after["cancelled_jobs"]),
        (&json!("cancelled"), &json!(2))
    );
    // A cancel that finds nothing left to stop changes nothing and records nothing.
    let (status, _) = c
        .post(&format!("/v1/batches/{native}/cancel"), &json!({}), None)
        .await;
    assert_eq!(status, 409);
    assert_eq!(rows(&env, "batch.cancel").await.len(), 1);

    // The OpenAI front door's batch.
    let openai = openai_batch(&c).await;
    let (status, body) = c
        .post(&format!("/v1/batches/{openai}/cancel"), &json!({}), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (actor, target, before, after) = rows(&env, "batch.cancel").await.remove(1);
    assert_eq!(
        (actor.as_str(), target.as_str()),
        (key.id.as_str(), openai.as_str())
    );
    assert_eq!(before.unwrap()["status"], "validating");
    assert_eq!(after.unwrap()["status"], "cancelling");

    // `sluice cancel batch_…` goes through the API: the row names the key it used.
    let third = native_batch(&c, 1).await;
    let out = sluice_cmd()
        .env("RUST_LOG", "warn")
        .args(["cancel", &third, "--api-key", &key.key])
        .arg("--api-url")
        .arg(format!("http://{}", app.api_addr.unwrap()))
        .output()
        .unwrap();
    ok(&out);
    let (actor, target, _, after) = rows(&env, "batch.cancel").await.remove(2);
    assert_eq!(
        (actor.as_str(), target.as_str()),
        (key.id.as_str(), third.as_str())
    );
    assert_eq!(after.unwrap()["cancelled_jobs"], 1);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_a_schedule_now_is_audited_with_its_previous_and_new_run() {
    let env = TestEnv::new().await;
    env.key("ops").await;
    let work = tempfile::tempdir().unwrap();
    let cfg = env.write_config(work.path());
    let jobs = work.path().join("jobs");
    std::fs::create_dir_all(jobs.join("inbox")).unwrap();
    std::fs::copy("jobs/hourly-inbox.toml", jobs.join("hourly-inbox.toml")).unwrap();
    std::fs::copy("jobs/inbox/example.jsonl", jobs.join("inbox/example.jsonl")).unwrap();
    let dir = jobs.display().to_string();
    let args = [
        "schedules",
        "run-now",
        "hourly-inbox",
        "--dir",
        dir.as_str(),
    ];
    as_alice(&cfg, &args);
    as_alice(&cfg, &args);
    let runs = rows(&env, "schedule.run_now").await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (actor, target, before, after) = &runs[0];
    assert_eq!(
        (actor.as_str(), target.as_str()),
        ("cli:alice", "schedule:hourly-inbox")
    );
    assert_eq!(before.as_ref().unwrap()["last_run"], Value::Null);
    let after = after.as_ref().unwrap();
    assert_eq!(
        (&after["outcome"], &after["jobs"]),
        (&json!("fired"), &json!(2))
    );
    assert!(after["batch_id"].as_str().unwrap().starts_with("batch_"));
    let (_, _, before, after) = &runs[1];
    assert_eq!(before.as_ref().unwrap()["last_run"]["outcome"], "fired");
    assert_eq!(after.as_ref().unwrap()["outcome"], "empty");
    env.cleanup().await;
}
