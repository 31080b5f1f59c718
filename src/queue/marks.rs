//! Marking jobs published a moment after their work messages are confirmed.
//!
//! A job is inserted with `publish_after` one relay grace ahead (`worker.relay_grace`), so the
//! relay publishes it if its submitter never does. Once the submitter's publish is confirmed,
//! the job is marked (`publish_after = NULL`) and the relay leaves it alone; a worker's claim
//! clears the mark too. Marking at once wrote a new version of every job's row (one of the
//! four a job cost, each with an entry in every index) even when a worker claimed the job a few
//! milliseconds later. So marks wait here for `worker.publish_mark_delay` (shorter than the
//! grace) and are then written in one statement per round. A job claimed meanwhile is skipped
//! by that statement (it writes nothing for it): only jobs still waiting in their queue are
//! marked.
//!
//! Nothing but the relay depends on a mark. A mark lost (a full queue here, a failed write, a
//! process stopped before the delay passed and unable to write) means the relay publishes the
//! job once more after the grace: a duplicate message, which workers drop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::Ctx;

/// Publishes waiting at most (one per publish, of any number of jobs); past this the loop is
/// far behind or down, and the publisher marks its jobs itself.
const CAPACITY: usize = 10_000;
/// Most jobs marked in one statement.
const ROUND: usize = 5_000;
/// Longest a round's statement may take before its marks are given up (the relay covers them).
const WRITE_WAIT: Duration = Duration::from_secs(30);

type Pending = (Instant, Vec<String>);

/// The marks waiting for their time, shared by every publisher in the process. The receiving
/// side is kept here so a loop the supervisor restarts picks up where the last one stopped.
#[derive(Debug, Clone)]
pub struct PublishMarks {
    tx: mpsc::Sender<Pending>,
    rx: Arc<Mutex<mpsc::Receiver<Pending>>>,
}

impl Default for PublishMarks {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        Self {
            tx,
            rx: Arc::new(Mutex::new(rx)),
        }
    }
}

impl PublishMarks {
    /// Marks `ids` published once `worker.publish_mark_delay` has passed, without waiting.
    /// When the queue is full or the loop has stopped, marks them now instead.
    pub async fn mark_later(&self, ctx: &Ctx, ids: Vec<String>) {
        let due = Instant::now()
            .checked_add(ctx.config.worker.publish_mark_delay())
            .unwrap_or_else(Instant::now);
        if let Err(e) = self.tx.try_send((due, ids)) {
            let (mpsc::error::TrySendError::Full((_, ids))
            | mpsc::error::TrySendError::Closed((_, ids))) = e;
            metrics::counter!("sluice_publish_marks_inline_total").increment(1);
            write(ctx, &ids).await;
        }
    }

    /// Writes the marks as they fall due, until `stop`; then writes every mark still waiting
    /// at once (a stopping process does not wait out the delay).
    pub async fn run(self, ctx: Arc<Ctx>, stop: CancellationToken) {
        let mut rx = self.rx.lock().await;
        // A publish taken from the queue that is not due yet.
        let mut next: Option<Pending> = None;
        loop {
            let (due, mut ids) = match next.take() {
                Some(p) => p,
                None => tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    p = rx.recv() => match p {
                        Some(p) => p,
                        None => break,
                    },
                },
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    next = Some((due, ids));
                    break;
                }
                _ = tokio::time::sleep_until(due) => {}
            }
            // Publishes queue in the order they happened, so everything behind a due one that
            // is due too can join its round.
            let now = Instant::now();
            while ids.len() < ROUND {
                match rx.try_recv() {
                    Ok((d, more)) if d <= now => ids.extend(more),
                    Ok(p) => {
                        next = Some(p);
                        break;
                    }
                    Err(_) => break,
                }
            }
            write(&ctx, &ids).await;
        }
        rx.close();
        let mut rest: Vec<String> = next.map(|(_, ids)| ids).unwrap_or_default();
        while let Some((_, ids)) = rx.recv().await {
            rest.extend(ids);
            if rest.len() >= ROUND {
                write(&ctx, &std::mem::take(&mut rest)).await;
            }
        }
        write(&ctx, &rest).await;
    }
}

/// Marks `ids` published, in statements of at most [`ROUND`] jobs. A failed or slow write
/// gives those marks up (logged and counted): the relay publishes the jobs once more.
async fn write(ctx: &Ctx, ids: &[String]) {
    // No job's id holds a NUL, and Postgres refuses one in text, which would fail the whole
    // statement: such an id is left out rather than cost the others their marks.
    let kept: Vec<String>;
    let ids = if ids.iter().any(|id| id.contains('\0')) {
        kept = ids
            .iter()
            .filter(|id| !id.contains('\0'))
            .cloned()
            .collect();
        &kept[..]
    } else {
        ids
    };
    for chunk in ids.chunks(ROUND) {
        let wrote = tokio::time::timeout(
            WRITE_WAIT,
            crate::db::jobs::mark_published(&ctx.pool, chunk, ctx.config.worker.relay_grace),
        )
        .await;
        let error = match wrote {
            Ok(Ok(marked)) => {
                let claimed = (chunk.len() as u64).saturating_sub(marked);
                metrics::counter!("sluice_publish_marks_total", "outcome" => "marked")
                    .increment(marked);
                metrics::counter!("sluice_publish_marks_total", "outcome" => "not_needed")
                    .increment(claimed);
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {WRITE_WAIT:?}"),
        };
        metrics::counter!("sluice_publish_marks_dropped_total").increment(chunk.len() as u64);
        tracing::warn!(%error, jobs = chunk.len(), "could not mark jobs published; the relay will publish them once more");
    }
}
