//! Where a partition given to this member starts reading. The checkpoints
//! of the processors keeping its state say: the checkpoint is the truth,
//! and the offsets committed to the group are for monitoring tools. So a
//! partition is paused as it is assigned, its start looked up in the
//! checkpoint store, and it is read from there (a seek) once known.

use std::sync::Arc;
use std::time::Duration;

use flowpulse_core::checkpoint::{self, CheckpointStore, PositionMap};
use rdkafka::Offset;

/// What the source needs to look a partition's start up.
#[derive(Clone)]
pub(super) struct Lookup {
    pub store: Arc<dyn CheckpointStore>,
    pub pipeline: String,
    /// The processors keeping state per partition of this source.
    pub readers: Vec<String>,
    pub source: String,
    pub topic: String,
    /// Where a partition that no checkpoint holds starts (`start`).
    pub fresh: Offset,
}

/// How often a lookup the store cannot answer is tried, a second apart,
/// before the partition is read from the group's committed offset instead
/// (the checkpoint's positions still drop what it holds).
const ATTEMPTS: u32 = 30;

impl Lookup {
    /// Where `partition` starts: one past the oldest of the readers'
    /// resume offsets; `fresh` when a reader holds no checkpoint of it
    /// (nothing of it was folded, or the state was reset); `None` when a
    /// reader's checkpoint does not say (one written before resume offsets
    /// were kept): then the group's committed offset.
    pub async fn start_of(&self, partition: i32) -> Result<Option<Offset>, String> {
        let own = format!("{}/{}", self.topic, partition);
        let mut start: Option<i64> = None;
        for reader in &self.readers {
            let key = checkpoint::checkpoint_key(&self.pipeline, reader, partition.max(0) as u32);
            let Some(positions) = checkpoint::load_positions(self.store.as_ref(), &key)
                .await
                .map_err(|e| e.to_string())?
            else {
                return Ok(Some(self.fresh));
            };
            let Some(read) = read_up_to(&positions, &self.source, &own) else {
                return Ok(None);
            };
            let next = i64::try_from(read.saturating_add(1)).unwrap_or(i64::MAX);
            start = Some(start.map_or(next, |s| s.min(next)));
        }
        Ok(start.map(Offset::Offset))
    }

    /// [`Lookup::start_of`], tried again while the store cannot answer;
    /// `None` (the committed offset) if it never does.
    pub async fn start_retrying(self, partition: i32) -> Option<Offset> {
        for attempt in 1..=ATTEMPTS {
            match self.start_of(partition).await {
                Ok(start) => return start,
                Err(e) if attempt == 1 => tracing::warn!(
                    source = %self.source,
                    partition,
                    "cannot read where the partition's checkpoint resumes ({e}); retrying"
                ),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tracing::warn!(
            source = %self.source,
            partition,
            "the checkpoint store did not say where the partition resumes; reading from the group's committed offset (what the checkpoint holds is skipped)"
        );
        None
    }
}

/// The largest offset of `partition` a checkpoint says `source` has read
/// (over every input it arrived through).
fn read_up_to(positions: &PositionMap, source: &str, partition: &str) -> Option<u128> {
    positions
        .iter()
        .filter(|(key, _)| key.source == source && key.resumes() == Some(partition))
        .map(|(_, &offset)| offset)
        .max()
}

#[cfg(test)]
mod tests {
    use flowpulse_core::checkpoint::PositionKey;

    use super::*;

    #[test]
    fn the_resume_offset_is_the_largest_of_the_source_partition_alone() {
        let mut positions = PositionMap::new();
        positions.insert(PositionKey::resume("read", "log", "events/1"), 40);
        positions.insert(PositionKey::resume("other", "log", "events/1"), 45);
        positions.insert(PositionKey::resume("read", "log", "events/2"), 99);
        positions.insert(PositionKey::resume("read", "elsewhere", "events/1"), 99);
        // The records' own positions (upstream entry ids) never count.
        positions.insert(
            PositionKey {
                input: "read".into(),
                source: "log".into(),
                partition: "events/1".into(),
            },
            1_000,
        );
        assert_eq!(read_up_to(&positions, "log", "events/1"), Some(45));
        assert_eq!(read_up_to(&positions, "log", "events/3"), None);
    }
}
