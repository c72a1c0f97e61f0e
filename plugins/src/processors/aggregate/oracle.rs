//! What the test oracles share: a workflow's final state from its events
//! alone, the contract's way.

use std::collections::BTreeMap;

use flowpulse_core::event::{EventKind, WorkflowEvent};
use flowpulse_core::metrics::RealtimeMetrics;

/// Where a workflow ends up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Final {
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

/// A workflow's type (`unknown` if no event carries one) and final state:
/// its first terminal event by time decides; without one it is paused if
/// its newest pause/resume (ties by arrival) is a pause.
fn final_state(events: &mut [&WorkflowEvent]) -> (String, Final) {
    events.sort_by_key(|e| e.timestamp_ms);
    let workflow_type = events
        .iter()
        .find_map(|e| e.workflow_type.clone())
        .unwrap_or_else(|| "unknown".into());
    let state = match events.iter().find(|e| e.kind.is_terminal()).map(|e| e.kind) {
        Some(EventKind::WorkflowCompleted) => Final::Completed,
        Some(EventKind::WorkflowFailed) => Final::Failed,
        Some(_) => Final::Cancelled,
        None => {
            let paused = events
                .iter()
                .rev()
                .find(|e| {
                    matches!(
                        e.kind,
                        EventKind::WorkflowPaused | EventKind::WorkflowResumed
                    )
                })
                .is_some_and(|e| e.kind == EventKind::WorkflowPaused);
            if paused {
                Final::Paused
            } else {
                Final::Running
            }
        }
    };
    (workflow_type, state)
}

/// Workflows by final state, and (total, completed, failed) per type: what
/// the oracles predict and the document shows.
#[derive(Debug, Default, PartialEq)]
pub(super) struct WorkflowCounts {
    pub total: u64,
    pub running: u64,
    pub paused: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub types: BTreeMap<String, (u64, u64, u64)>,
}

impl WorkflowCounts {
    /// Counts one workflow from its events.
    pub(super) fn count(&mut self, events: &mut [&WorkflowEvent]) {
        let (workflow_type, state) = final_state(events);
        self.total += 1;
        let per_type = self.types.entry(workflow_type).or_default();
        per_type.0 += 1;
        match state {
            Final::Completed => {
                self.completed += 1;
                per_type.1 += 1;
            }
            Final::Failed => {
                self.failed += 1;
                per_type.2 += 1;
            }
            Final::Cancelled => self.cancelled += 1,
            Final::Paused => self.paused += 1,
            Final::Running => self.running += 1,
        }
    }

    /// What a document shows.
    pub(super) fn of(doc: &RealtimeMetrics) -> WorkflowCounts {
        let o = &doc.overview;
        WorkflowCounts {
            total: o.total_workflows,
            running: o.running_workflows,
            paused: o.paused_workflows,
            completed: o.completed_workflows,
            failed: o.failed_workflows,
            cancelled: o.cancelled_workflows,
            types: doc
                .workflows_by_type
                .iter()
                .map(|t| (t.workflow_type.clone(), (t.total, t.completed, t.failed)))
                .collect(),
        }
    }
}
