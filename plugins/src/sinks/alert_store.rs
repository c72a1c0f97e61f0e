//! `alert_store`: keeps every alert notice in the store's `alerts` and
//! `alert_history` tables (CONTRACT §5), one transaction per notice. A
//! database outage is ridden out in order: the batch is retried with
//! backoff (the outage logged once and shown in `/health`) and its handles
//! are released only once it is committed, so `alert_rules` holds what is
//! not stored yet. Hourly, resolved alerts older than the store's
//! `retention` are deleted with their history.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flowpulse_core::outage::Outage;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, FieldError, PluginDescriptor, Shutdown, Sink,
    SinkConfig, ValidateContext,
};
use flowpulse_core::record::{Batch, Record, RecordKinds};
use flowpulse_core::telemetry::ComponentStats;
use serde::Deserialize;

use crate::stores::{alerts, Store, StorePool, Stores};

/// How often resolved alerts past `retention` are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60 * 60);

/// `[sinks.NAME] type = "alert_store"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertStoreConfig {
    /// The `[stores.NAME]` to write to.
    pub store: String,
}

inventory::submit! {
    PluginDescriptor::sink::<AlertStoreConfig>("alert_store", "Keeps every alert notice and its history in a PostgreSQL or SQLite store")
}

#[async_trait]
impl SinkConfig for AlertStoreConfig {
    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        flowpulse_core::config::unknown_store(cx.stores, &self.store)
            .map(|e| FieldError::new("store", e))
            .into_iter()
            .collect()
    }

    fn inputs(&self) -> RecordKinds {
        RecordKinds::ALERTS
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        let store = Stores::of(cx)
            .open(cx, &self.store)
            .map_err(|e| BuildError(e.to_string()))?;
        Ok(Box::new(AlertStoreSink {
            outage: Outage::new("the database").reporting_to(Arc::clone(&cx.stats)),
            name: cx.name.clone(),
            stats: Arc::clone(&cx.stats),
            shutdown: cx.shutdown.clone(),
            last_sweep: None,
            stored: cx
                .stats
                .counter("notices_stored", "Alert notices committed to the store."),
            store,
        }))
    }
}

struct AlertStoreSink {
    store: Arc<Store>,
    outage: Outage,
    name: String,
    stats: Arc<ComponentStats>,
    shutdown: Shutdown,
    last_sweep: Option<Instant>,
    stored: Arc<flowpulse_core::telemetry::Counter>,
}

impl AlertStoreSink {
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

#[async_trait]
impl Sink for AlertStoreSink {
    async fn write(&mut self, batch: &Batch) -> Result<(), ComponentError> {
        let notices: Vec<_> = batch
            .records()
            .iter()
            .filter_map(|r| match r {
                Record::Alert(alert) => Some(alert),
                _ => None,
            })
            .collect();
        if notices.is_empty() {
            return Ok(());
        }
        if !self.store.is_ready() {
            tokio::select! {
                () = self.store.wait_ready() => {}
                () = self.shutdown.cancelled() => {
                    return Err(ComponentError::Transient(format!(
                        "store \"{}\" never became ready; {} notices not stored (alert_rules sends them again)",
                        self.store.name,
                        notices.len()
                    )));
                }
            }
        }
        let mut next = 0;
        while next < notices.len() {
            match alerts::store_notice(&self.store, notices[next]).await {
                Ok(()) => {
                    self.outage.recovered(&self.name, &self.store.settings.url);
                    self.stored.inc();
                    next += 1;
                }
                Err(e) => {
                    let wait = self.outage.failed(&self.name, &self.store.settings.url, &e);
                    self.stats
                        .error(format!("cannot store an alert notice: {e}"));
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.shutdown.cancelled() => {
                            return Err(ComponentError::Transient(format!(
                                "{} alert notices not stored at shutdown (alert_rules sends them again): {e}",
                                notices.len() - next
                            )));
                        }
                    }
                }
            }
        }
        self.sweep().await;
        Ok(())
    }
}
