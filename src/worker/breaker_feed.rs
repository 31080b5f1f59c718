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
//!
//! A round starts at most [`PAUSE`] after the last one ended, the first signal after a quiet
//! spell at once: with a round whenever signals were waiting, the feed cost Postgres a
//! transaction of three statements and a commit for about every round of synchronous requests
//! (at concurrency 128 the pause halved the commits per request served, BENCHMARKS.md), where
//! a breaker's window spans seconds.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::app::Ctx;
use crate::batcher::Batcher;
use crate::db::breakers::Event;

/// Signals waiting at most; past this the loop is far behind or down, and new ones are dropped.
const CAPACITY: usize = 10_000;
/// Most signals applied in one round.
const ROUND: usize = 1_000;
/// Least time between the end of one round and the start of the next; signals gather meanwhile.
const PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// The signals' queue, shared by every request (a `Batcher` nobody waits on: every signal
/// is applied even though its sender has moved on).
#[derive(Debug, Clone)]
pub struct BreakerFeed(Batcher<Event, ()>);

impl Default for BreakerFeed {
    fn default() -> Self {
        Self(
            Batcher::new("breaker_feed", CAPACITY)
                .keeping_abandoned()
                .pausing(PAUSE),
        )
    }
}

impl BreakerFeed {
    /// Hands one signal over without waiting; a full feed drops it (counted in
    /// `sluice_breaker_signals_dropped_total`).
    pub fn send(&self, event: Event) {
        if !self.0.offer(event) {
            metrics::counter!("sluice_breaker_signals_dropped_total").increment(1);
        }
    }

    /// Applies gathered signals, one round at a time, until `stop`; then applies what is left.
    pub fn run(
        self,
        ctx: Arc<Ctx>,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + use<> {
        self.0.run(ROUND, 1, stop, move |events| {
            let ctx = ctx.clone();
            async move {
                super::update_breakers(&ctx, &events).await;
                vec![(); events.len()]
            }
        })
    }
}
