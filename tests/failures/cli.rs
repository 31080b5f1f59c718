//! The real `sluice` binary: `dead-letters list|show|requeue|purge` (admin, straight to
//! Postgres) and `cancel` (over the HTTP API).

use std::process::{Command, Output};

use serde_json::Value;

use super::common::{Client, TestEnv, job, wait_until};
use super::{T, single, submit};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env_remove("SLUICE_API_KEY")
        .env_remove("SLUICE_CONFIG")
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .env("RUST_LOG", "warn")
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letters_commands_list_show_purge_and_requeue() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let flaky = submit(&c, &single("flaky [[mock:fail-first=1]]", 1)).await;
    let bad = submit(&c, &single("bad [[mock:status=400]]", 1)).await;
    c.wait_job(&flaky, T).await;
    c.wait_job(&bad, T).await;
    let dir = tempfile::tempdir().unwrap();
    let config = env.write_config(dir.path());
    let cfg = config.to_str().unwrap();

    let list: Value = serde_json::from_str(&stdout(&sluice(&[
        "--config",
        cfg,
        "dead-letters",
        "list",
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let table = stdout(&sluice(&[
        "--config",
        cfg,
        "dead-letters",
        "list",
        "--code",
        "http_400",
        "--since",
        "1h",
    ]));
    assert!(table.contains(&bad) && !table.contains(&flaky), "{table}");

    let shown: Value = serde_json::from_str(&stdout(&sluice(&[
        "--config",
        cfg,
        "dead-letters",
        "show",
        &flaky,
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(shown["errors"][0]["code"], "http_500", "{shown}");
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 1);
    assert!(stdout(&sluice(&["--config", cfg, "dead-letters", "show", &flaky])).contains("ledger"));

    let unconfirmed = sluice(&[
        "--config",
        cfg,
        "dead-letters",
        "purge",
        "--code",
        "http_400",
    ]);
    // A dry run is an answer, not an error.
    assert!(unconfirmed.status.success());
    let said = String::from_utf8_lossy(&unconfirmed.stderr);
    assert!(said.contains("dry run: 1 dead letter(s) match"), "{said}");
    assert!(!said.to_lowercase().contains("error"), "{said}");
    stdout(&sluice(&[
        "--config",
        cfg,
        "dead-letters",
        "purge",
        "--code",
        "http_400",
        "--yes",
    ]));
    assert_eq!(env.status_of(&bad).await, "failed", "purged, not deleted");

    let requeued = stdout(&sluice(&[
        "--config",
        cfg,
        "dead-letters",
        "requeue",
        "--all",
        "--tenant",
        "acme",
    ]));
    assert_eq!(requeued.trim(), flaky);
    assert_eq!(c.wait_job(&flaky, T).await["status"], "succeeded");
    let empty: Value = serde_json::from_str(&stdout(&sluice(&[
        "--config",
        cfg,
        "dead-letters",
        "list",
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(empty, Value::Array(vec![]));
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cancel_command_stops_a_running_job_and_reports_a_finished_one() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let key = env.key("acme").await;
    let c = Client::new(&app, &key);
    let url = format!("http://{}", app.api_addr.unwrap());
    let id = submit(&c, &job("long [[mock:sleep=30s]]")).await;
    wait_until(T, "the job runs", || async {
        env.mock.stats().calls_by_job.contains_key(&id)
    })
    .await;

    let args = ["cancel", id.as_str(), "--api-url", &url, "--api-key", &key];
    assert!(stdout(&sluice(&args)).contains("cancel requested"));
    assert_eq!(c.wait_job(&id, T).await["status"], "cancelled");
    let again = sluice(&args);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("409") && err.contains("already finished"),
        "{err}"
    );
    app.stop().await;
    env.cleanup().await;
}
