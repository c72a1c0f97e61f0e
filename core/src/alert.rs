//! Alert notices: what alert processors emit and notification sinks deliver.

use serde::{Deserialize, Serialize};

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Someone must act now.
    Critical,
    /// Worth a look soon.
    Warning,
    /// For the record.
    Info,
}

/// Where an alert is in its lifecycle: triggered → acknowledged → resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// The rule's condition holds.
    Triggered,
    /// A person has seen it.
    Acknowledged,
    /// The condition no longer holds, or a person closed it.
    Resolved,
}

impl AlertStatus {
    /// The WebSocket message type announcing this status (CONTRACT §3).
    pub fn message_type(self) -> &'static str {
        match self {
            AlertStatus::Triggered => "alert:triggered",
            AlertStatus::Acknowledged => "alert:acknowledged",
            AlertStatus::Resolved => "alert:resolved",
        }
    }
}

/// An alert as stored in the `alerts` table and sent to sinks (CONTRACT §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// UUID of the alert.
    pub id: String,
    /// UUID of the rule that fired it.
    pub rule_id: String,
    /// Name of that rule.
    pub rule_name: String,
    /// Copied from the rule.
    pub severity: Severity,
    /// Human-readable description of what fired.
    pub message: String,
    /// The metric values that fired it.
    pub data: serde_json::Value,
    /// Lifecycle state.
    pub status: AlertStatus,
    /// Sink names to notify (the rule's channels).
    #[serde(default)]
    pub channels: Vec<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC, once acknowledged.
    pub acknowledged_at: Option<String>,
    /// RFC 3339 UTC, once resolved.
    pub resolved_at: Option<String>,
}
