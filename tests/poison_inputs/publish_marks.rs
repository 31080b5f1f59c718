//! The publish-mark loop (`queue::marks`) fed ids no job can have (a NUL, which Postgres
//! refuses in text, and ids of no job): the real jobs handed over with them are still marked,
//! and the loop stays up.

use std::time::Duration;

use sluice::app::Roles;

use crate::common::{Client, TestEnv, job};

#[tokio::test]
async fn ids_no_job_can_have_leave_the_real_ones_marked_and_the_loop_up() {
    let mut env = TestEnv::new().await;
    // Long enough that the submitter's own marks do not land while the test looks.
    env.config.worker.relay_grace = Duration::from_secs(120);
    env.config.worker.publish_mark_delay = Some(Duration::from_secs(60));
    let app = env
        .start(Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let c = Client::new(&app, &env.key("acme").await);
    let ids = c.submit(vec![job("a"), job("b")]).await;
    let unmarked = "SELECT count(*) FROM jobs WHERE publish_after IS NOT NULL";
    assert_eq!(env.count(unmarked).await, 2, "marks wait for their delay");

    let ctx = app.ctx.clone();
    let poison = vec![
        "job_\u{0}nul".to_string(),
        "no such job".to_string(),
        "x".repeat(100_000),
        ids[0].clone(),
    ];
    ctx.publish_marks.mark_later(&ctx, poison).await;
    ctx.publish_marks
        .mark_later(&ctx, vec![ids[1].clone()])
        .await;
    // The loop is still waiting out the submitter's 60-second marks, which were handed over
    // first: a stop writes every waiting mark at once, and must write these too.
    app.stop().await;
    assert_eq!(env.count(unmarked).await, 0, "every real job is marked");

    // A new loop on the same database takes marks and stays up.
    let app = env
        .start(Roles {
            api: true,
            ..Default::default()
        })
        .await;
    let ctx = app.ctx.clone();
    let c = Client::new(&app, &env.key("acme").await);
    c.submit(vec![job("c")]).await;
    ctx.publish_marks
        .mark_later(&ctx, vec!["bad \u{0} again".into()])
        .await;
    let ready = reqwest::get(format!("http://{}/readyz", app.api_addr.unwrap()))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(ready["roles"]["publish_marks"]["up"], true, "{ready}");
    assert_eq!(ready["roles"]["publish_marks"]["restarts"], 0, "{ready}");
    app.stop().await;
    assert_eq!(
        env.count(unmarked).await,
        0,
        "a stop writes the waiting marks"
    );
    env.cleanup().await;
}
