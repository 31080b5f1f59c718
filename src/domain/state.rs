//! The job state machine of SPEC.md §2 in one home: the states, their SQL spelling, which are
//! terminal, and the transitions allowed between them. SQL that writes a state takes its
//! literal from [`JobState::as_str`] (or the `SQL_*` lists below), so the vocabulary cannot
//! drift between files; every state write stays conditional on the state it leaves.

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    /// Waiting for a worker (real-time) or for the packer (batch route).
    Queued,
    /// Claimed by a worker whose provider call is in flight.
    Running,
    /// A retryable failure: waiting for `run_after`, then queued again.
    RetryScheduled,
    /// Sent in a provider batch; the poller records its result.
    InProviderBatch,
    /// Has its answer.
    Succeeded,
    /// Retries and fallbacks exhausted, a non-retryable error, or quarantined input.
    Failed,
    /// Cancelled on request.
    Cancelled,
    /// Its deadline passed before a result.
    Expired,
}

use JobState::*;

/// Every state, in lifecycle order.
pub const ALL: [JobState; 8] = [
    Queued,
    Running,
    RetryScheduled,
    InProviderBatch,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
];

/// The allowed moves `(from, to)`, with why each exists.
pub const TRANSITIONS: &[(JobState, JobState, &str)] = &[
    (Queued, Running, "a worker claims it"),
    (
        Queued,
        InProviderBatch,
        "the packer sends it in a provider batch",
    ),
    (Queued, Cancelled, "cancelled before it ran"),
    (
        Queued,
        Failed,
        "refused at claim (a USD cap with policy reject, a job that can never fit)",
    ),
    (Queued, Expired, "its deadline passed while it waited"),
    (Running, Succeeded, "the call answered"),
    (Running, RetryScheduled, "a retryable failure"),
    (
        Running,
        Queued,
        "a fallback deployment, a rescue from a dead worker, a stray claim",
    ),
    (Running, InProviderBatch, "handed to the batch path"),
    (
        Running,
        Failed,
        "attempts exhausted or a non-retryable error",
    ),
    (Running, Cancelled, "its call was aborted on request"),
    (Running, Expired, "its deadline passed during the call"),
    (RetryScheduled, Queued, "its retry is due"),
    (
        RetryScheduled,
        Cancelled,
        "cancelled while waiting for its retry",
    ),
    (
        RetryScheduled,
        Expired,
        "its deadline passed while it waited",
    ),
    (InProviderBatch, Succeeded, "its batch item answered"),
    (
        InProviderBatch,
        Queued,
        "re-driven: next batch, or real-time near the deadline",
    ),
    (
        InProviderBatch,
        Failed,
        "its item failed for good, or its batch was lost",
    ),
    (
        InProviderBatch,
        Cancelled,
        "cancelled on request; a late result is discarded",
    ),
    (
        Failed,
        Queued,
        "requeued by an operator from the dead letters",
    ),
];

impl JobState {
    /// The spelling in SQL, the API and the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Queued => "queued",
            Running => "running",
            RetryScheduled => "retry_scheduled",
            InProviderBatch => "in_provider_batch",
            Succeeded => "succeeded",
            Failed => "failed",
            Cancelled => "cancelled",
            Expired => "expired",
        }
    }

    /// The state spelt `s`.
    pub fn parse(s: &str) -> Option<Self> {
        ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A final state: the job has its one result (`finalized_at` is set).
    pub const fn is_terminal(self) -> bool {
        matches!(self, Succeeded | Failed | Cancelled | Expired)
    }

    /// Whether a job may move from `from` to `to`.
    pub fn can_move(from: JobState, to: JobState) -> bool {
        TRANSITIONS.iter().any(|&(f, t, _)| f == from && t == to)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The states' spellings as constants, for SQL built with `format!` (`status = '{QUEUED}'`), so
/// a misspelt state is a compile error, not a statement that silently matches nothing.
pub mod sql {
    use super::JobState;

    /// `queued`.
    pub const QUEUED: &str = JobState::Queued.as_str();
    /// `running`.
    pub const RUNNING: &str = JobState::Running.as_str();
    /// `retry_scheduled`.
    pub const RETRY_SCHEDULED: &str = JobState::RetryScheduled.as_str();
    /// `in_provider_batch`.
    pub const IN_PROVIDER_BATCH: &str = JobState::InProviderBatch.as_str();
    /// `succeeded`.
    pub const SUCCEEDED: &str = JobState::Succeeded.as_str();
    /// `failed`.
    pub const FAILED: &str = JobState::Failed.as_str();
    /// `cancelled`.
    pub const CANCELLED: &str = JobState::Cancelled.as_str();
    /// `expired`.
    pub const EXPIRED: &str = JobState::Expired.as_str();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_sql_spelling() {
        for s in ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("done"), None);
    }

    #[test]
    fn the_transition_table_matches_the_spec() {
        let cases = [
            (Queued, Running, true),
            (Running, Succeeded, true),
            (Running, RetryScheduled, true),
            (RetryScheduled, Queued, true),
            (Queued, InProviderBatch, true),
            (Running, InProviderBatch, true),
            (InProviderBatch, Succeeded, true),
            (InProviderBatch, Queued, true),
            (InProviderBatch, Failed, true),
            (Queued, Succeeded, false),
            (RetryScheduled, Running, false),
            (InProviderBatch, Running, false),
            (Succeeded, Queued, false),
            (Cancelled, Queued, false),
            (Expired, Running, false),
            (Succeeded, Failed, false),
        ];
        for (from, to, allowed) in cases {
            assert_eq!(JobState::can_move(from, to), allowed, "{from} → {to}");
        }
    }

    #[test]
    fn every_unfinished_state_can_be_cancelled_and_no_finished_one_can() {
        for s in ALL {
            assert_eq!(JobState::can_move(s, Cancelled), !s.is_terminal(), "{s}");
        }
    }

    #[test]
    fn terminal_states_only_leave_by_an_operator_requeue() {
        for &(from, to, _) in TRANSITIONS {
            if from.is_terminal() {
                assert_eq!((from, to), (Failed, Queued));
            }
            assert_ne!(from, to, "no move to the same state");
        }
    }
}
