//! `sluice webhooks list | add | update | delete | test | replay | rotate-secret`: a tenant's
//! webhook endpoints,
//! read and changed in Postgres directly (admin, like `sluice keys`), with the same rules and
//! code as `/v1/webhook_endpoints`. Changes are recorded in the audit log as the OS user.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use comfy_table::Table;

use crate::config::Config;
use crate::db::audit::cli_actor;
use crate::db::webhooks as db;
use crate::webhooks::deliver::{Attempt, Deliverer};
use crate::webhooks::{EVENT_TYPES, is_event_type, sign};

/// `sluice webhooks …`
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List a tenant's endpoints.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Add an endpoint; prints its signing secret once.
    Add {
        url: String,
        #[arg(long)]
        tenant: String,
        /// Event types, comma-separated (default: all of them).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Change an endpoint: its URL, events or name, or disable / enable it.
    Update {
        id: String,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        url: Option<String>,
        /// Event types, comma-separated (replaces the list).
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        #[arg(long)]
        name: Option<String>,
        /// Stop sending to it: messages due meanwhile fail (send them later with `replay`).
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Send to it again, forgetting its failures.
        #[arg(long)]
        enable: bool,
    },
    /// Delete an endpoint; its pending messages fail.
    Delete {
        id: String,
        #[arg(long)]
        tenant: String,
    },
    /// Send a sample event to an endpoint now and print its answer.
    Test {
        id: String,
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "batch.completed")]
        event_type: String,
    },
    /// Send again the messages that finished (delivered or failed) in the last period, with
    /// their original `webhook-id`.
    Replay {
        #[arg(long)]
        tenant: String,
        /// How far back, e.g. 24h.
        #[arg(long, value_parser = super::parse_duration)]
        since: Duration,
        /// Only the ones that failed.
        #[arg(long)]
        failed_only: bool,
    },
    /// Give an endpoint (or `job-urls`: the secret that signs jobs' own `webhook_url`) a new
    /// signing secret; prints it once.
    RotateSecret {
        /// An endpoint id (`we_…`), or `job-urls`.
        id: String,
        #[arg(long)]
        tenant: String,
        /// Keep signing with the old secret too (two signatures) for 24 hours.
        #[arg(long)]
        keep_old_24h: bool,
    },
}

/// Runs a `webhooks` subcommand.
pub async fn run(config: &Config, command: WebhooksCommand) -> anyhow::Result<()> {
    let pool = super::admin_pool(config).await?;
    match command {
        WebhooksCommand::List { tenant } => {
            let rows = db::list_endpoints(&pool, &tenant, None, 1000).await?;
            if rows.is_empty() {
                eprintln!(
                    "tenant `{tenant}` has no webhook endpoints (add one with `sluice webhooks add URL --tenant {tenant}`)"
                );
                return Ok(());
            }
            let mut table = Table::new();
            table.set_header(["id", "url", "events", "status", "secret"]);
            for e in rows {
                let status = match &e.disabled_reason {
                    Some(r) if e.status == "disabled" => format!("disabled: {r}"),
                    _ => e.status.clone(),
                };
                table.add_row([
                    e.id.clone(),
                    e.url.clone(),
                    e.event_types.join(","),
                    status,
                    sign::hint(&e.secret),
                ]);
            }
            println!("{table}");
        }
        WebhooksCommand::Add {
            url,
            tenant,
            events,
            name,
        } => {
            check_url(&url)?;
            let events: Vec<String> = if events.is_empty() {
                EVENT_TYPES.iter().map(|s| s.to_string()).collect()
            } else {
                events
            };
            check_events(&events)?;
            let e = db::create_endpoint(&pool, &cli_actor(), &tenant, &name, &url, &events, &sign::new_secret())
                .await
                .with_context(|| format!("adding an endpoint for tenant `{tenant}` (does the tenant exist? `sluice keys create --tenant {tenant}` creates it)"))?;
            eprintln!("endpoint {} added; its signing secret (shown once):", e.id);
            println!("{}", e.secret);
        }
        WebhooksCommand::Update {
            id,
            tenant,
            url,
            events,
            name,
            disable,
            enable,
        } => {
            if let Some(u) = &url {
                check_url(u)?;
            }
            if let Some(e) = &events {
                if e.is_empty() {
                    bail!("--events must name at least one event type");
                }
                check_events(e)?;
            }
            let enabled = match (disable, enable) {
                (true, _) => Some(false),
                (_, true) => Some(true),
                _ => None,
            };
            if url.is_none() && events.is_none() && name.is_none() && enabled.is_none() {
                bail!("nothing to change: give --url, --events, --name, --disable or --enable");
            }
            let change = db::EndpointChange {
                name: name.as_deref(),
                url: url.as_deref(),
                event_types: events.as_deref(),
                enabled,
            };
            match db::update_endpoint(&pool, &cli_actor(), &tenant, &id, &change).await? {
                Some(e) => {
                    let status = match &e.disabled_reason {
                        Some(r) if e.status == "disabled" => format!("disabled: {r}"),
                        _ => e.status.clone(),
                    };
                    eprintln!(
                        "updated endpoint {}: {} [{}] {status}",
                        e.id,
                        e.url,
                        e.event_types.join(",")
                    );
                }
                None => bail!(
                    "tenant `{tenant}` has no webhook endpoint `{id}` (see `sluice webhooks list --tenant {tenant}`)"
                ),
            }
        }
        WebhooksCommand::Delete { id, tenant } => {
            if !db::delete_endpoint(&pool, &cli_actor(), &tenant, &id).await? {
                bail!(
                    "tenant `{tenant}` has no webhook endpoint `{id}` (see `sluice webhooks list --tenant {tenant}`)"
                );
            }
            eprintln!("deleted endpoint {id}; its pending messages will not be sent");
        }
        WebhooksCommand::Test {
            id,
            tenant,
            event_type,
        } => {
            if !is_event_type(&event_type) {
                bail!(
                    "unknown event type `{event_type}`; use one of {}",
                    EVENT_TYPES.join(",")
                );
            }
            if db::get_endpoint(&pool, &tenant, &id).await?.is_none() {
                bail!(
                    "tenant `{tenant}` has no webhook endpoint `{id}` (see `sluice webhooks list --tenant {tenant}`)"
                );
            }
            let d = Deliverer::new(pool, config.webhooks.clone(), crate::ids::new_id("cli"))?;
            match d.test(&tenant, &id, &event_type).await? {
                Attempt::Answered { status, .. } => println!("{id} answered {status}"),
                Attempt::Failed(why) | Attempt::Permanent(why) => {
                    bail!("the test delivery to {id} got no answer: {why}")
                }
            }
        }
        WebhooksCommand::Replay {
            tenant,
            since,
            failed_only,
        } => {
            let since = chrono::Duration::from_std(since)
                .ok()
                .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
                .context("--since is too far back")?;
            let n = db::replay(&pool, &cli_actor(), &tenant, since, failed_only).await?;
            println!("{n} messages queued for delivery again");
        }
        WebhooksCommand::RotateSecret {
            id,
            tenant,
            keep_old_24h,
        } => {
            let grace = keep_old_24h.then(|| chrono::Utc::now() + chrono::Duration::hours(24));
            let secret = sign::new_secret();
            if id == "job-urls" {
                db::rotate_tenant_secret(&pool, &cli_actor(), &tenant, &secret, grace)
                    .await
                    .with_context(|| format!("does tenant `{tenant}` exist?"))?;
            } else if db::rotate_endpoint_secret(&pool, &cli_actor(), &tenant, &id, &secret, grace)
                .await?
                .is_none()
            {
                bail!(
                    "tenant `{tenant}` has no webhook endpoint `{id}` (see `sluice webhooks list --tenant {tenant}`)"
                );
            }
            eprintln!("new signing secret for {id} (shown once):");
            println!("{secret}");
        }
    }
    Ok(())
}

/// Refuses anything but an absolute http(s) URL.
fn check_url(url: &str) -> anyhow::Result<()> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => bail!("`{url}` is not an http(s) URL such as https://example.com/hooks"),
    }
}

/// Refuses an unknown event type, naming it.
fn check_events(events: &[String]) -> anyhow::Result<()> {
    match events.iter().find(|e| !is_event_type(e)) {
        Some(bad) => bail!(
            "unknown event type `{bad}`; use some of {}",
            EVENT_TYPES.join(",")
        ),
        None => Ok(()),
    }
}
