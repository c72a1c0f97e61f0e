//! `redis_cache`: keeps the newest metrics document in a Redis key (with a
//! TTL) for dashboards to read, and optionally PUBLISHes it. After an outage
//! it writes the newest document, not a backlog: every failed write counts
//! as an error, every document superseded before it could be written as
//! dropped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowpulse_core::metrics::RealtimeMetrics;
use flowpulse_core::outage::Outage;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, FieldError, PluginDescriptor, Sink, SinkConfig,
    ValidateContext,
};
use flowpulse_core::record::{Batch, Record, RecordKinds};
use flowpulse_core::redact::redact_url;
use flowpulse_core::telemetry::ComponentStats;
use redis::aio::MultiplexedConnection;
use serde::Deserialize;

use crate::redis_util::{self, connect};

/// `[sinks.NAME] type = "redis_cache"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisCacheConfig {
    /// `redis://…` or `rediss://…`; never logged with its password.
    pub url: String,
    /// The key. Default `monitoring:metrics:realtime`.
    #[serde(default = "default_key")]
    pub key: String,
    /// Expiry of the key, e.g. `"300s"` (the default).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Also PUBLISH each document on this channel. Default: off.
    #[serde(default)]
    pub publish_channel: Option<String>,
}

fn default_key() -> String {
    "monitoring:metrics:realtime".into()
}

fn default_ttl() -> Duration {
    Duration::from_secs(300)
}

inventory::submit! {
    PluginDescriptor::sink::<RedisCacheConfig>("redis_cache", "Writes the newest metrics document to a Redis key with a TTL, optionally PUBLISHing it")
}

#[async_trait]
impl SinkConfig for RedisCacheConfig {
    fn validate(&self, _cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Err(e) = redis_util::client(&self.url) {
            errors.push(FieldError::new("url", e));
        }
        if self.ttl < Duration::from_secs(1) {
            errors.push(FieldError::new("ttl", "must be at least 1s"));
        }
        errors
    }

    fn inputs(&self) -> RecordKinds {
        RecordKinds::METRICS
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(RedisCacheSink {
            client: redis_util::client(&self.url).map_err(BuildError)?,
            config: self.clone(),
            name: cx.name.clone(),
            stats: Arc::clone(&cx.stats),
            conn: None,
            newest: None,
            outage: redis_util::outage(&cx.stats),
        }))
    }
}

struct RedisCacheSink {
    config: RedisCacheConfig,
    client: redis::Client,
    name: String,
    stats: Arc<ComponentStats>,
    conn: Option<MultiplexedConnection>,
    /// The newest document not yet written (kept across an outage).
    newest: Option<Arc<RealtimeMetrics>>,
    outage: Outage,
}

impl RedisCacheSink {
    /// At shutdown, counts the document that could not be written as dropped.
    fn give_up_newest(&mut self) {
        if self.newest.take().is_some() {
            self.stats.dropped(1);
        }
    }

    async fn write_newest(&mut self) -> Result<(), ComponentError> {
        let Some(document) = self.newest.clone() else {
            return Ok(());
        };
        let text = serde_json::to_string(document.as_ref())
            .map_err(|e| ComponentError::Transient(format!("cannot encode the document: {e}")))?;
        let result: redis::RedisResult<()> = async {
            if self.conn.is_none() {
                self.conn = Some(connect(&self.client, Duration::from_secs(5)).await?);
            }
            let Some(conn) = self.conn.as_mut() else {
                return Ok(());
            };
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&self.config.key)
                .arg(&text)
                .arg("EX")
                .arg(self.config.ttl.as_secs())
                .ignore();
            if let Some(channel) = &self.config.publish_channel {
                pipe.cmd("PUBLISH").arg(channel).arg(&text).ignore();
            }
            pipe.query_async::<()>(conn).await
        }
        .await;
        match result {
            Ok(()) => {
                self.outage.recovered(&self.name, &self.config.url);
                self.newest = None;
                Ok(())
            }
            Err(e) => {
                self.conn = None;
                let was_ongoing = self.outage.ongoing();
                self.outage.failed(&self.name, &self.config.url, &e);
                let message = format!(
                    "cannot write {} to {}: {e}",
                    self.config.key,
                    redact_url(&self.config.url)
                );
                if was_ongoing {
                    // Logged once per outage (the runtime logged its first
                    // failure); this one is only counted.
                    self.stats.error(message);
                    return Ok(());
                }
                // The runtime logs and counts it.
                Err(ComponentError::Transient(message))
            }
        }
    }
}

#[async_trait]
impl Sink for RedisCacheSink {
    async fn write(&mut self, batch: &Batch) -> Result<(), ComponentError> {
        let newest = batch.records().iter().rev().find_map(|r| match r {
            Record::Metrics(m) => Some(Arc::clone(m)),
            _ => None,
        });
        if newest.is_some() {
            if self.newest.is_some() {
                // Held since a failed write and now superseded: never written.
                self.stats.dropped(1);
            }
            self.newest = newest;
        }
        self.write_newest().await
    }

    async fn flush(&mut self) -> Result<(), ComponentError> {
        for _ in 0..3 {
            if self.newest.is_none() {
                return Ok(());
            }
            if let Err(e) = self.write_newest().await {
                self.give_up_newest();
                return Err(e);
            }
            if self.newest.is_some() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        self.give_up_newest();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose Redis is down: nothing listens on its port.
    fn sink_without_redis() -> RedisCacheSink {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let config = RedisCacheConfig {
            url: format!("redis://127.0.0.1:{port}"),
            key: default_key(),
            ttl: default_ttl(),
            publish_channel: None,
        };
        RedisCacheSink {
            client: redis_util::client(&config.url).unwrap(),
            config,
            name: "cache".into(),
            stats: Arc::default(),
            conn: None,
            newest: None,
            outage: redis_util::outage(&Arc::default()),
        }
    }

    fn document() -> Batch {
        Batch::unacked(vec![Record::Metrics(Arc::default())])
    }

    #[tokio::test]
    async fn every_write_that_fails_during_an_outage_is_counted() {
        let mut sink = sink_without_redis();
        // The first failure goes back to the runtime, which logs and counts it.
        assert!(sink.write(&document()).await.is_err());
        assert!(sink.write(&document()).await.is_ok());
        assert!(sink.write(&document()).await.is_ok());
        let stats = sink.stats.snapshot();
        assert_eq!(stats.errors, 2);
        assert!(stats.last_error.unwrap().contains("cannot write"));
    }

    #[tokio::test]
    async fn a_document_superseded_before_it_could_be_written_is_dropped() {
        let mut sink = sink_without_redis();
        let _ = sink.write(&document()).await;
        let _ = sink.write(&document()).await;
        let _ = sink.write(&document()).await;
        assert_eq!(sink.stats.snapshot().dropped, 2);
    }

    #[tokio::test]
    async fn a_document_still_unwritten_at_shutdown_is_dropped() {
        let mut sink = sink_without_redis();
        let _ = sink.write(&document()).await;
        assert!(sink.flush().await.is_ok());
        assert_eq!(sink.stats.snapshot().dropped, 1);
    }
}
