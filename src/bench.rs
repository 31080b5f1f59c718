//! `sluice bench`: the benchmark harness. Every figure it prints is measured in the same run as
//! its baseline (the raw broker and database ceilings), because a 2-core machine is noisy.
//! Each run uses its own database (`<name>_bench_<id>`, dropped afterwards) and its own queue
//! prefix, so it never touches real data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Subcommand;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use serde_json::{Value, json};

mod e2e;
mod sync;

use crate::app::{self, Ctx, Roles};
use crate::config::{BudgetSettings, Config};
use crate::mock::MockSettings;
use rust_decimal::Decimal;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// End-to-end throughput of real `serve` and `worker` processes (submit → recorded result)
    /// with latency percentiles, CPU and peak RSS per process, against the broker and database
    /// ceilings measured concurrently in the same run; prints `end to end:` and `ratio:`.
    E2e {
        #[arg(long, default_value_t = 100_000)]
        jobs: usize,
        /// How jobs enter sluice.
        #[arg(long, value_enum, default_value_t = e2e::Ingest::Http)]
        ingest: e2e::Ingest,
        /// `sluice worker` processes.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Submit every job before any worker starts, then start the workers: prints the
        /// processes' resident memory while the backlog waits and while it drains.
        #[arg(long)]
        backlog: bool,
        /// Submit at this many jobs a second (HTTP ingest, in requests of a twentieth of it)
        /// instead of as fast as sluice takes them: a steady load, where workers keep up.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        rate: Option<u32>,
    },
    /// The synchronous path: `POST /v1/chat/completions` through sluice and the mock directly,
    /// at each concurrency (or each steady rate); prints requests per second and the latency
    /// sluice adds.
    Sync {
        /// Concurrency levels, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [32usize, 128])]
        concurrency: Vec<usize>,
        /// Steady request rates, comma-separated (instead of `--concurrency`): requests are
        /// sent at their times whether or not earlier ones have answered, and latency counts
        /// from each request's time, so the latency sluice adds is measured below saturation.
        #[arg(long, value_delimiter = ',', conflicts_with = "concurrency",
              value_parser = clap::value_parser!(u32).range(1..=100_000))]
        rate: Vec<u32>,
        /// How long each round runs.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// End-to-end throughput (HTTP submit → worker → mock → recorded) against the raw
    /// RabbitMQ and Postgres ceilings measured in the same run.
    Pipeline {
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
    },
    /// Routing savings on a mixed workload against the all-premium-real-time baseline:
    /// 60% of jobs due in 24 h, 30% in 1 h, 10% urgent, and 20% repeated requests.
    Cost {
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
    },
    /// Budget utilization: tokens served ÷ budget over a long run with several workers sharing
    /// one TPM budget, the mock enforcing the same limit; reports 429s and the worst window.
    Budget {
        /// Tokens per minute, for both the budget and the mock provider's own limit.
        #[arg(long, default_value_t = 60_000)]
        tpm: u64,
        /// Worker pools sharing the budget (each with its own id and database pool).
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// How long to run (at least 3 minutes for a meaningful figure).
        #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Mock latency per call.
        #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
        latency: Duration,
    },
    /// The cost views at scale: generates ledger rows in a scratch database, then times
    /// `cost_daily` for one tenant and one month.
    Ledger {
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
    },
    /// Retry timing: with the mock failing a share of calls (transiently), how long after a
    /// failure the next attempt really starts, against the delay the retry policy scheduled
    /// (from the ledger: each failed attempt's `retry_at` and the next attempt's start).
    RetryDelay {
        #[arg(long, default_value_t = 1000)]
        jobs: usize,
        /// Share of calls the mock fails with a 500.
        #[arg(long, default_value_t = 0.2)]
        error_rate: f64,
        /// Mock latency per call.
        #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
        latency: Duration,
    },
}

/// Runs a benchmark.
pub async fn run(base: Config, command: BenchCommand) -> anyhow::Result<()> {
    let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_string();
    let mut config = base;
    let db_url = bench_db_url(&config.database.url, &id)?;
    config.database.url = db_url.clone();
    config.amqp.prefix = format!("bench{id}.");
    config.server.listen = "127.0.0.1:0".into();
    crate::db::create_if_missing(&config.database).await?;
    let amqp = (config.amqp.url.clone(), config.amqp.prefix.clone());
    let result = match command {
        BenchCommand::E2e {
            jobs,
            ingest,
            workers,
            backlog,
            rate,
        } => e2e::run(config, jobs, ingest, workers, backlog, rate).await,
        BenchCommand::Sync {
            concurrency,
            rate,
            duration,
        } => {
            let load = if rate.is_empty() {
                sync::Load::Concurrency(concurrency)
            } else {
                sync::Load::Rate(rate)
            };
            sync::run(config, load, duration).await
        }
        BenchCommand::Pipeline { jobs } => pipeline(config, jobs).await,
        BenchCommand::Cost { jobs } => cost(config, jobs).await,
        BenchCommand::Budget {
            tpm,
            workers,
            duration,
            latency,
        } => budget(config, tpm, workers, duration, latency).await,
        BenchCommand::Ledger { rows } => ledger(config, rows).await,
        BenchCommand::RetryDelay {
            jobs,
            error_rate,
            latency,
        } => retry_delay(config, jobs, error_rate, latency).await,
    };
    drop_queues(&db_url, &amqp.0, &amqp.1).await;
    drop_db(&db_url).await;
    result
}

/// Deletes the bench's queues (each tenant's work queue, ingest, rejected) and its two
/// exchanges, so a run that stopped with a backlog leaves nothing behind in the broker. Best
/// effort.
async fn drop_queues(db_url: &str, amqp_url: &str, prefix: &str) {
    let mut tenants = Vec::new();
    if let Ok(pool) = sqlx::PgPool::connect(db_url).await {
        tenants = sqlx::query_scalar("SELECT name FROM tenants")
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
        pool.close().await;
    }
    let topo = crate::queue::Topology::new(prefix);
    crate::queue::delete_topology(amqp_url, &topo, &tenants).await;
}

fn bench_db_url(url: &str, id: &str) -> anyhow::Result<String> {
    let mut u = url::Url::parse(url)?;
    let name = u.path().trim_start_matches('/').to_string();
    u.set_path(&format!(
        "/{}_bench_{id}",
        if name.is_empty() { "sluice" } else { &name }
    ));
    Ok(u.to_string())
}

async fn drop_db(url: &str) {
    let Ok(mut u) = url::Url::parse(url) else {
        return;
    };
    let name = u.path().trim_start_matches('/').to_string();
    u.set_path("/postgres");
    if let Ok(pool) = sqlx::PgPool::connect(u.as_str()).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&pool)
            .await;
    }
}

fn line(i: usize, model: &str, max_tokens: u32) -> Value {
    json!({"custom_id": format!("bench-{i}"), "model": model,
        "body": {"messages": [
            {"role": "system", "content": "Summarize the ticket in one sentence."},
            {"role": "user", "content": format!("Ticket {i}: the CSV export times out for accounts with more than ten thousand rows.")}],
        "max_tokens": max_tokens}})
}

async fn submit_all(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    lines: Vec<Value>,
) -> anyhow::Result<String> {
    let mut batch: Option<String> = None;
    for chunk in lines.chunks(1000) {
        let mut body = json!({"jobs": chunk});
        if let Some(b) = &batch {
            body["batch_id"] = json!(b);
        }
        let resp: Value = http
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        batch = batch.or_else(|| resp["batch_id"].as_str().map(str::to_owned));
    }
    batch.ok_or_else(|| anyhow::anyhow!("no batch id"))
}

async fn pipeline(mut config: Config, jobs: usize) -> anyhow::Result<()> {
    println!("sluice bench pipeline: {jobs} jobs, mock provider at zero latency, one process");
    let broker = raw_broker(&config.amqp.url, &config.amqp.prefix, jobs).await?;
    println!("  raw RabbitMQ ceiling (publish with confirms, consume, ack): {broker:>8.0} msg/s");
    let mock = crate::mock::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        MockSettings::default(),
    )
    .await?;
    config.point_providers_at(&mock.base_url());
    let ctx = Ctx::connect(config).await?;
    let db = raw_database(&ctx.pool, jobs).await?;
    println!("  raw Postgres ceiling (batched insert + update of the same rows): {db:>8.0} rows/s");
    let key = crate::db::tenants::create_key(&ctx.pool, "bench")
        .await?
        .key;
    let running = app::start(ctx.clone(), Roles::all()).await?;
    let base = format!(
        "http://{}",
        running.api_addr.ok_or_else(|| anyhow::anyhow!("no API"))?
    );
    let http = reqwest::Client::new();
    let lines: Vec<Value> = (0..jobs).map(|i| line(i, "summarize", 120)).collect();
    let start = Instant::now();
    let batch = submit_all(&http, &base, &key, lines).await?;
    let submitted = start.elapsed();
    loop {
        let s: Value = http
            .get(format!("{base}/v1/batches/{batch}"))
            .bearer_auth(&key)
            .send()
            .await?
            .json()
            .await?;
        if s["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = start.elapsed();
    println!(
        "  sluice: submitted in {:.2}s ({:.0} jobs/s); all finished in {:.2}s",
        submitted.as_secs_f64(),
        jobs as f64 / submitted.as_secs_f64(),
        total.as_secs_f64()
    );
    println!(
        "  sluice end to end: {:>8.0} jobs/s ({:.0}% of the broker ceiling, {:.0}% of the database ceiling)",
        jobs as f64 / total.as_secs_f64(),
        100.0 * jobs as f64 / total.as_secs_f64() / broker,
        100.0 * jobs as f64 / total.as_secs_f64() / db
    );
    running.stop().await;
    Ok(())
}

/// Publishes `n` persistent messages with confirms to a fresh queue, then consumes and acks them.
async fn raw_broker(url: &str, prefix: &str, n: usize) -> anyhow::Result<f64> {
    let conn = crate::queue::connect(url, "sluice-bench").await?;
    let ch = conn.create_channel().await?;
    let queue = format!("{prefix}raw");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let start = Instant::now();
    let body = b"job_00000000000000000000000000000000";
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for _ in chunk {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    crate::queue::persistent(),
                )
                .await?,
            );
        }
        for c in confirms {
            c.await?;
        }
    }
    let consumer_ch = conn.create_channel().await?;
    consumer_ch.basic_qos(512, Default::default()).await?;
    let mut consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut got = 0;
    while got < n {
        let Some(d) = consumer.next().await else {
            break;
        };
        d?.ack(BasicAckOptions::default()).await?;
        got += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    conn.close(200, "bench done".into()).await?;
    Ok(rate)
}

/// Inserts `n` job-sized rows in batches of 1000, then updates each once in batches of 500:
/// the database work sluice does per job, without sluice.
async fn raw_database(pool: &sqlx::PgPool, n: usize) -> anyhow::Result<f64> {
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_raw (id text PRIMARY KEY, body jsonb, status text, result jsonb)").execute(pool).await?;
    let start = Instant::now();
    let ids: Vec<String> = (0..n).map(|i| format!("job_{i:032}")).collect();
    let body = line(0, "summarize", 120);
    for chunk in ids.chunks(1000) {
        let bodies: Vec<Value> = chunk.iter().map(|_| body.clone()).collect();
        sqlx::query("INSERT INTO bench_raw (id, body, status) SELECT * , 'queued' FROM unnest($1::text[], $2::jsonb[])")
            .bind(chunk)
            .bind(&bodies)
            .execute(pool)
            .await?;
    }
    for chunk in ids.chunks(500) {
        sqlx::query("UPDATE bench_raw SET status = 'running' WHERE id = ANY($1)")
            .bind(chunk)
            .execute(pool)
            .await?;
        sqlx::query("UPDATE bench_raw SET status = 'succeeded', result = body WHERE id = ANY($1)")
            .bind(chunk)
            .execute(pool)
            .await?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_raw").execute(pool).await?;
    Ok(rate)
}

async fn budget(
    mut config: Config,
    tpm: u64,
    workers: usize,
    duration: Duration,
    latency: Duration,
) -> anyhow::Result<()> {
    println!(
        "sluice bench budget: TPM {tpm} on openai/gpt-4o-mini, {workers} worker pools, {}s, mock latency {}ms",
        duration.as_secs(),
        latency.as_millis()
    );
    let mock = crate::mock::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        MockSettings {
            latency,
            tpm: Some(tpm),
            ..Default::default()
        },
    )
    .await?;
    config.point_providers_at(&mock.base_url());
    config.budgets.deployments.insert(
        "openai/gpt-4o-mini".into(),
        BudgetSettings {
            tpm: Some(tpm as i64),
            ..Default::default()
        },
    );
    config.database.max_connections = 6;
    let api_ctx = Ctx::connect(config.clone()).await?;
    let key = crate::db::tenants::create_key(&api_ctx.pool, "bench")
        .await?
        .key;
    let api = app::start(
        api_ctx,
        Roles {
            api: true,
            maintenance: true,
            ..Default::default()
        },
    )
    .await?;
    let mut pools = Vec::new();
    for _ in 0..workers {
        let ctx = Ctx::connect(config.clone()).await?;
        pools.push(
            app::start(
                ctx,
                Roles {
                    worker: true,
                    ..Default::default()
                },
            )
            .await?,
        );
    }
    let base = format!(
        "http://{}",
        api.api_addr.ok_or_else(|| anyhow::anyhow!("no API"))?
    );
    // A backlog of 1.5 times what the budget allows over the run.
    let per_job = 120;
    let jobs = (tpm as f64 * duration.as_secs_f64() / 60.0 / per_job as f64 * 1.5) as usize + 100;
    let lines: Vec<Value> = (0..jobs).map(|i| line(i, "gpt-4o-mini", 100)).collect();
    submit_all(&reqwest::Client::new(), &base, &key, lines).await?;
    println!("  backlog: {jobs} jobs submitted; running…");
    let started = chrono::Utc::now().timestamp();
    tokio::time::sleep(duration).await;
    let stats = mock.stats();
    for p in pools {
        p.stop().await;
    }
    api.stop().await;
    let window: BTreeMap<i64, crate::mock::limits::Served> = stats
        .per_second
        .range(started..started + duration.as_secs() as i64)
        .map(|(k, v)| (*k, *v))
        .collect();
    let served: u64 = window.values().map(|s| s.tokens).sum();
    let budget = tpm as f64 * duration.as_secs_f64() / 60.0;
    let worst = crate::mock::limits::worst_window(&stats.per_second);
    println!("  tokens served: {served} of a budget of {budget:.0} over the run");
    println!("  utilization: {:.1}%", 100.0 * served as f64 / budget);
    println!("  429 responses: {}", stats.rate_limited);
    println!(
        "  worst 60-second window: {worst} tokens (limit {tpm}; overshoot {})",
        worst.saturating_sub(tpm)
    );
    Ok(())
}

async fn wait_batch(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    batch: &str,
) -> anyhow::Result<()> {
    loop {
        let s: Value = http
            .get(format!("{base}/v1/batches/{batch}"))
            .bearer_auth(key)
            .send()
            .await?
            .json()
            .await?;
        if s["status"] == "completed" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn cost(mut config: Config, jobs: usize) -> anyhow::Result<()> {
    let unique = jobs - jobs / 5;
    println!(
        "sluice bench cost: {jobs} jobs on alias `summarize` ({unique} unique, {} repeated), mock provider",
        jobs - unique
    );
    let mock = crate::mock::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        MockSettings {
            batch_delay: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await?;
    config.point_providers_at(&mock.base_url());
    config.batch.max_wait = Duration::from_secs(1);
    config.batch.poll_interval = Duration::from_millis(500);
    if let Some(a) = config.aliases.get_mut("summarize") {
        a.cache_ttl = Some(Duration::from_secs(3600));
    }
    let ctx = Ctx::connect(config).await?;
    let key = crate::db::tenants::create_key(&ctx.pool, "bench")
        .await?
        .key;
    let running = app::start(ctx.clone(), Roles::all()).await?;
    let base = format!(
        "http://{}",
        running.api_addr.ok_or_else(|| anyhow::anyhow!("no API"))?
    );
    let http = reqwest::Client::new();
    // 60% due in 24 h, 30% in 1 h, 10% urgent (no deadline).
    let shaped = |i: usize| {
        let mut l = line(i, "summarize", 120);
        match i % 10 {
            0..=5 => l["deadline"] = json!("24h"),
            6..=8 => l["deadline"] = json!("1h"),
            _ => {}
        }
        l
    };
    let first: Vec<Value> = (0..unique).map(shaped).collect();
    let batch = submit_all(&http, &base, &key, first).await?;
    wait_batch(&http, &base, &key, &batch).await?;
    // Repeats of earlier real-time requests (identical bodies), submitted afterwards.
    let repeats: Vec<Value> = (0..jobs - unique)
        .map(|n| {
            let i = ((n * 10) % unique) / 10 * 10 + 6 + n % 4;
            let mut l = shaped(i.min(unique - 1));
            l["custom_id"] = json!(format!("repeat-{n}"));
            l
        })
        .collect();
    let batch2 = submit_all(&http, &base, &key, repeats).await?;
    wait_batch(&http, &base, &key, &batch2).await?;
    running.stop().await;

    let rows: Vec<(String, i64, Decimal, Decimal)> = sqlx::query_as(
        "SELECT CASE WHEN a.status = 'cache_hit' THEN 'cache' ELSE a.route END, count(*),
                COALESCE(sum(a.cost_usd), 0), COALESCE(sum(j.baseline_cost_usd), 0)
         FROM attempts a JOIN jobs j ON j.id = a.job_id AND a.status IN ('succeeded', 'refused', 'cache_hit')
         GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&ctx.pool)
    .await?;
    let (total_cost, total_base): (Decimal, Decimal) = sqlx::query_as(
        "SELECT COALESCE(sum(cost_usd), 0), COALESCE(sum(baseline_cost_usd), 0) FROM jobs",
    )
    .fetch_one(&ctx.pool)
    .await?;
    println!(
        "  {:<8} {:>7} {:>14} {:>16}",
        "path", "jobs", "cost (USD)", "baseline (USD)"
    );
    for (path, n, cost, base) in rows {
        println!(
            "  {path:<8} {n:>7} {:>14} {:>16}",
            cost.round_dp(6),
            base.round_dp(6)
        );
    }
    println!(
        "  {:<8} {:>7} {:>14} {:>16}",
        "total",
        jobs,
        total_cost.round_dp(6),
        total_base.round_dp(6)
    );
    if !total_base.is_zero() {
        let saving = (Decimal::ONE - total_cost / total_base) * Decimal::ONE_HUNDRED;
        println!(
            "  saving against all-premium real-time (openai/gpt-4o): {}%",
            saving.round_dp(1)
        );
    }
    Ok(())
}

async fn ledger(config: Config, rows: u64) -> anyhow::Result<()> {
    let pool = crate::cli::admin_pool(&config).await?;
    let start = Instant::now();
    crate::db::costs::generate_ledger(&pool, rows).await?;
    println!("generated {rows} ledger rows in {:.1?}", start.elapsed());
    crate::db::costs::one_tenant_month(&pool).await?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let n = crate::db::costs::one_tenant_month(&pool).await?;
        times.push((t.elapsed(), n));
    }
    times.sort();
    let (median, n) = times[times.len() / 2];
    println!("cost_daily, one tenant, one month: {n} rows in {median:.1?} (median of 5, warm)");
    Ok(())
}

/// Percentiles of retry lateness (actual gap minus scheduled delay), in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lateness {
    pub retries: usize,
    pub scheduled_p50: f64,
    pub actual_p50: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Summarises retry gaps: how late each retry started against its scheduled delay.
pub fn lateness(gaps: &[crate::db::jobs::RetryGap]) -> Lateness {
    let pct = |v: &mut Vec<f64>, p: f64| -> f64 {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n => v[((n as f64 * p).ceil() as usize).clamp(1, n) - 1],
        }
    };
    let mut late: Vec<f64> = gaps.iter().map(|g| g.actual - g.scheduled).collect();
    let mut scheduled: Vec<f64> = gaps.iter().map(|g| g.scheduled).collect();
    let mut actual: Vec<f64> = gaps.iter().map(|g| g.actual).collect();
    Lateness {
        retries: gaps.len(),
        scheduled_p50: pct(&mut scheduled, 0.5),
        actual_p50: pct(&mut actual, 0.5),
        p50: pct(&mut late, 0.5),
        p99: pct(&mut late, 0.99),
        max: pct(&mut late, 1.0),
    }
}

async fn retry_delay(
    mut config: Config,
    jobs: usize,
    error_rate: f64,
    latency: Duration,
) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&error_rate) {
        anyhow::bail!("--error-rate must be at least 0 and below 1, got {error_rate}");
    }
    println!(
        "sluice bench retry-delay: {jobs} jobs, {:.0}% of calls fail with a 500, mock latency {latency:?}, \
         retry base {:?}, max {:?}, relay every {:?}, one process",
        error_rate * 100.0,
        config.worker.retry_base,
        config.worker.retry_max,
        config.worker.relay_interval
    );
    let mock = crate::mock::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        MockSettings {
            latency,
            error_rate,
            seed: 1,
            ..Default::default()
        },
    )
    .await?;
    config.point_providers_at(&mock.base_url());
    let ctx = Ctx::connect(config).await?;
    let key = crate::db::tenants::create_key(&ctx.pool, "bench")
        .await?
        .key;
    let running = app::start(ctx.clone(), Roles::all()).await?;
    let base = format!(
        "http://{}",
        running.api_addr.ok_or_else(|| anyhow::anyhow!("no API"))?
    );
    let lines: Vec<Value> = (0..jobs).map(|i| line(i, "summarize", 120)).collect();
    let start = Instant::now();
    let batch = submit_all(&reqwest::Client::new(), &base, &key, lines).await?;
    wait_batch(&reqwest::Client::new(), &base, &key, &batch).await?;
    let total = start.elapsed();
    let gaps = crate::db::jobs::retry_gaps(&ctx.pool).await?;
    let l = lateness(&gaps);
    println!(
        "  {} retries; all jobs finished in {:.1}s",
        l.retries,
        total.as_secs_f64()
    );
    println!(
        "  scheduled delay p50 {:.2}s; actual gap from failure to next attempt p50 {:.2}s",
        l.scheduled_p50, l.actual_p50
    );
    println!(
        "  lateness (actual - scheduled): p50 {:.2}s, p99 {:.2}s, max {:.2}s",
        l.p50, l.p99, l.max
    );
    running.stop().await;
    Ok(())
}
