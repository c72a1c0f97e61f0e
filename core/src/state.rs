//! State a processor declares, and the runtime checkpoints.
//!
//! A stateful processor (`aggregate`, alert rules …) exposes its state
//! through [`ProcessorState`]: versioned bytes it can snapshot, restore and
//! merge with the state of a disjoint partition. Everything else is the
//! runtime's: the checkpoint timer, holding the acknowledgement handles of
//! what was folded until a snapshot holding it is durable, the source
//! positions saved in the same write, the store key, restoring at start and
//! `flowpulse state` (see [`crate::checkpoint`]).
//!
//! A state may keep immutable parts apart (the aggregate's frozen dedup
//! epochs): the store writes each part once, under its own key, before the
//! snapshot that names it, and deletes it after the first snapshot that no
//! longer does, so a checkpoint rewrites only what changed.

use std::collections::BTreeMap;

/// Which state layout a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateFormat {
    /// The kind of state, e.g. `"aggregate"`: a snapshot of another kind is
    /// refused.
    pub kind: &'static str,
    /// Its layout version: bump it when the bytes change meaning.
    pub version: u16,
}

/// One part of a state that never changes once made, kept apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Its id, unique within the state.
    pub id: u64,
    /// Its bytes, or `None` when the store already holds them.
    pub bytes: Option<Vec<u8>>,
}

/// A state as bytes, ready to be written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The state less its parts.
    pub body: Vec<u8>,
    /// Every part the state holds now (bytes only for those not stored).
    pub parts: Vec<Part>,
    /// How many input batches (calls of `process`, counted from the start of
    /// the run) the snapshot covers; `None`: all of them. A processor whose
    /// state may only hold what its own downstream confirmed says fewer; the
    /// runtime then keeps the acknowledgement handles and positions of the
    /// batches after that held for a later snapshot.
    pub covers: Option<u64>,
}

/// A state read back from a store: its body and the parts it names.
#[derive(Debug, Clone, Default)]
pub struct SavedState {
    /// The layout version the body was written with.
    pub version: u16,
    /// The state less its parts.
    pub body: Vec<u8>,
    /// The parts it names, by id.
    pub parts: BTreeMap<u64, Vec<u8>>,
}

/// Why a saved state cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The bytes are not a state of this kind at all.
    #[error("not a {expected} state")]
    NotAState {
        /// The kind expected.
        expected: &'static str,
    },
    /// A state of another kind (another processor type).
    #[error("it holds the state of a {found} processor, not of a {expected} one")]
    OtherKind {
        /// The kind found.
        found: String,
        /// The kind expected.
        expected: &'static str,
    },
    /// Written by a layout this version cannot read.
    #[error("state version {found} cannot be read by this version (expects {expected}); reset the state")]
    Version {
        /// The version found.
        found: u16,
        /// The version this build writes.
        expected: u16,
    },
    /// Written with settings that shape the state differently.
    #[error("it was written with other settings ({0}); reset the state or restore the settings")]
    Settings(String),
    /// A part the state names is missing.
    #[error("part {0} is missing")]
    MissingPart(u64),
    /// Damaged or incomplete bytes.
    #[error("the state is damaged: {0}")]
    Corrupt(String),
}

/// The state of a stateful processor, as the runtime sees it.
///
/// `snapshot` followed by `restore` into a fresh state must give a state
/// that behaves exactly as the original; `merge` adds the state of a
/// disjoint partition (of workflows, say) into this one.
pub trait ProcessorState: Send {
    /// The kind and layout version of its snapshots.
    fn format(&self) -> StateFormat;

    /// The state as bytes. `stored(id)` says whether the store already holds
    /// part `id` (whose bytes are then left out).
    fn snapshot(&mut self, stored: &dyn Fn(u64) -> bool) -> Snapshot;

    /// Replaces this (fresh) state with a saved one.
    fn restore(&mut self, saved: SavedState) -> Result<(), StateError>;

    /// Adds a saved state of a disjoint partition into this one.
    fn merge(&mut self, saved: SavedState) -> Result<(), StateError>;

    /// A small summary of the state that [`merge`](Self::merge)s like the
    /// whole into what the processor emits, leaving out what only folding
    /// needs (the aggregate's dedup window and workflow table). When the
    /// state is kept per partition and the partitions are spread over
    /// instances, each owner writes its partitions' partials every interval
    /// and every instance emits the merge of all of them. `None` (the
    /// default): the processor cannot be split that way.
    fn partial(&mut self) -> Option<Snapshot> {
        None
    }

    /// Settles a fresh state that the partials of every partition were just
    /// merged into, before it is emitted: what depends on all partitions at
    /// once (the aggregate's event time moves on by the wall clock only when
    /// every partition is idle). Returns the merged event time (ms), if the
    /// state keeps one; the runtime then moves each partition kept here to
    /// it ([`follow_time`](Self::follow_time)).
    fn settle_merged(&mut self) -> Option<i64> {
        None
    }

    /// Moves this partition's event time up to `t_ms`, the merge's: every
    /// partition then follows one clock, as one instance's state would, so
    /// what depends on it (expiry, held events, windows) matches.
    fn follow_time(&mut self, _t_ms: i64) {}

    /// Whether the state changed since its last snapshot other than by
    /// folding a batch (the aggregate applying held events as its event
    /// time moves on by the wall clock while the input is idle). The
    /// runtime then writes a checkpoint at the next interval though it
    /// holds no handles, so that a restart does not go back to before that
    /// change and show smaller totals than were already emitted. False by
    /// default.
    fn changed_by_itself(&self) -> bool {
        false
    }

    /// One line on what the state holds, for `flowpulse state show`.
    fn describe(&self) -> String;

    /// For a snapshot written before checkpoints carried the runtime's
    /// envelope: the parts it names and the key suffix each is stored under
    /// (the runtime reads `KEY:SUFFIX`). None by default.
    fn legacy_parts(&self, _body: &[u8]) -> Result<Vec<(u64, String)>, StateError> {
        Ok(Vec::new())
    }
}
