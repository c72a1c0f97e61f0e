//! Adding the state of a disjoint partition of workflows into another.
//!
//! Every struct is destructured whole, so a field added later does not
//! compile until the merge says what to do with it.

use rustc_hash::FxHashMap;

use super::lifecycle::Counts;
use super::reorder::Pending;
use super::state::{Accounting, AgentAgg, AggregateState, TypeAgg};
use super::windows::Sketch;

fn max_of(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

impl AggregateState {
    /// What of this state merges into the metrics document: its counts,
    /// sketches, per-second buckets and history, without the dedup window,
    /// the workflows in flight and the events held for reordering, which
    /// only folding needs. Merging the summaries of disjoint partitions
    /// gives the document merging the whole states gives.
    pub fn summary(&self) -> AggregateState {
        let AggregateState {
            limits,
            now_ms,
            max_event_ms,
            // Bookkeeping of this state's own checkpoints.
            changed_by_itself: _,
            seq,
            dedup: _,
            pending: _,
            slots: _,
            free: _,
            by_id: _,
            keys: _,
            finished: _,
            counts,
            agents,
            agent_stats,
            types,
            type_stats,
            durations,
            completed_duration_sum_ms,
            completed_duration_count,
            seconds,
            history,
            custom,
            accounting,
            history_sealed_ms,
            active_at_wall_ms,
        } = self;
        let mut summary = AggregateState::new(limits.clone());
        summary.now_ms = *now_ms;
        summary.max_event_ms = *max_event_ms;
        summary.seq = *seq;
        summary.counts = *counts;
        summary.agents = agents.clone();
        summary.agent_stats = agent_stats.clone();
        summary.types = types.clone();
        summary.type_stats = type_stats.clone();
        summary.durations = durations.clone();
        summary.completed_duration_sum_ms = *completed_duration_sum_ms;
        summary.completed_duration_count = *completed_duration_count;
        summary.seconds = seconds.clone();
        summary.history = history.clone();
        summary.custom = custom.clone();
        summary.accounting = *accounting;
        summary.history_sealed_ms = *history_sealed_ms;
        summary.active_at_wall_ms = *active_at_wall_ms;
        summary
    }

    /// Adds a partial state of a disjoint partition of workflows into this
    /// one (the two must have the same limits).
    pub fn merge(&mut self, other: &AggregateState) {
        let AggregateState {
            limits: _,
            now_ms,
            max_event_ms,
            changed_by_itself: _,
            seq,
            dedup,
            pending,
            slots,
            // Rebuilt here as the other's workflows are re-homed.
            free: _,
            by_id: _,
            keys: _,
            finished,
            counts,
            agents,
            agent_stats,
            types,
            type_stats,
            durations,
            completed_duration_sum_ms,
            completed_duration_count,
            seconds,
            history,
            custom,
            accounting,
            history_sealed_ms,
            active_at_wall_ms,
        } = other;
        self.now_ms = max_of(self.now_ms, *now_ms);
        self.active_at_wall_ms = self.active_at_wall_ms.max(*active_at_wall_ms);
        self.max_event_ms = max_of(self.max_event_ms, *max_event_ms);
        self.history_sealed_ms = self.history_sealed_ms.max(*history_sealed_ms);
        self.seq = self.seq.max(*seq);
        self.dedup.merge(dedup);

        // Re-home the other's workflows, then its held events and finished list.
        let mut slot_map = FxHashMap::default();
        for (old, workflow) in slots.iter().enumerate() {
            let Some(w) = workflow.as_ref().filter(|w| !w.removed) else {
                continue;
            };
            let (slot, generation) = self.slot_for(w.key);
            let mut moved = w.clone();
            moved.generation = generation;
            moved.workflow_type = self.intern_type(types.name(w.workflow_type));
            self.slots[slot as usize] = Some(moved);
            slot_map.insert(old as u32, (slot, generation, w.generation));
        }
        let agent_map: Vec<u16> = agents.all().iter().map(|n| self.intern_agent(n)).collect();
        let type_map: Vec<u16> = types.all().iter().map(|n| self.intern_type(n)).collect();
        let remap = |p: &Pending| -> Pending {
            let mut p = *p;
            if let Some(&(slot, generation, old_generation)) = slot_map.get(&p.slot) {
                if p.generation == old_generation {
                    p.slot = slot;
                    p.generation = generation;
                } else {
                    p.generation = u32::MAX;
                }
            }
            p.agent = p.agent.map(|a| agent_map[a as usize]);
            p.workflow_type = p.workflow_type.map(|t| type_map[t as usize]);
            p
        };
        for p in pending.in_order.iter().chain(pending.out_of_order.iter()) {
            self.pending.out_of_order.push(remap(p));
        }
        for &(forget_after, slot, generation) in finished {
            if let Some(&(new_slot, new_generation, old_generation)) = slot_map.get(&slot) {
                if generation == old_generation {
                    self.finished
                        .push_back((forget_after, new_slot, new_generation));
                }
            }
        }
        self.finished
            .make_contiguous()
            .sort_by_key(|(forget_after, _, _)| *forget_after);

        let Counts {
            total,
            running,
            paused,
            completed,
            failed,
            cancelled,
            expired,
        } = counts;
        self.counts.total += total;
        self.counts.running += running;
        self.counts.paused += paused;
        self.counts.completed += completed;
        self.counts.failed += failed;
        self.counts.cancelled += cancelled;
        self.counts.expired += expired;
        for (i, theirs) in agent_stats.iter().enumerate() {
            let AgentAgg {
                completed,
                failed,
                duration_sum_ms,
                duration_count,
                durations,
                last_seen_ms,
            } = theirs;
            let ours = &mut self.agent_stats[agent_map[i] as usize];
            ours.completed += completed;
            ours.failed += failed;
            ours.duration_sum_ms += duration_sum_ms;
            ours.duration_count += duration_count;
            ours.last_seen_ms = ours.last_seen_ms.max(*last_seen_ms);
            if let Some(sketch) = durations {
                ours.durations
                    .get_or_insert_with(Sketch::default)
                    .merge(sketch);
            }
        }
        for (i, theirs) in type_stats.iter().enumerate() {
            let TypeAgg {
                total,
                completed,
                failed,
            } = theirs;
            let ours = &mut self.type_stats[type_map[i] as usize];
            ours.total += total;
            ours.completed += completed;
            ours.failed += failed;
        }
        self.durations.merge(durations);
        self.completed_duration_sum_ms += completed_duration_sum_ms;
        self.completed_duration_count += completed_duration_count;
        self.seconds.merge(seconds);
        self.history.merge(history);
        for (k, v) in custom {
            self.custom.insert(k.clone(), v.clone());
        }
        let Accounting {
            events,
            duplicates,
            anomalies,
        } = accounting;
        self.accounting.events += events;
        self.accounting.duplicates += duplicates;
        self.accounting.anomalies += anomalies;
    }
}
