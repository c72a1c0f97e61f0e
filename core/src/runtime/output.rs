//! Fan-out from one component to every consumer, with backpressure or
//! counted drops per consumer.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::WhenFull;
use crate::record::{Batch, Record, RecordKinds};
use crate::telemetry::ComponentStats;

/// One consumer of a component's output.
#[derive(Debug)]
pub(crate) struct Target {
    pub name: String,
    pub tx: mpsc::Sender<Batch>,
    pub when_full: WhenFull,
    /// The consumer's counters (drops are counted against the consumer).
    pub stats: Arc<ComponentStats>,
    /// Kinds the consumer takes, when it does not take all we emit.
    pub filter: Option<RecordKinds>,
}

/// Where a component sends its batches: every consumer gets each batch (the
/// records are shared, not copied).
#[derive(Debug)]
pub struct Output {
    /// The producing component: each batch it sends says so (`Batch::via`).
    producer: Arc<str>,
    targets: Vec<Target>,
    stats: Arc<ComponentStats>,
}

impl Output {
    pub(crate) fn new(producer: &str, targets: Vec<Target>, stats: Arc<ComponentStats>) -> Output {
        Output {
            producer: producer.into(),
            targets,
            stats,
        }
    }

    /// An output with no consumer, for tests and benchmarks of a single
    /// component: everything sent to it is counted and dropped.
    pub fn discard() -> Output {
        Output::new("test", Vec::new(), Arc::default())
    }

    /// An output feeding one channel, for tests and benchmarks of a single
    /// component.
    pub fn channel(capacity: usize) -> (Output, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel(capacity);
        let target = Target {
            name: "test".into(),
            tx,
            when_full: WhenFull::Block,
            stats: Arc::default(),
            filter: None,
        };
        (Output::new("test", vec![target], Arc::default()), rx)
    }

    /// Sends a batch to every consumer. With `when_full = "block"` this waits
    /// for room (backpressure); with `"drop_newest"` a full consumer misses the
    /// batch and counts the drop. A consumer that has stopped fails the batch.
    pub async fn send(&mut self, mut batch: Batch) {
        if batch.is_empty() && !batch.is_notice() {
            return;
        }
        batch.set_via(&self.producer);
        self.stats.sent(batch.len());
        let Some((last, rest)) = self.targets.split_last() else {
            return;
        };
        for target in rest {
            deliver(target, batch.clone()).await;
        }
        deliver(last, batch).await;
    }

    /// Sends one record, derived from no acknowledged input.
    pub async fn send_one(&mut self, record: Record) {
        self.send(Batch::unacked(vec![record])).await;
    }

    /// Whether every consumer has stopped (a source may stop reading).
    pub fn is_closed(&self) -> bool {
        self.targets.iter().all(|t| t.tx.is_closed())
    }
}

async fn deliver(target: &Target, batch: Batch) {
    let batch = match target.filter {
        Some(kinds) => filter(batch, kinds),
        None => batch,
    };
    if batch.is_empty() && !batch.is_notice() {
        return;
    }
    match target.when_full {
        WhenFull::Block => {
            if let Err(mpsc::error::SendError(batch)) = target.tx.send(batch).await {
                batch.fail();
            }
        }
        WhenFull::DropNewest => match target.tx.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(batch)) => {
                // Dropped on purpose by configuration: not a delivery failure,
                // or the source would redeliver it forever.
                target.stats.dropped(batch.len());
                tracing::trace!(consumer = %target.name, records = batch.len(), "buffer full; batch dropped");
            }
            Err(mpsc::error::TrySendError::Closed(batch)) => batch.fail(),
        },
    }
}

fn filter(batch: Batch, kinds: RecordKinds) -> Batch {
    batch.retain(|_, r| kinds.contains_all(kind_set(r)))
}

fn kind_set(record: &Record) -> RecordKinds {
    match record {
        Record::Event(_) => RecordKinds::EVENTS,
        Record::Metrics(_) => RecordKinds::METRICS,
        Record::Alert(_) => RecordKinds::ALERTS,
        Record::Custom(_) => RecordKinds::CUSTOM,
    }
}
