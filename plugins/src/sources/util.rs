//! Helpers every line-oriented source shares: decoding with bad input counted,
//! logged once per kind and dead-lettered, and batching.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use flowpulse_core::event::{decode_json, Decoded, WorkflowEvent};
use flowpulse_core::telemetry::ComponentStats;

/// Default number of records per batch for line sources.
pub const DEFAULT_BATCH_SIZE: usize = 1024;

/// Bad input kept for inspection: one JSON object per line with the
/// original text, its position and the reason.
pub struct DeadLetterFile {
    path: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl DeadLetterFile {
    /// Dead letters go to `path`, created on the first bad input.
    pub fn new(path: PathBuf) -> DeadLetterFile {
        DeadLetterFile { path, file: None }
    }

    /// Where dead letters go.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn write(
        &mut self,
        line_number: u64,
        kind: &str,
        reason: &str,
        raw: &[u8],
    ) -> std::io::Result<()> {
        self.write_record(&serde_json::json!({
            "line": line_number,
            "kind": kind,
            "reason": reason,
            "raw": String::from_utf8_lossy(raw),
        }))
    }

    /// Appends one dead letter: a JSON object with the input's position,
    /// `kind`, `reason` and `raw` text.
    pub fn write_record(&mut self, record: &serde_json::Value) -> std::io::Result<()> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.file = Some(std::io::BufWriter::new(file));
        }
        if let Some(file) = self.file.as_mut() {
            serde_json::to_writer(&mut *file, record)?;
            file.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Makes what was written durable.
    pub fn flush(&mut self) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// Decodes lines into events, accounting for everything else.
pub struct LineDecoder {
    source: String,
    stats: Arc<ComponentStats>,
    dead_letters: DeadLetterFile,
}

impl LineDecoder {
    /// A decoder for the source named `source`.
    pub fn new(
        source: &str,
        stats: Arc<ComponentStats>,
        dead_letters: DeadLetterFile,
    ) -> LineDecoder {
        LineDecoder {
            source: source.to_owned(),
            stats,
            dead_letters,
        }
    }

    /// Decodes one line (without its newline). Blank lines are skipped and,
    /// like other ignored lines, counted as ignored (so that every line read
    /// is out, ignored or malformed); malformed lines are counted, logged
    /// once per kind and dead-lettered. A UTF-8 byte order mark before the
    /// first line, which some editors write, is not part of it.
    pub fn decode(&mut self, line_number: u64, line: &[u8]) -> Option<WorkflowEvent> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = match line_number {
            1 => line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line),
            _ => line,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            self.stats.ignored(1);
            return None;
        }
        match decode_json(line, None) {
            Ok(Decoded::Event(event)) => Some(event),
            Ok(Decoded::Ignored(_)) => {
                self.stats.ignored(1);
                None
            }
            Err(e) => {
                let message = format!("line {line_number}: {e}");
                if self.stats.malformed(e.kind(), &message) {
                    tracing::warn!(
                        source = %self.source,
                        kind = e.kind(),
                        dead_letter = %self.dead_letters.path().display(),
                        "malformed input ({message}); further ones of this kind are counted, not logged"
                    );
                }
                if let Err(io) =
                    self.dead_letters
                        .write(line_number, e.kind(), &e.to_string(), line)
                {
                    self.stats.error(format!("cannot write dead letter: {io}"));
                }
                None
            }
        }
    }

    /// Flushes the dead-letter file.
    pub fn flush(&mut self) {
        if let Err(e) = self.dead_letters.flush() {
            self.stats.error(format!("cannot write dead letter: {e}"));
        }
    }
}
