//! `sluice schedules list|validate|next|run-now` and `sluice scheduler`.

use std::path::PathBuf;

use anyhow::Context;
use chrono::Utc;
use clap::Subcommand;
use comfy_table::Table;

use crate::config::Config;
use crate::scheduler::def::{self, Schedule};

/// `sluice schedules …`
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule: expression, zone, next fire time, last run and its outcome.
    List {
        /// Folder of schedule files (default: `[scheduler] dir`, `jobs`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Check every schedule file; problems print as `FILE: field: problem` (exit code 1).
    Validate {
        /// Folder of schedule files (default: `[scheduler] dir`, `jobs`).
        dir: Option<PathBuf>,
    },
    /// The next fire times of a schedule, one RFC 3339 time per line in its zone.
    Next {
        name: String,
        /// How many fire times.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
        count: u16,
        /// Start after this RFC 3339 time instead of now (to check a DST change ahead).
        #[arg(long)]
        after: Option<chrono::DateTime<chrono::FixedOffset>>,
        /// Folder of schedule files (default: `[scheduler] dir`, `jobs`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run a schedule now, once, whatever its timetable (recorded as a manual run, and in the
    /// audit log as the OS user).
    RunNow {
        name: String,
        /// Folder of schedule files (default: `[scheduler] dir`, `jobs`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs a schedules command.
pub async fn run(mut config: Config, command: SchedulesCommand) -> anyhow::Result<()> {
    match command {
        SchedulesCommand::Validate { dir } => validate(&config, dir),
        SchedulesCommand::Next {
            name,
            count,
            after,
            dir,
        } => {
            let s = find(&config, dir, &name)?;
            let after = after.map_or_else(Utc::now, |t| t.with_timezone(&Utc));
            for t in s.cron.upcoming(after, usize::from(count)) {
                println!("{}", t.to_rfc3339());
            }
            Ok(())
        }
        SchedulesCommand::List { dir } => list(&config, dir).await,
        SchedulesCommand::RunNow { name, dir } => {
            let s = find(&config, dir.clone(), &name)?;
            if let Some(d) = dir {
                config.scheduler.dir = d;
            }
            let ctx = crate::app::Ctx::connect(config).await?;
            let scheduler = crate::scheduler::fire::Scheduler::new(ctx);
            let run = scheduler
                .run_now(&s, Utc::now(), &crate::db::audit::cli_actor())
                .await
                .with_context(|| format!("running schedule `{name}`"))?
                .context("another run of this schedule took the same instant; try again")?;
            println!("run:     {}", run.run_id);
            println!("outcome: {}", run.outcome);
            println!("batch:   {}", run.batch_id.as_deref().unwrap_or("-"));
            println!("jobs:    {}", run.jobs);
            if let Some(e) = &run.error {
                println!("note:    {e}");
            }
            if run.outcome == "failed" {
                anyhow::bail!(
                    "the run failed: {}",
                    run.error.as_deref().unwrap_or("unknown reason")
                );
            }
            Ok(())
        }
    }
}

fn dir_of(config: &Config, dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| config.scheduler.dir.clone())
}

fn validate(config: &Config, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = dir_of(config, dir);
    if !dir.is_dir() {
        anyhow::bail!(
            "{} is not a folder; pass the folder of schedule files (sluice schedules validate DIR)",
            dir.display()
        );
    }
    let (ok, errors) = def::load_dir(&dir, &config.scheduler);
    for s in &ok {
        eprintln!("ok  {} ({})", s.file.display(), s.def.name);
    }
    for e in &errors {
        eprintln!("{e}");
    }
    if !errors.is_empty() {
        anyhow::bail!(
            "{} problem(s) in {}; fix them and run `sluice schedules validate` again",
            errors.len(),
            dir.display()
        );
    }
    eprintln!("{} schedule(s) valid", ok.len());
    Ok(())
}

fn find(config: &Config, dir: Option<PathBuf>, name: &str) -> anyhow::Result<Schedule> {
    let dir = dir_of(config, dir);
    let (ok, errors) = def::load_dir(&dir, &config.scheduler);
    if let Some(s) = ok.into_iter().find(|s| s.def.name == name) {
        return Ok(s);
    }
    for e in &errors {
        eprintln!("{e}");
    }
    anyhow::bail!(
        "no valid schedule named `{name}` in {}; see `sluice schedules list` (and `validate` for broken files)",
        dir.display()
    )
}

async fn list(config: &Config, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = dir_of(config, dir);
    let (schedules, errors) = def::load_dir(&dir, &config.scheduler);
    let pool = super::admin_pool(config).await?;
    let runs = crate::db::schedules::last_runs(&pool).await?;
    let now = Utc::now();
    let mut table = Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header([
        "name",
        "schedule",
        "zone",
        "next fire",
        "last run",
        "outcome",
    ]);
    for s in &schedules {
        let next = if s.def.enabled {
            s.cron
                .next_after(now)
                .map_or("never".to_string(), |t| t.to_rfc3339())
        } else {
            "disabled".to_string()
        };
        let last = runs.iter().find(|r| r.schedule == s.def.name);
        let outcome = last.map_or("-".to_string(), |r| match &r.error {
            Some(e) => format!("{} ({e})", r.outcome),
            None => format!("{} ({} jobs)", r.outcome, r.jobs),
        });
        table.add_row([
            s.def.name.clone(),
            s.def.schedule.clone(),
            s.def.timezone.clone(),
            next,
            last.map_or("-".to_string(), |r| {
                r.fire_time.with_timezone(&s.cron.zone()).to_rfc3339()
            }),
            outcome,
        ]);
    }
    println!("{table}");
    for e in &errors {
        eprintln!("{e}");
    }
    Ok(())
}
