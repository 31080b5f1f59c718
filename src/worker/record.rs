//! Recording a batch of outcomes so that no single outcome can hold the others back.
//!
//! The batch goes in one statement (`db::jobs::record`). A transient error (connection,
//! timeout, serialization) retries it as it is. A deterministic one (Postgres refuses some
//! value) splits the batch until the offending outcome stands alone (`db::errors::isolate`);
//! the rest commit. The offending outcome is then:
//! 1. made storable: every NUL in its answer and error text becomes U+FFFD
//!    (`domain::text`), and recorded as it was (billed, and succeeded if it succeeded);
//! 2. failing that, quarantined: its job fails with the error code `unstorable_result`, the
//!    answer is dropped, and its ledger row is still booked with the call's usage and cost.
//!
//! An outcome that cannot even be quarantined is logged and left to the stray-claim check.

use std::collections::HashSet;

use serde_json::json;
use sqlx::PgPool;

use crate::db::jobs::Outcome;
use crate::domain::state::sql as job_state;
use crate::domain::text;

/// The error code of a job whose outcome Postgres refused to store.
pub const UNSTORABLE: &str = "unstorable_result";

/// What became of one outcome handed to [`record_each`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Recorded exactly as it was given.
    AsGiven,
    /// Recorded only once made storable or quarantined: the job row differs from the outcome.
    Altered,
    /// Not recorded (the job was no longer this worker's, or even the quarantine failed).
    NotStored,
}

/// Records `outcomes` (see the module header); returns the ids of the jobs recorded.
pub async fn record_all(pool: &PgPool, worker: &str, outcomes: &[Outcome]) -> Vec<String> {
    record_each(pool, worker, outcomes)
        .await
        .into_iter()
        .zip(outcomes)
        .filter(|(stored, _)| *stored != Stored::NotStored)
        .map(|(_, o)| o.job_id.clone())
        .collect()
}

/// Records `outcomes` (see the module header); returns what became of each, in order.
pub async fn record_each(pool: &PgPool, worker: &str, outcomes: &[Outcome]) -> Vec<Stored> {
    let out = crate::db::errors::isolate(outcomes, |chunk| {
        crate::db::jobs::record(pool, worker, chunk)
    })
    .await;
    let as_given: HashSet<String> = out.written.into_iter().collect();
    let mut altered = HashSet::new();
    for (i, error) in out.rejected {
        let mut o = outcomes[i].clone();
        tracing::warn!(job_id = %o.job_id, %error, "Postgres refused this outcome; making it storable");
        if make_storable(&mut o) {
            match record_one(pool, worker, &o).await {
                Ok(ids) => {
                    altered.extend(ids);
                    continue;
                }
                Err(e) => tracing::warn!(job_id = %o.job_id, error = %e, "still refused"),
            }
        }
        quarantine(&mut o, &error);
        match record_one(pool, worker, &o).await {
            Ok(ids) => {
                tracing::error!(job_id = %o.job_id, %error, "outcome quarantined: the job failed with {UNSTORABLE}");
                altered.extend(ids);
            }
            Err(e) => {
                tracing::error!(job_id = %o.job_id, error = %e, "could not record even the quarantined outcome")
            }
        }
    }
    let stored: Vec<Stored> = outcomes
        .iter()
        .map(|o| {
            if altered.contains(&o.job_id) {
                Stored::Altered
            } else if as_given.contains(&o.job_id) {
                Stored::AsGiven
            } else {
                Stored::NotStored
            }
        })
        .collect();
    let lost = stored.iter().filter(|s| **s == Stored::NotStored).count();
    if lost > 0 {
        tracing::warn!(
            lost,
            "some jobs were re-queued while this worker ran them; their results were discarded"
        );
    }
    stored
}

async fn record_one(pool: &PgPool, worker: &str, o: &Outcome) -> Result<Vec<String>, sqlx::Error> {
    let out = crate::db::errors::isolate(std::slice::from_ref(o), |chunk| {
        crate::db::jobs::record(pool, worker, chunk)
    })
    .await;
    match out.rejected.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(out.written),
    }
}

/// Replaces every NUL in the outcome's texts; returns whether anything changed.
pub fn make_storable(o: &mut Outcome) -> bool {
    let mut changed = false;
    if let Some(v) = o.response.as_mut() {
        changed |= text::make_storable(v);
    }
    if let Some(v) = o.error.as_mut() {
        changed |= text::make_storable(v);
    }
    for s in [
        o.repair_note.as_mut(),
        o.error_code.as_mut(),
        o.provider_request_id.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        changed |= text::make_storable_str(s);
    }
    changed
}

/// Turns `o` into a failed attempt that keeps only what the ledger needs (usage and cost).
pub fn quarantine(o: &mut Outcome, error: &sqlx::Error) {
    let mut message =
        format!("the outcome of this attempt could not be stored and was dropped: {error}");
    text::make_storable_str(&mut message);
    o.status = job_state::FAILED;
    o.run_after = None;
    o.response = None;
    o.repair_note = None;
    o.attempt_status = "failed";
    o.error_code = Some(UNSTORABLE.into());
    o.provider_request_id = None;
    o.attempt_id = crate::ids::new_id("att");
    o.error = Some(json!({
        "at": chrono::Utc::now(),
        "attempt": o.attempt,
        "deployment": o.deployment,
        "code": UNSTORABLE,
        "message": message,
        "http_status": null,
    }));
}
