//! Test harness: every test gets its own Postgres database, its own prefix on every RabbitMQ
//! name, and its own mock provider, so tests run in parallel without seeing each other.
#![allow(dead_code)]

pub mod proxy;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sluice::app::{self, Ctx, Roles, Running};
use sluice::config::Config;
use sluice::mock::{MockHandle, MockSettings, MockStats};
use sqlx::PgPool;

/// One isolated environment.
pub struct TestEnv {
    pub name: String,
    pub db_url: String,
    pub config: Config,
    pub mock: MockHandle,
    pub pool: PgPool,
}

fn pg_base() -> String {
    std::env::var("TEST_PG_BASE").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Logs of the in-process app go to the test's captured output, shown only when a test fails:
/// warnings and sluice's own info lines by default, `TEST_LOG=<filter>` for more.
pub fn init_logs() {
    let filter = std::env::var("TEST_LOG")
        .ok()
        .filter(|f| !f.is_empty() && f != "1")
        .unwrap_or_else(|| "warn,sluice=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl TestEnv {
    /// A fresh database, prefix and mock provider.
    pub async fn new() -> TestEnv {
        Self::with_mock(MockSettings::default()).await
    }

    pub async fn with_mock(settings: MockSettings) -> TestEnv {
        init_logs();
        let name = format!("t{}", uuid::Uuid::now_v7().simple());
        let db_url = format!("{}/sluice_{name}", pg_base());
        let mock = sluice::mock::start("127.0.0.1:0".parse().unwrap(), settings)
            .await
            .unwrap();
        let mut config = Config::from_toml(sluice::config::DEFAULT_CONFIG).unwrap();
        config.database.url = db_url.clone();
        config.database.max_connections = 8;
        config.amqp.url = amqp_url();
        config.amqp.prefix = format!("{name}.");
        config.server.listen = "127.0.0.1:0".into();
        config.worker.heartbeat_interval = Duration::from_millis(300);
        config.worker.dead_after = Duration::from_secs(2);
        config.worker.relay_interval = Duration::from_millis(200);
        config.worker.relay_grace = Duration::from_secs(1);
        config.worker.publish_mark_delay = Some(Duration::from_millis(200));
        config.worker.retry_base = Duration::from_millis(100);
        config.worker.retry_max = Duration::from_millis(400);
        config.batch.max_wait = Duration::from_millis(300);
        config.batch.poll_interval = Duration::from_millis(200);
        config.batch.lease = Duration::from_secs(1);
        config.point_providers_at(&mock.base_url());
        // No schedules unless a test writes some: the repository's own jobs/ must not fire here.
        config.scheduler.dir = std::env::temp_dir().join(format!("sluice_{name}_jobs"));
        let pool = {
            // The test's own database is created here (as `sluice migrate` would) and
            // migrated by Ctx::connect.
            sluice::db::create_if_missing(&config.database)
                .await
                .unwrap();
            let ctx = Ctx::connect(config.clone()).await.unwrap();
            ctx.pool.clone()
        };
        TestEnv {
            name,
            db_url,
            config,
            mock,
            pool,
        }
    }

    /// A context over this environment (its own pool).
    pub async fn ctx(&self) -> Arc<Ctx> {
        Ctx::connect(self.config.clone()).await.unwrap()
    }

    /// Starts sluice in-process with `roles`.
    pub async fn start(&self, roles: Roles) -> Running {
        app::start(self.ctx().await, roles).await.unwrap()
    }

    /// Everything in one process, as `sluice up` does.
    pub async fn up(&self) -> Running {
        self.start(Roles::all()).await
    }

    /// A new API key for `tenant`.
    pub async fn key(&self, tenant: &str) -> String {
        sluice::db::tenants::create_key(&self.pool, tenant)
            .await
            .unwrap()
            .key
    }

    /// A config file for child processes of the real binary.
    pub fn write_config(&self, dir: &std::path::Path) -> PathBuf {
        let path = dir.join("sluice.toml");
        std::fs::write(&path, toml::to_string(&self.config).unwrap()).unwrap();
        path
    }

    /// Removes this test's queues and database (best effort).
    pub async fn cleanup(self) {
        let topo = sluice::queue::Topology::new(&self.config.amqp.prefix);
        let tenants: Vec<String> = sqlx::query_scalar("SELECT name FROM tenants")
            .fetch_all(&self.pool)
            .await
            .unwrap_or_default();
        sluice::queue::delete_topology(&amqp_url(), &topo, &tenants).await;
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(&format!("{}/postgres", pg_base())).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"sluice_{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&admin)
            .await;
        }
    }

    /// Publishes a raw message to the jobs exchange as an outside producer would.
    pub async fn publish_job(
        &self,
        routing_key: &str,
        body: &[u8],
        headers: &[(&str, &str)],
        message_id: Option<&str>,
    ) {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let topo = sluice::queue::Topology::new(&self.config.amqp.prefix)
            .with_queue_type(self.config.amqp.queue_type);
        sluice::queue::declare(&ch, &topo).await.unwrap();
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert(
                (*k).into(),
                AMQPValue::LongString(LongString::from(v.to_string())),
            );
        }
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(table);
        if let Some(id) = message_id {
            props = props.with_message_id(id.into());
        }
        ch.basic_publish(
            format!("{}sluice.jobs", self.config.amqp.prefix).into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
        conn.close(200, "done".into()).await.unwrap();
    }

    /// Takes one message from a queue of this environment (`sluice.jobs.rejected`, …).
    pub async fn get_message(&self, queue: &str) -> Option<lapin::message::Delivery> {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let got = ch
            .basic_get(
                format!("{}{queue}", self.config.amqp.prefix).into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        conn.close(200, "done".into()).await.unwrap();
        got.map(|m| m.delivery)
    }

    /// Messages waiting in a tenant's work queue, and its consumers.
    /// Consumers on a tenant's work queue (0 while it does not exist yet).
    pub async fn work_queue_consumers(&self, tenant: &str) -> u32 {
        let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
        else {
            return 0;
        };
        let Ok(ch) = conn.create_channel().await else {
            return 0;
        };
        let q = ch
            .queue_declare(
                format!("{}sluice.work.{tenant}", self.config.amqp.prefix).into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = conn.close(200, "".into()).await;
        q.map_or(0, |q| q.consumer_count())
    }

    pub async fn work_queue_depth(&self, tenant: &str) -> (u32, u32) {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                format!("{}sluice.work.{tenant}", self.config.amqp.prefix).into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = conn.close(200, "x".into()).await;
        (q.message_count(), q.consumer_count())
    }

    /// Counts of jobs by status.
    pub async fn status_of(&self, job_id: &str) -> String {
        sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Jobs per status, for a failure message.
    pub async fn job_summary(&self) -> String {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM jobs GROUP BY status ORDER BY status")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        format!("{rows:?}")
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// The exactly-once checker: every job finished once, with a result, and ledger = job costs.
    pub async fn check_invariants(&self) {
        let unfinished = self
            .count("SELECT count(*) FROM jobs WHERE finalized_at IS NULL")
            .await;
        assert_eq!(unfinished, 0, "every accepted job reaches a terminal state");
        let no_result = self
            .count("SELECT count(*) FROM jobs WHERE (status = 'succeeded' AND response IS NULL) OR (status <> 'succeeded' AND error IS NULL)")
            .await;
        assert_eq!(no_result, 0, "every finished job has a result or an error");
        let mismatch = self
            .count(
                "SELECT count(*) FROM jobs j WHERE j.cost_usd <> COALESCE((SELECT sum(cost_usd) FROM attempts a WHERE a.job_id = j.id), 0)",
            )
            .await;
        assert_eq!(mismatch, 0, "the ledger adds up to each job's cost");
        let over = self
            .count("SELECT count(*) FROM jobs j WHERE (SELECT count(*) FROM attempts a WHERE a.job_id = j.id AND a.status NOT IN ('expired', 'cancelled', 'cache_hit')) > j.max_attempts * jsonb_array_length(j.deployments)")
            .await;
        assert_eq!(over, 0, "no job has more ledger rows than allowed attempts");
    }
}

/// The API alone: jobs are recorded and published, but no worker runs them.
pub fn api_only() -> Roles {
    Roles {
        api: true,
        ..Default::default()
    }
}

/// The real `sluice` binary, with no configuration, key or address inherited from the
/// environment the tests run in.
pub fn sluice_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env_remove("SLUICE_API_KEY")
        .env_remove("SLUICE_CONFIG")
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .env_remove("SLUICE_LISTEN")
        .env("RUST_LOG", "warn");
    c
}

impl TestEnv {
    /// A `sluice worker` child process on this environment's config (written into `dir`).
    pub fn spawn_worker(&self, dir: &std::path::Path, extra_env: &[(&str, &str)]) -> ChildGuard {
        let config = self.write_config(dir);
        let mut cmd = sluice_cmd();
        cmd.arg("--config")
            .arg(config)
            .arg("worker")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        ChildGuard(cmd.spawn().unwrap())
    }
}

/// Waits for `child` to exit, at most `timeout`.
pub async fn wait_exit(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < timeout,
            "process {} did not exit in {timeout:?}",
            child.id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process that is killed when dropped, so a failing test never leaves workers behind.
/// A real `sluice <command>` process on a free port, started by [`TestEnv::spawn_api`].
pub struct ApiProcess {
    /// Killed when dropped.
    pub child: ChildGuard,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    _config_dir: tempfile::TempDir,
}

impl TestEnv {
    /// Starts `sluice <command>` (`serve`, `up`, …) with this environment's config on a free
    /// port and the extra environment `vars`, and returns once its `/healthz` answers.
    pub async fn spawn_api(
        &mut self,
        command: &str,
        vars: &[(&str, &str)],
        timeout: Duration,
    ) -> ApiProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        self.config.server.listen = format!("127.0.0.1:{port}");
        let config = self.write_config(dir.path());
        let mut cmd = sluice_cmd();
        cmd.arg("--config")
            .arg(&config)
            .arg(command)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = ChildGuard(cmd.spawn().unwrap());
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_until(timeout, "the API process answers", || async {
            http.get(format!("{base}/healthz")).send().await.is_ok()
        })
        .await;
        ApiProcess {
            child,
            base,
            _config_dir: dir,
        }
    }
}

pub struct ChildGuard(pub std::process::Child);

impl std::ops::Deref for ChildGuard {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// A small HTTP client for one running API with one key.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub key: String,
}

impl Client {
    pub fn new(running: &Running, key: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: format!("http://{}", running.api_addr.unwrap()),
            key: key.to_string(),
        }
    }

    pub async fn post(&self, path: &str, body: &Value, idem: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(body);
        if let Some(k) = idem {
            req = req.header("idempotency-key", k);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Submits `jobs` as one batch (`POST /v1/jobs`, which must answer 200) and returns
    /// their ids, in order.
    pub async fn submit(&self, jobs: Vec<Value>) -> Vec<String> {
        let (status, body) = self.post("/v1/jobs", &json!({ "jobs": jobs }), None).await;
        assert_eq!(status, 200, "{body}");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until the job is in a terminal state and returns it.
    pub async fn wait_job(&self, id: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let (_, job) = self.get(&format!("/v1/jobs/{id}")).await;
            if job["finalized_at"].is_string() {
                return job;
            }
            assert!(
                start.elapsed() < timeout,
                "job {id} did not finish in {timeout:?}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A simple valid job.
pub fn job(prompt: &str) -> Value {
    json!({"model": "summarize", "body": {"messages": [{"role": "user", "content": prompt}], "max_tokens": 64}})
}

/// Fault-injection helpers and the exactly-once checker (used by `tests/faults.rs`).
impl TestEnv {
    /// The exactly-once checker over a finished run: [`TestEnv::check_invariants`], plus what the
    /// mock provider saw. Every job is terminal with one result; a succeeded job has exactly one
    /// successful ledger row and any other job none; the provider was called only for jobs that
    /// exist, at most `max_attempts × deployments` times each; no answer is in the ledger that
    /// the provider did not give; the ledger total equals the sum of job costs and the tenants'
    /// booked spend.
    pub async fn check_exactly_once(&self, stats: &MockStats) {
        self.check_invariants().await;
        let not_terminal = self
            .count("SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'cancelled', 'expired')")
            .await;
        assert_eq!(
            not_terminal, 0,
            "no job is left queued, running or scheduled"
        );
        let results = self
            .count(
                "SELECT count(*) FROM jobs j, LATERAL (SELECT count(*) AS n FROM attempts a
                    WHERE a.job_id = j.id AND a.status IN ('succeeded', 'refused', 'cache_hit')) ok
                 WHERE CASE WHEN j.status = 'succeeded' THEN ok.n <> 1 ELSE ok.n <> 0 END",
            )
            .await;
        assert_eq!(
            results, 0,
            "a succeeded job has exactly one successful attempt and any other job none"
        );
        // Ledger rows of answers the provider gave (a result, or an HTTP error status). An
        // attempt that never reached it (connection refused) is in the ledger too, unanswered.
        let allowed: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT j.id, (j.max_attempts * jsonb_array_length(j.deployments))::bigint,
                (SELECT count(*) FROM attempts a WHERE a.job_id = j.id
                   AND (a.status IN ('succeeded', 'refused') OR a.http_status IS NOT NULL))
             FROM jobs j",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let allowed: std::collections::HashMap<String, (i64, i64)> = allowed
            .into_iter()
            .map(|(id, max, billed)| (id, (max, billed)))
            .collect();
        for (job, calls) in &stats.calls_by_job {
            let Some((max, _)) = allowed.get(job) else {
                panic!(
                    "the provider was called {calls} times for `{job}`, which is no accepted job"
                );
            };
            assert!(
                *calls as i64 <= *max,
                "job {job}: {calls} provider calls, more than its {max} allowed attempts"
            );
        }
        for (job, (_, answered)) in &allowed {
            let calls = stats.calls_by_job.get(job).copied().unwrap_or(0) as i64;
            assert!(
                *answered <= calls,
                "job {job}: {answered} answered attempts in the ledger for {calls} provider calls"
            );
        }
        let (ledger, jobs, spend): (Decimal, Decimal, Decimal) = sqlx::query_as(
            "SELECT (SELECT COALESCE(sum(cost_usd), 0) FROM attempts),
                    (SELECT COALESCE(sum(cost_usd), 0) FROM jobs),
                    (SELECT COALESCE(sum(usd), 0) FROM tenant_spend)",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap();
        assert_eq!(ledger, jobs, "the ledger total equals the sum of job costs");
        assert_eq!(ledger, spend, "spend is booked once per ledger row");
    }

    /// Asserts every id the API or broker accepted is recorded in Postgres.
    pub async fn assert_recorded(&self, ids: &[String]) {
        let found = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        assert_eq!(found, ids.len() as i64, "every accepted job is recorded");
    }

    /// Waits until no job is left unfinished; on timeout, says where the others are stuck.
    pub async fn wait_all_finished(&self, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let open = self
                .count("SELECT count(*) FROM jobs WHERE finalized_at IS NULL")
                .await;
            if open == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stuck: Vec<(String, String, i32, Option<String>, Value, Value)> = sqlx::query_as(
            "SELECT id, status, attempt, attempted_by, errors,
                jsonb_build_object('now', now(), 'updated_at', updated_at, 'publish_after', publish_after,
                    'run_after', run_after, 'attempted_at', attempted_at, 'route', route)
             FROM jobs WHERE finalized_at IS NULL ORDER BY id LIMIT 5",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        let by_status: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM jobs GROUP BY 1 ORDER BY 1")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        panic!(
            "timed out after {timeout:?} waiting for every job to finish; by status {by_status:?}; \
             some unfinished: {stuck:#?}"
        );
    }

    /// Kills every server process connected to this test's database except the caller's own,
    /// as an administrator or a failover would. Returns how many were terminated.
    pub async fn terminate_backends(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }
}
