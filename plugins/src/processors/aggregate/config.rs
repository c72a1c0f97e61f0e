//! Options of `aggregate`.

use std::time::Duration;

use async_trait::async_trait;
use flowpulse_core::plugin::{
    BuildContext, BuildError, FieldError, PluginDescriptor, Processor, ProcessorConfig,
    ValidateContext,
};
use flowpulse_core::record::RecordKinds;
use serde::Deserialize;

use flowpulse_core::state::ProcessorState;

use super::processor::Aggregate;
use super::state::{AggregateState, Limits};

/// `[processors.NAME] type = "aggregate"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// How often a metrics document is emitted, e.g. `"5s"` (the default).
    /// Also `next_update_in_ms` and the width of a history point.
    #[serde(default = "defaults::interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Also emit at most this often after a change (debounced), for
    /// near-real-time dashboards, e.g. `"250ms"`. Default: off.
    #[serde(default, with = "humantime_serde")]
    pub min_interval: Option<Duration>,
    /// How far (event time) events of one workflow may arrive out of order.
    /// Events are applied in event-time order once event time has passed them
    /// by this much. Default `"5s"`.
    #[serde(default = "defaults::max_out_of_order", with = "humantime_serde")]
    pub max_out_of_order: Duration,
    /// How long (event time) an event identity is remembered to drop
    /// duplicates. Default `"10m"`.
    #[serde(default = "defaults::dedup_window", with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Running workflows silent for longer than this (event time) are
    /// expired and counted in `expired_workflows`. Default `"24h"`.
    #[serde(default = "defaults::stale_after", with = "humantime_serde")]
    pub stale_after: Duration,
    /// Whether paused workflows expire too. Default `false`.
    #[serde(default)]
    pub expire_paused: bool,
    /// Most agent names reported apart; the rest are counted as `other`.
    /// Default 100.
    #[serde(default = "defaults::max_names")]
    pub max_agents: usize,
    /// Most workflow types reported apart; the rest are counted as `other`.
    /// Default 100.
    #[serde(default = "defaults::max_names")]
    pub max_workflow_types: usize,
    /// How much history (one point per `interval`) the document carries,
    /// e.g. `"1h"` (the default); `"0s"` for none.
    #[serde(default = "defaults::history", with = "humantime_serde")]
    pub history: Duration,
}

/// The longest `dedup_window`: the dedup tables keep times as 32-bit
/// offsets, which hold any window up to ~24.8 days exactly.
const MAX_DEDUP_WINDOW: Duration = Duration::from_secs(24 * 24 * 3600);

// The tables' own bound, in ms, is above it.
const _: () = assert!(MAX_DEDUP_WINDOW.as_millis() <= super::dedup::MAX_WINDOW_MS as u128);

mod defaults {
    use std::time::Duration;
    pub fn interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn max_out_of_order() -> Duration {
        Duration::from_secs(5)
    }
    pub fn dedup_window() -> Duration {
        Duration::from_secs(600)
    }
    pub fn stale_after() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub fn max_names() -> usize {
        100
    }
    pub fn history() -> Duration {
        Duration::from_secs(3600)
    }
}

inventory::submit! {
    PluginDescriptor::processor::<AggregateConfig>("aggregate", "Turns workflow events into exact live metrics (counts, rates, percentiles, windows)")
}

impl AggregateConfig {
    /// The state limits these options describe.
    pub fn limits(&self) -> Limits {
        let interval_ms = self.interval.as_millis().max(1) as i64;
        Limits {
            max_out_of_order_ms: self.max_out_of_order.as_millis() as i64,
            dedup_window_ms: self.dedup_window.as_millis() as i64,
            stale_after_ms: self.stale_after.as_millis() as i64,
            expire_paused: self.expire_paused,
            max_agents: self.max_agents,
            max_workflow_types: self.max_workflow_types,
            history_interval_ms: interval_ms,
            history_points: (self.history.as_millis() as i64 / interval_ms) as usize,
        }
    }
}

#[async_trait]
impl ProcessorConfig for AggregateConfig {
    fn validate(&self, _cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.interval < Duration::from_millis(10) {
            errors.push(FieldError::new("interval", "must be at least 10ms"));
        }
        if let Some(min) = self.min_interval {
            if min.is_zero() || min >= self.interval {
                errors.push(FieldError::new(
                    "min_interval",
                    "must be more than 0 and less than `interval`",
                ));
            }
        }
        if self.max_out_of_order > Duration::from_secs(3600) {
            errors.push(FieldError::new("max_out_of_order", "must be at most 1h"));
        }
        if self.dedup_window < self.max_out_of_order {
            errors.push(FieldError::new(
                "dedup_window",
                "must be at least `max_out_of_order`",
            ));
        }
        if self.dedup_window > MAX_DEDUP_WINDOW {
            errors.push(FieldError::new("dedup_window", "must be at most 24 days"));
        }
        if self.max_agents == 0 {
            errors.push(FieldError::new("max_agents", "must be at least 1"));
        }
        if self.max_workflow_types == 0 {
            errors.push(FieldError::new("max_workflow_types", "must be at least 1"));
        }
        if self.history > Duration::from_secs(7 * 24 * 3600) {
            errors.push(FieldError::new("history", "must be at most 7 days"));
        }
        errors
    }

    fn inputs(&self) -> RecordKinds {
        RecordKinds::EVENTS.or(RecordKinds::CUSTOM)
    }

    fn outputs(&self) -> RecordKinds {
        RecordKinds::METRICS
    }

    fn state(&self) -> Option<Box<dyn ProcessorState>> {
        Some(Box::new(AggregateState::new(self.limits())))
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Processor>, BuildError> {
        let state = AggregateState::new(self.limits());
        Ok(Box::new(Aggregate::new(self, state, cx.stats.clone())))
    }
}
