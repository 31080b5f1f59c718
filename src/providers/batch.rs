//! Provider-neutral batch types (what the batch path submits, polls and reads back, whichever
//! provider runs it) and `pack`, the pure rule that splits work into provider batches.

use std::ops::Range;

use serde_json::Value;

use super::{Completion, ProviderError};
use crate::domain::retry::ErrorClass;

/// One request in a provider batch.
#[derive(Debug, Clone)]
pub struct BatchItem {
    /// Identifies the item in the results; sluice passes the job id (`job_` + 32 hex = 36
    /// characters), which fits Anthropic's 1–64 `[A-Za-z0-9_-]` rule and OpenAI's uniqueness rule.
    pub custom_id: String,
    /// The deployment's model name at the provider.
    pub model: String,
    /// The job's request in OpenAI chat-completions format; each adapter translates it.
    pub request: Value,
}

/// A batch the provider accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedBatch {
    /// The provider's id (`batch_…`, `msgbatch_…`), used to poll, fetch and cancel.
    pub provider_batch_id: String,
    /// The uploaded input file, for providers that take one (OpenAI).
    pub input_file_id: Option<String>,
}

/// Where a provider batch stands, in one vocabulary for every provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    /// Accepted and running (OpenAI `validating`, `in_progress`, `finalizing`).
    InProgress,
    /// Ended; results can be fetched (Anthropic `ended` without a cancel, even with expired items).
    Completed,
    /// Refused as a whole (OpenAI validation failed); no item ran.
    Failed,
    /// The completion window passed; finished items have results, the rest come back expired.
    Expired,
    /// A cancel was asked for and is being applied.
    Cancelling,
    /// Cancelled; finished items have results, the rest come back cancelled.
    Cancelled,
}

impl BatchState {
    /// No further change will happen; results (if any) are final.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::InProgress | Self::Cancelling)
    }

    /// Stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One look at a provider batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPoll {
    /// Provider-neutral state.
    pub state: BatchState,
    /// Items in the batch.
    pub total: u64,
    /// Items finished in any way (succeeded, errored, expired, cancelled), as far as the
    /// provider says; Anthropic reports only `processing` until the batch ends.
    pub done: u64,
    /// Part of `done` that did not succeed.
    pub failed: u64,
    /// The provider's explanation when the batch failed as a whole.
    pub message: Option<String>,
}

/// The outcome of one item, keyed by its `custom_id` in results.
#[derive(Debug, Clone)]
pub enum ItemResult {
    /// A completion (possibly a refusal, which is a result).
    Succeeded(Completion),
    /// The provider answered this item with an error, classified like a real-time error.
    Errored(ProviderError),
    /// Unfinished when the batch's window passed: run it again (re-drive).
    Expired,
    /// Unfinished when the batch was cancelled.
    Cancelled,
}

/// A provider's size limits for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most items in one batch.
    pub max_items: usize,
    /// Most bytes of serialized items in one batch.
    pub max_bytes: usize,
}

/// OpenAI: 50,000 lines and 200 MB per input file (decimal MB: the stricter reading).
pub const OPENAI_LIMITS: BatchLimits = BatchLimits {
    max_items: 50_000,
    max_bytes: 200_000_000,
};

/// Anthropic: 100,000 requests and 256 MB per batch request body (decimal MB), less 1 kB
/// for the `{"requests":[…]}` envelope.
pub const ANTHROPIC_LIMITS: BatchLimits = BatchLimits {
    max_items: 100_000,
    max_bytes: 256_000_000 - 1_000,
};

impl BatchLimits {
    /// Whether one item of `bytes` can go in a batch at all; `pack` still gives an oversized
    /// item a group of its own, and callers must not submit such a group (run it in real time).
    pub fn fits(&self, bytes: usize) -> bool {
        bytes <= self.max_bytes
    }
}

/// Every readable line of a JSONL results file, parsed by `parse_line`; an unreadable line is
/// logged and skipped (its item is then missing from the results, and the caller re-drives it).
pub fn parse_jsonl(
    jsonl: &str,
    parse_line: impl Fn(&str) -> Result<(String, ItemResult), super::ProviderError>,
) -> Vec<(String, ItemResult)> {
    jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| match parse_line(line) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable batch result line");
                None
            }
        })
        .collect()
}

/// Splits items (given by their serialized sizes, separator included: one JSONL line with its
/// newline, or one request with its comma) into consecutive groups, in order, none over either
/// limit. Groups are filled greedily, so a group closes only when the next item would break a
/// limit. An item larger than `max_bytes` is placed alone in its own group so that nothing is
/// lost or reordered; [`BatchLimits::fits`] tells the caller to route it elsewhere.
pub fn pack(items: &[usize], limits: BatchLimits) -> Vec<Range<usize>> {
    let max_items = limits.max_items.max(1);
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, &size) in items.iter().enumerate() {
        let full = i - start == max_items || bytes.saturating_add(size) > limits.max_bytes;
        if i > start && (full || !limits.fits(size)) {
            groups.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(size);
        if !limits.fits(size) {
            groups.push(i..i + 1);
            start = i + 1;
            bytes = 0;
        }
    }
    if start < items.len() {
        groups.push(start..items.len());
    }
    groups
}

/// An item-level error from a batch result, classified by the status the provider gave it.
pub(crate) fn item_error(
    class: ErrorClass,
    code: &str,
    message: impl Into<String>,
    http_status: Option<u16>,
    request_id: Option<String>,
) -> ProviderError {
    ProviderError {
        http_status,
        request_id,
        ..ProviderError::new(class, code, message)
    }
}

/// Results were asked for before the batch ended: try again after the next poll.
pub(crate) fn not_ended(provider_batch_id: &str, state: BatchState) -> ProviderError {
    ProviderError::new(
        ErrorClass::Retryable,
        "batch_not_ended",
        format!("batch {provider_batch_id} is {}", state.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: BatchLimits = BatchLimits {
        max_items: 3,
        max_bytes: 100,
    };

    fn sizes(groups: &[Range<usize>], items: &[usize]) -> Vec<(usize, usize)> {
        groups
            .iter()
            .map(|g| (g.len(), items[g.clone()].iter().sum()))
            .collect()
    }

    #[test]
    fn groups_close_exactly_at_the_item_limit() {
        let items = [1; 7];
        assert_eq!(pack(&items, SMALL), vec![0..3, 3..6, 6..7]);
    }

    #[test]
    fn groups_close_exactly_at_the_byte_limit() {
        let items = [50, 50, 50, 49, 1, 100];
        assert_eq!(pack(&items, SMALL), vec![0..2, 2..5, 5..6]);
        assert_eq!(
            sizes(&pack(&items, SMALL), &items),
            [(2, 100), (3, 100), (1, 100)]
        );
    }

    #[test]
    fn an_oversized_item_gets_a_group_of_its_own_in_order() {
        let items = [10, 101, 10, 10, 500];
        let groups = pack(&items, SMALL);
        assert_eq!(groups, vec![0..1, 1..2, 2..4, 4..5]);
        assert!(!SMALL.fits(items[1]) && !SMALL.fits(items[4]));
    }

    #[test]
    fn nothing_in_gives_nothing_out_and_real_limits_hold_a_full_batch() {
        assert!(pack(&[], OPENAI_LIMITS).is_empty());
        let items = vec![1_000; 100_001];
        let groups = pack(&items, OPENAI_LIMITS);
        assert_eq!(groups, vec![0..50_000, 50_000..100_000, 100_000..100_001]);
        assert_eq!(
            pack(&items, ANTHROPIC_LIMITS),
            vec![0..100_000, 100_000..100_001]
        );
    }

    /// A fixed-seed xorshift, so the randomized check is reproducible without extra crates.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_inputs_are_covered_in_order_and_never_exceed_a_limit() {
        let mut seed = 0x5eed_u64;
        for _ in 0..500 {
            let limits = BatchLimits {
                max_items: 1 + (xorshift(&mut seed) % 8) as usize,
                max_bytes: 1 + (xorshift(&mut seed) % 200) as usize,
            };
            let n = (xorshift(&mut seed) % 60) as usize;
            let items: Vec<usize> = (0..n)
                .map(|_| (xorshift(&mut seed) % 120) as usize)
                .collect();
            let groups = pack(&items, limits);
            let mut next = 0;
            for (i, g) in groups.iter().enumerate() {
                assert_eq!(g.start, next, "groups are consecutive");
                assert!(!g.is_empty());
                let bytes: usize = items[g.clone()].iter().sum();
                let alone = g.len() == 1 && !limits.fits(items[g.start]);
                assert!(alone || (g.len() <= limits.max_items && bytes <= limits.max_bytes));
                // Greedy: the next item would not have fitted in this group.
                if let Some(after) = groups.get(i + 1)
                    && !alone
                {
                    let more = bytes + items[after.start];
                    assert!(g.len() == limits.max_items || more > limits.max_bytes);
                }
                next = g.end;
            }
            assert_eq!(next, n, "every item is in a group");
        }
    }

    #[test]
    fn only_running_and_cancelling_batches_are_unfinished() {
        assert!(!BatchState::InProgress.is_terminal());
        assert!(!BatchState::Cancelling.is_terminal());
        for s in [
            BatchState::Completed,
            BatchState::Failed,
            BatchState::Expired,
            BatchState::Cancelled,
        ] {
            assert!(s.is_terminal(), "{}", s.as_str());
        }
    }
}
