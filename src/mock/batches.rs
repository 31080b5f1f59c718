//! Batch bookkeeping shared by the OpenAI and Anthropic batch mocks: when each item finishes,
//! how a cancel or an expiry cuts a batch short, and the store of files and batches. The timing
//! is evaluated lazily on every read, so the mock needs no background task and stays
//! deterministic: item `i` of `n` finishes at `batch_delay * (i + 1) / n` after creation.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Shared;
use super::anthropic::batch::MsgBatch;
use super::openai_batch::OpenAiBatch;
use super::openai_batch::files::MockFile;

/// Everything the batch mocks keep, behind one lock.
#[derive(Debug, Default)]
pub(super) struct Store {
    pub files: BTreeMap<String, MockFile>,
    pub openai: BTreeMap<String, OpenAiBatch>,
    pub anthropic: BTreeMap<String, MsgBatch>,
}

/// Locks `m`, carrying on after a panic elsewhere (the mock's state stays usable).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One item as submitted.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub custom_id: String,
    /// The OpenAI chat body or the Anthropic Messages params.
    pub request: Value,
}

/// What became of one item.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    /// An HTTP-like answer: 200 with the provider's success body, or an error body.
    Answer {
        status: u16,
        body: Value,
        request_id: String,
    },
    Expired,
    Cancelled,
}

/// Where a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Running,
    Cancelling,
    Completed,
    Expired,
    Cancelled,
}

/// A batch's items, clock and outcomes.
#[derive(Debug, Clone)]
pub(super) struct Run {
    pub items: Vec<Item>,
    pub outcomes: Vec<Option<Outcome>>,
    created: Instant,
    /// Unix seconds at creation; event times are derived from it.
    pub created_unix: i64,
    delay: Duration,
    /// Set by the `batch_expire` dial: the window closes halfway through `delay`.
    window: Option<Duration>,
    /// Time after creation at which a cancel was asked for.
    cancel: Option<Duration>,
}

impl Run {
    /// A run starting now.
    pub fn new(items: Vec<Item>, delay: Duration, expire: bool) -> Self {
        let outcomes = vec![None; items.len()];
        Self {
            items,
            outcomes,
            created: Instant::now(),
            created_unix: chrono::Utc::now().timestamp(),
            delay,
            window: expire.then(|| delay / 2),
            cancel: None,
        }
    }

    fn due(&self, i: usize) -> Duration {
        let n = u32::try_from(self.items.len()).unwrap_or(u32::MAX).max(1);
        let i = u32::try_from(i + 1).unwrap_or(u32::MAX);
        self.delay.mul_f64(f64::from(i) / f64::from(n))
    }

    /// Cancels are applied after this grace, so a poll can see `cancelling`.
    fn grace(&self) -> Duration {
        (self.delay / 10).min(Duration::from_secs(1))
    }

    /// Where the run stands `elapsed` after creation.
    pub fn phase_at(&self, elapsed: Duration) -> Phase {
        let last = self.due(self.items.len().saturating_sub(1));
        match (self.cancel, self.window) {
            (Some(c), w) if w.is_none_or(|w| c < w) && c < last => {
                if elapsed >= c + self.grace() {
                    Phase::Cancelled
                } else {
                    Phase::Cancelling
                }
            }
            (_, Some(w)) if w < last && elapsed >= w => Phase::Expired,
            _ if elapsed >= last => Phase::Completed,
            _ => Phase::Running,
        }
    }

    /// Where the run stands now.
    pub fn phase(&self) -> Phase {
        self.phase_at(self.created.elapsed())
    }

    /// Unix seconds at which the run ended (or will end), for the `*_at` fields.
    pub fn ended_unix(&self) -> i64 {
        let end = match (self.cancel, self.window) {
            (Some(c), _) => c + self.grace(),
            (None, Some(w)) => w,
            (None, None) => self.delay,
        };
        self.created_unix + i64::try_from(end.as_secs()).unwrap_or(0)
    }

    /// Asks for a cancel; false when the run has already ended.
    pub fn cancel(&mut self) -> bool {
        let elapsed = self.created.elapsed();
        if !matches!(self.phase_at(elapsed), Phase::Running) {
            return matches!(self.phase_at(elapsed), Phase::Cancelling);
        }
        self.cancel = Some(elapsed);
        true
    }

    /// Unix seconds at which a cancel was asked for, if one was.
    pub fn cancel_requested_unix(&self) -> Option<i64> {
        self.cancel
            .map(|c| self.created_unix + i64::try_from(c.as_secs()).unwrap_or(0))
    }

    /// Serves every item that is due and not cut off by a cancel or the window; once the run
    /// has ended, the items left over become cancelled or expired. `serve` answers one item.
    pub fn advance(&mut self, mut serve: impl FnMut(&Item) -> Outcome) {
        let elapsed = self.created.elapsed();
        let cutoff = [self.cancel, self.window].into_iter().flatten().min();
        for i in 0..self.items.len() {
            let due = self.due(i);
            if self.outcomes[i].is_none() && due <= elapsed && cutoff.is_none_or(|c| due <= c) {
                self.outcomes[i] = Some(serve(&self.items[i]));
            }
        }
        let leftover = match self.phase_at(elapsed) {
            Phase::Cancelled => Outcome::Cancelled,
            Phase::Expired => Outcome::Expired,
            _ => return,
        };
        for o in self.outcomes.iter_mut().filter(|o| o.is_none()) {
            *o = Some(leftover.clone());
        }
    }

    /// Outcomes so far, with their items.
    pub fn finished(&self) -> impl Iterator<Item = (&Item, &Outcome)> {
        self.items
            .iter()
            .zip(&self.outcomes)
            .filter_map(|(i, o)| o.as_ref().map(|o| (i, o)))
    }
}

/// Counts one served batch item under its `custom_id`; returns the calls for it so far, which
/// `[[mock:fail-first=N]]` reads just as it reads calls per job in real time.
pub(super) fn count_item(shared: &Shared, custom_id: &str) -> u64 {
    let mut s = lock(&shared.stats);
    s.batch_items += 1;
    let c = s.calls_by_job.entry(custom_id.to_string()).or_default();
    *c += 1;
    *c
}

/// Adds a served answer's tokens to the counters.
pub(super) fn count_tokens(shared: &Shared, prompt: u64, completion: u64) {
    let mut s = lock(&shared.stats);
    s.prompt_tokens += prompt;
    s.completion_tokens += completion;
}

/// One field of a `multipart/form-data` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub data: Vec<u8>,
}

/// Splits a `multipart/form-data` body (RFC 7578) into its fields; `None` when the content
/// type is not multipart or names no boundary. Enough for the SDKs' file uploads.
pub(super) fn multipart_parts(content_type: &str, body: &[u8]) -> Option<Vec<Part>> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let boundary = params
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim_matches('"'))?;
    let delimiter = format!("--{boundary}").into_bytes();
    let mut parts = Vec::new();
    for chunk in split(body, &delimiter).into_iter().skip(1) {
        if chunk.starts_with(b"--") {
            break;
        }
        let chunk = chunk.strip_prefix(b"\r\n").unwrap_or(chunk);
        let chunk = chunk.strip_suffix(b"\r\n").unwrap_or(chunk);
        let at = find(chunk, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&chunk[..at]);
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
        let param = |key: &str| {
            disposition.split(';').find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                (k == key).then(|| v.trim_matches('"').to_string())
            })
        };
        parts.push(Part {
            name: param("name")?,
            filename: param("filename"),
            data: chunk[at + 4..].to_vec(),
        });
    }
    Some(parts)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(mut hay: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while let Some(at) = find(hay, delimiter) {
        out.push(&hay[..at]);
        hay = &hay[at + delimiter.len()..];
    }
    out.push(hay);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n: usize, expire: bool) -> Run {
        let items = (0..n)
            .map(|i| Item {
                custom_id: format!("c{i}"),
                request: Value::Null,
            })
            .collect();
        Run::new(items, Duration::from_millis(1000), expire)
    }

    #[test]
    fn a_batch_runs_until_its_last_item_is_due() {
        let r = run(4, false);
        assert_eq!(r.due(0), Duration::from_millis(250));
        assert_eq!(r.phase_at(Duration::from_millis(999)), Phase::Running);
        assert_eq!(r.phase_at(Duration::from_millis(1000)), Phase::Completed);
    }

    #[test]
    fn an_expiring_batch_ends_halfway_and_a_cancel_needs_a_grace() {
        let r = run(4, true);
        assert_eq!(r.phase_at(Duration::from_millis(499)), Phase::Running);
        assert_eq!(r.phase_at(Duration::from_millis(500)), Phase::Expired);
        let mut r = run(4, false);
        r.cancel = Some(Duration::from_millis(300));
        assert_eq!(r.phase_at(Duration::from_millis(350)), Phase::Cancelling);
        assert_eq!(r.phase_at(Duration::from_millis(400)), Phase::Cancelled);
    }

    #[test]
    fn a_cancel_cuts_off_unfinished_items_once_applied() {
        let mut r = run(4, false);
        r.cancel = Some(Duration::ZERO);
        r.created -= Duration::from_millis(200);
        let mut served = 0;
        r.advance(|_| {
            served += 1;
            Outcome::Expired
        });
        assert_eq!(served, 0);
        assert!(
            r.outcomes
                .iter()
                .all(|o| matches!(o, Some(Outcome::Cancelled)))
        );
    }

    #[test]
    fn multipart_bodies_split_into_named_fields() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
Content-Type: application/jsonl\r\n\r\n{\"a\":1}\n{\"a\":2}\n\r\n--XyZ--\r\n";
        let parts = multipart_parts("multipart/form-data; boundary=XyZ", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].name.as_str(), parts[0].data.as_slice()),
            ("purpose", &b"batch"[..])
        );
        assert_eq!(parts[1].filename.as_deref(), Some("in.jsonl"));
        assert_eq!(parts[1].data, b"{\"a\":1}\n{\"a\":2}\n");
        assert!(multipart_parts("application/json", body).is_none());
    }
}
