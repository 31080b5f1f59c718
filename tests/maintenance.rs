//! The maintenance loops and the database's own limits, end to end against real Postgres and
//! RabbitMQ: work messages lost in the broker are published again; heartbeats live on their own
//! pool; statements and lock waits are time-bounded.

mod common;

use std::time::Duration;

use common::{Client, TestEnv, api_only, job, wait_until};
use lapin::options::QueuePurgeOptions;
use lapin::{Connection, ConnectionProperties};
use serde_json::json;
use sluice::app::{Roles, Running};

const T: Duration = Duration::from_secs(30);

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Empties a tenant's work queue, as an operator's `rabbitmqctl purge_queue` would.
async fn purge_work_queue(env: &TestEnv, tenant: &str) -> u32 {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let purged = ch
        .queue_purge(
            format!("{}sluice.work.{tenant}", env.config.amqp.prefix).into(),
            QueuePurgeOptions::default(),
        )
        .await
        .unwrap();
    conn.close(200, "done".into()).await.unwrap();
    purged
}

/// The work messages of queued jobs are purged from the broker after they were published; the
/// sweeper publishes them again after `worker.republish_after`, and the jobs run.
#[tokio::test]
async fn queued_jobs_whose_work_messages_were_purged_are_published_again_and_run() {
    let mut env = TestEnv::new().await;
    env.config.worker.republish_after = Duration::from_secs(1);
    let api = env.start(api_only()).await;
    let c = Client::new(&api, &env.key("acme").await);
    let jobs: Vec<_> = (0..3).map(|i| job(&format!("lost message {i}"))).collect();
    let (s, body) = c.post("/v1/jobs", &json!({ "jobs": jobs }), None).await;
    assert_eq!(s, 200, "{body}");
    let ids: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    wait_until(T, "the work messages are in the broker", || async {
        env.work_queue_depth("acme").await.0 == 3
    })
    .await;
    assert_eq!(purge_work_queue(&env, "acme").await, 3);
    let roles = Roles {
        worker: true,
        maintenance: true,
        ..Default::default()
    };
    run_to_success(env, api, roles, &[(&c, &ids)]).await;
}

/// Starts workers with `roles`, waits until each client's jobs succeeded, checks the
/// invariants, and stops everything.
async fn run_to_success(env: TestEnv, api: Running, roles: Roles, jobs: &[(&Client, &[String])]) {
    let workers = env.start(roles).await;
    for (c, ids) in jobs {
        for id in *ids {
            let done = c.wait_job(id, T).await;
            assert_eq!(done["status"], "succeeded", "{done}");
        }
    }
    env.check_invariants().await;
    workers.stop().await;
    api.stop().await;
    env.cleanup().await;
}

/// Submits `n` jobs; returns their ids.
async fn submit_n(c: &Client, n: usize, tag: &str) -> Vec<String> {
    c.submit((0..n).map(|i| job(&format!("{tag} {i}"))).collect())
        .await
}

/// With `republish_after` at an hour, a tenant whose work queue was purged (it now holds no
/// ready message) gets its queued jobs published again after `republish_idle_after`, while
/// another tenant's jobs whose messages still wait in its queue are not published twice.
#[tokio::test]
async fn an_emptied_work_queue_gets_its_jobs_back_soon_and_a_waiting_backlog_is_not_duplicated() {
    let mut env = TestEnv::new().await;
    env.config.worker.republish_after = Duration::from_secs(3600);
    env.config.worker.republish_idle_after = Duration::from_secs(1);
    let api = env.start(api_only()).await;
    let acme = Client::new(&api, &env.key("acme").await);
    let globex = Client::new(&api, &env.key("globex").await);
    let lost = submit_n(&acme, 3, "lost").await;
    let waiting = submit_n(&globex, 4, "waiting").await;
    wait_until(T, "the work messages are in the broker", || async {
        env.work_queue_depth("acme").await.0 == 3 && env.work_queue_depth("globex").await.0 == 4
    })
    .await;
    assert_eq!(purge_work_queue(&env, "acme").await, 3);
    // Step the maintenance loop by hand (no worker consumes meanwhile) until the jobs have
    // been unclaimed for `republish_idle_after`: acme's come back to its queue.
    let ctx = api.ctx.clone();
    wait_until(T, "acme's lost messages are published again", || async {
        sluice::worker::maintenance::tick(&ctx).await.unwrap();
        env.work_queue_depth("acme").await.0 == 3
    })
    .await;
    // More rounds: nothing is sent twice, and globex's waiting messages are left alone.
    for _ in 0..5 {
        sluice::worker::maintenance::tick(&ctx).await.unwrap();
    }
    assert_eq!(
        env.work_queue_depth("globex").await.0,
        4,
        "no duplicates of a waiting backlog"
    );
    assert_eq!(
        env.work_queue_depth("acme").await.0,
        3,
        "each lost job republished once"
    );
    let roles = Roles {
        worker: true,
        ..Default::default()
    };
    run_to_success(env, api, roles, &[(&acme, &lost), (&globex, &waiting)]).await;
}

/// A backlog older than `republish_after` whose messages all wait in its queue is never
/// published twice; when some of its messages are lost, only as many jobs as are missing are
/// published again (oldest first), and every job then runs once.
#[tokio::test]
async fn an_old_backlog_gets_back_only_as_many_messages_as_were_lost() {
    let mut env = TestEnv::new().await;
    env.config.worker.republish_after = Duration::from_millis(500);
    env.config.worker.republish_idle_after = Duration::from_millis(500);
    let api = env.start(api_only()).await;
    let acme = Client::new(&api, &env.key("acme").await);
    let ids = submit_n(&acme, 6, "backlog").await;
    wait_until(T, "the work messages are in the broker", || async {
        env.work_queue_depth("acme").await.0 == 6
    })
    .await;
    // Older than `republish_after`, all messages still there: nothing is sent again.
    let ctx = api.ctx.clone();
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..3 {
        sluice::worker::maintenance::tick(&ctx).await.unwrap();
    }
    assert_eq!(
        env.work_queue_depth("acme").await.0,
        6,
        "a waiting backlog is not duplicated"
    );
    // Two messages lost: exactly two jobs come back.
    for _ in 0..2 {
        assert!(env.get_message("sluice.work.acme").await.is_some());
    }
    assert_eq!(env.work_queue_depth("acme").await.0, 4);
    wait_until(T, "the two lost messages are published again", || async {
        sluice::worker::maintenance::tick(&ctx).await.unwrap();
        env.work_queue_depth("acme").await.0 >= 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..3 {
        sluice::worker::maintenance::tick(&ctx).await.unwrap();
    }
    assert_eq!(
        env.work_queue_depth("acme").await.0,
        6,
        "only the missing messages were sent again"
    );
    let roles = Roles {
        worker: true,
        ..Default::default()
    };
    run_to_success(env, api, roles, &[(&acme, &ids)]).await;
}

/// Every connection of a worker's main pool is taken (a stall) while one of its calls runs.
/// The heartbeat has its own pool, so it keeps beating; another process's rescuer sees a live
/// worker and rescues nothing; the call finishes once, billed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_go_on_while_the_main_pool_is_saturated_and_no_job_is_rescued() {
    let env = TestEnv::new().await;
    let app = env
        .start(Roles {
            api: true,
            worker: true,
            ..Default::default()
        })
        .await;
    let rescuer = env
        .start(Roles {
            maintenance: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&app, &env.key("acme").await);
    let (_, body) = c
        .post("/v1/jobs", &job("a slow answer [[mock:sleep=6s]]"), None)
        .await;
    let id = body["id"].as_str().unwrap().to_string();
    wait_until(T, "the call is in flight", || async {
        env.mock.stats().calls_by_job.contains_key(&id)
    })
    .await;

    let beat = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "SELECT heartbeat_at FROM workers WHERE id = $1",
        )
        .bind(&app.worker_id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..env.config.database.max_connections {
        held.push(app.ctx.pool.acquire().await.unwrap());
    }
    let saturated_at = beat().await;
    // Hold the pool for twice `dead_after`: long enough for the worker to be declared dead if
    // its heartbeat depended on the main pool.
    let hold = env.config.worker.dead_after * 2;
    let until = tokio::time::Instant::now() + hold;
    let mut beats = 0;
    let mut last = saturated_at;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(env.config.worker.heartbeat_interval).await;
        let now = beat().await;
        if now > last {
            beats += 1;
            last = now;
        }
    }
    assert!(
        beats >= 2,
        "the heartbeat went on: {beats} beats while the pool was held"
    );
    assert_eq!(env.status_of(&id).await, "running", "not rescued");
    drop(held);

    let done = c.wait_job(&id, T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        !done["errors"].to_string().contains("worker_lost"),
        "never rescued: {done}"
    );
    assert_eq!(env.mock.stats().calls_by_job.get(&id).copied(), Some(1));
    env.check_invariants().await;
    rescuer.stop().await;
    app.stop().await;
    env.cleanup().await;
}

/// A worker thawed after being written off (its `workers` row removed) claims jobs before its
/// next heartbeat registers it again. The rescuer leaves a claim younger than `dead_after`
/// alone, and takes it once it is older and the worker has still not come back.
#[tokio::test]
async fn a_fresh_claim_by_a_worker_without_a_row_is_not_rescued_until_dead_after() {
    let env = TestEnv::new().await;
    let api = env.start(api_only()).await;
    let c = Client::new(&api, &env.key("acme").await);
    let ids = c.submit(vec![job("claimed by a thawed worker")]).await;
    let id = ids[0].clone();
    let claim = |age_secs: f64| {
        let (pool, id) = (env.pool.clone(), id.clone());
        async move {
            sqlx::query(
                "UPDATE jobs SET status = 'running', attempt = 1, attempted_by = 'wrk_thawed',
                    attempted_at = now() - make_interval(secs => $2), publish_after = NULL
                 WHERE id = $1",
            )
            .bind(&id)
            .bind(age_secs)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let dead_after = Duration::from_secs(2);
    claim(0.0).await;
    let rescued = sluice::db::maintenance::rescue_orphans(&env.pool, dead_after)
        .await
        .unwrap();
    assert_eq!(rescued, 0, "a claim made just now is a sign of life");
    assert_eq!(env.status_of(&id).await, "running");

    claim(3.0).await;
    let rescued = sluice::db::maintenance::rescue_orphans(&env.pool, dead_after)
        .await
        .unwrap();
    assert_eq!(
        rescued, 1,
        "a claim older than dead_after with no live worker is taken"
    );
    assert_eq!(env.status_of(&id).await, "queued");
    let errors: String = sqlx::query_scalar("SELECT errors::text FROM jobs WHERE id = $1")
        .bind(&id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(errors.contains("worker_lost"), "{errors}");
    api.stop().await;
    env.cleanup().await;
}

/// `database.statement_timeout` and `database.lock_timeout` hold on every connection: a
/// statement running too long, or waiting too long for a lock, fails (with an error the loops
/// treat as transient) instead of hanging its caller.
#[tokio::test]
async fn a_statement_past_its_timeout_or_a_lock_wait_past_its_timeout_errors_instead_of_hanging() {
    let mut env = TestEnv::new().await;
    env.config.database.statement_timeout = Duration::from_millis(500);
    env.config.database.lock_timeout = Duration::from_millis(300);
    let ctx = env.ctx().await;

    let slow = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::query("SELECT pg_sleep(3)").execute(&ctx.pool),
    )
    .await
    .expect("the statement was cut short, not waited for");
    let e = slow.expect_err("pg_sleep(3) outlives a 500 ms statement_timeout");
    assert_eq!(
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("57014")
    );
    assert!(sluice::db::errors::is_transient(&e));

    sqlx::query("INSERT INTO tenants (name) VALUES ('locked')")
        .execute(&env.pool)
        .await
        .unwrap();
    let mut holder = env.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM tenants WHERE name = 'locked' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let waited = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::query("UPDATE tenants SET name = 'moved' WHERE name = 'locked'").execute(&ctx.pool),
    )
    .await
    .expect("the lock wait was cut short, not waited for");
    let e = waited.expect_err("a row lock held elsewhere outlives a 300 ms lock_timeout");
    assert_eq!(
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("55P03")
    );
    assert!(sluice::db::errors::is_transient(&e));
    holder.rollback().await.unwrap();
    ctx.pool.close().await;
    ctx.beat_pool.close().await;
    env.cleanup().await;
}

/// The row versions (`xmin`) of these jobs, in id order.
async fn row_versions(env: &TestEnv, ids: &[String]) -> Vec<(String, String)> {
    sqlx::query_as("SELECT id, xmin::text FROM jobs WHERE id = ANY($1) ORDER BY id")
        .bind(ids)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// A job's work message is confirmed at once, but the job is marked published only after
/// `worker.publish_mark_delay`, and only if no worker claimed it meanwhile: a job claimed
/// first keeps the row version its record wrote, and a job still waiting in its queue is
/// marked and not published twice by the relay.
#[tokio::test]
async fn jobs_are_marked_published_after_the_delay_and_only_while_they_still_wait() {
    let mut env = TestEnv::new().await;
    let delay = Duration::from_secs(2);
    env.config.worker.relay_grace = Duration::from_secs(30);
    env.config.worker.publish_mark_delay = Some(delay);
    let api = env.start(api_only()).await;
    let c = Client::new(&api, &env.key("acme").await);
    let worker = Roles {
        worker: true,
        ..Default::default()
    };
    let workers = env.start(worker).await;
    // Once a worker consumes the tenant's queue, a job is claimed within milliseconds.
    let warm_up = submit_n(&c, 1, "warm-up").await;
    assert_eq!(c.wait_job(&warm_up[0], T).await["status"], "succeeded");
    let claimed = submit_n(&c, 3, "claimed").await;
    for id in &claimed {
        assert_eq!(c.wait_job(id, T).await["status"], "succeeded");
    }
    let recorded = row_versions(&env, &claimed).await;
    workers.stop().await;

    let submitted = std::time::Instant::now();
    let waiting = submit_n(&c, 2, "waiting").await;
    let marked = format!(
        "SELECT count(*) FROM jobs WHERE publish_after IS NULL AND id IN ('{}')",
        waiting.join("','")
    );
    wait_until(T, "the waiting jobs are marked published", || async {
        env.count(&marked).await == 2
    })
    .await;
    assert!(
        submitted.elapsed() >= delay,
        "marked after {:?}, before the delay",
        submitted.elapsed()
    );
    // Marks are written in the order they were handed over, so the claimed jobs' (due first)
    // have been dealt with: their rows were not written again.
    assert_eq!(row_versions(&env, &claimed).await, recorded);
    assert_eq!(
        env.work_queue_depth("acme").await.0,
        2,
        "one work message per waiting job"
    );
    run_to_success(env, api, worker, &[(&c, &waiting)]).await;
}

/// A job parked after its publish (a budget that frees later moved its `publish_after` there)
/// keeps its time when its publish mark falls due: only a job still as its publisher left it
/// is marked.
#[tokio::test]
async fn a_job_parked_before_its_publish_mark_keeps_its_time() {
    let mut env = TestEnv::new().await;
    env.config.worker.relay_grace = Duration::from_secs(120);
    env.config.worker.publish_mark_delay = Some(Duration::from_secs(60));
    let api = env.start(api_only()).await;
    let c = Client::new(&api, &env.key("acme").await);
    let ids = submit_n(&c, 2, "parked").await;
    // As a claim parks a job whose budget has no room before tomorrow.
    sqlx::query(
        "UPDATE jobs SET publish_after = now() + interval '1 day', updated_at = now() WHERE id = $1",
    )
    .bind(&ids[1])
    .execute(&env.pool)
    .await
    .unwrap();
    // A stop writes every waiting mark at once.
    api.stop().await;
    let marked = |id: &str, condition: &str| {
        format!("SELECT count(*) FROM jobs WHERE id = '{id}' AND {condition}")
    };
    assert_eq!(
        env.count(&marked(&ids[0], "publish_after IS NULL")).await,
        1
    );
    assert_eq!(
        env.count(&marked(
            &ids[1],
            "publish_after > now() + interval '23 hours'"
        ))
        .await,
        1,
        "the parked job keeps its time"
    );
    env.cleanup().await;
}

/// Over every node of a JSON plan of `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`: rows produced
/// times loops, summed.
fn rows_through(node: &serde_json::Value) -> f64 {
    let own =
        node["Actual Rows"].as_f64().unwrap_or(0.0) * node["Actual Loops"].as_f64().unwrap_or(0.0);
    own + node["Plans"]
        .as_array()
        .map_or(0.0, |plans| plans.iter().map(rows_through).sum())
}

/// A mark round of thousands of jobs, in a table of many more that Postgres has analyzed,
/// skips a row another transaction holds without waiting for it, and its plan goes over each
/// job a few times. The statement once went over the whole id array, or every locked row,
/// again for each job: about a second for 2,000 jobs, with their row locks held and workers'
/// claims of them waiting.
#[tokio::test]
async fn a_mark_round_of_thousands_of_jobs_skips_a_locked_one_and_is_linear_in_its_jobs() {
    const TABLE: i64 = 20_000;
    const JOBS: usize = 2_000;
    let mut env = TestEnv::new().await;
    env.config.worker.relay_grace = Duration::from_secs(600);
    let api = env.start(api_only()).await;
    let c = Client::new(&api, &env.key("acme").await);
    let template = submit_n(&c, 1, "template").await.remove(0);
    api.stop().await;
    let grace = env.config.worker.relay_grace;
    sqlx::query(
        "INSERT INTO jobs SELECT (jsonb_populate_record(j, jsonb_build_object(
             'id', j.id || '_' || lpad(g::text, 6, '0'), 'updated_at', now(),
             'publish_after', now() + make_interval(secs => $2)))).*
         FROM jobs j, generate_series(1, $3) g WHERE j.id = $1",
    )
    .bind(&template)
    .bind(grace.as_secs_f64())
    .bind(TABLE)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE jobs")
        .execute(&env.pool)
        .await
        .unwrap();
    let ids: Vec<String> = (5_001..5_001 + JOBS)
        .map(|g| format!("{template}_{g:06}"))
        .collect();

    // The plan, run and rolled back.
    let mut tx = env.pool.begin().await.unwrap();
    let plan: serde_json::Value = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        sluice::db::jobs::MARK_PUBLISHED
    ))
    .bind(&ids)
    .bind(grace.as_secs_f64())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let root = &plan[0]["Plan"];
    let (rows, buffers) = (
        rows_through(root),
        root["Shared Hit Blocks"].as_f64().unwrap(),
    );
    let per_job = |x: f64| x / JOBS as f64;
    assert!(
        per_job(rows) < 10.0 && per_job(buffers) < 40.0,
        "the mark went over {:.0} rows and {:.0} buffers a job: {plan:#}",
        per_job(rows),
        per_job(buffers)
    );

    // A job another transaction holds is skipped, not waited for.
    let mut holder = env.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(&ids[7])
        .execute(&mut *holder)
        .await
        .unwrap();
    let marked = tokio::time::timeout(T, sluice::db::jobs::mark_published(&env.pool, &ids, grace))
        .await
        .expect("the mark waited for the locked row")
        .unwrap();
    assert_eq!(marked, JOBS as u64 - 1, "every job but the locked one");
    holder.rollback().await.unwrap();
    let left = format!(
        "SELECT count(*) FROM jobs WHERE publish_after IS NOT NULL AND id IN ('{}')",
        ids.join("','")
    );
    assert_eq!(
        env.count(&left).await,
        1,
        "the locked job is left to the relay"
    );
    env.cleanup().await;
}
