//! `/metrics`: the newest document's workflow metrics and every component's
//! telemetry as Prometheus text (0.0.4), by Prometheus conventions: base
//! units (seconds, ratios 0–1), `_total` on counters, labels `agent_type`,
//! `workflow_type`, `window`, `component`.

use std::fmt::Write as _;

use flowpulse_core::event::parse_rfc3339_ms;
use flowpulse_core::metrics::RealtimeMetrics;
use flowpulse_core::telemetry::{escape_label, Telemetry};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes one metric family: `# HELP`, `# TYPE`, then its samples.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }
}

/// A sample value as Prometheus writes it.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

fn seconds(ms: f64) -> f64 {
    ms / 1000.0
}

fn ratio(percent: f64) -> f64 {
    percent / 100.0
}

/// The whole `/metrics` text: the document's metrics (none before the
/// first document), then the components' telemetry.
pub fn render(doc: Option<&RealtimeMetrics>, telemetry: &Telemetry) -> String {
    let mut out = String::with_capacity(8 * 1024);
    if let Some(doc) = doc {
        render_document(doc, &mut out);
    }
    out.push_str(&telemetry.prometheus_text());
    out
}

fn render_document(doc: &RealtimeMetrics, out: &mut String) {
    let o = &doc.overview;
    let mut f = Family::new(out, "flowpulse_workflows", "gauge", "Workflows by state.");
    for (state, n) in [
        ("running", o.running_workflows),
        ("paused", o.paused_workflows),
        ("completed", o.completed_workflows),
        ("failed", o.failed_workflows),
        ("cancelled", o.cancelled_workflows),
        ("expired", o.expired_workflows),
    ] {
        f.sample(&[("state", state)], n as f64);
    }
    Family::new(
        out,
        "flowpulse_workflows_known_total",
        "counter",
        "Every workflow made known by a workflow-level event.",
    )
    .sample(&[], o.total_workflows as f64);
    Family::new(
        out,
        "flowpulse_workflow_error_ratio",
        "gauge",
        "failed / (completed + failed), cumulative.",
    )
    .sample(&[], ratio(o.error_rate_percent));
    Family::new(
        out,
        "flowpulse_workflow_success_ratio",
        "gauge",
        "completed / (completed + failed), cumulative.",
    )
    .sample(&[], ratio(o.success_rate_percent));
    Family::new(
        out,
        "flowpulse_system_health_ratio",
        "gauge",
        "Success ratio of stage tasks over the last 5 minutes.",
    )
    .sample(&[], ratio(o.system_health_percent));
    Family::new(
        out,
        "flowpulse_workflow_completion_seconds_mean",
        "gauge",
        "Mean duration of completed workflows.",
    )
    .sample(&[], seconds(o.avg_completion_time_ms));
    let mut f = Family::new(
        out,
        "flowpulse_workflow_duration_seconds",
        "summary",
        "Duration of workflows that completed or failed (quantiles, at most 1% relative error).",
    );
    for (q, ms) in [
        ("0.5", doc.latency_p50_ms),
        ("0.95", doc.latency_p95_ms),
        ("0.99", doc.latency_p99_ms),
    ] {
        f.sample(&[("quantile", q)], seconds(ms));
    }
    Family::new(
        out,
        "flowpulse_workflows_finished_last_minute",
        "gauge",
        "Workflows whose outcome falls in the last 60 s of event time.",
    )
    .sample(&[], doc.throughput_per_minute as f64);
    Family::new(
        out,
        "flowpulse_anomalies_total",
        "counter",
        "Events still inconsistent once the out-of-order bound passed them.",
    )
    .sample(&[], doc.anomalies as f64);
    if let Some(ms) = parse_rfc3339_ms(&doc.as_of) {
        Family::new(
            out,
            "flowpulse_metrics_as_of_timestamp_seconds",
            "gauge",
            "The event time the document describes (Unix seconds).",
        )
        .sample(&[], seconds(ms as f64));
    }
    if let Some(ms) = parse_rfc3339_ms(&doc.last_update) {
        Family::new(
            out,
            "flowpulse_metrics_last_update_timestamp_seconds",
            "gauge",
            "When the document was emitted (Unix seconds).",
        )
        .sample(&[], seconds(ms as f64));
    }

    let mut f = Family::new(
        out,
        "flowpulse_agent_tasks_total",
        "counter",
        "Stage tasks by agent and outcome.",
    );
    for a in &doc.agents {
        f.sample(
            &[("agent_type", &a.agent_type), ("outcome", "completed")],
            a.completed_tasks as f64,
        );
        f.sample(
            &[("agent_type", &a.agent_type), ("outcome", "failed")],
            a.failed_tasks as f64,
        );
    }
    let mut f = Family::new(
        out,
        "flowpulse_agent_success_ratio",
        "gauge",
        "completed / total stage tasks by agent.",
    );
    for a in &doc.agents {
        f.sample(
            &[("agent_type", &a.agent_type)],
            ratio(a.success_rate_percent),
        );
    }
    let mut f = Family::new(
        out,
        "flowpulse_agent_task_seconds_mean",
        "gauge",
        "Mean stage duration by agent.",
    );
    for a in &doc.agents {
        f.sample(&[("agent_type", &a.agent_type)], seconds(a.avg_duration_ms));
    }
    let mut f = Family::new(
        out,
        "flowpulse_agent_task_seconds",
        "summary",
        "Stage duration by agent (95th percentile).",
    );
    for a in &doc.agents {
        f.sample(
            &[("agent_type", &a.agent_type), ("quantile", "0.95")],
            seconds(a.p95_duration_ms),
        );
    }
    let mut f = Family::new(
        out,
        "flowpulse_agent_last_seen_timestamp_seconds",
        "gauge",
        "The agent's largest event time (Unix seconds).",
    );
    for a in &doc.agents {
        if let Some(ms) = parse_rfc3339_ms(&a.last_seen) {
            f.sample(&[("agent_type", &a.agent_type)], seconds(ms as f64));
        }
    }

    let mut f = Family::new(
        out,
        "flowpulse_workflow_type_known_total",
        "counter",
        "Workflows known by type, running ones included.",
    );
    for t in &doc.workflows_by_type {
        f.sample(&[("workflow_type", &t.workflow_type)], t.total as f64);
    }
    let mut f = Family::new(
        out,
        "flowpulse_workflow_type_finished_total",
        "counter",
        "Workflows finished by type and outcome.",
    );
    for t in &doc.workflows_by_type {
        f.sample(
            &[
                ("workflow_type", &t.workflow_type),
                ("outcome", "completed"),
            ],
            t.completed as f64,
        );
        f.sample(
            &[("workflow_type", &t.workflow_type), ("outcome", "failed")],
            t.failed as f64,
        );
    }
    let mut f = Family::new(
        out,
        "flowpulse_workflow_type_success_ratio",
        "gauge",
        "completed / (completed + failed) by type.",
    );
    for t in &doc.workflows_by_type {
        f.sample(
            &[("workflow_type", &t.workflow_type)],
            ratio(t.success_rate_percent),
        );
    }

    let mut f = Family::new(
        out,
        "flowpulse_window_workflows_finished",
        "gauge",
        "Workflows that completed or failed in the window.",
    );
    for (window, w) in &doc.window {
        f.sample(&[("window", window)], w.finished as f64);
    }
    let mut f = Family::new(
        out,
        "flowpulse_window_workflows_failed",
        "gauge",
        "Workflows that failed in the window.",
    );
    for (window, w) in &doc.window {
        f.sample(&[("window", window)], w.failed as f64);
    }
    let mut f = Family::new(
        out,
        "flowpulse_window_error_ratio",
        "gauge",
        "failed / finished in the window.",
    );
    for (window, w) in &doc.window {
        f.sample(&[("window", window)], ratio(w.error_rate_percent));
    }
    let mut f = Family::new(
        out,
        "flowpulse_window_workflow_duration_seconds",
        "summary",
        "Duration of workflows finished in the window.",
    );
    for (window, w) in &doc.window {
        for (q, ms) in [
            ("0.5", w.latency_p50_ms),
            ("0.95", w.latency_p95_ms),
            ("0.99", w.latency_p99_ms),
        ] {
            f.sample(&[("window", window), ("quantile", q)], seconds(ms));
        }
    }

    // A number is one sample; an object of numbers (a labelled series) one
    // sample per key; anything else has no Prometheus form.
    let mut samples: Vec<(&str, Option<&str>, f64)> = Vec::new();
    for (name, value) in &doc.custom {
        match value {
            serde_json::Value::Object(series) => {
                samples.extend(series.iter().filter_map(|(key, v)| {
                    v.as_f64().map(|v| (name.as_str(), Some(key.as_str()), v))
                }))
            }
            other => samples.extend(other.as_f64().map(|v| (name.as_str(), None, v))),
        }
    }
    if !samples.is_empty() {
        let mut f = Family::new(
            out,
            "flowpulse_custom",
            "gauge",
            "Numeric values of custom metric processors, by name (and key, for a labelled series).",
        );
        for (name, key, value) in samples {
            match key {
                Some(key) => f.sample(&[("name", name), ("key", key)], value),
                None => f.sample(&[("name", name)], value),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowpulse_core::metrics::{AgentStats, Overview};

    #[test]
    fn the_document_is_written_in_base_units_with_escaped_labels() {
        let doc = RealtimeMetrics {
            overview: Overview {
                running_workflows: 3,
                error_rate_percent: 25.0,
                ..Default::default()
            },
            agents: vec![AgentStats {
                agent_type: "sc\"af\\fold".into(),
                completed_tasks: 7,
                p95_duration_ms: 1500.0,
                ..Default::default()
            }],
            latency_p99_ms: 2500.0,
            ..Default::default()
        };
        let text = render(Some(&doc), &Telemetry::default());
        assert!(
            text.contains("flowpulse_workflows{state=\"running\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("flowpulse_workflow_error_ratio 0.25\n"));
        assert!(text.contains("flowpulse_workflow_duration_seconds{quantile=\"0.99\"} 2.5\n"));
        assert!(text.contains(
            "flowpulse_agent_tasks_total{agent_type=\"sc\\\"af\\\\fold\",outcome=\"completed\"} 7\n"
        ));
        assert!(text.contains(
            "flowpulse_agent_task_seconds{agent_type=\"sc\\\"af\\\\fold\",quantile=\"0.95\"} 1.5\n"
        ));
        assert!(text.contains("# TYPE flowpulse_agent_tasks_total counter\n"));
    }

    #[test]
    fn custom_numbers_and_labelled_series_are_samples() {
        let doc = RealtimeMetrics {
            custom: [
                ("queue_depth".to_owned(), serde_json::json!(7)),
                (
                    "failures".to_owned(),
                    serde_json::json!({"scaffold": 2, "review": 0.5}),
                ),
                ("note".to_owned(), serde_json::json!("text")),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let text = render(Some(&doc), &Telemetry::default());
        assert!(
            text.contains("flowpulse_custom{name=\"queue_depth\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("flowpulse_custom{name=\"failures\",key=\"scaffold\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("flowpulse_custom{name=\"failures\",key=\"review\"} 0.5\n"));
        assert!(!text.contains("note"));
    }

    #[test]
    fn before_the_first_document_only_telemetry_is_written() {
        let text = render(None, &Telemetry::default());
        assert!(!text.contains("flowpulse_workflows{"));
    }
}
