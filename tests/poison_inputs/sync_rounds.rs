//! The synchronous path's admit round (`realtime::rounds`) fed a job Postgres refuses: that job
//! alone gets the error, every other job of the round is inserted and claimed, and the loop
//! stays up.

use serde_json::json;
use sluice::app::Roles;
use sluice::realtime::rounds::{Admit, admit, admit_round};

use crate::common::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_postgres_refuses_fails_alone_and_the_rest_of_its_round_is_claimed() {
    let env = TestEnv::new().await;
    let app = env
        .start(Roles {
            api: true,
            ..Default::default()
        })
        .await;
    env.key("acme").await;
    let ctx = app.ctx.clone();
    let rows = |n: usize| {
        let jobs = (0..n)
            .map(|i| {
                json!({"route": "cheap", "body": {"model": "summarize", "max_tokens": 8,
                    "messages": [{"role": "user", "content": format!("job {i}")}]}})
            })
            .collect();
        sluice::submit::prepare(&ctx, "acme", jobs, chrono::Utc::now()).unwrap()
    };
    let item = |row| Admit {
        tenant: "acme".into(),
        row,
        hold: std::time::Duration::from_secs(600),
    };
    let mut good = rows(32);
    // Past validation (which refuses a NUL up front), as a bug could let through: jsonb
    // refuses U+0000, deterministically.
    good[13].request["messages"][0]["content"] = json!("bad \u{0} text");
    let poison = good[13].id.clone();
    let ids: Vec<String> = good.iter().map(|r| r.id.clone()).collect();
    let answers = admit_round(&ctx, &app.worker_id, good.into_iter().map(item).collect()).await;
    assert_eq!(answers.len(), 32);
    for (id, answer) in ids.iter().zip(&answers) {
        if *id == poison {
            let e = answer.as_ref().expect_err("the poison is refused");
            assert!(e.contains("could not be stored"), "{e}");
        } else {
            let claim = answer.as_ref().expect("the rest are stored");
            assert_eq!(claim.claimed.len(), 1, "{id}: {claim:?}");
            assert_eq!(claim.claimed[0].id, *id);
        }
    }
    assert_eq!(
        env.count("SELECT count(*) FROM jobs WHERE status = 'running'")
            .await,
        31
    );
    assert_eq!(
        env.count(&format!("SELECT count(*) FROM jobs WHERE id = '{poison}'"))
            .await,
        0
    );
    // The loop itself is fed the same poison among concurrent callers: it answers each and
    // stays up.
    let mut more = rows(8);
    more[3].request["messages"][0]["content"] = json!("bad \u{0} again");
    let calls: Vec<_> = more
        .into_iter()
        .map(|row| {
            let (ctx, worker) = (ctx.clone(), app.worker_id.clone());
            tokio::spawn(async move { admit(&ctx, &worker, item(row)).await })
        })
        .collect();
    let mut refused = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(claim) => assert_eq!(claim.claimed.len(), 1, "{claim:?}"),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(refused, 1);
    let ready = reqwest::get(format!("http://{}/readyz", app.api_addr.unwrap()))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    for role in ["sync_admit", "sync_record", "sync_read"] {
        assert_eq!(ready["roles"][role]["up"], true, "{ready}");
        assert_eq!(ready["roles"][role]["restarts"], 0, "{ready}");
    }
    app.stop().await;
    env.cleanup().await;
}
