//! Cron next-fire: standard 5-field crontab (ranges, lists, steps, `MON-FRI`, `JAN`, and the
//! `@hourly`/`@daily`/`@weekly`/`@monthly` macros) in an IANA time zone, as pure functions.
//!
//! Matching is done on local wall-clock times (with `croner`), then each local time is placed in
//! the zone the way cron users expect across daylight-saving changes: a local time that does not
//! exist (the spring-forward gap) does not fire, and a local time that happens twice (the
//! fall-back overlap) fires once, at its first occurrence.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// How far ahead a search may look before giving up (a pattern like `0 0 31 2 *` never fires).
const MAX_CANDIDATES: usize = 10_000;

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    zone: Tz,
}

/// What was wrong with a schedule, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// The crontab expression does not parse.
    #[error("schedule: `{expr}` is not a 5-field crontab expression: {why}")]
    Expression { expr: String, why: String },
    /// The time zone is not an IANA name.
    #[error("timezone: `{0}` is not an IANA time zone such as `Europe/Berlin` or `UTC`")]
    Zone(String),
}

impl CronError {
    /// The configuration field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            CronError::Expression { .. } => "schedule",
            CronError::Zone(_) => "timezone",
        }
    }
}

impl CronSchedule {
    /// Parses `expr` (5 fields or a macro) in `zone` (an IANA name).
    pub fn parse(expr: &str, zone: &str) -> Result<Self, CronError> {
        let zone: Tz = zone
            .parse()
            .map_err(|_| CronError::Zone(zone.to_string()))?;
        let bad = |why: String| CronError::Expression {
            expr: expr.to_string(),
            why,
        };
        let trimmed = expr.trim();
        if !trimmed.starts_with('@') && trimmed.split_whitespace().count() != 5 {
            return Err(bad(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                trimmed.split_whitespace().count()
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self { cron, zone })
    }

    /// The schedule's time zone.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first fire time strictly after `after`, or `None` if the pattern never fires again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Tz>> {
        let mut local: NaiveDateTime = after.with_timezone(&self.zone).naive_local();
        for _ in 0..MAX_CANDIDATES {
            local = self.cron.find_next_occurrence(&local, false).ok()?;
            // A gap time maps to nothing (skipped); an overlap time maps to its first instant,
            // which is at or before `after` once we are inside the repeated hour.
            if let Some(at) = self.zone.from_local_datetime(&local).earliest()
                && at.with_timezone(&Utc) > after
            {
                return Some(at);
            }
        }
        None
    }

    /// The next `count` fire times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Tz>> {
        let mut out = Vec::with_capacity(count.min(1024));
        let mut cursor = after;
        while out.len() < count {
            let Some(next) = self.next_after(cursor) else {
                break;
            };
            cursor = next.with_timezone(&Utc);
            out.push(next);
        }
        out
    }

    /// The latest fire time in `(after, now]`, and how many fire times that window holds
    /// (counting at most [`MAX_CANDIDATES`]).
    pub fn due(&self, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<Due> {
        let mut cursor = after;
        let mut latest = None;
        let mut count = 0usize;
        while count < MAX_CANDIDATES {
            match self.next_after(cursor) {
                Some(t) if t.with_timezone(&Utc) <= now => {
                    cursor = t.with_timezone(&Utc);
                    latest = Some(cursor);
                    count += 1;
                }
                _ => break,
            }
        }
        latest.map(|latest| Due { latest, count })
    }
}

/// Fire times that came due since the last one taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The most recent due fire time.
    pub latest: DateTime<Utc>,
    /// How many fire times came due (more than one means ticks were missed).
    pub count: usize,
}

/// What a schedule does with ticks missed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed ticks fire nothing; the next tick fires as usual.
    #[default]
    Skip,
    /// Missed ticks fire one run, whatever their number.
    Once,
}

/// What the scheduler does about a schedule at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due.
    Wait,
    /// Fire the run of this fire time.
    Fire(DateTime<Utc>),
    /// Record this fire time as skipped (missed while down, `catch_up = "skip"`).
    Skip(DateTime<Utc>),
}

/// Decides whether to fire: a due tick no older than `grace` fires; older ones were missed and
/// follow `catch_up`.
pub fn decide(
    due: Option<Due>,
    now: DateTime<Utc>,
    grace: chrono::Duration,
    catch_up: CatchUp,
) -> Decision {
    let Some(due) = due else {
        return Decision::Wait;
    };
    let fresh = now.signed_duration_since(due.latest) <= grace;
    match (fresh, catch_up) {
        (true, _) | (false, CatchUp::Once) => Decision::Fire(due.latest),
        (false, CatchUp::Skip) => Decision::Skip(due.latest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next_n(expr: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
        CronSchedule::parse(expr, zone)
            .unwrap()
            .upcoming(utc(after), n)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect()
    }

    #[test]
    fn weekday_names_ranges_and_steps_follow_standard_crontab() {
        // 2026-11-27 is a Friday: MON-FRI means Monday to Friday (not Quartz's Sunday = 1).
        assert_eq!(
            next_n("30 9 * * MON-FRI", "UTC", "2026-11-27T10:00:00Z", 2),
            ["2026-11-30T09:30:00+00:00", "2026-12-01T09:30:00+00:00"]
        );
        assert_eq!(
            next_n("*/20 8-9 * * *", "UTC", "2026-11-27T08:50:00Z", 3),
            [
                "2026-11-27T09:00:00+00:00",
                "2026-11-27T09:20:00+00:00",
                "2026-11-27T09:40:00+00:00"
            ]
        );
        assert_eq!(
            next_n("0 0 1 JAN,JUL *", "UTC", "2026-11-27T00:00:00Z", 2),
            ["2027-01-01T00:00:00+00:00", "2027-07-01T00:00:00+00:00"]
        );
        assert_eq!(
            next_n("15,45 * * * 1-5", "UTC", "2026-11-27T23:50:00Z", 1),
            ["2026-11-30T00:15:00+00:00"]
        );
    }

    #[test]
    fn macros_fire_at_the_start_of_their_period() {
        let after = "2026-11-27T10:20:00Z";
        assert_eq!(
            next_n("@hourly", "UTC", after, 1),
            ["2026-11-27T11:00:00+00:00"]
        );
        assert_eq!(
            next_n("@daily", "UTC", after, 1),
            ["2026-11-28T00:00:00+00:00"]
        );
        assert_eq!(
            next_n("@weekly", "UTC", after, 1),
            ["2026-11-29T00:00:00+00:00"]
        );
        assert_eq!(
            next_n("@monthly", "UTC", after, 1),
            ["2026-12-01T00:00:00+00:00"]
        );
    }

    #[test]
    fn times_are_local_to_the_schedules_zone() {
        assert_eq!(
            next_n("0 2 * * *", "Europe/Berlin", "2026-11-27T12:00:00Z", 1),
            ["2026-11-28T02:00:00+01:00"]
        );
    }

    #[test]
    fn a_local_time_skipped_by_spring_forward_does_not_fire_in_berlin() {
        // 2027-03-28: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
        assert_eq!(
            next_n("30 2 * * *", "Europe/Berlin", "2027-03-26T12:00:00Z", 3),
            [
                "2027-03-27T02:30:00+01:00",
                "2027-03-29T02:30:00+02:00",
                "2027-03-30T02:30:00+02:00"
            ]
        );
    }

    #[test]
    fn a_local_time_repeated_by_fall_back_fires_once_in_berlin() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        assert_eq!(
            next_n("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
        // An every-30-minutes schedule does not fire the repeated hour a second time.
        assert_eq!(
            next_n("*/30 * * * *", "Europe/Berlin", "2026-10-24T23:45:00Z", 5),
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T03:00:00+01:00",
                "2026-10-25T03:30:00+01:00",
                "2026-10-25T04:00:00+01:00"
            ]
        );
    }

    #[test]
    fn new_york_skips_the_spring_gap_and_fires_the_fall_overlap_once() {
        // 2027-03-14: 02:00 EST jumps to 03:00 EDT.
        assert_eq!(
            next_n("30 2 * * *", "America/New_York", "2027-03-13T12:00:00Z", 2),
            ["2027-03-15T02:30:00-04:00", "2027-03-16T02:30:00-04:00"]
        );
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
        assert_eq!(
            next_n("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
        // Asking from inside the repeated hour does not give its first occurrence again.
        assert_eq!(
            next_n("45 1 * * *", "America/New_York", "2026-11-01T06:10:00Z", 1),
            ["2026-11-02T01:45:00-05:00"]
        );
    }

    #[test]
    fn bad_expressions_and_zones_name_their_field() {
        for bad in ["* * * *", "61 * * * *", "* * * * * *", "0 0 * FOO *", ""] {
            let e = CronSchedule::parse(bad, "UTC").unwrap_err();
            assert_eq!(e.field(), "schedule", "{bad}");
        }
        let e = CronSchedule::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(e.field(), "timezone");
    }

    #[test]
    fn a_pattern_that_never_fires_has_no_next_time() {
        let s = CronSchedule::parse("0 0 31 2 *", "UTC").unwrap();
        assert!(s.next_after(utc("2026-01-01T00:00:00Z")).is_none());
    }

    #[test]
    fn due_counts_missed_ticks_and_decide_follows_catch_up() {
        let s = CronSchedule::parse("* * * * *", "UTC").unwrap();
        let t0 = utc("2026-11-29T06:00:00Z");
        assert_eq!(s.due(t0, utc("2026-11-29T06:00:59Z")), None);
        let due = s.due(t0, utc("2026-11-29T06:05:30Z")).unwrap();
        assert_eq!(due.latest, utc("2026-11-29T06:05:00Z"));
        assert_eq!(due.count, 5);
        let grace = chrono::Duration::seconds(60);
        let now = utc("2026-11-29T06:05:30Z");
        assert_eq!(
            decide(Some(due), now, grace, CatchUp::Skip),
            Decision::Fire(due.latest)
        );
        let late = utc("2026-11-29T06:07:30Z");
        let due = s.due(t0, utc("2026-11-29T06:05:30Z"));
        assert_eq!(
            decide(due, late, grace, CatchUp::Skip),
            Decision::Skip(utc("2026-11-29T06:05:00Z"))
        );
        assert_eq!(
            decide(due, late, grace, CatchUp::Once),
            Decision::Fire(utc("2026-11-29T06:05:00Z"))
        );
        assert_eq!(decide(None, late, grace, CatchUp::Once), Decision::Wait);
    }
}
