//! `sluice jobs list` and `sluice status JOB_ID`: a tenant's jobs over the HTTP API, in tables
//! that fit the terminal.

use clap::Args;
use serde_json::Value;

use super::ApiArgs;
use super::client::Api;

/// Filters of `sluice jobs list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state (queued, running, succeeded, failed, …).
    #[arg(long)]
    pub status: Option<String>,
    /// Only this batch's jobs.
    #[arg(long)]
    pub batch: Option<String>,
    /// Only jobs created within this long, e.g. 24h.
    #[arg(long, value_parser = super::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Show at most this many (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `sluice jobs list`.
pub async fn list(a: &ListArgs) -> anyhow::Result<()> {
    if !(1..=1000).contains(&a.limit) {
        anyhow::bail!("--limit must be between 1 and 1000");
    }
    let api = Api::new(&a.api)?;
    let mut query = vec![format!("limit={}", a.limit)];
    if let Some(st) = &a.status {
        query.push(format!("status={st}"));
    }
    if let Some(b) = &a.batch {
        query.push(format!("batch_id={b}"));
    }
    let page = api
        .get_json(&format!("/v1/jobs?{}", query.join("&")))
        .await?;
    let since = a
        .since
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d));
    let rows: Vec<&Value> = page["data"]
        .as_array()
        .map(|d| d.iter().collect())
        .unwrap_or_default();
    let rows: Vec<&Value> = rows
        .into_iter()
        .filter(|j| {
            since.is_none_or(|t| {
                j["created_at"]
                    .as_str()
                    .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                    .is_some_and(|c| c >= t)
            })
        })
        .collect();
    if a.format == "json" {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut t = super::table::fitted();
    t.set_header([
        "id", "status", "model", "route", "batch", "cost $", "error", "created",
    ]);
    for j in &rows {
        t.add_row([
            s(&j["id"]),
            s(&j["status"]),
            s(&j["model"]),
            s(&j["route"]),
            s(&j["batch_id"]),
            s(&j["cost_usd"]),
            s(&j["error"]["code"]),
            s(&j["created_at"]),
        ]);
    }
    println!("{t}");
    if rows.is_empty() {
        eprintln!("no jobs match; widen the filters");
    } else if page["has_more"] == Value::Bool(true) {
        eprintln!(
            "showing the first {}; raise --limit or filter by --batch or --status",
            a.limit
        );
    }
    Ok(())
}

/// `sluice status JOB_ID`: one job's state, route, cost and error.
pub async fn status(args: &ApiArgs, job_id: &str) -> anyhow::Result<()> {
    let api = Api::new(args)?;
    let j = api.get_json(&format!("/v1/jobs/{job_id}")).await?;
    let mut t = super::table::fitted();
    for (k, v) in [
        ("job", &j["id"]),
        ("status", &j["status"]),
        ("model", &j["model"]),
        ("route", &j["route"]),
        ("deployment", &j["deployment"]),
        ("batch", &j["batch_id"]),
        ("attempts", &j["attempts"]),
        ("cost $", &j["cost_usd"]),
        ("error", &j["error"]),
        ("created", &j["created_at"]),
        ("finished", &j["finalized_at"]),
    ] {
        t.add_row([k.to_string(), s(v)]);
    }
    println!("{t}");
    Ok(())
}
