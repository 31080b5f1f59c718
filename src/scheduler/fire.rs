//! Firing: deciding which fire time is due, and turning one into a batch exactly once.
//!
//! A run locks its schedule's row, claims `(schedule, fire_time)` with a conditional insert,
//! reads its source, and inserts its batch and jobs through the same path as `POST /v1/jobs`,
//! all in one transaction. Racing schedulers wait on the lock and then find the tick claimed;
//! a scheduler that dies mid-run rolls back, and the tick is still due for the others.
//!
//! The current time is an argument ([`Scheduler::tick`]) so tests can step through ticks.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::SchedulerConfig;
use super::def::{Schedule, SourceDef};
use super::source::{self, Collected, SourceError, SourcePools};
use crate::app::Ctx;
use crate::db::jobs::NewJobRow;
use crate::domain::cron::{Decision, decide};
use crate::ids::new_id;

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Its fire time came.
    Cron,
    /// One run for ticks missed while no scheduler ran (`catch_up = "once"`).
    CatchUp,
    /// `sluice schedules run-now`.
    Manual,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Cron => "cron",
            Trigger::CatchUp => "catch_up",
            Trigger::Manual => "manual",
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The run's id (`srun_…`).
    pub run_id: String,
    /// `fired`, `empty`, `failed` or `skipped`.
    pub outcome: &'static str,
    /// The batch it created.
    pub batch_id: Option<String>,
    /// Jobs in that batch.
    pub jobs: usize,
    /// Why it failed, or what it set aside.
    pub error: Option<String>,
}

/// A failure to record a run at all (the database); the tick stays due and is retried.
#[derive(Debug, thiserror::Error)]
pub enum FireError {
    /// Postgres failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The run took longer than `[scheduler] run_timeout`.
    #[error("the run took longer than {0:?}; abandoned, it is retried on the next tick")]
    Timeout(std::time::Duration),
}

/// Fires schedules for one process.
#[derive(Debug)]
pub struct Scheduler {
    ctx: Arc<Ctx>,
    /// `[scheduler]` settings.
    pub config: SchedulerConfig,
    /// The folder schedules are read from.
    pub dir: PathBuf,
    pools: SourcePools,
}

impl Scheduler {
    /// A scheduler over `ctx`'s database and `[scheduler]` settings.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let config = ctx.config.scheduler.clone();
        Self {
            dir: config.dir.clone(),
            config,
            ctx,
            pools: SourcePools::default(),
        }
    }

    /// Fires every enabled schedule that is due at `now`. One schedule's failure is logged and
    /// does not stop the others. Returns what each fired or skipped run did.
    pub async fn tick(
        &self,
        schedules: &[Schedule],
        now: DateTime<Utc>,
    ) -> Vec<(String, RunSummary)> {
        let mut out = Vec::new();
        for s in schedules.iter().filter(|s| s.def.enabled) {
            match self.tick_one(s, now).await {
                Ok(Some(summary)) => {
                    if summary.outcome == "failed" {
                        tracing::warn!(schedule = %s.def.name, error = ?summary.error, "scheduled run failed; retried on the next tick");
                    }
                    out.push((s.def.name.clone(), summary));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(schedule = %s.def.name, error = %e, "could not check schedule; trying again next tick");
                }
            }
        }
        out
    }

    async fn tick_one(
        &self,
        s: &Schedule,
        now: DateTime<Utc>,
    ) -> Result<Option<RunSummary>, FireError> {
        let pool = &self.ctx.pool;
        let definition = serde_json::to_value(&s.def).unwrap_or(Value::Null);
        let first_seen = crate::db::schedules::upsert(
            pool,
            &s.def.name,
            &s.def.tenant,
            &s.def.schedule,
            &s.def.timezone,
            &definition,
            now,
        )
        .await?;
        let last = crate::db::schedules::last_fire(pool, &s.def.name).await?;
        let cursor = last.map_or(first_seen, |l| l.max(first_seen));
        let due = s.cron.due(cursor, now);
        let grace = chrono::Duration::from_std(self.config.grace).unwrap_or(chrono::Duration::MAX);
        match decide(due, now, grace, s.def.catch_up) {
            Decision::Wait => Ok(None),
            Decision::Fire(t) => {
                let missed =
                    due.is_some_and(|d| d.count > 1) || now.signed_duration_since(t) > grace;
                let trigger = if missed {
                    Trigger::CatchUp
                } else {
                    Trigger::Cron
                };
                self.fire(s, t, trigger, now).await
            }
            Decision::Skip(t) => {
                let missed = due.map_or(1, |d| d.count);
                let why =
                    format!("{missed} tick(s) missed while no scheduler ran; catch_up = \"skip\"");
                let mut tx = pool.begin().await?;
                let id = new_id("srun");
                let claimed = crate::db::schedules::claim_run(
                    &mut tx,
                    &id,
                    &s.def.name,
                    t,
                    "catch_up",
                    "skipped",
                    Some(&why),
                )
                .await?;
                tx.commit().await?;
                Ok(claimed.then_some(RunSummary {
                    run_id: id,
                    outcome: "skipped",
                    batch_id: None,
                    jobs: 0,
                    error: Some(why),
                }))
            }
        }
    }

    /// Runs `s` for `fire_time` now (`sluice schedules run-now`), whether or not it is enabled;
    /// recorded in the audit log as `actor`'s `schedule.run_now`, in the run's transaction.
    pub async fn run_now(
        &self,
        s: &Schedule,
        now: DateTime<Utc>,
        actor: &str,
    ) -> Result<Option<RunSummary>, FireError> {
        let definition = serde_json::to_value(&s.def).unwrap_or(Value::Null);
        crate::db::schedules::upsert(
            &self.ctx.pool,
            &s.def.name,
            &s.def.tenant,
            &s.def.schedule,
            &s.def.timezone,
            &definition,
            now,
        )
        .await?;
        self.fire_as(s, now, Trigger::Manual, now, Some(actor))
            .await
    }

    /// Fires the run of `fire_time` unless another scheduler did; bounded by `run_timeout`.
    pub async fn fire(
        &self,
        s: &Schedule,
        fire_time: DateTime<Utc>,
        trigger: Trigger,
        now: DateTime<Utc>,
    ) -> Result<Option<RunSummary>, FireError> {
        self.fire_as(s, fire_time, trigger, now, None).await
    }

    /// `fire`, with the audit log's actor of a run an operator asked for.
    async fn fire_as(
        &self,
        s: &Schedule,
        fire_time: DateTime<Utc>,
        trigger: Trigger,
        now: DateTime<Utc>,
        actor: Option<&str>,
    ) -> Result<Option<RunSummary>, FireError> {
        let limit = self.config.run_timeout;
        let summary =
            tokio::time::timeout(limit, self.fire_inner(s, fire_time, trigger, now, actor))
                .await
                .map_err(|_| FireError::Timeout(limit))??;
        if let Some(run) = &summary {
            let lag = Utc::now()
                .signed_duration_since(fire_time)
                .num_milliseconds()
                .max(0) as f64
                / 1000.0;
            if trigger != Trigger::Manual {
                metrics::gauge!("sluice_schedule_lag_seconds", "schedule" => s.def.name.clone())
                    .set(lag);
            }
            metrics::counter!("sluice_schedule_runs_total", "schedule" => s.def.name.clone(), "outcome" => run.outcome).increment(1);
        }
        Ok(summary)
    }

    async fn fire_inner(
        &self,
        s: &Schedule,
        fire_time: DateTime<Utc>,
        trigger: Trigger,
        now: DateTime<Utc>,
        actor: Option<&str>,
    ) -> Result<Option<RunSummary>, FireError> {
        let name = &s.def.name;
        let mut tx = self.ctx.pool.begin().await?;
        let watermark = crate::db::schedules::lock(&mut tx, name).await?;
        let last_run = match actor {
            Some(_) => crate::db::schedules::last_run_json(&mut tx, name).await?,
            None => None,
        };
        let run_id = new_id("srun");
        if !crate::db::schedules::claim_run(
            &mut tx,
            &run_id,
            name,
            fire_time,
            trigger.as_str(),
            "empty",
            None,
        )
        .await?
        {
            tx.rollback().await?;
            return Ok(None);
        }
        let failed = |error: String| RunSummary {
            run_id: run_id.clone(),
            outcome: "failed",
            batch_id: None,
            jobs: 0,
            error: Some(error),
        };
        let collected = if crate::db::schedules::tenant_exists(&mut tx, &s.def.tenant).await? {
            self.collect(&mut tx, s, watermark.as_deref()).await
        } else {
            Err(SourceError(format!(
                "tenant `{}` does not exist; create it with `sluice keys create --tenant {}`",
                s.def.tenant, s.def.tenant
            )))
        };
        let collected = match collected {
            Ok(c) => c,
            Err(SourceError(why)) => {
                let run = failed(why);
                crate::db::schedules::finish_run(
                    &mut tx,
                    &run_id,
                    run.outcome,
                    None,
                    0,
                    run.error.as_deref(),
                )
                .await?;
                audit_run(&mut tx, actor, name, last_run, &run).await?;
                tx.commit().await?;
                return Ok(Some(run));
            }
        };
        let (rows, mut quarantined, files) = self.prepare(s, collected.items, collected.files, now);
        quarantined.splice(0..0, collected.quarantined);
        let error =
            (!quarantined.is_empty()).then(|| format!("set aside: {}", quarantined.join("; ")));
        let mut batch_id = None;
        let mut inserted = Vec::new();
        if !rows.is_empty() {
            let id = new_id("batch");
            let metadata = json!({"schedule": name, "fire_time": fire_time, "run_id": run_id});
            crate::db::jobs::insert_batch(&mut tx, &id, &s.def.tenant, "schedule", &metadata)
                .await?;
            inserted = crate::db::jobs::insert_jobs(
                &mut tx,
                &s.def.tenant,
                Some(&id),
                &rows,
                self.ctx.config.worker.relay_grace,
            )
            .await?;
            batch_id = Some(id);
        }
        crate::db::schedules::take_files(&mut tx, name, &run_id, &files).await?;
        if matches!(s.def.source, SourceDef::Sql(_)) {
            crate::db::schedules::set_watermark(&mut tx, name, collected.watermark.as_deref())
                .await?;
        }
        let outcome = if batch_id.is_some() { "fired" } else { "empty" };
        let jobs = i32::try_from(rows.len()).unwrap_or(i32::MAX);
        crate::db::schedules::finish_run(
            &mut tx,
            &run_id,
            outcome,
            batch_id.as_deref(),
            jobs,
            error.as_deref(),
        )
        .await?;
        let run = RunSummary {
            run_id,
            outcome,
            batch_id,
            jobs: rows.len(),
            error,
        };
        audit_run(&mut tx, actor, name, last_run, &run).await?;
        tx.commit().await?;
        crate::submit::dispatch(&self.ctx, &s.def.tenant, &inserted).await;
        Ok(Some(run))
    }

    async fn collect(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        s: &Schedule,
        watermark: Option<&str>,
    ) -> Result<Collected, SourceError> {
        match &s.def.source {
            SourceDef::Jsonl(j) => {
                let candidates = source::jsonl_candidates(s, j)?;
                let taken = crate::db::schedules::taken_files(tx, &s.def.name, &candidates)
                    .await
                    .map_err(|e| SourceError(format!("database: {e}")))?;
                source::read_jsonl(&source::not_taken(candidates, &taken), &self.config).await
            }
            SourceDef::Sql(q) => source::read_sql(&self.pools, &self.config, s, q, watermark).await,
        }
    }

    /// Applies the schedule's defaults and validates every job like `POST /v1/jobs` does. A bad
    /// job sets its whole file aside (or its row, for SQL sources); the rest go ahead.
    fn prepare(
        &self,
        s: &Schedule,
        items: Vec<source::Item>,
        mut files: std::collections::BTreeMap<String, Option<String>>,
        now: DateTime<Utc>,
    ) -> (
        Vec<NewJobRow>,
        Vec<String>,
        std::collections::BTreeMap<String, Option<String>>,
    ) {
        let catalog = self.ctx.catalog();
        let mut rows: Vec<(Option<String>, NewJobRow)> = Vec::new();
        let mut quarantined = Vec::new();
        for item in items {
            if item
                .file
                .as_ref()
                .is_some_and(|f| files.get(f).is_some_and(Option::is_some))
            {
                continue;
            }
            let raw = with_defaults(s, item.raw);
            match crate::submit::prepare_one(&self.ctx, &s.def.tenant, raw, &catalog, now) {
                Ok(row) => rows.push((item.file, row)),
                Err(e) => {
                    let why = format!("{}: {}: {}", item.origin, e.field, e.message);
                    if let Some(f) = item.file {
                        files.insert(f, Some(why.clone()));
                    }
                    quarantined.push(why);
                }
            }
        }
        let rows = rows
            .into_iter()
            .filter(|(f, _)| {
                f.as_ref()
                    .is_none_or(|f| files.get(f).is_some_and(Option::is_none))
            })
            .map(|(_, r)| r)
            .collect();
        (rows, quarantined, files)
    }
}

/// Records a run an operator asked for (`actor`; none for timetabled runs) as
/// `schedule.run_now`: the schedule's previous run before, this run after.
async fn audit_run(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    actor: Option<&str>,
    name: &str,
    last_run: Option<Value>,
    run: &RunSummary,
) -> Result<(), sqlx::Error> {
    let Some(actor) = actor else {
        return Ok(());
    };
    crate::db::audit::record(
        tx,
        &crate::db::audit::Entry {
            actor,
            action: "schedule.run_now",
            target: &format!("schedule:{name}"),
            before: Some(json!({"last_run": last_run})),
            after: Some(json!({"run_id": run.run_id, "outcome": run.outcome,
                "batch_id": run.batch_id, "jobs": run.jobs, "error": run.error})),
        },
    )
    .await
}

/// Fills what a job leaves out from its schedule: model, route, deadline, webhook, and tags (the job's own win; `schedule` names the schedule).
fn with_defaults(s: &Schedule, mut raw: Value) -> Value {
    let Some(obj) = raw.as_object_mut() else {
        return raw;
    };
    let d = &s.def;
    let names_model =
        obj.contains_key("model") || obj.get("body").and_then(|b| b.get("model")).is_some();
    if let (Some(m), false) = (&d.model, names_model) {
        obj.insert("model".into(), json!(m));
    }
    if let (Some(r), false) = (&d.route, obj.contains_key("route")) {
        obj.insert("route".into(), json!(r));
    }
    // A duration counts from when the run happens (a late catch-up run gets its full time).
    if let (Some(dl), false) = (&d.deadline, obj.contains_key("deadline")) {
        obj.insert("deadline".into(), json!(dl));
    }
    if let (Some(w), false) = (&d.webhook_url, obj.contains_key("webhook_url")) {
        obj.insert("webhook_url".into(), json!(w));
    }
    let mut tags = d.tags.clone();
    tags.insert("schedule".into(), d.name.clone());
    if let Some(Value::Object(own)) = obj.get("tags") {
        for (k, v) in own {
            if let Some(v) = v.as_str() {
                tags.insert(k.clone(), v.to_string());
            }
        }
    }
    obj.insert("tags".into(), json!(tags));
    raw
}
