//! `sluice dead-letters list|show|requeue|purge`: jobs that finally failed, read and changed in
//! Postgres directly (admin, every tenant). Nothing is ever deleted: purge only takes jobs off
//! the list.

use std::time::Duration;

use clap::{Args, Subcommand};
use comfy_table::Table;
use serde_json::{Value, json};

use crate::config::Config;
use crate::db::dead_letters::{self, DeadLetterFilter};
use crate::db::jobs::JobRow;

/// `sluice dead-letters …`
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List jobs that finally failed and were not purged, oldest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Output format.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Show at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Show one job's full history: its request, every error and every ledger row.
    Show {
        job_id: String,
        /// Output format.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Send dead letters round again: queued, with a fresh set of tries from their first
    /// deployment (their attempt count and history are kept).
    Requeue(RequeueArgs),
    /// Take dead letters off the list. The jobs, their history and their costs stay.
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Confirm; without it, only say how many would be purged.
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters to requeue.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["all", "ids"])))]
pub struct RequeueArgs {
    /// Every dead letter matching the filters.
    #[arg(long)]
    pub all: bool,
    /// These jobs (each must be a dead letter matching the filters).
    pub ids: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Filters shared by every dead-letter command.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only this tenant's.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only jobs that asked for this alias or model, or last used this deployment.
    #[arg(long)]
    pub model: Option<String>,
    /// Only jobs whose final error has this code (e.g. http_400, schema_validation_failed).
    #[arg(long)]
    pub code: Option<String>,
    /// Only jobs that failed within this long, e.g. 24h.
    #[arg(long, value_parser = super::parse_duration)]
    pub since: Option<Duration>,
}

impl FilterArgs {
    fn filter(&self, ids: Option<Vec<String>>) -> anyhow::Result<DeadLetterFilter> {
        let since = self
            .since
            .map(|d| -> anyhow::Result<_> {
                let too_long = || {
                    anyhow::anyhow!(
                        "--since {} reaches further back than dates go; use a duration like 30days",
                        humantime::format_duration(d)
                    )
                };
                let d = chrono::Duration::from_std(d).map_err(|_| too_long())?;
                chrono::Utc::now()
                    .checked_sub_signed(d)
                    .ok_or_else(too_long)
            })
            .transpose()?;
        Ok(DeadLetterFilter {
            tenant: self.tenant.clone(),
            model: self.model.clone(),
            code: self.code.clone(),
            since,
            ids,
        })
    }
}

/// Runs a dead-letters command.
pub async fn run(config: &Config, command: DeadLettersCommand) -> anyhow::Result<()> {
    let pool = super::admin_pool(config).await?;
    match command {
        DeadLettersCommand::List {
            filter,
            format,
            limit,
        } => {
            let rows = dead_letters::list(&pool, &filter.filter(None)?, None, limit).await?;
            if format == "json" {
                let list: Vec<Value> = rows.iter().map(summary).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_list(&rows);
                if rows.len() as i64 == limit {
                    eprintln!("showing the first {limit}; narrow the filters or raise --limit");
                }
            }
        }
        DeadLettersCommand::Show { job_id, format } => {
            let Some((job, attempts)) = dead_letters::history(&pool, &job_id).await? else {
                anyhow::bail!("no job `{job_id}`");
            };
            if format == "json" {
                let mut v = summary(&job);
                v["errors"] = job.errors.clone();
                v["attempts"] = attempts;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_history(&job, &attempts);
            }
        }
        DeadLettersCommand::Requeue(a) => {
            let ids = (!a.all).then_some(a.ids);
            let by = format!(
                "{} on the command line",
                std::env::var("USER").unwrap_or_else(|_| "an operator".into())
            );
            let done = dead_letters::requeue(&pool, &a.filter.filter(ids)?, &by).await?;
            audit_ids(&pool, "dead_letters.requeue", &done).await?;
            eprintln!(
                "requeued {} dead letter(s); workers pick them up within a second",
                done.len()
            );
            for id in done {
                println!("{id}");
            }
        }
        DeadLettersCommand::Purge { filter, yes } => {
            let filter = filter.filter(None)?;
            if !yes {
                // A dry run is a normal answer, not an error: exit 0.
                let n = dead_letters::count(&pool, &filter).await?;
                eprintln!(
                    "dry run: {n} dead letter(s) match; run again with --yes to purge them (the jobs and their history stay)"
                );
                return Ok(());
            }
            let done = dead_letters::purge(&pool, &filter).await?;
            audit_ids(&pool, "dead_letters.purge", &done).await?;
            eprintln!(
                "purged {} dead letter(s) from the list; the jobs and their history stay in `jobs`",
                done.len()
            );
        }
    }
    Ok(())
}

/// Records a dead-letter action on `ids` (skipped when none matched).
async fn audit_ids(pool: &sqlx::PgPool, action: &str, ids: &[String]) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let actor = crate::db::audit::cli_actor();
    let entry = crate::db::audit::Entry {
        actor: &actor,
        action,
        target: &format!("{} job(s)", ids.len()),
        before: None,
        after: Some(json!({"jobs": ids})),
    };
    crate::db::audit::record_alone(pool, &entry).await?;
    Ok(())
}

/// The fields of a dead letter worth showing.
fn summary(r: &JobRow) -> Value {
    json!({
        "id": r.id,
        "tenant": r.tenant,
        "batch_id": r.batch_id,
        "custom_id": r.custom_id,
        "model": r.model,
        "deployment": r.deployment,
        "status": r.status,
        "attempts": r.attempt,
        "error": r.error,
        "cost_usd": r.cost_usd.to_string(),
        "created_at": r.created_at,
        "failed_at": r.finalized_at,
        "dead_letter_purged_at": r.dead_letter_purged_at,
    })
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

fn print_list(rows: &[JobRow]) {
    let mut t = Table::new();
    t.set_header([
        "job",
        "tenant",
        "model",
        "deployment",
        "attempts",
        "code",
        "message",
        "failed at",
    ]);
    for r in rows {
        let e = r.error.clone().unwrap_or(Value::Null);
        t.add_row([
            r.id.clone(),
            r.tenant.clone(),
            r.model.clone(),
            r.deployment.clone().unwrap_or_else(|| "-".into()),
            r.attempt.to_string(),
            text(&e, "code"),
            clip(&text(&e, "message"), 60),
            r.finalized_at
                .map_or_else(|| "-".into(), |t| t.to_rfc3339()),
        ]);
    }
    println!("{t}");
    eprintln!("{} dead letter(s)", rows.len());
}

fn print_history(job: &JobRow, attempts: &Value) {
    println!(
        "{} ({}, tenant {}): {} after {} attempt(s), cost ${}{}",
        job.id,
        job.model,
        job.tenant,
        job.status,
        job.attempt,
        job.cost_usd,
        job.dead_letter_purged_at
            .map_or_else(String::new, |t| format!(
                ", purged from the dead letters at {t}"
            ))
    );
    let mut errors = Table::new();
    errors.set_header(["at", "attempt", "deployment", "code", "http", "message"]);
    for e in job.errors.as_array().into_iter().flatten() {
        errors.add_row([
            text(e, "at"),
            text(e, "attempt"),
            text(e, "deployment"),
            text(e, "code"),
            text(e, "http_status"),
            clip(&text(e, "message"), 100),
        ]);
    }
    println!("history:\n{errors}");
    let mut ledger = Table::new();
    ledger.set_header([
        "attempt",
        "provider",
        "model",
        "status",
        "code",
        "input",
        "output",
        "cost $",
        "latency ms",
        "started",
    ]);
    for a in attempts.as_array().into_iter().flatten() {
        ledger.add_row([
            text(a, "attempt"),
            text(a, "provider"),
            text(a, "model"),
            text(a, "status"),
            text(a, "error_code"),
            text(a, "input_tokens"),
            text(a, "output_tokens"),
            text(a, "cost_usd"),
            text(a, "latency_ms"),
            text(a, "started_at"),
        ]);
    }
    println!("ledger:\n{ledger}");
}
