//! The supervisor, end to end: a role of a real `sluice up` process that panics every time it
//! starts is restarted with backoff, `/readyz` names it as down, and the other roles serve on.

mod common;

use std::time::Duration;

use common::{TestEnv, job, wait_until};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_keeps_panicking_is_restarted_named_by_readyz_and_the_rest_serve_on() {
    let mut env = TestEnv::new().await;
    let key = env.key("acme").await;
    let up = env
        .spawn_api("up", &[("SLUICE_FAILPOINT", "ingest.start")], T)
        .await;
    let base = up.base.clone();
    let http = reqwest::Client::new();

    // Three deaths in a short time: readyz is 503 and says which role, with its restarts.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    wait_until(T, "readyz names ingest as down after three deaths", || {
        let (http, url, seen) = (http.clone(), format!("{base}/readyz"), seen.clone());
        async move {
            let Ok(r) = http.get(url).send().await else {
                return false;
            };
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let down = status == 503
                && body["down"] == serde_json::json!(["ingest"])
                && body["roles"]["ingest"]["restarts"].as_u64() >= Some(3);
            *seen.lock().unwrap() = body;
            down
        }
    })
    .await;
    let last = seen.lock().unwrap().clone();
    let ingest = &last["roles"]["ingest"];
    assert!(ingest["restarts"].as_u64().unwrap() >= 3, "{last}");
    assert!(
        ingest["last_death"]
            .as_str()
            .unwrap()
            .contains("failpoint ingest.start"),
        "{last}"
    );
    assert_eq!(last["roles"]["worker"]["up"], true, "{last}");
    assert_eq!(last["database"], true);

    // The other roles serve on: an HTTP job runs to its result.
    let created: Value = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(&key)
        .json(&job("still served while ingest is down"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    wait_until(T, "the job succeeds", || {
        let (http, url, key) = (http.clone(), format!("{base}/v1/jobs/{id}"), key.clone());
        async move {
            let Ok(r) = http.get(url).bearer_auth(key).send().await else {
                return false;
            };
            r.json::<Value>()
                .await
                .is_ok_and(|j| j["status"] == "succeeded")
        }
    })
    .await;
    env.cleanup().await;
}
