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

/// What the runtime keeps of a batch while a stateful processor handles
/// it: its acknowledgement handles and the position it reaches.
pub(crate) struct Admitted {
    acks: Vec<AckHandle>,
    marks: Option<(PositionKey, u128)>,
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
    failing: bool,
}

struct Held {
    seq: u64,
    acks: Vec<AckHandle>,
    marks: Option<(PositionKey, u128)>,
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
        keeper.marks = restored.positions.clone();
        keeper.checkpoint = Some(Checkpointer {
            store,
            key,
            interval: settings.interval,
            last: Instant::now(),
            durable: restored.positions,
            stored: restored.parts,
            legacy_keys: restored.legacy_keys,
            held: VecDeque::new(),
            failing: false,
        });
        Ok(keeper)
    }

    /// How often checkpoints are due, if a store is configured.
    pub fn interval(&self) -> Option<Duration> {
        self.checkpoint.as_ref().map(|c| c.interval)
    }

    /// Takes the acknowledgement handles out of `batch` and leaves out its
    /// records at or before the position already processed from their
    /// source partition (redelivered after a restart, however long ago).
    pub fn admit(&mut self, mut batch: Batch, stats: &ComponentStats) -> (Batch, Admitted) {
        let acks = batch.take_acks();
        let Some(positions) = batch.positions() else {
            return (batch, Admitted { acks, marks: None });
        };
        let key = PositionKey {
            input: batch.via().unwrap_or_default().to_owned(),
            source: positions.origin.source.clone(),
            partition: positions.origin.partition.clone(),
        };
        let newest = positions.offsets.iter().copied().max();
        let marks = newest.map(|newest| (key.clone(), newest));
        let Some(&mark) = self.marks.get(&key) else {
            return (batch, Admitted { acks, marks });
        };
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
        if let Some((key, offset)) = &marks {
            let mark = self.marks.entry(key.clone()).or_insert(*offset);
            *mark = (*mark).max(*offset);
        }
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

    /// Writes a checkpoint if one is due (or `force`d) and something is
    /// held, then releases what it covers. A failed write keeps them held
    /// and is retried at the next one.
    pub async fn checkpoint(
        &mut self,
        state: &mut dyn ProcessorState,
        force: bool,
        stats: &ComponentStats,
    ) {
        let processed = self.processed;
        let Some(c) = self.checkpoint.as_mut() else {
            return;
        };
        // Scheduled from the start of the last write, with a little slack, so
        // a tick arriving a hair early does not double the real period.
        if c.held.is_empty() || (!force && c.last.elapsed() + c.interval / 10 < c.interval) {
            return;
        }
        let started = Instant::now();
        let stored = &c.stored;
        let snapshot = state.snapshot(&|id| stored.contains(&id));
        let covers = snapshot.covers.unwrap_or(processed).min(processed);
        let mut positions = c.durable.clone();
        for held in c.held.iter().take_while(|h| h.seq <= covers) {
            if let Some((key, offset)) = &held.marks {
                let mark = positions.entry(key.clone()).or_insert(*offset);
                *mark = (*mark).max(*offset);
            }
        }
        let format = state.format();
        let written = checkpoint::write(
            c.store.as_ref(),
            &c.key,
            format,
            &positions,
            &snapshot,
            &mut c.stored,
            &mut c.legacy_keys,
        )
        .await;
        match written {
            Ok(bytes) => {
                let mut released = 0;
                while c.held.front().is_some_and(|h| h.seq <= covers) {
                    // Dropping the handles tells the sources the batches are taken.
                    released += c.held.pop_front().map_or(0, |h| h.acks.len());
                }
                debug!(
                    key = %c.key,
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    released,
                    "checkpoint written"
                );
                c.durable = positions;
                c.last = started;
                if c.failing {
                    info!(key = %c.key, "checkpoint written again");
                    c.failing = false;
                }
            }
            Err(e) => {
                stats.error(format!("cannot write checkpoint {}: {e}", c.key));
                if !c.failing {
                    warn!(key = %c.key, "cannot write checkpoint ({e}); holding acknowledgements and retrying");
                    c.failing = true;
                }
            }
        }
    }
}
