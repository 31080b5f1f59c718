//! Circuit-breaker signals of synchronous calls (`POST /v1/chat/completions`), gathered in
//! memory and applied in one `db::breakers::observe` per round.
//!
//! A worker records its outcomes in batches and feeds their signals to the breakers once per
//! batch. A synchronous request runs one job, so applying its signal inline would take the
//! deployment's breaker row lock once per request: concurrent requests queued behind that one
//! row (measured: 160 requests a second at concurrency 128, most of the time spent waiting on
//! the lock). Here each request hands its signal to a bounded channel without waiting, and one
//! supervised loop (`breaker_feed` in `/readyz`) applies whatever has gathered in one
//! transaction. Signals are advisory, as on the worker path: a full channel or a failed write
//! drops them (counted), never the request.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::app::Ctx;
use crate::db::breakers::Event;

/// Signals waiting at most; past this the loop is far behind or down, and new ones are dropped.
const CAPACITY: usize = 10_000;
/// Most signals applied in one round.
const ROUND: usize = 1_000;

/// The sending side, shared by every request, and the receiving side, kept here so a loop the
/// supervisor restarts picks up where the last one stopped.
#[derive(Debug, Clone)]
pub struct BreakerFeed {
    tx: mpsc::Sender<Event>,
    rx: Arc<Mutex<mpsc::Receiver<Event>>>,
}

impl Default for BreakerFeed {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        Self {
            tx,
            rx: Arc::new(Mutex::new(rx)),
        }
    }
}

impl BreakerFeed {
    /// Hands one signal over without waiting; a full feed drops it (counted in
    /// `sluice_breaker_signals_dropped_total`).
    pub fn send(&self, event: Event) {
        if self.tx.try_send(event).is_err() {
            metrics::counter!("sluice_breaker_signals_dropped_total").increment(1);
        }
    }

    /// Applies gathered signals until `stop`, then applies what is left and returns.
    pub async fn run(self, ctx: Arc<Ctx>, stop: CancellationToken) {
        let mut rx = self.rx.lock().await;
        let mut round = Vec::with_capacity(ROUND);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    while round.len() < ROUND && let Ok(e) = rx.try_recv() {
                        round.push(e);
                    }
                    super::update_breakers(&ctx, &round).await;
                    return;
                }
                n = rx.recv_many(&mut round, ROUND) => {
                    if n == 0 {
                        return;
                    }
                }
            }
            super::update_breakers(&ctx, &round).await;
            round.clear();
        }
    }
}
