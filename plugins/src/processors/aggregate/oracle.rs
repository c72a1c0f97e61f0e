//! What the test oracles share: a workflow's final state from its events
//! alone, the contract's way.

use flowpulse_core::event::{EventKind, WorkflowEvent};

/// Where a workflow ends up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Final {
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

/// A workflow's type (`unknown` if no event carries one) and final state:
/// its first terminal event by time decides; without one it is paused if
/// its newest pause/resume (ties by arrival) is a pause.
pub(super) fn final_state(events: &mut [&WorkflowEvent]) -> (String, Final) {
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
