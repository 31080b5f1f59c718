//! All SQL lives under this module. Writes that happen per job are batched: one statement
//! covers many jobs (`jsonb_to_recordset`), so throughput is bounded by Postgres, not round trips.

pub mod breakers;
pub mod budgets;
pub mod cache;
pub mod cancel;
pub mod dead_letters;
pub mod expiry;
pub mod jobs;
pub mod maintenance;
pub mod prices;
pub mod provider_batches;
pub mod submission;
pub mod tenants;

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::DatabaseConfig;

/// A database failure.
pub type DbError = sqlx::Error;

fn options(config: &DatabaseConfig) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(&config.url)
        .map_err(|e| {
            anyhow::anyhow!(
                "database.url `{}` is not a Postgres URL: {e}",
                redact(&config.url)
            )
        })?
        .disable_statement_logging())
}

/// Connects to an existing database. A missing one is an error that says how to create it:
/// only the set-up commands (`sluice up`, `sluice migrate`) create a database, so a mistyped
/// `DATABASE_URL` never starts a server on a new, empty one.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let options = options(config)?;
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await
        .map_err(|e| {
            let missing = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "3D000");
            if missing {
                anyhow::anyhow!(
                    "the database at {} does not exist: check DATABASE_URL (database.url) for a typo, \
                     or create it with `sluice migrate`",
                    redact(&config.url)
                )
            } else {
                anyhow::anyhow!("cannot connect to Postgres at {}: {e}", redact(&config.url))
            }
        })?;
    Ok(pool)
}

/// Creates the database named in `config` if it does not exist yet, saying so in one log
/// line; for the set-up commands (`sluice up`, `sluice migrate`) and test harnesses.
pub async fn create_if_missing(config: &DatabaseConfig) -> anyhow::Result<()> {
    let options = options(config)?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    if options.connect().await.is_ok() {
        return Ok(());
    }
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::query(&sql).execute(&mut admin).await {
            // Another process may have created it at the same moment.
            let duplicate = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04");
            if !duplicate {
                return Err(e.into());
            }
        } else {
            tracing::info!(database = %name, url = %redact(&config.url), "created database `{name}`: it did not exist");
        }
    }
    admin.close().await?;
    Ok(())
}

/// Applies pending migrations (serialised across processes by sqlx's advisory lock).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}

/// Hides a password in a connection URL.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Whether the database answers (for `/readyz`).
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}
