//! Secrets and PII in logs (matrix row 25).

use std::process::Stdio;

use serde_json::json;
use sluice::app::Roles;

use crate::common::{Client, TestEnv, job};
use crate::support::*;

/// Matrix row 25: a worker's logs (at `info`, with sluice's own `debug`) never contain a provider
/// key, a tenant API key, or prompt text, whether jobs succeed, retry, fail or are rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_secrets_and_prompts_never_reach_a_workers_logs() {
    const PROVIDER_KEY: &str = "sk-canary-provider-7f3a9c";
    const PII: &str = "CANARY-PII-jane.doe-4242";
    let mut env = TestEnv::new().await;
    env.config.providers.get_mut("openai").unwrap().api_key_env =
        Some("SLUICE_TEST_CANARY_PROVIDER_KEY".into());
    let api = env
        .start(Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let key = env.key("acme").await;
    let c = Client::new(&api, &key);
    let logs = tempfile::NamedTempFile::new().unwrap();
    let mut worker = WorkerProcess::spawn_with(
        &env,
        &[
            ("RUST_LOG", "info,sluice=debug"),
            ("SLUICE_TEST_CANARY_PROVIDER_KEY", PROVIDER_KEY),
        ],
        Stdio::from(logs.reopen().unwrap()),
    );

    let mut ids = c
        .submit(vec![
            job(&format!("Summarize the ticket of {PII}")),
            job(&format!("Retry for {PII} [[mock:fail-first=1]]")),
            job_with_attempts(&format!("Broken answer for {PII} [[mock:malformed]]"), 1),
            job(&format!("Bad request for {PII} [[mock:status=400]]")),
        ])
        .await;
    let headers = [("sluice-api-key", key.as_str()), ("sluice-schema", "1")];
    let mut produced = job(&format!("Over AMQP for {PII}"));
    produced["custom_id"] = json!("amqp-canary");
    env.publish_job(
        "acme",
        &serde_json::to_vec(&produced).unwrap(),
        &headers,
        None,
    )
    .await;
    env.publish_job(
        "acme",
        format!("{{not json {PII}").as_bytes(),
        &headers,
        None,
    )
    .await;
    ids.push(
        poll(T, "the AMQP job is recorded", || async {
            sqlx::query_scalar("SELECT id FROM jobs WHERE custom_id = 'amqp-canary'")
                .fetch_optional(&env.pool)
                .await
                .unwrap()
        })
        .await,
    );
    poll(T, "the poison message is rejected", || {
        env.get_message("sluice.jobs.rejected")
    })
    .await;
    env.wait_all_finished(T).await;
    worker.signal("TERM");
    assert!(worker.wait_exit(T).await.success());

    let text = std::fs::read_to_string(logs.path()).unwrap();
    assert!(
        text.lines().count() > 3,
        "the worker logged something to check:\n{text}"
    );
    for canary in [PROVIDER_KEY, key.as_str(), PII, "Summarize the ticket"] {
        let leaks: Vec<&str> = text.lines().filter(|l| l.contains(canary)).collect();
        assert!(
            leaks.is_empty(),
            "`{canary}` leaked into the logs: {leaks:#?}"
        );
    }
    env.check_exactly_once(&env.mock.stats()).await;
    api.stop().await;
    env.cleanup().await;
}
