//! The delivery loop (`sluice deliver`, also in `up` and `worker`): lease due messages, sign,
//! post, record the attempt, schedule the retry. Any number of processes may run it; a message
//! is held by one of them at a time (lease + `FOR UPDATE SKIP LOCKED`), and a process that dies
//! mid-delivery loses its lease, so another sends the message again with the same `webhook-id`.
//!
//! Nothing a receiver does can stall the loop: every delivery is bounded by a timeout, the
//! response body is never read, a bad URL, an unresolvable or refused host, a garbage
//! `retry-after` are each one failed attempt, and each message runs in its own task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ssrf::{Guard, refused_in};
use super::{Next, Verdict, WebhooksConfig, next_attempt, parse_retry_after, sign, verdict};
use crate::db::webhooks::{self as db, AttemptRecord, Leased};

/// Longest error text kept per attempt.
const MAX_ERROR_CHARS: usize = 500;

/// Sends messages for one process.
#[derive(Debug, Clone)]
pub struct Deliverer {
    pool: PgPool,
    config: WebhooksConfig,
    client: reqwest::Client,
    guard: Guard,
    owner: String,
}

/// What one attempt came to, before it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered with this status (and maybe a `retry-after`).
    Answered {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No answer (refused address, DNS, connect, timeout): retry later.
    Failed(String),
    /// Can never succeed as it is (bad URL, endpoint gone or disabled): fail now.
    Permanent(String),
}

impl Deliverer {
    /// A deliverer whose leases carry `owner`.
    pub fn new(pool: PgPool, config: WebhooksConfig, owner: String) -> anyhow::Result<Self> {
        let guard = Guard::new(config.allow_private_networks.clone());
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            // No idle connections: every attempt resolves and checks the address again.
            .pool_max_idle_per_host(0)
            .dns_resolver(Arc::new(guard.clone()))
            .user_agent(concat!("sluice-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            pool,
            config,
            client,
            guard,
            owner,
        })
    }

    /// Runs until `shutdown`, then lets the deliveries in flight finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let tracker = TaskTracker::new();
        let lease_secs = self.config.lease.as_secs_f64();
        let this = Arc::new(self);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let free = permits.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = permits.clone().acquire_owned() => drop(p),
                }
                continue;
            }
            let batch = db::lease(&this.pool, &this.owner, free as i64, lease_secs).await;
            let leased = match batch {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "could not lease webhook messages; retrying");
                    Vec::new()
                }
            };
            if leased.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(this.config.poll_interval) => {}
                }
                continue;
            }
            for m in leased {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let d = this.clone();
                tracker.spawn(async move {
                    d.deliver(&m).await;
                    drop(permit);
                });
            }
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Makes one attempt at a leased message and records it.
    #[tracing::instrument(skip_all, fields(message_id = %m.id, event_id = %m.event_id, tenant = %m.tenant, attempt = m.attempts))]
    pub async fn deliver(&self, m: &Leased) -> Attempt {
        let started_at = Utc::now();
        let clock = Instant::now();
        let outcome = self.attempt(m).await;
        let latency_ms = i32::try_from(clock.elapsed().as_millis()).unwrap_or(i32::MAX);
        let now = Utc::now();
        let attempts = u32::try_from(m.attempts).unwrap_or(u32::MAX);
        let jitter: f64 = rand::random();
        let policy = self.config.policy();
        let retry = |retry_after| match next_attempt(
            &policy,
            m.created_at,
            now,
            attempts,
            jitter,
            retry_after,
        ) {
            Next::RetryAt(t) => ("pending", Some(t)),
            Next::GiveUp => ("failed", None),
        };
        let (status_code, error, (new_status, next_at), gone) = match &outcome {
            Attempt::Answered {
                status,
                retry_after,
            } => match verdict(*status) {
                Verdict::Delivered => (Some(*status), None, ("delivered", None), false),
                Verdict::Gone => (
                    Some(*status),
                    Some("410 Gone".to_string()),
                    ("failed", None),
                    true,
                ),
                Verdict::Retry => (
                    Some(*status),
                    Some(format!("answered {status}")),
                    retry(*retry_after),
                    false,
                ),
            },
            Attempt::Failed(e) => (None, Some(e.clone()), retry(None), false),
            Attempt::Permanent(e) => (None, Some(e.clone()), ("failed", None), false),
        };
        let record = AttemptRecord {
            status_code: status_code.map(i32::from),
            error: error.map(|e| clean(&e)),
            latency_ms: Some(latency_ms),
            started_at,
            new_status,
            next_attempt_at: next_at,
        };
        let url = clean(m.url.as_deref().unwrap_or(""));
        match db::record_attempt(&self.pool, &self.owner, m, &url, &record).await {
            Ok(failing_since) => {
                if gone {
                    self.disable(m, "the endpoint answered 410 Gone").await;
                } else if let Some(since) = failing_since {
                    let limit = chrono::Duration::from_std(self.config.disable_after)
                        .unwrap_or(chrono::Duration::MAX);
                    if now.signed_duration_since(since) >= limit {
                        let why = format!(
                            "every delivery failed for {}",
                            humantime::format_duration(self.config.disable_after)
                        );
                        self.disable(m, &why).await;
                    }
                }
            }
            // The lease runs out and the message is tried again: at least once, same id.
            Err(e) => tracing::warn!(error = %e, "could not record a webhook attempt"),
        }
        // One count per attempt by what became of the message: delivered, pending (to be
        // retried) or failed.
        metrics::counter!("sluice_webhook_deliveries_total", "outcome" => new_status).increment(1);
        if new_status == "failed" {
            metrics::counter!("sluice_webhook_messages_failed_total").increment(1);
        }
        outcome
    }

    /// Signs and posts one message.
    async fn attempt(&self, m: &Leased) -> Attempt {
        let Some(url) = m.url.as_deref() else {
            return Attempt::Permanent("the endpoint was deleted".into());
        };
        if m.endpoint_status.as_deref() == Some("disabled") {
            return Attempt::Permanent("the endpoint is disabled".into());
        }
        let url = match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
            _ => return Attempt::Permanent(format!("`{url}` is not an http(s) URL")),
        };
        if let Err(r) = self.guard.check_url(&url) {
            return Attempt::Failed(r.to_string());
        }
        let secrets = match self.secrets(m).await {
            Ok(s) => s,
            Err(e) => return Attempt::Failed(format!("could not read the signing secret: {e}")),
        };
        let keys: Vec<Vec<u8>> = secrets
            .iter()
            .filter_map(|s| sign::decode_secret(s).ok())
            .collect();
        if keys.is_empty() {
            return Attempt::Permanent("the signing secret is not valid".into());
        }
        let timestamp = Utc::now().timestamp();
        let signature = sign::signature_header(&keys, &m.id, timestamp, m.body.as_bytes());
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &m.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(m.body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) => Attempt::Answered {
                status: resp.status().as_u16(),
                retry_after: resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| parse_retry_after(v.as_bytes(), Utc::now())),
            },
            Err(e) => Attempt::Failed(match refused_in(&e) {
                Some(r) => r.to_string(),
                None => error_chain(&e),
            }),
        }
    }

    /// The secrets that sign `m`: the current one first, then the previous one during a grace.
    async fn secrets(&self, m: &Leased) -> Result<Vec<String>, sqlx::Error> {
        let (current, previous) = match &m.secret {
            Some(s) => (s.clone(), m.previous_secret.clone()),
            None => db::tenant_secret(&self.pool, &m.tenant, &sign::new_secret()).await?,
        };
        Ok(std::iter::once(current).chain(previous).collect())
    }

    /// Disables `m`'s endpoint and tells the tenant: a log line, a counter, and an event to
    /// its other enabled endpoints.
    async fn disable(&self, m: &Leased, why: &str) {
        let Some(endpoint) = &m.endpoint_id else {
            return;
        };
        match db::disable_failing(&self.pool, endpoint, why).await {
            Ok(Some((tenant, others))) => {
                tracing::warn!(endpoint_id = %endpoint, %tenant, reason = why, "webhook endpoint disabled");
                metrics::counter!("sluice_webhook_endpoints_disabled_total").increment(1);
                if !others.is_empty() {
                    let data = json!({"id": endpoint, "object": "webhook_endpoint", "status": "disabled", "reason": why});
                    if let Err(e) = db::emit(
                        &self.pool,
                        &tenant,
                        super::ENDPOINT_DISABLED,
                        &data,
                        &others,
                        None,
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "could not tell the tenant an endpoint was disabled");
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not disable a failing webhook endpoint"),
        }
    }

    /// Sends a sample `event_type` event to one endpoint now and returns what it answered
    /// (`POST /v1/webhook_endpoints/{id}/test`, `sluice webhooks test`).
    pub async fn test(
        &self,
        tenant: &str,
        endpoint_id: &str,
        event_type: &str,
    ) -> anyhow::Result<Attempt> {
        let sample = if event_type.starts_with("job.") {
            json!({"id": "job_test", "object": "job", "status": event_type.trim_start_matches("job."), "test": true})
        } else {
            json!({"id": "batch_test", "object": "batch", "test": true})
        };
        let lease = (self.owner.as_str(), self.config.lease.as_secs_f64());
        let event = db::emit(
            &self.pool,
            tenant,
            event_type,
            &sample,
            &[endpoint_id.to_string()],
            Some(lease),
        )
        .await?;
        let leased = db::leased_of_event(&self.pool, &event, &self.owner).await?;
        let m = leased
            .first()
            .ok_or_else(|| anyhow::anyhow!("the test message was not written"))?;
        Ok(self.deliver(m).await)
    }
}

/// An error and its causes on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        cur = s.source();
    }
    text
}

/// Text Postgres accepts (no NUL), bounded in length.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '\0')
        .take(MAX_ERROR_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_text_has_no_nul_and_is_bounded() {
        assert_eq!(clean("a\0b"), "ab");
        assert_eq!(clean(&"x".repeat(10_000)).len(), MAX_ERROR_CHARS);
    }
}
