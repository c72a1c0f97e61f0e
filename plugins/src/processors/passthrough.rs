//! `passthrough`: forwards every batch unchanged. Useful to fan a stream out
//! under one name, and to measure what a processor hop costs.

use async_trait::async_trait;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, PluginDescriptor, Processor, ProcessorConfig,
};
use flowpulse_core::record::{Batch, RecordKinds};
use flowpulse_core::runtime::Output;
use serde::Deserialize;

/// `[processors.NAME] type = "passthrough"` (no options).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughConfig {}

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
        Ok(Box::new(Passthrough))
    }
}

struct Passthrough;

#[async_trait]
impl Processor for Passthrough {
    async fn process(&mut self, batch: Batch, out: &mut Output) -> Result<(), ComponentError> {
        out.send(batch).await;
        Ok(())
    }
}
