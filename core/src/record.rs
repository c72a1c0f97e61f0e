//! Records and the batches that carry them between components.

use std::fmt;
use std::sync::Arc;

use crate::ack::AckHandle;
use crate::alert::Alert;
use crate::event::WorkflowEvent;
use crate::metrics::RealtimeMetrics;

/// A named value from a custom metric processor, merged by `aggregate` into
/// the metrics document under `custom.NAME`.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomMetric {
    /// The key under `custom`.
    pub name: String,
    /// Any JSON value (a number, or an object for labelled series).
    pub value: serde_json::Value,
}

/// One unit of data travelling through the pipeline.
#[derive(Debug, Clone)]
pub enum Record {
    /// A workflow event (CONTRACT §1).
    Event(WorkflowEvent),
    /// A metrics document (CONTRACT §2); shared, as every sink gets the same.
    Metrics(Arc<RealtimeMetrics>),
    /// An alert notice at one point of its lifecycle.
    Alert(Arc<Alert>),
    /// A custom metric value.
    Custom(Arc<CustomMetric>),
}

impl Record {
    /// The event, if this record is one.
    pub fn as_event(&self) -> Option<&WorkflowEvent> {
        match self {
            Record::Event(event) => Some(event),
            _ => None,
        }
    }

    /// A custom metric record; `value` is anything serializable to JSON
    /// (a value that cannot be becomes `null`).
    pub fn custom(name: &str, value: &impl serde::Serialize) -> Record {
        Record::Custom(Arc::new(CustomMetric {
            name: name.to_owned(),
            value: serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        }))
    }

    /// The record's kind, for topology type checks.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Event(_) => RecordKind::Event,
            Record::Metrics(_) => RecordKind::Metrics,
            Record::Alert(_) => RecordKind::Alert,
            Record::Custom(_) => RecordKind::Custom,
        }
    }
}

/// The kinds of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Workflow events.
    Event = 1,
    /// Metrics documents.
    Metrics = 2,
    /// Alert notices.
    Alert = 4,
    /// Custom metric values.
    Custom = 8,
}

impl RecordKind {
    fn name(self) -> &'static str {
        match self {
            RecordKind::Event => "events",
            RecordKind::Metrics => "metrics",
            RecordKind::Alert => "alerts",
            RecordKind::Custom => "custom metrics",
        }
    }
}

/// A set of record kinds: what a component emits or accepts.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordKinds(u8);

impl RecordKinds {
    /// No kind.
    pub const NONE: RecordKinds = RecordKinds(0);
    /// Workflow events only.
    pub const EVENTS: RecordKinds = RecordKinds(RecordKind::Event as u8);
    /// Metrics documents only.
    pub const METRICS: RecordKinds = RecordKinds(RecordKind::Metrics as u8);
    /// Alert notices only.
    pub const ALERTS: RecordKinds = RecordKinds(RecordKind::Alert as u8);
    /// Custom metric values only.
    pub const CUSTOM: RecordKinds = RecordKinds(RecordKind::Custom as u8);
    /// Every kind.
    pub const ALL: RecordKinds = RecordKinds(15);

    /// The union of two sets.
    pub const fn or(self, other: RecordKinds) -> RecordKinds {
        RecordKinds(self.0 | other.0)
    }

    /// Whether every kind of `other` is in `self`.
    pub const fn contains_all(self, other: RecordKinds) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the two sets share a kind.
    pub const fn intersects(self, other: RecordKinds) -> bool {
        self.0 & other.0 != 0
    }

    /// Kinds of `self` that are not in `other`.
    pub const fn minus(self, other: RecordKinds) -> RecordKinds {
        RecordKinds(self.0 & !other.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn iter(self) -> impl Iterator<Item = RecordKind> {
        [
            RecordKind::Event,
            RecordKind::Metrics,
            RecordKind::Alert,
            RecordKind::Custom,
        ]
        .into_iter()
        .filter(move |k| self.0 & (*k as u8) != 0)
    }
}

impl fmt::Display for RecordKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing");
        }
        let names: Vec<_> = self.iter().map(RecordKind::name).collect();
        f.write_str(&names.join(" and "))
    }
}

impl fmt::Debug for RecordKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordKinds({self})")
    }
}

/// Where a source batch's records come from: a source component and one of
/// its partitions (a Redis stream; a file, by path and inode).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// The source component's name.
    pub source: String,
    /// The partition within the source.
    pub partition: String,
    /// Set by a source whose partitions are assigned to instances (a Kafka
    /// consumer group): which partition of the keyed input the records
    /// belong to, so a stateful processor keeps state per partition.
    pub shard: Option<Shard>,
}

/// A partition of a keyed input that one instance owns at a time (a Kafka
/// partition): the unit of state that moves between instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    /// The partition's number.
    pub id: u32,
    /// Counts the times this instance was given the partition: a change
    /// means it may have been owned elsewhere in between, so state kept
    /// for it here is stale.
    pub generation: u64,
    /// Set on the notice a source sends when it gives the partition up
    /// (revoked by the group): nothing more of this generation follows.
    pub released: bool,
}

/// Which assignment (generation) of each partition the sharing sources of
/// a pipeline read now, shared with the runtime through
/// [`crate::plugin::Resources`]: a partition's state is taken over only for
/// the generation its source still reads, so records of a generation
/// already revoked (queued before the revocation) never take the state
/// from its new owner.
#[derive(Debug, Clone, Default)]
pub struct Assignments(Arc<std::sync::Mutex<AssignmentMap>>);

/// Per (source, partition): the generation read last, and whether it is
/// still assigned.
type AssignmentMap = std::collections::HashMap<(String, u32), (u64, bool)>;

impl Assignments {
    /// `source` was given partition `id` as `generation`.
    pub fn assigned(&self, source: &str, id: u32, generation: u64) {
        self.set(source, id, generation, true);
    }

    /// `source` gave up partition `id` (of `generation`).
    pub fn revoked(&self, source: &str, id: u32, generation: u64) {
        self.set(source, id, generation, false);
    }

    fn set(&self, source: &str, id: u32, generation: u64, assigned: bool) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert((source.to_owned(), id), (generation, assigned));
    }

    /// Whether `source` reads `shard`'s generation of its partition now
    /// (true for a source that never said).
    pub fn is_current(&self, source: &str, shard: Shard) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(source.to_owned(), shard.id))
            .is_none_or(|&(generation, assigned)| assigned && generation == shard.generation)
    }
}

/// The places of a batch's records in their source partition, one per
/// record and in the records' order. A larger offset is later in the
/// partition (a stream entry id, a byte offset), so "everything up to offset
/// N" is one number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positions {
    /// The partition.
    pub origin: Arc<Origin>,
    /// One offset per record.
    pub offsets: Vec<u128>,
    /// Where the source reads its own partition up to with this batch,
    /// when that is not the records' offsets: a Kafka partition whose
    /// records are placed by their upstream position (the Redis entry id a
    /// bridge sent) names itself (`topic/N`) and the Kafka offset of the
    /// batch's last record. A checkpoint keeps it apart from the positions
    /// that filter records ([`crate::checkpoint::PositionKey::resume`]), and
    /// the source seeks there when it is given the partition.
    pub resume: Option<(String, u128)>,
}

/// Records travelling together, with the acknowledgement handles of the
/// source batches they derive from.
///
/// The records are shared: fanning a batch out to several consumers clones a
/// pointer, not the records.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    records: Arc<Vec<Record>>,
    acks: Vec<AckHandle>,
    positions: Option<Arc<Positions>>,
    via: Option<Arc<str>>,
}

impl Batch {
    /// A batch of `records` carrying `acks`.
    pub fn new(records: Vec<Record>, acks: Vec<AckHandle>) -> Batch {
        Batch {
            records: Arc::new(records),
            acks,
            positions: None,
            via: None,
        }
    }

    /// The same batch with its records' source positions (one offset per
    /// record, in order). A source sets them so that stateful processors
    /// downstream can tell, after a restart, what they have already folded.
    ///
    /// Offsets that do not match the records one to one are a bug in the
    /// source; the batch then carries none (its records are always folded).
    pub fn with_positions(mut self, origin: Arc<Origin>, offsets: Vec<u128>) -> Batch {
        debug_assert_eq!(offsets.len(), self.records.len());
        self.positions = (offsets.len() == self.records.len()).then(|| {
            Arc::new(Positions {
                origin,
                offsets,
                resume: None,
            })
        });
        self
    }

    /// The same batch with where its source reads its own partition up to
    /// (see [`Positions::resume`]); set after [`Batch::with_positions`].
    pub fn with_resume(mut self, partition: String, offset: u128) -> Batch {
        if let Some(positions) = self.positions.as_mut() {
            Arc::make_mut(positions).resume = Some((partition, offset));
        }
        self
    }

    /// The records' source positions, if a source set them.
    pub fn positions(&self) -> Option<&Positions> {
        self.positions.as_deref()
    }

    /// The component this batch arrived from (set on delivery).
    pub fn via(&self) -> Option<&str> {
        self.via.as_deref()
    }

    /// Marks the batch as delivered by `producer`.
    pub(crate) fn set_via(&mut self, producer: &Arc<str>) {
        self.via = Some(producer.clone());
    }

    /// The records for which `keep` holds, with their positions, the same
    /// acknowledgement handles and the same producer.
    pub fn retain(self, mut keep: impl FnMut(usize, &Record) -> bool) -> Batch {
        let kept: Vec<usize> = (0..self.records.len())
            .filter(|&i| keep(i, &self.records[i]))
            .collect();
        if kept.len() == self.records.len() {
            return self;
        }
        let records = kept.iter().map(|&i| self.records[i].clone()).collect();
        let positions = self.positions.map(|p| {
            Arc::new(Positions {
                origin: p.origin.clone(),
                offsets: kept.iter().map(|&i| p.offsets[i]).collect(),
                // Read up to there, whatever is kept.
                resume: p.resume.clone(),
            })
        });
        Batch {
            records: Arc::new(records),
            acks: self.acks,
            positions,
            via: self.via,
        }
    }

    /// A batch whose delivery nobody waits for.
    pub fn unacked(records: Vec<Record>) -> Batch {
        Batch::new(records, Vec::new())
    }

    /// A partition notice: no records, only an origin whose
    /// [`Shard`] says a partition was given to this instance, or (with
    /// `released`) given up. A stateful processor kept per partition takes
    /// the partition's state over (or checkpoints and drops it) at once,
    /// rather than at its next records.
    pub fn notice(origin: Arc<Origin>) -> Batch {
        Batch::unacked(Vec::new()).with_positions(origin, Vec::new())
    }

    /// Whether it is a partition notice (see [`Batch::notice`]): passed on
    /// though it holds no records.
    pub fn is_notice(&self) -> bool {
        self.is_empty()
            && self
                .positions
                .as_deref()
                .is_some_and(|p| p.origin.shard.is_some())
    }

    /// The records.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Splits into owned records (copied only if another consumer shares
    /// them) and the acknowledgement handles.
    pub fn into_parts(self) -> (Vec<Record>, Vec<AckHandle>) {
        let records = Arc::try_unwrap(self.records).unwrap_or_else(|shared| (*shared).clone());
        (records, self.acks)
    }

    /// The acknowledgement handles of the source batches this derives from.
    pub fn ack_handles(&self) -> &[AckHandle] {
        &self.acks
    }

    /// Takes the acknowledgement handles out, leaving the records.
    pub fn take_acks(&mut self) -> Vec<AckHandle> {
        std::mem::take(&mut self.acks)
    }

    /// Marks every source batch this batch derives from as failed.
    pub fn fail(&self) {
        self.acks.iter().for_each(AckHandle::fail);
    }
}
