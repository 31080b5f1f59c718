//! PII redaction end to end: masked values never reach the provider (the mock's request log),
//! the database, the logs of any process at `debug`, or the metrics; blocked jobs are refused
//! naming the detector, never the value.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::domain::redact::Mode;
use sluice::governance::PolicyConfig;

use super::{T, api_only};
use crate::common::{Client, TestEnv, job, sluice_cmd};

const CARD: &str = "5500-0000-0000-0004";
const CARD_DIGITS: &str = "5500000000000004";
const EMAIL: &str = "canary.pii@example.org";

fn mask(env: &mut TestEnv, tenant: &str) {
    env.config.redaction.tenants.insert(
        tenant.into(),
        PolicyConfig {
            mode: Mode::Mask,
            ..Default::default()
        },
    );
}

fn prompt() -> String {
    format!("Refund card {CARD} and write to {EMAIL}, twice: {EMAIL}")
}

fn batch_job(p: &str) -> Value {
    let mut j = job(p);
    j["model"] = json!("openai/gpt-4o-mini");
    j["route"] = json!("batch");
    j
}

/// Asserts that no canary value appears in `text`.
fn clean(what: &str, text: &str) {
    for canary in [CARD, CARD_DIGITS, EMAIL] {
        assert!(!text.contains(canary), "{what} contains {canary}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_pii_never_reaches_the_provider_on_the_real_time_or_batch_path() {
    let mut env = TestEnv::new().await;
    mask(&mut env, "acme");
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let (s, body) = c
        .post(
            "/v1/jobs",
            &json!({"jobs": [job(&prompt()), batch_job(&prompt())]}),
            None,
        )
        .await;
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
    }

    let seen: Value = reqwest::get(format!("http://{}/mock/requests", env.mock.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen_text = seen.to_string();
    assert!(
        seen.as_array().unwrap().len() >= 2,
        "the mock logged what it received: {seen}"
    );
    clean("what the provider received", &seen_text);
    assert!(
        seen_text.contains("Refund card [CARD_1] and write to [EMAIL_1], twice: [EMAIL_1]"),
        "{seen_text}"
    );

    let stored: Vec<(Value, Value)> =
        sqlx::query_as("SELECT request, redactions FROM jobs ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    for (request, redactions) in stored {
        clean("a stored request", &request.to_string());
        assert_eq!(redactions, json!({"card": 1, "email": 2}));
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_policy_refuses_the_job_naming_the_detector_not_the_value() {
    let mut env = TestEnv::new().await;
    env.config.redaction.aliases.insert(
        "summarize".into(),
        PolicyConfig {
            mode: Mode::Block,
            detectors: vec!["card".into()],
            ..Default::default()
        },
    );
    let app = env.start(api_only()).await;
    let c = Client::new(&app, &env.key("acme").await);
    let (s, body) = c.post("/v1/jobs", &job(&prompt()), None).await;
    assert_eq!(s, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("policy_violation") && message.contains("card"),
        "{body}"
    );
    clean("the error", &body.to_string());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "nothing was recorded");
    // Email alone is not what this alias blocks.
    let (s, body) = c
        .post("/v1/jobs", &job(&format!("mail {EMAIL}")), None)
        .await;
    assert_eq!(s, 200, "{body}");
    env.cleanup().await;
}

/// Reads `sluice up`'s log until it says where the API listens.
fn api_address(log: &std::path::Path, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("sluice API listening on http://").nth(1) {
            return rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(start.elapsed() < limit, "the API did not start: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_pii_and_keys_never_appear_in_debug_logs_or_metrics_of_the_real_binary() {
    let mut env = TestEnv::new().await;
    mask(&mut env, "acme");
    let key = env.key("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = env.write_config(dir.path());
    let log = dir.path().join("sluice.log");
    let mut child = crate::common::ChildGuard(
        sluice_cmd()
            .arg("--config")
            .arg(&cfg)
            .arg("up")
            .env("RUST_LOG", "debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr = tokio::task::spawn_blocking({
        let log = log.clone();
        move || api_address(&log, T)
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(format!("http://{addr}/v1/jobs"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let resp: Value = post(json!({"jobs": [job(&prompt()), batch_job(&prompt()),
        job(&format!("{} [[mock:status=400]]", prompt()))]}))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let ids: Vec<String> = resp["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{resp}"))
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let start = Instant::now();
    for id in &ids {
        loop {
            let job: Value = http
                .get(format!("http://{addr}/v1/jobs/{id}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if job["finalized_at"].is_string() {
                break;
            }
            assert!(start.elapsed() < T, "{job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    if metrics.status().is_success() {
        clean("/metrics", &metrics.text().await.unwrap());
    }
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    crate::common::wait_exit(&mut child, T).await;
    let file = std::fs::File::open(&log).unwrap();
    let mut lines = 0;
    for line in BufReader::new(file).lines() {
        let line = line.unwrap();
        lines += 1;
        clean("the debug log", &line);
        assert!(
            !line.contains(&key),
            "the debug log contains the API key: {line}"
        );
    }
    assert!(
        lines > 10,
        "the process logged at debug level ({lines} lines)"
    );
    env.cleanup().await;
}
