//! The command line with poison input: clear errors, no panics, nothing enqueued from a file
//! with a bad line, every bad line reported as FILE:LINE, and `--wait` failing on failed jobs.

use std::io::Write;

use serde_json::json;

use crate::common::{TestEnv, job, sluice_cmd};

fn run(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn submit_cmd(base: &str, key: &str, file: &std::path::Path) -> std::process::Command {
    let mut c = sluice_cmd();
    c.arg("submit")
        .arg(file)
        .arg("--api-url")
        .arg(base)
        .arg("--api-key")
        .arg(key);
    c
}

/// Finding 1: `sluice submit --deadline 99999999years` and `dead-letters list --since
/// 99999999years` end with a clear error, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_durations_on_the_command_line_are_clear_errors_not_panics() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let key = env.key("acme").await;
    let base = format!("http://{}", app.api_addr.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.jsonl");
    std::fs::write(&file, format!("{}\n", job("x"))).unwrap();
    let (ok, _, err) = run(submit_cmd(&base, &key, &file).args(["--deadline", "99999999years"]));
    assert!(!ok && !err.contains("panicked"), "{err}");
    assert!(err.contains("jobs.jsonl:1: deadline:"), "{err}");
    let config = env.write_config(dir.path());
    let (ok, _, err) = run(sluice_cmd().arg("--config").arg(&config).args([
        "dead-letters",
        "list",
        "--since",
        "99999999years",
    ]));
    assert!(!ok && !err.contains("panicked"), "{err}");
    assert!(err.contains("--since"), "{err}");
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
    env.cleanup().await;
}

/// Finding 12: a file with bad lines anywhere (past the first upload chunk too) enqueues
/// nothing and reports every bad line as FILE:LINE: field: problem; a good file prints its
/// batch id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_checks_the_whole_file_first_and_reports_every_bad_line() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let key = env.key("acme").await;
    let base = format!("http://{}", app.api_addr.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    let mut f = std::fs::File::create(&bad).unwrap();
    for n in 1..=1300 {
        let line = match n {
            3 => {
                let mut j = job("far");
                j["deadline"] = json!("99999999years");
                j.to_string()
            }
            700 => "{not json".to_string(),
            1200 => job("nul \u{0} inside").to_string(),
            1250 => {
                let mut j = job("x");
                j["body"]["max_tokens"] = json!(4_000_000_000u64);
                j.to_string()
            }
            _ => {
                let mut j = job(&format!("line {n}"));
                j["custom_id"] = json!(format!("c{n}"));
                j.to_string()
            }
        };
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    let (ok, out, err) = run(submit_cmd(&base, &key, &bad).arg("--chunk").arg("500"));
    assert!(!ok, "{err}");
    assert!(
        out.trim().is_empty(),
        "no batch id for a refused file: {out}"
    );
    let name = bad.display().to_string();
    for expected in [
        format!("{name}:3: deadline:"),
        format!("{name}:700: job:"),
        format!("{name}:1200: body.messages[0].content:"),
        format!("{name}:1250: body.max_tokens:"),
    ] {
        assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");
    }
    assert!(err.contains("nothing was enqueued"), "{err}");
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 0);

    let good = dir.path().join("good.jsonl");
    let lines: Vec<String> = (0..1200)
        .map(|i| job(&format!("ok {i}")).to_string())
        .collect();
    std::fs::write(&good, lines.join("\n")).unwrap();
    let (ok, out, err) = run(submit_cmd(&base, &key, &good).arg("--chunk").arg("500"));
    assert!(ok, "{err}");
    let batch = out.trim();
    assert!(batch.starts_with("batch_"), "{out}");
    assert!(err.contains(batch), "{err}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE batch_id = $1")
        .bind(batch)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(n, 1200, "every line in one batch, uploaded in chunks");
    app.stop().await;
    env.cleanup().await;
}

/// Finding 12: `submit --wait` exits non-zero when jobs failed, saying how many, with which
/// error codes, and how to list them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_fails_when_jobs_failed_and_says_which_codes() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let key = env.key("acme").await;
    let base = format!("http://{}", app.api_addr.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mixed.jsonl");
    let lines = [
        job("fine 1"),
        job("refused [[mock:status=400]]"),
        job("fine 2"),
    ];
    let text: Vec<String> = lines.iter().map(ToString::to_string).collect();
    std::fs::write(&file, text.join("\n")).unwrap();
    let (ok, out, err) = run(submit_cmd(&base, &key, &file).arg("--wait"));
    assert!(!ok, "{out}\n{err}");
    assert!(err.contains("1 jobs failed"), "{err}");
    assert!(err.contains("http_400"), "{err}");
    assert!(err.contains("status=failed"), "{err}");
    app.stop().await;
    env.cleanup().await;
}
