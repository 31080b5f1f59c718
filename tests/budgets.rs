//! Shared budgets end to end: several real worker processes against a mock provider whose own
//! limits equal the configured budgets.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Client, TestEnv, job, wait_until};
use rust_decimal::Decimal;
use serde_json::json;
use sluice::app::Roles;
use sluice::config::BudgetSettings;
use sluice::mock::MockSettings;

const T: Duration = Duration::from_secs(30);

fn spawn_workers(env: &TestEnv, dir: &tempfile::TempDir, n: usize) -> Vec<common::ChildGuard> {
    (0..n).map(|_| env.spawn_worker(dir.path(), &[])).collect()
}

fn stop(children: Vec<common::ChildGuard>) {
    for mut c in children {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let start = Instant::now();
        while c.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
    }
}

fn jobs(n: usize, model: &str, tag: &str) -> serde_json::Value {
    let list: Vec<_> = (0..n)
        .map(|i| {
            let mut j = job(&format!(
                "{tag} ticket {i}: the export page times out for large accounts"
            ));
            j["model"] = json!(model);
            j["body"]["max_tokens"] = json!(50);
            j
        })
        .collect();
    json!({"jobs": list})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_worker_processes_share_one_tpm_budget_without_a_single_429_and_a_small_tenant_is_not_starved()
 {
    const TPM: u64 = 6_000;
    let mut env = TestEnv::with_mock(MockSettings {
        tpm: Some(TPM),
        ..Default::default()
    })
    .await;
    env.config.database.max_connections = 4;
    env.config.budgets.deployments.insert(
        "openai/gpt-4o-mini".into(),
        BudgetSettings {
            tpm: Some(TPM as i64),
            ..Default::default()
        },
    );
    // The API process also seeds the budget from its config.
    let api = env
        .start(Roles {
            api: true,
            maintenance: true,
            ..Default::default()
        })
        .await;
    let big = Client::new(&api, &env.key("big").await);
    let small = Client::new(&api, &env.key("small").await);
    let dir = tempfile::tempdir().unwrap();
    let workers = spawn_workers(&env, &dir, 4);
    let started = Instant::now();

    // A backlog worth about two minutes of budget.
    let (s, _) = big
        .post("/v1/jobs", &jobs(200, "gpt-4o-mini", "big"), None)
        .await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_, body) = small
        .post("/v1/jobs", &jobs(3, "gpt-4o-mini", "small"), None)
        .await;
    let small_ids: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let submitted = Instant::now();
    for id in &small_ids {
        small.wait_job(id, Duration::from_secs(30)).await;
    }
    let small_wait = submitted.elapsed();
    let big_left = env
        .count("SELECT count(*) FROM jobs WHERE tenant = 'big' AND finalized_at IS NULL")
        .await;
    assert!(
        big_left > 50,
        "the big backlog is still running ({big_left} left)"
    );
    assert!(
        small_wait < Duration::from_secs(20),
        "the small tenant waited {small_wait:?} behind the backlog"
    );

    // Let the budget run across more than one full window.
    let remaining = Duration::from_secs(75).saturating_sub(started.elapsed());
    tokio::time::sleep(remaining).await;
    stop(workers);

    let stats = env.mock.stats();
    assert_eq!(stats.rate_limited, 0, "no 429 at all");
    let worst = sluice::mock::limits::worst_window(&stats.per_second);
    assert!(
        worst <= TPM,
        "worst 60-second window served {worst} tokens > {TPM}"
    );
    let first_minute: u64 = stats
        .per_second
        .range(..stats.per_second.keys().next().unwrap() + 60)
        .map(|(_, s)| s.tokens)
        .sum();
    assert!(
        first_minute * 100 >= TPM * 80,
        "the budget is used, not just respected: {first_minute} of {TPM} in the first minute"
    );
    let report = sluice::db::budgets::report(&env.pool, None).await.unwrap();
    assert!(
        report
            .iter()
            .any(|r| r.key == "openai/gpt-4o-mini" && r.tpm == Some(TPM as i64))
    );
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_workers_racing_for_a_daily_cap_never_pass_it_by_a_cent() {
    let mut env = TestEnv::new().await;
    env.config.database.max_connections = 3;
    let cap: Decimal = "0.50".parse().unwrap();
    env.config.budgets.tenants.insert(
        "acme".into(),
        BudgetSettings {
            daily_usd: Some(cap),
            policy: Some("reject".into()),
            ..Default::default()
        },
    );
    let api = env
        .start(Roles {
            api: true,
            maintenance: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&api, &env.key("acme").await);
    let dir = tempfile::tempdir().unwrap();
    let workers = spawn_workers(&env, &dir, 8);
    // gpt-4 at $30/$60 per million: each call may cost up to ~$0.004, so ~130 fit in $0.50.
    let (s, _) = c
        .post("/v1/jobs", &jobs(300, "openai/gpt-4", "costly"), None)
        .await;
    assert_eq!(s, 200);
    wait_until(Duration::from_secs(60), "every job is finished", || async {
        env.count("SELECT count(*) FROM jobs WHERE finalized_at IS NULL")
            .await
            == 0
    })
    .await;
    stop(workers);

    let spent: Decimal =
        sqlx::query_scalar("SELECT COALESCE(sum(cost_usd), 0) FROM attempts WHERE tenant = 'acme'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let booked: Decimal =
        sqlx::query_scalar("SELECT COALESCE(sum(usd), 0) FROM tenant_spend WHERE tenant = 'acme'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(spent <= cap, "spent ${spent} > cap ${cap}");
    assert_eq!(spent, booked, "the spend counter equals the ledger");
    assert!(
        spent >= "0.45".parse().unwrap(),
        "the cap is used, not just respected: ${spent}"
    );
    let rejected = env.count("SELECT count(*) FROM jobs WHERE status = 'failed' AND error->>'code' = 'budget_exceeded'").await;
    let succeeded = env
        .count("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
        .await;
    assert_eq!(rejected + succeeded, 300);
    assert!(rejected > 0);
    env.check_invariants().await;
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_deferred_job_waits_for_the_next_day_and_the_api_reports_the_budget() {
    let started = chrono::Utc::now();
    let mut env = TestEnv::new().await;
    env.config.budgets.tenants.insert(
        "acme".into(),
        BudgetSettings {
            daily_usd: Some("0.01".parse().unwrap()),
            policy: Some("defer".into()),
            ..Default::default()
        },
    );
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let (_, body) = c
        .post("/v1/jobs", &jobs(6, "openai/gpt-4", "deferred"), None)
        .await;
    let ids: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    wait_until(Duration::from_secs(20), "the affordable jobs finish and the rest are parked", || async {
        let done = env.count("SELECT count(*) FROM jobs WHERE status = 'succeeded'").await;
        let parked = env.count("SELECT count(*) FROM jobs WHERE status = 'queued' AND publish_after > now() + interval '1 minute'").await;
        done >= 1 && done + parked == 6
    })
    .await;
    let spent: Decimal = sqlx::query_scalar("SELECT COALESCE(sum(cost_usd), 0) FROM attempts")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(spent <= "0.01".parse().unwrap());
    let next_midnight: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(publish_after) FROM jobs WHERE status = 'queued'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    // The job was parked until the UTC midnight after its claim (the run may straddle one).
    let midnights = [
        sluice::domain::budget::next_day(started),
        sluice::domain::budget::next_day(chrono::Utc::now()),
    ];
    assert!(
        midnights.contains(&next_midnight),
        "parked until {next_midnight}, expected one of {midnights:?}"
    );
    let (_, report) = c.get("/v1/budgets").await;
    let mine = report["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "acme")
        .unwrap()
        .clone();
    assert_eq!(mine["daily_usd"], "0.01");
    assert_eq!(
        mine["spent_today_usd"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        spent
    );
    assert!(ids.len() == 6);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_429_pauses_the_deployment_for_every_worker_until_retry_after() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut j = job("rate limited [[mock:status=429]]");
    j["model"] = json!("openai/gpt-4o-mini");
    j["max_attempts"] = json!(2);
    let (_, body) = c.post("/v1/jobs", &j, None).await;
    let done = c
        .wait_job(body["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(done["status"], "failed");
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT started_at FROM attempts ORDER BY attempt")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(times.len(), 2);
    assert!(
        times[1] - times[0] >= chrono::Duration::milliseconds(900),
        "the retry honoured retry-after: {times:?}"
    );
    let paused: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT paused_until FROM budgets WHERE scope = 'deployment' AND key = 'openai/gpt-4o-mini'").fetch_one(&env.pool).await.unwrap();
    assert!(paused.is_some(), "the pause is shared through Postgres");
    app.stop().await;
    env.cleanup().await;
}

/// `sluice budgets set` changes limits in Postgres while sluice runs, `sluice budgets show`
/// reports them, the running workers obey the new limit at once, and bad input is refused
/// with a message before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_set_and_show_change_limits_at_run_time() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let (s, body) = c.post("/v1/jobs", &job("before any cap"), None).await;
    assert_eq!(s, 200, "{body}");
    let first = body["id"].as_str().unwrap().to_string();
    assert_eq!(c.wait_job(&first, T).await["status"], "succeeded");

    let dir = tempfile::tempdir().unwrap();
    let config = env.write_config(dir.path());
    let sluice = |args: &[&str]| {
        let out = common::sluice_cmd()
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Bad input: nothing is written.
    let (ok, _, err) = sluice(&[
        "budgets",
        "set",
        "--deployment",
        "openai/gpt-4o-mini",
        "--daily-usd",
        "1",
    ]);
    assert!(!ok && err.contains("use --tenant"), "{err}");
    let (ok, _, err) = sluice(&[
        "budgets",
        "set",
        "--deployment",
        "gpt-4o-mini",
        "--tpm",
        "5",
    ]);
    assert!(!ok && err.contains("provider/model"), "{err}");
    let (ok, _, err) = sluice(&["budgets", "set", "--tenant", "acme", "--policy", "maybe"]);
    assert!(!ok && err.contains("maybe"), "{err}");
    assert_eq!(
        env.count("SELECT count(*) FROM budgets WHERE source = 'cli'")
            .await,
        0
    );

    // A deployment limit and a tenant cap, set while sluice runs.
    let (ok, _, err) = sluice(&[
        "budgets",
        "set",
        "--deployment",
        "openai/gpt-4o-mini",
        "--tpm",
        "123456",
        "--rpm",
        "789",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = sluice(&[
        "budgets",
        "set",
        "--tenant",
        "acme",
        "--daily-usd",
        "0.000004",
        "--policy",
        "reject",
        "--weight",
        "3",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = sluice(&["budgets", "show", "--format", "json"]);
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = |key: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("no {key} in {rows}"))
    };
    assert_eq!(row("openai/gpt-4o-mini")["tpm"], 123456);
    assert_eq!(row("openai/gpt-4o-mini")["rpm"], 789);
    assert_eq!(row("acme")["daily_usd"], "0.000004");
    assert_eq!(row("acme")["usd_policy"], "reject");
    assert_eq!(
        env.count("SELECT weight::bigint FROM tenants WHERE name = 'acme'")
            .await,
        3
    );

    // The running workers read the new cap on their next claim: acme has spent more than it.
    // (The job's own worst case fits under the cap; one that did not would be refused at
    // submission.)
    let mut small = job("after the cap");
    small["body"]["max_tokens"] = serde_json::json!(1);
    let (_, body) = c.post("/v1/jobs", &small, None).await;
    let done = c.wait_job(body["id"].as_str().unwrap(), T).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "budget_exceeded", "{done}");
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

/// The provider counts 30% more prompt tokens than sluice estimates (the mock's `usage_skew`):
/// spend is booked from the provider's usage, and reservations scale their estimates by what
/// the deployment's provider has been reporting, so the tenant's USD cap still holds once the
/// first answers are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_counting_more_tokens_than_estimated_cannot_push_spend_past_the_cap() {
    let mut env = TestEnv::with_mock(MockSettings {
        usage_skew: Some(1.3),
        ..Default::default()
    })
    .await;
    // A first wave of at most 8 calls is reserved at the bare estimate.
    env.config.worker.concurrency = 8;
    let cap: Decimal = "0.30".parse().unwrap();
    env.config.budgets.tenants.insert(
        "acme".into(),
        BudgetSettings {
            daily_usd: Some(cap),
            policy: Some("reject".into()),
            ..Default::default()
        },
    );
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut list = jobs(200, "openai/gpt-4", "skewed");
    for j in list["jobs"].as_array_mut().unwrap() {
        // Long prompts, so the skew is most of each call's cost.
        let text = format!(
            "{} {}",
            j["body"]["messages"][0]["content"].as_str().unwrap(),
            "details ".repeat(200)
        );
        j["body"]["messages"][0]["content"] = json!(text);
        j["body"]["max_tokens"] = json!(16);
    }
    let (s, body) = c.post("/v1/jobs", &list, None).await;
    assert_eq!(s, 200, "{body}");
    env.wait_all_finished(Duration::from_secs(60)).await;

    let spent: Decimal =
        sqlx::query_scalar("SELECT COALESCE(sum(cost_usd), 0) FROM attempts WHERE tenant = 'acme'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let (est, actual): (i64, i64) = sqlx::query_as(
        "SELECT est_prompt_tokens, actual_prompt_tokens FROM deployment_usage WHERE deployment = 'openai/gpt-4'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        actual * 10 >= est * 12,
        "the provider's count was learned: {actual} reported for {est} estimated"
    );
    assert!(spent <= cap, "spent ${spent} > cap ${cap}");
    assert!(
        spent >= "0.25".parse().unwrap(),
        "the cap is used, not just respected: ${spent}"
    );
    let rejected = env
        .count("SELECT count(*) FROM jobs WHERE error->>'code' = 'budget_exceeded'")
        .await;
    assert!(rejected > 0, "the cap turned jobs away");
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

/// The same skew against a TPM budget equal to the provider's own limit: once the provider's
/// count is learned, no 60-second window the provider sees goes over the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_counting_more_tokens_than_estimated_cannot_push_a_tpm_window_past_the_limit() {
    const TPM: u64 = 4_000;
    let mut env = TestEnv::with_mock(MockSettings {
        usage_skew: Some(1.3),
        tpm: Some(TPM),
        ..Default::default()
    })
    .await;
    env.config.worker.concurrency = 4;
    env.config.budgets.deployments.insert(
        "openai/gpt-4o-mini".into(),
        BudgetSettings {
            tpm: Some(TPM as i64),
            ..Default::default()
        },
    );
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut list = jobs(150, "gpt-4o-mini", "skewed");
    for j in list["jobs"].as_array_mut().unwrap() {
        let text = format!(
            "{} {}",
            j["body"]["messages"][0]["content"].as_str().unwrap(),
            "details ".repeat(60)
        );
        j["body"]["messages"][0]["content"] = json!(text);
    }
    let (s, body) = c.post("/v1/jobs", &list, None).await;
    assert_eq!(s, 200, "{body}");
    // Longer than one window, so every 60-second window the mock logged is a full one.
    tokio::time::sleep(Duration::from_secs(70)).await;
    let stats = env.mock.stats();
    app.stop().await;

    let worst = sluice::mock::limits::worst_window(&stats.per_second);
    assert!(
        worst <= TPM,
        "worst 60-second window served {worst} tokens > {TPM}"
    );
    assert_eq!(stats.rate_limited, 0, "no 429 at all");
    let served: u64 = stats.per_second.values().map(|s| s.tokens).sum();
    assert!(
        served * 100 >= TPM * 70,
        "the budget is used, not just respected: {served} tokens"
    );
    env.cleanup().await;
}
