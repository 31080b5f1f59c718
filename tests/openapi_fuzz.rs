//! `schemathesis` (a property-based OpenAPI fuzzer) against the real binary: every request it
//! derives from `/openapi.json` gets an answer whose status, content type and body the document
//! describes, and none is a server error. Once with a tenant key over the tenant routes, once
//! with the admin key over `/v1/admin`. The providers point at the in-process mock, so chat
//! completions never leave the machine.
//!
//! Deterministic by construction: a fixed `--seed`, `--generation-deterministic`, one worker,
//! and only the phases that depend on the seed alone (examples, coverage, fuzzing); the
//! stateful phase follows links with ids the server made, which differ between runs.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::TestEnv;

const ADMIN_KEY: &str = "sk-admin-openapi-fuzz-0123456789";

/// Checks that are properties of the server, whatever data a run generates.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

fn schemathesis_installed() -> bool {
    std::process::Command::new("schemathesis")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs schemathesis over `base`'s document with `key`, narrowed by `filter`, and fails the test
/// with its report unless it passes.
async fn fuzz(base: &str, key: &str, filter: &[&str]) {
    // schemathesis keeps a `.schemathesis/` cache in its working directory; not in the tree.
    let scratch = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new("schemathesis")
        .current_dir(scratch.path())
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args(["--seed", "20261129", "--generation-deterministic"])
        .args(["-n", "10", "--workers", "1", "--request-timeout", "10"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--checks", CHECKS, "--no-color"])
        .args(filter)
        .env("NO_PROXY", "127.0.0.1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("schemathesis did not finish within 120 s")
        .expect("schemathesis could not be started");
    assert!(
        out.status.success(),
        "schemathesis found problems ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_schemathesis_derives_from_the_document_gets_a_documented_answer() {
    if !schemathesis_installed() {
        let how = "`schemathesis` is missing: install it with `python3 -m pip install schemathesis` (.ci/run does this)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{how}");
        eprintln!("skipping outside CI: {how}");
        return;
    }
    let mut env = TestEnv::new().await;
    let key = env.key("acme").await;
    let api = env
        .spawn_api(
            "serve",
            &[("SLUICE_ADMIN_KEY", ADMIN_KEY)],
            Duration::from_secs(60),
        )
        .await;
    fuzz(&api.base, &key, &["--exclude-path-regex", "^/v1/admin"]).await;
    fuzz(
        &api.base,
        ADMIN_KEY,
        &["--include-path-regex", "^/v1/admin"],
    )
    .await;
    drop(api);
    env.cleanup().await;
}
