//! `file`: appends records as JSON lines (see [`encode_json_line`]).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, PluginDescriptor, Sink, SinkConfig,
};
use flowpulse_core::record::{Batch, RecordKinds};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::util::{encode_json_line, notice_id, now_rfc3339, RecentNotices};

/// `[sinks.NAME] type = "file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file to append to (created with its directory if missing).
    pub path: PathBuf,
    /// `fsync` after every batch, so an acknowledged record survives a power
    /// loss, not just a crash. Default `false`.
    #[serde(default)]
    pub fsync: bool,
    /// Wait this long per batch, to stand in for a slow downstream, e.g.
    /// `"50ms"`. Default 0.
    #[serde(default, with = "humantime_serde")]
    pub delay_per_batch: Duration,
}

inventory::submit! {
    PluginDescriptor::sink::<FileSinkConfig>("file", "Appends events, metrics documents and alerts to a file as JSON lines")
}

#[async_trait]
impl SinkConfig for FileSinkConfig {
    fn inputs(&self) -> RecordKinds {
        RecordKinds::ALL
    }

    async fn build(&self, _cx: &BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| BuildError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(|e| BuildError(format!("cannot open {}: {e}", self.path.display())))?;
        Ok(Box::new(FileSink {
            config: self.clone(),
            file,
            buf: Vec::with_capacity(1 << 16),
            recent: RecentNotices::default(),
        }))
    }
}

struct FileSink {
    config: FileSinkConfig,
    file: tokio::fs::File,
    buf: Vec<u8>,
    recent: RecentNotices,
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: &Batch) -> Result<(), ComponentError> {
        if !self.config.delay_per_batch.is_zero() {
            tokio::time::sleep(self.config.delay_per_batch).await;
        }
        self.buf.clear();
        let timestamp = now_rfc3339();
        let mut notices = Vec::new();
        for record in batch.records() {
            // A notice sent again (a failed delivery elsewhere) is written once.
            if let Some(id) = notice_id(record) {
                if self.recent.contains(id) {
                    continue;
                }
                notices.push(id);
            }
            encode_json_line(record, &timestamp, &mut self.buf)
                .map_err(|e| ComponentError::Transient(format!("cannot encode a record: {e}")))?;
        }
        let path = &self.config.path;
        let io = |e: std::io::Error| {
            ComponentError::Transient(format!("cannot write {}: {e}", path.display()))
        };
        // One write per batch; the batch counts as taken once it is written.
        self.file.write_all(&self.buf).await.map_err(io)?;
        self.file.flush().await.map_err(io)?;
        if self.config.fsync {
            self.file.sync_data().await.map_err(io)?;
        }
        // Remembered once written: a failed write takes the resend.
        for id in notices {
            self.recent.first_sighting(id);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ComponentError> {
        self.file.sync_all().await.map_err(|e| {
            ComponentError::Transient(format!("cannot sync {}: {e}", self.config.path.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::notify::render::tests::sample;
    use flowpulse_core::record::Record;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_notice_sent_again_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut sink = FileSink {
            config: FileSinkConfig {
                path: path.clone(),
                fsync: false,
                delay_per_batch: Duration::ZERO,
            },
            file: tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
                .unwrap(),
            buf: Vec::new(),
            recent: RecentNotices::default(),
        };
        let notice = Record::Alert(Arc::new(sample()));
        let other = Record::Alert(Arc::new(flowpulse_core::alert::Alert {
            notice_id: "another".into(),
            ..sample()
        }));
        sink.write(&Batch::new(vec![notice.clone()], vec![]))
            .await
            .unwrap();
        sink.write(&Batch::new(vec![notice, other], vec![]))
            .await
            .unwrap();
        let lines = std::fs::read_to_string(&path).unwrap();
        assert_eq!(lines.lines().count(), 2, "{lines}");
        assert!(lines.lines().nth(1).unwrap().contains("\"another\""));
    }
}
