//! The mock's request log (`GET /mock/requests`): every request body it received, in order, so
//! tests can prove what a provider saw (and did not see). Bounded: the newest
//! [`MAX_ENTRIES`] requests, each body cut at [`MAX_BODY`] bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Shared;

/// Requests kept.
pub const MAX_ENTRIES: usize = 10_000;
/// Bytes of a body kept (a provider batch file can be large).
pub const MAX_BODY: usize = 4 << 20;

/// One request the mock received.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// The body as text (lossy UTF-8; multipart uploads included as sent).
    pub body: String,
}

/// The log itself.
#[derive(Debug, Default)]
pub struct Log(Mutex<VecDeque<Received>>);

impl Log {
    /// A copy of every entry, oldest first.
    pub fn all(&self) -> Vec<Received> {
        self.0
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn push(&self, r: Received) {
        if let Ok(mut l) = self.0.lock() {
            if l.len() >= MAX_ENTRIES {
                l.pop_front();
            }
            l.push_back(r);
        }
    }
}

/// Middleware: records the request (not the mock's own `/mock/…` routes) and passes it on.
pub(super) async fn record(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path().starts_with("/mock/") {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(_) => return axum::http::StatusCode::BAD_REQUEST.into_response(),
    };
    let kept = &bytes[..bytes.len().min(MAX_BODY)];
    shared.requests.push(Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        body: String::from_utf8_lossy(kept).into_owned(),
    });
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// `GET /mock/requests`.
pub(super) async fn list(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    axum::Json(shared.requests.all())
}
