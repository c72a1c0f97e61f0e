//! The aggregate's state: exact per-workflow lifecycles under duplicates and
//! bounded reordering, per-agent and per-type statistics, sketches and
//! windows. Pure (no I/O, no clock): the caller passes wall-clock time in.

use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use flowpulse_core::event::{format_rfc3339_ms, EventKind, WorkflowEvent};
use flowpulse_core::metrics::{
    AgentStats, HistoryPoint, Overview, RealtimeMetrics, WindowStats, WorkflowTypeStats,
};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::dedup::{Dedup, IdKey, Sighting};
use super::table::{prefetch, KeyTable};

use super::windows::{BucketRing, Sketch, Totals};

/// A timestamp more than this far ahead of the wall clock is clamped.
const MAX_CLOCK_SKEW_MS: i64 = 60_000;
/// The longest sliding window, in seconds.
const LONGEST_WINDOW_S: i64 = 15 * 60;
/// The window of `system_health_percent`, in seconds.
const HEALTH_WINDOW_S: i64 = 5 * 60;
/// Name of the catch-all past a cap.
pub const OTHER: &str = "other";
/// Name of a workflow type not yet known.
pub const UNKNOWN: &str = "unknown";
/// No interned name.
const NONE: u16 = u16::MAX;
/// How many events ahead a batch prefetches: far enough to hide a miss to
/// memory behind the folding of the events in between.
const AHEAD: usize = 8;
/// The same for the dedup pass, whose loop is short.
const DEDUP_AHEAD: usize = 8;
/// The same for the strings of the events being hashed.
const STRINGS_AHEAD: usize = 8;
/// The same for finished workflows leaving the state.
const FORGET_AHEAD: usize = 4;

/// The keys of an event, hashed once per batch ahead of folding.
#[derive(Debug, Clone, Copy)]
struct EventKeys {
    /// Of the identity, if the event has one.
    id: Option<Sighting>,
    /// Of the workflow, for workflow (not stage) events.
    workflow: Option<IdKey>,
    /// A duplicate within the dedup window (found by the batch's dedup pass).
    duplicate: bool,
}

impl EventKeys {
    fn of(event: &WorkflowEvent) -> EventKeys {
        EventKeys {
            id: event.id.as_deref().map(|id| Sighting::of(IdKey::of(id))),
            workflow: (!event.kind.is_stage()).then(|| IdKey::of(&event.workflow_id)),
            duplicate: false,
        }
    }
}

/// What shapes the state (from the processor's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// How far events of one workflow may arrive out of order, ms.
    pub max_out_of_order_ms: i64,
    /// How long (event time) an event identity is remembered, ms.
    pub dedup_window_ms: i64,
    /// Running workflows silent longer than this expire, ms.
    pub stale_after_ms: i64,
    /// Whether paused workflows expire too.
    pub expire_paused: bool,
    /// Most agent names kept apart; the rest are `other`.
    pub max_agents: usize,
    /// Most workflow types kept apart; the rest are `other`.
    pub max_workflow_types: usize,
    /// Width of a history point, ms (the emission interval).
    pub history_interval_ms: i64,
    /// Number of history points kept.
    pub history_points: usize,
}

/// Names interned to small indices, with a cap past which names map to
/// `other`, so bad input cannot grow memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Names {
    names: Vec<String>,
    #[serde(skip)]
    index: FxHashMap<String, u16>,
    /// Recently interned names by a hash of their [`NameKey`], with their
    /// index ([`NONE`]: empty): most lookups end here, without hashing the
    /// whole name or comparing it.
    #[serde(skip)]
    recent: Vec<(NameKey, u16)>,
}

/// Entries of [`Names::recent`].
const RECENT: usize = 64;

/// (length, first 8 bytes, last 8 bytes) of a name: the whole name when it
/// is at most 16 bytes long, as agent and type names are.
type NameKey = (usize, u64, u64);

fn name_key(name: &str) -> NameKey {
    let b = name.as_bytes();
    let len = b.len();
    // Fixed-size loads, not a variable-length copy (which calls memcpy).
    match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        (Some(head), Some(tail)) => (len, u64::from_le_bytes(*head), u64::from_le_bytes(*tail)),
        _ => {
            let short = b
                .iter()
                .enumerate()
                .fold(0u64, |v, (i, c)| v | u64::from(*c) << (8 * i));
            (len, short, 0)
        }
    }
}

impl Names {
    fn rebuild_index(&mut self) {
        self.recent.clear();
        self.index = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u16))
            .collect();
    }

    #[inline]
    fn intern(&mut self, name: &str, cap: usize) -> u16 {
        let key = name_key(name);
        let at = ((key.1 ^ key.2.rotate_left(29) ^ key.0 as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> 58) as usize;
        if let Some(&(k, i)) = self.recent.get(at) {
            // Up to 16 bytes the key is the whole name.
            if k == key && i != NONE && (key.0 <= 16 || self.name(i) == name) {
                return i;
            }
        }
        let i = self.intern_slow(name, cap);
        if self.recent.is_empty() {
            self.recent = vec![((0, 0, 0), NONE); RECENT];
        }
        self.recent[at] = (key, i);
        i
    }

    fn intern_slow(&mut self, name: &str, cap: usize) -> u16 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        // Past the cap, new names are `other`; a name once admitted stays.
        let name = if self.names.len() >= cap.min(NONE as usize - 1) {
            OTHER
        } else {
            name
        };
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as u16;
        self.names.push(name.to_owned());
        self.index.insert(name.to_owned(), i);
        i
    }

    fn name(&self, i: u16) -> &str {
        self.names.get(i as usize).map_or(UNKNOWN, String::as_str)
    }
}

/// A timestamp from the future is clamped, so it cannot pin state.
fn clamp(timestamp_ms: i64, wall_ms: i64) -> i64 {
    timestamp_ms.min(wall_ms.saturating_add(MAX_CLOCK_SKEW_MS))
}

/// Where a known workflow is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Workflow {
    /// 128-bit hash of the workflow id (ids are never kept as strings).
    key: IdKey,
    /// Forgotten (finished past the bound, or expired); the slot is free.
    removed: bool,
    generation: u32,
    known: bool,
    workflow_type: u16,
    created_ms: Option<i64>,
    /// 0 none, 1 completed, 2 failed, 3 cancelled.
    outcome: u8,
    paused: bool,
    /// Event time of the newest pause/resume applied.
    pause_changed_ms: i64,
    last_seen_ms: i64,
}

impl Workflow {
    fn phase(&self) -> Phase {
        match self.outcome {
            1 => Phase::Completed,
            2 => Phase::Failed,
            3 => Phase::Cancelled,
            _ if self.paused => Phase::Paused,
            _ => Phase::Running,
        }
    }
}

/// An event waiting for the watermark, in compact form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    ts: i64,
    seq: u64,
    kind: u8,
    slot: u32,
    generation: u32,
    agent: u16,
    workflow_type: u16,
    duration_ms: Option<u64>,
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the oldest first.
        (other.ts, other.seq).cmp(&(self.ts, self.seq))
    }
}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

fn kind_code(kind: EventKind) -> u8 {
    EventKind::ALL.iter().position(|k| *k == kind).unwrap_or(0) as u8
}

fn kind_of(code: u8) -> EventKind {
    EventKind::ALL[(code as usize).min(EventKind::ALL.len() - 1)]
}

/// Events held until the watermark passes them, released in (time, arrival)
/// order. Mostly-ordered input takes the queue; the heap takes the rest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ReorderBuffer {
    in_order: VecDeque<Pending>,
    out_of_order: BinaryHeap<Pending>,
}

impl ReorderBuffer {
    fn push(&mut self, event: Pending) {
        match self.in_order.back() {
            Some(last) if (event.ts, event.seq) < (last.ts, last.seq) => {
                self.out_of_order.push(event)
            }
            _ => self.in_order.push_back(event),
        }
    }

    /// Whether an event is due at `watermark`.
    #[inline]
    fn ready(&self, watermark: i64) -> bool {
        self.in_order.front().is_some_and(|p| p.ts <= watermark)
            || self.out_of_order.peek().is_some_and(|p| p.ts <= watermark)
    }

    /// The oldest event if its time is at most `watermark`.
    fn pop_until(&mut self, watermark: i64) -> Option<Pending> {
        if self.out_of_order.is_empty() {
            return match self.in_order.front() {
                Some(front) if front.ts <= watermark => self.in_order.pop_front(),
                _ => None,
            };
        }
        let front = self.in_order.front().map(|p| (p.ts, p.seq));
        let heap = self.out_of_order.peek().map(|p| (p.ts, p.seq));
        match (front, heap) {
            (Some(f), Some(h)) if h < f => (h.0 <= watermark)
                .then(|| self.out_of_order.pop())
                .flatten(),
            (Some(f), _) => (f.0 <= watermark)
                .then(|| self.in_order.pop_front())
                .flatten(),
            (None, Some(h)) => (h.0 <= watermark)
                .then(|| self.out_of_order.pop())
                .flatten(),
            (None, None) => None,
        }
    }

    fn len(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AgentAgg {
    completed: u64,
    failed: u64,
    duration_sum_ms: u64,
    duration_count: u64,
    durations: Option<Sketch>,
    last_seen_ms: i64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct TypeAgg {
    total: u64,
    completed: u64,
    failed: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counts {
    total: u64,
    running: u64,
    paused: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
    expired: u64,
}

impl Counts {
    fn slot(&mut self, phase: Phase) -> &mut u64 {
        match phase {
            Phase::Running => &mut self.running,
            Phase::Paused => &mut self.paused,
            Phase::Completed => &mut self.completed,
            Phase::Failed => &mut self.failed,
            Phase::Cancelled => &mut self.cancelled,
        }
    }

    fn change(&mut self, from: Phase, to: Phase) {
        if from != to {
            *self.slot(from) -= 1;
            *self.slot(to) += 1;
        }
    }
}

/// Counters of what the aggregate has seen, beyond the metrics document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounting {
    /// Events folded (after deduplication).
    pub events: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Events still inconsistent once the watermark passed them.
    pub anomalies: u64,
}

/// The aggregate's whole state. See the module docs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AggregateState {
    limits: Limits,
    /// Event time T, once any event was seen: the largest (clamped) event
    /// timestamp, moved on by the wall clock while the input is idle.
    now_ms: Option<i64>,
    /// The largest (clamped) event timestamp alone. Lateness, forgetting and
    /// the dedup window follow it, never the wall clock: after an outage the
    /// backlog is not late.
    max_event_ms: Option<i64>,
    seq: u64,
    /// Serialized apart (see `snapshot`), so its epochs can be stored once.
    #[serde(skip)]
    dedup: Dedup,
    pending: ReorderBuffer,
    slots: Vec<Option<Workflow>>,
    free: Vec<u32>,
    /// Workflow key → (slot, generation): folding an event needs no look at
    /// the workflow itself.
    #[serde(skip)]
    by_id: KeyTable<(u32, u32)>,
    /// Reused per batch.
    #[serde(skip)]
    keys: Vec<EventKeys>,
    /// Outcome time, slot, generation: finished workflows to forget.
    finished: VecDeque<(i64, u32, u32)>,
    counts: Counts,
    agents: Names,
    agent_stats: Vec<AgentAgg>,
    types: Names,
    type_stats: Vec<TypeAgg>,
    durations: Sketch,
    completed_duration_sum_ms: u64,
    completed_duration_count: u64,
    seconds: BucketRing,
    history: BucketRing,
    custom: BTreeMap<String, String>,
    accounting: Accounting,
}

impl AggregateState {
    /// An empty state.
    pub fn new(limits: Limits) -> AggregateState {
        let second_buckets = (LONGEST_WINDOW_S + limits.max_out_of_order_ms / 1000 + 2) as usize;
        let history = BucketRing::new(limits.history_interval_ms, limits.history_points + 1);
        let mut types = Names::default();
        types.intern(UNKNOWN, usize::MAX);
        AggregateState {
            now_ms: None,
            max_event_ms: None,
            seq: 0,
            dedup: Dedup::default(),
            pending: ReorderBuffer::default(),
            slots: Vec::new(),
            free: Vec::new(),
            by_id: KeyTable::default(),
            keys: Vec::new(),
            finished: VecDeque::new(),
            counts: Counts::default(),
            agents: Names::default(),
            agent_stats: Vec::new(),
            type_stats: vec![TypeAgg::default()],
            types,
            durations: Sketch::default(),
            completed_duration_sum_ms: 0,
            completed_duration_count: 0,
            seconds: BucketRing::new(1000, second_buckets),
            history,
            custom: BTreeMap::new(),
            accounting: Accounting::default(),
            limits,
        }
    }

    /// The limits the state was built with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What was folded, dropped as duplicate, or found inconsistent.
    pub fn accounting(&self) -> Accounting {
        self.accounting
    }

    /// Event time T.
    pub fn event_time_ms(&self) -> Option<i64> {
        self.now_ms
    }

    /// Workflows held in memory (in flight, or finished within the bound).
    pub fn workflows_in_memory(&self) -> usize {
        self.by_id.len()
    }

    /// The dedup window (for snapshots).
    pub(super) fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    /// The orders of the dedup epochs held now (each stored once, apart).
    pub fn dedup_epochs(&self) -> std::collections::BTreeSet<u64> {
        self.dedup.epoch_orders().into_iter().collect()
    }

    /// The order the next dedup epoch will get.
    pub fn next_dedup_epoch(&self) -> u64 {
        self.dedup.next_order()
    }

    /// Replaces the dedup window (when restoring).
    pub(super) fn set_dedup(&mut self, dedup: Dedup) {
        self.dedup = dedup;
    }

    /// Event identities remembered for deduplication.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// Events waiting for the watermark.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Events older than this are later than the out-of-order bound.
    fn watermark(&self) -> i64 {
        self.max_event_ms
            .map_or(i64::MIN, |t| t - self.limits.max_out_of_order_ms)
    }

    fn dedup_cutoff(&self) -> i64 {
        self.cutoff_after(self.max_event_ms)
    }

    /// The oldest event time the dedup window keeps once `newest` is the
    /// newest event time seen.
    fn cutoff_after(&self, newest: Option<i64>) -> i64 {
        newest.map_or(i64::MIN, |t| t.saturating_sub(self.limits.dedup_window_ms))
    }

    /// Folds one event. `wall_ms` is the wall clock, used only to clamp
    /// timestamps from the future.
    pub fn fold(&mut self, event: &WorkflowEvent, wall_ms: i64) {
        self.fold_all(std::iter::once(event), wall_ms);
    }

    /// Folds a batch of events: the same result as folding them one by one,
    /// with the dedup window's housekeeping done once per batch.
    ///
    /// Two passes, each a tight loop whose cache misses overlap: the batch's
    /// keys are hashed and its duplicates found in order, prefetching the
    /// dedup lines of the events a little ahead; then the new events are
    /// folded, prefetching the workflow index buckets of those ahead.
    pub fn fold_all<'a, I>(&mut self, events: I, wall_ms: i64)
    where
        I: IntoIterator<Item = &'a WorkflowEvent>,
        I::IntoIter: Clone,
    {
        let events = events.into_iter();
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        self.hash_and_find_duplicates(events.clone(), &mut keys, wall_ms);
        for (i, event) in events.enumerate() {
            if let Some(far) = keys.get(i + AHEAD) {
                if let Some(workflow) = far.workflow.filter(|_| !far.duplicate) {
                    self.by_id.prefetch(workflow);
                }
            }
            self.fold_held(event, keys[i], wall_ms);
        }
        self.keys = keys;
        self.release(self.watermark());
    }

    /// Hashes the batch's keys and marks its duplicates, in order, exactly
    /// as folding event by event would find them: the window's cutoff follows
    /// the newest event time of the new events before each one. One loop,
    /// software-pipelined: the strings of the event `STRINGS_AHEAD` ahead are
    /// prefetched, the event `DEDUP_AHEAD` ahead is hashed and its dedup lines
    /// prefetched, and the current one is looked up.
    fn hash_and_find_duplicates<'a, I>(
        &mut self,
        events: I,
        keys: &mut Vec<EventKeys>,
        wall_ms: i64,
    ) where
        I: Iterator<Item = &'a WorkflowEvent> + Clone,
    {
        let mut strings = events.clone().skip(STRINGS_AHEAD);
        let mut hashed = events.clone();
        let mut newest = self.max_event_ms;
        let mut hash_next = |keys: &mut Vec<EventKeys>, dedup: &Dedup| {
            if let Some(ahead) = strings.next() {
                prefetch(ahead.workflow_id.as_ptr());
                if let Some(id) = &ahead.id {
                    prefetch(id.as_ptr());
                }
            }
            if let Some(event) = hashed.next() {
                let k = EventKeys::of(event);
                if let Some(id) = &k.id {
                    dedup.prefetch(id);
                }
                keys.push(k);
            }
        };
        for _ in 0..DEDUP_AHEAD {
            hash_next(keys, &self.dedup);
        }
        for (i, event) in events.enumerate() {
            hash_next(keys, &self.dedup);
            let clamped = clamp(event.timestamp_ms, wall_ms);
            if let Some(id) = keys[i].id {
                let cutoff = self.cutoff_after(newest);
                if !self.dedup.first(id, clamped, cutoff) {
                    keys[i].duplicate = true;
                    continue;
                }
            }
            newest = Some(newest.map_or(clamped, |t| t.max(clamped)));
        }
    }

    /// Folds one event, applying what the watermark has passed; the dedup
    /// window's housekeeping is left to the caller.
    fn fold_held(&mut self, event: &WorkflowEvent, keys: EventKeys, wall_ms: i64) {
        if keys.duplicate {
            self.accounting.duplicates += 1;
            return;
        }
        let clamped = clamp(event.timestamp_ms, wall_ms);
        self.accounting.events += 1;
        self.seq += 1;
        let ts = clamped;
        let late = ts < self.watermark();
        let is_stage = event.kind.is_stage();
        let (slot, generation) = match keys.workflow {
            None => (u32::MAX, 0),
            Some(key) => match self.slot_for(key, !late) {
                Some(found) => found,
                None => {
                    // Later than the out-of-order bound, for a workflow no longer
                    // (or never) tracked: it cannot be placed consistently.
                    self.accounting.anomalies += 1;
                    return;
                }
            },
        };
        let agent = match (&event.agent_type, is_stage) {
            (Some(a), true) => self.intern_agent(a),
            (None, true) => self.intern_agent(UNKNOWN),
            _ => NONE,
        };
        // Applying the event ignores the type once the workflow's is known.
        let workflow_type = match &event.workflow_type {
            Some(t) if !is_stage => self.intern_type(t),
            _ => NONE,
        };
        let pending = Pending {
            ts,
            seq: self.seq,
            kind: kind_code(event.kind),
            slot,
            generation,
            agent,
            workflow_type,
            duration_ms: event.duration_ms,
        };
        // Stage statistics do not depend on order: apply them at once. Workflow
        // lifecycles do: hold them until the watermark passes them.
        if late {
            // Everything the watermark passed goes first, as if released
            // event by event, so the order of application is the same.
            self.release(self.watermark());
            self.apply(pending);
        } else if is_stage {
            self.apply(pending);
        } else {
            self.pending.push(pending);
        }
        if self.max_event_ms.is_none_or(|t| clamped > t) {
            self.max_event_ms = Some(clamped);
        }
        if self.now_ms.is_none_or(|t| clamped > t) {
            self.now_ms = Some(clamped);
        }
        let watermark = self.watermark();
        // Most events release nothing: check before calling.
        if self.pending.ready(watermark) {
            self.apply_until(watermark);
        }
        if self.finished.front().is_some_and(|f| f.0 < watermark) {
            self.forget_finished(watermark);
        }
    }

    /// Applies the held events up to `watermark`, in order.
    fn apply_until(&mut self, watermark: i64) {
        while let Some(event) = self.pending.pop_until(watermark) {
            // The workflow of an event a little ahead, and the entry a
            // little further: each is a miss a few events from now.
            if let Some(far) = self.pending.in_order.get(2 * AHEAD) {
                prefetch(far);
            }
            if let Some(near) = self.pending.in_order.get(AHEAD) {
                prefetch(self.slots.as_ptr().wrapping_add(near.slot as usize));
            }
            self.apply(event);
        }
    }

    /// Advances event time by `elapsed_ms` (a live source is idle).
    ///
    /// Held events the moved-on time has passed are applied (so an idle
    /// input's last events show up), but lateness and forgetting still follow
    /// event timestamps alone.
    pub fn advance(&mut self, elapsed_ms: i64) {
        if let Some(t) = self.now_ms.as_mut() {
            *t += elapsed_ms.max(0);
            let idle_watermark = *t - self.limits.max_out_of_order_ms;
            self.apply_until(idle_watermark);
        }
    }

    /// Applies every held event (end of input).
    pub fn flush(&mut self) {
        self.release(i64::MAX);
    }

    /// Records the latest value of a custom metric.
    pub fn set_custom(&mut self, name: &str, value: &serde_json::Value) {
        self.custom.insert(name.to_owned(), value.to_string());
    }

    fn intern_agent(&mut self, name: &str) -> u16 {
        let i = self.agents.intern(name, self.limits.max_agents);
        if self.agent_stats.len() <= i as usize {
            self.agent_stats
                .resize_with(i as usize + 1, AgentAgg::default);
        }
        i
    }

    fn intern_type(&mut self, name: &str) -> u16 {
        // +1: `unknown` does not count against the cap.
        let i = self.types.intern(name, self.limits.max_workflow_types + 1);
        if self.type_stats.len() <= i as usize {
            self.type_stats.resize(i as usize + 1, TypeAgg::default());
        }
        i
    }

    /// The slot of a workflow, created (unknown until an event is applied)
    /// when `create` is set.
    fn slot_for(&mut self, key: IdKey, create: bool) -> Option<(u32, u32)> {
        if !create {
            return self.by_id.get(key);
        }
        let (entry, found) = self.by_id.entry(key, (0, 0));
        if found {
            return Some(*entry);
        }
        let (slot, generation) = match self.free.pop() {
            Some(slot) => {
                let last = self.slots[slot as usize]
                    .as_ref()
                    .map_or(0, |w| w.generation);
                (slot, last.wrapping_add(1))
            }
            None => {
                self.slots.push(None);
                ((self.slots.len() - 1) as u32, 0)
            }
        };
        *entry = (slot, generation);
        self.slots[slot as usize] = Some(Workflow {
            key,
            removed: false,
            generation,
            known: false,
            workflow_type: 0,
            created_ms: None,
            outcome: 0,
            paused: false,
            pause_changed_ms: i64::MIN,
            last_seen_ms: i64::MIN,
        });
        Some((slot, generation))
    }

    fn release(&mut self, watermark: i64) {
        self.apply_until(watermark);
        self.forget_finished(watermark.min(self.watermark()));
        self.dedup.forget_before(self.dedup_cutoff());
    }

    /// Finished workflows leave memory once no in-bound event can concern them.
    fn forget_finished(&mut self, watermark: i64) {
        while let Some(&(ts, slot, generation)) = self.finished.front() {
            if ts >= watermark {
                break;
            }
            // As in `apply_until`: the slot of a workflow further ahead, and
            // the table bucket of a nearer one, whose slot is cached by now.
            // Finished workflows leave a few events apart: a short distance.
            if let Some(&(_, far, _)) = self.finished.get(FORGET_AHEAD * 2) {
                prefetch(self.slots.as_ptr().wrapping_add(far as usize));
            }
            if let Some(&(_, near, _)) = self.finished.get(FORGET_AHEAD) {
                if let Some(Some(w)) = self.slots.get(near as usize) {
                    self.by_id.prefetch(w.key);
                }
            }
            self.finished.pop_front();
            self.remove_slot(slot, generation);
        }
    }

    fn remove_slot(&mut self, slot: u32, generation: u32) {
        let entry = &mut self.slots[slot as usize];
        if let Some(workflow) = entry
            .as_mut()
            .filter(|w| w.generation == generation && !w.removed)
        {
            self.by_id.remove(workflow.key);
            // Keep the generation so a reused slot gets a new one.
            workflow.removed = true;
            workflow.known = false;
            self.free.push(slot);
        }
    }

    fn apply(&mut self, event: Pending) {
        let kind = kind_of(event.kind);
        if kind.is_stage() {
            self.apply_stage(kind, &event);
        } else {
            self.apply_workflow(kind, &event);
        }
    }

    fn apply_stage(&mut self, kind: EventKind, event: &Pending) {
        let ok = kind == EventKind::StageCompleted;
        let agent = &mut self.agent_stats[event.agent as usize];
        if ok {
            agent.completed += 1;
        } else {
            agent.failed += 1;
        }
        agent.last_seen_ms = agent.last_seen_ms.max(event.ts);
        match event.duration_ms {
            Some(d) => {
                agent.duration_sum_ms = agent.duration_sum_ms.saturating_add(d);
                agent.duration_count += 1;
                agent
                    .durations
                    .get_or_insert_with(Sketch::default)
                    .add(d as f64);
            }
            None => self.accounting.anomalies += 1,
        }
        if let Some(bucket) = self.seconds.bucket_mut(event.ts) {
            if ok {
                bucket.stages_ok += 1;
            } else {
                bucket.stages_failed += 1;
            }
        }
    }

    fn apply_workflow(&mut self, kind: EventKind, event: &Pending) {
        let Some(workflow) = self.slots[event.slot as usize]
            .as_mut()
            .filter(|w| w.generation == event.generation && !w.removed)
        else {
            // The workflow was finished and forgotten, or expired.
            self.accounting.anomalies += 1;
            return;
        };
        if !workflow.known {
            workflow.known = true;
            if event.workflow_type != NONE {
                workflow.workflow_type = event.workflow_type;
            }
            self.counts.total += 1;
            self.counts.running += 1;
            self.type_stats[workflow.workflow_type as usize].total += 1;
        } else if workflow.workflow_type == 0
            && event.workflow_type != NONE
            && event.workflow_type != 0
        {
            // The type became known: move what was counted under `unknown`.
            let (from, to) = (0usize, event.workflow_type as usize);
            let done = match workflow.outcome {
                1 => (1, 0),
                2 => (0, 1),
                _ => (0, 0),
            };
            self.type_stats[from].total -= 1;
            self.type_stats[from].completed -= done.0;
            self.type_stats[from].failed -= done.1;
            self.type_stats[to].total += 1;
            self.type_stats[to].completed += done.0;
            self.type_stats[to].failed += done.1;
            workflow.workflow_type = event.workflow_type;
        }
        workflow.last_seen_ms = workflow.last_seen_ms.max(event.ts);
        let before = workflow.phase();
        match kind {
            EventKind::WorkflowCreated => {
                if workflow.created_ms.is_some() {
                    self.accounting.anomalies += 1;
                } else {
                    workflow.created_ms = Some(event.ts);
                }
            }
            EventKind::WorkflowPaused | EventKind::WorkflowResumed => {
                if workflow.outcome != 0 {
                    self.accounting.anomalies += 1;
                } else if event.ts >= workflow.pause_changed_ms {
                    workflow.paused = kind == EventKind::WorkflowPaused;
                    workflow.pause_changed_ms = event.ts;
                }
            }
            _ => {
                if workflow.outcome != 0 {
                    self.accounting.anomalies += 1;
                    return;
                }
                workflow.outcome = match kind {
                    EventKind::WorkflowCompleted => 1,
                    EventKind::WorkflowFailed => 2,
                    _ => 3,
                };
                let type_index = workflow.workflow_type as usize;
                let duration = event
                    .duration_ms
                    .or_else(|| workflow.created_ms.map(|c| (event.ts - c).max(0) as u64));
                self.finished
                    .push_back((event.ts, event.slot, event.generation));
                if kind != EventKind::WorkflowCancelled {
                    self.finish(
                        kind == EventKind::WorkflowFailed,
                        type_index,
                        duration,
                        event.ts,
                    );
                }
            }
        }
        let after = self.slots[event.slot as usize]
            .as_ref()
            .map_or(before, Workflow::phase);
        self.counts.change(before, after);
    }

    fn finish(&mut self, failed: bool, type_index: usize, duration: Option<u64>, ts: i64) {
        let stats = &mut self.type_stats[type_index];
        if failed {
            stats.failed += 1;
        } else {
            stats.completed += 1;
        }
        let Some(duration) = duration else {
            self.accounting.anomalies += 1;
            for ring in [&mut self.seconds, &mut self.history] {
                if let Some(bucket) = ring.bucket_mut(ts) {
                    bucket.finished += 1;
                    bucket.failed += u64::from(failed);
                }
            }
            return;
        };
        self.durations.add(duration as f64);
        if !failed {
            self.completed_duration_sum_ms =
                self.completed_duration_sum_ms.saturating_add(duration);
            self.completed_duration_count += 1;
        }
        for ring in [&mut self.seconds, &mut self.history] {
            if let Some(bucket) = ring.bucket_mut(ts) {
                bucket.finished += 1;
                bucket.failed += u64::from(failed);
                bucket
                    .durations
                    .get_or_insert_with(Sketch::default)
                    .add(duration as f64);
            }
        }
    }

    /// Expires running (and, if configured, paused) workflows silent longer
    /// than `stale_after`. Returns how many expired.
    pub fn expire_stale(&mut self) -> u64 {
        let Some(t) = self.now_ms else { return 0 };
        let cutoff = t - self.limits.stale_after_ms;
        let mut expired = Vec::new();
        for (slot, workflow) in self.slots.iter().enumerate() {
            let Some(w) = workflow.as_ref().filter(|w| w.known && w.outcome == 0) else {
                continue;
            };
            if w.last_seen_ms < cutoff && (!w.paused || self.limits.expire_paused) {
                expired.push((slot as u32, w.generation, w.phase()));
            }
        }
        for (slot, generation, phase) in &expired {
            *self.counts.slot(*phase) -= 1;
            self.counts.expired += 1;
            self.remove_slot(*slot, *generation);
        }
        expired.len() as u64
    }

    /// The metrics document for the current state.
    pub fn document(&self, last_update: String, next_update_in_ms: u64) -> RealtimeMetrics {
        let c = &self.counts;
        let t = self.now_ms.unwrap_or(0);
        let (success, error) = rates(c.completed, c.failed);
        let second = t.div_euclid(1000);
        let health = Totals::of(self.seconds.range(second, HEALTH_WINDOW_S));
        let stage_total = health.stages_ok + health.stages_failed;
        let overview = Overview {
            total_workflows: c.total,
            running_workflows: c.running,
            completed_workflows: c.completed,
            failed_workflows: c.failed,
            paused_workflows: c.paused,
            cancelled_workflows: c.cancelled,
            expired_workflows: c.expired,
            avg_completion_time_ms: mean(
                self.completed_duration_sum_ms,
                self.completed_duration_count,
            ),
            error_rate_percent: error,
            success_rate_percent: success,
            system_health_percent: if stage_total == 0 {
                100.0
            } else {
                percent(health.stages_ok, stage_total)
            },
        };
        let mut agents: Vec<AgentStats> = self
            .agent_stats
            .iter()
            .enumerate()
            .filter(|(_, a)| a.completed + a.failed > 0)
            .map(|(i, a)| AgentStats {
                agent_type: self.agents.name(i as u16).to_owned(),
                total_tasks: a.completed + a.failed,
                completed_tasks: a.completed,
                failed_tasks: a.failed,
                avg_duration_ms: mean(a.duration_sum_ms, a.duration_count),
                p95_duration_ms: a.durations.as_ref().map_or(0.0, |s| s.quantile(0.95)),
                success_rate_percent: percent(a.completed, a.completed + a.failed),
                last_seen: format_rfc3339_ms(a.last_seen_ms),
            })
            .collect();
        agents.sort_by(|a, b| a.agent_type.cmp(&b.agent_type));
        let mut workflows_by_type: Vec<WorkflowTypeStats> = self
            .type_stats
            .iter()
            .enumerate()
            .filter(|(_, s)| s.total > 0)
            .map(|(i, s)| WorkflowTypeStats {
                workflow_type: self.types.name(i as u16).to_owned(),
                total: s.total,
                completed: s.completed,
                failed: s.failed,
                success_rate_percent: rates(s.completed, s.failed).0,
            })
            .collect();
        workflows_by_type.sort_by(|a, b| a.workflow_type.cmp(&b.workflow_type));
        let window = [("1m", 60), ("5m", 300), ("15m", 900)]
            .into_iter()
            .map(|(name, seconds)| {
                let totals = Totals::of(self.seconds.range(second, seconds));
                let stats = WindowStats {
                    finished: totals.finished,
                    failed: totals.failed,
                    throughput_per_minute: totals.finished as f64 * 60.0 / seconds as f64,
                    error_rate_percent: if totals.finished == 0 {
                        0.0
                    } else {
                        percent(totals.failed, totals.finished)
                    },
                    latency_p50_ms: totals.quantile(0.5),
                    latency_p95_ms: totals.quantile(0.95),
                    latency_p99_ms: totals.quantile(0.99),
                };
                (name.to_owned(), stats)
            })
            .collect::<BTreeMap<_, _>>();
        RealtimeMetrics {
            overview,
            agents,
            workflows_by_type,
            throughput_per_minute: window.get("1m").map_or(0, |w| w.finished),
            latency_p50_ms: self.durations.quantile(0.5),
            latency_p95_ms: self.durations.quantile(0.95),
            latency_p99_ms: self.durations.quantile(0.99),
            last_update,
            next_update_in_ms,
            as_of: format_rfc3339_ms(t),
            anomalies: self.accounting.anomalies,
            window,
            custom: self
                .custom
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        serde_json::from_str(v).unwrap_or(serde_json::Value::Null),
                    )
                })
                .collect(),
            history: self.history_points(t),
        }
    }

    fn history_points(&self, t: i64) -> Vec<HistoryPoint> {
        let newest = self.history.index_of(t);
        let width = self.history.width_ms();
        let mut points = Vec::new();
        let mut started = false;
        let n = self.limits.history_points as i64;
        for index in newest - n + 1..=newest {
            let bucket = self.history.range(index, 1).next();
            started |= bucket.is_some_and(|b| b.finished > 0);
            if !started {
                continue;
            }
            let totals = Totals::of(bucket.into_iter());
            points.push(HistoryPoint {
                timestamp: format_rfc3339_ms((index + 1) * width),
                finished: totals.finished,
                errors: totals.failed,
                latency_p50_ms: totals.quantile(0.5),
                latency_p95_ms: totals.quantile(0.95),
                latency_p99_ms: totals.quantile(0.99),
            });
        }
        points
    }

    /// Rebuilds the lookup indices after deserialization.
    pub(super) fn rebuild_indices(&mut self) {
        self.agents.rebuild_index();
        self.types.rebuild_index();
        self.by_id = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                w.as_ref()
                    .filter(|w| !w.removed)
                    .map(|w| (w.key, (i as u32, w.generation)))
            })
            .collect();
    }

    /// Adds a partial state of a disjoint partition of workflows into this
    /// one (the two must have the same limits).
    pub fn merge(&mut self, other: &AggregateState) {
        self.now_ms = match (self.now_ms, other.now_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.max_event_ms = match (self.max_event_ms, other.max_event_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.dedup.merge(&other.dedup);
        // Re-home the other's workflows, then its held events and finished list.
        let mut slot_map = FxHashMap::default();
        for (old, workflow) in other.slots.iter().enumerate() {
            let Some(w) = workflow.as_ref().filter(|w| !w.removed) else {
                continue;
            };
            if let Some((slot, generation)) = self.slot_for(w.key, true) {
                let mut moved = w.clone();
                moved.generation = generation;
                moved.workflow_type = self.intern_type(other.types.name(w.workflow_type));
                self.slots[slot as usize] = Some(moved);
                slot_map.insert(old as u32, (slot, generation, w.generation));
            }
        }
        let agent_map: Vec<u16> = other
            .agents
            .names
            .iter()
            .map(|n| self.intern_agent(n))
            .collect();
        let type_map: Vec<u16> = other
            .types
            .names
            .iter()
            .map(|n| self.intern_type(n))
            .collect();
        let remap = |p: &Pending, slot_map: &FxHashMap<u32, (u32, u32, u32)>| -> Pending {
            let mut p = *p;
            if let Some(&(slot, generation, old_generation)) = slot_map.get(&p.slot) {
                if p.generation == old_generation {
                    p.slot = slot;
                    p.generation = generation;
                } else {
                    p.generation = u32::MAX;
                }
            }
            if p.agent != NONE {
                p.agent = agent_map[p.agent as usize];
            }
            if p.workflow_type != NONE {
                p.workflow_type = type_map[p.workflow_type as usize];
            }
            p
        };
        for p in other
            .pending
            .in_order
            .iter()
            .chain(other.pending.out_of_order.iter())
        {
            let p = remap(p, &slot_map);
            self.pending.out_of_order.push(p);
        }
        for &(ts, slot, generation) in &other.finished {
            if let Some(&(new_slot, new_generation, old_generation)) = slot_map.get(&slot) {
                if generation == old_generation {
                    self.finished.push_back((ts, new_slot, new_generation));
                }
            }
        }
        self.finished
            .make_contiguous()
            .sort_by_key(|(ts, _, _)| *ts);
        self.seq = self.seq.max(other.seq);
        let c = &other.counts;
        self.counts.total += c.total;
        self.counts.running += c.running;
        self.counts.paused += c.paused;
        self.counts.completed += c.completed;
        self.counts.failed += c.failed;
        self.counts.cancelled += c.cancelled;
        self.counts.expired += c.expired;
        for (i, theirs) in other.agent_stats.iter().enumerate() {
            let ours = &mut self.agent_stats[agent_map[i] as usize];
            ours.completed += theirs.completed;
            ours.failed += theirs.failed;
            ours.duration_sum_ms += theirs.duration_sum_ms;
            ours.duration_count += theirs.duration_count;
            ours.last_seen_ms = ours.last_seen_ms.max(theirs.last_seen_ms);
            if let Some(sketch) = &theirs.durations {
                ours.durations
                    .get_or_insert_with(Sketch::default)
                    .merge(sketch);
            }
        }
        for (i, theirs) in other.type_stats.iter().enumerate() {
            let ours = &mut self.type_stats[type_map[i] as usize];
            ours.total += theirs.total;
            ours.completed += theirs.completed;
            ours.failed += theirs.failed;
        }
        self.durations.merge(&other.durations);
        self.completed_duration_sum_ms += other.completed_duration_sum_ms;
        self.completed_duration_count += other.completed_duration_count;
        self.seconds.merge(&other.seconds);
        self.history.merge(&other.history);
        for (k, v) in &other.custom {
            self.custom.insert(k.clone(), v.clone());
        }
        self.accounting.events += other.accounting.events;
        self.accounting.duplicates += other.accounting.duplicates;
        self.accounting.anomalies += other.accounting.anomalies;
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn mean(sum: u64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        sum as f64 / count as f64
    }
}

/// (success, error) percentages; 100 and 0 with nothing finished.
fn rates(completed: u64, failed: u64) -> (f64, f64) {
    let finished = completed + failed;
    if finished == 0 {
        (100.0, 0.0)
    } else {
        (percent(completed, finished), percent(failed, finished))
    }
}
