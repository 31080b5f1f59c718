//! End-to-end tests of governance against real Postgres and RabbitMQ: keys with scopes, expiry,
//! revocation and rotation across app instances; per-key limits; the admin API; the audit log;
//! PII redaction and restoring masked values; the operator's CLI (batches, budgets, webhooks)
//! and the batch route's deadline check.
//! One file per concern under `tests/governance/`.

mod common;

#[path = "governance/admin.rs"]
mod admin;
#[path = "governance/audit_actions.rs"]
mod audit_actions;
#[path = "governance/batch_deadline.rs"]
mod batch_deadline;
#[path = "governance/batches_list.rs"]
mod batches_list;
#[path = "governance/budgets_clear.rs"]
mod budgets_clear;
#[path = "governance/cli.rs"]
mod cli;
#[path = "governance/key_limits.rs"]
mod key_limits;
#[path = "governance/keys.rs"]
mod keys;
#[path = "governance/redaction.rs"]
mod redaction;
#[path = "governance/restore.rs"]
mod restore;
#[path = "governance/retention.rs"]
mod retention;
#[path = "governance/webhooks_admin.rs"]
mod webhooks_admin;

use std::time::Duration;

use common::api_only;

/// Time limit of every wait.
const T: Duration = Duration::from_secs(30);

/// The admin key the tests configure (by its hash, as `[admin] key_sha256`).
const ADMIN_KEY: &str = "admin-canary-0123456789abcdef";

/// Configures [`ADMIN_KEY`] as the admin key of `env`.
fn with_admin_key(env: &mut common::TestEnv) {
    use sha2::Digest;
    env.config.admin.key_sha256 = Some(hex::encode(sha2::Sha256::digest(ADMIN_KEY.as_bytes())));
}

/// The real binary with `env`'s config, its output captured.
fn sluice(cfg: &std::path::Path, args: &[&str]) -> std::process::Output {
    common::sluice_cmd()
        .env("RUST_LOG", "warn")
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

/// Standard output of a run that must succeed.
fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
