//! `sluice audit [--since 7d] [--format table|json]`: who changed what, when, straight from
//! Postgres.

use std::time::Duration;

use crate::config::Config;

/// Prints the audit log since `since` ago.
pub async fn run(config: &Config, since: Duration, format: &str, limit: i64) -> anyhow::Result<()> {
    let since = chrono::Duration::from_std(since)
        .ok()
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        .ok_or_else(|| anyhow::anyhow!("--since is too long; try 30d"))?;
    let pool = super::admin_pool(config).await?;
    let rows = crate::db::audit::list(&pool, since, limit).await?;
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut t = super::table::fitted();
    t.set_header(["at", "actor", "action", "target", "before", "after"]);
    let json =
        |v: &Option<serde_json::Value>| v.as_ref().map_or_else(|| "-".into(), |v| v.to_string());
    for r in &rows {
        t.add_row([
            r.at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            r.actor.clone(),
            r.action.clone(),
            r.target.clone(),
            json(&r.before),
            json(&r.after),
        ]);
    }
    println!("{t}");
    if rows.is_empty() {
        eprintln!("no admin actions recorded in that period; widen it with --since 30d");
    } else if rows.len() as i64 == limit {
        eprintln!("showing the first {limit}; raise --limit or narrow --since");
    }
    Ok(())
}
