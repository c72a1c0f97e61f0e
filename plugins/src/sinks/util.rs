//! What every sink shares: the lines they write, and config checks.

use flowpulse_core::config::WhenFull;
use flowpulse_core::event::format_rfc3339_ms;
use flowpulse_core::plugin::{FieldError, ValidateContext};
use flowpulse_core::record::Record;
use serde::Serialize;

/// A `when_full` error if the sink being validated is set to drop batches
/// when its input is full: for sinks whose dropped batches would count as
/// delivered and so lose what `message` says.
pub fn refuse_drop_newest(cx: &ValidateContext<'_>, message: &str) -> Option<FieldError> {
    cx.topology
        .get(cx.component)
        .is_some_and(|me| me.when_full == WhenFull::DropNewest)
        .then(|| FieldError::new("when_full", message))
}

/// Wall-clock time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    format_rfc3339_ms(ms)
}

#[derive(Serialize)]
struct Message<'a, T: Serialize> {
    #[serde(rename = "type")]
    type_name: &'a str,
    data: &'a T,
    timestamp: &'a str,
}

/// Appends `record` as one JSON line: an event in its flat form, a metrics
/// document as `{"type":"metrics:update","data":…,"timestamp":…}`, an alert as
/// the WebSocket message of its status, a custom metric as
/// `{"type":"custom:update","data":{"name","value"},"timestamp"}`.
pub fn encode_json_line(
    record: &Record,
    timestamp: &str,
    buf: &mut Vec<u8>,
) -> serde_json::Result<()> {
    match record {
        Record::Event(event) => serde_json::to_writer(&mut *buf, event)?,
        Record::Metrics(metrics) => serde_json::to_writer(
            &mut *buf,
            &Message {
                type_name: "metrics:update",
                data: metrics.as_ref(),
                timestamp,
            },
        )?,
        Record::Alert(alert) => serde_json::to_writer(
            &mut *buf,
            &Message {
                type_name: alert.status.message_type(),
                data: alert.as_ref(),
                timestamp,
            },
        )?,
        Record::Custom(custom) => serde_json::to_writer(
            &mut *buf,
            &Message {
                type_name: "custom:update",
                data: &serde_json::json!({"name": custom.name, "value": custom.value}),
                timestamp,
            },
        )?,
    }
    buf.push(b'\n');
    Ok(())
}

/// The last notice ids seen, at most [`RECENT_NOTICES`]: a notice sent
/// again (after a failed delivery elsewhere, say) is shown once.
#[derive(Debug, Default)]
pub struct RecentNotices {
    order: std::collections::VecDeque<String>,
    seen: std::collections::HashSet<String>,
}

/// How many notice ids are remembered to drop notices sent again.
pub const RECENT_NOTICES: usize = 10_000;

impl RecentNotices {
    /// Whether `id` was seen (an empty id never was).
    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains(id)
    }

    /// Whether `id` is new (and remembers it).
    pub fn first_sighting(&mut self, id: &str) -> bool {
        if id.is_empty() || self.seen.contains(id) {
            return id.is_empty();
        }
        if self.order.len() == RECENT_NOTICES {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.order.push_back(id.to_owned());
        self.seen.insert(id.to_owned());
        true
    }
}

/// The notice id of `record` if it is an alert notice.
pub fn notice_id(record: &Record) -> Option<&str> {
    match record {
        Record::Alert(alert) if !alert.notice_id.is_empty() => Some(&alert.notice_id),
        _ => None,
    }
}
