//! The loop behind OpenAI-shaped batches, run by every process with the maintenance role (any
//! number of them: each step locks its batch with `FOR UPDATE SKIP LOCKED` and moves it with a
//! write conditional on its status, so each batch is validated once and finalized once).
//!
//! - `validate`: reads the input file line by line (streamed from its chunks), checks every line
//!   with the same validation as `POST /v1/jobs`, and either fails the batch naming each bad
//!   line, or inserts its jobs (deadline = the completion window) and moves it to `in_progress`.
//! - `finalize`: once every job of a batch has finished, writes its output and error files in
//!   OpenAI's output line format and moves it to `completed`, `expired` or `cancelled`.

pub mod finalize;
pub mod lines;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::Ctx;

/// Most batches one tick validates or finalizes (the rest wait for the next tick).
const PER_TICK: usize = 16;

/// Runs ticks until `shutdown`. A failing tick is logged and retried on the next one.
pub async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let every = ctx
        .config
        .batch
        .poll_interval
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        if let Err(e) = tick(&ctx).await {
            tracing::warn!(error = %e, "OpenAI batch step failed; trying again on the next tick");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One round: validate waiting batches, then finalize finished ones.
pub async fn tick(ctx: &Ctx) -> anyhow::Result<()> {
    for _ in 0..PER_TICK {
        if !validate::validate_one(ctx).await? {
            break;
        }
    }
    crate::db::openai_batches::to_finalizing(&ctx.pool).await?;
    for _ in 0..PER_TICK {
        if !finalize::finalize_one(ctx).await? {
            break;
        }
    }
    Ok(())
}

pub use crate::db::errors::is_transient;
