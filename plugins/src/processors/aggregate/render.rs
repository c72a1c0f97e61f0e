//! The metrics document (CONTRACT §2) of a state.

use std::collections::BTreeMap;

use flowpulse_core::event::format_rfc3339_ms;
use flowpulse_core::metrics::{
    AgentStats, HistoryPoint, Overview, RealtimeMetrics, WindowStats, WorkflowTypeStats,
};

use super::state::AggregateState;
use super::windows::Totals;

/// The window of `system_health_percent`, in seconds.
const HEALTH_WINDOW_S: i64 = 5 * 60;

impl AggregateState {
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
            history: self.history_points(),
        }
    }

    /// The sealed history points (those a document has shown and that
    /// never change), oldest first, from the first with a finished workflow.
    fn history_points(&self) -> Vec<HistoryPoint> {
        if self.history_sealed_ms == i64::MIN {
            return Vec::new();
        }
        let width = self.history.width_ms();
        let newest = self.history.index_of(self.history_sealed_ms) - 1;
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
