//! Anthropic Message Batches, mocked: `POST /v1/messages/batches`,
//! `GET /v1/messages/batches/{id}`, `GET /v1/messages/batches/{id}/results`,
//! `POST /v1/messages/batches/{id}/cancel`, with Anthropic's `message_batch` object and results
//! lines. Items are answered like `POST /v1/messages`, without latency.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{error, error_body, params_prompt, respond};
use crate::mock::Shared;
use crate::mock::batches::{Item, Outcome, Phase, Run, count_item, lock};
use crate::mock::marker;
use crate::providers::anthropic_batch::valid_custom_id;

/// Anthropic's batch body limit (256 MB, decimal) plus a little.
const MAX_BATCH_BODY: usize = 257_000_000;

/// One message batch.
#[derive(Debug, Clone)]
pub(in crate::mock) struct MsgBatch {
    id: String,
    run: Run,
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/v1/messages/batches",
            post(create_batch).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)),
        )
        .route("/v1/messages/batches/{id}", get(retrieve_batch))
        .route("/v1/messages/batches/{id}/results", get(results))
        .route("/v1/messages/batches/{id}/cancel", post(cancel_batch))
}

async fn create_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            400,
            "There was an issue with your request body: not valid JSON",
        );
    };
    let Some(requests) = req
        .get("requests")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
    else {
        return error(400, "requests: at least one request is required");
    };
    let mut seen = HashSet::new();
    let mut items = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let id = r
            .get("custom_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !valid_custom_id(id) {
            return error(
                400,
                &format!("requests.{i}.custom_id: must be 1-64 characters of [a-zA-Z0-9_-]"),
            );
        }
        if !seen.insert(id) {
            return error(
                400,
                &format!("requests.{i}.custom_id: `{id}` is not unique"),
            );
        }
        let Some(params) = r.get("params").filter(|p| p.is_object()) else {
            return error(400, &format!("requests.{i}.params: Field required"));
        };
        items.push(Item {
            custom_id: id.into(),
            request: params.clone(),
        });
    }
    let settings = &shared.settings;
    let batch = MsgBatch {
        id: format!("msgbatch_{}", uuid::Uuid::now_v7().simple()),
        run: Run::new(items, settings.batch_delay, settings.batch_expire),
    };
    let out = batch_json(&batch, &origin(&headers));
    lock(&shared.batches)
        .anthropic
        .insert(batch.id.clone(), batch);
    lock(&shared.stats).batches_created += 1;
    axum::Json(out).into_response()
}

/// `http://host` of the request, for `results_url`.
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn rfc3339(unix: i64) -> Value {
    DateTime::<Utc>::from_timestamp(unix, 0)
        .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// The `message_batch` object.
fn batch_json(b: &MsgBatch, origin: &str) -> Value {
    let phase = b.run.phase();
    let ended = matches!(phase, Phase::Completed | Phase::Expired | Phase::Cancelled);
    let status = match phase {
        Phase::Running => "in_progress",
        Phase::Cancelling => "canceling",
        _ => "ended",
    };
    let (mut ok, mut errored, mut canceled, mut expired) = (0, 0, 0, 0);
    for (_, o) in b.run.finished().filter(|_| ended) {
        match o {
            Outcome::Answer { status: 200, .. } => ok += 1,
            Outcome::Answer { .. } => errored += 1,
            Outcome::Cancelled => canceled += 1,
            Outcome::Expired => expired += 1,
        }
    }
    let processing = if ended { 0 } else { b.run.items.len() };
    json!({
        "id": b.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {"processing": processing, "succeeded": ok, "errored": errored,
            "canceled": canceled, "expired": expired},
        "created_at": rfc3339(b.run.created_unix),
        "expires_at": rfc3339(b.run.created_unix + 24 * 3600),
        "ended_at": if ended { rfc3339(b.run.ended_unix()) } else { Value::Null },
        "cancel_initiated_at": b.run.cancel_requested_unix().map_or(Value::Null, rfc3339),
        "archived_at": null,
        "results_url": ended.then(|| format!("{origin}/v1/messages/batches/{}/results", b.id)),
    })
}

/// Serves due items of batch `id`, then applies `f` to it; `None` when there is no such batch.
fn with_batch<T>(shared: &Shared, id: &str, f: impl FnOnce(&mut MsgBatch) -> T) -> Option<T> {
    let mut store = lock(&shared.batches);
    let batch = store.anthropic.get_mut(id)?;
    batch.run.advance(|item| serve(shared, item));
    Some(f(batch))
}

fn no_batch(id: &str) -> Response {
    error(404, &format!("Message batch {id} not found"))
}

async fn retrieve_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let origin = origin(&headers);
    match with_batch(&shared, &id, |b| batch_json(b, &origin)) {
        Some(v) => axum::Json(v).into_response(),
        None => no_batch(&id),
    }
}

async fn cancel_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let origin = origin(&headers);
    match with_batch(&shared, &id, |b| {
        b.run.cancel().then(|| batch_json(b, &origin))
    }) {
        Some(Some(v)) => axum::Json(v).into_response(),
        Some(None) => error(400, &format!("Message batch {id} has already ended")),
        None => no_batch(&id),
    }
}

async fn results(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let lines = with_batch(&shared, &id, |b| {
        let ended = matches!(
            b.run.phase(),
            Phase::Completed | Phase::Expired | Phase::Cancelled
        );
        ended.then(|| {
            b.run
                .finished()
                .map(|(item, o)| format!("{}\n", result_line(&item.custom_id, o)))
                .collect::<String>()
        })
    });
    match lines {
        Some(Some(jsonl)) => ([("content-type", "application/x-jsonl")], jsonl).into_response(),
        Some(None) => error(
            400,
            &format!("Message batch {id} has not finished processing"),
        ),
        None => no_batch(&id),
    }
}

fn result_line(custom_id: &str, outcome: &Outcome) -> Value {
    let result = match outcome {
        Outcome::Answer {
            status: 200, body, ..
        } => json!({"type": "succeeded", "message": body}),
        Outcome::Answer { body, .. } => json!({"type": "errored", "error": body}),
        Outcome::Cancelled => json!({"type": "canceled"}),
        Outcome::Expired => json!({"type": "expired"}),
    };
    json!({"custom_id": custom_id, "result": result})
}

/// Answers one batch item as `POST /v1/messages` would, without latency.
fn serve(shared: &Shared, item: &Item) -> Outcome {
    let (_, prompt) = params_prompt(&item.request);
    if marker(&prompt, "batch-expire").is_some() {
        return Outcome::Expired;
    }
    let calls = count_item(shared, &item.custom_id);
    let digest = Sha256::digest(item.request.to_string().as_bytes());
    let request_id = format!("req_{}", hex::encode(&digest[12..24]));
    let result = match marker(&prompt, "batch-item-error") {
        Some(s) => Err((s.parse().unwrap_or(500), "mock: batch item error".into())),
        None => respond(shared, &item.request, calls, &digest),
    };
    let (status, body) = match result {
        Ok(message) => (200, message),
        Err((status, message)) => (status, error_body(status, &message)),
    };
    Outcome::Answer {
        status,
        body,
        request_id,
    }
}
