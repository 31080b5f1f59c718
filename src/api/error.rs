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
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable("the database is not answering; try again shortly".into())
            }
            other => ApiError::Unexpected(other.into()),
        }
    }
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
        let (status, kind, code, param) = match &self {
            ApiError::BadRequest { param, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                param.clone(),
            ),
            ApiError::Invalid(f) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                "invalid_value",
                Some(f.field.clone()),
            ),
            ApiError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                None,
            ),
            ApiError::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "not_found",
                None,
            ),
            ApiError::Conflict(_) => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                "conflict",
                None,
            ),
            ApiError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "too_large",
                None,
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "unavailable",
                None,
            ),
            ApiError::Unexpected(e) => {
                tracing::error!(error = ?e, "unexpected API error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal_error",
                    None,
                )
            }
        };
        let message = match &self {
            ApiError::Unexpected(_) => "internal error; see the server log".to_string(),
            other => other.to_string(),
        };
        let body =
            json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}
