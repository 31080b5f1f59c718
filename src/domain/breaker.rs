//! The circuit breaker of one deployment, as a pure state machine.
//!
//! The breaker opens on a failure **rate**, not a streak: when at least `min_calls` calls were
//! observed in the last `window` and at least `failure_rate` percent of them failed (as
//! resilience4j's sliding window and Envoy's outlier detection do). With hundreds of calls in
//! flight from several processes, "n consecutive failures" measures how retries cluster more
//! than how healthy the deployment is: at a 5% error rate five failures in a row happen all the
//! time. The window is a sliding-window counter: the current bucket of `window` length plus the
//! previous bucket weighted by how much of it still overlaps the last `window`, so it needs two
//! pairs of counters, not a log of calls, and can live in one Postgres row.
//!
//! - **What counts.** A call that failed with a retryable error (timeout, connection error,
//!   5xx, 529, malformed answer) is a failure. A 429 is not: it is the provider pacing us, and
//!   the shared pause with its `retry-after` handles it.
//!   Any answer is a success, refusals and answers that miss a JSON schema included: the
//!   deployment answered. Fatal errors (the request's own fault), cancelled calls and cache hits
//!   say nothing about the deployment and are not signals.
//! - **closed → open** when the window's rate trips, until `now + cooldown`.
//! - **open → half-open** when a claim finds the cool-down over: it lets exactly one job through
//!   as the probe ([`grant_probe`]), preferring a job that has not failed before (a job that
//!   keeps failing says little about the deployment), and makes the others wait. The grant
//!   lapses after another cool-down, so a probe that never reports (its worker died) is
//!   replaced by a new one.
//! - **half-open → closed** (with an empty window) when the probe's call succeeds; **→ open**
//!   again when it fails. While open or half-open, outcomes of other calls (started before the
//!   breaker opened) are ignored: only the probe decides.
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

/// The calls a closed breaker has seen: the current bucket (since `start`) and the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    /// When the current bucket began; `None` before the first call.
    pub start: Option<DateTime<Utc>>,
    pub calls: u32,
    pub failures: u32,
    pub prev_calls: u32,
    pub prev_failures: u32,
}

impl Window {
    /// The window at `now`: buckets older than the last two `length`s are dropped.
    pub fn roll(self, now: DateTime<Utc>, length: Duration) -> Window {
        let len = chrono::Duration::from_std(length).unwrap_or(chrono::Duration::MAX);
        let Some(start) = self.start else {
            return Window {
                start: Some(now),
                ..Window::default()
            };
        };
        let elapsed = now.signed_duration_since(start);
        if elapsed < len {
            return self;
        }
        match start.checked_add_signed(len) {
            Some(next) if elapsed < len * 2 => Window {
                start: Some(next),
                calls: 0,
                failures: 0,
                prev_calls: self.calls,
                prev_failures: self.failures,
            },
            _ => Window {
                start: Some(now),
                ..Window::default()
            },
        }
    }

    /// The window with one more call.
    pub fn record(self, signal: Signal) -> Window {
        Window {
            calls: self.calls.saturating_add(1),
            failures: self
                .failures
                .saturating_add(u32::from(signal == Signal::Failure)),
            ..self
        }
    }

    /// Estimated (calls, failures) in the `length` before `now`: the current bucket, plus the
    /// previous one weighted by its overlap with that span.
    pub fn estimate(&self, now: DateTime<Utc>, length: Duration) -> (f64, f64) {
        let elapsed = self
            .start
            .map(|s| now.signed_duration_since(s).num_milliseconds().max(0) as f64)
            .unwrap_or(0.0);
        let len = (length.as_millis() as f64).max(1.0);
        let weight = (1.0 - elapsed / len).clamp(0.0, 1.0);
        (
            f64::from(self.calls) + f64::from(self.prev_calls) * weight,
            f64::from(self.failures) + f64::from(self.prev_failures) * weight,
        )
    }

    /// Whether the failure rate in the window trips the breaker.
    pub fn trips(&self, now: DateTime<Utc>, s: Settings) -> bool {
        let (calls, failures) = self.estimate(now, s.window);
        calls >= f64::from(s.min_calls.max(1))
            && failures * 100.0 >= f64::from(s.failure_rate) * calls
    }
}

/// One deployment's breaker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Breaker {
    pub state: State,
    /// Closed: the calls of the sliding window.
    pub window: Window,
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

/// The breaker's dials (`worker.breaker_failure_rate`, `worker.breaker_min_calls`,
/// `worker.breaker_window`, `worker.breaker_cooldown`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Percentage (1–100) of failed calls in the window that opens the breaker; 0 turns
    /// breakers off.
    pub failure_rate: u8,
    /// Calls the window must hold before its rate counts.
    pub min_calls: u32,
    /// How far back the window looks.
    pub window: Duration,
    pub cooldown: Duration,
}

impl Settings {
    /// Whether breakers are on at all.
    pub fn enabled(self) -> bool {
        self.failure_rate > 0
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
pub fn grant_probe(job: &str, now: DateTime<Utc>, s: Settings) -> Breaker {
    Breaker {
        state: State::HalfOpen,
        window: Window::default(),
        opened_until: Some(s.until(now)),
        probe_owner: Some(job.to_string()),
    }
}

/// The breaker after the call of `job` ended with `signal`.
pub fn observe(b: &Breaker, job: &str, signal: Signal, now: DateTime<Utc>, s: Settings) -> Breaker {
    let open = || Breaker {
        state: State::Open,
        window: Window::default(),
        opened_until: Some(s.until(now)),
        probe_owner: None,
    };
    match (b.state, signal) {
        _ if !s.enabled() => Breaker::default(),
        (State::Closed, _) => {
            let window = b.window.roll(now, s.window).record(signal);
            if signal == Signal::Failure && window.trips(now, s) {
                open()
            } else {
                Breaker {
                    window,
                    ..Breaker::default()
                }
            }
        }
        (State::HalfOpen, _) if b.probe_owner.as_deref() != Some(job) => b.clone(),
        (State::HalfOpen, Signal::Success) => Breaker::default(),
        (State::HalfOpen, Signal::Failure) => open(),
        (State::Open, _) => b.clone(),
    }
}

/// Lets one job through per deployment whose breaker asks for a probe: the first admitted job
/// of each that has not failed before (`fresh[i]`), or else its first admitted job, becomes its
/// probe and every other one waits until `until` (a Unix second). `deployments[i]` is the
/// deployment of `decisions[i]`; returns the indexes of the probes.
pub fn one_probe_each(
    deployments: &[&str],
    fresh: &[bool],
    probing: &BTreeSet<String>,
    decisions: &mut [Decision],
    until: i64,
) -> Vec<usize> {
    let admitted = |i: usize, decisions: &[Decision]| {
        probing.contains(deployments[i]) && matches!(decisions[i], Decision::Admit)
    };
    let mut probes = Vec::new();
    let mut granted: BTreeSet<&str> = BTreeSet::new();
    // Fresh jobs first, then any.
    for pass_fresh in [true, false] {
        for (i, d) in deployments
            .iter()
            .copied()
            .enumerate()
            .take(decisions.len())
        {
            if admitted(i, decisions)
                && (!pass_fresh || fresh.get(i).copied().unwrap_or(false))
                && granted.insert(d)
            {
                probes.push(i);
            }
        }
    }
    for (i, decision) in decisions.iter_mut().enumerate() {
        let Some(d) = deployments.get(i) else {
            continue;
        };
        if probing.contains(*d) && matches!(decision, Decision::Admit) && !probes.contains(&i) {
            *decision = Decision::Wait {
                until,
                reason: format!("{d}'s circuit breaker is probing it with one call"),
            };
        }
    }
    probes.sort_unstable();
    probes
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Settings = Settings {
        failure_rate: 50,
        min_calls: 20,
        window: Duration::from_secs(30),
        cooldown: Duration::from_secs(30),
    };

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    fn open(until: i64) -> Breaker {
        Breaker {
            state: State::Open,
            window: Window::default(),
            opened_until: Some(t(until)),
            probe_owner: None,
        }
    }

    fn half_open(probe: &str, until: i64) -> Breaker {
        Breaker {
            state: State::HalfOpen,
            window: Window::default(),
            opened_until: Some(t(until)),
            probe_owner: Some(probe.into()),
        }
    }

    /// Feeds `calls` calls spread evenly over `secs` seconds from `from`; every `fail_every`-th
    /// fails (0: none). Returns the breaker and when it first opened, if it did.
    fn run(
        b: Breaker,
        from: i64,
        secs: i64,
        calls: i64,
        fail_every: i64,
    ) -> (Breaker, Option<i64>) {
        let mut b = b;
        let mut opened = None;
        for i in 0..calls {
            let at = from + i * secs / calls.max(1);
            let signal = if fail_every > 0 && i % fail_every == fail_every - 1 {
                Signal::Failure
            } else {
                Signal::Success
            };
            b = observe(&b, "j", signal, t(at), S);
            if b.state == State::Open && opened.is_none() {
                opened = Some(at);
            }
        }
        (b, opened)
    }

    #[test]
    fn the_breaker_opens_on_a_failure_rate_over_the_window_not_a_streak() {
        // (why, calls, over seconds, every n-th fails, opens)
        let cases = [
            ("no failures", 2000, 600, 0, false),
            ("5% errors, thousands of calls", 4000, 600, 20, false),
            ("one in three fails", 900, 300, 3, false),
            ("every call fails", 100, 10, 1, true),
            ("every other call fails", 200, 60, 2, true),
            ("too few calls to judge, all failing", 19, 10, 1, false),
            ("19 failures spread over 10 minutes", 19, 600, 1, false),
        ];
        for (why, calls, secs, every, opens) in cases {
            let (_, opened) = run(Breaker::default(), 0, secs, calls, every);
            assert_eq!(opened.is_some(), opens, "{why}");
        }
    }

    #[test]
    fn clustered_failures_at_a_low_rate_do_not_open_it() {
        // 5% errors where the failures come in streaks of 5 (retries clustering): the old
        // "5 consecutive failures" rule opened here.
        let mut b = Breaker::default();
        for round in 0..40 {
            for i in 0..100 {
                let signal = if i < 5 {
                    Signal::Failure
                } else {
                    Signal::Success
                };
                b = observe(&b, "j", signal, t(round * 5), S);
            }
        }
        assert_eq!(b.state, State::Closed);
    }

    #[test]
    fn the_window_slides_old_failures_out() {
        let mut b = Breaker::default();
        for _ in 0..15 {
            b = observe(&b, "j", Signal::Failure, t(0), S);
        }
        // Half a window later, 15 failures still count about half: 15 × 0.5 + 5 = 12.5 calls,
        // all failures, short of min_calls.
        for _ in 0..5 {
            b = observe(&b, "j", Signal::Failure, t(45), S);
        }
        assert_eq!(b.state, State::Closed, "{b:?}");
        // Two windows later, everything before is forgotten.
        b = observe(&b, "j", Signal::Failure, t(200), S);
        assert_eq!((b.window.calls, b.window.prev_calls), (1, 0));
        // Within one bucket the counts add up.
        for _ in 0..19 {
            b = observe(&b, "j", Signal::Failure, t(201), S);
        }
        assert_eq!(b, open(231));
    }

    #[test]
    fn the_window_estimate_weights_the_previous_bucket_by_its_overlap() {
        let w = Window {
            start: Some(t(30)),
            calls: 10,
            failures: 5,
            prev_calls: 40,
            prev_failures: 40,
        };
        let cases = [(30, (50.0, 45.0)), (45, (30.0, 25.0)), (60, (10.0, 5.0))];
        for (now, expected) in cases {
            assert_eq!(w.estimate(t(now), S.window), expected, "at {now}");
        }
        assert_eq!(w.roll(t(61), S.window).start, Some(t(60)));
        assert_eq!(w.roll(t(61), S.window).prev_calls, 10);
        assert_eq!(w.roll(t(95), S.window).prev_calls, 0);
    }

    #[test]
    fn probes_and_stragglers_move_the_breaker_as_the_state_machine_says() {
        use Signal::*;
        let cases: Vec<(&str, Breaker, &str, Signal, Breaker)> = vec![
            ("stragglers leave it open", open(30), "j", Success, open(30)),
            (
                "failing stragglers do not extend it",
                open(30),
                "j",
                Failure,
                open(30),
            ),
            (
                "the probe's success closes it",
                half_open("p", 30),
                "p",
                Success,
                Breaker::default(),
            ),
            (
                "the probe's failure reopens it",
                half_open("p", 5),
                "p",
                Failure,
                open(30),
            ),
            (
                "others are ignored while probing",
                half_open("p", 30),
                "j",
                Failure,
                half_open("p", 30),
            ),
            (
                "others' successes are ignored too",
                half_open("p", 30),
                "j",
                Success,
                half_open("p", 30),
            ),
        ];
        for (why, before, job, signal, after) in cases {
            assert_eq!(observe(&before, job, signal, t(0), S), after, "{why}");
        }
    }

    #[test]
    fn the_gate_blocks_until_the_cool_down_ends_then_asks_for_one_probe() {
        let cases = [
            ("closed", Breaker::default(), 0, Gate::Pass),
            ("open", open(30), 10, Gate::Blocked(t(30))),
            ("open, cool-down over", open(30), 30, Gate::Probe),
            (
                "probe in flight",
                half_open("p", 60),
                40,
                Gate::Blocked(t(60)),
            ),
            ("probe's grant lapsed", half_open("p", 60), 61, Gate::Probe),
        ];
        for (why, b, now, expected) in cases {
            assert_eq!(gate(&b, t(now)), expected, "{why}");
        }
    }

    #[test]
    fn granting_a_probe_makes_it_half_open_for_one_more_cool_down() {
        let b = grant_probe("job_1", t(31), S);
        assert_eq!(b, half_open("job_1", 61));
        assert_eq!(gate(&b, t(40)), Gate::Blocked(t(61)));
    }

    #[test]
    fn one_admitted_job_per_probing_deployment_goes_through_a_fresh_one_first() {
        let deployments = ["a/x", "b/y", "a/x", "a/x", "b/y"];
        let probing: BTreeSet<String> = ["a/x".to_string()].into();
        let wait = || Decision::Wait {
            until: 5,
            reason: "budget".into(),
        };
        let cases = [
            ("no fresh job: the first admitted probes", [false; 5], 2),
            (
                "a fresh job probes, not one that failed before",
                [false, false, false, true, false],
                3,
            ),
            (
                "a fresh job that waits for budget cannot probe",
                [true, false, false, false, false],
                2,
            ),
        ];
        for (why, fresh, probe) in cases {
            let mut decisions = vec![
                wait(),
                Decision::Admit,
                Decision::Admit,
                Decision::Admit,
                Decision::Admit,
            ];
            let probes = one_probe_each(&deployments, &fresh, &probing, &mut decisions, 99);
            assert_eq!(probes, vec![probe], "{why}");
            assert!(
                matches!(decisions[0], Decision::Wait { until: 5, .. }),
                "{why}"
            );
            assert!(
                matches!(decisions[1], Decision::Admit),
                "{why}: other deployments untouched"
            );
            assert!(matches!(decisions[4], Decision::Admit), "{why}");
            for i in [2, 3] {
                let expected_admit = i == probe;
                assert_eq!(
                    matches!(decisions[i], Decision::Admit),
                    expected_admit,
                    "{why}: {i}"
                );
            }
        }
    }

    #[test]
    fn a_disabled_breaker_never_opens() {
        let off = Settings {
            failure_rate: 0,
            ..S
        };
        let mut b = Breaker::default();
        for _ in 0..100 {
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
