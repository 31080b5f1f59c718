//! The response cache table.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use super::DbError;

/// A cached answer.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Hit {
    pub response: Value,
    pub deployment: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// The live entry for `key` of `tenant`, if any.
pub async fn get(pool: &PgPool, tenant: &str, key: &[u8]) -> Result<Option<Hit>, DbError> {
    sqlx::query_as(
        "SELECT response, deployment, input_tokens, output_tokens FROM response_cache
         WHERE tenant = $1 AND key_hash = $2 AND expires_at > now()",
    )
    .bind(tenant)
    .bind(key)
    .fetch_optional(pool)
    .await
}

/// Stores an answer until `expires_at`.
pub async fn put(
    pool: &PgPool,
    tenant: &str,
    key: &[u8],
    hit: &Hit,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO response_cache (tenant, key_hash, response, deployment, input_tokens, output_tokens, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (tenant, key_hash) DO UPDATE SET response = excluded.response, deployment = excluded.deployment,
            input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
            created_at = now(), expires_at = excluded.expires_at",
    )
    .bind(tenant)
    .bind(key)
    .bind(&hit.response)
    .bind(&hit.deployment)
    .bind(hit.input_tokens)
    .bind(hit.output_tokens)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Drops expired entries.
pub async fn prune(pool: &PgPool) -> Result<(), DbError> {
    sqlx::query("DELETE FROM response_cache WHERE expires_at < now()")
        .execute(pool)
        .await?;
    Ok(())
}
