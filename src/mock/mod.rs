//! The mock provider: answers `POST /v1/chat/completions` in OpenAI's exact response format
//! with deterministic replies and realistic `usage`, with dials for latency and error rate, and
//! counts what it served so tests can check sluice's behaviour against it.
//!
//! Per-request behaviour can be forced from the prompt, so one mock serves every test:
//! - `[[mock:status=503]]` answers with that HTTP status on every call (429 carries
//!   `retry-after: 1`): a permanent failure, unlike the error-rate dial's transient ones;
//! - `[[mock:fail-first=2]]` fails the first 2 calls for the same job (`x-sluice-job-id`) with 500;
//! - `[[mock:refuse]]` answers with a safety refusal;
//! - `[[mock:malformed]]` answers 200 with a body that is not JSON;
//! - `[[mock:sleep=300ms]]` adds latency to this request;
//! - `[[mock:json={"a":1}]]` makes the answer's content that literal JSON text;
//! - `[[mock:json-first-bad]]` makes the first call for a job answer text that is not JSON, and
//!   later calls answer the `json=` literal (or `{"ok": true}`), to exercise schema repairs;
//! - `[[mock:nul]]` puts a NUL character (U+0000) in the answer's content;
//! - `[[mock:retry-after=1e20]]` sends that `retry-after` header value with the answer (use
//!   with `status=429` or `status=503`);
//! - `[[mock:ratelimit-reset=1e400s]]` answers 200 saying the token limit is spent
//!   (`x-ratelimit-remaining-tokens: 0`) and refills after that `x-ratelimit-reset-tokens`;
//! - `[[mock:redirect]]` answers `307` pointing at the mock's `/mock/redirected`, which counts
//!   the requests that followed it (`MockStats::redirects_followed`).
//!
//! It also speaks Anthropic Messages ([`anthropic`]) and both providers' batch APIs
//! ([`openai_batch`], [`anthropic`]), whose items are answered by the same deterministic logic.

pub mod anthropic;
mod batches;
pub mod limits;
pub mod openai_batch;
pub mod requests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

/// The mock's dials.
#[derive(Debug, Clone, Default)]
pub struct MockSettings {
    /// Added to every answer.
    pub latency: Duration,
    /// Fraction of calls answered with a 500: rolled per (request body, call number for the
    /// job, seed), so a retry of a failed request may succeed, and a run is reproducible.
    pub error_rate: f64,
    /// Seed of the error-rate roll.
    pub seed: u64,
    /// Reported prompt tokens are sluice's own estimate times this factor (`None`: 1.0), to
    /// play a provider that counts more (or fewer) tokens than sluice estimates.
    pub usage_skew: Option<f64>,
    /// How long a batch takes from creation until its last item is done (items finish evenly).
    pub batch_delay: Duration,
    /// Every batch expires halfway through `batch_delay`: finished items keep their results,
    /// the rest come back expired.
    pub batch_expire: bool,
    /// Tokens per minute per model (prompt + `max_tokens` to admit, actual usage once done).
    pub tpm: Option<u64>,
    /// Requests per minute per model.
    pub rpm: Option<u64>,
}

/// What the mock has served.
#[derive(Debug, Default, Clone, Serialize)]
pub struct MockStats {
    pub requests: u64,
    pub by_status: HashMap<u16, u64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Calls per `x-sluice-job-id`; batch items count under their `custom_id`.
    pub calls_by_job: HashMap<String, u64>,
    /// Batch items answered (succeeded or errored; expired and cancelled items are not served).
    pub batch_items: u64,
    /// Batches created, both providers.
    pub batches_created: u64,
    /// Real-time tokens and requests served per Unix second (after settling to actual usage).
    pub per_second: std::collections::BTreeMap<i64, limits::Served>,
    /// Requests refused with a 429 by the mock's own rate limits.
    pub rate_limited: u64,
    /// Requests that followed a `[[mock:redirect]]` answer to `/mock/redirected`.
    pub redirects_followed: u64,
}

#[derive(Debug, Default)]
struct Shared {
    settings: MockSettings,
    stats: Mutex<MockStats>,
    /// Files and batches of both providers.
    batches: Mutex<batches::Store>,
    /// The mock's own TPM/RPM limits and its per-second log.
    limiter: Mutex<limits::Limiter>,
    /// Every request body received (`GET /mock/requests`).
    requests: requests::Log,
}

/// A running mock provider.
#[derive(Debug, Clone)]
pub struct MockHandle {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl MockHandle {
    /// The base URL to configure a provider with (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A copy of the counters.
    pub fn stats(&self) -> MockStats {
        self.shared.snapshot()
    }

    /// Forgets every batch of both providers, as if deleted: polls of them answer 404.
    pub fn forget_batches(&self) {
        let mut store = batches::lock(&self.shared.batches);
        store.openai.clear();
        store.anthropic.clear();
    }

    /// Every request the mock received, oldest first (what `GET /mock/requests` serves).
    pub fn requests(&self) -> Vec<requests::Received> {
        self.shared.requests.all()
    }
}

/// Starts the mock on `addr` (port 0 picks one) and serves until the runtime stops.
pub async fn start(addr: SocketAddr, settings: MockSettings) -> std::io::Result<MockHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let limiter = limits::Limiter::new(limits::Limits {
        tpm: settings.tpm,
        rpm: settings.rpm,
    });
    let shared = Arc::new(Shared {
        settings,
        stats: Mutex::default(),
        batches: Mutex::default(),
        limiter: Mutex::new(limiter),
        requests: requests::Log::default(),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/mock/stats", get(stats))
        .route("/mock/redirected", post(redirected))
        .route("/mock/requests", get(requests::list))
        .merge(openai_batch::routes())
        .merge(anthropic::routes())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            requests::record,
        ))
        .with_state(shared.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "mock provider stopped");
        }
    });
    Ok(MockHandle { addr, shared })
}

async fn redirected(State(shared): State<Arc<Shared>>) -> Response {
    if let Ok(mut s) = shared.stats.lock() {
        s.redirects_followed += 1;
    }
    openai_error(
        StatusCode::GONE,
        "mock: this request followed a redirect",
        "mock_error",
    )
}

async fn stats(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    axum::Json(shared.snapshot())
}

impl Shared {
    /// The counters, with the rate limiter's per-second log.
    fn snapshot(&self) -> MockStats {
        let mut s = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        if let Ok(l) = self.limiter.lock() {
            s.per_second = l.log.clone();
            s.rate_limited = l.refused;
        }
        s
    }
}

fn marker<'a>(prompt: &'a str, name: &str) -> Option<&'a str> {
    let start = prompt.find(&format!("[[mock:{name}"))? + 7 + name.len();
    let rest = &prompt[start..];
    let end = rest.find("]]")?;
    Some(rest[..end].trim_start_matches('='))
}

fn openai_error(status: StatusCode, message: &str, kind: &str) -> Response {
    let mut resp = (
        status,
        axum::Json(
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
        ),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    resp
}

async fn chat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let job = headers
        .get("x-sluice-job-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let calls = {
        let mut s = match shared.stats.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        s.requests += 1;
        let c = s.calls_by_job.entry(job.clone()).or_default();
        *c += 1;
        *c
    };
    let limited = shared.settings.tpm.is_some() || shared.settings.rpm.is_some();
    let admission = if limited {
        admit(&shared, &body)
    } else {
        Ok(None)
    };
    let mut resp = match admission {
        Err(refused) => refused,
        Ok(reservation) => {
            let mut resp = answer(&shared.settings, &body, calls).await;
            if let Some((model, at, reserved)) = reservation {
                let actual = resp.extensions().get::<ServedTokens>().map_or(0, |t| t.0);
                let mut limiter = shared.limiter.lock().unwrap_or_else(|p| p.into_inner());
                limiter.settle(&model, at, reserved, actual);
                for (k, v) in limiter.headers(&model, chrono::Utc::now().timestamp()) {
                    if let Ok(v) = v.parse() {
                        resp.headers_mut().insert(k, v);
                    }
                }
            }
            resp
        }
    };
    if resp.extensions_mut().remove::<RedirectPending>().is_some() {
        let host = headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1");
        if let Ok(v) = format!("http://{host}/mock/redirected").parse() {
            resp.headers_mut().insert("location", v);
        }
    }
    if let Some(v) = retry_after_marker(&body) {
        resp.headers_mut().insert("retry-after", v);
    }
    if let Ok(mut s) = shared.stats.lock() {
        *s.by_status.entry(resp.status().as_u16()).or_default() += 1;
    }
    resp.extensions_mut().remove::<ServedTokens>();
    resp
}

/// The value of a `[[mock:retry-after=…]]` marker in the request's prompt, as a header.
fn retry_after_marker(body: &[u8]) -> Option<axum::http::HeaderValue> {
    let req = serde_json::from_slice::<Value>(body).ok()?;
    let prompt = prompt_text(req.get("messages")?.as_array()?);
    marker(&prompt, "retry-after")?.parse().ok()
}

/// Tokens an answer used (prompt + completion), for the rate limiter's settlement.
#[derive(Debug, Clone, Copy)]
struct ServedTokens(u64);

/// Admits a request against the mock's own TPM/RPM limits: `Ok(Some((model, second,
/// reserved)))` to settle later, or the 429 to send.
#[allow(clippy::result_large_err)]
fn admit(shared: &Shared, body: &[u8]) -> Result<Option<(String, i64, u64)>, Response> {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_string();
    let max_tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(4096);
    let reserved =
        crate::domain::tokens::estimate_prompt_tokens(&model, &req).max(0) as u64 + max_tokens;
    let now = chrono::Utc::now().timestamp();
    let mut limiter = shared.limiter.lock().unwrap_or_else(|p| p.into_inner());
    match limiter.admit(&model, now, reserved) {
        Ok(_) => Ok(Some((model, now, reserved))),
        Err(refused) => {
            let mut resp = openai_error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Rate limit reached for {model}: limit {:?} tokens per min. Please try again in {}s.",
                    refused.remaining.limit_tokens, refused.retry_after_secs
                ),
                "tokens",
            );
            let h = resp.headers_mut();
            if let Ok(v) = refused.retry_after_secs.to_string().parse() {
                h.insert("retry-after", v);
            }
            for (k, v) in limits::header_pairs(refused.remaining) {
                if let Ok(v) = v.parse() {
                    h.insert(k, v);
                }
            }
            Err(resp)
        }
    }
}

async fn answer(settings: &MockSettings, body: &[u8], calls: u64) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
        );
    };
    let Some(messages) = req
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "'messages' is a required property",
            "invalid_request_error",
        );
    };
    let prompt = prompt_text(messages);
    let latency = settings.latency + extra_latency(&prompt);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let digest = Sha256::digest(body);
    if let Some((status, message, kind)) = forced_error(settings, &prompt, calls, &digest) {
        return openai_error(status, message, kind);
    }
    if marker(&prompt, "redirect").is_some() {
        return redirect_answer();
    }
    if marker(&prompt, "malformed").is_some() {
        return (
            StatusCode::OK,
            "{\"id\": \"chatcmpl-broken\", \"choices\": [",
        )
            .into_response();
    }
    let model = req.get("model").and_then(Value::as_str).unwrap_or("mock");
    let max_tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(4096);
    // Prompt tokens as sluice estimates them (OpenAI's tokenizer for OpenAI models), so the
    // usage the mock reports is what a real provider would report for the same text.
    let estimate = crate::domain::tokens::estimate_prompt_tokens(model, &req).max(0) as u64;
    let prompt_tokens = skewed(estimate, settings.usage_skew);
    let mut reply = reply(prompt_tokens, max_tokens, &prompt, &digest);
    if let Some(text) = json_content(&prompt, calls) {
        reply.text = text;
    }
    if marker(&prompt, "nul").is_some() {
        reply.text.push_str(" with a NUL \u{0} inside");
    }
    let mut resp = (StatusCode::OK, axum::Json(chat_completion(model, &reply))).into_response();
    resp.extensions_mut()
        .insert(ServedTokens(prompt_tokens + reply.completion_tokens));
    if let Some(reset) = marker(&prompt, "ratelimit-reset")
        && let Ok(v) = axum::http::HeaderValue::from_str(reset)
    {
        let h = resp.headers_mut();
        h.insert(
            "x-ratelimit-remaining-tokens",
            axum::http::HeaderValue::from_static("0"),
        );
        h.insert("x-ratelimit-reset-tokens", v);
    }
    resp.headers_mut().insert(
        "x-request-id",
        format!("req_{}", reply.request_hex)
            .parse()
            .unwrap_or_else(|_| axum::http::HeaderValue::from_static("req")),
    );
    resp
}

/// Prompt tokens as a provider that counts `skew` times sluice's estimate would report them.
fn skewed(estimate: u64, skew: Option<f64>) -> u64 {
    match skew {
        Some(f) if f.is_finite() && f >= 0.0 => (estimate as f64 * f).ceil() as u64,
        _ => estimate,
    }
}

/// A `307` to the mock's own `/mock/redirected` (on the host the request was sent to).
fn redirect_answer() -> Response {
    let mut resp = (StatusCode::TEMPORARY_REDIRECT, "").into_response();
    resp.extensions_mut().insert(RedirectPending);
    resp
}

/// Marks a redirect answer whose `location` the handler fills in from the `host` header.
#[derive(Debug, Clone, Copy)]
struct RedirectPending;

/// Every message's text, one per line: where markers are looked for and replies come from.
fn prompt_text(messages: &[Value]) -> String {
    messages
        .iter()
        .map(content_text)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The content a `[[mock:json=…]]` or `[[mock:json-first-bad]]` marker forces, if any.
fn json_content(prompt: &str, calls: u64) -> Option<String> {
    let literal = marker(prompt, "json=").map(str::to_owned);
    if marker(prompt, "json-first-bad").is_some() {
        return Some(if calls <= 1 {
            "Sure! Here is the JSON you asked for: {\"a\":".into()
        } else {
            literal.unwrap_or_else(|| "{\"ok\": true}".into())
        });
    }
    literal
}

/// Latency a `[[mock:sleep=…]]` marker adds.
fn extra_latency(prompt: &str) -> Duration {
    marker(prompt, "sleep")
        .and_then(|d| humantime::parse_duration(d).ok())
        .unwrap_or_default()
}

/// The failure the prompt or the error-rate dial forces, if any: `(status, message, type)`.
/// `digest` is a hash of the request; the error-rate roll is per (request, call).
fn forced_error(
    settings: &MockSettings,
    prompt: &str,
    calls: u64,
    digest: &[u8],
) -> Option<(StatusCode, &'static str, &'static str)> {
    if let Some(code) = marker(prompt, "status").and_then(|s| s.parse::<u16>().ok()) {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Some((status, "mock: forced status", "mock_error"));
    }
    if let Some(n) = marker(prompt, "fail-first").and_then(|s| s.parse::<u64>().ok())
        && calls <= n
    {
        return Some((
            StatusCode::INTERNAL_SERVER_ERROR,
            "mock: transient failure",
            "server_error",
        ));
    }
    (roll(settings.seed, digest, calls) < settings.error_rate).then_some((
        StatusCode::INTERNAL_SERVER_ERROR,
        "The server had an error while processing your request.",
        "server_error",
    ))
}

/// The error-rate roll in `[0, 1)` of call number `calls` of the request hashed as `digest`:
/// deterministic for a seed, independent from one call to the next.
fn roll(seed: u64, digest: &[u8], calls: u64) -> f64 {
    let mut h = Sha256::new();
    h.update(seed.to_be_bytes());
    h.update(digest);
    h.update(calls.to_be_bytes());
    let d = h.finalize();
    let n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    f64::from(n) / (f64::from(u32::MAX) + 1.0)
}

/// The deterministic part of a successful answer, shared by every wire format the mock speaks.
#[derive(Debug, Clone)]
struct Reply {
    text: String,
    refused: bool,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// `max_tokens` cut the answer short.
    truncated: bool,
    /// Hex for the answer's id and request id, from the request's digest.
    id_hex: String,
    request_hex: String,
}

fn reply(prompt_tokens: u64, max_tokens: u64, prompt: &str, digest: &[u8]) -> Reply {
    let wanted = 16 + u64::from(digest[2]) % 120;
    let completion_tokens = wanted.min(max_tokens.max(1));
    let words: Vec<&str> = prompt
        .split_whitespace()
        .filter(|w| !w.starts_with("[["))
        .take(completion_tokens.min(24) as usize)
        .collect();
    Reply {
        text: format!("Summary: {}", words.join(" ")),
        refused: marker(prompt, "refuse").is_some(),
        prompt_tokens,
        completion_tokens,
        truncated: completion_tokens < wanted,
        id_hex: hex::encode(&digest[..12]),
        request_hex: hex::encode(&digest[12..24]),
    }
}

/// A `chat.completion` body for `reply`.
fn chat_completion(model: &str, reply: &Reply) -> Value {
    let finish = if reply.truncated { "length" } else { "stop" };
    let message = if reply.refused {
        json!({"role": "assistant", "content": null, "refusal": "I can't help with that request.", "annotations": []})
    } else {
        json!({"role": "assistant", "content": reply.text, "refusal": null, "annotations": []})
    };
    let (prompt_tokens, completion_tokens) = (reply.prompt_tokens, reply.completion_tokens);
    json!({
        "id": format!("chatcmpl-{}", reply.id_hex),
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_sluice_mock"
    })
}

fn content_text(m: &Value) -> String {
    match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// About 4 characters a token plus OpenAI's per-message overhead: close to what tokenizers give
/// for English text, and deterministic.
pub fn estimate_tokens(messages: &[Value]) -> u64 {
    3 + messages
        .iter()
        .map(|m| 4 + (content_text(m).chars().count() as u64).div_ceil(4))
        .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_read_from_prompts() {
        assert_eq!(marker("x [[mock:status=503]] y", "status"), Some("503"));
        assert_eq!(marker("[[mock:refuse]]", "refuse"), Some(""));
        assert_eq!(marker("plain", "refuse"), None);
    }

    #[test]
    fn json_markers_force_the_answers_content() {
        let cases = [
            ("plain", 1, None),
            ("x [[mock:json={\"a\":1}]]", 1, Some("{\"a\":1}")),
            ("x [[mock:json={\"a\":[1]}]] y", 3, Some("{\"a\":[1]}")),
            ("[[mock:json-first-bad]]", 2, Some("{\"ok\": true}")),
            (
                "[[mock:json-first-bad]] [[mock:json={\"a\":2}]]",
                2,
                Some("{\"a\":2}"),
            ),
        ];
        for (prompt, calls, expected) in cases {
            assert_eq!(json_content(prompt, calls).as_deref(), expected, "{prompt}");
        }
        let first = json_content("[[mock:json-first-bad]]", 1).unwrap_or_default();
        assert!(
            serde_json::from_str::<Value>(&first).is_err(),
            "the first answer is not JSON"
        );
    }

    #[test]
    fn the_error_roll_is_per_call_deterministic_and_near_the_rate() {
        let digest = Sha256::digest(b"a request");
        assert_eq!(
            roll(7, &digest, 1),
            roll(7, &digest, 1),
            "same seed, same call: same roll"
        );
        assert_ne!(
            roll(7, &digest, 1),
            roll(7, &digest, 2),
            "another call rolls again"
        );
        assert_ne!(
            roll(7, &digest, 1),
            roll(8, &digest, 1),
            "another seed rolls again"
        );
        let settings = MockSettings {
            error_rate: 0.05,
            ..Default::default()
        };
        let (mut failed, mut recovered) = (0, 0);
        for i in 0..4000u32 {
            let digest = Sha256::digest(i.to_be_bytes());
            let fails = |call| forced_error(&settings, "plain", call, &digest).is_some();
            if fails(1) {
                failed += 1;
                if !fails(2) {
                    recovered += 1;
                }
            }
        }
        assert!(
            (140..=260).contains(&failed),
            "{failed} of 4000 first calls failed at 5%"
        );
        assert!(
            recovered * 10 >= failed * 9,
            "most failed requests succeed on retry: {recovered}/{failed}"
        );
        assert!(
            forced_error(&settings, "[[mock:status=503]]", 9, &digest).is_some(),
            "the marker always fails"
        );
    }

    #[test]
    fn usage_skew_scales_the_reported_prompt_tokens() {
        assert_eq!(skewed(100, None), 100);
        assert_eq!(skewed(100, Some(1.3)), 130);
        assert_eq!(skewed(10, Some(f64::NAN)), 10);
    }

    #[test]
    fn token_estimates_grow_with_text() {
        let short = estimate_tokens(&[json!({"role": "user", "content": "hi"})]);
        let long = estimate_tokens(&[json!({"role": "user", "content": "hi ".repeat(100)})]);
        assert!(short < long && short >= 8);
    }
}
