//! OpenAI's Files API, mocked: `POST /v1/files` (multipart, `purpose=batch`),
//! `GET|DELETE /v1/files/{id}`, `GET /v1/files/{id}/content`. Batches read their input here and
//! write their output and error files here.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{DAY, bad_request, not_found};
use crate::mock::Shared;
use crate::mock::batches::{lock, multipart_parts};

/// Uploads up to OpenAI's 200 MB file limit (decimal), plus multipart framing.
const MAX_UPLOAD: usize = 201_000_000;

/// An uploaded or generated file.
#[derive(Debug, Clone)]
pub(in crate::mock) struct MockFile {
    pub(super) id: String,
    filename: String,
    purpose: String,
    created_at: i64,
    pub(super) content: Vec<u8>,
}

impl MockFile {
    pub(super) fn new(filename: &str, purpose: &str, content: Vec<u8>) -> Self {
        Self {
            id: format!("file-{}", uuid::Uuid::now_v7().simple()),
            filename: filename.into(),
            purpose: purpose.into(),
            created_at: chrono::Utc::now().timestamp(),
            content,
        }
    }

    pub(super) fn json(&self) -> Value {
        json!({"id": self.id, "object": "file", "bytes": self.content.len(),
            "created_at": self.created_at, "expires_at": self.created_at + 30 * DAY,
            "filename": self.filename, "purpose": self.purpose,
            "status": "processed", "status_details": null})
    }
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/v1/files",
            post(upload).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/v1/files/{id}", get(file).delete(delete_file))
        .route("/v1/files/{id}/content", get(file_content))
}

async fn upload(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(parts) = multipart_parts(content_type, &body) else {
        return bad_request("Expected a multipart/form-data body.");
    };
    let field = |name: &str| parts.iter().find(|p| p.name == name);
    if field("purpose").map(|p| p.data.as_slice()) != Some(b"batch".as_slice()) {
        return bad_request("'purpose' must be 'batch' on this mock.");
    }
    let Some(file) = field("file") else {
        return bad_request("'file' is a required property");
    };
    // `[[mock:upload-sleep=3s]]` in the file makes the upload that slow (at most a minute).
    let text = String::from_utf8_lossy(&file.data);
    if let Some(d) =
        crate::mock::marker(&text, "upload-sleep").and_then(|d| humantime::parse_duration(d).ok())
    {
        tokio::time::sleep(d.min(std::time::Duration::from_secs(60))).await;
    }
    let name = file.filename.as_deref().unwrap_or("upload.jsonl");
    let f = MockFile::new(name, "batch", file.data.clone());
    let out = f.json();
    lock(&shared.batches).files.insert(f.id.clone(), f);
    axum::Json(out).into_response()
}

async fn file(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match lock(&shared.batches).files.get(&id) {
        Some(f) => axum::Json(f.json()).into_response(),
        None => not_found("file", &id),
    }
}

async fn file_content(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match lock(&shared.batches).files.get(&id) {
        Some(f) => (
            [("content-type", "application/octet-stream")],
            f.content.clone(),
        )
            .into_response(),
        None => not_found("file", &id),
    }
}

async fn delete_file(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match lock(&shared.batches).files.remove(&id) {
        Some(_) => axum::Json(json!({"id": id, "object": "file", "deleted": true})).into_response(),
        None => not_found("file", &id),
    }
}
