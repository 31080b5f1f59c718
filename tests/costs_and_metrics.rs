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
