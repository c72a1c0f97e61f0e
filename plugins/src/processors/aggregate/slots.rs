//! Workflow slots, stored in fixed-size chunks.
//!
//! The slots grow with the workflows in memory (in flight, and finished
//! within the dedup window: ~120,000 at 10,000 in flight and 1,000 events
//! a second). In one `Vec` every doubling copied all of them into fresh
//! memory the kernel had to fault in and zero, and the old buffer was
//! dropped: for a state of 8 MB, 8 MB more was touched and copied on the
//! way. Chunks never move: a slot stays where it was written, and only the
//! memory the slots finally take is ever touched.
//!
//! A snapshot stores the slots as one flat sequence, as a `Vec` would.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lifecycle::Workflow;
use super::table::prefetch;

/// log2 of the slots per chunk: 4,096 one-line slots, 256 KiB a chunk.
const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;
const OFFSET_MASK: usize = CHUNK - 1;

/// A slot: a workflow, or `None` where none was ever put.
pub(super) type Slot = Option<Workflow>;

/// The workflow slots, indexed like a `Vec`. See the module docs.
#[derive(Debug, Clone, Default)]
pub(super) struct Slots {
    /// Every chunk but the last is full.
    chunks: Vec<Vec<Slot>>,
}

impl Slots {
    /// Slots, used or free.
    pub(super) fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |last| (self.chunks.len() - 1) * CHUNK + last.len())
    }

    /// Appends a slot.
    pub(super) fn push(&mut self, slot: Slot) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(slot),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(slot);
                self.chunks.push(chunk);
            }
        }
    }

    /// The slot at `index`, if there is one.
    #[inline]
    pub(super) fn get(&self, index: usize) -> Option<&Slot> {
        self.chunks
            .get(index >> CHUNK_BITS)?
            .get(index & OFFSET_MASK)
    }

    /// The slot at `index`, if there is one.
    #[inline]
    pub(super) fn get_mut(&mut self, index: usize) -> Option<&mut Slot> {
        self.chunks
            .get_mut(index >> CHUNK_BITS)?
            .get_mut(index & OFFSET_MASK)
    }

    /// Prefetches the slot at `index` (one cache line), if there is one.
    #[inline(always)]
    pub(super) fn prefetch(&self, index: usize) {
        if let Some(chunk) = self.chunks.get(index >> CHUNK_BITS) {
            prefetch(chunk.as_ptr().wrapping_add(index & OFFSET_MASK));
        }
    }

    /// The slots in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.chunks.iter().flatten()
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Slot;

    #[inline]
    fn index(&self, index: usize) -> &Slot {
        &self.chunks[index >> CHUNK_BITS][index & OFFSET_MASK]
    }
}

impl std::ops::IndexMut<usize> for Slots {
    #[inline]
    fn index_mut(&mut self, index: usize) -> &mut Slot {
        &mut self.chunks[index >> CHUNK_BITS][index & OFFSET_MASK]
    }
}

impl Serialize for Slots {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // With its length first, as formats like postcard need it.
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for slot in self.iter() {
            seq.serialize_element(slot)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Slots {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Slots, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Slots;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of workflow slots")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Slots, A::Error> {
                let mut slots = Slots::default();
                while let Some(slot) = seq.next_element()? {
                    slots.push(slot);
                }
                Ok(slots)
            }
        }

        deserializer.deserialize_seq(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::aggregate::dedup::IdKey;

    fn workflow(n: u64) -> Workflow {
        Workflow {
            key: IdKey::from_parts(n + 1, n),
            removed: false,
            generation: n as u32,
            known: true,
            workflow_type: 0,
            created_ms: None,
            outcome: None,
            paused: false,
            pause_changed_ms: i64::MIN,
            last_seen_ms: n as i64,
            outcome_ms: None,
            duration_missing: false,
        }
    }

    /// Across chunk borders (two and a half chunks), every slot is where a
    /// `Vec` would keep it, and a snapshot is the `Vec`'s sequence.
    #[test]
    fn slots_across_chunks_behave_like_a_vec() {
        let n = 2 * CHUNK + CHUNK / 2;
        let mut slots = Slots::default();
        let mut oracle = Vec::new();
        for i in 0..n {
            let slot = (i % 3 != 0).then(|| workflow(i as u64));
            slots.push(slot.clone());
            oracle.push(slot);
        }
        for i in (0..n).step_by(7) {
            let replaced = (i % 2 == 0).then(|| workflow(1_000_000 + i as u64));
            slots[i] = replaced.clone();
            oracle[i] = replaced;
        }
        assert_eq!(slots.len(), n);
        let keys = |s: &Slot| s.as_ref().map(|w| (w.key, w.generation));
        for i in [0, CHUNK - 1, CHUNK, 2 * CHUNK + 1, n - 1] {
            assert_eq!(keys(&slots[i]), keys(&oracle[i]), "slot {i}");
        }
        assert!(slots.get(n).is_none());
        assert!(slots.get_mut(n).is_none());
        let listed: Vec<_> = slots.iter().map(keys).collect();
        let expected: Vec<_> = oracle.iter().map(keys).collect();
        assert_eq!(listed, expected);

        let json = serde_json::to_string(&slots).unwrap();
        assert_eq!(json, serde_json::to_string(&oracle).unwrap());
        // Snapshots are postcard: the same bytes as the `Vec`'s, so a
        // snapshot written before slots were chunked restores unchanged.
        let bytes = postcard::to_allocvec(&slots).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&oracle).unwrap());
        let back: Slots = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.iter().map(keys).collect::<Vec<_>>(), expected);
        assert_eq!(
            back.chunks.len(),
            3,
            "chunks are filled before a new one starts"
        );
    }
}
