//! `kafka`: writes events to a Kafka topic (any Kafka-protocol broker),
//! keyed by `workflow_id` so that one workflow's events stay in one
//! partition, in the order they arrived.
//!
//! The producer is idempotent with `acks = all`, and a batch counts as taken
//! only once the broker has acknowledged every record of it, so the source
//! upstream acknowledges nothing the broker could still lose. Each record
//! carries its upstream position in headers; a `kafka` source reading the
//! topic drops a record at or below the highest position it has folded from
//! that upstream partition, so what a restarted bridge sends again counts
//! once. A failed delivery is retried, in order, before the next batch: later
//! records never overtake earlier ones in a partition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowpulse_core::outage::Outage;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, FieldError, PluginDescriptor, Shutdown, Sink,
    SinkConfig, ValidateContext,
};
use flowpulse_core::record::{Batch, RecordKinds};
use flowpulse_core::telemetry::ComponentStats;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::Deserialize;

use crate::kafka_util::{self, POSITION_HEADER, UPSTREAM_HEADER};

/// Properties the sink sets for its guarantees.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
];

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
    /// How long the broker may take to acknowledge a record before the
    /// attempt counts as failed and is retried, e.g. `"30s"` (the default).
    #[serde(default = "default_delivery_timeout", with = "humantime_serde")]
    pub delivery_timeout: Duration,
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

fn default_delivery_timeout() -> Duration {
    Duration::from_secs(30)
}

inventory::submit! {
    PluginDescriptor::sink::<KafkaSinkConfig>("kafka", "Writes events to a Kafka topic keyed by workflow_id (idempotent, acks = all), with their upstream positions")
}

#[async_trait]
impl SinkConfig for KafkaSinkConfig {
    fn validate(&self, _cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors: Vec<FieldError> = kafka_util::check_brokers(&self.brokers)
            .into_iter()
            .collect();
        if self.topic.trim().is_empty() {
            errors.push(FieldError::new("topic", "must not be empty"));
        }
        if self.delivery_timeout < Duration::from_secs(1) {
            errors.push(FieldError::new("delivery_timeout", "must be at least 1s"));
        }
        errors.extend(kafka_util::reserved(RESERVED, &self.options));
        errors
    }

    fn inputs(&self) -> RecordKinds {
        RecordKinds::EVENTS
    }

    fn keeps_input_order(&self) -> bool {
        true
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        let timeout_ms = self.delivery_timeout.as_millis().to_string();
        let producer: FutureProducer = kafka_util::client_config(
            &self.brokers,
            &self.options,
            &[
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
                ("message.timeout.ms", timeout_ms),
            ],
        )
        .create()
        .map_err(|e| BuildError(format!("cannot create the Kafka producer: {e}")))?;
        Ok(Box::new(KafkaSink {
            producer,
            config: self.clone(),
            name: cx.name.clone(),
            stats: Arc::clone(&cx.stats),
            shutdown: cx.shutdown.clone(),
            outage: Outage::new("the Kafka broker").reporting_to(Arc::clone(&cx.stats)),
            stuck: false,
        }))
    }
}

struct KafkaSink {
    producer: FutureProducer,
    config: KafkaSinkConfig,
    name: String,
    stats: Arc<ComponentStats>,
    shutdown: Shutdown,
    outage: Outage,
    /// A batch was not taken: every later one fails too, so none overtakes
    /// it in a partition (the source delivers them all again, in order,
    /// after a restart).
    stuck: bool,
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

    /// Sends `records` in order; returns the indices of those the broker did
    /// not take (a suffix of each partition's, as the producer is
    /// idempotent), and the first error.
    async fn send_all(
        &self,
        records: &[Outgoing],
        which: &[usize],
    ) -> (Vec<usize>, Option<KafkaError>) {
        let mut deliveries: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(which.len());
        let mut failed = Vec::new();
        let mut first_error = None;
        for &i in which {
            let record = &records[i];
            loop {
                let mut future = FutureRecord::to(&self.config.topic)
                    .payload(&record.payload)
                    .headers(record.headers.clone());
                if let Some(key) = &record.key {
                    future = future.key(key);
                }
                match self.producer.send_result(future) {
                    Ok(delivery) => {
                        deliveries.push((i, delivery));
                        break;
                    }
                    // The local queue is full: wait for what is in flight.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        if deliveries.is_empty() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        for (j, delivery) in deliveries.drain(..) {
                            if let Err(e) = settle(delivery).await {
                                failed.push(j);
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                    Err((e, _)) => {
                        failed.push(i);
                        first_error.get_or_insert(e);
                        break;
                    }
                }
            }
        }
        for (j, delivery) in deliveries {
            if let Err(e) = settle(delivery).await {
                failed.push(j);
                first_error.get_or_insert(e);
            }
        }
        failed.sort_unstable();
        (failed, first_error)
    }
}

async fn settle(delivery: DeliveryFuture) -> Result<(), KafkaError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e),
        Err(_) => Err(KafkaError::Canceled),
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: &Batch) -> Result<(), ComponentError> {
        if self.stuck {
            return Err(ComponentError::Transient(
                "an earlier batch was not taken by the broker; later ones wait for a restart so that none overtakes it".into(),
            ));
        }
        let records = self.outgoing(batch)?;
        let mut which: Vec<usize> = (0..records.len()).collect();
        loop {
            let (failed, error) = self.send_all(&records, &which).await;
            if failed.is_empty() {
                self.outage.recovered(
                    &self.name,
                    &kafka_util::display_brokers(&self.config.brokers),
                );
                self.stats.sent(records.len());
                return Ok(());
            }
            let error = error.map_or_else(|| "not acknowledged".to_owned(), |e| e.to_string());
            let wait = self.outage.failed(
                &self.name,
                &kafka_util::display_brokers(&self.config.brokers),
                &error,
            );
            // Retried before anything newer is sent, so order holds.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => {
                    self.stuck = true;
                    return Err(ComponentError::Transient(format!(
                        "stopped before the broker took {} of {} records: {error}",
                        failed.len(),
                        records.len()
                    )));
                }
            }
            which = failed;
        }
    }

    async fn flush(&mut self) -> Result<(), ComponentError> {
        // Every write waited for its acknowledgements: nothing is queued.
        Ok(())
    }
}
