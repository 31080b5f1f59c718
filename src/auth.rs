//! API key checks shared by the HTTP API and the AMQP ingest, with a short-lived cache so a
//! burst of requests costs one database lookup per key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::db::tenants::{KEY_PREFIX, hash_key};

/// How long a verified key is trusted before it is checked again (so revocation takes effect).
const TTL: Duration = Duration::from_secs(30);

/// Verified keys by hash.
#[derive(Debug)]
pub struct KeyCache {
    pool: PgPool,
    known: Mutex<HashMap<Vec<u8>, (String, Instant)>>,
}

impl KeyCache {
    /// An empty cache over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant of `key`, or `None` for an unknown or revoked key.
    pub async fn tenant(&self, key: &str) -> Result<Option<String>, sqlx::Error> {
        if !key.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let hash = hash_key(key);
        if let Ok(known) = self.known.lock()
            && let Some((tenant, at)) = known.get(&hash)
            && at.elapsed() < TTL
        {
            return Ok(Some(tenant.clone()));
        }
        let tenant = crate::db::tenants::tenant_for_key(&self.pool, key).await?;
        if let (Some(t), Ok(mut known)) = (&tenant, self.known.lock()) {
            known.insert(hash, (t.clone(), Instant::now()));
        }
        Ok(tenant)
    }
}
