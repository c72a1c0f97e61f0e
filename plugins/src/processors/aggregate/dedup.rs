//! Remembered event identities, for dropping duplicates within a window of
//! event time.
//!
//! Identities are 128-bit hashes. New ones go to a hot table; when it
//! holds [`EPOCH_LEN`] entries it is frozen into an epoch, with a Bloom
//! filter. The filters of all epochs are interleaved word by word, so one
//! lookup reads the same word of every epoch's filter from one or two cache
//! lines; only a filter hit (a duplicate, or a rare false positive) looks
//! into that epoch's own table. An epoch is dropped whole once all its
//! identities are older than the window, and its tables are reused. Compared
//! with one big hash table this turns a cache miss per event into a couple of
//! cache hits, and [`Dedup::prefetch`] lets a batch fetch those lines for the
//! events ahead while it folds the current one.

use serde::{Deserialize, Serialize};

use super::table::{prefetch, KeyTable};

/// Entries per epoch: 3/4 of 2^16, the most a [`KeyTable`] of 2^16 buckets
/// holds without doubling (1.5 MB).
const EPOCH_LEN: usize = (1 << 16) / 4 * 3;
/// Bloom filter bits per entry.
const BITS_PER_ENTRY: usize = 16;
/// Words of every epoch's filter.
const FILTER_WORDS: usize = EPOCH_LEN * BITS_PER_ENTRY / 64;

type IdTable = KeyTable<i64>;

/// A 128-bit identity hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdKey(u64, u64);

impl IdKey {
    /// The key no identity has (it marks empty buckets).
    pub const ZERO: IdKey = IdKey(0, 0);

    /// The key of an event identity.
    #[inline]
    pub fn of(id: &str) -> IdKey {
        // A hash of zero (one chance in 2^128) is moved off the empty mark.
        let hash = xxhash_rust::xxh3::xxh3_128(id.as_bytes()).max(1);
        IdKey(hash as u64, (hash >> 64) as u64)
    }

    /// The low 64 bits (uniform: a bucket index needs no further hashing).
    #[inline]
    pub fn low(self) -> u64 {
        self.0
    }

    /// A key from its two halves (tests that need colliding keys).
    #[cfg(test)]
    pub fn from_parts(low: u64, high: u64) -> IdKey {
        IdKey(low, high)
    }

    /// The filter word of the key and the eight bits it sets there (about
    /// 0.06% false positives per epoch at 16 bits per entry).
    fn probe(self) -> (usize, u64) {
        // Multiply-shift maps the hash onto the words without a division.
        let word = ((u128::from(self.0) * FILTER_WORDS as u128) >> 64) as usize;
        let h = self.1;
        let mask = (0..8).fold(0u64, |mask, i| mask | 1 << ((h >> (6 * i)) & 63));
        (word, mask)
    }
}

#[derive(Debug, Clone)]
struct Epoch {
    entries: IdTable,
    newest_ms: i64,
    /// Freezing order, to serialize oldest first.
    order: u64,
}

/// Identities seen within the dedup window. See the module docs.
#[derive(Debug, Clone)]
pub struct Dedup {
    hot: IdTable,
    /// The newest time in the hot table.
    hot_newest_ms: i64,
    /// The filter column the hot table's identities are added to as they
    /// arrive, so freezing it needs no pass over its entries.
    hot_slot: usize,
    /// Frozen epochs by filter column; `None` for free columns and the hot one.
    epochs: Vec<Option<Epoch>>,
    /// `FILTER_WORDS × epochs.len()` words: word `w` of column `s` is at
    /// `w * epochs.len() + s`.
    filters: Vec<u64>,
    /// The table of the last expired epoch, reused for the next hot table.
    spare: Option<IdTable>,
    next_order: u64,
    /// The oldest `newest_ms` of any epoch: nothing expires before it.
    oldest_ms: i64,
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup {
            hot: KeyTable::with_capacity(EPOCH_LEN),
            hot_newest_ms: i64::MIN,
            hot_slot: 0,
            epochs: vec![None],
            filters: vec![0; FILTER_WORDS],
            spare: None,
            next_order: 0,
            oldest_ms: i64::MAX,
        }
    }
}

/// Calls `f` with the column of every word of `row` that has all bits of
/// `mask`, until `f` returns true. The words are tested without branches,
/// 64 at a time; only the (rare) matches branch.
#[inline]
fn for_each_match(row: &[u64], mask: u64, mut f: impl FnMut(usize) -> bool) -> bool {
    for (chunk_index, chunk) in row.chunks(64).enumerate() {
        let mut hits = 0u64;
        for (i, bits) in chunk.iter().enumerate() {
            hits |= u64::from(bits & mask == mask) << i;
        }
        while hits != 0 {
            let i = hits.trailing_zeros() as usize;
            hits &= hits - 1;
            if f(chunk_index * 64 + i) {
                return true;
            }
        }
    }
    false
}

impl Dedup {
    /// Records `id` seen at `ts`; false if it was already seen at an event
    /// time of at least `cutoff` (the oldest time still in the window).
    #[cfg(test)]
    pub fn first_sighting(&mut self, id: &str, ts: i64, cutoff: i64) -> bool {
        self.first_sighting_key(IdKey::of(id), ts, cutoff)
    }

    /// Prefetches what [`Dedup::first_sighting_key`] of `key` reads: its
    /// filter words and its hot-table bucket.
    #[inline]
    pub fn prefetch(&self, key: IdKey) {
        let slots = self.epochs.len();
        let (word, _) = key.probe();
        let row = &self.filters[word * slots..(word + 1) * slots];
        // Every cache line of the row: 8 words a line.
        for words in row.chunks(8) {
            prefetch(words.as_ptr());
        }
        prefetch(row.as_ptr().wrapping_add(slots - 1));
        self.hot.prefetch(key);
    }

    /// [`Dedup::first_sighting`] of an identity's key.
    pub fn first_sighting_key(&mut self, key: IdKey, ts: i64, cutoff: i64) -> bool {
        let slots = self.epochs.len();
        let (word, mask) = key.probe();
        let row = word * slots;
        let epochs = &self.epochs;
        let seen_in_epoch = for_each_match(&self.filters[row..row + slots], mask, |slot| {
            // The hot column has no epoch: the hot table is looked at below.
            epochs[slot]
                .as_ref()
                .and_then(|e| e.entries.get(key))
                .is_some_and(|seen| seen >= cutoff)
        });
        if seen_in_epoch {
            return false;
        }
        let (seen, found) = self.hot.entry(key, ts);
        if found {
            if *seen >= cutoff {
                return false;
            }
            *seen = ts;
        } else {
            self.filters[row + self.hot_slot] |= mask;
        }
        self.hot_newest_ms = self.hot_newest_ms.max(ts);
        if self.hot.len() >= EPOCH_LEN {
            self.freeze();
        }
        true
    }

    /// Makes the hot table an epoch (its filter column is already built) and
    /// starts a new one in a free column.
    fn freeze(&mut self) {
        let next = self
            .spare
            .take()
            .unwrap_or_else(|| KeyTable::with_capacity(EPOCH_LEN));
        let entries = std::mem::replace(&mut self.hot, next);
        self.epochs[self.hot_slot] = Some(Epoch {
            newest_ms: self.hot_newest_ms,
            entries,
            order: self.next_order,
        });
        self.next_order += 1;
        self.hot_newest_ms = i64::MIN;
        self.hot_slot = match self.epochs.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => self.add_slot(),
        };
        self.oldest_ms = self.oldest_newest();
    }

    /// Adds identities to the hot table (loading a snapshot).
    fn load_hot(&mut self, entries: impl IntoIterator<Item = (IdKey, i64)>) {
        let slots = self.epochs.len();
        for (key, ts) in entries {
            let (word, mask) = key.probe();
            let (seen, found) = self.hot.entry(key, ts);
            if found {
                *seen = (*seen).max(ts);
            } else {
                self.filters[word * slots + self.hot_slot] |= mask;
            }
            self.hot_newest_ms = self.hot_newest_ms.max(ts);
        }
    }

    fn oldest_newest(&self) -> i64 {
        self.epochs
            .iter()
            .flatten()
            .map(|e| e.newest_ms)
            .min()
            .unwrap_or(i64::MAX)
    }

    /// One more filter column: re-lays the interleaved filters (only while
    /// the window first fills).
    fn add_slot(&mut self) -> usize {
        let old = self.epochs.len();
        let new = old + 1;
        let mut filters = vec![0u64; FILTER_WORDS * new];
        for word in 0..FILTER_WORDS {
            filters[word * new..word * new + old]
                .copy_from_slice(&self.filters[word * old..(word + 1) * old]);
        }
        self.filters = filters;
        self.epochs.push(None);
        old
    }

    /// Drops epochs wholly older than `cutoff`.
    pub fn forget_before(&mut self, cutoff: i64) {
        if cutoff <= self.oldest_ms {
            return;
        }
        let slots = self.epochs.len();
        for slot in 0..slots {
            if self.epochs[slot]
                .as_ref()
                .is_some_and(|e| e.newest_ms < cutoff)
            {
                if let Some(epoch) = self.epochs[slot].take() {
                    for word in 0..FILTER_WORDS {
                        self.filters[word * slots + slot] = 0;
                    }
                    let mut table = epoch.entries;
                    table.clear();
                    self.spare = Some(table);
                }
            }
        }
        self.oldest_ms = self.oldest_newest();
    }

    /// Identities remembered.
    pub fn len(&self) -> usize {
        self.hot.len()
            + self
                .epochs
                .iter()
                .flatten()
                .map(|e| e.entries.len())
                .sum::<usize>()
    }

    /// Epochs oldest first.
    fn ordered_epochs(&self) -> Vec<&Epoch> {
        let mut epochs: Vec<&Epoch> = self.epochs.iter().flatten().collect();
        epochs.sort_by_key(|e| e.order);
        epochs
    }

    /// Adds another state's identities (a disjoint partition's).
    pub fn merge(&mut self, other: &Dedup) {
        let theirs = other
            .ordered_epochs()
            .into_iter()
            .flat_map(|e| e.entries.iter())
            .chain(other.hot.iter());
        for (key, ts) in theirs {
            self.first_sighting_key(key, ts, i64::MAX);
        }
    }
}

/// One epoch in a snapshot: its entries inline, or `None` when they are
/// stored apart (they never change once frozen, so a checkpoint writes them
/// once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochForm {
    /// The epoch's freezing order (its name in the store).
    pub order: u64,
    /// Its identities, when inline.
    pub entries: Option<Vec<(IdKey, i64)>>,
}

/// The serialized form of [`Dedup`]; filters are rebuilt on load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DedupForm {
    /// Epochs, oldest first.
    pub epochs: Vec<EpochForm>,
    /// The hot table.
    pub hot: Vec<(IdKey, i64)>,
    /// The order the next epoch will get.
    pub next_order: u64,
}

impl Dedup {
    /// The serialized form; epochs whose order is in `apart` are left out
    /// (referenced only).
    pub fn to_form(&self, apart: &dyn Fn(u64) -> bool) -> DedupForm {
        DedupForm {
            epochs: self
                .ordered_epochs()
                .into_iter()
                .map(|e| EpochForm {
                    order: e.order,
                    entries: (!apart(e.order)).then(|| e.entries.iter().collect()),
                })
                .collect(),
            hot: self.hot.iter().collect(),
            next_order: self.next_order,
        }
    }

    /// The order the next epoch will get.
    pub fn next_order(&self) -> u64 {
        self.next_order
    }

    /// The orders of the epochs held now.
    pub fn epoch_orders(&self) -> Vec<u64> {
        self.ordered_epochs().into_iter().map(|e| e.order).collect()
    }

    /// The entries of one epoch, for storing it apart.
    pub fn epoch_entries(&self, order: u64) -> Option<Vec<(IdKey, i64)>> {
        self.epochs
            .iter()
            .flatten()
            .find(|e| e.order == order)
            .map(|e| e.entries.iter().collect())
    }

    /// Rebuilds from a form; `apart` supplies epochs stored apart. Fails with
    /// the order of an epoch that is neither inline nor supplied.
    pub fn from_form(
        form: DedupForm,
        mut apart: impl FnMut(u64) -> Option<Vec<(IdKey, i64)>>,
    ) -> Result<Dedup, u64> {
        let mut dedup = Dedup::default();
        for epoch in form.epochs {
            let entries = match epoch.entries {
                Some(entries) => entries,
                None => apart(epoch.order).ok_or(epoch.order)?,
            };
            dedup.load_hot(entries);
            dedup.next_order = epoch.order;
            dedup.freeze();
        }
        dedup.load_hot(form.hot);
        dedup.next_order = form.next_order;
        Ok(dedup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// Against a plain map: the same answer for every identity, across epochs.
        #[test]
        fn agrees_with_a_plain_map(ids in prop::collection::vec(0u32..200_000, 1..150_000)) {
            let mut dedup = Dedup::default();
            let mut oracle = std::collections::HashSet::new();
            for (ts, id) in ids.iter().enumerate() {
                let id = format!("id-{id}");
                prop_assert_eq!(dedup.first_sighting(&id, ts as i64, 0), oracle.insert(id));
            }
        }
    }

    #[test]
    fn identities_older_than_the_window_are_forgotten() {
        let mut dedup = Dedup::default();
        assert!(dedup.first_sighting("a", 0, 0));
        assert!(!dedup.first_sighting("a", 0, 0));
        // Seen at 0, but the window now starts at 1: a new sighting.
        assert!(dedup.first_sighting("a", 5, 1));
        for i in 0..EPOCH_LEN as i64 * 2 {
            dedup.first_sighting(&format!("x{i}"), i, 0);
        }
        assert!(dedup.len() >= EPOCH_LEN * 2);
        dedup.forget_before(EPOCH_LEN as i64 * 3);
        assert!(dedup.len() < EPOCH_LEN);
    }
}
