//! The versioned binary form of [`AggregateState`]: a magic, a version, then
//! the state in postcard. A snapshot of another version, or of a state with
//! other limits, is refused with a message saying so.

use super::state::{AggregateState, Limits};

const MAGIC: &[u8; 4] = b"FPAG";
/// The current snapshot version. Bump it when the state's layout changes.
pub const VERSION: u16 = 1;

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
    /// Damaged.
    #[error("snapshot is damaged: {0}")]
    Corrupt(String),
}

/// The state as bytes.
pub fn snapshot(state: &AggregateState) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1024);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    // Serializing plain data into a Vec cannot fail.
    match postcard::to_extend(state, bytes) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("serializing the aggregate state failed: {e}"),
    }
}

/// A state from bytes written by [`snapshot`], checked against `limits`.
pub fn restore(bytes: &[u8], limits: &Limits) -> Result<AggregateState, SnapshotError> {
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
    let mut state: AggregateState =
        postcard::from_bytes(body).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    if state.limits() != limits {
        return Err(SnapshotError::Shape(format!(
            "snapshot {:?}, configured {:?}",
            state.limits(),
            limits
        )));
    }
    state.rebuild_indices();
    Ok(state)
}

/// What a snapshot holds, for `flowpulse state show`.
pub fn describe(bytes: &[u8], limits: &Limits) -> String {
    match restore(bytes, limits) {
        Ok(state) => {
            let a = state.accounting();
            format!(
                "version {VERSION}, {} bytes: event time {}, {} events folded, {} duplicates dropped, {} anomalies, {} workflows in memory, {} identities in the dedup window, {} events held for reordering",
                bytes.len(),
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
        Err(e) => format!("{} bytes, not usable: {e}", bytes.len()),
    }
}
