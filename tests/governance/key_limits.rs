//! Per-key limits on the shared budgets: a key's own rpm holds across app instances while
//! another key of the same tenant runs freely; every submission path records its key; limits
//! are validated, changed, cleared and audited from the CLI and the admin API.

use std::time::Instant;

use serde_json::{Value, json};

use super::{ADMIN_KEY, T, api_only, ok, sluice, with_admin_key};
use crate::common::{Client, TestEnv, job, wait_until};

/// The id of the key that `keys create` printed, from `keys list --format json`.
fn key_id(cfg: &std::path::Path, key: &str) -> String {
    let list: Value =
        serde_json::from_str(&ok(&sluice(cfg, &["keys", "list", "--format", "json"]))).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|k| key.starts_with(k["key_prefix"].as_str().unwrap()))
        .map(|k| k["id"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no key like {key} in {list}"))
}

/// How many of the jobs submitted by `key_id` are in `status`.
async fn with_status(env: &TestEnv, key_id: &str, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE api_key_id = $1 AND status = $2")
        .bind(key_id)
        .bind(status)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

fn jobs(n: usize, tag: &str) -> Value {
    json!({"jobs": (0..n).map(|i| job(&format!("{tag} {i}"))).collect::<Vec<_>>()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_rpm_holds_across_two_instances_while_another_key_of_its_tenant_runs_freely() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = env.write_config(dir.path());
    let limited = ok(&sluice(
        &cfg,
        &["keys", "create", "--tenant", "acme", "--rpm", "2"],
    ))
    .trim()
    .to_string();
    let limited_id = key_id(&cfg, &limited);
    let free = env.key("acme").await;
    let free_id = key_id(&cfg, &free);

    // Two instances, each with its API and its workers, over one database.
    let (a, b) = (env.up().await, env.up().await);
    let (ca, cb) = (Client::new(&a, &limited), Client::new(&b, &limited));
    let started = Instant::now();
    for (c, tag) in [(&ca, "a"), (&cb, "b")] {
        let (s, body) = c.post("/v1/jobs", &jobs(3, tag), None).await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, body) = Client::new(&b, &free)
        .post("/v1/jobs", &jobs(4, "free"), None)
        .await;
    assert_eq!(s, 200, "{body}");

    // The other key of the same tenant is not held back…
    wait_until(T, "the free key's jobs finish", || async {
        with_status(&env, &free_id, "succeeded").await == 4
    })
    .await;
    // …while the limited key gets exactly its two calls in the minute (the second one paced
    // into the next ten seconds), whichever instance picks its jobs up.
    wait_until(T, "two of the limited key's jobs run", || async {
        with_status(&env, &limited_id, "succeeded").await == 2
    })
    .await;
    assert!(
        started.elapsed().as_secs() < 55,
        "the checks below hold within the first minute only"
    );
    assert_eq!(with_status(&env, &limited_id, "queued").await, 4);
    let called: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.api_key_id = $1",
    )
    .bind(&limited_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(called, 2, "no more calls than the key's rpm");
    let counted: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(requests), 0)::bigint FROM budget_usage WHERE scope = 'key' AND key = $1",
    )
    .bind(&limited_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(counted, 2, "reservations counted in the shared budget");
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_submission_path_records_the_key_and_amqp_jobs_have_none() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let key = env.key("acme").await;
    let c = Client::new(&app, &key);
    let id: String = sqlx::query_scalar("SELECT id FROM api_keys WHERE tenant = 'acme'")
        .fetch_one(&env.pool)
        .await
        .unwrap();

    let (s, native) = c.post("/v1/jobs", &job("native"), None).await;
    assert_eq!(s, 200, "{native}");
    let (s, chat) = c
        .post(
            "/v1/chat/completions",
            &json!({"model": "summarize", "messages": [{"role": "user", "content": "sync"}]}),
            None,
        )
        .await;
    assert_eq!(s, 200, "{chat}");
    let batch_id = super::batches_list::openai_batch(&c).await;
    let bytes = serde_json::to_vec(&job("over amqp")).unwrap();
    let headers = [("sluice-api-key", key.as_str()), ("sluice-schema", "1")];
    env.publish_job("acme", &bytes, &headers, Some("amqp-1"))
        .await;

    wait_until(T, "four jobs recorded", || async {
        env.count("SELECT count(*) FROM jobs").await == 4
    })
    .await;
    let rows: Vec<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT api_key_id, batch_id FROM jobs ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let keyed = rows
        .iter()
        .filter(|(k, _)| k.as_deref() == Some(&id))
        .count();
    assert_eq!(
        keyed, 3,
        "HTTP, chat and file batch carry the key: {rows:?}"
    );
    assert!(
        rows.iter()
            .any(|(k, b)| k.as_deref() == Some(&id) && b.as_deref() == Some(&batch_id)),
        "{rows:?}"
    );
    assert_eq!(
        rows.iter().filter(|(k, _)| k.is_none()).count(),
        1,
        "the AMQP job has no key: {rows:?}"
    );
    app.stop().await;
    env.cleanup().await;
}

/// The audit rows of `action` on `target`, as `(actor, after)`.
async fn audited(env: &TestEnv, action: &str, target: &str) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT actor, COALESCE(after, 'null'::jsonb) FROM audit_log WHERE action = $1 AND target = $2 ORDER BY at, id",
    )
    .bind(action)
    .bind(target)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_limits_are_validated_changed_cleared_and_audited_from_the_cli_and_the_admin_api() {
    let mut env = TestEnv::new().await;
    with_admin_key(&mut env);
    let dir = tempfile::tempdir().unwrap();
    let cfg = env.write_config(dir.path());

    for bad in ["0", "-5"] {
        let out = sluice(&cfg, &["keys", "create", "--tenant", "acme", "--rpm", bad]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--rpm must be a positive number"), "{err}");
    }
    let key = ok(&sluice(
        &cfg,
        &[
            "keys", "create", "--tenant", "acme", "--rpm", "3", "--tpm", "9000",
        ],
    ))
    .trim()
    .to_string();
    let id = key_id(&cfg, &key);
    let target = format!("key:{id}");
    let created = audited(&env, "budget.set", &target).await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0].1, json!({"tpm": 9000, "rpm": 3}));

    let out = sluice(&cfg, &["budgets", "set", "--key", "key_nope", "--rpm", "5"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no API key with id `key_nope`"), "{err}");
    let out = sluice(&cfg, &["budgets", "set", "--key", &id, "--daily-usd", "5"]);
    assert!(!out.status.success(), "a key has no USD cap of its own");
    let out = sluice(&cfg, &["budgets", "set", "--key", &id, "--tpm", "0"]);
    assert!(!out.status.success(), "zero is refused");

    ok(&sluice(
        &cfg,
        &["budgets", "set", "--key", &id, "--rpm", "7"],
    ));
    ok(&sluice(&cfg, &["budgets", "clear", "--key", &id, "--tpm"]));
    let list: Value =
        serde_json::from_str(&ok(&sluice(&cfg, &["keys", "list", "--format", "json"]))).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(
        (row["rpm"].clone(), row["tpm"].clone()),
        (json!(7), Value::Null)
    );
    let table = ok(&sluice(&cfg, &["keys", "list"]));
    assert!(table.contains("rpm") && table.contains("tpm"), "{table}");
    let shown = ok(&sluice(&cfg, &["budgets", "show", "--tenant", "acme"]));
    assert!(
        shown.contains(&id),
        "a tenant's report shows its keys: {shown}"
    );
    assert_eq!(audited(&env, "budget.set", &target).await.len(), 2);
    assert_eq!(audited(&env, "budget.clear", &target).await.len(), 1);

    // The admin API: the same rules, errors in OpenAI's shape, audited as the admin key.
    let app = env.start(api_only()).await;
    let admin = Client::new(&app, ADMIN_KEY);
    let (s, body) = admin
        .post("/v1/admin/keys", &json!({"tenant": "acme", "rpm": 0}), None)
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["param"], "rpm", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let (s, made) = admin
        .post(
            "/v1/admin/keys",
            &json!({"tenant": "acme", "rpm": 4, "tpm": 1000}),
            None,
        )
        .await;
    assert_eq!(s, 200, "{made}");
    assert_eq!(
        (made["rpm"].clone(), made["tpm"].clone()),
        (json!(4), json!(1000))
    );
    let made_id = made["id"].as_str().unwrap();
    let (s, body) = admin
        .post(
            "/v1/admin/budgets",
            &json!({"key": "key_nope", "rpm": 1}),
            None,
        )
        .await;
    assert_eq!(s, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key_nope")
    );
    let (s, body) = admin
        .post(
            "/v1/admin/budgets",
            &json!({"key": made_id, "rpm": -1}),
            None,
        )
        .await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = admin
        .post(
            "/v1/admin/budgets",
            &json!({"key": made_id, "monthly_usd": "3"}),
            None,
        )
        .await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = admin
        .post(
            "/v1/admin/budgets",
            &json!({"key": made_id, "rpm": 9}),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = admin.post_raw("/v1/admin/budgets", "{not json").await;
    assert_eq!(s, 400, "{body}");
    assert!(body["error"]["message"].is_string(), "OpenAI shape: {body}");
    let (s, body) = admin
        .post(
            "/v1/admin/budgets/clear",
            &json!({"key": made_id, "limits": ["daily_usd"]}),
            None,
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["param"], "limits", "{body}");
    let (s, body) = admin
        .post(
            "/v1/admin/budgets/clear",
            &json!({"key": made_id, "limits": ["rpm", "tpm"]}),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["cleared"], json!(["rpm", "tpm"]));
    let made_target = format!("key:{made_id}");
    let cleared = audited(&env, "budget.clear", &made_target).await;
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].0, "admin-key");
    assert_eq!(audited(&env, "budget.set", &made_target).await.len(), 2);
    app.stop().await;
    env.cleanup().await;
}
