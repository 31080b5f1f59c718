//! The life of an API key: created with a name, scopes and an optional expiry; looked up on
//! every request (through the in-process cache of `crate::auth`); revoked at once or, when
//! rotated, at the end of a grace period. Every change is audited in the same transaction.

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use super::DbError;
use super::audit::{Entry, record};
use super::tenants::{CreatedKey, KEY_PREFIX, hash_key};
use crate::ids::new_id;

/// What a new key should be.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub tenant: String,
    pub name: String,
    /// Scope names (`submit`, `read`, `admin`); checked by the database too.
    pub scopes: Vec<String>,
    pub expires_in: Option<chrono::Duration>,
    /// The key's own limits (its `budgets` row with `scope = 'key'`); `None`: unlimited.
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
}

impl NewKey {
    /// A key for `tenant` with every scope (what keys could always do) and no expiry.
    pub fn for_tenant(tenant: &str) -> Self {
        Self {
            tenant: tenant.into(),
            name: String::new(),
            scopes: vec!["submit".into(), "read".into(), "admin".into()],
            expires_in: None,
            rpm: None,
            tpm: None,
        }
    }
}

/// A key as `keys list` shows it: never the key itself.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KeyRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    /// The first characters of the key, enough to recognise it.
    pub key_prefix: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// When the key stopped (or, in a rotation's grace period, will stop) working.
    pub revoked_at: Option<DateTime<Utc>>,
    pub rotated_to: Option<String>,
    /// The key's own limits (`sluice budgets set --key`); `None`: unlimited.
    #[sqlx(default)]
    pub rpm: Option<i64>,
    #[sqlx(default)]
    pub tpm: Option<i64>,
}

/// A key that works now, as the request path needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ValidKey {
    pub id: String,
    pub tenant: String,
    pub scopes: Vec<String>,
}

const COLUMNS: &str = "id, tenant, name, key_prefix, scopes, created_at, expires_at, last_used_at, revoked_at, rotated_to";

fn secret() -> String {
    let s: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("{KEY_PREFIX}{s}")
}

fn expiry(expires_in: Option<chrono::Duration>) -> Option<DateTime<Utc>> {
    expires_in.and_then(|d| Utc::now().checked_add_signed(d))
}

async fn insert(
    conn: &mut PgConnection,
    new: &NewKey,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(String, String), DbError> {
    let key = secret();
    let id = new_id("key");
    sqlx::query(
        "INSERT INTO api_keys (id, tenant, key_hash, key_prefix, name, scopes, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&new.tenant)
    .bind(hash_key(&key))
    .bind(&key[..KEY_PREFIX.len() + 4])
    .bind(&new.name)
    .bind(&new.scopes)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok((id, key))
}

/// Creates a key (and its tenant if new); the plain key is in the answer and nowhere else.
pub async fn create(pool: &PgPool, new: &NewKey, actor: &str) -> Result<CreatedKey, DbError> {
    let mut tx = pool.begin().await?;
    let tenant_created =
        sqlx::query("INSERT INTO tenants (name) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&new.tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
    let expires_at = expiry(new.expires_in);
    let (id, key) = insert(&mut tx, new, expires_at).await?;
    let after = json!({"tenant": new.tenant, "name": new.name, "scopes": new.scopes,
        "expires_at": expires_at, "tenant_created": tenant_created});
    record(
        &mut tx,
        &Entry {
            actor,
            action: "key.create",
            target: &id,
            before: None,
            after: Some(after),
        },
    )
    .await?;
    if new.rpm.is_some() || new.tpm.is_some() {
        let limits: (Option<i64>, Option<i64>) = sqlx::query_as(
            "INSERT INTO budgets (scope, key, tpm, rpm, source) VALUES ('key', $1, $2, $3, 'cli')
             RETURNING tpm, rpm",
        )
        .bind(&id)
        .bind(new.tpm)
        .bind(new.rpm)
        .fetch_one(&mut *tx)
        .await?;
        let entry = Entry {
            actor,
            action: "budget.set",
            target: &format!("key:{id}"),
            before: None,
            after: Some(json!({"tpm": limits.0, "rpm": limits.1})),
        };
        record(&mut tx, &entry).await?;
    }
    tx.commit().await?;
    Ok(CreatedKey {
        id,
        tenant: new.tenant.clone(),
        key,
        tenant_created,
    })
}

/// Keys, newest first, of one tenant or all, with their own limits.
pub async fn list(pool: &PgPool, tenant: Option<&str>) -> Result<Vec<KeyRow>, DbError> {
    sqlx::query_as(
        "SELECT k.id, k.tenant, k.name, k.key_prefix, k.scopes, k.created_at, k.expires_at,
            k.last_used_at, k.revoked_at, k.rotated_to, b.rpm, b.tpm
         FROM api_keys k LEFT JOIN budgets b ON b.scope = 'key' AND b.key = k.id
         WHERE $1::text IS NULL OR k.tenant = $1 ORDER BY k.id DESC",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// Whether a key with this id exists (revoked or not): limits can only be set on one that does.
pub async fn exists(pool: &PgPool, id: &str) -> Result<bool, DbError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// The key valid now for `key` (not revoked, not expired, tenant not disabled), marking it used
/// at most once a minute so a busy key does not write on every request.
pub async fn lookup(pool: &PgPool, key: &str) -> Result<Option<ValidKey>, DbError> {
    sqlx::query_as(
        "WITH k AS (
            SELECT k.id, k.tenant, k.scopes, k.last_used_at FROM api_keys k
            JOIN tenants t ON t.name = k.tenant
            WHERE k.key_hash = $1 AND t.disabled_at IS NULL
              AND (k.revoked_at IS NULL OR k.revoked_at > now())
              AND (k.expires_at IS NULL OR k.expires_at > now())),
         touched AS (
            UPDATE api_keys SET last_used_at = now()
            WHERE id = (SELECT id FROM k)
              AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute'))
         SELECT id, tenant, scopes FROM k",
    )
    .bind(hash_key(key))
    .fetch_optional(pool)
    .await
}

/// The row for a key given as itself (`sk-sluice-…`) or as its id (`key_…`), locked.
async fn find_for_update(
    conn: &mut PgConnection,
    key_or_id: &str,
) -> Result<Option<KeyRow>, DbError> {
    let by_key = key_or_id.starts_with(KEY_PREFIX);
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE {} FOR UPDATE",
        if by_key { "key_hash = $1" } else { "id = $2" }
    ))
    .bind(hash_key(key_or_id))
    .bind(key_or_id)
    .fetch_optional(conn)
    .await
}

/// Revokes a key at once; `None` when no such key exists. Revoking a revoked key changes nothing
/// and records nothing.
pub async fn revoke(
    pool: &PgPool,
    key_or_id: &str,
    actor: &str,
) -> Result<Option<KeyRow>, DbError> {
    let mut tx = pool.begin().await?;
    let Some(before) = find_for_update(&mut tx, key_or_id).await? else {
        return Ok(None);
    };
    let after: KeyRow = sqlx::query_as(&format!(
        "UPDATE api_keys SET revoked_at = LEAST(COALESCE(revoked_at, now()), now())
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(&before.id)
    .fetch_one(&mut *tx)
    .await?;
    if before.revoked_at != after.revoked_at {
        let entry = Entry {
            actor,
            action: "key.revoke",
            target: &before.id,
            before: Some(json!({"revoked_at": before.revoked_at})),
            after: Some(json!({"revoked_at": after.revoked_at})),
        };
        record(&mut tx, &entry).await?;
    }
    tx.commit().await?;
    Ok(Some(after))
}

/// Why a rotation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("no such key")]
    NotFound,
    #[error("key {0} is already revoked; create a new one with `sluice keys create`")]
    Revoked(String),
    #[error("the grace period is too long")]
    Grace,
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Issues a successor with the same tenant, name, scopes and lifetime, and keeps the old key
/// working for `grace` more (revoked at the end of it).
pub async fn rotate(
    pool: &PgPool,
    key_or_id: &str,
    grace: chrono::Duration,
    actor: &str,
) -> Result<(CreatedKey, KeyRow), RotateError> {
    let mut tx = pool.begin().await?;
    let old = find_for_update(&mut tx, key_or_id)
        .await?
        .ok_or(RotateError::NotFound)?;
    let now = Utc::now();
    if old.revoked_at.is_some_and(|r| r <= now) {
        return Err(RotateError::Revoked(old.id));
    }
    let ends = now.checked_add_signed(grace).ok_or(RotateError::Grace)?;
    let lifetime = old.expires_at.map(|e| e - old.created_at);
    let new = NewKey {
        tenant: old.tenant.clone(),
        name: old.name.clone(),
        scopes: old.scopes.clone(),
        expires_in: lifetime,
        rpm: None,
        tpm: None,
    };
    let (id, key) = insert(&mut tx, &new, expiry(lifetime)).await?;
    // The successor keeps the key's own limits.
    sqlx::query(
        "INSERT INTO budgets (scope, key, tpm, rpm, source)
         SELECT 'key', $2, tpm, rpm, 'cli' FROM budgets WHERE scope = 'key' AND key = $1",
    )
    .bind(&old.id)
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    let old_after: KeyRow = sqlx::query_as(&format!(
        "UPDATE api_keys SET revoked_at = LEAST(COALESCE(revoked_at, $2), $2), rotated_to = $3
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(&old.id)
    .bind(ends)
    .bind(&id)
    .fetch_one(&mut *tx)
    .await?;
    let entry = Entry {
        actor,
        action: "key.rotate",
        target: &old.id,
        before: Some(json!({"revoked_at": old.revoked_at})),
        after: Some(json!({"revoked_at": old_after.revoked_at, "rotated_to": id})),
    };
    record(&mut tx, &entry).await?;
    tx.commit().await?;
    Ok((
        CreatedKey {
            id,
            tenant: old.tenant,
            key,
            tenant_created: false,
        },
        old_after,
    ))
}
