//! Webhooks: signed event delivery to tenant endpoints and to jobs' own `webhook_url`.
//!
//! Events are written by Postgres triggers (migration `20261129040000_webhooks.sql`) in the same
//! transaction as the job state change that causes them: a job entering a terminal state writes
//! `job.<status>`, and the commit that finishes a batch's last job writes its `batch.*` event
//! (decided under a per-batch counter row's lock, so it is written exactly once). Each event
//! gets one message per destination; [`deliver`] leases due messages (`FOR UPDATE SKIP
//! LOCKED`), signs them ([`sign`], Standard Webhooks), checks the target address ([`ssrf`]) and
//! posts them, retrying on the schedule of [`next_attempt`].
//!
//! This module owns the `[webhooks]` settings and the pure delivery rules (retry timing, what a
//! response means); the SQL is in `db::webhooks`.

pub mod deliver;
pub mod sign;
pub mod ssrf;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::retry::Backoff;

/// Every event type sluice sends, as endpoints subscribe to them.
pub const EVENT_TYPES: &[&str] = &[
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "job.expired",
    "batch.completed",
    "batch.failed",
    "batch.cancelled",
    "batch.expired",
    "budget.threshold",
    "spend.spike",
];

/// Sent to a tenant's other endpoints when one is disabled for failing too long.
pub const ENDPOINT_DISABLED: &str = "webhook_endpoint.disabled";

/// Whether `t` is an event type an endpoint may subscribe to.
pub fn is_event_type(t: &str) -> bool {
    EVENT_TYPES.contains(&t)
}

/// `[webhooks]`: delivery settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Run the delivery loop in `sluice up` and `sluice worker` (`sluice deliver` always does).
    pub enabled: bool,
    /// Networks webhooks may reach although private, loopback or link-local
    /// (e.g. `["127.0.0.0/8"]` for local development and tests).
    pub allow_private_networks: Vec<ipnet::IpNet>,
    /// Time allowed for one delivery (connect, send, answer).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Messages one process delivers at once.
    pub concurrency: usize,
    /// How long a process owns a message it is delivering before another may take it over.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often an idle delivery loop looks for due messages.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// First retry delay (exponential from here, full jitter).
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    /// Longest delay between two attempts.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// How long a message is retried after it was written; then it is marked failed.
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
    /// The longest `retry-after` honoured (a larger one is cut to this).
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// An endpoint whose every attempt failed for this long is disabled.
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_private_networks: Vec::new(),
            timeout: Duration::from_secs(15),
            concurrency: 32,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(6 * 3600),
            retry_for: Duration::from_secs(72 * 3600),
            max_retry_after: Duration::from_secs(6 * 3600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

impl WebhooksConfig {
    /// Range checks; the error names the key (under `webhooks.`) and what is expected.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.concurrency == 0 {
            return Err(("concurrency".into(), "must be at least 1".into()));
        }
        if self.timeout.is_zero() {
            return Err(("timeout".into(), "must be more than 0s".into()));
        }
        if self.lease <= self.timeout {
            return Err((
                "lease".into(),
                format!(
                    "must be longer than webhooks.timeout ({:?}), or a slow delivery would be taken over",
                    self.timeout
                ),
            ));
        }
        if self.retry_base.is_zero() || self.retry_max < self.retry_base {
            return Err((
                "retry_max".into(),
                "retry_base must be more than 0s and retry_max at least retry_base".into(),
            ));
        }
        Ok(())
    }

    /// The retry timing these settings describe.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff {
                base: self.retry_base,
                max: self.retry_max,
            },
            retry_for: self.retry_for,
            max_retry_after: self.max_retry_after,
        }
    }
}

/// When failed deliveries are tried again, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Exponential backoff with full jitter (the one in `domain::retry`).
    pub backoff: Backoff,
    /// Retries stop this long after the message was written.
    pub retry_for: Duration,
    /// Cap on a receiver's `retry-after`.
    pub max_retry_after: Duration,
}

/// After a failed attempt: when to try again, or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// The retry window is over: the message fails.
    GiveUp,
}

/// The pure retry schedule. `attempts` is the number of attempts made (this one included),
/// `written_at` when the message was written, `now` the (injected) clock, `jitter` in `[0, 1)`,
/// `retry_after` what the receiver asked for. The last retry happens at the window's end, so a
/// message is tried for the whole window; all arithmetic saturates.
pub fn next_attempt(
    policy: &RetryPolicy,
    written_at: DateTime<Utc>,
    now: DateTime<Utc>,
    attempts: u32,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Next {
    let window = chrono::Duration::from_std(policy.retry_for).unwrap_or(chrono::Duration::MAX);
    let give_up_at = written_at
        .checked_add_signed(window)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if now >= give_up_at {
        return Next::GiveUp;
    }
    let retry_after = retry_after.map(|r| r.min(policy.max_retry_after));
    let delay = policy.backoff.delay(attempts.max(1), jitter, retry_after);
    let at = chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(give_up_at);
    Next::RetryAt(at.min(give_up_at))
}

/// Parses a `retry-after` header (seconds, or an HTTP date relative to `now`). Garbage, a
/// negative or a past value reads as `None`; a huge one saturates (the policy caps it).
pub fn parse_retry_after(value: &[u8], now: DateTime<Utc>) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = DateTime::parse_from_rfc2822(text).ok()?.with_timezone(&Utc);
    (at - now).to_std().ok()
}

/// What a receiver's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// 410 Gone: the endpoint is disabled and the message fails.
    Gone,
    /// Anything else (3xx included: redirects are not followed): retry later.
    Retry,
}

/// Classifies a receiver's HTTP status.
pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        _ => Verdict::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn policy() -> RetryPolicy {
        WebhooksConfig::default().policy()
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn delays_grow_exponentially_with_full_jitter_up_to_the_cap() {
        let p = policy();
        let at = |attempts, jitter| match next_attempt(&p, t0(), t0(), attempts, jitter, None) {
            Next::RetryAt(t) => (t - t0()).num_seconds(),
            Next::GiveUp => panic!("gave up"),
        };
        assert_eq!(at(1, 0.999_999), 29);
        assert_eq!(at(2, 0.999_999), 59);
        assert_eq!(at(3, 0.5), 60);
        assert_eq!(at(1, 0.0), 0, "full jitter reaches zero");
        assert_eq!(at(40, 0.999_999), 6 * 3600 - 1, "capped at retry_max");
    }

    #[test]
    fn retries_last_the_whole_window_then_give_up() {
        let p = policy();
        let end = t0() + chrono::Duration::hours(72);
        // Near the end, the next try is clamped to the window's end, not past it.
        let late = end - chrono::Duration::minutes(5);
        assert_eq!(
            next_attempt(&p, t0(), late, 30, 0.999, None),
            Next::RetryAt(end)
        );
        assert_eq!(next_attempt(&p, t0(), end, 31, 0.5, None), Next::GiveUp);
        // Walk a whole schedule with the injected clock: it spans 72 h and ends.
        let (mut now, mut attempts) = (t0(), 0u32);
        loop {
            attempts += 1;
            match next_attempt(&p, t0(), now, attempts, 0.7, None) {
                Next::RetryAt(t) => {
                    assert!(t >= now);
                    now = t;
                }
                Next::GiveUp => break,
            }
            assert!(attempts < 1000, "the schedule ends");
        }
        assert_eq!(now, end, "the last attempt is at the window's end");
    }

    #[test]
    fn retry_after_is_a_floor_but_bounded() {
        let p = policy();
        let ra = Some(Duration::from_secs(3600));
        assert_eq!(
            next_attempt(&p, t0(), t0(), 1, 0.0, ra),
            Next::RetryAt(t0() + chrono::Duration::hours(1))
        );
        let huge = Some(Duration::from_secs(u64::MAX));
        assert_eq!(
            next_attempt(&p, t0(), t0(), 1, 0.0, huge),
            Next::RetryAt(t0() + chrono::Duration::hours(6)),
            "cut to max_retry_after"
        );
        let mut unbounded = p;
        unbounded.max_retry_after = Duration::MAX;
        unbounded.retry_for = Duration::MAX;
        assert!(matches!(
            next_attempt(&unbounded, t0(), t0(), u32::MAX, 1.0, huge),
            Next::RetryAt(_)
        ));
    }

    #[test]
    fn retry_after_headers_parse_or_read_as_none() {
        let now = t0();
        assert_eq!(
            parse_retry_after(b"120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(b"99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after(b"Thu, 01 Jan 2026 00:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        for garbage in [
            &b"soon"[..],
            b"-5",
            b"",
            b"\0\0",
            b"\xff\xfe",
            b"Wed, 31 Dec 2025 00:00:00 GMT",
        ] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
    }

    #[test]
    fn only_2xx_delivers_410_disables_and_redirects_retry() {
        assert_eq!(verdict(200), Verdict::Delivered);
        assert_eq!(verdict(204), Verdict::Delivered);
        assert_eq!(verdict(302), Verdict::Retry);
        assert_eq!(verdict(301), Verdict::Retry);
        assert_eq!(verdict(410), Verdict::Gone);
        assert_eq!(verdict(500), Verdict::Retry);
        assert_eq!(verdict(404), Verdict::Retry);
    }

    #[test]
    fn the_readme_webhooks_settings_are_valid_config() {
        let readme = include_str!("../../README.md");
        let block = readme
            .split("```toml\n[webhooks]")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("README has a [webhooks] example");
        let c = crate::config::Config::from_toml(&format!("[webhooks]{block}")).unwrap();
        assert_eq!(c.webhooks.retry_for, Duration::from_secs(72 * 3600));
        assert_eq!(
            c.webhooks.disable_after,
            WebhooksConfig::default().disable_after
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let c = WebhooksConfig {
            lease: Duration::from_secs(1),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "lease");
    }
}
