//! Each workflow's lifecycle: known from its first workflow-level event in
//! any order, its outcome decided by the first terminal event applied and
//! never retracted, paused while its newest pause/resume is a pause; and the
//! counts, per-type and per-agent statistics those events change.

use std::num::NonZeroU64;

use flowpulse_core::event::EventKind;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::dedup::IdKey;
use super::reorder::Pending;
use super::state::AggregateState;
use super::windows::Sketch;
use super::wire;

/// How many finished workflows ahead forgetting prefetches. They leave
/// memory a dedup window after they finished, so their slots and index
/// buckets are cold (a miss to memory each): far enough ahead to hide that
/// (4 measured 5.5 M events/s, 16 measured 6.3 M, 32 no better).
const FORGET_AHEAD: usize = 16;

/// Where a known workflow is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

/// How a workflow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Completed,
    Failed,
    Cancelled,
}

impl Outcome {
    fn of(kind: EventKind) -> Option<Outcome> {
        match kind {
            EventKind::WorkflowCompleted => Some(Outcome::Completed),
            EventKind::WorkflowFailed => Some(Outcome::Failed),
            EventKind::WorkflowCancelled => Some(Outcome::Cancelled),
            _ => None,
        }
    }

    /// (completed, failed) counts of this outcome, for per-type totals.
    fn finished(outcome: Option<Outcome>) -> (u64, u64) {
        match outcome {
            Some(Outcome::Completed) => (1, 0),
            Some(Outcome::Failed) => (0, 1),
            _ => (0, 0),
        }
    }
}

/// An event time, in 8 bytes whether known or not: an `Option<EventMs>`
/// is 8 bytes where an `Option<i64>` is 16, and with two of them a
/// [`Workflow`] fits one cache line. Every time but `i64::MIN` is kept
/// exactly (no timestamp is that far back: they are parsed from years
/// 0–9999); that one is kept as `i64::MIN + 1`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct EventMs(NonZeroU64);

/// Flipping it maps `i64::MIN`, and only it, to zero.
const SIGN: u64 = 1 << 63;

impl EventMs {
    pub(super) fn new(ms: i64) -> EventMs {
        EventMs(NonZeroU64::new(ms as u64 ^ SIGN).unwrap_or(NonZeroU64::MIN))
    }

    pub(super) fn get(self) -> i64 {
        (self.0.get() ^ SIGN) as i64
    }
}

impl std::fmt::Debug for EventMs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// Serialized as the plain number, as when it was an `i64`.
impl Serialize for EventMs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.get())
    }
}

impl<'de> Deserialize<'de> for EventMs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        i64::deserialize(deserializer).map(EventMs::new)
    }
}

/// One workflow the state tracks: one cache line, so reaching it (applying
/// an event, forgetting it) is one miss, not two.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[repr(align(64))]
pub(super) struct Workflow {
    /// 128-bit hash of the workflow id (ids are never kept as strings).
    pub key: IdKey,
    /// Forgotten (finished long enough ago, or expired); the slot is free.
    pub removed: bool,
    pub generation: u32,
    /// Whether a workflow-level event of it was applied (stage events do
    /// not make a workflow known).
    pub known: bool,
    pub workflow_type: u16,
    pub created_ms: Option<EventMs>,
    #[serde(with = "wire::outcome")]
    pub outcome: Option<Outcome>,
    pub paused: bool,
    /// Event time of the newest pause/resume applied (`i64::MIN`: none, so
    /// any first one is newer).
    pub pause_changed_ms: i64,
    pub last_seen_ms: i64,
    /// Event time of the outcome. Kept in the snapshot's extras (version 3),
    /// unknown for workflows restored from version 2.
    #[serde(skip)]
    pub outcome_ms: Option<EventMs>,
    /// It completed or failed with no `duration_ms` and no creation time
    /// known (an anomaly until a late `created` gives the duration). Kept in
    /// the snapshot's extras.
    #[serde(skip)]
    pub duration_missing: bool,
}

// A field that makes a slot outgrow its cache line fails here.
const _: () = assert!(std::mem::size_of::<Option<Workflow>>() == 64);

impl Workflow {
    pub(super) fn phase(&self) -> Phase {
        match self.outcome {
            Some(Outcome::Completed) => Phase::Completed,
            Some(Outcome::Failed) => Phase::Failed,
            Some(Outcome::Cancelled) => Phase::Cancelled,
            None if self.paused => Phase::Paused,
            None => Phase::Running,
        }
    }
}

/// Workflows by phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Counts {
    pub total: u64,
    pub running: u64,
    pub paused: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub expired: u64,
}

impl Counts {
    pub(super) fn slot(&mut self, phase: Phase) -> &mut u64 {
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

impl AggregateState {
    /// The slot of a workflow, created (unknown until an event is applied)
    /// if it is not tracked.
    pub(super) fn slot_for(&mut self, key: IdKey) -> (u32, u32) {
        let (entry, found) = self.by_id.entry(key, (0, 0));
        if found {
            return *entry;
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
            outcome: None,
            paused: false,
            pause_changed_ms: i64::MIN,
            last_seen_ms: i64::MIN,
            outcome_ms: None,
            duration_missing: false,
        });
        (slot, generation)
    }

    /// Notes a finished workflow, to forget once event time has passed
    /// `forget_after` by the dedup window.
    fn remember_finished(&mut self, forget_after: i64, slot: u32, generation: u32) {
        let entry = (forget_after, slot, generation);
        match self.finished.back() {
            Some(last) if last.0 > forget_after => {
                // Rare (an idle stretch moved time on, then a late outcome):
                // keep the queue sorted.
                let at = self.finished.partition_point(|f| f.0 <= forget_after);
                self.finished.insert(at, entry);
            }
            _ => self.finished.push_back(entry),
        }
    }

    /// Prefetches a workflow's slot (one cache line).
    #[inline(always)]
    pub(super) fn prefetch_slot(&self, slot: u32) {
        self.slots.prefetch(slot as usize);
    }

    /// Finished workflows whose `forget_after` is older than `horizon` leave
    /// memory: a late event of one is then more than the dedup window late.
    pub(super) fn forget_finished(&mut self, horizon: i64) {
        while let Some(&(forget_after, slot, generation)) = self.finished.front() {
            if forget_after >= horizon {
                break;
            }
            // As in `apply_until`: the slot of a workflow further ahead, and
            // the table bucket of a nearer one, whose slot is cached by now.
            if let Some(&(_, far, _)) = self.finished.get(FORGET_AHEAD * 2) {
                self.prefetch_slot(far);
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

    /// Applies one event. `late_at` is event time T when the event arrived
    /// later than the out-of-order bound (it is applied on arrival), `None`
    /// when the watermark released it in order.
    pub(super) fn apply(&mut self, event: Pending, late_at: Option<i64>) {
        if event.kind.is_stage() {
            self.apply_stage(&event);
        } else {
            self.apply_workflow(&event, late_at);
        }
    }

    fn apply_stage(&mut self, event: &Pending) {
        let ok = event.kind == EventKind::StageCompleted;
        let Some(agent) = event.agent else {
            return;
        };
        let agent = &mut self.agent_stats[agent as usize];
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

    fn apply_workflow(&mut self, event: &Pending, late_at: Option<i64>) {
        let kind = event.kind;
        let Some(workflow) = self.slots[event.slot as usize]
            .as_mut()
            .filter(|w| w.generation == event.generation && !w.removed)
        else {
            // The workflow expired while this event was held.
            self.accounting.anomalies += 1;
            return;
        };
        if !workflow.known {
            workflow.known = true;
            if let Some(workflow_type) = event.workflow_type {
                workflow.workflow_type = workflow_type;
            }
            self.counts.total += 1;
            self.counts.running += 1;
            self.type_stats[workflow.workflow_type as usize].total += 1;
        } else if let Some(to) = event
            .workflow_type
            .filter(|t| *t != 0 && workflow.workflow_type == 0)
        {
            // The type became known: move what was counted under `unknown`.
            let (completed, failed) = Outcome::finished(workflow.outcome);
            let from = &mut self.type_stats[0];
            from.total -= 1;
            from.completed -= completed;
            from.failed -= failed;
            let to_stats = &mut self.type_stats[to as usize];
            to_stats.total += 1;
            to_stats.completed += completed;
            to_stats.failed += failed;
            workflow.workflow_type = to;
        }
        workflow.last_seen_ms = workflow.last_seen_ms.max(event.ts);
        let before = workflow.phase();
        match kind {
            EventKind::WorkflowCreated => {
                if workflow.created_ms.is_some() {
                    self.accounting.anomalies += 1;
                } else {
                    workflow.created_ms = Some(EventMs::new(event.ts));
                    if let (true, Some(outcome_ms)) = (
                        workflow.duration_missing,
                        workflow.outcome_ms.map(EventMs::get),
                    ) {
                        // Late: the outcome came first without a duration.
                        // Now it is known, as if in order: no longer an anomaly.
                        workflow.duration_missing = false;
                        let failed = workflow.outcome == Some(Outcome::Failed);
                        let duration = (outcome_ms - event.ts).max(0) as u64;
                        self.accounting.anomalies -= 1;
                        self.record_duration(failed, duration, outcome_ms);
                    }
                }
            }
            EventKind::WorkflowPaused | EventKind::WorkflowResumed => {
                if workflow.outcome.is_some() {
                    // Before the outcome (arriving late) it changes nothing;
                    // after it, it contradicts the outcome.
                    if workflow.outcome_ms.is_some_and(|o| event.ts > o.get()) {
                        self.accounting.anomalies += 1;
                    }
                } else if event.ts >= workflow.pause_changed_ms {
                    workflow.paused = kind == EventKind::WorkflowPaused;
                    workflow.pause_changed_ms = event.ts;
                }
            }
            _ => {
                if workflow.outcome.is_some() {
                    self.accounting.anomalies += 1;
                    return;
                }
                let outcome = Outcome::of(kind);
                workflow.outcome = outcome;
                workflow.outcome_ms = Some(EventMs::new(event.ts));
                let type_index = workflow.workflow_type as usize;
                let duration = event.duration_ms.or_else(|| {
                    workflow
                        .created_ms
                        .map(|c| (event.ts - c.get()).max(0) as u64)
                });
                workflow.duration_missing =
                    duration.is_none() && outcome != Some(Outcome::Cancelled);
                // Remembered for the dedup window after it could first be
                // known finished: in order, once T passed it by the bound;
                // late, from its arrival.
                let forget_after = late_at.unwrap_or(event.ts + self.limits.max_out_of_order_ms);
                self.remember_finished(forget_after, event.slot, event.generation);
                if outcome != Some(Outcome::Cancelled) {
                    self.finish(
                        outcome == Some(Outcome::Failed),
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

    /// Counts a workflow that completed or failed: per type, its duration,
    /// and the windows and history its event time falls in.
    fn finish(&mut self, failed: bool, type_index: usize, duration: Option<u64>, ts: i64) {
        let stats = &mut self.type_stats[type_index];
        if failed {
            stats.failed += 1;
        } else {
            stats.completed += 1;
        }
        // A history point already emitted never changes.
        let history = (ts >= self.history_sealed_ms).then_some(&mut self.history);
        for ring in std::iter::once(&mut self.seconds).chain(history) {
            if let Some(bucket) = ring.bucket_mut(ts) {
                bucket.finished += 1;
                bucket.failed += u64::from(failed);
            }
        }
        match duration {
            Some(duration) => self.record_duration(failed, duration, ts),
            None => self.accounting.anomalies += 1,
        }
    }

    /// Counts the duration of a workflow that completed or failed at `ts`:
    /// the latency sketch, the mean of completed ones, and the windows and
    /// (unsealed) history its outcome falls in.
    fn record_duration(&mut self, failed: bool, duration: u64, ts: i64) {
        self.durations.add(duration as f64);
        if !failed {
            self.completed_duration_sum_ms =
                self.completed_duration_sum_ms.saturating_add(duration);
            self.completed_duration_count += 1;
        }
        let history = (ts >= self.history_sealed_ms).then_some(&mut self.history);
        for ring in std::iter::once(&mut self.seconds).chain(history) {
            if let Some(bucket) = ring.bucket_mut(ts) {
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
        // A workflow whose next event waits for the watermark is not silent.
        let awaited: rustc_hash::FxHashSet<u32> = self
            .pending
            .in_order
            .iter()
            .chain(self.pending.out_of_order.iter())
            .map(|p| p.slot)
            .collect();
        let mut expired = Vec::new();
        for (slot, workflow) in self.slots.iter().enumerate() {
            let Some(w) = workflow.as_ref().filter(|w| w.known && w.outcome.is_none()) else {
                continue;
            };
            let silent = w.last_seen_ms < cutoff && !awaited.contains(&(slot as u32));
            if silent && (!w.paused || self.limits.expire_paused) {
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
}

#[cfg(test)]
mod event_ms_tests {
    use proptest::prelude::*;

    use super::EventMs;

    proptest! {
        #[test]
        fn every_time_but_the_least_is_kept_exactly(ms in any::<i64>().prop_filter("not MIN", |&m| m != i64::MIN)) {
            prop_assert_eq!(EventMs::new(ms).get(), ms);
            let json = serde_json::to_string(&Some(EventMs::new(ms))).unwrap();
            prop_assert_eq!(&json, &ms.to_string());
            let back: Option<EventMs> = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back.map(EventMs::get), Some(ms));
        }
    }

    #[test]
    fn the_least_time_is_kept_as_the_next_and_none_stays_none() {
        assert_eq!(EventMs::new(i64::MIN).get(), i64::MIN + 1);
        for ms in [0, -1, 1, i64::MAX, i64::MIN + 1] {
            assert_eq!(EventMs::new(ms).get(), ms);
        }
        assert_eq!(std::mem::size_of::<Option<EventMs>>(), 8);
        let none: Option<EventMs> = serde_json::from_str("null").unwrap();
        assert_eq!(none, None);
    }
}
