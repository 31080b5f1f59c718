//! `sluice batches list` against the real binary: every batch of the tenant (OpenAI, native,
//! cancelled, old), the filters, a table that fits, and clear errors when the API is down or
//! the key is wrong.

use serde_json::{Value, json};

use super::{api_only, ok};
use crate::common::{Client, TestEnv, job, sluice_cmd};

/// Uploads one OpenAI batch input line and creates a batch over it.
pub async fn openai_batch(c: &Client) -> String {
    let line = json!({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "summarize", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8}});
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(line.to_string().into_bytes()).file_name("in.jsonl"),
        );
    let file: Value = c
        .http
        .post(format!("{}/v1/files", c.base))
        .bearer_auth(&c.key)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (status, b) = c
        .post(
            "/v1/batches",
            &json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{b}");
    b["id"].as_str().unwrap().to_string()
}

/// Submits `n` jobs as one native batch; returns its id.
pub async fn native_batch(c: &Client, n: usize) -> String {
    let jobs: Vec<Value> = (0..n).map(|i| job(&format!("item {i}"))).collect();
    let (status, body) = c.post("/v1/jobs", &json!({"jobs": jobs}), None).await;
    assert_eq!(status, 200, "{body}");
    body["batch_id"].as_str().unwrap().to_string()
}

fn ids(json: &str) -> Vec<String> {
    serde_json::from_str::<Value>(json)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_list_shows_every_batch_of_the_tenant_with_filters_in_a_fitted_table() {
    let env = TestEnv::new().await;
    // The API alone: batches stay as created (validating, in progress) unless cancelled.
    let app = env.start(api_only()).await;
    let key = env.key("acme").await;
    let c = Client::new(&app, &key);
    let other = Client::new(&app, &env.key("globex").await);
    let openai = openai_batch(&c).await;
    let native = native_batch(&c, 2).await;
    let cancelled = native_batch(&c, 1).await;
    let (status, body) = c
        .post(&format!("/v1/batches/{cancelled}/cancel"), &json!({}), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let theirs = native_batch(&other, 1).await;
    // A batch from two days ago (ids are time-ordered: this one sorts before the others).
    sqlx::query(
        "INSERT INTO batches (id, tenant, source, metadata, created_at)
         VALUES ('batch_00000000000000000000000000000000', 'acme', 'api', '{}', now() - interval '2 days')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let old = "batch_00000000000000000000000000000000".to_string();

    let url = format!("http://{}", app.api_addr.unwrap());
    let run_in = |columns: &str, args: &[&str], key: &str, url: &str| {
        sluice_cmd()
            .env("RUST_LOG", "warn")
            .env("SLUICE_API_URL", url)
            .env("SLUICE_API_KEY", key)
            .env("COLUMNS", columns)
            .args(args)
            .output()
            .unwrap()
    };
    let run = |args: &[&str], key: &str, url: &str| run_in("100", args, key, url);
    let all = ok(&run(&["batches", "list", "--format", "json"], &key, &url));
    assert_eq!(
        ids(&all),
        [cancelled.as_str(), &native, &openai, &old],
        "newest first, every batch of acme's and none of globex's ({theirs}):\n{all}"
    );
    let rows: Value = serde_json::from_str(&all).unwrap();
    let status_of = |id: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status_of(&openai), "validating");
    assert_eq!(status_of(&native), "in_progress");
    assert_eq!(status_of(&cancelled), "cancelled");

    let recent = ok(&run(
        &["batches", "list", "--since", "1h", "--format", "json"],
        &key,
        &url,
    ));
    assert_eq!(ids(&recent), [cancelled.as_str(), &native, &openai]);
    let by_status = ok(&run(
        &[
            "batches",
            "list",
            "--status",
            "cancelled",
            "--format",
            "json",
        ],
        &key,
        &url,
    ));
    assert_eq!(ids(&by_status), [cancelled.as_str()]);
    let one = run(
        &["batches", "list", "--limit", "1", "--format", "json"],
        &key,
        &url,
    );
    assert_eq!(ids(&ok(&one)), [cancelled.as_str()]);
    assert!(
        String::from_utf8_lossy(&one.stderr).contains("raise --limit"),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );

    // Narrow: cells wrap to fit, ids stay whole. Wide: nothing wraps.
    let table = ok(&run(&["batches", "list"], &key, &url));
    for id in [&cancelled, &native, &openai, &old] {
        assert!(table.contains(id.as_str()), "{id} missing:\n{table}");
    }
    assert!(
        table.lines().all(|l| l.chars().count() <= 100),
        "fits 100 columns:\n{table}"
    );
    let wide = ok(&run_in("200", &["batches", "list"], &key, &url));
    let line = wide.lines().find(|l| l.contains(&native)).unwrap();
    assert!(
        line.contains("in_progress") && line.contains("| api ") && line.contains("| 2 "),
        "{wide}"
    );
    assert!(
        wide.contains("validating") && wide.contains("openai"),
        "{wide}"
    );

    let wrong = run(&["batches", "list"], "sk-sluice-wrongwrongwrong", &url);
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("API key was refused") && err.contains("sluice keys create"),
        "{err}"
    );
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let down = run(&["batches", "list"], &key, &closed);
    assert!(!down.status.success());
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(
        err.contains("cannot reach sluice") && err.contains("SLUICE_API_URL"),
        "{err}"
    );
    app.stop().await;
    env.cleanup().await;
}
