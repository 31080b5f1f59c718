//! Scheduled jobs end to end: real Postgres and RabbitMQ, time stepped through the scheduler's
//! tick function instead of waited for.

#[path = "schedules/cli.rs"]
mod cli;
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Months, Timelike, Utc};
use common::TestEnv;
use sluice::scheduler::DatabaseSource;
use sluice::scheduler::def::{self, Schedule};
use sluice::scheduler::fire::Scheduler;

const T: Duration = Duration::from_secs(60);

/// A time of the test's story: the literal's month, day and time of day, in the year after the
/// real clock's. Fire times, and the deadlines they give the jobs they create, lie ahead of the
/// real clock on whatever day the test runs (a job whose deadline has passed by the real clock
/// expires instead of running), and keep their season: a winter date stays a winter date.
fn at(s: &str) -> DateTime<Utc> {
    let t = parse(s);
    let years = u32::try_from(Utc::now().year() + 1 - t.year()).expect("a literal of a past year");
    t.checked_add_months(Months::new(12 * years)).unwrap()
}

fn parse(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A time before the real clock, as written.
fn past(s: &str) -> DateTime<Utc> {
    let t = parse(s);
    assert!(t < Utc::now(), "{s} is meant to be in the past");
    t
}

/// A test environment whose SQL sources read the test's own database under the name `src`.
async fn env_with_source() -> TestEnv {
    let mut env = TestEnv::new().await;
    let var = format!("SLUICE_TEST_SRC_{}", env.name);
    // SAFETY: a variable unique to this test, set before anything reads it.
    unsafe { std::env::set_var(&var, &env.db_url) };
    env.config.scheduler.databases.insert(
        "src".into(),
        DatabaseSource {
            url_env: var.clone(),
        },
    );
    env.config
        .scheduler
        .databases
        .insert("tickets".into(), DatabaseSource { url_env: var });
    env.config.scheduler.grace = Duration::from_secs(10);
    env
}

async fn scheduler(env: &TestEnv) -> Scheduler {
    Scheduler::new(env.ctx().await)
}

fn load(env: &TestEnv, dir: &Path) -> Vec<Schedule> {
    let (ok, bad) = def::load_dir(dir, &env.config.scheduler);
    assert!(bad.is_empty(), "{bad:?}");
    ok
}

async fn tickets_table(env: &TestEnv) {
    let sql = std::fs::read_to_string("jobs/examples/tickets.sql").unwrap();
    sqlx::raw_sql(&sql).execute(&env.pool).await.unwrap();
}

const EVERY_MINUTE: &str = r#"
schedule = "* * * * *"
tenant = "acme"
model = "summarize"
route = "cheap"
[source.sql]
database = "src"
query = "SELECT id, subject FROM tickets WHERE status <> 'spam'"
template = "Summarise: {subject}"
key = "id"
"#;

fn write_schedule(dir: &Path, name: &str, extra: &str) {
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!("name = \"{name}\"\n{extra}{EVERY_MINUTE}"),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_schedulers_with_one_stopped_at_the_fire_time_fire_each_tick_exactly_once() {
    let env = env_with_source().await;
    env.key("acme").await;
    tickets_table(&env).await;
    let dir = tempfile::tempdir().unwrap();
    write_schedule(dir.path(), "minutely", "");
    let schedules = Arc::new(load(&env, dir.path()));
    let instances = [
        Arc::new(scheduler(&env).await),
        Arc::new(scheduler(&env).await),
        Arc::new(scheduler(&env).await),
    ];
    let t0 = at("2026-11-29T06:00:00Z");
    for s in &instances {
        assert!(
            s.tick(&schedules, t0).await.is_empty(),
            "nothing is due yet"
        );
    }
    for minute in 1..=6i64 {
        let now = t0 + chrono::Duration::seconds(minute * 60 + 1);
        // The first instance is stopped mid-tick, at a different point each minute.
        let a = {
            let (s, list) = (instances[0].clone(), schedules.clone());
            tokio::spawn(async move { s.tick(&list, now).await })
        };
        let b = {
            let (s, list) = (instances[1].clone(), schedules.clone());
            tokio::spawn(async move { s.tick(&list, now).await })
        };
        let c = {
            let (s, list) = (instances[2].clone(), schedules.clone());
            tokio::spawn(async move { s.tick(&list, now).await })
        };
        tokio::time::sleep(Duration::from_millis(((minute - 1) * 7) as u64)).await;
        a.abort();
        let fired = b.await.unwrap().len() + c.await.unwrap().len();
        assert!(
            fired <= 1,
            "at most one of the survivors fired minute {minute}"
        );
        // Whoever fired (the stopped one may have committed first), the tick is taken once.
        let fire_time = t0 + chrono::Duration::minutes(minute);
        let runs = env
            .count(&format!(
                "SELECT count(*) FROM schedule_runs WHERE fire_time = '{}'",
                fire_time.to_rfc3339()
            ))
            .await;
        if runs == 0 {
            // The stopped instance held the tick and rolled back: a later tick of another
            // scheduler takes it. (An aborted task's connection lives on in this process, so
            // its locks can outlast the abort until sqlx cleans the connection up; a tick that
            // meets them gives up at lock_timeout and the next one tries again, as a running
            // scheduler would every second. A stopped process's connection closes at once.)
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let mut again = instances[1].tick(&schedules, now).await;
            while again.is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                again = instances[1].tick(&schedules, now).await;
            }
            assert_eq!(
                again.len(),
                1,
                "a rolled-back tick is taken by another scheduler"
            );
        }
    }
    let per_tick = env
        .count(
            "SELECT count(*) FROM (SELECT fire_time FROM schedule_runs GROUP BY 1 HAVING count(*) <> 1) x",
        )
        .await;
    assert_eq!(per_tick, 0, "one run per fire time");
    assert_eq!(env.count("SELECT count(*) FROM schedule_runs").await, 6);
    assert_eq!(
        env.count("SELECT count(*) FROM schedule_runs WHERE outcome = 'fired' AND batch_id IS NOT NULL AND jobs = 3").await,
        6,
        "every tick made one batch of the three non-spam tickets"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM batches WHERE source = 'schedule'")
            .await,
        6
    );
    assert_eq!(
        env.count("SELECT count(*) FROM jobs j JOIN schedule_runs r ON r.batch_id = j.batch_id WHERE j.tags->>'schedule' = 'minutely'").await,
        18
    );
    env.cleanup().await;
}

#[tokio::test]
async fn catch_up_skip_fires_nothing_for_missed_ticks_and_once_fires_one_run() {
    let env = env_with_source().await;
    env.key("acme").await;
    tickets_table(&env).await;
    let dir = tempfile::tempdir().unwrap();
    write_schedule(dir.path(), "skipper", "catch_up = \"skip\"\n");
    write_schedule(dir.path(), "oncer", "catch_up = \"once\"\n");
    let schedules = load(&env, dir.path());
    let s = scheduler(&env).await;
    let t0 = at("2026-11-29T06:00:00Z");
    assert!(s.tick(&schedules, t0).await.is_empty());
    // Down for five and a half minutes (grace is 10 s).
    let back = at("2026-11-29T06:05:30Z");
    let mut fired = s.tick(&schedules, back).await;
    fired.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(fired[0].0, "oncer");
    assert_eq!(fired[0].1.outcome, "fired");
    assert_eq!(fired[0].1.jobs, 3);
    assert_eq!(fired[1].0, "skipper");
    assert_eq!(fired[1].1.outcome, "skipped");
    assert!(fired[1].1.batch_id.is_none());
    let runs = sluice::db::schedules::runs(&env.pool, "oncer", 10)
        .await
        .unwrap();
    assert_eq!(runs.len(), 1, "one run for five missed ticks");
    assert_eq!(runs[0].trigger, "catch_up");
    assert_eq!(runs[0].fire_time, at("2026-11-29T06:05:00Z"));
    assert!(
        s.tick(&schedules, at("2026-11-29T06:05:40Z"))
            .await
            .is_empty()
    );
    // Back on time: both fire the next tick as usual.
    let next = s.tick(&schedules, at("2026-11-29T06:06:02Z")).await;
    assert_eq!(next.len(), 2);
    assert!(
        next.iter()
            .all(|(_, r)| r.outcome == "fired" && r.jobs == 3)
    );
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT trigger FROM schedule_runs WHERE fire_time = $1 ORDER BY schedule",
    )
    .bind(at("2026-11-29T06:06:00Z"))
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(triggers, ["cron", "cron"]);
    assert_eq!(
        env.count("SELECT count(*) FROM batches WHERE source = 'schedule'")
            .await,
        3
    );
    env.cleanup().await;
}

/// Copies the repository's example schedules (and inbox) into a scratch folder.
fn copy_examples(to: &Path) {
    for f in ["nightly-ticket-summary.toml", "hourly-inbox.toml"] {
        std::fs::copy(Path::new("jobs").join(f), to.join(f)).unwrap();
    }
    std::fs::create_dir_all(to.join("inbox")).unwrap();
    std::fs::copy("jobs/inbox/example.jsonl", to.join("inbox/example.jsonl")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_nightly_ticket_example_takes_only_rows_past_its_watermark_and_they_run() {
    let env = env_with_source().await;
    env.key("support").await;
    tickets_table(&env).await;
    let dir = tempfile::tempdir().unwrap();
    copy_examples(dir.path());
    let schedules: Vec<Schedule> = load(&env, dir.path())
        .into_iter()
        .filter(|s| s.def.name == "nightly-ticket-summary")
        .collect();
    let running = env.up().await;
    let s = scheduler(&env).await;
    // 02:00 in Berlin is 01:00 UTC in winter.
    assert!(
        s.tick(&schedules, at("2026-11-29T12:00:00Z"))
            .await
            .is_empty()
    );
    let first = s.tick(&schedules, at("2026-11-30T01:00:03Z")).await;
    assert_eq!(first.len(), 1);
    let run = &first[0].1;
    assert_eq!((run.outcome, run.jobs), ("fired", 3), "{run:?}");
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT custom_id FROM jobs WHERE batch_id = $1 ORDER BY custom_id")
            .bind(&run.batch_id)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        ids,
        ["1", "2", "3"],
        "the spam ticket is left out by the query"
    );
    let prompt: String = sqlx::query_scalar(
        "SELECT request->'messages'->1->>'content' FROM jobs WHERE batch_id = $1 AND custom_id = '1'",
    )
    .bind(&run.batch_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        prompt.starts_with("Ticket #1 from acme: Cannot log in"),
        "{prompt}"
    );
    env.wait_all_finished(T).await;
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
            .await,
        3
    );

    // One new ticket and one edited: the next night takes exactly those two.
    sqlx::raw_sql(
        "INSERT INTO tickets (customer, subject, body) VALUES ('umbrella', 'Password reset loops', 'The reset link sends me back to the reset page.');
         UPDATE tickets SET body = body || ' Still happening.', updated_at = now() WHERE id = 2;",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let second = s.tick(&schedules, at("2026-12-01T01:00:02Z")).await;
    assert_eq!((second[0].1.outcome, second[0].1.jobs), ("fired", 2));
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT custom_id FROM jobs WHERE batch_id = $1 ORDER BY custom_id")
            .bind(&second[0].1.batch_id)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(ids, ["2", "5"]);
    // Nothing new: the run is recorded as empty, with no batch.
    let third = s.tick(&schedules, at("2026-12-02T01:00:02Z")).await;
    assert_eq!((third[0].1.outcome, third[0].1.jobs), ("empty", 0));
    env.wait_all_finished(T).await;
    running.stop().await;
    env.check_invariants().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hourly_inbox_example_takes_each_file_once_and_sets_a_bad_file_aside() {
    let env = env_with_source().await;
    env.key("ops").await;
    let dir = tempfile::tempdir().unwrap();
    copy_examples(dir.path());
    let schedules: Vec<Schedule> = load(&env, dir.path())
        .into_iter()
        .filter(|s| s.def.name == "hourly-inbox")
        .collect();
    let running = env.up().await;
    let s = scheduler(&env).await;
    assert!(
        s.tick(&schedules, at("2026-11-29T06:10:00Z"))
            .await
            .is_empty()
    );
    let first = s.tick(&schedules, at("2026-11-29T07:00:01Z")).await;
    assert_eq!(
        (first[0].1.outcome, first[0].1.jobs),
        ("fired", 2),
        "{first:?}"
    );
    let tags: serde_json::Value =
        sqlx::query_scalar("SELECT tags FROM jobs WHERE custom_id = 'inbox-2'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        tags,
        serde_json::json!({"feature": "inbox", "workflow": "hourly-sweep", "schedule": "hourly-inbox", "user": "u-42"})
    );

    let inbox = dir.path().join("inbox");
    std::fs::write(
        inbox.join("b.jsonl"),
        "{\"custom_id\": \"b-1\", \"body\": {\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}}\n",
    )
    .unwrap();
    std::fs::write(
        inbox.join("c.jsonl"),
        "{\"custom_id\": \"c-1\"}\nnot json\n",
    )
    .unwrap();
    std::fs::write(
        inbox.join("d.jsonl"),
        "{\"custom_id\": \"d-1\", \"model\": \"no-such-model\", \"body\": {\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}}\n",
    )
    .unwrap();
    let second = s.tick(&schedules, at("2026-11-29T08:00:01Z")).await;
    let run = &second[0].1;
    assert_eq!((run.outcome, run.jobs), ("fired", 1), "{run:?}");
    let note = run.error.clone().unwrap();
    assert!(note.contains("c.jsonl: line 2: not JSON"), "{note}");
    assert!(note.contains("d.jsonl:1: model"), "{note}");
    let set_aside = env
        .count("SELECT count(*) FROM schedule_files WHERE error IS NOT NULL")
        .await;
    assert_eq!(set_aside, 2, "bad files are set aside, not retried");
    let third = s.tick(&schedules, at("2026-11-29T09:00:01Z")).await;
    assert_eq!((third[0].1.outcome, third[0].1.jobs), ("empty", 0));
    env.wait_all_finished(T).await;
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
            .await,
        3
    );
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_schedules_fail_alone_are_retried_next_tick_and_the_loop_keeps_running() {
    let mut env = env_with_source().await;
    env.key("acme").await;
    tickets_table(&env).await;
    let dir = tempfile::tempdir().unwrap();
    write_schedule(dir.path(), "good", "");
    let bad_sql = EVERY_MINUTE.replace(
        "SELECT id, subject FROM tickets WHERE status <> 'spam'",
        "SELECT id, 'x' || chr(0) AS subject FROM tickets",
    );
    std::fs::write(
        dir.path().join("nul.toml"),
        format!("name = \"nul\"\n{bad_sql}"),
    )
    .unwrap();
    let huge = EVERY_MINUTE.replace(
        "SELECT id, subject FROM tickets WHERE status <> 'spam'",
        "SELECT id, CASE WHEN id = 1 THEN repeat('x', 400000) ELSE subject END AS subject FROM tickets WHERE status <> 'spam'",
    );
    std::fs::write(
        dir.path().join("huge.toml"),
        format!("name = \"huge\"\n{huge}"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("nobody.toml"),
        format!(
            "name = \"nobody\"\n{}",
            EVERY_MINUTE.replace("acme", "ghost")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("broken.toml"),
        "name = \"broken\"\nschedule = [",
    )
    .unwrap();
    let (schedules, bad) = def::load_dir(dir.path(), &env.config.scheduler);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(schedules.len(), 4);
    let s = scheduler(&env).await;
    // In the past, so that the real loop started below finds ticks it missed.
    let t0 = past("2026-01-01T06:00:00Z");
    s.tick(&schedules, t0).await;
    for minute in 1..=2 {
        let out = s
            .tick(&schedules, t0 + chrono::Duration::seconds(minute * 60 + 1))
            .await;
        let by_name = |n: &str| out.iter().find(|(name, _)| name == n).unwrap().1.clone();
        assert_eq!(
            (by_name("good").outcome, by_name("good").jobs),
            ("fired", 3)
        );
        assert_eq!(by_name("nul").outcome, "failed");
        assert!(by_name("nul").error.unwrap().contains("database `src`"));
        assert_eq!(by_name("nobody").outcome, "failed");
        assert!(
            by_name("nobody")
                .error
                .unwrap()
                .contains("tenant `ghost` does not exist")
        );
        let huge = by_name("huge");
        assert_eq!(
            (huge.outcome, huge.jobs),
            ("fired", 2),
            "the huge row is set aside"
        );
        assert!(huge.error.unwrap().contains("row id=1: larger than"));
    }
    // The real loop, supervised, over the same folder: it keeps ticking and is never restarted.
    env.config.scheduler.dir = dir.path().to_path_buf();
    env.config.scheduler.tick = Duration::from_millis(50);
    let running = env
        .start(sluice::app::Roles {
            scheduler: true,
            ..Default::default()
        })
        .await;
    // Every schedule missed ticks since January: the loop records them skipped, poison or not.
    common::wait_until(T, "the loop handles every valid schedule", || async {
        env.count("SELECT count(DISTINCT schedule) FROM schedule_runs WHERE outcome = 'skipped'")
            .await
            == 4
    })
    .await;
    let health = running.ctx.health.snapshot();
    let role = health.get("scheduler").unwrap();
    assert!(role.up && role.restarts == 0, "{role:?}");
    running.stop().await;
    env.cleanup().await;
}

/// Three real `sluice scheduler` processes on one database; one is killed (SIGKILL) at the fire
/// time. The tick fires exactly once: one run, one batch, one job per source row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_scheduler_processes_with_one_killed_at_the_fire_time_fire_the_tick_once() {
    let mut env = env_with_source().await;
    env.config.scheduler.tick = Duration::from_millis(200);
    env.key("acme").await;
    tickets_table(&env).await;
    let rows = env
        .count("SELECT count(*) FROM tickets WHERE status <> 'spam'")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let jobs_dir = dir.path().join("jobs");
    std::fs::create_dir(&jobs_dir).unwrap();
    write_schedule(&jobs_dir, "minutely", "");
    let config = env.write_config(dir.path());
    let spawn = || {
        common::ChildGuard(
            common::sluice_cmd()
                .arg("--config")
                .arg(&config)
                .arg("scheduler")
                .arg("--dir")
                .arg(&jobs_dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut procs = [spawn(), spawn(), spawn()];
    // The next minute at least 5 s away, so all three are running before it.
    let now = Utc::now();
    let mut fire = now
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap()
        + chrono::Duration::minutes(1);
    if fire - now < chrono::Duration::seconds(5) {
        fire += chrono::Duration::minutes(1);
    }
    tokio::time::sleep((fire - Utc::now()).to_std().unwrap_or_default()).await;
    procs[0].0.kill().unwrap();
    let _ = procs[0].0.wait();
    let sql = format!(
        "SELECT count(*) FROM schedule_runs WHERE fire_time = '{}' AND batch_id IS NOT NULL",
        fire.to_rfc3339()
    );
    common::wait_until(T, "the tick fires", || {
        let env = &env;
        let sql = sql.clone();
        async move { env.count(&sql).await >= 1 }
    })
    .await;
    // Five more ticks of the survivors (200 ms each): none may take the tick again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rows > 0);
    assert_eq!(env.count(&sql).await, 1, "one run for the tick");
    let jobs = env
        .count(&format!(
            "SELECT count(*) FROM jobs WHERE batch_id IN (SELECT batch_id FROM schedule_runs WHERE fire_time = '{}')",
            fire.to_rfc3339()
        ))
        .await;
    assert_eq!(jobs, rows, "one job per source row, none twice");
    drop(procs);
    env.cleanup().await;
}
