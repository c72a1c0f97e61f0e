//! The aggregate's state and how events are folded into it: exact counts
//! under duplicates, reordering and unbounded lateness; per-agent and
//! per-type statistics, sketches and windows. Pure (no I/O, no clock): the
//! caller passes wall-clock time in.
//!
//! The other parts live beside it: `names.rs` (interned names),
//! `reorder.rs` (events held for the watermark), `lifecycle.rs` (applying
//! events to workflows), `render.rs` (the document), `merge.rs`.

use std::collections::{BTreeMap, VecDeque};

use flowpulse_core::event::WorkflowEvent;
use serde::{Deserialize, Serialize};

use super::dedup::{Dedup, IdKey, Sighting};
use super::lifecycle::{Counts, EventMs};
use super::names::{Names, UNKNOWN};
use super::reorder::{Pending, ReorderBuffer};
use super::slots::Slots;
use super::table::{prefetch, KeyTable};
use super::windows::{BucketRing, Sketch};

/// A timestamp more than this far ahead of the wall clock is clamped.
const MAX_CLOCK_SKEW_MS: i64 = 60_000;
/// The longest sliding window, in seconds.
const LONGEST_WINDOW_S: i64 = 15 * 60;
/// How many events ahead a batch prefetches: far enough to hide a miss to
/// memory behind the folding of the events in between.
const AHEAD: usize = 8;
/// The same for the dedup pass, whose loop is short.
const DEDUP_AHEAD: usize = 8;
/// The same for the strings of the events being hashed.
const STRINGS_AHEAD: usize = 8;

/// The keys of an event, hashed once per batch ahead of folding.
#[derive(Debug, Clone, Copy)]
pub(super) struct EventKeys {
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

/// A timestamp from the future is clamped, so it cannot pin state.
fn clamp(timestamp_ms: i64, wall_ms: i64) -> i64 {
    timestamp_ms.min(wall_ms.saturating_add(MAX_CLOCK_SKEW_MS))
}

/// One agent's stage statistics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct AgentAgg {
    pub completed: u64,
    pub failed: u64,
    pub duration_sum_ms: u64,
    pub duration_count: u64,
    pub durations: Option<Sketch>,
    pub last_seen_ms: i64,
}

/// One workflow type's totals.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct TypeAgg {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
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
    pub(super) limits: Limits,
    /// Event time T, once any event was seen: the largest (clamped) event
    /// timestamp, moved on by the wall clock while the input is idle.
    pub(super) now_ms: Option<i64>,
    /// The largest (clamped) event timestamp alone. Lateness, forgetting and
    /// the dedup window follow it, never the wall clock: after an outage the
    /// backlog is not late.
    pub(super) max_event_ms: Option<i64>,
    /// Held events were applied since the last snapshot without a batch
    /// folded (see [`flowpulse_core::state::ProcessorState::changed_by_itself`]).
    #[serde(skip)]
    pub(super) changed_by_itself: bool,
    pub(super) seq: u64,
    /// Serialized apart (see `snapshot`), so its epochs can be stored once.
    #[serde(skip)]
    pub(super) dedup: Dedup,
    pub(super) pending: ReorderBuffer,
    pub(super) slots: Slots,
    pub(super) free: Vec<u32>,
    /// Workflow key → (slot, generation): folding an event needs no look at
    /// the workflow itself.
    #[serde(skip)]
    pub(super) by_id: KeyTable<(u32, u32)>,
    /// Reused per batch.
    #[serde(skip)]
    pub(super) keys: Vec<EventKeys>,
    /// Forget-after time, slot, generation: finished workflows, oldest
    /// first, leaving memory once T has passed their time by the dedup
    /// window.
    pub(super) finished: VecDeque<(i64, u32, u32)>,
    pub(super) counts: Counts,
    pub(super) agents: Names,
    pub(super) agent_stats: Vec<AgentAgg>,
    pub(super) types: Names,
    pub(super) type_stats: Vec<TypeAgg>,
    pub(super) durations: Sketch,
    pub(super) completed_duration_sum_ms: u64,
    pub(super) completed_duration_count: u64,
    pub(super) seconds: BucketRing,
    pub(super) history: BucketRing,
    pub(super) custom: BTreeMap<String, String>,
    pub(super) accounting: Accounting,
    /// History points ending at or before this are sealed: shown in a
    /// document, never changed again. Kept in the snapshot's extras.
    #[serde(skip)]
    pub(super) history_sealed_ms: i64,
    /// When (wall clock, ms) an event was last folded. A merge of
    /// partitions moves T on by the wall clock only once no partition has
    /// folded one for an interval. Kept in the snapshot's extras.
    #[serde(skip)]
    pub(super) active_at_wall_ms: Option<i64>,
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
            changed_by_itself: false,
            max_event_ms: None,
            seq: 0,
            dedup: Dedup::default(),
            pending: ReorderBuffer::default(),
            slots: Slots::default(),
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
            history_sealed_ms: i64::MIN,
            active_at_wall_ms: None,
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

    /// Replaces the dedup window (when restoring).
    pub(super) fn set_dedup(&mut self, dedup: Dedup) {
        self.dedup = dedup;
    }

    /// Event identities remembered for deduplication.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// Workflow slots, used or free.
    pub(super) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Finished workflows still remembered.
    pub(super) fn finished_len(&self) -> usize {
        self.finished.len()
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

    /// Finished workflows whose forget-after time is older than this leave
    /// memory: they are remembered at least the dedup window.
    fn forget_horizon(&self) -> i64 {
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
                // The names are interned by the second pass: fetched now,
                // they wait in a nearer cache until then.
                for s in [&ahead.id, &ahead.agent_type, &ahead.workflow_type]
                    .into_iter()
                    .flatten()
                {
                    prefetch(s.as_ptr());
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
                // A late identity is remembered a window from its arrival,
                // not from its (older) time, so its copies right behind it
                // are still recognised.
                let seen = newest.map_or(clamped, |t| t.max(clamped));
                if !self.dedup.first(id, seen, cutoff) {
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
        // Later than the out-of-order bound: applied now, never dropped.
        let late = ts < self.watermark();
        let is_stage = event.kind.is_stage();
        let (slot, generation) = match keys.workflow {
            // Stage events concern no tracked workflow.
            None => (u32::MAX, 0),
            Some(key) => self.slot_for(key),
        };
        let agent = match (&event.agent_type, is_stage) {
            (Some(a), true) => Some(self.intern_agent(a)),
            (None, true) => Some(self.intern_agent(UNKNOWN)),
            _ => None,
        };
        // Applying the event ignores the type once the workflow's is known.
        let workflow_type = match &event.workflow_type {
            Some(t) if !is_stage => Some(self.intern_type(t)),
            _ => None,
        };
        let pending = Pending {
            ts,
            seq: self.seq,
            kind: event.kind,
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
            self.apply(pending, self.max_event_ms);
        } else if is_stage {
            self.apply(pending, None);
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
        let horizon = self.forget_horizon();
        if self.finished.front().is_some_and(|f| f.0 < horizon) {
            self.forget_finished(horizon);
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
                self.prefetch_slot(near.slot);
            }
            self.apply(event, None);
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
            self.apply_held_by_itself(idle_watermark);
        }
    }

    /// Applies held events up to `watermark` outside of folding, noting
    /// that the state then differs from its last snapshot.
    fn apply_held_by_itself(&mut self, watermark: i64) {
        let held = self.pending.len();
        self.apply_until(watermark);
        if self.pending.len() != held {
            self.changed_by_itself = true;
        }
    }

    /// Notes that events were folded at wall time `wall_ms`.
    pub fn note_active(&mut self, wall_ms: i64) {
        self.active_at_wall_ms = self.active_at_wall_ms.max(Some(wall_ms));
    }

    /// Settles a state that the partials of every partition were merged
    /// into, at wall time `wall_ms`: T is the largest partition's T, moved
    /// on by the wall clock only once no partition has folded an event for
    /// an interval (as one instance's T moves on only while its whole input
    /// is idle). Returns T.
    pub fn settle_merged_at(&mut self, wall_ms: i64) -> Option<i64> {
        if let (Some(event_t), Some(active)) = (self.max_event_ms, self.active_at_wall_ms) {
            let idle = wall_ms - active - self.limits.history_interval_ms;
            if idle > 0 {
                self.now_ms = self.now_ms.max(Some(event_t + idle));
            }
        }
        self.now_ms
    }

    /// Moves T up to `t_ms` (the merge's, see [`Self::settle_merged_at`]):
    /// held events it passes by the out-of-order bound are applied, as
    /// [`Self::advance`] does.
    pub fn follow(&mut self, t_ms: i64) {
        if self.now_ms.is_some_and(|t| t >= t_ms) {
            return;
        }
        self.now_ms = Some(t_ms);
        self.apply_held_by_itself(t_ms - self.limits.max_out_of_order_ms);
    }

    /// Applies every held event (end of input).
    pub fn flush(&mut self) {
        self.release(i64::MAX);
    }

    /// Records the latest value of a custom metric.
    pub fn set_custom(&mut self, name: &str, value: &serde_json::Value) {
        self.custom.insert(name.to_owned(), value.to_string());
    }

    pub(super) fn intern_agent(&mut self, name: &str) -> u16 {
        let i = self.agents.intern(name, self.limits.max_agents);
        if self.agent_stats.len() <= i as usize {
            self.agent_stats
                .resize_with(i as usize + 1, AgentAgg::default);
        }
        i
    }

    pub(super) fn intern_type(&mut self, name: &str) -> u16 {
        // +1: `unknown` does not count against the cap.
        let i = self.types.intern(name, self.limits.max_workflow_types + 1);
        if self.type_stats.len() <= i as usize {
            self.type_stats.resize(i as usize + 1, TypeAgg::default());
        }
        i
    }

    fn release(&mut self, watermark: i64) {
        self.apply_until(watermark);
        self.forget_finished(self.forget_horizon());
        self.dedup.forget_before(self.dedup_cutoff());
    }

    /// Seals the history points T has passed by the out-of-order bound:
    /// the next document shows them, and they never change afterwards
    /// (later events count in totals and windows only).
    pub fn seal_history(&mut self) {
        let Some(t) = self.now_ms else { return };
        let width = self.history.width_ms();
        let sealed = (t - self.limits.max_out_of_order_ms).div_euclid(width) * width;
        self.history_sealed_ms = self.history_sealed_ms.max(sealed);
    }

    /// What a snapshot keeps besides the serialized fields: the outcome
    /// times of finished workflows and those whose duration is unknown (by
    /// slot), and the end of sealed history.
    pub(super) fn extras(&self) -> (Vec<(u32, i64)>, Vec<u32>, i64) {
        let held = || {
            self.slots
                .iter()
                .enumerate()
                .filter_map(|(slot, w)| Some((slot as u32, w.as_ref().filter(|w| !w.removed)?)))
        };
        let outcome_ms = held()
            .filter_map(|(slot, w)| Some((slot, w.outcome_ms?.get())))
            .collect();
        let duration_missing = held()
            .filter(|(_, w)| w.duration_missing)
            .map(|(slot, _)| slot)
            .collect();
        (outcome_ms, duration_missing, self.history_sealed_ms)
    }

    /// Puts back what [`AggregateState::extras`] gave.
    pub(super) fn set_extras(
        &mut self,
        outcome_ms: &[(u32, i64)],
        duration_missing: &[u32],
        history_sealed_ms: i64,
    ) {
        for &(slot, at) in outcome_ms {
            if let Some(Some(w)) = self.slots.get_mut(slot as usize) {
                w.outcome_ms = Some(EventMs::new(at));
            }
        }
        for &slot in duration_missing {
            if let Some(Some(w)) = self.slots.get_mut(slot as usize) {
                w.duration_missing = true;
            }
        }
        self.history_sealed_ms = history_sealed_ms;
    }

    /// Completes a state read from a version-2 snapshot, which kept each
    /// finished workflow under its outcome time and forgot it after the
    /// out-of-order bound: the outcome times come from there, and each is
    /// remembered, as now, for the dedup window after the bound. History is
    /// sealed as far as T has passed it.
    pub(super) fn upgrade_from_version_2(&mut self) {
        for entry in self.finished.iter_mut() {
            let (outcome_ms, slot, generation) = *entry;
            if let Some(Some(w)) = self.slots.get_mut(slot as usize) {
                if w.generation == generation && !w.removed {
                    w.outcome_ms = Some(EventMs::new(outcome_ms));
                }
            }
            entry.0 = outcome_ms + self.limits.max_out_of_order_ms;
        }
        self.seal_history();
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
}
