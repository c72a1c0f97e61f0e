//! `redis_cache`: keeps the newest metrics document in a Redis key (with a
//! TTL) for dashboards to read, and optionally PUBLISHes it. After an outage
//! it writes the newest document, not a backlog.

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
            conn: None,
            newest: None,
            outage: redis_util::outage(),
        }))
    }
}

struct RedisCacheSink {
    config: RedisCacheConfig,
    client: redis::Client,
    name: String,
    conn: Option<MultiplexedConnection>,
    /// The newest document not yet written (kept across an outage).
    newest: Option<Arc<RealtimeMetrics>>,
    outage: Outage,
}

impl RedisCacheSink {
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
                if was_ongoing {
                    // Logged once per outage; this one is only counted.
                    return Ok(());
                }
                Err(ComponentError::Transient(format!(
                    "cannot write {} to {}: {e}",
                    self.config.key,
                    redact_url(&self.config.url)
                )))
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
            self.newest = newest;
        }
        self.write_newest().await
    }

    async fn flush(&mut self) -> Result<(), ComponentError> {
        for _ in 0..3 {
            if self.newest.is_none() {
                return Ok(());
            }
            self.write_newest().await?;
            if self.newest.is_some() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        Ok(())
    }
}
