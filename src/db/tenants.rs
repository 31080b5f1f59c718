//! Tenants and API keys. Keys are random, shown once, and stored as SHA-256 hashes: a key has
//! 190+ bits of entropy, so a fast hash is safe and lets every request be checked cheaply.

use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::DbError;

/// The prefix every sluice API key starts with.
pub const KEY_PREFIX: &str = "sk-sluice-";

/// A freshly created key: the only time its plain text exists.
#[derive(Debug)]
pub struct CreatedKey {
    pub id: String,
    pub tenant: String,
    pub key: String,
    pub tenant_created: bool,
}

/// SHA-256 of a key.
pub fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Whether a tenant name is acceptable (lowercase letters, digits, `-`, `_`, `.`).
pub fn valid_tenant_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// Creates a key for `tenant` with every scope (`submit`, `read`, `admin`), creating the tenant
/// if it does not exist.
pub async fn create_key(pool: &PgPool, tenant: &str) -> Result<CreatedKey, DbError> {
    super::keys::create(pool, &super::keys::NewKey::for_tenant(tenant), "system").await
}

/// The tenant a key belongs to, if the key is valid now (not revoked, not expired, its tenant
/// not disabled).
pub async fn tenant_for_key(pool: &PgPool, key: &str) -> Result<Option<String>, DbError> {
    Ok(super::keys::lookup(pool, key).await?.map(|k| k.tenant))
}

/// One tenant, as `sluice tenants list` shows it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct TenantRow {
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub disabled_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Keys that work now.
    pub active_keys: i64,
}

/// Every tenant, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<TenantRow>, DbError> {
    sqlx::query_as(
        "SELECT t.name, t.created_at, t.disabled_at,
            (SELECT count(*) FROM api_keys k WHERE k.tenant = t.name
               AND (k.revoked_at IS NULL OR k.revoked_at > now())
               AND (k.expires_at IS NULL OR k.expires_at > now())) AS active_keys
         FROM tenants t ORDER BY t.name",
    )
    .fetch_all(pool)
    .await
}

/// Whether tenant `name` exists.
pub async fn exists(pool: &PgPool, name: &str) -> Result<bool, DbError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE name = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
}

/// Creates tenant `name`; false if it already existed. Audited as `tenant.create`.
pub async fn create(pool: &PgPool, name: &str, actor: &str) -> Result<bool, DbError> {
    let mut tx = pool.begin().await?;
    let created = sqlx::query("INSERT INTO tenants (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if created {
        let entry = super::audit::Entry {
            actor,
            action: "tenant.create",
            target: name,
            before: None,
            after: Some(serde_json::json!({"name": name})),
        };
        super::audit::record(&mut tx, &entry).await?;
    }
    tx.commit().await?;
    Ok(created)
}

/// What disabling a tenant found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disabled {
    Now,
    Already,
    NoSuchTenant,
}

/// Disables tenant `name`: its keys stop working (within the key cache's 1 s). Audited.
pub async fn disable(pool: &PgPool, name: &str, actor: &str) -> Result<Disabled, DbError> {
    let mut tx = pool.begin().await?;
    let before: Option<Option<chrono::DateTime<chrono::Utc>>> =
        sqlx::query_scalar("SELECT disabled_at FROM tenants WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let outcome = match before {
        None => Disabled::NoSuchTenant,
        Some(Some(_)) => Disabled::Already,
        Some(None) => {
            sqlx::query("UPDATE tenants SET disabled_at = now() WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let entry = super::audit::Entry {
                actor,
                action: "tenant.disable",
                target: name,
                before: Some(serde_json::json!({"disabled": false})),
                after: Some(serde_json::json!({"disabled": true})),
            };
            super::audit::record(&mut tx, &entry).await?;
            Disabled::Now
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_slugs() {
        assert!(valid_tenant_name("acme"));
        assert!(valid_tenant_name("team-7.ml_ops"));
        assert!(!valid_tenant_name("Acme"));
        assert!(!valid_tenant_name("-x"));
        assert!(!valid_tenant_name(""));
    }
}
