//! Helpers shared by the fault scenarios: submitting and polling, fault lengths, config dials,
//! and `sluice worker` child processes that are killed if a test fails.

use std::future::Future;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::app::Roles;
use sluice::config::Config;

use crate::common::{Client, TestEnv, job};

/// The longest any single wait in these scenarios may take.
pub const T: Duration = Duration::from_secs(45);

/// `n` jobs whose prompts come from `prompt(i)`.
pub fn many(n: usize, prompt: impl Fn(usize) -> String) -> Vec<Value> {
    (0..n).map(|i| job(&prompt(i))).collect()
}

/// A job with its own attempt budget.
pub fn job_with_attempts(prompt: &str, max_attempts: u32) -> Value {
    let mut j = job(prompt);
    j["max_attempts"] = json!(max_attempts);
    j
}

/// Jobs in a terminal state.
pub async fn finished(env: &TestEnv) -> i64 {
    env.count("SELECT count(*) FROM jobs WHERE finalized_at IS NOT NULL")
        .await
}

/// Asserts every job in `ids` succeeded, naming the ones that did not.
pub async fn assert_all_succeeded(env: &TestEnv, ids: &[String]) {
    let bad: Vec<(String, String, Option<Value>)> = sqlx::query_as(
        "SELECT id, status, error FROM jobs WHERE id = ANY($1) AND status <> 'succeeded'",
    )
    .bind(ids)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(bad.is_empty(), "jobs that did not succeed: {bad:?}");
}

/// Provider calls the mock counted for `id`.
pub fn calls(env: &TestEnv, id: &str) -> u64 {
    env.mock.stats().calls_by_job.get(id).copied().unwrap_or(0)
}

/// Polls `f` until it yields a value; panics after `timeout`.
pub async fn poll<R, F, Fut>(timeout: Duration, what: &str, mut f: F) -> R
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<R>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status `/readyz` answers with (0 if it does not answer).
pub async fn readyz(c: &Client) -> u16 {
    reqwest::get(format!("{}/readyz", c.base))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Keeps a fault in place until `since + at_least`: the length of an injected outage is the
/// point of the scenario, not a wait for work.
pub async fn hold_fault(since: Instant, at_least: Duration) {
    tokio::time::sleep(at_least.saturating_sub(since.elapsed())).await;
}

/// Sets `worker.<key>` when this build's config has that key (going through the serialised
/// config lets these helpers build whichever dials a build has).
pub fn set_worker_dial(config: &mut Config, key: &str, value: toml::Value) {
    let mut tree = toml::Value::try_from(&*config).unwrap();
    if let Some(worker) = tree.get_mut("worker").and_then(|w| w.as_table_mut())
        && worker.contains_key(key)
    {
        worker.insert(key.into(), value);
        *config = tree.try_into().unwrap();
    }
}

/// An open breaker keeps calls away for its cool-down; provider-fault scenarios use a short one
/// so they stay quick.
pub fn short_breaker_cooldown(config: &mut Config) {
    set_worker_dial(
        config,
        "breaker_cooldown",
        toml::Value::String("300ms".into()),
    );
}

/// No circuit breakers: for scenarios about the retry budget alone.
pub fn without_breakers(config: &mut Config) {
    set_worker_dial(config, "breaker_failure_rate", toml::Value::Integer(0));
}

/// The API with the rescuer, stager and relay, but no worker (as `sluice serve`).
pub fn api_and_maintenance() -> Roles {
    Roles {
        api: true,
        maintenance: true,
        ..Default::default()
    }
}

/// A worker pool alone, without maintenance loops.
pub fn worker_only() -> Roles {
    Roles {
        worker: true,
        ..Default::default()
    }
}

/// A `sluice worker` child process of this test, killed if the test ends without stopping it.
pub struct WorkerProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl WorkerProcess {
    /// Starts `sluice worker` with this environment's config (including any proxy URLs in it).
    pub fn spawn(env: &TestEnv) -> WorkerProcess {
        // `TEST_LOG=1` shows the workers' info lines; `TEST_LOG=<filter>` uses that filter.
        let (level, stderr) = match std::env::var("TEST_LOG") {
            Ok(f) if !f.is_empty() && f != "1" => (f, Stdio::inherit()),
            Ok(_) => ("info".to_string(), Stdio::inherit()),
            Err(_) => ("warn".to_string(), Stdio::null()),
        };
        Self::spawn_with(env, &[("RUST_LOG", level.as_str())], stderr)
    }

    /// Starts `sluice worker` with extra environment variables and its stderr (its logs) sent
    /// to `stderr`.
    pub fn spawn_with(env: &TestEnv, vars: &[(&str, &str)], stderr: Stdio) -> WorkerProcess {
        let dir = tempfile::tempdir().unwrap();
        let config = env.write_config(dir.path());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.env_remove("SLUICE_CONFIG")
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .env_remove("SLUICE_LISTEN")
            .env_remove("SLUICE_FAILPOINT")
            .env_remove("RUST_LOG")
            .arg("--config")
            .arg(config)
            .arg("worker")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        WorkerProcess {
            child: cmd.spawn().unwrap(),
            _dir: dir,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`KILL`, `TERM`, `STOP`, `CONT`) to this child only, by pid.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} {}", self.pid());
    }

    /// Waits for the child to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        crate::common::wait_exit(&mut self.child, timeout).await
    }

    /// The id this process registered in `workers`, once it has.
    pub async fn worker_id(&self, env: &TestEnv) -> String {
        let pid = self.pid() as i32;
        poll(T, "the child worker registers", || async {
            sqlx::query_scalar("SELECT id FROM workers WHERE pid = $1")
                .bind(pid)
                .fetch_optional(&env.pool)
                .await
                .unwrap()
        })
        .await
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `job` is `running` on the worker `worker_id`.
pub async fn running_on(env: &TestEnv, job: &str, worker_id: &str) -> bool {
    env.count(&format!(
        "SELECT count(*) FROM jobs WHERE id = '{job}' AND status = 'running' AND attempted_by = '{worker_id}'"
    ))
    .await
        == 1
}
