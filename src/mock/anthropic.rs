//! Anthropic Messages, mocked in Anthropic's wire format (`POST /v1/messages`, headers
//! `anthropic-version` required, `request-id` returned); Message Batches live in [`batch`].
//! Answers come from the same deterministic logic and markers as the OpenAI mock
//! (`[[mock:status=N]]`, `[[mock:refuse]]` → `stop_reason: refusal`, `[[mock:sleep=…]]`, …);
//! batch items also honour `[[mock:batch-item-error]]` (or `=STATUS`) and `[[mock:batch-expire]]`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::batches::{count_tokens, lock};
use super::{Shared, estimate_tokens, extra_latency, forced_error, marker, prompt_text, reply};

pub(super) mod batch;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/messages", post(messages))
        .merge(batch::routes())
}

/// Anthropic's error `type` for a status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn error_body(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

fn error(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (code, axum::Json(error_body(status, message))).into_response();
    if status == 429 {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    resp
}

/// The system prompt and messages' text, where markers are looked for.
fn params_prompt(params: &Value) -> (Vec<Value>, String) {
    let mut messages = Vec::new();
    match params.get("system") {
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(blocks @ Value::Array(_)) => {
            messages.push(json!({"role": "system", "content": blocks}));
        }
        _ => {}
    }
    messages.extend(
        params
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .cloned(),
    );
    let prompt = prompt_text(&messages);
    (messages, prompt)
}

/// A Messages answer for `params`, or the `(status, message)` of the error to give instead.
fn respond(
    shared: &Shared,
    params: &Value,
    calls: u64,
    digest: &[u8],
) -> Result<Value, (u16, String)> {
    let model = params.get("model").and_then(Value::as_str);
    let max_tokens = params.get("max_tokens").and_then(Value::as_u64);
    let turns = params.get("messages").and_then(Value::as_array);
    let (Some(model), Some(max_tokens), Some(turns)) = (model, max_tokens, turns) else {
        return Err((400, "model, max_tokens and messages are required".into()));
    };
    if turns.is_empty() {
        return Err((400, "messages: at least one message is required".into()));
    }
    if let Some(bad) = turns
        .iter()
        .filter_map(|m| m.get("role").and_then(Value::as_str))
        .find(|r| !matches!(*r, "user" | "assistant"))
    {
        return Err((
            400,
            format!(
                "messages: Unexpected role \"{bad}\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role."
            ),
        ));
    }
    let (messages, prompt) = params_prompt(params);
    if let Some((status, message, _)) = forced_error(&shared.settings, &prompt, calls, digest) {
        return Err((status.as_u16(), message.into()));
    }
    let r = reply(estimate_tokens(&messages), max_tokens, &prompt, digest);
    count_tokens(shared, r.prompt_tokens, r.completion_tokens);
    let mut text = r.text.clone();
    let mut stop_reason = if r.truncated {
        "max_tokens"
    } else {
        "end_turn"
    };
    let mut stop_sequence = Value::Null;
    let stops = params.get("stop_sequences").and_then(Value::as_array);
    if let Some((at, s)) = stops
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|s| text.find(s).map(|at| (at, s)))
        .min()
    {
        text.truncate(at);
        stop_reason = "stop_sequence";
        stop_sequence = s.into();
    }
    if r.refused {
        text = "I can't help with that request.".into();
        stop_reason = "refusal";
    }
    Ok(json!({
        "id": format!("msg_{}", r.id_hex),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": r.prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": r.completion_tokens,
            "service_tier": "standard",
        },
    }))
}

async fn messages(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let job = headers
        .get("x-sluice-job-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let calls = {
        let mut s = lock(&shared.stats);
        s.requests += 1;
        let c = s.calls_by_job.entry(job).or_default();
        *c += 1;
        *c
    };
    let digest = Sha256::digest(&body);
    let mut resp = answer(&shared, &headers, &body, calls, &digest).await;
    *lock(&shared.stats)
        .by_status
        .entry(resp.status().as_u16())
        .or_default() += 1;
    if let Ok(v) = format!("req_{}", hex::encode(&digest[12..24])).parse() {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

async fn answer(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    calls: u64,
    digest: &[u8],
) -> Response {
    if !headers.contains_key("anthropic-version") {
        return error(400, "anthropic-version: header is required");
    }
    let Ok(params) = serde_json::from_slice::<Value>(body) else {
        return error(
            400,
            "There was an issue with your request body: not valid JSON",
        );
    };
    let (_, prompt) = params_prompt(&params);
    let latency = shared.settings.latency + extra_latency(&prompt);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if marker(&prompt, "malformed").is_some() {
        return (StatusCode::OK, "{\"id\": \"msg_broken\", \"content\": [").into_response();
    }
    match respond(shared, &params, calls, digest) {
        Ok(message) => axum::Json(message).into_response(),
        Err((status, message)) => error(status, &message),
    }
}
