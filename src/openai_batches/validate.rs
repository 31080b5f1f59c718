//! `validating`: every line of a batch's input file is checked before anything is enqueued or
//! spent. A first pass only checks (keeping custom ids, not jobs); if any line is bad the batch
//! fails with `errors.data` naming each line. Otherwise a second pass inserts the jobs, in
//! slices, in the same transaction that moves the batch to `in_progress`; the real-time ones
//! are published after the commit (the relay publishes any a crash left behind).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::lines::FileLines;
use crate::app::Ctx;
use crate::db::jobs::{Inserted, NewJobRow};
use crate::db::openai_batches::{self as db, ToValidate};
use crate::domain::catalog::Catalog;
use crate::domain::openai_batch::LineError;

/// Errors named in `errors.data` at most; the message of the last one says how many more.
const MAX_LINE_ERRORS: usize = 1000;
/// Jobs inserted per statement.
const INSERT_SLICE: usize = 1000;

/// Validates one waiting batch, if any. Returns whether there was one.
pub async fn validate_one(ctx: &Ctx) -> Result<bool, sqlx::Error> {
    let mut tx = ctx.pool.begin().await?;
    let Some(batch) = db::lock_validating(&mut tx).await? else {
        return Ok(false);
    };
    let now = Utc::now();
    let errors = match check(ctx, &batch, now).await? {
        Ok(0) => vec![whole_file("empty_file", "the input file has no requests")],
        Ok(_) => Vec::new(),
        Err(errors) => errors,
    };
    if !errors.is_empty() {
        tracing::info!(batch_id = %batch.id, errors = errors.len(), "batch input refused");
        db::mark_failed(&mut *tx, &batch.id, &errors_object(&errors)).await?;
        tx.commit().await?;
        return Ok(true);
    }
    let inserted = match enqueue(ctx, &mut tx, &batch, now).await {
        Ok(i) => i,
        Err(e) if !super::is_transient(&e) => {
            // A fact about the data (a constraint, a value Postgres refuses): retrying would
            // never end. Quarantine the batch with the reason; other batches proceed.
            drop(tx);
            tracing::warn!(batch_id = %batch.id, error = %e, "batch jobs could not be stored; failing the batch");
            let err = whole_file(
                "invalid_request",
                &format!("the batch's jobs could not be stored: {e}"),
            );
            db::mark_failed(&ctx.pool, &batch.id, &errors_object(&[err])).await?;
            return Ok(true);
        }
        Err(e) => return Err(e),
    };
    if !db::mark_in_progress(&mut tx, &batch.id).await? {
        return Ok(true);
    }
    tx.commit().await?;
    tracing::info!(batch_id = %batch.id, jobs = inserted.len(), "batch validated and enqueued");
    for slice in inserted.chunks(INSERT_SLICE) {
        crate::submit::dispatch(ctx, &batch.tenant, slice).await;
    }
    Ok(true)
}

fn whole_file(code: &str, message: &str) -> LineError {
    LineError {
        code: code.into(),
        message: message.into(),
        param: None,
        line: None,
    }
}

/// OpenAI's `errors` object.
fn errors_object(errors: &[LineError]) -> Value {
    json!({"object": "list", "data": errors})
}

/// Longest line accepted: a request at the size limit plus room for the line's envelope.
fn max_line(ctx: &Ctx) -> usize {
    ctx.config
        .limits
        .max_request_bytes
        .saturating_add(64 * 1024)
}

/// First pass: checks every line. `Ok(n)` with the number of requests, or the errors found.
async fn check(
    ctx: &Ctx,
    batch: &ToValidate,
    now: DateTime<Utc>,
) -> Result<Result<u64, Vec<LineError>>, sqlx::Error> {
    let Some(file_id) = batch.input_file_id.as_deref() else {
        return Ok(Err(vec![whole_file(
            "invalid_request",
            "the batch has no input file",
        )]));
    };
    if crate::db::files::get(&ctx.pool, &batch.tenant, file_id)
        .await?
        .is_none()
    {
        return Ok(Err(vec![whole_file(
            "invalid_request",
            &format!("the input file `{file_id}` was deleted"),
        )]));
    }
    let catalog = ctx.catalog();
    let mut lines = FileLines::new(&ctx.pool, file_id, max_line(ctx));
    let mut seen: HashSet<String> = HashSet::new();
    let mut errors = Vec::new();
    let mut bad = 0usize;
    let mut count = 0u64;
    while let Some((n, line)) = lines.next_line().await? {
        match check_line(ctx, batch, &catalog, n, line, now) {
            Ok(None) => {}
            Ok(Some(row)) => {
                count += 1;
                if let Some(c) = row.custom_id
                    && !seen.insert(c.clone())
                {
                    bad += 1;
                    errors.push(LineError::at(
                        n,
                        "duplicate_custom_id",
                        format!(
                            "custom_id `{c}` appears on an earlier line; each request needs its own"
                        ),
                        Some("custom_id"),
                    ));
                }
            }
            Err(e) => {
                bad += 1;
                errors.push(e);
            }
        }
        errors.truncate(MAX_LINE_ERRORS);
    }
    if bad == 0 {
        return Ok(Ok(count));
    }
    let unlisted = bad.saturating_sub(errors.len());
    if unlisted > 0
        && let Some(last) = errors.last_mut()
    {
        last.message = format!(
            "{} (and {unlisted} more bad lines not listed)",
            last.message
        );
    }
    Ok(Err(errors))
}

/// Checks one line; `Ok(None)` for a blank line.
fn check_line(
    ctx: &Ctx,
    batch: &ToValidate,
    catalog: &Catalog,
    n: u64,
    line: Result<Vec<u8>, usize>,
    now: DateTime<Utc>,
) -> Result<Option<NewJobRow>, LineError> {
    let bytes = line.map_err(|len| {
        LineError::at(
            n,
            "request_too_large",
            format!(
                "the line is {len} bytes; the limit is {} bytes",
                max_line(ctx)
            ),
            None,
        )
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let mut value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        LineError::at(
            n,
            "invalid_json_line",
            format!("the line is not valid JSON: {e}"),
            None,
        )
    })?;
    // Postgres refuses NUL in jsonb text: name the line now rather than fail the insert later.
    if bytes.windows(6).any(|w| w == b"\\u0000") {
        return Err(LineError::at(
            n,
            "invalid_request",
            "the line contains a NUL character (\\u0000), which cannot be stored",
            None,
        ));
    }
    let obj = value.as_object_mut().ok_or_else(|| {
        LineError::at(
            n,
            "invalid_json_line",
            "the line must be a JSON object",
            None,
        )
    })?;
    for field in ["custom_id", "method", "url", "body"] {
        if !obj.contains_key(field) {
            return Err(LineError::at(
                n,
                "missing_required_parameter",
                format!("`{field}` is required on every line"),
                Some(field),
            ));
        }
    }
    let endpoint = batch.endpoint.as_deref().unwrap_or("/v1/chat/completions");
    if obj.get("url").and_then(Value::as_str) != Some(endpoint) {
        return Err(LineError::at(
            n,
            "mismatched_endpoint",
            format!("`url` must be the batch's endpoint `{endpoint}`"),
            Some("url"),
        ));
    }
    if let Some(deadline) = batch.expires_at {
        obj.insert("deadline".into(), json!(deadline.to_rfc3339()));
    }
    crate::submit::prepare_one(ctx, &batch.tenant, value, catalog, now)
        .map(|mut row| {
            row.api_key_id = batch.api_key_id.clone();
            Some(row)
        })
        .map_err(|e| LineError::at(n, "invalid_request", e.to_string(), Some(&e.field)))
}

/// Second pass: inserts every line's job in `tx`, in slices.
async fn enqueue(
    ctx: &Ctx,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &ToValidate,
    now: DateTime<Utc>,
) -> Result<Vec<Inserted>, sqlx::Error> {
    let file_id = batch.input_file_id.as_deref().unwrap_or_default();
    let catalog = ctx.catalog();
    let mut lines = FileLines::new(&ctx.pool, file_id, max_line(ctx));
    let mut inserted = Vec::new();
    let mut slice = Vec::with_capacity(INSERT_SLICE);
    while let Some((n, line)) = lines.next_line().await? {
        // The first pass accepted every line; one refused now (the catalog changed meanwhile)
        // is a deterministic failure of the batch.
        match check_line(ctx, batch, &catalog, n, line, now) {
            Ok(Some(row)) => slice.push(row),
            Ok(None) => {}
            Err(e) => {
                return Err(sqlx::Error::Decode(
                    format!("line {n} became invalid: {}", e.message).into(),
                ));
            }
        }
        if slice.len() == INSERT_SLICE {
            inserted.extend(insert(ctx, tx, batch, &slice).await?);
            slice.clear();
        }
    }
    if !slice.is_empty() {
        inserted.extend(insert(ctx, tx, batch, &slice).await?);
    }
    Ok(inserted)
}

async fn insert(
    ctx: &Ctx,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &ToValidate,
    rows: &[NewJobRow],
) -> Result<Vec<Inserted>, sqlx::Error> {
    crate::db::jobs::insert_jobs(
        tx,
        &batch.tenant,
        Some(&batch.id),
        rows,
        ctx.config.worker.relay_grace,
    )
    .await
}
