//! `alert_store`: keeps every alert notice in the store's `alerts` and
//! `alert_history` tables (CONTRACT §5), one transaction per notice, in
//! order. A bounded buffer (`max_buffered`) rides out a database outage:
//! notices wait there, in order, with the acknowledgement handles of their
//! batch, which are released only once the notice is committed (so
//! `alert_rules` holds what is not stored yet); writes are retried with
//! backoff (the outage logged once and shown in `/health`); a full buffer
//! is reported (log, `/status`, the `buffered` gauge) and then holds the
//! input back. Hourly, resolved alerts older than the store's `retention`
//! are deleted with their history.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flowpulse_core::ack::AckHandle;
use flowpulse_core::alert::Alert;
use flowpulse_core::outage::Outage;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, FieldError, PluginDescriptor, Shutdown, Sink,
    SinkConfig, ValidateContext,
};
use flowpulse_core::record::{Batch, Record, RecordKinds};
use flowpulse_core::telemetry::{ComponentStats, Counter, Gauge};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::stores::{alerts, Store, StorePool, Stores};

/// How often resolved alerts past `retention` are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60 * 60);

/// `[sinks.NAME] type = "alert_store"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertStoreConfig {
    /// The `[stores.NAME]` to write to.
    pub store: String,
    /// Notices waiting to be stored (an outage, a slow database) before
    /// the input is held back. Default 10000.
    #[serde(default = "default_max_buffered")]
    pub max_buffered: usize,
}

fn default_max_buffered() -> usize {
    10_000
}

inventory::submit! {
    PluginDescriptor::sink::<AlertStoreConfig>("alert_store", "Keeps every alert notice and its history in a PostgreSQL or SQLite store")
}

#[async_trait]
impl SinkConfig for AlertStoreConfig {
    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors: Vec<FieldError> =
            flowpulse_core::config::unknown_store(cx.stores, &self.store)
                .map(|e| FieldError::new("store", e))
                .into_iter()
                .collect();
        if self.max_buffered == 0 {
            errors.push(FieldError::new("max_buffered", "must be at least 1"));
        }
        errors.extend(crate::sinks::util::refuse_drop_newest(
            cx,
            "a dropped batch would lose alert notices: keep the default \"block\" (the buffer, `max_buffered`, rides out outages)",
        ));
        errors
    }

    fn inputs(&self) -> RecordKinds {
        RecordKinds::ALERTS
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        let store = Stores::of(cx)
            .open(cx, &self.store)
            .map_err(|e| BuildError(e.to_string()))?;
        let (tx, rx) = mpsc::channel(self.max_buffered);
        let buffered = cx
            .stats
            .gauge("buffered", "Alert notices waiting to be stored.");
        let writer = Writer {
            outage: Outage::new("the database").reporting_to(Arc::clone(&cx.stats)),
            name: cx.name.clone(),
            stats: Arc::clone(&cx.stats),
            shutdown: cx.shutdown.clone(),
            last_sweep: None,
            stored: cx
                .stats
                .counter("notices_stored", "Alert notices committed to the store."),
            buffered: Arc::clone(&buffered),
            store,
        };
        Ok(Box::new(AlertStoreSink {
            tx: Some(tx),
            writer: Some(tokio::spawn(writer.run(rx))),
            buffered,
            full_reported: AtomicBool::new(false),
            name: cx.name.clone(),
            stats: Arc::clone(&cx.stats),
        }))
    }
}

/// A notice waiting to be stored, with the handles of the batch it came in:
/// the batch is acknowledged once every notice of it is committed.
struct Waiting {
    alert: Arc<Alert>,
    handles: Vec<AckHandle>,
}

struct AlertStoreSink {
    tx: Option<mpsc::Sender<Waiting>>,
    writer: Option<tokio::task::JoinHandle<()>>,
    buffered: Arc<Gauge>,
    full_reported: AtomicBool,
    name: String,
    stats: Arc<ComponentStats>,
}

#[async_trait]
impl Sink for AlertStoreSink {
    async fn write(&mut self, batch: &Batch) -> Result<(), ComponentError> {
        let Some(tx) = self.tx.as_ref() else {
            return Err(ComponentError::Transient(
                "the alert store has stopped".into(),
            ));
        };
        for record in batch.records() {
            let Record::Alert(alert) = record else {
                continue;
            };
            let waiting = Waiting {
                alert: Arc::clone(alert),
                handles: batch.ack_handles().to_vec(),
            };
            self.buffered.add(1);
            let waiting = match tx.try_send(waiting) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(waiting)) => waiting,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.buffered.add(-1);
                    return Err(ComponentError::Transient(
                        "the alert store has stopped".into(),
                    ));
                }
            };
            if !self.full_reported.swap(true, Ordering::Relaxed) {
                let message = format!(
                    "the buffer of {} notices waiting for the store is full; holding the input back",
                    tx.max_capacity()
                );
                tracing::warn!(component = %self.name, "{message}");
                self.stats.error(message);
            }
            if tx.send(waiting).await.is_err() {
                self.buffered.add(-1);
                return Err(ComponentError::Transient(
                    "the alert store has stopped".into(),
                ));
            }
        }
        if tx.capacity() > tx.max_capacity() / 2 {
            self.full_reported.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ComponentError> {
        // Closing the buffer lets the writer store what waits, then stop.
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.await;
        }
        Ok(())
    }
}

/// Stores buffered notices in order, retrying each through outages.
struct Writer {
    store: Arc<Store>,
    outage: Outage,
    name: String,
    stats: Arc<ComponentStats>,
    shutdown: Shutdown,
    last_sweep: Option<Instant>,
    stored: Arc<Counter>,
    buffered: Arc<Gauge>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Waiting>) {
        if !self.store.is_ready() {
            tokio::select! {
                () = self.store.wait_ready() => {}
                () = self.shutdown.cancelled() => {}
            }
        }
        let mut sweeps = tokio::time::interval(SWEEP_EVERY);
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let waiting = tokio::select! {
                waiting = rx.recv() => waiting,
                _ = sweeps.tick() => {
                    self.sweep().await;
                    continue;
                }
            };
            let Some(waiting) = waiting else { break };
            if !self.store_one(&waiting.alert).await {
                // Stopping with the database down: what waits is not
                // stored; `alert_rules` sends it again after the restart.
                waiting.handles.iter().for_each(AckHandle::fail);
                rx.close();
                while let Some(rest) = rx.recv().await {
                    rest.handles.iter().for_each(AckHandle::fail);
                }
                tracing::warn!(component = %self.name, "stopping with alert notices not stored; alert_rules sends them again at the next start");
                self.buffered.set(0);
                return;
            }
            self.buffered.add(-1);
        }
    }

    /// Stores one notice, retrying with backoff; false if the pipeline
    /// stops first.
    async fn store_one(&mut self, alert: &Alert) -> bool {
        loop {
            match alerts::store_notice(&self.store, alert).await {
                Ok(()) => {
                    self.outage.recovered(&self.name, &self.store.settings.url);
                    self.stored.inc();
                    return true;
                }
                Err(e) => {
                    let wait = self.outage.failed(&self.name, &self.store.settings.url, &e);
                    self.stats
                        .error(format!("cannot store an alert notice: {e}"));
                    if self.shutdown.is_cancelled() {
                        return false;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.shutdown.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Deletes resolved alerts past the store's retention, at most hourly.
    async fn sweep(&mut self) {
        if self.last_sweep.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
            return;
        }
        self.last_sweep = Some(Instant::now());
        let keep_ms = self.store.settings.retention.as_millis() as i64;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let before = flowpulse_core::event::format_rfc3339_ms(now_ms - keep_ms);
        let deleted = match &self.store.pool {
            StorePool::Postgres(pool) => sqlx::query(
                "DELETE FROM alerts WHERE status = 'resolved' AND resolved_at < $1::timestamptz",
            )
            .bind(&before)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
            StorePool::Sqlite(pool) => {
                sqlx::query("DELETE FROM alerts WHERE status = 'resolved' AND resolved_at < $1")
                    .bind(&before)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            }
        };
        match deleted {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(component = %self.name, deleted = n, "deleted resolved alerts past the store's retention")
            }
            Err(e) => tracing::warn!(component = %self.name, "cannot delete old alerts: {e}"),
        }
    }
}
