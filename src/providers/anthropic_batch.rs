//! Anthropic Message Batches on [`AnthropicClient`]: requests go inline (no file), results come
//! back as JSONL once the batch has ended. Building the request and parsing answers are pure.
//!
//! Ended batches are reported as [`BatchState::Completed`] (or `Cancelled` after a cancel) even
//! when some items expired: those items come back as [`ItemResult::Expired`], one by one.

use reqwest::Method;
use serde_json::{Value, json};

use super::anthropic::{AnthropicClient, error_from_body, from_message, status_for_error_type};
use super::batch::{BatchItem, BatchPoll, BatchState, ItemResult, SubmittedBatch, item_error};
use super::{ProviderError, send};
use crate::domain::retry::{ErrorClass, classify_status};

impl AnthropicClient {
    async fn batch_call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        let url = format!("{}/messages/batches{path}", self.base_url());
        let mut req = self.request(method, &url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let (status, _, bytes) = send(req).await?;
        if !(200..300).contains(&status) {
            return Err(error_from_body(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| malformed(format!("not JSON: {e}")))
    }

    /// Creates a batch of `items`; their `custom_id`s must be 1–64 `[A-Za-z0-9_-]` (job ids are).
    #[tracing::instrument(skip_all, fields(provider = "anthropic", items = items.len()))]
    pub async fn submit_batch(&self, items: &[BatchItem]) -> Result<SubmittedBatch, ProviderError> {
        let body = batch_request(items)?;
        let batch = self.batch_call(Method::POST, "", Some(&body)).await?;
        Ok(SubmittedBatch {
            provider_batch_id: id_of(&batch)?,
            input_file_id: None,
        })
    }

    /// Where the batch stands.
    #[tracing::instrument(skip_all, fields(provider = "anthropic", provider_batch_id = id))]
    pub async fn poll_batch(&self, id: &str) -> Result<BatchPoll, ProviderError> {
        let batch = self
            .batch_call(Method::GET, &format!("/{id}"), None)
            .await?;
        poll_from_json(&batch)
    }

    /// Every item's result once the batch has ended (a retryable `batch_not_ended` error before).
    /// The batch's `results_url` is used when it lies under the configured base URL, so the API
    /// key is never sent to another host; otherwise `/messages/batches/{id}/results`.
    #[tracing::instrument(skip_all, fields(provider = "anthropic", provider_batch_id = id))]
    pub async fn batch_results(
        &self,
        id: &str,
    ) -> Result<Vec<(String, ItemResult)>, ProviderError> {
        let batch = self
            .batch_call(Method::GET, &format!("/{id}"), None)
            .await?;
        let poll = poll_from_json(&batch)?;
        if !poll.state.is_terminal() {
            return Err(super::batch::not_ended(id, poll.state));
        }
        let own = format!("{}/messages/batches/{id}/results", self.base_url());
        let url = batch
            .get("results_url")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with(&format!("{}/", self.base_url())))
            .unwrap_or(&own);
        let (status, _, bytes) = send(self.request(Method::GET, url)).await?;
        if !(200..300).contains(&status) {
            return Err(error_from_body(status, &bytes));
        }
        Ok(parse_results(&String::from_utf8_lossy(&bytes)))
    }

    /// Asks Anthropic to cancel the batch (`canceling`, then `ended`).
    #[tracing::instrument(skip_all, fields(provider = "anthropic", provider_batch_id = id))]
    pub async fn cancel_batch(&self, id: &str) -> Result<BatchPoll, ProviderError> {
        let batch = self
            .batch_call(Method::POST, &format!("/{id}/cancel"), None)
            .await?;
        poll_from_json(&batch)
    }
}

/// Anthropic's rule for `custom_id`: 1–64 characters of `[A-Za-z0-9_-]`.
pub fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The body of `POST /messages/batches`: `{"requests":[{"custom_id","params"}]}`. An item that
/// cannot be translated, or whose `custom_id` breaks Anthropic's rule, fails the whole call with
/// a fatal error naming it (callers validate at admission, so this is a bug guard).
pub fn batch_request(items: &[BatchItem]) -> Result<Value, ProviderError> {
    if items.is_empty() {
        return Err(ProviderError::new(
            ErrorClass::Fatal,
            "empty_batch",
            "a batch needs at least one item",
        ));
    }
    let mut requests = Vec::with_capacity(items.len());
    for item in items {
        if !valid_custom_id(&item.custom_id) {
            return Err(ProviderError::new(
                ErrorClass::Fatal,
                "invalid_custom_id",
                format!("`{}` is not 1-64 [A-Za-z0-9_-]", item.custom_id),
            ));
        }
        let params =
            super::anthropic::to_wire(&item.model, &item.request).map_err(|e| ProviderError {
                message: format!("{}: {}", item.custom_id, e.message),
                ..e
            })?;
        requests.push(json!({"custom_id": item.custom_id, "params": params}));
    }
    Ok(json!({ "requests": requests }))
}

/// A `message_batch` object as a provider-neutral poll. `done` counts items that ended in any
/// way; Anthropic keeps everything under `processing` until the batch ends.
pub fn poll_from_json(batch: &Value) -> Result<BatchPoll, ProviderError> {
    let status = batch
        .get("processing_status")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("no `processing_status` in the answer".into()))?;
    let cancelled = batch
        .get("cancel_initiated_at")
        .is_some_and(|c| !c.is_null());
    let state = match status {
        "in_progress" => BatchState::InProgress,
        "canceling" => BatchState::Cancelling,
        "ended" if cancelled => BatchState::Cancelled,
        "ended" => BatchState::Completed,
        other => return Err(malformed(format!("unknown processing_status `{other}`"))),
    };
    let n = |k: &str| {
        batch
            .pointer(&format!("/request_counts/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let failed = n("errored") + n("canceled") + n("expired");
    let done = n("succeeded") + failed;
    Ok(BatchPoll {
        state,
        total: n("processing") + done,
        done,
        failed,
        message: None,
    })
}

/// Every parsable results line; unreadable lines are logged and skipped (the caller re-drives
/// items missing from the results).
pub fn parse_results(jsonl: &str) -> Vec<(String, ItemResult)> {
    super::batch::parse_jsonl(jsonl, parse_result_line)
}

/// One results line: `{"custom_id", "result": {"type": succeeded|errored|canceled|expired, …}}`.
pub fn parse_result_line(line: &str) -> Result<(String, ItemResult), ProviderError> {
    let v: Value =
        serde_json::from_str(line).map_err(|e| malformed(format!("result line: {e}")))?;
    let custom_id = v
        .get("custom_id")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("result line without custom_id".into()))?
        .to_string();
    let result = &v["result"];
    let item = match result.get("type").and_then(Value::as_str) {
        Some("succeeded") => ItemResult::Succeeded(from_message(&result["message"])?),
        Some("errored") => {
            let kind = result
                .pointer("/error/error/type")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            let message = result
                .pointer("/error/error/message")
                .and_then(Value::as_str)
                .unwrap_or(kind);
            ItemResult::Errored(match status_for_error_type(kind) {
                Some(s) => item_error(
                    classify_status(s),
                    &format!("http_{s}"),
                    message,
                    Some(s),
                    None,
                ),
                None => item_error(
                    ErrorClass::Retryable,
                    "batch_item_error",
                    format!("{kind}: {message}"),
                    None,
                    None,
                ),
            })
        }
        Some("canceled") => ItemResult::Cancelled,
        Some("expired") => ItemResult::Expired,
        other => {
            return Err(malformed(format!(
                "unknown result type {other:?} for {custom_id}"
            )));
        }
    };
    Ok((custom_id, item))
}

fn id_of(batch: &Value) -> Result<String, ProviderError> {
    batch
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| malformed("no `id` in the answer".into()))
}

fn malformed(message: String) -> ProviderError {
    ProviderError::new(ErrorClass::Retryable, "malformed_response", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str) -> BatchItem {
        BatchItem {
            custom_id: id.into(),
            model: "claude-haiku-4-5".into(),
            request: json!({"messages": [{"role": "system", "content": "S"},
                {"role": "user", "content": "hi"}], "max_tokens": 10}),
        }
    }

    #[test]
    fn custom_ids_follow_anthropics_rule_and_job_ids_fit() {
        assert!(valid_custom_id(&crate::ids::new_id("job")));
        assert!(valid_custom_id("a-b_C9") && valid_custom_id(&"x".repeat(64)));
        for bad in ["", "a.b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_custom_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_batch_request_holds_translated_params_per_item() {
        let body = batch_request(&[item("job_1"), item("job_2")]).unwrap();
        assert_eq!(body["requests"].as_array().unwrap().len(), 2);
        assert_eq!(
            body["requests"][0],
            json!({"custom_id": "job_1", "params": {"model": "claude-haiku-4-5", "max_tokens": 10,
                "system": "S", "messages": [{"role": "user", "content": "hi"}]}})
        );
        assert_eq!(
            batch_request(&[item("bad id")]).unwrap_err().code,
            "invalid_custom_id"
        );
        assert_eq!(batch_request(&[]).unwrap_err().code, "empty_batch");
        let mut bad = item("job_3");
        bad.request = json!({"prompt": "x"});
        let e = batch_request(&[bad]).unwrap_err();
        assert!(e.message.starts_with("job_3: "), "{}", e.message);
    }

    #[test]
    fn processing_statuses_map_to_neutral_states_with_counts() {
        let counts =
            json!({"processing": 0, "succeeded": 5, "errored": 1, "canceled": 0, "expired": 2});
        for (status, cancel, state) in [
            ("in_progress", Value::Null, BatchState::InProgress),
            (
                "canceling",
                json!("2024-08-20T18:37:24Z"),
                BatchState::Cancelling,
            ),
            ("ended", Value::Null, BatchState::Completed),
            (
                "ended",
                json!("2024-08-20T18:37:24Z"),
                BatchState::Cancelled,
            ),
        ] {
            let b = json!({"id": "msgbatch_1", "type": "message_batch", "processing_status": status,
                "cancel_initiated_at": cancel, "request_counts": counts});
            let poll = poll_from_json(&b).unwrap();
            assert_eq!(poll.state, state, "{status}");
            assert_eq!((poll.total, poll.done, poll.failed), (8, 8, 3));
        }
        let running = json!({"processing_status": "in_progress", "request_counts": {"processing": 4,
            "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}});
        let poll = poll_from_json(&running).unwrap();
        assert_eq!((poll.total, poll.done), (4, 0));
    }

    #[test]
    fn result_lines_become_item_results() {
        let ok = json!({"custom_id": "job_1", "result": {"type": "succeeded", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 9, "output_tokens": 2}}}});
        let (id, r) = parse_result_line(&ok.to_string()).unwrap();
        let ItemResult::Succeeded(c) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (id.as_str(), c.usage.input_tokens, c.usage.output_tokens),
            ("job_1", 9, 2)
        );
        assert_eq!(c.body["choices"][0]["message"]["content"], "hi");

        let errored = |kind: &str| {
            json!({"custom_id": "job_2", "result": {"type": "errored", "error": {"type": "error",
                "error": {"type": kind, "message": "nope"}}}})
            .to_string()
        };
        let (_, r) = parse_result_line(&errored("invalid_request_error")).unwrap();
        let ItemResult::Errored(e) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (e.class, e.http_status, e.message.as_str()),
            (ErrorClass::Fatal, Some(400), "nope")
        );
        let (_, r) = parse_result_line(&errored("overloaded_error")).unwrap();
        let ItemResult::Errored(e) = r else {
            panic!("{r:?}")
        };
        assert_eq!(e.class, ErrorClass::Retryable);

        let (_, r) =
            parse_result_line(r#"{"custom_id":"j","result":{"type":"canceled"}}"#).unwrap();
        assert!(matches!(r, ItemResult::Cancelled));
        let (_, r) = parse_result_line(r#"{"custom_id":"j","result":{"type":"expired"}}"#).unwrap();
        assert!(matches!(r, ItemResult::Expired));
        assert!(parse_result_line(r#"{"custom_id":"j","result":{"type":"new"}}"#).is_err());
        assert_eq!(
            parse_results("{bad\n\n{\"custom_id\":\"j\",\"result\":{\"type\":\"expired\"}}\n")
                .len(),
            1
        );
    }
}
