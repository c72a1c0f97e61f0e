//! `blackhole`: takes everything and keeps nothing (its counters count it).
//! For benchmarks and for trying topologies.

use std::time::Duration;

use async_trait::async_trait;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, PluginDescriptor, Sink, SinkConfig,
};
use flowpulse_core::record::{Batch, RecordKinds};
use serde::Deserialize;

/// `[sinks.NAME] type = "blackhole"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSinkConfig {
    /// Wait this long per batch, to stand in for a slow downstream, e.g.
    /// `"50ms"`. Default 0.
    #[serde(default, with = "humantime_serde")]
    pub delay_per_batch: Duration,
}

inventory::submit! {
    PluginDescriptor::sink::<BlackholeSinkConfig>("blackhole", "Discards every record, counting it (benchmarks, trials)")
}

#[async_trait]
impl SinkConfig for BlackholeSinkConfig {
    fn inputs(&self) -> RecordKinds {
        RecordKinds::ALL
    }

    async fn build(&self, _cx: &BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(BlackholeSink(self.delay_per_batch)))
    }
}

struct BlackholeSink(Duration);

#[async_trait]
impl Sink for BlackholeSink {
    async fn write(&mut self, _batch: &Batch) -> Result<(), ComponentError> {
        if !self.0.is_zero() {
            tokio::time::sleep(self.0).await;
        }
        Ok(())
    }
}
