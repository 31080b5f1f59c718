//! Client commands: `submit`, `status`, `results`. They talk to a running sluice over HTTP, so
//! they work from any machine that can reach the API.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use comfy_table::Table;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::ApiArgs;

/// A client of a running sluice's HTTP API.
pub(super) struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    /// A client for `args`; fails without an API key.
    pub(super) fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let Some(key) = args.api_key.clone() else {
            bail!(
                "no API key: pass --api-key or set SLUICE_API_KEY (create one with `sluice keys create --tenant NAME`)"
            );
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()?;
        Ok(Self {
            http,
            base: args.api_url.trim_end_matches('/').to_string(),
            key,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        match self.try_send(req).await? {
            Ok(resp) => Ok(resp),
            Err((status, message)) => bail!("sluice answered {status}: {message}"),
        }
    }

    /// Sends; an error answer comes back as its status and message, a transport failure as `Err`.
    async fn try_send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<Result<reqwest::Response, (reqwest::StatusCode, String)>> {
        let resp = req.bearer_auth(&self.key).send().await.map_err(|e| {
            anyhow::anyhow!("cannot reach sluice at {}: {e}. Is `sluice up` running? (set --api-url or SLUICE_API_URL)", self.base)
        })?;
        if resp.status().is_success() {
            return Ok(Ok(resp));
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or(text);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!(
                "the API key was refused ({message}); create one with `sluice keys create --tenant NAME`"
            );
        }
        Ok(Err((status, message)))
    }

    /// The API's base URL.
    pub(super) fn base(&self) -> &str {
        &self.base
    }

    /// GETs JSON; an error answer comes back as its status and message.
    pub(super) async fn try_get(
        &self,
        path: &str,
    ) -> anyhow::Result<Result<Value, (reqwest::StatusCode, String)>> {
        match self
            .try_send(self.http.get(format!("{}{path}", self.base)))
            .await?
        {
            Ok(resp) => Ok(Ok(resp.json().await?)),
            Err(e) => Ok(Err(e)),
        }
    }

    pub(super) async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?
            .json()
            .await?)
    }

    /// POSTs with retries on transport errors and 5xx; the idempotency key makes that safe.
    pub(super) async fn post_json(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: &str,
    ) -> anyhow::Result<Value> {
        use backon::Retryable;
        /// A failure worth another try (the network, a 5xx) or not.
        enum Failure {
            Again(anyhow::Error),
            Final(anyhow::Error),
        }
        let send = || async {
            let req = self
                .http
                .post(format!("{}{path}", self.base))
                .header("idempotency-key", idempotency_key)
                .json(body);
            match self.try_send(req).await {
                Ok(Ok(resp)) => resp
                    .json::<Value>()
                    .await
                    .map_err(|e| Failure::Final(e.into())),
                Ok(Err((status, message))) => {
                    let e = anyhow::anyhow!("sluice answered {status}: {message}");
                    Err(if status.is_server_error() {
                        Failure::Again(e)
                    } else {
                        Failure::Final(e)
                    })
                }
                Err(e) => Err(Failure::Again(e)),
            }
        };
        // Six tries over about six seconds.
        let pauses = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_jitter()
            .with_max_times(5);
        send.retry(pauses)
            .when(|f| matches!(f, Failure::Again(_)))
            .await
            .map_err(|f| match f {
                Failure::Again(e) | Failure::Final(e) => e,
            })
    }
}

/// A progress bar for `total` items.
pub(super) fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// Prints a batch's progress as a table.
pub(super) fn print_summary(s: &Value) {
    let counts = &s["counts"];
    let n = |k: &str| counts[k].as_u64().unwrap_or(0).to_string();
    let mut t = Table::new();
    t.set_header([
        "batch",
        "status",
        "total",
        "succeeded",
        "failed",
        "expired",
        "cancelled",
        "queued/running",
        "input tokens",
        "output tokens",
        "cost (USD)",
    ]);
    let pending: u64 = ["queued", "running", "retry_scheduled", "in_provider_batch"]
        .iter()
        .map(|k| counts[*k].as_u64().unwrap_or(0))
        .sum();
    t.add_row([
        s["id"].as_str().unwrap_or_default().to_string(),
        s["status"].as_str().unwrap_or_default().to_string(),
        s["request_counts"]["total"].to_string(),
        n("succeeded"),
        n("failed"),
        n("expired"),
        n("cancelled"),
        pending.to_string(),
        s["usage"]["input_tokens"].to_string(),
        s["usage"]["output_tokens"].to_string(),
        s["cost_usd"].as_str().unwrap_or("0").to_string(),
    ]);
    println!("{t}");
}

/// `sluice status BATCH_ID`
pub async fn status(args: &ApiArgs, batch_id: &str) -> anyhow::Result<()> {
    let api = Api::new(args)?;
    let s = api.get_json(&format!("/v1/batches/{batch_id}")).await?;
    print_summary(&s);
    Ok(())
}

/// `sluice results BATCH_ID [-o FILE]`
pub async fn results(
    args: &ApiArgs,
    batch_id: &str,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let api = Api::new(args)?;
    let mut resp = api
        .send(
            api.http
                .get(format!("{}/v1/batches/{batch_id}/results", api.base)),
        )
        .await?;
    let mut out: Box<dyn Write> = match &output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut lines = 0usize;
    while let Some(chunk) = resp.chunk().await? {
        lines += chunk.iter().filter(|b| **b == b'\n').count();
        out.write_all(&chunk)?;
    }
    out.flush()?;
    if let Some(p) = output {
        eprintln!("wrote {lines} results to {}", p.display());
    }
    Ok(())
}
