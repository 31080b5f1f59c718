//! `sluice bench sync`: the synchronous path. The same chat-completion request is sent, for a
//! fixed time at each concurrency, to the mock provider directly and to
//! `POST /v1/chat/completions` of a sluice in this process (budgets and the ledger on), in
//! alternating rounds; it prints requests per second for both and the latency sluice adds at
//! p50 and p99.

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

/// Runs the bench.
pub async fn run(
    mut config: Config,
    concurrency: Vec<usize>,
    duration: Duration,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !concurrency.is_empty() && concurrency.iter().all(|c| (1..=1024).contains(c)),
        "--concurrency takes numbers from 1 to 1024"
    );
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
    for c in concurrency {
        let d = round(&http, &direct, "mock", c, duration).await?;
        let s = round(&http, &sluice, &key, c, duration).await?;
        println!(
            "  concurrency {c:>4}: mock direct {:>7.0} req/s (p50 {:.2} ms, p99 {:.2} ms); through sluice {:>7.0} req/s (p50 {:.2} ms, p99 {:.2} ms, {} errors)",
            d.rps, d.p50, d.p99, s.rps, s.p50, s.p99, s.errors
        );
        println!(
            "  concurrency {c:>4}: sluice adds {:.2} ms at p50 and {:.2} ms at p99",
            s.p50 - d.p50,
            s.p99 - d.p99
        );
    }
    running.stop().await;
    Ok(())
}

fn request() -> Value {
    json!({"model": "gpt-4o-mini", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Classify: the CSV export times out."}]})
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
                    let ok = match http.post(&url).bearer_auth(&key).json(&*body).send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
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
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        all[i.min(all.len() - 1)]
    };
    Ok(Round {
        rps: all.len() as f64 / elapsed,
        p50: pct(0.5),
        p99: pct(0.99),
        errors,
    })
}
