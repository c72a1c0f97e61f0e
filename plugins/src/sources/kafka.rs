//! `kafka`: reads events from a Kafka topic (any Kafka-protocol broker) as a
//! member of a consumer group.
//!
//! Each Kafka partition is read in order. A record written by a `kafka` sink
//! carries its upstream position (a Redis entry id, say) in headers, and the
//! source hands that position on as the record's place in a partition named
//! after the Kafka partition and the upstream one: a stateful processor
//! downstream then leaves out a record at or below the highest position it
//! has folded there, so what a restarted bridge sent twice counts once,
//! however long ago the first copy was read. A record without those headers
//! is placed by its Kafka offset.
//!
//! Where a partition starts, when processors keep state per partition of
//! it and checkpoint it: where their checkpoints say this source had read
//! it up to (the oldest of them; see [`resume`]), or `start` when one of them
//! holds no checkpoint of it. The checkpoint is the truth. Offsets are
//! stored for the group only once every record before them is delivered
//! (for a stateful processor: held in a durable checkpoint), for monitoring
//! tools, and to start from without a checkpoint store.

mod resume;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flowpulse_core::ack::{AckHandle, AckReceipt, BatchStatus};
use flowpulse_core::checkpoint::CheckpointStore;
use flowpulse_core::event::{decode_json, Decoded};
use flowpulse_core::outage::Outage;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, FieldError, PluginDescriptor, Source, SourceConfig,
    SourceContext, ValidateContext,
};
use flowpulse_core::record::{Assignments, Batch, Origin, Record, Shard};
use flowpulse_core::telemetry::ComponentStats;
use flowpulse_core::telemetry::Gauge;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::durable::write_atomic;
use crate::kafka_util::{self, POSITION_HEADER, UPSTREAM_HEADER};
use crate::sources::util::{DeadLetterFile, DEFAULT_BATCH_SIZE};

/// Properties the source sets for its guarantees.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.offset.store",
    "auto.offset.reset",
];

/// `[sources.NAME] type = "kafka"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, `host:port`, comma-separated.
    pub brokers: String,
    /// The topic to read.
    pub topic: String,
    /// The consumer group. Default `flowpulse`.
    #[serde(default = "default_group")]
    pub group: String,
    /// Where a partition starts that the group has no offset of (or, with a
    /// checkpoint store, that no checkpoint holds): `earliest` (the
    /// default) or `latest`.
    #[serde(default)]
    pub start: Start,
    /// Records per batch. Default 1024.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a partly filled batch waits for more records, e.g. `"20ms"`
    /// (the default).
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Finish once no record has arrived for this long (replays, tests).
    /// Default: never.
    #[serde(default, with = "humantime_serde")]
    pub stop_after_idle: Option<Duration>,
    /// Further librdkafka consumer properties (`session.timeout.ms`,
    /// `security.protocol`, `sasl.*` …). Never logged.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Where a new group starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// The oldest record the topic keeps.
    #[default]
    Earliest,
    /// Only records written from now on.
    Latest,
}

fn default_group() -> String {
    "flowpulse".into()
}

fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}

fn default_linger() -> Duration {
    Duration::from_millis(20)
}

inventory::submit! {
    PluginDescriptor::source::<KafkaSourceConfig>("kafka", "Reads events from a Kafka topic in a consumer group; records a bridge sent twice count once")
}

#[async_trait]
impl SourceConfig for KafkaSourceConfig {
    fn shards(&self) -> bool {
        true
    }

    /// The group's members, if it has any: instances reading the topic now,
    /// wherever they run (`flowpulse state reset` refuses while there are).
    async fn reader(&self) -> Result<Option<String>, String> {
        let config = kafka_util::client_config(&self.brokers, &self.options, &[]);
        let (group, topic) = (self.group.clone(), self.topic.clone());
        let cannot = |why: String| {
            format!(
                "cannot list consumer group \"{}\"'s members: {why}",
                self.group
            )
        };
        let ask = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
            let list = consumer
                .fetch_group_list(Some(&group), Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
                return Ok(None);
            };
            let members: Vec<String> = info
                .members()
                .iter()
                .map(|m| format!("{} at {}", m.client_id(), m.client_host()))
                .collect();
            Ok((!members.is_empty()).then(|| {
                format!(
                    "consumer group \"{group}\" of topic \"{topic}\" has {} member(s) ({}): they leave it when stopped, or after `session.timeout.ms` if killed",
                    members.len(),
                    members.join(", ")
                )
            }))
        });
        match tokio::time::timeout(Duration::from_secs(10), ask).await {
            Ok(Ok(answer)) => answer.map_err(cannot),
            Ok(Err(e)) => Err(cannot(e.to_string())),
            Err(_) => Err(cannot("no answer within 10 s".into())),
        }
    }
    fn validate(&self, _cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors =
            kafka_util::check_common(&self.brokers, &self.topic, &self.options, RESERVED);
        if self.group.trim().is_empty() {
            errors.push(FieldError::new("group", "must not be empty"));
        }
        if self.batch_size == 0 {
            errors.push(FieldError::new("batch_size", "must be at least 1"));
        }
        errors
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        let start = match self.start {
            Start::Earliest => "earliest",
            Start::Latest => "latest",
        };
        let mut config = kafka_util::client_config(
            &self.brokers,
            &self.options,
            &[
                ("group.id", self.group.clone()),
                ("enable.auto.offset.store", "false".into()),
                ("auto.offset.reset", start.into()),
            ],
        );
        // Defaults the user's options may change.
        for (key, value) in [
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("partition.assignment.strategy", "cooperative-sticky"),
        ] {
            if !self.options.contains_key(key) {
                config.set(key, value);
            }
        }
        // librdkafka's statistics carry each partition's lag.
        if !self.options.contains_key("statistics.interval.ms") {
            config.set("statistics.interval.ms", "1000");
        }
        let store = match &cx.checkpoint {
            Some(settings) => Some(
                flowpulse_core::checkpoint::open(&settings.url)
                    .await
                    .map_err(|e| BuildError(e.to_string()))?,
            ),
            None => None,
        };
        // Without a checkpoint store, state lives in memory only: the group's
        // committed offsets are all there is to start from.
        let lookup = store
            .clone()
            .filter(|_| !cx.partitioned_readers.is_empty())
            .map(|store| resume::Lookup {
                store,
                pipeline: cx.pipeline.name.clone(),
                readers: cx.partitioned_readers.clone(),
                source: cx.name.clone(),
                topic: self.topic.clone(),
                fresh: match self.start {
                    Start::Earliest => Offset::Beginning,
                    Start::Latest => Offset::End,
                },
            });
        let context = GroupContext {
            source: cx.name.clone(),
            brokers: kafka_util::display_brokers(&self.brokers),
            down: AtomicBool::new(false),
            partitions: Mutex::new(HashMap::new()),
            assignments_made: AtomicU64::new(0),
            changes: Mutex::new(Vec::new()),
            assignments: cx.resources.get_or_insert_with(Assignments::default),
            stats: Arc::clone(&cx.stats),
            assigned: cx
                .stats
                .gauge("partitions_assigned", "Kafka partitions this member reads"),
            seek_on_assign: lookup.is_some(),
            closing: AtomicBool::new(false),
        };
        let consumer: StreamConsumer<GroupContext> = config
            .create_with_context(context)
            .map_err(|e| BuildError(format!("cannot create the Kafka consumer: {e}")))?;
        let partitions = match store {
            Some(store) => CountRecord::Store(
                store,
                flowpulse_core::checkpoint::partition_count_key(&cx.pipeline.name, &cx.name),
            ),
            None => CountRecord::File(cx.data_dir().join("partitions.json")),
        };
        Ok(Box::new(KafkaSource {
            consumer: Arc::new(consumer),
            config: self.clone(),
            dead_letters: DeadLetterFile::new(cx.data_dir().join("dead-letters.jsonl")),
            partitions,
            lookup,
        }))
    }
}

/// What the consumer tells the component: the group's partitions as they
/// are assigned and revoked, and the lag from librdkafka's statistics.
struct GroupContext {
    source: String,
    brokers: String,
    stats: Arc<ComponentStats>,
    assigned: Arc<Gauge>,
    /// The broker could not be reached (librdkafka retries on its own).
    down: AtomicBool,
    /// What this member knows of each partition it was ever assigned.
    partitions: Mutex<HashMap<i32, Held>>,
    assignments_made: AtomicU64,
    /// Partitions assigned and revoked since the source last looked, for
    /// the notices it sends downstream.
    changes: Mutex<Vec<Shard>>,
    /// The same, as the runtime sees them at once.
    assignments: Assignments,
    /// Whether partitions are paused as they are assigned, to be read from
    /// where their checkpoints say (see [`resume`]).
    seek_on_assign: bool,
    /// Set once the source stops reading: a rebalance served while the
    /// consumer closes pauses nothing (nothing will read it).
    closing: AtomicBool,
}

impl GroupContext {
    /// A record arrived: the broker is reachable.
    fn reached(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            self.stats.set_outage(None);
            tracing::info!(source = %self.source, "reached {} again", self.brokers);
        }
    }

    /// The partitions assigned and revoked since the last call, in order.
    fn take_changes(&self) -> Vec<Shard> {
        self.changes
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    /// Which assignment of `partition` a record of it belongs to, or
    /// `None` while the partition waits for its start (its records are
    /// dropped until then: the seek reads them again).
    fn readable(&self, partition: i32) -> Option<u64> {
        let partitions = self.partitions.lock().ok()?;
        match partitions.get(&partition) {
            Some(held) if held.awaiting_start => None,
            Some(held) => Some(held.generation),
            None => Some(0),
        }
    }

    /// Whether `partition` still waits for the start of `generation`.
    fn awaits_start_of(&self, partition: i32, generation: u64) -> bool {
        self.partitions.lock().is_ok_and(|p| {
            p.get(&partition)
                .is_some_and(|held| held.awaiting_start && held.generation == generation)
        })
    }

    /// Whether any partition held waits for its start.
    fn awaits_any_start(&self) -> bool {
        self.partitions
            .lock()
            .is_ok_and(|p| p.values().any(|held| held.awaiting_start))
    }

    /// `partition` is read from now on.
    fn started(&self, partition: i32) {
        if let Ok(mut partitions) = self.partitions.lock() {
            if let Some(held) = partitions.get_mut(&partition) {
                held.awaiting_start = false;
            }
        }
    }
}

/// What a member knows of one partition.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// Which assignment of it this member holds, or last held: a stateful
    /// processor keeps state per partition, and a partition given back
    /// after it was elsewhere must be taken over afresh.
    generation: u64,
    /// Assigned to this member now.
    assigned: bool,
    /// Paused until its start is known (see [`resume`]).
    awaiting_start: bool,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.stats
            .set_outage(Some(format!("cannot reach {} ({reason})", self.brokers)));
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                source = %self.source,
                "cannot reach {} ({error}: {reason}); is the Kafka broker running? retrying",
                self.brokers
            );
        }
    }

    // librdkafka logs every failed connection attempt; the outage is logged
    // once by `error` above, so its own lines are kept for debugging.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(source = %self.source, ?level, fac, "librdkafka: {message}");
    }

    fn stats(&self, statistics: Statistics) {
        // Per partition this member reads (-1: not known yet), and summed.
        // librdkafka goes on reporting a partition revoked from it for a
        // while: only those assigned now count.
        let lag: BTreeMap<String, u64> = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| {
                p.partition >= 0 && p.fetch_state != "none" && self.is_assigned(p.partition)
            })
            .map(|p| (p.partition.to_string(), p.consumer_lag.max(0) as u64))
            .collect();
        self.stats.set_partition_lag(lag);
    }
}

impl GroupContext {
    /// Whether `partition` is assigned to this member now.
    fn is_assigned(&self, partition: i32) -> bool {
        self.partitions
            .lock()
            .is_ok_and(|held| held.get(&partition).is_some_and(|h| h.assigned))
    }

    /// Pauses the partitions just assigned until their start is known.
    fn pause_until_started(&self, consumer: &BaseConsumer<Self>, list: &TopicPartitionList) {
        let mut paused = TopicPartitionList::new();
        for element in list.elements() {
            // Plain entries: pausing must not carry an offset.
            paused.add_partition(element.topic(), element.partition());
        }
        match consumer.pause(&paused) {
            Ok(()) => {
                if let Ok(mut partitions) = self.partitions.lock() {
                    for element in list.elements() {
                        if let Some(held) = partitions.get_mut(&element.partition()) {
                            held.awaiting_start = true;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(
                source = %self.source,
                "cannot pause the partitions assigned until their checkpoints say where they resume ({e}); reading them from the group's committed offsets (what the checkpoints hold is skipped)"
            ),
        }
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = |list: &TopicPartitionList| {
            list.elements()
                .iter()
                .map(|e| e.partition().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        match rebalance {
            Rebalance::Assign(list) => {
                if let (Ok(mut partitions), Ok(mut changes)) =
                    (self.partitions.lock(), self.changes.lock())
                {
                    for element in list.elements() {
                        let generation = self.assignments_made.fetch_add(1, Ordering::Relaxed) + 1;
                        partitions.insert(
                            element.partition(),
                            Held {
                                generation,
                                assigned: true,
                                awaiting_start: false,
                            },
                        );
                        let id = element.partition().max(0) as u32;
                        self.assignments.assigned(&self.source, id, generation);
                        changes.push(Shard {
                            id,
                            generation,
                            released: false,
                        });
                    }
                }
                tracing::info!(source = %self.source, partitions = %partitions(list), "partitions assigned");
                if self.seek_on_assign && !self.closing.load(Ordering::Acquire) {
                    self.pause_until_started(consumer, list);
                }
            }
            Rebalance::Revoke(list) => {
                if let (Ok(mut partitions), Ok(mut changes)) =
                    (self.partitions.lock(), self.changes.lock())
                {
                    for element in list.elements() {
                        let id = element.partition().max(0) as u32;
                        let generation = match partitions.get_mut(&element.partition()) {
                            Some(held) => {
                                held.assigned = false;
                                held.awaiting_start = false;
                                held.generation
                            }
                            None => 0,
                        };
                        self.assignments.revoked(&self.source, id, generation);
                        changes.push(Shard {
                            id,
                            generation,
                            released: true,
                        });
                    }
                }
                tracing::info!(source = %self.source, partitions = %partitions(list), "partitions revoked");
            }
            Rebalance::Error(e) => {
                tracing::warn!(source = %self.source, "the group's rebalance failed: {e}");
            }
        }
        // Counted here rather than asked of the consumer: asking blocks on
        // the group's thread, which does not answer while the consumer
        // closes (a rebalance served by its drop would hang there).
        if let Ok(partitions) = self.partitions.lock() {
            let assigned = partitions.values().filter(|held| held.assigned).count();
            self.assigned.set(assigned as i64);
        }
    }
}

struct KafkaSource {
    consumer: Arc<StreamConsumer<GroupContext>>,
    config: KafkaSourceConfig,
    dead_letters: DeadLetterFile,
    /// The topic's partition count when this source first read it.
    partitions: CountRecord,
    /// Looks up where an assigned partition starts, when checkpoints say.
    lookup: Option<resume::Lookup>,
}

/// A partition paused as it was assigned, until it is read from where its
/// checkpoints say.
struct Starting {
    partition: i32,
    generation: u64,
    start: StartAt,
    seek_attempts: u32,
}

/// Where a [`Starting`] partition is read from.
enum StartAt {
    /// Its checkpoints are being read.
    LookingUp(tokio::task::JoinHandle<Option<Offset>>),
    /// From this offset.
    Offset(Offset),
    /// From the group's committed offset: the checkpoints could not say.
    Committed,
}

/// How many ticks a seek that fails is tried again before the partition
/// is read from the group's committed offset instead.
const SEEK_ATTEMPTS: u32 = 50;

impl KafkaSource {
    /// Seeks and resumes the partitions whose start is known; returns
    /// those still waiting.
    async fn start_partitions(&self, name: &str, starting: Vec<Starting>) -> Vec<Starting> {
        let context = self.consumer.context();
        let mut waiting = Vec::new();
        for mut s in starting {
            if !context.awaits_start_of(s.partition, s.generation) {
                continue; // revoked meanwhile
            }
            s.start = match s.start {
                StartAt::LookingUp(lookup) if lookup.is_finished() => match lookup.await {
                    Ok(Some(offset)) => StartAt::Offset(offset),
                    Ok(None) | Err(_) => StartAt::Committed,
                },
                start => start,
            };
            if let StartAt::LookingUp(_) = s.start {
                waiting.push(s);
                continue;
            }
            if let StartAt::Offset(offset) = s.start {
                // Local to the client (the partition is paused): quick.
                match self
                    .consumer
                    .seek(&self.config.topic, s.partition, offset, Duration::from_secs(1))
                {
                    Ok(()) => tracing::info!(
                        source = name,
                        partition = s.partition,
                        "reading the partition from {offset:?}, where its checkpoint resumes"
                    ),
                    Err(e) if s.seek_attempts < SEEK_ATTEMPTS => {
                        s.seek_attempts += 1;
                        tracing::debug!(source = name, partition = s.partition, "seek failed ({e}); trying again");
                        waiting.push(s);
                        continue;
                    }
                    Err(e) => tracing::warn!(
                        source = name,
                        partition = s.partition,
                        "cannot seek to where the partition's checkpoint resumes ({e}); reading from the group's committed offset (what the checkpoint holds is skipped)"
                    ),
                }
            }
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.config.topic, s.partition);
            context.started(s.partition);
            if let Err(e) = self.consumer.resume(&list) {
                // It stays paused, its lag growing in /status, until the
                // group assigns it anew.
                tracing::error!(
                    source = name,
                    partition = s.partition,
                    "cannot resume the partition: {e}"
                );
            }
        }
        waiting
    }
}

/// How often the topic's partition count is checked.
const PARTITIONS_CHECK: Duration = Duration::from_secs(30);

/// The partition count a source first read its topic with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartitionCount {
    topic: String,
    partitions: usize,
}

/// The topic's partition count from the broker (blocking: run it off the
/// runtime); `None` while the broker cannot say.
fn fetch_partitions(consumer: &StreamConsumer<GroupContext>, topic: &str) -> Option<usize> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let topic = metadata.topics().iter().find(|t| t.name() == topic)?;
    (topic.error().is_none() && !topic.partitions().is_empty()).then(|| topic.partitions().len())
}

/// Where the topic's partition count is kept once first read: in the
/// checkpoint store when there is one (every instance of the pipeline then
/// checks against the same), else in a file of the data directory.
enum CountRecord {
    Store(Arc<dyn CheckpointStore>, String),
    File(PathBuf),
}

impl CountRecord {
    async fn load(&self) -> Result<Option<Vec<u8>>, String> {
        match self {
            CountRecord::Store(store, key) => store.load(key).await.map_err(|e| e.to_string()),
            CountRecord::File(file) => match tokio::fs::read(file).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("cannot read {}: {e}", file.display())),
            },
        }
    }

    async fn save(&self, bytes: &[u8]) -> Result<(), String> {
        match self {
            CountRecord::Store(store, key) => {
                store.save(key, bytes).await.map_err(|e| e.to_string())
            }
            CountRecord::File(file) => write_atomic(file, bytes)
                .await
                .map_err(|e| format!("cannot write {}: {e}", file.display())),
        }
    }

    /// How to forget it, for the error that refuses a changed count.
    fn forget_hint(&self) -> String {
        match self {
            CountRecord::Store(..) => "flowpulse state reset, which forgets the count too".into(),
            CountRecord::File(file) => {
                format!("flowpulse state reset, and delete {}", file.display())
            }
        }
    }
}

/// Compares `now` with the count first seen (kept in `record`, written the
/// first time): a change moves workflows between partitions, and with them
/// what the state keeps per partition, so it is refused (fatal). A store
/// that cannot be read or written is a transient error: checked again later.
async fn check_partitions(
    record: &CountRecord,
    topic: &str,
    now: usize,
) -> Result<(), ComponentError> {
    let first = record
        .load()
        .await
        .map_err(ComponentError::Transient)?
        .and_then(|bytes| serde_json::from_slice::<PartitionCount>(&bytes).ok())
        .filter(|kept| kept.topic == topic);
    match first {
        Some(kept) if kept.partitions != now => Err(ComponentError::Fatal(format!(
            "topic {topic} has {now} partitions, but this pipeline first read it with {}: workflows would move between partitions, and the state kept per partition would no longer match. Restore the partition count, or start over ({})",
            kept.partitions,
            record.forget_hint()
        ))),
        Some(_) => Ok(()),
        None => {
            let kept = PartitionCount {
                topic: topic.to_owned(),
                partitions: now,
            };
            let bytes = serde_json::to_vec(&kept)
                .map_err(|e| ComponentError::Transient(e.to_string()))?;
            record.save(&bytes).await.map_err(ComponentError::Transient)
        }
    }
}

/// A batch being filled for one origin (one Kafka partition and one
/// upstream partition).
struct Filling {
    records: Vec<Record>,
    offsets: Vec<u128>,
    partition: i32,
    /// The Kafka offset of its oldest record.
    first_offset: i64,
    /// The Kafka offset of its newest record.
    last_offset: i64,
    since: Instant,
}

/// Batches sent and not yet settled, per Kafka partition, oldest first.
#[derive(Default)]
struct InFlight {
    partitions: BTreeMap<i32, VecDeque<(i64, u64, AckReceipt)>>,
    /// Partitions with a failed batch, and the assignment it was read in:
    /// nothing after it is stored (so a restart or a rebalance reads it
    /// again) until a batch of a later assignment is delivered.
    stuck: BTreeMap<i32, u64>,
    /// The next offset to read, per partition, as last stored for the group.
    stored: BTreeMap<i32, i64>,
}

impl InFlight {
    fn is_empty(&self) -> bool {
        self.partitions.values().all(VecDeque::is_empty)
    }

    /// Stores the offset after every batch delivered with all before it.
    fn settle(
        &mut self,
        consumer: &StreamConsumer<GroupContext>,
        topic: &str,
        name: &str,
        stats: &ComponentStats,
    ) {
        for (&partition, queue) in &mut self.partitions {
            let mut delivered = None;
            while let Some((offset, generation, receipt)) = queue.front_mut() {
                let generation = *generation;
                match receipt.try_status() {
                    None => break,
                    Some(BatchStatus::Delivered) => {
                        if self.stuck.get(&partition).is_some_and(|&g| g < generation) {
                            self.stuck.remove(&partition);
                        }
                        if !self.stuck.contains_key(&partition) {
                            delivered = Some(*offset);
                        }
                        queue.pop_front();
                    }
                    Some(BatchStatus::Failed) => {
                        let offset = *offset;
                        queue.pop_front();
                        let first = !self.stuck.contains_key(&partition);
                        let stuck = self.stuck.entry(partition).or_insert(generation);
                        *stuck = (*stuck).max(generation);
                        if first {
                            tracing::warn!(
                                source = name,
                                partition,
                                offset,
                                "a batch was not delivered; the group's offset stays before it so a restart reads it again"
                            );
                        }
                    }
                }
            }
            if let Some(offset) = delivered {
                // The group resumes at the record after the last one delivered.
                let next = offset + 1;
                let mut list = TopicPartitionList::new();
                let stored = list
                    .add_partition_offset(topic, partition, Offset::Offset(next))
                    .and_then(|()| consumer.store_offsets(&list));
                match stored {
                    Ok(()) => {
                        self.stored.insert(partition, next);
                    }
                    // A partition revoked meanwhile: its new owner reads on
                    // from what was committed (and from its checkpoint), so
                    // that is no error.
                    Err(e) if !consumer.context().is_assigned(partition) => tracing::debug!(
                        source = name,
                        partition,
                        "not storing the offset of a partition revoked meanwhile: {e}"
                    ),
                    Err(e) => stats.error(format!(
                        "cannot store the offset of partition {partition}: {e}"
                    )),
                }
            }
        }
    }

    /// Commits the stored offsets now (at shutdown).
    fn commit(&self, consumer: &StreamConsumer<GroupContext>, topic: &str, name: &str) {
        let mut list = TopicPartitionList::new();
        for (&partition, &next) in &self.stored {
            if list
                .add_partition_offset(topic, partition, Offset::Offset(next))
                .is_err()
            {
                return;
            }
        }
        if list.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
            tracing::warn!(source = name, "cannot commit the group's offsets at shutdown ({e}); a restart reads the records since the last commit again and skips what the checkpoint holds");
        }
    }
}

/// The origin and position of a message.
fn place(name: &str, message: &BorrowedMessage<'_>, generation: u64) -> (Origin, u128) {
    let header = |key: &str| {
        message.headers().and_then(|headers| {
            (0..headers.count())
                .filter_map(|i| headers.try_get(i))
                .find(|h| h.key == key)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        })
    };
    let partition = format!("{}/{}", message.topic(), message.partition());
    let shard = Some(Shard {
        id: message.partition().max(0) as u32,
        generation,
        released: false,
    });
    match (
        header(UPSTREAM_HEADER),
        header(POSITION_HEADER).and_then(|p| p.parse::<u128>().ok()),
    ) {
        (Some(upstream), Some(position)) => (
            Origin {
                source: name.to_owned(),
                partition: format!("{partition}/{upstream}"),
                shard,
            },
            position,
        ),
        _ => (
            Origin {
                source: name.to_owned(),
                partition,
                shard,
            },
            message.offset().max(0) as u128,
        ),
    }
}

/// Decodes a message's payload; counts and dead-letters what is not an event.
fn decode(
    dead_letters: &mut DeadLetterFile,
    name: &str,
    stats: &ComponentStats,
    message: &BorrowedMessage<'_>,
) -> Option<Record> {
    let payload = message.payload().unwrap_or_default();
    match decode_json(payload, None) {
        Ok(Decoded::Event(event)) => Some(Record::Event(event)),
        Ok(Decoded::Ignored(_)) => {
            stats.ignored(1);
            None
        }
        Err(e) => {
            let place = format!(
                "partition {} offset {}",
                message.partition(),
                message.offset()
            );
            let text = format!("{place}: {e}");
            if stats.malformed(e.kind(), &text) {
                tracing::warn!(
                    source = name,
                    kind = e.kind(),
                    dead_letter = %dead_letters.path().display(),
                    "malformed input ({text}); further ones of this kind are counted, not logged"
                );
            }
            let letter = serde_json::json!({
                "topic": message.topic(),
                "partition": message.partition(),
                "offset": message.offset(),
                "kind": e.kind(),
                "reason": e.to_string(),
                "raw": String::from_utf8_lossy(payload),
            });
            if let Err(io) = dead_letters.write_record(&letter) {
                stats.error(format!("cannot write dead letter: {io}"));
            }
            None
        }
    }
}

/// Sends a filled batch on and remembers its receipt.
async fn send(
    cx: &mut SourceContext,
    topic: &str,
    origin: Arc<Origin>,
    filling: Filling,
    in_flight: &mut InFlight,
) {
    let (ack, receipt) = AckHandle::new();
    let generation = origin.shard.map_or(0, |s| s.generation);
    tracing::debug!(
        partition = filling.partition,
        first = filling.first_offset,
        last = filling.last_offset,
        records = filling.records.len(),
        "batch sent"
    );
    let own = format!("{topic}/{}", filling.partition);
    let batch = Batch::new(filling.records, vec![ack])
        .with_positions(origin, filling.offsets)
        .with_resume(own, filling.last_offset.max(0) as u128);
    cx.out.send(batch).await;
    in_flight
        .partitions
        .entry(filling.partition)
        .or_default()
        .push_back((filling.last_offset, generation, receipt));
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(mut self: Box<Self>, mut cx: SourceContext) -> Result<(), ComponentError> {
        let name = cx.name.clone();
        let brokers = kafka_util::display_brokers(&self.config.brokers);
        self.consumer
            .subscribe(&[&self.config.topic])
            .map_err(|e| {
                ComponentError::Fatal(format!("cannot subscribe to {}: {e}", self.config.topic))
            })?;
        let stats = Arc::clone(&cx.stats);
        let mut outage = Outage::new("the Kafka broker").reporting_to(Arc::clone(&stats));
        let mut filling: HashMap<Arc<Origin>, Filling> = HashMap::new();
        let mut origins: HashMap<Origin, Arc<Origin>> = HashMap::new();
        let mut in_flight = InFlight::default();
        let mut starting: Vec<Starting> = Vec::new();
        let mut last_record = Instant::now();
        let mut assigned_once = false;
        // The partition count, checked now and then off the runtime.
        let mut partitions_check: Option<tokio::task::JoinHandle<Option<usize>>> = None;
        let mut partitions_checked = Instant::now() - PARTITIONS_CHECK;
        let mut tick = tokio::time::interval(
            self.config
                .linger
                .clamp(Duration::from_millis(1), Duration::from_millis(100)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let received = tokio::select! {
                biased;
                () = cx.shutdown.cancelled() => break,
                // Before the messages, which a busy topic never runs out of.
                _ = tick.tick() => None,
                message = self.consumer.recv() => Some(message),
            };
            match received {
                Some(Ok(message)) => {
                    outage.recovered(&name, &brokers);
                    self.consumer.context().reached();
                    let Some(generation) = self.consumer.context().readable(message.partition())
                    else {
                        // Fetched before the pause: read again after the seek.
                        continue;
                    };
                    stats.received(1);
                    last_record = Instant::now();
                    let (origin, position) = place(&name, &message, generation);
                    let partition = message.partition();
                    let offset = message.offset();
                    let record = decode(&mut self.dead_letters, &name, &stats, &message);
                    drop(message);
                    let Some(record) = record else {
                        // Nothing to deliver; its offset is stored with the next batch's.
                        continue;
                    };
                    let origin = match origins.get(&origin) {
                        Some(shared) => Arc::clone(shared),
                        None => {
                            let shared = Arc::new(origin.clone());
                            origins.insert(origin, Arc::clone(&shared));
                            shared
                        }
                    };
                    let batch = filling
                        .entry(Arc::clone(&origin))
                        .or_insert_with(|| Filling {
                            records: Vec::with_capacity(self.config.batch_size),
                            offsets: Vec::with_capacity(self.config.batch_size),
                            partition,
                            first_offset: offset,
                            last_offset: offset,
                            since: Instant::now(),
                        });
                    batch.records.push(record);
                    batch.offsets.push(position);
                    batch.last_offset = offset;
                    if batch.records.len() >= self.config.batch_size {
                        if let Some(full) = filling.remove(&origin) {
                            send(&mut cx, &self.config.topic, origin, full, &mut in_flight).await;
                        }
                    }
                }
                Some(Err(e)) => {
                    let wait = outage.failed(&name, &brokers, &e);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = cx.shutdown.cancelled() => break,
                    }
                }
                None => {
                    for change in self.consumer.context().take_changes() {
                        assigned_once |= !change.released;
                        let partition = change.id as i32;
                        if let Some(lookup) = self.lookup.as_ref().filter(|_| {
                            !change.released
                                && self
                                    .consumer
                                    .context()
                                    .awaits_start_of(partition, change.generation)
                        }) {
                            starting.push(Starting {
                                partition,
                                generation: change.generation,
                                start: StartAt::LookingUp(tokio::spawn(
                                    lookup.clone().start_retrying(partition),
                                )),
                                seek_attempts: 0,
                            });
                        }
                        if change.released {
                            // What was read of it goes first: nothing of
                            // this assignment follows the notice.
                            let of_partition: Vec<Arc<Origin>> = filling
                                .keys()
                                .filter(|o| o.shard.is_some_and(|s| s.id == change.id))
                                .cloned()
                                .collect();
                            for origin in of_partition {
                                if let Some(batch) = filling.remove(&origin) {
                                    send(
                                        &mut cx,
                                        &self.config.topic,
                                        origin,
                                        batch,
                                        &mut in_flight,
                                    )
                                    .await;
                                }
                            }
                        }
                        let origin = Origin {
                            source: name.clone(),
                            partition: format!("{}/{}", self.config.topic, change.id),
                            shard: Some(change),
                        };
                        cx.out.send(Batch::notice(Arc::new(origin))).await;
                    }
                    if !starting.is_empty() {
                        starting = self.start_partitions(&name, starting).await;
                    }
                    let due: Vec<Arc<Origin>> = filling
                        .iter()
                        .filter(|(_, f)| f.since.elapsed() >= self.config.linger)
                        .map(|(o, _)| Arc::clone(o))
                        .collect();
                    for origin in due {
                        if let Some(batch) = filling.remove(&origin) {
                            send(&mut cx, &self.config.topic, origin, batch, &mut in_flight).await;
                        }
                    }
                    in_flight.settle(&self.consumer, &self.config.topic, &name, &stats);
                    match partitions_check.take() {
                        Some(check) if check.is_finished() => {
                            if let Ok(Some(count)) = check.await {
                                match check_partitions(&self.partitions, &self.config.topic, count)
                                    .await
                                {
                                    Err(ComponentError::Transient(e)) => stats.error(e),
                                    other => other?,
                                }
                            }
                        }
                        Some(check) => partitions_check = Some(check),
                        None if partitions_checked.elapsed() >= PARTITIONS_CHECK => {
                            partitions_checked = Instant::now();
                            let (consumer, topic) =
                                (Arc::clone(&self.consumer), self.config.topic.clone());
                            partitions_check = Some(tokio::task::spawn_blocking(move || {
                                fetch_partitions(&consumer, &topic)
                            }));
                        }
                        None => {}
                    }
                    // Idle counts from the group's first assignment (not
                    // reset by a later revocation: a member left without
                    // partitions finishes too), and not while a partition
                    // waits for its start: its checkpoint's lookup may take
                    // longer than `stop_after_idle` on a loaded machine.
                    if !assigned_once {
                        if self.consumer.assignment().is_ok_and(|a| a.count() > 0) {
                            assigned_once = true;
                        } else {
                            last_record = Instant::now();
                        }
                    }
                    if let Some(idle) = self.config.stop_after_idle {
                        if self.consumer.context().awaits_any_start() {
                            last_record = Instant::now();
                        }
                        if last_record.elapsed() >= idle
                            && filling.is_empty()
                            && in_flight.is_empty()
                        {
                            break;
                        }
                    }
                }
            }
        }
        // What was read and not delivered is read again after a restart;
        // what was delivered gets its offset committed now. (Not the
        // consumer's position: that would skip what is still in flight.)
        in_flight.settle(&self.consumer, &self.config.topic, &name, &stats);
        in_flight.commit(&self.consumer, &self.config.topic, &name);
        self.consumer
            .context()
            .closing
            .store(true, Ordering::Release);
        Ok(())
    }
}
