//! Rings of time buckets by event time: one-second buckets for the sliding
//! windows (1 m, 5 m, 15 m, system health), and one bucket per emission
//! interval for the history.

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};

/// A mergeable quantile sketch with 1% relative accuracy (DDSketch).
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sketch(DDSketch);

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sketch(count={})", self.0.count())
    }
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch(DDSketch::new(Config::defaults()))
    }
}

impl Sketch {
    /// Adds one value.
    pub fn add(&mut self, v: f64) {
        self.0.add(v);
    }

    /// Adds another sketch's values.
    pub fn merge(&mut self, other: &Sketch) {
        // Both use the default config, so merging cannot fail.
        let _ = self.0.merge(&other.0);
    }

    /// The `q` quantile, 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        self.0.quantile(q).ok().flatten().unwrap_or(0.0)
    }
}

/// What happened in one bucket of event time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bucket {
    /// The bucket's index (seconds, or intervals, since the epoch).
    pub index: i64,
    /// Workflows that completed or failed.
    pub finished: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Stage tasks that completed.
    pub stages_ok: u64,
    /// Stage tasks that failed.
    pub stages_failed: u64,
    /// Durations of the finished workflows.
    pub durations: Option<Sketch>,
}

impl Bucket {
    fn merge(&mut self, other: &Bucket) {
        self.finished += other.finished;
        self.failed += other.failed;
        self.stages_ok += other.stages_ok;
        self.stages_failed += other.stages_failed;
        if let Some(theirs) = &other.durations {
            match &mut self.durations {
                Some(ours) => ours.merge(theirs),
                None => self.durations = Some(theirs.clone()),
            }
        }
    }
}

/// A ring of buckets of `width_ms` each, keeping the newest `len`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketRing {
    width_ms: i64,
    slots: Vec<Option<Bucket>>,
    /// The two buckets used last (index, slot), most recent first. Stage
    /// events land in the current second while workflow events land where
    /// the watermark is, a few seconds back: with two remembered, both find
    /// their bucket here without a division.
    #[serde(skip)]
    recent: [Option<(i64, usize)>; 2],
}

impl BucketRing {
    /// A ring of `len` buckets of `width_ms`.
    pub fn new(width_ms: i64, len: usize) -> BucketRing {
        BucketRing {
            width_ms: width_ms.max(1),
            slots: vec![None; len.max(1)],
            recent: [None; 2],
        }
    }

    /// The bucket index of a timestamp.
    pub fn index_of(&self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.width_ms)
    }

    /// Width of a bucket in ms.
    pub fn width_ms(&self) -> i64 {
        self.width_ms
    }

    /// The bucket for `ts_ms`, or `None` if it is older than the ring keeps.
    pub fn bucket_mut(&mut self, ts_ms: i64) -> Option<&mut Bucket> {
        for i in 0..self.recent.len() {
            let Some((index, slot)) = self.recent[i] else {
                continue;
            };
            let start = index * self.width_ms;
            let hit = ts_ms >= start
                && ts_ms < start + self.width_ms
                && self.slots[slot].as_ref().is_some_and(|b| b.index == index);
            if hit {
                self.recent.swap(0, i);
                return self.slots[slot].as_mut();
            }
        }
        let index = self.index_of(ts_ms);
        let len = self.slots.len() as i64;
        let position = index.rem_euclid(len) as usize;
        self.recent = [Some((index, position)), self.recent[0]];
        let slot = &mut self.slots[position];
        match slot {
            Some(bucket) if bucket.index == index => {}
            Some(bucket) if bucket.index > index => return None,
            _ => {
                *slot = Some(Bucket {
                    index,
                    ..Bucket::default()
                })
            }
        }
        slot.as_mut()
    }

    /// The buckets with index in `(newest − n, newest]`, oldest first.
    pub fn range(&self, newest: i64, n: i64) -> impl Iterator<Item = &Bucket> {
        let len = self.slots.len() as i64;
        (newest - n.min(len) + 1..=newest).filter_map(move |index| {
            self.slots[index.rem_euclid(len) as usize]
                .as_ref()
                .filter(|b| b.index == index)
        })
    }

    /// Adds another ring's buckets (same width and length) into this one.
    pub fn merge(&mut self, other: &BucketRing) {
        for bucket in other.slots.iter().flatten() {
            let ts = bucket.index * self.width_ms;
            if let Some(ours) = self.bucket_mut(ts) {
                ours.merge(bucket);
            }
        }
    }
}

/// Totals over a range of buckets.
#[derive(Debug, Default)]
pub struct Totals {
    /// Finished workflows.
    pub finished: u64,
    /// Failed ones.
    pub failed: u64,
    /// Stage tasks completed.
    pub stages_ok: u64,
    /// Stage tasks failed.
    pub stages_failed: u64,
    /// Merged durations.
    pub durations: Option<Sketch>,
}

impl Totals {
    /// Sums `buckets`.
    pub fn of<'a>(buckets: impl Iterator<Item = &'a Bucket>) -> Totals {
        let mut total = Bucket::default();
        for bucket in buckets {
            total.merge(bucket);
        }
        Totals {
            finished: total.finished,
            failed: total.failed,
            stages_ok: total.stages_ok,
            stages_failed: total.stages_failed,
            durations: total.durations,
        }
    }

    /// A quantile of the merged durations, 0 when none.
    pub fn quantile(&self, q: f64) -> f64 {
        self.durations.as_ref().map_or(0.0, |s| s.quantile(q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Against a plain map of position → (index, count): lookups in any
        /// order (alternating between two buckets, as stage and workflow
        /// events do; wrapping the ring; older than it keeps) find the same
        /// bucket, or none, as computing every position afresh would.
        #[test]
        fn finds_the_bucket_a_fresh_computation_would(
            width in 1i64..3_000,
            len in 1usize..20,
            times in prop::collection::vec(-5_000i64..60_000, 1..400),
        ) {
            let mut ring = BucketRing::new(width, len);
            let mut oracle: HashMap<i64, (i64, u64)> = HashMap::new();
            for ts in times {
                let index = ts.div_euclid(width);
                let position = index.rem_euclid(len as i64);
                let expected = match oracle.get_mut(&position) {
                    Some((held, count)) if *held == index => {
                        *count += 1;
                        Some(*count)
                    }
                    Some((held, _)) if *held > index => None,
                    _ => {
                        oracle.insert(position, (index, 1));
                        Some(1)
                    }
                };
                let found = ring.bucket_mut(ts).map(|bucket| {
                    bucket.stages_ok += 1;
                    (bucket.index, bucket.stages_ok)
                });
                prop_assert_eq!(found, expected.map(|count| (index, count)), "ts {}", ts);
            }
        }
    }
}
