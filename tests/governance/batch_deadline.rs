//! Forcing the batch route with a deadline nearer than the batch turnaround the config declares
//! is refused at submission on every door (HTTP, AMQP, `sluice submit`), not left to expire.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Client, TestEnv, job, sluice_cmd};

fn forced(deadline: &str) -> Value {
    let mut j = job("needs the batch discount");
    j["model"] = json!("openai/gpt-4o-mini");
    j["route"] = json!("batch");
    j["deadline"] = json!(deadline);
    j
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_batch_route_with_a_deadline_inside_the_turnaround_is_refused_on_every_door() {
    let mut env = TestEnv::new().await;
    env.config.routing.batch_turnaround = Duration::from_secs(12 * 3600);
    let app = env.up().await;
    let key = env.key("acme").await;
    let c = Client::new(&app, &key);

    // HTTP: a 422 in OpenAI's shape naming the field and both durations.
    let (status, body) = c.post("/v1/jobs", &forced("10m"), None).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["param"], "deadline", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("10m") && message.contains("12h") && message.contains("batch"),
        "{message}"
    );
    let (status, body) = c
        .post(
            "/v1/jobs",
            &json!({"jobs": [job("fine"), forced("1h")]}),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["param"], "jobs[1].deadline", "{body}");
    // A deadline that leaves the turnaround is taken on the batch route.
    let (status, body) = c.post("/v1/jobs", &forced("13h"), None).await;
    assert_eq!(status, 200, "{body}");
    let (_, taken) = c
        .get(&format!("/v1/jobs/{}", body["id"].as_str().unwrap()))
        .await;
    assert_eq!(taken["route"], "batch", "{taken}");

    // AMQP: the message goes to the rejected queue with the reason.
    env.publish_job(
        "acme",
        &serde_json::to_vec(&forced("10m")).unwrap(),
        &[("sluice-api-key", key.as_str())],
        None,
    )
    .await;
    let start = std::time::Instant::now();
    let rejected = loop {
        if let Some(d) = env.get_message("sluice.jobs.rejected").await {
            break d;
        }
        assert!(start.elapsed() < super::T, "nothing was rejected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = sluice::queue::header_text(rejected.properties.headers(), "sluice-reject-reason")
        .unwrap_or_default();
    assert!(
        reason.contains("deadline") && reason.contains("10m") && reason.contains("12h"),
        "{reason}"
    );

    // `sluice submit`: FILE:LINE before anything is enqueued.
    let jobs_before = env.count("SELECT count(*) FROM jobs").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.jsonl");
    let mut good = job("fine");
    good["model"] = json!("openai/gpt-4o-mini");
    std::fs::write(&file, format!("{good}\n{}\n{good}\n", forced("30m"))).unwrap();
    let url = format!("http://{}", app.api_addr.unwrap());
    let submit = |extra: &[&str]| {
        sluice_cmd()
            .env("RUST_LOG", "warn")
            .env("SLUICE_API_URL", &url)
            .env("SLUICE_API_KEY", &key)
            .arg("submit")
            .arg(&file)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = submit(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("jobs.jsonl:2: deadline:"), "{err}");
    assert!(err.contains("30m") && err.contains("12h"), "{err}");
    assert!(!err.contains("jobs.jsonl:1:"), "{err}");
    assert!(err.contains("nothing was enqueued"), "{err}");
    let out = submit(&["--route", "batch", "--deadline", "2h"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for n in 1..=3 {
        assert!(err.contains(&format!("jobs.jsonl:{n}: deadline:")), "{err}");
    }
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, jobs_before);
    app.stop().await;

    // The check follows the turnaround the config declares: a config that expects batches
    // back in a minute takes a ten-minute deadline on the batch route.
    env.config.routing.batch_turnaround = Duration::from_secs(60);
    let app = env.start(super::api_only()).await;
    let c = Client::new(&app, &key);
    let (status, body) = c.post("/v1/jobs", &forced("10m"), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = c.post("/v1/jobs", &forced("30s"), None).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("60s"),
        "{body}"
    );
    app.stop().await;
    env.cleanup().await;
}
