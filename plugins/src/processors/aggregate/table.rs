//! An open-addressing table keyed by [`IdKey`], whose bucket is known before
//! the lookup, so a batch can prefetch the buckets of the events ahead.
//!
//! An `IdKey` is already a uniform 128-bit hash: its low bits are the
//! bucket, with no further hashing. Linear probing keeps a probe within one
//! or two adjacent cache lines; removal shifts the following entries back
//! (no tombstones), so probe lengths never degrade under churn.
//!
//! A table stores its keys whole ([`IdKey`], 128 bits) or cut to 96 bits
//! ([`Key96`]): with a 32-bit value that makes a 16-byte bucket, four to a
//! cache line, where a whole key and a 64-bit value take 24.

use super::dedup::IdKey;

/// How a table stores its keys. A stored key whose low half is zero marks
/// an empty bucket: keys are stored and looked up [`IdKey::nonzero`].
pub trait StoredKey: Copy + Eq + std::fmt::Debug {
    /// The empty bucket's key.
    const EMPTY: Self;
    /// The stored form of `key`.
    fn pack(key: IdKey) -> Self;
    /// The low 64 bits, kept whole (they choose the bucket).
    fn low(self) -> u64;
    /// The key as stored, back as an [`IdKey`].
    fn unpack(self) -> IdKey;
}

impl StoredKey for IdKey {
    const EMPTY: IdKey = IdKey::ZERO;

    #[inline(always)]
    fn pack(key: IdKey) -> IdKey {
        key
    }

    #[inline(always)]
    fn low(self) -> u64 {
        IdKey::low(self)
    }

    #[inline(always)]
    fn unpack(self) -> IdKey {
        self
    }
}

/// An [`IdKey`] cut to its low 96 bits, in three 32-bit words so that it
/// packs with a 32-bit value into 16 bytes. Two identities then collide
/// with a chance of one in 2^96 per pair, not 2^128: still never, for any
/// number of identities a window holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key96([u32; 3]);

impl StoredKey for Key96 {
    const EMPTY: Key96 = Key96([0; 3]);

    #[inline(always)]
    fn pack(key: IdKey) -> Key96 {
        let low = key.low();
        Key96([low as u32, (low >> 32) as u32, key.high() as u32])
    }

    #[inline(always)]
    fn low(self) -> u64 {
        u64::from(self.0[0]) | u64::from(self.0[1]) << 32
    }

    #[inline(always)]
    fn unpack(self) -> IdKey {
        IdKey::from_parts(self.low(), u64::from(self.0[2]))
    }
}

#[inline(always)]
fn is_empty<K: StoredKey>(key: K) -> bool {
    key.low() == 0
}

#[derive(Debug, Clone, Copy)]
struct Bucket<V, K> {
    key: K,
    value: V,
}

/// A map from [`IdKey`] to small `Copy` values, its keys stored as `K`.
/// See the module docs.
#[derive(Debug, Clone)]
pub struct KeyTable<V: Copy + Default, K: StoredKey = IdKey> {
    buckets: Vec<Bucket<V, K>>,
    len: usize,
}

impl<V: Copy + Default, K: StoredKey> Default for KeyTable<V, K> {
    fn default() -> Self {
        KeyTable::with_capacity(0)
    }
}

/// Issues a prefetch of the cache line holding `p`. It never faults, so any
/// address is fine.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never reads memory architecturally;
    // SSE is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl<V: Copy + Default, K: StoredKey> KeyTable<V, K> {
    /// A table holding `capacity` entries without growing (at most 3/4 of
    /// its buckets used, where linear probing stays short).
    pub fn with_capacity(capacity: usize) -> KeyTable<V, K> {
        let buckets = (capacity * 4).div_ceil(3).next_power_of_two().max(16);
        KeyTable {
            buckets: vec![
                Bucket {
                    key: K::EMPTY,
                    value: V::default(),
                };
                buckets
            ],
            len: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Entries it holds without growing.
    pub fn capacity(&self) -> usize {
        self.buckets.len() / 4 * 3
    }

    fn mask(&self) -> usize {
        self.buckets.len() - 1
    }

    fn home(&self, low: u64) -> usize {
        low as usize & self.mask()
    }

    /// Prefetches the bucket `key` starts probing at, and the next cache
    /// line, where a probe that started near the end of a line goes on.
    #[inline(always)]
    pub fn prefetch(&self, key: IdKey) {
        let home = self.buckets.as_ptr().wrapping_add(self.home(key.low()));
        prefetch(home);
        prefetch(home.cast::<u8>().wrapping_add(64));
    }

    /// The position of `key`, or of the empty bucket where it would go.
    #[inline(always)]
    fn find(&self, key: K) -> (usize, bool) {
        let mask = self.mask();
        let low = key.low();
        let mut i = self.home(low);
        loop {
            let k = self.buckets[i].key;
            // The low halves settle almost every comparison.
            if k.low() == low {
                if k == key {
                    return (i, true);
                }
            } else if is_empty(k) {
                return (i, false);
            }
            i = (i + 1) & mask;
        }
    }

    /// The value of `key`.
    #[inline(always)]
    pub fn get(&self, key: IdKey) -> Option<V> {
        match self.find(K::pack(key.nonzero())) {
            (i, true) => Some(self.buckets[i].value),
            _ => None,
        }
    }

    /// The value of `key`, inserted as `default` if absent; and whether it
    /// was present.
    #[inline(always)]
    pub fn entry(&mut self, key: IdKey, default: V) -> (&mut V, bool) {
        let key = K::pack(key.nonzero());
        let (mut i, found) = self.find(key);
        if !found {
            if self.len >= self.capacity() {
                self.grow();
                i = self.find(key).0;
            }
            self.buckets[i] = Bucket {
                key,
                value: default,
            };
            self.len += 1;
        }
        (&mut self.buckets[i].value, found)
    }

    /// Sets the value of `key`.
    pub fn insert(&mut self, key: IdKey, value: V) {
        *self.entry(key, value).0 = value;
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: IdKey) -> Option<V> {
        let (mut hole, found) = self.find(K::pack(key.nonzero()));
        if !found {
            return None;
        }
        let value = self.buckets[hole].value;
        let mask = self.mask();
        // Shift back every following entry whose home is not between the
        // hole and itself, so every entry stays reachable from its home.
        let mut i = hole;
        loop {
            i = (i + 1) & mask;
            let k = self.buckets[i].key;
            if is_empty(k) {
                break;
            }
            let home = self.home(k.low());
            let stays = if hole <= i {
                hole < home && home <= i
            } else {
                hole < home || home <= i
            };
            if !stays {
                self.buckets[hole] = self.buckets[i];
                hole = i;
            }
        }
        self.buckets[hole].key = K::EMPTY;
        self.len -= 1;
        Some(value)
    }

    /// Empties the table, keeping its buckets.
    pub fn clear(&mut self) {
        for bucket in &mut self.buckets {
            bucket.key = K::EMPTY;
        }
        self.len = 0;
    }

    /// The entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (IdKey, V)> + '_ {
        self.buckets
            .iter()
            .filter(|b| !is_empty(b.key))
            .map(|b| (b.key.unpack(), b.value))
    }

    fn grow(&mut self) {
        let old = std::mem::replace(self, KeyTable::with_capacity(self.capacity() * 2));
        for bucket in old.buckets.iter().filter(|b| !is_empty(b.key)) {
            let (i, _) = self.find(bucket.key);
            self.buckets[i] = *bucket;
        }
        self.len = old.len;
    }
}

impl<V: Copy + Default, K: StoredKey> FromIterator<(IdKey, V)> for KeyTable<V, K> {
    fn from_iter<I: IntoIterator<Item = (IdKey, V)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut table = KeyTable::with_capacity(iter.size_hint().0);
        for (key, value) in iter {
            table.insert(key, value);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        Get(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u16>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            any::<u16>().prop_map(Op::Remove),
            any::<u16>().prop_map(Op::Get),
        ]
    }

    /// Keys from a small space with few distinct low bits, so probe runs
    /// collide, wrap around the end and get shifted back on removal.
    fn key(k: u16) -> IdKey {
        IdKey::from_parts(
            u64::from(k % 61) * 0x9E37 + u64::from(k >> 13) + 1,
            u64::from(k),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Against a plain map, under inserts, removals and lookups.
        #[test]
        fn agrees_with_a_plain_map(ops in prop::collection::vec(op(), 1..3000)) {
            agrees::<IdKey>(&ops)?;
        }

        /// The same with keys cut to 96 bits (the keys here differ within them).
        #[test]
        fn agrees_with_a_plain_map_with_96_bit_keys(ops in prop::collection::vec(op(), 1..3000)) {
            agrees::<Key96>(&ops)?;
        }
    }

    fn agrees<K: StoredKey>(ops: &[Op]) -> Result<(), TestCaseError> {
        let mut table = KeyTable::<u32, K>::with_capacity(4);
        let mut oracle = HashMap::new();
        for op in ops.iter().cloned() {
            match op {
                Op::Insert(k, v) => {
                    table.insert(key(k), v);
                    oracle.insert(k, v);
                }
                Op::Remove(k) => prop_assert_eq!(table.remove(key(k)), oracle.remove(&k)),
                Op::Get(k) => prop_assert_eq!(table.get(key(k)), oracle.get(&k).copied()),
            }
            prop_assert_eq!(table.len(), oracle.len());
        }
        for (k, v) in &oracle {
            prop_assert_eq!(table.get(key(*k)), Some(*v));
        }
        let mut listed: Vec<(IdKey, u32)> = table.iter().collect();
        listed.sort();
        let mut expected: Vec<(IdKey, u32)> = oracle.iter().map(|(k, v)| (key(*k), *v)).collect();
        expected.sort();
        prop_assert_eq!(listed, expected);
        Ok(())
    }

    #[test]
    fn a_96_bit_key_packs_into_a_16_byte_bucket_and_keeps_its_low_96_bits() {
        assert_eq!(std::mem::size_of::<Bucket<u32, Key96>>(), 16);
        let key = IdKey::from_parts(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        assert_eq!(
            Key96::pack(key).unpack(),
            IdKey::from_parts(0x0123_4567_89ab_cdef, 0x7654_3210)
        );
        assert_eq!(StoredKey::low(Key96::pack(key)), key.low());
    }

    /// A zero low half (the empty mark) from a damaged snapshot is stored
    /// and found like any key, never looped on.
    #[test]
    fn keys_with_a_zero_low_half_are_kept_apart_from_empty_buckets() {
        let mut table = KeyTable::<u32>::with_capacity(4);
        let zero = IdKey::from_parts(0, 7);
        assert_eq!(table.get(zero), None);
        table.insert(zero, 1);
        assert_eq!(table.get(zero), Some(1));
        assert_eq!(table.remove(zero), Some(1));
        assert_eq!(table.get(zero), None);
    }

    #[test]
    fn clear_keeps_the_buckets_and_forgets_the_entries() {
        let mut table = KeyTable::<u32>::with_capacity(100);
        let buckets = table.buckets.len();
        for k in 0..100 {
            table.insert(key(k), u32::from(k));
        }
        assert_eq!(table.buckets.len(), buckets, "no growth within capacity");
        table.clear();
        assert_eq!(table.len(), 0);
        assert_eq!(table.get(key(5)), None);
        assert_eq!(table.buckets.len(), buckets);
    }
}
