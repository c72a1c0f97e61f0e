//! Flowpulse core: the runtime that every plugin builds on.
//!
//! A pipeline is a DAG of named components (sources → processors → sinks)
//! declared in TOML. This crate parses and validates that config
//! ([`config`], [`topology`]), defines the plugin traits and registry
//! ([`plugin`]), the records that flow ([`event`], [`metrics`], [`alert`],
//! [`record`]), end-to-end acknowledgement ([`ack`]), self-telemetry
//! ([`telemetry`]), outages of what components depend on ([`outage`]) and
//! runs it all ([`runtime`]). It knows nothing of any vendor: plugins live in
//! `flowpulse-plugins`.

pub mod ack;
pub mod alert;
pub mod checkpoint;
pub mod config;
pub mod event;
pub mod metrics;
pub mod outage;
pub mod plugin;
pub mod record;
pub mod redact;
pub mod run_lock;
pub mod runtime;
pub mod state;
pub mod telemetry;
pub mod topology;

pub use async_trait::async_trait;
pub use inventory;
