//! `aggregate`: workflow events → the exact `RealtimeMetrics` document.
//!
//! - `config.rs`: options, defaults and pure validation;
//! - `state.rs`: the state machine (pure, snapshot/restore/merge);
//! - `windows.rs`: event-time bucket rings for windows and history;
//! - `dedup.rs`, `table.rs`: the dedup window and the prefetchable tables;
//! - `snapshot.rs`: the versioned binary form of the state;
//! - `processor.rs`: the running processor (emission, idle time).

mod config;
mod dedup;
mod processor;
pub mod snapshot;
pub mod state;
mod table;
mod windows;

#[cfg(test)]
mod tests;

pub use config::AggregateConfig;
pub use state::{AggregateState, Limits};
