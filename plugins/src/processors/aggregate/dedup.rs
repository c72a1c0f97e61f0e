//! Remembered event identities, for dropping duplicates within a window of
//! event time.
//!
//! Identities are 128-bit hashes. New ones go to a hot table; when it
//! holds [`EPOCH_LEN`] entries it is frozen into an epoch. Every epoch has a
//! Bloom filter column; the columns are interleaved sixteen to a cache
//! line, so one lookup reads the same word of sixteen epochs' filters from
//! one line, and only a filter hit (a duplicate, or a rare false positive)
//! looks into that epoch's own table. The hot table fills its column as
//! identities arrive, so freezing it costs nothing. An epoch is dropped whole
//! once all its identities are older than the window, and its table and
//! column are reused. Compared with one big hash table this turns a cache
//! miss per event into a couple of cache hits, and [`Dedup::prefetch`] lets
//! a batch fetch those lines for the events ahead while it folds the current
//! one.

use serde::{Deserialize, Serialize};

use super::table::{prefetch, Key96, KeyTable};

/// Entries per epoch: 3/4 of 2^16, the most a [`KeyTable`] of 2^16 buckets
/// holds without doubling (1 MB: 16-byte buckets).
pub(super) const EPOCH_LEN: usize = (1 << 16) / 4 * 3;
/// Bloom filter bits per entry.
const BITS_PER_ENTRY: usize = 32;
/// 32-bit words of every epoch's filter.
const FILTER_WORDS: usize = EPOCH_LEN * BITS_PER_ENTRY / 32;
/// Filter columns per cache line: a window of up to 16 epochs (~780k
/// identities) takes one line per lookup.
const LANES: usize = 16;

/// One word of the filters of [`LANES`] epochs: one cache line. 32-bit
/// words, so testing all lanes is a few SIMD compares.
#[derive(Debug, Clone, Copy, Default)]
#[repr(align(64))]
struct Line([u32; LANES]);

/// The filters of [`LANES`] columns, a [`Line`] per filter word.
type Group = Vec<Line>;

fn new_group() -> Group {
    vec![Line::default(); FILTER_WORDS]
}

/// Half the span of event time a table's 32-bit stamps cover, ms (~24.8
/// days): a table's base is this far behind the first (or, restored, the
/// newest) time it takes.
const HALF_SPAN_MS: i64 = 1 << 31;

/// The longest dedup window the stamps allow, ms: a time clamped up to its
/// table's base is still older than every cutoff the window then applies.
pub const MAX_WINDOW_MS: i64 = HALF_SPAN_MS - 1;

/// Identities and when each was seen, as 32-bit offsets from the table's
/// base time: with 96-bit keys a bucket is 16 bytes, not 24.
#[derive(Debug, Clone)]
struct IdTable {
    stamps: KeyTable<u32, Key96>,
    base: i64,
}

impl IdTable {
    fn new() -> IdTable {
        IdTable {
            stamps: KeyTable::with_capacity(EPOCH_LEN),
            base: 0,
        }
    }

    fn len(&self) -> usize {
        self.stamps.len()
    }

    /// When `key` was seen.
    #[inline]
    fn get(&self, key: IdKey) -> Option<i64> {
        self.stamps.get(key).map(|stamp| self.time(stamp))
    }

    /// The time a stamp stands for.
    #[inline]
    fn time(&self, stamp: u32) -> i64 {
        self.base + i64::from(stamp)
    }

    /// The stamp of `ts`, clamped into range. A time before the base is
    /// taken as the base: it is older than [`HALF_SPAN_MS`] before a time
    /// the table holds, so it is out of any window either way.
    #[inline]
    fn stamp(&self, ts: i64) -> u32 {
        ts.saturating_sub(self.base).clamp(0, i64::from(u32::MAX)) as u32
    }

    /// Whether `ts` is past the range of the stamps.
    #[inline]
    fn too_new(&self, ts: i64) -> bool {
        ts.saturating_sub(self.base) > i64::from(u32::MAX)
    }

    fn iter(&self) -> impl Iterator<Item = (IdKey, i64)> + '_ {
        self.stamps
            .iter()
            .map(|(key, stamp)| (key, self.time(stamp)))
    }

    fn clear(&mut self) {
        self.stamps.clear();
    }
}

/// A 128-bit identity hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdKey(u64, u64);

impl IdKey {
    /// A key no identity has (its low half, zero, marks empty buckets).
    pub const ZERO: IdKey = IdKey(0, 0);

    /// The key of an event identity.
    #[inline]
    pub fn of(id: &str) -> IdKey {
        let hash = xxhash_rust::xxh3::xxh3_128(id.as_bytes());
        IdKey(hash as u64, (hash >> 64) as u64).nonzero()
    }

    /// The key with a low half of zero (one chance in 2^64, or a damaged
    /// snapshot) moved off the empty-bucket mark.
    #[inline]
    pub fn nonzero(self) -> IdKey {
        IdKey(self.0.max(1), self.1)
    }

    /// The low 64 bits (uniform: a bucket index needs no further hashing).
    #[inline]
    pub fn low(self) -> u64 {
        self.0
    }

    /// The high 64 bits.
    #[inline]
    pub fn high(self) -> u64 {
        self.1
    }

    /// A key from its two halves.
    pub fn from_parts(low: u64, high: u64) -> IdKey {
        IdKey(low, high)
    }
}

/// An identity's key with its place in the filters, computed once per
/// event and used both to prefetch and to look up.
#[derive(Debug, Clone, Copy)]
pub struct Sighting {
    key: IdKey,
    /// The filter word.
    word: u32,
    /// The six bits the key sets in it (about 0.1% false positives per
    /// epoch at 32 bits per entry).
    mask: u32,
}

impl Sighting {
    /// The sighting of `key`.
    #[inline]
    pub fn of(key: IdKey) -> Sighting {
        // Multiply-shift maps the hash onto the words without a division.
        let word = ((u128::from(key.0) * FILTER_WORDS as u128) >> 64) as u32;
        let h = key.1;
        let mask = (0..6).fold(0u32, |mask, i| mask | 1 << ((h >> (5 * i)) & 31));
        Sighting { key, word, mask }
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
    /// Column `c`'s word `w` is `filters[c / LANES][w].0[c % LANES]`; lanes
    /// past `epochs.len()` stay zero.
    filters: Vec<Group>,
    /// The table of the last expired epoch, reused for the next hot table.
    spare: Option<IdTable>,
    next_order: u64,
    /// The oldest `newest_ms` of any epoch: nothing expires before it.
    oldest_ms: i64,
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup {
            hot: IdTable::new(),
            hot_newest_ms: i64::MIN,
            hot_slot: 0,
            epochs: vec![None],
            filters: vec![new_group()],
            spare: None,
            next_order: 0,
            oldest_ms: i64::MAX,
        }
    }
}

/// The lanes of `line` that have all bits of `mask`, as bits. Branch-free.
#[inline]
fn matches(line: &Line, mask: u32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_and_si128, _mm_castsi128_ps, _mm_cmpeq_epi32, _mm_load_si128,
            _mm_movemask_ps, _mm_set1_epi32,
        };
        let lanes = line.0.as_ptr().cast::<__m128i>();
        let mut hits = 0;
        // SAFETY: SSE2 is part of the x86_64 baseline; a `Line` is 64-byte
        // aligned and 64 bytes long, so the four 16-byte loads are aligned
        // and in bounds.
        unsafe {
            let mask = _mm_set1_epi32(mask as i32);
            for quarter in 0..4 {
                let words = _mm_load_si128(lanes.add(quarter));
                let full = _mm_cmpeq_epi32(_mm_and_si128(words, mask), mask);
                hits |= (_mm_movemask_ps(_mm_castsi128_ps(full)) as u32) << (4 * quarter);
            }
        }
        hits
    }
    #[cfg(not(target_arch = "x86_64"))]
    line.0.iter().enumerate().fold(0, |hits, (lane, bits)| {
        hits | u32::from(bits & mask == mask) << lane
    })
}

#[cfg(test)]
#[test]
fn matches_finds_exactly_the_lanes_with_every_bit_of_the_mask() {
    let mask = 0b1010_0001;
    let mut line = Line::default();
    line.0[0] = mask;
    line.0[5] = mask | 0b100;
    line.0[6] = mask & !1;
    line.0[15] = u32::MAX;
    assert_eq!(matches(&line, mask), 1 | 1 << 5 | 1 << 15);
}

impl Dedup {
    /// Records `id` seen at `ts`; false if it was already seen at an event
    /// time of at least `cutoff` (the oldest time still in the window).
    #[cfg(test)]
    pub fn first_sighting(&mut self, id: &str, ts: i64, cutoff: i64) -> bool {
        self.first(Sighting::of(IdKey::of(id)), ts, cutoff)
    }

    /// Prefetches what [`Dedup::first`] of `sighting` reads: its filter
    /// lines and its hot-table bucket.
    #[inline]
    pub fn prefetch(&self, sighting: &Sighting) {
        for group in &self.filters {
            prefetch(group.as_ptr().wrapping_add(sighting.word as usize));
        }
        self.hot.stamps.prefetch(sighting.key);
    }

    /// Records an identity seen at `ts`; false if it was already seen at an
    /// event time of at least `cutoff` (the oldest time still in the window).
    pub fn first(&mut self, sighting: Sighting, ts: i64, cutoff: i64) -> bool {
        let Sighting { key, word, mask } = sighting;
        let word = word as usize;
        // Before the epochs are looked at, so that a hot table frozen here
        // (its stamps cannot reach `ts`) is looked at as one.
        if self.hot.len() > 0 && self.hot.too_new(ts) {
            self.freeze();
        }
        if self.hot.len() == 0 {
            self.hot.base = ts.saturating_sub(HALF_SPAN_MS);
        }
        for (g, group) in self.filters.iter().enumerate() {
            let mut hits = matches(&group[word], mask);
            while hits != 0 {
                let slot = g * LANES + hits.trailing_zeros() as usize;
                hits &= hits - 1;
                // The hot column has no epoch: the hot table is looked at below.
                let seen = self.epochs.get(slot).and_then(Option::as_ref);
                if seen
                    .and_then(|e| e.entries.get(key))
                    .is_some_and(|seen| seen >= cutoff)
                {
                    return false;
                }
            }
        }
        let base = self.hot.base;
        let stamp = self.hot.stamp(ts);
        let (seen, found) = self.hot.stamps.entry(key, stamp);
        if found {
            if base + i64::from(*seen) >= cutoff {
                return false;
            }
            *seen = stamp;
        } else {
            self.mark(self.hot_slot, word, mask);
        }
        self.hot_newest_ms = self.hot_newest_ms.max(ts);
        if self.hot.len() >= EPOCH_LEN {
            self.freeze();
        }
        true
    }

    /// Sets `mask` in word `word` of column `slot`.
    #[inline]
    fn mark(&mut self, slot: usize, word: usize, mask: u32) {
        self.filters[slot / LANES][word].0[slot % LANES] |= mask;
    }

    /// Makes the hot table an epoch (its filter column is already built) and
    /// starts a new one in a free column.
    fn freeze(&mut self) {
        let next = self.spare.take().unwrap_or_else(IdTable::new);
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

    /// Fills the empty hot table with a snapshot's identities. Its base is
    /// [`HALF_SPAN_MS`] behind the newest, so all of them fit (older ones
    /// are clamped, out of any window) and so do the times after them.
    fn load_hot(&mut self, entries: &[(IdKey, i64)]) {
        debug_assert_eq!(self.hot.len(), 0, "loaded into a used hot table");
        if let Some(newest) = entries.iter().map(|&(_, ts)| ts).max() {
            self.hot.base = newest.saturating_sub(HALF_SPAN_MS);
        }
        for &(key, ts) in entries {
            let Sighting { word, mask, .. } = Sighting::of(key);
            let stamp = self.hot.stamp(ts);
            let (seen, found) = self.hot.stamps.entry(key, stamp);
            if found {
                *seen = (*seen).max(stamp);
            } else {
                self.mark(self.hot_slot, word as usize, mask);
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

    /// One more filter column, in a new group of lanes when the last one is
    /// full (only while the window first fills).
    fn add_slot(&mut self) -> usize {
        let slot = self.epochs.len();
        if slot == self.filters.len() * LANES {
            self.filters.push(new_group());
        }
        self.epochs.push(None);
        slot
    }

    /// Drops epochs wholly older than `cutoff`.
    pub fn forget_before(&mut self, cutoff: i64) {
        if cutoff <= self.oldest_ms {
            return;
        }
        for slot in 0..self.epochs.len() {
            if self.epochs[slot]
                .as_ref()
                .is_some_and(|e| e.newest_ms < cutoff)
            {
                if let Some(epoch) = self.epochs[slot].take() {
                    for line in self.filters[slot / LANES].iter_mut() {
                        line.0[slot % LANES] = 0;
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
            self.first(Sighting::of(key), ts, i64::MAX);
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
            dedup.load_hot(&entries);
            dedup.next_order = epoch.order;
            dedup.freeze();
        }
        dedup.load_hot(&form.hot);
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

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Against a plain map of last sightings, with time jumping further
        /// than the 32-bit stamps reach (so hot tables freeze early) and any
        /// window the config allows.
        #[test]
        fn agrees_with_a_plain_map_across_any_span_of_time(
            steps in prop::collection::vec(
                (0u32..300, prop_oneof![4 => 0i64..2_000, 1 => 0i64..(1i64 << 34)]),
                1..4_000,
            ),
            window in 1i64..=MAX_WINDOW_MS,
        ) {
            let mut dedup = Dedup::default();
            let mut oracle = std::collections::HashMap::new();
            let mut ts = 1_700_000_000_000i64;
            for (id, step) in steps {
                ts += step;
                let cutoff = ts - window;
                let expected = match oracle.get(&id) {
                    Some(&seen) if seen >= cutoff => false,
                    _ => {
                        oracle.insert(id, ts);
                        true
                    }
                };
                prop_assert_eq!(dedup.first_sighting(&format!("id-{id}"), ts, cutoff), expected);
            }
        }
    }

    /// Times older than a table's stamps reach (a merged partition's, a
    /// restored snapshot's) are kept as the base: still out of the window.
    #[test]
    fn times_before_a_tables_base_stay_out_of_the_window() {
        let now = 100 * HALF_SPAN_MS;
        let window = MAX_WINDOW_MS;
        let mut dedup = Dedup::default();
        assert!(dedup.first_sighting("now", now, now - window));
        let long_ago = now - 3 * HALF_SPAN_MS;
        assert!(dedup.first_sighting("old", long_ago, i64::MIN));
        assert!(!dedup.first_sighting("old", now, i64::MIN), "remembered");
        assert!(
            dedup.first_sighting("old", now, now - window),
            "out of the window"
        );
        let form = dedup.to_form(&|_| false);
        let mut again = Dedup::from_form(form, |_| None).unwrap();
        assert!(!again.first_sighting("now", now, now - window));
        assert!(!again.first_sighting("old", now, now - window));
    }

    /// A new identity looks into an epoch's table (a cache miss) only on a
    /// filter false positive: keep those rare with a full window.
    #[test]
    fn filters_rarely_send_new_identities_to_the_tables() {
        let mut dedup = Dedup::default();
        for i in 0..EPOCH_LEN as i64 * 3 {
            dedup.first_sighting(&format!("seen-{i}"), i, 0);
        }
        let frozen = dedup.epochs.iter().flatten().count();
        assert_eq!(frozen, 3);
        let lookups = 20_000;
        let mut hits = 0;
        for i in 0..lookups {
            let Sighting { word, mask, .. } = Sighting::of(IdKey::of(&format!("new-{i}")));
            let line = &dedup.filters[0][word as usize];
            hits += (0..dedup.epochs.len())
                .filter(|&slot| slot != dedup.hot_slot)
                .filter(|&slot| line.0[slot] & mask == mask)
                .count();
        }
        let per_epoch = hits as f64 / lookups as f64 / frozen as f64;
        assert!(per_epoch < 0.002, "{per_epoch} false positives per epoch");
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
