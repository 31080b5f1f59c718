//! Authentication and scope checks for the HTTP API: one function every extractor calls, with
//! errors in OpenAI's shape (401 for a bad key, 403 for a missing scope).

use axum::http::StatusCode;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::scope::{self, Needs};
use super::{KeyCache, Principal};

/// Why a request was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the database is not answering; try again shortly")]
    Unavailable,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let (status, kind, code) = match &self {
            AuthError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
            ),
            AuthError::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "insufficient_scope",
            ),
            AuthError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "unavailable",
            ),
        };
        let body = json!({"error": {"message": self.to_string(), "type": kind, "param": null, "code": code}});
        (status, axum::Json(body)).into_response()
    }
}

/// The bearer key of a request.
fn bearer(parts: &Parts) -> Result<&str, AuthError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            AuthError::Unauthorized(
                "missing Authorization header: send `Authorization: Bearer sk-sluice-…`".into(),
            )
        })?;
    let key = value.strip_prefix("Bearer ").ok_or_else(|| {
        AuthError::Unauthorized("Authorization must be `Bearer <api key>`".into())
    })?;
    Ok(key.trim())
}

/// Authenticates the request and checks that its key may do what the method and path ask.
pub async fn authenticate(keys: &KeyCache, parts: &Parts) -> Result<Principal, AuthError> {
    let key = bearer(parts)?;
    let principal = keys.principal(key).await.map_err(|e| {
        tracing::warn!(error = %e, "key lookup failed");
        AuthError::Unavailable
    })?;
    let Some(principal) = principal else {
        return Err(AuthError::Unauthorized(
            "invalid API key: it is unknown, revoked or expired, or its tenant is disabled".into(),
        ));
    };
    let needs = scope::required(parts.method.as_str(), parts.uri.path());
    match (&principal, needs) {
        (Principal::Admin, Needs::AdminKey) => Ok(principal),
        (Principal::Admin, Needs::Scope(_)) => Err(AuthError::Forbidden(
            "the admin key manages sluice under /v1/admin/…; use a tenant key for this".into(),
        )),
        (Principal::Key { .. }, Needs::AdminKey) => Err(AuthError::Forbidden(
            "this route needs the admin key (SLUICE_ADMIN_KEY)".into(),
        )),
        (Principal::Key { scopes, .. }, Needs::Scope(s)) if scope::allows(scopes, s) => {
            Ok(principal)
        }
        (Principal::Key { .. }, Needs::Scope(s)) => Err(AuthError::Forbidden(format!(
            "this key lacks the `{s}` scope; create one with `sluice keys create --scopes {s}`"
        ))),
    }
}
