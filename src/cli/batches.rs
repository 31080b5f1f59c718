//! `sluice batches list`: a tenant's batches over the HTTP API — those created with
//! `POST /v1/batches`, with `POST /v1/jobs` or `sluice submit`, and by schedules — newest first,
//! in a table that fits the terminal or as JSON.
//!
//! It reads `GET /v1/batches` page by page (the OpenAI list every batch is shown through) and
//! filters as it goes: ids are time-ordered, so the first batch older than `--since` ends the
//! walk, and `--status` is matched on the status the API reports (a native batch's is derived
//! from its jobs, in one place on the server).

use clap::Args;
use serde_json::Value;

use super::ApiArgs;
use super::client::Api;

/// Statuses a batch can report.
const STATUSES: [&str; 8] = [
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
];

/// Batches asked for per page (the API's most).
const PAGE: u32 = 100;

/// Filters of `sluice batches list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only batches in this status (validating, in_progress, finalizing, completed, failed,
    /// expired, cancelling, cancelled).
    #[arg(long, value_parser = STATUSES)]
    pub status: Option<String>,
    /// Only batches created within this long, e.g. 24h.
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

/// Seconds since the epoch as a UTC time, or `-`.
fn time(v: &Value) -> String {
    v.as_i64()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M").to_string())
}

/// The tenant's batches matching `a`, newest first, at most `a.limit`; and whether more match.
async fn fetch(api: &Api, a: &ListArgs) -> anyhow::Result<(Vec<Value>, bool)> {
    let since = a
        .since
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        .map(|t| t.timestamp());
    let limit = a.limit as usize;
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/batches?limit={PAGE}");
        if let Some(id) = &after {
            path.push_str(&format!("&after={id}"));
        }
        let page = api.get_json(&path).await?;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        for b in data {
            if since.is_some_and(|t| b["created_at"].as_i64().is_some_and(|c| c < t)) {
                return Ok((rows, false));
            }
            if a.status
                .as_ref()
                .is_some_and(|st| b["status"] != st.as_str())
            {
                continue;
            }
            if rows.len() == limit {
                return Ok((rows, true));
            }
            rows.push(b);
        }
        after = page["last_id"].as_str().map(str::to_owned);
        if page["has_more"] != Value::Bool(true) || after.is_none() {
            return Ok((rows, false));
        }
    }
}

/// `sluice batches list`.
pub async fn list(a: &ListArgs) -> anyhow::Result<()> {
    if !(1..=1000).contains(&a.limit) {
        anyhow::bail!("--limit must be between 1 and 1000");
    }
    let api = Api::new(&a.api)?;
    let (rows, more) = fetch(&api, a).await?;
    let more_note = || {
        eprintln!(
            "showing the first {}; raise --limit or filter by --status or --since",
            a.limit
        )
    };
    if a.format == "json" {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        if more {
            more_note();
        }
        return Ok(());
    }
    let mut t = super::table::fitted();
    t.set_header([
        "id",
        "status",
        "source",
        "jobs",
        "succeeded",
        "failed",
        "cost $",
        "created (UTC)",
    ]);
    for b in &rows {
        t.add_row([
            s(&b["id"]),
            s(&b["status"]),
            s(&b["source"]),
            s(&b["request_counts"]["total"]),
            s(&b["request_counts"]["completed"]),
            s(&b["request_counts"]["failed"]),
            s(&b["cost_usd"]),
            time(&b["created_at"]),
        ]);
    }
    // Ids stay whole (to copy into `sluice status`); the other columns wrap.
    if let Some(id) = t.column_mut(0) {
        id.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
    }
    println!("{t}");
    if rows.is_empty() {
        eprintln!("no batches match; widen the filters");
    } else if more {
        more_note();
    }
    Ok(())
}
