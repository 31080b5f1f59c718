//! `sluice budgets clear` and the spend `budgets show` puts beside each limit, against the real
//! binary and a real ledger.

use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::{ok, sluice};
use crate::common::{Client, TestEnv, job, sluice_cmd};

/// The real binary run as the operating-system user `alice`.
fn as_alice(cfg: &std::path::Path, args: &[&str]) -> std::process::Output {
    sluice_cmd()
        .env("RUST_LOG", "warn")
        .env("USER", "alice")
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

/// The row of `budgets show --format json` for `scope`/`key`.
fn row(cfg: &std::path::Path, scope: &str, key: &str) -> Value {
    let shown: Value =
        serde_json::from_str(&ok(&sluice(cfg, &["budgets", "show", "--format", "json"]))).unwrap();
    shown
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["scope"] == scope && r["key"] == key)
        .cloned()
        .unwrap_or_else(|| panic!("no {scope} {key} in {shown}"))
}

fn dec(v: &Value) -> Decimal {
    serde_json::from_value(v.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_can_be_cleared_audited_and_show_puts_deployments_real_spend_beside_their_limits() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = env.write_config(dir.path());
    ok(&sluice(&cfg, &["tenants", "create", "acme"]));
    ok(&sluice(
        &cfg,
        &[
            "budgets",
            "set",
            "--tenant",
            "acme",
            "--daily-usd",
            "5",
            "--monthly-usd",
            "50",
        ],
    ));
    ok(&sluice(
        &cfg,
        &[
            "budgets",
            "set",
            "--deployment",
            "openai/gpt-4o-mini",
            "--tpm",
            "1000000",
            "--rpm",
            "1000",
        ],
    ));

    // Real spend: one job through the real pipeline, booked in the ledger.
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let mut j = job("spend a little");
    j["model"] = json!("openai/gpt-4o-mini");
    j["route"] = json!("cheap");
    let (_, body) = c.post("/v1/jobs", &j, None).await;
    let done = c.wait_job(body["id"].as_str().unwrap(), super::T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let ledger: Decimal = sqlx::query_scalar(
        "SELECT sum(cost_usd) FROM attempts WHERE provider = 'openai' AND model = 'gpt-4o-mini'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(ledger > Decimal::ZERO);
    // Over the API a tenant sees only its own spend on a shared deployment.
    let other = Client::new(&app, &env.key("globex").await);
    for (client, spent) in [(&c, ledger), (&other, Decimal::ZERO)] {
        let (_, page) = client.get("/v1/budgets").await;
        let d = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == "openai/gpt-4o-mini")
            .cloned()
            .unwrap();
        assert_eq!(dec(&d["spent_today_usd"]), spent, "{page}");
    }
    app.stop().await;
    let deployment = row(&cfg, "deployment", "openai/gpt-4o-mini");
    assert_eq!(dec(&deployment["spent_today_usd"]), ledger, "{deployment}");
    assert_eq!(dec(&deployment["spent_month_usd"]), ledger, "{deployment}");
    assert_eq!(deployment["tpm"], 1_000_000);
    let table = ok(&sluice(&cfg, &["budgets", "show"]));
    let line = table
        .lines()
        .find(|l| l.contains("openai/gpt-4o-mini"))
        .unwrap();
    assert!(
        line.contains(&ledger.round_dp(6).to_string()),
        "spend beside the limits: {line}\n{table}"
    );

    // Clearing lifts one cap and keeps the rest.
    let out = as_alice(
        &cfg,
        &["budgets", "clear", "--tenant", "acme", "--daily-usd"],
    );
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cleared daily_usd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tenant = row(&cfg, "tenant", "acme");
    assert_eq!(tenant["daily_usd"], Value::Null, "{tenant}");
    assert_eq!(dec(&tenant["monthly_usd"]), Decimal::from(50));
    ok(&as_alice(
        &cfg,
        &[
            "budgets",
            "clear",
            "--deployment",
            "openai/gpt-4o-mini",
            "--tpm",
        ],
    ));
    let deployment = row(&cfg, "deployment", "openai/gpt-4o-mini");
    assert_eq!(deployment["tpm"], Value::Null);
    assert_eq!(deployment["rpm"], 1000);

    let audit: Vec<(String, String, Value, Value)> = sqlx::query_as(
        "SELECT actor, target, before, after FROM audit_log WHERE action = 'budget.clear' ORDER BY at, id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(audit.len(), 2, "{audit:?}");
    let (actor, target, before, after) = &audit[0];
    assert_eq!(actor, "cli:alice");
    assert_eq!(target, "tenant:acme");
    assert_eq!(dec(&before["daily_usd"]), Decimal::from(5));
    assert_eq!(after["daily_usd"], Value::Null);
    assert_eq!(dec(&after["monthly_usd"]), Decimal::from(50));
    let (_, target, before, after) = &audit[1];
    assert_eq!(target, "deployment:openai/gpt-4o-mini");
    assert_eq!(
        (&before["tpm"], &after["tpm"]),
        (&json!(1_000_000), &Value::Null)
    );

    // Mistakes keep their clear messages.
    let fails = |args: &[&str], says: &str| {
        let out = sluice(&cfg, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    fails(
        &["budgets", "clear", "--tenant", "nobody", "--daily-usd"],
        "sluice tenants create nobody",
    );
    fails(
        &["budgets", "clear", "--deployment", "nope/gpt-4o", "--tpm"],
        "no provider `nope`",
    );
    fails(
        &[
            "budgets",
            "clear",
            "--deployment",
            "openai/gpt-4o-mini",
            "--daily-usd",
        ],
        "apply to tenants",
    );
    fails(&["budgets", "clear", "--tenant", "acme"], "--daily-usd");
    fails(
        &["budgets", "set", "--tenant", "acme", "--monthly-usd=-1"],
        "must not be negative",
    );
    env.cleanup().await;
}
