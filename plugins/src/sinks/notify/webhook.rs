//! `webhook`: a JSON POST per notice, signed per Standard Webhooks, in
//! Flowpulse's own versioned body or Alertmanager's webhook format 4.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use flowpulse_core::alert::{Alert, AlertStatus};
use flowpulse_core::plugin::{
    BuildContext, BuildError, FieldError, PluginDescriptor, Sink, SinkConfig, ValidateContext,
};
use flowpulse_core::record::RecordKinds;
use hmac::{KeyInit as _, Mac as _};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::retry::DeliveryError;
use super::secret::{check_http_url, Secret, SecretUrl};
use super::{http, notify_sink_config, Channel};
use crate::sinks::util::now_rfc3339;

/// The version of the `flowpulse` body; a change that breaks receivers
/// gets a new one.
pub const BODY_VERSION: &str = "1";

/// Headers Flowpulse sets itself, which `headers` may not replace.
const OWN_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "host",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// The body a `webhook` sink sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{"version": "1", "type", "notice_id", "timestamp", "alerts": [Alert]}`.
    #[default]
    Flowpulse,
    /// Alertmanager's webhook format 4, for receivers built for it.
    Alertmanager,
}

/// One signing secret or several (during a rotation).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Secrets {
    /// `secret = "whsec_…"`.
    One(Secret),
    /// `secret = ["whsec_new…", "whsec_old…"]`: one signature each.
    Many(Vec<Secret>),
}

impl Secrets {
    /// The secrets given; an empty string (an unset `${VAR:-}`) is none.
    fn list(&self) -> Vec<&Secret> {
        match self {
            Secrets::One(s) if s.expose().is_empty() => Vec::new(),
            Secrets::One(s) => vec![s],
            Secrets::Many(list) => list.iter().collect(),
        }
    }
}

notify_sink_config! {
    /// `[sinks.NAME] type = "webhook"`.
    pub struct WebhookConfig {
        /// The receiver. Never logged: its path or query may be a secret.
        pub url: SecretUrl,
        /// Signing secret(s), `whsec_` + base64 of 16–64 bytes (Standard
        /// Webhooks). A list during a rotation: one signature each.
        /// Absent or empty: unsigned (a warning at start).
        #[serde(default)]
        pub secret: Option<Secrets>,
        /// Extra request headers (values never logged).
        #[serde(default)]
        pub headers: BTreeMap<String, Secret>,
        /// `"flowpulse"` (default) or `"alertmanager"`.
        #[serde(default)]
        pub format: WebhookFormat,
    }
}

inventory::submit! {
    PluginDescriptor::sink::<WebhookConfig>("webhook", "Delivers alert notices as signed JSON POSTs (Flowpulse or Alertmanager format), from a durable outbox")
}

/// The key of a `whsec_…` secret.
fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return Err("must start with whsec_ (then the key in base64)".into());
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "after whsec_ must come the key in standard base64".to_owned())?;
    if !(16..=64).contains(&key.len()) {
        return Err(format!("the key must be 16 to 64 bytes, not {}", key.len()));
    }
    Ok(key)
}

/// `v1,<base64 HMAC-SHA256 of id.timestamp.body>`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[async_trait]
impl SinkConfig for WebhookConfig {
    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors = self.shared().validate(cx);
        if let Err(e) = check_http_url(self.url.expose()) {
            errors.push(FieldError::new("url", e));
        }
        if let Some(secrets) = &self.secret {
            let list = secrets.list();
            if list.is_empty() && matches!(secrets, Secrets::Many(_)) {
                errors.push(FieldError::new(
                    "secret",
                    "an empty list: give at least one secret, or leave it out to send unsigned",
                ));
            }
            for (i, s) in list.iter().enumerate() {
                if let Err(e) = signing_key(s.expose()) {
                    let field = match secrets {
                        Secrets::One(_) => "secret".to_owned(),
                        Secrets::Many(_) => format!("secret[{i}]"),
                    };
                    errors.push(FieldError::new(field, e));
                }
            }
        }
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(FieldError::new(field, "not a valid header name"));
            } else if OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                errors.push(FieldError::new(field, "set by Flowpulse itself"));
            } else if HeaderValue::from_str(value.expose()).is_err() {
                errors.push(FieldError::new(
                    field,
                    "the value holds characters a header cannot (control characters, non-ASCII)",
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
        let keys = self
            .secret
            .as_ref()
            .map(Secrets::list)
            .unwrap_or_default()
            .iter()
            .map(|s| signing_key(s.expose()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BuildError(format!("secret: {e}")))?;
        if keys.is_empty() {
            tracing::warn!(component = %cx.name, "no `secret`: webhook bodies are sent unsigned, and receivers cannot tell them from forgeries");
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| BuildError(format!("headers.{name}: not a valid header name")))?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| BuildError(format!("headers.{name}: not a valid header value")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let channel = WebhookChannel {
            client: http::client(shared.timeout).map_err(BuildError)?,
            url: self.url.clone(),
            keys,
            headers,
            format: self.format,
            receiver: cx.name.clone(),
        };
        super::build(cx, &shared, Arc::new(channel)).await
    }
}

/// Sends one notice per request.
struct WebhookChannel {
    client: reqwest::Client,
    url: SecretUrl,
    keys: Vec<Vec<u8>>,
    headers: HeaderMap,
    format: WebhookFormat,
    receiver: String,
}

/// The `flowpulse` body.
#[derive(Serialize)]
struct FlowpulseBody<'a> {
    version: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    notice_id: &'a str,
    timestamp: String,
    alerts: [&'a Alert; 1],
}

/// The body of `alert` in `format`; `receiver` is the sink's name.
pub fn body(alert: &Alert, format: WebhookFormat, receiver: &str) -> serde_json::Result<Vec<u8>> {
    match format {
        WebhookFormat::Flowpulse => serde_json::to_vec(&FlowpulseBody {
            version: BODY_VERSION,
            kind: alert.status.message_type(),
            notice_id: &alert.notice_id,
            timestamp: now_rfc3339(),
            alerts: [alert],
        }),
        WebhookFormat::Alertmanager => serde_json::to_vec(&alertmanager(alert, receiver)),
    }
}

/// Alertmanager's webhook format 4, one alert per message.
pub fn alertmanager(alert: &Alert, receiver: &str) -> serde_json::Value {
    let status = match alert.status {
        AlertStatus::Resolved => "resolved",
        AlertStatus::Triggered | AlertStatus::Acknowledged => "firing",
    };
    let labels = serde_json::json!({
        "alertname": alert.rule_name,
        "severity": alert.severity.as_str(),
        "instance": alert.instance,
    });
    let mut annotations = serde_json::Map::new();
    annotations.insert("summary".into(), alert.message.clone().into());
    if let Some(runbook) = &alert.runbook_url {
        annotations.insert("runbook_url".into(), runbook.clone().into());
    }
    let group_key = format!(
        "{{}}:{{alertname={:?}, instance={:?}}}",
        alert.rule_name, alert.instance
    );
    serde_json::json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": alert.rule_name, "instance": alert.instance},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": alert.created_at,
            // Alertmanager's zero time: still firing.
            "endsAt": alert.resolved_at.as_deref().unwrap_or("0001-01-01T00:00:00Z"),
            "generatorURL": "",
            "fingerprint": format!("{:016x}", xxhash_rust::xxh3::xxh3_64(alert.id.as_bytes())),
        }],
    })
}

#[async_trait]
impl Channel for WebhookChannel {
    async fn deliver(&self, notices: &[Arc<Alert>]) -> Result<(), DeliveryError> {
        for alert in notices {
            let body =
                body(alert, self.format, &self.receiver).map_err(|e| DeliveryError::Refused {
                    reason: format!("cannot encode the notice: {e}"),
                })?;
            let mut headers = self.headers.clone();
            let timestamp = super::outbox::now_ms() / 1000;
            let header = |v: &str| {
                HeaderValue::from_str(v).map_err(|_| DeliveryError::Refused {
                    reason: "a notice id that cannot be a header".into(),
                })
            };
            headers.insert("webhook-id", header(&alert.notice_id)?);
            headers.insert("webhook-timestamp", header(&timestamp.to_string())?);
            if !self.keys.is_empty() {
                let signatures: Vec<String> = self
                    .keys
                    .iter()
                    .map(|key| sign(key, &alert.notice_id, timestamp, &body))
                    .collect();
                headers.insert("webhook-signature", header(&signatures.join(" "))?);
            }
            http::post_json(&self.client, self.url.expose(), headers, body).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::notify::render::tests::sample;

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_a_sane_length() {
        assert!(signing_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(signing_key("whsec_not base64!").is_err());
        assert!(signing_key("whsec_c2hvcnQ=").is_err(), "5 bytes");
    }

    #[test]
    fn the_alertmanager_body_matches_format_4() {
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("testdata/alertmanager-v4.json")).unwrap();
        assert_eq!(alertmanager(&sample(), "ops_webhook"), golden);
        let resolved = Alert {
            status: AlertStatus::Resolved,
            resolved_at: Some("2026-11-30T10:05:00.000Z".into()),
            ..sample()
        };
        let body = alertmanager(&resolved, "ops_webhook");
        assert_eq!(body["status"], "resolved");
        assert_eq!(body["alerts"][0]["endsAt"], "2026-11-30T10:05:00.000Z");
    }

    #[test]
    fn the_flowpulse_body_is_versioned_and_carries_the_alert() {
        let a = sample();
        let body: serde_json::Value =
            serde_json::from_slice(&body(&a, WebhookFormat::Flowpulse, "x").unwrap()).unwrap();
        assert_eq!(body["version"], "1");
        assert_eq!(body["type"], "alert:triggered");
        assert_eq!(body["notice_id"], a.notice_id.as_str());
        assert_eq!(body["alerts"][0], serde_json::to_value(&a).unwrap());
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
