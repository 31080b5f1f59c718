//! Retention SQL: purge the bodies of jobs finished longer ago than the retention, and replace
//! the prompts of finished jobs of hashing tenants by their SHA-256. Set-based, bounded per
//! statement, idempotent: any number of cleaners may run at once.

use std::time::Duration;

use sqlx::PgPool;

use super::DbError;

/// The request as kept after purging or hashing: its SHA-256 (of its JSON text) only.
const HASHED: &str =
    "jsonb_build_object('sha256', encode(sha256(convert_to(request::text, 'UTF8')), 'hex'))";

/// Purges the request and response bodies of up to `limit` jobs finished before
/// `now - older_than`; returns how many.
pub async fn purge_bodies(pool: &PgPool, older_than: Duration, limit: i64) -> Result<u64, DbError> {
    let r = sqlx::query(&format!(
        "UPDATE jobs SET request = CASE WHEN prompt_hashed_at IS NULL THEN {HASHED} ELSE request END,
            response = NULL, bodies_purged_at = now()
         WHERE id IN (SELECT id FROM jobs WHERE bodies_purged_at IS NULL AND finalized_at IS NOT NULL
                        AND finalized_at < now() - make_interval(secs => $1)
                      ORDER BY finalized_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
    ))
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Replaces the prompts of up to `limit` finished jobs of `tenants` by their SHA-256; returns
/// how many. (Unfinished jobs keep theirs: a retry needs the body.)
pub async fn hash_prompts(pool: &PgPool, tenants: &[String], limit: i64) -> Result<u64, DbError> {
    if tenants.is_empty() {
        return Ok(0);
    }
    let r = sqlx::query(&format!(
        "UPDATE jobs SET request = {HASHED}, prompt_hashed_at = now()
         WHERE id IN (SELECT id FROM jobs WHERE tenant = ANY($1) AND finalized_at IS NOT NULL
                        AND prompt_hashed_at IS NULL AND bodies_purged_at IS NULL
                      LIMIT $2 FOR UPDATE SKIP LOCKED)"
    ))
    .bind(tenants)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}
