//! Files of the OpenAI-compatible API, stored in Postgres as a `files` row and its bytes in
//! ~1 MiB `file_chunks`, so any process can serve them and none holds a whole file in memory.
//! A file is written inside one transaction: a failed upload leaves nothing behind.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::DbError;

/// Size of one stored chunk.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// A file's metadata.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FileRow {
    pub id: String,
    pub tenant: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, tenant, filename, purpose, bytes, status, created_at";

/// Starts a file inside `tx`; its chunks follow with [`put_chunk`], then [`finish`].
pub async fn begin(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    tenant: &str,
    filename: &str,
    purpose: &str,
) -> Result<(), DbError> {
    sqlx::query("INSERT INTO files (id, tenant, filename, purpose) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(tenant)
        .bind(filename)
        .bind(purpose)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Stores chunk `seq` of a file.
pub async fn put_chunk(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    seq: i32,
    data: &[u8],
) -> Result<(), DbError> {
    sqlx::query("INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(seq)
        .bind(data)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records a file's final size and purpose (known only once its upload ends).
pub async fn finish(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    purpose: &str,
    bytes: i64,
) -> Result<FileRow, DbError> {
    sqlx::query_as(&format!(
        "UPDATE files SET bytes = $2, purpose = $3 WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(bytes)
    .bind(purpose)
    .fetch_one(&mut **tx)
    .await
}

/// One live file of `tenant`.
pub async fn get(pool: &PgPool, tenant: &str, id: &str) -> Result<Option<FileRow>, DbError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM files WHERE id = $1 AND tenant = $2 AND deleted_at IS NULL"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

/// A page of `tenant`'s live files: newest first (`desc`) or oldest first, after a cursor id.
pub async fn list(
    pool: &PgPool,
    tenant: &str,
    purpose: Option<&str>,
    after: Option<&str>,
    desc: bool,
    limit: i64,
) -> Result<Vec<FileRow>, DbError> {
    let (cmp, order) = if desc { ("<", "DESC") } else { (">", "ASC") };
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM files
         WHERE tenant = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR purpose = $2)
           AND ($3::text IS NULL OR id {cmp} $3)
         ORDER BY id {order} LIMIT $4"
    ))
    .bind(tenant)
    .bind(purpose)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Deletes a file of `tenant`: its bytes go at once; the row stays (marked deleted) because
/// batches refer to it. Returns whether there was such a live file.
pub async fn delete(pool: &PgPool, tenant: &str, id: &str) -> Result<bool, DbError> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query(
        "UPDATE files SET deleted_at = now() WHERE id = $1 AND tenant = $2 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(tenant)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if found {
        sqlx::query("DELETE FROM file_chunks WHERE file_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(found)
}

/// Chunk `seq` of a file, or `None` past its end.
pub async fn chunk(pool: &PgPool, id: &str, seq: i32) -> Result<Option<Vec<u8>>, DbError> {
    sqlx::query_scalar("SELECT data FROM file_chunks WHERE file_id = $1 AND seq = $2")
        .bind(id)
        .bind(seq)
        .fetch_optional(pool)
        .await
}

/// How many chunks a file has (for tests and diagnostics).
pub async fn chunk_count(pool: &PgPool, id: &str) -> Result<i64, DbError> {
    sqlx::query_scalar("SELECT count(*) FROM file_chunks WHERE file_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// Writes a file in ~1 MiB chunks inside a transaction, from data produced piece by piece.
pub struct ChunkWriter {
    id: String,
    buf: Vec<u8>,
    seq: i32,
    bytes: i64,
}

impl ChunkWriter {
    /// A writer for file `id` (already begun with [`begin`]).
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            buf: Vec::with_capacity(CHUNK_BYTES),
            seq: 0,
            bytes: 0,
        }
    }

    /// Appends data, storing every full chunk.
    pub async fn write(
        &mut self,
        tx: &mut Transaction<'_, Postgres>,
        mut data: &[u8],
    ) -> Result<(), DbError> {
        while !data.is_empty() {
            let room = CHUNK_BYTES - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK_BYTES {
                self.flush(tx).await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self, tx: &mut Transaction<'_, Postgres>) -> Result<(), DbError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        put_chunk(tx, &self.id, self.seq, &self.buf).await?;
        self.bytes = self.bytes.saturating_add(self.buf.len() as i64);
        self.seq = self.seq.saturating_add(1);
        self.buf.clear();
        Ok(())
    }

    /// Bytes written so far (stored or buffered).
    pub fn len(&self) -> i64 {
        self.bytes.saturating_add(self.buf.len() as i64)
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores the last partial chunk and records the file's size and purpose.
    pub async fn finish(
        mut self,
        tx: &mut Transaction<'_, Postgres>,
        purpose: &str,
    ) -> Result<FileRow, DbError> {
        self.flush(tx).await?;
        finish(tx, &self.id, purpose, self.bytes).await
    }
}
