//! The operator's CLI as a newcomer finds it: the mock provider stays on loopback, a closed
//! pipe ends quietly, budgets say what is wrong and how to set one.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use super::{ok, sluice};
use crate::common::{TestEnv, sluice_cmd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_provider_listens_on_loopback_unless_told_otherwise() {
    let mut child = crate::common::ChildGuard(
        sluice_cmd()
            .args(["mock-provider", "--port", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("listening on"))
            .unwrap_or_default()
    })
    .await
    .unwrap();
    assert!(line.contains("listening on http://127.0.0.1:"), "{line}");
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    crate::common::wait_exit(&mut child, super::T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_the_command_quietly_with_success() {
    let env = TestEnv::new().await;
    sqlx::query(
        "INSERT INTO audit_log (id, actor, action, target, after)
         SELECT 'audit_' || g, 'cli:test', 'key.create', 'key_' || g, jsonb_build_object('n', repeat('x', 200))
         FROM generate_series(1, 3000) g",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = env.write_config(dir.path());
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{}' --config '{}' audit --format json --limit 5000 | head -c 100 >/dev/null; echo \"status=${{PIPESTATUS[0]}}\"",
            env!("CARGO_BIN_EXE_sluice"),
            cfg.display()
        ))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("status=0"), "{stdout}\n{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("error"),
        "{stderr}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_refuse_unknown_tenants_and_deployments_and_negative_caps_and_say_how_to_set_one() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = env.write_config(dir.path());
    let fails = |args: &[&str], says: &str| {
        let out = sluice(&cfg, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !err.contains("database") && !err.contains("violates"),
            "{err}"
        );
    };
    fails(
        &["budgets", "set", "--tenant", "nobody", "--tpm", "10"],
        "sluice tenants create nobody",
    );
    fails(
        &[
            "budgets",
            "set",
            "--deployment",
            "nope/gpt-4o",
            "--tpm",
            "10",
        ],
        "no provider `nope`",
    );
    ok(&sluice(&cfg, &["tenants", "create", "acme"]));
    fails(
        &["budgets", "set", "--tenant", "acme", "--daily-usd=-5"],
        "must not be negative",
    );
    let out = sluice(&cfg, &["budgets", "show", "--tenant", "acme"]);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sluice budgets set"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_takes_a_job_id_jobs_list_filters_and_a_wrong_key_prints_its_hint_once() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let key = env.key("acme").await;
    let c = crate::common::Client::new(&app, &key);
    let ok_id = c
        .post("/v1/jobs", &crate::common::job("fine"), None)
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bad = crate::common::job("bad [[mock:status=400]]");
    bad["model"] = serde_json::json!("openai/gpt-4o-mini");
    bad["max_attempts"] = serde_json::json!(1);
    let bad_id = c.post("/v1/jobs", &bad, None).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait_job(&ok_id, super::T).await;
    c.wait_job(&bad_id, super::T).await;
    let url = format!("http://{}", app.api_addr.unwrap());
    let run = |args: &[&str], key: &str| {
        sluice_cmd()
            .env("RUST_LOG", "warn")
            .env("SLUICE_API_URL", &url)
            .env("SLUICE_API_KEY", key)
            .env("COLUMNS", "100")
            .args(args)
            .output()
            .unwrap()
    };
    let shown = ok(&run(&["status", &ok_id], &key));
    assert!(
        shown.contains("succeeded") && shown.contains(&ok_id),
        "{shown}"
    );
    let failed: serde_json::Value = serde_json::from_str(&ok(&run(
        &[
            "jobs", "list", "--status", "failed", "--since", "1h", "--format", "json",
        ],
        &key,
    )))
    .unwrap();
    let ids: Vec<&str> = failed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [bad_id.as_str()]);
    let table = ok(&run(&["jobs", "list", "--status", "failed"], &key));
    assert!(table.contains("http_400"), "{table}");
    assert!(
        table.lines().all(|l| l.chars().count() <= 100),
        "fits 100 columns:\n{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&run(
        &["jobs", "list", "--limit", "1", "--format", "json"],
        &key,
    )))
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);

    let wrong = run(&["status", &ok_id], "sk-sluice-wrongwrongwrong");
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(err.matches("sluice keys create").count(), 1, "{err}");
    env.cleanup().await;
}
