//! Finding 12, set-up: a misspelt `SLUICE_` variable is refused at start-up naming it, and a
//! mistyped `DATABASE_URL` never creates a new empty database: `serve` and `worker` refuse to
//! start on a missing database, `migrate` creates it and says so.

use crate::common::{TestEnv, sluice_cmd};

fn run(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_sluice_variable_is_refused_at_start_up_naming_it() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = env.write_config(dir.path());
    for var in [
        "SLUICE_WORKR__CONCURRENCY",
        "SLUICE_WORKER_CONCURRENCY",
        "SLUICE_WORKER__CONCURENCY",
    ] {
        let (ok, err) = run(sluice_cmd()
            .arg("--config")
            .arg(&config)
            .arg("migrate")
            .env(var, "3"));
        assert!(!ok, "{var}: {err}");
        let named = err.contains(var) || err.to_lowercase().contains("concurency");
        assert!(named, "{var} is not named in: {err}");
    }
    let (ok, err) = run(sluice_cmd()
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .env("SLUICE_WORKER__CONCURRENCY", "3"));
    assert!(ok, "a correct variable is fine: {err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_refused_by_serve_and_worker_and_created_only_by_migrate() {
    let mut env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let typo = format!("{}_typo", env.db_url);
    let name = typo.rsplit('/').next().unwrap().to_string();
    let saved = env.config.database.url.clone();
    env.config.database.url = typo.clone();
    env.config.server.listen = "127.0.0.1:0".into();
    let config = env.write_config(dir.path());
    env.config.database.url = saved;
    let exists = |pool: sqlx::PgPool, name: String| async move {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        )
        .bind(name)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    for role in ["serve", "worker"] {
        let (ok, err) = run(sluice_cmd().arg("--config").arg(&config).arg(role));
        assert!(!ok, "{role} must not start: {err}");
        assert!(
            err.contains("does not exist") && err.contains("sluice migrate"),
            "{err}"
        );
        assert!(
            !exists(env.pool.clone(), name.clone()).await,
            "{role} created it"
        );
    }
    let (ok, err) = run(sluice_cmd()
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .env("RUST_LOG", "info"));
    assert!(ok, "{err}");
    assert!(err.contains("created database"), "one clear line: {err}");
    assert!(exists(env.pool.clone(), name.clone()).await);
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&env.pool)
        .await
        .unwrap();
    env.cleanup().await;
}
