//! The pure evaluator: rules applied to metrics documents, per rule and
//! instance inactive → pending → firing → resolved, timed on each
//! document's `as_of` (event time), so replays are deterministic. No I/O:
//! the processor, `test-rules` and the tests drive the same code.

use std::collections::BTreeMap;

use flowpulse_core::alert::{Alert, AlertStatus};
use flowpulse_core::event::format_rfc3339_ms;
use flowpulse_core::metrics::RealtimeMetrics;
use serde::{Deserialize, Serialize};

use super::path::{MetricPath, Sample, SelfSample};
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

/// Every rule's instances, by (rule id, instance).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluator {
    /// Pending, firing and held instances.
    #[serde(with = "entries")]
    pub instances: BTreeMap<(String, String), Phase>,
    /// Evaluations of a custom metric not yet seen ("no data").
    #[serde(default)]
    pub no_data: u64,
}

/// The instances as a list of entries: their (rule, instance) keys are not
/// strings, which JSON maps need.
mod entries {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::Phase;

    type Instances = BTreeMap<(String, String), Phase>;

    pub fn serialize<S: Serializer>(map: &Instances, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Instances, D::Error> {
        let entries = Vec::<((String, String), Phase)>::deserialize(d)?;
        Ok(entries.into_iter().collect())
    }
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
            // Instances known before but absent now do not match.
            let mut seen: Vec<&str> = samples.iter().map(|s| s.instance.as_str()).collect();
            seen.sort_unstable();
            let gone: Vec<String> = self
                .instances
                .range((compiled.id.clone(), String::new())..)
                .take_while(|((rule, _), _)| *rule == compiled.id)
                .map(|((_, instance), _)| instance.clone())
                .filter(|instance| seen.binary_search(&instance.as_str()).is_err())
                .collect();
            for sample in &samples {
                self.step(compiled, sample, at, &mut notices);
            }
            for instance in gone {
                let absent = Sample {
                    metric: concrete_metric(&compiled.rule.condition.metric, &instance),
                    instance,
                    value: None,
                };
                self.step(compiled, &absent, at, &mut notices);
            }
        }
        // Rules that no longer exist: their open alerts resolve.
        let live: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        let orphans: Vec<(String, String)> = self
            .instances
            .keys()
            .filter(|(rule, _)| !live.contains(&rule.as_str()))
            .cloned()
            .collect();
        for key in orphans {
            if let Some(Phase::Firing(firing)) = self.instances.remove(&key) {
                notices.push(resolved(firing.alert, None, "rule", at));
            }
        }
        notices
    }

    /// Resolves every open alert of a rule (disabled, say).
    fn resolve_rule(&mut self, rule_id: &str, at: At, notices: &mut Vec<Alert>) {
        let keys: Vec<(String, String)> = self
            .instances
            .range((rule_id.to_owned(), String::new())..)
            .take_while(|((rule, _), _)| rule == rule_id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(Phase::Firing(firing)) = self.instances.remove(&key) {
                let value = firing.alert.value;
                notices.push(resolved(firing.alert, value, "rule", at));
            }
        }
    }

    fn step(&mut self, compiled: &CompiledRule, sample: &Sample, at: At, notices: &mut Vec<Alert>) {
        let condition = &compiled.rule.condition;
        let holds = sample
            .value
            .is_some_and(|v| condition.operator.holds(v, condition.value));
        let key = (compiled.id.clone(), sample.instance.clone());
        let phase = self.instances.remove(&key);
        let next = match phase {
            None if holds && condition.duration_ms == 0 => {
                Some(fire(compiled, sample, at.as_of_ms, at, notices))
            }
            None if holds => Some(Phase::Pending {
                since_ms: at.as_of_ms,
            }),
            None => None,
            Some(Phase::Pending { since_ms }) if holds => {
                if at.as_of_ms - since_ms >= condition.duration_ms as i64 {
                    Some(fire(compiled, sample, since_ms, at, notices))
                } else {
                    Some(Phase::Pending { since_ms })
                }
            }
            Some(Phase::Pending { .. }) => None,
            Some(Phase::HeldResolved) if holds => Some(Phase::HeldResolved),
            Some(Phase::HeldResolved) => None,
            Some(Phase::Firing(mut firing)) => {
                let still = holds
                    || condition.resolve_value.is_some_and(|resolve| {
                        sample
                            .value
                            .is_some_and(|v| condition.operator.holds(v, resolve))
                    });
                firing.alert.value = sample.value;
                if still {
                    firing.cleared_since_ms = None;
                    renotify(compiled, &mut firing, at, notices);
                    Some(Phase::Firing(firing))
                } else {
                    let cleared_since = *firing.cleared_since_ms.get_or_insert(at.as_of_ms);
                    let keep = condition.keep_firing_ms.unwrap_or(0) as i64;
                    if at.as_of_ms - cleared_since < keep {
                        Some(Phase::Firing(firing))
                    } else {
                        notices.push(resolved(firing.alert, sample.value, "rule", at));
                        None
                    }
                }
            }
        };
        if let Some(next) = next {
            self.instances.insert(key, next);
        }
    }

    /// Applies a person's change to the open alert `alert_id`: the notice
    /// it makes, if it changes anything (an ack of an acknowledged alert
    /// does not; a resolved alert is final).
    pub fn apply(&mut self, alert_id: &str, change: Change, at: At) -> Option<Alert> {
        let key = self.instances.iter().find_map(|(key, phase)| match phase {
            Phase::Firing(f) if f.alert.id == alert_id => Some(key.clone()),
            _ => None,
        })?;
        let Some(Phase::Firing(mut firing)) = self.instances.remove(&key) else {
            return None;
        };
        match change {
            Change::Acknowledge { by, until_ms } => {
                if firing.alert.status == AlertStatus::Acknowledged {
                    self.instances.insert(key, Phase::Firing(firing));
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
                self.instances.insert(key, Phase::Firing(firing));
                Some(notice)
            }
            Change::Resolve { by } => {
                self.instances.insert(key, Phase::HeldResolved);
                let value = firing.alert.value;
                Some(resolved(firing.alert, value, &by, at))
            }
        }
    }

    /// The open alerts, by rule and instance.
    pub fn open_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.instances.values().filter_map(|phase| match phase {
            Phase::Firing(f) => Some(&f.alert),
            _ => None,
        })
    }
}

/// The concrete path of `template` (`agents.*.x`) for `instance`.
fn concrete_metric(template: &str, instance: &str) -> String {
    for list in ["agents", "workflows_by_type"] {
        if let Some(field) = template.strip_prefix(&format!("{list}.*.")) {
            return format!("{list}[{instance}].{field}");
        }
    }
    template.replace('*', instance)
}

fn muted(rule: &Rule, wall_ms: i64) -> bool {
    rule.muted_until
        .as_deref()
        .and_then(flowpulse_core::event::parse_rfc3339_ms)
        .is_some_and(|until| until > wall_ms)
}

fn fire(
    compiled: &CompiledRule,
    sample: &Sample,
    began_ms: i64,
    at: At,
    notices: &mut Vec<Alert>,
) -> Phase {
    let rule = &compiled.rule;
    let as_of = format_rfc3339_ms(at.as_of_ms);
    let mut alert = Alert {
        id: alert_id(&compiled.id, &sample.instance, began_ms),
        rule_id: compiled.id.clone(),
        rule_name: rule.name.clone(),
        instance: sample.instance.clone(),
        severity: rule.severity,
        status: AlertStatus::Triggered,
        message: rule.render_message(&sample.instance, &sample.metric, sample.value),
        metric: sample.metric.clone(),
        operator: rule.condition.operator.as_str().to_owned(),
        threshold: rule.condition.value,
        value: sample.value,
        data: serde_json::json!({"value": sample.value, "threshold": rule.condition.value, "as_of": as_of}),
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
