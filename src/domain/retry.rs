//! All retry timing and error classes in one place.
//!
//! Delays are computed for attempt *n* so they can be stored in Postgres (`run_after`) and
//! survive restarts; an in-process retry loop (as `backon` provides) would lose them on a crash.

use std::time::Duration;

/// How a failed upstream call may be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Timeouts, connection errors, 408, 409, 5xx, 529, malformed answers: try again later.
    Retryable,
    /// 429: try again, not before the provider's `retry-after` when it gave one.
    RateLimited,
    /// 400, 401, 403, 404, 422: the same request will fail again; never retried nor re-routed.
    Fatal,
}

impl ErrorClass {
    /// Stable label for metrics and the error history.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::RateLimited => "rate_limited",
            Self::Fatal => "fatal",
        }
    }
}

/// Classifies an HTTP status from a provider.
pub fn classify_status(status: u16) -> ErrorClass {
    match status {
        429 => ErrorClass::RateLimited,
        408 | 409 | 425 => ErrorClass::Retryable,
        500..=599 => ErrorClass::Retryable,
        _ => ErrorClass::Fatal,
    }
}

/// Backoff settings.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Exponential backoff with full jitter (AWS's "Exponential Backoff and Jitter"):
    /// a uniform delay in `[0, min(max, base * 2^(attempt-1))]`, `jitter` in `[0, 1)`.
    /// A provider's `retry_after` is a floor: never call again sooner than it asked.
    pub fn delay(&self, attempt: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.max);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let jittered = ceiling.mul_f64(jitter);
        match retry_after {
            Some(ra) => jittered.max(ra),
            None => jittered,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Run again on the same deployment after this delay.
    RetryAfter(Duration),
    /// Retries on this deployment are spent: move to the deployment at this index.
    Fallback(usize),
    /// Give up: the job fails.
    GiveUp,
}

/// Where a failed attempt stands.
#[derive(Debug, Clone, Copy)]
pub struct AttemptState {
    /// Attempts made on the current deployment, this one included.
    pub on_deployment: u32,
    /// Attempts allowed per deployment.
    pub max_attempts: u32,
    /// Index of the current deployment.
    pub deployment: usize,
    /// The next deployment that can take the request, if any (context window and features fit).
    pub next_fitting: Option<usize>,
}

/// Decides what follows a failed attempt: retry the same deployment with backoff while its
/// attempts last, then fall back to the next fitting deployment, then give up. Fatal errors are
/// never retried nor re-routed (a refusal never reaches here: it is a result).
pub fn decide(
    class: ErrorClass,
    s: AttemptState,
    backoff: Backoff,
    jitter: f64,
    retry_after: Option<Duration>,
) -> RetryDecision {
    if class == ErrorClass::Fatal {
        return RetryDecision::GiveUp;
    }
    if s.on_deployment < s.max_attempts {
        return RetryDecision::RetryAfter(backoff.delay(s.on_deployment, jitter, retry_after));
    }
    match s.next_fitting {
        Some(i) if i > s.deployment => RetryDecision::Fallback(i),
        _ => RetryDecision::GiveUp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    #[test]
    fn statuses_are_classified_as_the_providers_document() {
        for (s, c) in [
            (400, ErrorClass::Fatal),
            (401, ErrorClass::Fatal),
            (403, ErrorClass::Fatal),
            (404, ErrorClass::Fatal),
            (422, ErrorClass::Fatal),
            (408, ErrorClass::Retryable),
            (429, ErrorClass::RateLimited),
            (500, ErrorClass::Retryable),
            (503, ErrorClass::Retryable),
            (529, ErrorClass::Retryable),
        ] {
            assert_eq!(classify_status(s), c, "{s}");
        }
    }

    #[test]
    fn the_ceiling_doubles_and_stops_at_max() {
        assert_eq!(B.delay(1, 1.0, None), Duration::from_secs(1));
        assert_eq!(B.delay(3, 1.0, None), Duration::from_secs(4));
        assert_eq!(B.delay(20, 1.0, None), Duration::from_secs(60));
        assert_eq!(B.delay(3, 0.0, None), Duration::ZERO);
        assert_eq!(B.delay(3, 0.5, None), Duration::from_secs(2));
    }

    #[test]
    fn retry_after_is_a_floor() {
        assert_eq!(
            B.delay(1, 0.1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            B.delay(8, 1.0, Some(Duration::from_secs(7))),
            Duration::from_secs(60)
        );
    }

    fn at(on_deployment: u32, deployment: usize, next_fitting: Option<usize>) -> AttemptState {
        AttemptState {
            on_deployment,
            max_attempts: 3,
            deployment,
            next_fitting,
        }
    }

    #[test]
    fn fatal_errors_are_never_retried_nor_rerouted() {
        assert_eq!(
            decide(ErrorClass::Fatal, at(1, 0, Some(1)), B, 0.5, None),
            RetryDecision::GiveUp
        );
    }

    #[test]
    fn retries_stay_on_a_deployment_then_fall_back_then_give_up() {
        assert!(matches!(
            decide(ErrorClass::Retryable, at(1, 0, Some(1)), B, 0.5, None),
            RetryDecision::RetryAfter(_)
        ));
        assert!(matches!(
            decide(ErrorClass::RateLimited, at(2, 0, Some(1)), B, 0.5, None),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(
            decide(ErrorClass::Retryable, at(3, 0, Some(2)), B, 0.5, None),
            RetryDecision::Fallback(2)
        );
        assert_eq!(
            decide(ErrorClass::Retryable, at(3, 2, None), B, 0.5, None),
            RetryDecision::GiveUp
        );
    }
}
