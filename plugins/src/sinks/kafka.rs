//! `kafka`: writes events to a Kafka topic (any Kafka-protocol broker),
//! keyed by `workflow_id` so that one workflow's events stay in one
//! partition, in the order they arrived.
//!
//! The producer is idempotent with `acks = all` and never gives a record up
//! (`message.timeout.ms = 0`): through a broker outage it retries, in order,
//! and the outage shows in `/health`. Batches are sent one after another
//! without waiting for the broker between them, and each batch counts as
//! taken only once the broker has acknowledged every record of it, so the
//! source upstream acknowledges nothing the broker could still lose. Each
//! record carries its upstream position in headers; a `kafka` source reading
//! the topic drops a record at or below the highest position it has folded
//! from that upstream partition, so what a restarted bridge sends again
//! counts once. That needs every record's first copy to land before any later
//! one of its partition, which the idempotent producer keeps as long as it
//! gives nothing up: a record the broker refuses for good (too large, not
//! authorised) stops the pipeline rather than let a later one overtake it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, FieldError, PluginDescriptor, Sink, SinkConfig,
    ValidateContext,
};
use flowpulse_core::record::{Batch, RecordKinds};
use flowpulse_core::telemetry::ComponentStats;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientContext;
use serde::Deserialize;

use crate::kafka_util::{self, POSITION_HEADER, UPSTREAM_HEADER};

/// Properties the sink sets for its guarantees.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "enable.gapless.guarantee",
];

/// Batches whose acknowledgements may be awaited at once: enough to keep the
/// broker busy while the source reads on, bounded so memory is.
const MAX_BATCHES_IN_FLIGHT: usize = 64;

/// `[sinks.NAME] type = "kafka"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port`, comma-separated.
    pub brokers: String,
    /// The topic events are written to.
    pub topic: String,
    /// The field whose value is the record key, which picks the partition:
    /// `workflow_id` (the default: one workflow's events in one partition,
    /// in order) or `id`.
    #[serde(default)]
    pub key: KeyField,
    /// Further librdkafka producer properties (`compression.type`,
    /// `security.protocol`, `sasl.*` …). Never logged.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Which field keys a record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyField {
    /// The workflow id.
    #[default]
    WorkflowId,
    /// The event's identity (records without one have no key).
    Id,
}

inventory::submit! {
    PluginDescriptor::sink::<KafkaSinkConfig>("kafka", "Writes events to a Kafka topic keyed by workflow_id (idempotent, acks = all), with their upstream positions")
}

#[async_trait]
impl SinkConfig for KafkaSinkConfig {
    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors =
            kafka_util::check_common(&self.brokers, &self.topic, &self.options, RESERVED);
        errors.extend(crate::sinks::util::refuse_drop_newest(
            cx,
            "a dropped batch would be acknowledged upstream without reaching the topic: keep the default \"block\"",
        ));
        errors
    }

    fn inputs(&self) -> RecordKinds {
        RecordKinds::EVENTS
    }

    fn keeps_input_order(&self) -> bool {
        true
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        let reach = Arc::new(Reach {
            component: cx.name.clone(),
            brokers: kafka_util::display_brokers(&self.brokers),
            stats: Arc::clone(&cx.stats),
            down: AtomicBool::new(false),
        });
        let context = ProducerContext(Arc::clone(&reach));
        let producer: FutureProducer<ProducerContext> = kafka_util::client_config(
            &self.brokers,
            &self.options,
            &[
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
                // Never give a record up: retried through outages, in order.
                ("message.timeout.ms", "0".into()),
            ],
        )
        .create_with_context(context)
        .map_err(|e| BuildError(format!("cannot create the Kafka producer: {e}")))?;
        Ok(Box::new(KafkaSink {
            producer,
            config: self.clone(),
            stats: Arc::clone(&cx.stats),
            reach,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_BATCHES_IN_FLIGHT)),
            queue_full: cx.stats.counter(
                "producer_queue_full",
                "times a record waited for room in the Kafka producer's queue",
            ),
            refused: Arc::new(std::sync::Mutex::new(None)),
        }))
    }
}

/// Whether the broker can be reached, as the component shows it: librdkafka
/// retries on its own meanwhile.
struct Reach {
    component: String,
    brokers: String,
    stats: Arc<ComponentStats>,
    down: AtomicBool,
}

impl Reach {
    fn reached(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            self.stats.set_outage(None);
            tracing::info!(component = %self.component, "reached {} again", self.brokers);
        }
    }

    fn unreachable(&self, error: &KafkaError, reason: &str) {
        self.stats
            .set_outage(Some(format!("cannot reach {} ({reason})", self.brokers)));
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                component = %self.component,
                "cannot reach {} ({error}: {reason}); is the Kafka broker running? records wait and are retried in order",
                self.brokers
            );
        }
    }
}

/// The producer's callbacks.
struct ProducerContext(Arc<Reach>);

impl ClientContext for ProducerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.unreachable(&error, reason);
    }

    // librdkafka logs every failed connection attempt; the outage is logged
    // once by `error` above, so its own lines are kept for debugging.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(component = %self.0.component, ?level, fac, "librdkafka: {message}");
    }
}

struct KafkaSink {
    producer: FutureProducer<ProducerContext>,
    config: KafkaSinkConfig,
    stats: Arc<ComponentStats>,
    reach: Arc<Reach>,
    /// Permits for batches awaiting the broker.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Times a record waited for room in librdkafka's queue.
    queue_full: Arc<flowpulse_core::telemetry::Counter>,
    /// Why the broker refused a record for good, once it has: every later
    /// write fails, so nothing overtakes it.
    refused: Arc<std::sync::Mutex<Option<String>>>,
}

/// One record ready to send: its payload, key and headers.
struct Outgoing {
    payload: Vec<u8>,
    key: Option<String>,
    headers: OwnedHeaders,
}

impl KafkaSink {
    fn outgoing(&self, batch: &Batch) -> Result<Vec<Outgoing>, ComponentError> {
        let positions = batch.positions();
        let upstream = positions.map(|p| format!("{}/{}", p.origin.source, p.origin.partition));
        let mut outgoing = Vec::with_capacity(batch.len());
        for (i, record) in batch.records().iter().enumerate() {
            let Some(event) = record.as_event() else {
                continue;
            };
            let payload = serde_json::to_vec(event)
                .map_err(|e| ComponentError::Transient(format!("cannot encode an event: {e}")))?;
            let key = match self.config.key {
                KeyField::WorkflowId => Some(event.workflow_id.clone()),
                KeyField::Id => event.id.clone(),
            };
            let mut headers = OwnedHeaders::new_with_capacity(2);
            if let (Some(upstream), Some(offset)) =
                (&upstream, positions.and_then(|p| p.offsets.get(i)))
            {
                headers = headers
                    .insert(Header {
                        key: UPSTREAM_HEADER,
                        value: Some(upstream.as_str()),
                    })
                    .insert(Header {
                        key: POSITION_HEADER,
                        value: Some(&offset.to_string()),
                    });
            }
            outgoing.push(Outgoing {
                payload,
                key,
                headers,
            });
        }
        Ok(outgoing)
    }
}

/// Waits for the broker's acknowledgement of one record.
async fn settle(delivery: DeliveryFuture) -> Result<(), KafkaError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e),
        Err(_) => Err(KafkaError::Canceled),
    }
}

impl KafkaSink {
    fn refusal(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: &Batch) -> Result<(), ComponentError> {
        if let Some(reason) = self.refusal() {
            return Err(ComponentError::Fatal(format!(
                "the broker refused a record ({reason}); stopped so that no later record overtakes it"
            )));
        }
        let permit = Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .map_err(|_| ComponentError::Fatal("the sink is closed".into()))?;
        let records = self.outgoing(batch)?;
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            loop {
                let mut future = FutureRecord::to(&self.config.topic)
                    .payload(&record.payload)
                    .headers(record.headers.clone());
                if let Some(key) = &record.key {
                    future = future.key(key);
                }
                match self.producer.send_result(future) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    // librdkafka's queue is full (an outage, or a burst):
                    // wait for room rather than drop.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        self.queue_full.inc();
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        return Err(ComponentError::Fatal(format!(
                            "cannot hand a record to the Kafka producer: {e}"
                        )));
                    }
                }
            }
        }
        // The batch stays open until the broker has every record: these
        // clones of its handles are dropped then (or failed).
        let handles = batch.ack_handles().to_vec();
        let (stats, refused) = (Arc::clone(&self.stats), Arc::clone(&self.refused));
        let reach = Arc::clone(&self.reach);
        let sent = records.len();
        tokio::spawn(async move {
            let mut error = None;
            for delivery in deliveries {
                if let Err(e) = settle(delivery).await {
                    error.get_or_insert(e);
                }
            }
            match error {
                None => {
                    reach.reached();
                    stats.sent(sent);
                }
                Some(e) => {
                    tracing::error!(component = %reach.component, "the broker refused a record: {e}; stopping so that no later record overtakes it");
                    stats.error(format!("the broker refused a record: {e}"));
                    *refused
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                    handles
                        .iter()
                        .for_each(flowpulse_core::ack::AckHandle::fail);
                }
            }
            drop(handles);
            drop(permit);
        });
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ComponentError> {
        // Every batch acknowledged by the broker (or refused).
        let _all = self
            .in_flight
            .acquire_many(MAX_BATCHES_IN_FLIGHT as u32)
            .await
            .map_err(|_| ComponentError::Fatal("the sink is closed".into()))?;
        match self.refusal() {
            Some(reason) => Err(ComponentError::Fatal(format!(
                "the broker refused a record ({reason})"
            ))),
            None => Ok(()),
        }
    }
}
