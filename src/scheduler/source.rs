//! Reading a run's jobs from its source: JSONL files (each taken once), or the rows of a SQL
//! query filling a prompt template, past a watermark.
//!
//! A source that cannot be read (a missing env var, a database that does not answer, an
//! unreadable folder) fails the run, which is recorded and tried again on the next tick: nothing
//! was taken, so nothing is lost. Bad data (a line that is not JSON, a row too large or with a
//! NULL key) cannot be fixed by retrying: it is set aside with its reason and the rest proceed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use super::SchedulerConfig;
use super::def::{JsonlSource, Schedule, SqlSource};

/// Why a source could not be read this time (the run is recorded as failed and retried).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// One job read from a source, before validation.
#[derive(Debug, Clone)]
pub struct Item {
    /// Where it came from (`inbox/a.jsonl:3`, `row id=42`), for error messages.
    pub origin: String,
    /// The file it came from, if any (a bad line sets the whole file aside).
    pub file: Option<String>,
    /// The raw job, in `POST /v1/jobs` shape.
    pub raw: Value,
}

/// What a run read.
#[derive(Debug, Default)]
pub struct Collected {
    /// Jobs to validate and insert.
    pub items: Vec<Item>,
    /// Files taken by this run (path → why it was set aside, if it was).
    pub files: BTreeMap<String, Option<String>>,
    /// The watermark to store once the run commits.
    pub watermark: Option<String>,
    /// Rows or lines set aside, with their reasons.
    pub quarantined: Vec<String>,
}

/// Files matching a JSONL source's path, in name order.
pub fn jsonl_candidates(
    schedule: &Schedule,
    src: &JsonlSource,
) -> Result<Vec<String>, SourceError> {
    let pattern = resolve(schedule.base_dir(), &src.path);
    let paths = glob::glob(&pattern.to_string_lossy())
        .map_err(|e| SourceError(format!("source.jsonl.path: {e}")))?;
    let mut out = Vec::new();
    for p in paths {
        let p = p.map_err(|e| SourceError(format!("cannot read {}: {e}", e.path().display())))?;
        if p.is_file() {
            out.push(p.to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Reads the files not taken yet, up to `max_jobs` jobs (further files wait for the next run).
pub async fn read_jsonl(
    files: &[String],
    config: &SchedulerConfig,
) -> Result<Collected, SourceError> {
    let mut out = Collected::default();
    for path in files {
        if out.items.len() >= config.max_jobs_per_run {
            break;
        }
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| SourceError(format!("cannot read {path}: {e}")))?;
        if meta.len() > config.max_file_bytes {
            let why = format!(
                "{} bytes; a scheduled file is at most {} bytes ([scheduler] max_file_bytes)",
                meta.len(),
                config.max_file_bytes
            );
            out.quarantined.push(format!("{path}: {why}"));
            out.files.insert(path.clone(), Some(why));
            continue;
        }
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| SourceError(format!("cannot read {path}: {e}")))?;
        match parse_lines(path, &bytes) {
            Ok(items)
                if out.items.len() + items.len() > config.max_jobs_per_run
                    && !out.items.is_empty() =>
            {
                break;
            }
            Ok(items) => {
                out.items.extend(items);
                out.files.insert(path.clone(), None);
            }
            Err(why) => {
                out.quarantined.push(format!("{path}: {why}"));
                out.files.insert(path.clone(), Some(why));
            }
        }
    }
    Ok(out)
}

/// Parses one file's lines as JSON objects; the first bad line sets the file aside.
fn parse_lines(path: &str, bytes: &[u8]) -> Result<Vec<Item>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.contains('\0') || line.contains("\\u0000") {
            return Err(format!(
                "line {n}: contains a NUL character, which jobs cannot hold"
            ));
        }
        let raw: Value =
            serde_json::from_str(line).map_err(|e| format!("line {n}: not JSON: {e}"))?;
        if !raw.is_object() {
            return Err(format!("line {n}: not a JSON object"));
        }
        items.push(Item {
            origin: format!("{path}:{n}"),
            file: Some(path.to_string()),
            raw,
        });
    }
    Ok(items)
}

/// Pools to the databases SQL sources read, opened on first use and kept.
#[derive(Debug, Default)]
pub struct SourcePools {
    pools: tokio::sync::Mutex<HashMap<String, PgPool>>,
}

impl SourcePools {
    async fn get(&self, config: &SchedulerConfig, name: &str) -> Result<PgPool, SourceError> {
        let mut pools = self.pools.lock().await;
        if let Some(p) = pools.get(name) {
            return Ok(p.clone());
        }
        let db = config.databases.get(name).ok_or_else(|| {
            SourceError(format!("database `{name}` is not in [scheduler.databases]"))
        })?;
        let url = std::env::var(&db.url_env).map_err(|_| {
            SourceError(format!(
                "environment variable {} (the URL of database `{name}`) is not set",
                db.url_env
            ))
        })?;
        let options = PgConnectOptions::from_str(&url)
            .map_err(|e| SourceError(format!("{} is not a Postgres URL: {e}", db.url_env)))?
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        pools.insert(name.to_string(), pool.clone());
        Ok(pool)
    }
}

/// Reads the rows past `watermark` (all rows without one), read-only and under a time limit.
pub async fn read_sql(
    pools: &SourcePools,
    config: &SchedulerConfig,
    schedule: &Schedule,
    src: &SqlSource,
    watermark: Option<&str>,
) -> Result<Collected, SourceError> {
    let pool = pools.get(config, &src.database).await?;
    let limit = src
        .max_rows
        .map(|n| n as usize)
        .unwrap_or(config.max_jobs_per_run)
        .min(config.max_jobs_per_run);
    let sql = build_query(src, watermark, limit, config.max_row_bytes);
    let failed = |e: sqlx::Error| SourceError(format!("database `{}`: {e}", src.database));
    let mut tx = pool.begin().await.map_err(failed)?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    let ms = config.query_timeout.as_millis().min(i32::MAX as u128);
    sqlx::query(&format!("SET LOCAL statement_timeout = {ms}"))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    sqlx::query("SET LOCAL standard_conforming_strings = on")
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    let rows: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(&sql)
        .fetch_all(&mut *tx)
        .await
        .map_err(failed)?;
    let _ = tx.rollback().await;
    let rows = trim_split_watermark(rows, limit, src.watermark.is_some())
        .map_err(|e| SourceError(format!("database `{}`: {e}", src.database)))?;
    let mut out = Collected {
        watermark: watermark.map(str::to_owned),
        ..Default::default()
    };
    for (json, key, mark) in rows {
        if let Some(m) = mark {
            out.watermark = Some(m);
        }
        let origin = format!("row {}={}", src.key, key.as_deref().unwrap_or("NULL"));
        let Some(key) = key else {
            out.quarantined
                .push(format!("{origin}: the key column is NULL"));
            continue;
        };
        let Some(json) = json else {
            out.quarantined.push(format!(
                "{origin}: larger than {} bytes ([scheduler] max_row_bytes)",
                config.max_row_bytes
            ));
            continue;
        };
        let row: Map<String, Value> = match serde_json::from_str(&json) {
            Ok(Value::Object(m)) => m,
            _ => {
                out.quarantined.push(format!("{origin}: not a row"));
                continue;
            }
        };
        let prompt = fill(&src.template, &row).map_err(SourceError)?;
        let system = src
            .system
            .as_deref()
            .map(|s| fill(s, &row))
            .transpose()
            .map_err(SourceError)?;
        if prompt.contains('\0') || system.as_deref().is_some_and(|s| s.contains('\0')) {
            out.quarantined
                .push(format!("{origin}: contains a NUL character"));
            continue;
        }
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        out.items.push(Item {
            origin: format!("{} {origin}", schedule.def.name),
            file: None,
            raw: json!({"custom_id": key, "body": {"messages": messages}}),
        });
    }
    Ok(out)
}

/// The wrapped query: each row as JSON (NULL when too large), its key and watermark as text.
fn build_query(src: &SqlSource, watermark: Option<&str>, limit: usize, max_row: usize) -> String {
    let key = quote_ident(&src.key);
    let inner = src.query.trim().trim_end_matches(';');
    let (mark, filter, order) = match &src.watermark {
        Some(w) => {
            let w = quote_ident(w);
            let filter = match watermark {
                Some(v) => format!("WHERE q.{w} > {}", quote_literal(v)),
                None => format!("WHERE q.{w} IS NOT NULL"),
            };
            (format!("q.{w}::text"), filter, format!("q.{w}, q.{key}"))
        }
        None => ("NULL::text".to_string(), String::new(), format!("q.{key}")),
    };
    format!(
        "SELECT CASE WHEN octet_length(row_to_json(q)::text) > {max_row} THEN NULL ELSE row_to_json(q)::text END,
                q.{key}::text, {mark}
         FROM ({inner}) AS q {filter} ORDER BY {order} LIMIT {}",
        limit.saturating_add(1)
    )
}

/// A source row: its payload, key and watermark value.
type SourceRow<T> = (T, Option<String>, Option<String>);

/// Keeps at most `limit` rows; when more came, drops the trailing rows that share the last
/// watermark value, so the next run (taking rows strictly past it) does not lose them. When
/// every row of a full page shares one watermark value, no page can be taken without losing
/// some of them: that is an error naming the value (the run fails with it and is tried again
/// on the next tick; raise `max_rows` or use a finer watermark column).
fn trim_split_watermark<T>(
    mut rows: Vec<SourceRow<T>>,
    limit: usize,
    has_watermark: bool,
) -> Result<Vec<SourceRow<T>>, String> {
    if rows.len() <= limit {
        return Ok(rows);
    }
    let next = rows.get(limit).and_then(|r| r.2.clone());
    rows.truncate(limit);
    if has_watermark && next.is_some() {
        let keep = rows.iter().rposition(|r| r.2 != next).map_or(0, |i| i + 1);
        if keep == 0 {
            return Err(format!(
                "more than {limit} rows share the watermark value {}; taking a page of them \
                 would lose the rest: raise max_rows or use a finer watermark column",
                next.unwrap_or_default()
            ));
        }
        rows.truncate(keep);
    }
    Ok(rows)
}

fn quote_ident(c: &str) -> String {
    format!("\"{}\"", c.replace('"', "\"\""))
}

fn quote_literal(v: &str) -> String {
    format!("'{}'", v.replace('\0', "").replace('\'', "''"))
}

/// Fills `{column}` placeholders from a row; `{{` and `}}` are literal braces.
pub fn fill(template: &str, row: &Map<String, Value>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if let Some(after) = tail.strip_prefix('}') {
            out.push('}');
            rest = after;
            continue;
        }
        let Some(end) = tail.find('}') else {
            out.push_str(tail);
            rest = "";
            break;
        };
        let name = &tail[1..end];
        match row.get(name) {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Null) => {}
            Some(v) => out.push_str(&v.to_string()),
            None => {
                let mut cols: Vec<&str> = row.keys().map(String::as_str).collect();
                cols.sort();
                return Err(format!(
                    "source.sql.template: `{{{name}}}` is not a column of the query (columns: {})",
                    cols.join(", ")
                ));
            }
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Paths of `candidates` that were not taken yet.
pub fn not_taken(candidates: Vec<String>, taken: &HashSet<String>) -> Vec<String> {
    candidates
        .into_iter()
        .filter(|p| !taken.contains(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_columns_by_name_and_name_a_missing_one() {
        let row: Map<String, Value> =
            serde_json::from_value(json!({"subject": "Login", "id": 7, "body": null})).unwrap();
        assert_eq!(
            fill("#{id} {subject}: {body}{{x}}", &row).unwrap(),
            "#7 Login: {x}"
        );
        let e = fill("{nope}", &row).unwrap_err();
        assert!(
            e.contains("`{nope}` is not a column") && e.contains("body, id, subject"),
            "{e}"
        );
    }

    #[test]
    fn a_full_page_does_not_split_rows_that_share_a_watermark() {
        let r = |m: &str| ((), Some("k".to_string()), Some(m.to_string()));
        let rows = vec![r("1"), r("2"), r("2"), r("2")];
        let kept = trim_split_watermark(rows, 3, true).unwrap();
        assert_eq!(kept.len(), 1);
        let rows = vec![r("1"), r("2"), r("3")];
        assert_eq!(trim_split_watermark(rows, 3, true).unwrap().len(), 3);
        // A full page of one value cannot be split without losing rows: an error, not a loss.
        let rows = vec![r("2"), r("2"), r("2"), r("2")];
        let e = trim_split_watermark(rows, 3, true).unwrap_err();
        assert!(
            e.contains("more than 3 rows share the watermark value 2"),
            "{e}"
        );
    }

    #[test]
    fn a_watermark_is_quoted_as_a_literal() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn a_bad_line_sets_its_file_aside_with_the_line_number() {
        let e = parse_lines("f.jsonl", b"{\"a\":1}\n\nnot json\n").unwrap_err();
        assert!(e.starts_with("line 3: not JSON"), "{e}");
        let e = parse_lines("f.jsonl", b"{\"a\":\"x\\u0000\"}\n").unwrap_err();
        assert!(e.contains("NUL"), "{e}");
        assert_eq!(
            parse_lines("f.jsonl", b"{\"a\":1}\n{\"b\":2}\n")
                .unwrap()
                .len(),
            2
        );
    }
}
