//! `slack`: Block Kit messages to an incoming webhook, at most one a second,
//! the notices that wait meanwhile coalesced into one message.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowpulse_core::alert::Alert;
use flowpulse_core::plugin::{
    BuildContext, BuildError, FieldError, PluginDescriptor, Sink, SinkConfig, ValidateContext,
};
use flowpulse_core::record::RecordKinds;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use super::render::{slack_escape, Facts};
use super::retry::DeliveryError;
use super::secret::{check_http_url, SecretUrl};
use super::{http, notify_sink_config, Channel};

/// Slack accepts about one message a second per incoming webhook.
const MESSAGE_INTERVAL: Duration = Duration::from_secs(1);

/// Notices listed in one message; the rest are counted ("and N more").
pub const MAX_LISTED: usize = 20;

notify_sink_config! {
    /// `[sinks.NAME] type = "slack"`.
    pub struct SlackConfig {
        /// The incoming webhook (`https://hooks.slack.com/services/…`).
        /// Never logged: its path is the secret.
        pub webhook_url: SecretUrl,
        /// A link to the dashboard, shown in every message.
        #[serde(default)]
        pub dashboard_url: Option<String>,
    }
}

inventory::submit! {
    PluginDescriptor::sink::<SlackConfig>("slack", "Posts alert notices to a Slack incoming webhook (Block Kit), coalesced, from a durable outbox")
}

#[async_trait]
impl SinkConfig for SlackConfig {
    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors = self.shared().validate(cx);
        if let Err(e) = check_http_url(self.webhook_url.expose()) {
            errors.push(FieldError::new("webhook_url", e));
        }
        if let Some(url) = &self.dashboard_url {
            if let Err(e) = check_http_url(url) {
                errors.push(FieldError::new("dashboard_url", e));
            }
        }
        errors
    }

    fn inputs(&self) -> RecordKinds {
        RecordKinds::ALERTS
    }

    fn routes_by_channel(&self) -> bool {
        true
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        let shared = self.shared();
        let channel = SlackChannel {
            client: http::client(shared.timeout).map_err(BuildError)?,
            url: self.webhook_url.clone(),
            dashboard_url: self.dashboard_url.clone(),
        };
        super::build(cx, &shared, Arc::new(channel)).await
    }
}

struct SlackChannel {
    client: reqwest::Client,
    url: SecretUrl,
    dashboard_url: Option<String>,
}

/// A link in Slack's mrkdwn.
fn link(url: &str, label: &str) -> String {
    format!("<{}|{}>", slack_escape(url), slack_escape(label))
}

/// The section describing one notice.
fn section(facts: &Facts) -> Value {
    let mut text = format!(
        "{} *{}* [{}] {}\n{}\n`{}`\nsince {}",
        facts.emoji,
        slack_escape(&facts.title),
        facts.severity,
        facts.status,
        slack_escape(&facts.message),
        slack_escape(&facts.value),
        facts.since,
    );
    if let Some(by) = &facts.by {
        text.push_str(&format!("\n{}", slack_escape(by)));
    }
    if let Some(runbook) = &facts.runbook_url {
        text.push_str(&format!("\n{}", link(runbook, "Runbook")));
    }
    json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&text, SECTION_MAX)}})
}

/// Slack refuses a section over 3,000 characters (and with it every notice
/// coalesced in the message): a long message template is cut.
const SECTION_MAX: usize = 2_900;

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The incoming-webhook payload for `notices` (in order): `text` for
/// notifications and clients without blocks, and Block Kit blocks.
pub fn payload(notices: &[Arc<Alert>], dashboard_url: Option<&str>) -> Value {
    let facts: Vec<Facts> = notices.iter().map(|a| Facts::of(a)).collect();
    let text = match facts.as_slice() {
        [one] => format!(
            "{} [{}] {}: {} — {}",
            one.emoji, one.severity, one.status, one.title, one.message
        ),
        many => format!("{} alert notices", many.len()),
    };
    let mut blocks = Vec::new();
    if facts.len() > 1 {
        blocks.push(json!({
            "type": "header",
            "text": {"type": "plain_text", "text": format!("{} alert notices", facts.len())}
        }));
    }
    for f in facts.iter().take(MAX_LISTED) {
        blocks.push(section(f));
    }
    if facts.len() > MAX_LISTED {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": format!("and {} more", facts.len() - MAX_LISTED)}]
        }));
    }
    if let Some(url) = dashboard_url {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": link(url, "Open the dashboard")}]
        }));
    }
    json!({"text": slack_escape(&text), "blocks": blocks})
}

#[async_trait]
impl Channel for SlackChannel {
    async fn deliver(&self, notices: &[Arc<Alert>]) -> Result<(), DeliveryError> {
        let body =
            serde_json::to_vec(&payload(notices, self.dashboard_url.as_deref())).map_err(|e| {
                DeliveryError::Refused {
                    reason: format!("cannot encode the message: {e}"),
                }
            })?;
        http::post_json(&self.client, self.url.expose(), HeaderMap::new(), body).await
    }

    fn coalesce(&self) -> Option<Duration> {
        Some(MESSAGE_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::notify::render::tests::sample;

    #[test]
    fn one_notice_is_one_section_with_the_facts() {
        let p = payload(&[Arc::new(sample())], Some("https://fp.example/"));
        let text = p["text"].as_str().unwrap();
        assert!(
            text.contains("[CRITICAL] Triggered: agent success rate (scaffold)"),
            "{text}"
        );
        let blocks = p["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 2);
        let section = blocks[0]["text"]["text"].as_str().unwrap();
        assert!(
            section.starts_with(":red_circle: *agent success rate (scaffold)*"),
            "{section}"
        );
        assert!(
            section.contains("succeeds &lt;80% of tasks"),
            "escaped: {section}"
        );
        assert!(section.contains("= 71.5 (&lt; 80)"), "{section}");
        assert!(section.contains("since 2026-11-30T10:00:01.000Z"));
        assert!(section.contains("<https://runbooks.example.com/agents|Runbook>"));
        assert!(blocks[1]["elements"][0]["text"]
            .as_str()
            .unwrap()
            .contains("https://fp.example/"));
    }

    #[test]
    fn a_long_message_is_cut_to_what_slack_takes() {
        let long = Alert {
            message: "é".repeat(5000),
            ..sample()
        };
        let p = payload(&[Arc::new(long)], None);
        let text = p["blocks"][0]["text"]["text"].as_str().unwrap();
        assert_eq!(text.chars().count(), SECTION_MAX + 1);
        assert!(text.ends_with('…'));
    }

    #[test]
    fn a_burst_lists_twenty_then_counts_the_rest() {
        let notices: Vec<Arc<Alert>> = (0..25)
            .map(|i| {
                Arc::new(Alert {
                    instance: format!("agent-{i}"),
                    ..sample()
                })
            })
            .collect();
        let p = payload(&notices, None);
        assert_eq!(p["text"], "25 alert notices");
        let blocks = p["blocks"].as_array().unwrap();
        // Header, twenty sections, "and 5 more".
        assert_eq!(blocks.len(), 22);
        assert_eq!(blocks[21]["elements"][0]["text"], "and 5 more");
        assert!(blocks[20]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("agent-19"));
    }
}
