//! Sinks: where records go.

pub mod alert_store;
pub mod blackhole;
pub mod console;
pub mod file;
pub mod kafka;
pub mod notify;
pub mod redis_cache;
pub mod rest;
pub mod util;
pub mod websocket;
