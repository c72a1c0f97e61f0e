//! The versioned binary form of [`AggregateState`]: a magic, a version, the
//! state in postcard, then its dedup window. The dedup window's epochs never
//! change once frozen, so a checkpoint store keeps each of them under its own
//! key, written once ([`snapshot_split`]), and the main snapshot only names
//! them; a standalone snapshot ([`snapshot`]) carries them inline. A snapshot
//! of another version, or of a state with other limits, is refused with a
//! message saying so.

use std::collections::BTreeSet;

use flowpulse_core::state::{Part, ProcessorState, SavedState, Snapshot, StateError, StateFormat};

use super::dedup::{Dedup, DedupForm, IdKey};
use super::state::{AggregateState, Limits};

const MAGIC: &[u8; 4] = b"FPAG";
/// The current snapshot version. Bump it when the state's layout changes.
/// Version 3 appends [`Extras`] to version 2's layout, and version 4
/// [`Activity`] to version 3's; 2 and 3 still restore.
pub const VERSION: u16 = 4;
/// The oldest version this one restores.
const OLDEST_READABLE: u16 = 2;

/// What version 3 added after version 2's state and dedup window.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Extras {
    /// Outcome times of finished workflows still held, by slot.
    outcome_ms: Vec<(u32, i64)>,
    /// Slots of finished workflows whose duration is still unknown.
    duration_missing: Vec<u32>,
    /// Where the sealed history ends.
    history_sealed_ms: i64,
}

/// What version 4 added after version 3's extras.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Activity {
    /// When (wall clock, ms) an event was last folded.
    active_at_wall_ms: Option<i64>,
}

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

/// The key suffix under which the snapshots of version 2 kept a dedup epoch
/// apart (before checkpoints were the runtime's).
fn legacy_epoch_suffix(order: u64) -> String {
    format!("epoch:{order}")
}

fn encode(state: &AggregateState, form: &DedupForm) -> Vec<u8> {
    encode_layout(state, form, VERSION)
}

/// The state in the layout of `version` (3 or this one).
fn encode_layout(state: &AggregateState, form: &DedupForm, version: u16) -> Vec<u8> {
    // Sized up front: growing a buffer of megabytes by doubling copied it
    // and faulted in fresh pages at every step (a tenth of a checkpointed
    // pipeline's time in profiles). Pages reserved and never written cost
    // nothing.
    let estimate = 64 * 1024
        + 96 * state.slot_count()
        + 48 * state.pending_len()
        + 24 * (state.dedup_len() + state.finished_len());
    let mut bytes = Vec::with_capacity(estimate);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&version.to_le_bytes());
    // Serializing plain data into a Vec cannot fail.
    let bytes = match postcard::to_extend(state, bytes) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("serializing the aggregate state failed: {e}"),
    };
    let bytes = match postcard::to_extend(form, bytes) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("serializing the dedup window failed: {e}"),
    };
    let (outcome_ms, duration_missing, history_sealed_ms) = state.extras();
    let extras = Extras {
        outcome_ms,
        duration_missing,
        history_sealed_ms,
    };
    let bytes = match postcard::to_extend(&extras, bytes) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("serializing the snapshot extras failed: {e}"),
    };
    if version < 4 {
        return bytes;
    }
    let activity = Activity {
        active_at_wall_ms: state.active_at_wall_ms,
    };
    match postcard::to_extend(&activity, bytes) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("serializing the snapshot's activity failed: {e}"),
    }
}

/// The whole state as a version-3 snapshot would hold it, epochs inline.
#[cfg(test)]
pub(super) fn snapshot_of_version_3(state: &AggregateState) -> Vec<u8> {
    encode_layout(state, &state.dedup().to_form(&|_| false), 3)
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
    let (mut state, form, extras, activity) = decode_any(bytes)?;
    state.active_at_wall_ms = activity.active_at_wall_ms;
    match extras {
        Some(extras) => state.set_extras(
            &extras.outcome_ms,
            &extras.duration_missing,
            extras.history_sealed_ms,
        ),
        None => state.upgrade_from_version_2(),
    }
    if state.limits() != limits {
        return Err(SnapshotError::Shape(format!(
            "snapshot {:?}, configured {:?}",
            state.limits(),
            limits
        )));
    }
    Ok((state, form))
}

/// What a snapshot of any readable version decodes to: the state, its
/// dedup window, and what versions 3 and 4 appended (if it has them).
type Decoded = (AggregateState, DedupForm, Option<Extras>, Activity);

/// Decodes a snapshot of this version whatever its limits.
fn decode_any(bytes: &[u8]) -> Result<Decoded, SnapshotError> {
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or(SnapshotError::NotASnapshot)?;
    let (version, body) = body
        .split_at_checked(2)
        .ok_or(SnapshotError::NotASnapshot)?;
    let found = u16::from_le_bytes([version[0], version[1]]);
    if !(OLDEST_READABLE..=VERSION).contains(&found) {
        return Err(SnapshotError::Version {
            found,
            expected: VERSION,
        });
    }
    let (state, rest): (AggregateState, _) =
        postcard::take_from_bytes(body).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    let (form, rest): (DedupForm, _) =
        postcard::take_from_bytes(rest).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    let (extras, rest) = if found >= 3 {
        let (extras, rest): (Extras, _) =
            postcard::take_from_bytes(rest).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        (Some(extras), rest)
    } else {
        (None, rest)
    };
    let activity = if found >= 4 {
        let (activity, _): (Activity, _) =
            postcard::take_from_bytes(rest).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        activity
    } else {
        Activity::default()
    };
    Ok((state, form, extras, activity))
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

impl From<SnapshotError> for StateError {
    fn from(e: SnapshotError) -> StateError {
        match e {
            SnapshotError::NotASnapshot => StateError::NotAState {
                expected: "aggregate",
            },
            SnapshotError::Version { found, expected } => StateError::Version { found, expected },
            SnapshotError::Shape(shape) => StateError::Settings(shape),
            SnapshotError::Corrupt(what) => StateError::Corrupt(what),
        }
    }
}

/// The aggregate's state as the runtime checkpoints it: the body is the
/// snapshot naming its dedup epochs, each epoch a part.
impl ProcessorState for AggregateState {
    fn format(&self) -> StateFormat {
        StateFormat {
            kind: "aggregate",
            version: VERSION,
        }
    }

    fn snapshot(&mut self, stored: &dyn Fn(u64) -> bool) -> Snapshot {
        self.changed_by_itself = false;
        let already: BTreeSet<u64> = self
            .dedup_epochs()
            .into_iter()
            .filter(|order| stored(*order))
            .collect();
        let (body, fresh) = snapshot_split(self, &already);
        let mut parts: Vec<Part> = already
            .into_iter()
            .map(|id| Part { id, bytes: None })
            .collect();
        parts.extend(fresh.into_iter().map(|(id, bytes)| Part {
            id,
            bytes: Some(bytes),
        }));
        Snapshot {
            body,
            parts,
            covers: None,
        }
    }

    fn restore(&mut self, saved: SavedState) -> Result<(), StateError> {
        *self = restore_parts(saved, self.limits())?;
        Ok(())
    }

    fn merge(&mut self, saved: SavedState) -> Result<(), StateError> {
        let other = restore_parts(saved, self.limits())?;
        AggregateState::merge(self, &other);
        Ok(())
    }

    fn partial(&mut self) -> Option<Snapshot> {
        Some(self.summary().snapshot(&|_| false))
    }

    fn settle_merged(&mut self) -> Option<i64> {
        self.settle_merged_at(super::processor::wall_ms())
    }

    fn follow_time(&mut self, t_ms: i64) {
        self.follow(t_ms);
    }

    fn changed_by_itself(&self) -> bool {
        self.changed_by_itself
    }

    fn describe(&self) -> String {
        describe(self)
    }

    fn legacy_parts(&self, body: &[u8]) -> Result<Vec<(u64, String)>, StateError> {
        Ok(epochs_apart(body, self.limits())?
            .into_iter()
            .map(|order| (order, legacy_epoch_suffix(order)))
            .collect())
    }
}

/// A state from a saved body and its epochs.
fn restore_parts(mut saved: SavedState, limits: &Limits) -> Result<AggregateState, StateError> {
    let mut epochs = std::collections::HashMap::new();
    for (order, bytes) in std::mem::take(&mut saved.parts) {
        let entries: Vec<(IdKey, i64)> = postcard::from_bytes(&bytes)
            .map_err(|e| StateError::Corrupt(format!("dedup epoch {order}: {e}")))?;
        epochs.insert(order, entries);
    }
    Ok(restore_with(&saved.body, limits, |order| {
        epochs.remove(&order)
    })?)
}

/// What a state holds, for `flowpulse state show`.
pub fn describe(state: &AggregateState) -> String {
    let a = state.accounting();
    format!(
        "event time {}, {} events folded, {} duplicates dropped, {} anomalies, {} workflows in memory, {} identities in the dedup window, {} events held for reordering",
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
