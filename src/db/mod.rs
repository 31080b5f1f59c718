//! All SQL lives under this module. Writes that happen per job are batched: one statement
//! covers many jobs (`jsonb_to_recordset`), so throughput is bounded by Postgres, not round trips.

pub mod audit;
pub mod breakers;
pub mod budgets;
pub mod cache;
pub mod cancel;
pub mod dead_letters;
pub mod expiry;
pub mod jobs;
pub mod keys;
pub mod maintenance;
pub mod prices;
pub mod provider_batches;
pub mod retention;
pub mod tenants;

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::DatabaseConfig;

/// A database failure.
pub type DbError = sqlx::Error;

/// Connects, creating the database first if it does not exist yet.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(&config.url)
        .map_err(|e| {
            anyhow::anyhow!(
                "database.url `{}` is not a Postgres URL: {e}",
                redact(&config.url)
            )
        })?
        .disable_statement_logging();
    ensure_database(&options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot connect to Postgres at {}: {e}", redact(&config.url))
        })?;
    Ok(pool)
}

async fn ensure_database(options: &PgConnectOptions) -> anyhow::Result<()> {
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
