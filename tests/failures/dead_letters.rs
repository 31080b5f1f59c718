//! Dead letters over the API: listed per tenant with filters, requeued to run again, purged
//! from the list without losing the job.

use serde_json::json;

use super::common::{Client, TestEnv, wait_until};
use super::{T, attempts, single, submit};

#[tokio::test]
async fn a_failed_job_is_a_dead_letter_that_can_be_requeued_and_succeed() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let other = Client::new(&app, &env.key("globex").await);
    // One try on one deployment: a single 500 makes it a dead letter; the next call succeeds.
    let flaky = submit(&c, &single("flaky [[mock:fail-first=1]]", 1)).await;
    let bad = submit(&c, &single("bad [[mock:status=400]]", 1)).await;
    assert_eq!(c.wait_job(&flaky, T).await["status"], "failed");
    assert_eq!(c.wait_job(&bad, T).await["status"], "failed");

    let (status, list) = c.get("/v1/dead_letters").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let (_, by_code) = c.get("/v1/dead_letters?code=http_500").await;
    assert_eq!(by_code["data"].as_array().unwrap().len(), 1);
    assert_eq!(by_code["data"][0]["id"], flaky.as_str());
    let (_, by_model) = c
        .get("/v1/dead_letters?model=openai/gpt-4o-mini&limit=1")
        .await;
    assert_eq!(by_model["has_more"], true);
    assert_eq!(
        other.get("/v1/dead_letters").await.1["data"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "a tenant never sees another tenant's dead letters"
    );
    let (_, theirs) = other
        .post("/v1/dead_letters/requeue", &json!({"ids": [flaky]}), None)
        .await;
    assert_eq!(theirs["count"], 0);
    assert_eq!(theirs["skipped"], json!([flaky]));

    let (status, requeued) = c
        .post("/v1/dead_letters/requeue", &json!({"ids": [flaky]}), None)
        .await;
    assert_eq!(status, 200, "{requeued}");
    assert_eq!(requeued["requeued"], json!([flaky]));
    let done = c.wait_job(&flaky, T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["attempts"], 2,
        "the attempt count is kept across the requeue"
    );
    let codes: Vec<&str> = done["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["code"].as_str())
        .collect();
    assert_eq!(codes, ["http_500", "requeued"], "the history is kept");
    let ledger = attempts(&env.pool, &flaky).await;
    assert_eq!(ledger.len(), 2);
    assert_eq!(ledger[1].status, "succeeded");

    let (_, left) = c.get("/v1/dead_letters").await;
    assert_eq!(left["data"].as_array().unwrap().len(), 1);
    assert_eq!(left["data"][0]["id"], bad.as_str());
    let (status, purged) = c
        .post(
            "/v1/dead_letters/purge",
            &json!({"all": true, "code": "http_400"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{purged}");
    assert_eq!(purged["purged"], json!([bad]));
    assert_eq!(
        c.get("/v1/dead_letters").await.1["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let kept = c.get(&format!("/v1/jobs/{bad}")).await.1;
    assert_eq!(kept["status"], "failed", "purging never deletes a job");
    assert!(kept["dead_letter_purged_at"].is_string());
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn requeue_and_purge_refuse_a_body_that_names_nothing_or_too_much() {
    let env = TestEnv::new().await;
    let app = env.start(super::api_only()).await;
    let c = Client::new(&app, &env.key("acme").await);
    for (body, param) in [
        (json!({}), "ids"),
        (json!({"ids": []}), "ids"),
        (json!({"ids": ["job_x"], "all": true}), "all"),
    ] {
        for path in ["/v1/dead_letters/requeue", "/v1/dead_letters/purge"] {
            let (status, err) = c.post(path, &body, None).await;
            assert_eq!(status, 400, "{path} {body}: {err}");
            assert_eq!(err["error"]["param"], param, "{err}");
        }
    }
    let (status, err) = c
        .post(
            "/v1/dead_letters/purge",
            &json!({"all": true, "colour": "red"}),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert!(err["error"]["message"].as_str().unwrap().contains("colour"));
    assert_eq!(c.get("/v1/dead_letters?limit=0").await.0, 400);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn requeued_dead_letters_are_published_by_the_relay() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let ids = [
        submit(&c, &single("one [[mock:fail-first=1]]", 1)).await,
        submit(&c, &single("two [[mock:fail-first=1]]", 1)).await,
    ];
    for id in &ids {
        c.wait_job(id, T).await;
    }
    let (_, requeued) = c
        .post("/v1/dead_letters/requeue", &json!({"all": true}), None)
        .await;
    assert_eq!(requeued["count"], 2, "{requeued}");
    wait_until(T, "both requeued jobs succeed", || async {
        env.count("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
            .await
            == 2
    })
    .await;
    app.stop().await;
    env.cleanup().await;
}
