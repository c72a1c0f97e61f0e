//! `stage_failures`: stage failures per agent in the current hour of event
//! time, published as the custom metric `stage_failures_per_hour`.
//! This is the README's "write your own processor" example.
use flowpulse_core::plugin::prelude::*;
use std::collections::BTreeMap;

/// One hour of event time, in milliseconds.
const HOUR_MS: i64 = 3_600_000;

/// The name of the custom metric this processor publishes.
const METRIC: &str = "stage_failures_per_hour";

/// `[processors.NAME] type = "stage_failures"`: it has no options.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFailuresConfig {}

inventory::submit! {
    PluginDescriptor::processor::<StageFailuresConfig>("stage_failures", "Counts stage failures per agent in the current hour")
}

#[async_trait]
impl ProcessorConfig for StageFailuresConfig {
    fn outputs(&self) -> RecordKinds {
        RecordKinds::CUSTOM
    }

    async fn build(&self, _cx: &BuildContext) -> Result<Box<dyn Processor>, BuildError> {
        Ok(Box::new(HourlyFailures::default()))
    }
}

/// The running state: failures per agent in the newest hour seen so far.
#[derive(Default)]
struct HourlyFailures {
    /// Hours since the epoch; events of earlier hours come too late to count.
    hour: i64,
    per_agent: BTreeMap<String, u64>,
}

#[async_trait]
impl Processor for HourlyFailures {
    async fn process(&mut self, batch: Batch, out: &mut Output) -> Result<(), ComponentError> {
        for event in batch.records().iter().filter_map(Record::as_event) {
            let hour = event.timestamp_ms / HOUR_MS;
            if hour > self.hour {
                self.hour = hour;
                self.per_agent.clear();
            }
            if event.kind == EventKind::StageFailed && hour == self.hour {
                let agent = event.agent_type.clone().unwrap_or_default();
                *self.per_agent.entry(agent).or_default() += 1;
            }
        }
        out.send_one(Record::custom(METRIC, &self.per_agent)).await;
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
        let hour = HOUR_MS;
        let mut processor = HourlyFailures::default();
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
