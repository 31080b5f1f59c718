//! Every API error is JSON in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::job::FieldError;

/// An API failure, mapped to a status and OpenAI's error shape.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
    },
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        let data_error = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c.starts_with("22"));
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable("the database is not answering; try again shortly".into())
            }
            // A value the database refuses (validation should have caught it): the request's
            // fault, never a 500.
            other if data_error => ApiError::Invalid(FieldError::new(
                "body",
                format!("holds a value the database cannot store: {other}"),
            )),
            other => ApiError::Unexpected(other.into()),
        }
    }
}

/// OpenAI's error shape for `status`: `type` follows the status class and `code`, unless
/// given, names the status.
pub fn error_response(
    status: StatusCode,
    message: String,
    param: Option<String>,
    code: Option<&str>,
) -> Response {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    let code = code.unwrap_or(match status.as_u16() {
        401 => "invalid_api_key",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        409 => "conflict",
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "invalid_value",
        429 => "rate_limited",
        503 => "unavailable",
        504 => "timeout",
        400..=499 => "invalid_request",
        _ => "internal_error",
    });
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid(e)
    }
}

impl ApiError {
    /// A 400 with a message.
    pub fn bad(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, param) = match &self {
            ApiError::BadRequest { param, .. } => (StatusCode::BAD_REQUEST, param.clone()),
            ApiError::Invalid(f) => (StatusCode::UNPROCESSABLE_ENTITY, Some(f.field.clone())),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, None),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, None),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
            ApiError::Unexpected(e) => {
                tracing::error!(error = ?e, "unexpected API error");
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
        };
        let message = match &self {
            ApiError::Unexpected(_) => "internal error; see the server log".to_string(),
            other => other.to_string(),
        };
        error_response(status, message, param, None)
    }
}
