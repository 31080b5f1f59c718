//! `POST /v1/files` (multipart, streamed into Postgres chunk by chunk), `GET /v1/files`,
//! `GET /v1/files/{id}`, `GET /v1/files/{id}/content` (streamed back) and
//! `DELETE /v1/files/{id}`, in OpenAI's shapes.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::MultipartError;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ListPage;
use crate::api::responses::{
    NO_KEY, READ_FORBIDDEN, SUBMIT_FORBIDDEN, TIMED_OUT, UNAVAILABLE, UNSTORABLE_URI,
};
use crate::api::{ApiError, Tenant};
use crate::app::Ctx;
use crate::db::files::{ChunkWriter, FileRow};

/// A file, exactly as OpenAI's `FileObject`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileObject {
    /// `file-…`.
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    /// Size in bytes.
    pub bytes: i64,
    /// Unix seconds.
    pub created_at: i64,
    pub filename: String,
    /// `batch` for uploads, `batch_output` for a batch's output and error files.
    pub purpose: String,
    /// `processed` once stored.
    pub status: String,
    /// Files do not expire.
    pub expires_at: Option<i64>,
    pub status_details: Option<String>,
}

impl From<&FileRow> for FileObject {
    fn from(f: &FileRow) -> Self {
        Self {
            id: f.id.clone(),
            object: "file",
            bytes: f.bytes,
            created_at: f.created_at.timestamp(),
            filename: f.filename.clone(),
            purpose: f.purpose.clone(),
            status: f.status.clone(),
            expires_at: None,
            status_details: None,
        }
    }
}

/// The answer to `DELETE /v1/files/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileDeleted {
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    pub deleted: bool,
}

/// The multipart form of `POST /v1/files`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FileUpload {
    /// Must be `batch`.
    #[schema(pattern = "^\\s*batch\\s*(?![\\s\\S])")]
    purpose: String,
    /// The JSONL input of a batch.
    #[schema(format = Binary, value_type = String)]
    file: Vec<u8>,
}

/// The 404 of every route that names a file, in the OpenAPI document.
const NO_FILE: &str = "No such file for this key's tenant";

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!("the file is larger than this server accepts: {e}"))
    } else {
        ApiError::bad(format!("could not read the multipart upload: {e}"))
    }
}

fn bad_param(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::BadRequest {
        message: message.into(),
        param: Some(param.into()),
    }
}

/// Uploads a file. Its bytes go to Postgres in ~1 MiB chunks as they arrive, all in one
/// transaction: nothing of a failed or refused upload is kept.
#[utoipa::path(post, path = "/v1/files", tag = "files", operation_id = "createFile",
    request_body(content = FileUpload, content_type = "multipart/form-data"),
    responses((status = 200, description = "The stored file", body = FileObject),
              (status = 400, description = "The upload is not readable multipart, `purpose` is missing or not `batch`, \
                  or `file` is missing, sent twice or empty; `error.param` names the part", body = crate::api::ErrorBody),
              (status = 401, description = NO_KEY, body = crate::api::ErrorBody),
              (status = 403, description = SUBMIT_FORBIDDEN, body = crate::api::ErrorBody),
              (status = 408, description = TIMED_OUT, body = crate::api::ErrorBody),
              (status = 413, description = "The file is larger than this server accepts (`max_upload_bytes`)", body = crate::api::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = crate::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    mut form: Multipart,
) -> Result<Json<FileObject>, ApiError> {
    let id = crate::ids::new_file_id();
    let mut tx = ctx.pool.begin().await?;
    let mut purpose: Option<String> = None;
    let mut stored: Option<ChunkWriter> = None;
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("purpose") => {
                let text = field.text().await.map_err(multipart_error)?;
                purpose = Some(text.trim().to_string());
            }
            Some("file") => {
                if stored.is_some() {
                    return Err(bad_param("send one `file` part", "file"));
                }
                let filename = field
                    .file_name()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("upload.jsonl")
                    .chars()
                    .take(255)
                    .collect::<String>();
                crate::db::files::begin(&mut tx, &id, &tenant, &filename, "batch").await?;
                let mut writer = ChunkWriter::new(&id);
                while let Some(bytes) = field.chunk().await.map_err(multipart_error)? {
                    writer.write(&mut tx, &bytes).await?;
                }
                stored = Some(writer);
            }
            // Other parts (OpenAI's `expires_after[...]`) are read past.
            _ => while field.chunk().await.map_err(multipart_error)?.is_some() {},
        }
    }
    let purpose = purpose.ok_or_else(|| bad_param("`purpose` is required", "purpose"))?;
    if purpose != "batch" {
        return Err(bad_param(
            format!(
                "purpose `{purpose}` is not supported; sluice stores files with purpose `batch`"
            ),
            "purpose",
        ));
    }
    let writer = stored.ok_or_else(|| bad_param("`file` is required", "file"))?;
    if writer.is_empty() {
        return Err(bad_param("the file is empty", "file"));
    }
    let row = writer.finish(&mut tx, &purpose).await?;
    tx.commit().await?;
    Ok(Json(FileObject::from(&row)))
}

/// Query of `GET /v1/files`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListFiles {
    /// A file id: list the files after it in `order`.
    #[param(pattern = "^[^\\u0000]*$")]
    after: Option<String>,
    /// 1 to 10000 (default 10000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
    /// `desc` (newest first, the default) or `asc`.
    #[param(value_type = Option<crate::api::schemas::SortOrder>, inline)]
    order: Option<String>,
    /// Only files with this purpose.
    #[param(pattern = "^[^\\u0000]*$")]
    purpose: Option<String>,
}

/// Lists the tenant's files.
#[utoipa::path(get, path = "/v1/files", tag = "files", operation_id = "listFiles", params(ListFiles),
    responses((status = 200, description = "A page of the tenant's files, in `order`", body = ListPage<FileObject>),
              (status = 400, description = "An unknown query parameter, `limit` outside 1 to 10000, or `order` not \
                  `asc` or `desc`", body = crate::api::ErrorBody),
              (status = 401, description = NO_KEY, body = crate::api::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = crate::api::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = crate::api::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = crate::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    query: Result<Query<ListFiles>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ListPage<FileObject>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let limit = super::check_limit(q.limit, 10_000, 10_000)?;
    let desc = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(o) => {
            return Err(bad_param(
                format!("order must be asc or desc, got `{o}`"),
                "order",
            ));
        }
    };
    let rows = crate::db::files::list(
        &ctx.pool,
        &tenant,
        q.purpose.as_deref(),
        q.after.as_deref(),
        desc,
        limit + 1,
    )
    .await?;
    Ok(Json(ListPage::new(
        rows.iter().map(FileObject::from).collect(),
        limit,
        |f| f.id.clone(),
    )))
}

async fn file_of(ctx: &Ctx, tenant: &str, id: &str) -> Result<FileRow, ApiError> {
    crate::db::files::get(&ctx.pool, tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no file `{id}`")))
}

/// One file's metadata.
#[utoipa::path(get, path = "/v1/files/{id}", tag = "files", operation_id = "retrieveFile", params(("id" = String, Path)),
    responses((status = 200, description = "The file's metadata", body = FileObject),
              (status = 401, description = NO_KEY, body = crate::api::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = crate::api::ErrorBody),
              (status = 404, description = NO_FILE, body = crate::api::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = crate::api::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = crate::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    Ok(Json(FileObject::from(&file_of(&ctx, &tenant, &id).await?)))
}

/// A file's bytes, streamed from Postgres one chunk at a time.
#[utoipa::path(get, path = "/v1/files/{id}/content", tag = "files", operation_id = "downloadFile",
    params(("id" = String, Path)),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
              (status = 401, description = NO_KEY, body = crate::api::ErrorBody),
              (status = 403, description = READ_FORBIDDEN, body = crate::api::ErrorBody),
              (status = 404, description = NO_FILE, body = crate::api::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = crate::api::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = crate::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn content(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let file = file_of(&ctx, &tenant, &id).await?;
    let stream = async_stream::stream! {
        let mut seq = 0i32;
        loop {
            match crate::db::files::chunk(&ctx.pool, &file.id, seq).await {
                Ok(Some(data)) => yield Ok::<_, std::io::Error>(data),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, file_id = %file.id, "could not read a file chunk");
                    yield Err(std::io::Error::other(e));
                    break;
                }
            }
            let Some(next) = seq.checked_add(1) else { break };
            seq = next;
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, file.bytes.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Deletes a file (its bytes at once).
#[utoipa::path(delete, path = "/v1/files/{id}", tag = "files", operation_id = "deleteFile", params(("id" = String, Path)),
    responses((status = 200, description = "The file and its bytes are deleted", body = FileDeleted),
              (status = 401, description = NO_KEY, body = crate::api::ErrorBody),
              (status = 403, description = SUBMIT_FORBIDDEN, body = crate::api::ErrorBody),
              (status = 404, description = NO_FILE, body = crate::api::ErrorBody),
              (status = 422, description = UNSTORABLE_URI, body = crate::api::ErrorBody),
              (status = 503, description = UNAVAILABLE, body = crate::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(ctx): State<Arc<Ctx>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<FileDeleted>, ApiError> {
    if !crate::db::files::delete(&ctx.pool, &tenant, &id).await? {
        return Err(ApiError::NotFound(format!("no file `{id}`")));
    }
    Ok(Json(FileDeleted {
        id,
        object: "file",
        deleted: true,
    }))
}
