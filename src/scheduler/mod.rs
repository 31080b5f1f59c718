//! Scheduled jobs: schedule files in `jobs/`, read every tick; each due fire time fires exactly
//! once across every scheduler process, with no leader (see [`fire`]).
//!
//! A schedule file that does not parse, a source that errors and a source that returns bad rows
//! only affect their own schedule: the loop logs them and goes on with the others.

pub mod def;
pub mod fire;
pub mod source;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::app::Ctx;

/// `[scheduler]`: where schedules live and how runs are bounded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// The folder of schedule files (relative to the working directory).
    pub dir: PathBuf,
    /// How often schedules are checked.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// A fire time older than this when first seen was missed; it follows `catch_up`.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// The most jobs one run creates.
    pub max_jobs_per_run: usize,
    /// The largest JSONL file a run reads; a larger one is set aside.
    pub max_file_bytes: u64,
    /// The largest SQL row (as JSON) a run takes; a larger one is set aside.
    pub max_row_bytes: usize,
    /// The longest a SQL source's query may run.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// The longest one run may take before it is abandoned (and retried on the next tick).
    #[serde(with = "humantime_serde")]
    pub run_timeout: Duration,
    /// Databases SQL sources may read, by name.
    pub databases: BTreeMap<String, DatabaseSource>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("jobs"),
            tick: Duration::from_secs(5),
            grace: Duration::from_secs(60),
            max_jobs_per_run: 10_000,
            max_file_bytes: 64 * 1024 * 1024,
            max_row_bytes: 256 * 1024,
            query_timeout: Duration::from_secs(30),
            run_timeout: Duration::from_secs(120),
            databases: BTreeMap::new(),
        }
    }
}

/// `[scheduler.databases.NAME]`: a database a SQL source reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSource {
    /// The environment variable holding its Postgres URL (never written in the file).
    pub url_env: String,
}

/// The scheduler loop: every `tick`, re-reads the folder and fires what is due.
pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let scheduler = fire::Scheduler::new(ctx.clone());
    let mut reported = String::new();
    loop {
        let (schedules, errors) = def::load_dir(&scheduler.dir, &scheduler.config);
        // Log bad files when they change, not every tick.
        let now_reported: String = errors.iter().map(|e| format!("{e}\n")).collect();
        if now_reported != reported {
            for e in &errors {
                tracing::warn!(problem = %e, "schedule file skipped until it is fixed");
            }
            reported = now_reported;
        }
        scheduler.tick(&schedules, chrono::Utc::now()).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(scheduler.config.tick) => {}
        }
    }
}
