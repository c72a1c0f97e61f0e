//! A stateful processor whose input is partitioned among instances (a Kafka
//! consumer group): one processor and state per partition this instance
//! owns, each restored and checkpointed under its own key and fencing
//! token, and the output made from the partials of every partition,
//! whoever owns them.
//!
//! Ownership follows the batches: the first batch of a partition (or of a
//! new [`Shard::generation`], the source having been given the partition
//! again) takes the partition's fencing token, then restores its
//! checkpoint, so whatever the previous owner wrote before is restored and
//! nothing it writes after is accepted. A write refused that way means the
//! partition moved: its state here is dropped, and its batches are let go
//! unfolded (not acknowledged) until the source is given it again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::stateful::{fenced_refusals, StateKeeper, WriteState};
use super::{handle_result, next_tick, sleep_until, ticker, Output, IDLE_CHECKPOINT_AFTER};
use crate::checkpoint::{self, CheckpointStore, StoreError};
use crate::plugin::{BuildError, ComponentError, Processor, Shutdown};
use crate::record::{Assignments, Batch, Shard};
use crate::state::{ProcessorState, SavedState};
use crate::telemetry::{ComponentStats, Gauge};

/// Builds a fresh instance of the processor (one per partition owned, and
/// one to merge the partials into).
pub(crate) type Factory =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Box<dyn Processor>, BuildError>> + Send + Sync>;

/// How a partitioned processor keeps its partitions' state.
pub(crate) struct Partitioning {
    pub pipeline: String,
    /// What the sharing sources read now (see [`Assignments`]).
    pub assignments: Assignments,
    pub factory: Factory,
    /// The checkpoint store and interval; without one, state lives in
    /// memory only and the output merges only the partitions owned here.
    pub store: Option<(Arc<dyn CheckpointStore>, Duration)>,
}

/// The longest wait between attempts to take a partition's state over
/// while the store cannot give it.
const ACQUIRE_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// One partition owned here.
struct Owned {
    generation: u64,
    processor: Box<dyn Processor>,
    keeper: StateKeeper,
}

struct Partitions {
    name: String,
    setup: Partitioning,
    owned: BTreeMap<u32, Owned>,
    /// Partitions lost to another instance, with the generation they were
    /// lost in: batches of that generation are let go, not folded.
    lost: BTreeMap<u32, u64>,
    stats: Arc<ComponentStats>,
    owned_gauge: Arc<Gauge>,
    /// Reads the kind of state the partials hold.
    template: Box<dyn Processor>,
    /// The partitions with a partial in the store, as last listed.
    listed: Option<(Instant, BTreeSet<u32>)>,
}

/// How often the partials in the store are listed again (and at the end):
/// a partition whose first partial appears meanwhile is missing from the
/// document until then.
const RELIST_PARTIALS: Duration = Duration::from_secs(5);

pub(crate) async fn run_partitioned(
    name: String,
    setup: Partitioning,
    mut rx: mpsc::Receiver<Batch>,
    mut out: Output,
    stats: Arc<ComponentStats>,
    stopping: Shutdown,
) -> Result<(), ComponentError> {
    let template = (setup.factory)()
        .await
        .map_err(|e| ComponentError::Fatal(e.0))?;
    let interval = setup.store.as_ref().map(|(_, interval)| *interval);
    let mut ticks = ticker(template.tick_interval());
    let mut checkpoints = ticker(interval);
    let idle_after = interval.map(|interval| interval.min(IDLE_CHECKPOINT_AFTER));
    let owned_gauge = stats.gauge(
        "partitions_owned",
        "partitions of the input whose state this instance holds",
    );
    let mut parts = Partitions {
        name: name.clone(),
        setup,
        owned: BTreeMap::new(),
        lost: BTreeMap::new(),
        stats: stats.clone(),
        owned_gauge,
        template,
        listed: None,
    };
    let mut idle_at: Option<tokio::time::Instant> = None;
    loop {
        let idle = sleep_until(idle_at);
        let result = tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => {
                    stats.received(batch.len());
                    idle_at = idle_after.map(|after| tokio::time::Instant::now() + after);
                    parts.process(batch).await
                }
                None => break,
            },
            _ = next_tick(&mut ticks) => parts.tick(&mut out).await,
            _ = next_tick(&mut checkpoints) => {
                parts.checkpoint_all().await;
                Ok(())
            }
            _ = idle => {
                // At most four checkpoints of a partition an interval,
                // however bursty the input.
                idle_at = parts
                    .checkpoint_idle()
                    .await
                    .map(|wait| tokio::time::Instant::now() + wait);
                Ok(())
            }
        };
        handle_result(&name, &stats, result)?;
    }
    // Every partition kept here moves to the merged event time first, so
    // that finishing them (held events applied, silent workflows expired)
    // happens at the time one instance would finish at; and before the
    // last checkpoint, so that it holds what that move applied.
    let result = parts.merged_view(true).await.map(drop);
    parts.checkpoint_all().await;
    handle_result(&name, &stats, result)?;
    // On a stop asked for, a partition whose checkpoint holds it keeps its
    // held events held in its last partial too: the instance that takes it
    // over next restores them held, and the merged counts do not drop.
    let mut discard = Output::discard();
    for owned in parts.owned.values_mut() {
        let result = super::finish(
            owned.processor.as_mut(),
            &mut discard,
            &stopping,
            Some(&owned.keeper),
        )
        .await;
        handle_result(&name, &stats, result)?;
    }
    let result = parts.emit(&mut out, true).await;
    handle_result(&name, &stats, result)
}

impl Partitions {
    async fn process(&mut self, batch: Batch) -> Result<(), ComponentError> {
        let Some((source, shard)) = batch
            .positions()
            .and_then(|p| Some((p.origin.source.clone(), p.origin.shard?)))
        else {
            batch.fail();
            return Err(ComponentError::Transient(
                "a batch without a partition reached a processor whose state is kept per partition; it was not folded".into(),
            ));
        };
        if shard.released {
            self.release(shard).await;
            return Ok(());
        }
        // Generations only grow within a process: records of one already let
        // go, or older than the one held, are stale (queued before a
        // rebalance) and are not folded.
        let newest_seen = self
            .owned
            .get(&shard.id)
            .map(|o| o.generation)
            .max(self.lost.get(&shard.id).copied());
        if newest_seen.is_some_and(|g| shard.generation < g)
            || self.lost.get(&shard.id) == Some(&shard.generation)
        {
            batch.fail();
            return Ok(());
        }
        let owned = match self.owned.get(&shard.id) {
            Some(owned) if owned.generation == shard.generation => true,
            Some(_) => {
                // Given to us again: what we hold may be stale.
                self.let_go(shard.id, "the partition was assigned again");
                false
            }
            None => false,
        };
        if !owned && !self.setup.assignments.is_current(&source, shard) {
            // Revoked before its records got here: its new owner may hold
            // the token already, and must keep it.
            batch.fail();
            return Ok(());
        }
        if !owned {
            match self.acquire(&source, shard).await {
                Ok(None) => {
                    // Revoked while the store was away: not ours to take.
                    batch.fail();
                    return Ok(());
                }
                Ok(Some(owned)) => {
                    self.owned.insert(shard.id, owned);
                    self.lost.remove(&shard.id);
                    self.owned_gauge.set(self.owned.len() as i64);
                }
                Err(e) => {
                    batch.fail();
                    return Err(e);
                }
            }
        }
        let Some(owned) = self.owned.get_mut(&shard.id) else {
            return Ok(());
        };
        if batch.is_notice() {
            // Assigned: taken over above, before any of its records.
            return Ok(());
        }
        let (batch, admitted) = owned.keeper.admit(batch, &self.stats);
        let result = owned.processor.process(batch, &mut Output::discard()).await;
        owned.keeper.settle(admitted, result.is_ok());
        result
    }

    /// Takes partition `shard.id`: its fencing token, then its checkpoint.
    /// While the store cannot give them, tried again (the outage shown)
    /// for as long as `source` still reads that generation of it; `None`
    /// once it does not (taking the token then would take it from the
    /// partition's new owner).
    async fn acquire(
        &mut self,
        source: &str,
        shard: Shard,
    ) -> Result<Option<Owned>, ComponentError> {
        let mut wait = Duration::from_millis(250);
        let mut failing = false;
        loop {
            if !self.setup.assignments.is_current(source, shard) {
                return Ok(None);
            }
            let mut processor = (self.setup.factory)()
                .await
                .map_err(|e| ComponentError::Fatal(e.0))?;
            processor.follow_merged_time();
            let Some(state) = processor.state() else {
                return Err(ComponentError::Fatal(format!(
                    "{} keeps no state to keep per partition",
                    self.name
                )));
            };
            match StateKeeper::start_partition(
                &self.setup.pipeline,
                &self.name,
                self.setup.store.clone(),
                shard.id,
                state,
            )
            .await
            {
                Ok(keeper) => {
                    if failing {
                        self.stats.set_outage(None);
                    }
                    info!(component = %self.name, partition = shard.id, "took over the partition's state");
                    return Ok(Some(Owned {
                        generation: shard.generation,
                        processor,
                        keeper,
                    }));
                }
                Err(e) => {
                    if !failing {
                        warn!(component = %self.name, partition = shard.id, "cannot take over the partition's state ({e}); retrying while the source reads it");
                        failing = true;
                    }
                    self.stats.set_outage(Some(format!(
                        "cannot take over the state of partition {}: {e}",
                        shard.id
                    )));
                    self.stats.error(e);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(ACQUIRE_BACKOFF_MAX);
                }
            }
        }
    }

    /// The source gave partition `shard.id` up: its state is checkpointed
    /// (so its next owner reads little again) and dropped.
    async fn release(&mut self, shard: Shard) {
        let Some(owned) = self
            .owned
            .get_mut(&shard.id)
            .filter(|o| o.generation == shard.generation)
        else {
            return;
        };
        if let Some(state) = owned.processor.state() {
            owned.keeper.checkpoint(state, true, &self.stats).await;
        }
        self.write_partial(shard.id).await;
        self.let_go(shard.id, "revoked by the group");
    }

    /// Drops partition `id`'s state: what it held and had not checkpointed
    /// is not acknowledged, so the partition's next owner reads it again.
    fn let_go(&mut self, id: u32, why: &str) {
        if let Some(owned) = self.owned.remove(&id) {
            info!(component = %self.name, partition = id, "letting the partition go: {why}");
            self.lost.insert(id, owned.generation);
        }
        self.owned_gauge.set(self.owned.len() as i64);
    }

    /// Checkpoints every partition with something held (waiting for the
    /// writes), and lets go of those another instance took.
    async fn checkpoint_all(&mut self) {
        self.checkpoint_where(|_| true).await;
    }

    /// Checkpoints the partitions whose last write is a quarter interval
    /// old; how long until the next of the others may be, if any waits.
    async fn checkpoint_idle(&mut self) -> Option<Duration> {
        let waits: Vec<Duration> = self
            .owned
            .values()
            .map(|o| o.keeper.idle_wait())
            .filter(|wait| !wait.is_zero())
            .collect();
        self.checkpoint_where(|keeper| keeper.idle_wait().is_zero())
            .await;
        waits.into_iter().min()
    }

    /// Checkpoints the partitions whose keeper `due` picks, and lets go of
    /// those another instance took.
    async fn checkpoint_where(&mut self, due: impl Fn(&StateKeeper) -> bool) {
        let mut moved = Vec::new();
        for (&id, owned) in &mut self.owned {
            if !due(&owned.keeper) {
                continue;
            }
            let Some(state) = owned.processor.state() else {
                continue;
            };
            owned.keeper.checkpoint(state, true, &self.stats).await;
            if owned.keeper.write_state() == WriteState::FencedOut {
                moved.push(id);
            }
        }
        for id in moved {
            self.let_go(id, "another instance took it over");
        }
    }

    /// Periodic work of every partition (its output dropped: the merged
    /// output is the one sent), then the partials written and merged.
    async fn tick(&mut self, out: &mut Output) -> Result<(), ComponentError> {
        let mut discard = Output::discard();
        for owned in self.owned.values_mut() {
            owned.processor.tick(&mut discard).await?;
        }
        self.emit(out, false).await
    }

    /// Writes the partials of the partitions owned here, then sends what
    /// the merge of every partition's partial gives (`last`: the final
    /// output, from a fresh listing of the partials).
    async fn emit(&mut self, out: &mut Output, last: bool) -> Result<(), ComponentError> {
        let mut view = self.merged_view(last).await?;
        view.finish(out).await
    }

    /// Writes the partials of the partitions owned here, merges every
    /// partition's partial into a fresh processor, and moves the partitions
    /// kept here to the merged event time.
    async fn merged_view(&mut self, last: bool) -> Result<Box<dyn Processor>, ComponentError> {
        let partials = match self.setup.store.clone() {
            Some((store, _)) => {
                self.write_partials().await;
                self.read_partials(store.as_ref(), last).await
            }
            None => self.local_partials(),
        };
        let mut view = (self.setup.factory)()
            .await
            .map_err(|e| ComponentError::Fatal(e.0))?;
        if let Some(state) = view.state() {
            for (id, saved) in partials {
                if let Err(e) = state.merge(saved) {
                    self.stats
                        .error(format!("cannot merge the partial of partition {id}: {e}"));
                }
            }
            if let Some(t) = state.settle_merged() {
                for owned in self.owned.values_mut() {
                    if let Some(partition) = owned.processor.state() {
                        partition.follow_time(t);
                    }
                }
            }
        }
        Ok(view)
    }

    async fn write_partials(&mut self) {
        let ids: Vec<u32> = self.owned.keys().copied().collect();
        for id in ids {
            self.write_partial(id).await;
        }
    }

    /// Writes partition `id`'s partial; lets the partition go if another
    /// instance owns it now.
    async fn write_partial(&mut self, id: u32) {
        let Some(owned) = self.owned.get_mut(&id) else {
            return;
        };
        let Some(store) = owned.keeper.store() else {
            return;
        };
        let Some(state) = owned.processor.state() else {
            return;
        };
        let format = state.format();
        let Some(partial) = state.partial() else {
            return;
        };
        let key = checkpoint::partial_key(&self.setup.pipeline, &self.name, id);
        let written = checkpoint::write(
            store.as_ref(),
            &key,
            format,
            owned.keeper.marks(),
            &partial,
            &mut Default::default(),
            &mut Vec::new(),
        )
        .await;
        match written {
            Ok(_) => {}
            Err(e @ StoreError::Fenced { .. }) => {
                fenced_refusals(&self.stats).inc();
                warn!(component = %self.name, partition = id, "partial {e}");
                self.let_go(id, "another instance took it over");
            }
            Err(e) => self
                .stats
                .error(format!("cannot write the partial of partition {id}: {e}")),
        }
    }

    /// Every partition's latest partial in the store, by partition.
    async fn read_partials(
        &mut self,
        store: &dyn CheckpointStore,
        relist: bool,
    ) -> Vec<(u32, SavedState)> {
        let prefix = checkpoint::partial_prefix(&self.setup.pipeline, &self.name);
        // Listing scans the store's keys (SCAN on Redis, whatever else it
        // holds), so it is done now and then: a topic's partitions do not
        // change (a change is refused), and those owned here are added.
        if relist
            || self
                .listed
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= RELIST_PARTIALS)
        {
            match store.keys_with_prefix(&prefix).await {
                Ok(keys) => {
                    let ids = keys
                        .iter()
                        .filter_map(|key| key.strip_prefix(&prefix)?.parse::<u32>().ok())
                        .collect();
                    self.listed = Some((Instant::now(), ids));
                }
                Err(e) => self.stats.error(format!("cannot list the partials: {e}")),
            }
        }
        let mut ids: BTreeSet<u32> = self
            .listed
            .as_ref()
            .map(|(_, ids)| ids.clone())
            .unwrap_or_default();
        ids.extend(self.owned.keys());
        let Some(kind) = self.template.state() else {
            return Vec::new();
        };
        let mut partials = Vec::new();
        for id in ids {
            let key = checkpoint::partial_key(&self.setup.pipeline, &self.name, id);
            match checkpoint::load_saved(store, &key, &mut *kind).await {
                Ok(Some((saved, _))) => partials.push((id, saved)),
                Ok(None) => {}
                Err(e) => self.stats.error(format!("cannot read {key}: {e}")),
            }
        }
        partials
    }

    /// Without a store: the partials of the partitions owned here.
    fn local_partials(&mut self) -> Vec<(u32, SavedState)> {
        self.owned
            .iter_mut()
            .filter_map(|(&id, owned)| {
                let state: &mut dyn ProcessorState = owned.processor.state()?;
                let version = state.format().version;
                let partial = state.partial()?;
                Some((
                    id,
                    SavedState {
                        version,
                        body: partial.body,
                        parts: partial
                            .parts
                            .into_iter()
                            .filter_map(|p| Some((p.id, p.bytes?)))
                            .collect(),
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::state::{SavedState, Snapshot, StateError, StateFormat};

    /// A checkpoint store that cannot be reached.
    struct Away;

    #[async_trait]
    impl CheckpointStore for Away {
        async fn load(&self, _key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Err(StoreError::Unavailable("connection refused".into()))
        }
        async fn save(&self, _key: &str, _bytes: &[u8]) -> Result<(), StoreError> {
            Err(StoreError::Unavailable("connection refused".into()))
        }
        async fn delete(&self, _key: &str) -> Result<(), StoreError> {
            Err(StoreError::Unavailable("connection refused".into()))
        }
        async fn keys_with_prefix(&self, _prefix: &str) -> Result<Vec<String>, StoreError> {
            Err(StoreError::Unavailable("connection refused".into()))
        }
        async fn take_fence(&self, _fence_key: &str) -> Result<u64, StoreError> {
            Err(StoreError::Unavailable("connection refused".into()))
        }
    }

    /// The smallest state a partition can keep.
    #[derive(Default)]
    struct Nothing;

    impl ProcessorState for Nothing {
        fn format(&self) -> StateFormat {
            StateFormat {
                kind: "nothing",
                version: 1,
            }
        }
        fn snapshot(&mut self, _stored: &dyn Fn(u64) -> bool) -> Snapshot {
            Snapshot::default()
        }
        fn restore(&mut self, _saved: SavedState) -> Result<(), StateError> {
            Ok(())
        }
        fn merge(&mut self, _saved: SavedState) -> Result<(), StateError> {
            Ok(())
        }
        fn describe(&self) -> String {
            "nothing".into()
        }
    }

    #[derive(Default)]
    struct Keeps(Nothing);

    #[async_trait]
    impl Processor for Keeps {
        async fn process(
            &mut self,
            _batch: Batch,
            _out: &mut Output,
        ) -> Result<(), ComponentError> {
            Ok(())
        }
        fn state(&mut self) -> Option<&mut dyn ProcessorState> {
            Some(&mut self.0)
        }
    }

    /// While the store is away, taking a partition over is retried (the
    /// outage shown) rather than failing the pipeline, and given up once
    /// the source no longer reads that assignment: taking the token then
    /// would take it from the partition's new owner.
    #[tokio::test]
    async fn a_takeover_waits_out_the_store_while_the_partition_is_read_and_no_longer() {
        let assignments = Assignments::default();
        let shard = Shard {
            id: 3,
            generation: 1,
            released: false,
        };
        assignments.assigned("log", shard.id, shard.generation);
        let factory: Factory =
            Arc::new(|| Box::pin(async { Ok(Box::new(Keeps::default()) as Box<dyn Processor>) }));
        let stats = Arc::new(ComponentStats::default());
        let mut parts = Partitions {
            name: "metrics".into(),
            setup: Partitioning {
                pipeline: "p".into(),
                assignments: assignments.clone(),
                factory,
                store: Some((Arc::new(Away), Duration::from_secs(1))),
            },
            owned: BTreeMap::new(),
            lost: BTreeMap::new(),
            stats: stats.clone(),
            owned_gauge: stats.gauge("partitions_owned", "test"),
            template: Box::new(Keeps::default()),
            listed: None,
        };
        let revoke = {
            let (assignments, stats) = (assignments.clone(), stats.clone());
            async move {
                // Attempts at 0, 0.25, 0.75 and 1.75 s by then.
                tokio::time::sleep(Duration::from_secs(2)).await;
                assert!(stats
                    .outage()
                    .is_some_and(|o| o.contains("partition 3") && o.contains("refused")));
                assignments.revoked("log", shard.id, shard.generation);
            }
        };
        let (taken, ()) = tokio::join!(parts.acquire("log", shard), revoke);
        assert!(matches!(taken, Ok(None)), "taken over, or failed");
        assert!(stats.snapshot().errors >= 3, "not retried");
    }
}
