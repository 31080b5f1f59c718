//! sluice: an async, queue-driven batch gateway for LLM APIs.
//!
//! Producers submit chat-completion jobs over HTTP, AMQP or the CLI; jobs are recorded in
//! Postgres (the truth) and their ids move through RabbitMQ to a pool of workers that call the
//! providers and record each result with its priced ledger row before acknowledging.
//!
//! - [`domain`]: pure rules (validation, states, catalog, pricing, retry timing, routing).
//! - [`db`]: all SQL. [`queue`]: all AMQP names, publishing and the ingest consumer.
//! - [`worker`]: claim → call → record → ack, plus maintenance loops (rescuer, stager, relay).
//! - [`api`]: the HTTP API. [`providers`]: upstream adapters. [`mock`]: the mock provider.
//! - [`webhooks`]: signed event delivery (outbox written by triggers, `sluice deliver`).
//! - [`scheduler`]: scheduled jobs from `jobs/`. [`metrics`]: `/metrics` and spend alerts.
//! - [`app`]: wiring and the supervisor. [`cli`]: the command line. [`config`]: settings.

pub mod api;
pub mod app;
pub mod auth;
pub mod batch;
pub mod batcher;
pub mod bench;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod failpoint;
pub mod governance;
pub mod ids;
pub mod metrics;
pub mod mock;
pub mod openai_batches;
pub mod providers;
pub mod queue;
pub mod realtime;
pub mod retention;
pub mod scheduler;
pub mod submit;
pub mod supervisor;
pub mod webhooks;
pub mod worker;

/// Installs the tracing subscriber: readable logs on a terminal, JSON with `SLUICE_LOG_JSON=1`,
/// level from `RUST_LOG` (default `info`).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: a log file or pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("SLUICE_LOG_JSON").is_ok_and(|v| v == "1") {
        builder.json().init();
    } else {
        builder.init();
    }
}
