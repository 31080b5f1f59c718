//! OpenAI's Batch API, mocked: `POST|GET /v1/batches`, `GET /v1/batches/{id}`,
//! `POST /v1/batches/{id}/cancel`, with OpenAI's batch object, status values and output/error
//! line formats; the Files API it reads from and writes to lives in [`files`]. Items are
//! answered like `POST /v1/chat/completions` (same markers), plus `[[mock:batch-item-error]]`
//! (or `=STATUS`), `[[mock:batch-expire]]`, `[[mock:batch-nul]]` (a NUL in the answer) and
//! `[[mock:upload-sleep=3s]]` (a slow file upload). Timing comes from the `batch_delay` and
//! `batch_expire` dials (see `batches`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::batches::{Item, Outcome, Phase, Run, lock};
use super::{
    Shared, chat_completion, estimate_tokens, forced_error, marker, openai_error, prompt_text,
    reply,
};

pub(super) mod files;

use files::MockFile;

const DAY: i64 = 24 * 3600;

/// One batch: its run (absent when validation failed) and the files it produced.
#[derive(Debug, Clone)]
pub(super) struct OpenAiBatch {
    id: String,
    input_file_id: String,
    completion_window: String,
    metadata: Value,
    created_at: i64,
    run: Option<Run>,
    errors: Vec<Value>,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .merge(files::routes())
        .route("/v1/batches", post(create).get(list))
        .route("/v1/batches/{id}", get(retrieve))
        .route("/v1/batches/{id}/cancel", post(cancel))
}

fn not_found(what: &str, id: &str) -> Response {
    openai_error(
        StatusCode::NOT_FOUND,
        &format!("No such {what}: '{id}'"),
        "invalid_request_error",
    )
}

fn bad_request(message: &str) -> Response {
    openai_error(StatusCode::BAD_REQUEST, message, "invalid_request_error")
}

async fn create(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("We could not parse the JSON body of your request.");
    };
    let s = |k: &str| req.get(k).and_then(Value::as_str).unwrap_or_default();
    if s("endpoint") != "/v1/chat/completions" {
        return bad_request("This mock batches only '/v1/chat/completions'.");
    }
    if humantime::parse_duration(s("completion_window")).is_err() {
        return bad_request("Invalid 'completion_window': expected a duration such as '24h'.");
    }
    let mut store = lock(&shared.batches);
    let Some(input) = store.files.get(s("input_file_id")) else {
        return not_found("file", s("input_file_id"));
    };
    let (items, errors) = read_input(&input.content);
    let now = chrono::Utc::now().timestamp();
    let batch = OpenAiBatch {
        id: crate::ids::new_id("batch"),
        input_file_id: input.id.clone(),
        completion_window: s("completion_window").into(),
        metadata: req.get("metadata").cloned().unwrap_or(Value::Null),
        created_at: now,
        run: errors.is_empty().then(|| {
            Run::new(
                items,
                shared.settings.batch_delay,
                shared.settings.batch_expire,
            )
        }),
        errors,
        output_file_id: None,
        error_file_id: None,
    };
    let out = batch_json(&batch);
    store.openai.insert(batch.id.clone(), batch);
    drop(store);
    lock(&shared.stats).batches_created += 1;
    axum::Json(out).into_response()
}

async fn retrieve(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut store = lock(&shared.batches);
    if !store.openai.contains_key(&id) {
        return not_found("batch", &id);
    }
    advance(&shared, &mut store, &id);
    axum::Json(store.openai.get(&id).map(batch_json)).into_response()
}

async fn list(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let mut store = lock(&shared.batches);
    let ids: Vec<String> = store
        .openai
        .keys()
        .rev()
        .filter(|id| q.get("after").is_none_or(|a| id.as_str() < a.as_str()))
        .cloned()
        .collect();
    for id in ids.iter().take(limit) {
        advance(&shared, &mut store, id);
    }
    let data: Vec<Value> = ids
        .iter()
        .take(limit)
        .filter_map(|id| store.openai.get(id).map(batch_json))
        .collect();
    let first = data.first().map(|b| b["id"].clone());
    let last = data.last().map(|b| b["id"].clone());
    axum::Json(
        json!({"object": "list", "data": data, "first_id": first, "last_id": last,
        "has_more": ids.len() > limit}),
    )
    .into_response()
}

async fn cancel(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut store = lock(&shared.batches);
    advance(&shared, &mut store, &id);
    let Some(batch) = store.openai.get_mut(&id) else {
        return not_found("batch", &id);
    };
    let accepted = batch.run.as_mut().is_some_and(Run::cancel);
    if !accepted {
        let status = batch_json(batch)["status"].clone();
        return bad_request(&format!("Cannot cancel a batch with status {status}."));
    }
    axum::Json(batch_json(batch)).into_response()
}

/// The batch object, as `GET /v1/batches/{id}` returns it.
fn batch_json(b: &OpenAiBatch) -> Value {
    let (phase, counts, ended) = match &b.run {
        None => (None, (0, 0, 0), b.created_at),
        Some(r) => {
            let (mut ok, mut failed) = (0, 0);
            for (_, o) in r.finished() {
                match o {
                    Outcome::Answer { status: 200, .. } => ok += 1,
                    _ => failed += 1,
                }
            }
            (Some(r.phase()), (r.items.len(), ok, failed), r.ended_unix())
        }
    };
    let status = match phase {
        None => "failed",
        Some(Phase::Running) => "in_progress",
        Some(Phase::Cancelling) => "cancelling",
        Some(Phase::Completed) => "completed",
        Some(Phase::Expired) => "expired",
        Some(Phase::Cancelled) => "cancelled",
    };
    let at = |when: bool, t: i64| if when { json!(t) } else { Value::Null };
    let cancel_asked = b.run.as_ref().and_then(Run::cancel_requested_unix);
    let errors = (!b.errors.is_empty()).then(|| json!({"object": "list", "data": b.errors}));
    json!({
        "id": b.id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": errors,
        "input_file_id": b.input_file_id, "completion_window": b.completion_window,
        "status": status, "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
        "created_at": b.created_at, "in_progress_at": at(phase.is_some(), b.created_at),
        "expires_at": b.created_at + DAY,
        "finalizing_at": at(status == "completed", ended), "completed_at": at(status == "completed", ended),
        "failed_at": at(status == "failed", b.created_at), "expired_at": at(status == "expired", ended),
        "cancelling_at": cancel_asked, "cancelled_at": at(status == "cancelled", ended),
        "request_counts": {"total": counts.0, "completed": counts.1, "failed": counts.2},
        "metadata": b.metadata,
    })
}

/// Serves due items and, once the batch has ended, writes its output and error files.
fn advance(shared: &Shared, store: &mut super::batches::Store, id: &str) {
    let Some(batch) = store.openai.get_mut(id) else {
        return;
    };
    let Some(run) = batch.run.as_mut() else {
        return;
    };
    run.advance(|item| serve(shared, item));
    let ended = matches!(
        run.phase(),
        Phase::Completed | Phase::Expired | Phase::Cancelled
    );
    if !ended || batch.output_file_id.is_some() || batch.error_file_id.is_some() {
        return;
    }
    let (mut output, mut errors) = (String::new(), String::new());
    for (item, outcome) in run.finished() {
        let (line, ok) = output_line(&item.custom_id, outcome);
        let file = if ok { &mut output } else { &mut errors };
        file.push_str(&line.to_string());
        file.push('\n');
    }
    for (content, slot, kind) in [
        (output, &mut batch.output_file_id, "output"),
        (errors, &mut batch.error_file_id, "error"),
    ] {
        if !content.is_empty() {
            let f = MockFile::new(
                &format!("{id}_{kind}.jsonl"),
                "batch_output",
                content.into_bytes(),
            );
            *slot = Some(f.id.clone());
            store.files.insert(f.id.clone(), f);
        }
    }
}

/// One output-file line (`ok`) or error-file line for an item's outcome.
fn output_line(custom_id: &str, outcome: &Outcome) -> (Value, bool) {
    let id = format!("batch_req_{}", uuid::Uuid::now_v7().simple());
    let error = |code: &str, message: &str| {
        json!({"id": id, "custom_id": custom_id, "response": null,
            "error": {"code": code, "message": message}})
    };
    match outcome {
        Outcome::Answer {
            status,
            body,
            request_id,
        } => (
            json!({"id": id, "custom_id": custom_id, "error": null,
                "response": {"status_code": status, "request_id": request_id, "body": body}}),
            *status == 200,
        ),
        Outcome::Expired => (
            error(
                "batch_expired",
                "This request could not be executed before the completion window expired.",
            ),
            false,
        ),
        Outcome::Cancelled => (
            error(
                "batch_cancelled",
                "This request was not executed because the batch was cancelled.",
            ),
            false,
        ),
    }
}

/// Answers one item as `POST /v1/chat/completions` would, without latency.
fn serve(shared: &Shared, item: &Item) -> Outcome {
    let messages = item
        .request
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let prompt = prompt_text(&messages);
    if marker(&prompt, "batch-expire").is_some() {
        return Outcome::Expired;
    }
    let calls = super::batches::count_item(shared, &item.custom_id);
    let digest = Sha256::digest(item.request.to_string().as_bytes());
    let request_id = format!("req_{}", hex::encode(&digest[12..24]));
    let error = |status: u16, message: &str, kind: &str| Outcome::Answer {
        status,
        body: json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
        request_id: request_id.clone(),
    };
    if let Some(s) = marker(&prompt, "batch-item-error") {
        return error(
            s.parse().unwrap_or(500),
            "mock: batch item error",
            "server_error",
        );
    }
    if messages.is_empty() {
        return error(
            400,
            "'messages' is a required property",
            "invalid_request_error",
        );
    }
    if let Some((status, message, kind)) = forced_error(&shared.settings, &prompt, calls, &digest) {
        return error(status.as_u16(), message, kind);
    }
    let max_tokens = item
        .request
        .get("max_completion_tokens")
        .or_else(|| item.request.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(4096);
    let model = item.request["model"].as_str().unwrap_or("mock");
    let r = reply(estimate_tokens(&messages), max_tokens, &prompt, &digest);
    super::batches::count_tokens(shared, r.prompt_tokens, r.completion_tokens);
    let mut body = chat_completion(model, &r);
    if marker(&prompt, "batch-nul").is_some() {
        // A NUL in the answer, which Postgres cannot store as is.
        body["choices"][0]["message"]["content"] = json!("before\u{0}after");
    }
    Outcome::Answer {
        status: 200,
        body,
        request_id,
    }
}

/// Reads an input file; any bad line fails the whole batch, as OpenAI's validation does.
fn read_input(content: &[u8]) -> (Vec<Item>, Vec<Value>) {
    let (mut items, mut errors) = (Vec::new(), Vec::new());
    let (mut seen, mut models) = (HashSet::new(), BTreeMap::new());
    let text = String::from_utf8_lossy(content);
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut fail = |code: &str, message: String| {
            errors.push(json!({"code": code, "message": message, "param": null, "line": n + 1}));
        };
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            fail(
                "invalid_json_line",
                format!("Line {} is not valid JSON.", n + 1),
            );
            continue;
        };
        let custom_id = v["custom_id"].as_str().unwrap_or_default();
        if custom_id.is_empty() || v["method"] != "POST" || !v["body"].is_object() {
            fail(
                "invalid_request",
                format!("Line {} needs custom_id, method POST and a body.", n + 1),
            );
        } else if v["url"] != "/v1/chat/completions" {
            fail(
                "mismatched_endpoint",
                format!("Line {} has url {}.", n + 1, v["url"]),
            );
        } else if !seen.insert(custom_id.to_string()) {
            fail(
                "duplicate_custom_id",
                format!("custom_id '{custom_id}' is repeated."),
            );
        } else {
            models.insert(v["body"]["model"].to_string(), n + 1);
            items.push(Item {
                custom_id: custom_id.into(),
                request: v["body"].clone(),
            });
        }
    }
    if models.len() > 1 {
        errors.push(
            json!({"code": "mismatched_model", "param": null, "line": null,
            "message": "All requests in a batch must use the same model."}),
        );
    }
    if items.is_empty() && errors.is_empty() {
        errors.push(json!({"code": "empty_file", "param": null, "line": null,
            "message": "The input file has no requests."}));
    }
    (items, errors)
}
