//! The settings tree: one struct, loaded once at start-up from `sluice.toml` (or the built-in
//! default) and `SLUICE_…` environment variables, validated, then passed down by reference.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The configuration used when neither `--config` nor `SLUICE_CONFIG` names a file.
pub const DEFAULT_CONFIG: &str = include_str!("../sluice.toml");

/// Top-level sections that environment variables may override (`SLUICE_WORKER__CONCURRENCY`).
const ENV_SECTIONS: &[&str] = &[
    "batch",
    "budgets",
    "server",
    "database",
    "amqp",
    "worker",
    "limits",
    "routing",
    "providers",
    "aliases",
    "webhooks",
    "scheduler",
    "metrics",
    "admin",
    "redaction",
    "retention",
];

/// Everything sluice can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub amqp: AmqpConfig,
    pub worker: WorkerConfig,
    pub limits: LimitsConfig,
    pub routing: RoutingConfig,
    /// Upstream providers by name; a deployment is `name/model`.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Model aliases a job may ask for, each an ordered list of deployments.
    pub aliases: BTreeMap<String, AliasConfig>,
    /// Prices that add to or override the built-in price list.
    pub prices: Vec<PriceConfig>,
    /// Shared limits, seeded into the `budgets` table at start-up.
    pub budgets: BudgetsConfig,
    /// The provider batch path.
    pub batch: BatchConfig,
    /// Webhook delivery (`sluice deliver`).
    pub webhooks: crate::webhooks::WebhooksConfig,
    /// Scheduled jobs (`jobs/`).
    pub scheduler: crate::scheduler::SchedulerConfig,
    /// `/metrics` and spend alerts.
    pub metrics: crate::metrics::MetricsConfig,
    /// Where the operator's admin key comes from.
    pub admin: crate::auth::AdminConfig,
    /// PII redaction policies.
    pub redaction: crate::governance::RedactionConfig,
    /// How long bodies are kept, and which tenants keep only prompt hashes.
    pub retention: crate::governance::RetentionConfig,
}

/// How batch-route jobs are packed into provider batches and followed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Send a partial batch once its oldest job has waited this long.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Send as soon as this many jobs wait for one deployment (capped by the provider's limit).
    pub max_items: usize,
    /// How often the poller checks open provider batches.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a poller owns a provider batch before another process may take it over.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// The completion window requested from providers that take one (OpenAI: `24h`).
    pub completion_window: String,
    /// Failed polls in a row with a deterministic error (404, 401: the batch is gone or out of
    /// reach) after which a provider batch is given up: its jobs are re-driven or failed.
    pub max_poll_failures: u32,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(60),
            max_items: 10_000,
            poll_interval: Duration::from_secs(30),
            lease: Duration::from_secs(120),
            completion_window: "24h".into(),
            max_poll_failures: 5,
        }
    }
}

/// Limits per deployment (`"provider/model"`) and per tenant.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    pub deployments: BTreeMap<String, BudgetSettings>,
    pub tenants: BTreeMap<String, BudgetSettings>,
}

/// Limits on one scope; an absent value is unlimited (or, when changing limits, unchanged).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSettings {
    /// Tokens per minute (estimated prompt + `max_tokens` reserved, actual usage settled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<i64>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<i64>,
    /// Deployments only: prompt tokens enqueued at once in provider batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_enqueued_tokens: Option<i64>,
    /// Tenants only: USD per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<rust_decimal::Decimal>,
    /// Tenants only: USD per UTC month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<rust_decimal::Decimal>,
    /// Tenants only: `defer` (wait for the next period) or `reject` (fail with budget_exceeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Tenants only: share of contended capacity (1–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// The HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Largest request body the API accepts, in bytes.
    pub max_body_bytes: usize,
    /// Largest file `POST /v1/files` accepts, in bytes (streamed to Postgres, never in memory).
    pub max_upload_bytes: usize,
    /// How long `POST /v1/chat/completions` waits for budget before answering 429.
    #[serde(with = "humantime_serde")]
    pub chat_budget_wait: Duration,
    /// Longest the API works on one request (reading its body included) before answering 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 64 * 1024 * 1024,
            max_upload_bytes: 512 * 1024 * 1024,
            chat_budget_wait: Duration::from_secs(20),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// Postgres.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Longest any one statement may run (`statement_timeout` on every connection; 0: none).
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Longest a statement may wait for a row or table lock (`lock_timeout`; 0: none).
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// Connections of the small pool kept for heartbeats and lease renewals, so a saturated
    /// main pool never gets a live worker declared dead.
    pub heartbeat_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/sluice".into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(10),
            heartbeat_connections: 2,
        }
    }
}

/// RabbitMQ.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    pub url: String,
    /// Prepended to every exchange and queue name; empty in production, unique per test.
    pub prefix: String,
    /// The type of every queue sluice declares: `classic` (one node; work queues keep job
    /// priorities 0-9) or `quorum` (RabbitMQ's replicated type for clusters; RabbitMQ 3.x
    /// ignores message priorities on it). An existing queue keeps its type: switching needs the
    /// queues deleted (drained) first, and sluice says so instead of starting.
    pub queue_type: QueueType,
}

/// See [`AmqpConfig::queue_type`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: String::new(),
            queue_type: QueueType::Classic,
        }
    }
}

/// The worker pool and its maintenance loops.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Upstream calls in flight per worker process.
    pub concurrency: usize,
    /// Unacknowledged deliveries RabbitMQ may push to one worker process.
    pub prefetch: u16,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A worker silent this long is presumed dead and its running jobs are re-queued.
    #[serde(with = "humantime_serde")]
    pub dead_after: Duration,
    #[serde(with = "humantime_serde")]
    pub relay_interval: Duration,
    /// A queued job not yet published after this long is published by the relay.
    #[serde(with = "humantime_serde")]
    pub relay_grace: Duration,
    /// How long after its work message is confirmed a job is marked published (so the relay
    /// leaves it alone); a job claimed sooner is never marked, which saves writing its row
    /// once more. Shorter than `relay_grace`; unset, 2.5 s or half of `relay_grace`, whichever
    /// is shorter (see [`WorkerConfig::publish_mark_delay`]).
    #[serde(default, with = "humantime_serde::option")]
    pub publish_mark_delay: Option<Duration>,
    /// Upstream attempts per job unless its alias says otherwise.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Percentage of failed calls (retryable errors) in the breaker window that opens a
    /// deployment's circuit breaker, shared by every process; 0 turns breakers off.
    pub breaker_failure_rate: u8,
    /// Calls the breaker window must hold before its failure rate counts.
    pub breaker_min_calls: u32,
    /// How far back the breaker window looks.
    #[serde(with = "humantime_serde")]
    pub breaker_window: Duration,
    /// How long an open breaker keeps calls away from its deployment before one probe call.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// A queued job published this long ago and still not claimed is published again (its
    /// message may have been lost with a purged or deleted queue).
    #[serde(with = "humantime_serde")]
    pub republish_after: Duration,
    /// As `republish_after`, but for a tenant whose work queue holds no ready message at all
    /// (nothing in it will ever deliver the job): the job is published again this soon.
    #[serde(with = "humantime_serde")]
    pub republish_idle_after: Duration,
}

impl WorkerConfig {
    /// The publish-mark delay in force: as configured, or else 2.5 s or half of
    /// `relay_grace`, whichever is shorter.
    pub fn publish_mark_delay(&self) -> Duration {
        self.publish_mark_delay
            .unwrap_or_else(|| Duration::from_millis(2_500).min(self.relay_grace / 2))
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 256,
            prefetch: 512,
            heartbeat_interval: Duration::from_secs(2),
            dead_after: Duration::from_secs(15),
            relay_interval: Duration::from_millis(500),
            relay_grace: Duration::from_secs(5),
            publish_mark_delay: None,
            max_attempts: 4,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            breaker_failure_rate: 50,
            breaker_min_calls: 20,
            breaker_window: Duration::from_secs(30),
            breaker_cooldown: Duration::from_secs(30),
            republish_after: Duration::from_secs(300),
            republish_idle_after: Duration::from_secs(20),
        }
    }
}

/// Input limits enforced before anything is enqueued.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest single chat request body, in bytes.
    pub max_request_bytes: usize,
    /// Most jobs in one `POST /v1/jobs` call.
    pub max_jobs_per_request: usize,
    /// `max_tokens` assumed for a request that sets none.
    pub default_max_tokens: u32,
    /// Most output tokens (`max_tokens` / `max_completion_tokens`) one choice may ask for
    /// when the price list knows no output limit for the model.
    pub max_output_tokens: u32,
    /// Most choices (`n`) one request may ask for.
    pub max_n: u32,
    /// Furthest deadline a job may set.
    #[serde(with = "humantime_serde")]
    pub max_deadline: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = crate::domain::job::InputLimits::default();
        Self {
            max_request_bytes: d.max_request_bytes,
            max_jobs_per_request: 10_000,
            default_max_tokens: d.default_max_tokens,
            max_output_tokens: d.max_output_tokens,
            max_n: d.max_n,
            max_deadline: Duration::from_secs(d.max_deadline_secs),
        }
    }
}

/// How model names resolve and which route jobs take.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Provider for a bare model name (`gpt-4o-mini`) that is not an alias.
    pub default_provider: Option<String>,
    /// How long a provider batch is assumed to take; `auto` batches a job only when its
    /// deadline is at least this plus `batch_margin` away.
    #[serde(with = "humantime_serde")]
    pub batch_turnaround: Duration,
    #[serde(with = "humantime_serde")]
    pub batch_margin: Duration,
    /// A batched job still without a result this close to its deadline moves to real-time.
    #[serde(with = "humantime_serde")]
    pub realtime_margin: Duration,
    /// Tag rules that pick an alias (and route) for jobs that name no model; first match wins.
    pub rules: Vec<crate::domain::routing::RouteRule>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            default_provider: None,
            batch_turnaround: Duration::from_secs(12 * 3600),
            batch_margin: Duration::from_secs(3600),
            realtime_margin: Duration::from_secs(30 * 60),
            rules: Vec::new(),
        }
    }
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI chat completions: OpenAI, vLLM, Ollama, DeepSeek, Mistral, Qwen, Kimi, GLM, ….
    Openai,
    /// Anthropic Messages (`x-api-key`, `anthropic-version`), translated from OpenAI's format.
    Anthropic,
}

/// One upstream provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub base_url: String,
    /// Name of the environment variable holding the API key; the key never sits in the file.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The price-list provider name, when it differs from this provider's name.
    #[serde(default)]
    pub price_provider: Option<String>,
    /// Whether this provider offers a batch API (OpenAI and Anthropic do; vLLM and Ollama do not).
    #[serde(default)]
    pub batch: bool,
}

fn default_call_timeout() -> Duration {
    Duration::from_secs(120)
}

/// A model alias.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasConfig {
    /// Ordered `provider/model` deployments: the first is preferred, the rest are fallbacks.
    pub deployments: Vec<String>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// The premium real-time deployment savings are measured against (default: the first).
    #[serde(default)]
    pub premium: Option<String>,
    /// Opt-in response cache: identical requests of a tenant within this time are answered
    /// from the cache at no cost.
    #[serde(default, with = "humantime_serde")]
    pub cache_ttl: Option<Duration>,
}

/// A price row from config, in USD per million tokens (decimal strings or numbers).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    pub provider: String,
    pub model: String,
    pub input_usd_per_mtok: rust_decimal::Decimal,
    pub output_usd_per_mtok: rust_decimal::Decimal,
    #[serde(default)]
    pub cached_input_usd_per_mtok: Option<rust_decimal::Decimal>,
    #[serde(default)]
    pub batch_input_usd_per_mtok: Option<rust_decimal::Decimal>,
    #[serde(default)]
    pub batch_output_usd_per_mtok: Option<rust_decimal::Decimal>,
    /// When this price starts to apply (RFC 3339); default: the Unix epoch.
    #[serde(default)]
    pub effective_from: Option<chrono::DateTime<chrono::Utc>>,
}

/// A configuration problem, naming the key, the bad value and what is expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Parse(Box<figment::Error>),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("config file {path}: {source}")]
    Missing {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Config {
    /// Loads the file at `path` (or the built-in default) and then the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let base = match path {
            Some(p) => {
                if let Err(source) = std::fs::metadata(p) {
                    return Err(ConfigError::Missing {
                        path: p.to_owned(),
                        source,
                    });
                }
                Figment::from(Serialized::defaults(Config::default())).merge(Toml::file(p))
            }
            None => Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::string(DEFAULT_CONFIG)),
        };
        let config = Self::from_figment(base.merge(env_layer()))?;
        // The variables the configuration itself names (the admin key's, by default
        // `SLUICE_ADMIN_KEY`, and the providers' keys) are read, not refused.
        let read: Vec<&str> = std::iter::once(config.admin.key_env.as_str())
            .chain(
                config
                    .providers
                    .values()
                    .filter_map(|p| p.api_key_env.as_deref()),
            )
            .collect();
        check_env_names(std::env::vars().map(|(k, _)| k), &read)?;
        Ok(config)
    }

    /// Parses a TOML string on top of the struct defaults (tests and examples).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: cross references and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return invalid(
                "server.listen".into(),
                format!(
                    "`{}` is not an address like 127.0.0.1:8080",
                    self.server.listen
                ),
            );
        }
        if let Err((key, message)) = self.redaction.validate() {
            return invalid(key, message);
        }
        if self.retention.interval.is_zero() {
            return invalid("retention.interval".into(), "must be more than 0s".into());
        }
        if self.worker.concurrency == 0 {
            return invalid("worker.concurrency".into(), "must be at least 1".into());
        }
        if self
            .worker
            .publish_mark_delay
            .is_some_and(|d| d >= self.worker.relay_grace)
        {
            return invalid(
                "worker.publish_mark_delay".into(),
                format!(
                    "must be shorter than worker.relay_grace ({:?}), or the relay publishes every job twice",
                    self.worker.relay_grace
                ),
            );
        }
        if self.worker.max_attempts == 0 {
            return invalid("worker.max_attempts".into(), "must be at least 1".into());
        }
        // A worker must beat at least twice within `dead_after`, or a rescuer takes the jobs
        // of a live worker between two of its beats and they run twice.
        let w = &self.worker;
        if w.heartbeat_interval.is_zero() || w.heartbeat_interval.saturating_mul(2) > w.dead_after {
            return invalid(
                "worker.heartbeat_interval".into(),
                format!(
                    "must be more than 0s and at most half of worker.dead_after ({:?}), or live workers are taken for dead",
                    w.dead_after
                ),
            );
        }
        for (name, provider) in &self.providers {
            if url::Url::parse(&provider.base_url).is_err() {
                return invalid(
                    format!("providers.{name}.base_url"),
                    format!(
                        "`{}` is not a URL like https://api.openai.com/v1",
                        provider.base_url
                    ),
                );
            }
        }
        for (scope, map) in [
            ("deployments", &self.budgets.deployments),
            ("tenants", &self.budgets.tenants),
        ] {
            for (key, b) in map {
                if let Some(p) = &b.policy
                    && p != "defer"
                    && p != "reject"
                {
                    return invalid(
                        format!("budgets.{scope}.{key}.policy"),
                        format!("`{p}` is not `defer` or `reject`"),
                    );
                }
                if b.tpm.is_some_and(|v| v <= 0) || b.rpm.is_some_and(|v| v <= 0) {
                    return invalid(
                        format!("budgets.{scope}.{key}"),
                        "tpm and rpm must be positive".into(),
                    );
                }
                if b.weight.is_some_and(|w| !(1..=100).contains(&w)) {
                    return invalid(
                        format!("budgets.{scope}.{key}.weight"),
                        "must be between 1 and 100".into(),
                    );
                }
            }
        }
        if let Some(p) = &self.routing.default_provider
            && !self.providers.contains_key(p)
        {
            return invalid(
                "routing.default_provider".into(),
                format!(
                    "`{p}` is not one of the configured providers {:?}",
                    self.provider_names()
                ),
            );
        }
        for (i, r) in self.routing.rules.iter().enumerate() {
            if !self.aliases.contains_key(&r.alias) {
                return invalid(
                    format!("routing.rules[{i}].alias"),
                    format!("`{}` is not a configured alias", r.alias),
                );
            }
        }
        for (alias, a) in &self.aliases {
            if let Some(p) = &a.premium
                && crate::domain::catalog::Deployment::parse(p)
                    .is_none_or(|d| !self.providers.contains_key(&d.provider))
            {
                return invalid(
                    format!("aliases.{alias}.premium"),
                    format!("`{p}` is not `provider/model` of a configured provider"),
                );
            }
            if a.deployments.is_empty() {
                return invalid(
                    format!("aliases.{alias}.deployments"),
                    "must name at least one deployment".into(),
                );
            }
            for d in &a.deployments {
                match d.split_once('/') {
                    Some((p, m)) if self.providers.contains_key(p) && !m.is_empty() => {}
                    _ => {
                        return invalid(
                            format!("aliases.{alias}.deployments"),
                            format!(
                                "`{d}` is not `provider/model` with a provider among {:?}",
                                self.provider_names()
                            ),
                        );
                    }
                }
            }
        }
        self.webhooks
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                key: format!("webhooks.{key}"),
                message,
            })?;
        Ok(())
    }

    fn provider_names(&self) -> Vec<&str> {
        self.providers.keys().map(String::as_str).collect()
    }

    /// The socket address the API binds.
    pub fn listen_addr(&self) -> SocketAddr {
        // Validated in `validate`, so the fallback is never used in practice.
        self.server
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    /// Points every provider at `base_url` (the mock provider) and drops key requirements.
    pub fn point_providers_at(&mut self, base_url: &str) {
        for p in self.providers.values_mut() {
            p.base_url = base_url.to_string();
            p.api_key_env = None;
        }
    }
}

/// `SLUICE_…` variables that are not settings of sluice's own (read elsewhere).
const ENV_OTHERS: &[&str] = &[
    "SLUICE_CONFIG",
    "SLUICE_API_KEY",
    "SLUICE_API_URL",
    "SLUICE_LISTEN",
    "SLUICE_LOG_JSON",
    "SLUICE_FAILPOINT",
];

/// Refuses a `SLUICE_SECTION__KEY` variable whose section is unknown (a misspelt section
/// would otherwise be ignored silently), unless it is one the configuration names (`read`:
/// the admin key's variable, the providers' key variables); unknown keys inside a known
/// section are refused by the settings' `deny_unknown_fields` when the variables are read.
fn check_env_names(names: impl Iterator<Item = String>, read: &[&str]) -> Result<(), ConfigError> {
    for name in names {
        let Some(rest) = name.strip_prefix("SLUICE_") else {
            continue;
        };
        if ENV_OTHERS.contains(&name.as_str())
            || read.contains(&name.as_str())
            || name.starts_with("SLUICE_TEST_")
        {
            continue;
        }
        let section = rest
            .split("__")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !rest.contains("__") || !ENV_SECTIONS.contains(&section.as_str()) {
            return Err(ConfigError::Invalid {
                key: name.clone(),
                message: format!(
                    "environment variable `{name}` is not a sluice setting: settings are \
                     SLUICE_<SECTION>__<KEY> with a section among {} (e.g. SLUICE_WORKER__CONCURRENCY), \
                     or one of {}; fix or unset it",
                    ENV_SECTIONS.join(", "),
                    ENV_OTHERS.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// `SLUICE_SECTION__KEY` variables, plus `SLUICE_LISTEN`, `DATABASE_URL` and `AMQP_URL`.
fn env_layer() -> Figment {
    Figment::new()
        .merge(
            Env::prefixed("SLUICE_")
                .filter(|k| {
                    let first = k
                        .as_str()
                        .split("__")
                        .next()
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    ENV_SECTIONS.contains(&first.as_str())
                })
                .split("__"),
        )
        .merge(
            Env::raw()
                .only(&["SLUICE_LISTEN"])
                .map(|_| "server.listen".into()),
        )
        .merge(
            Env::raw()
                .only(&["DATABASE_URL"])
                .map(|_| "database.url".into()),
        )
        .merge(Env::raw().only(&["AMQP_URL"]).map(|_| "amqp.url".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_default_config_is_valid() {
        let c = Config::from_toml(DEFAULT_CONFIG).unwrap();
        assert!(c.aliases.contains_key("summarize"));
        assert_eq!(c.listen_addr().port(), 8080);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[worker]\nconcurency = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("concurency"), "{err}");
    }

    #[test]
    fn a_publish_mark_delay_not_shorter_than_the_relay_grace_is_refused() {
        let ok =
            Config::from_toml("[worker]\nrelay_grace = \"5s\"\npublish_mark_delay = \"2500ms\"\n")
                .unwrap();
        assert_eq!(ok.worker.publish_mark_delay(), Duration::from_millis(2_500));
        // Unset, it follows a short grace rather than refuse it.
        let short = Config::from_toml("[worker]\nrelay_grace = \"1s\"\n").unwrap();
        assert_eq!(
            short.worker.publish_mark_delay(),
            Duration::from_millis(500)
        );
        let default = Config::from_toml(DEFAULT_CONFIG).unwrap();
        assert_eq!(
            default.worker.publish_mark_delay(),
            Duration::from_millis(2_500)
        );
        let err =
            Config::from_toml("[worker]\nrelay_grace = \"2s\"\npublish_mark_delay = \"2s\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("worker.publish_mark_delay") && err.contains("relay_grace"),
            "{err}"
        );
    }

    #[test]
    fn an_alias_naming_an_unknown_provider_is_refused_with_its_key() {
        let err = Config::from_toml("[aliases.x]\ndeployments = [\"nope/m\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("aliases.x.deployments") && err.contains("nope/m"),
            "{err}"
        );
    }

    #[test]
    fn the_provider_examples_in_the_docs_are_valid_config() {
        let doc = include_str!("../docs/providers.md");
        let toml: String = doc
            .split("```toml")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::from_toml(&toml).unwrap();
        assert!(c.providers.contains_key("gemini") && c.providers.contains_key("vllm"));
        let catalog = crate::domain::catalog::Catalog::from_config(&c);
        for model in [
            "deepseek/deepseek-chat",
            "moonshot/kimi-k2.5",
            "zai/glm-4.5",
            "classify",
        ] {
            assert!(
                catalog.resolve(model).is_ok(),
                "{model}: {:?}",
                catalog.resolve(model)
            );
        }
    }

    #[test]
    fn a_misspelt_environment_section_is_refused_with_its_name() {
        let names = |v: &[&str]| {
            v.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert!(
            check_env_names(
                names(&["SLUICE_WORKER__CONCURRENCY", "SLUICE_API_KEY", "PATH"]),
                &[]
            )
            .is_ok()
        );
        // A variable the configuration names (the admin key's, a provider key's) is read.
        assert!(check_env_names(names(&["SLUICE_ADMIN_KEY"]), &["SLUICE_ADMIN_KEY"]).is_ok());
        assert!(check_env_names(names(&["SLUICE_OPS_KEY"]), &["SLUICE_OPS_KEY"]).is_ok());
        assert!(check_env_names(names(&["SLUICE_OPS_KEY"]), &["SLUICE_ADMIN_KEY"]).is_err());
        for bad in [
            "SLUICE_WORKR__CONCURRENCY",
            "SLUICE_WORKER_CONCURRENCY",
            "SLUICE_DATABSE__URL",
        ] {
            let err = check_env_names(names(&[bad]), &["SLUICE_ADMIN_KEY"])
                .unwrap_err()
                .to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn durations_read_as_human_text() {
        let c = Config::from_toml("[worker]\ndead_after = \"4s\"\n").unwrap();
        assert_eq!(c.worker.dead_after, Duration::from_secs(4));
    }

    #[test]
    fn a_heartbeat_not_at_most_half_of_dead_after_is_refused() {
        for toml in [
            "[worker]\ndead_after = \"3s\"\n",
            "[worker]\nheartbeat_interval = \"0s\"\n",
            "[worker]\nheartbeat_interval = \"10s\"\ndead_after = \"15s\"\n",
        ] {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(
                err.contains("worker.heartbeat_interval") && err.contains("dead_after"),
                "{toml}: {err}"
            );
        }
        let ok = Config::from_toml("[worker]\nheartbeat_interval = \"1s\"\ndead_after = \"2s\"\n");
        assert!(ok.is_ok(), "{ok:?}");
    }
}
