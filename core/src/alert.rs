//! Alert notices: what alert processors emit and notification sinks deliver.

use serde::{Deserialize, Serialize};

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

impl Severity {
    /// `critical`, `warning` or `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl AlertStatus {
    /// `triggered`, `acknowledged` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Triggered => "triggered",
            AlertStatus::Acknowledged => "acknowledged",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// The namespace of notice ids (UUIDv5 of the alert id, status and repeat).
const NOTICE_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6d1f_93a4_2c57_4e0b_9a61_3f0c_8b2e_d745);

/// The id of the notice about `alert_id` at `status` and `repeat`
/// (CONTRACT §3): the same notice sent again keeps it, so every receiver
/// can take a repeated one as a no-op.
pub fn notice_id(alert_id: &str, status: AlertStatus, repeat: u32) -> String {
    let name = format!("{alert_id}/{}/{repeat}", status.as_str());
    uuid::Uuid::new_v5(&NOTICE_NAMESPACE, name.as_bytes()).to_string()
}

/// One firing of one rule for one instance, from trigger to resolve, as
/// every notice about it carries it (CONTRACT §3 Alert; the `alerts` row of
/// §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    /// UUID of the alert.
    pub id: String,
    /// UUID of the rule that fired it.
    pub rule_id: String,
    /// Name of that rule.
    pub rule_name: String,
    /// What a rule with `*` fired for (an agent type, a workflow type, a
    /// custom key); `""` for a rule without `*`.
    #[serde(default)]
    pub instance: String,
    /// The rule's severity when it fired.
    pub severity: Severity,
    /// Lifecycle state; `resolved` is final.
    pub status: AlertStatus,
    /// The rule's message template, filled in.
    pub message: String,
    /// The concrete path evaluated, e.g. `agents[scaffold].success_rate_percent`.
    #[serde(default)]
    pub metric: String,
    /// The rule's operator: `>`, `<`, `>=`, `<=`, `==`, `!=`.
    #[serde(default)]
    pub operator: String,
    /// The rule's threshold.
    #[serde(default)]
    pub threshold: f64,
    /// The metric in the document that caused this notice (`None`: no value,
    /// e.g. the instance left the document).
    #[serde(default)]
    pub value: Option<f64>,
    /// The values that fired it, and `as_of`.
    pub data: serde_json::Value,
    /// The rule's channels when this notice was made.
    #[serde(default)]
    pub channels: Vec<String>,
    /// From the rule.
    #[serde(default)]
    pub runbook_url: Option<String>,
    /// The rule was muted: notification sinks skip this notice.
    #[serde(default)]
    pub muted: bool,
    /// 0 for the first `alert:triggered`; n for the n-th re-notification.
    #[serde(default)]
    pub repeat: u32,
    /// This notice: UUIDv5 of `id`, `status` and `repeat` ([`notice_id`]).
    #[serde(default)]
    pub notice_id: String,
    /// Event time (RFC 3339) of the document that caused this notice.
    #[serde(default)]
    pub as_of: String,
    /// When it fired (wall clock, RFC 3339 UTC).
    pub created_at: String,
    /// RFC 3339 UTC, once acknowledged.
    pub acknowledged_at: Option<String>,
    /// Who acknowledged it (`api` or `api:NAME`).
    #[serde(default)]
    pub acknowledged_by: Option<String>,
    /// Until when the acknowledgement holds; past it an alert still firing
    /// is notified again and returns to `triggered`.
    #[serde(default)]
    pub acknowledged_until: Option<String>,
    /// RFC 3339 UTC, once resolved.
    pub resolved_at: Option<String>,
    /// `rule`, `api` or `api:NAME`.
    #[serde(default)]
    pub resolved_by: Option<String>,
}

impl Alert {
    /// The id of this notice, from `id`, `status` and `repeat`.
    pub fn notice_id(&self) -> String {
        notice_id(&self.id, self.status, self.repeat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_id_is_stable_and_differs_by_status_and_repeat() {
        let id = "0b6a3c52-8e7f-5d1a-9c34-7a2f1e0d4b68";
        let first = notice_id(id, AlertStatus::Triggered, 0);
        assert_eq!(first, notice_id(id, AlertStatus::Triggered, 0));
        assert_ne!(first, notice_id(id, AlertStatus::Triggered, 1));
        assert_ne!(first, notice_id(id, AlertStatus::Resolved, 0));
        assert_eq!(uuid::Uuid::parse_str(&first).unwrap().get_version_num(), 5);
    }
}
