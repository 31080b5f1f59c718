//! The bounds a job's numbers, dates and durations are checked against, with checked
//! arithmetic throughout: no input can overflow a date or a count.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::catalog::Resolved;
use super::job::FieldError;

/// Limits a job is checked against. The server publishes its own at `GET /v1/limits`, so
/// `sluice submit` checks a file with exactly the server's rules before uploading anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputLimits {
    /// Largest chat request body, in bytes.
    pub max_request_bytes: usize,
    /// Output tokens assumed for a request that sets no `max_tokens`.
    pub default_max_tokens: u32,
    /// Most output tokens one choice may ask for where the catalog knows no model limit.
    pub max_output_tokens: u32,
    /// Most choices (`n`) one request may ask for.
    pub max_n: u32,
    /// Furthest deadline, in seconds from the time of submission.
    pub max_deadline_secs: u64,
    /// Nearest deadline, in seconds from submission, of a job that forces the batch route: the
    /// batch turnaround the server's config declares (`[routing] batch_turnaround`). 0 (a
    /// server that does not publish it) checks nothing.
    #[serde(default)]
    pub batch_turnaround_secs: u64,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: 1024 * 1024,
            default_max_tokens: 1024,
            max_output_tokens: 131_072,
            max_n: 16,
            max_deadline_secs: 365 * 24 * 3600,
            batch_turnaround_secs: 0,
        }
    }
}

/// The longest a job may opt into the response cache.
pub(super) const MAX_CACHE_TTL: std::time::Duration =
    std::time::Duration::from_secs(365 * 24 * 3600);

/// The output tokens a request may use: the larger of `max_tokens` and
/// `max_completion_tokens` (each bounded by the model's output limit where the catalog knows
/// it, else by `limits.max_output_tokens`), times `n` (bounded by `limits.max_n`).
pub(super) fn output_tokens(
    obj: &serde_json::Map<String, Value>,
    resolved: &Resolved,
    limits: InputLimits,
) -> Result<u32, FieldError> {
    let cap = resolved
        .max_output_tokens
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(limits.max_output_tokens)
        .max(1);
    let mut per_choice: Option<u32> = None;
    for key in ["max_tokens", "max_completion_tokens"] {
        let field = format!("body.{key}");
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let n = v
                    .as_u64()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| FieldError::new(&field, "must be a positive integer"))?;
                if n > u64::from(cap) {
                    return Err(FieldError::new(
                        &field,
                        format!(
                            "is {n}; the most this model can produce is {cap} tokens per choice"
                        ),
                    ));
                }
                let n = n as u32; // n <= cap, a u32
                per_choice = Some(per_choice.map_or(n, |p| p.max(n)));
            }
        }
    }
    let per_choice = per_choice.unwrap_or(limits.default_max_tokens.min(cap));
    let choices = match obj.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=u64::from(limits.max_n)).contains(n))
            .ok_or_else(|| {
                FieldError::new(
                    "body.n",
                    format!("must be an integer from 1 to {}", limits.max_n),
                )
            })? as u32,
    };
    per_choice.checked_mul(choices).ok_or_else(|| {
        FieldError::new(
            "body.n",
            "asks for more output tokens in total than can be reserved; lower n or max_tokens",
        )
    })
}

/// Reads a deadline as an RFC 3339 time or as a duration from `now` (`90m`, `24h`, `2d`),
/// at most `max_secs` away. Checked throughout: no input can overflow the date arithmetic.
pub fn parse_deadline(
    text: &str,
    now: DateTime<Utc>,
    max_secs: u64,
) -> Result<DateTime<Utc>, FieldError> {
    let max_days = max_secs / 86_400;
    let too_far = || {
        FieldError::new(
            "deadline",
            format!("`{text}` is too far away: a deadline may be at most {max_days} days ahead"),
        )
    };
    let latest = i64::try_from(max_secs)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let at = if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        t.with_timezone(&Utc)
    } else if let Ok(d) = humantime::parse_duration(text) {
        if d.as_secs() > max_secs {
            return Err(too_far());
        }
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .ok_or_else(too_far)?
    } else {
        return Err(FieldError::new(
            "deadline",
            format!("`{text}` is neither an RFC 3339 time nor a duration like 24h"),
        ));
    };
    if at <= now {
        return Err(FieldError::new("deadline", "is in the past"));
    }
    if at > latest {
        return Err(too_far());
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::job::tests::check;
    use serde_json::json;

    const YEAR: u64 = 365 * 24 * 3600;

    #[test]
    fn deadlines_read_as_times_or_durations() {
        let now = Utc::now();
        assert_eq!(
            parse_deadline("2h", now, YEAR).unwrap(),
            now + chrono::Duration::hours(2)
        );
        let soon = (now + chrono::Duration::days(30)).to_rfc3339();
        assert!(parse_deadline(&soon, now, YEAR).is_ok());
        assert!(parse_deadline("2000-01-01T00:00:00Z", now, YEAR).is_err());
    }

    #[test]
    fn huge_deadlines_are_refused_without_overflowing() {
        let now = Utc::now();
        for text in [
            "99999999years",
            "18446744073709551615s",
            "2y",
            "2999-01-01T00:00:00Z",
            "+262142-12-31T23:59:59Z",
        ] {
            let err = parse_deadline(text, now, YEAR).unwrap_err();
            assert_eq!(err.field, "deadline", "{text}");
        }
        for limit in [0, 1, u64::MAX] {
            let _ = parse_deadline("99999999years", now, limit);
            let _ = parse_deadline("2h", DateTime::<Utc>::MAX_UTC, limit);
        }
    }

    #[test]
    fn output_tokens_are_bounded_and_the_larger_of_the_two_times_n_is_reserved() {
        let body = |extra: Value| {
            let mut b = json!({"messages": [{"role": "user", "content": "x"}]});
            b.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            json!({"model": "openai/gpt-4o-mini", "body": b})
        };
        let j = check(body(
            json!({"max_tokens": 300, "max_completion_tokens": 100, "n": 3}),
        ))
        .unwrap();
        assert_eq!(j.max_tokens, 900);
        let j = check(body(
            json!({"max_tokens": 10, "max_completion_tokens": 100}),
        ))
        .unwrap();
        assert_eq!(j.max_tokens, 100);
        for (extra, field) in [
            (json!({"max_tokens": 4_000_000_000u64}), "body.max_tokens"),
            (
                json!({"max_completion_tokens": 4_000_000_000u64}),
                "body.max_completion_tokens",
            ),
            (json!({"n": 0}), "body.n"),
            (json!({"n": 1000}), "body.n"),
            (json!({"n": "two"}), "body.n"),
        ] {
            let err = check(body(extra.clone())).unwrap_err();
            assert_eq!(err.field, field, "{extra}: {err}");
        }
    }
}
