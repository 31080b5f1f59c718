//! Rules of OpenAI-shaped batches: the completion windows accepted, the status a finished batch
//! ends in, and the shape of a line error (`errors.data[]`).

use chrono::Duration;
use serde::Serialize;

/// The shortest completion window accepted.
pub const MIN_WINDOW_HOURS: i64 = 1;
/// The longest completion window accepted (30 days).
pub const MAX_WINDOW_HOURS: i64 = 720;

/// Parses a completion window such as `24h`, `1h`, `72h` or `7d`.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{s}` is not a completion window; use hours or days such as `1h`, `24h`, `72h` or `7d` (between {MIN_WINDOW_HOURS}h and {MAX_WINDOW_HOURS}h)"
        )
    };
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num.parse().map_err(|_| bad())?;
    let hours = match unit {
        "h" => Some(n),
        "d" => n.checked_mul(24),
        _ => None,
    }
    .ok_or_else(bad)?;
    if !(MIN_WINDOW_HOURS..=MAX_WINDOW_HOURS).contains(&hours) {
        return Err(bad());
    }
    Ok(Duration::hours(hours))
}

/// The final status of a batch whose jobs have all finished, from the status it is leaving.
pub fn final_status(from: &str, any_expired: bool) -> &'static str {
    match (from, any_expired) {
        ("cancelling", _) => "cancelled",
        (_, true) => "expired",
        _ => "completed",
    }
}

/// One entry of a batch's `errors.data`, as OpenAI's `BatchError`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    /// 1-based line of the input file; `None` for an error of the whole file.
    pub line: Option<u64>,
}

impl LineError {
    /// An error of line `line`.
    pub fn at(line: u64, code: &str, message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            param: param.map(str::to_owned),
            line: Some(line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_in_hours_or_days_within_bounds_are_accepted() {
        assert_eq!(parse_window("24h"), Ok(Duration::hours(24)));
        assert_eq!(parse_window("1h"), Ok(Duration::hours(1)));
        assert_eq!(parse_window("72h"), Ok(Duration::hours(72)));
        assert_eq!(parse_window("7d"), Ok(Duration::hours(168)));
    }

    #[test]
    fn windows_out_of_bounds_or_malformed_are_refused() {
        for bad in [
            "",
            "h",
            "0h",
            "721h",
            "31d",
            "24",
            "24m",
            "-1h",
            "1.5h",
            "99999999999999999999d",
            "9223372036854775807d",
        ] {
            assert!(parse_window(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn final_status_follows_cancel_then_expiry() {
        assert_eq!(final_status("cancelling", true), "cancelled");
        assert_eq!(final_status("finalizing", true), "expired");
        assert_eq!(final_status("finalizing", false), "completed");
    }
}
