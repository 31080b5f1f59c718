//! Reading a stored file line by line without holding it whole (one chunk plus one partial
//! line at a time), and the OpenAI batch output line of a finished job.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::db::jobs::JobRow;

/// One line of a file: its 1-based number and its bytes, or `Err(len)` when it was longer than
/// the reader's limit (it was skipped, not kept).
pub type Line = (u64, Result<Vec<u8>, usize>);

/// A file's lines, fetched chunk by chunk.
pub struct FileLines<'a> {
    pool: &'a PgPool,
    file_id: String,
    next_seq: i32,
    buf: Vec<u8>,
    pos: usize,
    line_no: u64,
    eof: bool,
    max_line: usize,
    /// Bytes of an over-long line skipped so far.
    skipping: Option<usize>,
}

impl<'a> FileLines<'a> {
    /// Lines of file `file_id`; lines longer than `max_line` bytes come back as `Err`.
    pub fn new(pool: &'a PgPool, file_id: &str, max_line: usize) -> Self {
        Self {
            pool,
            file_id: file_id.to_string(),
            next_seq: 0,
            buf: Vec::new(),
            pos: 0,
            line_no: 0,
            eof: false,
            max_line,
            skipping: None,
        }
    }

    /// The next line, or `None` at the end of the file.
    pub async fn next_line(&mut self) -> Result<Option<Line>, sqlx::Error> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|b| *b == b'\n') {
                let start = self.pos;
                self.pos += i + 1;
                self.line_no += 1;
                if let Some(skipped) = self.skipping.take() {
                    return Ok(Some((self.line_no, Err(skipped.saturating_add(i)))));
                }
                let mut line = self.buf[start..start + i].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some((self.line_no, Ok(line))));
            }
            self.buf.drain(..self.pos);
            self.pos = 0;
            if self.buf.len() > self.max_line {
                let n = self.skipping.unwrap_or(0).saturating_add(self.buf.len());
                self.skipping = Some(n);
                self.buf.clear();
            }
            if self.eof {
                if let Some(skipped) = self.skipping.take() {
                    self.line_no += 1;
                    return Ok(Some((
                        self.line_no,
                        Err(skipped.saturating_add(self.buf.len())),
                    )));
                }
                if self.buf.is_empty() {
                    return Ok(None);
                }
                self.line_no += 1;
                return Ok(Some((self.line_no, Ok(std::mem::take(&mut self.buf)))));
            }
            match crate::db::files::chunk(self.pool, &self.file_id, self.next_seq).await? {
                Some(data) => {
                    self.buf.extend_from_slice(&data);
                    self.next_seq = self.next_seq.saturating_add(1);
                }
                None => self.eof = true,
            }
        }
    }
}

/// Which file a finished job's line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Succeeded requests.
    Output,
    /// Requests that failed, expired or were cancelled.
    Error,
}

/// A finished job as a line of OpenAI's batch output:
/// `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
/// An upstream HTTP error keeps its status code with the error as the body (as OpenAI's error
/// file does); a failure without one, an expiry or a cancellation has `response: null` and an
/// `error` object.
pub fn output_line(r: &JobRow) -> (Target, Value) {
    let err = r.error.clone().unwrap_or(Value::Null);
    let field = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_owned);
    let request_id = |body: &Option<Value>| {
        body.as_ref()
            .and_then(|b| b.get("id"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let line = |response: Value, error: Value| json!({"id": r.id, "custom_id": r.custom_id, "response": response, "error": error});
    match r.status.as_str() {
        "succeeded" => (
            Target::Output,
            line(
                json!({"status_code": 200, "request_id": request_id(&r.response), "body": r.response}),
                Value::Null,
            ),
        ),
        "expired" => (
            Target::Error,
            line(
                Value::Null,
                json!({"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}),
            ),
        ),
        "cancelled" => (
            Target::Error,
            line(
                Value::Null,
                json!({"code": "batch_cancelled", "message": "This request was cancelled before it completed."}),
            ),
        ),
        _ => {
            let code = field("code").unwrap_or_else(|| "failed".into());
            let message = field("message").unwrap_or_else(|| "the request failed".into());
            match err
                .get("http_status")
                .and_then(Value::as_u64)
                .filter(|s| (400..600).contains(s))
            {
                Some(status) => (
                    Target::Error,
                    line(
                        json!({"status_code": status, "request_id": Value::Null, "body": {"error": {
                            "message": message, "type": if status >= 500 { "server_error" } else { "invalid_request_error" },
                            "param": Value::Null, "code": code}}}),
                        Value::Null,
                    ),
                ),
                None => (
                    Target::Error,
                    line(Value::Null, json!({"code": code, "message": message})),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str, response: Option<Value>, error: Option<Value>) -> JobRow {
        JobRow {
            id: "job_1".into(),
            tenant: "t".into(),
            batch_id: Some("batch_1".into()),
            custom_id: Some("c1".into()),
            model: "m".into(),
            status: status.into(),
            route: None,
            route_reason: None,
            deployment: None,
            attempt: 1,
            max_attempts: 3,
            priority: 0,
            tags: json!({}),
            deadline: None,
            response,
            error,
            errors: json!([]),
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            cost_usd: Default::default(),
            baseline_cost_usd: None,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            finalized_at: None,
            cancel_requested_at: None,
            dead_letter_purged_at: None,
        }
    }

    #[test]
    fn a_succeeded_job_is_an_output_line_with_status_200_and_the_body() {
        let (t, v) = output_line(&row("succeeded", Some(json!({"id": "chatcmpl-1"})), None));
        assert_eq!(t, Target::Output);
        assert_eq!(
            v,
            json!({"id": "job_1", "custom_id": "c1", "error": null,
                   "response": {"status_code": 200, "request_id": "chatcmpl-1", "body": {"id": "chatcmpl-1"}}})
        );
    }

    #[test]
    fn an_upstream_http_error_keeps_its_status_code_and_error_body() {
        let err = json!({"code": "http_400", "message": "bad", "http_status": 400});
        let (t, v) = output_line(&row("failed", None, Some(err)));
        assert_eq!(t, Target::Error);
        assert_eq!(v["response"]["status_code"], 400);
        assert_eq!(v["response"]["body"]["error"]["code"], "http_400");
        assert_eq!(v["error"], Value::Null);
    }

    #[test]
    fn expired_cancelled_and_transport_failures_have_a_null_response_and_an_error() {
        for (status, code) in [
            ("expired", "batch_expired"),
            ("cancelled", "batch_cancelled"),
            ("failed", "timeout"),
        ] {
            let err = json!({"code": "timeout", "message": "slow"});
            let (t, v) = output_line(&row(status, None, Some(err)));
            assert_eq!(t, Target::Error);
            assert_eq!(v["response"], Value::Null);
            assert_eq!(v["error"]["code"], code);
        }
    }
}
