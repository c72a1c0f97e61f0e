//! `alert_rules`: evaluates alert rules on every metrics document and emits
//! alert notices (CONTRACT §3 Alert) as rules fire, repeat and resolve.
//! Rules come from the config (`[[processors.NAME.rules]]`); the state (open
//! alerts, timers, notices not yet confirmed delivered) is checkpointed by
//! the runtime.

pub mod config;
pub mod evaluator;
pub mod path;
pub mod processor;
pub mod rule;

pub use config::AlertRulesConfig;

#[cfg(test)]
mod tests;
