//! Webhook endpoints managed by the operator: the admin key over HTTP for any tenant
//! (`/v1/admin/tenants/{tenant}/webhook_endpoints…`), and `sluice webhooks update|delete`,
//! each change audited and each unknown id refused clearly.

use serde_json::{Value, json};

use super::{ADMIN_KEY, api_only, ok, sluice, with_admin_key};
use crate::common::{Client, TestEnv};

/// The endpoint changes in the audit log, as `(actor, action)`, oldest first.
async fn endpoint_audit(env: &TestEnv, id: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT actor, action FROM audit_log WHERE target = $1 ORDER BY at, id")
        .bind(id)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// `DELETE` with `c`'s key.
async fn delete(c: &Client, path: &str) -> (u16, Value) {
    let resp = c
        .http
        .delete(format!("{}{path}", c.base))
        .bearer_auth(&c.key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_key_manages_any_tenants_webhook_endpoints_with_audit_rows() {
    let mut env = TestEnv::new().await;
    with_admin_key(&mut env);
    env.config.webhooks.allow_private_networks = vec!["127.0.0.0/8".parse().unwrap()];
    let app = env.start(api_only()).await;
    let tenant_key = env.key("acme").await;
    let admin = Client::new(&app, ADMIN_KEY);
    let base = "/v1/admin/tenants/acme/webhook_endpoints";

    let (s, made) = admin
        .post(
            base,
            &json!({"url": "http://127.0.0.1:9/hook", "event_types": ["batch.completed"], "name": "ops"}),
            None,
        )
        .await;
    assert_eq!(s, 200, "{made}");
    assert!(made["signing_secret"].is_string());
    let id = made["id"].as_str().unwrap().to_string();
    // The tenant sees what the operator made.
    let (_, listed) = Client::new(&app, &tenant_key)
        .get("/v1/webhook_endpoints")
        .await;
    assert_eq!(listed["data"][0]["id"], id.as_str(), "{listed}");
    let (s, page) = admin.get(base).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 1);

    let (s, changed) = admin
        .post(
            &format!("{base}/{id}"),
            &json!({"event_types": ["job.failed", "batch.completed"]}),
            None,
        )
        .await;
    assert_eq!(s, 200, "{changed}");
    assert_eq!(
        changed["event_types"],
        json!(["job.failed", "batch.completed"])
    );
    let (s, rotated) = admin
        .post(&format!("{base}/{id}/rotate_secret"), &json!({}), None)
        .await;
    assert_eq!(s, 200, "{rotated}");
    assert_ne!(rotated["signing_secret"], made["signing_secret"]);
    let (s, got) = admin.get(&format!("{base}/{id}")).await;
    assert_eq!(s, 200, "{got}");
    assert!(got.get("signing_secret").is_none());

    // Errors in OpenAI's shape: an unknown tenant, an unknown id, a bad body, a tenant key.
    let (s, e) = admin
        .post(
            "/v1/admin/tenants/nobody/webhook_endpoints",
            &json!({"url": "http://127.0.0.1:9/hook", "event_types": ["batch.completed"]}),
            None,
        )
        .await;
    assert_eq!(s, 404, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("nobody"));
    let (s, e) = admin.get(&format!("{base}/we_nope")).await;
    assert_eq!(s, 404, "{e}");
    let (s, e) = admin
        .post(&format!("{base}/{id}"), &json!({"colour": "red"}), None)
        .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    let (s, e) = Client::new(&app, &tenant_key).get(base).await;
    assert_eq!(s, 403, "{e}");

    let (s, gone) = delete(&admin, &format!("{base}/{id}")).await;
    assert_eq!(s, 200, "{gone}");
    assert_eq!(gone["deleted"], true);
    let (s, _) = delete(&admin, &format!("{base}/{id}")).await;
    assert_eq!(s, 404);
    let audit = endpoint_audit(&env, &id).await;
    let actions: Vec<&str> = audit.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "webhook_endpoint.create",
            "webhook_endpoint.update",
            "webhook_endpoint.rotate_secret",
            "webhook_endpoint.delete"
        ]
    );
    assert!(
        audit.iter().all(|(actor, _)| actor == "admin-key"),
        "{audit:?}"
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_update_and_delete_change_an_endpoint_and_refuse_an_unknown_id() {
    let env = TestEnv::new().await;
    env.key("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = env.write_config(dir.path());
    ok(&sluice(
        &cfg,
        &[
            "webhooks",
            "add",
            "https://example.com/a",
            "--tenant",
            "acme",
        ],
    ));
    let id: String = sqlx::query_scalar("SELECT id FROM webhook_endpoints")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let row = || async {
        sqlx::query_as::<_, (String, Vec<String>, String, String, Option<String>)>(
            "SELECT url, event_types, name, status, disabled_reason FROM webhook_endpoints WHERE id = $1",
        )
        .bind(&id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };

    ok(&sluice(
        &cfg,
        &[
            "webhooks",
            "update",
            &id,
            "--tenant",
            "acme",
            "--url",
            "https://example.com/b",
            "--events",
            "job.failed,batch.failed",
            "--name",
            "pager",
        ],
    ));
    let (url, events, name, status, _) = row().await;
    assert_eq!(url, "https://example.com/b");
    assert_eq!(events, ["job.failed", "batch.failed"]);
    assert_eq!((name.as_str(), status.as_str()), ("pager", "enabled"));
    ok(&sluice(
        &cfg,
        &["webhooks", "update", &id, "--tenant", "acme", "--disable"],
    ));
    let (_, _, _, status, reason) = row().await;
    assert_eq!(status, "disabled");
    assert_eq!(reason.as_deref(), Some("disabled by the operator"));
    let listed = ok(&sluice(&cfg, &["webhooks", "list", "--tenant", "acme"]));
    assert!(listed.contains("disabled by the operator"), "{listed}");
    ok(&sluice(
        &cfg,
        &["webhooks", "update", &id, "--tenant", "acme", "--enable"],
    ));
    assert_eq!(row().await.3, "enabled");

    for (args, says) in [
        (
            vec![
                "webhooks", "update", "we_nope", "--tenant", "acme", "--name", "x",
            ],
            "has no webhook endpoint `we_nope`",
        ),
        (
            vec![
                "webhooks",
                "update",
                id.as_str(),
                "--tenant",
                "globex",
                "--name",
                "x",
            ],
            "tenant `globex` has no webhook endpoint",
        ),
        (
            vec!["webhooks", "update", id.as_str(), "--tenant", "acme"],
            "nothing to change",
        ),
        (
            vec![
                "webhooks",
                "update",
                id.as_str(),
                "--tenant",
                "acme",
                "--events",
                "job.exploded",
            ],
            "unknown event type `job.exploded`",
        ),
        (
            vec![
                "webhooks",
                "update",
                id.as_str(),
                "--tenant",
                "acme",
                "--url",
                "ftp://x",
            ],
            "is not an http(s) URL",
        ),
        (
            vec!["webhooks", "delete", "we_nope", "--tenant", "acme"],
            "has no webhook endpoint `we_nope`",
        ),
    ] {
        let out = sluice(&cfg, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }

    ok(&sluice(
        &cfg,
        &["webhooks", "delete", &id, "--tenant", "acme"],
    ));
    assert_eq!(env.count("SELECT count(*) FROM webhook_endpoints").await, 0);
    let audit = endpoint_audit(&env, &id).await;
    let actions: Vec<&str> = audit.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "webhook_endpoint.create",
            "webhook_endpoint.update",
            "webhook_endpoint.update",
            "webhook_endpoint.update",
            "webhook_endpoint.delete"
        ]
    );
    assert!(
        audit.iter().all(|(actor, _)| actor.starts_with("cli:")),
        "{audit:?}"
    );
    env.cleanup().await;
}
