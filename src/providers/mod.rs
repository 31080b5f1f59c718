//! The provider seam: four verbs (complete, submit batch, poll batch, fetch batch results, plus
//! cancel), static dispatch over an enum, pure wire mapping kept apart from the HTTP call.

pub mod anthropic;
pub mod anthropic_batch;
pub mod batch;
pub mod openai;
pub mod openai_batch;
pub mod ratelimit;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::Value;

use self::batch::{BatchItem, BatchPoll, ItemResult, SubmittedBatch};
use crate::config::{Config, ProviderKind};
use crate::domain::catalog::Deployment;
use crate::domain::pricing::Usage;
use crate::domain::retry::ErrorClass;

/// A successful upstream answer, normalised to OpenAI's `chat.completion` shape.
#[derive(Debug, Clone)]
pub struct Completion {
    pub body: Value,
    pub usage: Usage,
    pub request_id: Option<String>,
    /// A safety refusal or content-filter result: a result, never retried or re-routed.
    pub refusal: bool,
    /// The provider's headers say a rate limit is exhausted and refills after this long.
    pub exhausted_for: Option<std::time::Duration>,
}

/// A failed upstream call, classified for the retry policy.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    /// Stable, low-cardinality label: `timeout`, `connection`, `http_429`, `malformed_response`, ….
    pub code: String,
    pub message: String,
    pub http_status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub request_id: Option<String>,
}

impl ProviderError {
    /// An error with no HTTP status (transport, configuration).
    pub fn new(class: ErrorClass, code: &str, message: impl Into<String>) -> Self {
        Self {
            class,
            code: code.into(),
            message: message.into(),
            http_status: None,
            retry_after: None,
            request_id: None,
        }
    }
}

/// A configured provider client.
#[derive(Debug, Clone)]
pub enum Provider {
    OpenAi(openai::OpenAiClient),
    Anthropic(anthropic::AnthropicClient),
}

impl Provider {
    /// One real-time chat completion.
    pub async fn complete(
        &self,
        model: &str,
        request: &Value,
        job_id: &str,
    ) -> Result<Completion, ProviderError> {
        match self {
            Self::OpenAi(c) => c.complete(model, request, job_id).await,
            Self::Anthropic(c) => c.complete(model, request, job_id).await,
        }
    }

    /// Submits `items` as one provider batch; `completion_window` is OpenAI's (Anthropic's is
    /// always 24 h). Callers split work with [`batch::pack`] first.
    pub async fn submit_batch(
        &self,
        items: &[BatchItem],
        completion_window: &str,
        tag: &str,
    ) -> Result<SubmittedBatch, ProviderError> {
        match self {
            Self::OpenAi(c) => c.submit_batch(items, completion_window, tag).await,
            Self::Anthropic(c) => c.submit_batch(items).await,
        }
    }

    /// A batch an earlier `submit_batch` with this `tag` created, if the provider can tell
    /// (OpenAI: by the batch's metadata; Anthropic keeps no metadata on batches, so never).
    pub async fn find_batch(&self, tag: &str) -> Result<Option<SubmittedBatch>, ProviderError> {
        match self {
            Self::OpenAi(c) => c.find_batch(tag).await,
            Self::Anthropic(_) => Ok(None),
        }
    }

    /// Where a provider batch stands.
    pub async fn poll_batch(&self, provider_batch_id: &str) -> Result<BatchPoll, ProviderError> {
        match self {
            Self::OpenAi(c) => c.poll_batch(provider_batch_id).await.map(|(p, _, _)| p),
            Self::Anthropic(c) => c.poll_batch(provider_batch_id).await,
        }
    }

    /// Every item's result, keyed by `custom_id`, once the batch is terminal (a retryable
    /// `batch_not_ended` error before). Items missing from the answer must be re-driven.
    pub async fn batch_results(
        &self,
        provider_batch_id: &str,
    ) -> Result<Vec<(String, ItemResult)>, ProviderError> {
        match self {
            Self::OpenAi(c) => {
                let (poll, output, error) = c.poll_batch(provider_batch_id).await?;
                if !poll.state.is_terminal() {
                    return Err(batch::not_ended(provider_batch_id, poll.state));
                }
                c.batch_results(output.as_deref(), error.as_deref()).await
            }
            Self::Anthropic(c) => c.batch_results(provider_batch_id).await,
        }
    }

    /// Asks the provider to cancel a batch; finished items keep their results.
    pub async fn cancel_batch(&self, provider_batch_id: &str) -> Result<BatchPoll, ProviderError> {
        match self {
            Self::OpenAi(c) => c.cancel_batch(provider_batch_id).await,
            Self::Anthropic(c) => c.cancel_batch(provider_batch_id).await,
        }
    }
}

/// Every configured provider by name.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    by_name: HashMap<String, Provider>,
}

impl Providers {
    /// Builds clients for every provider in `config`; API keys are read from the environment here.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        // Never follow a redirect: it would send the API key (Anthropic's `x-api-key` header is
        // not stripped across hosts) to wherever the answer points. A 3xx is a fatal error.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()?;
        let mut by_name = HashMap::new();
        for (name, p) in &config.providers {
            let key = match &p.api_key_env {
                Some(var) => match std::env::var(var) {
                    Ok(k) if !k.is_empty() => Some(secrecy::SecretString::from(k)),
                    _ => {
                        tracing::warn!(provider = %name, env = %var, "API key variable is not set; calls to this provider will fail with 401");
                        None
                    }
                },
                None => None,
            };
            let provider =
                match p.kind {
                    ProviderKind::Openai => Provider::OpenAi(openai::OpenAiClient::new(
                        http.clone(),
                        &p.base_url,
                        key,
                        p.timeout,
                    )),
                    ProviderKind::Anthropic => Provider::Anthropic(
                        anthropic::AnthropicClient::new(http.clone(), &p.base_url, key, p.timeout),
                    ),
                };
            by_name.insert(name.clone(), provider);
        }
        Ok(Self { by_name })
    }

    fn get(&self, deployment: &Deployment) -> Result<&Provider, ProviderError> {
        self.by_name.get(&deployment.provider).ok_or_else(|| {
            ProviderError::new(
                ErrorClass::Fatal,
                "unknown_provider",
                format!("provider `{}` is not configured", deployment.provider),
            )
        })
    }

    /// The size limits of `deployment`'s provider batches.
    pub fn batch_limits(&self, deployment: &Deployment) -> batch::BatchLimits {
        match self.by_name.get(&deployment.provider) {
            Some(Provider::Anthropic(_)) => batch::ANTHROPIC_LIMITS,
            _ => batch::OPENAI_LIMITS,
        }
    }

    /// Calls `deployment`.
    pub async fn complete(
        &self,
        deployment: &Deployment,
        request: &Value,
        job_id: &str,
    ) -> Result<Completion, ProviderError> {
        self.get(deployment)?
            .complete(&deployment.model, request, job_id)
            .await
    }

    /// Submits `items` (each carrying `deployment`'s model) as one batch at `deployment`'s
    /// provider, tagged with sluice's batch id where the provider keeps metadata.
    #[tracing::instrument(skip_all, fields(provider = %deployment.provider, model = %deployment.model, items = items.len()))]
    pub async fn submit_batch(
        &self,
        deployment: &Deployment,
        items: &[BatchItem],
        completion_window: &str,
        tag: &str,
    ) -> Result<SubmittedBatch, ProviderError> {
        self.get(deployment)?
            .submit_batch(items, completion_window, tag)
            .await
    }

    /// The batch an earlier submission tagged `tag` created at `deployment`'s provider, if any
    /// and if the provider can tell; see [`Provider::find_batch`].
    #[tracing::instrument(skip_all, fields(provider = %deployment.provider, tag = tag))]
    pub async fn find_batch(
        &self,
        deployment: &Deployment,
        tag: &str,
    ) -> Result<Option<SubmittedBatch>, ProviderError> {
        self.get(deployment)?.find_batch(tag).await
    }

    /// Where batch `provider_batch_id` at `deployment`'s provider stands.
    #[tracing::instrument(skip_all, fields(provider = %deployment.provider, provider_batch_id = provider_batch_id))]
    pub async fn poll_batch(
        &self,
        deployment: &Deployment,
        provider_batch_id: &str,
    ) -> Result<BatchPoll, ProviderError> {
        self.get(deployment)?.poll_batch(provider_batch_id).await
    }

    /// The per-item results of an ended batch; see [`Provider::batch_results`].
    #[tracing::instrument(skip_all, fields(provider = %deployment.provider, provider_batch_id = provider_batch_id))]
    pub async fn batch_results(
        &self,
        deployment: &Deployment,
        provider_batch_id: &str,
    ) -> Result<Vec<(String, ItemResult)>, ProviderError> {
        self.get(deployment)?.batch_results(provider_batch_id).await
    }

    /// Cancels batch `provider_batch_id` at `deployment`'s provider.
    #[tracing::instrument(skip_all, fields(provider = %deployment.provider, provider_batch_id = provider_batch_id))]
    pub async fn cancel_batch(
        &self,
        deployment: &Deployment,
        provider_batch_id: &str,
    ) -> Result<BatchPoll, ProviderError> {
        self.get(deployment)?.cancel_batch(provider_batch_id).await
    }
}

/// The most tokens one call may report for one kind of usage. A provider's number is clamped
/// into `0..=MAX_USAGE_TOKENS`, so no answer can overflow the arithmetic that prices and books it.
pub const MAX_USAGE_TOKENS: i64 = 1_000_000_000;

/// The longest pause a provider's header can ask for (`retry-after`, `x-ratelimit-reset-*`):
/// a larger value is taken as this one hour.
pub const MAX_PROVIDER_PAUSE: Duration = Duration::from_secs(3600);

/// A token count from a provider's answer, clamped to `0..=MAX_USAGE_TOKENS` (missing: 0).
pub(crate) fn token_count(v: Option<&Value>) -> i64 {
    let n = match v {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|_| i64::MAX))
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .unwrap_or(0),
        _ => 0,
    };
    n.clamp(0, MAX_USAGE_TOKENS)
}

/// A pause of `secs` seconds from a provider header: `None` for garbage (not finite, negative),
/// capped at [`MAX_PROVIDER_PAUSE`].
pub(crate) fn pause_secs(secs: f64) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    let capped = secs.min(MAX_PROVIDER_PAUSE.as_secs_f64());
    Duration::try_from_secs_f64(capped).ok()
}

/// A redirect answer (3xx) as a fatal error: sluice never follows one, since the request
/// carries the provider's API key; the message names where it pointed.
pub(crate) fn redirect_error(status: u16, headers: &HeaderMap) -> Option<ProviderError> {
    if !(300..400).contains(&status) {
        return None;
    }
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(no location)");
    let mut location: String = location.chars().take(200).collect();
    crate::domain::text::make_storable_str(&mut location);
    Some(ProviderError {
        http_status: Some(status),
        ..ProviderError::new(
            ErrorClass::Fatal,
            "provider_redirect",
            format!(
                "the provider answered with a redirect ({status}) to {location}; sluice does not \
                 follow redirects, which would send the API key elsewhere: check the provider's base_url"
            ),
        )
    })
}

/// Sends `req` and reads the whole answer; transport failures become retryable errors.
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
) -> Result<(u16, HeaderMap, Bytes), ProviderError> {
    let resp = req.send().await.map_err(transport_error)?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.map_err(transport_error)?;
    Ok((status, headers, bytes))
}

fn transport_error(e: reqwest::Error) -> ProviderError {
    let code = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection"
    } else {
        "transport"
    };
    // The URL is ours and carries no secret, but the error text is kept short and generic.
    ProviderError::new(ErrorClass::Retryable, code, e.without_url().to_string())
}
