//! `aggregate`: workflow events → the exact `RealtimeMetrics` document.
//!
//! - `config.rs`: options, defaults and pure validation;
//! - `state.rs`: the state and folding events into it (pure);
//! - `lifecycle.rs`: applying events to workflows, per-type and per-agent
//!   statistics; `reorder.rs`: events held for the watermark;
//! - `names.rs`: interned, capped names; `render.rs`: the document;
//!   `merge.rs`: adding a partition's state;
//! - `windows.rs`: event-time bucket rings for windows and history;
//! - `dedup.rs`, `table.rs`: the dedup window and the prefetchable tables;
//! - `snapshot.rs`: the versioned binary form of the state;
//! - `processor.rs`: the running processor (emission, idle time).

mod config;
mod dedup;
mod lifecycle;
mod merge;
mod names;
mod processor;
mod render;
mod reorder;
mod slots;
pub mod snapshot;
pub mod state;
mod table;
mod windows;
mod wire;

#[cfg(test)]
mod clock_tests;
#[cfg(test)]
mod late_tests;
#[cfg(test)]
mod oracle;
#[cfg(test)]
mod tests;

pub use config::AggregateConfig;
pub use state::{AggregateState, Limits};
