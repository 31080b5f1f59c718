//! API key checks shared by the HTTP API and the AMQP ingest.
//!
//! Verified keys are cached in-process for at most [`TTL`] (one second), so a burst of
//! requests costs one database lookup per key per second, and a revoked or expired key, or the
//! key of a disabled tenant, stops working in every process within a second. A TTL was chosen
//! over LISTEN/NOTIFY: it needs no dedicated connection per process, and it cannot be defeated
//! by a notification lost while that connection reconnects (which would keep serving a revoked
//! key until restart); the price, one indexed lookup per active key per second per process, is
//! small.

pub mod http;
pub mod scope;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::db::tenants::{KEY_PREFIX, hash_key};
pub use scope::Scope;

/// How long a verified key is trusted before it is checked again.
pub const TTL: Duration = Duration::from_secs(1);

/// Past this many cached keys, expired entries are dropped on the next insert.
const PRUNE_AT: usize = 10_000;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A tenant key.
    Key {
        id: String,
        tenant: String,
        scopes: Vec<Scope>,
    },
    /// The operator's admin key (from `SLUICE_ADMIN_KEY` or `[admin] key_sha256`).
    Admin,
}

impl Principal {
    /// The actor name recorded in the audit log.
    pub fn actor(&self) -> String {
        match self {
            Principal::Key { id, .. } => id.clone(),
            Principal::Admin => "admin-key".into(),
        }
    }
}

/// The `[admin]` section: where the operator's admin key comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Environment variable holding the admin key (read once at start-up, never logged).
    pub key_env: String,
    /// Hex SHA-256 of the admin key, for deployments that keep only a hash in the file.
    pub key_sha256: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            key_env: "SLUICE_ADMIN_KEY".into(),
            key_sha256: None,
        }
    }
}

impl AdminConfig {
    /// The SHA-256 of the configured admin key, if any (hash from the file wins over the env).
    pub fn key_hash(&self) -> Option<Vec<u8>> {
        if let Some(hex) = &self.key_sha256 {
            return hex::decode(hex.trim()).ok().filter(|h| h.len() == 32);
        }
        std::env::var(&self.key_env)
            .ok()
            .filter(|k| k.len() >= 16)
            .map(|k| Sha256::digest(k.as_bytes()).to_vec())
    }
}

/// Verified keys by hash, each trusted for at most [`TTL`].
#[derive(Debug)]
pub struct KeyCache {
    pool: PgPool,
    admin_hash: Option<Vec<u8>>,
    known: Mutex<HashMap<Vec<u8>, (Principal, Instant)>>,
}

impl KeyCache {
    /// An empty cache over `pool`, without an admin key.
    pub fn new(pool: PgPool) -> Self {
        Self::with_admin(pool, None)
    }

    /// An empty cache over `pool` that also knows the admin key's hash.
    pub fn with_admin(pool: PgPool, admin_hash: Option<Vec<u8>>) -> Self {
        Self {
            pool,
            admin_hash,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Who `key` is: `None` for an unknown, revoked or expired key or a disabled tenant's.
    pub async fn principal(&self, key: &str) -> Result<Option<Principal>, sqlx::Error> {
        let hash = Sha256::digest(key.as_bytes()).to_vec();
        if self.admin_hash.as_deref().is_some_and(|a| same(a, &hash)) {
            return Ok(Some(Principal::Admin));
        }
        if !key.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        debug_assert_eq!(hash, hash_key(key));
        if let Ok(known) = self.known.lock()
            && let Some((p, at)) = known.get(&hash)
            && at.elapsed() < TTL
        {
            return Ok(Some(p.clone()));
        }
        let found = crate::db::keys::lookup(&self.pool, key).await?;
        let principal = found.map(|k| Principal::Key {
            id: k.id,
            tenant: k.tenant,
            scopes: k.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        });
        if let Ok(mut known) = self.known.lock() {
            match &principal {
                Some(p) => {
                    if known.len() >= PRUNE_AT {
                        known.retain(|_, (_, at)| at.elapsed() < TTL);
                    }
                    known.insert(hash, (p.clone(), Instant::now()));
                }
                None => {
                    known.remove(&hash);
                }
            }
        }
        Ok(principal)
    }

    /// The tenant `key` may submit jobs for (the AMQP ingest's check): a valid tenant key with
    /// the `submit` scope.
    pub async fn tenant(&self, key: &str) -> Result<Option<String>, sqlx::Error> {
        Ok(match self.principal(key).await? {
            Some(Principal::Key { tenant, scopes, .. })
                if scope::allows(&scopes, Scope::Submit) =>
            {
                Some(tenant)
            }
            _ => None,
        })
    }
}

/// Compares two hashes without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
