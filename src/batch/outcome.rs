//! What each item of an ended (or lost) provider batch does to its job: succeeded at batch
//! prices, failed, re-driven (next batch, or real-time near the deadline), or, for a job
//! cancelled while it waited, discarded: a ledger row at no cost, nothing billed to the job.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;

use crate::app::Ctx;
use crate::db::provider_batches::{ItemOutcome, JobInfo};
use crate::domain::catalog::Deployment;
use crate::domain::retry::ErrorClass;
use crate::domain::state::JobState;
use crate::domain::text::{storable, storable_str};
use crate::ids::new_id;
use crate::providers::batch::ItemResult;

/// Where a job whose batch item did not succeed goes next.
fn redrive_route(ctx: &Ctx, job: &JobInfo, now: DateTime<Utc>) -> (&'static str, Option<String>) {
    let d = |s: Duration| chrono::Duration::from_std(s).unwrap_or_default();
    let cfg = &ctx.config.routing;
    let needs = d(cfg.batch_turnaround) + d(cfg.realtime_margin);
    let near = job
        .deadline
        .is_some_and(|dl| dl.signed_duration_since(now) < needs);
    let spent = job.deployment_attempts.saturating_add(1) >= job.max_attempts.max(1);
    if near || spent {
        let why = if near {
            "the deadline is too near for another batch"
        } else {
            "batch attempts are spent"
        };
        ("cheap", Some(format!("re-driven to real-time: {why}")))
    } else {
        (
            "batch",
            Some("re-driven into the next provider batch".into()),
        )
    }
}

/// Puts the masked values back into the answer of a job that was masked when sent, from the
/// mapping recomputed from its stored request (the same request masks the same way).
fn restore(ctx: &Ctx, job: &JobInfo, body: &mut serde_json::Value) {
    let Some(request) = &job.masked_request else {
        return;
    };
    match ctx
        .config
        .redaction
        .mask_for_call(&job.tenant, &job.model, request)
    {
        Ok((_, masking)) => masking.restore_answer(body),
        Err(e) => {
            tracing::error!(job_id = %job.id, error = %e, "could not recompute the masking; the answer keeps its placeholders")
        }
    }
}

/// Whether `job` was cancelled while it waited in provider batch `batch_id`.
fn cancelled_in(job: &JobInfo, batch_id: &str) -> bool {
    job.status == JobState::Cancelled.as_str() && job.provider_batch_id.as_deref() == Some(batch_id)
}

/// The outcome of one item of batch `batch_id` for `job`, from its result `r` (`None`: the
/// provider returned nothing for it).
#[allow(clippy::too_many_arguments)]
pub(super) fn outcome(
    ctx: &Ctx,
    d: &Deployment,
    batch_id: &str,
    job_id: String,
    attempt: i32,
    r: Option<ItemResult>,
    job: &JobInfo,
    now: DateTime<Utc>,
) -> ItemOutcome {
    let mut o = ItemOutcome {
        job_id,
        attempt,
        status: JobState::Queued.as_str(),
        route: "batch",
        route_note: None,
        response: None,
        error: None,
        attempt_status: "expired",
        error_code: None,
        http_status: None,
        input_tokens: 0,
        output_tokens: 0,
        cached_tokens: 0,
        input_usd_per_mtok: None,
        output_usd_per_mtok: None,
        cached_input_usd_per_mtok: None,
        discount: Decimal::ZERO,
        cost_usd: Decimal::ZERO,
        baseline_cost_usd: Decimal::ZERO,
        provider_request_id: None,
        attempt_id: new_id("att"),
    };
    let entry = |code: &str, message: &str| json!({"at": now, "attempt": attempt, "deployment": d.to_string(), "code": storable_str(code), "message": storable_str(message)});
    if cancelled_in(job, batch_id) {
        // Cancelled while it waited: whatever came back is discarded, nothing is billed to
        // the job; the ledger keeps the tokens the provider reported, at no cost.
        o.status = JobState::Cancelled.as_str();
        o.attempt_status = "cancelled";
        o.error_code = Some("cancelled".into());
        if let Some(ItemResult::Succeeded(c)) = r {
            o.input_tokens = c.usage.input_tokens;
            o.output_tokens = c.usage.output_tokens;
            o.cached_tokens = c.usage.cached_tokens;
            o.provider_request_id = c.request_id.map(|s| storable_str(&s).into_owned());
        }
        return o;
    }
    match r {
        Some(ItemResult::Succeeded(c)) => {
            let catalog = ctx.catalog();
            if let Some(p) = catalog.price_of(d, now) {
                let cost = p.cost(c.usage, true);
                o.input_usd_per_mtok = Some(cost.input_usd_per_mtok);
                o.output_usd_per_mtok = Some(cost.output_usd_per_mtok);
                o.cached_input_usd_per_mtok = Some(cost.cached_input_usd_per_mtok);
                o.discount = cost.discount;
                o.cost_usd = cost.cost_usd;
            }
            let premium = job
                .premium
                .as_deref()
                .and_then(Deployment::parse)
                .unwrap_or_else(|| d.clone());
            o.baseline_cost_usd = catalog
                .price_of(&premium, now)
                .map(|p| p.cost(c.usage, false).cost_usd)
                .unwrap_or(o.cost_usd);
            o.input_tokens = c.usage.input_tokens;
            o.output_tokens = c.usage.output_tokens;
            o.cached_tokens = c.usage.cached_tokens;
            o.status = JobState::Succeeded.as_str();
            o.attempt_status = if c.refusal { "refused" } else { "succeeded" };
            o.provider_request_id = c.request_id.map(|s| storable_str(&s).into_owned());
            let mut body = c.body;
            restore(ctx, job, &mut body);
            // Postgres cannot store U+0000: the answer is kept with U+FFFD in its place.
            o.response = Some(storable(body));
        }
        Some(ItemResult::Errored(e)) => {
            o.attempt_status = "failed";
            o.error_code = Some(storable_str(&e.code).into_owned());
            o.http_status = e.http_status.map(i32::from);
            o.error = Some(entry(&e.code, &e.message));
            if e.class == ErrorClass::Fatal
                || job.deployment_attempts.saturating_add(1) >= job.max_attempts.max(1)
            {
                o.status = JobState::Failed.as_str();
            } else {
                (o.route, o.route_note) = redrive_route(ctx, job, now);
            }
        }
        other => {
            let (status, code, message) = match other {
                Some(ItemResult::Cancelled) => (
                    "cancelled",
                    "batch_cancelled",
                    "the provider batch was cancelled before this item ran",
                ),
                None => (
                    "expired",
                    "batch_item_missing",
                    "the provider returned no result for this item",
                ),
                _ => (
                    "expired",
                    "batch_expired",
                    "the provider batch's window passed before this item ran",
                ),
            };
            o.attempt_status = status;
            o.error = Some(entry(code, message));
            // Re-drives are bounded like retries: past the attempts, real-time takes over.
            (o.route, o.route_note) = redrive_route(ctx, job, now);
        }
    }
    o
}
