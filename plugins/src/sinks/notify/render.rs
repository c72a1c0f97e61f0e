//! The facts of a notice as people read them, shared by the Slack message
//! and the email.

use flowpulse_core::alert::{Alert, AlertStatus, Severity};

use crate::processors::alert_rules::rule::format_number;

/// A notice's facts, in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// `:red_circle:` and the like, by severity (a check mark once resolved).
    pub emoji: &'static str,
    /// `CRITICAL`, `WARNING`, `INFO`.
    pub severity: &'static str,
    /// `Triggered`, `Triggered again (2)`, `Acknowledged`, `Resolved`.
    pub status: String,
    /// `rule` or `rule (instance)`.
    pub title: String,
    /// The rule's message, filled in.
    pub message: String,
    /// `agents[scaffold].success_rate_percent = 71.5 (< 80)`.
    pub value: String,
    /// When it fired (RFC 3339).
    pub since: String,
    /// Who acknowledged or resolved it, and when, if anyone has.
    pub by: Option<String>,
    /// The rule's runbook.
    pub runbook_url: Option<String>,
}

impl Facts {
    /// The facts of `alert`.
    pub fn of(alert: &Alert) -> Facts {
        let severity = match alert.severity {
            Severity::Critical => "CRITICAL",
            Severity::Warning => "WARNING",
            Severity::Info => "INFO",
        };
        let emoji = match (alert.status, alert.severity) {
            (AlertStatus::Resolved, _) => ":white_check_mark:",
            (AlertStatus::Acknowledged, _) => ":eyes:",
            (_, Severity::Critical) => ":red_circle:",
            (_, Severity::Warning) => ":warning:",
            (_, Severity::Info) => ":information_source:",
        };
        let status = match alert.status {
            AlertStatus::Triggered if alert.repeat > 0 => {
                format!("Triggered again ({})", alert.repeat)
            }
            AlertStatus::Triggered => "Triggered".to_owned(),
            AlertStatus::Acknowledged => "Acknowledged".to_owned(),
            AlertStatus::Resolved => "Resolved".to_owned(),
        };
        let title = if alert.instance.is_empty() {
            alert.rule_name.clone()
        } else {
            format!("{} ({})", alert.rule_name, alert.instance)
        };
        let shown = match alert.value {
            Some(v) => format_number(v),
            None => "no value".to_owned(),
        };
        let value = format!(
            "{} = {shown} ({} {})",
            alert.metric,
            alert.operator,
            format_number(alert.threshold)
        );
        let by = match alert.status {
            AlertStatus::Resolved => Some(format!(
                "resolved by {} at {}",
                alert.resolved_by.as_deref().unwrap_or("rule"),
                alert.resolved_at.as_deref().unwrap_or("?")
            )),
            _ => alert.acknowledged_by.as_ref().map(|who| {
                let until = alert
                    .acknowledged_until
                    .as_deref()
                    .map(|u| format!(" until {u}"))
                    .unwrap_or_default();
                format!(
                    "acknowledged by {who} at {}{until}",
                    alert.acknowledged_at.as_deref().unwrap_or("?")
                )
            }),
        };
        Facts {
            emoji,
            severity,
            status,
            title,
            message: alert.message.clone(),
            value,
            since: alert.created_at.clone(),
            by,
            runbook_url: alert.runbook_url.clone(),
        }
    }
}

/// `&`, `<`, `>` escaped, as Slack's mrkdwn asks.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Text escaped for HTML element content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A notice for rendering tests: an agent's success rate below 80.
    pub fn sample() -> Alert {
        serde_json::from_value(serde_json::json!({
            "id": "5f0c1e2a-3b4d-4c5e-8f60-718293a4b5c6",
            "rule_id": "0b6a3c52-8e7f-5d1a-9c34-7a2f1e0d4b68",
            "rule_name": "agent success rate",
            "instance": "scaffold",
            "severity": "critical",
            "status": "triggered",
            "message": "scaffold succeeds <80% of tasks",
            "metric": "agents[scaffold].success_rate_percent",
            "operator": "<",
            "threshold": 80.0,
            "value": 71.5,
            "data": {"as_of": "2026-11-30T10:00:00.000Z"},
            "channels": ["ops"],
            "runbook_url": "https://runbooks.example.com/agents",
            "muted": false,
            "repeat": 0,
            "notice_id": "9d3c8f4e-2a1b-5c6d-8e7f-0a1b2c3d4e5f",
            "as_of": "2026-11-30T10:00:00.000Z",
            "created_at": "2026-11-30T10:00:01.000Z",
            "acknowledged_at": null,
            "resolved_at": null
        }))
        .unwrap()
    }

    #[test]
    fn facts_of_a_triggered_and_a_resolved_notice() {
        let a = sample();
        let f = Facts::of(&a);
        assert_eq!(f.emoji, ":red_circle:");
        assert_eq!(f.title, "agent success rate (scaffold)");
        assert_eq!(
            f.value,
            "agents[scaffold].success_rate_percent = 71.5 (< 80)"
        );
        assert_eq!(f.by, None);
        let r = Alert {
            status: AlertStatus::Resolved,
            resolved_by: Some("api:alice".into()),
            resolved_at: Some("2026-11-30T10:05:00.000Z".into()),
            ..a
        };
        let f = Facts::of(&r);
        assert_eq!(f.emoji, ":white_check_mark:");
        assert_eq!(
            f.by.as_deref(),
            Some("resolved by api:alice at 2026-11-30T10:05:00.000Z")
        );
    }

    #[test]
    fn numbers_and_escapes() {
        assert_eq!(format_number(80.0), "80");
        assert_eq!(format_number(71.25), "71.25");
        assert_eq!(format_number(0.1 + 0.2), "0.3");
        assert_eq!(slack_escape("a<b>&c"), "a&lt;b&gt;&amp;c");
        assert_eq!(
            html_escape("<script>\"x\"&'y'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;"
        );
    }
}
