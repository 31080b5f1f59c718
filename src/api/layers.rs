//! Layers around every route, so that no request can take the API down or get an answer that
//! is not JSON: a panic in a handler becomes a JSON 500 and the server lives on; a request that
//! takes longer than `server.request_timeout` ends with a JSON 408; bodies past
//! `server.max_body_bytes` end with a JSON 413; any other error answer that is not JSON yet
//! (axum's own 405, path and query rejections) is rewritten into OpenAI's error shape; and
//! text Postgres cannot store (NUL) in a path id or a query parameter is a 422 naming it.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use super::ApiError;
use super::error::error_response;
use crate::domain::job::FieldError;

/// Largest error body read back when rewriting it as JSON.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Wraps `router` in the API's protective layers.
pub fn protect<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    max_body: usize,
    timeout: Duration,
) -> Router<S> {
    router
        .route_layer(middleware::from_fn(refuse_unstorable_uri))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(middleware::map_response(json_errors))
}

/// A handler's panic, as a JSON 500 (logged once here; the server keeps serving).
fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    tracing::error!(panic = what, "an API handler panicked; answered 500");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error; see the server log".into(),
        None,
        None,
    )
}

/// Rewrites an error answer that is not JSON into OpenAI's error shape, keeping its status,
/// its text as the message, and its `Allow` / `Retry-After` headers.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            format!("method not allowed on this route; allowed: {allow}")
        }
        StatusCode::REQUEST_TIMEOUT => {
            "the request took too long and was stopped; try again, or send less at once".into()
        }
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "request body is too large{}",
            if text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            }
        ),
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string(),
        _ => text,
    };
    let mut out = error_response(status, message, None, None);
    for h in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&h) {
            out.headers_mut().insert(h, v.clone());
        }
    }
    out
}

/// Refuses a path segment or query parameter holding text Postgres cannot store, naming the
/// path parameter (from the matched route, e.g. `id`) or the query parameter.
async fn refuse_unstorable_uri(req: Request<Body>, next: Next) -> Response {
    if let Err(e) = check_uri(&req) {
        return ApiError::Invalid(e).into_response();
    }
    next.run(req).await
}

fn check_uri(req: &Request<Body>) -> Result<(), FieldError> {
    let uri = req.uri();
    let pattern = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let names: Vec<&str> = pattern.split('/').collect();
    for (i, segment) in uri.path().split('/').enumerate() {
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(segment).collect();
        if decoded.contains(&0) {
            let name = names
                .get(i)
                .map(|n| n.trim_matches(['{', '}', '*']))
                .filter(|n| !n.is_empty())
                .unwrap_or("path");
            return Err(FieldError::new(
                name,
                "contains a NUL character (%00), which cannot be stored; remove it",
            ));
        }
    }
    if let Some(q) = uri.query() {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            crate::domain::text::check_str(&k, &v)?;
            if k.contains('\0') {
                return Err(FieldError::new(
                    "query",
                    "a parameter name contains a NUL character (%00); remove it",
                ));
            }
        }
    }
    Ok(())
}
