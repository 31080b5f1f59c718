//! The circuit breaker of one deployment, as a pure state machine.
//!
//! After `failures` consecutive failed calls to a deployment, stop calling it for `cooldown`;
//! then let one probe call through; its success closes the breaker, its failure opens it again.
//!
//! - **What counts.** A call that failed with a retryable error (timeout, connection error,
//!   5xx, 529, malformed answer) is a failure. A 429 is not: it is the provider pacing us, and
//!   the shared pause with its `retry-after` handles it.
//!   Any answer is a success, refusals and answers that miss a JSON schema included: the
//!   deployment answered. Fatal errors (the request's own fault), cancelled calls and cache hits
//!   say nothing about the deployment and are not signals.
//! - **closed → open** on the `failures`-th consecutive failure, until `now + cooldown`.
//! - **open → half-open** when a claim finds the cool-down over: it lets exactly one job through
//!   as the probe ([`grant_probe`]) and makes the others wait. The grant lapses after another
//!   cool-down, so a probe that never reports (its worker died) is replaced by a new one.
//! - **half-open → closed** when the probe's call succeeds; **→ open** again when it fails.
//!   While open or half-open, outcomes of other calls (started before the breaker opened) are
//!   ignored: only the probe decides.
//!
//! Sharing across processes: the state lives in Postgres (`circuit_breakers`, see
//! `db::breakers`), updated after each batch of recorded outcomes. Keeping calls away reuses the
//! mechanism every claim already honours, the deployment pause of `budgets.paused_until` (set to
//! `opened_until` when a breaker opens), so an open breaker makes jobs wait exactly like a
//! provider's 429 does, and the half-open probe is granted when that pause runs out.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::budget::Decision;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// Calls flow.
    #[default]
    Closed,
    /// No calls before `opened_until`.
    Open,
    /// One probe call is in flight; no other calls before `opened_until`.
    HalfOpen,
}

impl State {
    /// The text stored in `circuit_breakers.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// Parses the stored text (unknown text reads as closed: fail open, never stuck).
    pub fn parse(s: &str) -> Self {
        match s {
            "open" => Self::Open,
            "half_open" => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

/// One deployment's breaker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Breaker {
    pub state: State,
    pub consecutive_failures: u32,
    /// Open: the end of the cool-down. Half-open: when the probe's grant lapses.
    pub opened_until: Option<DateTime<Utc>>,
    /// Half-open: the job whose call is the probe.
    pub probe_owner: Option<String>,
}

/// What one call said about its deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Success,
    Failure,
}

/// The breaker's dials (`worker.breaker_failures`, `worker.breaker_cooldown`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Consecutive failures that open the breaker; 0 disables breakers.
    pub failures: u32,
    pub cooldown: Duration,
}

impl Settings {
    /// Whether breakers are on at all.
    pub fn enabled(self) -> bool {
        self.failures > 0
    }

    /// The end of a cool-down (or of a probe's grant) that starts at `now`.
    pub fn until(self, now: DateTime<Utc>) -> DateTime<Utc> {
        chrono::Duration::from_std(self.cooldown)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// What a claim may do with a deployment's jobs right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Send them.
    Pass,
    /// Send nothing before this time.
    Blocked(DateTime<Utc>),
    /// The cool-down is over: send exactly one, as the probe.
    Probe,
}

/// The gate of breaker `b` at `now`.
pub fn gate(b: &Breaker, now: DateTime<Utc>) -> Gate {
    match (b.state, b.opened_until) {
        (State::Closed, _) => Gate::Pass,
        (_, Some(until)) if until > now => Gate::Blocked(until),
        _ => Gate::Probe,
    }
}

/// The breaker once `job` has been let through as the probe: half-open until the grant lapses.
pub fn grant_probe(b: &Breaker, job: &str, now: DateTime<Utc>, s: Settings) -> Breaker {
    Breaker {
        state: State::HalfOpen,
        consecutive_failures: b.consecutive_failures,
        opened_until: Some(s.until(now)),
        probe_owner: Some(job.to_string()),
    }
}

/// The breaker after the call of `job` ended with `signal`.
pub fn observe(b: &Breaker, job: &str, signal: Signal, now: DateTime<Utc>, s: Settings) -> Breaker {
    let open = |failures: u32| Breaker {
        state: State::Open,
        consecutive_failures: failures,
        opened_until: Some(s.until(now)),
        probe_owner: None,
    };
    match (b.state, signal) {
        _ if !s.enabled() => Breaker::default(),
        (State::Closed, Signal::Success) => Breaker::default(),
        (State::Closed, Signal::Failure) => {
            let failures = b.consecutive_failures.saturating_add(1);
            if failures >= s.failures {
                open(failures)
            } else {
                Breaker {
                    consecutive_failures: failures,
                    ..Breaker::default()
                }
            }
        }
        (State::HalfOpen, _) if b.probe_owner.as_deref() != Some(job) => b.clone(),
        (State::HalfOpen, Signal::Success) => Breaker::default(),
        (State::HalfOpen, Signal::Failure) => open(b.consecutive_failures.saturating_add(1)),
        (State::Open, _) => b.clone(),
    }
}

/// Lets one job through per deployment whose breaker asks for a probe: the first admitted job
/// of each becomes its probe and every later one waits until `until` (a Unix second).
/// `deployments[i]` is the deployment of `decisions[i]`; returns the indexes of the probes.
pub fn one_probe_each(
    deployments: &[&str],
    probing: &BTreeSet<String>,
    decisions: &mut [Decision],
    until: i64,
) -> Vec<usize> {
    let mut probes = Vec::new();
    let mut granted: BTreeSet<&str> = BTreeSet::new();
    for (i, (d, decision)) in deployments.iter().zip(decisions.iter_mut()).enumerate() {
        if !probing.contains(*d) || !matches!(decision, Decision::Admit) {
            continue;
        }
        if granted.insert(d) {
            probes.push(i);
        } else {
            *decision = Decision::Wait {
                until,
                reason: format!("{d}'s circuit breaker is probing it with one call"),
            };
        }
    }
    probes
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Settings = Settings {
        failures: 3,
        cooldown: Duration::from_secs(30),
    };

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    fn closed(failures: u32) -> Breaker {
        Breaker {
            consecutive_failures: failures,
            ..Breaker::default()
        }
    }

    fn open(failures: u32, until: i64) -> Breaker {
        Breaker {
            state: State::Open,
            consecutive_failures: failures,
            opened_until: Some(t(until)),
            probe_owner: None,
        }
    }

    fn half_open(failures: u32, probe: &str, until: i64) -> Breaker {
        Breaker {
            state: State::HalfOpen,
            consecutive_failures: failures,
            opened_until: Some(t(until)),
            probe_owner: Some(probe.into()),
        }
    }

    #[test]
    fn outcomes_move_the_breaker_as_the_state_machine_says() {
        use Signal::*;
        let cases: Vec<(&str, Breaker, &str, Signal, Breaker)> = vec![
            (
                "a success keeps it closed",
                closed(0),
                "j",
                Success,
                closed(0),
            ),
            (
                "a success resets the count",
                closed(2),
                "j",
                Success,
                closed(0),
            ),
            ("a failure counts", closed(1), "j", Failure, closed(2)),
            (
                "the nth failure opens it",
                closed(2),
                "j",
                Failure,
                open(3, 30),
            ),
            (
                "stragglers leave it open",
                open(3, 30),
                "j",
                Success,
                open(3, 30),
            ),
            (
                "failing stragglers do not extend it",
                open(3, 30),
                "j",
                Failure,
                open(3, 30),
            ),
            (
                "the probe's success closes it",
                half_open(3, "p", 30),
                "p",
                Success,
                closed(0),
            ),
            (
                "the probe's failure reopens it",
                half_open(3, "p", 5),
                "p",
                Failure,
                open(4, 30),
            ),
            (
                "others are ignored while probing",
                half_open(3, "p", 30),
                "j",
                Failure,
                half_open(3, "p", 30),
            ),
            (
                "others' successes are ignored too",
                half_open(3, "p", 30),
                "j",
                Success,
                half_open(3, "p", 30),
            ),
        ];
        for (why, before, job, signal, after) in cases {
            assert_eq!(observe(&before, job, signal, t(0), S), after, "{why}");
        }
    }

    #[test]
    fn the_gate_blocks_until_the_cool_down_ends_then_asks_for_one_probe() {
        let cases = [
            ("closed", closed(2), 0, Gate::Pass),
            ("open", open(3, 30), 10, Gate::Blocked(t(30))),
            ("open, cool-down over", open(3, 30), 30, Gate::Probe),
            (
                "probe in flight",
                half_open(3, "p", 60),
                40,
                Gate::Blocked(t(60)),
            ),
            (
                "probe's grant lapsed",
                half_open(3, "p", 60),
                61,
                Gate::Probe,
            ),
        ];
        for (why, b, now, expected) in cases {
            assert_eq!(gate(&b, t(now)), expected, "{why}");
        }
    }

    #[test]
    fn granting_a_probe_makes_it_half_open_for_one_more_cool_down() {
        let b = grant_probe(&open(3, 30), "job_1", t(31), S);
        assert_eq!(b, half_open(3, "job_1", 61));
        assert_eq!(gate(&b, t(40)), Gate::Blocked(t(61)));
    }

    #[test]
    fn only_the_first_admitted_job_of_a_probing_deployment_goes_through() {
        let deployments = ["a/x", "b/y", "a/x", "a/x", "b/y"];
        let probing: BTreeSet<String> = ["a/x".to_string()].into();
        let wait = || Decision::Wait {
            until: 5,
            reason: "budget".into(),
        };
        let mut decisions = vec![
            wait(),
            Decision::Admit,
            Decision::Admit,
            Decision::Admit,
            Decision::Admit,
        ];
        let probes = one_probe_each(&deployments, &probing, &mut decisions, 99);
        assert_eq!(
            probes,
            vec![2],
            "the first job waited for budget; the next admitted one probes"
        );
        assert!(matches!(decisions[0], Decision::Wait { until: 5, .. }));
        assert!(
            matches!(decisions[1], Decision::Admit),
            "other deployments are untouched"
        );
        assert!(matches!(decisions[2], Decision::Admit));
        assert!(matches!(decisions[3], Decision::Wait { until: 99, .. }));
        assert!(matches!(decisions[4], Decision::Admit));
    }

    #[test]
    fn a_disabled_breaker_never_opens() {
        let off = Settings { failures: 0, ..S };
        let mut b = Breaker::default();
        for _ in 0..10 {
            b = observe(&b, "j", Signal::Failure, t(0), off);
        }
        assert_eq!(b, Breaker::default());
    }

    #[test]
    fn states_round_trip_through_their_stored_text() {
        for s in [State::Closed, State::Open, State::HalfOpen] {
            assert_eq!(State::parse(s.as_str()), s);
        }
    }
}
