//! `GET /metrics` (Prometheus text format) and the request-latency histogram every route feeds.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::app::Ctx;

/// Renders every metric; the gauges Postgres knows are refreshed first (bounded).
///
/// Prometheus text format; needs no API key.
#[utoipa::path(get, path = "/metrics", tag = "meta", operation_id = "get_metrics",
    responses((status = 200, description = "Every metric, in Prometheus text format",
               content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
              (status = 503, description = "The metrics recorder is not installed in this process",
               body = super::ErrorBody)))]
pub async fn scrape(State(ctx): State<Arc<Ctx>>) -> Result<Response, ApiError> {
    let body = crate::metrics::render(&ctx).await.ok_or_else(|| {
        ApiError::Unavailable("the metrics recorder is not installed in this process".into())
    })?;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// Times each request by its route pattern (never the raw path: ids stay out of labels).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().as_str().to_string();
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("sluice_http_request_duration_seconds", "method" => method, "route" => route, "status" => status)
        .record(start.elapsed().as_secs_f64());
    response
}
