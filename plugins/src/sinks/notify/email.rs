//! `email`: one message per notice over SMTP (lettre, async): a plain-text
//! and an HTML part with the facts of the notice.

use std::sync::Arc;

use async_trait::async_trait;
use flowpulse_core::alert::{Alert, AlertStatus};
use flowpulse_core::plugin::{
    BuildContext, BuildError, FieldError, PluginDescriptor, Sink, SinkConfig, ValidateContext,
};
use flowpulse_core::record::RecordKinds;
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::render::{html_escape, Facts};
use super::retry::DeliveryError;
use super::secret::Secret;
use super::{notify_sink_config, Channel};

notify_sink_config! {
    /// `[sinks.NAME] type = "email"`.
    pub struct EmailConfig {
        /// `smtp://host:25` (plain, for local relays),
        /// `smtp://host:587?tls=required` (STARTTLS) or `smtps://host:465`
        /// (TLS); credentials as `smtps://user:${SMTP_PASSWORD}@host`.
        /// Never logged.
        pub smtp_url: Secret,
        /// The sender, `Flowpulse <alerts@example.com>` or a bare address.
        pub from: String,
        /// The recipients.
        pub to: Vec<String>,
        /// Put before every subject, e.g. `"[prod] "`. Default empty.
        #[serde(default)]
        pub subject_prefix: String,
    }
}

inventory::submit! {
    PluginDescriptor::sink::<EmailConfig>("email", "Emails alert notices over SMTP (plain text and HTML), from a durable outbox")
}

fn transport(
    url: &str,
    timeout: std::time::Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    // lettre's messages about a URL never repeat it.
    let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|e| {
        format!("not a usable SMTP URL ({e}): use smtp://, smtp://…?tls=required or smtps://")
    })?;
    Ok(builder.timeout(Some(timeout)).build())
}

#[async_trait]
impl SinkConfig for EmailConfig {
    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors = self.shared().validate(cx);
        let url = self.smtp_url.expose();
        if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
            errors.push(FieldError::new(
                "smtp_url",
                "must start with smtp:// or smtps://",
            ));
        } else if let Err(e) = transport(url, self.timeout) {
            errors.push(FieldError::new("smtp_url", e));
        }
        if let Err(e) = self.from.parse::<Mailbox>() {
            errors.push(FieldError::new("from", format!("not an address: {e}")));
        }
        if self.to.is_empty() {
            errors.push(FieldError::new("to", "name at least one recipient"));
        }
        for (i, to) in self.to.iter().enumerate() {
            if let Err(e) = to.parse::<Mailbox>() {
                errors.push(FieldError::new(
                    format!("to[{i}]"),
                    format!("not an address: {e}"),
                ));
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
        let mailbox = |field: &str, text: &str| {
            text.parse::<Mailbox>()
                .map_err(|e| BuildError(format!("{field}: not an address: {e}")))
        };
        let channel = EmailChannel {
            transport: transport(self.smtp_url.expose(), shared.timeout)
                .map_err(|e| BuildError(format!("smtp_url: {e}")))?,
            from: mailbox("from", &self.from)?,
            to: self
                .to
                .iter()
                .map(|t| mailbox("to", t))
                .collect::<Result<_, _>>()?,
            subject_prefix: self.subject_prefix.clone(),
            timeout: shared.timeout,
        };
        super::build(cx, &shared, Arc::new(channel)).await
    }
}

struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    timeout: std::time::Duration,
    from: Mailbox,
    to: Vec<Mailbox>,
    subject_prefix: String,
}

/// `[CRITICAL] rule (instance): message`, marked once acknowledged or
/// resolved.
pub fn subject(alert: &Alert, prefix: &str) -> String {
    let f = Facts::of(alert);
    let status = match alert.status {
        AlertStatus::Triggered => "",
        AlertStatus::Acknowledged => "Acknowledged: ",
        AlertStatus::Resolved => "Resolved: ",
    };
    // A subject is one line, whatever the message template holds; the
    // default message starts with the rule's name, which the title has.
    let message = f.message.replace(['\r', '\n'], " ");
    let message = message
        .strip_prefix(alert.rule_name.as_str())
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(&message);
    format!("{prefix}{status}[{}] {}: {message}", f.severity, f.title)
}

/// The plain-text part.
pub fn plain(alert: &Alert) -> String {
    let f = Facts::of(alert);
    let mut text = format!(
        "{} [{}] {}\n\n{}\n\nValue: {}\nSince: {}\n",
        f.status, f.severity, f.title, f.message, f.value, f.since
    );
    if let Some(by) = &f.by {
        text.push_str(&format!("{}\n", capitalize(by)));
    }
    if let Some(runbook) = &f.runbook_url {
        text.push_str(&format!("Runbook: {runbook}\n"));
    }
    text.push_str(&format!(
        "\nAlert {} (notice {})\n",
        alert.id, alert.notice_id
    ));
    text
}

/// The HTML part: the same facts, every value escaped.
pub fn html(alert: &Alert) -> String {
    let f = Facts::of(alert);
    let row = |k: &str, v: &str| {
        format!(
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
            html_escape(k),
            html_escape(v)
        )
    };
    let mut rows = vec![
        row("Status", &f.status),
        row("Severity", f.severity),
        row("Value", &f.value),
        row("Since", &f.since),
    ];
    if let Some(by) = &f.by {
        rows.push(row("By", by));
    }
    let runbook = f
        .runbook_url
        .as_deref()
        .map(|u| format!("<p><a href=\"{}\">Runbook</a></p>", html_escape(u)))
        .unwrap_or_default();
    format!(
        "<!doctype html><html><body><h2>{}</h2><p>{}</p><table>{}</table>{runbook}<p><small>Alert {} (notice {})</small></p></body></html>",
        html_escape(&f.title),
        html_escape(&f.message),
        rows.join(""),
        html_escape(&alert.id),
        html_escape(&alert.notice_id),
    )
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[async_trait]
impl Channel for EmailChannel {
    /// One message, one SMTP session per recipient: a recipient the relay
    /// refuses (an address gone) does not keep the others from theirs.
    async fn deliver(&self, notices: &[Arc<Alert>]) -> Result<(), DeliveryError> {
        for alert in notices {
            let mut builder = Message::builder()
                .from(self.from.clone())
                .subject(subject(alert, &self.subject_prefix));
            for to in &self.to {
                builder = builder.to(to.clone());
            }
            let message = builder
                .multipart(MultiPart::alternative_plain_html(plain(alert), html(alert)))
                .map_err(|e| DeliveryError::Refused {
                    reason: format!("cannot build the email: {e}"),
                })?;
            let bytes = message.formatted();
            let mut delivered = 0;
            let mut refused = Vec::new();
            for to in &self.to {
                let envelope = Envelope::new(Some(self.from.email.clone()), vec![to.email.clone()])
                    .map_err(|e| DeliveryError::Refused {
                        reason: format!("cannot address the email: {e}"),
                    })?;
                // lettre bounds only the connect; the session is bounded here.
                let sent =
                    tokio::time::timeout(self.timeout, self.transport.send_raw(&envelope, &bytes))
                        .await;
                match sent {
                    Ok(Ok(_)) => delivered += 1,
                    Ok(Err(e)) if e.is_permanent() => refused.push(format!("{to}: SMTP: {e}")),
                    // lettre's own refusals (no authentication mechanism in
                    // common, STARTTLS required but not offered): a setting
                    // that does not fit the server, which no retry changes.
                    Ok(Err(e)) if e.is_client() => {
                        return Err(DeliveryError::Refused {
                            reason: format!(
                                "SMTP: {e} (the sink's settings do not fit this server)"
                            ),
                        })
                    }
                    // 4xx replies, connection and TLS errors: later.
                    Ok(Err(e)) => {
                        return Err(DeliveryError::Retry {
                            reason: format!("SMTP: {e}"),
                            after: None,
                        })
                    }
                    Err(_) => {
                        return Err(DeliveryError::Retry {
                            reason: format!(
                                "SMTP: no answer within {}",
                                humantime::format_duration(self.timeout)
                            ),
                            after: None,
                        })
                    }
                }
            }
            if delivered == 0 && !refused.is_empty() {
                return Err(DeliveryError::Refused {
                    reason: refused.join("; "),
                });
            }
            for r in &refused {
                tracing::warn!(notice_id = %alert.notice_id, "a recipient was refused, the others got the email: {r}");
            }
        }
        Ok(())
    }

    fn requests_per_attempt(&self) -> u32 {
        self.to.len().max(1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::notify::render::tests::sample;

    #[test]
    fn subject_and_parts_carry_the_facts_escaped() {
        let a = sample();
        assert_eq!(
            subject(&a, "[prod] "),
            "[prod] [CRITICAL] agent success rate (scaffold): scaffold succeeds <80% of tasks"
        );
        let p = plain(&a);
        assert!(
            p.contains("Value: agents[scaffold].success_rate_percent = 71.5 (< 80)"),
            "{p}"
        );
        assert!(p.contains("Runbook: https://runbooks.example.com/agents"));
        let h = html(&a);
        assert!(h.contains("scaffold succeeds &lt;80% of tasks"), "{h}");
        assert!(!h.contains("<80%"), "{h}");
        let r = Alert {
            status: AlertStatus::Resolved,
            resolved_by: Some("rule".into()),
            resolved_at: Some("2026-11-30T10:05:00.000Z".into()),
            ..a
        };
        assert!(subject(&r, "").starts_with("Resolved: [CRITICAL]"));
        assert!(plain(&r).contains("Resolved by rule at 2026-11-30T10:05:00.000Z"));
    }

    /// The default message starts with the rule's name, which the subject's
    /// title already gives.
    #[test]
    fn the_subject_names_the_rule_once() {
        let a = Alert {
            message: "agent success rate: agents[scaffold].success_rate_percent is 71.5 (< 80)"
                .into(),
            ..sample()
        };
        assert_eq!(
            subject(&a, ""),
            "[CRITICAL] agent success rate (scaffold): agents[scaffold].success_rate_percent is 71.5 (< 80)"
        );
    }
}
