//! Retention: bodies of jobs finished longer ago than the retention are purged (metadata and
//! ledger stay); hashing tenants keep only a SHA-256 of each prompt once the job has finished.

use serde_json::{Value, json};
use sluice::governance::{StorePrompts, TenantRetention};

use super::{T, api_only};
use crate::common::{Client, TestEnv, job};

async fn row(env: &TestEnv, id: &str) -> (Value, Option<Value>, String, i64) {
    sqlx::query_as(
        "SELECT request, response, status, (SELECT count(*) FROM attempts a WHERE a.job_id = j.id)
         FROM jobs j WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_the_retention_are_purged_and_the_ledger_stays() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let old = c
        .post("/v1/jobs", &job("old secret prompt ✓ عربى"), None)
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let new = c.post("/v1/jobs", &job("recent prompt"), None).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait_job(&old, T).await;
    c.wait_job(&new, T).await;
    let (request_before, _, _, ledger_before) = row(&env, &old).await;
    // The first job finished 31 days ago, past the default 30-day retention.
    sqlx::query("UPDATE jobs SET finalized_at = now() - interval '31 days' WHERE id = $1")
        .bind(&old)
        .execute(&env.pool)
        .await
        .unwrap();
    let cleaned = sluice::retention::tick(&app.ctx).await.unwrap();
    assert_eq!(cleaned.bodies_purged, 1);

    let (request, response, status, ledger) = row(&env, &old).await;
    assert_eq!(status, "succeeded");
    assert!(response.is_none());
    assert_eq!(ledger, ledger_before, "the ledger stays");
    let expected: String =
        sqlx::query_scalar("SELECT encode(sha256(convert_to($1::jsonb::text, 'UTF8')), 'hex')")
            .bind(&request_before)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(request, json!({"sha256": expected}));
    let (request, response, _, _) = row(&env, &new).await;
    assert!(request.to_string().contains("recent prompt") && response.is_some());
    assert_eq!(
        sluice::retention::tick(&app.ctx)
            .await
            .unwrap()
            .bodies_purged,
        0,
        "idempotent"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashing_tenant_keeps_only_a_hash_of_each_prompt_once_the_job_has_finished() {
    let mut env = TestEnv::new().await;
    env.config.retention.tenants.insert(
        "hashy".into(),
        TenantRetention {
            store_prompts: StorePrompts::Hash,
        },
    );
    let api = env.start(api_only()).await;
    let c = Client::new(&api, &env.key("hashy").await);
    let other = Client::new(&api, &env.key("acme").await);
    let id = c.post("/v1/jobs", &job("hash me"), None).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let kept = other.post("/v1/jobs", &job("keep me"), None).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Queued: the body is still needed to make the call (and any retry).
    assert_eq!(
        sluice::retention::tick(&api.ctx)
            .await
            .unwrap()
            .prompts_hashed,
        0
    );
    assert!(row(&env, &id).await.0.to_string().contains("hash me"));

    let worker = env.up().await;
    c.wait_job(&id, T).await;
    other.wait_job(&kept, T).await;
    assert_eq!(
        env.mock
            .requests()
            .iter()
            .filter(|r| r.body.contains("hash me"))
            .count(),
        1
    );
    let cleaned = sluice::retention::tick(&worker.ctx).await.unwrap();
    assert_eq!(cleaned.prompts_hashed, 1);
    let (request, response, status, _) = row(&env, &id).await;
    assert_eq!(status, "succeeded");
    assert!(
        request["sha256"].as_str().is_some_and(|h| h.len() == 64),
        "{request}"
    );
    assert!(!request.to_string().contains("hash me"));
    assert!(
        response.is_some(),
        "the answer is kept until the retention ends"
    );
    assert!(row(&env, &kept).await.0.to_string().contains("keep me"));
    env.cleanup().await;
}
