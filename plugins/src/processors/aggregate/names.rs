//! Agent and workflow-type names interned to small indices, capped so that
//! bad input cannot grow memory.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// Name of the catch-all past a cap.
pub const OTHER: &str = "other";
/// Name of a workflow type not yet known.
pub const UNKNOWN: &str = "unknown";
/// An empty entry of [`Names::recent`].
const EMPTY: u16 = u16::MAX;
/// Most names one table holds (indices are `u16`, one kept for [`EMPTY`]).
const MAX_NAMES: usize = u16::MAX as usize - 1;

/// Names interned to small indices, with a cap past which names map to
/// `other`, so bad input cannot grow memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Names {
    names: Vec<String>,
    #[serde(skip)]
    index: FxHashMap<String, u16>,
    /// Recently interned names by a hash of their [`NameKey`], with their
    /// index ([`EMPTY`]: none): most lookups end here, without hashing the
    /// whole name or comparing it. A sentinel rather than an `Option`: this
    /// is looked at for every event and a tuple of plain words stays small.
    #[serde(skip)]
    recent: Vec<(NameKey, u16)>,
}

/// Entries of [`Names::recent`].
const RECENT: usize = 64;

/// (length, first 8 bytes, last 8 bytes) of a name: the whole name when it
/// is at most 16 bytes long, as agent and type names are.
type NameKey = (usize, u64, u64);

fn name_key(name: &str) -> NameKey {
    let b = name.as_bytes();
    let len = b.len();
    // Fixed-size loads, not a variable-length copy (which calls memcpy).
    match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        (Some(head), Some(tail)) => (len, u64::from_le_bytes(*head), u64::from_le_bytes(*tail)),
        _ => {
            let short = b
                .iter()
                .enumerate()
                .fold(0u64, |v, (i, c)| v | u64::from(*c) << (8 * i));
            (len, short, 0)
        }
    }
}

impl Names {
    /// Every name, by index.
    pub(super) fn all(&self) -> &[String] {
        &self.names
    }

    pub(super) fn rebuild_index(&mut self) {
        self.recent.clear();
        self.index = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u16))
            .collect();
    }

    #[inline]
    pub(super) fn intern(&mut self, name: &str, cap: usize) -> u16 {
        let key = name_key(name);
        let at = ((key.1 ^ key.2.rotate_left(29) ^ key.0 as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> 58) as usize;
        if let Some(&(k, i)) = self.recent.get(at) {
            // Up to 16 bytes the key is the whole name.
            if k == key && i != EMPTY && (key.0 <= 16 || self.name(i) == name) {
                return i;
            }
        }
        let i = self.intern_slow(name, cap);
        if self.recent.is_empty() {
            self.recent = vec![((0, 0, 0), EMPTY); RECENT];
        }
        self.recent[at] = (key, i);
        i
    }

    fn intern_slow(&mut self, name: &str, cap: usize) -> u16 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        // Past the cap, new names are `other`; a name once admitted stays.
        let name = if self.names.len() >= cap.min(MAX_NAMES) {
            OTHER
        } else {
            name
        };
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as u16;
        self.names.push(name.to_owned());
        self.index.insert(name.to_owned(), i);
        i
    }

    pub(super) fn name(&self, i: u16) -> &str {
        self.names.get(i as usize).map_or(UNKNOWN, String::as_str)
    }
}
