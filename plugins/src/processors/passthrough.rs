//! `passthrough`: forwards every batch unchanged. Useful to fan a stream out
//! under one name, to measure what a processor hop costs, and (with
//! `delay_per_batch`) to stand in for a slow processing step.

use std::time::Duration;

use async_trait::async_trait;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, PluginDescriptor, Processor, ProcessorConfig,
};
use flowpulse_core::record::{Batch, RecordKinds};
use flowpulse_core::runtime::Output;
use serde::Deserialize;

/// `[processors.NAME] type = "passthrough"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughConfig {
    /// Wait this long per batch, to stand in for a slow step (its input
    /// then backs up to the source), e.g. `"10ms"`. Default 0.
    #[serde(default, with = "humantime_serde")]
    pub delay_per_batch: Duration,
}

inventory::submit! {
    PluginDescriptor::processor::<PassthroughConfig>("passthrough", "Forwards every record unchanged")
}

#[async_trait]
impl ProcessorConfig for PassthroughConfig {
    fn inputs(&self) -> RecordKinds {
        RecordKinds::ALL
    }
    fn outputs(&self) -> RecordKinds {
        RecordKinds::ALL
    }
    async fn build(&self, _cx: &BuildContext) -> Result<Box<dyn Processor>, BuildError> {
        Ok(Box::new(Passthrough {
            delay_per_batch: self.delay_per_batch,
        }))
    }
}

struct Passthrough {
    delay_per_batch: Duration,
}

#[async_trait]
impl Processor for Passthrough {
    async fn process(&mut self, batch: Batch, out: &mut Output) -> Result<(), ComponentError> {
        if !self.delay_per_batch.is_zero() {
            tokio::time::sleep(self.delay_per_batch).await;
        }
        out.send(batch).await;
        Ok(())
    }
}
