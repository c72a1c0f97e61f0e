//! What the runtime does for a stateful processor: skipping what it has
//! already folded (by source position), holding acknowledgements until a
//! checkpoint holding them is durable, and writing checkpoints.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::ack::AckHandle;
use crate::checkpoint::{self, CheckpointStore, PositionKey, PositionMap};
use crate::config::CheckpointSettings;
use crate::record::Batch;
use crate::state::ProcessorState;
use crate::telemetry::ComponentStats;

/// The counter of writes the store refused because another instance owns
/// the state now.
pub(crate) fn fenced_refusals(stats: &ComponentStats) -> Arc<crate::telemetry::Counter> {
    stats.counter(
        "fenced_writes_refused",
        "writes of a partition's state refused because another instance took it over",
    )
}

/// What the runtime keeps of a batch while a stateful processor handles
/// it: its acknowledgement handles and the position it reaches.
pub(crate) struct Admitted {
    acks: Vec<AckHandle>,
    marks: Marks,
}

/// The positions a batch reaches: the newest of its records, and where its
/// source read its own partition up to, when the source says.
#[derive(Default)]
struct Marks {
    folded: Option<(PositionKey, u128)>,
    resume: Option<(PositionKey, u128)>,
}

impl Marks {
    fn of(batch: &Batch) -> Marks {
        let Some(positions) = batch.positions() else {
            return Marks::default();
        };
        let input = batch.via().unwrap_or_default();
        let source = &positions.origin.source;
        Marks {
            folded: positions.offsets.iter().copied().max().map(|newest| {
                let key = PositionKey {
                    input: input.to_owned(),
                    source: source.clone(),
                    partition: positions.origin.partition.clone(),
                };
                (key, newest)
            }),
            resume: positions.resume.as_ref().map(|(partition, offset)| {
                (PositionKey::resume(input, source, partition), *offset)
            }),
        }
    }

    /// Moves `map` on to these positions.
    fn raise(&self, map: &mut PositionMap) {
        for (key, offset) in self.folded.iter().chain(&self.resume) {
            let mark = map.entry(key.clone()).or_insert(*offset);
            *mark = (*mark).max(*offset);
        }
    }
}

/// The runtime's side of one stateful processor.
pub(crate) struct StateKeeper {
    name: String,
    /// The largest offset processed per position key (restored, then moved
    /// on by every batch processed).
    marks: PositionMap,
    /// Batches processed this run.
    processed: u64,
    skipped: u64,
    checkpoint: Option<Checkpointer>,
}

/// What became of the last checkpoint write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteState {
    /// Written, or not yet tried.
    Fine,
    /// It failed; retried at the next.
    Failing,
    /// Refused: another instance took the state's fencing token since.
    FencedOut,
}

/// Periodic checkpoints to a store.
struct Checkpointer {
    store: Arc<dyn CheckpointStore>,
    key: String,
    interval: Duration,
    last: Instant,
    /// Positions of the last checkpoint written.
    durable: PositionMap,
    /// Parts the store holds.
    stored: BTreeSet<u64>,
    legacy_keys: Vec<String>,
    /// Batches processed since the last checkpoint that covered them.
    held: VecDeque<Held>,
    failing: WriteState,
    writing: Option<Writing>,
    /// When the last write started, whatever became of it.
    last_attempt: Instant,
    /// The state changed by itself ([`ProcessorState::changed_by_itself`])
    /// and no write since has been durable: a failed one is retried.
    self_change: bool,
}

struct Held {
    seq: u64,
    acks: Vec<AckHandle>,
    marks: Marks,
}

impl Drop for Checkpointer {
    /// Handles still held were folded into no written checkpoint: their
    /// batches must not count as delivered (they come again after a restart).
    fn drop(&mut self) {
        for held in &self.held {
            held.acks.iter().for_each(AckHandle::fail);
        }
    }
}

impl StateKeeper {
    /// The keeper of processor `name`: without a store, what is processed
    /// counts as taken at once; with one, the state is restored from it.
    pub async fn start(
        pipeline: &str,
        name: &str,
        settings: Option<&CheckpointSettings>,
        state: &mut dyn ProcessorState,
    ) -> Result<StateKeeper, String> {
        let mut keeper = StateKeeper {
            name: name.to_owned(),
            marks: PositionMap::new(),
            processed: 0,
            skipped: 0,
            checkpoint: None,
        };
        let Some(settings) = settings else {
            return Ok(keeper);
        };
        let store = checkpoint::open(&settings.url)
            .await
            .map_err(|e| e.to_string())?;
        let key = checkpoint::checkpoint_key(pipeline, name, 0);
        keeper
            .restore_from(store, key, settings.interval, state)
            .await?;
        Ok(keeper)
    }

    /// The keeper of one partition of processor `name`'s state, kept in
    /// `store` (every `interval`) under a fencing token taken now, before
    /// the state is restored: whatever the previous owner wrote before that
    /// is restored, and nothing it tries after is accepted. Without a
    /// store, the partition's state lives in memory only.
    pub async fn start_partition(
        pipeline: &str,
        name: &str,
        store: Option<(Arc<dyn CheckpointStore>, Duration)>,
        partition: u32,
        state: &mut dyn ProcessorState,
    ) -> Result<StateKeeper, String> {
        let mut keeper = StateKeeper {
            name: format!("{name}[{partition}]"),
            marks: PositionMap::new(),
            processed: 0,
            skipped: 0,
            checkpoint: None,
        };
        let Some((store, interval)) = store else {
            return Ok(keeper);
        };
        let key = checkpoint::checkpoint_key(pipeline, name, partition);
        let fence_key = checkpoint::fence_key(&key);
        let token = store
            .take_fence(&fence_key)
            .await
            .map_err(|e| e.to_string())?;
        let fenced: Arc<dyn CheckpointStore> = Arc::new(checkpoint::FencedStore::new(
            store,
            checkpoint::Fence {
                key: fence_key,
                token,
            },
        ));
        debug!(component = %name, partition, token, "took the partition's fencing token");
        if let Err(e) = fenced
            .save(
                &checkpoint::owner_key(&key),
                checkpoint::instance_label().as_bytes(),
            )
            .await
        {
            warn!(component = %name, partition, "cannot record this instance as the partition's owner: {e}");
        }
        keeper.restore_from(fenced, key, interval, state).await?;
        Ok(keeper)
    }

    /// The store its checkpoints go to (fenced for a partition's keeper).
    pub fn store(&self) -> Option<Arc<dyn CheckpointStore>> {
        self.checkpoint.as_ref().map(|c| c.store.clone())
    }

    /// What became of the last checkpoint write.
    pub fn write_state(&self) -> WriteState {
        self.checkpoint
            .as_ref()
            .map_or(WriteState::Fine, |c| c.failing)
    }

    /// Whether a written checkpoint holds everything processed so far: the
    /// last write succeeded, none is under way, and nothing was folded or
    /// changed since.
    pub fn is_durable(&self) -> bool {
        self.checkpoint.as_ref().is_some_and(|c| {
            c.failing == WriteState::Fine
                && c.writing.is_none()
                && c.held.is_empty()
                && !c.self_change
        })
    }

    /// The positions processed so far.
    pub fn marks(&self) -> &PositionMap {
        &self.marks
    }

    /// Restores `state` from the checkpoint under `key` of `store` and
    /// checkpoints there every `interval` from now on.
    async fn restore_from(
        &mut self,
        store: Arc<dyn CheckpointStore>,
        key: String,
        interval: Duration,
        state: &mut dyn ProcessorState,
    ) -> Result<(), String> {
        let name = self.name.clone();
        let restored = checkpoint::load(store.as_ref(), &key, state)
            .await
            .map_err(|e| e.to_string())?;
        let restored = match restored {
            Some(restored) => {
                info!(
                    component = %name,
                    key = %key,
                    bytes = restored.bytes,
                    positions = restored.positions.len(),
                    "restored state from checkpoint: {}",
                    state.describe()
                );
                restored
            }
            None => Default::default(),
        };
        match checkpoint::sweep(store.as_ref(), &key, &restored.parts).await {
            Ok(0) => {}
            Ok(n) => {
                info!(component = %name, key = %key, parts = n, "deleted parts a crash left behind")
            }
            Err(e) => {
                warn!(component = %name, key = %key, "cannot sweep leftover checkpoint parts: {e}")
            }
        }
        self.marks = restored.positions.clone();
        self.checkpoint = Some(Checkpointer {
            store,
            key,
            interval,
            last: Instant::now(),
            durable: restored.positions,
            stored: restored.parts,
            legacy_keys: restored.legacy_keys,
            held: VecDeque::new(),
            failing: WriteState::Fine,
            writing: None,
            last_attempt: Instant::now(),
            self_change: false,
        });
        Ok(())
    }

    /// How often checkpoints are due, if a store is configured.
    pub fn interval(&self) -> Option<Duration> {
        self.checkpoint.as_ref().map(|c| c.interval)
    }

    /// How long until a checkpoint ahead of the interval (the input paused)
    /// may be started: at most one every quarter interval, counted from the
    /// last attempt, so a store that is down is not retried at every pause.
    pub fn idle_wait(&self) -> Duration {
        self.checkpoint.as_ref().map_or(Duration::ZERO, |c| {
            (c.interval / 4).saturating_sub(c.last_attempt.elapsed())
        })
    }

    /// Takes the acknowledgement handles out of `batch` and leaves out its
    /// records at or before the position already processed from their
    /// source partition (redelivered after a restart, however long ago).
    pub fn admit(&mut self, mut batch: Batch, stats: &ComponentStats) -> (Batch, Admitted) {
        let acks = batch.take_acks();
        let marks = Marks::of(&batch);
        let (Some(positions), Some((key, _))) = (batch.positions(), &marks.folded) else {
            return (batch, Admitted { acks, marks });
        };
        // The common case, a batch wholly past the mark, goes through as is.
        let Some(&mark) = self
            .marks
            .get(key)
            .filter(|&&mark| positions.offsets.iter().any(|&o| o <= mark))
        else {
            return (batch, Admitted { acks, marks });
        };
        let key = key.clone();
        let before = batch.len();
        let fresh: Vec<bool> = positions.offsets.iter().map(|&o| o > mark).collect();
        let batch = batch.retain(|i, _| fresh[i]);
        let skipped = (before - batch.len()) as u64;
        if skipped > 0 {
            if self.skipped == 0 {
                info!(component = %self.name, input = %key.input, partition = %key.partition, "skipping redelivered records already folded into the checkpoint");
            }
            self.skipped += skipped;
            stats.ignored(skipped as usize);
        }
        (batch, Admitted { acks, marks })
    }

    /// Settles a batch once the processor has handled it: on success its
    /// position counts as processed and its handles are held for the next
    /// checkpoint (or released at once without a store); on failure the
    /// handles fail, so the source does not acknowledge it.
    pub fn settle(&mut self, admitted: Admitted, ok: bool) {
        let Admitted { acks, marks } = admitted;
        if !ok {
            acks.iter().for_each(AckHandle::fail);
            return;
        }
        self.processed += 1;
        marks.raise(&mut self.marks);
        match self.checkpoint.as_mut() {
            Some(c) => c.held.push_back(Held {
                seq: self.processed,
                acks,
                marks,
            }),
            // Without a store, what is folded counts as taken now.
            None => drop(acks),
        }
    }

    /// Waits for the checkpoint write under way to finish and settles it,
    /// so the batches it covers are released as soon as it is durable
    /// rather than at the next batch or tick (a drained input has nothing
    /// pending moments after its last entry). Never finishes without a
    /// write under way. Cancel-safe: settling happens in the poll that sees
    /// the write finish.
    pub async fn write_finished(&mut self, stats: &ComponentStats) {
        let Some(c) = self.checkpoint.as_mut() else {
            return std::future::pending().await;
        };
        let Some(writing) = c.writing.as_mut() else {
            return std::future::pending().await;
        };
        let outcome = (&mut writing.task).await;
        if let Some(writing) = c.writing.take() {
            c.settle(writing, outcome, stats);
        }
    }

    /// Writes a checkpoint if one is due (or `force`d) and something is
    /// held. The write runs beside the processor, which goes on folding; the
    /// handles it covers are released once it is durable (`force` also waits
    /// for that). A failed write keeps them held and is retried at the next.
    pub async fn checkpoint(
        &mut self,
        state: &mut dyn ProcessorState,
        force: bool,
        stats: &ComponentStats,
    ) {
        self.write_checkpoint(state, force, force, stats).await;
    }

    /// Starts a checkpoint now, without waiting for it (the input paused).
    pub async fn checkpoint_now(&mut self, state: &mut dyn ProcessorState, stats: &ComponentStats) {
        self.write_checkpoint(state, true, false, stats).await;
    }

    async fn write_checkpoint(
        &mut self,
        state: &mut dyn ProcessorState,
        force: bool,
        wait: bool,
        stats: &ComponentStats,
    ) {
        let processed = self.processed;
        let Some(c) = self.checkpoint.as_mut() else {
            return;
        };
        if let Some(mut writing) = c.writing.take() {
            if !wait && !writing.task.is_finished() {
                c.writing = Some(writing);
                return;
            }
            let outcome = (&mut writing.task).await;
            c.settle(writing, outcome, stats);
        }
        // Scheduled from the start of the last write, with a little slack, so
        // a tick arriving a hair early does not double the real period.
        c.self_change |= state.changed_by_itself();
        let unchanged = c.held.is_empty() && !c.self_change;
        if unchanged || (!force && c.last.elapsed() + c.interval / 10 < c.interval) {
            return;
        }
        let started = Instant::now();
        c.last_attempt = started;
        let stored = &c.stored;
        let snapshot = state.snapshot(&|id| stored.contains(&id));
        let covers = snapshot.covers.unwrap_or(processed).min(processed);
        let mut positions = c.durable.clone();
        for held in c.held.iter().take_while(|h| h.seq <= covers) {
            held.marks.raise(&mut positions);
        }
        let format = state.format();
        let (store, key) = (c.store.clone(), c.key.clone());
        let (mut stored, mut legacy_keys) = (c.stored.clone(), c.legacy_keys.clone());
        let written_positions = positions.clone();
        let task = tokio::spawn(async move {
            let result = checkpoint::write(
                store.as_ref(),
                &key,
                format,
                &written_positions,
                &snapshot,
                &mut stored,
                &mut legacy_keys,
            )
            .await;
            WriteOutcome {
                result,
                stored,
                legacy_keys,
            }
        });
        c.writing = Some(Writing {
            task,
            covers,
            positions,
            started,
        });
        if wait {
            if let Some(mut writing) = c.writing.take() {
                let outcome = (&mut writing.task).await;
                c.settle(writing, outcome, stats);
            }
        }
    }
}

/// A checkpoint write under way.
struct Writing {
    task: tokio::task::JoinHandle<WriteOutcome>,
    /// Batches it covers.
    covers: u64,
    /// Positions it holds.
    positions: PositionMap,
    started: Instant,
}

/// What a finished write reports back.
struct WriteOutcome {
    result: Result<usize, checkpoint::StoreError>,
    /// Parts the store holds after it.
    stored: BTreeSet<u64>,
    legacy_keys: Vec<String>,
}

impl Checkpointer {
    /// Takes the outcome of a write: on success its batches' handles are
    /// released (the sources acknowledge them).
    fn settle(
        &mut self,
        writing: Writing,
        outcome: Result<WriteOutcome, tokio::task::JoinError>,
        stats: &ComponentStats,
    ) {
        let Writing {
            covers,
            positions,
            started,
            ..
        } = writing;
        let outcome = outcome.unwrap_or_else(|e| WriteOutcome {
            result: Err(checkpoint::StoreError::Unavailable(format!(
                "the write stopped: {e}"
            ))),
            stored: self.stored.clone(),
            legacy_keys: self.legacy_keys.clone(),
        });
        // Parts written before a failure are in the store either way.
        self.stored = outcome.stored;
        self.legacy_keys = outcome.legacy_keys;
        match outcome.result {
            Ok(bytes) => {
                let mut released = 0;
                while self.held.front().is_some_and(|h| h.seq <= covers) {
                    // Dropping the handles tells the sources the batches are taken.
                    released += self.held.pop_front().map_or(0, |h| h.acks.len());
                }
                debug!(
                    key = %self.key,
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    released,
                    "checkpoint written"
                );
                self.durable = positions;
                self.last = started;
                // A change made after its snapshot is the state's to say
                // again at the next write.
                self.self_change = false;
                if self.failing == WriteState::Failing {
                    info!(key = %self.key, "checkpoint written again");
                }
                self.failing = WriteState::Fine;
            }
            Err(e @ checkpoint::StoreError::Fenced { .. }) => {
                fenced_refusals(stats).inc();
                warn!(key = %self.key, "checkpoint {e}; letting the partition go");
                self.failing = WriteState::FencedOut;
            }
            Err(e) => {
                stats.error(format!("cannot write checkpoint {}: {e}", self.key));
                if self.failing == WriteState::Fine {
                    warn!(key = %self.key, "cannot write checkpoint ({e}); holding acknowledgements and retrying");
                }
                self.failing = WriteState::Failing;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::ack::{AckReceipt, BatchStatus};
    use crate::checkpoint::StoreError;
    use crate::event::{EventKind, WorkflowEvent};
    use crate::record::{Origin, Record};
    use crate::runtime::Output;
    use crate::state::{SavedState, Snapshot, StateError, StateFormat};

    /// Keys and bytes in memory: the store contract without a server.
    #[derive(Default)]
    struct MemoryStore(Mutex<BTreeMap<String, Vec<u8>>>);

    #[async_trait]
    impl CheckpointStore for MemoryStore {
        async fn load(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.0.lock().unwrap().get(key).cloned())
        }
        async fn save(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
            self.0.lock().unwrap().insert(key.into(), bytes.to_vec());
            Ok(())
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.0.lock().unwrap().remove(key);
            Ok(())
        }
        async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
            let keys = self.0.lock().unwrap();
            Ok(keys
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect())
        }
    }

    /// Counts the records it folded; the smallest stateful processor.
    #[derive(Default)]
    struct Counter(u64);

    impl ProcessorState for Counter {
        fn format(&self) -> StateFormat {
            StateFormat {
                kind: "counter",
                version: 1,
            }
        }
        fn snapshot(&mut self, _stored: &dyn Fn(u64) -> bool) -> Snapshot {
            Snapshot {
                body: self.0.to_le_bytes().to_vec(),
                ..Snapshot::default()
            }
        }
        fn restore(&mut self, saved: SavedState) -> Result<(), StateError> {
            let bytes: [u8; 8] = saved
                .body
                .try_into()
                .map_err(|_| StateError::Corrupt("not 8 bytes".into()))?;
            self.0 = u64::from_le_bytes(bytes);
            Ok(())
        }
        fn merge(&mut self, saved: SavedState) -> Result<(), StateError> {
            let mut other = Counter::default();
            other.restore(saved)?;
            self.0 += other.0;
            Ok(())
        }
        fn describe(&self) -> String {
            format!("{} records", self.0)
        }
    }

    fn event() -> Record {
        Record::Event(WorkflowEvent {
            id: None,
            kind: EventKind::WorkflowCreated,
            timestamp_ms: 0,
            workflow_id: "w".into(),
            workflow_type: None,
            agent_type: None,
            stage: None,
            duration_ms: None,
            error: None,
        })
    }

    /// A source batch of records at `offsets` of one stream, and its receipt.
    fn source_batch(offsets: &[u128]) -> (Batch, AckReceipt) {
        let (handle, receipt) = AckHandle::new();
        let origin = Arc::new(Origin {
            source: "events".into(),
            partition: "stream".into(),
            shard: None,
        });
        let mut batch = Batch::new(offsets.iter().map(|_| event()).collect(), vec![handle])
            .with_positions(origin, offsets.to_vec());
        batch.set_via(&Arc::from("events"));
        (batch, receipt)
    }

    /// A store whose saves fail while `down` is set, counting those that
    /// land.
    #[derive(Default)]
    struct FlakyStore {
        inner: MemoryStore,
        down: std::sync::atomic::AtomicBool,
        saved: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl CheckpointStore for FlakyStore {
        async fn load(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.load(key).await
        }
        async fn save(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Unavailable("down".into()));
            }
            self.saved.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.save(key, bytes).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key).await
        }
        async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
            self.inner.keys_with_prefix(prefix).await
        }
    }

    /// A counter that may change by itself (as the aggregate applies held
    /// events while idle).
    #[derive(Default)]
    struct Drifting {
        counter: Counter,
        changed: bool,
    }

    impl ProcessorState for Drifting {
        fn format(&self) -> StateFormat {
            self.counter.format()
        }
        fn snapshot(&mut self, stored: &dyn Fn(u64) -> bool) -> Snapshot {
            self.changed = false;
            self.counter.snapshot(stored)
        }
        fn restore(&mut self, saved: SavedState) -> Result<(), StateError> {
            self.counter.restore(saved)
        }
        fn merge(&mut self, saved: SavedState) -> Result<(), StateError> {
            self.counter.merge(saved)
        }
        fn changed_by_itself(&self) -> bool {
            self.changed
        }
        fn describe(&self) -> String {
            self.counter.describe()
        }
    }

    /// A state that changed by itself is written with nothing held, and a
    /// failed write of it is tried again, not forgotten.
    #[tokio::test]
    async fn a_change_by_itself_is_written_and_retried_after_a_failure() {
        use std::sync::atomic::Ordering::SeqCst;
        let store = Arc::new(FlakyStore::default());
        let mut state = Drifting::default();
        let mut keeper = keeper_on(&store, &mut state).await;
        let stats = ComponentStats::default();
        keeper.checkpoint(&mut state, true, &stats).await;
        assert_eq!(store.saved.load(SeqCst), 0, "nothing held or changed");
        state.counter.0 = 5;
        state.changed = true;
        store.down.store(true, SeqCst);
        keeper.checkpoint(&mut state, true, &stats).await;
        assert_eq!(store.saved.load(SeqCst), 0);
        store.down.store(false, SeqCst);
        keeper.checkpoint(&mut state, true, &stats).await;
        assert_eq!(store.saved.load(SeqCst), 1, "retried");
        keeper.checkpoint(&mut state, true, &stats).await;
        assert_eq!(store.saved.load(SeqCst), 1, "written once it held");
        let mut restored = Counter::default();
        keeper_on(&store, &mut restored).await;
        assert_eq!(restored.0, 5);
    }

    async fn keeper_on<S: CheckpointStore + 'static>(
        store: &Arc<S>,
        state: &mut dyn ProcessorState,
    ) -> StateKeeper {
        let mut keeper = StateKeeper {
            name: "p".into(),
            marks: PositionMap::new(),
            processed: 0,
            skipped: 0,
            checkpoint: None,
        };
        keeper
            .restore_from(store.clone(), "k".into(), Duration::from_secs(3600), state)
            .await
            .unwrap();
        keeper
    }

    /// Admits, "processes" (counts) and settles one batch.
    fn fold(keeper: &mut StateKeeper, state: &mut Counter, batch: Batch) {
        let stats = ComponentStats::default();
        let (batch, admitted) = keeper.admit(batch, &stats);
        state.0 += batch.len() as u64;
        keeper.settle(admitted, true);
    }

    #[tokio::test]
    async fn handles_are_held_until_a_checkpoint_holding_them_is_written() {
        let store = Arc::new(MemoryStore::default());
        let mut state = Counter::default();
        let mut keeper = keeper_on(&store, &mut state).await;
        let (batch, mut receipt) = source_batch(&[1, 2, 3]);
        fold(&mut keeper, &mut state, batch);
        assert!(futures::poll!(&mut receipt).is_pending(), "released early");
        keeper
            .checkpoint(&mut state, true, &ComponentStats::default())
            .await;
        assert_eq!(receipt.await, BatchStatus::Delivered);
        assert!(store.load("k").await.unwrap().is_some());
    }

    /// A write started without waiting (the input paused) releases its
    /// batches once it is durable, with no further batch or tick to notice:
    /// a drained input has nothing pending moments after its last entry.
    #[tokio::test]
    async fn a_write_in_flight_releases_its_batches_as_soon_as_it_is_durable() {
        let store = Arc::new(MemoryStore::default());
        let mut state = Counter::default();
        let mut keeper = keeper_on(&store, &mut state).await;
        let stats = ComponentStats::default();
        let never = tokio::time::timeout(Duration::from_millis(50), keeper.write_finished(&stats));
        assert!(never.await.is_err(), "finished with no write under way");
        let (batch, mut receipt) = source_batch(&[1, 2]);
        fold(&mut keeper, &mut state, batch);
        keeper.checkpoint_now(&mut state, &stats).await;
        assert!(
            futures::poll!(&mut receipt).is_pending(),
            "released before the write ended"
        );
        tokio::time::timeout(Duration::from_secs(5), keeper.write_finished(&stats))
            .await
            .expect("the write finished");
        assert_eq!(
            futures::poll!(&mut receipt),
            std::task::Poll::Ready(BatchStatus::Delivered)
        );
    }

    #[tokio::test]
    async fn handles_of_a_checkpoint_never_written_fail_their_batches() {
        let store = Arc::new(MemoryStore::default());
        let mut state = Counter::default();
        let mut keeper = keeper_on(&store, &mut state).await;
        let (batch, receipt) = source_batch(&[1]);
        fold(&mut keeper, &mut state, batch);
        drop(keeper);
        assert_eq!(receipt.await, BatchStatus::Failed);
    }

    #[tokio::test]
    async fn after_a_restore_records_up_to_the_saved_position_are_skipped_however_old() {
        let store = Arc::new(MemoryStore::default());
        let mut state = Counter::default();
        let mut keeper = keeper_on(&store, &mut state).await;
        let (batch, _receipt) = source_batch(&[10, 11, 12]);
        fold(&mut keeper, &mut state, batch);
        let stats = ComponentStats::default();
        keeper.checkpoint(&mut state, true, &stats).await;
        drop(keeper);

        // A restart: the state and the position come back together.
        let mut restored = Counter::default();
        let mut keeper = keeper_on(&store, &mut restored).await;
        assert_eq!(restored.0, 3);
        let (redelivered, receipt) = source_batch(&[11, 12, 13, 14]);
        fold(&mut keeper, &mut restored, redelivered);
        assert_eq!(restored.0, 5, "only 13 and 14 are new");
        keeper.checkpoint(&mut restored, true, &stats).await;
        assert_eq!(receipt.await, BatchStatus::Delivered);
        let shown = checkpoint::describe(store.as_ref(), "k", &mut Counter::default())
            .await
            .unwrap()
            .unwrap();
        assert!(shown.contains("events/events/stream at 14"), "{shown}");
        assert!(shown.contains("5 records"), "{shown}");
    }

    /// Where a source read its own partition up to is checkpointed beside
    /// the records' positions, under a key of its own: it says where the
    /// source resumes, and never drops a record.
    #[tokio::test]
    async fn where_the_source_read_up_to_is_kept_apart_and_filters_nothing() {
        let store = Arc::new(MemoryStore::default());
        let mut state = Counter::default();
        let mut keeper = keeper_on(&store, &mut state).await;
        let (batch, _receipt) = source_batch(&[10, 11]);
        fold(
            &mut keeper,
            &mut state,
            batch.with_resume("topic/3".into(), 500),
        );
        let stats = ComponentStats::default();
        keeper.checkpoint(&mut state, true, &stats).await;
        let positions = checkpoint::load_positions(store.as_ref(), "k")
            .await
            .unwrap()
            .unwrap();
        let read = PositionKey::resume("events", "events", "topic/3");
        assert_eq!(read.resumes(), Some("topic/3"));
        assert_eq!(positions.get(&read), Some(&500));
        drop(keeper);

        // Restored: records of the stream past 11 fold, whatever the
        // (larger) read offset says.
        let mut restored = Counter::default();
        let mut keeper = keeper_on(&store, &mut restored).await;
        let (batch, _receipt) = source_batch(&[11, 12, 13]);
        fold(&mut keeper, &mut restored, batch);
        assert_eq!(restored.0, 4);
    }

    /// Emits each batch it folds downstream with a handle of its own, and
    /// snapshots only what downstream has confirmed taking (as a processor
    /// committing alert transitions only once stored would).
    #[derive(Default)]
    struct ConfirmedOnly {
        /// Batches processed, and the receipt and size of each one's output.
        sent: VecDeque<(u64, AckReceipt, u64)>,
        processed: u64,
        covered: u64,
        confirmed: u64,
    }

    impl ConfirmedOnly {
        async fn process(&mut self, batch: &Batch, out: &mut Output) {
            self.processed += 1;
            let (handle, receipt) = AckHandle::new();
            out.send(Batch::new(batch.records().to_vec(), vec![handle]))
                .await;
            self.sent
                .push_back((self.processed, receipt, batch.len() as u64));
        }
    }

    impl ProcessorState for ConfirmedOnly {
        fn format(&self) -> StateFormat {
            StateFormat {
                kind: "confirmed-only",
                version: 1,
            }
        }
        fn snapshot(&mut self, _stored: &dyn Fn(u64) -> bool) -> Snapshot {
            while let Some((seq, receipt, n)) = self.sent.front_mut() {
                match futures::FutureExt::now_or_never(receipt) {
                    Some(BatchStatus::Delivered) => {
                        self.covered = *seq;
                        self.confirmed += *n;
                        self.sent.pop_front();
                    }
                    _ => break,
                }
            }
            Snapshot {
                body: self.confirmed.to_le_bytes().to_vec(),
                parts: Vec::new(),
                covers: Some(self.covered),
            }
        }
        fn restore(&mut self, _saved: SavedState) -> Result<(), StateError> {
            Ok(())
        }
        fn merge(&mut self, _saved: SavedState) -> Result<(), StateError> {
            Ok(())
        }
        fn describe(&self) -> String {
            String::new()
        }
    }

    #[tokio::test]
    async fn a_snapshot_covering_only_confirmed_output_keeps_the_rest_held() {
        let store = Arc::new(MemoryStore::default());
        let mut state = ConfirmedOnly::default();
        let mut keeper = keeper_on(&store, &mut state).await;
        let (mut out, mut downstream) = Output::channel(4);
        let stats = ComponentStats::default();
        let mut receipts = Vec::new();
        for offsets in [[1u128, 2], [3, 4]] {
            let (batch, receipt) = source_batch(&offsets);
            let (batch, admitted) = keeper.admit(batch, &stats);
            state.process(&batch, &mut out).await;
            keeper.settle(admitted, true);
            receipts.push(receipt);
        }
        // Downstream has taken nothing yet: the checkpoint covers nothing.
        keeper.checkpoint(&mut state, true, &stats).await;
        for receipt in &mut receipts {
            assert!(futures::poll!(receipt).is_pending());
        }
        // Downstream takes the first output only.
        drop(downstream.recv().await);
        keeper.checkpoint(&mut state, true, &stats).await;
        let mut receipts = receipts.into_iter();
        assert_eq!(receipts.next().unwrap().await, BatchStatus::Delivered);
        let mut second = receipts.next().unwrap();
        assert!(futures::poll!(&mut second).is_pending());
        let saved = store.load("k").await.unwrap().unwrap();
        assert!(saved.ends_with(&2u64.to_le_bytes()));
        let shown = checkpoint::describe(store.as_ref(), "k", &mut ConfirmedOnly::default())
            .await
            .unwrap()
            .unwrap();
        assert!(
            shown.contains("stream at 2;"),
            "only the first batch's position: {shown}"
        );
        // Then the second.
        drop(downstream.recv().await);
        keeper.checkpoint(&mut state, true, &stats).await;
        assert_eq!(second.await, BatchStatus::Delivered);
    }

    #[tokio::test]
    async fn a_checkpoint_of_another_kind_is_refused_naming_both() {
        let store = Arc::new(MemoryStore::default());
        let mut counter = Counter::default();
        let mut keeper = keeper_on(&store, &mut counter).await;
        let (batch, _receipt) = source_batch(&[1]);
        fold(&mut keeper, &mut counter, batch);
        keeper
            .checkpoint(&mut counter, true, &ComponentStats::default())
            .await;
        let err = checkpoint::load(store.as_ref(), "k", &mut ConfirmedOnly::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("counter") && err.contains("confirmed-only"),
            "{err}"
        );
        assert!(err.contains("flowpulse state reset"), "{err}");
    }
}
