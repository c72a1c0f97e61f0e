//! `redis_stream`: the orchestrator's event stream, read through a consumer
//! group and acknowledged (`XACK`) only once the pipeline has taken each
//! batch end to end.
//!
//! On start it re-reads its own pending entries (with `XPENDING` and
//! `XRANGE`, which do not count as deliveries), then reads new ones with
//! `XREADGROUP` on a connection of its own. Entries of a dead consumer idle
//! longer than `claim_idle` are taken over with `XAUTOCLAIM` (which counts a
//! delivery); an entry delivered more than `max_deliveries` times, and every
//! undecodable entry, goes to the dead-letter stream and is acknowledged.
//!
//! Feeding a stateful processor, it is its group's only reader (see
//! `lease.rs`) and delivers the stream in id order: at start it takes over
//! every entry pending in the group, under any consumer name, oldest first,
//! then reads new ones. Each batch carries its entries' ids as positions, so
//! the processor's checkpoint knows what it has folded.

mod acker;
mod lease;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flowpulse_core::ack::{AckHandle, BatchStatus};
use flowpulse_core::checkpoint::stream_id_offset;
use flowpulse_core::event::{decode_stream_entry, Decoded};
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, FieldError, PluginDescriptor, Source, SourceConfig,
    SourceContext, ValidateContext,
};
use flowpulse_core::record::{Batch, Origin, Record};
use flowpulse_core::redact::redact_url;
use flowpulse_core::telemetry::ComponentStats;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use redis::aio::MultiplexedConnection;
use redis::Value;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::redis_util::{self, array, connect, int, string, StreamEntry};
use acker::{AckTarget, Acker};

/// `[sources.NAME] type = "redis_stream"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS). Never
    /// logged with its password. Example: `"${REDIS_URL:-redis://127.0.0.1:6379}"`.
    pub url: String,
    /// The stream. Default `stream:workflow:events`.
    #[serde(default = "defaults::stream")]
    pub stream: String,
    /// The consumer group, created if missing. Default `flowpulse`.
    #[serde(default = "defaults::group")]
    pub group: String,
    /// This consumer's name; keep it stable across restarts so its pending
    /// entries are its own again. Default: the pipeline name.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Where a new group starts: `"0"` (the whole stream, the default) or
    /// `"$"` (only new entries).
    #[serde(default = "defaults::start_id")]
    pub start_id: String,
    /// Entries per read. Default 500.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// How long a read blocks waiting for entries, e.g. `"1s"` (the default).
    #[serde(default = "defaults::block", with = "humantime_serde")]
    pub block: Duration,
    /// Entries pending longer than this on any consumer are taken over,
    /// e.g. `"30s"` (the default). Must exceed the checkpoint interval plus
    /// `block`.
    #[serde(default = "defaults::claim_idle", with = "humantime_serde")]
    pub claim_idle: Duration,
    /// Deliveries after which an entry is dead-lettered. Restarts do not
    /// count. Default 5.
    #[serde(default = "defaults::max_deliveries")]
    pub max_deliveries: u64,
    /// The dead-letter stream. Default: the stream's name + `:dead`.
    #[serde(default)]
    pub dead_letter_stream: Option<String>,
    /// Approximate cap of the dead-letter stream. Default 100000.
    #[serde(default = "defaults::dead_letter_maxlen")]
    pub dead_letter_maxlen: u64,
    /// Finish once no entry has arrived for this long (replays, tests).
    /// Default: never.
    #[serde(default, with = "humantime_serde")]
    pub stop_after_idle: Option<Duration>,
    /// How long the group's reader lease lasts without renewal, e.g. `"10s"`
    /// (the default). Only taken when a stateful processor reads this
    /// source: a second instance waits this long after the holder dies.
    #[serde(default = "defaults::lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl std::fmt::Debug for RedisStreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamConfig")
            .field("url", &redact_url(&self.url))
            .field("stream", &self.stream)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

mod defaults {
    use std::time::Duration;
    pub fn stream() -> String {
        "stream:workflow:events".into()
    }
    pub fn group() -> String {
        "flowpulse".into()
    }
    pub fn start_id() -> String {
        "0".into()
    }
    pub fn batch_size() -> usize {
        500
    }
    pub fn block() -> Duration {
        Duration::from_secs(1)
    }
    pub fn claim_idle() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_deliveries() -> u64 {
        5
    }
    pub fn dead_letter_maxlen() -> u64 {
        100_000
    }
    pub fn lease_ttl() -> Duration {
        Duration::from_secs(10)
    }
}

inventory::submit! {
    PluginDescriptor::source::<RedisStreamConfig>("redis_stream", "Reads workflow events from a Redis stream through a consumer group, acking end to end")
}

#[async_trait]
impl SourceConfig for RedisStreamConfig {
    async fn reader(&self) -> Result<Option<String>, String> {
        let key = lease::lease_key(&self.stream, &self.group);
        let cannot = |why: String| format!("cannot read the reader lease {key}: {why}");
        let ask = async {
            let client = redis_util::client(&self.url).map_err(|e| e.to_string())?;
            let mut conn = connect(&client, Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())?;
            lease::holder(&mut conn, &key)
                .await
                .map_err(|e| e.to_string())
        };
        let holder = match tokio::time::timeout(Duration::from_secs(5), ask).await {
            Ok(answer) => answer.map_err(cannot)?,
            Err(_) => return Err(cannot("no answer within 5 s".into())),
        };
        let Some((consumer, left_ms)) = holder else {
            return Ok(None);
        };
        Ok(Some(format!(
            "consumer \"{consumer}\" holds group \"{}\"'s reader lease on stream \"{}\" \
             ({key}; it lapses in {:.1} s unless its holder renews it)",
            self.group,
            self.stream,
            left_ms as f64 / 1000.0
        )))
    }

    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Err(e) = redis_util::client(&self.url) {
            errors.push(FieldError::new("url", e));
        }
        if self.batch_size == 0 {
            errors.push(FieldError::new("batch_size", "must be at least 1"));
        }
        if self.max_deliveries == 0 {
            errors.push(FieldError::new("max_deliveries", "must be at least 1"));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            errors.push(FieldError::new("lease_ttl", "must be at least 1s"));
        }
        let checkpoint = cx.checkpoint.map_or(Duration::ZERO, |c| c.interval);
        if self.claim_idle <= checkpoint + self.block {
            errors.push(FieldError::new(
                "claim_idle",
                format!(
                    "must exceed the checkpoint interval plus `block` ({:?}), or healthy entries would be claimed before they are acknowledged",
                    checkpoint + self.block
                ),
            ));
        }
        errors
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        let client = redis_util::client(&self.url).map_err(BuildError)?;
        let consumer = self
            .consumer
            .clone()
            .unwrap_or_else(|| cx.pipeline.name.clone());
        // The only reader of its group, it takes the lease before anything
        // else is built: a standby instance restores no state, sweeps no
        // checkpoint parts and emits nothing until it holds it.
        let lease = match cx.feeds_stateful {
            true => Some(self.take_lease(&client, &consumer, cx).await?),
            false => None,
        };
        Ok(Box::new(RedisStreamSource {
            lease,
            consumer,
            dead_letter_stream: self
                .dead_letter_stream
                .clone()
                .unwrap_or_else(|| format!("{}:dead", self.stream)),
            config: self.clone(),
            client,
            origin: std::sync::Arc::new(Origin {
                source: cx.name.clone(),
                partition: self.stream.clone(),
                shard: None,
            }),
            exclusive: cx.feeds_stateful,
        }))
    }
}

impl RedisStreamConfig {
    /// Waits for the group's lease (through Redis outages), until shutdown.
    async fn take_lease(
        &self,
        client: &redis::Client,
        consumer: &str,
        cx: &BuildContext,
    ) -> Result<lease::Lease, BuildError> {
        let key = lease::lease_key(&self.stream, &self.group);
        let mut outage = redis_util::outage(&cx.stats);
        loop {
            let attempt = async {
                let mut conn = connect(client, Duration::from_secs(10)).await?;
                lease::acquire(
                    client,
                    &self.url,
                    &mut conn,
                    &key,
                    consumer,
                    self.lease_ttl,
                    &cx.name,
                    &cx.shutdown,
                )
                .await
            };
            match attempt.await {
                Ok(Some(lease)) => return Ok(lease),
                Ok(None) => break,
                // Refused credentials and the like do not go away by waiting.
                Err(e) if !(e.is_io_error() || e.is_connection_refusal() || e.is_timeout()) => {
                    return Err(BuildError(format!(
                        "cannot take the group's reader lease on {}: {e}",
                        redact_url(&self.url)
                    )));
                }
                Err(e) => {
                    let wait = outage.failed(&cx.name, &self.url, &e);
                    tokio::select! {
                        _ = cx.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        Err(BuildError(
            "stopped while waiting for the group's reader lease".into(),
        ))
    }
}

struct RedisStreamSource {
    config: RedisStreamConfig,
    /// The group's reader lease, held when it feeds a stateful processor.
    lease: Option<lease::Lease>,
    consumer: String,
    dead_letter_stream: String,
    client: redis::Client,
    /// This source and its stream, the partition of its positions.
    origin: std::sync::Arc<Origin>,
    /// Whether it must be the group's only reader (it feeds a stateful
    /// processor).
    exclusive: bool,
}

type AckFuture = BoxFuture<'static, (Vec<String>, BatchStatus)>;

/// Entry ids in flight, as numbers: a checkpoint interval of a catch-up
/// holds hundreds of thousands, and hashing strings with SipHash showed in
/// profiles.
type InFlightIds = std::collections::HashSet<u128, rustc_hash::FxBuildHasher>;

/// [`InFlightIds`] shared with the task reading ahead, which adds what it
/// reads before handing it over: entries waiting in its buffer (the
/// pipeline slowed down) are ours too, however long they wait there.
type SharedIds = Arc<std::sync::Mutex<InFlightIds>>;

fn lock_ids(ids: &SharedIds) -> std::sync::MutexGuard<'_, InFlightIds> {
    ids.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An entry id as a number (ids Redis gives always parse; anything else
/// maps to 0, which no entry has).
fn entry_key(id: &str) -> u128 {
    stream_id_offset(id).unwrap_or(0)
}

/// Batches handed to the pipeline and not yet settled.
#[derive(Default)]
struct InFlight {
    acks: FuturesUnordered<AckFuture>,
    /// Their entry ids, and those read ahead and not yet handed over: a
    /// claim (or a recovery) must not take these back from ourselves.
    ids: SharedIds,
}

impl InFlight {
    /// Takes a settled batch: acknowledged if it was delivered (its ids
    /// held until Redis has it), else no longer in flight (a claim retries
    /// it once it has been idle `claim_idle`).
    fn settle(&mut self, ids: Vec<String>, status: BatchStatus, acker: &Acker) {
        if status == BatchStatus::Delivered {
            acker.ack(ids);
        } else {
            let mut held = lock_ids(&self.ids);
            for id in &ids {
                held.remove(&entry_key(id));
            }
        }
    }

    /// Takes every batch settled by now.
    fn settled(&mut self, acker: &Acker) {
        while let Some(Some((ids, status))) = self.acks.next().now_or_never() {
            self.settle(ids, status, acker);
        }
    }
}

/// The running source's connections and bookkeeping.
struct Reader<'a> {
    source: &'a RedisStreamSource,
    name: String,
    stats: std::sync::Arc<ComponentStats>,
    commands: MultiplexedConnection,
    acker: &'a Acker,
}

/// A failed step: reconnect and go on where it stopped.
type StepError = redis::RedisError;

impl Reader<'_> {
    fn cfg(&self) -> &RedisStreamConfig {
        &self.source.config
    }

    async fn create_group(&mut self) -> Result<(), StepError> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.cfg().stream)
            .arg(&self.cfg().group)
            .arg(&self.cfg().start_id)
            .arg("MKSTREAM")
            .query_async(&mut self.commands)
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Moves an entry to the dead-letter stream with the reason, then acks it.
    async fn dead_letter(
        &mut self,
        entry: &StreamEntry,
        reason: &str,
        deliveries: u64,
    ) -> Result<(), StepError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.source.dead_letter_stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.cfg().dead_letter_maxlen)
            .arg("*");
        for (field, value) in &entry.fields {
            cmd.arg(field.as_slice()).arg(value.as_slice());
        }
        cmd.arg("original_id")
            .arg(&entry.id)
            .arg("reason")
            .arg(reason)
            .arg("delivery_count")
            .arg(deliveries);
        cmd.query_async::<String>(&mut self.commands).await?;
        self.acker.ack_untracked(vec![entry.id.clone()]);
        Ok(())
    }

    /// Decodes entries, dead-letters bad ones, and sends the events as one
    /// batch whose acknowledgement acks their entries.
    async fn process(
        &mut self,
        entries: Vec<StreamEntry>,
        deliveries: impl Fn(&str) -> u64,
        out: &mut flowpulse_core::runtime::Output,
        track: &mut InFlight,
    ) -> Result<(), StepError> {
        if entries.is_empty() {
            return Ok(());
        }
        // Each id parsed once. An entry held since the read-ahead buffer
        // (out of a claim's reach) stays held if it goes out in the batch
        // and is let go if not; if sorting fails midway, all are let go and
        // stay pending for recovery.
        let keys: Vec<u128> = entries.iter().map(|e| entry_key(&e.id)).collect();
        self.stats.received(entries.len());
        let mut records = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        let mut sent = Vec::with_capacity(entries.len());
        let mut let_go = Vec::new();
        let mut ignored = Vec::new();
        let sorted = async {
            for (entry, key) in entries.into_iter().zip(keys.iter().copied()) {
                let count = deliveries(&entry.id);
                if count > self.cfg().max_deliveries {
                    let reason = format!(
                        "delivered {count} times (max_deliveries = {})",
                        self.cfg().max_deliveries
                    );
                    self.stats.error(format!("entry {}: {reason}", entry.id));
                    self.dead_letter(&entry, &reason, count).await?;
                    let_go.push(key);
                    continue;
                }
                match decode_stream_entry(&entry.id, &entry.fields) {
                    Ok(Decoded::Event(event)) => {
                        records.push(Record::Event(event));
                        ids.push(entry.id);
                        sent.push(key);
                    }
                    Ok(Decoded::Ignored(_)) => {
                        self.stats.ignored(1);
                        ignored.push(entry.id);
                        let_go.push(key);
                    }
                    Err(e) => {
                        let message = format!("entry {}: {e}", entry.id);
                        if self.stats.malformed(e.kind(), &message) {
                            tracing::warn!(
                                source = %self.name,
                                kind = e.kind(),
                                dead_letter = %self.source.dead_letter_stream,
                                "malformed entry ({message}); further ones of this kind are counted, not logged"
                            );
                        }
                        self.dead_letter(&entry, &e.to_string(), count).await?;
                        let_go.push(key);
                    }
                }
            }
            Ok::<(), StepError>(())
        }
        .await;
        {
            let mut held = lock_ids(&track.ids);
            let released = if sorted.is_ok() { &let_go } else { &keys };
            for key in released {
                held.remove(key);
            }
            if sorted.is_ok() {
                // Claimed entries were not held yet.
                held.extend(sent.iter().copied());
            }
        }
        sorted?;
        self.acker.ack_untracked(ignored);
        if !records.is_empty() {
            let (handle, receipt) = AckHandle::new();
            let mut batch = Batch::new(records, vec![handle]);
            if !sent.contains(&0) {
                batch = batch.with_positions(self.source.origin.clone(), sent);
            }
            out.send(batch).await;
            track.acks.push(async move { (ids, receipt.await) }.boxed());
        }
        Ok(())
    }

    /// This consumer's pending entries in `start..=end` (XPENDING range
    /// syntax, so `(` makes a bound exclusive), at most `count`, with their
    /// delivery counts, in id order.
    async fn pending(
        &mut self,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<(String, u64)>, StepError> {
        let reply: Value = redis::cmd("XPENDING")
            .arg(&self.cfg().stream)
            .arg(&self.cfg().group)
            .arg(start)
            .arg(end)
            .arg(count)
            .arg(&self.source.consumer)
            .query_async(&mut self.commands)
            .await?;
        Ok(array(&reply)
            .iter()
            .filter_map(|p| {
                let p = array(p);
                Some((string(p.first()?)?, int(p.get(3)?)? as u64))
            })
            .collect())
    }

    /// This consumer's pending entries after `after`, a page at a time.
    async fn own_pending(&mut self, after: &str) -> Result<Vec<(String, u64)>, StepError> {
        let batch = self.cfg().batch_size;
        self.pending(&format!("({after}"), "+", batch).await
    }

    /// Delivery counts of this consumer's pending entries from `first` to
    /// `last` (inclusive).
    async fn pending_between(
        &mut self,
        first: &str,
        last: &str,
    ) -> Result<std::collections::HashMap<String, u64>, StepError> {
        Ok(self
            .pending(first, last, 1_000_000)
            .await?
            .into_iter()
            .collect())
    }

    async fn fetch(&mut self, ids: &[String]) -> Result<Vec<StreamEntry>, StepError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("XRANGE").arg(&self.cfg().stream).arg(id).arg(id);
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.commands).await?;
        Ok(replies.iter().flat_map(redis_util::entries).collect())
    }

    /// Re-reads every entry this consumer had been given but not acked,
    /// oldest first. Returns how many, and the id of the last pending one.
    async fn recover_pending(
        &mut self,
        out: &mut flowpulse_core::runtime::Output,
        track: &mut InFlight,
    ) -> Result<(usize, String), StepError> {
        let mut after = "0-0".to_owned();
        let mut recovered = 0;
        loop {
            // Taken before asking Redis: an entry acknowledged (and let go
            // of) between its reply and the check below is still ours.
            let held = lock_ids(&track.ids).clone();
            let pending = self.own_pending(&after).await?;
            let Some((last, _)) = pending.last() else {
                break;
            };
            after = last.clone();
            // Entries still in the pipeline are not lost: leave them be.
            let pending: Vec<(String, u64)> = pending
                .into_iter()
                .filter(|(id, _)| !held.contains(&entry_key(id)))
                .collect();
            let ids: Vec<String> = pending.iter().map(|(id, _)| id.clone()).collect();
            let entries = self.fetch(&ids).await?;
            // Entries trimmed from the stream meanwhile cannot be processed: ack them.
            let found: std::collections::HashSet<&str> =
                entries.iter().map(|e| e.id.as_str()).collect();
            let gone: Vec<String> = ids
                .iter()
                .filter(|id| !found.contains(id.as_str()))
                .cloned()
                .collect();
            self.acker.ack_untracked(gone);
            recovered += entries.len();
            let counts: std::collections::HashMap<String, u64> = pending.into_iter().collect();
            self.process(
                entries,
                |id| counts.get(id).copied().unwrap_or(1),
                out,
                track,
            )
            .await?;
        }
        Ok((recovered, after))
    }

    /// Makes every entry pending in the group this consumer's, whoever had
    /// it, without counting a delivery (`XAUTOCLAIM … JUSTID`): the group's
    /// only reader re-reads them all, oldest first, before new ones.
    async fn take_over_all_pending(&mut self) -> Result<u64, StepError> {
        let mut start = "0-0".to_owned();
        let mut taken = 0;
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.cfg().stream)
                .arg(&self.cfg().group)
                .arg(&self.source.consumer)
                .arg(0)
                .arg(&start)
                .arg("COUNT")
                .arg(1000)
                .arg("JUSTID")
                .query_async(&mut self.commands)
                .await?;
            let parts = array(&reply);
            taken += parts.get(1).map_or(0, |ids| array(ids).len()) as u64;
            match parts.first().and_then(string) {
                Some(next) if next != "0-0" => start = next,
                _ => return Ok(taken),
            }
        }
    }

    /// Takes over entries idle longer than `claim_idle` on any consumer.
    async fn claim(
        &mut self,
        out: &mut flowpulse_core::runtime::Output,
        track: &mut InFlight,
    ) -> Result<(), StepError> {
        let mut start = "0-0".to_owned();
        loop {
            // Taken before the claim: an entry acknowledged (and let go of)
            // between the claim and the check below is still ours.
            let held = lock_ids(&track.ids).clone();
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.cfg().stream)
                .arg(&self.cfg().group)
                .arg(&self.source.consumer)
                .arg(self.cfg().claim_idle.as_millis() as u64)
                .arg(&start)
                .arg("COUNT")
                .arg(self.cfg().batch_size)
                .query_async(&mut self.commands)
                .await?;
            let parts = array(&reply);
            let next = parts
                .first()
                .and_then(string)
                .unwrap_or_else(|| "0-0".into());
            let entries: Vec<StreamEntry> = parts
                .get(1)
                .map(redis_util::entries)
                .unwrap_or_default()
                .into_iter()
                // Our own entries still in the pipeline (held for a checkpoint,
                // say) or read ahead are not abandoned: leave them be.
                .filter(|e| !held.contains(&entry_key(&e.id)))
                .collect();
            if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
                tracing::info!(source = %self.name, entries = entries.len(), "claimed entries idle longer than claim_idle");
                let counts = self.pending_between(&first.id, &last.id).await?;
                self.process(
                    entries,
                    |id| counts.get(id).copied().unwrap_or(1),
                    out,
                    track,
                )
                .await?;
            }
            if next == "0-0" {
                return Ok(());
            }
            start = next;
        }
    }

    async fn report_lag(&mut self) -> Result<(), StepError> {
        let reply: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.cfg().stream)
            .query_async(&mut self.commands)
            .await?;
        for group in array(&reply) {
            let fields: Vec<(String, &Value)> = match group {
                Value::Map(pairs) => pairs
                    .iter()
                    .filter_map(|(k, v)| Some((string(k)?, v)))
                    .collect(),
                other => array(other)
                    .chunks(2)
                    .filter_map(|kv| Some((string(kv.first()?)?, kv.get(1)?)))
                    .collect(),
            };
            let name = fields
                .iter()
                .find(|(k, _)| k == "name")
                .and_then(|(_, v)| string(v));
            if name.as_deref() == Some(self.cfg().group.as_str()) {
                let lag = fields
                    .iter()
                    .find(|(k, _)| k == "lag")
                    .and_then(|(_, v)| int(v))
                    .unwrap_or(0);
                self.stats.set_lag(lag.max(0) as u64);
            }
        }
        Ok(())
    }
}

/// Starts the task that reads new entries (`XREADGROUP … >`) on a
/// connection of its own, reconnecting with backoff, and hands them over
/// through a small buffer, in id order.
///
/// A read that fails may have been served (the reply lost with the
/// connection): its entries are then pending on this consumer, unseen. So
/// after a failure it first reads this consumer's pending entries after the
/// last one it handed over (`XREADGROUP … <id>`), then new ones again.
fn spawn_reads(
    source: &RedisStreamSource,
    name: &str,
    last_id: String,
    shutdown: flowpulse_core::plugin::Shutdown,
    stats: &Arc<ComponentStats>,
    held: SharedIds,
) -> tokio::sync::mpsc::Receiver<Vec<StreamEntry>> {
    // Some 25 ms of processing ahead: enough to ride out Redis busy with a
    // checkpoint piece or an XACK without the pipeline running dry.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let client = source.client.clone();
    let config = source.config.clone();
    let consumer = source.consumer.clone();
    let name = name.to_owned();
    let mut outage = redis_util::outage(stats);
    tokio::spawn(async move {
        let mut conn: Option<MultiplexedConnection> = None;
        let read = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&config.group)
            .arg(&consumer)
            .arg("COUNT")
            .arg(config.batch_size)
            .arg("BLOCK")
            .arg(config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&config.stream)
            .arg(">")
            .to_owned();
        let mut last_id = last_id;
        let mut catching_up = false;
        while !shutdown.is_cancelled() && !tx.is_closed() {
            let history = catching_up.then(|| {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&config.group)
                    .arg(&consumer)
                    .arg("COUNT")
                    .arg(config.batch_size)
                    .arg("STREAMS")
                    .arg(&config.stream)
                    .arg(&last_id)
                    .to_owned()
            });
            let result = async {
                if conn.is_none() {
                    conn = Some(connect(&client, config.block + Duration::from_secs(10)).await?);
                }
                match (conn.as_mut(), &history) {
                    (Some(c), Some(history)) => history.query_async::<Value>(c).await,
                    (Some(c), None) => read.query_async::<Value>(c).await,
                    (None, _) => Ok(Value::Nil),
                }
            };
            let reply = tokio::select! {
                _ = shutdown.cancelled() => break,
                reply = result => reply,
            };
            match reply {
                Ok(reply) => {
                    outage.recovered(&name, &config.url);
                    let entries = redis_util::read_reply(&reply);
                    if catching_up && entries.is_empty() {
                        catching_up = false;
                    }
                    if let Some(last) = entries.last() {
                        last_id = last.id.clone();
                    }
                    if !entries.is_empty() {
                        lock_ids(&held).extend(entries.iter().map(|e| entry_key(&e.id)));
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            sent = tx.send(entries) => if sent.is_err() { break },
                        }
                    }
                }
                Err(e) => {
                    conn = None;
                    catching_up = true;
                    let wait = outage.failed(&name, &config.url, &e);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    });
    rx
}

#[async_trait]
impl Source for RedisStreamSource {
    async fn run(mut self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let held_lease = self.lease.take();
        // Cancelled once another reader holds the lease (never without one).
        let lease_lost = held_lease
            .as_ref()
            .map_or_else(CancellationToken::new, lease::Lease::lost);
        let SourceContext {
            name,
            mut out,
            shutdown,
            stats,
        } = cx;
        let config = &self.config;
        let mut outage = redis_util::outage(&stats);
        let mut track = InFlight::default();
        let reads_stop = shutdown.child_token();
        let acker = Acker::start(
            AckTarget {
                client: self.client.clone(),
                url: config.url.clone(),
                stream: config.stream.clone(),
                group: config.group.clone(),
                component: name.clone(),
                held: Arc::clone(&track.ids),
            },
            &stats,
        );
        let mut recovered = false;
        let mut last_claim = Instant::now();
        let mut last_lag = Instant::now() - Duration::from_secs(60);
        let mut last_entry = Instant::now();
        let mut reads: Option<tokio::sync::mpsc::Receiver<Vec<StreamEntry>>> = None;
        let mut last_recovered = "0-0".to_owned();
        'connect: while !shutdown.is_cancelled() {
            let connected = async {
                let mut commands = connect(&self.client, Duration::from_secs(10)).await?;
                let version = redis_util::require_redis_7(&mut commands).await;
                Ok::<_, redis::RedisError>((commands, version))
            }
            .await;
            let commands = match connected {
                Ok((commands, Ok(()))) => commands,
                Ok((_, Err(fatal))) => return Err(ComponentError::Fatal(fatal)),
                Err(e) => {
                    stats.error(e.to_string());
                    let wait = outage.failed(&name, &config.url, &e);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            let mut reader = Reader {
                source: &self,
                name: name.clone(),
                stats: stats.clone(),
                commands,
                acker: &acker,
            };
            let step: Result<(), StepError> = async {
                reader.create_group().await?;
                outage.recovered(&name, &config.url);
                if !recovered {
                    if self.exclusive {
                        // Whoever read them before (a dead instance of another
                        // name), they are re-read here, before anything newer.
                        let taken = reader.take_over_all_pending().await?;
                        if taken > 0 {
                            tracing::info!(source = %name, entries = taken, "took over every entry pending in the group");
                        }
                    }
                    let (n, last) = reader.recover_pending(&mut out, &mut track).await?;
                    if n > 0 {
                        tracing::info!(source = %name, entries = n, "re-read this consumer's pending entries");
                    }
                    recovered = true;
                    last_recovered = last;
                }
                if reads.is_none() {
                    reads = Some(spawn_reads(
                        &self,
                        &name,
                        last_recovered.clone(),
                        reads_stop.clone(),
                        &stats,
                        Arc::clone(&track.ids),
                    ));
                }
                let Some(entries_rx) = reads.as_mut() else {
                    return Ok(());
                };
                loop {
                    if lease_lost.is_cancelled() {
                        return Ok(());
                    }
                    track.settled(&acker);
                    if last_lag.elapsed() >= Duration::from_secs(5) {
                        reader.report_lag().await?;
                        last_lag = Instant::now();
                    }
                    if last_claim.elapsed() >= config.claim_idle / 2 {
                        reader.claim(&mut out, &mut track).await?;
                        last_claim = Instant::now();
                    }
                    if let Some(idle) = config.stop_after_idle {
                        if last_entry.elapsed() >= idle && track.acks.is_empty() {
                            return Ok(());
                        }
                    }
                    // Reads run ahead in their own task: the next batch is on
                    // its way while this one is processed.
                    let entries = tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = lease_lost.cancelled() => return Ok(()),
                        // Acknowledged as soon as settled (a checkpoint
                        // released it), not when the next entries arrive.
                        Some((ids, status)) = track.acks.next(), if !track.acks.is_empty() => {
                            track.settle(ids, status, &acker);
                            continue;
                        }
                        entries = entries_rx.recv() => match entries {
                            Some(entries) => entries,
                            None => return Ok(()),
                        },
                        _ = tokio::time::sleep(config.block) => continue,
                    };
                    last_entry = Instant::now();
                    reader.process(entries, |_| 1, &mut out, &mut track).await?;
                }
            }
            .await;
            match step {
                Ok(()) => break 'connect,
                Err(e) => {
                    stats.error(e.to_string());
                    // A step that failed midway (a dead-letter write, say) may
                    // leave entries of this consumer pending that nobody
                    // holds: re-read them before anything newer, or a
                    // position past them would skip them for good.
                    recovered = false;
                    let wait = outage.failed(&name, &config.url, &e);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        // Stop reading ahead (what was read and not processed stays pending,
        // re-read on the next start), let downstream drain and close, then ack
        // what it took.
        reads_stop.cancel();
        drop(reads);
        drop(out);
        if lease_lost.is_cancelled() {
            // Another reader owns the group now: what is in flight here is
            // its to re-read, not ours to acknowledge.
            acker.abandon();
            return Err(ComponentError::Fatal(format!(
                "lost the reader lease of group \"{}\" on {} to another reader; stopped reading",
                config.group, config.stream
            )));
        }
        while let Some((ids, status)) = track.acks.next().await {
            track.settle(ids, status, &acker);
        }
        acker.finish().await;
        if let Some(lease) = held_lease {
            lease.release().await;
        }
        Ok(())
    }
}
