//! `sluice bench sync`: the synchronous path. The same chat-completion request is sent, for a
//! fixed time at each load, to the mock provider directly and to `POST /v1/chat/completions` of
//! a sluice in this process (budgets and the ledger on), in alternating rounds; it prints
//! requests per second for both and the latency sluice adds at p50 and p99.
//!
//! A load is a concurrency (that many callers, each sending its next request when its last
//! one answered: the most the path serves) or a steady rate (requests sent at their times
//! whether or not earlier ones answered, latency counted from each request's time, so a
//! backlog shows in the figures instead of slowing the sender). At a fixed concurrency the
//! latency is set by the throughput (Little's law: 128 callers at 2,500 req/s wait 51 ms on
//! average); what sluice adds to one request is measured at a rate below saturation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::{self, Ctx, Roles};
use crate::config::Config;
use crate::mock::MockSettings;

/// One measured round: requests per second and latency percentiles in milliseconds.
struct Round {
    rps: f64,
    p50: f64,
    p99: f64,
    errors: usize,
}

/// The load of each round.
#[derive(Debug, Clone)]
pub enum Load {
    /// That many callers, each waiting for its answer before its next request.
    Concurrency(Vec<usize>),
    /// Requests a second, sent at their times.
    Rate(Vec<u32>),
}

/// Most requests a rate round has in flight; past it the sender waits (and the requests' late
/// start counts in their latency).
const MOST_IN_FLIGHT: usize = 4_096;

/// Runs the bench.
pub async fn run(mut config: Config, load: Load, duration: Duration) -> anyhow::Result<()> {
    match &load {
        Load::Concurrency(c) => anyhow::ensure!(
            !c.is_empty() && c.iter().all(|c| (1..=1024).contains(c)),
            "--concurrency takes numbers from 1 to 1024"
        ),
        Load::Rate(r) => anyhow::ensure!(
            !r.is_empty() && r.iter().all(|r| (1..=100_000).contains(r)),
            "--rate takes requests per second from 1 to 100000"
        ),
    }
    anyhow::ensure!(
        duration >= Duration::from_secs(1) && duration <= Duration::from_secs(600),
        "--duration must be between 1s and 10m"
    );
    let mock = crate::mock::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        MockSettings::default(),
    )
    .await?;
    config.point_providers_at(&mock.base_url());
    config.database.max_connections = config.database.max_connections.max(32);
    let ctx = Ctx::connect(config).await?;
    let key = crate::db::tenants::create_key(&ctx.pool, "bench")
        .await?
        .key;
    let running = app::start(
        ctx,
        Roles {
            api: true,
            ..Default::default()
        },
    )
    .await?;
    let sluice = format!(
        "http://{}/v1/chat/completions",
        running.api_addr.ok_or_else(|| anyhow::anyhow!("no API"))?
    );
    let direct = format!("{}/chat/completions", mock.base_url().trim_end_matches('/'));
    println!(
        "sluice bench sync: {}s per round, mock provider at zero latency, budgets and ledger on",
        duration.as_secs()
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    // Warm both paths (connections, caches, prepared statements).
    round(&http, &direct, "mock", 8, Duration::from_secs(1)).await?;
    round(&http, &sluice, &key, 8, Duration::from_secs(1)).await?;
    match load {
        Load::Concurrency(levels) => {
            for c in levels {
                let d = round(&http, &direct, "mock", c, duration).await?;
                let s = round(&http, &sluice, &key, c, duration).await?;
                report(&format!("concurrency {c:>4}"), &d, &s);
            }
        }
        Load::Rate(rates) => {
            for r in rates {
                let d = paced(&http, &direct, "mock", r, duration).await?;
                let s = paced(&http, &sluice, &key, r, duration).await?;
                report(&format!("rate {r:>6}/s"), &d, &s);
            }
        }
    }
    running.stop().await;
    Ok(())
}

fn report(load: &str, d: &Round, s: &Round) {
    println!(
        "  {load}: mock direct {:>7.0} req/s (p50 {:.2} ms, p99 {:.2} ms, {} errors); through sluice {:>7.0} req/s (p50 {:.2} ms, p99 {:.2} ms, {} errors)",
        d.rps, d.p50, d.p99, d.errors, s.rps, s.p50, s.p99, s.errors
    );
    println!(
        "  {load}: sluice adds {:.2} ms at p50 and {:.2} ms at p99",
        s.p50 - d.p50,
        s.p99 - d.p99
    );
}

fn request() -> Value {
    json!({"model": "gpt-4o-mini", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Classify: the CSV export times out."}]})
}

/// Sends one request; says whether it was answered with a success, read to its end.
async fn answered(http: &reqwest::Client, url: &str, key: &str, body: &Value) -> bool {
    match http.post(url).bearer_auth(key).json(body).send().await {
        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// `concurrency` loops send requests for `duration`; latencies of successes are kept.
async fn round(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Round> {
    let until = Instant::now() + duration;
    let body = Arc::new(request());
    let start = Instant::now();
    let loops: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, url, key, body) =
                (http.clone(), url.to_string(), key.to_string(), body.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0usize;
                while Instant::now() < until {
                    let t = Instant::now();
                    if answered(&http, &url, &key, &body).await {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for l in loops {
        let (lat, e) = l.await?;
        all.extend(lat);
        errors += e;
    }
    Ok(summary(all, errors, start.elapsed()))
}

/// `rate` requests a second for `duration`, each sent at its time; latency counts from that
/// time, so a request the sender could only start late (too many in flight) counts its wait.
async fn paced(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<Round> {
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as usize;
    let body = Arc::new(request());
    let room = Arc::new(tokio::sync::Semaphore::new(MOST_IN_FLIGHT));
    let start = tokio::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    let (mut all, mut errors) = (Vec::with_capacity(total.min(1 << 20)), 0usize);
    let mut tally = |done: Result<Option<f64>, tokio::task::JoinError>| match done {
        Ok(Some(ms)) => all.push(ms),
        _ => errors += 1,
    };
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
        tokio::time::sleep_until(at).await;
        let permit = room.clone().acquire_owned().await?;
        let (http, url, key, body) = (http.clone(), url.to_string(), key.to_string(), body.clone());
        calls.spawn(async move {
            let _permit = permit;
            let ok = answered(&http, &url, &key, &body).await;
            ok.then(|| at.elapsed().as_secs_f64() * 1000.0)
        });
        while let Some(done) = calls.try_join_next() {
            tally(done);
        }
    }
    while let Some(done) = calls.join_next().await {
        tally(done);
    }
    Ok(summary(all, errors, start.elapsed()))
}

/// Requests a second and latency percentiles of one round's successes.
fn summary(mut all: Vec<f64>, errors: usize, elapsed: Duration) -> Round {
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        all[i.min(all.len() - 1)]
    };
    Round {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.5),
        p99: pct(0.99),
        errors,
    }
}
