//! Poison messages (matrix row 9): malformed producer messages, garbage work messages, and jobs
//! the provider rejects forever.

use serde_json::json;

use crate::common::{Client, TestEnv, job, wait_until};
use crate::support::*;

/// Matrix row 9: malformed producer messages go to `sluice.jobs.rejected` with a reason,
/// garbage on a work queue is dropped, and good work behind both still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_set_aside_without_blocking_good_work() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let key = env.key("acme").await;
    let headers = [("sluice-api-key", key.as_str()), ("sluice-schema", "1")];
    let poison: [&[u8]; 4] = [
        b"{not json",
        b"\xff\xfe\x00binary",
        b"[]",
        br#"{"model": "summarize", "body": {"messages": "not a list"}}"#,
    ];
    for body in poison {
        env.publish_job("acme", body, &headers, None).await;
    }
    let mut good = job("good work behind poison");
    good["custom_id"] = json!("good-after-poison");
    env.publish_job("acme", &serde_json::to_vec(&good).unwrap(), &headers, None)
        .await;
    // Garbage on the work queue itself: not a job id, an unknown job id, binary, empty.
    for id in ["not-a-job", "job_does_not_exist", "\u{1}\u{2}", ""] {
        app.ctx
            .broker
            .publish_work(&[sluice::queue::WorkItem {
                id: id.to_string(),
                tenant: "acme".into(),
                priority: 0,
            }])
            .await
            .unwrap();
    }

    wait_until(T, "the good job succeeds", || async {
        env.count("SELECT count(*) FROM jobs WHERE custom_id = 'good-after-poison' AND status = 'succeeded'")
            .await
            == 1
    })
    .await;
    let mut reasons = Vec::new();
    while reasons.len() < poison.len() {
        let d = poll(T, "a poison message in the rejected queue", || {
            env.get_message("sluice.jobs.rejected")
        })
        .await;
        reasons.push(
            sluice::queue::header_text(d.properties.headers(), "sluice-reject-reason")
                .unwrap_or_default(),
        );
    }
    assert!(reasons.iter().all(|r| !r.is_empty()), "{reasons:?}");
    wait_until(T, "the work queue drains", || async {
        env.work_queue_depth("acme").await.0 == 0
    })
    .await;
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 1);
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}

/// Matrix row 9: a job the provider refuses forever (400, 404, 422) fails after one call, with
/// the provider's reason, and is never tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_provider_rejects_forever_fails_after_one_call_without_a_hot_loop() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let ids = c
        .submit(
            [400, 404, 422]
                .iter()
                .map(|s| job(&format!("rejected forever [[mock:status={s}]]")))
                .collect(),
        )
        .await;
    env.wait_all_finished(T).await;
    // Proving that nothing more happens takes watching: let five maintenance rounds (relay,
    // stager, rescuer) pass.
    tokio::time::sleep(env.config.worker.relay_interval * 5).await;

    for (id, status) in ids.iter().zip([400, 404, 422]) {
        let (state, code): (String, Option<String>) =
            sqlx::query_as("SELECT status, error->>'code' FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        assert_eq!(state, "failed");
        assert_eq!(code, Some(format!("http_{status}")));
        assert_eq!(calls(&env, id), 1, "{id}: a {status} is never retried");
    }
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}
