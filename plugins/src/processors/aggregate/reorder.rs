//! Workflow events held until event time has passed them by the
//! out-of-order bound, then applied in (time, arrival) order.

use std::collections::{BinaryHeap, VecDeque};

use flowpulse_core::event::EventKind;
use serde::{Deserialize, Serialize};

use super::wire;

/// An event ready to apply, in compact form: held here until the
/// watermark passes it (workflow events), or applied at once (stage events,
/// late events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Pending {
    /// Event time (clamped).
    pub ts: i64,
    /// Arrival order: ties of `ts` apply in it.
    pub seq: u64,
    #[serde(with = "wire::kind")]
    pub kind: EventKind,
    /// The workflow's slot and its generation then (workflow events only:
    /// stage events concern no tracked workflow and are never held).
    pub slot: u32,
    pub generation: u32,
    /// The agent's name index (stage events).
    #[serde(with = "wire::name_index")]
    pub agent: Option<u16>,
    /// The workflow type's name index, when the event carries one.
    #[serde(with = "wire::name_index")]
    pub workflow_type: Option<u16>,
    pub duration_ms: Option<u64>,
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

/// Events held until the watermark passes them, released in (time, arrival)
/// order. Mostly-ordered input takes the queue; the heap takes the rest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct ReorderBuffer {
    pub in_order: VecDeque<Pending>,
    pub out_of_order: BinaryHeap<Pending>,
}

impl ReorderBuffer {
    pub(super) fn push(&mut self, event: Pending) {
        match self.in_order.back() {
            Some(last) if (event.ts, event.seq) < (last.ts, last.seq) => {
                self.out_of_order.push(event)
            }
            _ => self.in_order.push_back(event),
        }
    }

    /// Whether an event is due at `watermark`.
    #[inline]
    pub(super) fn ready(&self, watermark: i64) -> bool {
        self.in_order.front().is_some_and(|p| p.ts <= watermark)
            || self.out_of_order.peek().is_some_and(|p| p.ts <= watermark)
    }

    /// The oldest event if its time is at most `watermark`.
    pub(super) fn pop_until(&mut self, watermark: i64) -> Option<Pending> {
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

    pub(super) fn len(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }
}
