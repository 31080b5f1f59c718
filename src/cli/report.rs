//! `sluice report costs`: spend from the cost views, as a table fitting the terminal, CSV or
//! JSON.

use std::time::Duration;

use clap::Subcommand;
use comfy_table::{ContentArrangement, Table};

use crate::config::Config;
use crate::db::costs::{CostLine, GROUPS};

/// `sluice report …`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Spend, tokens and savings against the unrouted baseline, grouped as asked.
    Costs {
        /// How far back, e.g. 24h, 7d, 30d.
        #[arg(long, default_value = "7d", value_parser = parse_since)]
        since: Duration,
        /// Group by these, comma-separated: tenant, model, provider, feature, route, day, month,
        /// user, workflow, prompt_version, schedule, status.
        #[arg(long, default_value = "tenant,model", value_delimiter = ',')]
        by: Vec<String>,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Output format.
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
        format: String,
    },
}

fn parse_since(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 24h or 7d: {e}"))
}

/// Runs a report command.
pub async fn run(config: &Config, command: ReportCommand) -> anyhow::Result<()> {
    match command {
        ReportCommand::Costs {
            since,
            by,
            tenant,
            format,
        } => {
            let by: Vec<&str> = by
                .iter()
                .map(|b| b.trim())
                .filter(|b| !b.is_empty())
                .collect();
            if let Some(bad) = by.iter().find(|b| !GROUPS.iter().any(|(n, _)| n == *b)) {
                let known: Vec<&str> = GROUPS.iter().map(|(n, _)| *n).collect();
                anyhow::bail!(
                    "--by: `{bad}` is not a grouping; use any of {}",
                    known.join(", ")
                );
            }
            let since = chrono::Duration::from_std(since)
                .ok()
                .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
                .ok_or_else(|| anyhow::anyhow!("--since is too far back; try 365d"))?;
            let pool = super::admin_pool(config).await?;
            let lines = crate::db::costs::report(&pool, since, &by, tenant.as_deref()).await?;
            print!("{}", render(&by, &lines, &format)?);
            Ok(())
        }
    }
}

const MEASURES: [&str; 7] = [
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "baseline_cost_usd",
    "saving_usd",
];

fn measures(l: &CostLine) -> [String; 7] {
    [
        l.requests.to_string(),
        l.input_tokens.to_string(),
        l.output_tokens.to_string(),
        l.cached_tokens.to_string(),
        l.cost_usd.round_dp(6).normalize().to_string(),
        l.baseline_cost_usd.round_dp(6).normalize().to_string(),
        l.saving_usd.round_dp(6).normalize().to_string(),
    ]
}

/// Renders a report in `format` (`table`, `csv` or `json`).
pub fn render(by: &[&str], lines: &[CostLine], format: &str) -> anyhow::Result<String> {
    let header: Vec<&str> = by.iter().copied().chain(MEASURES).collect();
    match format {
        "json" => {
            let rows: Vec<serde_json::Value> = lines
                .iter()
                .map(|l| {
                    let mut m = serde_json::Map::new();
                    for (k, v) in by.iter().zip(&l.group) {
                        m.insert((*k).to_string(), v.clone().into());
                    }
                    m.insert("requests".into(), l.requests.into());
                    m.insert("input_tokens".into(), l.input_tokens.into());
                    m.insert("output_tokens".into(), l.output_tokens.into());
                    m.insert("cached_tokens".into(), l.cached_tokens.into());
                    m.insert("cost_usd".into(), l.cost_usd.normalize().to_string().into());
                    m.insert(
                        "baseline_cost_usd".into(),
                        l.baseline_cost_usd.normalize().to_string().into(),
                    );
                    m.insert(
                        "saving_usd".into(),
                        l.saving_usd.normalize().to_string().into(),
                    );
                    serde_json::Value::Object(m)
                })
                .collect();
            Ok(format!("{}\n", serde_json::to_string_pretty(&rows)?))
        }
        "csv" => {
            let mut out = header.join(",") + "\n";
            for l in lines {
                let cells: Vec<String> = l
                    .group
                    .iter()
                    .cloned()
                    .chain(measures(l))
                    .map(|c| csv_cell(&c))
                    .collect();
                out.push_str(&cells.join(","));
                out.push('\n');
            }
            Ok(out)
        }
        _ => {
            let mut table = Table::new();
            table
                .load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_header(header);
            if let Some(w) = std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.parse::<u16>().ok())
            {
                table.set_width(w);
            }
            for l in lines {
                table.add_row(
                    l.group
                        .iter()
                        .cloned()
                        .chain(measures(l))
                        .collect::<Vec<_>>(),
                );
            }
            Ok(format!("{table}\n"))
        }
    }
}

fn csv_cell(c: &str) -> String {
    if c.contains([',', '"', '\n']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c.to_string()
    }
}
