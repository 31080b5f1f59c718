//! A job as producers submit it (`JobInput`), the checks it must pass before anything is
//! enqueued (`JobInput::validate`), and the states it moves through (SPEC.md §2).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::bounds::{InputLimits, parse_deadline};
use super::bounds::{MAX_CACHE_TTL, output_tokens};
use super::catalog::{Catalog, Resolved};

/// A job in the form producers send it: sluice's own fields, or an OpenAI batch input line
/// (`custom_id`, `method`, `url`, `body`), which is a subset.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JobInput {
    #[serde(default)]
    pub custom_id: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    /// Alias or model; overrides `body.model`.
    #[serde(default)]
    pub model: Option<String>,
    /// The chat-completion request.
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub route: Option<String>,
    /// RFC 3339 time, or a duration from now such as `24h`.
    #[serde(default)]
    pub deadline: Option<String>,
    #[serde(default)]
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub priority: Option<u8>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Opt into the response cache for this long (`1h`); `0s` opts out.
    #[serde(default)]
    pub cache_ttl: Option<String>,
}

/// A job that passed validation and is ready to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    pub custom_id: Option<String>,
    /// What the job asked for (alias or model name), as given.
    pub model: String,
    pub resolved: Resolved,
    pub request: Value,
    pub tags: BTreeMap<String, String>,
    pub route: RouteRequest,
    pub deadline: Option<DateTime<Utc>>,
    pub webhook_url: Option<String>,
    pub idempotency_key: Option<String>,
    pub priority: i16,
    pub max_attempts: Option<i32>,
    /// Output tokens the request may use across all its choices: the larger of `max_tokens`
    /// and `max_completion_tokens` (or the default), times `n`. Budgets reserve this much.
    pub max_tokens: u32,
    /// The job's own cache choice (`Some(ZERO)` opts out), else the alias decides.
    pub cache_ttl: Option<std::time::Duration>,
}

/// A validation failure naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    /// A failure of `field` with `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field path, e.g. `jobs[3].` or `line 7: `.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}{}", self.field);
        self
    }
}

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

impl JobInput {
    /// Checks everything that can be checked before the job is recorded or spends anything.
    pub fn validate(
        self,
        catalog: &Catalog,
        limits: InputLimits,
        now: DateTime<Utc>,
    ) -> Result<ValidJob, FieldError> {
        self.validate_with(|m| catalog.resolve(m), limits, now)
    }

    /// The model name this job asks for, if any (`model`, else `body.model`).
    pub fn model_name(&self) -> Option<&str> {
        self.model
            .as_deref()
            .or_else(|| self.body.as_ref()?.get("model")?.as_str())
    }

    /// Reads a job from JSON, naming the field at fault: unstorable text first (with its
    /// path, e.g. `body.messages[0].content`), then the shape (`job`).
    pub fn from_value(value: Value) -> Result<JobInput, FieldError> {
        super::text::check_value("", &value)?;
        serde_json::from_value(value).map_err(|e| FieldError::new("job", e.to_string()))
    }

    /// Refuses text Postgres cannot store in any field, naming the field.
    fn check_storable(&self) -> Result<(), FieldError> {
        use super::text::{check_str, check_value};
        let fields = [
            ("custom_id", &self.custom_id),
            ("method", &self.method),
            ("url", &self.url),
            ("model", &self.model),
            ("route", &self.route),
            ("deadline", &self.deadline),
            ("webhook_url", &self.webhook_url),
            ("idempotency_key", &self.idempotency_key),
            ("cache_ttl", &self.cache_ttl),
        ];
        for (field, value) in fields {
            if let Some(v) = value {
                check_str(field, v)?;
            }
        }
        for (k, v) in &self.tags {
            check_str("tags (a key)", k)?;
            check_str(&format!("tags.{k}"), v)?;
        }
        if let Some(body) = &self.body {
            check_value("body", body)?;
        }
        Ok(())
    }

    /// `validate` with any model resolver (the CLI resolves through the server's catalog).
    pub fn validate_with(
        mut self,
        resolve: impl Fn(&str) -> Result<Resolved, String>,
        limits: InputLimits,
        now: DateTime<Utc>,
    ) -> Result<ValidJob, FieldError> {
        self.check_storable()?;
        if let Some(m) = &self.method
            && m != "POST"
        {
            return Err(FieldError::new(
                "method",
                format!("must be POST, got `{m}`"),
            ));
        }
        if let Some(u) = &self.url
            && u != "/v1/chat/completions"
        {
            return Err(FieldError::new(
                "url",
                format!("only /v1/chat/completions is supported, got `{u}`"),
            ));
        }
        if let Some(c) = &self.custom_id
            && (c.is_empty() || c.len() > 512)
        {
            return Err(FieldError::new("custom_id", "must be 1 to 512 characters"));
        }
        let mut body = self
            .body
            .take()
            .ok_or_else(|| FieldError::new("body", "is required: the chat-completion request"))?;
        let obj = body
            .as_object_mut()
            .ok_or_else(|| FieldError::new("body", "must be a JSON object"))?;
        check_messages(obj.get("messages"))?;
        if obj.get("stream").and_then(Value::as_bool) == Some(true) {
            return Err(FieldError::new(
                "body.stream",
                "streaming is not supported for queued jobs",
            ));
        }
        let body_model = obj.get("model").and_then(Value::as_str).map(str::to_owned);
        let model = self.model.take().or(body_model).ok_or_else(|| {
            FieldError::new(
                "model",
                "is required (as `model` or `body.model`): an alias or a model name",
            )
        })?;
        let resolved = resolve(&model).map_err(|m| FieldError::new("model", m))?;
        let max_tokens = output_tokens(obj, &resolved, limits)?;
        let size = serde_json::to_vec(&body)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > limits.max_request_bytes {
            return Err(FieldError::new(
                "body",
                format!(
                    "is {size} bytes; the limit is {} bytes",
                    limits.max_request_bytes
                ),
            ));
        }
        if let Some(schema) = super::schema::requested(&body) {
            super::schema::check_schema(schema).map_err(|e| {
                FieldError::new("body.response_format.json_schema.schema", e.to_string())
            })?;
        }
        let route = match self.route.as_deref() {
            None | Some("auto") => RouteRequest::Auto,
            Some("cheap") => RouteRequest::Cheap,
            Some("batch") => RouteRequest::Batch,
            Some(other) => {
                return Err(FieldError::new(
                    "route",
                    format!("must be auto, cheap or batch, got `{other}`"),
                ));
            }
        };
        let deadline = self
            .deadline
            .as_deref()
            .map(|d| parse_deadline(d, now, limits.max_deadline_secs))
            .transpose()?;
        let turnaround = i64::try_from(limits.batch_turnaround_secs)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .unwrap_or(chrono::Duration::MAX);
        if let Some(why) = super::routing::forced_batch_too_soon(route, deadline, now, turnaround) {
            return Err(FieldError::new("deadline", why));
        }
        if let Some(url) = &self.webhook_url {
            match url::Url::parse(url) {
                Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
                _ => {
                    return Err(FieldError::new(
                        "webhook_url",
                        format!("`{url}` is not an http(s) URL"),
                    ));
                }
            }
        }
        if let Some(k) = &self.idempotency_key
            && (k.is_empty() || k.len() > 255)
        {
            return Err(FieldError::new(
                "idempotency_key",
                "must be 1 to 255 characters",
            ));
        }
        let priority = self.priority.unwrap_or(0);
        if priority > 9 {
            return Err(FieldError::new("priority", "must be between 0 and 9"));
        }
        if let Some(n) = self.max_attempts
            && !(1..=20).contains(&n)
        {
            return Err(FieldError::new("max_attempts", "must be between 1 and 20"));
        }
        check_tags(&self.tags)?;
        let cache_ttl = self
            .cache_ttl
            .as_deref()
            .map(|t| match humantime::parse_duration(t) {
                Ok(d) if d <= MAX_CACHE_TTL => Ok(d),
                Ok(_) => Err(FieldError::new(
                    "cache_ttl",
                    format!("`{t}` is longer than the most allowed, 365 days"),
                )),
                Err(_) => Err(FieldError::new(
                    "cache_ttl",
                    format!("`{t}` is not a duration like 1h"),
                )),
            })
            .transpose()?;
        Ok(ValidJob {
            cache_ttl,
            custom_id: self.custom_id,
            model,
            resolved,
            request: body,
            tags: self.tags,
            route,
            deadline,
            webhook_url: self.webhook_url,
            idempotency_key: self.idempotency_key,
            priority: i16::from(priority),
            max_attempts: self.max_attempts.map(|n| n as i32),
            max_tokens,
        })
    }
}

fn check_messages(messages: Option<&Value>) -> Result<(), FieldError> {
    let list = messages
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| FieldError::new("body.messages", "must be a non-empty array of messages"))?;
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        if !ROLES.contains(&role) {
            return Err(FieldError::new(
                format!("body.messages[{i}].role"),
                format!("must be one of {}", ROLES.join(", ")),
            ));
        }
        let has_content = m.get("content").is_some_and(|c| !c.is_null());
        if !has_content && m.get("tool_calls").is_none() {
            return Err(FieldError::new(
                format!("body.messages[{i}].content"),
                "is required",
            ));
        }
    }
    Ok(())
}

fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if tags.len() > 32 {
        return Err(FieldError::new("tags", "at most 32 tags"));
    }
    for (k, v) in tags {
        if k.is_empty() || k.len() > 64 || v.len() > 512 {
            return Err(FieldError::new(
                format!("tags.{k}"),
                "keys must be 1 to 64 characters and values at most 512",
            ));
        }
    }
    Ok(())
}

/// The route a producer asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteRequest {
    Auto,
    Cheap,
    Batch,
}

impl RouteRequest {
    /// The name stored in `jobs.route_requested`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cheap => "cheap",
            Self::Batch => "batch",
        }
    }
}

/// Job states, named as in SPEC.md §2 everywhere, the database included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    RetryScheduled,
    InProviderBatch,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl JobStatus {
    /// Every state, in lifecycle order.
    pub const ALL: [JobStatus; 8] = [
        Self::Queued,
        Self::Running,
        Self::RetryScheduled,
        Self::InProviderBatch,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Expired,
    ];

    /// The text stored in `jobs.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::RetryScheduled => "retry_scheduled",
            Self::InProviderBatch => "in_provider_batch",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Expired
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    fn catalog() -> Catalog {
        Catalog::from_config(&Config::from_toml(crate::config::DEFAULT_CONFIG).unwrap())
    }

    fn limits() -> InputLimits {
        InputLimits {
            max_request_bytes: 10_000,
            default_max_tokens: 500,
            ..InputLimits::default()
        }
    }

    fn line(v: Value) -> JobInput {
        serde_json::from_value(v).unwrap()
    }

    pub(crate) fn check(v: Value) -> Result<ValidJob, FieldError> {
        line(v).validate(&catalog(), limits(), Utc::now())
    }

    #[test]
    fn an_openai_batch_line_is_a_valid_job() {
        let j = check(json!({"custom_id": "t-1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}}))
        .unwrap();
        assert_eq!(j.model, "gpt-4o-mini");
        assert_eq!(j.max_tokens, 50);
        assert_eq!(j.resolved.deployments[0].to_string(), "openai/gpt-4o-mini");
    }

    #[test]
    fn missing_max_tokens_takes_the_default() {
        let j = check(
            json!({"model": "summarize", "body": {"messages": [{"role": "user", "content": "x"}]}}),
        )
        .unwrap();
        assert_eq!(j.max_tokens, 500);
        assert_eq!(j.resolved.alias.as_deref(), Some("summarize"));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (json!({"model": "summarize"}), "body"),
            (
                json!({"model": "summarize", "body": {"messages": []}}),
                "body.messages",
            ),
            (
                json!({"model": "summarize", "body": {"messages": [{"role": "robot", "content": "x"}]}}),
                "body.messages[0].role",
            ),
            (
                json!({"body": {"messages": [{"role": "user", "content": "x"}]}}),
                "model",
            ),
            (
                json!({"model": "no-such-model", "body": {"messages": [{"role": "user", "content": "x"}]}}),
                "model",
            ),
            (
                json!({"model": "summarize", "route": "fast", "body": {"messages": [{"role": "user", "content": "x"}]}}),
                "route",
            ),
            (
                json!({"model": "summarize", "deadline": "soon", "body": {"messages": [{"role": "user", "content": "x"}]}}),
                "deadline",
            ),
            (
                json!({"model": "summarize", "priority": 12, "body": {"messages": [{"role": "user", "content": "x"}]}}),
                "priority",
            ),
            (
                json!({"model": "summarize", "url": "/v1/embeddings", "body": {"messages": [{"role": "user", "content": "x"}]}}),
                "url",
            ),
            (
                json!({"model": "summarize", "body": {"max_tokens": -3, "messages": [{"role": "user", "content": "x"}]}}),
                "body.max_tokens",
            ),
            (
                json!({"model": "summarize", "body": {"stream": true, "messages": [{"role": "user", "content": "x"}]}}),
                "body.stream",
            ),
            (
                json!({"model": "summarize", "body": {"messages": [{"role": "user", "content": "x".repeat(20_000)}]}}),
                "body",
            ),
        ];
        for (input, field) in cases {
            let err = check(input.clone()).unwrap_err();
            assert_eq!(err.field, field, "{input}: {err}");
        }
    }

    #[test]
    fn a_nul_in_any_field_is_refused_naming_the_field() {
        let base =
            json!({"model": "summarize", "body": {"messages": [{"role": "user", "content": "x"}]}});
        for field in [
            "custom_id",
            "deadline",
            "idempotency_key",
            "route",
            "webhook_url",
        ] {
            let mut input = base.clone();
            input[field] = json!("a\u{0}b");
            assert_eq!(check(input).unwrap_err().field, field);
        }
        let mut input = base.clone();
        input["body"]["messages"][0]["content"] = json!("hi\u{0}");
        assert_eq!(check(input).unwrap_err().field, "body.messages[0].content");
        let mut input = base;
        input["tags"] = json!({"team": "a\u{0}"});
        assert_eq!(check(input).unwrap_err().field, "tags.team");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_value::<JobInput>(json!({"bodyy": {}})).is_err());
    }

    #[test]
    fn status_names_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert!(JobStatus::Expired.is_terminal() && !JobStatus::RetryScheduled.is_terminal());
    }
}
