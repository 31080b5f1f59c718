//! The admin API and the CLI's admin commands, and the audit row each of them leaves.

use serde_json::{Value, json};

use super::{ADMIN_KEY, api_only, ok, sluice, with_admin_key};
use crate::common::{Client, TestEnv};

/// The actions in the audit log, oldest first.
async fn actions(env: &TestEnv) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT actor, action, target FROM audit_log ORDER BY at, id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_manages_tenants_keys_and_budgets_and_each_change_is_audited() {
    let mut env = TestEnv::new().await;
    with_admin_key(&mut env);
    let app = env.start(api_only()).await;
    let admin = Client::new(&app, ADMIN_KEY);

    let (s, body) = admin
        .post("/v1/admin/tenants", &json!({"name": "acme"}), None)
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = admin
        .post("/v1/admin/tenants", &json!({"name": "acme"}), None)
        .await;
    assert_eq!(s, 409, "{body}");
    let (s, key) = admin
        .post(
            "/v1/admin/keys",
            &json!({"tenant": "acme", "name": "ci", "scopes": ["read"], "expires_in": "90d"}),
            None,
        )
        .await;
    assert_eq!(s, 200, "{key}");
    let reader = Client::new(&app, key["key"].as_str().unwrap());
    assert_eq!(reader.get("/v1/jobs").await.0, 200);
    assert_eq!(reader.get("/v1/admin/tenants").await.0, 403);

    let (_, list) = admin.get("/v1/admin/keys?tenant=acme").await;
    let listed = &list["data"][0];
    assert_eq!(listed["name"], "ci");
    assert_eq!(listed["scopes"], json!(["read"]));
    assert!(listed["expires_at"].is_string());
    assert!(
        listed.get("key").is_none() && !list.to_string().contains(key["key"].as_str().unwrap())
    );

    let (s, body) = admin
        .post(
            "/v1/admin/budgets",
            &json!({"tenant": "acme", "tpm": 1000, "daily_usd": "5"}),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = admin
        .post(
            "/v1/admin/budgets",
            &json!({"tenant": "nobody", "tpm": 1000}),
            None,
        )
        .await;
    assert_eq!(s, 404, "{body}");
    let (s, body) = admin
        .post(
            "/v1/admin/budgets",
            &json!({"tenant": "acme", "tpm": -1}),
            None,
        )
        .await;
    assert_eq!(s, 400, "{body}");
    let (_, budgets) = admin.get("/v1/admin/budgets").await;
    assert!(
        budgets["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["key"] == "acme" && b["tpm"] == 1000)
    );

    let id = key["id"].as_str().unwrap();
    let (s, _) = admin
        .post(&format!("/v1/admin/keys/{id}/revoke"), &json!({}), None)
        .await;
    assert_eq!(s, 200);
    let (s, body) = admin
        .post("/v1/admin/tenants/acme/disable", &json!({}), None)
        .await;
    assert_eq!(s, 200, "{body}");
    let (_, tenants) = admin.get("/v1/admin/tenants").await;
    assert!(tenants["data"][0]["disabled_at"].is_string(), "{tenants}");

    let got = actions(&env).await;
    let names: Vec<&str> = got.iter().map(|(_, a, _)| a.as_str()).collect();
    assert_eq!(
        names,
        [
            "tenant.create",
            "key.create",
            "budget.set",
            "key.revoke",
            "tenant.disable"
        ],
        "{got:?}"
    );
    assert!(
        got.iter().all(|(actor, _, _)| actor == "admin-key"),
        "{got:?}"
    );
    let budget: (Option<Value>, Option<Value>) =
        sqlx::query_as("SELECT before, after FROM audit_log WHERE action = 'budget.set'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(budget.0, None, "no budget before");
    assert_eq!(budget.1.unwrap()["tpm"], 1000);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_admin_commands_are_audited_and_sluice_audit_shows_them() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = env.write_config(dir.path());
    ok(&sluice(&cfg, &["tenants", "create", "acme"]));
    let key = ok(&sluice(
        &cfg,
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--name",
            "batch",
            "--scopes",
            "submit",
            "--expires-in",
            "30d",
        ],
    ));
    let key = key.trim();
    assert!(key.starts_with("sk-sluice-"));
    let rotated = ok(&sluice(&cfg, &["keys", "rotate", key, "--grace", "1h"]));
    assert!(rotated.trim().starts_with("sk-sluice-") && rotated.trim() != key);
    ok(&sluice(&cfg, &["keys", "revoke", rotated.trim()]));
    ok(&sluice(
        &cfg,
        &["budgets", "set", "--tenant", "acme", "--rpm", "60"],
    ));
    ok(&sluice(&cfg, &["tenants", "disable", "acme"]));

    let listed = ok(&sluice(
        &cfg,
        &["keys", "list", "--tenant", "acme", "--format", "json"],
    ));
    assert!(
        !listed.contains(key) && !listed.contains(rotated.trim()),
        "keys are never shown again"
    );
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let tenants = ok(&sluice(&cfg, &["tenants", "list"]));
    assert!(tenants.contains("acme"), "{tenants}");

    let audit: Value = serde_json::from_str(&ok(&sluice(
        &cfg,
        &["audit", "--since", "1h", "--format", "json"],
    )))
    .unwrap();
    let names: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "tenant.create",
            "key.create",
            "key.rotate",
            "key.revoke",
            "budget.set",
            "tenant.disable"
        ],
        "{audit}"
    );
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["actor"].as_str().unwrap().starts_with("cli:")),
        "{audit}"
    );
    let table = ok(&sluice(&cfg, &["audit"]));
    assert!(table.contains("key.rotate"), "{table}");
    let unknown = sluice(&cfg, &["keys", "revoke", "key_nope"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("keys list"));
    env.cleanup().await;
}

/// The admin key as README gives it: `SLUICE_ADMIN_KEY` in the environment of the real binary
/// (no `key_sha256` in the file). The process starts, the key opens the admin API, and a tenant
/// route still refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_key_from_sluice_admin_key_opens_the_admin_api_of_the_real_binary() {
    let mut env = TestEnv::new().await;
    let key = "sk-admin-from-the-environment-0123456789";
    let api = env
        .spawn_api(
            "serve",
            &[("SLUICE_ADMIN_KEY", key)],
            std::time::Duration::from_secs(60),
        )
        .await;
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/v1/admin/tenants", api.base))
        .bearer_auth(key)
        .json(&json!({"name": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );
    let resp = http
        .get(format!("{}/v1/admin/tenants", api.base))
        .bearer_auth("sk-not-the-admin-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = http
        .get(format!("{}/v1/jobs", api.base))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    drop(api);
    env.cleanup().await;
}
