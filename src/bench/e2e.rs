//! `sluice bench e2e`: end-to-end throughput of real `sluice serve` and `sluice worker`
//! processes against the mock provider at zero latency, next to the ceilings of the broker and
//! the database used the way sluice uses them, measured in the same run:
//!
//! - broker: one confirm-mode publisher (a window of 1,000 unconfirmed messages) and one
//!   consumer (prefetch 1,000, one ack per message) running *concurrently* on a durable queue of
//!   sluice's type (classic, `x-max-priority` 9) with messages of sluice's size (a job id for the
//!   work queue; a whole job for AMQP ingest);
//! - database: four connections inserting rows of a job's shape in batches of 500 and moving
//!   each through two status updates, as the submit, claim and record paths do.
//!
//! It prints `end to end: N jobs/s` and `ratio: X` (sluice ÷ the broker ceiling), submit-to-
//! result latency percentiles from Postgres, and each sluice process's CPU seconds per 1,000
//! jobs and peak RSS (from `/proc`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::{Value, json};

use crate::app::Ctx;
use crate::config::Config;
use crate::mock::MockSettings;

/// How the bench's jobs enter sluice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ingest {
    /// `POST /v1/jobs` with 1,000 jobs per request, four requests in flight.
    Http,
    /// One message per job on the `sluice.jobs` exchange, publisher confirms pipelined.
    Amqp,
    /// `sluice submit FILE.jsonl` (a child process).
    File,
}

/// Unconfirmed publishes allowed in flight, for the ceiling and the AMQP producer alike.
const CONFIRM_WINDOW: usize = 1000;
/// Longest the bench waits for sluice to finish before it gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(900);

/// A sluice child process and what it cost.
struct Proc {
    role: &'static str,
    child: Child,
    cpu_before: f64,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch folder for the bench's config and input file, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> anyhow::Result<Self> {
        let p = std::env::temp_dir().join(crate::ids::new_id("sluice-bench"));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the bench (the database and prefix in `config` are the bench's own).
pub async fn run(
    config: Config,
    jobs: usize,
    ingest: Ingest,
    workers: usize,
    backlog: bool,
    rate: Option<u32>,
) -> anyhow::Result<()> {
    anyhow::ensure!(jobs > 0, "--jobs must be at least 1");
    anyhow::ensure!(
        rate.is_none() || ingest == Ingest::Http,
        "--rate paces HTTP submissions only; leave it out with --ingest {ingest:?}"
    );
    anyhow::ensure!(
        rate.is_none() || !backlog,
        "--rate and --backlog do not go together: a backlog is submitted before any worker runs"
    );
    anyhow::ensure!(
        (1..=16).contains(&workers),
        "--workers must be between 1 and 16"
    );
    let pace = rate.map_or_else(
        || "as fast as sluice takes them".to_string(),
        |r| format!("at {r} jobs/s"),
    );
    println!(
        "sluice bench e2e: {jobs} jobs over {ingest:?} ingest ({pace}), 1 serve + {workers} worker process(es), mock provider at zero latency"
    );
    let dir = ScratchDir::new()?;
    let sample = job_line(0);
    let work_size = crate::ids::new_id("job").len();
    let ceiling_n = jobs.clamp(20_000, 100_000);
    let broker = broker_ceiling(&config, ceiling_n, work_size).await?;
    println!(
        "  broker ceiling (concurrent confirm-mode publish + consume, {work_size}-byte messages, {ceiling_n} msgs): {broker:>8.0} msg/s"
    );
    let ingest_ceiling = if ingest == Ingest::Amqp {
        let size = serde_json::to_vec(&sample)?.len();
        let c = broker_ceiling(&config, ceiling_n, size).await?;
        println!(
            "  broker ceiling with {size}-byte job messages:                   {c:>8.0} msg/s"
        );
        Some(c)
    } else {
        None
    };

    let mock = crate::mock::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        MockSettings::default(),
    )
    .await?;
    let mut config = config;
    config.point_providers_at(&mock.base_url());
    config.server.listen = format!("127.0.0.1:{}", free_port()?);
    // Migrates the bench database and gives the bench a key.
    let ctx = Ctx::connect(config.clone()).await?;
    let db = database_ceiling(&ctx.pool, ceiling_n.min(50_000)).await?;
    println!(
        "  database ceiling (4 connections, batched insert + 2 updates per row): {db:>8.0} rows/s"
    );
    let key = crate::db::tenants::create_key(&ctx.pool, "bench")
        .await?
        .key;

    let config_path = dir.path().join("sluice.toml");
    std::fs::write(&config_path, toml::to_string(&config)?)?;
    let mut procs = vec![spawn(&config_path, "serve")?];
    // With --backlog the workers start only once every job waits.
    let spawn_workers = |procs: &mut Vec<Proc>| -> anyhow::Result<()> {
        for _ in 0..workers {
            procs.push(spawn(&config_path, "worker")?);
        }
        Ok(())
    };
    if !backlog {
        spawn_workers(&mut procs)?;
    }
    let base = format!("http://{}", config.server.listen);
    wait_ready(&base).await?;
    // Workers start consuming a tenant's queue within their tenant refresh (2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for p in &mut procs {
        p.cpu_before = cpu_seconds(p.child.id());
    }
    let services_before = Services::now(&ctx.pool).await?;

    // The clock the results are stamped with: the run ends at the last result recorded, not
    // at the poll that saw it, so polling can be rare (a count over the jobs table costs the
    // very database being measured).
    let db_start = db_clock(&ctx.pool).await?;
    let start = Instant::now();
    let waiting = RssWatch::start(vec![procs[0].child.id()]);
    let mut submitter_rss = None;
    match ingest {
        Ingest::Http => submit_http(&base, &key, jobs, rate).await?,
        Ingest::Amqp => submit_amqp(&config, &key, jobs).await?,
        Ingest::File => submitter_rss = Some(submit_file(dir.path(), &base, &key, jobs)?),
    }
    let submitted = start.elapsed();
    println!(
        "  submitted in {:.2}s ({:.0} jobs/s)",
        submitted.as_secs_f64(),
        jobs as f64 / submitted.as_secs_f64()
    );
    let drain_start = Instant::now();
    if backlog {
        wait_all_published(&ctx.pool, start, jobs).await?;
        let (lo, hi) = waiting.finish().await.first().copied().unwrap_or_default();
        println!(
            "  backlog: {jobs} jobs recorded and published, none run; serve RSS {lo}–{hi} MB while it grew; starting the workers"
        );
        spawn_workers(&mut procs)?;
        for p in procs.iter_mut().skip(1) {
            p.cpu_before = cpu_seconds(p.child.id());
        }
    } else {
        waiting.finish().await;
    }
    let draining = RssWatch::start(procs.iter().map(|p| p.child.id()).collect());
    wait_all_terminal(&ctx.pool, jobs, start).await?;
    let services = Services::now(&ctx.pool).await?.since(&services_before);
    let total = last_result_after(&ctx.pool, db_start).await?;
    if backlog {
        let drained = total.saturating_sub(drain_start.duration_since(start));
        println!(
            "  backlog drained in {:.1}s ({:.0} jobs/s)",
            drained.as_secs_f64(),
            jobs as f64 / drained.as_secs_f64()
        );
    }
    for (p, (lo, hi)) in procs.iter().zip(draining.finish().await) {
        println!(
            "  {:<7} pid {:>7}: RSS {lo}–{hi} MB while the backlog drained",
            p.role,
            p.child.id()
        );
    }
    let rate = jobs as f64 / total.as_secs_f64();

    let (p50, p99, failed): (f64, f64, i64) = sqlx::query_as(
        "SELECT COALESCE(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finalized_at - created_at)), 0)::float8,
                COALESCE(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finalized_at - created_at)), 0)::float8,
                count(*) FILTER (WHERE status <> 'succeeded')
         FROM jobs",
    )
    .fetch_one(&ctx.pool)
    .await?;
    println!(
        "  submit-to-result latency: p50 {:.0} ms, p99 {:.0} ms; jobs not succeeded: {failed}",
        p50 * 1000.0,
        p99 * 1000.0
    );
    for p in &procs {
        let cpu = cpu_seconds(p.child.id()) - p.cpu_before;
        println!(
            "  {:<7} pid {:>7}: {:.3} CPU s per 1,000 jobs, peak RSS {} MB",
            p.role,
            p.child.id(),
            cpu * 1000.0 / jobs as f64,
            peak_rss_kb(p.child.id()) / 1024
        );
    }
    let per_k = |cpu: f64| cpu * 1000.0 / jobs as f64;
    println!(
        "  postgres (every process): {:.3} CPU s per 1,000 jobs, {:.1} kB of WAL per job (WAL {} to {}, for pg_waldump --stats=record)",
        per_k(services.postgres_cpu),
        services.wal_bytes as f64 / 1024.0 / jobs as f64,
        services.wal_from,
        services.wal_to
    );
    println!(
        "  rabbitmq (beam.smp): {:.3} CPU s per 1,000 jobs",
        per_k(services.rabbitmq_cpu)
    );
    println!(
        "  machine: {:.0}% of {} cores busy from submit to the last result",
        services.busy * 100.0,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if let Some(kb) = submitter_rss {
        println!("  sluice submit: peak RSS {} MB", kb / 1024);
    }
    println!("end to end: {rate:.0} jobs/s");
    println!("ratio: {:.2}", rate / broker);
    if let Some(c) = ingest_ceiling {
        println!(
            "ratio to the ceiling with job-sized messages: {:.2}",
            rate / c
        );
    }
    drop(procs);
    Ok(())
}

fn job_line(i: usize) -> Value {
    json!({"custom_id": format!("e2e-{i}"), "model": "summarize",
        "body": {"messages": [
            {"role": "system", "content": "Summarize the ticket in one sentence."},
            {"role": "user", "content": format!("Ticket {i}: the CSV export times out for accounts with more than ten thousand rows.")}],
        "max_tokens": 120}})
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(config: &Path, role: &'static str) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg("--config")
        .arg(config)
        .arg(role)
        .env_remove("SLUICE_CONFIG")
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .env_remove("SLUICE_LISTEN")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok(Proc {
        role,
        child,
        cpu_before: 0.0,
    })
}

async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("sluice serve did not become ready at {base} within 60 s")
}

/// Posts the jobs in requests of 1,000, four at a time; or, at `rate` jobs a second, in
/// requests of a twentieth of the rate, each sent at its time.
async fn submit_http(base: &str, key: &str, jobs: usize, rate: Option<u32>) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let size = rate.map_or(1000, |r| (r as usize / 20).clamp(1, 1000));
    let chunks: Vec<(usize, usize)> = (0..jobs)
        .step_by(size)
        .map(|s| (s, (s + size).min(jobs)))
        .collect();
    let began = tokio::time::Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(chunks)
        .map(|(from, to)| {
            let http = http.clone();
            let at = rate.map(|r| began + Duration::from_secs_f64(from as f64 / f64::from(r)));
            async move {
                if let Some(at) = at {
                    tokio::time::sleep_until(at).await;
                }
                let lines: Vec<Value> = (from..to).map(job_line).collect();
                http.post(format!("{base}/v1/jobs"))
                    .bearer_auth(key)
                    .json(&json!({"jobs": lines}))
                    .send()
                    .await?
                    .error_for_status()?;
                Ok(())
            }
        })
        .buffer_unordered(if rate.is_some() { 64 } else { 4 })
        .collect()
        .await;
    results.into_iter().collect()
}

/// What the services under sluice have done so far: CPU seconds of every Postgres process
/// and of RabbitMQ, the WAL position, and the machine's busy and total CPU ticks.
struct Services {
    postgres_cpu: f64,
    rabbitmq_cpu: f64,
    wal: String,
    busy_ticks: u64,
    all_ticks: u64,
}

/// What the services did between two readings.
struct Spent {
    postgres_cpu: f64,
    rabbitmq_cpu: f64,
    wal_from: String,
    wal_to: String,
    wal_bytes: u64,
    /// Share of the machine's CPU time that was busy.
    busy: f64,
}

impl Services {
    async fn now(pool: &sqlx::PgPool) -> anyhow::Result<Self> {
        let wal: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(pool)
            .await?;
        let (busy_ticks, all_ticks) = machine_ticks();
        Ok(Self {
            postgres_cpu: cpu_seconds_of("postgres"),
            rabbitmq_cpu: cpu_seconds_of("beam.smp"),
            wal,
            busy_ticks,
            all_ticks,
        })
    }

    /// The work done between `before` and this reading.
    fn since(self, before: &Self) -> Spent {
        let all = self.all_ticks.saturating_sub(before.all_ticks);
        Spent {
            postgres_cpu: self.postgres_cpu - before.postgres_cpu,
            rabbitmq_cpu: self.rabbitmq_cpu - before.rabbitmq_cpu,
            wal_bytes: lsn(&self.wal).saturating_sub(lsn(&before.wal)),
            wal_from: before.wal.clone(),
            wal_to: self.wal,
            busy: self.busy_ticks.saturating_sub(before.busy_ticks) as f64 / all.max(1) as f64,
        }
    }
}

/// A WAL position (`X/Y`, two hexadecimal halves) as a byte offset.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap_or(("0", "0"));
    let half = |h: &str| u64::from(u32::from_str_radix(h, 16).unwrap_or(0));
    (half(hi) << 32) | half(lo)
}

/// Busy and total CPU ticks of the whole machine so far (`/proc/stat`; zeros where it cannot
/// tell).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let all: u64 = ticks.iter().sum();
    // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (all.saturating_sub(idle), all)
}

/// User + system CPU seconds so far of every live process named `comm`, with the children it
/// has already reaped (a Postgres backend that exited counts in the postmaster's).
fn cpu_seconds_of(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| {
            let (name, fields) = stat_fields(&stat)?;
            // utime, stime, cutime, cstime.
            (name == comm).then(|| ticks(&fields, 11..=14))
        })
        .sum::<f64>()
        / clock_ticks()
}

/// A `/proc/PID/stat` line's command name and the fields after it (the name may hold spaces
/// and parentheses, so it ends at the last ')'); index 0 is the state, field 3 of stat.
fn stat_fields(stat: &str) -> Option<(&str, Vec<&str>)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    Some((name, stat.get(close + 1..)?.split_whitespace().collect()))
}

/// The sum of these stat fields (indices as [`stat_fields`] gives them), in clock ticks.
fn ticks(fields: &[&str], range: std::ops::RangeInclusive<usize>) -> f64 {
    range
        .filter_map(|i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

async fn submit_amqp(config: &Config, key: &str, jobs: usize) -> anyhow::Result<()> {
    let topo =
        crate::queue::Topology::new(&config.amqp.prefix).with_queue_type(config.amqp.queue_type);
    let conn = crate::queue::connect(&config.amqp.url, "sluice-bench-producer").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut headers = FieldTable::default();
    headers.insert(
        crate::queue::API_KEY_HEADER.into(),
        AMQPValue::LongString(LongString::from(key.to_string())),
    );
    headers.insert(
        crate::queue::SCHEMA_HEADER.into(),
        AMQPValue::LongString(LongString::from(crate::queue::SCHEMA_VERSION)),
    );
    let exchange = topo.jobs_exchange();
    let mut window = VecDeque::with_capacity(CONFIRM_WINDOW);
    for i in 0..jobs {
        let body = serde_json::to_vec(&job_line(i))?;
        let props = crate::queue::persistent()
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(format!("e2e-{i}")))
            .with_headers(headers.clone());
        let confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                "bench".into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?;
        window.push_back(confirm);
        if window.len() >= CONFIRM_WINDOW
            && let Some(c) = window.pop_front()
        {
            c.await?;
        }
    }
    for c in window {
        c.await?;
    }
    conn.close(200, "bench producer done".into()).await?;
    Ok(())
}

/// Runs `sluice submit` on a generated file; returns its peak RSS in kB.
fn submit_file(dir: &Path, base: &str, key: &str, jobs: usize) -> anyhow::Result<u64> {
    use std::io::Write;
    let path: PathBuf = dir.join("jobs.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for i in 0..jobs {
        serde_json::to_writer(&mut out, &job_line(i))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    let exe = std::env::current_exe()?;
    let rss_file = dir.join("submit.rss");
    // `/usr/bin/time` would do; reading /proc of a process that has exited is not possible,
    // so the child reports through a wrapper shell that polls its VmHWM until it exits.
    let status = Command::new("sh")
        .arg("-c")
        .arg(
            r#""$0" submit "$1" & pid=$!; peak=0
while kill -0 $pid 2>/dev/null; do
  v=$(awk '/VmHWM/ {print $2}' /proc/$pid/status 2>/dev/null); [ -n "$v" ] && [ "$v" -gt "$peak" ] && peak=$v
  sleep 0.05
done
wait $pid; rc=$?; echo $peak > "$2"; exit $rc"#,
        )
        .arg(exe)
        .arg(&path)
        .arg(&rss_file)
        .env("SLUICE_API_URL", base)
        .env("SLUICE_API_KEY", key)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "sluice submit failed: {status}");
    Ok(std::fs::read_to_string(rss_file)?
        .trim()
        .parse()
        .unwrap_or(0))
}

/// How often completion is polled: a count over the jobs table is not free (12 ms at 10,000
/// rows, which every 50 ms took a quarter of a core from the database being measured). The
/// run's end is read from the results themselves ([`last_result_after`]), so this does not
/// change the figures.
fn poll_every(jobs: usize) -> Duration {
    if jobs > 100_000 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(500)
    }
}

/// The database's clock now.
async fn db_clock(pool: &sqlx::PgPool) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    Ok(sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await?)
}

/// From `start` to the last result recorded, on the database's clock.
async fn last_result_after(
    pool: &sqlx::PgPool,
    start: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Duration> {
    let last: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT max(finalized_at) FROM jobs")
            .fetch_one(pool)
            .await?;
    let last = last.ok_or_else(|| anyhow::anyhow!("no job has a result"))?;
    // At least a millisecond, so a rate is always finite.
    Ok((last - start)
        .to_std()
        .unwrap_or_default()
        .max(Duration::from_millis(1)))
}

/// Longest the bench waits: 15 minutes, or longer for runs that need it at 500 jobs/s.
fn give_up_after(jobs: usize) -> Duration {
    GIVE_UP_AFTER.max(Duration::from_secs(
        u64::try_from(jobs / 500).unwrap_or(u64::MAX),
    ))
}

/// Waits until every job is recorded and none waits for the relay to publish it.
async fn wait_all_published(
    pool: &sqlx::PgPool,
    start: Instant,
    jobs: usize,
) -> anyhow::Result<()> {
    wait_for_jobs(pool, start, jobs, "publish_after IS NULL", "published").await
}

async fn wait_all_terminal(pool: &sqlx::PgPool, jobs: usize, start: Instant) -> anyhow::Result<()> {
    let done = "status IN ('succeeded', 'failed', 'cancelled', 'expired')";
    wait_for_jobs(pool, start, jobs, done, "finished").await
}

/// Polls until `jobs` jobs are recorded and every one matches `condition` (a fixed SQL
/// predicate on `jobs`), giving up after [`give_up_after`].
async fn wait_for_jobs(
    pool: &sqlx::PgPool,
    start: Instant,
    jobs: usize,
    condition: &str,
    what: &str,
) -> anyhow::Result<()> {
    let sql = format!("SELECT count(*), count(*) FILTER (WHERE {condition}) FROM jobs");
    loop {
        let (total, matching): (i64, i64) = sqlx::query_as(&sql).fetch_one(pool).await?;
        if usize::try_from(total).unwrap_or(0) >= jobs && matching == total {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < give_up_after(jobs),
            "gave up after {:?}: {matching} of {jobs} jobs {what}",
            give_up_after(jobs)
        );
        tokio::time::sleep(poll_every(jobs)).await;
    }
}

/// Concurrent confirm-mode publish and consume of `n` messages of `size` bytes on a queue of
/// sluice's type; returns messages per second through both.
pub async fn broker_ceiling(config: &Config, n: usize, size: usize) -> anyhow::Result<f64> {
    let queue = format!("{}ceiling{}", config.amqp.prefix, crate::ids::new_id("q"));
    let conn = crate::queue::connect(&config.amqp.url, "sluice-bench-ceiling").await?;
    let setup = conn.create_channel().await?;
    let args = crate::queue::Topology::new(&config.amqp.prefix)
        .with_queue_type(config.amqp.queue_type)
        .queue_args(true);
    setup
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let consumer_ch = conn.create_channel().await?;
    consumer_ch
        .basic_qos(1000, BasicQosOptions { global: false })
        .await?;
    let consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let start = Instant::now();
    // Acknowledged as sluice's worker does: one ack per message, each batch of what has
    // arrived handed to the connection together (`queue::ack_all`).
    let consume = tokio::spawn(async move {
        let mut got = 0;
        let mut chunks = consumer.ready_chunks(CONFIRM_WINDOW);
        while got < n {
            let Some(chunk) = chunks.next().await else {
                anyhow::bail!("the ceiling consumer ended after {got} messages");
            };
            let deliveries = chunk.into_iter().collect::<Result<Vec<_>, _>>()?;
            crate::queue::ack_all(deliveries.iter().map(|d| &d.acker)).await;
            got += deliveries.len();
        }
        Ok(())
    });
    let body = vec![b'x'; size];
    let mut window = VecDeque::with_capacity(CONFIRM_WINDOW);
    for i in 0..n {
        let confirm = publisher
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                crate::queue::persistent()
                    .with_message_id(ShortString::from(i.to_string()))
                    .with_priority(5),
            )
            .await?;
        window.push_back(confirm);
        if window.len() >= CONFIRM_WINDOW
            && let Some(c) = window.pop_front()
        {
            c.await?;
        }
    }
    for c in window {
        c.await?;
    }
    consume.await??;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    conn.close(200, "ceiling done".into()).await?;
    Ok(rate)
}

/// Four connections each insert their share of `n` job-shaped rows in batches of 500 and move
/// each through two status updates (claim, record); returns rows per second.
pub async fn database_ceiling(pool: &sqlx::PgPool, n: usize) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_ceiling (id text PRIMARY KEY, tenant text NOT NULL, \
         body jsonb NOT NULL, status text NOT NULL, attempt int NOT NULL DEFAULT 0, \
         response jsonb, created_at timestamptz NOT NULL DEFAULT now(), finalized_at timestamptz)",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "CREATE INDEX IF NOT EXISTS bench_ceiling_status ON bench_ceiling (tenant, status)",
    )
    .execute(pool)
    .await?;
    let body = job_line(0);
    let start = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let pool = pool.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let ids: Vec<String> = (w..n).step_by(4).map(|i| format!("job_{i:032}")).collect();
                for chunk in ids.chunks(500) {
                    let bodies: Vec<Value> = chunk.iter().map(|_| body.clone()).collect();
                    sqlx::query(
                        "INSERT INTO bench_ceiling (id, tenant, body, status) \
                         SELECT id, 'bench', body, 'queued' FROM unnest($1::text[], $2::jsonb[]) AS t(id, body)",
                    )
                    .bind(chunk)
                    .bind(&bodies)
                    .execute(&pool)
                    .await?;
                    sqlx::query("UPDATE bench_ceiling SET status = 'running', attempt = attempt + 1 WHERE id = ANY($1) AND status = 'queued'")
                        .bind(chunk)
                        .execute(&pool)
                        .await?;
                    sqlx::query("UPDATE bench_ceiling SET status = 'succeeded', response = body, finalized_at = now() WHERE id = ANY($1) AND status = 'running'")
                        .bind(chunk)
                        .execute(&pool)
                        .await?;
                }
                Ok::<_, sqlx::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_ceiling")
        .execute(pool)
        .await?;
    Ok(rate)
}

/// User + system CPU seconds of a live process (0 where /proc cannot tell).
fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // utime and stime: fields 14 and 15 of stat.
            stat_fields(&stat).map(|(_, fields)| ticks(&fields, 11..=12))
        })
        .unwrap_or(0.0)
        / clock_ticks()
}

fn clock_ticks() -> f64 {
    // Linux reports CPU time in USER_HZ, 100 on every mainstream architecture.
    100.0
}

/// Peak resident set size of a live process, in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

/// A `kB` field of `/proc/PID/status` (0 when the process is gone).
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of some processes, sampled every second from `/proc` until stopped.
struct RssWatch {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Vec<(u64, u64)>>,
}

impl RssWatch {
    fn start(pids: Vec<u32>) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut range = vec![(u64::MAX, 0u64); pids.len()];
            loop {
                for (slot, pid) in range.iter_mut().zip(&pids) {
                    // 0: not started yet, or gone.
                    let kb = status_kb(*pid, "VmRSS:");
                    if kb > 0 {
                        *slot = (slot.0.min(kb), slot.1.max(kb));
                    }
                }
                tokio::select! {
                    _ = token.cancelled() => return range,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        Self { stop, task }
    }

    /// Lowest and highest RSS of each process, in MB, in the order given.
    async fn finish(self) -> Vec<(u64, u64)> {
        self.stop.cancel();
        self.task
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(lo, hi)| (lo.min(hi) / 1024, hi / 1024))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{cpu_seconds, cpu_seconds_of, lsn, machine_ticks, stat_fields, ticks};

    #[test]
    fn a_wal_position_is_its_two_hexadecimal_halves() {
        assert_eq!(lsn("0/0"), 0);
        assert_eq!(lsn("0/16B3748"), 0x16B_3748);
        assert_eq!(lsn("1/0"), 1 << 32);
        assert_eq!(lsn("FFFFFFFF/FFFFFFFF"), u64::MAX);
        // Whatever Postgres answered, a bench figure is never a panic.
        assert_eq!(lsn("garbage"), 0);
        assert_eq!(lsn("1FFFFFFFF/5"), 5);
    }

    #[test]
    fn a_stat_line_is_split_after_the_last_parenthesis() {
        let line = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 20 30 40 50 0";
        let (name, fields) = stat_fields(line).unwrap();
        assert_eq!(name, "a (b) c");
        assert_eq!(ticks(&fields, 11..=12), 50.0);
        assert_eq!(ticks(&fields, 11..=14), 140.0);
        assert!(stat_fields("no parentheses").is_none());
        assert_eq!(ticks(&["S"], 11..=14), 0.0);
        assert_eq!(cpu_seconds(u32::MAX), 0.0);
    }

    #[test]
    fn the_machine_and_a_process_name_have_cpu_time() {
        let (busy, all) = machine_ticks();
        assert!(all > 0 && busy <= all, "{busy} of {all}");
        // This test binary itself has used some CPU; a name no process has, none.
        assert_eq!(cpu_seconds_of("no such process name"), 0.0);
    }
}
