//! One attempt of one claimed job: check its deadline, call its current deployment (unless the
//! job is cancelled meanwhile), price the answer, check it against the job's JSON schema, and
//! decide the job's next state (done, retry, repair, fall back, fail). Produces an `Outcome`
//! and what the call said about the deployment (for its circuit breaker); recording them is
//! the caller's job.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::Ctx;
use crate::db::jobs::{Claimed, Outcome};
use crate::domain::breaker::Signal;
use crate::domain::budget::START_SLACK_SECS;
use crate::domain::catalog::{Catalog, Deployment};
use crate::domain::pricing::Usage;
use crate::domain::retry::{self, AttemptState, Backoff, ErrorClass, RetryDecision};
use crate::domain::schema;
use crate::domain::state::sql as job_state;
use crate::ids::new_id;
use crate::providers::ProviderError;

/// The error code of an attempt whose call panicked.
pub const PANICKED: &str = "call_panicked";

/// The failpoint that makes the first attempt of every job panic inside its call.
pub const PANIC_FAILPOINT: &str = "worker.call_panics_on_first_attempt";

/// Runs [`execute`], turning a panic anywhere in it into a failed attempt of the job under the
/// retry policy (code [`PANICKED`]): the outcome is never lost, so the delivery is acknowledged
/// and the call slot freed like any other.
pub async fn execute_caught(
    ctx: &Ctx,
    worker_id: &str,
    job: Claimed,
    claimed_at: Instant,
    cancel: &CancellationToken,
) -> (Outcome, Option<Signal>) {
    use futures::FutureExt;
    let copy = job.clone();
    let run = std::panic::AssertUnwindSafe(execute(ctx, worker_id, job, claimed_at, cancel));
    match run.catch_unwind().await {
        Ok(done) => done,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            tracing::error!(job_id = %copy.id, attempt = copy.attempt, panic = %what, "a call panicked; counting it as a failed attempt");
            (panicked(ctx, &copy, &what).await, None)
        }
    }
}

/// The outcome of an attempt that panicked: a retryable failure, decided by the retry policy.
async fn panicked(ctx: &Ctx, job: &Claimed, what: &str) -> Outcome {
    let now = Utc::now();
    let deployment = current_deployment(job);
    let mut outcome = blank_outcome(job, &deployment, now);
    // Whether the provider was reached is unknown: the ledger shows the attempt, at no cost.
    outcome.called = true;
    let e = ProviderError::new(
        ErrorClass::Retryable,
        PANICKED,
        format!("the attempt panicked inside sluice: {what}"),
    );
    let catalog = ctx.catalog();
    on_failure(ctx, &catalog, job, &deployment, e, now, &mut outcome).await;
    outcome
}

/// `now + d`, or `now` if that is out of range.
fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(now)
}

/// Runs one attempt of `job`, claimed at `claimed_at`; `cancel` fires if the job is cancelled
/// meanwhile, which aborts the provider call. The signal is `None` when the attempt says
/// nothing about the deployment's health (no call, a cancelled call, a fatal error).
#[tracing::instrument(skip_all, fields(job_id = %job.id, tenant = %job.tenant, attempt = job.attempt))]
pub async fn execute(
    ctx: &Ctx,
    _worker_id: &str,
    job: Claimed,
    claimed_at: Instant,
    cancel: &CancellationToken,
) -> (Outcome, Option<Signal>) {
    let now = Utc::now();
    let deployment = current_deployment(&job);
    let mut outcome = blank_outcome(&job, &deployment, now);
    if let Some(deadline) = job.deadline
        && deadline <= now
    {
        outcome.status = job_state::EXPIRED;
        outcome.error = Some(error_entry(
            &job,
            &deployment,
            "deadline_exceeded",
            "the job's deadline passed before it could run",
            None,
        ));
        return (outcome, None);
    }
    if claimed_at.elapsed() > Duration::from_secs(START_SLACK_SECS as u64) {
        // The budget reservation is only valid for a call that starts promptly: give it back.
        tracing::warn!("claimed job could not start within its reservation; re-queueing it");
        outcome.status = job_state::QUEUED;
        return (outcome, None);
    }

    let cache_key = job
        .cache_ttl_secs
        .map(|_| crate::domain::cache::key(&job.model, &job.request));
    if let Some(key) = &cache_key {
        match crate::db::cache::get(&ctx.pool, &job.tenant, key).await {
            Ok(Some(hit)) => return (cache_hit(ctx, &job, hit, now, outcome), None),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "response cache lookup failed; calling the provider")
            }
        }
    }

    let request = match &job.repair_note {
        Some(note) => std::borrow::Cow::Owned(schema::with_repair(&job.request, note)),
        None => std::borrow::Cow::Borrowed(&job.request),
    };
    let (request, masking) = match masked_for_call(ctx, &job, request) {
        Ok(r) => r,
        Err(e) => {
            on_failure(ctx, &ctx.catalog(), &job, &deployment, e, now, &mut outcome).await;
            return (outcome, None);
        }
    };
    metrics::gauge!("sluice_calls_in_flight").increment(1.0);
    let started = Instant::now();
    if job.attempt == 1 && crate::failpoint::armed(PANIC_FAILPOINT) {
        panic!("failpoint {PANIC_FAILPOINT}");
    }
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        r = ctx.providers.complete(&deployment, &request, &job.id) => Some(r),
    };
    outcome.called = true;
    metrics::gauge!("sluice_calls_in_flight").decrement(1.0);
    outcome.latency_ms = Some(i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX));
    let Some(result) = result else {
        // Nothing is billed for an aborted call; the ledger still shows it.
        tracing::info!("job cancelled; its provider call was aborted");
        outcome.status = job_state::CANCELLED;
        outcome.attempt_status = "cancelled";
        outcome.error_code = Some("cancelled".into());
        outcome.error = Some(error_entry(
            &job,
            &deployment,
            "cancelled",
            "cancelled on request while its provider call was in flight",
            None,
        ));
        return (outcome, None);
    };
    let catalog = ctx.catalog();
    let signal = match &result {
        Ok(_) => Some(Signal::Success),
        // A fatal error is the request's own fault; a 429 is the provider pacing us, handled by
        // the shared pause with its retry-after. Neither says the deployment is unhealthy.
        Err(e) if matches!(e.class, ErrorClass::Fatal | ErrorClass::RateLimited) => None,
        Err(_) => Some(Signal::Failure),
    };
    match result {
        Ok(mut c) => {
            if let Some(m) = &masking {
                m.restore_answer(&mut c.body);
            }
            if let Some(wait) = c.exhausted_for.filter(|w| !w.is_zero()) {
                // The provider says its limit is spent: every worker holds off a moment (a 429,
                // if it comes, carries the full retry-after). Capped, because our own budget
                // already paces what it admits and frees capacity as the window slides.
                let wait = wait.min(Duration::from_secs(1));
                let until = after(now, wait);
                if let Err(e) =
                    crate::db::budgets::pause_deployment(&ctx.pool, &deployment.to_string(), until)
                        .await
                {
                    tracing::warn!(error = %e, "could not record the provider's pause");
                }
            }
            let price = catalog.price_of(&deployment, now);
            match price.map(|p| p.cost(c.usage, false)) {
                Some(cost) => {
                    outcome.input_usd_per_mtok = Some(cost.input_usd_per_mtok);
                    outcome.output_usd_per_mtok = Some(cost.output_usd_per_mtok);
                    outcome.cached_input_usd_per_mtok = Some(cost.cached_input_usd_per_mtok);
                    outcome.discount = cost.discount;
                    outcome.cost_usd = cost.cost_usd;
                }
                None => {
                    tracing::warn!(deployment = %deployment, "no price in force; recording zero cost")
                }
            }
            set_usage(&mut outcome, c.usage);
            outcome.baseline_cost_usd =
                baseline(&catalog, &job, c.usage, now).unwrap_or(outcome.cost_usd);
            outcome.provider_request_id = c.request_id.clone();
            // A refusal is a result: there is no JSON to check.
            if let (false, Some(wanted)) = (c.refusal, schema::requested(&job.request))
                && let Err(e) = schema::check_answer(wanted, &c.body)
            {
                schema_miss(&job, &deployment, &e, now, &mut outcome);
                return (outcome, signal);
            }
            outcome.status = job_state::SUCCEEDED;
            outcome.attempt_status = if c.refusal { "refused" } else { "succeeded" };
            metrics::counter!("sluice_attempts_total", "outcome" => outcome.attempt_status, "error_class" => "none").increment(1);
            if let (Some(key), Some(ttl), false) = (&cache_key, job.cache_ttl_secs, c.refusal) {
                let hit = crate::db::cache::Hit {
                    response: c.body.clone(),
                    deployment: deployment.to_string(),
                    input_tokens: c.usage.input_tokens,
                    output_tokens: c.usage.output_tokens,
                };
                let expires = after(now, Duration::from_secs(u64::try_from(ttl).unwrap_or(0)));
                if let Err(e) =
                    crate::db::cache::put(&ctx.pool, &job.tenant, key, &hit, expires).await
                {
                    tracing::warn!(error = %e, "could not store the answer in the response cache");
                }
            }
            outcome.response = Some(c.body);
        }
        Err(e) => on_failure(ctx, &catalog, &job, &deployment, e, now, &mut outcome).await,
    }
    (outcome, signal)
}

/// The request as it may leave sluice: a job marked `mask_on_send` is masked here, and the
/// in-memory mapping that puts the values back into its answer is returned with it.
fn masked_for_call<'a>(
    ctx: &Ctx,
    job: &Claimed,
    request: std::borrow::Cow<'a, serde_json::Value>,
) -> Result<
    (
        std::borrow::Cow<'a, serde_json::Value>,
        Option<crate::domain::redact::Masking>,
    ),
    ProviderError,
> {
    if !job.mask_on_send {
        return Ok((request, None));
    }
    let (masked, masking) = ctx
        .config
        .redaction
        .mask_for_call(&job.tenant, &job.model, &request)
        .map_err(|m| {
            ProviderError::new(
                ErrorClass::Fatal,
                "redaction_failed",
                format!("the request could not be masked, so it was not sent: {m}"),
            )
        })?;
    Ok((std::borrow::Cow::Owned(masked), Some(masking)))
}

/// The answer (already billed) missed the job's JSON schema: the first time, schedule one
/// repair attempt at once that tells the model what was wrong; the second time, fail closed.
/// The answer itself is never kept as the job's response.
fn schema_miss(
    job: &Claimed,
    d: &Deployment,
    e: &schema::SchemaError,
    now: DateTime<Utc>,
    outcome: &mut Outcome,
) {
    let note = schema::repair_note(e);
    let message = if job.repair_note.is_none() {
        outcome.status = job_state::RETRY_SCHEDULED;
        outcome.run_after = Some(now);
        outcome.repair_note = Some(note.clone());
        format!(
            "the answer did not match the JSON schema ({note}); asking once more with the error"
        )
    } else {
        outcome.status = job_state::FAILED;
        format!("the answer still did not match the JSON schema after one repair: {note}")
    };
    outcome.attempt_status = "failed";
    outcome.error_code = Some(schema::FAILED_CODE.into());
    outcome.error = Some(error_entry(job, d, schema::FAILED_CODE, &message, None));
    tracing::info!(
        next = outcome.status,
        "answer did not match the job's JSON schema"
    );
}

async fn on_failure(
    ctx: &Ctx,
    catalog: &Catalog,
    job: &Claimed,
    d: &Deployment,
    e: ProviderError,
    now: DateTime<Utc>,
    outcome: &mut Outcome,
) {
    outcome.attempt_status = "failed";
    outcome.error_code = Some(e.code.clone());
    outcome.http_status = e.http_status.map(i32::from);
    outcome.provider_request_id = e.request_id.clone();
    outcome.error = Some(error_entry(job, d, &e.code, &e.message, e.http_status));
    metrics::counter!("sluice_attempts_total", "outcome" => "failed", "error_class" => e.class.as_str()).increment(1);
    if e.class == ErrorClass::RateLimited {
        metrics::counter!("sluice_rate_limited_total").increment(1);
        // Every worker in every process holds off this deployment until the provider's time.
        let pause = e.retry_after.unwrap_or(Duration::from_secs(1));
        let until = after(now, pause.min(crate::providers::MAX_PROVIDER_PAUSE));
        if let Err(err) =
            crate::db::budgets::pause_deployment(&ctx.pool, &d.to_string(), until).await
        {
            tracing::warn!(error = %err, "could not record the provider's pause");
        }
    }
    let state = AttemptState {
        on_deployment: job.deployment_attempts.max(0) as u32 + 1,
        max_attempts: job.max_attempts.max(1) as u32,
        deployment: job.deployment_index.max(0) as usize,
        next_fitting: next_fitting(catalog, job, now),
    };
    let backoff = Backoff {
        base: ctx.config.worker.retry_base,
        max: ctx.config.worker.retry_max,
    };
    match retry::decide(
        e.class,
        state,
        backoff,
        rand::random::<f64>(),
        e.retry_after,
    ) {
        RetryDecision::RetryAfter(delay) => {
            // The delay counts from the failure, not from when the attempt started; the error
            // entry keeps the time and the delay so the real gap can be measured against it.
            let failed_at = Utc::now().max(now);
            let retry_at = after(failed_at, delay);
            outcome.status = job_state::RETRY_SCHEDULED;
            metrics::counter!("sluice_retries_total").increment(1);
            outcome.run_after = Some(retry_at);
            outcome.next_deployment_attempts = state.on_deployment as i32;
            if let Some(entry) = outcome.error.as_mut().and_then(|e| e.as_object_mut()) {
                entry.insert("retry_at".into(), json!(retry_at));
                entry.insert("retry_delay_ms".into(), json!(delay.as_millis() as u64));
            }
        }
        RetryDecision::Fallback(i) => {
            metrics::counter!("sluice_fallbacks_total").increment(1);
            outcome.status = job_state::QUEUED;
            outcome.next_deployment_index = i as i32;
            outcome.next_deployment_attempts = 0;
        }
        RetryDecision::GiveUp => outcome.status = job_state::FAILED,
    }
    tracing::info!(code = %e.code, class = e.class.as_str(), next = outcome.status, "attempt failed");
}

/// The deployment this attempt uses.
fn current_deployment(job: &Claimed) -> Deployment {
    job.deployment
        .as_deref()
        .or_else(|| {
            job.deployments
                .0
                .get(job.deployment_index.max(0) as usize)
                .map(String::as_str)
        })
        .and_then(Deployment::parse)
        .unwrap_or_else(|| Deployment {
            provider: "unknown".into(),
            model: job.model.clone(),
        })
}

/// The next deployment after the current one whose context window takes this request.
fn next_fitting(catalog: &Catalog, job: &Claimed, now: DateTime<Utc>) -> Option<usize> {
    catalog.next_fitting(
        &job.deployments.0,
        job.deployment_index.max(0) as usize,
        i64::from(job.est_prompt_tokens),
        i64::from(job.max_tokens),
        now,
    )
}

/// What the same usage would have cost on the premium real-time path (the alias's premium
/// deployment, or its first).
pub fn baseline(
    catalog: &Catalog,
    job: &Claimed,
    usage: Usage,
    now: DateTime<Utc>,
) -> Option<Decimal> {
    let premium = job
        .premium
        .as_deref()
        .or_else(|| job.deployments.0.first().map(String::as_str))?;
    let d = Deployment::parse(premium)?;
    let price = catalog.price_of(&d, now)?;
    Some(price.cost(usage, false).cost_usd)
}

/// Answers from the response cache: no upstream call and no cost; the ledger row records the
/// cost it saved.
fn cache_hit(
    ctx: &Ctx,
    job: &Claimed,
    hit: crate::db::cache::Hit,
    now: DateTime<Utc>,
    mut outcome: Outcome,
) -> Outcome {
    let usage = Usage {
        input_tokens: hit.input_tokens,
        output_tokens: hit.output_tokens,
        cached_tokens: 0,
    };
    let catalog = ctx.catalog();
    let saved = Deployment::parse(&hit.deployment)
        .and_then(|d| catalog.price_of(&d, now))
        .map(|p| p.cost(usage, false).cost_usd)
        .unwrap_or_default();
    outcome.status = job_state::SUCCEEDED;
    outcome.called = true;
    outcome.attempt_status = "cache_hit";
    outcome.saved_usd = saved;
    outcome.baseline_cost_usd = baseline(&catalog, job, usage, now).unwrap_or(saved);
    outcome.latency_ms = Some(0);
    outcome.response = Some(hit.response);
    outcome
}

fn set_usage(o: &mut Outcome, u: Usage) {
    o.input_tokens = u.input_tokens;
    o.output_tokens = u.output_tokens;
    o.cached_tokens = u.cached_tokens;
}

fn error_entry(
    job: &Claimed,
    d: &Deployment,
    code: &str,
    message: &str,
    http_status: Option<u16>,
) -> serde_json::Value {
    json!({
        "at": Utc::now(),
        "attempt": job.attempt,
        "deployment": d.to_string(),
        "code": code,
        "message": message,
        "http_status": http_status,
    })
}

fn blank_outcome(job: &Claimed, d: &Deployment, now: DateTime<Utc>) -> Outcome {
    Outcome {
        job_id: job.id.clone(),
        tenant: job.tenant.clone(),
        attempt: job.attempt,
        status: job_state::FAILED,
        run_after: None,
        deployment: Some(d.to_string()),
        next_deployment_index: job.deployment_index,
        next_deployment_attempts: job.deployment_attempts,
        response: None,
        error: None,
        called: false,
        attempt_id: new_id("att"),
        provider: d.provider.clone(),
        upstream_model: d.model.clone(),
        route: "cheap",
        attempt_status: "failed",
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
        saved_usd: Decimal::ZERO,
        provider_batch_id: None,
        latency_ms: None,
        provider_request_id: None,
        started_at: now,
        repair_note: None,
    }
}
