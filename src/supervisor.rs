//! The supervisor: every long-lived task (API server, ingest, workers, relay, rescuer, poller,
//! packer, and every loop added later) runs under [`supervise`], which notices when the task
//! dies, logs it once with its cause, counts it, and starts it again after a backoff.
//!
//! A task "dies" when it panics, or when it returns while its stop token has not fired (a loop
//! is meant to run until asked to stop). What every role is doing is kept in [`Health`], which
//! `/readyz` reads: a role that is waiting to be restarted, or that has died
//! [`FLAPPING_DEATHS`] times within [`FLAPPING_WINDOW`], reads as down, by name.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use backon::BackoffBuilder;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// A role this many deaths within [`FLAPPING_WINDOW`] reads as down even while it runs.
pub const FLAPPING_DEATHS: usize = 3;
/// See [`FLAPPING_DEATHS`].
pub const FLAPPING_WINDOW: Duration = Duration::from_secs(300);
/// A run that lasted this long resets the restart backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// The restart delays: exponential from 100 ms to 30 s with jitter, never giving up.
fn restart_delays() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// What one supervised role is doing, as `/readyz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RoleStatus {
    /// Running, and not restarting too often.
    pub up: bool,
    /// Times the role died and was started again since this process started.
    pub restarts: u64,
    /// Why it last died (a panic message, or "returned without being asked to stop").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_death: Option<String>,
    #[serde(skip)]
    running: bool,
    #[serde(skip)]
    deaths: Vec<Instant>,
}

impl RoleStatus {
    fn new() -> Self {
        Self {
            up: true,
            restarts: 0,
            last_death: None,
            running: true,
            deaths: Vec::new(),
        }
    }

    fn refresh(&mut self, now: Instant) {
        self.deaths
            .retain(|t| now.saturating_duration_since(*t) < FLAPPING_WINDOW);
        self.up = self.running && self.deaths.len() < FLAPPING_DEATHS;
    }
}

/// The health of every supervised role in this process, shared with `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    roles: Arc<Mutex<BTreeMap<String, RoleStatus>>>,
}

impl Health {
    /// Every role by name, as of now.
    pub fn snapshot(&self) -> BTreeMap<String, RoleStatus> {
        let now = Instant::now();
        let mut roles = self.lock();
        for r in roles.values_mut() {
            r.refresh(now);
        }
        roles.clone()
    }

    /// The roles that are down now, by name.
    pub fn down(&self) -> Vec<String> {
        self.snapshot()
            .into_iter()
            .filter(|(_, r)| !r.up)
            .map(|(name, _)| name)
            .collect()
    }

    /// Total restarts of every role (for metrics).
    pub fn restarts(&self) -> u64 {
        self.lock().values().map(|r| r.restarts).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RoleStatus>> {
        // A panic while holding this lock cannot leave the map half-written: recover it.
        self.roles.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn started(&self, name: &str) {
        let mut roles = self.lock();
        let role = roles
            .entry(name.to_string())
            .or_insert_with(RoleStatus::new);
        role.running = true;
        role.refresh(Instant::now());
    }

    fn died(&self, name: &str, why: String) {
        let now = Instant::now();
        let mut roles = self.lock();
        let role = roles
            .entry(name.to_string())
            .or_insert_with(RoleStatus::new);
        role.running = false;
        role.restarts = role.restarts.saturating_add(1);
        role.last_death = Some(why);
        role.deaths.push(now);
        role.refresh(now);
    }

    fn finished(&self, name: &str) {
        self.lock().remove(name);
    }
}

/// Runs the task `make()` builds until `stop` fires, starting a new one (after a backoff)
/// whenever it panics or returns early. Returns once `stop` has fired and the task has ended.
///
/// `make` is called again for every restart, so it must capture only what can be shared
/// (`Arc`s, tokens, clones).
pub async fn supervise<F, Fut>(health: Health, name: &str, stop: CancellationToken, make: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut delays = restart_delays();
    loop {
        health.started(name);
        let began = Instant::now();
        let outcome = tokio::spawn(make()).await;
        if stop.is_cancelled() {
            if let Err(e) = &outcome
                && e.is_panic()
            {
                tracing::error!(role = name, panic = %panic_message(e), "task panicked while stopping");
            }
            health.finished(name);
            return;
        }
        let why = match outcome {
            Ok(()) => "returned without being asked to stop".to_string(),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(&e)),
            Err(e) => format!("was cancelled: {e}"),
        };
        health.died(name, why.clone());
        if began.elapsed() >= STABLE_AFTER {
            delays = restart_delays();
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(30));
        tracing::error!(
            role = name,
            delay_ms = delay.as_millis() as u64,
            "supervised task {why}; restarting"
        );
        tokio::select! {
            _ = stop.cancelled() => {
                health.finished(name);
                return;
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The text a panic carried, if it was a string.
fn panic_message(e: &tokio::task::JoinError) -> String {
    // `JoinError`'s Display says "task N panicked with message …" where the payload is text.
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_counted_and_shown_down_when_it_flaps() {
        let health = Health::default();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let s = stop.clone();
        let sup = tokio::spawn(supervise(
            health.clone(),
            "ingest",
            stop.clone(),
            move || {
                let r = r.clone();
                let s = s.clone();
                async move {
                    if r.fetch_add(1, Ordering::SeqCst) < 3 {
                        panic!("poison");
                    }
                    s.cancelled().await;
                }
            },
        ));
        while runs.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let roles = health.snapshot();
        let ingest = &roles["ingest"];
        assert_eq!(ingest.restarts, 3);
        assert!(ingest.last_death.as_deref().unwrap().contains("poison"));
        assert!(!ingest.up, "three deaths in five minutes read as down");
        assert_eq!(health.down(), vec!["ingest".to_string()]);
        // Once the deaths age out of the window, the role reads as up again.
        tokio::time::sleep(FLAPPING_WINDOW).await;
        assert!(health.down().is_empty());
        stop.cancel();
        sup.await.unwrap();
        assert!(
            health.snapshot().is_empty(),
            "a stopped role leaves the map"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_early_is_restarted() {
        let health = Health::default();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let s = stop.clone();
        let sup = tokio::spawn(supervise(
            health.clone(),
            "relay",
            stop.clone(),
            move || {
                let r = r.clone();
                let s = s.clone();
                async move {
                    if r.fetch_add(1, Ordering::SeqCst) == 0 {
                        return;
                    }
                    s.cancelled().await;
                }
            },
        ));
        while runs.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let relay = &health.snapshot()["relay"];
        assert_eq!(relay.restarts, 1);
        assert!(relay.up, "one death is not flapping");
        stop.cancel();
        sup.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_because_it_was_asked_to_is_not_restarted() {
        let health = Health::default();
        let stop = CancellationToken::new();
        stop.cancel();
        supervise(health.clone(), "poller", stop, || async {}).await;
        assert_eq!(health.restarts(), 0);
    }
}
