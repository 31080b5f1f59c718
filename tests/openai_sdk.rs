//! The official OpenAI Python SDK against a live sluice (tests/sdk/openai_sdk.py): files, batches
//! (create, poll, list pages, output and error files, cancel) and chat completions, whole and
//! streamed, and webhook endpoints (create, a `batch.completed` delivery verified with
//! `client.webhooks.unwrap`, rotate_secret), with only `base_url` and `api_key` changed.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::TestEnv;

fn openai_importable() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_openai_sdk_runs_files_batches_and_chat_completions_unchanged() {
    if !openai_importable() {
        let how = "the `openai` Python package is missing: install it with `python3 -m pip install openai` (.ci/run does this)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{how}");
        eprintln!("skipping outside CI: {how}");
        return;
    }
    let mut env = TestEnv::new().await;
    // The script's webhook receiver listens on loopback.
    env.config.webhooks.allow_private_networks = vec!["127.0.0.0/8".parse().unwrap()];
    let running = env.up().await;
    let key = env.key("sdk").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk.py");
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .env(
            "SLUICE_BASE_URL",
            format!("http://{}/v1", running.api_addr.unwrap()),
        )
        .env("SLUICE_API_KEY", &key)
        .env("NO_PROXY", "127.0.0.1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), child)
        .await
        .expect("the SDK script did not finish within 240 s")
        .expect("python3 could not be started");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    env.check_invariants().await;
    running.stop().await;
    env.cleanup().await;
}
