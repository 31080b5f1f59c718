//! Provider rate-limit headers: when a provider says a limit is exhausted, how long until it
//! refills. OpenAI sends `x-ratelimit-remaining-{requests,tokens}` with Go-style durations in
//! `x-ratelimit-reset-*` (`6m0s`, `20ms`); Anthropic sends `anthropic-ratelimit-*-remaining`
//! with RFC 3339 times in `anthropic-ratelimit-*-reset`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;

fn text<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Parses a Go duration such as `1m30.5s`, `20ms` or `6m0s`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" | "" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_len..];
    }
    super::pause_secs(total)
}

/// How long the provider says its exhausted limit takes to refill, if a limit is exhausted.
pub fn exhausted_for(h: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let mut wait: Option<Duration> = None;
    let mut note = |d: Duration| wait = Some(wait.map_or(d, |w| w.max(d)));
    for kind in ["requests", "tokens"] {
        if text(h, &format!("x-ratelimit-remaining-{kind}")) == Some("0")
            && let Some(d) =
                text(h, &format!("x-ratelimit-reset-{kind}")).and_then(parse_go_duration)
        {
            note(d);
        }
    }
    for kind in ["requests", "tokens", "input-tokens", "output-tokens"] {
        if text(h, &format!("anthropic-ratelimit-{kind}-remaining")) == Some("0")
            && let Some(at) = text(h, &format!("anthropic-ratelimit-{kind}-reset"))
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        {
            let secs = (at.with_timezone(&Utc) - now).num_milliseconds().max(0) as f64 / 1000.0;
            if let Some(d) = super::pause_secs(secs) {
                note(d);
            }
        }
    }
    wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_go_duration("1m30.5s"),
            Some(Duration::from_secs_f64(90.5))
        );
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("soon"), None);
    }

    #[test]
    fn huge_or_garbage_reset_values_are_capped_or_ignored() {
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(parse_go_duration("99999999999999999999h"), hour);
        assert_eq!(
            parse_go_duration(&"9".repeat(400)),
            None,
            "past f64: garbage"
        );
        assert_eq!(parse_go_duration("1.2.3s"), None);
        assert_eq!(parse_go_duration("-5s"), None);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining-tokens", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-tokens", "1e400s".parse().unwrap());
        assert!(exhausted_for(&h, Utc::now()).is_none_or(|d| d <= Duration::from_secs(3600)));
        let mut a = HeaderMap::new();
        a.insert("anthropic-ratelimit-tokens-remaining", "0".parse().unwrap());
        a.insert(
            "anthropic-ratelimit-tokens-reset",
            "9999-12-31T23:59:59Z".parse().unwrap(),
        );
        assert_eq!(exhausted_for(&a, Utc::now()), hour);
    }

    #[test]
    fn an_exhausted_limit_says_how_long_to_wait() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining-tokens", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-tokens", "1m0s".parse().unwrap());
        h.insert("x-ratelimit-remaining-requests", "12".parse().unwrap());
        h.insert("x-ratelimit-reset-requests", "2s".parse().unwrap());
        assert_eq!(exhausted_for(&h, Utc::now()), Some(Duration::from_secs(60)));
        let now = Utc::now();
        let mut a = HeaderMap::new();
        a.insert(
            "anthropic-ratelimit-requests-remaining",
            "0".parse().unwrap(),
        );
        a.insert(
            "anthropic-ratelimit-requests-reset",
            (now + chrono::Duration::seconds(30))
                .to_rfc3339()
                .parse()
                .unwrap(),
        );
        let d = exhausted_for(&a, now).unwrap();
        assert!(d <= Duration::from_secs(30) && d >= Duration::from_secs(29));
        assert_eq!(exhausted_for(&HeaderMap::new(), now), None);
    }
}
