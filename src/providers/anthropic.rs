//! Anthropic Messages (`POST {base_url}/messages`). Jobs are written in OpenAI's chat format, so
//! `to_wire` translates a chat request into a Messages request and `from_wire` translates the
//! answer back into a `chat.completion` body; both are pure. `complete` does the I/O.

use std::time::Duration;

use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use super::openai::retry_after;
use super::{Completion, ProviderError, send};
use crate::domain::pricing::Usage;
use crate::domain::retry::{ErrorClass, classify_status};

/// The API version sluice speaks; sent as `anthropic-version` on every call.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` is required by Anthropic; this is used when the job sets none.
pub const DEFAULT_MAX_TOKENS: u64 = 1024;

/// A client for one Anthropic base URL (for Anthropic: `https://api.anthropic.com/v1`).
#[derive(Debug, Clone)]
pub struct AnthropicClient {
    http: reqwest::Client,
    base_url: String,
    key: Option<SecretString>,
    timeout: Duration,
}

impl AnthropicClient {
    /// `base_url` ends before `/messages`; the key is sent as `x-api-key`.
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        key: Option<SecretString>,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            key,
            timeout,
        }
    }

    /// The base URL, without a trailing slash.
    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A request to `url` (absolute) with the authentication and version headers.
    pub(crate) fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, url)
            .timeout(self.timeout)
            .header("anthropic-version", API_VERSION);
        if let Some(k) = &self.key {
            req = req.header("x-api-key", k.expose_secret());
        }
        req
    }

    /// Sends one chat completion as a Messages call.
    #[tracing::instrument(skip_all, fields(job_id = job_id, model = model, provider = "anthropic"))]
    pub async fn complete(
        &self,
        model: &str,
        request: &Value,
        job_id: &str,
    ) -> Result<Completion, ProviderError> {
        let body = to_wire(model, request)?;
        let url = format!("{}/messages", self.base_url);
        let req = self
            .request(reqwest::Method::POST, &url)
            .header("x-sluice-job-id", job_id)
            .json(&body);
        let (status, headers, bytes) = send(req).await?;
        from_wire(status, &headers, &bytes)
    }
}

fn invalid(message: String) -> ProviderError {
    ProviderError {
        http_status: None,
        ..ProviderError::new(ErrorClass::Fatal, "invalid_request", message)
    }
}

/// Translates an OpenAI chat request into an Anthropic Messages request for `model`.
///
/// System and developer messages become the top-level `system`; consecutive messages of one
/// role are merged (Anthropic wants user and assistant to alternate); `max_tokens` (or
/// `max_completion_tokens`) is required there, so [`DEFAULT_MAX_TOKENS`] fills in; `stop` becomes
/// `stop_sequences`; `temperature` is clamped to Anthropic's 0–1; `user` becomes
/// `metadata.user_id`. Other OpenAI fields are dropped. Tools, images and tool messages are
/// refused (a fatal error) rather than silently lost.
pub fn to_wire(model: &str, request: &Value) -> Result<Value, ProviderError> {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`messages` must be an array".into()))?;
    if request.get("tools").is_some_and(|t| !t.is_null()) {
        return Err(invalid(
            "tools are not supported for Anthropic deployments yet".into(),
        ));
    }
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let blocks = text_blocks(m.get("content"))
            .map_err(|e| invalid(format!("messages[{i}].content: {e}")))?;
        match role {
            "system" | "developer" => system.extend(
                blocks
                    .iter()
                    .filter_map(|b| b["text"].as_str().map(str::to_owned)),
            ),
            "user" | "assistant" => match turns.last_mut() {
                Some((last, acc)) if last == role => acc.extend(blocks),
                _ => turns.push((role.to_string(), blocks)),
            },
            other => {
                return Err(invalid(format!(
                    "messages[{i}].role: `{other}` is not supported for Anthropic deployments"
                )));
            }
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            let content = match blocks.len() {
                1 => blocks.remove(0)["text"].take(),
                _ => Value::Array(blocks),
            };
            json!({"role": role, "content": content})
        })
        .collect();
    let max_tokens = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("max_tokens".into(), max_tokens.into());
    if !system.is_empty() {
        body.insert("system".into(), system.join("\n\n").into());
    }
    body.insert("messages".into(), messages.into());
    match request.get("stop") {
        Some(Value::String(s)) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            body.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(t) = request.get("temperature").and_then(Value::as_f64) {
        body.insert("temperature".into(), t.clamp(0.0, 1.0).into());
    }
    if let Some(p) = request.get("top_p").filter(|p| p.is_number()) {
        body.insert("top_p".into(), p.clone());
    }
    if let Some(u) = request.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({"user_id": u}));
    }
    Ok(Value::Object(body))
}

/// A message's content as Anthropic text blocks; empty texts are dropped (Anthropic refuses them).
fn text_blocks(content: Option<&Value>) -> Result<Vec<Value>, String> {
    let texts: Vec<&str> = match content {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| "a text part has no `text`".to_string()),
                other => Err(format!("content part type {other:?} is not supported")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("must be a string or an array of parts".into()),
    };
    Ok(texts
        .into_iter()
        .filter(|t| !t.is_empty())
        .map(|t| json!({"type": "text", "text": t}))
        .collect())
}

/// Interprets an answer from `POST /messages`.
pub fn from_wire(
    status: u16,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Completion, ProviderError> {
    let request_id = headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(e) = super::redirect_error(status, headers) {
        return Err(e);
    }
    if !(200..300).contains(&status) {
        return Err(ProviderError {
            retry_after: retry_after(headers),
            request_id,
            ..error_from_body(status, bytes)
        });
    }
    let message: Value = serde_json::from_slice(bytes)
        .map_err(|e| malformed(format!("not JSON: {e}"), Some(status)))?;
    let mut c = from_message(&message).map_err(|e| ProviderError {
        http_status: Some(status),
        ..e
    })?;
    if request_id.is_some() {
        c.request_id = request_id;
    }
    c.exhausted_for = super::ratelimit::exhausted_for(headers, chrono::Utc::now());
    Ok(c)
}

/// An error answer (`{"type":"error","error":{"type","message"}}`), classified by its status.
pub fn error_from_body(status: u16, bytes: &[u8]) -> ProviderError {
    let message = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned());
    ProviderError {
        http_status: Some(status),
        ..ProviderError::new(classify_status(status), &format!("http_{status}"), message)
    }
}

/// The HTTP status Anthropic uses for an error `type`, so errors that arrive without one (batch
/// results) classify like those that do.
pub fn status_for_error_type(kind: &str) -> Option<u16> {
    Some(match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "api_error" => 500,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => return None,
    })
}

/// Translates an Anthropic `message` object into a normalised [`Completion`]; the request id is
/// the message id (callers with a `request-id` header replace it).
pub fn from_message(message: &Value) -> Result<Completion, ProviderError> {
    let blocks = message
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no content in the message".into(), None))?;
    let text: String = blocks
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect();
    let tool_calls: Vec<Value> = blocks
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| {
            json!({"id": b["id"], "type": "function", "function": {
                "name": b["name"], "arguments": b["input"].to_string()}})
        })
        .collect();
    let stop_reason = message.get("stop_reason").and_then(Value::as_str);
    let refusal = stop_reason == Some("refusal");
    let finish_reason = match stop_reason {
        Some("max_tokens") => "length",
        Some("refusal") => "content_filter",
        Some("tool_use") => "tool_calls",
        _ => "stop",
    };
    let mut msg = if refusal {
        let why = if text.is_empty() {
            "The model refused to answer."
        } else {
            &text
        };
        json!({"role": "assistant", "content": null, "refusal": why})
    } else {
        json!({"role": "assistant", "content": text, "refusal": null})
    };
    if !tool_calls.is_empty() {
        msg["tool_calls"] = Value::Array(tool_calls);
    }
    let n = |k: &str| super::token_count(message.pointer(&format!("/usage/{k}")));
    let cached = n("cache_read_input_tokens");
    // Anthropic's `input_tokens` excludes cache reads and writes; OpenAI's prompt_tokens includes them.
    let prompt = n("input_tokens") + cached + n("cache_creation_input_tokens");
    let completion = n("output_tokens");
    let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
    let body = json!({
        "id": id,
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": message.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": msg, "logprobs": null, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    });
    Ok(Completion {
        body,
        usage: Usage {
            input_tokens: prompt,
            output_tokens: completion,
            cached_tokens: cached,
        },
        request_id: id,
        refusal,
        exhausted_for: None,
    })
}

fn malformed(message: String, status: Option<u16>) -> ProviderError {
    ProviderError {
        http_status: status,
        ..ProviderError::new(ErrorClass::Retryable, "malformed_response", message)
    }
}

#[cfg(test)]
mod tests;
