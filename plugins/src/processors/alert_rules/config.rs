//! `[processors.NAME] type = "alert_rules"`: its options and pure
//! validation.

use std::collections::BTreeSet;
use std::time::Duration;

use flowpulse_core::plugin::{ComponentRole, FieldError, ValidateContext};
use serde::Deserialize;

use super::rule::Rule;

/// The channel that sends alerts to the WebSocket sinks: reserved, no sink
/// may take the name.
pub const DASHBOARD: &str = "dashboard";

/// `[processors.NAME] type = "alert_rules"`: evaluates rules on every
/// metrics document and emits alert notices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRulesConfig {
    /// Rules written in the config (`[[processors.NAME.rules]]`): they change
    /// only here.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// A `[stores.NAME]` whose `alert_rules` and `alerts` tables hold rules
    /// added over the API and the open alerts. Default: none.
    #[serde(default)]
    pub store: Option<String>,
    /// How long one read of the store may take before the last read is
    /// used, e.g. `"2s"` (the default).
    #[serde(default = "default_store_timeout", with = "humantime_serde")]
    pub store_timeout: Duration,
}

fn default_store_timeout() -> Duration {
    Duration::from_secs(2)
}

impl AlertRulesConfig {
    /// The channels rules may name: the notification sinks and `dashboard`.
    pub fn known_channels(cx: &ValidateContext<'_>) -> Vec<String> {
        Self::known_channels_of(cx.topology)
    }

    /// The channels rules of `topology` may name.
    pub fn known_channels_of(topology: &flowpulse_core::topology::TopologyView) -> Vec<String> {
        let mut known: Vec<String> = topology
            .components()
            .iter()
            .filter(|c| c.role == ComponentRole::Sink && c.routes_by_channel)
            .map(|c| c.name.clone())
            .collect();
        known.push(DASHBOARD.to_owned());
        known
    }

    /// Problems found without I/O, each naming its field inside the rule
    /// (`rules[2].condition.metric`).
    pub fn check(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let known = Self::known_channels(cx);
        let mut names = BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            for problem in rule.problems(&known) {
                errors.push(FieldError::new(
                    format!("rules[{i}].{}", problem.field),
                    problem.message,
                ));
            }
            if !names.insert(rule.name.as_str()) {
                errors.push(FieldError::new(
                    format!("rules[{i}].name"),
                    format!("another rule is called `{}`; names are unique", rule.name),
                ));
            }
            if rule.id.is_some() {
                errors.push(FieldError::new(
                    format!("rules[{i}].id"),
                    "is read-only: a config rule's id is a UUIDv5 of its name",
                ));
            }
        }
        if let Some(store) = &self.store {
            if let Some(e) = flowpulse_core::config::unknown_store(cx.stores, store) {
                errors.push(FieldError::new("store", e));
            }
        }
        if self.store_timeout < Duration::from_millis(10) {
            errors.push(FieldError::new("store_timeout", "must be at least 10ms"));
        }
        if cx
            .topology
            .components()
            .iter()
            .any(|c| c.name == DASHBOARD && c.role == ComponentRole::Sink)
        {
            errors.push(FieldError::new(
                "rules",
                "a sink is called `dashboard`, the reserved channel of the WebSocket sinks; rename it",
            ));
        }
        errors
    }
}
