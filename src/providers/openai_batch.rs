//! OpenAI's Batch API on [`OpenAiClient`]: upload a JSONL input file, create the batch, poll it,
//! download and parse the output and error files, cancel. Building lines and parsing answers
//! are pure functions; the methods only move bytes.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;
use reqwest::multipart::{Form, Part};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::batch::{BatchItem, BatchPoll, BatchState, ItemResult, SubmittedBatch, item_error};
use super::openai::{OpenAiClient, from_wire, to_wire};
use super::{ProviderError, send};
use crate::domain::retry::{ErrorClass, classify_status};

/// The only endpoint sluice batches.
const ENDPOINT: &str = "/v1/chat/completions";

/// The batch metadata key carrying sluice's own batch id.
const TAG_KEY: &str = "sluice_batch_id";
/// How many of the newest batches `find_batch` looks through (OpenAI's page maximum).
const FIND_AMONG: usize = 100;

/// The batch in a `GET /v1/batches` page whose metadata carries `tag`.
pub fn find_tagged(list: &Value, tag: &str) -> Option<SubmittedBatch> {
    let batch = list
        .get("data")?
        .as_array()?
        .iter()
        .find(|b| b["metadata"][TAG_KEY].as_str() == Some(tag))?;
    Some(SubmittedBatch {
        provider_batch_id: batch["id"].as_str()?.to_string(),
        input_file_id: batch["input_file_id"].as_str().map(str::to_string),
    })
}

/// Files can be up to 200 MB: uploads and downloads get at least this long.
const FILE_TIMEOUT: Duration = Duration::from_secs(600);

impl OpenAiClient {
    fn call(&self, method: Method, path: &str, timeout: Duration) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.base_url());
        let mut req = self.http().request(method, url).timeout(timeout);
        if let Some(k) = self.key() {
            req = req.bearer_auth(k.expose_secret());
        }
        req
    }

    async fn json(&self, req: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
        let (status, headers, bytes) = send(req).await?;
        answer_json(status, &headers, &bytes)
    }

    /// Uploads `items` as one JSONL file (`purpose=batch`) and creates a batch over it. All
    /// items must share one model (OpenAI refuses mixed files); the file is deleted again if the
    /// batch cannot be created.
    #[tracing::instrument(skip_all, fields(provider = "openai", items = items.len()))]
    pub async fn submit_batch(
        &self,
        items: &[BatchItem],
        completion_window: &str,
        tag: &str,
    ) -> Result<SubmittedBatch, ProviderError> {
        let jsonl = input_jsonl(items)?;
        let file = Part::bytes(jsonl.into_bytes())
            .file_name("sluice-batch.jsonl")
            .mime_str("application/jsonl")
            .map_err(|e| ProviderError::new(ErrorClass::Fatal, "invalid_request", e.to_string()))?;
        let form = Form::new().text("purpose", "batch").part("file", file);
        let timeout = self.timeout().max(FILE_TIMEOUT);
        let uploaded = self
            .json(self.call(Method::POST, "/files", timeout).multipart(form))
            .await?;
        let file_id = string_field(&uploaded, "id")?;
        let create = json!({"input_file_id": file_id, "endpoint": ENDPOINT,
            "completion_window": completion_window, "metadata": {TAG_KEY: tag}});
        let created = self
            .json(
                self.call(Method::POST, "/batches", self.timeout())
                    .json(&create),
            )
            .await;
        let batch = match created.and_then(|b| string_field(&b, "id")) {
            Ok(id) => id,
            Err(e) => {
                // Best effort: the error that matters is the one returned.
                let path = format!("/files/{file_id}");
                let _ = send(self.call(Method::DELETE, &path, self.timeout())).await;
                return Err(e);
            }
        };
        Ok(SubmittedBatch {
            provider_batch_id: batch,
            input_file_id: Some(file_id),
        })
    }

    /// The batch created with metadata `sluice_batch_id = tag`, among the provider's newest
    /// [`FIND_AMONG`] batches (a re-submission looks within minutes of the first try).
    #[tracing::instrument(skip_all, fields(provider = "openai", tag = tag))]
    pub async fn find_batch(&self, tag: &str) -> Result<Option<SubmittedBatch>, ProviderError> {
        let path = format!("/batches?limit={FIND_AMONG}");
        let list = self
            .json(self.call(Method::GET, &path, self.timeout()))
            .await?;
        Ok(find_tagged(&list, tag))
    }

    /// The batch's state, with its output and error file ids once it has them.
    #[tracing::instrument(skip_all, fields(provider = "openai", provider_batch_id = id))]
    pub async fn poll_batch(
        &self,
        id: &str,
    ) -> Result<(BatchPoll, Option<String>, Option<String>), ProviderError> {
        let path = format!("/batches/{id}");
        let batch = self
            .json(self.call(Method::GET, &path, self.timeout()))
            .await?;
        poll_from_json(&batch)
    }

    /// Downloads and parses the output and error files (either may be absent).
    #[tracing::instrument(skip_all, fields(provider = "openai"))]
    pub async fn batch_results(
        &self,
        output_file_id: Option<&str>,
        error_file_id: Option<&str>,
    ) -> Result<Vec<(String, ItemResult)>, ProviderError> {
        let mut results = Vec::new();
        for file in [output_file_id, error_file_id].into_iter().flatten() {
            let path = format!("/files/{file}/content");
            let req = self.call(Method::GET, &path, self.timeout().max(FILE_TIMEOUT));
            let (status, headers, bytes) = send(req).await?;
            if !(200..300).contains(&status) {
                return Err(error_answer(status, &headers, &bytes));
            }
            results.extend(parse_results(&String::from_utf8_lossy(&bytes)));
        }
        Ok(results)
    }

    /// Asks OpenAI to cancel the batch (it moves to `cancelling`, then `cancelled`).
    #[tracing::instrument(skip_all, fields(provider = "openai", provider_batch_id = id))]
    pub async fn cancel_batch(&self, id: &str) -> Result<BatchPoll, ProviderError> {
        let path = format!("/batches/{id}/cancel");
        let batch = self
            .json(self.call(Method::POST, &path, self.timeout()))
            .await?;
        poll_from_json(&batch).map(|(p, _, _)| p)
    }
}

/// The input file: one `{"custom_id","method","url","body"}` line per item, each ending in `\n`.
pub fn input_jsonl(items: &[BatchItem]) -> Result<String, ProviderError> {
    let Some(first) = items.first() else {
        return Err(ProviderError::new(
            ErrorClass::Fatal,
            "empty_batch",
            "a batch needs at least one item",
        ));
    };
    if let Some(other) = items.iter().find(|i| i.model != first.model) {
        return Err(ProviderError::new(
            ErrorClass::Fatal,
            "mixed_models",
            format!(
                "an OpenAI batch holds one model: `{}` and `{}`",
                first.model, other.model
            ),
        ));
    }
    let mut out = String::new();
    for item in items {
        let line = json!({"custom_id": item.custom_id, "method": "POST", "url": ENDPOINT,
            "body": to_wire(&item.model, &item.request)});
        out.push_str(&line.to_string());
        out.push('\n');
    }
    Ok(out)
}

/// A batch object as a provider-neutral poll, plus its output and error file ids.
pub fn poll_from_json(
    batch: &Value,
) -> Result<(BatchPoll, Option<String>, Option<String>), ProviderError> {
    let status = string_field(batch, "status")?;
    let state = match status.as_str() {
        "validating" | "in_progress" | "finalizing" => BatchState::InProgress,
        "completed" => BatchState::Completed,
        "failed" => BatchState::Failed,
        "expired" => BatchState::Expired,
        "cancelling" => BatchState::Cancelling,
        "cancelled" => BatchState::Cancelled,
        other => return Err(malformed(format!("unknown batch status `{other}`"))),
    };
    let n = |k: &str| {
        batch
            .pointer(&format!("/request_counts/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let errors: Vec<&str> = batch
        .pointer("/errors/data")
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .filter_map(|e| e.get("message").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let file = |k: &str| batch.get(k).and_then(Value::as_str).map(str::to_owned);
    let poll = BatchPoll {
        state,
        total: n("total"),
        done: n("completed") + n("failed"),
        failed: n("failed"),
        message: (!errors.is_empty()).then(|| errors.join("; ")),
    };
    Ok((poll, file("output_file_id"), file("error_file_id")))
}

/// Every parsable line of an output or error file; a line that cannot be read is logged and
/// skipped (its item is then missing from the results, and the caller re-drives it).
pub fn parse_results(jsonl: &str) -> Vec<(String, ItemResult)> {
    super::batch::parse_jsonl(jsonl, parse_result_line)
}

/// One output or error line: `{"id","custom_id","response":{…}|null,"error":{…}|null}`.
pub fn parse_result_line(line: &str) -> Result<(String, ItemResult), ProviderError> {
    let v: Value =
        serde_json::from_str(line).map_err(|e| malformed(format!("result line: {e}")))?;
    let custom_id = string_field(&v, "custom_id")?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        let code = err.get("code").and_then(Value::as_str).unwrap_or_default();
        let message = err.get("message").and_then(Value::as_str).unwrap_or(code);
        let result = match code {
            "batch_expired" => ItemResult::Expired,
            "batch_cancelled" => ItemResult::Cancelled,
            _ => ItemResult::Errored(item_error(
                ErrorClass::Retryable,
                "batch_item_error",
                format!("{code}: {message}"),
                None,
                None,
            )),
        };
        return Ok((custom_id, result));
    }
    let response = v.get("response").filter(|r| r.is_object()).ok_or_else(|| {
        malformed(format!(
            "result for {custom_id} has neither response nor error"
        ))
    })?;
    let status = response
        .get("status_code")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .ok_or_else(|| malformed(format!("result for {custom_id} has no status_code")))?;
    let request_id = response
        .get("request_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let body = response.get("body").cloned().unwrap_or(Value::Null);
    let result = match from_wire(status, &HeaderMap::new(), body.to_string().as_bytes()) {
        Ok(mut c) => {
            c.request_id = request_id.or(c.request_id);
            ItemResult::Succeeded(c)
        }
        Err(e) => ItemResult::Errored(ProviderError {
            request_id: request_id.or(e.request_id.clone()),
            ..e
        }),
    };
    Ok((custom_id, result))
}

/// A 2xx JSON answer, or the classified error.
fn answer_json(status: u16, headers: &HeaderMap, bytes: &[u8]) -> Result<Value, ProviderError> {
    if !(200..300).contains(&status) {
        return Err(error_answer(status, headers, bytes));
    }
    serde_json::from_slice(bytes).map_err(|e| malformed(format!("not JSON: {e}")))
}

fn error_answer(status: u16, headers: &HeaderMap, bytes: &[u8]) -> ProviderError {
    match from_wire(status, headers, bytes) {
        Err(e) => e,
        // Unreachable for a non-2xx status; kept total rather than panicking.
        Ok(_) => item_error(
            classify_status(status),
            &format!("http_{status}"),
            "unexpected answer",
            Some(status),
            None,
        ),
    }
}

fn string_field(v: &Value, key: &str) -> Result<String, ProviderError> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| malformed(format!("no `{key}` in the answer")))
}

fn malformed(message: String) -> ProviderError {
    ProviderError::new(ErrorClass::Retryable, "malformed_response", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, model: &str) -> BatchItem {
        BatchItem {
            custom_id: id.into(),
            model: model.into(),
            request: json!({"model": "summarize", "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}),
        }
    }

    #[test]
    fn a_tagged_batch_is_found_in_a_list_page() {
        let page = json!({"object": "list", "data": [
            {"id": "batch_b", "input_file_id": "file_b", "metadata": {"sluice_batch_id": "pb_2"}},
            {"id": "batch_n", "input_file_id": "file_n", "metadata": null},
            {"id": "batch_a", "input_file_id": "file_a", "metadata": {"sluice_batch_id": "pb_1"}}
        ]});
        let found = find_tagged(&page, "pb_1").unwrap();
        assert_eq!(found.provider_batch_id, "batch_a");
        assert_eq!(found.input_file_id.as_deref(), Some("file_a"));
        assert!(find_tagged(&page, "pb_3").is_none());
        assert!(find_tagged(&json!({"error": {}}), "pb_1").is_none());
    }

    #[test]
    fn input_lines_carry_the_custom_id_and_the_wire_body() {
        let jsonl =
            input_jsonl(&[item("job_a", "gpt-4o-mini"), item("job_b", "gpt-4o-mini")]).unwrap();
        let lines: Vec<Value> = jsonl
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(jsonl.ends_with('\n'));
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            json!({"custom_id": "job_a", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}})
        );
    }

    #[test]
    fn empty_and_mixed_model_batches_are_refused() {
        assert_eq!(input_jsonl(&[]).unwrap_err().code, "empty_batch");
        let e = input_jsonl(&[item("a", "gpt-4o-mini"), item("b", "gpt-4.1")]).unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Fatal, "mixed_models")
        );
    }

    #[test]
    fn batch_statuses_map_to_neutral_states_with_counts_and_files() {
        for (status, state) in [
            ("validating", BatchState::InProgress),
            ("in_progress", BatchState::InProgress),
            ("finalizing", BatchState::InProgress),
            ("completed", BatchState::Completed),
            ("failed", BatchState::Failed),
            ("expired", BatchState::Expired),
            ("cancelling", BatchState::Cancelling),
            ("cancelled", BatchState::Cancelled),
        ] {
            let b = json!({"id": "batch_1", "object": "batch", "status": status,
                "output_file_id": "file-out", "error_file_id": null,
                "request_counts": {"total": 10, "completed": 6, "failed": 2}});
            let (poll, out, err) = poll_from_json(&b).unwrap();
            assert_eq!(poll.state, state);
            assert_eq!((poll.total, poll.done, poll.failed), (10, 8, 2));
            assert_eq!((out.as_deref(), err), (Some("file-out"), None));
        }
        let failed = json!({"status": "failed", "errors": {"object": "list", "data": [
            {"code": "invalid_json_line", "message": "Line 3 is not JSON", "line": 3}]}});
        let (poll, _, _) = poll_from_json(&failed).unwrap();
        assert_eq!(poll.message.as_deref(), Some("Line 3 is not JSON"));
        assert!(poll_from_json(&json!({"status": "melting"})).is_err());
    }

    #[test]
    fn result_lines_become_item_results() {
        let ok = json!({"id": "batch_req_1", "custom_id": "job_a", "error": null, "response": {
            "status_code": 200, "request_id": "req_1", "body": {"id": "chatcmpl-1",
            "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
            "content": "hi", "refusal": null}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}}});
        let (id, r) = parse_result_line(&ok.to_string()).unwrap();
        let ItemResult::Succeeded(c) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (id.as_str(), c.request_id.as_deref()),
            ("job_a", Some("req_1"))
        );
        assert_eq!((c.usage.input_tokens, c.usage.output_tokens), (5, 2));

        let failed = json!({"id": "batch_req_2", "custom_id": "job_b", "error": null, "response": {
            "status_code": 400, "request_id": "req_2", "body": {"error": {"message": "bad",
            "type": "invalid_request_error", "param": null, "code": null}}}});
        let (_, r) = parse_result_line(&failed.to_string()).unwrap();
        let ItemResult::Errored(e) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (e.class, e.http_status, e.message.as_str()),
            (ErrorClass::Fatal, Some(400), "bad")
        );
        assert_eq!(e.request_id.as_deref(), Some("req_2"));

        for (code, want) in [
            ("batch_expired", "Expired"),
            ("batch_cancelled", "Cancelled"),
            ("other", "Errored"),
        ] {
            let line = json!({"id": "batch_req_3", "custom_id": "job_c", "response": null,
                "error": {"code": code, "message": "m"}});
            let (_, r) = parse_result_line(&line.to_string()).unwrap();
            assert!(format!("{r:?}").starts_with(want), "{code}: {r:?}");
        }
    }

    #[test]
    fn unreadable_lines_are_skipped_and_the_rest_kept() {
        let good = json!({"custom_id": "job_c", "response": null,
            "error": {"code": "batch_expired", "message": "m"}});
        let jsonl = format!("{{oops\n\n{good}\n{{\"custom_id\": \"x\"}}\n");
        let results = parse_results(&jsonl);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].0, "job_c");
    }
}
