//! Which database errors are worth retrying as they are. A loop that retries a write must
//! retry only these: connection and I/O failures, pool timeouts, serialization failures and
//! deadlocks, cancelled statements. Anything else (a data error such as a NUL that `jsonb`
//! refuses, a constraint violation, a type mismatch) fails the same way every time: the caller
//! must isolate the offending item and quarantine it instead.

use std::future::Future;
use std::time::Duration;

/// The SQLSTATEs of errors that may go away on their own.
const TRANSIENT_CODES: &[&str] = &[
    "40001", // serialization_failure
    "40P01", // deadlock_detected
    "55P03", // lock_not_available (lock_timeout)
    "57014", // query_canceled (statement_timeout)
    "57P01", // admin_shutdown
    "57P02", // crash_shutdown
    "57P03", // cannot_connect_now
    "53300", // too_many_connections
    "08000", "08003", "08006", "08001", "08004", // connection exceptions
];

/// Whether `e` may succeed if the same statement is tried again later.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            TRANSIENT_CODES.contains(&c.as_ref())
                // Every connection exception, and insufficient resources (disk full, out of
                // memory, too many connections) describe the moment, not the statement.
                || c.starts_with("08")
                || c.starts_with("53")
        }),
        _ => false,
    }
}

/// Whether `e` is a data or constraint error (SQLSTATE class 22 or 23): the statement fails
/// the same way every time for the same input.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}

/// What [`isolate`] wrote, and the items that failed alone with a deterministic error.
#[derive(Debug)]
pub struct Isolated<R> {
    /// Every result the successful writes returned.
    pub written: Vec<R>,
    /// The index of each item that cannot be written, with its error.
    pub rejected: Vec<(usize, sqlx::Error)>,
}

/// The pauses between tries of a write that failed transiently: exponential from 100 ms to
/// 5 s with jitter, for as long as the database stays away (the items are held in memory).
fn retry_delays() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Writes `items` with `write` (one statement for many items), isolating the items that cannot
/// be written. A transient error retries the same slice with backoff (capped at 5 s); a
/// deterministic one splits the slice in halves and writes each, down to single items, which
/// are returned as rejected so the caller can quarantine them while the rest commit. A batch
/// of `n` items with one bad item costs about `2·log2(n)` extra statements.
pub async fn isolate<'a, T, R, F, Fut>(items: &'a [T], mut write: F) -> Isolated<R>
where
    F: FnMut(&'a [T]) -> Fut,
    Fut: Future<Output = Result<Vec<R>, sqlx::Error>>,
{
    let mut out = Isolated {
        written: Vec::new(),
        rejected: Vec::new(),
    };
    let mut pending = vec![(0, items.len())];
    while let Some((lo, hi)) = pending.pop() {
        if lo >= hi {
            continue;
        }
        let mut delays = retry_delays();
        loop {
            match write(&items[lo..hi]).await {
                Ok(r) => {
                    out.written.extend(r);
                    break;
                }
                Err(e) if is_transient(&e) => {
                    tracing::warn!(error = %e, items = hi - lo, "database write failed; retrying");
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
                }
                Err(e) if hi - lo == 1 => {
                    out.rejected.push((lo, e));
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, items = hi - lo, "database write refused; splitting the batch to find the item at fault");
                    let mid = lo + (hi - lo) / 2;
                    pending.push((mid, hi));
                    pending.push((lo, mid));
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_error() -> sqlx::Error {
        // Not a database error, and not transient: stands for any deterministic refusal.
        sqlx::Error::ColumnNotFound("poison".into())
    }

    #[tokio::test]
    async fn isolate_writes_everything_but_the_poisoned_items() {
        for (n, poison) in [
            (1, vec![0]),
            (7, vec![3]),
            (512, vec![0, 200, 511]),
            (9, vec![]),
        ] {
            let items: Vec<usize> = (0..n).collect();
            let mut statements = 0;
            let out = isolate(&items, |chunk: &[usize]| {
                statements += 1;
                let bad = chunk.iter().any(|i| poison.contains(i));
                let r = if bad {
                    Err(data_error())
                } else {
                    Ok(chunk.to_vec())
                };
                async move { r }
            })
            .await;
            let mut written = out.written.clone();
            written.sort();
            let expected: Vec<usize> = items
                .iter()
                .copied()
                .filter(|i| !poison.contains(i))
                .collect();
            assert_eq!(written, expected, "n={n}");
            let rejected: Vec<usize> = out.rejected.iter().map(|(i, _)| *i).collect();
            assert_eq!(rejected, poison, "n={n}");
            assert!(
                statements <= 1 + poison.len() * 2 * 10,
                "n={n}: {statements} statements"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn isolate_retries_a_transient_error_as_it_is() {
        let items = [1, 2, 3];
        let mut calls = 0;
        let out = isolate(&items, |chunk: &[i32]| {
            calls += 1;
            let r = if calls < 3 {
                Err(sqlx::Error::PoolTimedOut)
            } else {
                Ok(chunk.to_vec())
            };
            async move { r }
        })
        .await;
        assert_eq!(out.written, vec![1, 2, 3]);
        assert!(out.rejected.is_empty());
        assert_eq!(calls, 3, "retried whole, not split");
    }

    #[test]
    fn connection_and_pool_errors_are_transient() {
        let io = sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "x"));
        assert!(is_transient(&io));
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_data_error(&sqlx::Error::PoolTimedOut));
    }

    #[test]
    fn decoding_and_missing_rows_are_not_transient() {
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
