//! The OpenAI-compatible front door: files, batches and chat completions in OpenAI's shapes, so
//! the official SDKs work against sluice by changing only `base_url`. Shared here: OpenAI's list
//! page and its `limit` check, and the error body (for the OpenAPI document).

pub mod batches;
pub mod chat;
pub mod files;
pub mod sse;

use serde::Serialize;
use utoipa::ToSchema;

use crate::api::ApiError;

/// OpenAI's cursor page: `{"object": "list", "data", "first_id", "last_id", "has_more"}`. The
/// next page is asked for with `after=<last_id>`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListPage<T> {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<T>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

impl<T> ListPage<T> {
    /// A page from `limit + 1` fetched items (the extra one only says there are more).
    pub fn new(mut data: Vec<T>, limit: i64, id: impl Fn(&T) -> String) -> Self {
        let limit = usize::try_from(limit).unwrap_or(0);
        let has_more = data.len() > limit;
        data.truncate(limit);
        Self {
            object: "list",
            first_id: data.first().map(&id),
            last_id: data.last().map(&id),
            data,
            has_more,
        }
    }
}

/// Checks a page size (`default` when absent).
pub fn check_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::BadRequest {
            message: format!("limit must be between 1 and {max}"),
            param: Some("limit".into()),
        });
    }
    Ok(limit)
}

/// Every error's body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}
