//! The pure evaluator: rules applied to metrics documents, per rule and
//! instance inactive → pending → firing → resolved, timed on each
//! document's `as_of` (event time), so replays are deterministic. No I/O:
//! the processor, `test-rules` and the tests drive the same code.

use std::collections::BTreeMap;

use flowpulse_core::alert::{Alert, AlertStatus};
use flowpulse_core::event::format_rfc3339_ms;
use flowpulse_core::metrics::RealtimeMetrics;
use serde::{Deserialize, Serialize};

use super::path::{MetricPath, SelfSample};
use super::rule::{config_rule_id, Rule};

/// A rule ready to evaluate: its id and compiled path.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// The rule's id (given, or a UUIDv5 of its name).
    pub id: String,
    /// The rule.
    pub rule: Rule,
    /// Its compiled metric path.
    pub path: MetricPath,
}

impl CompiledRule {
    /// Compiles `rule`; the message names what is wrong.
    pub fn new(rule: Rule) -> Result<CompiledRule, String> {
        let path = MetricPath::parse(&rule.condition.metric)?;
        let id = rule
            .id
            .clone()
            .unwrap_or_else(|| config_rule_id(&rule.name));
        Ok(CompiledRule { id, rule, path })
    }
}

/// Where one rule and instance stand. Inactive ones are not kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    /// The condition holds, not yet for `duration_ms`.
    Pending {
        /// The `as_of` it began to hold.
        since_ms: i64,
    },
    /// An open alert.
    Firing(Box<Firing>),
    /// Resolved by a person: fires again only after the condition has
    /// cleared once.
    HeldResolved,
}

/// An open alert and its timers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    /// The alert as its last notice carried it.
    pub alert: Alert,
    /// The `as_of` of its last `alert:triggered`.
    pub last_notified_ms: i64,
    /// Since when (event time) the condition has been clear, while
    /// `keep_firing_ms` holds it open.
    pub cleared_since_ms: Option<i64>,
}

/// A change a person made through the API.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Acknowledged, optionally until a wall-clock time (Unix ms).
    Acknowledge {
        /// `api` or `api:NAME`.
        by: String,
        /// Past it, an alert still firing is notified again.
        until_ms: Option<i64>,
    },
    /// Resolved.
    Resolve {
        /// `api` or `api:NAME`.
        by: String,
    },
}

/// Every rule's pending, firing and held instances: by rule id, then by
/// instance. Inactive ones are not kept, so the common case (a condition
/// that does not hold for an instance that is not tracked) costs one
/// lookup and no allocation.
pub type Instances = BTreeMap<String, Tracked>;

/// One rule's tracked instances. A hash map: every instance of every rule
/// is looked up on every document, the evaluator's hot path.
pub type Tracked = rustc_hash::FxHashMap<String, Phase>;

/// Every rule's instances.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluator {
    /// Pending, firing and held instances, by rule id and instance.
    pub instances: Instances,
    /// Evaluations of a custom metric not yet seen ("no data").
    #[serde(default)]
    pub no_data: u64,
    /// The newest event time evaluated (or adopted). A document older than
    /// it describes the past (an aggregate restored from an older
    /// checkpoint, catching up): evaluating it would undo transitions
    /// already made, so it is skipped.
    #[serde(default)]
    pub newest_as_of_ms: i64,
    /// Documents skipped as older than `newest_as_of_ms`.
    #[serde(default)]
    pub stale: u64,
}

/// The namespace of alert ids.
const ALERT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x9a3e_1f27_c05b_4d88_b6e2_0f4a_71c3_5d92);

/// The alert id of `rule` and `instance` whose condition began to hold at
/// `began_ms`.
pub fn alert_id(rule_id: &str, instance: &str, began_ms: i64) -> String {
    let name = format!("{rule_id}\n{instance}\n{began_ms}");
    uuid::Uuid::new_v5(&ALERT_NAMESPACE, name.as_bytes()).to_string()
}

/// The time of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    /// The document's event time (Unix ms): what timers run on.
    pub as_of_ms: i64,
    /// The wall clock (Unix ms): `created_at`, acks' `until`, mutes.
    pub wall_ms: i64,
}

impl Evaluator {
    /// Applies one document: the notices it causes, in order.
    pub fn evaluate(
        &mut self,
        rules: &[CompiledRule],
        doc: &RealtimeMetrics,
        own: &SelfSample,
        at: At,
    ) -> Vec<Alert> {
        if at.as_of_ms < self.newest_as_of_ms {
            self.stale += 1;
            return Vec::new();
        }
        self.newest_as_of_ms = at.as_of_ms;
        let mut notices = Vec::new();
        for compiled in rules {
            if !compiled.rule.enabled {
                self.resolve_rule(&compiled.id, at, &mut notices);
                continue;
            }
            let Some(samples) = compiled.path.read(doc, own) else {
                self.no_data += 1;
                continue;
            };
            let mut tracked = self.instances.remove(&compiled.id).unwrap_or_default();
            let tracked_before = tracked.len();
            let mut seen = 0;
            for sample in &samples {
                seen += usize::from(tracked.contains_key(sample.instance));
                step(
                    compiled,
                    &mut tracked,
                    sample.instance,
                    sample.value,
                    at,
                    &mut notices,
                );
            }
            // Instances tracked before but absent now do not match. Seeing
            // every tracked one (the common case) needs no search.
            if seen < tracked_before {
                let present: std::collections::HashSet<&str> =
                    samples.iter().map(|s| s.instance).collect();
                let mut gone: Vec<String> = tracked
                    .keys()
                    .filter(|instance| !present.contains(instance.as_str()))
                    .cloned()
                    .collect();
                gone.sort();
                for instance in gone {
                    step(compiled, &mut tracked, &instance, None, at, &mut notices);
                }
            }
            if !tracked.is_empty() {
                self.instances.insert(compiled.id.clone(), tracked);
            }
        }
        // Rules that no longer exist: their open alerts resolve.
        let orphans: Vec<String> = self
            .instances
            .keys()
            .filter(|rule| !rules.iter().any(|r| r.id == **rule))
            .cloned()
            .collect();
        for rule in orphans {
            self.resolve_rule(&rule, at, &mut notices);
        }
        notices
    }

    /// Resolves every open alert of a rule (disabled or gone) and forgets
    /// its instances.
    fn resolve_rule(&mut self, rule_id: &str, at: At, notices: &mut Vec<Alert>) {
        // In instance order: replays give the same notices in the same order.
        let mut instances: Vec<(String, Phase)> = self
            .instances
            .remove(rule_id)
            .unwrap_or_default()
            .into_iter()
            .collect();
        instances.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, phase) in instances {
            if let Phase::Firing(firing) = phase {
                let value = firing.alert.value;
                notices.push(resolved(firing.alert, value, "rule", at));
            }
        }
    }

    /// Applies a person's change to the open alert `alert_id`: the notice
    /// it makes, if it changes anything (an ack of an acknowledged alert
    /// does not; a resolved alert is final).
    pub fn apply(&mut self, alert_id: &str, change: Change, at: At) -> Option<Alert> {
        let (rule, instance) = self.instances.iter().find_map(|(rule, instances)| {
            instances.iter().find_map(|(instance, phase)| match phase {
                Phase::Firing(f) if f.alert.id == alert_id => {
                    Some((rule.clone(), instance.clone()))
                }
                _ => None,
            })
        })?;
        let instances = self.instances.get_mut(&rule)?;
        let key = instance;
        let Some(Phase::Firing(mut firing)) = instances.remove(&key) else {
            return None;
        };
        match change {
            Change::Acknowledge { by, until_ms } => {
                if firing.alert.status == AlertStatus::Acknowledged {
                    instances.insert(key, Phase::Firing(firing));
                    return None;
                }
                let alert = &mut firing.alert;
                alert.status = AlertStatus::Acknowledged;
                alert.acknowledged_at = Some(format_rfc3339_ms(at.wall_ms));
                alert.acknowledged_by = Some(by);
                alert.acknowledged_until = until_ms.map(format_rfc3339_ms);
                alert.as_of = format_rfc3339_ms(at.as_of_ms);
                alert.notice_id = alert.notice_id();
                let notice = alert.clone();
                instances.insert(key, Phase::Firing(firing));
                Some(notice)
            }
            Change::Resolve { by } => {
                instances.insert(key, Phase::HeldResolved);
                let value = firing.alert.value;
                Some(resolved(firing.alert, value, &by, at))
            }
        }
    }

    /// The open alerts, by rule and instance.
    pub fn open_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.instances
            .values()
            .flat_map(|instances| instances.values())
            .filter_map(|phase| match phase {
                Phase::Firing(f) => Some(&f.alert),
                _ => None,
            })
    }

    /// Takes an open alert the store knows (made before a restart whose
    /// checkpoint predates it) as this rule and instance's firing one, unless
    /// one is firing already: the store's open alerts are the truth, and an
    /// instance never gets a second open alert.
    pub fn adopt(&mut self, alert: Alert, as_of_ms: i64) -> bool {
        let tracked = self.instances.entry(alert.rule_id.clone()).or_default();
        if matches!(tracked.get(&alert.instance), Some(Phase::Firing(_))) {
            return false;
        }
        let last_notified_ms =
            flowpulse_core::event::parse_rfc3339_ms(&alert.as_of).unwrap_or(as_of_ms);
        // What it fired on is not to be undone by an older document.
        self.newest_as_of_ms = self.newest_as_of_ms.max(last_notified_ms);
        tracked.insert(
            alert.instance.clone(),
            Phase::Firing(Box::new(Firing {
                alert,
                last_notified_ms,
                cleared_since_ms: None,
            })),
        );
        true
    }

    /// How many instances are tracked (pending, firing or held).
    pub fn tracked(&self) -> usize {
        self.instances.values().map(|t| t.len()).sum()
    }
}

/// One rule and instance, one document: the phase after it, and the
/// notices it causes. Most calls are the fast path: the condition does not
/// hold and nothing is tracked, which allocates nothing.
fn step(
    compiled: &CompiledRule,
    tracked: &mut Tracked,
    instance: &str,
    value: Option<f64>,
    at: At,
    notices: &mut Vec<Alert>,
) {
    let condition = &compiled.rule.condition;
    let holds = value.is_some_and(|v| condition.operator.holds(v, condition.value));
    let Some(phase) = tracked.get_mut(instance) else {
        if holds {
            let phase = if condition.duration_ms == 0 {
                fire(compiled, instance, value, at.as_of_ms, at, notices)
            } else {
                Phase::Pending {
                    since_ms: at.as_of_ms,
                }
            };
            tracked.insert(instance.to_owned(), phase);
        }
        return;
    };
    let next = match phase {
        Phase::Pending { since_ms } if holds => {
            if at.as_of_ms - *since_ms >= condition.duration_ms as i64 {
                Some(fire(compiled, instance, value, *since_ms, at, notices))
            } else {
                return;
            }
        }
        Phase::Pending { .. } => None,
        Phase::HeldResolved if holds => return,
        Phase::HeldResolved => None,
        Phase::Firing(firing) => {
            let still = holds
                || condition.resolve_value.is_some_and(|resolve| {
                    value.is_some_and(|v| condition.operator.holds(v, resolve))
                });
            firing.alert.value = value;
            if still {
                firing.cleared_since_ms = None;
                renotify(compiled, firing, at, notices);
                return;
            }
            let cleared_since = *firing.cleared_since_ms.get_or_insert(at.as_of_ms);
            let keep = condition.keep_firing_ms.unwrap_or(0) as i64;
            if at.as_of_ms - cleared_since < keep {
                return;
            }
            None
        }
    };
    match next {
        Some(phase) => {
            tracked.insert(instance.to_owned(), phase);
        }
        None => {
            if let Some(Phase::Firing(firing)) = tracked.remove(instance) {
                // The rule as it is now: a mute or channels changed since it fired count.
                let mut alert = firing.alert;
                alert.muted = muted(&compiled.rule, at.wall_ms);
                alert.channels = compiled.rule.channels.clone();
                alert.channels = compiled.rule.channels.clone();
                notices.push(resolved(alert, value, "rule", at));
            }
        }
    }
}

fn muted(rule: &Rule, wall_ms: i64) -> bool {
    rule.muted_until
        .as_deref()
        .and_then(flowpulse_core::event::parse_rfc3339_ms)
        .is_some_and(|until| until > wall_ms)
}

fn fire(
    compiled: &CompiledRule,
    instance: &str,
    value: Option<f64>,
    began_ms: i64,
    at: At,
    notices: &mut Vec<Alert>,
) -> Phase {
    let rule = &compiled.rule;
    let as_of = format_rfc3339_ms(at.as_of_ms);
    let metric = compiled.path.metric_for(instance);
    let mut alert = Alert {
        id: alert_id(&compiled.id, instance, began_ms),
        rule_id: compiled.id.clone(),
        rule_name: rule.name.clone(),
        instance: instance.to_owned(),
        severity: rule.severity,
        status: AlertStatus::Triggered,
        message: rule.render_message(instance, &metric, value),
        metric,
        operator: rule.condition.operator.as_str().to_owned(),
        threshold: rule.condition.value,
        value,
        data: serde_json::json!({"value": value, "threshold": rule.condition.value, "as_of": as_of}),
        channels: rule.channels.clone(),
        runbook_url: rule.runbook_url.clone(),
        muted: muted(rule, at.wall_ms),
        repeat: 0,
        notice_id: String::new(),
        as_of,
        created_at: format_rfc3339_ms(at.wall_ms),
        acknowledged_at: None,
        acknowledged_by: None,
        acknowledged_until: None,
        resolved_at: None,
        resolved_by: None,
    };
    alert.notice_id = alert.notice_id();
    notices.push(alert.clone());
    Phase::Firing(Box::new(Firing {
        alert,
        last_notified_ms: at.as_of_ms,
        cleared_since_ms: None,
    }))
}

/// While still firing: an acknowledgement past its `until` returns to
/// triggered and notifies again; a triggered alert is notified again
/// every `repeat_interval_ms`.
fn renotify(compiled: &CompiledRule, firing: &mut Firing, at: At, notices: &mut Vec<Alert>) {
    let alert = &mut firing.alert;
    let ack_expired = alert.status == AlertStatus::Acknowledged
        && alert
            .acknowledged_until
            .as_deref()
            .and_then(flowpulse_core::event::parse_rfc3339_ms)
            .is_some_and(|until| at.wall_ms >= until);
    let repeat_due = alert.status == AlertStatus::Triggered
        && compiled
            .rule
            .repeat_interval_ms
            .is_some_and(|every| at.as_of_ms - firing.last_notified_ms >= every as i64);
    if !(ack_expired || repeat_due) {
        return;
    }
    alert.status = AlertStatus::Triggered;
    alert.repeat += 1;
    alert.as_of = format_rfc3339_ms(at.as_of_ms);
    alert.muted = muted(&compiled.rule, at.wall_ms);
    alert.channels = compiled.rule.channels.clone();
    alert.data = serde_json::json!({"value": alert.value, "threshold": alert.threshold, "as_of": alert.as_of});
    alert.notice_id = alert.notice_id();
    firing.last_notified_ms = at.as_of_ms;
    notices.push(alert.clone());
}

fn resolved(mut alert: Alert, value: Option<f64>, by: &str, at: At) -> Alert {
    alert.status = AlertStatus::Resolved;
    alert.value = value;
    alert.resolved_at = Some(format_rfc3339_ms(at.wall_ms));
    alert.resolved_by = Some(by.to_owned());
    alert.as_of = format_rfc3339_ms(at.as_of_ms);
    alert.notice_id = alert.notice_id();
    alert
}
