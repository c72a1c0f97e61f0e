//! `stage_failures`: stage failures per agent in the current hour of event
//! time, published as the custom metric `stage_failures_per_hour`.
//! This is the README's "write your own processor" example.
use std::collections::BTreeMap;

use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, PluginDescriptor, Processor, ProcessorConfig,
};
use flowpulse_core::{async_trait, event::EventKind, record::*, runtime::Output};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFailuresConfig {}

inventory::submit! {
    PluginDescriptor::processor::<StageFailuresConfig>("stage_failures", "Counts stage failures per agent in the current hour")
}

#[async_trait]
impl ProcessorConfig for StageFailuresConfig {
    fn inputs(&self) -> RecordKinds {
        RecordKinds::EVENTS
    }
    fn outputs(&self) -> RecordKinds {
        RecordKinds::CUSTOM
    }
    async fn build(&self, _cx: &BuildContext) -> Result<Box<dyn Processor>, BuildError> {
        Ok(Box::new(StageFailures::default()))
    }
}

#[derive(Default)]
struct StageFailures {
    hour: i64,
    per_agent: BTreeMap<String, u64>,
}

#[async_trait]
impl Processor for StageFailures {
    async fn process(&mut self, batch: Batch, out: &mut Output) -> Result<(), ComponentError> {
        for event in batch.records().iter().filter_map(Record::as_event) {
            let hour = event.timestamp_ms / 3_600_000;
            if hour > self.hour {
                (self.hour, self.per_agent) = (hour, BTreeMap::new());
            }
            if event.kind == EventKind::StageFailed && hour == self.hour {
                *self
                    .per_agent
                    .entry(event.agent_type.clone().unwrap_or_default())
                    .or_default() += 1;
            }
        }
        out.send(Batch::unacked(vec![Record::custom(
            "stage_failures_per_hour",
            &self.per_agent,
        )]))
        .await;
        Ok(())
    }
}
