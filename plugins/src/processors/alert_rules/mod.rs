//! `alert_rules`: evaluates alert rules on every metrics document and emits
//! alert notices (CONTRACT §3 Alert) as rules fire, repeat and resolve.

pub mod evaluator;
pub mod path;
pub mod rule;

#[cfg(test)]
mod tests;
