//! Gathering the database work of concurrent requests into rounds (the synchronous path's
//! steps in `realtime::rounds`, circuit-breaker signals in `worker::breaker_feed`): each request hands its item
//! to a [`Batcher`] and awaits its own answer, and one supervised loop takes whatever has
//! gathered (up to a round's size) and does it in one transaction. Under load a round forms
//! while the previous one runs, so no timer delays a request; alone, a request is a round of
//! one.
//!
//! When the loop has stopped for good (the process is shutting down), [`Batcher::call`] hands
//! the item back so the caller can do its work alone, and requests still draining finish. A
//! loop that dies mid-round drops that round's answers: those callers get an error, and the
//! supervisor starts the loop again on the same queue.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

type Request<I, O> = (I, oneshot::Sender<O>);

/// The sending side, shared by every request, and the receiving side, kept here so a loop the
/// supervisor restarts picks up where the last one stopped.
#[derive(Debug)]
pub struct Batcher<I, O> {
    name: &'static str,
    /// Whether an item whose caller has gone is still done (an outcome to record must be).
    keep_abandoned: bool,
    /// Least time from a round's end to the start of the next one in its slot.
    pause: std::time::Duration,
    tx: mpsc::Sender<Request<I, O>>,
    rx: Arc<Mutex<mpsc::Receiver<Request<I, O>>>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            keep_abandoned: self.keep_abandoned,
            pause: self.pause,
            tx: self.tx.clone(),
            rx: self.rx.clone(),
        }
    }
}

/// Why [`Batcher::call`] has no answer.
#[derive(Debug)]
pub enum CallError<I> {
    /// The loop has stopped for good; here is the item back, to be done alone.
    Stopped(I),
    /// The loop took the item and ended without answering (it died mid-round).
    Dropped(&'static str),
}

impl<I> std::fmt::Display for CallError<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stopped(_) => write!(f, "the round loop has stopped"),
            Self::Dropped(name) => write!(
                f,
                "the {name} round ended without an answer (its loop died; the supervisor restarts it)"
            ),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// A batcher whose queue holds `capacity` items; past that, callers wait for room.
    pub fn new(name: &'static str, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Self {
            name,
            keep_abandoned: false,
            pause: std::time::Duration::ZERO,
            tx,
            rx: Arc::new(Mutex::new(rx)),
        }
    }

    /// Does every item even when its caller has gone (by default such items are left out).
    pub fn keeping_abandoned(mut self) -> Self {
        self.keep_abandoned = true;
        self
    }

    /// Keeps a round's slot `pause` longer after its answers are sent, so items gather for
    /// the next round meanwhile (no caller waits for the pause). A stopping loop does not
    /// pause.
    pub fn pausing(mut self, pause: std::time::Duration) -> Self {
        self.pause = pause;
        self
    }

    /// Hands `item` to the loop without waiting for room or for an answer; false when the
    /// queue is full or closed. (Only useful with [`Batcher::keeping_abandoned`].)
    pub fn offer(&self, item: I) -> bool {
        let (reply, _) = oneshot::channel();
        self.tx.try_send((item, reply)).is_ok()
    }

    /// Hands `item` to the loop and waits for its answer.
    pub async fn call(&self, item: I) -> Result<O, CallError<I>> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError((item, _))) = self.tx.send((item, reply)).await {
            return Err(CallError::Stopped(item));
        }
        answer.await.map_err(|_| CallError::Dropped(self.name))
    }

    /// Takes rounds of at most `round` items, up to `parallel` of them running at once, and
    /// answers each item with what `work` returns for it (`work` returns one answer per item,
    /// in order), until `stop`. Then the queue is closed, what is in it is done, the rounds
    /// running end, and the loop returns; later calls get their item back. Items whose caller
    /// has gone are left out of a round unless [`Batcher::keeping_abandoned`]. A round that
    /// panics takes the loop down with it (the supervisor sees the death and starts the loop
    /// again); its callers get an error.
    pub async fn run<F, Fut>(
        self,
        round: usize,
        parallel: usize,
        stop: CancellationToken,
        mut work: F,
    ) where
        F: FnMut(Vec<I>) -> Fut,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (round, parallel) = (round.max(1), parallel.max(1));
        let keep = self.keep_abandoned;
        let mut rx = self.rx.lock().await;
        let mut running = tokio::task::JoinSet::new();
        let mut buf: Vec<Request<I, O>> = Vec::with_capacity(round);
        let mut stopping = false;
        loop {
            if running.len() >= parallel {
                reap(running.join_next().await);
                continue;
            }
            if !stopping {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => {
                        stopping = true;
                        rx.close();
                        continue;
                    }
                    done = running.join_next(), if !running.is_empty() => {
                        reap(done);
                        continue;
                    }
                    n = rx.recv_many(&mut buf, round) => {
                        if n == 0 {
                            break;
                        }
                    }
                }
            } else if rx.recv_many(&mut buf, round).await == 0 {
                break;
            }
            let (items, replies): (Vec<I>, Vec<oneshot::Sender<O>>) = buf
                .drain(..)
                .filter(|(_, r)| keep || !r.is_closed())
                .unzip();
            if items.is_empty() {
                continue;
            }
            let (name, pause) = (self.name, self.pause);
            let stopped = stop.clone();
            let round = work(items);
            running.spawn(async move {
                let want = replies.len();
                let started = std::time::Instant::now();
                let answers = round.await;
                tracing::debug!(
                    batcher = name,
                    items = want,
                    took_ms = started.elapsed().as_secs_f64() * 1e3,
                    "round"
                );
                if answers.len() != want {
                    tracing::error!(
                        batcher = name,
                        want,
                        got = answers.len(),
                        "a round returned the wrong number of answers; its callers get an error"
                    );
                    return;
                }
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
                if !pause.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopped.cancelled() => {}
                    }
                }
            });
        }
        while let Some(done) = running.join_next().await {
            reap(Some(done));
        }
    }
}

/// Passes a round's panic on to the loop (and so to the supervisor).
fn reap(done: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(e)) = done
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_calls_share_rounds_and_each_gets_its_own_answer() {
        let b: Batcher<u32, u32> = Batcher::new("test", 64);
        let stop = CancellationToken::new();
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = gate.clone();
        let lp = tokio::spawn(b.clone().run(8, 1, stop.clone(), move |items: Vec<u32>| {
            seen.lock().unwrap().push(items.len());
            let g = g.clone();
            async move {
                // The first round waits until every call is queued, so the rest gather.
                if let Ok(p) = g.acquire().await {
                    p.forget();
                    g.add_permits(1);
                }
                items.into_iter().map(|i| i * 10).collect()
            }
        }));
        let calls: Vec<_> = (0..20u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.call(i).await })
            })
            .collect();
        // Every call is either in the first (held) round or queued behind it.
        loop {
            let first = sizes.lock().unwrap().first().copied();
            let queued = 64 - b.tx.capacity();
            if first.is_some_and(|f| f + queued == 20) {
                break;
            }
            tokio::task::yield_now().await;
        }
        gate.add_permits(1);
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap().ok(), Some(i as u32 * 10));
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
        assert!(sizes.len() <= 4, "calls gathered into rounds: {sizes:?}");
        stop.cancel();
        lp.await.unwrap();
        // Stopped for good: the item comes back to be done alone.
        assert!(matches!(b.call(7).await, Err(CallError::Stopped(7))));
    }

    /// Items offered every 10 ms for 300 ms: with a 100 ms pause they gather into a few
    /// rounds (the first alone, at once), without one each is a round of its own; a stopping
    /// loop does the rest without pausing.
    #[tokio::test(start_paused = true)]
    async fn a_pause_gathers_items_offered_one_by_one_into_few_rounds() {
        async fn rounds(pause: std::time::Duration) -> Vec<(u64, usize)> {
            let b: Batcher<u32, ()> = Batcher::new("test", 64).keeping_abandoned().pausing(pause);
            let stop = CancellationToken::new();
            let start = tokio::time::Instant::now();
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let s = seen.clone();
            let lp = tokio::spawn(b.clone().run(64, 1, stop.clone(), move |items: Vec<u32>| {
                let at = start.elapsed().as_millis() as u64;
                s.lock().unwrap().push((at, items.len()));
                async move { vec![(); items.len()] }
            }));
            for i in 0..30 {
                assert!(b.offer(i));
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            // The last items wait out a pause; a stop does them at once.
            stop.cancel();
            tokio::time::timeout(std::time::Duration::from_millis(50), lp)
                .await
                .expect("a stopping loop does not pause")
                .unwrap();
            let seen = seen.lock().unwrap().clone();
            assert_eq!(seen.iter().map(|r| r.1).sum::<usize>(), 30, "{seen:?}");
            seen
        }
        let paused = rounds(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            paused[0],
            (0, 1),
            "the first item is done at once: {paused:?}"
        );
        assert!(paused.len() <= 5, "{paused:?}");
        assert!(
            paused.windows(2).all(|w| w[1].0 - w[0].0 >= 100),
            "{paused:?}"
        );
        let unpaused = rounds(std::time::Duration::ZERO).await;
        assert_eq!(unpaused.len(), 30, "{unpaused:?}");
    }

    #[tokio::test]
    async fn a_round_that_panics_fails_its_callers_and_a_new_loop_serves_the_next() {
        let b: Batcher<u32, u32> = Batcher::new("test", 8);
        let stop = CancellationToken::new();
        let dying = tokio::spawn(
            b.clone()
                .run(8, 1, stop.clone(), |items: Vec<u32>| async move {
                    if items.contains(&13) {
                        panic!("poison");
                    }
                    items
                }),
        );
        assert_eq!(b.call(1).await.ok(), Some(1));
        assert!(matches!(b.call(13).await, Err(CallError::Dropped("test"))));
        assert!(dying.await.is_err());
        let lp =
            tokio::spawn(
                b.clone()
                    .run(8, 1, stop.clone(), |items: Vec<u32>| async move { items }),
            );
        assert_eq!(b.call(2).await.ok(), Some(2));
        stop.cancel();
        lp.await.unwrap();
    }

    #[tokio::test]
    async fn a_round_with_the_wrong_number_of_answers_fails_its_callers_only() {
        let b: Batcher<u32, u32> = Batcher::new("test", 8);
        let stop = CancellationToken::new();
        let lp = tokio::spawn(
            b.clone()
                .run(8, 1, stop.clone(), |items: Vec<u32>| async move {
                    if items.contains(&13) { vec![] } else { items }
                }),
        );
        assert!(matches!(b.call(13).await, Err(CallError::Dropped(_))));
        assert_eq!(b.call(3).await.ok(), Some(3));
        stop.cancel();
        lp.await.unwrap();
    }

    #[tokio::test]
    async fn rounds_run_side_by_side_up_to_the_parallel_limit() {
        let b: Batcher<u32, u32> = Batcher::new("test", 8);
        let stop = CancellationToken::new();
        let second_started = Arc::new(tokio::sync::Notify::new());
        let n = second_started.clone();
        let lp = tokio::spawn(b.clone().run(1, 2, stop.clone(), move |items: Vec<u32>| {
            let n = n.clone();
            async move {
                if items == [1] {
                    // Ends only once the round of item 2 has started beside it.
                    n.notified().await;
                } else {
                    n.notify_one();
                }
                items
            }
        }));
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.call(1).await.ok() }
        });
        let second = b.call(2).await.ok();
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), first)
            .await
            .expect("two rounds ran at once")
            .unwrap();
        assert_eq!((first, second), (Some(1), Some(2)));
        stop.cancel();
        lp.await.unwrap();
    }

    #[tokio::test]
    async fn an_abandoned_item_is_left_out_unless_the_batcher_keeps_them() {
        for keep in [false, true] {
            let b: Batcher<u32, u32> = Batcher::new("test", 8);
            let b = if keep { b.keeping_abandoned() } else { b };
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            // The caller of 1 goes away before any loop runs.
            let gone = tokio::spawn({
                let b = b.clone();
                async move { b.call(1).await.ok() }
            });
            while b.tx.capacity() == 8 {
                tokio::task::yield_now().await;
            }
            gone.abort();
            let _ = gone.await;
            let stop = CancellationToken::new();
            let s = seen.clone();
            let lp = tokio::spawn(b.clone().run(8, 1, stop.clone(), move |items: Vec<u32>| {
                s.lock().unwrap().extend(items.iter().copied());
                async move { items }
            }));
            assert_eq!(b.call(2).await.ok(), Some(2));
            stop.cancel();
            lp.await.unwrap();
            let want: &[u32] = if keep { &[1, 2] } else { &[2] };
            assert_eq!(seen.lock().unwrap().as_slice(), want, "keep = {keep}");
        }
    }
}
