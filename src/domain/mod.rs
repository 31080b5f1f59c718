//! Pure types and rules: no I/O here. Job validation and states, the model catalog, prices and
//! costs, retry timing and error classes, routing, circuit breakers, structured-output checks.
//! I/O modules call these; these call nothing.

pub mod bounds;
pub mod breaker;
pub mod budget;
pub mod cache;
pub mod catalog;
pub mod cron;
pub mod fit;
pub mod job;
pub mod openai_batch;
pub mod pricing;
pub mod redact;
pub mod retry;
pub mod routing;
pub mod schema;
pub mod state;
pub mod text;
pub mod tokens;
