//! `file`: reads JSON-lines events from a file, optionally following it as it
//! grows and across rotation, resuming from its acknowledged byte offset.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flowpulse_core::ack::{AckHandle, AckReceipt, BatchStatus};
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, FieldError, PluginDescriptor, Shutdown, Source,
    SourceConfig, SourceContext, ValidateContext,
};
use flowpulse_core::record::{Batch, Origin, Record};
use flowpulse_core::runtime::Output;
use flowpulse_core::telemetry::ComponentStats;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncSeekExt;

use super::util::{DeadLetterFile, LineDecoder, DEFAULT_BATCH_SIZE};
use crate::durable::write_atomic;

/// `[sources.NAME] type = "file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The JSON-lines file to read (flat or envelope events, one per line).
    pub path: PathBuf,
    /// Keep reading as the file grows and across rotation, and remember the
    /// acknowledged byte offset under `data_dir` so that a restart resumes
    /// exactly where it stopped. Default `false`: at end of file the source
    /// finishes.
    #[serde(default)]
    pub follow: bool,
    /// Events per batch. Default 1024.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How often a followed file is checked for new data, e.g. `"250ms"`.
    /// Default 250 ms.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
}

fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(250)
}

inventory::submit! {
    PluginDescriptor::source::<FileSourceConfig>("file", "Reads JSON-lines events from a file; with follow = true tails it across rotation and resumes from its acknowledged offset")
}

#[async_trait]
impl SourceConfig for FileSourceConfig {
    fn validate(&self, _cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.batch_size == 0 {
            errors.push(FieldError::new("batch_size", "must be at least 1"));
        }
        if self.poll_interval.is_zero() {
            errors.push(FieldError::new("poll_interval", "must be more than 0"));
        }
        errors
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        if !self.follow && !self.path.is_file() {
            let why = if self.path.is_dir() {
                "a directory, not a file"
            } else {
                "no such file"
            };
            return Err(BuildError(format!(
                "cannot read {}: {why}",
                self.path.display()
            )));
        }
        Ok(Box::new(FileSource {
            config: self.clone(),
            offsets: OffsetFile(cx.data_dir().join("offset.json")),
            dead_letters: DeadLetterFile::new(cx.data_dir().join("dead_letter.jsonl")),
        }))
    }
}

/// The acknowledged position, kept so a restart resumes there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    /// Identity of the file the offset belongs to (inode).
    file_id: u64,
    /// Bytes acknowledged from the start of the file.
    offset: u64,
    /// Lines acknowledged (for dead-letter line numbers).
    line: u64,
    /// How many times this source started the file over (rotation,
    /// truncation): part of its partition, so offsets that start again from
    /// 0 are never taken for ones already folded.
    #[serde(default)]
    generation: u64,
}

/// A fingerprint of a file's first bytes as they were read: a file
/// rewritten in place (same inode, at least as long) while no pipeline ran
/// has another start, and its kept offset would point into other content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct HeadPrint {
    /// Bytes fingerprinted, from the start of the file.
    len: u32,
    /// Their XXH3 hash.
    xxh3: u64,
}

impl HeadPrint {
    /// The print of `head`; `None` for an empty one (nothing read yet).
    fn of(head: &[u8]) -> Option<HeadPrint> {
        (!head.is_empty()).then(|| HeadPrint {
            len: head.len() as u32,
            xxh3: xxhash_rust::xxh3::xxh3_64(head),
        })
    }
}

/// What the offset file holds. Offset files written before the print was
/// kept have none, and resume as they did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Kept {
    #[serde(flatten)]
    position: Position,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    head: Option<HeadPrint>,
}

/// Where the acknowledged position is kept between runs.
struct OffsetFile(PathBuf);

impl OffsetFile {
    /// The kept position; `None` if there is none (a first run) or it
    /// cannot be read, and then the file is read from the start.
    async fn load(&self) -> Option<Kept> {
        let text = tokio::fs::read(&self.0).await.ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Keeps `position` and the print of the file's start as read, so that
    /// a crash, even a power loss, leaves the old offset or the new one,
    /// never a torn file.
    async fn store(&self, position: Position, head: &[u8]) -> std::io::Result<()> {
        let kept = Kept {
            position,
            head: HeadPrint::of(head),
        };
        let bytes = serde_json::to_vec(&kept).map_err(std::io::Error::other)?;
        write_atomic(&self.0, &bytes).await
    }
}

struct FileSource {
    config: FileSourceConfig,
    offsets: OffsetFile,
    dead_letters: DeadLetterFile,
}

fn file_id(metadata: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        std::os::unix::fs::MetadataExt::ino(metadata)
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        0
    }
}

/// Batches sent and not yet acknowledged, in order; the acknowledged prefix
/// decides the offset to keep.
struct InFlight {
    pending: VecDeque<(Position, AckReceipt)>,
    acked: Position,
    stored: Position,
    last_store: Instant,
    blocked_by_failure: bool,
}

impl InFlight {
    fn new(start: Position) -> InFlight {
        InFlight {
            pending: VecDeque::new(),
            acked: start,
            stored: start,
            last_store: Instant::now(),
            blocked_by_failure: false,
        }
    }

    /// Takes every receipt that has resolved, in order.
    fn collect_ready(&mut self, source: &str) {
        while let Some((position, receipt)) = self.pending.front_mut() {
            let position = *position;
            match futures::FutureExt::now_or_never(receipt) {
                Some(status) => {
                    self.pending.pop_front();
                    self.settle(source, position, status);
                }
                None => break,
            }
        }
    }

    /// Waits for every receipt.
    async fn collect_all(&mut self, source: &str) {
        while let Some((position, receipt)) = self.pending.pop_front() {
            let status = receipt.await;
            self.settle(source, position, status);
        }
    }

    fn settle(&mut self, source: &str, position: Position, status: BatchStatus) {
        match status {
            BatchStatus::Delivered if !self.blocked_by_failure => self.acked = position,
            BatchStatus::Delivered => {}
            BatchStatus::Failed => {
                if !self.blocked_by_failure {
                    tracing::warn!(
                        source,
                        offset = self.acked.offset,
                        "a batch was not delivered; the kept offset stays before it so a restart reads it again"
                    );
                }
                self.blocked_by_failure = true;
            }
        }
    }

    /// [`InFlight::store`], throttled, with the print of the start read of
    /// the acknowledged position's generation (`generation` is the one read
    /// now; `starts` its start and the one before); a failure is counted.
    async fn keep(
        &mut self,
        offsets: &OffsetFile,
        generation: u64,
        starts: (&[u8], &(u64, Vec<u8>)),
        stats: &ComponentStats,
    ) {
        let head = print_for(&self.acked, generation, starts.0, starts.1);
        if let Err(e) = self.store(offsets, head, false).await {
            stats.error(format!("cannot keep the offset: {e}"));
        }
    }

    /// Keeps the acknowledged position if it moved (at most every 200 ms
    /// unless `force`), with the print of `head`, the file's start as read.
    async fn store(
        &mut self,
        offsets: &OffsetFile,
        head: &[u8],
        force: bool,
    ) -> std::io::Result<()> {
        if self.acked != self.stored
            && (force || self.last_store.elapsed() >= Duration::from_millis(200))
        {
            offsets.store(self.acked, head).await?;
            self.stored = self.acked;
            self.last_store = Instant::now();
        }
        Ok(())
    }
}

/// The file being read. Reads run on the blocking pool and land straight in
/// the reader's buffer: a `tokio::fs::File` reads into a buffer of its own
/// and copies from there, and with the copy into the line buffer that was
/// two copies of every byte (an eighth of a `file → blackhole` run's
/// instructions).
#[derive(Clone)]
struct OpenFile(Arc<std::fs::File>);

impl OpenFile {
    async fn from_tokio(file: tokio::fs::File) -> OpenFile {
        OpenFile(Arc::new(file.into_std().await))
    }

    /// Appends up to `max` bytes to `buf`; `Ok(0)` at the end of the file.
    /// The buffer comes back with the result (an I/O error leaves it as it
    /// was), except when the read could not run at all.
    async fn read_onto(
        &self,
        mut buf: Vec<u8>,
        max: usize,
    ) -> std::io::Result<(Vec<u8>, std::io::Result<usize>)> {
        use std::io::Read;
        let file = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let before = buf.len();
            // Reads into the spare capacity as it is, without zeroing it first.
            let read = (&*file)
                .take(max as u64)
                .read_to_end(&mut buf)
                .map(|_| buf.len() - before);
            (buf, read)
        })
        .await
        .map_err(std::io::Error::other)
    }

    /// Up to `len` bytes from the start of the file, leaving the offset
    /// where it is.
    async fn read_head(&self, len: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let mut head = vec![0; len];
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut head[filled..], filled as u64)? {
                    0 => break,
                    n => filled += n,
                }
            }
            head.truncate(filled);
            Ok(head)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Everything from the current offset to the end.
    async fn read_rest(&self) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let file = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let mut rest = Vec::new();
            (&*file).read_to_end(&mut rest).map(|_| rest)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        let file = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || file.metadata())
            .await
            .map_err(std::io::Error::other)?
    }
}

impl FileSource {
    /// Opens the file, at its kept offset when `resume` and the kept
    /// offset is of this file. Returns its start as verified against the
    /// kept print (empty when not resuming).
    async fn open(&self, resume: bool) -> std::io::Result<(OpenFile, Position, Vec<u8>)> {
        let mut file = tokio::fs::File::open(&self.config.path).await?;
        let metadata = file.metadata().await?;
        let id = file_id(&metadata);
        let mut position = Position {
            file_id: id,
            ..Position::default()
        };
        if !resume {
            // A file read once has no kept offset to count its rewrites: its
            // modification time tells a file rewritten in place (same inode,
            // offsets from 0 again) from the one a checkpoint has folded.
            position.generation = modified_ns(&metadata);
        }
        let mut head = Vec::new();
        if resume {
            match self.offsets.load().await {
                Some(Kept {
                    position: saved,
                    head: print,
                }) if saved.file_id == id
                    && saved.offset <= metadata.len()
                    && starts_as_printed(&mut file, print, &mut head).await? =>
                {
                    file.seek(std::io::SeekFrom::Start(saved.offset)).await?;
                    position = saved;
                    tracing::info!(path = %self.config.path.display(), offset = saved.offset, "resuming from the acknowledged offset");
                }
                Some(Kept {
                    position: saved, ..
                }) => {
                    // The print's check may have read some of it.
                    head.clear();
                    file.seek(std::io::SeekFrom::Start(0)).await?;
                    // Started over: a new generation, so its offsets are not
                    // taken for those of the old content.
                    position.generation = saved.generation + 1;
                    tracing::warn!(
                        path = %self.config.path.display(),
                        "the file was replaced or truncated since the kept offset; reading it from the start"
                    )
                }
                None => {}
            }
        }
        Ok((OpenFile::from_tokio(file).await, position, head))
    }
}

/// Whether `file` starts as `print` says (true without a print), reading
/// the printed bytes into `head`.
async fn starts_as_printed(
    file: &mut tokio::fs::File,
    print: Option<HeadPrint>,
    head: &mut Vec<u8>,
) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let Some(print) = print else { return Ok(true) };
    // A damaged offset file cannot make this read more than a head.
    if print.len as usize > HEAD_LEN {
        return Ok(false);
    }
    head.resize(print.len as usize, 0);
    file.seek(std::io::SeekFrom::Start(0)).await?;
    match file.read_exact(head).await {
        Ok(_) => Ok(HeadPrint::of(head) == Some(print)),
        // Shorter than what was read of it: not the same file.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The start to print with `acked`: the one read of its generation (the
/// current one, `generation`, or the one before), none if neither.
fn print_for<'a>(
    acked: &Position,
    generation: u64,
    head: &'a [u8],
    previous: &'a (u64, Vec<u8>),
) -> &'a [u8] {
    if acked.generation == generation {
        head
    } else if acked.generation == previous.0 {
        &previous.1
    } else {
        &[]
    }
}

/// Adds to `head` (the file's first bytes, up to [`HEAD_LEN`]) what `buf`,
/// holding the file from offset `base`, has beyond it.
fn extend_head(head: &mut Vec<u8>, base: u64, buf: &[u8]) {
    let have = head.len() as u64;
    if head.len() >= HEAD_LEN || base > have {
        return;
    }
    let from = (have - base) as usize;
    let to = buf.len().min(HEAD_LEN - base as usize);
    if from < to {
        head.extend_from_slice(&buf[from..to]);
    }
}

/// Reads and batches lines, tracking the byte position of each line end.
struct Reader {
    buf: Vec<u8>,
    /// Position of `buf[0]` in the file.
    base: Position,
    batch: Vec<Record>,
    /// The byte offset after each record's line, in the file's partition.
    offsets: Vec<u128>,
    origin: Arc<Origin>,
    batch_size: usize,
    decoder: LineDecoder,
    source: String,
    shutdown: Shutdown,
}

impl Reader {
    /// Decodes every complete line in the buffer, sending full batches.
    /// With `eof`, a final line without newline counts as complete.
    async fn drain(&mut self, eof: bool, out: &mut Output, in_flight: &mut InFlight) {
        let mut start = 0;
        // On shutdown, stop between batches: lines not yet sent stay unacknowledged
        // and are read again after a restart.
        while start < self.buf.len() {
            let end = match memchr::memchr(b'\n', &self.buf[start..]) {
                Some(i) => start + i + 1,
                None if eof => self.buf.len(),
                None => break,
            };
            let line_number = self.base.line + 1;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            if let Some(event) = self.decoder.decode(line_number, line) {
                self.batch.push(Record::Event(event));
                self.offsets
                    .push(u128::from(self.base.offset + (end - start) as u64));
            }
            self.base.line = line_number;
            self.base.offset += (end - start) as u64;
            start = end;
            if self.batch.len() >= self.batch_size {
                self.send(out, in_flight).await;
                if self.shutdown.is_cancelled() {
                    break;
                }
            }
        }
        self.buf.drain(..start);
    }

    async fn send(&mut self, out: &mut Output, in_flight: &mut InFlight) {
        let capacity = self.batch.capacity();
        let records = std::mem::replace(&mut self.batch, Vec::with_capacity(capacity));
        let offsets = std::mem::replace(&mut self.offsets, Vec::with_capacity(capacity));
        let (ack, receipt) = AckHandle::new();
        let batch = Batch::new(records, vec![ack]).with_positions(self.origin.clone(), offsets);
        out.send(batch).await;
        in_flight.pending.push_back((self.base, receipt));
        in_flight.collect_ready(&self.source);
    }
}

const READ_CHUNK: usize = 1 << 20;

#[async_trait]
impl Source for FileSource {
    async fn run(mut self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let SourceContext {
            name,
            mut out,
            shutdown,
            stats,
        } = cx;
        let follow = self.config.follow;
        let path = self.config.path.clone();
        let mut waiting = false;
        // The start of the file as read; and the one before, while batches
        // of the file it started (its generation) may still settle.
        let mut previous_head: (u64, Vec<u8>) = (u64::MAX, Vec::new());
        let (mut file, start, mut head) = loop {
            match self.open(follow).await {
                Ok(opened) => break opened,
                // Followed, like `tail -F`: a file its writer has not made
                // yet is waited for.
                Err(e) if follow && e.kind() == std::io::ErrorKind::NotFound => {
                    if !waiting {
                        tracing::warn!(source = %name, path = %path.display(), "the file does not exist yet; waiting for it");
                        waiting = true;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                }
                Err(e) => {
                    return Err(ComponentError::Fatal(format!(
                        "cannot open {}: {e}",
                        path.display()
                    )))
                }
            }
        };
        let dead_letters =
            std::mem::replace(&mut self.dead_letters, DeadLetterFile::new(PathBuf::new()));
        let decoder = LineDecoder::new(&name, stats.clone(), dead_letters);
        let mut in_flight = InFlight::new(start);
        let mut reader = Reader {
            buf: Vec::with_capacity(READ_CHUNK * 2),
            base: start,
            batch: Vec::with_capacity(self.config.batch_size),
            offsets: Vec::with_capacity(self.config.batch_size),
            origin: origin_of(&name, &path, start),
            batch_size: self.config.batch_size,
            decoder,
            source: name.clone(),
            shutdown: shutdown.clone(),
        };
        loop {
            let buf = std::mem::take(&mut reader.buf);
            let read = tokio::select! {
                biased;
                // What was read and not sent is read again after a restart.
                _ = shutdown.cancelled() => break,
                read = file.read_onto(buf, READ_CHUNK) => read,
            };
            let cannot_read = |e: std::io::Error| {
                ComponentError::Fatal(format!("cannot read {}: {e}", path.display()))
            };
            let (buf, read) = read.map_err(cannot_read)?;
            reader.buf = buf;
            let n = read.map_err(cannot_read)?;
            // The start of the file as read: rewritten in place, it differs.
            extend_head(&mut head, reader.base.offset, &reader.buf);
            if n > 0 {
                let lines_before = reader.base.line;
                reader.drain(false, &mut out, &mut in_flight).await;
                stats.received((reader.base.line - lines_before) as usize);
                if follow {
                    // Throttled: at most every 200 ms, so a crash mid-file
                    // replays little.
                    in_flight
                        .keep(
                            &self.offsets,
                            reader.base.generation,
                            (&head, &previous_head),
                            &stats,
                        )
                        .await;
                }
                continue;
            }
            // End of file: hand over what is batched.
            if !follow {
                let lines_before = reader.base.line;
                reader.drain(true, &mut out, &mut in_flight).await;
                stats.received((reader.base.line - lines_before) as usize);
            }
            if !reader.batch.is_empty() {
                reader.send(&mut out, &mut in_flight).await;
            }
            reader.decoder.flush();
            if !follow {
                break;
            }
            in_flight.collect_ready(&name);
            in_flight
                .keep(
                    &self.offsets,
                    reader.base.generation,
                    (&head, &previous_head),
                    &stats,
                )
                .await;
            // Just read, the start is what was read: kept before waiting, so
            // that a rewrite while this waits shows.
            let read_to = reader.base.offset + reader.buf.len() as u64;
            let want = HEAD_LEN.min(read_to as usize);
            if head.len() < want {
                if let Ok(seen) = file.read_head(want).await {
                    if seen.starts_with(&head) {
                        head = seen;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
            match rotated_or_truncated(&path, &file, read_to, &head).await {
                Ok(Change::None) => {}
                Ok(change) => {
                    // Finish the old file first: a writer may have appended before rotating.
                    if change == Change::Rotated {
                        if let Ok(rest) = file.read_rest().await {
                            reader.buf.extend_from_slice(&rest);
                        }
                    }
                    reader.drain(true, &mut out, &mut in_flight).await;
                    if !reader.batch.is_empty() {
                        reader.send(&mut out, &mut in_flight).await;
                    }
                    tracing::info!(source = %name, path = %path.display(), ?change, "reading the file from the start");
                    match self.open(false).await {
                        Ok((new_file, mut position, _)) => {
                            file = new_file;
                            // The old start goes with the old offsets, kept
                            // until the old batches have settled.
                            previous_head = (reader.base.generation, std::mem::take(&mut head));
                            reader.buf.clear();
                            position.generation = reader.base.generation + 1;
                            reader.origin = origin_of(&name, &path, position);
                            reader.base = position;
                            // Earlier batches of the old file still settle in order.
                            in_flight.pending.push_back((position, ready_receipt()));
                        }
                        Err(e) => stats.error(format!("cannot reopen {}: {e}", path.display())),
                    }
                }
                Err(e) => tracing::debug!(source = %name, "cannot stat {}: {e}", path.display()),
            }
        }
        // Let downstream drain and close, then settle what is in flight.
        drop(out);
        reader.decoder.flush();
        in_flight.collect_all(&name).await;
        if follow {
            in_flight
                .store(
                    &self.offsets,
                    print_for(
                        &in_flight.acked,
                        reader.base.generation,
                        &head,
                        &previous_head,
                    ),
                    true,
                )
                .await
                .map_err(|e| ComponentError::Fatal(format!("cannot keep the offset: {e}")))?;
        }
        Ok(())
    }
}

/// Modification time in nanoseconds since the epoch (0 if unknown).
fn modified_ns(metadata: &std::fs::Metadata) -> u64 {
    metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The partition of a file's records: its path, inode and generation.
fn origin_of(source: &str, path: &Path, position: Position) -> Arc<Origin> {
    Arc::new(Origin {
        source: source.to_owned(),
        partition: format!(
            "{}@{}#{}",
            path.display(),
            position.file_id,
            position.generation
        ),
        shard: None,
    })
}

fn ready_receipt() -> AckReceipt {
    let (handle, receipt) = AckHandle::new();
    drop(handle);
    receipt
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    Rotated,
    Truncated,
}

/// How much of a followed file's start is kept to tell it rewritten in
/// place: its first line or more, which holds an event's id and time.
const HEAD_LEN: usize = 1024;

/// Whether the file at `path` is another file than `file` (rotated), or
/// `file` was cut below `read_to` or rewritten from its start (truncated,
/// e.g. `copytruncate`, even if the writer has since written past
/// `read_to`): `head` is what its start was when last read, up to
/// [`HEAD_LEN`] bytes.
async fn rotated_or_truncated(
    path: &Path,
    file: &OpenFile,
    read_to: u64,
    head: &[u8],
) -> std::io::Result<Change> {
    let current = file.metadata().await?;
    let at_path = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        // Rotated away and not yet recreated: keep the old file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Change::None),
        Err(e) => return Err(e),
    };
    if file_id(&at_path) != file_id(&current) {
        Ok(Change::Rotated)
    } else if current.len() < read_to {
        Ok(Change::Truncated)
    } else {
        if head.is_empty() {
            return Ok(Change::None);
        }
        let seen = file.read_head(head.len()).await?;
        Ok(if seen == head {
            Change::None
        } else {
            Change::Truncated
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stored_offset_is_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = OffsetFile(dir.path().join("in").join("offset.json"));
        assert_eq!(offsets.load().await, None);
        let position = Position {
            file_id: 7,
            offset: 1024,
            line: 10,
            generation: 2,
        };
        offsets.store(position, b"{\"id\"").await.unwrap();
        let kept = offsets.load().await.unwrap();
        assert_eq!(kept.position, position);
        assert_eq!(kept.head, HeadPrint::of(b"{\"id\""));
        assert_ne!(kept.head, HeadPrint::of(b"{\"iD\""));
    }

    /// Offset files from before the print was kept still resume.
    #[tokio::test]
    async fn an_offset_file_without_a_print_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset.json");
        std::fs::write(&path, r#"{"file_id":7,"offset":1024,"line":10}"#).unwrap();
        let kept = OffsetFile(path).load().await.unwrap();
        assert_eq!((kept.position.offset, kept.position.generation), (1024, 0));
        assert_eq!(kept.head, None);
    }

    /// A kept offset goes with the start of its own generation's content:
    /// while the batches of a file cut in place still settle, their offsets
    /// are kept with the old start, never with the new content's.
    #[test]
    fn an_offset_is_printed_with_the_start_of_its_own_generation() {
        let at = |generation| Position {
            generation,
            ..Position::default()
        };
        let previous = (3, b"old start".to_vec());
        let head = b"new start".as_slice();
        assert_eq!(print_for(&at(4), 4, head, &previous), head);
        assert_eq!(print_for(&at(3), 4, head, &previous), b"old start");
        assert_eq!(print_for(&at(2), 4, head, &previous), b"");
    }

    /// A damaged offset file naming a print longer than a head reads
    /// nothing more: the file is read from the start.
    #[tokio::test]
    async fn a_print_longer_than_a_head_does_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![b'x'; 4 * HEAD_LEN]).unwrap();
        let mut file = tokio::fs::File::open(&path).await.unwrap();
        let print = HeadPrint {
            len: u32::MAX,
            xxh3: 0,
        };
        let mut head = Vec::new();
        assert!(!starts_as_printed(&mut file, Some(print), &mut head)
            .await
            .unwrap());
        assert!(head.capacity() <= HEAD_LEN);
    }

    #[test]
    fn the_head_grows_from_each_read_until_it_is_full() {
        let file: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut head = Vec::new();
        // Reads of 700 bytes, each buffer starting where the last one ended.
        for base in (0..3000).step_by(700) {
            extend_head(&mut head, base as u64, &file[base..(base + 700).min(3000)]);
        }
        assert_eq!(head, file[..HEAD_LEN]);
        // A buffer starting past what the head holds (a resumed file) adds nothing.
        let mut head = file[..10].to_vec();
        extend_head(&mut head, 20, &file[20..100]);
        assert_eq!(head, file[..10]);
        // One starting inside it adds what follows.
        extend_head(&mut head, 5, &file[5..100]);
        assert_eq!(head, file[..100]);
    }
}
