//! The built-in Flowpulse plugins: one module per plugin, each registered with
//! one `inventory::submit!`. Linking this crate is what makes them available.

pub mod checkpoint;
pub mod durable;
pub mod http;
pub mod kafka_util;
pub mod processors;
pub mod redis_util;
pub mod sinks;
pub mod sources;
pub mod stores;

/// Forces the linker to keep this crate's `inventory` registrations.
///
/// Call it once from a binary that links `flowpulse-plugins` but names
/// nothing else of it.
pub fn link() {}
