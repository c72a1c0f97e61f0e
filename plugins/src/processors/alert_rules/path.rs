//! Metric paths of alert rules, compiled once: `overview.error_rate_percent`,
//! `latency_p99_ms`, `window.5m.error_rate_percent`,
//! `agents[scaffold].avg_duration_ms`, `agents.*.success_rate_percent` (an
//! instance per agent; likewise `workflows_by_type`), `custom.NAME`,
//! `custom.NAME.*`, `custom.NAME.KEY`, and watchdogs on the pipeline's own
//! telemetry: `self.seconds_since_last_event`, `self.source_lag`,
//! `self.errors_total`, `self.failed_deliveries`, `self.outbox_pending`.

use flowpulse_core::metrics::{AgentStats, RealtimeMetrics, WindowStats, WorkflowTypeStats};

/// Which entries of a list a path takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One, by name: `agents[scaffold]`.
    Named(String),
    /// Every one, an instance each: `agents.*`.
    Each,
}

/// A field of `overview` or of the document's top level.
type Read<T> = fn(&T) -> f64;

/// A compiled metric path.
#[derive(Debug, Clone)]
pub enum MetricPath {
    /// A number of the document (top level or `overview`).
    Document {
        path: &'static str,
        read: Read<RealtimeMetrics>,
    },
    /// A number of one window.
    Window {
        window: String,
        field: &'static str,
        read: Read<WindowStats>,
    },
    /// A number of an agent.
    Agent {
        select: Selector,
        field: &'static str,
        read: Read<AgentStats>,
    },
    /// A number of a workflow type.
    WorkflowType {
        select: Selector,
        field: &'static str,
        read: Read<WorkflowTypeStats>,
    },
    /// A custom metric: its value, one key of it, or each key.
    Custom { name: String, key: Option<Selector> },
    /// The pipeline's own telemetry.
    SelfTelemetry(SelfMetric),
}

/// Watchdogs on the pipeline's own telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfMetric {
    /// Seconds since a source last read a record.
    SecondsSinceLastEvent,
    /// The sources' backlog (e.g. consumer-group lag), summed.
    SourceLag,
    /// Errors of every component, summed.
    ErrorsTotal,
    /// Notices that could not be delivered.
    FailedDeliveries,
    /// Notices waiting in notification outboxes.
    OutboxPending,
}

/// What the watchdogs read, sampled when a document is evaluated.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SelfSample {
    /// `self.seconds_since_last_event`.
    pub seconds_since_last_event: f64,
    /// `self.source_lag`.
    pub source_lag: f64,
    /// `self.errors_total`.
    pub errors_total: f64,
    /// `self.failed_deliveries`.
    pub failed_deliveries: f64,
    /// `self.outbox_pending`.
    pub outbox_pending: f64,
}

/// One value a path found: the instance (`""` for a path without `*`,
/// borrowed from the document) and the number (`None`: no value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// What a `*` matched.
    pub instance: &'a str,
    /// The value.
    pub value: Option<f64>,
}

const DOCUMENT: &[(&str, Read<RealtimeMetrics>)] = &[
    ("overview.total_workflows", |d| {
        d.overview.total_workflows as f64
    }),
    ("overview.running_workflows", |d| {
        d.overview.running_workflows as f64
    }),
    ("overview.completed_workflows", |d| {
        d.overview.completed_workflows as f64
    }),
    ("overview.failed_workflows", |d| {
        d.overview.failed_workflows as f64
    }),
    ("overview.paused_workflows", |d| {
        d.overview.paused_workflows as f64
    }),
    ("overview.cancelled_workflows", |d| {
        d.overview.cancelled_workflows as f64
    }),
    ("overview.expired_workflows", |d| {
        d.overview.expired_workflows as f64
    }),
    ("overview.avg_completion_time_ms", |d| {
        d.overview.avg_completion_time_ms
    }),
    ("overview.error_rate_percent", |d| {
        d.overview.error_rate_percent
    }),
    ("overview.success_rate_percent", |d| {
        d.overview.success_rate_percent
    }),
    ("overview.system_health_percent", |d| {
        d.overview.system_health_percent
    }),
    ("throughput_per_minute", |d| d.throughput_per_minute as f64),
    ("latency_p50_ms", |d| d.latency_p50_ms),
    ("latency_p95_ms", |d| d.latency_p95_ms),
    ("latency_p99_ms", |d| d.latency_p99_ms),
    ("anomalies", |d| d.anomalies as f64),
];

const WINDOWS: &[&str] = &["1m", "5m", "15m"];

const WINDOW: &[(&str, Read<WindowStats>)] = &[
    ("finished", |w| w.finished as f64),
    ("failed", |w| w.failed as f64),
    ("throughput_per_minute", |w| w.throughput_per_minute),
    ("error_rate_percent", |w| w.error_rate_percent),
    ("latency_p50_ms", |w| w.latency_p50_ms),
    ("latency_p95_ms", |w| w.latency_p95_ms),
    ("latency_p99_ms", |w| w.latency_p99_ms),
];

const AGENT: &[(&str, Read<AgentStats>)] = &[
    ("total_tasks", |a| a.total_tasks as f64),
    ("completed_tasks", |a| a.completed_tasks as f64),
    ("failed_tasks", |a| a.failed_tasks as f64),
    ("avg_duration_ms", |a| a.avg_duration_ms),
    ("p95_duration_ms", |a| a.p95_duration_ms),
    ("success_rate_percent", |a| a.success_rate_percent),
];

const WORKFLOW_TYPE: &[(&str, Read<WorkflowTypeStats>)] = &[
    ("total", |t| t.total as f64),
    ("completed", |t| t.completed as f64),
    ("failed", |t| t.failed as f64),
    ("success_rate_percent", |t| t.success_rate_percent),
];

const SELF: &[(&str, SelfMetric)] = &[
    (
        "self.seconds_since_last_event",
        SelfMetric::SecondsSinceLastEvent,
    ),
    ("self.source_lag", SelfMetric::SourceLag),
    ("self.errors_total", SelfMetric::ErrorsTotal),
    ("self.failed_deliveries", SelfMetric::FailedDeliveries),
    ("self.outbox_pending", SelfMetric::OutboxPending),
];

/// Every valid path, in template form, for "did you mean".
pub fn templates() -> Vec<String> {
    let mut all: Vec<String> = DOCUMENT.iter().map(|(p, _)| (*p).to_owned()).collect();
    for window in WINDOWS {
        all.extend(WINDOW.iter().map(|(f, _)| format!("window.{window}.{f}")));
    }
    for (list, fields) in [
        ("agents", AGENT.iter().map(|(f, _)| *f).collect::<Vec<_>>()),
        (
            "workflows_by_type",
            WORKFLOW_TYPE.iter().map(|(f, _)| *f).collect(),
        ),
    ] {
        for field in fields {
            all.push(format!("{list}.*.{field}"));
            all.push(format!("{list}[NAME].{field}"));
        }
    }
    all.extend(["custom.NAME", "custom.NAME.*", "custom.NAME.KEY"].map(String::from));
    all.extend(SELF.iter().map(|(p, _)| (*p).to_owned()));
    all
}

/// Why a path does not compile: the message names the nearest valid path.
fn unknown(path: &str) -> String {
    let templates = templates();
    match flowpulse_core::config::nearest(path, templates.iter().map(String::as_str)) {
        Some(near) => format!("`{path}` is not a metric of the document; did you mean `{near}`?"),
        None => {
            format!("`{path}` is not a metric of the document; e.g. `overview.error_rate_percent`")
        }
    }
}

/// `agents[NAME].rest` or `agents.*.rest` → (selector, rest).
fn split_list<'a>(path: &'a str, list: &str) -> Option<(Selector, &'a str)> {
    let rest = path.strip_prefix(list)?;
    if let Some(rest) = rest.strip_prefix(".*.") {
        return Some((Selector::Each, rest));
    }
    let rest = rest.strip_prefix('[')?;
    let (name, rest) = rest.split_once("].")?;
    (!name.is_empty()).then(|| (Selector::Named(name.to_owned()), rest))
}

impl MetricPath {
    /// Compiles `path`, or says what is wrong (naming the nearest valid one).
    pub fn parse(path: &str) -> Result<MetricPath, String> {
        if let Some((known, read)) = DOCUMENT.iter().find(|(p, _)| *p == path) {
            return Ok(MetricPath::Document {
                path: known,
                read: *read,
            });
        }
        if let Some((_, metric)) = SELF.iter().find(|(p, _)| *p == path) {
            return Ok(MetricPath::SelfTelemetry(*metric));
        }
        if let Some(rest) = path.strip_prefix("window.") {
            if let Some((window, field)) = rest.split_once('.') {
                if WINDOWS.contains(&window) {
                    if let Some((f, read)) = WINDOW.iter().find(|(f, _)| *f == field) {
                        return Ok(MetricPath::Window {
                            window: window.to_owned(),
                            field: f,
                            read: *read,
                        });
                    }
                }
            }
            return Err(unknown(path));
        }
        if let Some((select, field)) = split_list(path, "agents") {
            if let Some((f, read)) = AGENT.iter().find(|(f, _)| *f == field) {
                return Ok(MetricPath::Agent {
                    select,
                    field: f,
                    read: *read,
                });
            }
            return Err(unknown(path));
        }
        if let Some((select, field)) = split_list(path, "workflows_by_type") {
            if let Some((f, read)) = WORKFLOW_TYPE.iter().find(|(f, _)| *f == field) {
                return Ok(MetricPath::WorkflowType {
                    select,
                    field: f,
                    read: *read,
                });
            }
            return Err(unknown(path));
        }
        if let Some(rest) = path.strip_prefix("custom.") {
            let (name, key) = match rest.split_once('.') {
                Some((name, "*")) => (name, Some(Selector::Each)),
                Some((name, key)) if !key.is_empty() => {
                    (name, Some(Selector::Named(key.to_owned())))
                }
                Some(_) => return Err(unknown(path)),
                None => (rest, None),
            };
            if name.is_empty() {
                return Err(unknown(path));
            }
            return Ok(MetricPath::Custom {
                name: name.to_owned(),
                key,
            });
        }
        Err(unknown(path))
    }

    /// Whether the path fires one instance per entry (`*`).
    pub fn has_instances(&self) -> bool {
        matches!(
            self,
            MetricPath::Agent {
                select: Selector::Each,
                ..
            } | MetricPath::WorkflowType {
                select: Selector::Each,
                ..
            } | MetricPath::Custom {
                key: Some(Selector::Each),
                ..
            }
        )
    }

    /// The values of the path in `doc` (and `own`, for watchdogs). A named
    /// entry missing from the document has no value; `*` gives one sample
    /// per entry present. `None` when a custom metric has not been seen yet
    /// ("no data"). Nothing is copied: this runs for every rule on every
    /// document.
    pub fn read<'a>(&self, doc: &'a RealtimeMetrics, own: &SelfSample) -> Option<Vec<Sample<'a>>> {
        let one = |value: Option<f64>| {
            Some(vec![Sample {
                instance: "",
                value,
            }])
        };
        match self {
            MetricPath::Document { read, .. } => one(Some(read(doc))),
            MetricPath::SelfTelemetry(metric) => one(Some(match metric {
                SelfMetric::SecondsSinceLastEvent => own.seconds_since_last_event,
                SelfMetric::SourceLag => own.source_lag,
                SelfMetric::ErrorsTotal => own.errors_total,
                SelfMetric::FailedDeliveries => own.failed_deliveries,
                SelfMetric::OutboxPending => own.outbox_pending,
            })),
            MetricPath::Window { window, read, .. } => one(doc.window.get(window).map(read)),
            MetricPath::Agent { select, read, .. } => {
                Some(list(&doc.agents, |a| &a.agent_type, select, read))
            }
            MetricPath::WorkflowType { select, read, .. } => Some(list(
                &doc.workflows_by_type,
                |t| &t.workflow_type,
                select,
                read,
            )),
            MetricPath::Custom { name, key } => {
                let value = doc.custom.get(name)?;
                match key {
                    None => one(value.as_f64()),
                    Some(Selector::Named(key)) => {
                        one(value.get(key).and_then(serde_json::Value::as_f64))
                    }
                    Some(Selector::Each) => Some(
                        value
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(key, v)| Sample {
                                instance: key,
                                value: v.as_f64(),
                            })
                            .collect(),
                    ),
                }
            }
        }
    }

    /// The concrete path of the value of `instance`, e.g.
    /// `agents[scaffold].success_rate_percent` (made only when an alert
    /// needs it).
    pub fn metric_for(&self, instance: &str) -> String {
        let named = |select: &Selector| match select {
            Selector::Named(name) => name.clone(),
            Selector::Each => instance.to_owned(),
        };
        match self {
            MetricPath::Document { path, .. } => (*path).to_owned(),
            MetricPath::SelfTelemetry(metric) => SELF
                .iter()
                .find(|(_, m)| m == metric)
                .map_or_else(String::new, |(p, _)| (*p).to_owned()),
            MetricPath::Window { window, field, .. } => format!("window.{window}.{field}"),
            MetricPath::Agent { select, field, .. } => format!("agents[{}].{field}", named(select)),
            MetricPath::WorkflowType { select, field, .. } => {
                format!("workflows_by_type[{}].{field}", named(select))
            }
            MetricPath::Custom { name, key: None } => format!("custom.{name}"),
            MetricPath::Custom {
                name,
                key: Some(select),
            } => format!("custom.{name}.{}", named(select)),
        }
    }
}

/// Writes `value` at `path` into a document (or the watchdog sample), for
/// tests of rules (`flowpulse test-rules`): the inverse of
/// [`MetricPath::read`] for one concrete path (no `*`).
pub fn write(
    doc: &mut RealtimeMetrics,
    own: &mut SelfSample,
    path: &str,
    value: f64,
) -> Result<(), String> {
    let compiled = MetricPath::parse(path)?;
    if compiled.has_instances() {
        return Err(format!(
            "`{path}`: give one instance, e.g. agents[NAME].FIELD"
        ));
    }
    let count = value.max(0.0) as u64;
    match compiled {
        MetricPath::Document { path, .. } => {
            let o = &mut doc.overview;
            match path {
                "overview.total_workflows" => o.total_workflows = count,
                "overview.running_workflows" => o.running_workflows = count,
                "overview.completed_workflows" => o.completed_workflows = count,
                "overview.failed_workflows" => o.failed_workflows = count,
                "overview.paused_workflows" => o.paused_workflows = count,
                "overview.cancelled_workflows" => o.cancelled_workflows = count,
                "overview.expired_workflows" => o.expired_workflows = count,
                "overview.avg_completion_time_ms" => o.avg_completion_time_ms = value,
                "overview.error_rate_percent" => o.error_rate_percent = value,
                "overview.success_rate_percent" => o.success_rate_percent = value,
                "overview.system_health_percent" => o.system_health_percent = value,
                "throughput_per_minute" => doc.throughput_per_minute = count,
                "latency_p50_ms" => doc.latency_p50_ms = value,
                "latency_p95_ms" => doc.latency_p95_ms = value,
                "latency_p99_ms" => doc.latency_p99_ms = value,
                "anomalies" => doc.anomalies = count,
                other => return Err(format!("`{other}` cannot be written")),
            }
        }
        MetricPath::Window { window, field, .. } => {
            let w = doc.window.entry(window).or_default();
            match field {
                "finished" => w.finished = count,
                "failed" => w.failed = count,
                "throughput_per_minute" => w.throughput_per_minute = value,
                "error_rate_percent" => w.error_rate_percent = value,
                "latency_p50_ms" => w.latency_p50_ms = value,
                "latency_p95_ms" => w.latency_p95_ms = value,
                _ => w.latency_p99_ms = value,
            }
        }
        MetricPath::Agent {
            select: Selector::Named(name),
            field,
            ..
        } => {
            if !doc.agents.iter().any(|a| a.agent_type == name) {
                doc.agents.push(AgentStats {
                    agent_type: name.clone(),
                    ..Default::default()
                });
                // Arrays of the document are sorted by name (CONTRACT §2).
                doc.agents.sort_by(|a, b| a.agent_type.cmp(&b.agent_type));
            }
            let Some(agent) = doc.agents.iter_mut().find(|a| a.agent_type == name) else {
                return Err(format!("`{path}` cannot be written"));
            };
            match field {
                "total_tasks" => agent.total_tasks = count,
                "completed_tasks" => agent.completed_tasks = count,
                "failed_tasks" => agent.failed_tasks = count,
                "avg_duration_ms" => agent.avg_duration_ms = value,
                "p95_duration_ms" => agent.p95_duration_ms = value,
                _ => agent.success_rate_percent = value,
            }
        }
        MetricPath::WorkflowType {
            select: Selector::Named(name),
            field,
            ..
        } => {
            let index = match doc
                .workflows_by_type
                .iter()
                .position(|t| t.workflow_type == name)
            {
                Some(i) => i,
                None => {
                    doc.workflows_by_type.push(WorkflowTypeStats {
                        workflow_type: name,
                        ..Default::default()
                    });
                    doc.workflows_by_type.len() - 1
                }
            };
            let t = &mut doc.workflows_by_type[index];
            match field {
                "total" => t.total = count,
                "completed" => t.completed = count,
                "failed" => t.failed = count,
                _ => t.success_rate_percent = value,
            }
        }
        MetricPath::Custom { name, key } => {
            let number = serde_json::json!(value);
            match key {
                None => {
                    doc.custom.insert(name, number);
                }
                Some(Selector::Named(key)) => {
                    let entry = doc
                        .custom
                        .entry(name)
                        .or_insert_with(|| serde_json::json!({}));
                    if let Some(map) = entry.as_object_mut() {
                        map.insert(key, number);
                    }
                }
                Some(Selector::Each) => return Err(format!("`{path}`: give one key")),
            }
        }
        MetricPath::SelfTelemetry(metric) => match metric {
            SelfMetric::SecondsSinceLastEvent => own.seconds_since_last_event = value,
            SelfMetric::SourceLag => own.source_lag = value,
            SelfMetric::ErrorsTotal => own.errors_total = value,
            SelfMetric::FailedDeliveries => own.failed_deliveries = value,
            SelfMetric::OutboxPending => own.outbox_pending = value,
        },
        MetricPath::Agent { .. } | MetricPath::WorkflowType { .. } => {
            return Err(format!("`{path}`: give one instance"))
        }
    }
    Ok(())
}

fn list<'a, T>(
    entries: &'a [T],
    name_of: fn(&T) -> &String,
    select: &Selector,
    read: &Read<T>,
) -> Vec<Sample<'a>> {
    match select {
        Selector::Named(name) => vec![Sample {
            instance: "",
            value: entries.iter().find(|e| name_of(e) == name).map(read),
        }],
        Selector::Each => entries
            .iter()
            .map(|e| Sample {
                instance: name_of(e).as_str(),
                value: Some(read(e)),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowpulse_core::metrics::Overview;

    fn doc() -> RealtimeMetrics {
        RealtimeMetrics {
            overview: Overview {
                error_rate_percent: 12.5,
                ..Default::default()
            },
            agents: vec![
                AgentStats {
                    agent_type: "review".into(),
                    success_rate_percent: 80.0,
                    ..Default::default()
                },
                AgentStats {
                    agent_type: "scaffold".into(),
                    success_rate_percent: 95.0,
                    ..Default::default()
                },
            ],
            window: [(
                "5m".to_owned(),
                WindowStats {
                    error_rate_percent: 3.0,
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            custom: [("failures".to_owned(), serde_json::json!({"a": 1, "b": 2}))]
                .into_iter()
                .collect(),
            latency_p99_ms: 900.0,
            ..Default::default()
        }
    }

    fn values(path: &str) -> Vec<(String, String, Option<f64>)> {
        let document = doc();
        let own = SelfSample {
            seconds_since_last_event: 42.0,
            ..Default::default()
        };
        let compiled = MetricPath::parse(path).unwrap();
        compiled
            .read(&document, &own)
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                (
                    s.instance.to_owned(),
                    compiled.metric_for(s.instance),
                    s.value,
                )
            })
            .collect()
    }

    #[test]
    fn every_kind_of_path_reads_its_value() {
        assert_eq!(
            values("overview.error_rate_percent"),
            [("".into(), "overview.error_rate_percent".into(), Some(12.5))]
        );
        assert_eq!(values("latency_p99_ms")[0].2, Some(900.0));
        assert_eq!(values("window.5m.error_rate_percent")[0].2, Some(3.0));
        assert_eq!(
            values("window.1m.error_rate_percent")[0].2,
            None,
            "a window not in the document"
        );
        assert_eq!(
            values("agents[scaffold].success_rate_percent"),
            [(
                "".into(),
                "agents[scaffold].success_rate_percent".into(),
                Some(95.0)
            )]
        );
        assert_eq!(values("agents[gone].success_rate_percent")[0].2, None);
        assert_eq!(
            values("agents.*.success_rate_percent"),
            [
                (
                    "review".into(),
                    "agents[review].success_rate_percent".into(),
                    Some(80.0)
                ),
                (
                    "scaffold".into(),
                    "agents[scaffold].success_rate_percent".into(),
                    Some(95.0)
                ),
            ]
        );
        assert_eq!(values("custom.failures.b")[0].2, Some(2.0));
        assert_eq!(values("custom.failures.*").len(), 2);
        assert_eq!(values("self.seconds_since_last_event")[0].2, Some(42.0));
    }

    #[test]
    fn a_custom_metric_not_yet_seen_is_no_data() {
        let path = MetricPath::parse("custom.later").unwrap();
        assert!(path.read(&doc(), &SelfSample::default()).is_none());
    }

    #[test]
    fn a_path_outside_the_schema_names_the_nearest_valid_one() {
        let e = MetricPath::parse("overview.error_rate_pct").unwrap_err();
        assert!(
            e.contains("did you mean `overview.error_rate_percent`"),
            "{e}"
        );
        assert!(MetricPath::parse("window.2m.error_rate_percent").is_err());
        assert!(MetricPath::parse("agents[].total_tasks").is_err());
        assert!(MetricPath::parse("agents.*.colour").is_err());
        assert!(MetricPath::parse("custom.").is_err());
    }

    #[test]
    fn written_values_read_back() {
        let mut doc = RealtimeMetrics::default();
        let mut own = SelfSample::default();
        for (path, value) in [
            ("overview.error_rate_percent", 7.5),
            ("agents[scaffold].success_rate_percent", 60.0),
            ("agents[review].success_rate_percent", 99.0),
            ("window.5m.error_rate_percent", 3.0),
            ("custom.failures.scaffold", 2.0),
            ("self.seconds_since_last_event", 61.0),
        ] {
            write(&mut doc, &mut own, path, value).unwrap();
            let read = MetricPath::parse(path).unwrap().read(&doc, &own).unwrap();
            assert_eq!(read[0].value, Some(value), "{path}");
        }
        assert!(write(&mut doc, &mut own, "agents.*.total_tasks", 1.0).is_err());
    }

    #[test]
    fn only_star_paths_have_instances() {
        assert!(MetricPath::parse("agents.*.total_tasks")
            .unwrap()
            .has_instances());
        assert!(!MetricPath::parse("agents[x].total_tasks")
            .unwrap()
            .has_instances());
        assert!(MetricPath::parse("custom.f.*").unwrap().has_instances());
    }
}
