//! The provider adapters against the in-process mock provider (port 0, no database or broker):
//! Anthropic real-time calls, and both providers' batch verbs end to end (submit, poll, results
//! by custom_id, per-item errors and expiry, whole-batch expiry, cancellation).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::config::{Config, ProviderConfig};
use sluice::domain::catalog::Deployment;
use sluice::domain::retry::ErrorClass;
use sluice::mock::{MockHandle, MockSettings};
use sluice::providers::Providers;
use sluice::providers::batch::{BatchItem, BatchPoll, BatchState, ItemResult};

async fn mock(settings: MockSettings) -> MockHandle {
    sluice::mock::start("127.0.0.1:0".parse().unwrap(), settings)
        .await
        .unwrap()
}

/// Providers `openai` and `anthropic`, both pointed at the mock.
fn providers(mock: &MockHandle) -> Providers {
    let mut config = Config::from_toml(sluice::config::DEFAULT_CONFIG).unwrap();
    for kind in ["openai", "anthropic"] {
        // Through TOML, so fields added to the provider section keep their defaults here.
        let section = format!(
            "kind = \"{kind}\"\nbase_url = \"{}\"\ntimeout = \"5s\"\n",
            mock.base_url()
        );
        let provider: ProviderConfig = toml::from_str(&section).unwrap();
        config.providers.insert(kind.into(), provider);
    }
    Providers::from_config(&config).unwrap()
}

fn openai() -> Deployment {
    Deployment::parse("openai/gpt-4o-mini").unwrap()
}

fn anthropic() -> Deployment {
    Deployment::parse("anthropic/claude-haiku-4-5").unwrap()
}

fn chat(system: Option<&str>, user: &str) -> Value {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": user}));
    json!({"model": "summarize", "messages": messages, "max_tokens": 200})
}

fn items(model: &str, prompts: &[&str]) -> Vec<BatchItem> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| BatchItem {
            custom_id: format!("job_{i}"),
            model: model.into(),
            request: chat(Some("You summarize."), p),
        })
        .collect()
}

async fn until(
    p: &Providers,
    d: &Deployment,
    id: &str,
    done: impl Fn(&BatchPoll) -> bool,
) -> BatchPoll {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let poll = p.poll_batch(d, id).await.unwrap();
        if done(&poll) {
            return poll;
        }
        assert!(Instant::now() < deadline, "batch {id} stuck at {poll:?}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

fn by_id(results: Vec<(String, ItemResult)>) -> std::collections::HashMap<String, ItemResult> {
    results.into_iter().collect()
}

#[tokio::test]
async fn anthropic_calls_move_the_system_prompt_and_honour_stop_sequences() {
    let m = mock(MockSettings::default()).await;
    let p = providers(&m);
    let mut req = chat(Some("Be brief."), "alpha beta STOP gamma delta");
    req["stop"] = json!("STOP");
    let c = p.complete(&anthropic(), &req, "job_rt1").await.unwrap();
    assert_eq!(c.body["object"], "chat.completion");
    assert_eq!(c.body["model"], "claude-haiku-4-5");
    let choice = &c.body["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(
        choice["message"]["content"],
        "Summary: Be brief. alpha beta "
    );
    assert!(c.usage.input_tokens > 0 && c.usage.output_tokens > 0);
    assert!(c.request_id.as_deref().unwrap().starts_with("req_"));
    assert!(!c.refusal);
    assert_eq!(m.stats().calls_by_job["job_rt1"], 1);
}

#[tokio::test]
async fn anthropic_refusals_are_results_marked_as_refusals() {
    let m = mock(MockSettings::default()).await;
    let c = providers(&m)
        .complete(&anthropic(), &chat(None, "[[mock:refuse]] hi"), "job_r")
        .await
        .unwrap();
    assert!(c.refusal);
    assert_eq!(c.body["choices"][0]["finish_reason"], "content_filter");
    assert!(c.body["choices"][0]["message"]["refusal"].is_string());
}

#[tokio::test]
async fn anthropic_429s_are_rate_limited_and_529s_and_400s_are_classified() {
    let m = mock(MockSettings::default()).await;
    let p = providers(&m);
    let e = p
        .complete(&anthropic(), &chat(None, "[[mock:status=429]]"), "job_a")
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_secs(1)));
    assert!(e.request_id.is_some());
    let e = p
        .complete(&anthropic(), &chat(None, "[[mock:status=529]]"), "job_b")
        .await
        .unwrap_err();
    assert_eq!((e.class, e.http_status), (ErrorClass::Retryable, Some(529)));
    let e = p
        .complete(&anthropic(), &json!({"messages": []}), "job_c")
        .await
        .unwrap_err();
    assert_eq!((e.class, e.http_status), (ErrorClass::Fatal, Some(400)));
}

const PROMPTS: [&str; 5] = [
    "first ticket text",
    "[[mock:batch-item-error]] second",
    "[[mock:batch-item-error=400]] third",
    "[[mock:batch-expire]] fourth",
    "[[mock:refuse]] fifth",
];

fn check_mixed_results(results: Vec<(String, ItemResult)>) {
    assert_eq!(results.len(), 5);
    let r = by_id(results);
    let ItemResult::Succeeded(c) = &r["job_0"] else {
        panic!("{:?}", r["job_0"])
    };
    assert!(c.usage.input_tokens > 0 && !c.refusal);
    assert!(c.body["choices"][0]["message"]["content"].is_string());
    let ItemResult::Errored(e) = &r["job_1"] else {
        panic!("{:?}", r["job_1"])
    };
    assert_eq!((e.class, e.http_status), (ErrorClass::Retryable, Some(500)));
    let ItemResult::Errored(e) = &r["job_2"] else {
        panic!("{:?}", r["job_2"])
    };
    assert_eq!((e.class, e.http_status), (ErrorClass::Fatal, Some(400)));
    assert!(matches!(r["job_3"], ItemResult::Expired));
    assert!(matches!(&r["job_4"], ItemResult::Succeeded(c) if c.refusal));
}

async fn a_batch_runs_to_the_end(d: Deployment) {
    let m = mock(MockSettings {
        batch_delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let p = providers(&m);
    let submitted = p
        .submit_batch(&d, &items(&d.model, &PROMPTS), "24h", "pb_test")
        .await
        .unwrap();
    // A lost answer can be recovered where the provider keeps the batch's metadata.
    let found = p.find_batch(&d, "pb_test").await.unwrap();
    if d.provider == "openai" {
        assert_eq!(
            found.map(|f| f.provider_batch_id),
            Some(submitted.provider_batch_id.clone())
        );
        assert!(p.find_batch(&d, "pb_other").await.unwrap().is_none());
    } else {
        assert!(found.is_none(), "Anthropic batches carry no metadata");
    }
    let e = p
        .batch_results(&d, &submitted.provider_batch_id)
        .await
        .unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Retryable, "batch_not_ended")
    );
    let poll = until(&p, &d, &submitted.provider_batch_id, |p| {
        p.state.is_terminal()
    })
    .await;
    assert_eq!(poll.state, BatchState::Completed);
    assert_eq!((poll.total, poll.done, poll.failed), (5, 5, 3));
    check_mixed_results(
        p.batch_results(&d, &submitted.provider_batch_id)
            .await
            .unwrap(),
    );
    let stats = m.stats();
    assert_eq!(stats.batch_items, 4, "the expired item was never served");
    assert_eq!(stats.calls_by_job["job_0"], 1);
    assert!(!stats.calls_by_job.contains_key("job_3"));
}

#[tokio::test]
async fn an_openai_batch_completes_with_results_matched_by_custom_id() {
    a_batch_runs_to_the_end(openai()).await;
}

#[tokio::test]
async fn an_anthropic_batch_completes_with_results_matched_by_custom_id() {
    a_batch_runs_to_the_end(anthropic()).await;
}

async fn an_expiring_batch_returns_finished_items(d: Deployment, state: BatchState) {
    let m = mock(MockSettings {
        batch_delay: Duration::from_millis(400),
        batch_expire: true,
        ..Default::default()
    })
    .await;
    let p = providers(&m);
    let prompts = ["one", "two", "three", "four"];
    let id = p
        .submit_batch(&d, &items(&d.model, &prompts), "24h", "pb_test")
        .await
        .unwrap()
        .provider_batch_id;
    assert_eq!(
        until(&p, &d, &id, |p| p.state.is_terminal()).await.state,
        state
    );
    let r = by_id(p.batch_results(&d, &id).await.unwrap());
    assert!(matches!(r["job_0"], ItemResult::Succeeded(_)));
    assert!(matches!(r["job_1"], ItemResult::Succeeded(_)));
    assert!(matches!(r["job_2"], ItemResult::Expired));
    assert!(matches!(r["job_3"], ItemResult::Expired));
}

#[tokio::test]
async fn an_expired_openai_batch_returns_finished_items_and_expires_the_rest() {
    an_expiring_batch_returns_finished_items(openai(), BatchState::Expired).await;
}

#[tokio::test]
async fn an_anthropic_batch_past_its_window_ends_with_expired_items() {
    an_expiring_batch_returns_finished_items(anthropic(), BatchState::Completed).await;
}

async fn a_cancelled_batch_keeps_finished_items(d: Deployment) {
    let m = mock(MockSettings {
        batch_delay: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let p = providers(&m);
    let prompts = ["one", "two", "three", "four", "five", "six"];
    let id = p
        .submit_batch(&d, &items(&d.model, &prompts), "24h", "pb_test")
        .await
        .unwrap()
        .provider_batch_id;
    // Polling serves due items; wait until the first one (due at 0.5 s) has been answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    while m.stats().batch_items == 0 {
        assert!(Instant::now() < deadline);
        p.poll_batch(&d, &id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let poll = p.cancel_batch(&d, &id).await.unwrap();
    assert_eq!(poll.state, BatchState::Cancelling);
    let poll = until(&p, &d, &id, |p| p.state.is_terminal()).await;
    assert_eq!(poll.state, BatchState::Cancelled);
    let results = p.batch_results(&d, &id).await.unwrap();
    assert_eq!(results.len(), 6);
    let r = by_id(results);
    assert!(matches!(r["job_0"], ItemResult::Succeeded(_)));
    assert!(matches!(r["job_5"], ItemResult::Cancelled));
    let served = m.stats().batch_items;
    let succeeded = r
        .values()
        .filter(|r| matches!(r, ItemResult::Succeeded(_)))
        .count();
    assert_eq!(served, succeeded as u64);
    // A finished batch cannot be cancelled again.
    let e = p.cancel_batch(&d, &id).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Fatal);
}

#[tokio::test]
async fn cancelling_an_openai_batch_keeps_finished_items_and_cancels_the_rest() {
    a_cancelled_batch_keeps_finished_items(openai()).await;
}

#[tokio::test]
async fn cancelling_an_anthropic_batch_keeps_finished_items_and_cancels_the_rest() {
    a_cancelled_batch_keeps_finished_items(anthropic()).await;
}

#[tokio::test]
async fn the_openai_mock_serves_file_and_batch_objects_in_openais_format() {
    let m = mock(MockSettings::default()).await;
    let p = providers(&m);
    let d = openai();
    let submitted = p
        .submit_batch(&d, &items(&d.model, &["a", "b"]), "24h", "pb_test")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = m.base_url();
    let file_id = submitted.input_file_id.unwrap();
    let file: Value = http
        .get(format!("{base}/files/{file_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (file["object"].as_str(), file["purpose"].as_str()),
        (Some("file"), Some("batch"))
    );
    let content = http
        .get(format!("{base}/files/{file_id}/content"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(file["bytes"].as_u64(), Some(content.len() as u64));
    assert_eq!(content.lines().count(), 2);
    let list: Value = http
        .get(format!("{base}/batches?limit=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(
        list["data"][0]["id"].as_str(),
        Some(submitted.provider_batch_id.as_str())
    );
    assert_eq!(list["data"][0]["object"], "batch");
    assert_eq!(list["has_more"], false);
    let deleted: Value = http
        .delete(format!("{base}/files/{file_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        deleted,
        json!({"id": file_id, "object": "file", "deleted": true})
    );
    let missing = http
        .get(format!("{base}/files/{file_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn an_openai_input_file_with_two_models_fails_validation() {
    let m = mock(MockSettings::default()).await;
    let http = reqwest::Client::new();
    let base = m.base_url();
    let line = |id: &str, model: &str| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": "x"}]}})
        .to_string()
    };
    let jsonl = format!("{}\n{}\n", line("a", "gpt-4o-mini"), line("b", "gpt-4.1"));
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(jsonl.into_bytes()).file_name("in.jsonl"),
        );
    let file: Value = http
        .post(format!("{base}/files"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch: Value = http
        .post(format!("{base}/batches"))
        .json(
            &json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(batch["status"], "failed");
    assert_eq!(batch["errors"]["data"][0]["code"], "mismatched_model");
}
