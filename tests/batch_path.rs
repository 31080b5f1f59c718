//! Routing and the provider batch path end to end: real Postgres and RabbitMQ, the mock
//! provider speaking OpenAI's and Anthropic's batch APIs.

mod common;

use std::time::Duration;

use common::{Client, TestEnv, job, wait_until};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sluice::app::Roles;
use sluice::mock::MockSettings;

const T: Duration = Duration::from_secs(30);

fn with(model: &str, route: &str, prompt: &str) -> Value {
    let mut j = job(prompt);
    j["model"] = json!(model);
    j["route"] = json!(route);
    j
}

async fn attempts(env: &TestEnv, id: &str) -> Vec<(String, String, Decimal, Decimal)> {
    sqlx::query_as(
        "SELECT route, status, cost_usd, discount FROM attempts WHERE job_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_openai_batch_job_is_billed_at_half_price_through_the_files_and_batches_api() {
    let env = TestEnv::with_mock(MockSettings {
        batch_delay: Duration::from_millis(400),
        ..Default::default()
    })
    .await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let (s, body) = c.post("/v1/jobs", &json!({"jobs": [with("openai/gpt-4o-mini", "batch", "one"), with("openai/gpt-4o-mini", "batch", "two")]}), None).await;
    assert_eq!(s, 200, "{body}");
    let ids: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        let done = c.wait_job(id, T).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["route"], "batch");
        assert_eq!(done["response"]["object"], "chat.completion");
        let rows = attempts(&env, id).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, "batch");
        assert_eq!(rows[0].3, "0.5".parse::<Decimal>().unwrap());
        // The baseline is the premium real-time path (gpt-4o-mini here): twice the batch cost.
        let cost: Decimal = done["cost_usd"].as_str().unwrap().parse().unwrap();
        let baseline: Decimal = done["baseline_cost_usd"].as_str().unwrap().parse().unwrap();
        assert_eq!(baseline, cost * Decimal::TWO);
    }
    assert_eq!(env.mock.stats().batch_items, 2);
    assert_eq!(
        env.count("SELECT count(*) FROM provider_batches WHERE state = 'ended' AND items = 2")
            .await,
        1,
        "both jobs in one batch"
    );
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_anthropic_batch_job_comes_back_in_openai_format() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let (_, body) = c
        .post(
            "/v1/jobs",
            &with("anthropic/claude-haiku-4-5", "batch", "summarize this"),
            None,
        )
        .await;
    let done = c.wait_job(body["id"].as_str().unwrap(), T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["response"]["object"], "chat.completion");
    assert!(done["usage"]["input_tokens"].as_i64().unwrap() > 0);
    assert_eq!(
        attempts(&env, done["id"].as_str().unwrap()).await[0].0,
        "batch"
    );
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn auto_routes_by_deadline_and_explains_itself() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut far = with("summarize", "auto", "due tomorrow");
    far["deadline"] = json!("24h");
    let mut near = with("summarize", "auto", "due soon");
    near["deadline"] = json!("1h");
    let plain = with("summarize", "auto", "no deadline");
    let (_, body) = c
        .post("/v1/jobs", &json!({"jobs": [far, near, plain]}), None)
        .await;
    let ids: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let jobs: Vec<Value> = futures::future::join_all(ids.iter().map(|id| c.wait_job(id, T))).await;
    assert_eq!(jobs[0]["route"], "batch");
    assert!(
        jobs[0]["route_reason"]
            .as_str()
            .unwrap()
            .contains("deadline in 24h"),
        "{}",
        jobs[0]["route_reason"]
    );
    assert_eq!(jobs[1]["route"], "cheap");
    assert!(
        jobs[1]["route_reason"]
            .as_str()
            .unwrap()
            .contains("too close")
    );
    assert_eq!(jobs[2]["route"], "cheap");
    assert!(jobs.iter().all(|j| j["status"] == "succeeded"));
    // A route that cannot be honoured is refused before anything is enqueued.
    let (status, err) = c
        .post("/v1/jobs", &with("openai/gpt-4", "batch", "x"), None)
        .await;
    assert_eq!(
        status, 422,
        "gpt-4 has no batch API in the price list: {err}"
    );
    assert_eq!(err["error"]["param"], "route");
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn expired_batch_items_are_re_driven_and_finally_run_real_time() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut j = with(
        "openai/gpt-4o-mini",
        "batch",
        "slow item [[mock:batch-expire]]",
    );
    j["max_attempts"] = json!(2);
    let (_, body) = c
        .post(
            "/v1/jobs",
            &json!({"jobs": [j, with("openai/gpt-4o-mini", "batch", "quick item")]}),
            None,
        )
        .await;
    let ids: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let expiring = c.wait_job(&ids[0], T).await;
    let quick = c.wait_job(&ids[1], T).await;
    assert_eq!(quick["status"], "succeeded");
    assert_eq!(expiring["status"], "succeeded", "{expiring}");
    assert_eq!(
        expiring["route"], "cheap",
        "after its batch attempts expired it ran real-time"
    );
    let rows = attempts(&env, &ids[0]).await;
    assert!(
        rows.iter().filter(|r| r.1 == "expired").count() >= 1,
        "{rows:?}"
    );
    assert_eq!(
        rows.iter().filter(|r| r.1 == "succeeded").count(),
        1,
        "billed once: {rows:?}"
    );
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_killed_mid_batch_is_replaced_by_another_process() {
    let env = TestEnv::with_mock(MockSettings {
        batch_delay: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let api = env
        .start(Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&api, &env.key("acme").await);
    let dir = tempfile::tempdir().unwrap();
    let mut child = env.spawn_worker(dir.path(), &[]);
    let (_, body) = c
        .post(
            "/v1/jobs",
            &with("openai/gpt-4o-mini", "batch", "survive a crash"),
            None,
        )
        .await;
    let id = body["id"].as_str().unwrap().to_string();
    wait_until(T, "the child submitted the provider batch", || async {
        env.count("SELECT count(*) FROM provider_batches WHERE state = 'in_progress'")
            .await
            == 1
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    // Another process takes the lease over once it lapses, and finishes the batch.
    let other = env
        .start(Roles {
            maintenance: true,
            ..Default::default()
        })
        .await;
    let done = c.wait_job(&id, T).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(attempts(&env, &id).await.len(), 1);
    assert_eq!(
        env.mock.stats().calls_by_job.get(&id).copied().unwrap_or(0),
        1,
        "one provider batch item, no resubmission"
    );
    env.check_invariants().await;
    other.stop().await;
    api.stop().await;
    env.cleanup().await;
}

/// The packer's process dies after the provider created the batch but before sluice recorded
/// it (as when the create call's answer is lost). The process taking the batch over finds the
/// provider batch by its metadata and adopts it: one provider batch, one item, billed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_submission_answer_was_lost_is_adopted_not_sent_twice() {
    let env = TestEnv::with_mock(MockSettings {
        batch_delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let api = env
        .start(Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&api, &env.key("acme").await);
    let dir = tempfile::tempdir().unwrap();
    let mut child = env.spawn_worker(
        dir.path(),
        &[("SLUICE_FAILPOINT", "batch.after_submit_before_record")],
    );
    let (_, body) = c
        .post(
            "/v1/jobs",
            &with("openai/gpt-4o-mini", "batch", "lost answer"),
            None,
        )
        .await;
    let id = body["id"].as_str().unwrap().to_string();
    let status = common::wait_exit(&mut child, T).await;
    assert!(!status.success(), "the failpoint aborted the packer");
    assert_eq!(env.mock.stats().batches_created, 1);
    assert_eq!(
        env.count("SELECT count(*) FROM provider_batches WHERE state = 'submitting'")
            .await,
        1,
        "sluice never learnt the provider batch's id"
    );
    let other = env
        .start(Roles {
            maintenance: true,
            ..Default::default()
        })
        .await;
    let done = c.wait_job(&id, T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let stats = env.mock.stats();
    assert_eq!(
        stats.batches_created, 1,
        "the batch was adopted, not sent again"
    );
    assert_eq!(stats.calls_by_job.get(&id).copied(), Some(1));
    assert_eq!(attempts(&env, &id).await.len(), 1);
    env.check_invariants().await;
    other.stop().await;
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_repeated_request_is_answered_from_the_cache_at_no_cost() {
    let mut env = TestEnv::new().await;
    env.config.aliases.get_mut("summarize").unwrap().cache_ttl = Some(Duration::from_secs(3600));
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let (_, first) = c.post("/v1/jobs", &job("the same question"), None).await;
    let first = c.wait_job(first["id"].as_str().unwrap(), T).await;
    let (_, second) = c.post("/v1/jobs", &job("the same question"), None).await;
    let second = c.wait_job(second["id"].as_str().unwrap(), T).await;
    assert_eq!(second["status"], "succeeded");
    assert_eq!(second["response"], first["response"]);
    assert_eq!(second["cost_usd"], "0");
    let (status, saved): (String, Decimal) =
        sqlx::query_as("SELECT status, saved_usd FROM attempts WHERE job_id = $1")
            .bind(second["id"].as_str().unwrap())
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(status, "cache_hit");
    assert_eq!(
        saved,
        first["cost_usd"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap()
    );
    assert!(
        !env.mock
            .stats()
            .calls_by_job
            .contains_key(second["id"].as_str().unwrap()),
        "the provider was not called"
    );
    // Another tenant never sees this tenant's cache.
    let other = Client::new(&app, &env.key("globex").await);
    let (_, third) = other
        .post("/v1/jobs", &job("the same question"), None)
        .await;
    let third = other.wait_job(third["id"].as_str().unwrap(), T).await;
    assert_ne!(third["cost_usd"], "0");
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_batched_job_whose_deadline_draws_near_moves_to_real_time() {
    let mut env = TestEnv::with_mock(MockSettings {
        batch_delay: Duration::from_secs(4),
        ..Default::default()
    })
    .await;
    env.config.routing.realtime_margin = Duration::from_secs(23 * 3600);
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut j = with("openai/gpt-4o-mini", "auto", "due in twenty hours");
    j["deadline"] = json!("20h");
    let (_, body) = c.post("/v1/jobs", &j, None).await;
    let id = body["id"].as_str().unwrap().to_string();
    let done = c.wait_job(&id, T).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["route"], "cheap");
    assert!(
        done["route_reason"]
            .as_str()
            .unwrap()
            .contains("moved to real-time"),
        "{}",
        done["route_reason"]
    );
    // The batch answer still arrives (and is billed); it is recorded once, as a late ledger row.
    wait_until(T, "the late batch result is recorded", || async {
        env.count("SELECT count(*) FROM provider_batches WHERE state = 'ended'")
            .await
            == 1
    })
    .await;
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

/// A tenant's USD cap holds on the batch path too: each packed job holds its worst-case batch
/// cost until its batch's results are recorded, so racing batches never pass the cap, and jobs
/// past it fail with `budget_exceeded` (policy `reject`).
#[tokio::test]
async fn a_tenants_usd_cap_holds_on_the_batch_path() {
    let mut env = TestEnv::with_mock(MockSettings {
        batch_delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let cap: Decimal = "0.02".parse().unwrap();
    env.config.budgets.tenants.insert(
        "acme".into(),
        sluice::config::BudgetSettings {
            daily_usd: Some(cap),
            policy: Some("reject".into()),
            ..Default::default()
        },
    );
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    // o1 at batch prices ($7.50 / $30 per million): up to ~$0.009 per job with 300 output
    // tokens, about a tenth of that actually spent. Two fit in flight at first.
    let jobs: Vec<Value> = (0..20)
        .map(|i| {
            let mut j = with(
                "openai/o1-2024-12-17",
                "batch",
                &format!("capped batch job {i}"),
            );
            j["body"]["max_tokens"] = json!(300);
            j
        })
        .collect();
    let (s, body) = c.post("/v1/jobs", &json!({ "jobs": jobs }), None).await;
    assert_eq!(s, 200, "{body}");
    wait_until(Duration::from_secs(60), "every job is finished", || async {
        env.count("SELECT count(*) FROM jobs WHERE finalized_at IS NULL")
            .await
            == 0
    })
    .await;

    let spent: Decimal =
        sqlx::query_scalar("SELECT COALESCE(sum(cost_usd), 0) FROM attempts WHERE tenant = 'acme'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(spent <= cap, "spent ${spent} > cap ${cap}");
    let succeeded = env
        .count("SELECT count(*) FROM jobs WHERE status = 'succeeded' AND route = 'batch'")
        .await;
    let rejected = env
        .count("SELECT count(*) FROM jobs WHERE status = 'failed' AND error->>'code' = 'budget_exceeded'")
        .await;
    assert_eq!(succeeded + rejected, 20);
    assert!(
        succeeded >= 3,
        "the cap is used: {succeeded} succeeded, ${spent}"
    );
    assert!(rejected > 0, "jobs past the cap are rejected");
    assert!(
        env.count("SELECT count(*) FROM provider_batches WHERE state = 'ended'")
            .await
            >= 2,
        "the cap spread the work over several batches"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM budget_holds").await,
        0,
        "every batch hold is released when its results are recorded"
    );
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}
