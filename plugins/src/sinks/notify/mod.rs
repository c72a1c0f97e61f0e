//! Notification sinks (`slack`, `webhook`, `email`) and what they share:
//! routing by the rules' `channels`, a durable outbox per sink, delivery
//! with retries, and rendering.
//!
//! A sink's `write` keeps the notices routed to it in its outbox
//! (`DATA_DIR/NAME/outbox.db`) in one transaction and returns; the batch's
//! acknowledgement handles drop at that commit, so `alert_rules` records
//! the transition only once the notice is safe. A delivery worker then
//! sends the outbox's pending rows, at least once, across restarts.

pub mod email;
pub mod http;
pub mod outbox;
pub mod render;
pub mod retry;
pub mod routing;
pub mod secret;
pub mod slack;
pub mod webhook;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowpulse_core::alert::{Alert, Severity};
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, FieldError, Sink, ValidateContext,
};
use flowpulse_core::record::{Batch, Record};
use flowpulse_core::telemetry::Counter;
use tokio::sync::mpsc;

use outbox::{now_ms, NewRow, Outbox, Pending, RowState};
use retry::{Backoff, DeliveryError};
use routing::{Route, Routing};
use worker::{Worker, WorkerSettings, WorkerStats};

/// How one notification sink delivers a message.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// Delivers `notices` as one message: a single notice, or, for a
    /// channel that coalesces, every notice waiting (in `seq` order).
    async fn deliver(&self, notices: &[Arc<Alert>]) -> Result<(), DeliveryError>;

    /// `Some(interval)`: at most one message per interval, the notices
    /// waiting meanwhile coalesced into it. Default `None`: one message per
    /// notice, several alerts at once.
    fn coalesce(&self) -> Option<Duration> {
        None
    }

    /// Requests one attempt makes, each bounded by the sink's `timeout`
    /// (an email to three recipients: three SMTP sessions). Default 1.
    fn requests_per_attempt(&self) -> u32 {
        1
    }
}

/// Declares a notification sink's config: the sink's own fields, then the
/// routing and delivery options every notification sink shares (one
/// struct, so unknown keys are still refused).
macro_rules! notify_sink_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            /// Deliver every alert, whatever its rule's `channels`. Default false.
            #[serde(default)]
            pub all_alerts: bool,
            /// The least severity delivered: `"info"` (default), `"warning"`
            /// or `"critical"`.
            #[serde(default = "crate::sinks::notify::defaults::min_severity")]
            pub min_severity: flowpulse_core::alert::Severity,
            /// Deliver `alert:resolved` notices. Default true.
            #[serde(default = "crate::sinks::notify::defaults::yes")]
            pub send_resolved: bool,
            /// Deliver `alert:acknowledged` notices. Default false.
            #[serde(default)]
            pub send_acknowledged: bool,
            /// A notice whose `as_of` is further behind the wall clock is
            /// kept but not sent (a replayed backlog). Default `"5m"`.
            #[serde(default = "crate::sinks::notify::defaults::max_notify_lag", with = "humantime_serde")]
            pub max_notify_lag: std::time::Duration,
            /// Alerts delivered at once. Default 16.
            #[serde(default = "crate::sinks::notify::defaults::max_in_flight")]
            pub max_in_flight: usize,
            /// One attempt's limit. Default `"10s"`.
            #[serde(default = "crate::sinks::notify::defaults::timeout", with = "humantime_serde")]
            pub timeout: std::time::Duration,
            /// The first retry's wait (exponential backoff with full
            /// jitter). Default `"1s"`.
            #[serde(default = "crate::sinks::notify::defaults::retry_initial", with = "humantime_serde")]
            pub retry_initial: std::time::Duration,
            /// The longest wait between attempts, a `Retry-After`
            /// included. Default `"5m"`.
            #[serde(default = "crate::sinks::notify::defaults::retry_max", with = "humantime_serde")]
            pub retry_max: std::time::Duration,
            /// Past this age an undelivered notice is failed. Default `"24h"`.
            #[serde(default = "crate::sinks::notify::defaults::max_age", with = "humantime_serde")]
            pub max_age: std::time::Duration,
        }

        impl $name {
            /// The options every notification sink shares.
            pub fn shared(&self) -> crate::sinks::notify::Shared {
                crate::sinks::notify::Shared {
                    all_alerts: self.all_alerts,
                    min_severity: self.min_severity,
                    send_resolved: self.send_resolved,
                    send_acknowledged: self.send_acknowledged,
                    max_notify_lag: self.max_notify_lag,
                    max_in_flight: self.max_in_flight,
                    timeout: self.timeout,
                    retry_initial: self.retry_initial,
                    retry_max: self.retry_max,
                    max_age: self.max_age,
                }
            }
        }
    };
}
pub(crate) use notify_sink_config;

/// Defaults of the shared options.
pub mod defaults {
    use std::time::Duration;

    /// `min_severity`.
    pub fn min_severity() -> flowpulse_core::alert::Severity {
        flowpulse_core::alert::Severity::Info
    }
    /// `send_resolved`.
    pub fn yes() -> bool {
        true
    }
    /// `max_notify_lag`.
    pub fn max_notify_lag() -> Duration {
        Duration::from_secs(5 * 60)
    }
    /// `max_in_flight`.
    pub fn max_in_flight() -> usize {
        16
    }
    /// `timeout`.
    pub fn timeout() -> Duration {
        Duration::from_secs(10)
    }
    /// `retry_initial`.
    pub fn retry_initial() -> Duration {
        Duration::from_secs(1)
    }
    /// `retry_max`.
    pub fn retry_max() -> Duration {
        Duration::from_secs(5 * 60)
    }
    /// `max_age`.
    pub fn max_age() -> Duration {
        Duration::from_secs(24 * 60 * 60)
    }
}

/// The routing and delivery options every notification sink shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// See the sink configs.
    pub all_alerts: bool,
    /// See the sink configs.
    pub min_severity: Severity,
    /// See the sink configs.
    pub send_resolved: bool,
    /// See the sink configs.
    pub send_acknowledged: bool,
    /// See the sink configs.
    pub max_notify_lag: Duration,
    /// See the sink configs.
    pub max_in_flight: usize,
    /// See the sink configs.
    pub timeout: Duration,
    /// See the sink configs.
    pub retry_initial: Duration,
    /// See the sink configs.
    pub retry_max: Duration,
    /// See the sink configs.
    pub max_age: Duration,
}

impl Shared {
    /// Problems with the shared options.
    pub fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.max_in_flight == 0 {
            errors.push(FieldError::new("max_in_flight", "must be at least 1"));
        }
        for (field, value) in [
            ("timeout", self.timeout),
            ("retry_initial", self.retry_initial),
            ("retry_max", self.retry_max),
            ("max_age", self.max_age),
        ] {
            if value.is_zero() {
                errors.push(FieldError::new(field, "must be longer than zero"));
            }
        }
        if self.retry_max < self.retry_initial {
            errors.push(FieldError::new(
                "retry_max",
                "must be at least retry_initial",
            ));
        }
        errors.extend(crate::sinks::util::refuse_drop_newest(
            cx,
            "a dropped batch would lose notifications: keep the default \"block\" (the outbox takes notices as fast as the disk does)",
        ));
        errors
    }
}

/// Builds the sink around `channel`: opens the outbox, resumes its pending
/// rows, and starts the delivery worker.
pub async fn build(
    cx: &BuildContext,
    shared: &Shared,
    channel: Arc<dyn Channel>,
) -> Result<Box<dyn Sink>, BuildError> {
    let path = cx.data_dir().join("outbox.db");
    let outbox = Arc::new(
        Outbox::open(&path)
            .await
            .map_err(|e| BuildError(e.to_string()))?,
    );
    let last_seq = outbox
        .last_seq()
        .await
        .map_err(|e| BuildError(e.to_string()))?;
    let pending = outbox
        .pending()
        .await
        .map_err(|e| BuildError(e.to_string()))?;
    if !pending.is_empty() {
        tracing::info!(component = %cx.name, pending = pending.len(), "resuming notices not delivered before the last stop");
    }
    let stats = WorkerStats {
        delivered: cx
            .stats
            .counter("notices_delivered", "Notices the receiver took."),
        failed: cx.stats.counter(
            "deliveries_failed",
            "Notices given up on: refused by the receiver, or not delivered within max_age.",
        ),
        retries: cx.stats.counter(
            "delivery_retries",
            "Delivery attempts that failed and are made again later.",
        ),
        pending: cx.stats.gauge(
            "outbox_pending",
            "Notices waiting in the outbox for delivery.",
        ),
        component: Arc::clone(&cx.stats),
    };
    let settings = WorkerSettings {
        name: cx.name.clone(),
        backoff: Backoff {
            initial: shared.retry_initial,
            max: shared.retry_max,
        },
        max_age: shared.max_age,
        max_in_flight: shared.max_in_flight,
        // The channel's own timeout bounds one request; this bounds the
        // whole attempt (an SMTP session, a coalesced message).
        attempt_timeout: shared
            .timeout
            .saturating_mul(channel.requests_per_attempt() + 1)
            + Duration::from_secs(1),
    };
    let worker = Worker::new(Arc::clone(&outbox), channel, settings, stats, pending);
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = tokio::spawn(worker.run(rx));
    Ok(Box::new(NotifySink {
        routing: Routing {
            name: cx.name.clone(),
            all_alerts: shared.all_alerts,
            min_severity: shared.min_severity,
            send_resolved: shared.send_resolved,
            send_acknowledged: shared.send_acknowledged,
            max_notify_lag: shared.max_notify_lag,
        },
        outbox,
        last_seq,
        tx: Some(tx),
        worker: Some(handle),
        skipped: cx.stats.counter(
            "notices_skipped",
            "Notices kept but not sent: muted, or older than max_notify_lag.",
        ),
    }))
}

/// The sink half: routes and keeps notices; the worker sends them.
struct NotifySink {
    routing: Routing,
    outbox: Arc<Outbox>,
    last_seq: i64,
    tx: Option<mpsc::UnboundedSender<Vec<Pending>>>,
    worker: Option<tokio::task::JoinHandle<()>>,
    skipped: Arc<Counter>,
}

#[async_trait]
impl Sink for NotifySink {
    async fn write(&mut self, batch: &Batch) -> Result<(), ComponentError> {
        let now = now_ms();
        let rows: Vec<NewRow> = batch
            .records()
            .iter()
            .filter_map(|record| match record {
                Record::Alert(alert) => Some(alert),
                _ => None,
            })
            .map(|alert| {
                // The outbox keys rows by notice id: one made by a plugin
                // that left it empty is filled in, not merged with others.
                if alert.notice_id.is_empty() {
                    let mut filled = alert.as_ref().clone();
                    filled.notice_id = filled.notice_id();
                    Arc::new(filled)
                } else {
                    Arc::clone(alert)
                }
            })
            .filter_map(|alert| match self.routing.route(&alert, now) {
                Route::Pass => None,
                Route::Skip(reason) => Some(NewRow {
                    alert: Arc::clone(&alert),
                    state: RowState::Skipped,
                    reason: Some(reason.to_owned()),
                }),
                Route::Deliver => Some(NewRow {
                    alert,
                    state: RowState::Pending,
                    reason: None,
                }),
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        // An error fails the batch: `alert_rules` sends it again.
        let (pending, skipped) = self
            .outbox
            .insert(rows, &mut self.last_seq)
            .await
            .map_err(|e| ComponentError::Transient(e.to_string()))?;
        self.skipped.add(skipped as u64);
        if !pending.is_empty() {
            if let Some(tx) = &self.tx {
                // The worker only stops after flush; rows it would miss
                // stay pending in the outbox for the next start anyway.
                let _ = tx.send(pending);
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ComponentError> {
        self.tx.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.await;
        }
        Ok(())
    }
}
