//! Per-component self-telemetry: counters that logs, `/status` and
//! `/metrics` all read, so they never disagree.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::plugin::ComponentRole;

/// A counter a component defines for itself (`stats.counter(name, help)`):
/// only ever goes up. Shown in `/status` and as
/// `flowpulse_component_NAME_total` in `/metrics`.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge a component defines for itself (`stats.gauge(name, help)`): a
/// value that goes up and down (clients connected, rows pending).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Adds `delta` (negative to subtract).
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One extra metric of a component.
#[derive(Debug, Clone)]
enum ExtraMetric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
}

#[derive(Debug, Clone)]
struct Extra {
    name: &'static str,
    help: &'static str,
    metric: ExtraMetric,
}

/// The value of a component's extra metric, as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ExtraValue {
    /// A counter's value.
    Counter(u64),
    /// A gauge's value.
    Gauge(i64),
}

/// Counters of one component. Cheap to update from its task.
#[derive(Debug, Default)]
pub struct ComponentStats {
    records_in: AtomicU64,
    records_out: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    malformed: AtomicU64,
    ignored: AtomicU64,
    lag: AtomicU64,
    partition_lag: Mutex<BTreeMap<String, u64>>,
    /// Wall time of the last record in, Unix ms; 0 before the first.
    last_record_at_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
    outage: Mutex<Option<String>>,
    logged_kinds: Mutex<HashSet<&'static str>>,
    extras: Mutex<Vec<Extra>>,
}

/// A point-in-time copy of a component's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Records received (sources: records read).
    pub records_in: u64,
    /// Records sent on.
    pub records_out: u64,
    /// Failures (writes, connections, …).
    pub errors: u64,
    /// Records dropped on purpose (`when_full = "drop_newest"`; a document
    /// superseded by a newer one before it could be written).
    pub dropped: u64,
    /// Bad input: counted, logged once per kind, dead-lettered.
    pub malformed: u64,
    /// Valid input that is not tracked (other stages, other topics).
    pub ignored: u64,
    /// Backlog upstream of a source (e.g. consumer-group lag), where known.
    pub lag: u64,
    /// The same per partition the source reads (a Kafka source's), by
    /// partition; empty for other sources.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub partition_lag: BTreeMap<String, u64>,
    /// The most recent message of a failure or of malformed input (so it
    /// may be set while `errors` is 0).
    pub last_error: Option<String>,
    /// Why the component cannot reach what it depends on, while it cannot.
    pub outage: Option<String>,
    /// Wall time of the last record in, Unix ms.
    pub last_record_at_ms: Option<i64>,
    /// The component's own counters and gauges, by name.
    pub extra: BTreeMap<&'static str, ExtraValue>,
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl ComponentStats {
    /// Counts `n` records received.
    pub fn received(&self, n: usize) {
        self.records_in.fetch_add(n as u64, Ordering::Relaxed);
        self.last_record_at_ms
            .store(now_unix_ms(), Ordering::Relaxed);
    }

    /// Counts `n` records sent on.
    pub fn sent(&self, n: usize) {
        self.records_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts `n` records dropped on purpose.
    pub fn dropped(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts `n` ignored inputs.
    pub fn ignored(&self, n: usize) {
        self.ignored.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Sets the backlog upstream of a source.
    pub fn set_lag(&self, lag: u64) {
        self.lag.store(lag, Ordering::Relaxed);
    }

    /// Sets the backlog per partition (and `lag` to their sum): the
    /// partitions this instance reads now, replacing the last ones.
    pub fn set_partition_lag(&self, lag: BTreeMap<String, u64>) {
        self.set_lag(lag.values().sum());
        *lock(&self.partition_lag) = lag;
    }

    /// Counts a failure and remembers its message.
    pub fn error(&self, message: impl Into<String>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(message.into());
    }

    /// Counts one bad input of `kind`; returns true the first time this kind
    /// is seen, so the caller logs each kind once rather than per record.
    pub fn malformed(&self, kind: &'static str, message: &str) -> bool {
        self.malformed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(message.to_owned());
        lock(&self.logged_kinds).insert(kind)
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            ignored: self.ignored.load(Ordering::Relaxed),
            lag: self.lag.load(Ordering::Relaxed),
            partition_lag: lock(&self.partition_lag).clone(),
            last_error: lock(&self.last_error).clone(),
            outage: lock(&self.outage).clone(),
            last_record_at_ms: match self.last_record_at_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(ms),
            },
            extra: lock(&self.extras)
                .iter()
                .map(|e| {
                    let value = match &e.metric {
                        ExtraMetric::Counter(c) => ExtraValue::Counter(c.get()),
                        ExtraMetric::Gauge(g) => ExtraValue::Gauge(g.get()),
                    };
                    (e.name, value)
                })
                .collect(),
        }
    }

    /// Sets (`Some(reason)`) or clears (`None`) the component's outage: a
    /// dependency it cannot reach. `/health` answers 503 while any
    /// component has one. [`crate::outage::Outage`] sets it.
    pub fn set_outage(&self, reason: Option<String>) {
        *lock(&self.outage) = reason;
    }

    /// The current outage, if any.
    pub fn outage(&self) -> Option<String> {
        lock(&self.outage).clone()
    }

    /// A counter of the component's own, named `name` (snake_case, without
    /// `_total`), described by `help`. Asking twice for one name gives the
    /// same counter.
    pub fn counter(&self, name: &'static str, help: &'static str) -> Arc<Counter> {
        let mut extras = lock(&self.extras);
        if let Some(ExtraMetric::Counter(c)) =
            extras.iter().find(|e| e.name == name).map(|e| &e.metric)
        {
            return Arc::clone(c);
        }
        let counter = Arc::new(Counter::default());
        extras.retain(|e| e.name != name);
        extras.push(Extra {
            name,
            help,
            metric: ExtraMetric::Counter(Arc::clone(&counter)),
        });
        counter
    }

    /// A gauge of the component's own, named `name` (snake_case), described
    /// by `help`. Asking twice for one name gives the same gauge.
    pub fn gauge(&self, name: &'static str, help: &'static str) -> Arc<Gauge> {
        let mut extras = lock(&self.extras);
        if let Some(ExtraMetric::Gauge(g)) =
            extras.iter().find(|e| e.name == name).map(|e| &e.metric)
        {
            return Arc::clone(g);
        }
        let gauge = Arc::new(Gauge::default());
        extras.retain(|e| e.name != name);
        extras.push(Extra {
            name,
            help,
            metric: ExtraMetric::Gauge(Arc::clone(&gauge)),
        });
        gauge
    }

    fn extras(&self) -> Vec<Extra> {
        lock(&self.extras).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take the counters down with it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One component's identity and counters.
#[derive(Debug)]
pub struct ComponentTelemetry {
    /// Source, processor or sink.
    pub role: ComponentRole,
    /// The plugin type.
    pub type_name: String,
    /// The counters.
    pub stats: Arc<ComponentStats>,
}

/// The counters of every component of a running pipeline, by name. Shared
/// with the components themselves so HTTP endpoints can serve them.
#[derive(Debug, Default, Clone)]
pub struct Telemetry {
    components: Arc<BTreeMap<String, ComponentTelemetry>>,
}

impl Telemetry {
    /// Telemetry for the given components.
    pub fn new(components: BTreeMap<String, ComponentTelemetry>) -> Telemetry {
        Telemetry {
            components: Arc::new(components),
        }
    }

    /// The counters of one component.
    pub fn stats(&self, name: &str) -> Option<Arc<ComponentStats>> {
        self.components.get(name).map(|c| Arc::clone(&c.stats))
    }

    /// Every component, by name.
    pub fn components(&self) -> impl Iterator<Item = (&str, &ComponentTelemetry)> {
        self.components.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Prometheus text exposition (0.0.4) of every component's counters,
    /// gauges and extras, with `# HELP` and `# TYPE`, labelled `component`,
    /// `role` and `type`.
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        type Read = fn(&StatsSnapshot) -> u64;
        let metrics: [(&str, &str, &str, Read); 7] = [
            (
                "records_in_total",
                "counter",
                "Records received (sources: records read).",
                |s| s.records_in,
            ),
            ("records_out_total", "counter", "Records sent on.", |s| {
                s.records_out
            }),
            (
                "errors_total",
                "counter",
                "Failures: writes, connections, batches.",
                |s| s.errors,
            ),
            (
                "dropped_total",
                "counter",
                "Records dropped on purpose (a full buffer, a superseded document).",
                |s| s.dropped,
            ),
            (
                "malformed_total",
                "counter",
                "Bad input: counted, logged once per kind, dead-lettered.",
                |s| s.malformed,
            ),
            (
                "ignored_total",
                "counter",
                "Valid input that is not tracked.",
                |s| s.ignored,
            ),
            (
                "lag",
                "gauge",
                "Backlog upstream of a source, where known.",
                |s| s.lag,
            ),
        ];
        let components: Vec<_> = self
            .components()
            .map(|(name, c)| {
                let labels = format!(
                    "component=\"{}\",role=\"{}\",type=\"{}\"",
                    escape_label(name),
                    c.role.as_str(),
                    escape_label(&c.type_name)
                );
                (labels, c.stats.snapshot(), c.stats.extras())
            })
            .collect();
        for (metric, kind, help, get) in metrics {
            let _ = writeln!(out, "# HELP flowpulse_component_{metric} {help}");
            let _ = writeln!(out, "# TYPE flowpulse_component_{metric} {kind}");
            for (labels, snapshot, _) in &components {
                let _ = writeln!(
                    out,
                    "flowpulse_component_{metric}{{{labels}}} {}",
                    get(snapshot)
                );
            }
        }
        if components
            .iter()
            .any(|(_, s, _)| !s.partition_lag.is_empty())
        {
            out.push_str("# HELP flowpulse_component_partition_lag Backlog of each partition a source reads, where known.\n");
            out.push_str("# TYPE flowpulse_component_partition_lag gauge\n");
            for (labels, snapshot, _) in &components {
                for (partition, lag) in &snapshot.partition_lag {
                    let _ = writeln!(
                        out,
                        "flowpulse_component_partition_lag{{{labels},partition=\"{}\"}} {lag}",
                        escape_label(partition)
                    );
                }
            }
        }
        out.push_str("# HELP flowpulse_component_outage 1 while the component cannot reach something it depends on.\n");
        out.push_str("# TYPE flowpulse_component_outage gauge\n");
        for (labels, snapshot, _) in &components {
            let _ = writeln!(
                out,
                "flowpulse_component_outage{{{labels}}} {}",
                u8::from(snapshot.outage.is_some())
            );
        }
        out.push_str("# HELP flowpulse_component_last_record_timestamp_seconds Wall time of the last record in (Unix seconds).\n");
        out.push_str("# TYPE flowpulse_component_last_record_timestamp_seconds gauge\n");
        for (labels, snapshot, _) in &components {
            if let Some(ms) = snapshot.last_record_at_ms {
                let _ = writeln!(
                    out,
                    "flowpulse_component_last_record_timestamp_seconds{{{labels}}} {}",
                    ms as f64 / 1000.0
                );
            }
        }
        // Extras: one family per name, whichever components define it.
        // (name, is a counter) → (help, samples of (labels, value)).
        type Families<'a> = BTreeMap<(&'static str, bool), (&'static str, Vec<(&'a str, i128)>)>;
        let mut families: Families<'_> = BTreeMap::new();
        for (labels, _, extras) in &components {
            for extra in extras {
                let (is_counter, value) = match &extra.metric {
                    ExtraMetric::Counter(c) => (true, i128::from(c.get())),
                    ExtraMetric::Gauge(g) => (false, i128::from(g.get())),
                };
                families
                    .entry((extra.name, is_counter))
                    .or_insert_with(|| (extra.help, Vec::new()))
                    .1
                    .push((labels.as_str(), value));
            }
        }
        for ((name, is_counter), (help, samples)) in families {
            let (metric, kind) = if is_counter {
                (format!("flowpulse_component_{name}_total"), "counter")
            } else {
                (format!("flowpulse_component_{name}"), "gauge")
            };
            let _ = writeln!(out, "# HELP {metric} {}", escape_help(help));
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{metric}{{{labels}}} {value}");
            }
        }
        out
    }
}

/// A label value as the Prometheus text format wants it: `\`, `"` and
/// newlines escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A `# HELP` text as the Prometheus text format wants it: `\` and
/// newlines escaped.
pub fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_reports_first_sighting_of_each_kind_only() {
        let stats = ComponentStats::default();
        assert!(stats.malformed("invalid_json", "a"));
        assert!(!stats.malformed("invalid_json", "b"));
        assert!(stats.malformed("bad_timestamp", "c"));
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.malformed, 3);
        assert_eq!(snapshot.last_error.as_deref(), Some("c"));
    }

    #[test]
    fn extras_are_shared_by_name_and_shown_in_snapshots_and_prometheus_text() {
        let stats = Arc::new(ComponentStats::default());
        stats
            .counter("frames_replaced", "Frames replaced by newer ones.")
            .add(2);
        stats
            .counter("frames_replaced", "Frames replaced by newer ones.")
            .inc();
        stats.gauge("clients", "Clients connected.").set(-1);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.extra["frames_replaced"], ExtraValue::Counter(3));
        assert_eq!(snapshot.extra["clients"], ExtraValue::Gauge(-1));
        let telemetry = Telemetry::new(BTreeMap::from([(
            "ws \"1\"\nx\\".to_owned(),
            ComponentTelemetry {
                role: ComponentRole::Sink,
                type_name: "websocket".into(),
                stats,
            },
        )]));
        let text = telemetry.prometheus_text();
        let labels = r#"component="ws \"1\"\nx\\",role="sink",type="websocket""#;
        assert!(
            text.contains(&format!(
                "flowpulse_component_frames_replaced_total{{{labels}}} 3\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("flowpulse_component_clients{{{labels}}} -1\n")),
            "{text}"
        );
        assert!(text.contains("# HELP flowpulse_component_clients Clients connected.\n"));
        assert!(text.contains("# TYPE flowpulse_component_frames_replaced_total counter\n"));
        assert!(text.contains(&format!("flowpulse_component_outage{{{labels}}} 0\n")));
    }

    #[test]
    fn outage_and_last_record_time_are_reported() {
        let stats = ComponentStats::default();
        assert_eq!(stats.snapshot().last_record_at_ms, None);
        stats.received(1);
        assert!(stats
            .snapshot()
            .last_record_at_ms
            .is_some_and(|ms| ms > 1_600_000_000_000));
        stats.set_outage(Some("connection refused".into()));
        assert_eq!(
            stats.snapshot().outage.as_deref(),
            Some("connection refused")
        );
        stats.set_outage(None);
        assert_eq!(stats.outage(), None);
    }
}
