//! The running `aggregate`: folds batches, emits documents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flowpulse_core::plugin::{ComponentError, Processor};
use flowpulse_core::record::{Batch, Record};
use flowpulse_core::runtime::Output;
use flowpulse_core::state::ProcessorState;
use flowpulse_core::telemetry::ComponentStats;

use super::config::AggregateConfig;
use super::state::AggregateState;

pub(super) fn wall_ms() -> i64 {
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
    /// Kept for one partition: T comes from the merge, and only the merge
    /// is emitted.
    follows_merge: bool,
    stats: Arc<ComponentStats>,
}

impl Aggregate {
    /// A processor with `config`'s emission settings around `state`.
    pub fn new(
        config: &AggregateConfig,
        state: AggregateState,
        stats: Arc<ComponentStats>,
    ) -> Aggregate {
        Aggregate {
            state,
            interval: config.interval,
            min_interval: config.min_interval,
            dirty: false,
            active: false,
            last_emit: Instant::now(),
            last_tick: Instant::now(),
            follows_merge: false,
            stats,
        }
    }

    #[cfg(test)]
    pub(super) fn state_ref(&self) -> &AggregateState {
        &self.state
    }

    /// What emitting settles in the state, without the document: a
    /// partition's own document is never sent.
    fn settle(&mut self) {
        self.state.expire_stale();
        self.state.seal_history();
        self.dirty = false;
        self.last_emit = Instant::now();
    }

    async fn emit(&mut self, out: &mut Output) {
        self.settle();
        let document = self.state.document(
            flowpulse_core::event::format_rfc3339_ms(wall_ms()),
            self.interval.as_millis() as u64,
        );
        out.send_one(Record::Metrics(Arc::new(document))).await;
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
        self.state.note_active(now);
        if self.follows_merge {
            return Ok(());
        }
        if let Some(min) = self.min_interval {
            if self.last_emit.elapsed() >= min {
                self.emit(out).await;
            }
        }
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(self.min_interval.unwrap_or(self.interval))
    }

    async fn tick(&mut self, out: &mut Output) -> Result<(), ComponentError> {
        let elapsed = self.last_tick.elapsed();
        self.last_tick = Instant::now();
        if self.follows_merge {
            self.active = false;
            self.settle();
            return Ok(());
        }
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
        Ok(())
    }

    async fn finish(&mut self, out: &mut Output) -> Result<(), ComponentError> {
        self.state.flush();
        if self.follows_merge {
            self.settle();
        } else {
            self.emit(out).await;
        }
        Ok(())
    }

    /// Held events stay held: the checkpoint just written keeps them so,
    /// and the restarted pipeline applies them in order as event time
    /// passes them. Flushed here, they would show in this last document and
    /// then be missing from the restart's first ones.
    async fn finish_stopped(&mut self, out: &mut Output) -> Result<(), ComponentError> {
        if self.follows_merge {
            self.settle();
        } else {
            self.emit(out).await;
        }
        Ok(())
    }

    fn follow_merged_time(&mut self) {
        self.follows_merge = true;
    }

    fn state(&mut self) -> Option<&mut dyn ProcessorState> {
        Some(&mut self.state)
    }
}
