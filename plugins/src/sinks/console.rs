//! `console`: prints records to standard output, as a readable summary or as
//! the same JSON lines the `file` sink writes.

use async_trait::async_trait;
use flowpulse_core::event::format_rfc3339_ms;
use flowpulse_core::metrics::RealtimeMetrics;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, PluginDescriptor, Sink, SinkConfig,
};
use flowpulse_core::record::{Batch, Record, RecordKinds};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::util::{encode_json_line, notice_id, now_rfc3339, RecentNotices};

/// How the console shows records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleFormat {
    /// One readable line per record. The default.
    #[default]
    Summary,
    /// JSON lines, as the `file` sink writes them.
    Json,
}

/// `[sinks.NAME] type = "console"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSinkConfig {
    /// `"summary"` (default) or `"json"`.
    #[serde(default)]
    pub format: ConsoleFormat,
}

inventory::submit! {
    PluginDescriptor::sink::<ConsoleSinkConfig>("console", "Prints records to standard output, as a readable summary or JSON lines")
}

#[async_trait]
impl SinkConfig for ConsoleSinkConfig {
    fn inputs(&self) -> RecordKinds {
        RecordKinds::ALL
    }

    async fn build(&self, _cx: &BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(ConsoleSink {
            format: self.format,
            out: tokio::io::stdout(),
            buf: Vec::new(),
            recent: RecentNotices::default(),
        }))
    }
}

struct ConsoleSink {
    format: ConsoleFormat,
    out: tokio::io::Stdout,
    buf: Vec<u8>,
    recent: RecentNotices,
}

/// One line describing a metrics document.
pub fn summarize_metrics(m: &RealtimeMetrics) -> String {
    let o = &m.overview;
    format!(
        "[{}] workflows total={} running={} paused={} completed={} failed={} cancelled={} | success={:.1}% health={:.1}% | {}/min | p50={:.0}ms p95={:.0}ms p99={:.0}ms",
        m.as_of,
        o.total_workflows,
        o.running_workflows,
        o.paused_workflows,
        o.completed_workflows,
        o.failed_workflows,
        o.cancelled_workflows,
        o.success_rate_percent,
        o.system_health_percent,
        m.throughput_per_minute,
        m.latency_p50_ms,
        m.latency_p95_ms,
        m.latency_p99_ms,
    )
}

fn summarize(record: &Record) -> String {
    match record {
        Record::Event(e) => format!(
            "[{}] {} {} {}",
            format_rfc3339_ms(e.timestamp_ms),
            e.kind.type_name(),
            e.workflow_id,
            e.agent_type
                .as_deref()
                .or(e.workflow_type.as_deref())
                .unwrap_or("")
        ),
        Record::Metrics(m) => summarize_metrics(m),
        Record::Alert(a) => format!(
            "ALERT {} [{:?}] {}: {}",
            a.status.message_type(),
            a.severity,
            a.rule_name,
            a.message
        ),
        Record::Custom(c) => format!("custom {} = {}", c.name, c.value),
    }
}

#[async_trait]
impl Sink for ConsoleSink {
    async fn write(&mut self, batch: &Batch) -> Result<(), ComponentError> {
        self.buf.clear();
        let timestamp = now_rfc3339();
        let mut notices = Vec::new();
        for record in batch.records() {
            // A notice sent again (a failed delivery elsewhere) is shown once.
            if let Some(id) = notice_id(record) {
                if self.recent.contains(id) {
                    continue;
                }
                notices.push(id);
            }
            match self.format {
                ConsoleFormat::Json => encode_json_line(record, &timestamp, &mut self.buf)
                    .map_err(|e| {
                        ComponentError::Transient(format!("cannot encode a record: {e}"))
                    })?,
                ConsoleFormat::Summary => {
                    self.buf.extend_from_slice(summarize(record).as_bytes());
                    self.buf.push(b'\n');
                }
            }
        }
        let io = |e: std::io::Error| {
            ComponentError::Transient(format!("cannot write to standard output: {e}"))
        };
        self.out.write_all(&self.buf).await.map_err(io)?;
        self.out.flush().await.map_err(io)?;
        for id in notices {
            self.recent.first_sighting(id);
        }
        Ok(())
    }
}
