//! Masked values put back into answers (`[redaction] restore = true`): the provider never sees
//! the card or the email on the real-time path, the batch path or the synchronous endpoint,
//! while each job's stored answer (and the synchronous reply) holds the original values.

use serde_json::{Value, json};
use sluice::domain::redact::Mode;
use sluice::governance::PolicyConfig;

use super::T;
use crate::common::{Client, TestEnv, job};

const CARD: &str = "5500-0000-0000-0004";
const EMAIL: &str = "canary.pii@example.org";

/// The mock echoes the prompt's first words; `[PHONE_9]` is a placeholder nobody handed out.
fn prompt() -> String {
    format!("Refund card {CARD} to {EMAIL} ref [PHONE_9]")
}

/// The text content of a `chat.completion`.
fn content(answer: &Value) -> String {
    answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {answer}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_answers_hold_the_values_the_provider_never_saw_on_every_path() {
    let mut env = TestEnv::new().await;
    env.config.redaction.tenants.insert(
        "acme".into(),
        PolicyConfig {
            mode: Mode::Mask,
            restore: true,
            ..Default::default()
        },
    );
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut batch = job(&prompt());
    batch["model"] = json!("openai/gpt-4o-mini");
    batch["route"] = json!("batch");
    let mut cheap = job(&prompt());
    cheap["route"] = json!("cheap");
    let (s, body) = c
        .post("/v1/jobs", &json!({"jobs": [cheap, batch]}), None)
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, sync) = c
        .post(
            "/v1/chat/completions",
            &json!({"model": "summarize", "messages": [{"role": "user", "content": prompt()}]}),
            None,
        )
        .await;
    assert_eq!(s, 200, "{sync}");
    let sync_text = content(&sync);
    assert!(
        sync_text.contains(CARD) && sync_text.contains(EMAIL),
        "{sync_text}"
    );

    for j in body["data"].as_array().unwrap() {
        let done = c.wait_job(j["id"].as_str().unwrap(), T).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    let stored: Vec<(String, Value, Value, Value, bool)> = sqlx::query_as(
        "SELECT route, request, response, redactions, mask_on_send FROM jobs ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 3);
    let mut routes = Vec::new();
    for (route, request, response, redactions, mask_on_send) in stored {
        routes.push(route);
        let text = content(&response);
        assert!(text.contains(CARD) && text.contains(EMAIL), "{text}");
        assert!(
            text.contains("[PHONE_9]"),
            "an unknown placeholder stays as it is: {text}"
        );
        assert!(
            request.to_string().contains(CARD),
            "stored as submitted (documented)"
        );
        assert_eq!(redactions, json!({"card": 1, "email": 1}));
        assert!(mask_on_send);
    }
    routes.sort();
    assert_eq!(routes, ["batch", "cheap", "cheap"]);

    let seen: Value = reqwest::get(format!("http://{}/mock/requests", env.mock.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen_text = seen.to_string();
    assert!(seen.as_array().unwrap().len() >= 3, "{seen}");
    for canary in [CARD, EMAIL, "5500000000000004"] {
        assert!(!seen_text.contains(canary), "the provider saw {canary}");
    }
    assert!(
        seen_text
            .matches("Refund card [CARD_1] to [EMAIL_1]")
            .count()
            >= 3,
        "each path sent the masked prompt: {seen_text}"
    );
    app.stop().await;
    env.cleanup().await;
}
