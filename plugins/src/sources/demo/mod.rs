//! `demo`: realistic synthetic workflow traffic, so the default pipeline runs
//! on any machine with no servers.

pub mod generator;

use std::time::Duration;

use async_trait::async_trait;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, FieldError, PluginDescriptor, Source, SourceConfig,
    SourceContext, ValidateContext,
};
use flowpulse_core::record::{Batch, Record};
use serde::Deserialize;

use generator::{WorkloadConfig, WorkloadGenerator};

/// `[sources.NAME] type = "demo"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSourceConfig {
    /// Events per second. Default 50.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Seed of every random choice; the same seed gives the same traffic.
    /// Default: a new seed each run.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Workflows kept in flight. Default 200.
    #[serde(default = "default_in_flight")]
    pub workflows_in_flight: usize,
    /// Stop after this many events. Default: never.
    #[serde(default)]
    pub count: Option<u64>,
    /// Pace events at `rate` in real time (`true`, the default), or emit as
    /// fast as the pipeline takes them with event times still `1/rate` apart.
    #[serde(default = "default_true")]
    pub realtime: bool,
    /// Whether agents periodically fail or slow down for a minute or two.
    /// Default `true`.
    #[serde(default = "default_true")]
    pub incidents: bool,
    /// Time between incident starts, e.g. `"4m"`. Default 4 minutes.
    #[serde(default = "default_incident_every", with = "humantime_serde")]
    pub incident_every: Duration,
}

fn default_rate() -> f64 {
    50.0
}
fn default_in_flight() -> usize {
    200
}
fn default_true() -> bool {
    true
}
fn default_incident_every() -> Duration {
    Duration::from_secs(240)
}

inventory::submit! {
    PluginDescriptor::source::<DemoSourceConfig>("demo", "Generates realistic workflow traffic with failures, pauses, cancellations and agent incidents")
}

#[async_trait]
impl SourceConfig for DemoSourceConfig {
    fn validate(&self, _cx: &ValidateContext<'_>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            errors.push(FieldError::new(
                "rate",
                "must be a positive number of events per second",
            ));
        }
        if self.workflows_in_flight == 0 {
            errors.push(FieldError::new("workflows_in_flight", "must be at least 1"));
        }
        errors
    }

    async fn build(&self, _cx: &BuildContext) -> Result<Box<dyn Source>, BuildError> {
        Ok(Box::new(DemoSource(self.clone())))
    }
}

struct DemoSource(DemoSourceConfig);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[async_trait]
impl Source for DemoSource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let config = self.0;
        let seed = config.seed.unwrap_or_else(|| now_ms() as u64);
        let start_ms = now_ms();
        let mut generator = WorkloadGenerator::new(WorkloadConfig {
            seed,
            start_ms,
            rate: config.rate,
            in_flight: config.workflows_in_flight,
            incidents: config.incidents,
            incident_every_ms: config.incident_every.as_millis() as i64,
        });
        tracing::info!(source = %cx.name, seed, rate = config.rate, "generating demo traffic");
        let limit = config.count.unwrap_or(u64::MAX);
        let mut out = cx.out;
        let mut sent = 0u64;
        let mut last_incident = None;
        let tick = Duration::from_millis(100);
        while sent < limit && !cx.shutdown.is_cancelled() {
            let mut batch = Vec::new();
            let horizon = if config.realtime { now_ms() } else { i64::MAX };
            while sent < limit && batch.len() < 1024 && generator.clock_ms() <= horizon {
                if let Some(event) = generator.next() {
                    batch.push(Record::Event(event));
                    sent += 1;
                }
            }
            if generator.incident() != last_incident {
                last_incident = generator.incident();
                if let Some((agent, slow)) = last_incident {
                    let what = if slow { "slowing down" } else { "failing" };
                    tracing::info!(source = %cx.name, agent, "demo incident: {agent} is {what}");
                }
            }
            cx.stats.received(batch.len());
            out.send(Batch::unacked(batch)).await;
            if config.realtime {
                tokio::select! {
                    _ = cx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(tick) => {}
                }
            }
        }
        Ok(())
    }
}
