//! Fault injection: the rows of the reliability matrix (`RELIABILITY.md`) that can be caused on
//! one machine without touching the shared Postgres and RabbitMQ. Broker and database faults go
//! through a TCP fault proxy in front of this test's own connections (`common::proxy`), or hit
//! only this test's database (`pg_terminate_backend`, `LOCK TABLE`); provider faults use the
//! mock's dials and prompt markers; process faults signal `sluice` children this test spawned.
//!
//! After each scenario, `TestEnv::check_exactly_once` checks the run: every accepted job is
//! terminal with exactly one result, no provider call beyond the allowed attempts, and the
//! ledger equals the jobs' costs. Every wait is bounded.
//!
//! Scenarios live in `tests/faults/`, one module per kind of fault; `support` holds the helpers.
//! Run one with `cargo test --test faults -- <part of its name>`.
//!
//! Covered elsewhere and not repeated here: a worker `kill -9`ed mid-call and one killed
//! between commit and ack (`tests/processes.rs`), a job recorded but never published (the
//! relay, `tests/pipeline.rs`).

mod common;

#[path = "faults/broker.rs"]
mod broker;
#[path = "faults/database.rs"]
mod database;
#[path = "faults/poison.rs"]
mod poison;
#[path = "faults/process.rs"]
mod process;
#[path = "faults/provider.rs"]
mod provider;
#[path = "faults/secrets.rs"]
mod secrets;
#[path = "faults/support.rs"]
mod support;
