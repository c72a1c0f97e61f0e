//! The running `alert_rules` processor and its checkpointed state.
//!
//! Nothing lost, nothing doubled: each notice travels in a batch with an
//! acknowledgement handle of the processor's own. Until its receipt says
//! delivered, the notice is kept with the state (and written into every
//! checkpoint), so a failed receipt or a crash sends the same notice again,
//! with the same `notice_id`, which every receiver takes as a no-op.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use flowpulse_core::ack::{AckHandle, AckReceipt, BatchStatus};
use flowpulse_core::alert::Alert;
use flowpulse_core::event::parse_rfc3339_ms;
use flowpulse_core::metrics::RealtimeMetrics;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, ComponentRole, FieldError, PluginDescriptor,
    Processor, ProcessorConfig, ValidateContext,
};
use flowpulse_core::record::{Batch, Record, RecordKinds};
use flowpulse_core::runtime::Output;
use flowpulse_core::state::{ProcessorState, SavedState, Snapshot, StateError, StateFormat};
use flowpulse_core::telemetry::{ExtraValue, Telemetry};
use serde::{Deserialize, Serialize};

use super::config::AlertRulesConfig;
use super::evaluator::{At, Change, CompiledRule, Evaluator};
use super::path::SelfSample;
use crate::stores::{alerts, rules};
use flowpulse_core::alert::AlertStatus;

inventory::submit! {
    PluginDescriptor::processor::<AlertRulesConfig>("alert_rules", "Evaluates alert rules on every metrics document and emits alert notices")
}

/// How often notices whose delivery failed are sent again.
const RESEND_EVERY: Duration = Duration::from_secs(1);

const FORMAT: StateFormat = StateFormat {
    kind: "alert_rules",
    version: 1,
};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[async_trait]
impl ProcessorConfig for AlertRulesConfig {
    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        self.check(cx)
    }

    fn inputs(&self) -> RecordKinds {
        RecordKinds::METRICS
    }

    fn outputs(&self) -> RecordKinds {
        RecordKinds::ALERTS
    }

    fn state(&self) -> Option<Box<dyn ProcessorState>> {
        Some(Box::new(RulesState::default()))
    }

    /// Open alerts and unconfirmed notices must survive a restart.
    fn always_checkpoints(&self) -> bool {
        true
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Processor>, BuildError> {
        let rules = self
            .rules
            .iter()
            .cloned()
            .map(CompiledRule::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(BuildError)?;
        let store = self
            .store
            .as_deref()
            .map(|name| crate::stores::Stores::of(cx).open(cx, name))
            .transpose()
            .map_err(|e| BuildError(e.to_string()))?;
        Ok(Box::new(AlertRulesProcessor {
            store,
            synced: false,
            sync_failure_logged: false,
            adopted_once: false,
            stats: Arc::clone(&cx.stats),
            stored_rules: None,
            invalid_logged: Default::default(),
            adopted: cx.stats.counter(
                "alerts_adopted",
                "Open alerts read from the store that the state did not hold (after a restart).",
            ),
            invalid_rules: cx.stats.gauge(
                "invalid_stored_rules",
                "Stored rules skipped because they no longer validate.",
            ),
            store_timeout: self.store_timeout,
            known_channels: AlertRulesConfig::known_channels_of(&cx.topology),
            rules,
            state: RulesState::default(),
            telemetry: cx.telemetry.clone(),
            started: Instant::now(),
            notices: cx
                .stats
                .counter("notices", "Alert notices emitted (repeats included)."),
            no_data: cx.stats.counter(
                "no_data",
                "Evaluations of a custom metric not in the document yet.",
            ),
        }))
    }
}

/// Notices sent whose receipt is not known yet.
struct InFlight {
    notices: Vec<Alert>,
    receipt: AckReceipt,
}

/// What a checkpoint holds: the evaluator and the notices not yet known
/// to be delivered.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    evaluator: Evaluator,
    unconfirmed: Vec<Alert>,
}

/// The processor's state: the evaluator, the notices in flight, and those
/// to send again.
#[derive(Default)]
pub struct RulesState {
    evaluator: Evaluator,
    in_flight: Vec<InFlight>,
    resend: Vec<Alert>,
}

impl RulesState {
    /// Forgets delivered notices; queues failed ones to send again.
    fn settle(&mut self) {
        let mut resend = Vec::new();
        self.in_flight
            .retain_mut(|sent| match sent.receipt.try_status() {
                None => true,
                Some(BatchStatus::Delivered) => false,
                Some(BatchStatus::Failed) => {
                    resend.append(&mut sent.notices);
                    false
                }
            });
        self.resend.extend(resend);
    }

    fn unconfirmed(&self) -> Vec<Alert> {
        self.resend
            .iter()
            .chain(self.in_flight.iter().flat_map(|s| s.notices.iter()))
            .cloned()
            .collect()
    }

    fn read(saved: &SavedState) -> Result<Saved, StateError> {
        if saved.version != FORMAT.version {
            return Err(StateError::Version {
                found: saved.version,
                expected: FORMAT.version,
            });
        }
        serde_json::from_slice(&saved.body).map_err(|e| StateError::Corrupt(e.to_string()))
    }
}

impl ProcessorState for RulesState {
    fn format(&self) -> StateFormat {
        FORMAT
    }

    fn snapshot(&mut self, _stored: &dyn Fn(u64) -> bool) -> Snapshot {
        self.settle();
        let saved = Saved {
            evaluator: self.evaluator.clone(),
            unconfirmed: self.unconfirmed(),
        };
        let body = serde_json::to_vec(&saved).unwrap_or_else(|e| {
            // Plain data with string keys: only a bug gets here, and the
            // empty body then fails loudly at restore.
            tracing::error!("cannot encode the alert_rules state: {e}");
            Vec::new()
        });
        Snapshot {
            body,
            parts: Vec::new(),
            covers: None,
        }
    }

    fn restore(&mut self, saved: SavedState) -> Result<(), StateError> {
        let saved = Self::read(&saved)?;
        self.evaluator = saved.evaluator;
        // Whatever was not known to be delivered goes out again.
        self.resend = saved.unconfirmed;
        self.in_flight.clear();
        Ok(())
    }

    fn merge(&mut self, saved: SavedState) -> Result<(), StateError> {
        let saved = Self::read(&saved)?;
        // Disjoint partitions: the same rules, other instances.
        for (rule, instances) in saved.evaluator.instances {
            self.evaluator
                .instances
                .entry(rule)
                .or_default()
                .extend(instances);
        }
        self.evaluator.no_data += saved.evaluator.no_data;
        self.resend.extend(saved.unconfirmed);
        Ok(())
    }

    fn describe(&self) -> String {
        let open = self.evaluator.open_alerts().count();
        format!(
            "{open} open alerts, {} rule instances tracked, {} notices not yet confirmed",
            self.evaluator.tracked(),
            self.unconfirmed().len()
        )
    }
}

struct AlertRulesProcessor {
    /// Where rules, and people's acknowledgements and resolves, are read from.
    store: Option<Arc<crate::stores::Store>>,
    /// Whether the config's rules have been written to the store.
    synced: bool,
    /// Whether a failure to write them has been logged.
    sync_failure_logged: bool,
    /// Whether the store's open alerts have been read since the start.
    adopted_once: bool,
    stats: Arc<flowpulse_core::telemetry::ComponentStats>,
    /// The rules last read from the store (all of them, config ones included).
    stored_rules: Option<Vec<CompiledRule>>,
    /// Stored rules already logged as invalid.
    invalid_logged: std::collections::HashSet<String>,
    invalid_rules: Arc<flowpulse_core::telemetry::Gauge>,
    /// The channels a rule may name (notification sinks, `dashboard`): a
    /// stored rule naming another is skipped.
    known_channels: Vec<String>,
    adopted: Arc<flowpulse_core::telemetry::Counter>,
    store_timeout: Duration,
    rules: Vec<CompiledRule>,
    state: RulesState,
    telemetry: Telemetry,
    started: Instant,
    notices: Arc<flowpulse_core::telemetry::Counter>,
    no_data: Arc<flowpulse_core::telemetry::Counter>,
}

impl AlertRulesProcessor {
    /// What the watchdog paths read, from every component's telemetry.
    fn own_sample(&self, wall_ms: i64) -> SelfSample {
        let mut sample = SelfSample::default();
        let mut last_event_ms: Option<i64> = None;
        for (_, component) in self.telemetry.components() {
            let s = component.stats.snapshot();
            sample.errors_total += s.errors as f64;
            if component.role == ComponentRole::Source {
                sample.source_lag += s.lag as f64;
                last_event_ms = last_event_ms.max(s.last_record_at_ms);
            }
            for (name, value) in &s.extra {
                let value = match value {
                    ExtraValue::Counter(n) => *n as f64,
                    ExtraValue::Gauge(n) => *n as f64,
                };
                match *name {
                    "deliveries_failed" => sample.failed_deliveries += value,
                    "outbox_pending" => sample.outbox_pending += value,
                    _ => {}
                }
            }
        }
        let since_ms = match last_event_ms {
            Some(at) => (wall_ms - at).max(0),
            None => self.started.elapsed().as_millis() as i64,
        };
        sample.seconds_since_last_event = since_ms as f64 / 1000.0;
        sample
    }

    async fn send(&mut self, notices: Vec<Alert>, out: &mut Output) {
        if notices.is_empty() {
            return;
        }
        self.notices.add(notices.len() as u64);
        let (handle, receipt) = AckHandle::new();
        let records = notices
            .iter()
            .cloned()
            .map(|n| Record::Alert(Arc::new(n)))
            .collect();
        self.state.in_flight.push(InFlight { notices, receipt });
        out.send(Batch::new(records, vec![handle])).await;
    }

    async fn resend(&mut self, out: &mut Output) {
        self.state.settle();
        let again = std::mem::take(&mut self.state.resend);
        if !again.is_empty() {
            tracing::info!(
                notices = again.len(),
                "sending alert notices again whose delivery was not confirmed"
            );
            self.send(again, out).await;
        }
    }

    /// With a store: the config's rules written to it once it is ready,
    /// then every rule read back (one query, within `store_timeout`; else
    /// the last read stands). A stored rule that no longer validates is
    /// skipped, logged once and counted.
    async fn read_rules(&mut self) {
        let Some(store) = self.store.as_ref().filter(|s| s.is_ready()).cloned() else {
            return;
        };
        if !self.synced {
            let config_rules: Vec<_> = self
                .rules
                .iter()
                .map(|c| {
                    let mut rule = c.rule.clone();
                    rule.id = Some(c.id.clone());
                    rule
                })
                .collect();
            // A failure (a rule made over the API holding a config rule's
            // name, say) is logged once and retried; the stored rules are
            // still read.
            match tokio::time::timeout(
                self.store_timeout,
                rules::sync_config_rules(&store, &config_rules),
            )
            .await
            {
                Ok(Ok(())) => self.synced = true,
                Ok(Err(e)) => {
                    if !self.sync_failure_logged {
                        self.sync_failure_logged = true;
                        tracing::warn!(
                            "cannot write the config's rules to store \"{}\": {e}",
                            store.name
                        );
                        self.stats
                            .error(format!("cannot write the config's rules to the store: {e}"));
                    }
                }
                Err(_) => {}
            }
        }
        let loaded = match tokio::time::timeout(self.store_timeout, rules::load(&store)).await {
            Ok(Ok(loaded)) => loaded,
            _ => return,
        };
        let (stored, bad_rows) = loaded;
        let mut compiled = Vec::with_capacity(stored.len());
        let mut invalid = bad_rows.len();
        for bad in bad_rows {
            if self.invalid_logged.insert(bad.id.clone()) {
                tracing::warn!(rule = %bad.name, "skipping a stored rule that does not read as a rule: {}", bad.problem);
            }
        }
        // A rule unchanged since the last read (same row, field for field)
        // keeps its compiled form: only changed rules are compiled again.
        let mut previous: std::collections::HashMap<String, CompiledRule> = self
            .stored_rules
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        for rule in stored {
            let (id, name) = (rule.id.clone().unwrap_or_default(), rule.name.clone());
            if let Some(known) = previous.remove(&id).filter(|known| known.rule == rule) {
                compiled.push(known);
                continue;
            }
            // The same checks as the API's: a row edited by hand to name a
            // sink that is gone, say, is skipped rather than half-applied.
            let problems = rule.lasting_problems(&self.known_channels);
            let checked = match problems.first() {
                Some(p) => Err(format!("`{}`: {}", p.field, p.message)),
                None => CompiledRule::new(rule).map_err(|e| e.to_string()),
            };
            match checked {
                Ok(rule) => compiled.push(rule),
                Err(e) => {
                    invalid += 1;
                    if self.invalid_logged.insert(id) {
                        tracing::warn!(rule = %name, "skipping a stored rule that no longer validates: {e}");
                        self.stats.error(format!(
                            "stored rule \"{name}\" skipped: it no longer validates: {e}"
                        ));
                    }
                }
            }
        }
        self.invalid_rules.set(invalid as i64);
        self.stored_rules = Some(compiled);
    }

    /// Turns people's changes in the store (acknowledged, resolved) into
    /// notices: the store's open alerts are the truth. One indexed query,
    /// within `store_timeout`; when it cannot be had, nothing changes now
    /// and the next document tries again.
    async fn read_changes(&mut self, at: At) -> Vec<Alert> {
        let Some(store) = self.store.as_ref().filter(|s| s.is_ready()).cloned() else {
            return Vec::new();
        };
        // Open alerts the restored state does not know (stored just before
        // a crash whose checkpoint predates them) are taken as firing, once,
        // at the first read after the start: later, an open alert the state
        // lacks is one it resolved and whose notice is still on its way.
        if !self.adopted_once {
            if let Ok(Ok(open)) =
                tokio::time::timeout(self.store_timeout, alerts::open(&store)).await
            {
                self.adopted_once = true;
                for alert in open {
                    if self.state.evaluator.adopt(alert, at.as_of_ms) {
                        self.adopted.inc();
                    }
                }
            }
        }
        let open: Vec<(String, AlertStatus, u32)> = self
            .state
            .evaluator
            .open_alerts()
            .map(|a| (a.id.clone(), a.status, a.repeat))
            .collect();
        if open.is_empty() {
            return Vec::new();
        }
        let ids: Vec<String> = open.iter().map(|(id, _, _)| id.clone()).collect();
        let stored =
            match tokio::time::timeout(self.store_timeout, alerts::statuses(&store, &ids)).await {
                Ok(Ok(stored)) => stored,
                Ok(Err(e)) => {
                    tracing::debug!("cannot read alert changes: {e}");
                    return Vec::new();
                }
                Err(_) => return Vec::new(),
            };
        let mut notices = Vec::new();
        for row in stored {
            let Some((_, status, repeat)) = open.iter().find(|(id, _, _)| *id == row.id) else {
                continue;
            };
            let change = match row.status {
                // Only an acknowledgement of this very notice: a repeat the
                // store has not caught up with is not acknowledged yet.
                AlertStatus::Acknowledged
                    if *status == AlertStatus::Triggered && row.repeat == *repeat =>
                {
                    Some(Change::Acknowledge {
                        by: row.acknowledged_by.unwrap_or_else(|| "api".into()),
                        until_ms: row.acknowledged_until.as_deref().and_then(parse_rfc3339_ms),
                    })
                }
                AlertStatus::Resolved if row.resolved_by.as_deref() != Some("rule") => {
                    Some(Change::Resolve {
                        by: row.resolved_by.unwrap_or_else(|| "api".into()),
                    })
                }
                _ => None,
            };
            if let Some(change) = change {
                notices.extend(self.state.evaluator.apply(&row.id, change, at));
            }
        }
        notices
    }

    async fn evaluate(&mut self, doc: &RealtimeMetrics) -> Vec<Alert> {
        let wall_ms = now_ms();
        let as_of_ms = parse_rfc3339_ms(&doc.as_of).unwrap_or(wall_ms);
        self.read_rules().await;
        let mut changes = self.read_changes(At { as_of_ms, wall_ms }).await;
        let own = self.own_sample(wall_ms);
        let no_data_before = self.state.evaluator.no_data;
        let rules = self.stored_rules.as_ref().unwrap_or(&self.rules);
        let notices = self
            .state
            .evaluator
            .evaluate(rules, doc, &own, At { as_of_ms, wall_ms });
        self.no_data
            .add(self.state.evaluator.no_data - no_data_before);
        changes.extend(notices);
        changes
    }
}

#[async_trait]
impl Processor for AlertRulesProcessor {
    async fn process(&mut self, batch: Batch, out: &mut Output) -> Result<(), ComponentError> {
        self.resend(out).await;
        let mut notices = Vec::new();
        for record in batch.records() {
            if let Record::Metrics(doc) = record {
                notices.extend(self.evaluate(doc).await);
            }
        }
        self.send(notices, out).await;
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(RESEND_EVERY)
    }

    async fn tick(&mut self, out: &mut Output) -> Result<(), ComponentError> {
        self.resend(out).await;
        Ok(())
    }

    fn state(&mut self) -> Option<&mut dyn ProcessorState> {
        Some(&mut self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowpulse_core::metrics::Overview;

    fn processor() -> AlertRulesProcessor {
        let config: AlertRulesConfig = toml::from_str(
            r#"
            [[rules]]
            name = "errors"
            severity = "critical"
            condition = { metric = "overview.error_rate_percent", operator = ">", value = 5 }
            "#,
        )
        .unwrap();
        AlertRulesProcessor {
            store: None,
            synced: false,
            sync_failure_logged: false,
            adopted_once: false,
            stats: Arc::default(),
            stored_rules: None,
            invalid_logged: Default::default(),
            known_channels: vec!["dashboard".into()],
            adopted: Arc::default(),
            invalid_rules: Arc::default(),
            store_timeout: Duration::from_secs(2),
            rules: config
                .rules
                .into_iter()
                .map(|r| CompiledRule::new(r).unwrap())
                .collect(),
            state: RulesState::default(),
            telemetry: Telemetry::default(),
            started: Instant::now(),
            notices: Arc::default(),
            no_data: Arc::default(),
        }
    }

    fn doc(error_rate: f64, second: i64) -> Batch {
        Batch::unacked(vec![Record::Metrics(Arc::new(RealtimeMetrics {
            overview: Overview {
                error_rate_percent: error_rate,
                ..Default::default()
            },
            as_of: flowpulse_core::event::format_rfc3339_ms(second * 1000),
            ..Default::default()
        }))])
    }

    fn alerts(rx: &mut tokio::sync::mpsc::Receiver<Batch>) -> Vec<Batch> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[tokio::test]
    async fn a_notice_whose_delivery_fails_is_sent_again_with_the_same_notice_id() {
        let mut p = processor();
        let (mut out, mut rx) = Output::channel(16);
        p.process(doc(9.0, 0), &mut out).await.unwrap();
        let sent = alerts(&mut rx);
        assert_eq!(sent.len(), 1);
        let Record::Alert(first) = &sent[0].records()[0] else {
            panic!("not an alert")
        };
        let first_notice = first.notice_id.clone();
        sent[0].ack_handles()[0].fail();
        drop(sent);
        p.tick(&mut out).await.unwrap();
        let again = alerts(&mut rx);
        let Record::Alert(second) = &again[0].records()[0] else {
            panic!("not an alert")
        };
        assert_eq!(second.notice_id, first_notice);
        drop(again);
        p.tick(&mut out).await.unwrap();
        assert!(
            alerts(&mut rx).is_empty(),
            "delivered: not sent a third time"
        );
    }

    #[tokio::test]
    async fn a_checkpoint_keeps_unconfirmed_notices_and_a_restore_sends_them_again() {
        let mut p = processor();
        let (mut out, mut rx) = Output::channel(16);
        p.process(doc(9.0, 0), &mut out).await.unwrap();
        let in_flight = alerts(&mut rx);
        let snapshot = p.state.snapshot(&|_| false);
        drop(in_flight);

        let mut restarted = processor();
        restarted
            .state
            .restore(SavedState {
                version: FORMAT.version,
                body: snapshot.body,
                parts: Default::default(),
            })
            .unwrap();
        assert_eq!(restarted.state.evaluator.open_alerts().count(), 1);
        let (mut out, mut rx) = Output::channel(16);
        restarted.process(doc(9.0, 1), &mut out).await.unwrap();
        let resent = alerts(&mut rx);
        assert_eq!(resent.len(), 1, "the unconfirmed notice, and nothing new");
        assert!(restarted.state.describe().contains("1 open alerts"));
    }
}
