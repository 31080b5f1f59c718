//! Operational metrics: the Prometheus recorder behind `GET /metrics`, the gauges Postgres
//! knows (refreshed by a small supervised loop), and spend alerts.

use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// `[metrics]`: the refresh loop and spend alerts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// How often gauges read from Postgres (queue depth, jobs by state, budgets…) are refreshed.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// `spend.spike` fires when an hour's spend exceeds this multiple of its trailing average.
    pub spike_multiple: Decimal,
    /// Hours the trailing average of `spend.spike` covers.
    pub spike_window_hours: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(15),
            spike_multiple: Decimal::from(3),
            spike_window_hours: 24,
        }
    }
}
