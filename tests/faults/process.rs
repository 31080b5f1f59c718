//! Process faults on `sluice worker` children of the test (matrix rows 1 and 23, and a frozen
//! worker): SIGTERM, SIGKILL, SIGSTOP and SIGCONT, sent by pid.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Client, TestEnv, job, wait_until};
use crate::support::*;

/// Matrix row 23: one of two worker processes gets SIGTERM mid-run. It finishes or hands back
/// its work and exits 0; the other worker finishes the run; nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_one_of_two_workers_mid_run_loses_and_duplicates_nothing() {
    let mut env = TestEnv::new().await;
    env.config.worker.concurrency = 8;
    let api = env.start(api_and_maintenance()).await;
    let c = Client::new(&api, &env.key("acme").await);
    let mut leaving = WorkerProcess::spawn(&env);
    let mut staying = WorkerProcess::spawn(&env);
    let leaving_id = leaving.worker_id(&env).await;
    staying.worker_id(&env).await;
    // Both consume before the work arrives, so the broker spreads it over both.
    wait_until(T, "both workers consume the tenant's queue", || async {
        env.work_queue_consumers("acme").await >= 2
    })
    .await;

    let ids = c
        .submit(many(80, |i| {
            format!("two workers {i} [[mock:sleep=300ms]]")
        }))
        .await;
    wait_until(T, "the leaving worker runs jobs", || async {
        env.count(&format!(
            "SELECT count(*) FROM jobs WHERE status = 'running' AND attempted_by = '{leaving_id}'"
        ))
        .await
            > 0
    })
    .await;
    leaving.signal("TERM");
    let status = leaving.wait_exit(T).await;
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM jobs WHERE status = 'running' AND attempted_by = '{leaving_id}'"
        ))
        .await,
        0,
        "the leaving worker left nothing running"
    );

    env.wait_all_finished(T).await;
    assert_all_succeeded(&env, &ids).await;
    let rescued_from_leaving = env
        .count(&format!(
            "SELECT count(*) FROM jobs WHERE EXISTS (SELECT 1 FROM jsonb_array_elements(errors) e
               WHERE e->>'code' = 'worker_lost' AND e->>'worker' = '{leaving_id}')"
        ))
        .await;
    let twice = ids.iter().filter(|id| calls(&env, id) > 1).count();
    env.check_exactly_once(&env.mock.stats()).await;
    staying.signal("TERM");
    assert!(staying.wait_exit(T).await.success());
    api.stop().await;
    env.cleanup().await;
    assert!(
        rescued_from_leaving == 0 && twice == 0,
        "a graceful stop needs no rescue, yet {rescued_from_leaving} jobs the leaving worker was \
         still finishing were re-queued as worker_lost and {twice} jobs were called twice"
    );
}

/// A worker frozen (`kill -STOP`) for longer than the rescuer's patience is written off: its
/// jobs are re-queued and its row in `workers` is removed. When it is thawed (`kill -CONT`) it
/// must not keep claiming jobs that the rescuer then takes away from it: a job it picks up
/// after coming back runs once, like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_past_its_lease_comes_back_without_running_jobs_twice() {
    let mut env = TestEnv::new().await;
    env.config.worker.dead_after = Duration::from_secs(1);
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let frozen = WorkerProcess::spawn(&env);
    let frozen_id = frozen.worker_id(&env).await;

    // Freeze the child while it holds a job.
    let mut first: Vec<String> = Vec::new();
    let start = Instant::now();
    'held: loop {
        let prompt = format!("freeze me {} [[mock:sleep=1s]]", first.len());
        first.extend(c.submit(vec![job(&prompt)]).await);
        for _ in 0..10 {
            for id in &first {
                if running_on(&env, id, &frozen_id).await {
                    break 'held;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            start.elapsed() < T,
            "the child worker never picked up a job"
        );
    }
    frozen.signal("STOP");
    wait_until(T, "the rescuer writes the frozen worker off", || async {
        env.count(&format!(
            "SELECT count(*) FROM workers WHERE id = '{frozen_id}'"
        ))
        .await
            == 0
    })
    .await;
    env.wait_all_finished(T).await;
    frozen.signal("CONT");

    let after = c
        .submit(many(30, |i| {
            format!("after the thaw {i} [[mock:sleep=200ms]]")
        }))
        .await;
    env.wait_all_finished(T).await;
    assert_all_succeeded(&env, &first).await;
    assert_all_succeeded(&env, &after).await;
    let twice: Vec<(&String, u64)> = after
        .iter()
        .map(|id| (id, calls(&env, id)))
        .filter(|(_, n)| *n != 1)
        .collect();
    let lost = env
        .count(&format!(
            "SELECT count(*) FROM jobs WHERE id IN ({}) AND errors::text LIKE '%worker_lost%'",
            after
                .iter()
                .map(|id| format!("'{id}'"))
                .collect::<Vec<_>>()
                .join(",")
        ))
        .await;
    env.check_exactly_once(&env.mock.stats()).await;
    drop(frozen);
    app.stop().await;
    env.cleanup().await;
    assert!(
        twice.is_empty() && lost == 0,
        "jobs submitted after the thaw were taken from the thawed worker ({lost} marked \
         worker_lost) and called more than once: {twice:?}"
    );
}

/// A job whose worker dies every time it runs it (a "job of death": say its answer makes the
/// worker run out of memory) is a poison message too. Each death is an attempt the provider
/// was called for, so after `max_attempts` the job must fail instead of being rescued and run
/// again forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_keeps_dying_fails_after_its_allowed_attempts() {
    let env = TestEnv::new().await;
    let api = env.start(api_and_maintenance()).await;
    let c = Client::new(&api, &env.key("acme").await);
    let mut deadly = job_with_attempts("job of death [[mock:sleep=5s]]", 2);
    deadly["model"] = json!("openai/gpt-4o-mini");
    let (status, body) = c.post("/v1/jobs", &deadly, None).await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().unwrap().to_string();

    // Three workers in turn each die in the middle of the call.
    for death in 1..=3u64 {
        let mut worker = WorkerProcess::spawn(&env);
        let worker_id = worker.worker_id(&env).await;
        let gave_up = poll(
            T,
            "the job runs on the new worker, or has failed",
            || async {
                if env.status_of(&id).await == "failed" {
                    Some(true)
                } else if running_on(&env, &id, &worker_id).await && calls(&env, &id) == death {
                    Some(false)
                } else {
                    None
                }
            },
        )
        .await;
        if gave_up {
            break;
        }
        worker.signal("KILL");
        worker.wait_exit(T).await;
    }
    // A healthy worker: it must find the job already failed, or run it only if attempts remain.
    let healthy = env.start(worker_only()).await;
    env.wait_all_finished(T).await;
    let done = c.wait_job(&id, T).await;
    let n = calls(&env, &id);
    env.check_invariants().await;
    healthy.stop().await;
    api.stop().await;
    env.cleanup().await;
    assert!(
        n <= 2,
        "the provider was called {n} times for a job allowed 2 attempts: each worker death \
         re-queued it without counting the attempt (job ended `{}`, errors {})",
        done["status"],
        done["errors"]
    );
}

/// A claim whose commit answer is lost: the job is `running` under a live worker that never
/// started it (the worker handed the delivery back, and the redelivery was acknowledged
/// because the job looked taken). The rescuer ignores it, since the worker heartbeats. The
/// worker's own stray check re-queues it, without counting an attempt, and it runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_was_lost_is_handed_back_by_its_own_worker() {
    let env = TestEnv::new().await;
    let api = env
        .start(sluice::app::Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&api, &env.key("acme").await);
    // Accepted and published while no worker consumes, then taken by a claim whose answer
    // was lost: `running`, its delivery to be acknowledged as "taken" when it comes.
    let ids = c.submit(vec![job("stranded by a lost claim answer")]).await;
    let id = ids[0].clone();
    let stranded = sqlx::query(
        "UPDATE jobs SET status = 'running', attempt = attempt + 1, attempted_by = 'wrk_unknown',
            attempted_at = now() - interval '2 minutes', publish_after = NULL
         WHERE id = $1 AND status = 'queued'",
    )
    .bind(&id)
    .execute(&env.pool)
    .await
    .unwrap();
    assert_eq!(stranded.rows_affected(), 1);
    let workers = env.start(worker_only()).await;
    let worker: String = {
        let mut found = None;
        let started = Instant::now();
        while found.is_none() {
            assert!(started.elapsed() < T, "the worker never registered");
            // The API registers too (it claims synchronous chat completions): skip it.
            found = sqlx::query_scalar("SELECT id FROM workers WHERE id <> $1 LIMIT 1")
                .bind(&api.worker_id)
                .fetch_optional(&env.pool)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        found.unwrap()
    };
    // The claim was this live worker's.
    sqlx::query("UPDATE jobs SET attempted_by = $2 WHERE id = $1")
        .bind(&id)
        .bind(&worker)
        .execute(&env.pool)
        .await
        .unwrap();
    // The rescuer and the relay run too: the rescuer must leave the job alone (its worker
    // heartbeats), the relay publishes it once the worker hands it back.
    let maintenance = env.start(api_and_maintenance()).await;
    let done = c.wait_job(&id, T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let history = done["errors"].to_string();
    assert!(history.contains("claim_lost"), "{history}");
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM attempts WHERE job_id = '{id}'"
        ))
        .await,
        1,
        "one call, one ledger row"
    );
    env.check_exactly_once(&env.mock.stats()).await;
    maintenance.stop().await;
    workers.stop().await;
    api.stop().await;
    env.cleanup().await;
}

/// A call that completes after its worker lost the claim (here the job is re-queued under it,
/// as the rescuer does for a worker it presumed dead) was still billed by the provider. The
/// ledger books it as `discarded`, its cost is the job's, and its answer is not used; the job's
/// next attempt gives the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_completes_after_its_claim_was_lost_is_booked_as_discarded() {
    let env = TestEnv::new().await;
    let app = env.up().await;
    let c = Client::new(&app, &env.key("acme").await);
    let ids = c.submit(vec![job("slow call [[mock:sleep=2s]]")]).await;
    let id = ids[0].clone();
    wait_until(T, "the job is running", || async {
        env.count(&format!(
            "SELECT count(*) FROM jobs WHERE id = '{id}' AND status = 'running'"
        ))
        .await
            == 1
    })
    .await;
    // Taken away mid-call, as by the rescuer.
    let requeued = sqlx::query(
        "UPDATE jobs SET status = 'queued', publish_after = now(), updated_at = now()
         WHERE id = $1 AND status = 'running' AND attempt = 1",
    )
    .bind(&id)
    .execute(&env.pool)
    .await
    .unwrap();
    assert_eq!(requeued.rows_affected(), 1);

    let done = c.wait_job(&id, T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    wait_until(T, "the first call is booked", || async {
        env.count(&format!(
            "SELECT count(*) FROM attempts WHERE job_id = '{id}' AND status = 'discarded'"
        ))
        .await
            == 1
    })
    .await;
    let rows: Vec<(i32, String, rust_decimal::Decimal)> = sqlx::query_as(
        "SELECT attempt, status, cost_usd FROM attempts WHERE job_id = $1 ORDER BY attempt",
    )
    .bind(&id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].0, rows[0].1.as_str()), (1, "discarded"));
    assert_eq!((rows[1].0, rows[1].1.as_str()), (2, "succeeded"));
    assert!(
        rows[0].2 > rust_decimal::Decimal::ZERO,
        "the provider billed it"
    );
    assert_eq!(calls(&env, &id), 2);
    env.check_exactly_once(&env.mock.stats()).await;
    app.stop().await;
    env.cleanup().await;
}
