//! The versioned binary form of [`AggregateState`]: a magic, a version, the
//! state in postcard, then its dedup window. The dedup window's epochs never
//! change once frozen, so a checkpoint store keeps each of them under its own
//! key, written once ([`snapshot_split`]), and the main snapshot only names
//! them; a standalone snapshot ([`snapshot`]) carries them inline. A snapshot
//! of another version, or of a state with other limits, is refused with a
//! message saying so.

use std::collections::{BTreeSet, HashMap};

use flowpulse_core::checkpoint::CheckpointStore;

use super::dedup::{Dedup, DedupForm, IdKey};
use super::state::{AggregateState, Limits};

const MAGIC: &[u8; 4] = b"FPAG";
/// The current snapshot version. Bump it when the state's layout changes.
pub const VERSION: u16 = 2;

/// Why a snapshot cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not an aggregate snapshot at all.
    #[error("not an aggregate snapshot")]
    NotASnapshot,
    /// Written by another version of the state layout.
    #[error("snapshot version {found} cannot be read by this version (expects {expected}); reset the state")]
    Version {
        /// Its version.
        found: u16,
        /// Ours.
        expected: u16,
    },
    /// Written with other limits (out-of-order bound, caps, interval …).
    #[error("snapshot was written with other aggregate settings ({0}); reset the state or restore the settings")]
    Shape(String),
    /// Damaged or incomplete.
    #[error("snapshot is damaged: {0}")]
    Corrupt(String),
}

/// The store key of a dedup epoch kept apart from the snapshot under `key`.
pub fn epoch_key(key: &str, order: u64) -> String {
    format!("{key}:epoch:{order}")
}

fn encode(state: &AggregateState, form: &DedupForm) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1024);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    // Serializing plain data into a Vec cannot fail.
    let bytes = match postcard::to_extend(state, bytes) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("serializing the aggregate state failed: {e}"),
    };
    match postcard::to_extend(form, bytes) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("serializing the dedup window failed: {e}"),
    }
}

/// The whole state as bytes, epochs inline.
pub fn snapshot(state: &AggregateState) -> Vec<u8> {
    encode(state, &state.dedup().to_form(&|_| false))
}

/// The state as a main snapshot naming its epochs, plus the bytes of each
/// epoch not in `stored` (to be stored apart before the main snapshot).
pub fn snapshot_split(
    state: &AggregateState,
    stored: &BTreeSet<u64>,
) -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
    let dedup = state.dedup();
    let fresh: Vec<(u64, Vec<u8>)> = dedup
        .epoch_orders()
        .into_iter()
        .filter(|order| !stored.contains(order))
        .filter_map(|order| {
            let entries = dedup.epoch_entries(order)?;
            postcard::to_allocvec(&entries)
                .ok()
                .map(|bytes| (order, bytes))
        })
        .collect();
    (encode(state, &dedup.to_form(&|_| true)), fresh)
}

fn decode(bytes: &[u8], limits: &Limits) -> Result<(AggregateState, DedupForm), SnapshotError> {
    let (state, form) = decode_any(bytes)?;
    if state.limits() != limits {
        return Err(SnapshotError::Shape(format!(
            "snapshot {:?}, configured {:?}",
            state.limits(),
            limits
        )));
    }
    Ok((state, form))
}

/// Decodes a snapshot of this version whatever its limits.
fn decode_any(bytes: &[u8]) -> Result<(AggregateState, DedupForm), SnapshotError> {
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or(SnapshotError::NotASnapshot)?;
    let (version, body) = body
        .split_at_checked(2)
        .ok_or(SnapshotError::NotASnapshot)?;
    let found = u16::from_le_bytes([version[0], version[1]]);
    if found != VERSION {
        return Err(SnapshotError::Version {
            found,
            expected: VERSION,
        });
    }
    let (state, rest): (AggregateState, _) =
        postcard::take_from_bytes(body).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    let (form, _): (DedupForm, _) =
        postcard::take_from_bytes(rest).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    Ok((state, form))
}

/// The epochs a snapshot keeps apart (to load before [`restore_with`]).
pub fn epochs_apart(bytes: &[u8], limits: &Limits) -> Result<Vec<u64>, SnapshotError> {
    let (_, form) = decode(bytes, limits)?;
    Ok(form
        .epochs
        .iter()
        .filter(|e| e.entries.is_none())
        .map(|e| e.order)
        .collect())
}

/// A state from bytes written by [`snapshot`], checked against `limits`.
pub fn restore(bytes: &[u8], limits: &Limits) -> Result<AggregateState, SnapshotError> {
    restore_with(bytes, limits, |_| None)
}

/// A state from bytes written by [`snapshot_split`]; `apart` supplies the
/// epochs stored apart.
pub fn restore_with(
    bytes: &[u8],
    limits: &Limits,
    apart: impl FnMut(u64) -> Option<Vec<(IdKey, i64)>>,
) -> Result<AggregateState, SnapshotError> {
    let (mut state, form) = decode(bytes, limits)?;
    let dedup = Dedup::from_form(form, apart)
        .map_err(|order| SnapshotError::Corrupt(format!("dedup epoch {order} is missing")))?;
    state.set_dedup(dedup);
    state.rebuild_indices();
    Ok(state)
}

/// Loads the state under `key` (and its epochs) from a store: `None` if there
/// is none, else the state and the bytes read.
pub async fn load(
    store: &dyn CheckpointStore,
    key: &str,
    limits: &Limits,
) -> Result<Option<(AggregateState, usize)>, String> {
    let Some(main) = store.load(key).await? else {
        return Ok(None);
    };
    let mut total = main.len();
    let mut epochs = HashMap::new();
    for order in epochs_apart(&main, limits).map_err(|e| e.to_string())? {
        let bytes = store
            .load(&epoch_key(key, order))
            .await?
            .ok_or_else(|| format!("snapshot is damaged: dedup epoch {order} is missing"))?;
        total += bytes.len();
        let entries: Vec<(IdKey, i64)> = postcard::from_bytes(&bytes)
            .map_err(|e| format!("snapshot is damaged: dedup epoch {order}: {e}"))?;
        epochs.insert(order, entries);
    }
    let state =
        restore_with(&main, limits, |order| epochs.remove(&order)).map_err(|e| e.to_string())?;
    Ok(Some((state, total)))
}

/// Deletes the state under `key` (whatever settings wrote it) and the epochs
/// it names: the snapshot first, so a crash midway leaves no snapshot naming
/// missing epochs.
pub async fn delete(store: &dyn CheckpointStore, key: &str) -> Result<(), String> {
    let orders = match store.load(key).await? {
        Some(main) => decode_any(&main)
            .map(|(_, form)| form.epochs.iter().map(|e| e.order).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    store.delete(key).await?;
    for order in orders {
        store.delete(&epoch_key(key, order)).await?;
    }
    Ok(())
}

/// What a state holds, for `flowpulse state show`.
pub fn describe(state: &AggregateState, bytes: usize) -> String {
    let a = state.accounting();
    format!(
        "version {VERSION}, {bytes} bytes: event time {}, {} events folded, {} duplicates dropped, {} anomalies, {} workflows in memory, {} identities in the dedup window, {} events held for reordering",
        state
            .event_time_ms()
            .map_or("none".into(), flowpulse_core::event::format_rfc3339_ms),
        a.events,
        a.duplicates,
        a.anomalies,
        state.workflows_in_memory(),
        state.dedup_len(),
        state.pending_len()
    )
}
