//! Cost views, `sluice report costs` in each format, and `/metrics`, end to end.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Client, TestEnv, sluice_cmd};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

/// Parses Prometheus text format strictly enough to catch a malformed exposition: every
/// sample is `name{labels} value` with a float value, and every family has a TYPE line.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE for {name}");
        samples.insert(series.to_string(), value);
    }
    samples
}

fn sum_of(samples: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_parse_as_prometheus_text_and_change_as_jobs_run() {
    let env = TestEnv::new().await;
    let key = env.key("acme").await;
    let running = env.up().await;
    let client = Client::new(&running, &key);
    let (status, before) = client.get_text("/metrics").await;
    assert_eq!(status, 200);
    let before = parse_prometheus(&before);
    let jobs: Vec<Value> = (0..5)
        .map(|i| common::job(&format!("metric {i}")))
        .collect();
    let (status, body) = client.post("/v1/jobs", &json!({"jobs": jobs}), None).await;
    assert_eq!(status, 200, "{body}");
    env.wait_all_finished(T).await;
    let (_, after) = client.get_text("/metrics").await;
    let after = parse_prometheus(&after);
    let succeeded = "sluice_attempts_total{outcome=\"succeeded\",error_class=\"none\"}";
    assert!(
        after.get(succeeded).copied().unwrap_or(0.0)
            >= before.get(succeeded).copied().unwrap_or(0.0) + 5.0,
        "attempts counted: {after:?}"
    );
    assert!(
        sum_of(
            &after,
            "sluice_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/jobs\""
        ) >= 1.0
    );
    for family in [
        "sluice_jobs{state=\"queued\"}",
        "sluice_batch_items_pending",
        "sluice_task_restarts{role=\"worker\"}",
        "sluice_task_up{role=\"scheduler\"}",
        "sluice_calls_in_flight",
    ] {
        assert!(after.contains_key(family), "missing {family}");
    }
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("sluice_cost_usd_last_minute{tenant=\"acme\"")),
        "spend per tenant and model"
    );
    assert!(
        !after.keys().any(|k| k.contains("job_")),
        "no job ids in labels"
    );
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_process_serves_its_own_metrics_on_metrics_listen() {
    let env = TestEnv::new().await;
    let key = env.key("acme").await;
    let api = env
        .start(sluice::app::Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let client = Client::new(&api, &key);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let _worker = env.spawn_worker(dir.path(), &[("SLUICE_METRICS__LISTEN", listen.as_str())]);
    let jobs: Vec<Value> = (0..3)
        .map(|i| common::job(&format!("worker metric {i}")))
        .collect();
    let (status, body) = client.post("/v1/jobs", &json!({"jobs": jobs}), None).await;
    assert_eq!(status, 200, "{body}");
    env.wait_all_finished(T).await;
    // The worker's own counters: the attempts it made, parseable Prometheus text.
    let http = reqwest::Client::new();
    let text = http
        .get(format!("http://{listen}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse_prometheus(&text);
    let succeeded = "sluice_attempts_total{outcome=\"succeeded\",error_class=\"none\"}";
    assert!(
        samples.get(succeeded).copied().unwrap_or(0.0) >= 3.0,
        "the worker counted its attempts: {samples:?}"
    );
    let ready = http
        .get(format!("http://{listen}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["roles"]["worker"]["up"], true, "{ready}");
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cost_views_and_the_report_agree_with_the_ledger_in_every_format() {
    let env = TestEnv::new().await;
    let key = env.key("acme").await;
    let running = env.up().await;
    let client = Client::new(&running, &key);
    let mut jobs = Vec::new();
    for (i, feature) in ["search", "search", "triage"].iter().enumerate() {
        let mut j = common::job(&format!("cost {i}"));
        j["tags"] = json!({"feature": feature, "user": "u-1", "prompt_version": "v2"});
        jobs.push(j);
    }
    let (status, body) = client.post("/v1/jobs", &json!({"jobs": jobs}), None).await;
    assert_eq!(status, 200, "{body}");
    env.wait_all_finished(T).await;
    running.stop().await;

    let ledger: rust_decimal::Decimal = sqlx::query_scalar("SELECT sum(cost_usd) FROM attempts")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let daily: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT sum(cost_usd) FROM cost_daily WHERE tenant = 'acme'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let monthly: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT sum(cost_usd) FROM cost_monthly")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(ledger > rust_decimal::Decimal::ZERO);
    assert_eq!(daily, ledger);
    assert_eq!(monthly, ledger);
    let search: i64 =
        sqlx::query_scalar("SELECT sum(requests)::bigint FROM cost_daily WHERE feature = 'search'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(search, 2);

    let dir = tempfile::tempdir().unwrap();
    let config = env.write_config(dir.path());
    let report_at = |format: &str, by: &str, columns: &str| {
        let out = sluice_cmd()
            .arg("--config")
            .arg(&config)
            .args([
                "report", "costs", "--since", "1d", "--by", by, "--format", format,
            ])
            .env("COLUMNS", columns)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let report = |format: &str, by: &str| report_at(format, by, "80");
    let json_out: Vec<Value> = serde_json::from_str(&report("json", "tenant,feature")).unwrap();
    assert_eq!(json_out.len(), 2);
    let total: rust_decimal::Decimal = json_out
        .iter()
        .map(|r| {
            r["cost_usd"]
                .as_str()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, ledger);
    assert!(
        json_out
            .iter()
            .any(|r| r["feature"] == "search" && r["requests"] == 2)
    );
    let csv = report("csv", "user,prompt_version");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "user,prompt_version,requests,input_tokens,output_tokens,cached_tokens,cost_usd,baseline_cost_usd,saving_usd"
    );
    assert!(lines.next().unwrap().starts_with("u-1,v2,3,"));
    let wide = report_at("table", "tenant,model,feature,route,day", "200");
    assert!(
        wide.contains("acme") && wide.contains("search") && wide.contains("saving_usd"),
        "{wide}"
    );
    let table = report("table", "tenant,model,feature,route,day");
    assert!(
        table.lines().all(|l| l.chars().count() <= 80),
        "the table fits the terminal width:\n{table}"
    );
    let bad = sluice_cmd()
        .arg("--config")
        .arg(&config)
        .args(["report", "costs", "--by", "colour"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--by: `colour` is not a grouping"));
    env.cleanup().await;
}

#[tokio::test]
async fn spend_alerts_fire_once_per_threshold_and_on_an_hourly_spike() {
    let env = TestEnv::new().await;
    env.key("acme").await;
    env.key("whale").await;
    let ctx = env.ctx().await;
    sqlx::raw_sql(
        "INSERT INTO budgets (scope, key, daily_usd, monthly_usd) VALUES ('tenant', 'acme', 1, 1000),
             ('tenant', 'whale', 0.000001, NULL)
         ON CONFLICT (scope, key) DO UPDATE SET daily_usd = EXCLUDED.daily_usd, monthly_usd = EXCLUDED.monthly_usd;
         INSERT INTO tenant_spend (tenant, day, usd) VALUES
             ('acme', (now() AT TIME ZONE 'UTC')::date, 0.85),
             ('whale', (now() AT TIME ZONE 'UTC')::date, 1e30)
         ON CONFLICT (tenant, day) DO UPDATE SET usd = EXCLUDED.usd;
         INSERT INTO webhook_endpoints (id, tenant, url, event_types, secret)
         VALUES ('we_alerts', 'acme', 'http://127.0.0.1:9/hooks',
                 ARRAY['budget.threshold', 'spend.spike'], 'whsec_dGVzdA==');",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    // acme: 50% and 80% of its daily cap; whale: all three at once (an absurd figure is no poison).
    assert_eq!(sluice::metrics::check_alerts(&ctx).await, 5);
    assert_eq!(sluice::metrics::check_alerts(&ctx).await, 0, "each once");
    sqlx::query("UPDATE tenant_spend SET usd = 1.2 WHERE tenant = 'acme'")
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(sluice::metrics::check_alerts(&ctx).await, 1);
    let percents: Vec<i32> = sqlx::query_scalar(
        "SELECT (payload->>'percent')::int FROM alerts WHERE tenant = 'acme' AND kind = 'budget.threshold' ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(percents, [50, 80, 100]);

    // A steady cent an hour for a day, then ten dollars in the last full hour.
    sqlx::raw_sql(
        "INSERT INTO jobs (id, tenant, model, deployments, request, max_tokens, max_attempts)
         VALUES ('job_spike', 'acme', 'summarize', '[]', '{}', 1, 30);
         INSERT INTO attempts (id, job_id, tenant, attempt, provider, model, route, status, cost_usd, started_at, finished_at)
         SELECT 'att_' || h, 'job_spike', 'acme', h, 'openai', 'gpt-4o-mini', 'cheap', 'succeeded',
             CASE WHEN h = 1 THEN 10 ELSE 0.01 END, t, t
         FROM generate_series(1, 25) h,
             LATERAL (SELECT date_trunc('hour', now()) - make_interval(hours => h) + interval '5 minutes' AS t) x;",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    assert_eq!(sluice::metrics::check_alerts(&ctx).await, 1);
    let spike: Value = sqlx::query_scalar("SELECT payload FROM alerts WHERE kind = 'spend.spike'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(spike["tenant"], "acme");
    assert_eq!(spike["spent_usd"], "10");
    assert_eq!(sluice::metrics::check_alerts(&ctx).await, 0);
    // Every alert of acme's is also a webhook event for its subscribed endpoint, once.
    let events: Vec<(String, i64)> = sqlx::query_as(
        "SELECT e.type, count(m.id) FROM webhook_events e JOIN webhook_messages m ON m.event_id = e.id
         WHERE e.tenant = 'acme' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            ("budget.threshold".to_string(), 3),
            ("spend.spike".to_string(), 1)
        ]
    );
    env.cleanup().await;
}
