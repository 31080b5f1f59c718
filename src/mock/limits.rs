//! The mock provider's own rate limits, enforced like OpenAI's: a request is admitted when the
//! tokens counted in the last 60 seconds plus its prompt and `max_tokens` fit the TPM limit
//! (and one more request fits the RPM limit); otherwise it gets a 429 with `retry-after`.
//! Admitted requests count prompt + `max_tokens` until they finish, then their actual usage.
//! Every response carries OpenAI's `x-ratelimit-*` headers. What was served is logged per
//! second so tests can check every sliding 60-second window.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// Seconds in the limiter's window.
const WINDOW: i64 = 60;

/// Limits per model; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub tpm: Option<u64>,
    pub rpm: Option<u64>,
}

/// Served tokens and requests in one second.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Served {
    pub tokens: u64,
    pub requests: u64,
}

/// Remaining capacity to report in headers.
#[derive(Debug, Clone, Copy)]
pub struct Remaining {
    pub limit_tokens: Option<u64>,
    pub limit_requests: Option<u64>,
    pub tokens: u64,
    pub requests: u64,
    /// Seconds until the window is empty again.
    pub reset_secs: i64,
}

/// A refused request: when to try again.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    pub retry_after_secs: i64,
    pub remaining: Remaining,
}

/// Sliding-window counters per model, plus the per-second log of what was served.
#[derive(Debug, Default)]
pub struct Limiter {
    limits: Limits,
    windows: HashMap<String, BTreeMap<i64, Served>>,
    /// Second → served, all models together (for `/mock/stats`).
    pub log: BTreeMap<i64, Served>,
    pub refused: u64,
}

impl Limiter {
    /// A limiter with these limits per model.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Default::default()
        }
    }

    fn used(window: &BTreeMap<i64, Served>, now: i64) -> Served {
        window
            .range(now - WINDOW + 1..=now)
            .fold(Served::default(), |a, (_, s)| Served {
                tokens: a.tokens + s.tokens,
                requests: a.requests + s.requests,
            })
    }

    fn remaining(&self, model: &str, now: i64) -> Remaining {
        let window = self.windows.get(model);
        let used = window.map(|w| Self::used(w, now)).unwrap_or_default();
        let oldest = window.and_then(|w| w.range(now - WINDOW + 1..=now).next().map(|(s, _)| *s));
        Remaining {
            limit_tokens: self.limits.tpm,
            limit_requests: self.limits.rpm,
            tokens: self
                .limits
                .tpm
                .map_or(u64::MAX, |l| l.saturating_sub(used.tokens)),
            requests: self
                .limits
                .rpm
                .map_or(u64::MAX, |l| l.saturating_sub(used.requests)),
            reset_secs: oldest.map_or(0, |o| o + WINDOW - now),
        }
    }

    /// Admits a request of `tokens` (prompt + `max_tokens`) at second `now`, or refuses it.
    pub fn admit(&mut self, model: &str, now: i64, tokens: u64) -> Result<Remaining, Refused> {
        let window = self.windows.entry(model.to_string()).or_default();
        while let Some((&s, _)) = window.first_key_value() {
            if s > now - WINDOW {
                break;
            }
            window.pop_first();
        }
        let used = Self::used(window, now);
        let fits_tokens = self.limits.tpm.is_none_or(|l| used.tokens + tokens <= l);
        let fits_requests = self.limits.rpm.is_none_or(|l| used.requests < l);
        if !(fits_tokens && fits_requests) {
            self.refused += 1;
            let remaining = self.remaining(model, now);
            return Err(Refused {
                retry_after_secs: remaining.reset_secs.max(1),
                remaining,
            });
        }
        let slot = window.entry(now).or_default();
        slot.tokens += tokens;
        slot.requests += 1;
        let log = self.log.entry(now).or_default();
        log.tokens += tokens;
        log.requests += 1;
        Ok(self.remaining(model, now))
    }

    /// Replaces an admitted request's reservation (made at second `at`) by its actual usage.
    pub fn settle(&mut self, model: &str, at: i64, reserved: u64, actual: u64) {
        let give_back = reserved.saturating_sub(actual);
        if let Some(slot) = self.windows.get_mut(model).and_then(|w| w.get_mut(&at)) {
            slot.tokens = slot.tokens.saturating_sub(give_back);
        }
        if let Some(slot) = self.log.get_mut(&at) {
            slot.tokens = slot.tokens.saturating_sub(give_back);
        }
    }

    /// Headers for the current state of `model`.
    pub fn headers(&self, model: &str, now: i64) -> Vec<(&'static str, String)> {
        header_pairs(self.remaining(model, now))
    }
}

/// OpenAI's `x-ratelimit-*` headers.
pub fn header_pairs(r: Remaining) -> Vec<(&'static str, String)> {
    let mut h = Vec::new();
    let reset = format!("{}s", r.reset_secs.max(0));
    if let Some(l) = r.limit_tokens {
        h.push(("x-ratelimit-limit-tokens", l.to_string()));
        h.push(("x-ratelimit-remaining-tokens", r.tokens.to_string()));
        h.push(("x-ratelimit-reset-tokens", reset.clone()));
    }
    if let Some(l) = r.limit_requests {
        h.push(("x-ratelimit-limit-requests", l.to_string()));
        h.push(("x-ratelimit-remaining-requests", r.requests.to_string()));
        h.push(("x-ratelimit-reset-requests", reset));
    }
    h
}

/// The largest token sum over any `WINDOW`-second span of the log.
pub fn worst_window(log: &BTreeMap<i64, Served>) -> u64 {
    let Some((&first, _)) = log.first_key_value() else {
        return 0;
    };
    let Some((&last, _)) = log.last_key_value() else {
        return 0;
    };
    (first..=last)
        .map(|start| {
            log.range(start..start + WINDOW)
                .map(|(_, s)| s.tokens)
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_within_the_window_and_refuses_beyond_it() {
        let mut l = Limiter::new(Limits {
            tpm: Some(100),
            rpm: None,
        });
        assert!(l.admit("m", 10, 60).is_ok());
        assert!(l.admit("m", 20, 40).is_ok());
        let refused = l.admit("m", 30, 1).unwrap_err();
        // The slot of second 10 leaves the window at second 70.
        assert_eq!(refused.retry_after_secs, 40);
        assert!(l.admit("m", 70, 60).is_ok());
        assert_eq!(l.refused, 1);
    }

    #[test]
    fn settling_gives_back_unused_tokens() {
        let mut l = Limiter::new(Limits {
            tpm: Some(100),
            rpm: None,
        });
        l.admit("m", 1, 100).unwrap();
        l.settle("m", 1, 100, 30);
        assert!(l.admit("m", 2, 70).is_ok());
        assert_eq!(worst_window(&l.log), 100);
    }

    #[test]
    fn requests_per_minute_are_enforced_and_reported() {
        let mut l = Limiter::new(Limits {
            tpm: None,
            rpm: Some(1),
        });
        let ok = l.admit("m", 1, 5).unwrap();
        assert_eq!(ok.requests, 0);
        assert!(l.admit("m", 2, 5).is_err());
        let h = l.headers("m", 2);
        assert!(h.contains(&("x-ratelimit-remaining-requests", "0".to_string())));
    }

    #[test]
    fn the_worst_window_slides_over_seconds() {
        let mut log = BTreeMap::new();
        log.insert(
            0,
            Served {
                tokens: 50,
                requests: 1,
            },
        );
        log.insert(
            59,
            Served {
                tokens: 50,
                requests: 1,
            },
        );
        log.insert(
            60,
            Served {
                tokens: 70,
                requests: 1,
            },
        );
        assert_eq!(worst_window(&log), 120);
    }
}
