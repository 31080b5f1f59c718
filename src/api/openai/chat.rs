//! `POST /v1/chat/completions`: a synchronous call through sluice's aliases, routing
//! (real-time only), budgets, retries, fallback, cache and ledger (see `crate::realtime`),
//! answered in OpenAI's `chat.completion` shape, or with `stream: true` as server-sent events
//! (`chat.completion.chunk`s, a usage chunk if `stream_options.include_usage`, `[DONE]`).

use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::responses::{BODY_TOO_LARGE, NO_KEY, SUBMIT_FORBIDDEN, TIMED_OUT, UNAVAILABLE};
use crate::api::{ApiError, Submitter};
use crate::app::Ctx;
use crate::realtime::RunEnd;

/// The worker id this API process claims synchronous jobs as (registered and kept alive like
/// a worker's, so the rescuer never takes its jobs while it runs them).
#[derive(Debug, Clone)]
pub struct ApiWorker(pub String);

/// An OpenAI-shaped error response with any status.
fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}

/// Runs one chat completion.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "chat", operation_id = "createChatCompletion",
    request_body(content = inline(crate::api::schemas::ChatCompletionBody), description = "OpenAI's chat-completion request; `model` is a sluice alias or model. `stream` and `stream_options.include_usage` are honoured."),
    responses((status = 200, description = "`chat.completion`, or `text/event-stream` of `chat.completion.chunk`s when `stream` is true", body = Object),
              (status = 400, description = "The body is not JSON or not a chat-completion object, or `stream` is not a boolean. \
                  A 4xx the provider itself answered (any but 429: 400, 404, 413, …) is passed through with its \
                  status and message", body = super::ErrorBody),
              (status = 401, description = NO_KEY, body = super::ErrorBody),
              (status = 403, description = SUBMIT_FORBIDDEN, body = super::ErrorBody),
              (status = 404, description = "The provider's own 404 (a model or resource it does not know), passed through", body = super::ErrorBody),
              (status = 408, description = TIMED_OUT, body = super::ErrorBody),
              (status = 409, description = "The job was cancelled (`POST /v1/jobs/{id}/cancel`) before it finished", body = super::ErrorBody),
              (status = 413, description = BODY_TOO_LARGE, body = super::ErrorBody),
              (status = 422, description = "The request failed validation (an unknown model, a missing or invalid \
                  field); `error.param` names the field", body = super::ErrorBody),
              (status = 429, description = "Over budget: none freed in time, retry after `retry-after` seconds; or \
                  refused by a hard spending cap or a limit (`code` `budget_refused`, no `retry-after`)", body = super::ErrorBody,
               headers(("retry-after" = u64, description = "seconds until budget frees"))),
              (status = 502, description = "The provider failed the call, after sluice's retries and fallbacks", body = super::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = super::ErrorBody),
              (status = 504, description = "The job expired (its deadline passed) before the provider answered", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(ctx): State<Arc<Ctx>>,
    Extension(ApiWorker(worker_id)): Extension<ApiWorker>,
    Submitter { tenant, key_id }: Submitter,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (_, value) = crate::api::jobs::parse_body(body)?;
    let Value::Object(mut request) = value else {
        return Err(ApiError::bad(
            "the body must be a chat-completion request object",
        ));
    };
    let stream = match request.remove("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(ApiError::BadRequest {
                message: "stream must be a boolean".into(),
                param: Some("stream".into()),
            });
        }
    };
    let include_usage = request
        .remove("stream_options")
        .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
        .unwrap_or(false);
    let job = json!({"body": Value::Object(request), "route": "cheap"});
    let mut row = crate::submit::prepare(&ctx, &tenant, vec![job], chrono::Utc::now())?
        .pop()
        .ok_or_else(|| ApiError::bad("empty request"))?;
    row.api_key_id = Some(key_id);
    // The run is a task of its own: a caller who hangs up or times out does not stop a claimed
    // job halfway (it is run and recorded, its cost booked).
    let run_ctx = ctx.clone();
    let end = tokio::spawn(async move {
        let wait = run_ctx.config.server.chat_budget_wait;
        crate::realtime::run(&run_ctx, &worker_id, &tenant, row, wait).await
    })
    .await
    .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("the synchronous run ended early: {e}")))?
    .map_err(ApiError::Unexpected)?;
    let job = match end {
        RunEnd::Succeeded(completion) => return Ok(answer(*completion, stream, include_usage)),
        RunEnd::Finished(job) => job,
        RunEnd::NoBudget(wait) => {
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "budget_exhausted",
                &format!(
                    "no budget for this request within {:?}; retry after {} seconds",
                    ctx.config.server.chat_budget_wait,
                    wait.as_secs()
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Ok(resp);
        }
        RunEnd::Refused(job) => {
            let message = job
                .error
                .as_ref()
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("refused by a budget")
                .to_string();
            return Ok(error(
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                "budget_refused",
                &message,
            ));
        }
    };
    match job.response.clone().filter(|_| job.status == "succeeded") {
        Some(completion) => Ok(answer(completion, stream, include_usage)),
        None => Ok(failure(&job)),
    }
}

/// The answer for a job that succeeded: its `chat.completion`, or those events when streamed.
fn answer(completion: Value, stream: bool, include_usage: bool) -> Response {
    if !stream {
        return (StatusCode::OK, axum::Json(completion)).into_response();
    }
    let events = super::sse::events(&completion, include_usage);
    let body = Body::from_stream(futures::stream::iter(
        events.into_iter().map(Ok::<_, std::convert::Infallible>),
    ));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The answer for a job that did not succeed: the upstream's own 4xx, else 502 (or 504 when
/// it expired).
fn failure(job: &crate::db::jobs::JobRow) -> Response {
    let err = job.error.clone().unwrap_or(Value::Null);
    let code = err
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or(&job.status);
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the request {}", job.status));
    let upstream = err
        .get("http_status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (400..500).contains(s) && *s != 429)
        .and_then(|s| StatusCode::from_u16(s).ok());
    let (status, kind) = match (job.status.as_str(), upstream) {
        (_, Some(s)) => (s, "invalid_request_error"),
        ("expired", _) => (StatusCode::GATEWAY_TIMEOUT, "server_error"),
        ("cancelled", _) => (StatusCode::CONFLICT, "invalid_request_error"),
        _ => (StatusCode::BAD_GATEWAY, "server_error"),
    };
    error(status, kind, code, &format!("{message} (job {})", job.id))
}
