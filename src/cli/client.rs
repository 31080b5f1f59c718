//! Client commands: `submit`, `status`, `results`. They talk to a running sluice over HTTP, so
//! they work from any machine that can reach the API.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use comfy_table::Table;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::ApiArgs;
use crate::domain::catalog::{Deployment, Resolved};
use crate::domain::job::{InputLimits, JobInput};

/// Jobs sent per HTTP request.
const CHUNK: usize = 1000;

/// `sluice submit`
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// JSONL file: one job per line, in OpenAI batch input format or sluice's job format.
    pub file: PathBuf,
    /// Model alias or model for every line (overrides the lines' own).
    #[arg(long)]
    pub model: Option<String>,
    /// Route for every line: auto, cheap or batch.
    #[arg(long)]
    pub route: Option<String>,
    /// Deadline for every line: a duration such as 24h, or an RFC 3339 time.
    #[arg(long)]
    pub deadline: Option<String>,
    /// Follow the batch until every job has finished, then print a summary.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

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
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let req = self
                .http
                .post(format!("{}{path}", self.base))
                .header("idempotency-key", idempotency_key)
                .json(body);
            let outcome = self.try_send(req).await;
            let retry = match &outcome {
                Ok(Ok(_)) => false,
                Ok(Err((status, _))) => status.is_server_error(),
                Err(_) => true,
            };
            if !retry || attempt >= 6 {
                return match outcome? {
                    Ok(resp) => Ok(resp.json().await?),
                    Err((status, message)) => bail!("sluice answered {status}: {message}"),
                };
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
}

/// Reads and checks the whole file before anything is sent.
fn read_jobs(args: &SubmitArgs) -> anyhow::Result<Vec<(usize, JobInput)>> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let name = args.file.display();
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut job: JobInput = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{name}:{n}: not a valid job line: {e}"))?;
        if args.model.is_some() {
            job.model = args.model.clone();
        }
        if args.route.is_some() {
            job.route = args.route.clone();
        }
        if args.deadline.is_some() {
            job.deadline = args.deadline.clone();
        }
        jobs.push((n, job));
    }
    if jobs.is_empty() {
        bail!("{name} has no jobs: expected one JSON object per line");
    }
    Ok(jobs)
}

/// `sluice submit FILE`: check every line, upload in chunks, optionally follow to the end.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let jobs = read_jobs(&args)?;
    let api = Api::new(&args.api)?;
    let name = args.file.display().to_string();

    // Resolve each distinct model once through the server, so an unknown model is reported
    // with its line number before anything is enqueued.
    let models: BTreeSet<String> = jobs
        .iter()
        .filter_map(|(_, j)| j.model_name().map(str::to_owned))
        .collect();
    let mut known: BTreeMap<String, Result<Resolved, String>> = BTreeMap::new();
    for m in models {
        let req = api.http.get(format!("{}/v1/models/{m}", api.base));
        let r = match api.try_send(req).await? {
            Ok(resp) => {
                let v: Value = resp.json().await?;
                Ok(Resolved {
                    alias: None,
                    deployments: v["deployments"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|d| d.as_str().and_then(Deployment::parse))
                        .collect(),
                    max_attempts: None,
                    premium: None,
                    cache_ttl: None,
                })
            }
            Err((reqwest::StatusCode::NOT_FOUND, message)) => Err(message),
            Err((status, message)) => bail!("sluice answered {status}: {message}"),
        };
        known.insert(m, r);
    }
    let limits = InputLimits {
        max_request_bytes: usize::MAX,
        default_max_tokens: 1,
    };
    let mut seen = BTreeSet::new();
    let mut values = Vec::with_capacity(jobs.len());
    for (n, job) in jobs {
        if let Some(c) = &job.custom_id
            && !seen.insert(c.clone())
        {
            bail!("{name}:{n}: custom_id `{c}` appears more than once in the file");
        }
        let value = serde_json::to_value(&job)?;
        job.validate_with(
            |m| {
                known
                    .get(m)
                    .cloned()
                    .unwrap_or_else(|| Err(format!("unknown model `{m}`")))
            },
            limits,
            chrono::Utc::now(),
        )
        .map_err(|e| anyhow::anyhow!("{name}:{n}: {e}"))?;
        values.push(value);
    }

    let total = values.len() as u64;
    let bar = progress(total, "uploading");
    let submission = crate::ids::new_id("sub");
    let mut batch_id: Option<String> = None;
    for (i, chunk) in values.chunks(CHUNK).enumerate() {
        let mut body = json!({"jobs": chunk, "metadata": {"source": "cli", "file": name}});
        if let Some(b) = &batch_id {
            body = json!({"jobs": chunk, "batch_id": b});
        }
        let resp = api
            .post_json("/v1/jobs", &body, &format!("{submission}-{i}"))
            .await
            .with_context(|| {
                format!(
                    "uploading lines of chunk {} (jobs {}..{})",
                    i + 1,
                    i * CHUNK + 1,
                    i * CHUNK + chunk.len()
                )
            })?;
        if batch_id.is_none() {
            batch_id = resp["batch_id"].as_str().map(str::to_owned);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let batch_id = batch_id.context("the server returned no batch id")?;
    eprintln!(
        "submitted {total} jobs from {name} as batch {batch_id} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!("{batch_id}");
    if !args.wait {
        eprintln!(
            "follow it with: sluice status {batch_id}   results: sluice results {batch_id} -o out.jsonl"
        );
        return Ok(());
    }
    let bar = progress(total, "running");
    let summary = loop {
        let s = api.get_json(&format!("/v1/batches/{batch_id}")).await?;
        let counts = &s["counts"];
        let finished: u64 = ["succeeded", "failed", "cancelled", "expired"]
            .iter()
            .map(|k| counts[*k].as_u64().unwrap_or(0))
            .sum();
        bar.set_position(finished);
        if s["status"] == "completed" {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    print_summary(&summary);
    eprintln!(
        "{total} jobs in {elapsed:.2}s: {:.0} jobs/s end to end (upload, run, record)",
        total as f64 / elapsed
    );
    Ok(())
}

fn progress(total: u64, what: &str) -> ProgressBar {
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
