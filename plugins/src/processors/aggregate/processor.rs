//! The running `aggregate`: folds batches, emits documents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flowpulse_core::ack::AckHandle;
use flowpulse_core::checkpoint::CheckpointStore;
use flowpulse_core::plugin::{ComponentError, Processor};
use flowpulse_core::record::{Batch, Record};
use flowpulse_core::runtime::Output;
use flowpulse_core::telemetry::ComponentStats;

use super::config::AggregateConfig;
use super::snapshot::{epoch_key, snapshot_split};
use super::state::AggregateState;

/// Periodic snapshots to a checkpoint store. What a snapshot has folded
/// counts as taken once it is written: the acknowledgement handles of the
/// folded batches are held until then.
pub struct Checkpointing {
    store: Arc<dyn CheckpointStore>,
    key: String,
    interval: Duration,
    last: Instant,
    held: Vec<AckHandle>,
    changed: bool,
    failing: bool,
    /// Dedup epochs already in the store.
    stored_epochs: std::collections::BTreeSet<u64>,
}

impl Drop for Checkpointing {
    /// Handles still held here were folded into no written snapshot: their
    /// batches must not count as delivered (they come again after a restart).
    fn drop(&mut self) {
        for handle in &self.held {
            handle.fail();
        }
    }
}

impl Checkpointing {
    /// Snapshots to `key` of `store` every `interval`.
    pub fn new(store: Arc<dyn CheckpointStore>, key: String, interval: Duration) -> Checkpointing {
        Checkpointing {
            store,
            key,
            interval,
            last: Instant::now(),
            held: Vec::new(),
            changed: false,
            failing: false,
            stored_epochs: Default::default(),
        }
    }

    /// Notes the dedup epochs a restored snapshot already has in the store.
    pub fn with_stored_epochs(mut self, stored: std::collections::BTreeSet<u64>) -> Checkpointing {
        self.stored_epochs = stored;
        self
    }

    /// Writes new epochs, then the snapshot naming them, then deletes the
    /// epochs no longer named: a crash at any point leaves a complete
    /// snapshot in the store.
    async fn write(&mut self, state: &AggregateState) -> Result<usize, String> {
        let (main, fresh) = snapshot_split(state, &self.stored_epochs);
        let mut bytes = main.len();
        for (order, epoch) in fresh {
            self.store
                .save(&epoch_key(&self.key, order), &epoch)
                .await?;
            bytes += epoch.len();
            self.stored_epochs.insert(order);
        }
        self.store.save(&self.key, &main).await?;
        let live = state.dedup_epochs();
        let retired: Vec<u64> = self.stored_epochs.difference(&live).copied().collect();
        for order in retired {
            self.store.delete(&epoch_key(&self.key, order)).await?;
            self.stored_epochs.remove(&order);
        }
        Ok(bytes)
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The processor around an [`AggregateState`].
pub struct Aggregate {
    state: AggregateState,
    interval: Duration,
    min_interval: Option<Duration>,
    /// Something changed since the last document.
    dirty: bool,
    /// An event arrived since the last tick (the source is not idle).
    active: bool,
    last_emit: Instant,
    last_tick: Instant,
    stats: Arc<ComponentStats>,
    checkpointing: Option<Checkpointing>,
}

impl Aggregate {
    /// A processor with `config`'s emission settings around `state`.
    pub fn new(
        config: &AggregateConfig,
        state: AggregateState,
        stats: Arc<ComponentStats>,
        checkpointing: Option<Checkpointing>,
    ) -> Aggregate {
        Aggregate {
            state,
            interval: config.interval,
            min_interval: config.min_interval,
            dirty: false,
            active: false,
            last_emit: Instant::now(),
            last_tick: Instant::now(),
            stats,
            checkpointing,
        }
    }

    /// Writes a snapshot if due (or `force`d), then releases the held
    /// acknowledgements. A failed write keeps them held and is retried.
    async fn checkpoint(&mut self, force: bool) {
        let Some(c) = self.checkpointing.as_mut() else {
            return;
        };
        // Scheduled from the start of the last write, with a little slack, so
        // a tick arriving a hair early does not double the real period.
        if !c.changed || (!force && c.last.elapsed() + c.interval / 10 < c.interval) {
            return;
        }
        let started = Instant::now();
        match c.write(&self.state).await {
            Ok(bytes) => {
                tracing::debug!(
                    key = %c.key,
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    released = c.held.len(),
                    "checkpoint written"
                );
                c.held.clear();
                c.changed = false;
                c.last = started;
                if c.failing {
                    tracing::info!(key = %c.key, "checkpoint written again");
                    c.failing = false;
                }
            }
            Err(e) => {
                self.stats
                    .error(format!("cannot write checkpoint {}: {e}", c.key));
                if !c.failing {
                    tracing::warn!(key = %c.key, "cannot write checkpoint ({e}); holding acknowledgements and retrying");
                    c.failing = true;
                }
            }
        }
    }

    async fn emit(&mut self, out: &mut Output) {
        self.state.expire_stale();
        let document = self.state.document(
            flowpulse_core::event::format_rfc3339_ms(wall_ms()),
            self.interval.as_millis() as u64,
        );
        out.send_one(Record::Metrics(Arc::new(document))).await;
        self.dirty = false;
        self.last_emit = Instant::now();
    }
}

#[async_trait]
impl Processor for Aggregate {
    async fn process(&mut self, batch: Batch, out: &mut Output) -> Result<(), ComponentError> {
        let now = wall_ms();
        let before = self.state.accounting();
        self.state
            .fold_all(batch.records().iter().filter_map(Record::as_event), now);
        for record in batch.records() {
            if let Record::Custom(custom) = record {
                self.state.set_custom(&custom.name, &custom.value);
            }
        }
        let after = self.state.accounting();
        self.stats
            .ignored((after.duplicates - before.duplicates) as usize);
        self.dirty = true;
        self.active = true;
        match self.checkpointing.as_mut() {
            Some(c) => {
                let mut batch = batch;
                c.held.extend(batch.take_acks());
                c.changed = true;
            }
            // Without a checkpoint store, what is folded counts as taken now:
            // `batch` (and its acknowledgement handles) is dropped here.
            None => drop(batch),
        }
        if let Some(min) = self.min_interval {
            if self.last_emit.elapsed() >= min {
                self.emit(out).await;
            }
        }
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        let emit = self.min_interval.unwrap_or(self.interval);
        Some(match &self.checkpointing {
            Some(c) => emit.min(c.interval),
            None => emit,
        })
    }

    async fn tick(&mut self, out: &mut Output) -> Result<(), ComponentError> {
        let elapsed = self.last_tick.elapsed();
        self.last_tick = Instant::now();
        if !self.active {
            // A live source is idle: event time moves on with the wall clock.
            self.state.advance(elapsed.as_millis() as i64);
        }
        self.active = false;
        // A tick may fire a hair early; 5% slack keeps emissions on the interval.
        let due = self.last_emit.elapsed() + self.interval / 20 >= self.interval;
        if due || (self.min_interval.is_some() && self.dirty) {
            self.emit(out).await;
        }
        self.checkpoint(false).await;
        Ok(())
    }

    async fn finish(&mut self, out: &mut Output) -> Result<(), ComponentError> {
        // The checkpoint keeps held events held: they are applied on restore.
        self.checkpoint(true).await;
        self.state.flush();
        self.emit(out).await;
        Ok(())
    }
}
