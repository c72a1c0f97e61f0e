//! Processors: what turns events into metrics, alerts and custom values.

pub mod aggregate;
pub mod alert_rules;
pub mod passthrough;
pub mod stage_failures;
