//! The retention cleaner: every `[retention] interval`, purges the request and response bodies
//! of jobs finished longer ago than `[retention] results` (jobs keep their metadata, the ledger
//! stays whole), and replaces the prompts of finished jobs of tenants with
//! `store_prompts = "hash"` by their SHA-256. A prompt is hashed once its job is finished, not
//! before: retries and fallbacks need the body until then.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::app::Ctx;

/// Rows changed per statement.
const CHUNK: i64 = 500;
/// Statements per kind per tick, so one tick is bounded however large the backlog.
const MAX_ROUNDS: usize = 100;

/// What one tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    pub bodies_purged: u64,
    pub prompts_hashed: u64,
}

/// Runs [`tick`] every interval until `shutdown`.
pub async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let every = ctx.config.retention.interval;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match tick(&ctx).await {
            Ok(c) if c != Cleaned::default() => {
                tracing::info!(
                    bodies_purged = c.bodies_purged,
                    prompts_hashed = c.prompts_hashed,
                    "retention cleaner"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention tick failed"),
        }
    }
}

/// One round of the cleaner (also called by tests to step it).
pub async fn tick(ctx: &Ctx) -> Result<Cleaned, sqlx::Error> {
    let mut out = Cleaned::default();
    let hashing = ctx.config.retention.hashing_tenants();
    for _ in 0..MAX_ROUNDS {
        let n = crate::db::retention::hash_prompts(&ctx.pool, &hashing, CHUNK).await?;
        out.prompts_hashed += n;
        if n < CHUNK as u64 {
            break;
        }
    }
    let keep = ctx.config.retention.results;
    if !keep.is_zero() {
        for _ in 0..MAX_ROUNDS {
            let n = crate::db::retention::purge_bodies(&ctx.pool, keep, CHUNK).await?;
            out.bodies_purged += n;
            if n < CHUNK as u64 {
                break;
            }
        }
    }
    Ok(out)
}
