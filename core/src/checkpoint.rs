//! Where stateful processors keep their state between runs, and the form a
//! checkpoint takes there.
//!
//! A checkpoint is one value under `flowpulse:checkpoint:PIPELINE:COMPONENT:PARTITION`:
//! an envelope (magic, envelope version, the state's kind and version, the
//! source positions folded into it, the parts it names) followed by the
//! state's body. Parts ([`crate::state::Part`]) live under `KEY:part:ID`,
//! written before the envelope that names them and deleted after the first
//! envelope that no longer does, so a crash at any point leaves a complete
//! checkpoint. Stores are plugins registered by URL scheme
//! ([`StoreDescriptor`]); core opens none itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::redact::redact_url;
use crate::state::{ProcessorState, SavedState, Snapshot, StateError, StateFormat};

/// A failure of the store itself (not of what it holds).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or refused the command; retrying may help.
    #[error("checkpoint store unavailable: {0}")]
    Unavailable(String),
    /// A local file operation failed.
    #[error("checkpoint store I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// A write by an instance that no longer owns the state: another took
    /// a newer fencing token since (see [`Fence`]).
    #[error("refused: fencing token {token} is stale (the latest is {current}); another instance owns this state now")]
    Fenced {
        /// The writer's token.
        token: u64,
        /// The latest token taken.
        current: u64,
    },
    /// The store cannot fence writes.
    #[error("this checkpoint store cannot fence writes ({0}); use a redis:// or file:// store")]
    NoFencing(&'static str),
    /// The URL names no store this build knows.
    #[error("unsupported checkpoint URL {url} (use {known})")]
    UnsupportedUrl {
        /// The URL, credentials redacted.
        url: String,
        /// The schemes this build supports.
        known: String,
    },
}

/// Why a checkpoint could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The checkpoint holds a state the processor cannot take.
    #[error("checkpoint {key}: {source} (`flowpulse state reset` clears it)")]
    State {
        /// Its key.
        key: String,
        /// What is wrong with it.
        source: StateError,
    },
}

/// A durable key → bytes store (Redis, a directory …).
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The bytes under `key`, if any.
    async fn load(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replaces the bytes under `key` atomically and durably.
    async fn save(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// Replaces the bytes under `key` with the concatenation of `pieces`,
    /// atomically and durably. By default it joins them and calls
    /// [`save`](Self::save); a store that can send them as they are
    /// overrides it, sparing a checkpoint of megabytes a copy.
    async fn save_joined(&self, key: &str, pieces: &[&[u8]]) -> Result<(), StoreError> {
        self.save(key, &pieces.concat()).await
    }
    /// Removes `key` (nothing if it is absent).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Every key starting with `prefix`.
    async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Takes the next fencing token under `fence_key` (an atomic increment
    /// from 0, so the first is 1): from then on, fenced writes carrying an
    /// older token are refused.
    async fn take_fence(&self, _fence_key: &str) -> Result<u64, StoreError> {
        Err(StoreError::NoFencing("take_fence"))
    }
    /// The latest token taken under `fence_key` (0: none yet).
    async fn fence_of(&self, fence_key: &str) -> Result<u64, StoreError> {
        Ok(match self.load(fence_key).await? {
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            None => 0,
        })
    }
    /// [`save_joined`](Self::save_joined), done only while `fence.token`
    /// is the latest token taken (checked and written atomically);
    /// otherwise [`StoreError::Fenced`].
    async fn save_fenced(
        &self,
        _fence: &Fence,
        _key: &str,
        _pieces: &[&[u8]],
    ) -> Result<(), StoreError> {
        Err(StoreError::NoFencing("save_fenced"))
    }
    /// [`delete`](Self::delete) under the same condition.
    async fn delete_fenced(&self, _fence: &Fence, _key: &str) -> Result<(), StoreError> {
        Err(StoreError::NoFencing("delete_fenced"))
    }
    /// Takes or renews the lease `key` for `owner` for `ttl`, if it is free,
    /// lapsed, or `owner`'s already: `None`. Held by another: its owner.
    async fn lease(
        &self,
        _key: &str,
        _owner: &str,
        _ttl: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        Err(StoreError::NoFencing("lease"))
    }
    /// Gives the lease `key` up, if `owner` holds it.
    async fn release_lease(&self, _key: &str, _owner: &str) -> Result<(), StoreError> {
        Err(StoreError::NoFencing("release_lease"))
    }
}

/// The key of the lease under which one instance at a time runs a
/// component of a pipeline whose input is shared among instances.
pub fn lease_key(pipeline: &str, component: &str) -> String {
    format!("flowpulse:lease:{pipeline}:{component}")
}

/// A fencing token: the right to write one state, taken by the instance
/// that owns it now. librdkafka says nothing of group generations, so the
/// store is the arbiter: a stalled instance that wakes up after its
/// partition moved carries an older token, and its writes are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// Where the latest token is kept.
    pub key: String,
    /// This owner's token.
    pub token: u64,
}

/// The key under which a state's latest fencing token is kept.
pub fn fence_key(key: &str) -> String {
    format!("{key}:fence")
}

/// The key naming the instance that took a state's latest fencing token.
pub fn owner_key(key: &str) -> String {
    format!("{key}:owner")
}

/// What names this instance as an owner: its host name and process id.
pub fn instance_label() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host} (pid {})", std::process::id())
}

/// The partitions of a component with a checkpoint in `store` (see
/// [`checkpoint_key`]), in order.
pub async fn partitions(
    store: &dyn CheckpointStore,
    pipeline: &str,
    component: &str,
) -> Result<Vec<u32>, StoreError> {
    let prefix = checkpoint_key(pipeline, component, 0);
    let prefix = prefix.trim_end_matches('0');
    let mut found: Vec<u32> = store
        .keys_with_prefix(prefix)
        .await?
        .iter()
        .filter_map(|key| key.strip_prefix(prefix)?.parse().ok())
        .collect();
    found.sort_unstable();
    found.dedup();
    Ok(found)
}

/// A view of a store whose every write is fenced: what an owner of one
/// partition's state writes through, so that none of its writes (snapshot,
/// parts, partials, deletions) lands once another instance owns the state.
pub struct FencedStore {
    inner: Arc<dyn CheckpointStore>,
    fence: Fence,
}

impl FencedStore {
    /// Writes to `inner` under `fence`.
    pub fn new(inner: Arc<dyn CheckpointStore>, fence: Fence) -> FencedStore {
        FencedStore { inner, fence }
    }

    /// The fence its writes carry.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }
}

#[async_trait]
impl CheckpointStore for FencedStore {
    async fn load(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.load(key).await
    }
    async fn save(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.inner.save_fenced(&self.fence, key, &[bytes]).await
    }
    async fn save_joined(&self, key: &str, pieces: &[&[u8]]) -> Result<(), StoreError> {
        self.inner.save_fenced(&self.fence, key, pieces).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete_fenced(&self.fence, key).await
    }
    async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.keys_with_prefix(prefix).await
    }
    async fn take_fence(&self, fence_key: &str) -> Result<u64, StoreError> {
        self.inner.take_fence(fence_key).await
    }
    async fn save_fenced(
        &self,
        fence: &Fence,
        key: &str,
        pieces: &[&[u8]],
    ) -> Result<(), StoreError> {
        self.inner.save_fenced(fence, key, pieces).await
    }
    async fn delete_fenced(&self, fence: &Fence, key: &str) -> Result<(), StoreError> {
        self.inner.delete_fenced(fence, key).await
    }
    async fn lease(
        &self,
        key: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        self.inner.lease(key, owner, ttl).await
    }
    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        self.inner.release_lease(key, owner).await
    }
}

/// Opens the store of a URL.
pub type StoreOpener = fn(&str) -> BoxFuture<'_, Result<Arc<dyn CheckpointStore>, StoreError>>;

/// A registered kind of checkpoint store, chosen by URL scheme:
///
/// ```ignore
/// inventory::submit! { StoreDescriptor { scheme: "file", open: open_file_store } }
/// ```
pub struct StoreDescriptor {
    /// The URL scheme, without `://`.
    pub scheme: &'static str,
    /// Opens a store.
    pub open: StoreOpener,
}

inventory::collect!(StoreDescriptor);

/// Opens the store a `[checkpoint] url` names.
pub async fn open(url: &str) -> Result<Arc<dyn CheckpointStore>, StoreError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or_default();
    match inventory::iter::<StoreDescriptor>
        .into_iter()
        .find(|d| d.scheme == scheme)
    {
        Some(descriptor) => (descriptor.open)(url).await,
        None => {
            let mut known: Vec<String> = inventory::iter::<StoreDescriptor>
                .into_iter()
                .map(|d| format!("{}://", d.scheme))
                .collect();
            known.sort();
            Err(StoreError::UnsupportedUrl {
                url: redact_url(url),
                known: known.join(", "),
            })
        }
    }
}

/// The key of a component's state: scoped by pipeline name, component name
/// and partition, so pipelines and instances sharing a store never collide.
pub fn checkpoint_key(pipeline: &str, component: &str, partition: u32) -> String {
    format!("flowpulse:checkpoint:{pipeline}:{component}:{partition}")
}

/// The key of the latest partial of one partition's state: a small
/// mergeable summary its owner writes every interval, from which any
/// instance computes the output of the whole (see
/// [`ProcessorState::partial`]).
pub fn partial_key(pipeline: &str, component: &str, partition: u32) -> String {
    format!("{}{partition}", partial_prefix(pipeline, component))
}

/// The prefix of every partial of a component.
pub fn partial_prefix(pipeline: &str, component: &str) -> String {
    format!("flowpulse:partial:{pipeline}:{component}:")
}

/// The key of the partition count a source sharing its partitions among
/// instances first read its input with (a change would move keys between
/// partitions, so it is refused).
pub fn partition_count_key(pipeline: &str, source: &str) -> String {
    format!("flowpulse:partitions:{pipeline}:{source}")
}

/// The key of part `id` of the checkpoint under `key`.
pub fn part_key(key: &str, id: u64) -> String {
    format!("{key}:part:{id}")
}

/// Identifies a stream of positions: the input a batch arrived through, the
/// source that read it and the source's partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PositionKey {
    /// The component the batch arrived from.
    pub input: String,
    /// The source component that read it.
    pub source: String,
    /// The partition within the source.
    pub partition: String,
}

/// Marks a [`PositionKey`] that says where a source resumes reading its
/// partition rather than which records were folded.
const RESUME_PREFIX: &str = "resume:";

impl PositionKey {
    /// The key under which a checkpoint keeps where `source` has read its
    /// own partition `partition` up to (see
    /// [`crate::record::Positions::resume`]). No source names a partition
    /// this way, so it never filters records.
    pub fn resume(input: &str, source: &str, partition: &str) -> PositionKey {
        PositionKey {
            input: input.to_owned(),
            source: source.to_owned(),
            partition: format!("{RESUME_PREFIX}{partition}"),
        }
    }

    /// For a key made by [`PositionKey::resume`]: the source's partition.
    pub fn resumes(&self) -> Option<&str> {
        self.partition.strip_prefix(RESUME_PREFIX)
    }
}

/// The largest offset folded, per position key.
pub type PositionMap = BTreeMap<PositionKey, u128>;

const MAGIC: &[u8; 4] = b"FPCK";
const ENVELOPE_VERSION: u16 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    kind: String,
    version: u16,
    positions: Vec<(PositionKey, u128)>,
    parts: Vec<u64>,
    /// Keys of the pre-envelope checkpoint this one replaced, deleted right
    /// after it is written; named here so that a crash in between leaves
    /// them to the next write rather than in the store for good.
    retired: Vec<String>,
}

/// A checkpoint read back: what the runtime keeps of it besides the state.
#[derive(Debug, Default)]
pub struct Restored {
    /// Bytes read (envelope and parts).
    pub bytes: usize,
    /// Positions folded into it (empty for a checkpoint written before
    /// positions were kept: known again from the first new checkpoint).
    pub positions: PositionMap,
    /// Parts in the store that it names.
    pub parts: BTreeSet<u64>,
    /// Keys of a pre-envelope checkpoint's parts, deleted once a new
    /// checkpoint has replaced it.
    pub legacy_keys: Vec<String>,
    /// Parts read.
    pub part_count: usize,
    /// Written before checkpoints had envelopes (and positions).
    pub pre_envelope: bool,
}

/// The envelope's header: a checkpoint is this followed by the snapshot's
/// body (written as two pieces, so the body is never copied).
fn encode_header(
    format: StateFormat,
    positions: &PositionMap,
    snapshot: &Snapshot,
    retired: &[String],
) -> Vec<u8> {
    let header = Header {
        kind: format.kind.to_owned(),
        version: format.version,
        positions: positions.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        parts: snapshot.parts.iter().map(|p| p.id).collect(),
        retired: retired.to_vec(),
    };
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&ENVELOPE_VERSION.to_le_bytes());
    match postcard::to_extend(&header, bytes) {
        Ok(bytes) => bytes,
        // Plain data into a Vec: cannot fail.
        Err(e) => unreachable!("encoding a checkpoint header failed: {e}"),
    }
}

/// Splits an envelope: `None` if the bytes predate envelopes.
fn decode(bytes: &[u8]) -> Result<Option<(Header, &[u8])>, StateError> {
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        return Ok(None);
    };
    let (version, rest) = rest
        .split_at_checked(2)
        .ok_or_else(|| StateError::Corrupt("truncated checkpoint envelope".into()))?;
    let version = u16::from_le_bytes([version[0], version[1]]);
    if version != ENVELOPE_VERSION {
        return Err(StateError::Corrupt(format!(
            "checkpoint envelope version {version} is unknown to this version (expects {ENVELOPE_VERSION})"
        )));
    }
    let (header, body): (Header, &[u8]) =
        postcard::take_from_bytes(rest).map_err(|e| StateError::Corrupt(e.to_string()))?;
    Ok(Some((header, body)))
}

/// Loads the checkpoint under `key` into `state` (a fresh one). `None` if
/// there is none.
pub async fn load(
    store: &dyn CheckpointStore,
    key: &str,
    state: &mut dyn ProcessorState,
) -> Result<Option<Restored>, CheckpointError> {
    let Some((saved, restored)) = load_saved(store, key, &mut *state).await? else {
        return Ok(None);
    };
    state
        .restore(saved)
        .map_err(|source| CheckpointError::State {
            key: key.to_owned(),
            source,
        })?;
    Ok(Some(restored))
}

/// The positions of the checkpoint under `key`, read from its envelope
/// alone: `None` if there is none, empty if it predates positions.
pub async fn load_positions(
    store: &dyn CheckpointStore,
    key: &str,
) -> Result<Option<PositionMap>, CheckpointError> {
    let Some(main) = store.load(key).await? else {
        return Ok(None);
    };
    let header = decode(&main).map_err(|source| CheckpointError::State {
        key: key.to_owned(),
        source,
    })?;
    Ok(Some(header.map_or_else(PositionMap::new, |(header, _)| {
        header.positions.into_iter().collect()
    })))
}

/// Reads the checkpoint under `key` as `state`'s kind, without restoring
/// it (to merge it into another, say). `None` if there is none.
pub async fn load_saved(
    store: &dyn CheckpointStore,
    key: &str,
    state: &mut dyn ProcessorState,
) -> Result<Option<(SavedState, Restored)>, CheckpointError> {
    let Some(main) = store.load(key).await? else {
        return Ok(None);
    };
    let refused = |source: StateError| CheckpointError::State {
        key: key.to_owned(),
        source,
    };
    let format = state.format();
    let mut restored = Restored {
        bytes: main.len(),
        ..Restored::default()
    };
    let mut saved = SavedState::default();
    let part_keys: Vec<(u64, String)> = match decode(&main).map_err(refused)? {
        Some((header, body)) => {
            if header.kind != format.kind {
                return Err(refused(StateError::OtherKind {
                    found: header.kind,
                    expected: format.kind,
                }));
            }
            saved.version = header.version;
            saved.body = body.to_vec();
            restored.positions = header.positions.into_iter().collect();
            restored.parts = header.parts.iter().copied().collect();
            restored.legacy_keys = header.retired;
            header
                .parts
                .into_iter()
                .map(|id| (id, part_key(key, id)))
                .collect()
        }
        None => {
            // Written before envelopes: the state's own bytes, positions unknown.
            restored.pre_envelope = true;
            let legacy = state.legacy_parts(&main).map_err(refused)?;
            saved.body = main;
            saved.version = 0;
            let keys: Vec<(u64, String)> = legacy
                .into_iter()
                .map(|(id, suffix)| (id, format!("{key}:{suffix}")))
                .collect();
            restored.legacy_keys = keys.iter().map(|(_, k)| k.clone()).collect();
            keys
        }
    };
    for (id, part) in &part_keys {
        let bytes = store
            .load(part)
            .await?
            .ok_or_else(|| refused(StateError::MissingPart(*id)))?;
        restored.bytes += bytes.len();
        saved.parts.insert(*id, bytes);
    }
    restored.part_count = part_keys.len();
    Ok(Some((saved, restored)))
}

/// Writes a checkpoint: the parts the store lacks, then the envelope naming
/// them, then deletes the parts it no longer names (and a replaced
/// pre-envelope checkpoint's). `stored` is updated to what the store holds.
/// Returns the bytes written.
pub async fn write(
    store: &dyn CheckpointStore,
    key: &str,
    format: StateFormat,
    positions: &PositionMap,
    snapshot: &Snapshot,
    stored: &mut BTreeSet<u64>,
    legacy_keys: &mut Vec<String>,
) -> Result<usize, StoreError> {
    let mut written = 0;
    for part in &snapshot.parts {
        if let Some(bytes) = &part.bytes {
            store.save(&part_key(key, part.id), bytes).await?;
            written += bytes.len();
            stored.insert(part.id);
        }
    }
    let header = encode_header(format, positions, snapshot, legacy_keys);
    store.save_joined(key, &[&header, &snapshot.body]).await?;
    written += header.len() + snapshot.body.len();
    let live: BTreeSet<u64> = snapshot.parts.iter().map(|p| p.id).collect();
    let retired: Vec<u64> = stored.difference(&live).copied().collect();
    for id in retired {
        store.delete(&part_key(key, id)).await?;
        stored.remove(&id);
    }
    while let Some(old) = legacy_keys.last() {
        store.delete(old).await?;
        legacy_keys.pop();
    }
    Ok(written)
}

/// Deletes the parts under `key` that its checkpoint does not name: a crash
/// between writing a checkpoint and deleting what it retired leaves them.
/// Returns how many were deleted.
pub async fn sweep(
    store: &dyn CheckpointStore,
    key: &str,
    named: &BTreeSet<u64>,
) -> Result<usize, StoreError> {
    let prefix = part_key(key, 0);
    let prefix = prefix.trim_end_matches('0');
    let mut swept = 0;
    for found in store.keys_with_prefix(prefix).await? {
        let id = found.strip_prefix(prefix).and_then(|id| id.parse().ok());
        if id.is_some_and(|id| !named.contains(&id)) {
            store.delete(&found).await?;
            swept += 1;
        }
    }
    Ok(swept)
}

/// Deletes the checkpoint under `key` and every part of it: the envelope
/// first, so a crash midway leaves no checkpoint naming missing parts.
pub async fn delete(
    store: &dyn CheckpointStore,
    key: &str,
    state: &dyn ProcessorState,
) -> Result<(), StoreError> {
    let legacy = match store.load(key).await? {
        Some(main) => match decode(&main) {
            Ok(Some((header, _))) => header.retired,
            _ => state
                .legacy_parts(&main)
                .unwrap_or_default()
                .into_iter()
                .map(|(_, suffix)| format!("{key}:{suffix}"))
                .collect(),
        },
        None => Vec::new(),
    };
    store.delete(key).await?;
    for old in legacy {
        store.delete(&old).await?;
    }
    sweep(store, key, &BTreeSet::new()).await?;
    Ok(())
}

/// What `flowpulse state show` prints of a checkpoint: its key, state
/// format, size, positions and what the state holds.
pub async fn describe(
    store: &dyn CheckpointStore,
    key: &str,
    state: &mut dyn ProcessorState,
) -> Result<Option<String>, CheckpointError> {
    let Some(restored) = load(store, key, state).await? else {
        return Ok(None);
    };
    let format = state.format();
    let positions = if restored.pre_envelope {
        "positions unknown (written before positions were kept)".to_owned()
    } else if restored.positions.is_empty() {
        // A processor fed by sources without positions (`demo`, `stdin`,
        // another processor's output) has none to keep.
        "no positions".to_owned()
    } else {
        restored
            .positions
            .iter()
            .map(|(k, offset)| {
                format!(
                    "{}/{}/{} at {}",
                    k.input,
                    k.source,
                    k.partition,
                    display_offset(*offset)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(Some(format!(
        "{} state version {}, {} bytes ({} parts); {}; {}",
        format.kind,
        format.version,
        restored.bytes,
        restored.part_count,
        positions,
        state.describe()
    )))
}

/// A Redis stream entry id (`ms-seq`) packed as `ms << 64 | seq`.
pub fn stream_id_offset(id: &str) -> Option<u128> {
    let (ms, seq) = id.split_once('-')?;
    Some(u128::from(ms.parse::<u64>().ok()?) << 64 | u128::from(seq.parse::<u64>().ok()?))
}

/// An offset as people read it: a stream id when it looks like one, else
/// the number.
fn display_offset(offset: u128) -> String {
    let high = (offset >> 64) as u64;
    if high > 0 {
        format!("{high}-{}", offset as u64)
    } else {
        offset.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_as_offsets() {
        let a = stream_id_offset("1700000000000-5").unwrap();
        let b = stream_id_offset("1700000000000-12").unwrap();
        let c = stream_id_offset("1700000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(display_offset(b), "1700000000000-12");
        assert_eq!(stream_id_offset("nope"), None);
    }

    #[test]
    fn an_envelope_round_trips_and_old_bytes_are_not_one() {
        let mut positions = PositionMap::new();
        positions.insert(
            PositionKey {
                input: "events".into(),
                source: "events".into(),
                partition: "stream".into(),
            },
            42,
        );
        let snapshot = Snapshot {
            body: b"body".to_vec(),
            parts: vec![crate::state::Part { id: 3, bytes: None }],
            covers: None,
        };
        let format = StateFormat {
            kind: "kind",
            version: 7,
        };
        let retired = vec!["old:epoch:0".to_owned()];
        let bytes = [
            encode_header(format, &positions, &snapshot, &retired),
            snapshot.body.clone(),
        ]
        .concat();
        let (header, body) = decode(&bytes).unwrap().unwrap();
        assert_eq!(header.kind, "kind");
        assert_eq!(header.version, 7);
        assert_eq!(header.parts, vec![3]);
        assert_eq!(header.retired, retired);
        assert_eq!(
            header.positions.into_iter().collect::<PositionMap>(),
            positions
        );
        assert_eq!(body, b"body");
        assert!(decode(b"FPAG\x02\x00rest").unwrap().is_none());
    }
}
