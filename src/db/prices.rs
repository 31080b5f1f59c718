//! The `prices` table: seeded from the built-in list and config, read into a `PriceBook`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use super::DbError;
use crate::domain::pricing::{Price, PriceBook};

#[derive(Serialize)]
struct SeedRow<'a> {
    provider: &'a str,
    model: &'a str,
    effective_from: DateTime<Utc>,
    input: Decimal,
    output: Decimal,
    cached_input: Option<Decimal>,
    batch_input: Option<Decimal>,
    batch_output: Option<Decimal>,
    max_input_tokens: Option<i64>,
    max_output_tokens: Option<i64>,
    batch_api: bool,
}

/// Upserts the seed rows (one statement for all of them).
pub async fn seed(pool: &PgPool, rows: &[Price]) -> Result<u64, DbError> {
    let rows: Vec<SeedRow> = rows
        .iter()
        .map(|p| SeedRow {
            provider: &p.provider,
            model: &p.model,
            effective_from: p.effective_from,
            input: p.input,
            output: p.output,
            cached_input: p.cached_input,
            batch_input: p.batch_input,
            batch_output: p.batch_output,
            max_input_tokens: p.max_input_tokens,
            max_output_tokens: p.max_output_tokens,
            batch_api: p.batch_api,
        })
        .collect();
    let done = sqlx::query(
        "INSERT INTO prices (provider, model, effective_from, input_usd_per_mtok, output_usd_per_mtok,
            cached_input_usd_per_mtok, batch_input_usd_per_mtok, batch_output_usd_per_mtok,
            max_input_tokens, max_output_tokens, batch_api, source)
         SELECT provider, model, effective_from, input, output, cached_input, batch_input, batch_output,
            max_input_tokens, max_output_tokens, batch_api, 'seed'
         FROM jsonb_to_recordset($1) AS x(provider text, model text, effective_from timestamptz,
            input numeric, output numeric, cached_input numeric, batch_input numeric, batch_output numeric,
            max_input_tokens bigint, max_output_tokens bigint, batch_api boolean)
         ON CONFLICT (provider, model, effective_from) DO UPDATE SET
            input_usd_per_mtok = excluded.input_usd_per_mtok,
            output_usd_per_mtok = excluded.output_usd_per_mtok,
            cached_input_usd_per_mtok = excluded.cached_input_usd_per_mtok,
            batch_input_usd_per_mtok = excluded.batch_input_usd_per_mtok,
            batch_output_usd_per_mtok = excluded.batch_output_usd_per_mtok,
            max_input_tokens = excluded.max_input_tokens,
            max_output_tokens = excluded.max_output_tokens,
            batch_api = excluded.batch_api
         WHERE prices.source = 'seed'",
    )
    .bind(sqlx::types::Json(&rows))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

#[derive(sqlx::FromRow)]
struct PriceRow {
    provider: String,
    model: String,
    effective_from: DateTime<Utc>,
    input_usd_per_mtok: Decimal,
    output_usd_per_mtok: Decimal,
    cached_input_usd_per_mtok: Option<Decimal>,
    batch_input_usd_per_mtok: Option<Decimal>,
    batch_output_usd_per_mtok: Option<Decimal>,
    max_input_tokens: Option<i64>,
    max_output_tokens: Option<i64>,
    batch_api: bool,
}

/// Every price row, as a book.
pub async fn load(pool: &PgPool) -> Result<PriceBook, DbError> {
    let rows: Vec<PriceRow> = sqlx::query_as("SELECT * FROM prices")
        .fetch_all(pool)
        .await?;
    Ok(PriceBook::new(rows.into_iter().map(|r| Price {
        provider: r.provider,
        model: r.model,
        effective_from: r.effective_from,
        input: r.input_usd_per_mtok,
        output: r.output_usd_per_mtok,
        cached_input: r.cached_input_usd_per_mtok,
        batch_input: r.batch_input_usd_per_mtok,
        batch_output: r.batch_output_usd_per_mtok,
        max_input_tokens: r.max_input_tokens,
        max_output_tokens: r.max_output_tokens,
        batch_api: r.batch_api,
    })))
}
