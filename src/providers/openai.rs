//! OpenAI chat completions, and every server that speaks them (vLLM, Ollama, DeepSeek, Mistral,
//! Qwen, Kimi, GLM, Gemini's OpenAI endpoint). `to_wire`/`from_wire` are pure; `complete` does I/O.

use std::time::Duration;

use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::{Completion, ProviderError};
use crate::domain::pricing::Usage;
use crate::domain::retry::{ErrorClass, classify_status};

/// A client for one OpenAI-compatible base URL.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    url: String,
    key: Option<SecretString>,
    timeout: Duration,
}

impl OpenAiClient {
    /// `base_url` ends before `/chat/completions` (for OpenAI: `https://api.openai.com/v1`).
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        key: Option<SecretString>,
        timeout: Duration,
    ) -> Self {
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        Self {
            http,
            url,
            key,
            timeout,
        }
    }

    /// The shared HTTP client (for the batch verbs in `openai_batch`).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The base URL the client was built with, without a trailing slash.
    pub(crate) fn base_url(&self) -> &str {
        self.url.trim_end_matches("/chat/completions")
    }

    /// The API key, if one is configured.
    pub(crate) fn key(&self) -> Option<&SecretString> {
        self.key.as_ref()
    }

    /// The per-call timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one chat completion.
    #[tracing::instrument(skip_all, fields(job_id = job_id, model = model))]
    pub async fn complete(
        &self,
        model: &str,
        request: &Value,
        job_id: &str,
    ) -> Result<Completion, ProviderError> {
        let mut req = self
            .http
            .post(&self.url)
            .timeout(self.timeout)
            .header("x-sluice-job-id", job_id)
            .json(&to_wire(model, request));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k.expose_secret());
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(transport_error)?;
        from_wire(status, &headers, &bytes)
    }
}

/// The request body sent upstream: the job's request with the deployment's model.
pub fn to_wire(model: &str, request: &Value) -> Value {
    let mut body = request.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("model".into(), Value::String(model.to_string()));
        obj.remove("stream");
    }
    body
}

/// Interprets an upstream answer.
pub fn from_wire(
    status: u16,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Completion, ProviderError> {
    let request_id = header_str(headers, "x-request-id");
    if let Some(e) = super::redirect_error(status, headers) {
        return Err(e);
    }
    if !(200..300).contains(&status) {
        let class = classify_status(status);
        let message = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
            });
        return Err(ProviderError {
            class,
            code: format!("http_{status}"),
            message,
            http_status: Some(status),
            retry_after: retry_after(headers),
            request_id,
        });
    }
    let body: Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("not JSON: {e}"), status))?;
    let choice = body
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| malformed("no choices in the answer".into(), status))?;
    let refusal = choice
        .pointer("/message/refusal")
        .is_some_and(|r| !r.is_null())
        || choice.get("finish_reason").and_then(Value::as_str) == Some("content_filter");
    let n = |p: &str| super::token_count(body.pointer(p));
    let usage = Usage {
        input_tokens: n("/usage/prompt_tokens"),
        output_tokens: n("/usage/completion_tokens"),
        cached_tokens: n("/usage/prompt_tokens_details/cached_tokens"),
    };
    let request_id =
        request_id.or_else(|| body.get("id").and_then(Value::as_str).map(str::to_owned));
    Ok(Completion {
        body,
        usage,
        request_id,
        refusal,
        exhausted_for: super::ratelimit::exhausted_for(headers, chrono::Utc::now()),
    })
}

fn malformed(message: String, status: u16) -> ProviderError {
    ProviderError {
        http_status: Some(status),
        ..ProviderError::new(ErrorClass::Retryable, "malformed_response", message)
    }
}

fn transport_error(e: reqwest::Error) -> ProviderError {
    let code = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection"
    } else {
        "transport"
    };
    // The URL is ours and carries no secret, but the error text is kept short and generic.
    ProviderError::new(ErrorClass::Retryable, code, e.without_url().to_string())
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `retry-after-ms` (OpenAI) first, then `retry-after` in seconds or as an HTTP date. Garbage
/// (not a number, negative, not finite) is ignored; anything past an hour is taken as an hour.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) =
        header_str(headers, "retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok())
    {
        return super::pause_secs(ms / 1000.0);
    }
    let value = header_str(headers, "retry-after")?;
    let value = value.trim();
    match value.parse::<f64>() {
        Ok(secs) => super::pause_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            let secs = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
            super::pause_secs(secs.num_milliseconds().max(0) as f64 / 1000.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_deployment_model_replaces_the_alias() {
        let w = to_wire(
            "gpt-4o-mini",
            &json!({"model": "summarize", "stream": true, "messages": []}),
        );
        assert_eq!(w["model"], "gpt-4o-mini");
        assert!(w.get("stream").is_none());
    }

    #[test]
    fn a_completion_yields_usage_and_request_id() {
        let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "ok", "refusal": null}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 4}}});
        let c = from_wire(
            200,
            &headers(&[("x-request-id", "req_9")]),
            body.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(
            c.usage,
            Usage {
                input_tokens: 12,
                output_tokens: 3,
                cached_tokens: 4
            }
        );
        assert_eq!(c.request_id.as_deref(), Some("req_9"));
        assert!(!c.refusal);
    }

    #[test]
    fn refusals_and_content_filters_are_results_marked_as_refusals() {
        let refused = json!({"choices": [{"message": {"role": "assistant", "content": null, "refusal": "no"}, "finish_reason": "stop"}]});
        assert!(
            from_wire(200, &HeaderMap::new(), refused.to_string().as_bytes())
                .unwrap()
                .refusal
        );
        let filtered = json!({"choices": [{"message": {"role": "assistant", "content": ""}, "finish_reason": "content_filter"}]});
        assert!(
            from_wire(200, &HeaderMap::new(), filtered.to_string().as_bytes())
                .unwrap()
                .refusal
        );
    }

    #[test]
    fn a_429_carries_its_retry_after() {
        let e = from_wire(
            429,
            &headers(&[("retry-after", "3")]),
            br#"{"error":{"message":"slow down"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(e.message, "slow down");
        let e = from_wire(
            429,
            &headers(&[("retry-after-ms", "250"), ("retry-after", "3")]),
            b"{}",
        )
        .unwrap_err();
        assert_eq!(e.retry_after, Some(Duration::from_millis(250)));
    }

    #[test]
    fn garbage_and_huge_retry_after_values_never_panic() {
        let hour = Some(Duration::from_secs(3600));
        type Headers<'a> = &'a [(&'static str, &'a str)];
        let cases: [(Headers, Option<Duration>); 9] = [
            (&[("retry-after", "1e20")], hour),
            (&[("retry-after", "inf")], None),
            (&[("retry-after", "NaN")], None),
            (&[("retry-after", "-5")], None),
            (&[("retry-after", "soon")], None),
            (&[("retry-after", "1e308")], hour),
            (&[("retry-after-ms", "1e300")], hour),
            (&[("retry-after-ms", "-1")], None),
            (
                &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")],
                Some(Duration::ZERO),
            ),
        ];
        for (h, expected) in cases {
            assert_eq!(retry_after(&headers(h)), expected, "{h:?}");
        }
    }

    #[test]
    fn malformed_answers_are_retryable_and_400s_are_fatal() {
        assert_eq!(
            from_wire(200, &HeaderMap::new(), b"{not json")
                .unwrap_err()
                .class,
            ErrorClass::Retryable
        );
        assert_eq!(
            from_wire(200, &HeaderMap::new(), b"{}").unwrap_err().code,
            "malformed_response"
        );
        assert_eq!(
            from_wire(400, &HeaderMap::new(), b"{}").unwrap_err().class,
            ErrorClass::Fatal
        );
        assert_eq!(
            from_wire(503, &HeaderMap::new(), b"").unwrap_err().class,
            ErrorClass::Retryable
        );
    }
}
