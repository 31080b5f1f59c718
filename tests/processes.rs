//! End-to-end tests that run the real `sluice` binary as separate processes: killed workers,
//! graceful shutdown, and the CLI.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::{Client, TestEnv, job, wait_exit, wait_until};
use serde_json::json;
use sluice::app::Roles;

const T: Duration = Duration::from_secs(40);

fn sluice() -> Command {
    common::sluice_cmd()
}

fn spawn_worker(
    env: &TestEnv,
    dir: &tempfile::TempDir,
    extra_env: &[(&str, &str)],
) -> common::ChildGuard {
    env.spawn_worker(dir.path(), extra_env)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

async fn running_by_other_process(env: &TestEnv, id: &str, ours: &str) -> bool {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT status, attempted_by FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&env.pool)
            .await
            .unwrap();
    matches!(row, Some((s, Some(by))) if s == "running" && by != ours)
}

/// A job whose answer died with its process: rescued (`worker_lost` in its errors), called a
/// second time, and booked once.
async fn rescued_and_booked_once(env: &TestEnv, c: &Client, id: &str) {
    let done = c.wait_job(id, T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["errors"].to_string().contains("worker_lost"), "{done}");
    assert_eq!(env.mock.stats().calls_by_job[id], 2);
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM attempts WHERE job_id = '{id}'"
        ))
        .await,
        1,
        "one result booked: the lost answer died with its process"
    );
    env.check_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_is_finished_by_another_worker() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let api = env
        .start(Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&api, &env.key("acme").await);
    let mut child = spawn_worker(&env, &dir, &[]);

    let (_, body) = c
        .post("/v1/jobs", &job("long call [[mock:sleep=2s]]"), None)
        .await;
    let id = body["id"].as_str().unwrap().to_string();
    wait_until(T, "the child worker is running the job", || {
        running_by_other_process(&env, &id, &api.worker_id)
    })
    .await;
    signal(&child, "KILL");
    wait_exit(&mut child, T).await;

    // Another worker (with the rescuer) takes over once the dead worker's heartbeat is stale.
    let rescuer = env
        .start(Roles {
            worker: true,
            maintenance: true,
            ..Default::default()
        })
        .await;
    let done = c.wait_job(&id, T).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["attempts"], 2);
    assert!(done["errors"].to_string().contains("worker_lost"), "{done}");
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM attempts WHERE job_id = '{id}'"
        ))
        .await,
        1,
        "billed once"
    );
    env.check_invariants().await;
    rescuer.stop().await;
    api.stop().await;
    env.cleanup().await;
}

/// Matrix row 1, exactly: the worker dies after the provider answered and before the result
/// is committed. The answer is lost with the process (the provider billed a call sluice could
/// not book); the job is rescued, run again, and recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_the_answer_but_before_the_commit_leaves_the_job_to_another() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let api = env
        .start(Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&api, &env.key("acme").await);
    let mut child = spawn_worker(
        &env,
        &dir,
        &[("SLUICE_FAILPOINT", "worker.after_call_before_record")],
    );
    let (_, body) = c.post("/v1/jobs", &job("answer then die"), None).await;
    let id = body["id"].as_str().unwrap().to_string();
    let status = wait_exit(&mut child, T).await;
    assert!(!status.success(), "the failpoint aborted the worker");
    assert_eq!(
        env.mock.stats().calls_by_job[&id],
        1,
        "the provider answered"
    );
    assert_eq!(env.status_of(&id).await, "running", "nothing was committed");

    let rescuer = env
        .start(Roles {
            worker: true,
            maintenance: true,
            ..Default::default()
        })
        .await;
    rescued_and_booked_once(&env, &c, &id).await;
    rescuer.stop().await;
    api.stop().await;
    env.cleanup().await;
}

/// Matrix row 3 with a real API process: it dies after committing a submission and before
/// publishing its work message, so the client gets no answer. The relay publishes the job, it
/// runs once, and the client's retry with the same `Idempotency-Key` (to another API process)
/// gets the original job back instead of a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_killed_between_commit_and_publish_loses_nothing_and_a_retry_is_no_duplicate() {
    let mut env = TestEnv::new().await;
    let key = env.key("acme").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let served = env.config.server.listen.clone();
    env.config.server.listen = format!("127.0.0.1:{port}");
    let config = env.write_config(dir.path());
    env.config.server.listen = served;
    let mut api = common::ChildGuard(
        sluice()
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("SLUICE_FAILPOINT", "api.after_commit_before_publish")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until(T, "the API process answers", || async {
        http.get(format!("{base}/healthz")).send().await.is_ok()
    })
    .await;
    let sent = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(&key)
        .header("idempotency-key", "retry-me-1")
        .json(&job("committed, never published"))
        .send()
        .await;
    assert!(sent.is_err(), "the API died before answering: {sent:?}");
    let status = wait_exit(&mut api, T).await;
    assert!(!status.success(), "the failpoint aborted the API");
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 1, "committed");

    // Workers, the relay and a fresh API: the job runs; the client retries and gets it back.
    let app = env.up().await;
    let c = Client::new(&app, &key);
    let (s, again) = c
        .post(
            "/v1/jobs",
            &job("committed, never published"),
            Some("retry-me-1"),
        )
        .await;
    assert_eq!(s, 200, "{again}");
    let id = again["id"].as_str().unwrap().to_string();
    let done = c.wait_job(&id, T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        env.count("SELECT count(*) FROM jobs").await,
        1,
        "no duplicate"
    );
    assert_eq!(env.mock.stats().calls_by_job[&id], 1);
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

/// The synchronous path's crash window: an API process dies after the provider answered a
/// `/v1/chat/completions` call and before the record. The job was inserted already running for
/// the API's registered worker (admission before the insert), so the rescuer takes it like any
/// dead worker's job: it is run again by a worker and booked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_killed_after_a_chat_completions_answer_leaves_its_running_job_to_the_rescuer() {
    let mut env = TestEnv::new().await;
    let key = env.key("acme").await;
    let mut api = env
        .spawn_api(
            "serve",
            &[("SLUICE_FAILPOINT", "sync.after_call_before_record")],
            T,
        )
        .await;
    // The rescuing process below serves on a port of its own.
    env.config.server.listen = "127.0.0.1:0".into();
    let http = reqwest::Client::new();
    let sent = http
        .post(format!("{}/v1/chat/completions", api.base))
        .bearer_auth(&key)
        .json(&json!({"model": "summarize", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "answered, never recorded"}]}))
        .send()
        .await;
    assert!(sent.is_err(), "the API died before answering: {sent:?}");
    let status = wait_exit(&mut api.child, T).await;
    assert!(!status.success(), "the failpoint aborted the API");
    let (id, state, attempt): (String, String, i32) =
        sqlx::query_as("SELECT id, status, attempt FROM jobs")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), attempt),
        ("running", 1),
        "inserted running"
    );
    assert_eq!(
        env.mock.stats().calls_by_job[&id],
        1,
        "the provider answered"
    );

    let rescuer = env
        .start(Roles {
            api: true,
            worker: true,
            maintenance: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&rescuer, &key);
    rescued_and_booked_once(&env, &c, &id).await;
    rescuer.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_recording_but_before_acking_causes_no_second_call() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let api = env
        .start(Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&api, &env.key("acme").await);
    let mut child = spawn_worker(
        &env,
        &dir,
        &[("SLUICE_FAILPOINT", "worker.after_record_before_ack")],
    );

    let (_, body) = c.post("/v1/jobs", &job("commit then die"), None).await;
    let id = body["id"].as_str().unwrap().to_string();
    let status = wait_exit(&mut child, T).await;
    assert!(!status.success(), "the failpoint aborted the worker");
    assert_eq!(env.status_of(&id).await, "succeeded");

    // The unacked delivery comes back to a new worker, which sees a finished job.
    let worker = env
        .start(Roles {
            worker: true,
            ..Default::default()
        })
        .await;
    wait_until(T, "the redelivery is consumed", || async {
        let (messages, consumers) = env.work_queue_depth("acme").await;
        messages == 0 && consumers >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.mock.stats().calls_by_job[&id],
        1,
        "no second provider call"
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM attempts WHERE job_id = '{id}'"
        ))
        .await,
        1
    );
    env.check_invariants().await;
    worker.stop().await;
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_and_exits_zero() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let api = env
        .start(Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&api, &env.key("acme").await);
    let mut child = spawn_worker(&env, &dir, &[]);
    let jobs: Vec<_> = (0..20)
        .map(|i| job(&format!("job {i} [[mock:sleep=1s]]")))
        .collect();
    let (_, body) = c.post("/v1/jobs", &json!({"jobs": jobs}), None).await;
    let ids: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    wait_until(T, "the child is running jobs", || async {
        env.count("SELECT count(*) FROM jobs WHERE status = 'running'")
            .await
            > 0
    })
    .await;
    let in_flight: Vec<String> = sqlx::query_scalar("SELECT id FROM jobs WHERE status = 'running'")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    signal(&child, "TERM");
    let status = wait_exit(&mut child, T).await;
    assert!(status.success(), "exit status {status}");
    for id in &in_flight {
        assert_eq!(
            env.status_of(id).await,
            "succeeded",
            "in-flight job {id} was finished before exit"
        );
    }
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'running'")
            .await,
        0,
        "nothing left running"
    );
    assert_eq!(
        // The in-process API registers too (it claims synchronous chat completions).
        env.count(&format!(
            "SELECT count(*) FROM workers WHERE id <> '{}'",
            api.worker_id
        ))
        .await,
        0,
        "the worker deregistered"
    );

    // What it had not started is still there for the next worker.
    let worker = env
        .start(Roles {
            worker: true,
            ..Default::default()
        })
        .await;
    for id in &ids {
        c.wait_job(id, T).await;
    }
    env.check_invariants().await;
    worker.stop().await;
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_a_file_follows_it_and_downloads_results() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let key = env.key("acme").await;
    let url = format!("http://{}", app.api_addr.unwrap());
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tickets.jsonl");

    let out = sluice()
        .args([
            "submit",
            example,
            "--wait",
            "--api-url",
            &url,
            "--api-key",
            &key,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let batch = stdout.lines().next().unwrap().trim().to_string();
    assert!(batch.starts_with("batch_"), "{stdout}");
    assert!(
        stdout.contains("completed") && stdout.contains("1000"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.jsonl");
    let out = sluice()
        .args([
            "results",
            &batch,
            "-o",
            file.to_str().unwrap(),
            "--api-url",
            &url,
            "--api-key",
            &key,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 1000);
    assert!(text.contains("\"custom_id\":\"ticket-00001\""));

    let out = sluice()
        .args(["status", &batch, "--api-url", &url, "--api-key", &key])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("completed"));
    env.check_invariants().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_a_bad_file_naming_the_line_and_enqueues_nothing() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let key = env.key("acme").await;
    let url = format!("http://{}", app.api_addr.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ok = serde_json::to_string(&job("fine")).unwrap();
    let cases = [
        (format!("{ok}\n{ok}\n{{\"body\": oops}}\n"), "bad.jsonl:3:"),
        (format!("{ok}\n{}\n", serde_json::to_string(&json!({"model": "gpt-99", "body": {"messages": [{"role": "user", "content": "x"}]}})).unwrap()), "bad.jsonl:2: model"),
        (format!("{}\n", serde_json::to_string(&json!({"model": "summarize", "body": {"messages": [{"role": "wizard", "content": "x"}]}})).unwrap()), "bad.jsonl:1: body.messages[0].role"),
    ];
    for (content, expected) in cases {
        let file = dir.path().join("bad.jsonl");
        std::fs::write(&file, content).unwrap();
        let out = sluice()
            .current_dir(dir.path())
            .args(["submit", "bad.jsonl", "--api-url", &url, "--api-key", &key])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in: {stderr}"
        );
    }
    let out = sluice()
        .args(["submit", "nope.jsonl", "--api-url", &url, "--api-key", &key])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read nope.jsonl"));
    let out = sluice()
        .args(["status", "batch_x", "--api-url", &url])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLUICE_API_KEY"));
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_create_prints_a_working_key_once() {
    let env = TestEnv::new().await;
    let out = sluice()
        .env("DATABASE_URL", &env.db_url)
        .args(["keys", "create", "--tenant", "initech"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(key.starts_with("sk-sluice-"));
    assert_eq!(
        sluice::db::tenants::tenant_for_key(&env.pool, &key)
            .await
            .unwrap()
            .as_deref(),
        Some("initech")
    );
    assert_eq!(
        env.count("SELECT count(*) FROM api_keys WHERE key_prefix = left(key_prefix, 14)")
            .await,
        1,
        "only a prefix is kept in clear"
    );
    let out = sluice()
        .env("DATABASE_URL", &env.db_url)
        .args(["keys", "create", "--tenant", "Bad Name"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid name"));
    env.cleanup().await;
}

/// `sluice --config CONFIG bench ARGS…`, run off the runtime's threads.
async fn bench(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        sluice()
            .arg("--config")
            .arg(&config)
            .arg("bench")
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `sluice bench e2e` at a steady rate runs real `serve` and `worker` processes to the last
/// result and prints every figure it promises; `--rate` where it cannot apply is refused,
/// saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_e2e_at_a_steady_rate_prints_its_figures_and_refuses_a_rate_it_cannot_pace() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = env.write_config(dir.path());
    let out = bench(&config, &["e2e", "--jobs", "400", "--rate", "800"]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for figure in [
        "400 jobs over Http ingest (at 800 jobs/s)",
        "broker ceiling",
        "database ceiling",
        "submit-to-result latency: p50",
        "jobs not succeeded: 0",
        "CPU s per 1,000 jobs, peak RSS",
        "postgres (every process):",
        "kB of WAL per job",
        "rabbitmq (beam.smp):",
        "cores busy from submit to the last result",
        "end to end: ",
        "ratio: ",
    ] {
        assert!(stdout.contains(figure), "no `{figure}` in:\n{stdout}");
    }

    let out = bench(
        &config,
        &["e2e", "--jobs", "10", "--rate", "10", "--ingest", "amqp"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--rate paces HTTP submissions only"),
        "{stderr}"
    );
    env.cleanup().await;
}

/// `sluice bench sync --rate` sends a steady load through sluice and to the mock directly and
/// prints both rounds and what sluice adds; with `--concurrency` as well it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_sync_at_a_steady_rate_prints_both_rounds_and_refuses_a_concurrency_too() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = env.write_config(dir.path());
    let out = bench(&config, &["sync", "--rate", "100", "--duration", "1s"]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("rate    100/s: mock direct"))
        .unwrap_or_else(|| panic!("no rate round in:\n{stdout}"));
    assert!(line.contains("through sluice"), "{line}");
    // Both rounds answered every request: 100 requests, none failed.
    assert_eq!(line.matches(", 0 errors)").count(), 2, "{line}");
    assert!(
        stdout.contains("rate    100/s: sluice adds"),
        "no added latency in:\n{stdout}"
    );

    let out = bench(&config, &["sync", "--rate", "100", "--concurrency", "8"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    env.cleanup().await;
}
