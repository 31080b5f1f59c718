//! Operational metrics: the Prometheus recorder behind `GET /metrics`, the gauges Postgres
//! knows (refreshed by a small supervised loop), and spend alerts.

use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// `[metrics]`: the refresh loop and spend alerts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// How often gauges read from Postgres (queue depth, jobs by state, budgets…) are refreshed.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// `spend.spike` fires when an hour's spend exceeds this multiple of its trailing average.
    pub spike_multiple: Decimal,
    /// Hours the trailing average of `spend.spike` covers.
    pub spike_window_hours: u32,
    /// Where a process without the API role (`sluice worker`, `scheduler`, `deliver`) serves
    /// `GET /metrics`, `/readyz` and `/healthz`, e.g. `"0.0.0.0:9100"`; unset, it serves none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(15),
            spike_multiple: Decimal::from(3),
            spike_window_hours: 24,
            listen: None,
        }
    }
}

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rust_decimal::prelude::ToPrimitive;

use crate::app::Ctx;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
/// `None` when another recorder was installed first (then `/metrics` says so).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0],
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder; /metrics stays empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Refreshes the gauges Postgres and the supervisor know, then renders every metric in
/// Prometheus text format. A failed read keeps the previous gauge values and is counted.
pub async fn render(ctx: &Ctx) -> Option<String> {
    let handle = install()?;
    for (role, status) in ctx.health.snapshot() {
        metrics::gauge!("sluice_task_restarts", "role" => role.clone()).set(status.restarts as f64);
        metrics::gauge!("sluice_task_up", "role" => role).set(if status.up { 1.0 } else { 0.0 });
    }
    match crate::db::metrics::snapshot(&ctx.pool).await {
        Ok(s) => publish(&s),
        Err(e) => {
            tracing::warn!(error = %e, "could not refresh database gauges for /metrics");
            metrics::counter!("sluice_metrics_refresh_errors_total").increment(1);
        }
    }
    Some(handle.render())
}

fn publish(s: &crate::db::metrics::Snapshot) {
    for state in ["queued", "running", "retry_scheduled", "in_provider_batch"] {
        let n = s
            .jobs_by_state
            .iter()
            .find(|(k, _)| k == state)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!("sluice_jobs", "state" => state).set(n as f64);
    }
    for (tenant, n) in &s.queue_depth {
        metrics::gauge!("sluice_queue_depth", "tenant" => tenant.clone()).set(*n as f64);
    }
    metrics::gauge!("sluice_batch_items_pending").set(s.batch_pending as f64);
    for (deployment, state) in &s.breakers {
        let v = match state.as_str() {
            "open" => 2.0,
            "half_open" => 1.0,
            _ => 0.0,
        };
        metrics::gauge!("sluice_breaker_state", "deployment" => deployment.clone()).set(v);
    }
    for (scope, key, used, limit) in &s.budget_tokens {
        metrics::gauge!("sluice_budget_tokens_last_minute", "scope" => scope.clone(), "key" => key.clone()).set(*used as f64);
        if let Some(l) = limit {
            metrics::gauge!("sluice_budget_tpm_limit", "scope" => scope.clone(), "key" => key.clone()).set(*l as f64);
        }
    }
    for (tenant, model, usd) in &s.cost_last_minute {
        metrics::gauge!("sluice_cost_usd_last_minute", "tenant" => tenant.clone(), "model" => model.clone())
            .set(usd.to_f64().unwrap_or(0.0));
    }
    for (tenant, model, n) in &s.tokens_last_minute {
        metrics::gauge!("sluice_tokens_last_minute", "tenant" => tenant.clone(), "model" => model.clone())
            .set(*n as f64);
    }
}

/// The alerts loop: every `[metrics] refresh`, raises spend alerts not raised before and logs
/// each once. A failed check is logged and tried again next time.
pub async fn alerts_loop(ctx: std::sync::Arc<Ctx>, stop: tokio_util::sync::CancellationToken) {
    loop {
        check_alerts(&ctx).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ctx.config.metrics.refresh) => {}
        }
    }
}

/// One check of the spend alerts; returns how many were raised.
pub async fn check_alerts(ctx: &Ctx) -> usize {
    let m = &ctx.config.metrics;
    match crate::db::alerts::check(&ctx.pool, m.spike_multiple, m.spike_window_hours).await {
        Ok(raised) => {
            for a in &raised {
                tracing::warn!(kind = %a.kind, tenant = %a.tenant, details = %a.payload, "spend alert");
                metrics::counter!("sluice_alerts_total", "kind" => a.kind.clone()).increment(1);
            }
            raised.len()
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not check spend alerts; trying again later");
            0
        }
    }
}
