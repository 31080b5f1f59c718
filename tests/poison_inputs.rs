//! Inputs that must never stop work (issue 8, the input side): an overflowing deadline, a NUL
//! or other text Postgres cannot store, unbounded `max_tokens` / `n`, jobs that could never fit
//! a budget, credential headers in any casing, reused message ids, and every error answer the
//! API can give. Each poison input is refused with a reason naming the field (a 422, a message
//! in `sluice.jobs.rejected`, a CLI error) while everything around it proceeds.
//!
//! Run one with `cargo test --test poison_inputs -- <part of its name>`.

mod common;

#[path = "poison_inputs/amqp.rs"]
mod amqp;
#[path = "poison_inputs/api_errors.rs"]
mod api_errors;
#[path = "poison_inputs/cli.rs"]
mod cli;
#[path = "poison_inputs/http.rs"]
mod http;
#[path = "poison_inputs/publish_marks.rs"]
mod publish_marks;
#[path = "poison_inputs/setup.rs"]
mod setup;
#[path = "poison_inputs/sync_rounds.rs"]
mod sync_rounds;

use std::time::Duration;

use lapin::message::Delivery;

use common::TestEnv;

/// The longest any single wait in these tests may take.
pub const T: Duration = Duration::from_secs(45);

/// Takes `n` messages from this environment's rejected queue, waiting for each at most `T`,
/// and then checks that no further message is there.
pub async fn rejected(env: &TestEnv, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    let start = std::time::Instant::now();
    while got.len() < n {
        match env.get_message("sluice.jobs.rejected").await {
            Some(d) => got.push(d),
            None => {
                assert!(
                    start.elapsed() < T,
                    "only {} of {n} messages reached sluice.jobs.rejected in {T:?}",
                    got.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    got
}

/// The reason sluice gave for rejecting a message.
pub fn reason(d: &Delivery) -> String {
    sluice::queue::header_text(d.properties.headers(), "sluice-reject-reason").unwrap_or_default()
}
