//! The broker's side of the Kafka bridge benchmark: a bare producer with the
//! `kafka` sink's settings (idempotent, `acks = all`, keyed by workflow_id,
//! two position headers per record) writing events already serialized, so
//! the rate is what the broker and librdkafka allow, with no Redis and no
//! decoding.
//!
//! Usage: `kafka_produce_baseline BROKERS TOPIC COUNT` → prints
//! `records=N seconds=S rate=R`.

use std::time::Instant;

use flowpulse_plugins::sources::demo::generator::{WorkloadConfig, WorkloadGenerator};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(brokers), Some(topic), Some(count)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: kafka_produce_baseline BROKERS TOPIC COUNT".into());
    };
    let count: usize = count.parse()?;
    let records: Vec<(String, Vec<u8>)> = WorkloadGenerator::new(WorkloadConfig {
        seed: 7,
        in_flight: 10_000,
        ..WorkloadConfig::default()
    })
    .take(count)
    .map(|e| Ok((e.workflow_id.clone(), serde_json::to_vec(&e)?)))
    .collect::<Result<_, serde_json::Error>>()?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()?;
    let start = Instant::now();
    let mut deliveries = Vec::with_capacity(records.len());
    for (i, (key, payload)) in records.iter().enumerate() {
        let position = (i as u128).to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "flowpulse-upstream",
                value: Some("events/stream"),
            })
            .insert(Header {
                key: "flowpulse-position",
                value: Some(&position),
            });
        loop {
            let record = FutureRecord::to(&topic)
                .key(key)
                .payload(payload)
                .headers(headers.clone());
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    }
    for delivery in deliveries {
        if !matches!(delivery.await, Ok(Ok(_))) {
            return Err("a record was not delivered".into());
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "records={} seconds={seconds:.3} rate={:.0}",
        records.len(),
        records.len() as f64 / seconds
    );
    Ok(())
}
