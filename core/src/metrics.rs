//! The documents of CONTRACT §2: `RealtimeMetrics` and its parts.
//!
//! Field names and units are part of the wire contract: never rename or
//! remove one. Extra fields may be added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Workflow counts and cumulative rates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Overview {
    /// Every workflow known (made known by a workflow-level event).
    pub total_workflows: u64,
    /// Known, not paused, no outcome yet.
    pub running_workflows: u64,
    /// Outcome: completed.
    pub completed_workflows: u64,
    /// Outcome: failed.
    pub failed_workflows: u64,
    /// Newest pause/resume event is a pause, no outcome yet.
    pub paused_workflows: u64,
    /// Outcome: cancelled.
    pub cancelled_workflows: u64,
    /// Silent for longer than the aggregate's `stale_after`.
    pub expired_workflows: u64,
    /// Mean `duration_ms` of completed workflows.
    pub avg_completion_time_ms: f64,
    /// failed / (completed + failed), 0..100; 0 with none finished.
    pub error_rate_percent: f64,
    /// completed / (completed + failed), 0..100; 100 with none finished.
    pub success_rate_percent: f64,
    /// Success rate of stage tasks over the last 5 minutes; 100 with none.
    pub system_health_percent: f64,
}

/// Stage-task statistics of one agent type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentStats {
    /// The agent's name (`other` collects names past the cap).
    pub agent_type: String,
    /// completed_tasks + failed_tasks.
    pub total_tasks: u64,
    /// Stage tasks that finished well.
    pub completed_tasks: u64,
    /// Stage tasks that failed.
    pub failed_tasks: u64,
    /// Mean stage duration over both outcomes.
    pub avg_duration_ms: f64,
    /// 95th percentile of stage duration over both outcomes.
    pub p95_duration_ms: f64,
    /// completed / total, 0..100.
    pub success_rate_percent: f64,
    /// The agent's largest event time, RFC 3339 UTC.
    pub last_seen: String,
}

/// Outcomes of one workflow type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkflowTypeStats {
    /// The type's name (`unknown` before an event names it).
    pub workflow_type: String,
    /// Every workflow of the type, running ones included.
    pub total: u64,
    /// Completed ones.
    pub completed: u64,
    /// Failed ones.
    pub failed: u64,
    /// completed / (completed + failed), 0..100; 100 with none finished.
    pub success_rate_percent: f64,
}

/// Figures over one sliding window of event time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WindowStats {
    /// Workflows that reached completed or failed in the window.
    pub finished: u64,
    /// Of those, failed ones.
    pub failed: u64,
    /// finished per minute over the window.
    pub throughput_per_minute: f64,
    /// failed / finished, 0..100; 0 with none.
    pub error_rate_percent: f64,
    /// Median workflow duration in the window.
    pub latency_p50_ms: f64,
    /// 95th percentile of workflow duration in the window.
    pub latency_p95_ms: f64,
    /// 99th percentile of workflow duration in the window.
    pub latency_p99_ms: f64,
}

/// One point of the metrics history (one per emission interval).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryPoint {
    /// End of the interval, RFC 3339 UTC (event time).
    pub timestamp: String,
    /// Workflows finished (completed or failed) in the interval.
    pub finished: u64,
    /// Of those, failed ones.
    pub errors: u64,
    /// Median duration of workflows finished in the interval.
    pub latency_p50_ms: f64,
    /// 95th percentile, same population.
    pub latency_p95_ms: f64,
    /// 99th percentile, same population.
    pub latency_p99_ms: f64,
}

/// The live metrics document (CONTRACT §2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RealtimeMetrics {
    /// Workflow counts and cumulative rates.
    pub overview: Overview,
    /// Per agent type, sorted by name.
    pub agents: Vec<AgentStats>,
    /// Per workflow type, sorted by name.
    pub workflows_by_type: Vec<WorkflowTypeStats>,
    /// Workflows whose outcome has an event time in (T − 60 s, T].
    pub throughput_per_minute: u64,
    /// Median duration of completed or failed workflows.
    pub latency_p50_ms: f64,
    /// 95th percentile, same population.
    pub latency_p95_ms: f64,
    /// 99th percentile, same population.
    pub latency_p99_ms: f64,
    /// When the document was emitted, RFC 3339 UTC.
    pub last_update: String,
    /// The broadcast interval.
    pub next_update_in_ms: u64,
    /// The event time T the document describes, RFC 3339 UTC.
    pub as_of: String,
    /// Events still inconsistent once T passed them by the out-of-order bound.
    #[serde(default)]
    pub anomalies: u64,
    /// Sliding windows of event time: `1m`, `5m`, `15m`.
    #[serde(default)]
    pub window: BTreeMap<String, WindowStats>,
    /// Values of custom metric processors, by name.
    #[serde(default)]
    pub custom: BTreeMap<String, serde_json::Value>,
    /// Recent points, oldest first, for charts.
    #[serde(default)]
    pub history: Vec<HistoryPoint>,
}

impl RealtimeMetrics {
    /// The document as the WebSocket and REST send it: `history` cut to its
    /// newest point (CONTRACT §2; the whole ring is `GET
    /// /metrics/history`).
    pub fn with_newest_history_point(&self) -> RealtimeMetrics {
        let newest = self.history.last().cloned();
        RealtimeMetrics {
            overview: self.overview.clone(),
            agents: self.agents.clone(),
            workflows_by_type: self.workflows_by_type.clone(),
            window: self.window.clone(),
            custom: self.custom.clone(),
            last_update: self.last_update.clone(),
            as_of: self.as_of.clone(),
            history: newest.into_iter().collect(),
            ..*self
        }
    }

    /// CONTRACT §2 equality: every field but `last_update`,
    /// `next_update_in_ms` and `as_of` is equal.
    pub fn same_state(&self, other: &RealtimeMetrics) -> bool {
        let strip = |m: &RealtimeMetrics| RealtimeMetrics {
            last_update: String::new(),
            next_update_in_ms: 0,
            as_of: String::new(),
            ..m.clone()
        };
        strip(self) == strip(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_field_names_are_serialized() {
        let value = serde_json::to_value(RealtimeMetrics {
            agents: vec![AgentStats::default()],
            workflows_by_type: vec![WorkflowTypeStats::default()],
            ..Default::default()
        })
        .unwrap();
        for field in [
            "overview",
            "agents",
            "workflows_by_type",
            "throughput_per_minute",
            "latency_p50_ms",
            "latency_p95_ms",
            "latency_p99_ms",
            "last_update",
            "next_update_in_ms",
            "as_of",
            "window",
            "custom",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        for field in [
            "total_workflows",
            "running_workflows",
            "completed_workflows",
            "failed_workflows",
            "paused_workflows",
            "cancelled_workflows",
            "expired_workflows",
            "avg_completion_time_ms",
            "error_rate_percent",
            "success_rate_percent",
            "system_health_percent",
        ] {
            assert!(
                value["overview"].get(field).is_some(),
                "missing overview.{field}"
            );
        }
        for field in [
            "agent_type",
            "total_tasks",
            "completed_tasks",
            "failed_tasks",
            "avg_duration_ms",
            "p95_duration_ms",
            "success_rate_percent",
            "last_seen",
        ] {
            assert!(
                value["agents"][0].get(field).is_some(),
                "missing agents[].{field}"
            );
        }
        for field in [
            "workflow_type",
            "total",
            "completed",
            "failed",
            "success_rate_percent",
        ] {
            assert!(
                value["workflows_by_type"][0].get(field).is_some(),
                "missing workflows_by_type[].{field}"
            );
        }
    }

    #[test]
    fn same_state_ignores_only_the_timing_fields() {
        let a = RealtimeMetrics {
            last_update: "a".into(),
            as_of: "a".into(),
            next_update_in_ms: 1,
            ..Default::default()
        };
        let mut b = RealtimeMetrics {
            last_update: "b".into(),
            as_of: "b".into(),
            next_update_in_ms: 2,
            ..Default::default()
        };
        assert!(a.same_state(&b));
        b.overview.total_workflows = 1;
        assert!(!a.same_state(&b));
    }
}
