//! `sluice report costs`: spend from the cost views, as a table, CSV or JSON.

use clap::Subcommand;

use crate::config::Config;

/// `sluice report …`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {}

/// Runs a report command.
pub async fn run(_config: &Config, command: ReportCommand) -> anyhow::Result<()> {
    match command {}
}
