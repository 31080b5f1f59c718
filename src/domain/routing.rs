//! Route choice: the real-time ("cheap") path or a provider's batch path, with the reason in
//! plain words, and the tag rules that pick an alias for jobs that name none. Decided once at
//! submission and recorded on the job; a batched job whose deadline draws near without a result
//! is moved to the real-time path later (see the batch poller).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::job::RouteRequest;

/// The path a job takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// A real-time call now, within budgets.
    Cheap,
    /// The provider's Batch API at its discount.
    Batch,
}

impl Route {
    /// The text stored in `jobs.route` and `attempts.route`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cheap => "cheap",
            Self::Batch => "batch",
        }
    }
}

/// Timing assumptions of the batch path.
#[derive(Debug, Clone, Copy)]
pub struct BatchTiming {
    /// How long a provider batch is assumed to take to return results.
    pub turnaround: Duration,
    /// Extra room required before a deadline on top of the turnaround.
    pub margin: Duration,
}

/// A deployment as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    /// The provider offers a batch API for it.
    pub batch: bool,
}

/// A route, the deployment to start on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChoice {
    pub route: Route,
    /// Index into the job's deployments.
    pub deployment_index: usize,
    pub reason: String,
}

/// Chooses a route for a job with these deployments (in order of preference).
pub fn choose(
    requested: RouteRequest,
    deployments: &[Candidate],
    deadline: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    timing: BatchTiming,
) -> Result<RouteChoice, String> {
    let first = deployments
        .first()
        .map(|d| d.name.clone())
        .unwrap_or_default();
    let batchable = deployments.iter().position(|d| d.batch);
    let cheap = |reason: String| {
        Ok(RouteChoice {
            route: Route::Cheap,
            deployment_index: 0,
            reason,
        })
    };
    let batch = |i: usize, reason: String| {
        Ok(RouteChoice {
            route: Route::Batch,
            deployment_index: i,
            reason,
        })
    };
    match requested {
        RouteRequest::Cheap => cheap(format!("route cheap requested: real-time call on {first}")),
        RouteRequest::Batch => match batchable {
            Some(i) => batch(
                i,
                format!(
                    "route batch requested: provider batch on {} at the batch discount",
                    deployments[i].name
                ),
            ),
            None => Err(format!(
                "route `batch` needs a deployment with a provider batch API; none of {} has one",
                deployments
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        },
        RouteRequest::Auto => {
            let Some(deadline) = deadline else {
                return cheap(format!("auto: no deadline, so real-time on {first} now"));
            };
            let needed = timing.turnaround + timing.margin;
            let room = deadline - now;
            match batchable {
                Some(i) if room >= needed => batch(
                    i,
                    format!(
                        "auto: deadline in {} leaves room for the batch turnaround ({}) plus margin ({}): provider batch on {} at the batch discount",
                        human(room),
                        human(timing.turnaround),
                        human(timing.margin),
                        deployments[i].name
                    ),
                ),
                Some(_) => cheap(format!(
                    "auto: deadline in {} is too close for a provider batch (needs {}): real-time on {first}",
                    human(room),
                    human(needed)
                )),
                None => cheap(format!(
                    "auto: no deployment of this model has a batch API: real-time on {first}"
                )),
            }
        }
    }
}

/// Why a job that forces the batch route cannot have its deadline: one nearer than the batch
/// turnaround the config declares would only expire waiting in a provider batch, so it is
/// refused at submission. `None` when the deadline leaves the turnaround (or the job forces
/// nothing, has no deadline, or no turnaround is declared).
pub fn forced_batch_too_soon(
    requested: RouteRequest,
    deadline: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    turnaround: Duration,
) -> Option<String> {
    let deadline = deadline?;
    if requested != RouteRequest::Batch || turnaround <= Duration::zero() {
        return None;
    }
    let room = deadline - now;
    (room < turnaround).then(|| {
        format!(
            "is {} away, shorter than the batch turnaround ({}, `[routing] batch_turnaround`) that route `batch` needs, so the job would expire in a provider batch; give a deadline at least {} away, or use route `auto` or `cheap`",
            human(room.max(Duration::zero())),
            human(turnaround),
            human(turnaround)
        )
    })
}

fn human(d: Duration) -> String {
    let m = d.num_minutes();
    if m < 2 {
        format!("{}s", d.num_seconds())
    } else if m >= 120 {
        format!("{}h", m / 60)
    } else {
        format!("{m}m")
    }
}

/// A rule that picks an alias (and optionally a route) for a job by its tags.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Every pair must equal the job's tag of that name (`tenant` matches the job's tenant).
    pub when: BTreeMap<String, String>,
    pub alias: String,
    #[serde(default)]
    pub route: Option<RouteRequest>,
}

/// The first rule matching the job, if any.
pub fn match_rule<'a>(
    rules: &'a [RouteRule],
    tenant: &str,
    tags: &BTreeMap<String, String>,
) -> Option<&'a RouteRule> {
    rules.iter().find(|r| {
        r.when.iter().all(|(k, v)| {
            if k == "tenant" {
                v == tenant
            } else {
                tags.get(k) == Some(v)
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(batch: &[bool]) -> Vec<Candidate> {
        batch
            .iter()
            .enumerate()
            .map(|(i, b)| Candidate {
                name: format!("p/m{i}"),
                batch: *b,
            })
            .collect()
    }

    fn timing() -> BatchTiming {
        BatchTiming {
            turnaround: Duration::hours(12),
            margin: Duration::hours(1),
        }
    }

    #[test]
    fn auto_batches_when_the_deadline_leaves_room_and_says_why() {
        let now = Utc::now();
        let c = choose(
            RouteRequest::Auto,
            &deps(&[true]),
            Some(now + Duration::hours(24)),
            now,
            timing(),
        )
        .unwrap();
        assert_eq!(c.route, Route::Batch);
        assert!(
            c.reason.contains("deadline in 24h") && c.reason.contains("batch discount"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn auto_stays_real_time_for_near_deadlines_no_deadline_or_no_batch_api() {
        let now = Utc::now();
        let near = choose(
            RouteRequest::Auto,
            &deps(&[true]),
            Some(now + Duration::hours(1)),
            now,
            timing(),
        )
        .unwrap();
        assert_eq!(near.route, Route::Cheap);
        assert!(near.reason.contains("too close"));
        assert_eq!(
            choose(RouteRequest::Auto, &deps(&[true]), None, now, timing())
                .unwrap()
                .route,
            Route::Cheap
        );
        let none = choose(
            RouteRequest::Auto,
            &deps(&[false]),
            Some(now + Duration::days(3)),
            now,
            timing(),
        )
        .unwrap();
        assert_eq!(none.route, Route::Cheap);
        assert!(none.reason.contains("no deployment"));
    }

    #[test]
    fn batch_starts_on_the_first_batch_capable_deployment_or_is_refused() {
        let now = Utc::now();
        let c = choose(
            RouteRequest::Batch,
            &deps(&[false, true]),
            None,
            now,
            timing(),
        )
        .unwrap();
        assert_eq!((c.route, c.deployment_index), (Route::Batch, 1));
        assert!(choose(RouteRequest::Batch, &deps(&[false]), None, now, timing()).is_err());
        assert_eq!(
            choose(
                RouteRequest::Cheap,
                &deps(&[true]),
                Some(now + Duration::days(2)),
                now,
                timing()
            )
            .unwrap()
            .route,
            Route::Cheap
        );
    }

    #[test]
    fn a_forced_batch_route_needs_a_deadline_at_least_the_turnaround_away() {
        let now = Utc::now();
        let turnaround = Duration::hours(12);
        let soon = Some(now + Duration::minutes(10));
        let why = forced_batch_too_soon(RouteRequest::Batch, soon, now, turnaround).unwrap();
        assert!(why.contains("10m away") && why.contains("(12h"), "{why}");
        let seconds = Some(now + Duration::seconds(30));
        let why = forced_batch_too_soon(RouteRequest::Batch, seconds, now, Duration::seconds(90))
            .unwrap();
        assert!(why.contains("30s away") && why.contains("90s"), "{why}");
        for (requested, deadline, turnaround) in [
            (
                RouteRequest::Batch,
                Some(now + Duration::hours(12)),
                turnaround,
            ),
            (RouteRequest::Batch, None, turnaround),
            (RouteRequest::Batch, soon, Duration::zero()),
            (RouteRequest::Auto, soon, turnaround),
            (RouteRequest::Cheap, soon, turnaround),
        ] {
            assert_eq!(
                forced_batch_too_soon(requested, deadline, now, turnaround),
                None,
                "{requested:?} {deadline:?} {turnaround:?}"
            );
        }
    }

    #[test]
    fn the_first_matching_rule_wins_and_tenant_is_a_tag() {
        let rule = |k: &str, v: &str, alias: &str| RouteRule {
            when: [(k.to_string(), v.to_string())].into(),
            alias: alias.into(),
            route: None,
        };
        let rules = vec![
            rule("feature", "eval", "classify"),
            rule("tenant", "acme", "extract"),
            rule("tier", "free", "summarize"),
        ];
        let tags: BTreeMap<String, String> = [("tier".to_string(), "free".to_string())].into();
        assert_eq!(match_rule(&rules, "acme", &tags).unwrap().alias, "extract");
        assert_eq!(
            match_rule(&rules, "globex", &tags).unwrap().alias,
            "summarize"
        );
        assert!(match_rule(&rules, "globex", &BTreeMap::new()).is_none());
    }
}
