//! All SQL lives under this module. Writes that happen per job are batched: one statement
//! covers many jobs (`jsonb_to_recordset`), so throughput is bounded by Postgres, not round trips.

pub mod alerts;
pub mod audit;
pub mod batch_results;
pub mod breakers;
pub mod budget_settings;
pub mod budgets;
pub mod cache;
pub mod cancel;
pub mod costs;
pub mod dead_letters;
pub mod errors;
pub mod expiry;
pub mod files;
pub mod jobs;
pub mod keys;
pub mod maintenance;
pub mod metrics;
pub mod openai_batches;
pub mod prices;
pub mod provider_batches;
pub mod retention;
pub mod schedules;
pub mod submission;
pub mod tenants;
pub mod webhooks;

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::DatabaseConfig;

/// A database failure.
pub type DbError = sqlx::Error;

/// Connects to an existing database. A missing one is an error that says how to create it:
/// only the set-up commands (`sluice up`, `sluice migrate`) create a database, so a mistyped
/// `DATABASE_URL` never starts a server on a new, empty one. Every connection carries
/// `statement_timeout` and `lock_timeout`, so no statement can hang a loop.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    pool(config, options(config)?, config.max_connections).await
}

/// The small pool for heartbeats and lease renewals (`database.heartbeat_connections`): kept
/// apart from the main pool, so a main pool saturated by a stall cannot delay a heartbeat long
/// enough to get a live worker declared dead and its calls made twice.
pub async fn connect_heartbeat(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    pool(
        config,
        options(config)?,
        config.heartbeat_connections.max(1),
    )
    .await
}

fn options(config: &DatabaseConfig) -> anyhow::Result<PgConnectOptions> {
    let ms = |d: std::time::Duration| format!("{}ms", d.as_millis());
    Ok(PgConnectOptions::from_str(&config.url)
        .map_err(|e| {
            anyhow::anyhow!(
                "database.url `{}` is not a Postgres URL: {e}",
                redact(&config.url)
            )
        })?
        .options([
            ("statement_timeout", ms(config.statement_timeout)),
            ("lock_timeout", ms(config.lock_timeout)),
        ])
        .disable_statement_logging())
}

async fn pool(
    config: &DatabaseConfig,
    options: PgConnectOptions,
    size: u32,
) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(size)
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
        })
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
/// Runs on a connection of its own without the statement and lock timeouts: building an index
/// on a large table may rightly take longer than any request should.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?.detach();
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut conn)
        .await?;
    sqlx::query("SET lock_timeout = 0")
        .execute(&mut conn)
        .await?;
    sqlx::migrate!("./migrations").run(&mut conn).await?;
    conn.close().await?;
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
