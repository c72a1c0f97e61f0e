//! Per-component self-telemetry: counters that logs, `/status` and
//! `/metrics` all read, so they never disagree.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::plugin::ComponentRole;

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
    last_error: Mutex<Option<String>>,
    logged_kinds: Mutex<HashSet<&'static str>>,
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
    /// The most recent error message.
    pub last_error: Option<String>,
}

impl ComponentStats {
    /// Counts `n` records received.
    pub fn received(&self, n: usize) {
        self.records_in.fetch_add(n as u64, Ordering::Relaxed);
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
            last_error: lock(&self.last_error).clone(),
        }
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

    /// Prometheus text exposition of every counter.
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        type Read = fn(&StatsSnapshot) -> u64;
        let metrics: [(&str, &str, Read); 7] = [
            ("records_in_total", "counter", |s| s.records_in),
            ("records_out_total", "counter", |s| s.records_out),
            ("errors_total", "counter", |s| s.errors),
            ("dropped_total", "counter", |s| s.dropped),
            ("malformed_total", "counter", |s| s.malformed),
            ("ignored_total", "counter", |s| s.ignored),
            ("lag", "gauge", |s| s.lag),
        ];
        let snapshots: Vec<_> = self
            .components()
            .map(|(name, c)| (name, c, c.stats.snapshot()))
            .collect();
        for (metric, kind, get) in metrics {
            out.push_str(&format!("# TYPE flowpulse_component_{metric} {kind}\n"));
            for (name, c, snapshot) in &snapshots {
                out.push_str(&format!(
                    "flowpulse_component_{metric}{{component=\"{name}\",kind=\"{}\",type=\"{}\"}} {}\n",
                    c.role.as_str(),
                    c.type_name,
                    get(snapshot)
                ));
            }
        }
        out
    }
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
}
