//! Tenants and API keys. Keys are random, shown once, and stored as SHA-256 hashes: a key has
//! 190+ bits of entropy, so a fast hash is safe and lets every request be checked cheaply.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::DbError;
use crate::ids::new_id;

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

/// Creates a key for `tenant`, creating the tenant if it does not exist.
pub async fn create_key(pool: &PgPool, tenant: &str) -> Result<CreatedKey, DbError> {
    let secret: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    let key = format!("{KEY_PREFIX}{secret}");
    let id = new_id("key");
    let mut tx = pool.begin().await?;
    let tenant_created =
        sqlx::query("INSERT INTO tenants (name) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
    sqlx::query("INSERT INTO api_keys (id, tenant, key_hash, key_prefix) VALUES ($1, $2, $3, $4)")
        .bind(&id)
        .bind(tenant)
        .bind(hash_key(&key))
        .bind(&key[..KEY_PREFIX.len() + 4])
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(CreatedKey {
        id,
        tenant: tenant.to_string(),
        key,
        tenant_created,
    })
}

/// The tenant a key belongs to, if the key exists and is not revoked.
pub async fn tenant_for_key(pool: &PgPool, key: &str) -> Result<Option<String>, DbError> {
    sqlx::query_scalar("SELECT tenant FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
        .bind(hash_key(key))
        .fetch_optional(pool)
        .await
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
