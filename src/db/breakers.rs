//! Circuit breakers in Postgres (`circuit_breakers`), shared by every process. The rules are
//! pure (`domain::breaker`); this module reads the rows, applies the rules and writes back.
//!
//! Every batch of recorded outcomes updates the window counters of its deployments in one
//! transaction: the rows are locked in deployment order (so concurrent recorders cannot
//! deadlock), folded through the pure rules and written back. A batch with no signal (fatal
//! errors, cache hits) touches nothing. Keeping calls away uses the deployment pause in `budgets` (see `db::budgets::claim`),
//! written after commit: claims lock budget rows and then breaker rows, so holding a breaker
//! row while waiting for a budget row could deadlock. A claim in the instant between the two
//! writes still sees the open breaker through the deployment's budget row when it has one;
//! otherwise a call may slip through in that instant, which is harmless.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::DbError;
use crate::domain::breaker::{self, Breaker, Settings, Signal, State, Window};
use crate::domain::budget::Decision;

/// One call's outcome as a breaker sees it.
#[derive(Debug, Clone)]
pub struct Event {
    pub deployment: String,
    pub job_id: String,
    pub signal: Signal,
}

/// Breakers a batch of outcomes opened or closed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Newly open, with the end of their cool-down.
    pub opened: Vec<(String, DateTime<Utc>)>,
    /// Closed again by a successful probe, with the end of the pause they had.
    pub closed: Vec<(String, DateTime<Utc>)>,
}

#[derive(sqlx::FromRow)]
struct Row {
    deployment: String,
    state: Option<String>,
    opened_until: Option<DateTime<Utc>>,
    probe_owner: Option<String>,
    window_start: Option<DateTime<Utc>>,
    window_calls: Option<i32>,
    window_failures: Option<i32>,
    prev_calls: Option<i32>,
    prev_failures: Option<i32>,
    now: DateTime<Utc>,
}

/// The columns every breaker query reads (with `now()`).
const COLUMNS: &str =
    "state, opened_until, probe_owner, window_start, window_calls, window_failures,
    prev_calls, prev_failures, now() AS now";

/// A stored breaker's state and cool-down (`None` columns: no row yet, which is a closed
/// breaker), without its window counters (which only [`observe`] needs).
pub fn from_columns(
    state: Option<&str>,
    opened_until: Option<DateTime<Utc>>,
    probe_owner: Option<String>,
) -> Breaker {
    Breaker {
        state: state.map(State::parse).unwrap_or_default(),
        window: Window::default(),
        opened_until,
        probe_owner,
    }
}

fn count(n: Option<i32>) -> u32 {
    u32::try_from(n.unwrap_or(0)).unwrap_or(0)
}

/// Applies a batch of outcomes to the breakers of their deployments, then pauses the
/// deployments whose breaker opened (until its cool-down ends) and lifts the breaker's pause of
/// those that closed. Returns what changed.
pub async fn observe(pool: &PgPool, events: &[Event], s: Settings) -> Result<Changes, DbError> {
    if events.is_empty() || !s.enabled() {
        return Ok(Changes::default());
    }
    let deployments: Vec<String> = events
        .iter()
        .map(|e| e.deployment.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let changed = deployments;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO circuit_breakers (deployment) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&changed)
    .execute(&mut *tx)
    .await?;
    let (current, now) = lock(&mut tx, &changed).await?;
    let mut changes = Changes::default();
    let mut rows: Vec<(String, Breaker)> = Vec::new();
    for d in &changed {
        let before = current.get(d).cloned().unwrap_or_default();
        let after = fold(&before, d, events, now, s);
        if after == before {
            continue;
        }
        match (before.state, after.state, after.opened_until) {
            (State::Open, State::Open, _) => {}
            (_, State::Open, Some(until)) => changes.opened.push((d.clone(), until)),
            (State::HalfOpen | State::Open, State::Closed, _) => changes
                .closed
                .push((d.clone(), before.opened_until.unwrap_or(now))),
            _ => {}
        }
        rows.push((d.clone(), after));
    }
    write(&mut tx, &rows).await?;
    tx.commit().await?;
    for (deployment, until) in &changes.opened {
        super::budgets::pause_deployment(pool, deployment, *until).await?;
    }
    for (deployment, until) in &changes.closed {
        resume_deployment(pool, deployment, *until).await?;
    }
    Ok(changes)
}

/// The breaker of deployment `d` after every event of the batch that concerns it, in order.
fn fold(before: &Breaker, d: &str, events: &[Event], now: DateTime<Utc>, s: Settings) -> Breaker {
    events
        .iter()
        .filter(|e| e.deployment == d)
        .fold(before.clone(), |b, e| {
            breaker::observe(&b, &e.job_id, e.signal, now, s)
        })
}

async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    deployments: &[String],
) -> Result<(BTreeMap<String, Breaker>, DateTime<Utc>), DbError> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT deployment, {COLUMNS}
         FROM circuit_breakers WHERE deployment = ANY($1) ORDER BY deployment FOR UPDATE"
    ))
    .bind(deployments)
    .fetch_all(&mut **tx)
    .await?;
    Ok(to_map(rows))
}

fn to_map(rows: Vec<Row>) -> (BTreeMap<String, Breaker>, DateTime<Utc>) {
    let now = rows.first().map_or_else(Utc::now, |r| r.now);
    let map = rows
        .into_iter()
        .map(|r| {
            let mut b = from_columns(r.state.as_deref(), r.opened_until, r.probe_owner);
            b.window = Window {
                start: r.window_start,
                calls: count(r.window_calls),
                failures: count(r.window_failures),
                prev_calls: count(r.prev_calls),
                prev_failures: count(r.prev_failures),
            };
            (r.deployment, b)
        })
        .collect();
    (map, now)
}

/// Writes breakers (rows already exist and are locked by the caller's transaction).
pub async fn write(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(String, Breaker)],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let deployments: Vec<&str> = rows.iter().map(|(d, _)| d.as_str()).collect();
    let states: Vec<&str> = rows.iter().map(|(_, b)| b.state.as_str()).collect();
    let untils: Vec<Option<DateTime<Utc>>> = rows.iter().map(|(_, b)| b.opened_until).collect();
    let probes: Vec<Option<&str>> = rows.iter().map(|(_, b)| b.probe_owner.as_deref()).collect();
    let starts: Vec<Option<DateTime<Utc>>> = rows.iter().map(|(_, b)| b.window.start).collect();
    let n = |f: fn(&Window) -> u32| -> Vec<i32> {
        rows.iter()
            .map(|(_, b)| i32::try_from(f(&b.window)).unwrap_or(i32::MAX))
            .collect()
    };
    sqlx::query(
        "UPDATE circuit_breakers c SET state = x.state, opened_until = x.until, probe_owner = x.probe,
            window_start = x.start, window_calls = x.calls, window_failures = x.failures,
            prev_calls = x.prev_calls, prev_failures = x.prev_failures, updated_at = now()
         FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::timestamptz[],
                     $6::int[], $7::int[], $8::int[], $9::int[])
            AS x(deployment, state, until, probe, start, calls, failures, prev_calls, prev_failures)
         WHERE c.deployment = x.deployment",
    )
    .bind(&deployments)
    .bind(&states)
    .bind(&untils)
    .bind(&probes)
    .bind(&starts)
    .bind(n(|w| w.calls))
    .bind(n(|w| w.failures))
    .bind(n(|w| w.prev_calls))
    .bind(n(|w| w.prev_failures))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// At claim time, for deployments whose breaker waits for a probe (`probing`): lets the first
/// admitted job of each through as its probe, makes the others wait, and records the grant
/// (the breaker half-open with its probe; the deployment paused until the grant lapses).
/// `jobs[i]` is the (job id, deployment, whether it never failed before) of `decisions[i]`.
pub(crate) async fn grant_probes(
    tx: &mut Transaction<'_, Postgres>,
    jobs: &[(&str, &str, bool)],
    probing: &BTreeMap<String, Breaker>,
    decisions: &mut [Decision],
    now: DateTime<Utc>,
    s: Settings,
) -> Result<(), DbError> {
    let deployments: Vec<&str> = jobs.iter().map(|(_, d, _)| *d).collect();
    let fresh: Vec<bool> = jobs.iter().map(|(_, _, f)| *f).collect();
    let names: BTreeSet<String> = probing.keys().cloned().collect();
    let until = s.until(now);
    let wait_until = until.timestamp() + i64::from(until.timestamp_subsec_nanos() > 0);
    let writes: Vec<(String, Breaker)> =
        breaker::one_probe_each(&deployments, &fresh, &names, decisions, wait_until)
            .into_iter()
            .filter_map(|i| {
                let (job, d, _) = jobs[i];
                probing.get(d)?;
                Some((d.to_string(), breaker::grant_probe(job, now, s)))
            })
            .collect();
    if writes.is_empty() {
        return Ok(());
    }
    tracing::info!(deployments = ?writes.iter().map(|(d, _)| d).collect::<Vec<_>>(),
        "circuit breaker cool-down over; letting one probe call through");
    write(tx, &writes).await?;
    let keys: Vec<&str> = writes.iter().map(|(d, _)| d.as_str()).collect();
    sqlx::query(
        "UPDATE budgets SET paused_until = $2, updated_at = now() WHERE scope = 'deployment' AND key = ANY($1)",
    )
    .bind(&keys)
    .bind(until)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// After a successful probe: lifts the deployment pause the breaker set (up to `until`), so
/// waiting jobs need not sit out the rest of it. A longer pause (a provider's) stays.
pub async fn resume_deployment(
    pool: &PgPool,
    deployment: &str,
    until: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE budgets SET paused_until = NULL, updated_at = now()
         WHERE scope = 'deployment' AND key = $1 AND paused_until <= $2",
    )
    .bind(deployment)
    .bind(until)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every breaker that is not closed (for tests and operators).
pub async fn not_closed(pool: &PgPool) -> Result<Vec<(String, Breaker)>, DbError> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT deployment, {COLUMNS}
         FROM circuit_breakers WHERE state <> 'closed' ORDER BY deployment"
    ))
    .fetch_all(pool)
    .await?;
    Ok(to_map(rows).0.into_iter().collect())
}
