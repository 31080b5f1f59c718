//! End-to-end tests of failure handling against real Postgres and RabbitMQ, with the app
//! in-process on port 0: dead letters, cancellation, deadlines, structured output and circuit
//! breakers. One file per feature under `tests/failures/`.

mod common;

#[path = "failures/breakers.rs"]
mod breakers;
#[path = "failures/cancel.rs"]
mod cancel;
#[path = "failures/cli.rs"]
mod cli;
#[path = "failures/dead_letters.rs"]
mod dead_letters;
#[path = "failures/deadlines_and_schemas.rs"]
mod deadlines_and_schemas;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{Client, api_only, job};
use serde_json::{Value, json};

/// Time limit of every wait.
const T: Duration = Duration::from_secs(30);

/// A job for `openai/gpt-4o-mini` alone (no fallback deployment), with `max_attempts` tries.
fn single(prompt: &str, max_attempts: u32) -> Value {
    let mut j = job(prompt);
    j["model"] = json!("openai/gpt-4o-mini");
    j["max_attempts"] = json!(max_attempts);
    j
}

/// Submits one job and returns its id.
async fn submit(c: &Client, body: &Value) -> String {
    let (status, resp) = c.post("/v1/jobs", body, None).await;
    assert_eq!(status, 200, "{resp}");
    resp["id"].as_str().unwrap().to_string()
}

/// One ledger row as the tests read it.
#[derive(Debug, sqlx::FromRow)]
struct Attempt {
    status: String,
    error_code: Option<String>,
    cost_usd: rust_decimal::Decimal,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
}

/// The ledger rows of `job_id`, oldest first.
async fn attempts(pool: &sqlx::PgPool, job_id: &str) -> Vec<Attempt> {
    sqlx::query_as(
        "SELECT status, error_code, cost_usd, started_at, finished_at FROM attempts
         WHERE job_id = $1 ORDER BY attempt",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await
    .unwrap()
}
