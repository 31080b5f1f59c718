//! `sluice schedules …` through the real binary.

use std::path::Path;

use crate::common::{self, TestEnv, sluice_cmd};

fn schedule_file(dir: &Path, name: &str, schedule: &str, zone: &str) {
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!(
            "name = \"{name}\"\nschedule = \"{schedule}\"\ntimezone = \"{zone}\"\ntenant = \"acme\"\n[source.jsonl]\npath = \"in/*.jsonl\"\n"
        ),
    )
    .unwrap();
}

fn next(dir: &Path, name: &str, after: &str, count: u32) -> (bool, String, String) {
    let out = sluice_cmd()
        .args([
            "schedules",
            "next",
            name,
            "--count",
            &count.to_string(),
            "--after",
            after,
            "--dir",
        ])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn next_prints_only_rfc3339_times_in_the_zone_across_dst_changes() {
    let dir = tempfile::tempdir().unwrap();
    schedule_file(dir.path(), "berlin", "30 2 * * *", "Europe/Berlin");
    schedule_file(dir.path(), "new-york", "30 1 * * *", "America/New_York");
    schedule_file(
        dir.path(),
        "berlin-half-hourly",
        "*/30 * * * *",
        "Europe/Berlin",
    );
    // Spring forward in Berlin (2027-03-28): 02:30 does not exist and does not fire.
    let (ok, stdout, stderr) = next(dir.path(), "berlin", "2027-03-26T12:00:00Z", 3);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        "2027-03-27T02:30:00+01:00\n2027-03-29T02:30:00+02:00\n2027-03-30T02:30:00+02:00\n"
    );
    // Fall back in New York (2026-11-01): 01:30 happens twice and fires once.
    let (ok, stdout, _) = next(dir.path(), "new-york", "2026-10-31T12:00:00Z", 2);
    assert!(ok);
    assert_eq!(
        stdout,
        "2026-11-01T01:30:00-04:00\n2026-11-02T01:30:00-05:00\n"
    );
    // Fall back in Berlin (2026-10-25): the repeated hour is not fired a second time.
    let (ok, stdout, _) = next(dir.path(), "berlin-half-hourly", "2026-10-25T00:15:00Z", 3);
    assert!(ok);
    assert_eq!(
        stdout,
        "2026-10-25T02:30:00+02:00\n2026-10-25T03:00:00+01:00\n2026-10-25T03:30:00+01:00\n"
    );
    let (ok, stdout, stderr) = next(dir.path(), "nope", "2026-10-25T00:15:00Z", 1);
    assert!(!ok);
    assert_eq!(stdout, "", "nothing on stdout but times");
    assert!(
        stderr.contains("no valid schedule named `nope`"),
        "{stderr}"
    );
}

#[test]
fn every_example_in_jobs_validates() {
    let out = sluice_cmd()
        .args(["schedules", "validate", "jobs"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("2 schedule(s) valid"), "{stderr}");
}

#[test]
fn validate_reports_each_bad_file_as_file_field_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    schedule_file(dir.path(), "fine", "@daily", "UTC");
    schedule_file(dir.path(), "bad-cron", "0 25 * * *", "UTC");
    schedule_file(dir.path(), "bad-zone", "@daily", "Mars/Olympus");
    std::fs::write(
        dir.path().join("typo.toml"),
        "name = \"typo\"\nschedule = \"@daily\"\ntenant = \"acme\"\ncatchup = \"once\"\n[source.jsonl]\npath = \"x\"\n",
    )
    .unwrap();
    let out = sluice_cmd()
        .args(["schedules", "validate"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let d = dir.path().display();
    for line in [
        format!("{d}/bad-cron.toml: schedule: `0 25 * * *` is not a 5-field crontab expression"),
        format!("{d}/bad-zone.toml: timezone: `Mars/Olympus` is not an IANA time zone"),
        format!("{d}/typo.toml: catchup: unknown field"),
    ] {
        assert!(stderr.contains(&line), "missing `{line}` in:\n{stderr}");
    }
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_fires_a_schedule_once_and_list_shows_its_last_run() {
    let env = TestEnv::new().await;
    env.key("ops").await;
    let work = tempfile::tempdir().unwrap();
    let config = env.write_config(work.path());
    let jobs = work.path().join("jobs");
    std::fs::create_dir_all(jobs.join("inbox")).unwrap();
    std::fs::copy("jobs/hourly-inbox.toml", jobs.join("hourly-inbox.toml")).unwrap();
    std::fs::copy("jobs/inbox/example.jsonl", jobs.join("inbox/example.jsonl")).unwrap();
    let run = |args: &[&str]| {
        let out = sluice_cmd()
            .arg("--config")
            .arg(&config)
            .args(args)
            .arg("--dir")
            .arg(&jobs)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (ok, stdout, stderr) = run(&["schedules", "run-now", "hourly-inbox"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("outcome: fired") && stdout.contains("jobs:    2"),
        "{stdout}"
    );
    let (ok, stdout, _) = run(&["schedules", "run-now", "hourly-inbox"]);
    assert!(ok);
    assert!(
        stdout.contains("outcome: empty"),
        "the file was taken once: {stdout}"
    );
    let (ok, stdout, stderr) = run(&["schedules", "list"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("hourly-inbox") && stdout.contains("@hourly"),
        "{stdout}"
    );
    assert!(stdout.contains("empty (0 jobs)"), "{stdout}");
    assert_eq!(env.count("SELECT count(*) FROM jobs").await, 2);
    common::wait_until(
        std::time::Duration::from_secs(5),
        "runs recorded",
        || async {
            env.count("SELECT count(*) FROM schedule_runs WHERE trigger = 'manual'")
                .await
                == 2
        },
    )
    .await;
    env.cleanup().await;
}
