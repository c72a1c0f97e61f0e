//! `stdin`: reads JSON-lines events from standard input until it closes.

use async_trait::async_trait;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, FieldError, PluginDescriptor, Source, SourceConfig,
    SourceContext, ValidateContext,
};
use flowpulse_core::record::{Batch, Record};
use serde::Deserialize;
use tokio::io::AsyncBufReadExt;

use super::util::{DeadLetterFile, LineDecoder, DEFAULT_BATCH_SIZE};

/// `[sources.NAME] type = "stdin"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinSourceConfig {
    /// Events per batch at most; a batch is also sent whenever input pauses.
    /// Default 1024.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}

inventory::submit! {
    PluginDescriptor::source::<StdinSourceConfig>("stdin", "Reads JSON-lines events from standard input until it closes")
}

#[async_trait]
impl SourceConfig for StdinSourceConfig {
    fn validate(&self, _cx: &ValidateContext<'_>) -> Vec<FieldError> {
        if self.batch_size == 0 {
            return vec![FieldError::new("batch_size", "must be at least 1")];
        }
        Vec::new()
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        Ok(Box::new(StdinSource {
            batch_size: self.batch_size,
            dead_letters: DeadLetterFile::new(cx.data_dir().join("dead_letter.jsonl")),
        }))
    }
}

struct StdinSource {
    batch_size: usize,
    dead_letters: DeadLetterFile,
}

#[async_trait]
impl Source for StdinSource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let SourceContext {
            name,
            mut out,
            shutdown,
            stats,
        } = cx;
        let mut decoder = LineDecoder::new(&name, stats.clone(), self.dead_letters);
        let mut reader = tokio::io::BufReader::with_capacity(1 << 16, tokio::io::stdin());
        let mut line = Vec::new();
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut line_number = 0u64;
        loop {
            line.clear();
            let read = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                read = reader.read_until(b'\n', &mut line) => read,
            };
            match read {
                Ok(0) => break,
                Ok(_) => {
                    line_number += 1;
                    stats.received(1);
                    let text = line.strip_suffix(b"\n").unwrap_or(&line);
                    if let Some(event) = decoder.decode(line_number, text) {
                        batch.push(Record::Event(event));
                    }
                }
                Err(e) => {
                    return Err(ComponentError::Fatal(format!(
                        "cannot read standard input: {e}"
                    )))
                }
            }
            // Send when full, or when no more input is waiting.
            if batch.len() >= self.batch_size || (reader.buffer().is_empty() && !batch.is_empty()) {
                // Standard input cannot be re-read: nothing waits for acknowledgement.
                out.send(Batch::unacked(std::mem::take(&mut batch))).await;
            }
        }
        if !batch.is_empty() {
            out.send(Batch::unacked(batch)).await;
        }
        decoder.flush();
        Ok(())
    }
}
