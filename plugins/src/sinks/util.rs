//! Encodings every sink shares, so they all write the same lines.

use flowpulse_core::event::format_rfc3339_ms;
use flowpulse_core::record::Record;
use serde::Serialize;

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
