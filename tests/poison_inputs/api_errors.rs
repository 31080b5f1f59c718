//! Finding 14: every error the API can produce is JSON in OpenAI's error shape, with a JSON
//! content type: 401, 404, 405, bad path encodings, body and query rejections, 408, 413, and a
//! panic in a handler (a JSON 500, after which the server keeps serving).

use std::time::Duration;

use serde_json::Value;

use crate::T;
use crate::common::TestEnv;

/// Asserts a response is an error in OpenAI's shape with a JSON content type.
async fn assert_json_error(resp: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "{what}");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        ct.starts_with("application/json"),
        "{what}: content-type `{ct}`"
    );
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty())
            && e["type"].is_string()
            && e["code"].is_string()
            && e.get("param").is_some(),
        "{what}: {body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_the_api_can_give_is_json_in_openais_shape() {
    let mut env = TestEnv::new().await;
    env.config.server.max_body_bytes = 64 * 1024;
    env.config.server.request_timeout = Duration::from_secs(2);
    let app = env.up().await;
    let key = env.key("acme").await;
    let base = format!("http://{}", app.api_addr.unwrap());
    let http = reqwest::Client::new();
    let get = |p: &str| http.get(format!("{base}{p}")).bearer_auth(&key);
    let post = |p: &str| http.post(format!("{base}{p}")).bearer_auth(&key);

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (http.get(format!("{base}/v1/jobs")), 401, "no API key"),
        (get("/v1/nothing-here"), 404, "unknown route"),
        (get("/v1/jobs/job_unknown"), 404, "unknown job"),
        (
            http.delete(format!("{base}/v1/jobs")).bearer_auth(&key),
            405,
            "DELETE /v1/jobs",
        ),
        (
            http.put(format!("{base}/v1/jobs/x")).bearer_auth(&key),
            405,
            "PUT /v1/jobs/{id}",
        ),
        (get("/v1/jobs/%ff"), 400, "a path id that is not UTF-8"),
        (
            get("/v1/batches/%ff/results"),
            400,
            "a batch id that is not UTF-8",
        ),
        (get("/v1/jobs?limit=abc"), 400, "a query of the wrong type"),
        (get("/v1/jobs?bogus=1"), 400, "an unknown query parameter"),
        (
            post("/v1/jobs").body("{not json"),
            400,
            "a body that is not JSON",
        ),
        (post("/v1/jobs").body(""), 400, "an empty body"),
        (
            post("/v1/jobs").json(&serde_json::json!({"jobs": 3})),
            400,
            "jobs of the wrong type",
        ),
        (
            post("/v1/jobs").json(&serde_json::json!({"model": 7})),
            422,
            "a field of the wrong type",
        ),
        (
            post("/v1/dead_letters/requeue").json(&serde_json::json!({"ids": "x"})),
            400,
            "a selection of the wrong type",
        ),
        (
            post("/v1/jobs").body(vec![b'x'; 200 * 1024]),
            413,
            "a body over the limit",
        ),
    ];
    for (req, status, what) in cases {
        let resp = req.send().await.unwrap();
        let body = assert_json_error(resp, status, what).await;
        if status == 405 {
            assert_eq!(body["error"]["code"], "method_not_allowed");
        }
    }

    // A body that arrives too slowly: the request is stopped with a JSON 408. The client is a
    // raw socket that sends one byte of a promised 64 and then only reads. A client still
    // writing when the server gives up can have its socket reset before the 408 is read, which
    // made this check flaky with a streaming HTTP client.
    let (status, head, body) = slow_body_request(app.api_addr.unwrap(), &key).await;
    assert_eq!(
        status, 408,
        "a body slower than the request timeout: {head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
            && body["error"]["code"].is_string(),
        "{body}"
    );
    let ok = get("/healthz").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    app.stop().await;
    env.cleanup().await;
}

/// Sends `POST /v1/jobs` promising a 64-byte body, sends one byte, and reads the response to
/// the end. Returns the status, the head and the body.
async fn slow_body_request(addr: std::net::SocketAddr, key: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: 64\r\n\r\n{{"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), sock.read_to_end(&mut raw))
        .await
        .expect("the server answers a stalled body within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// A panic in a handler (a failpoint) is a JSON 500 and the API process keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_handler_is_a_json_500_and_the_server_lives_on() {
    let mut env = TestEnv::new().await;
    let key = env.key("acme").await;
    let api = env
        .spawn_api("serve", &[("SLUICE_FAILPOINT", "api.get_job")], T)
        .await;
    let base = api.base.clone();
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let resp = http
            .get(format!("{base}/v1/jobs/job_x"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_json_error(resp, 500, "a handler that panics").await;
    }
    let resp = http
        .get(format!("{base}/v1/jobs"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the server lives on");
    env.cleanup().await;
}
