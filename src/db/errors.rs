//! Which database errors are worth retrying as they are. Connection, I/O, pool and timeout
//! errors, serialization failures and deadlocks pass; data and constraint errors (a NUL that
//! `jsonb` refuses, a check that fails) come back the same every time, so a loop that meets one
//! must isolate the offending item instead of retrying the whole batch forever.

/// Whether `e` may succeed if the same statement is run again later.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| transient_code(&c)),
        _ => false,
    }
}

/// SQLSTATEs that describe the moment, not the statement.
fn transient_code(code: &str) -> bool {
    matches!(
        code,
        "40001" // serialization_failure
            | "40P01" // deadlock_detected
            | "55P03" // lock_not_available (lock_timeout)
            | "57014" // query_canceled (statement_timeout)
            | "57P01" | "57P02" | "57P03" // the server is shutting down or starting
    ) || code.starts_with("08") // connection exceptions
        || code.starts_with("53") // insufficient resources (too many connections, disk full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_transient_and_statements_are_not() {
        for c in [
            "40001", "40P01", "55P03", "57014", "08006", "53300", "57P01",
        ] {
            assert!(transient_code(c), "{c}");
        }
        for c in ["22P05", "22001", "23505", "23514", "42703", "XX000"] {
            assert!(!transient_code(c), "{c}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
