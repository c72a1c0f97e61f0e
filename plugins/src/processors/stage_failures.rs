//! `stage_failures`: stage failures per agent in the current hour of event
//! time, published as the custom metric `stage_failures_per_hour`.
//! This is the README's "write your own processor" example.
use flowpulse_core::plugin::prelude::*;
use std::collections::BTreeMap;
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFailures {
    #[serde(skip)]
    state: (i64, BTreeMap<String, u64>),
}
inventory::submit! {
    PluginDescriptor::processor::<StageFailures>("stage_failures", "Counts stage failures per agent in the current hour")
}
#[async_trait]
impl ProcessorConfig for StageFailures {
    fn outputs(&self) -> RecordKinds {
        RecordKinds::CUSTOM
    }
    async fn build(&self, _cx: &BuildContext) -> Result<Box<dyn Processor>, BuildError> {
        Ok(Box::new(self.clone()))
    }
}
#[async_trait]
impl Processor for StageFailures {
    async fn process(&mut self, batch: Batch, out: &mut Output) -> Result<(), ComponentError> {
        let (hour, per_agent) = &mut self.state;
        for event in batch.records().iter().filter_map(Record::as_event) {
            if event.timestamp_ms / 3_600_000 > *hour {
                (*hour, *per_agent) = (event.timestamp_ms / 3_600_000, BTreeMap::new());
            }
            if event.kind == EventKind::StageFailed && event.timestamp_ms / 3_600_000 == *hour {
                let agent = event.agent_type.clone().unwrap_or_default();
                *per_agent.entry(agent).or_default() += 1;
            }
        }
        out.send_one(Record::custom("stage_failures_per_hour", per_agent))
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(kind: EventKind, agent: &str, timestamp_ms: i64) -> Record {
        Record::Event(WorkflowEvent {
            id: None,
            kind,
            timestamp_ms,
            workflow_id: "wf-1".into(),
            workflow_type: None,
            agent_type: Some(agent.into()),
            stage: None,
            duration_ms: Some(10),
            error: None,
        })
    }

    #[tokio::test]
    async fn counts_failures_per_agent_and_restarts_each_hour() {
        let hour = 3_600_000;
        let mut processor = StageFailures::default();
        let _: &dyn Processor = &processor;
        let (mut out, mut rx) = Output::channel(4);
        let batch = vec![
            stage(EventKind::StageFailed, "coder", 10 * hour),
            stage(EventKind::StageFailed, "coder", 10 * hour + 5),
            stage(EventKind::StageCompleted, "coder", 10 * hour + 6),
            stage(EventKind::StageFailed, "tester", 10 * hour + 7),
        ];
        processor
            .process(Batch::unacked(batch), &mut out)
            .await
            .unwrap();
        let batch = rx.recv().await.unwrap();
        let Record::Custom(metric) = &batch.records()[0] else {
            panic!()
        };
        assert_eq!(metric.name, "stage_failures_per_hour");
        assert_eq!(metric.value, serde_json::json!({"coder": 2, "tester": 1}));

        let next_hour = vec![stage(EventKind::StageFailed, "tester", 11 * hour)];
        processor
            .process(Batch::unacked(next_hour), &mut out)
            .await
            .unwrap();
        let batch = rx.recv().await.unwrap();
        let Record::Custom(metric) = &batch.records()[0] else {
            panic!()
        };
        assert_eq!(metric.value, serde_json::json!({"tester": 1}));
    }
}
