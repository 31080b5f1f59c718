//! `sluice keys create|list|revoke|rotate` and `sluice tenants list|create|disable`: the
//! operator's commands for keys and tenants, straight to Postgres, each change audited with the
//! actor `cli:<os user>`.

use std::time::Duration;

use clap::Subcommand;
use comfy_table::Table;

use crate::auth::Scope;
use crate::config::Config;
use crate::db::audit::cli_actor;
use crate::db::{keys, tenants};

/// `sluice keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key for a tenant (creating the tenant if new). Prints the key once.
    Create {
        #[arg(long)]
        tenant: String,
        /// A name to recognise the key by in `keys list`.
        #[arg(long, default_value = "")]
        name: String,
        /// What the key may do: submit (create and cancel work, read it), read, admin.
        #[arg(long, default_value = "submit,read,admin")]
        scopes: String,
        /// Stop working after this long, e.g. 90d.
        #[arg(long, value_parser = super::parse_duration)]
        expires_in: Option<Duration>,
        /// This key's own requests per minute, on top of its tenant's budgets (change it later
        /// with `sluice budgets set --key ID --rpm N`).
        #[arg(long, allow_negative_numbers = true)]
        rpm: Option<i64>,
        /// This key's own tokens per minute.
        #[arg(long, allow_negative_numbers = true)]
        tpm: Option<i64>,
    },
    /// List keys (never the keys themselves): id, name, scopes, limits, expiry, last use.
    List {
        #[arg(long)]
        tenant: Option<String>,
        /// Output format.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Revoke a key, given as itself (`sk-sluice-…`) or as its id from `keys list`. It stops
    /// working in every process within a second.
    Revoke { key_or_id: String },
    /// Issue a new key with the same tenant, name and scopes; the old one keeps working for the
    /// grace period, then stops.
    Rotate {
        key_or_id: String,
        /// How long the old key keeps working, e.g. 24h (0s: stop it now).
        #[arg(long, default_value = "24h", value_parser = super::parse_duration)]
        grace: Duration,
    },
}

/// `sluice tenants …`
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// List tenants with their state and number of working keys.
    List {
        /// Output format.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Create a tenant.
    Create { name: String },
    /// Disable a tenant: its keys stop working in every process within a second.
    Disable { name: String },
}

fn check_tenant(name: &str) -> anyhow::Result<()> {
    if !tenants::valid_tenant_name(name) {
        anyhow::bail!(
            "tenant `{name}` is not a valid name: use lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
        );
    }
    Ok(())
}

fn span(flag: &str, d: Duration) -> anyhow::Result<chrono::Duration> {
    chrono::Duration::from_std(d).map_err(|_| anyhow::anyhow!("{flag} is too long"))
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "-".into(),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

/// Runs a keys command.
pub async fn run_keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            tenant,
            name,
            scopes,
            expires_in,
            rpm,
            tpm,
        } => {
            check_tenant(&tenant)?;
            for (flag, v) in [("--rpm", rpm), ("--tpm", tpm)] {
                if v.is_some_and(|v| v <= 0) {
                    anyhow::bail!(
                        "{flag} must be a positive number (leave it out for no limit of its own)"
                    );
                }
            }
            let scopes =
                Scope::parse_list(&scopes).map_err(|m| anyhow::anyhow!("--scopes: {m}"))?;
            let expires_in = expires_in.map(|d| span("--expires-in", d)).transpose()?;
            let pool = super::admin_pool(config).await?;
            let new = keys::NewKey {
                tenant,
                name,
                scopes: scopes.iter().map(|s| s.as_str().to_string()).collect(),
                expires_in,
                rpm,
                tpm,
            };
            let created = keys::create(&pool, &new, &cli_actor()).await?;
            if created.tenant_created {
                eprintln!("created tenant `{}`", created.tenant);
            }
            eprintln!(
                "API key {} for tenant `{}` with scopes {} (shown once; store it now):",
                created.id,
                created.tenant,
                new.scopes.join(",")
            );
            println!("{}", created.key);
        }
        KeysCommand::List { tenant, format } => {
            let pool = super::admin_pool(config).await?;
            let rows = keys::list(&pool, tenant.as_deref()).await?;
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            let mut t = super::table::fitted();
            t.set_header([
                "id",
                "tenant",
                "name",
                "prefix",
                "scopes",
                "rpm",
                "tpm",
                "expires",
                "last used",
                "revoked",
            ]);
            for r in rows {
                t.add_row([
                    r.id,
                    r.tenant,
                    r.name,
                    format!("{}…", r.key_prefix),
                    r.scopes.join(","),
                    r.rpm.map_or_else(|| "-".into(), |v| v.to_string()),
                    r.tpm.map_or_else(|| "-".into(), |v| v.to_string()),
                    time(r.expires_at),
                    time(r.last_used_at),
                    time(r.revoked_at),
                ]);
            }
            println!("{t}");
        }
        KeysCommand::Revoke { key_or_id } => {
            let pool = super::admin_pool(config).await?;
            match keys::revoke(&pool, &key_or_id, &cli_actor()).await? {
                Some(row) => eprintln!(
                    "revoked key {} of tenant `{}`; it stops working everywhere within a second",
                    row.id, row.tenant
                ),
                None => anyhow::bail!(
                    "no key `{}`: give the key itself or its id from `sluice keys list`",
                    shown(&key_or_id)
                ),
            }
        }
        KeysCommand::Rotate { key_or_id, grace } => {
            let grace = span("--grace", grace)?;
            let pool = super::admin_pool(config).await?;
            match keys::rotate(&pool, &key_or_id, grace, &cli_actor()).await {
                Ok((new, old)) => {
                    eprintln!(
                        "new key {} for tenant `{}` (shown once; store it now); the old key {} works until {}:",
                        new.id,
                        new.tenant,
                        old.id,
                        time(old.revoked_at)
                    );
                    println!("{}", new.key);
                }
                Err(keys::RotateError::NotFound) => anyhow::bail!(
                    "no key `{}`: give the key itself or its id from `sluice keys list`",
                    shown(&key_or_id)
                ),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// A key as it may be echoed in a message: its id, or only the prefix of a secret.
fn shown(key_or_id: &str) -> String {
    if key_or_id.starts_with(tenants::KEY_PREFIX) {
        format!("{}…", key_or_id.chars().take(14).collect::<String>())
    } else {
        key_or_id.to_string()
    }
}

/// Runs a tenants command.
pub async fn run_tenants(config: &Config, command: TenantsCommand) -> anyhow::Result<()> {
    let pool = super::admin_pool(config).await?;
    match command {
        TenantsCommand::List { format } => {
            let rows = tenants::list(&pool).await?;
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            let mut t: Table = super::table::fitted();
            t.set_header(["name", "created", "disabled", "working keys"]);
            for r in rows {
                t.add_row([
                    r.name,
                    time(Some(r.created_at)),
                    time(r.disabled_at),
                    r.active_keys.to_string(),
                ]);
            }
            println!("{t}");
        }
        TenantsCommand::Create { name } => {
            check_tenant(&name)?;
            if !tenants::create(&pool, &name, &cli_actor()).await? {
                anyhow::bail!("tenant `{name}` already exists (see `sluice tenants list`)");
            }
            eprintln!(
                "created tenant `{name}`; give it a key with `sluice keys create --tenant {name}`"
            );
        }
        TenantsCommand::Disable { name } => {
            match tenants::disable(&pool, &name, &cli_actor()).await? {
                tenants::Disabled::Now => eprintln!(
                    "disabled tenant `{name}`; its keys stop working everywhere within a second"
                ),
                tenants::Disabled::Already => eprintln!("tenant `{name}` was already disabled"),
                tenants::Disabled::NoSuchTenant => {
                    anyhow::bail!("no tenant `{name}` (see `sluice tenants list`)")
                }
            }
        }
    }
    Ok(())
}
