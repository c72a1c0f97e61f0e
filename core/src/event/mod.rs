//! The workflow event model (CONTRACT §1) and its decoders.

mod decode;
mod timestamp;

pub use decode::{decode_json, decode_stream_entry, DecodeError, Decoded, IgnoredReason};
pub use timestamp::{format_rfc3339_ms, parse_rfc3339_ms};

use serde::ser::SerializeMap;
use serde::Serialize;

/// What happened to a workflow, from `metadata.stage` (envelope form) or
/// `type` (flat form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A workflow was created and is running.
    WorkflowCreated,
    /// One agent task finished well.
    StageCompleted,
    /// One agent task failed.
    StageFailed,
    /// The workflow finished well.
    WorkflowCompleted,
    /// The workflow failed.
    WorkflowFailed,
    /// The workflow was paused.
    WorkflowPaused,
    /// A paused workflow runs again.
    WorkflowResumed,
    /// The workflow was cancelled.
    WorkflowCancelled,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 8] = [
        EventKind::WorkflowCreated,
        EventKind::StageCompleted,
        EventKind::StageFailed,
        EventKind::WorkflowCompleted,
        EventKind::WorkflowFailed,
        EventKind::WorkflowPaused,
        EventKind::WorkflowResumed,
        EventKind::WorkflowCancelled,
    ];

    /// The envelope form's `metadata.stage`, e.g. `orchestrator:workflow:created`.
    pub fn stage_name(self) -> &'static str {
        match self {
            EventKind::WorkflowCreated => "orchestrator:workflow:created",
            EventKind::StageCompleted => "orchestrator:workflow:stage:completed",
            EventKind::StageFailed => "orchestrator:workflow:stage:failed",
            EventKind::WorkflowCompleted => "orchestrator:workflow:completed",
            EventKind::WorkflowFailed => "orchestrator:workflow:failed",
            EventKind::WorkflowPaused => "orchestrator:workflow:paused",
            EventKind::WorkflowResumed => "orchestrator:workflow:resumed",
            EventKind::WorkflowCancelled => "orchestrator:workflow:cancelled",
        }
    }

    /// The flat form's `type`, e.g. `workflow.created`.
    pub fn type_name(self) -> &'static str {
        match self {
            EventKind::WorkflowCreated => "workflow.created",
            EventKind::StageCompleted => "workflow.stage.completed",
            EventKind::StageFailed => "workflow.stage.failed",
            EventKind::WorkflowCompleted => "workflow.completed",
            EventKind::WorkflowFailed => "workflow.failed",
            EventKind::WorkflowPaused => "workflow.paused",
            EventKind::WorkflowResumed => "workflow.resumed",
            EventKind::WorkflowCancelled => "workflow.cancelled",
        }
    }

    /// Parses a `metadata.stage` value; `None` for stages Flowpulse ignores.
    pub fn from_stage_name(stage: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.stage_name() == stage)
    }

    /// Parses a flat `type` value; `None` for types Flowpulse ignores.
    pub fn from_type_name(type_name: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.type_name() == type_name)
    }

    /// Stage (agent task) events, as opposed to workflow-level ones.
    pub fn is_stage(self) -> bool {
        matches!(self, EventKind::StageCompleted | EventKind::StageFailed)
    }

    /// Completed, failed and cancelled: the events that decide an outcome.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::WorkflowCompleted | EventKind::WorkflowFailed | EventKind::WorkflowCancelled
        )
    }
}

/// One workflow state change, whatever form it arrived in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowEvent {
    /// Identity for deduplication: `message_id`, else the stream entry id,
    /// else the flat form's `id`; `None` means the event is not deduplicated.
    pub id: Option<String>,
    /// What happened.
    pub kind: EventKind,
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: i64,
    /// The workflow this event belongs to.
    pub workflow_id: String,
    /// The workflow's type (`feature`, `bugfix` …), where the event carries it.
    pub workflow_type: Option<String>,
    /// The agent that ran the stage (stage events).
    pub agent_type: Option<String>,
    /// The stage name (stage events).
    pub stage: Option<String>,
    /// How long the stage or workflow took.
    pub duration_ms: Option<u64>,
    /// The error of a failed stage or workflow.
    pub error: Option<String>,
}

/// Serializes as the flat form of CONTRACT §1, which every decoder accepts.
impl Serialize for WorkflowEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(9))?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("type", self.kind.type_name())?;
        map.serialize_entry("timestamp", &format_rfc3339_ms(self.timestamp_ms))?;
        map.serialize_entry("workflow_id", &self.workflow_id)?;
        map.serialize_entry("workflow_type", &self.workflow_type)?;
        map.serialize_entry("agent_type", &self.agent_type)?;
        map.serialize_entry("stage", &self.stage)?;
        map.serialize_entry("duration_ms", &self.duration_ms)?;
        map.serialize_entry("error", &self.error)?;
        map.end()
    }
}

impl WorkflowEvent {
    /// The envelope form of CONTRACT §1 (`{"key", "msg"}`) as published by
    /// the orchestrator: the JSON string of a stream entry's `payload` field.
    pub fn to_envelope_json(&self) -> serde_json::Value {
        serde_json::json!({
            "key": self.workflow_id,
            "msg": {
                "message_id": self.id,
                "metadata": {
                    "stage": self.kind.stage_name(),
                    "timestamp": format_rfc3339_ms(self.timestamp_ms),
                },
                "payload": {
                    "workflow_id": self.workflow_id,
                    "workflow_type": self.workflow_type,
                    "agent_type": self.agent_type,
                    "stage": self.stage,
                    "duration_ms": self.duration_ms,
                    "error": self.error,
                }
            }
        })
    }
}
