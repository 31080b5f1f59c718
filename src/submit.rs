//! Turning submitted jobs into recorded, dispatched work: the path shared by the HTTP API and
//! the AMQP ingest. Jobs are committed to Postgres first; then real-time jobs' work messages are
//! published (batch-route jobs wait in Postgres for the packer); a crash in between is healed by
//! the relay, which publishes what was left behind.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::app::Ctx;
use crate::config::Config;
use crate::db::jobs::{Inserted, NewJobRow};
use crate::domain::catalog::Catalog;
use crate::domain::fit;
use crate::domain::job::{FieldError, InputLimits, JobInput, ValidJob};
use crate::domain::routing::{self, BatchTiming};
use crate::ids::new_id;
use crate::queue::WorkItem;

/// How long a submitter waits for the broker's confirms before leaving the jobs to the relay:
/// 1 s, plus 1 ms a job for large requests (a busy broker confirmed 1,000 messages in over a
/// second, and each timeout resets the publisher and leaves the jobs to wait for the relay),
/// and never over 5 s.
fn publish_wait(jobs: usize) -> std::time::Duration {
    let per_job = std::time::Duration::from_millis(u64::try_from(jobs).unwrap_or(u64::MAX));
    std::time::Duration::from_secs(1)
        .saturating_add(per_job)
        .min(std::time::Duration::from_secs(5))
}

/// Input limits from config.
pub fn limits(config: &Config) -> InputLimits {
    InputLimits {
        max_request_bytes: config.limits.max_request_bytes,
        default_max_tokens: config.limits.default_max_tokens,
        max_output_tokens: config.limits.max_output_tokens,
        max_n: config.limits.max_n,
        max_deadline_secs: config.limits.max_deadline.as_secs(),
        batch_turnaround_secs: config.routing.batch_turnaround.as_secs(),
    }
}

/// Batch timing from config.
pub fn timing(config: &Config) -> BatchTiming {
    let d = |s: std::time::Duration| chrono::Duration::from_std(s).unwrap_or_default();
    BatchTiming {
        turnaround: d(config.routing.batch_turnaround),
        margin: d(config.routing.batch_margin),
    }
}

/// For a job that names no model, the first matching tag rule picks the alias (and route).
pub fn apply_rules(config: &Config, tenant: &str, input: &mut JobInput) {
    if input.model_name().is_some() {
        return;
    }
    if let Some(rule) = routing::match_rule(&config.routing.rules, tenant, &input.tags) {
        input.model = Some(rule.alias.clone());
        if input.route.is_none() {
            input.route = rule.route.map(|r| r.as_str().to_string());
        }
    }
}

/// Checks one raw job of `tenant` completely and shapes its row.
pub fn prepare_one(
    ctx: &Ctx,
    tenant: &str,
    raw: Value,
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> Result<NewJobRow, FieldError> {
    let mut input = JobInput::from_value(raw)?;
    apply_rules(&ctx.config, tenant, &mut input);
    let mut job = input.validate(catalog, limits(&ctx.config), now)?;
    let applied = ctx
        .config
        .redaction
        .apply(tenant, &job.model, &mut job.request)?;
    let mut row = to_row(&ctx.config, catalog, job, now)?;
    row.redactions = applied.counts;
    row.mask_on_send = applied.mask_on_send;
    Ok(row)
}

/// Validates and routes a list of raw job values; the first error names its index.
pub fn prepare(
    ctx: &Ctx,
    tenant: &str,
    inputs: Vec<Value>,
    now: DateTime<Utc>,
) -> Result<Vec<NewJobRow>, FieldError> {
    let catalog = ctx.catalog();
    let many = inputs.len() > 1;
    let mut seen_custom = std::collections::HashSet::new();
    let mut rows = Vec::with_capacity(inputs.len());
    for (i, raw) in inputs.into_iter().enumerate() {
        let at = |e: FieldError| {
            if many {
                e.within(&format!("jobs[{i}]."))
            } else {
                e
            }
        };
        let row = prepare_one(ctx, tenant, raw, &catalog, now).map_err(at)?;
        if let Some(c) = &row.custom_id
            && !seen_custom.insert(c.clone())
        {
            return Err(at(FieldError::new(
                "custom_id",
                format!("`{c}` appears twice in this submission"),
            )));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Chooses the route, the starting deployment and the attempt budget, and shapes the row.
pub fn to_row(
    config: &Config,
    catalog: &Catalog,
    job: ValidJob,
    now: DateTime<Utc>,
) -> Result<NewJobRow, FieldError> {
    let candidates: Vec<routing::Candidate> = job
        .resolved
        .deployments
        .iter()
        .map(|d| routing::Candidate {
            name: d.to_string(),
            batch: catalog.batch_capable(d),
        })
        .collect();
    let choice = routing::choose(job.route, &candidates, job.deadline, now, timing(config))
        .map_err(|m| FieldError::new("route", m))?;
    let max_attempts = job
        .max_attempts
        .or(job.resolved.max_attempts.map(|n| n as i32))
        .unwrap_or(config.worker.max_attempts as i32);
    let start = &job.resolved.deployments[choice
        .deployment_index
        .min(job.resolved.deployments.len() - 1)];
    let est_prompt_tokens =
        crate::domain::tokens::estimate_prompt_tokens(&start.model, &job.request);
    let premium = job
        .resolved
        .premium
        .clone()
        .or_else(|| job.resolved.deployments.first().cloned());
    let cache_ttl = job
        .cache_ttl
        .or(job.resolved.cache_ttl)
        .filter(|d| !d.is_zero());
    Ok(NewJobRow {
        id: new_id("job"),
        est_prompt_tokens: i32::try_from(est_prompt_tokens).unwrap_or(i32::MAX),
        custom_id: job.custom_id,
        idempotency_key: job.idempotency_key,
        model: job.model,
        deployments: job
            .resolved
            .deployments
            .iter()
            .map(ToString::to_string)
            .collect(),
        deployment_index: choice.deployment_index as i32,
        request: job.request,
        tags: serde_json::to_value(&job.tags).unwrap_or_default(),
        route_requested: job.route.as_str(),
        route: choice.route.as_str(),
        route_reason: choice.reason,
        deadline: job.deadline,
        webhook_url: job.webhook_url,
        priority: job.priority,
        max_tokens: i32::try_from(job.max_tokens).unwrap_or(i32::MAX),
        max_attempts,
        premium: premium.map(|p| p.to_string()),
        cache_ttl_secs: cache_ttl.map(|d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX)),
        redactions: Value::Object(Default::default()),
        mask_on_send: false,
        api_key_id: None,
    })
}

/// For each row, why it could never run within its tenant's USD cap or its deployment's
/// `batch_enqueued_tokens` (see `domain::fit`), or `None` when it can.
pub async fn never_fitting(
    ctx: &Ctx,
    tenant: &str,
    rows: &[NewJobRow],
    now: DateTime<Utc>,
) -> Result<Vec<Option<FieldError>>, sqlx::Error> {
    let start = |r: &NewJobRow| {
        usize::try_from(r.deployment_index)
            .ok()
            .and_then(|i| r.deployments.get(i))
            .cloned()
            .unwrap_or_default()
    };
    let mut deployments: Vec<String> = rows.iter().map(start).collect();
    deployments.sort();
    deployments.dedup();
    let (cap, batch_tokens) =
        crate::db::submission::limits(&ctx.pool, tenant, &deployments).await?;
    if cap.is_none() && batch_tokens.is_empty() {
        return Ok(vec![None; rows.len()]);
    }
    let catalog = ctx.catalog();
    Ok(rows
        .iter()
        .map(|r| {
            let deployment = start(r);
            let batch = r.route == "batch";
            let prompt = i64::from(r.est_prompt_tokens.max(0));
            let output = i64::from(r.max_tokens.max(0));
            let size = fit::JobSize {
                worst_usd: catalog.worst_case_usd(&deployment, prompt, output, batch, now),
                tokens: prompt.saturating_add(output),
                batch,
                deployment: deployment.clone(),
            };
            let limits = fit::Limits {
                tenant_usd_cap: cap,
                batch_enqueued_tokens: batch_tokens.get(&deployment).copied(),
            };
            fit::check(&size, &limits).err()
        })
        .collect())
}

/// Publishes work for newly created real-time jobs and has them marked published a moment
/// later (`queue::marks`). A failure is logged and left to the relay: the jobs are already
/// safe in Postgres.
pub async fn dispatch(ctx: &Ctx, tenant: &str, inserted: &[Inserted]) {
    let fresh: Vec<WorkItem> = inserted
        .iter()
        .filter(|j| j.created && !j.batch)
        .map(|j| WorkItem {
            id: j.id.clone(),
            tenant: tenant.to_string(),
            priority: j.priority,
        })
        .collect();
    if fresh.is_empty() {
        return;
    }
    crate::failpoint::hit("api.after_commit_before_publish");
    // Bounded: a hung broker must not hold the caller's answer; the jobs are already committed.
    match tokio::time::timeout(publish_wait(fresh.len()), ctx.broker.publish_work(&fresh)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, jobs = fresh.len(), "publish failed; the relay will publish these jobs");
            return;
        }
        Err(_) => {
            tracing::warn!(
                jobs = fresh.len(),
                "the broker did not confirm in time; the relay will publish these jobs"
            );
            ctx.broker.reset().await;
            return;
        }
    }
    let ids: Vec<String> = fresh.into_iter().map(|w| w.id).collect();
    ctx.publish_marks.mark_later(ctx, ids).await;
}

#[cfg(test)]
mod tests {
    use super::publish_wait;
    use std::time::Duration;

    #[test]
    fn the_confirm_wait_grows_a_millisecond_a_job_up_to_five_seconds() {
        assert_eq!(publish_wait(0), Duration::from_secs(1));
        assert_eq!(publish_wait(1), Duration::from_millis(1_001));
        assert_eq!(publish_wait(1_000), Duration::from_secs(2));
        assert_eq!(publish_wait(4_000), Duration::from_secs(5));
        assert_eq!(publish_wait(usize::MAX), Duration::from_secs(5));
    }
}
