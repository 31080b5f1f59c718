//! The OpenAI-compatible front door end to end: batch input validation, pagination, cancel,
//! output files, chat completions (whole, streamed, over budget), the batch loop fed poison,
//! and the OpenAPI document.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Client, TestEnv};
use serde_json::{Value, json};
use sluice::app::Roles;
use sluice::mock::MockSettings;

fn line(custom_id: &str, prompt: &str) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": "summarize", "messages": [{"role": "user", "content": prompt}], "max_tokens": 32}})
    .to_string()
}

async fn upload(c: &Client, content: String) -> String {
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(content.into_bytes()).file_name("in.jsonl"),
        );
    let resp = c
        .http
        .post(format!("{}/v1/files", c.base))
        .bearer_auth(&c.key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

async fn create_batch(c: &Client, file: &str, window: &str) -> Value {
    let (status, b) = c
        .post(
            "/v1/batches",
            &json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": window}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{b}");
    b
}

async fn wait_batch(c: &Client, id: &str, done: &[&str]) -> Value {
    let start = Instant::now();
    loop {
        let (_, b) = c.get(&format!("/v1/batches/{id}")).await;
        if done.contains(&b["status"].as_str().unwrap_or_default()) {
            return b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "batch {id} stuck: {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_lines_fail_the_batch_while_validating_naming_each_line_with_nothing_enqueued() {
    let env = TestEnv::new().await;
    let running = env.up().await;
    let c = Client::new(&running, &env.key("acme").await);
    let content = [
        line("a", "fine"),
        "{not json".to_string(),
        json!({"method": "POST", "url": "/v1/chat/completions", "body": {}}).to_string(),
        json!({"custom_id": "m", "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}})
        .to_string(),
        line("a", "duplicate id"),
        json!({"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {}})
            .to_string(),
        line("nul", "has a \u{0} inside"),
    ]
    .join("\n");
    let file = upload(&c, content).await;
    let b = create_batch(&c, &file, "24h").await;
    assert_eq!(b["status"], "validating");
    let b = wait_batch(&c, b["id"].as_str().unwrap(), &["failed", "in_progress"]).await;
    assert_eq!(b["status"], "failed", "{b}");
    assert!(b["failed_at"].is_i64());
    let errors = b["errors"]["data"].as_array().unwrap();
    let named: Vec<(u64, &str)> = errors
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        named,
        vec![
            (2, "invalid_json_line"),
            (3, "missing_required_parameter"),
            (4, "invalid_request"),
            (5, "duplicate_custom_id"),
            (6, "mismatched_endpoint"),
            (7, "invalid_request"),
        ],
        "{b}"
    );
    assert_eq!(errors[1]["param"], "custom_id");
    assert_eq!(errors[2]["param"], "model");
    assert_eq!(b["errors"]["object"], "list");
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 0);
    assert_eq!(env.mock.stats().requests, 0);
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_runs_to_completed_with_output_and_error_files_in_openai_line_format() {
    let env = TestEnv::new().await;
    let running = env.up().await;
    let c = Client::new(&running, &env.key("acme").await);
    let content = [line("ok", "hello"), line("bad", "no [[mock:status=400]]")].join("\n") + "\n";
    let file = upload(&c, content).await;
    let b = create_batch(&c, &file, "1h").await;
    let b = wait_batch(
        &c,
        b["id"].as_str().unwrap(),
        &["completed", "failed", "expired"],
    )
    .await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"total": 2, "completed": 1, "failed": 1})
    );
    for k in [
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "expires_at",
        "created_at",
    ] {
        assert!(b[k].is_i64(), "{k}: {b}");
    }
    let (_, out) = c
        .get_text(&format!(
            "/v1/files/{}/content",
            b["output_file_id"].as_str().unwrap()
        ))
        .await;
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(out["custom_id"], "ok");
    assert_eq!(out["response"]["status_code"], 200);
    assert_eq!(out["response"]["body"]["object"], "chat.completion");
    assert_eq!(out["error"], Value::Null);
    let (_, err) = c
        .get_text(&format!(
            "/v1/files/{}/content",
            b["error_file_id"].as_str().unwrap()
        ))
        .await;
    let err: Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(err["custom_id"], "bad");
    assert_eq!(err["response"]["status_code"], 400);
    // Finalizing happened once: exactly two output files exist for this tenant.
    assert_eq!(
        env.count("SELECT count(*) FROM files WHERE purpose = 'batch_output'")
            .await,
        2
    );
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_list_newest_first_in_pages_with_after_and_has_more() {
    let env = TestEnv::new().await;
    let running = env
        .start(Roles {
            api: true,
            ..Roles::default()
        })
        .await;
    let c = Client::new(&running, &env.key("acme").await);
    let other = Client::new(&running, &env.key("other").await);
    let file = upload(&c, line("a", "x")).await;
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(
            create_batch(&c, &file, "24h").await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    create_batch(&other, &upload(&other, line("a", "x")).await, "24h").await;
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let (status, page) = c.get(&format!("/v1/batches?limit=2{q}")).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["object"], "list");
        let data = page["data"].as_array().unwrap();
        assert_eq!(page["first_id"], data[0]["id"]);
        assert_eq!(page["last_id"], data[data.len() - 1]["id"]);
        seen.extend(data.iter().map(|b| b["id"].as_str().unwrap().to_string()));
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        after = page["last_id"].as_str().map(str::to_owned);
    }
    made.reverse();
    assert_eq!(
        seen, made,
        "newest first, every batch once, no other tenant's"
    );
    let (status, e) = c.get("/v1/batches?limit=0").await;
    assert_eq!(status, 400);
    assert_eq!(e["error"]["param"], "limit");
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_batch_stops_its_jobs_and_ends_cancelled_with_an_error_file() {
    let env = TestEnv::with_mock(MockSettings {
        batch_delay: Duration::from_secs(120),
        ..MockSettings::default()
    })
    .await;
    let running = env.up().await;
    let c = Client::new(&running, &env.key("acme").await);
    let content = (0..5)
        .map(|i| line(&format!("r{i}"), "slow"))
        .collect::<Vec<_>>()
        .join("\n");
    let file = upload(&c, content).await;
    let b = create_batch(&c, &file, "24h").await;
    let id = b["id"].as_str().unwrap().to_string();
    wait_batch(&c, &id, &["in_progress"]).await;
    let (status, b) = c
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}), None)
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["status"], "cancelling");
    assert!(b["cancelling_at"].is_i64());
    let b = wait_batch(&c, &id, &["cancelled"]).await;
    assert!(b["cancelled_at"].is_i64());
    assert_eq!(b["request_counts"]["total"], 5);
    assert_eq!(b["counts"]["cancelled"], 5, "{b}");
    let (_, err) = c
        .get_text(&format!(
            "/v1/files/{}/content",
            b["error_file_id"].as_str().unwrap()
        ))
        .await;
    let lines: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert!(
        lines
            .iter()
            .all(|l| l["error"]["code"] == "batch_cancelled" && l["response"].is_null())
    );
    let (status, _) = c
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}), None)
        .await;
    assert_eq!(status, 409, "a cancelled batch cannot be cancelled again");
    running.stop().await;
    env.cleanup().await;
}

async fn chat(c: &Client, body: &Value) -> reqwest::Response {
    c.http
        .post(format!("{}/v1/chat/completions", c.base))
        .bearer_auth(&c.key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A success recorded as it was is answered from its outcome, without reading the row back;
/// one Postgres took only once altered (a NUL in the answer, stored as U+FFFD) is answered from
/// the row. Either way the caller gets what the job's row holds, and the row is written first.
#[tokio::test(flavor = "multi_thread")]
async fn a_chat_answer_is_what_the_job_row_holds_even_when_storing_it_altered_it() {
    let env = TestEnv::new().await;
    let running = env
        .start(Roles {
            api: true,
            ..Roles::default()
        })
        .await;
    let c = Client::new(&running, &env.key("acme").await);
    for (prompt, nul) in [("plain answer", false), ("answer with [[mock:nul]]", true)] {
        let body = json!({"model": "summarize", "max_tokens": 32,
                          "messages": [{"role": "user", "content": prompt}]});
        let resp = chat(&c, &body).await;
        assert_eq!(resp.status().as_u16(), 200, "{prompt}");
        let answer: Value = resp.json().await.unwrap();
        let stored: Value = sqlx::query_scalar(
            "SELECT response FROM jobs WHERE status = 'succeeded' AND request::text LIKE '%' || $1 || '%'",
        )
        .bind(prompt)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(answer, stored, "{prompt}");
        let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(content.contains('\u{fffd}'), nul, "{content}");
        assert!(!content.contains('\u{0}'), "{content}");
    }
    assert_eq!(
        env.count("SELECT count(*) FROM attempts WHERE status = 'succeeded'")
            .await,
        2
    );
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_completions_stream_server_sent_events_with_a_usage_chunk_and_record_the_job() {
    let env = TestEnv::new().await;
    let running = env
        .start(Roles {
            api: true,
            ..Roles::default()
        })
        .await;
    let c = Client::new(&running, &env.key("acme").await);
    let body = json!({"model": "summarize", "messages": [{"role": "user", "content": "stream me please"}],
                      "max_tokens": 32, "stream": true, "stream_options": {"include_usage": true}});
    let resp = chat(&c, &body).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert!(chunks.len() >= 4, "{text}");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = &chunks.last().unwrap()["usage"];
    assert!(usage["total_tokens"].as_u64().unwrap() > 0, "{text}");
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    // Recorded like any job: one succeeded ledger row, cost on the job.
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'succeeded' AND cost_usd > 0")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM attempts WHERE status = 'succeeded'")
            .await,
        1
    );

    let resp = chat(
        &c,
        &json!({"model": "summarize", "messages": [{"role": "user", "content": "whole"}]}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    let resp = chat(
        &c,
        &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 422);
    let resp = chat(&c, &json!({"model": "summarize", "messages": [{"role": "user", "content": "[[mock:status=400]]"}]})).await;
    assert_eq!(resp.status().as_u16(), 400, "the upstream's own 4xx");
    env.check_invariants().await;
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_completions_past_the_budget_wait_answer_429_with_retry_after_and_spend_nothing() {
    let mut env = TestEnv::new().await;
    env.config.server.chat_budget_wait = Duration::from_millis(500);
    env.config.budgets.tenants.insert(
        "tight".into(),
        sluice::config::BudgetSettings {
            rpm: Some(1),
            ..Default::default()
        },
    );
    let running = env
        .start(Roles {
            api: true,
            ..Roles::default()
        })
        .await;
    let c = Client::new(&running, &env.key("tight").await);
    let body = json!({"model": "summarize", "messages": [{"role": "user", "content": "one"}], "max_tokens": 8});
    assert_eq!(chat(&c, &body).await.status().as_u16(), 200);
    let resp = chat(&c, &json!({"model": "summarize", "messages": [{"role": "user", "content": "two"}], "max_tokens": 8})).await;
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=61).contains(&retry),
        "the rpm window frees within a minute: {retry}"
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "budget_exhausted");
    assert_eq!(env.mock.stats().requests, 1);
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'cancelled'")
            .await,
        1
    );
    running.stop().await;
    env.cleanup().await;
}

/// A synchronous job is admitted before it is inserted (`db::budgets::admit_new`): an admitted
/// one is stored already running, at attempt 1, and ends with one ledger row and its budget use
/// counted; one a hard USD cap refuses is stored failed with its code, answers 429 and reaches
/// no provider.
#[tokio::test(flavor = "multi_thread")]
async fn chat_completions_are_admitted_before_their_insert_and_a_hard_cap_refuses_with_nothing_spent()
 {
    let mut env = TestEnv::new().await;
    env.config.budgets.tenants.insert(
        "paced".into(),
        sluice::config::BudgetSettings {
            rpm: Some(100),
            tpm: Some(1_000_000),
            ..Default::default()
        },
    );
    env.config.budgets.tenants.insert(
        "capped".into(),
        sluice::config::BudgetSettings {
            daily_usd: Some(rust_decimal::Decimal::new(1, 9)),
            policy: Some("reject".into()),
            ..Default::default()
        },
    );
    let running = env
        .start(Roles {
            api: true,
            ..Roles::default()
        })
        .await;
    let body = json!({"model": "summarize", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "admitted first"}]});
    let paced = Client::new(&running, &env.key("paced").await);
    let resp = chat(&paced, &body).await;
    assert_eq!(resp.status().as_u16(), 200);
    let (status, attempt, by): (String, i32, Option<String>) =
        sqlx::query_as("SELECT status, attempt, attempted_by FROM jobs WHERE tenant = 'paced'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempt), ("succeeded", 1));
    assert!(by.is_some(), "the job names the process that ran it");
    assert_eq!(
        env.count("SELECT count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.tenant = 'paced' AND a.attempt = 1")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT COALESCE(sum(requests), 0)::bigint FROM budget_usage WHERE scope = 'tenant' AND key = 'paced'")
            .await,
        1,
        "the admission counted in the tenant's rpm window"
    );

    let capped = Client::new(&running, &env.key("capped").await);
    let resp = chat(&capped, &body).await;
    assert_eq!(resp.status().as_u16(), 429);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "budget_refused", "{v}");
    let (status, code): (String, Option<String>) =
        sqlx::query_as("SELECT status, error->>'code' FROM jobs WHERE tenant = 'capped'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), code.as_deref()),
        ("failed", Some("budget_exceeded"))
    );
    assert_eq!(
        env.mock.stats().requests,
        1,
        "only the admitted job was sent"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM budget_holds WHERE tenant = 'capped'")
            .await,
        0
    );
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_batch_loop_fails_poisoned_batches_and_goes_on_with_the_good_one() {
    let env = TestEnv::new().await;
    let running = env
        .start(Roles {
            api: true,
            ..Roles::default()
        })
        .await;
    let c = Client::new(&running, &env.key("acme").await);
    let good = upload(&c, line("a", "fine")).await;
    let gone = upload(&c, line("a", "fine")).await;
    let (status, _) = c
        .http
        .delete(format!("{}/v1/files/{gone}", c.base))
        .bearer_auth(&c.key)
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 200);
    // A batch over a deleted file, written as a crashed API might have left it.
    sqlx::query("INSERT INTO batches (id, tenant, source, status, endpoint, input_file_id, completion_window, expires_at)
                 VALUES ('batch_0poison', 'acme', 'openai', 'validating', '/v1/chat/completions', $1, '1h', now() + interval '1 hour')")
        .bind(&gone).execute(&env.pool).await.unwrap();
    let ok = create_batch(&c, &good, "1h").await;
    let ctx = env.ctx().await;
    for _ in 0..3 {
        sluice::openai_batches::tick(&ctx).await.unwrap();
    }
    let (_, poisoned) = c.get("/v1/batches/batch_0poison").await;
    assert_eq!(poisoned["status"], "failed", "{poisoned}");
    assert!(
        poisoned["errors"]["data"][0]["message"]
            .as_str()
            .unwrap()
            .contains("deleted")
    );
    let (_, ok) = c
        .get(&format!("/v1/batches/{}", ok["id"].as_str().unwrap()))
        .await;
    assert_eq!(ok["status"], "in_progress", "{ok}");
    assert_eq!(ok["request_counts"]["total"], 1);
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn files_are_listed_fetched_and_deleted_per_tenant_in_openai_shape() {
    let env = TestEnv::new().await;
    let running = env
        .start(Roles {
            api: true,
            ..Roles::default()
        })
        .await;
    let c = Client::new(&running, &env.key("acme").await);
    let other = Client::new(&running, &env.key("other").await);
    let id = upload(&c, line("a", "x")).await;
    let (_, f) = c.get(&format!("/v1/files/{id}")).await;
    assert_eq!(f["object"], "file");
    assert_eq!(f["purpose"], "batch");
    assert_eq!(f["status"], "processed");
    assert_eq!(f["filename"], "in.jsonl");
    let (status, _) = other.get(&format!("/v1/files/{id}")).await;
    assert_eq!(status, 404, "another tenant's file is invisible");
    let (_, list) = c.get("/v1/files").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["has_more"], false);
    let (_, list) = other.get("/v1/files").await;
    assert_eq!(list["data"], json!([]));
    let form = reqwest::multipart::Form::new()
        .text("purpose", "fine-tune")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("a"),
        );
    let resp = c
        .http
        .post(format!("{}/v1/files", c.base))
        .bearer_auth(&c.key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = c
        .http
        .delete(format!("{}/v1/files/{id}", c.base))
        .bearer_auth(&c.key)
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"id": id, "object": "file", "deleted": true}));
    let (status, _) = c.get(&format!("/v1/files/{id}/content")).await;
    assert_eq!(status, 404);
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_is_3_1_and_describes_the_front_door() {
    let env = TestEnv::new().await;
    let running = env
        .start(Roles {
            api: true,
            ..Roles::default()
        })
        .await;
    let c = Client::new(&running, "unused");
    let (status, doc) = c.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/v1/files",
        "/v1/files/{id}/content",
        "/v1/batches",
        "/v1/batches/{id}",
        "/v1/chat/completions",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(
        doc["components"]["schemas"]["BatchObject"]["properties"]["request_counts"].is_object()
    );
    running.stop().await;
    env.cleanup().await;
}

/// Every route the API serves, as `(method, path template)`, written out by hand from
/// `api::router` and the admin routers it merges. A route added there belongs here too, so the
/// test below fails until it is documented. `/v1/models/{*model}` is axum's wildcard; OpenAPI
/// names it `{model}`.
const SERVED: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{model}"),
    ("get", "/v1/limits"),
    ("get", "/v1/budgets"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("post", "/v1/jobs/{id}/cancel"),
    ("post", "/v1/batches"),
    ("get", "/v1/batches"),
    ("get", "/v1/batches/{id}"),
    ("post", "/v1/batches/{id}/cancel"),
    ("get", "/v1/batches/{id}/results"),
    ("get", "/v1/dead_letters"),
    ("post", "/v1/dead_letters/requeue"),
    ("post", "/v1/dead_letters/purge"),
    ("post", "/v1/webhook_endpoints"),
    ("get", "/v1/webhook_endpoints"),
    ("get", "/v1/webhook_endpoints/{id}"),
    ("post", "/v1/webhook_endpoints/{id}"),
    ("delete", "/v1/webhook_endpoints/{id}"),
    ("post", "/v1/webhook_endpoints/{id}/rotate_secret"),
    ("post", "/v1/webhook_endpoints/{id}/test"),
    ("post", "/v1/files"),
    ("get", "/v1/files"),
    ("get", "/v1/files/{id}"),
    ("delete", "/v1/files/{id}"),
    ("get", "/v1/files/{id}/content"),
    ("post", "/v1/chat/completions"),
    ("get", "/v1/admin/tenants"),
    ("post", "/v1/admin/tenants"),
    ("post", "/v1/admin/tenants/{name}/disable"),
    ("get", "/v1/admin/keys"),
    ("post", "/v1/admin/keys"),
    ("post", "/v1/admin/keys/{id}/revoke"),
    ("post", "/v1/admin/keys/{id}/rotate"),
    ("get", "/v1/admin/budgets"),
    ("post", "/v1/admin/budgets"),
    ("post", "/v1/admin/budgets/clear"),
    ("get", "/v1/admin/tenants/{tenant}/webhook_endpoints"),
    ("post", "/v1/admin/tenants/{tenant}/webhook_endpoints"),
    ("get", "/v1/admin/tenants/{tenant}/webhook_endpoints/{id}"),
    ("post", "/v1/admin/tenants/{tenant}/webhook_endpoints/{id}"),
    (
        "delete",
        "/v1/admin/tenants/{tenant}/webhook_endpoints/{id}",
    ),
    (
        "post",
        "/v1/admin/tenants/{tenant}/webhook_endpoints/{id}/rotate_secret",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_every_route_the_api_serves_and_no_other() {
    let env = TestEnv::new().await;
    let running = env
        .start(Roles {
            api: true,
            ..Roles::default()
        })
        .await;
    let c = Client::new(&running, "unused");
    let (status, doc) = c.get("/openapi.json").await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut documented = Vec::new();
    // OpenAPI 3.x: every operationId is unique, and every Response Object has a description.
    let mut operation_ids: HashMap<String, Vec<String>> = HashMap::new();
    let mut no_operation_id = Vec::new();
    let mut undescribed = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if ![
                "get", "post", "put", "patch", "delete", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                continue;
            }
            let responses = op["responses"].as_object();
            assert!(
                responses.is_some_and(|r| !r.is_empty()),
                "{method} {path} documents no response"
            );
            for (status, response) in responses.into_iter().flatten() {
                let response = resolve(&doc, response);
                if response["description"]
                    .as_str()
                    .is_none_or(|d| d.trim().is_empty())
                {
                    undescribed.push(format!("{method} {path} {status}"));
                }
            }
            match op["operationId"].as_str() {
                Some(id) if !id.is_empty() => operation_ids
                    .entry(id.to_string())
                    .or_default()
                    .push(format!("{method} {path}")),
                _ => no_operation_id.push(format!("{method} {path}")),
            }
            documented.push((method.clone(), path.clone()));
        }
    }
    assert!(
        no_operation_id.is_empty(),
        "operations without an operationId: {no_operation_id:?}"
    );
    let mut duplicates: Vec<_> = operation_ids
        .iter()
        .filter(|(_, ops)| ops.len() > 1)
        .collect();
    duplicates.sort();
    assert!(
        duplicates.is_empty(),
        "operationIds used more than once: {duplicates:?}"
    );
    assert!(
        undescribed.is_empty(),
        "responses without a description: {undescribed:?}"
    );
    let undocumented: Vec<_> = SERVED
        .iter()
        .filter(|(m, p)| !documented.iter().any(|(dm, dp)| dm == m && dp == p))
        .collect();
    assert!(
        undocumented.is_empty(),
        "served but not in /openapi.json: {undocumented:?}"
    );
    let unserved: Vec<_> = documented
        .iter()
        .filter(|(m, p)| !SERVED.contains(&(m.as_str(), p.as_str())))
        .collect();
    assert!(
        unserved.is_empty(),
        "in /openapi.json but not in SERVED: {unserved:?}"
    );
    // The list is the router's: each route answers (401 without a key, or its own answer),
    // never the fallback's 404 or a 405.
    for (method, path) in SERVED {
        let url = format!("{}{}", c.base, path.replace(['{', '}'], ""));
        let resp = c
            .http
            .request(method.to_uppercase().parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(
            status != 404 && status != 405,
            "{method} {path} is not routed: {status} {}",
            resp.text().await.unwrap_or_default()
        );
    }
    running.stop().await;
    env.cleanup().await;
}

/// The error statuses the key check, the layers and the handlers answer are the ones the
/// document lists: each case below provokes one against the running app (no job is run) and
/// checks both the answer and that its operation documents that status.
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_lists_the_error_statuses_the_routes_answer() {
    let env = TestEnv::new().await;
    let running = env
        .start(Roles {
            api: true,
            ..Roles::default()
        })
        .await;
    let c = Client::new(&running, &env.key("acme").await);
    let (status, doc) = c.get("/openapi.json").await;
    assert_eq!(status, 200);
    let too_many: Vec<Value> = vec![json!({}); 10_001];
    let nul_id = format!("job_{}", '\0');
    let cases: Vec<(&str, &str, &str, Option<Value>, u16)> = vec![
        // No key at all: the key check refuses before the handler runs.
        ("get", "/v1/jobs", "/v1/jobs", None, 401),
        ("post", "/v1/jobs", "/v1/jobs", Some(common::job("hi")), 401),
        // A tenant key on the operator's admin API.
        ("get", "/v1/admin/tenants", "/v1/admin/tenants", None, 403),
        // More jobs in one request than `limits.max_jobs_per_request`.
        (
            "post",
            "/v1/jobs",
            "/v1/jobs",
            Some(json!({"jobs": too_many})),
            413,
        ),
        // Adding to a batch the tenant does not have.
        (
            "post",
            "/v1/jobs",
            "/v1/jobs",
            Some(json!({"jobs": [common::job("hi")], "batch_id": "batch_missing"})),
            404,
        ),
        // Text Postgres cannot store, in the body and in the path.
        (
            "post",
            "/v1/dead_letters/requeue",
            "/v1/dead_letters/requeue",
            Some(json!({"ids": [nul_id]})),
            422,
        ),
        (
            "post",
            "/v1/dead_letters/purge",
            "/v1/dead_letters/purge",
            Some(json!({"ids": [nul_id]})),
            422,
        ),
        ("get", "/v1/jobs/job_%00", "/v1/jobs/{id}", None, 422),
        // A chat request that is not an object.
        (
            "post",
            "/v1/chat/completions",
            "/v1/chat/completions",
            Some(json!(["not", "a", "request"])),
            400,
        ),
    ];
    for (method, url, path, body, expected) in cases {
        let mut req = c.http.request(
            method.to_uppercase().parse().unwrap(),
            format!("{}{url}", c.base),
        );
        // The 401 cases go without a key; every other one with the tenant's.
        if expected != 401 {
            req = req.bearer_auth(&c.key);
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expected, "{method} {url}: {answer}");
        assert!(
            answer["error"]["message"].is_string(),
            "{method} {url} {status} is not in OpenAI's error shape: {answer}"
        );
        let response = &doc["paths"][path][method]["responses"][expected.to_string()];
        assert!(
            resolve(&doc, response)["description"].is_string(),
            "{method} {path} answers {expected} but the document does not list it"
        );
    }
    running.stop().await;
    env.cleanup().await;
}

/// `value`, or the component it points to when it is a `{"$ref": "#/components/..."}`.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => doc.pointer(pointer).unwrap_or(&Value::Null),
        None => value,
    }
}

/// Concurrent synchronous calls share their database rounds (`realtime::rounds`): each caller
/// still gets its own answer, and each job is recorded once with its ledger row.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_chat_completions_each_get_their_own_answer_and_are_recorded_once() {
    let env = TestEnv::new().await;
    let running = env
        .start(Roles {
            api: true,
            ..Roles::default()
        })
        .await;
    let c = Client::new(&running, &env.key("acme").await);
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let body = json!({"model": "summarize", "max_tokens": 16,
                    "messages": [{"role": "user", "content": format!("call number {i}")}]});
                let resp = chat(&c, &body).await;
                (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let (status, v) = call.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["object"], "chat.completion", "{v}");
        // The mock's answer repeats the prompt's words: this caller's own answer.
        let text = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
        assert!(text.ends_with(&format!("call number {i}")), "{i}: {v}");
    }
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'succeeded' AND cost_usd > 0")
            .await,
        64
    );
    assert_eq!(
        env.count("SELECT count(*) FROM attempts WHERE status = 'succeeded'")
            .await,
        64
    );
    env.check_invariants().await;
    running.stop().await;
    env.cleanup().await;
}

/// A caller who hangs up while its call is at the provider: the run goes on in its own task,
/// and the job is recorded as succeeded with its ledger row instead of staying claimed.
#[tokio::test(flavor = "multi_thread")]
async fn a_chat_completion_whose_caller_hangs_up_is_still_run_and_recorded() {
    let env = TestEnv::new().await;
    let running = env
        .start(Roles {
            api: true,
            ..Roles::default()
        })
        .await;
    let c = Client::new(&running, &env.key("acme").await);
    let body = json!({"model": "summarize", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hang up on me [[mock:sleep=1500ms]]"}]});
    let call = c
        .http
        .post(format!("{}/v1/chat/completions", c.base))
        .bearer_auth(&c.key)
        .json(&body)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(call.is_err(), "the caller gave up first: {call:?}");
    common::wait_until(
        Duration::from_secs(30),
        "the abandoned call is recorded",
        || async {
            env.count("SELECT count(*) FROM jobs WHERE status = 'succeeded' AND cost_usd > 0")
                .await
                == 1
        },
    )
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM attempts WHERE status = 'succeeded'")
            .await,
        1
    );
    env.check_invariants().await;
    running.stop().await;
    env.cleanup().await;
}
