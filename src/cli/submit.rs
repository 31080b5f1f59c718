//! `sluice submit FILE`: checks the whole file with the server's own rules first (the same
//! `JobInput::validate_with` the server runs, with the limits from `GET /v1/limits` and the
//! models resolved through `GET /v1/models/{m}`), reports every bad line as
//! `FILE:LINE: field: problem`, and enqueues nothing unless every line is good. Then it uploads
//! in bounded chunks. The file is streamed twice (check, then upload), so memory does not grow
//! with its size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use super::ApiArgs;
use super::client::{Api, print_summary, progress};
use crate::domain::catalog::{Deployment, Resolved};
use crate::domain::job::{FieldError, InputLimits, JobInput};

/// Bad lines printed in full; the rest are counted.
const MAX_REPORTED: usize = 200;

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
    /// Follow the batch until every job has finished, then print a summary. Exits non-zero
    /// if any job failed or expired.
    #[arg(long)]
    pub wait: bool,
    /// Jobs per upload request (at most the server's `max_jobs_per_request`).
    #[arg(long, default_value_t = 1000)]
    pub chunk: usize,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// The file's non-empty lines with their 1-based numbers, read through one reused buffer,
/// so memory is bounded by the longest line, not the file.
struct Lines {
    reader: std::io::BufReader<std::fs::File>,
    path: PathBuf,
    buf: Vec<u8>,
    n: usize,
}

impl Lines {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self {
            reader: std::io::BufReader::with_capacity(1 << 16, file),
            path: path.to_owned(),
            buf: Vec::new(),
            n: 0,
        })
    }

    /// The next non-empty line: its number and its text (or why it is not text).
    fn next_line(&mut self) -> anyhow::Result<Option<(usize, Result<&str, String>)>> {
        loop {
            self.buf.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .with_context(|| format!("cannot read {}", self.path.display()))?;
            if read == 0 {
                return Ok(None);
            }
            self.n += 1;
            match std::str::from_utf8(&self.buf) {
                Ok(l) if l.trim().is_empty() => continue,
                Ok(_) => break,
                Err(e) => return Ok(Some((self.n, Err(format!("not UTF-8 text: {e}"))))),
            }
        }
        let line = std::str::from_utf8(&self.buf).unwrap_or_default();
        Ok(Some((self.n, Ok(line.trim_end_matches(['\n', '\r'])))))
    }
}

/// One line as a job value, with the command line's overrides applied.
fn line_value(args: &SubmitArgs, line: &str) -> Result<Value, FieldError> {
    let mut value: Value = serde_json::from_str(line)
        .map_err(|e| FieldError::new("job", format!("not valid JSON: {e}")))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| FieldError::new("job", "must be a JSON object"))?;
    for (key, v) in [
        ("model", &args.model),
        ("route", &args.route),
        ("deadline", &args.deadline),
    ] {
        if let Some(v) = v {
            obj.insert(key.into(), Value::String(v.clone()));
        }
    }
    Ok(value)
}

/// The server's limits, or the defaults from a server that does not publish them.
async fn server_limits(api: &Api) -> anyhow::Result<(InputLimits, usize)> {
    let v = match api.try_get("/v1/limits").await? {
        Ok(v) => v,
        Err((reqwest::StatusCode::NOT_FOUND, _)) => return Ok((InputLimits::default(), 1000)),
        Err((status, message)) => bail!("sluice answered {status}: {message}"),
    };
    let limits = serde_json::from_value(v["job"].clone())
        .context("the server's /v1/limits answer is not understood; upgrade sluice")?;
    let max = v["max_jobs_per_request"].as_u64().unwrap_or(1000) as usize;
    Ok((limits, max))
}

/// Resolves `model` through the server, once per distinct model.
async fn resolve(
    api: &Api,
    known: &mut HashMap<String, Result<Resolved, String>>,
    model: &str,
) -> anyhow::Result<()> {
    if known.contains_key(model) || model.contains('\0') {
        return Ok(());
    }
    let path = format!("/v1/models/{}", urlencode(model));
    let r = match api.try_get(&path).await? {
        Ok(v) => Ok(Resolved {
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
            max_output_tokens: v["max_output_tokens"].as_i64(),
        }),
        Err((reqwest::StatusCode::NOT_FOUND, message)) => Err(message),
        Err((status, message)) => bail!("sluice answered {status}: {message}"),
    };
    known.insert(model.to_string(), r);
    Ok(())
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace("%2F", "/")
}

/// A 128-bit fingerprint of a custom id: duplicates are found without keeping every id.
fn fingerprint(hashers: &[std::hash::RandomState; 2], s: &str) -> u128 {
    let half = |h: &std::hash::RandomState| {
        let mut h = h.build_hasher();
        h.write(s.as_bytes());
        h.finish()
    };
    (u128::from(half(&hashers[0])) << 64) | u128::from(half(&hashers[1]))
}

/// One line read and checked as far as it can be without the server (size, text, JSON,
/// overrides applied).
fn read_line(
    args: &SubmitArgs,
    limits: InputLimits,
    line: Result<&str, String>,
) -> Result<Value, FieldError> {
    match line {
        // The line holds the request body and a few fields around it.
        Ok(l) if l.len() > limits.max_request_bytes.saturating_add(64 * 1024) => {
            Err(FieldError::new(
                "job",
                format!(
                    "the line is {} bytes; a request may be at most {} bytes",
                    l.len(),
                    limits.max_request_bytes
                ),
            ))
        }
        Ok(l) => line_value(args, l),
        Err(e) => Err(FieldError::new("job", e)),
    }
}

/// The first pass: every line checked; the number of jobs, or every problem found (each as
/// `FILE:LINE: field: problem`).
async fn check_file(
    args: &SubmitArgs,
    api: &Api,
    limits: InputLimits,
) -> anyhow::Result<Result<u64, Vec<String>>> {
    let name = args.file.display().to_string();
    let mut problems = Vec::new();
    let mut bad = 0usize;
    let mut jobs = 0u64;
    let hashers = [std::hash::RandomState::new(), std::hash::RandomState::new()];
    let mut seen: HashSet<u128> = HashSet::new();
    let mut known: HashMap<String, Result<Resolved, String>> = HashMap::new();
    let mut lines = Lines::open(&args.file)?;
    while let Some((n, line)) = lines.next_line()? {
        jobs += 1;
        let checked = async {
            let input = JobInput::from_value(read_line(args, limits, line)?)?;
            if let Some(m) = input.model_name() {
                resolve(api, &mut known, m)
                    .await
                    .map_err(|e| FieldError::new("model", e.to_string()))?;
            }
            if let Some(c) = &input.custom_id
                && !seen.insert(fingerprint(&hashers, c))
            {
                return Err(FieldError::new(
                    "custom_id",
                    format!("`{c}` appears more than once in the file"),
                ));
            }
            input
                .validate_with(
                    |m| {
                        known
                            .get(m)
                            .cloned()
                            .unwrap_or_else(|| Err(format!("unknown model `{m}`")))
                    },
                    limits,
                    chrono::Utc::now(),
                )
                .map(|_| ())
        }
        .await;
        if let Err(e) = checked {
            bad += 1;
            if problems.len() < MAX_REPORTED {
                problems.push(format!("{name}:{n}: {e}"));
            }
        }
    }
    if jobs == 0 {
        bail!("{name} has no jobs: expected one JSON object per line");
    }
    if bad > problems.len() {
        problems.push(format!("… and {} more bad lines", bad - problems.len()));
    }
    Ok(if bad == 0 { Ok(jobs) } else { Err(problems) })
}

/// `sluice submit FILE`: check every line, upload in chunks, optionally follow to the end.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let api = Api::new(&args.api)?;
    let name = args.file.display().to_string();
    let (limits, max_per_request) = server_limits(&api).await?;
    let total = match check_file(&args, &api, limits).await? {
        Ok(total) => total,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            let n = problems.len();
            bail!(
                "{name} has bad lines (listed above{}); nothing was enqueued. Fix them and submit again",
                if n >= MAX_REPORTED {
                    ", first ones only"
                } else {
                    ""
                }
            );
        }
    };
    let chunk_size = args.chunk.clamp(1, max_per_request.max(1));
    let bar = progress(total, "uploading");
    let submission = crate::ids::new_id("sub");
    let mut batch_id: Option<String> = None;
    let mut lines = Lines::open(&args.file)?;
    let mut chunk: Vec<Value> = Vec::with_capacity(chunk_size);
    let mut first_line = 0usize;
    let mut last_line = 0usize;
    let mut index = 0usize;
    loop {
        let next = lines.next_line()?;
        let done = next.is_none();
        if let Some((n, line)) = next {
            let value = read_line(&args, limits, line).map_err(|e| {
                anyhow::anyhow!("{name}:{n}: {e} (the file changed while submitting)")
            })?;
            if chunk.is_empty() {
                first_line = n;
            }
            last_line = n;
            chunk.push(value);
        }
        if chunk.len() >= chunk_size || (done && !chunk.is_empty()) {
            let body = match &batch_id {
                Some(b) => json!({"jobs": chunk, "batch_id": b}),
                None => json!({"jobs": chunk, "metadata": {"source": "cli", "file": name}}),
            };
            let resp = api
                .post_json("/v1/jobs", &body, &format!("{submission}-{index}"))
                .await
                .with_context(|| format!("uploading {name} lines {first_line}..{last_line}"))?;
            if batch_id.is_none() {
                batch_id = resp["batch_id"].as_str().map(str::to_owned);
            }
            bar.inc(chunk.len() as u64);
            chunk.clear();
            index += 1;
        }
        if done {
            break;
        }
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
    wait(&api, &batch_id, total, started).await
}

/// Follows a batch to the end; fails (non-zero exit) if any job did not succeed, saying how
/// many, with which error codes, and how to list them.
async fn wait(api: &Api, batch_id: &str, total: u64, started: Instant) -> anyhow::Result<()> {
    let bar = progress(total, "running");
    let summary = loop {
        let s = api.get_json(&format!("/v1/batches/{batch_id}")).await?;
        let counts = &s["counts"];
        let finished: u64 = ["succeeded", "failed", "cancelled", "expired"]
            .iter()
            .map(|k| counts[*k].as_u64().unwrap_or(0))
            .sum();
        bar.set_position(finished);
        if ["completed", "cancelled", "failed", "expired"]
            .contains(&s["status"].as_str().unwrap_or_default())
        {
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
    let count = |k: &str| summary["counts"][k].as_u64().unwrap_or(0);
    let (failed, expired) = (count("failed"), count("expired"));
    if failed + expired == 0 {
        return Ok(());
    }
    let codes = error_codes(api, batch_id).await.unwrap_or_default();
    let codes = if codes.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = codes.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
        format!(" (error codes: {})", list.join(", "))
    };
    bail!(
        "{failed} jobs failed and {expired} expired of {total}{codes}; list them with: \
         curl -H \"Authorization: Bearer $SLUICE_API_KEY\" '{}/v1/jobs?batch_id={batch_id}&status=failed' \
         (or `sluice results {batch_id}`, whose lines carry each error)",
        api.base()
    )
}

/// Counts of the final error codes of a batch's failed and expired jobs.
async fn error_codes(api: &Api, batch_id: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut codes = BTreeMap::new();
    for status in ["failed", "expired"] {
        let mut after: Option<String> = None;
        // Bounded: at most 100 pages of 1000.
        for _ in 0..100 {
            let mut path = format!("/v1/jobs?batch_id={batch_id}&status={status}&limit=1000");
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let page = api.get_json(&path).await?;
            for j in page["data"].as_array().into_iter().flatten() {
                let code = j["error"]["code"].as_str().unwrap_or(status).to_string();
                *codes.entry(code).or_insert(0) += 1;
            }
            after = page["last_id"].as_str().map(str::to_owned);
            if page["has_more"] != true || after.is_none() {
                break;
            }
        }
    }
    Ok(codes)
}
