//! Running a validated pipeline: one task per component, bounded channels,
//! draining shutdown with a deadline.

mod output;
mod partitioned;
mod singleton;
mod stateful;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

pub use output::Output;

use crate::ack::AckHandle;
use crate::config::PipelineConfig;
use crate::plugin::{
    BuildContext, BuildError, Component, ComponentError, ComponentRole, Processor, Resources,
    Shutdown, Sink, SourceContext,
};
use crate::record::Batch;
use crate::telemetry::{ComponentStats, ComponentTelemetry, StatsSnapshot, Telemetry};
use output::Target;
use partitioned::Partitioning;
use stateful::StateKeeper;

/// Why a pipeline run did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Components could not be built (nothing was started).
    #[error("cannot start the pipeline:\n{}", .0.join("\n"))]
    Build(Vec<String>),
    /// A component failed fatally; the pipeline was stopped.
    #[error("{role} \"{name}\" failed: {message}")]
    Component {
        /// Its role.
        role: &'static str,
        /// Its name.
        name: String,
        /// What happened.
        message: String,
    },
    /// Shutdown did not finish within the deadline.
    #[error("shutdown deadline of {deadline:?} passed; still running: {}", .unfinished.join(", "))]
    Deadline {
        /// The configured deadline.
        deadline: Duration,
        /// Components that had not finished.
        unfinished: Vec<String>,
    },
}

/// A pipeline, built and ready to run.
pub struct Pipeline {
    config: PipelineConfig,
    telemetry: Telemetry,
    resources: Resources,
}

/// The counters of every component at the end of a run.
pub type RunReport = BTreeMap<String, (ComponentRole, StatsSnapshot)>;

/// Every component's counters as they are now (at the end of a run that
/// failed, what it had done).
pub fn report_of(telemetry: &Telemetry) -> RunReport {
    telemetry
        .components()
        .map(|(name, c)| (name.to_owned(), (c.role, c.stats.snapshot())))
        .collect()
}

impl Pipeline {
    /// Prepares a pipeline from a validated config.
    pub fn new(config: PipelineConfig) -> Pipeline {
        let components = config
            .components
            .iter()
            .map(|spec| {
                let telemetry = ComponentTelemetry {
                    role: spec.role,
                    type_name: spec.type_name.clone(),
                    stats: Arc::new(ComponentStats::default()),
                };
                (spec.name.clone(), telemetry)
            })
            .collect();
        Pipeline {
            config,
            telemetry: Telemetry::new(components),
            resources: Resources::default(),
        }
    }

    /// The counters every component updates.
    pub fn telemetry(&self) -> Telemetry {
        self.telemetry.clone()
    }

    /// Builds and runs every component until all sources have ended and
    /// everything has drained, or `shutdown` is cancelled and draining
    /// finishes (or the deadline passes).
    pub async fn run(self, shutdown: Shutdown) -> Result<RunReport, RunError> {
        let Pipeline {
            config,
            telemetry,
            resources,
        } = self;
        let stats = |name: &str| telemetry.stats(name).unwrap_or_default();

        let mut senders = BTreeMap::new();
        let mut receivers = BTreeMap::new();
        for spec in &config.components {
            if spec.role != ComponentRole::Source {
                let (tx, rx) = mpsc::channel::<Batch>(spec.buffer);
                senders.insert(spec.name.clone(), tx);
                receivers.insert(spec.name.clone(), rx);
            }
        }

        let feeds_stateful = stateful_reach(&config);
        let partitioned = partitioned_processors(&config);
        let singletons = singleton_processors(&config, &partitioned);
        let topology = crate::topology::TopologyView::new(&config.components, &config.stores);
        let started = Shutdown::new();
        let sinks_built = Shutdown::new();
        let mut built = Vec::new();
        let mut build_errors = Vec::new();
        // Sinks first, so that the HTTP API answers (and `/health` says
        // why) while a source waits for a lease or for its server; then
        // sources, since one may wait for a lease before the state that
        // depends on it is restored; then processors.
        let mut build_order: Vec<&crate::config::ComponentSpec> =
            config.components.iter().collect();
        build_order.sort_by_key(|spec| match spec.role {
            ComponentRole::Sink => 0,
            ComponentRole::Source => 1,
            ComponentRole::Processor => 2,
        });
        for spec in build_order {
            if spec.role != ComponentRole::Sink && build_errors.is_empty() {
                sinks_built.cancel();
            }
            let cx = BuildContext {
                name: spec.name.clone(),
                pipeline: config.pipeline.clone(),
                checkpoint: config.checkpoint.clone(),
                stores: config.stores.clone(),
                stats: stats(&spec.name),
                telemetry: telemetry.clone(),
                resources: resources.clone(),
                shutdown: shutdown.clone(),
                topology: topology.clone(),
                started: started.clone(),
                sinks_built: sinks_built.clone(),
                feeds_stateful: feeds_stateful.contains(&spec.name),
                partitioned_readers: partitioned
                    .iter()
                    .filter(|reader| {
                        config.components.iter().any(|c| {
                            &c.name == *reader
                                && upstream_sources(&config, c)
                                    .iter()
                                    .any(|source| source.name == spec.name)
                        })
                    })
                    .cloned()
                    .collect(),
            };
            if partitioned.contains(&spec.name) {
                let unsharded: Vec<&str> = upstream_sources(&config, spec)
                    .into_iter()
                    .filter(|source| !source.config.shards())
                    .map(|source| source.name.as_str())
                    .collect();
                if !unsharded.is_empty() {
                    build_errors.push(format!(
                        "processor \"{}\": its state is kept per partition of a source shared among instances, so it cannot also read {}, whose records belong to no partition; give that input a pipeline of its own",
                        spec.name,
                        unsharded.join(", ")
                    ));
                    continue;
                }
            }
            if partitioned.contains(&spec.name) || singletons.contains(&spec.name) {
                match partitioning(&config, spec, cx, singletons.contains(&spec.name)).await {
                    Ok(setup) => built.push((spec, Built::Shared(setup))),
                    Err(e) => {
                        build_errors.push(format!("{} \"{}\": {e}", spec.role.as_str(), spec.name))
                    }
                }
                continue;
            }
            let built_one = match spec.config.build(&cx).await {
                Ok(Component::Processor(mut processor)) => match processor.state() {
                    Some(state) => StateKeeper::start(
                        &config.pipeline.name,
                        &spec.name,
                        config.checkpoint_for(spec).as_ref(),
                        state,
                    )
                    .await
                    .map(|keeper| (Component::Processor(processor), Some(Box::new(keeper))))
                    .map_err(BuildError),
                    None => Ok((Component::Processor(processor), None)),
                },
                other => other.map(|component| (component, None)),
            };
            match built_one {
                Ok((component, keeper)) => built.push((spec, Built::One(component, keeper))),
                Err(e) => {
                    build_errors.push(format!("{} \"{}\": {e}", spec.role.as_str(), spec.name))
                }
            }
        }
        if !build_errors.is_empty() {
            if shutdown.is_cancelled() {
                // Stopped while starting (waiting for a lease, say): nothing ran.
                info!("stopped before the pipeline started");
                return Ok(RunReport::new());
            }
            return Err(RunError::Build(build_errors));
        }

        let output_of = |name: &str| {
            let emits = config
                .components
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.config.output_kinds())
                .unwrap_or_default();
            let targets = config
                .components
                .iter()
                .filter(|c| c.inputs.iter().any(|i| i == name))
                .filter_map(|c| {
                    let takes = c.config.input_kinds();
                    Some(Target {
                        name: c.name.clone(),
                        tx: senders.get(&c.name)?.clone(),
                        when_full: c.when_full,
                        stats: stats(&c.name),
                        filter: (!takes.contains_all(emits)).then_some(takes),
                    })
                })
                .collect();
            Output::new(name, targets, stats(name))
        };

        started.cancel();
        let mut tasks = JoinSet::new();
        let mut names = BTreeMap::new();
        for (spec, built) in built {
            let name = spec.name.clone();
            let component_stats = stats(&name);
            let (component, keeper) = match built {
                Built::One(component, keeper) => (component, keeper.map(|k| *k)),
                Built::Shared(setup) => {
                    let rx = receivers.remove(&name).unwrap_or_else(closed_channel);
                    let (out, task) = (output_of(&name), name.clone());
                    let handle = if singletons.contains(&name) {
                        tasks.spawn(singleton::run_singleton(
                            task,
                            setup,
                            rx,
                            out,
                            component_stats,
                            shutdown.clone(),
                        ))
                    } else {
                        tasks.spawn(partitioned::run_partitioned(
                            task,
                            setup,
                            rx,
                            out,
                            component_stats,
                            shutdown.clone(),
                        ))
                    };
                    names.insert(handle.id(), (spec.role, name));
                    continue;
                }
            };
            let handle = match component {
                Component::Source(source) => {
                    let cx = SourceContext {
                        name: name.clone(),
                        out: output_of(&name),
                        shutdown: shutdown.clone(),
                        stats: component_stats,
                    };
                    tasks.spawn(async move { source.run(cx).await })
                }
                Component::Processor(processor) => {
                    let rx = receivers.remove(&name).unwrap_or_else(closed_channel);
                    let out = output_of(&name);
                    let task_name = name.clone();
                    tasks.spawn(run_processor(
                        task_name,
                        processor,
                        rx,
                        out,
                        component_stats,
                        keeper,
                        shutdown.clone(),
                    ))
                }
                Component::Sink(sink) => {
                    let rx = receivers.remove(&name).unwrap_or_else(closed_channel);
                    let task_name = name.clone();
                    tasks.spawn(run_sink(task_name, sink, rx, component_stats))
                }
            };
            names.insert(handle.id(), (spec.role, name));
        }
        // Consumers' channels close once every producer has dropped its output.
        drop(senders);
        info!(components = names.len(), "pipeline started");

        let deadline = config.pipeline.shutdown_deadline;
        let mut first_failure: Option<RunError> = None;
        let mut deadline_at: Option<tokio::time::Instant> = None;
        while !tasks.is_empty() {
            let sleep = sleep_until(deadline_at);
            tokio::select! {
                joined = tasks.join_next_with_id() => {
                    let Some(joined) = joined else { break };
                    let (id, result) = match joined {
                        Ok((id, result)) => (id, result.map_err(|e| e.to_string())),
                        Err(e) => (e.id(), Err(format!("panicked: {e}"))),
                    };
                    let Some((role, name)) = names.remove(&id) else { continue };
                    match result {
                        Ok(()) => tracing::debug!(component = %name, "finished"),
                        Err(message) => {
                            error!(component = %name, role = role.as_str(), "component failed: {message}; stopping the pipeline");
                            first_failure.get_or_insert(RunError::Component { role: role.as_str(), name, message });
                            shutdown.cancel();
                        }
                    }
                }
                _ = shutdown.cancelled(), if deadline_at.is_none() => {
                    info!(deadline = ?deadline, "shutting down: draining in-flight records");
                    deadline_at = Some(tokio::time::Instant::now() + deadline);
                }
                _ = sleep => {
                    let unfinished: Vec<String> = names.values().map(|(role, name)| format!("{} \"{name}\"", role.as_str())).collect();
                    tasks.abort_all();
                    return Err(RunError::Deadline { deadline, unfinished });
                }
            }
        }
        if let Some(failure) = first_failure {
            return Err(failure);
        }
        Ok(report_of(&telemetry))
    }
}

/// A component built and ready to start.
enum Built {
    /// One instance, with its state's keeper if it is stateful.
    One(Component, Option<Box<StateKeeper>>),
    /// A stateful processor of a pipeline whose input is shared among
    /// instances: kept per partition of its input, or (past such a
    /// processor) run on one instance at a time, under a lease.
    Shared(Partitioning),
}

/// How a processor whose state is kept per partition builds its instances
/// and where it keeps them.
async fn partitioning(
    config: &PipelineConfig,
    spec: &crate::config::ComponentSpec,
    cx: BuildContext,
    singleton: bool,
) -> Result<Partitioning, BuildError> {
    let Some(mut fresh) = spec.config.fresh_state() else {
        return Err(BuildError("it keeps no state".into()));
    };
    if !singleton && fresh.partial().is_none() {
        return Err(BuildError(
            "its state is kept per partition of a source shared among instances, but it cannot be split into partials to merge".into(),
        ));
    }
    if singleton && config.checkpoint_for(spec).is_none() {
        return Err(BuildError(
            "it reads the merged output of state shared among instances, and runs on one of them at a time, under a lease in the checkpoint store: add a [checkpoint] table".into(),
        ));
    }
    let store = match config.checkpoint_for(spec) {
        Some(settings) => {
            let store = crate::checkpoint::open(&settings.url)
                .await
                .map_err(|e| BuildError(e.to_string()))?;
            Some((store, settings.interval))
        }
        None => None,
    };
    let component = spec.config.clone();
    let assignments = cx
        .resources
        .get_or_insert_with(crate::record::Assignments::default);
    let cx = Arc::new(cx);
    let factory: partitioned::Factory = Arc::new(move || {
        let (component, cx) = (component.clone(), cx.clone());
        Box::pin(async move {
            match component.build(&cx).await? {
                Component::Processor(processor) => Ok(processor),
                _ => Err(BuildError("not a processor".into())),
            }
        })
    });
    // Build one now, so a config it refuses stops the start.
    factory().await?;
    Ok(Partitioning {
        assignments,
        pipeline: config.pipeline.name.clone(),
        factory,
        store,
    })
}

/// Where the records reaching `start` come from: the sources and stateful
/// processors found going upstream through stateless processors (past a
/// stateful one, records are its output).
fn origins<'a>(
    config: &'a PipelineConfig,
    start: &crate::config::ComponentSpec,
) -> Vec<&'a crate::config::ComponentSpec> {
    let mut todo: Vec<&str> = start.inputs.iter().map(String::as_str).collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut found = Vec::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name) {
            continue;
        }
        let Some(spec) = config.components.iter().find(|c| c.name == name) else {
            continue;
        };
        if spec.role == ComponentRole::Source || spec.config.fresh_state().is_some() {
            found.push(spec);
        } else {
            todo.extend(spec.inputs.iter().map(String::as_str));
        }
    }
    found
}

/// The sources whose records reach `start` unchanged by state.
fn upstream_sources<'a>(
    config: &'a PipelineConfig,
    start: &crate::config::ComponentSpec,
) -> Vec<&'a crate::config::ComponentSpec> {
    origins(config, start)
        .into_iter()
        .filter(|c| c.role == ComponentRole::Source)
        .collect()
}

/// The sources whose records reach a stateful processor, directly or
/// through other processors: the ones whose readers `flowpulse state reset`
/// must not run beside.
pub fn sources_of_stateful(config: &PipelineConfig) -> std::collections::BTreeSet<String> {
    config
        .components
        .iter()
        .filter(|c| c.role == ComponentRole::Processor && c.config.fresh_state().is_some())
        .flat_map(|c| upstream_sources(config, c))
        .map(|source| source.name.clone())
        .collect()
}

/// The stateful processors that a source sharing its partitions among
/// instances feeds, directly or through stateless processors: their state
/// is kept per partition. (Past another stateful processor, records are its
/// output, not the partitioned input.)
pub fn partitioned_processors(config: &PipelineConfig) -> std::collections::BTreeSet<String> {
    config
        .components
        .iter()
        .filter(|c| c.role == ComponentRole::Processor && c.config.fresh_state().is_some())
        .filter(|c| {
            upstream_sources(config, c)
                .iter()
                .any(|source| source.config.shards())
        })
        .map(|c| c.name.clone())
        .collect()
}

/// The stateful processors that read a partitioned one's merged output
/// (alert rules on the merged document, say), directly or through others
/// of their kind: every instance computes the same input for them, and
/// they run on one instance at a time.
pub fn singleton_processors(
    config: &PipelineConfig,
    partitioned: &std::collections::BTreeSet<String>,
) -> std::collections::BTreeSet<String> {
    let mut singletons = std::collections::BTreeSet::new();
    // Downstream of downstream, until nothing new is found (the graph is a DAG).
    loop {
        let more: Vec<String> = config
            .components
            .iter()
            .filter(|c| c.role == ComponentRole::Processor && c.config.fresh_state().is_some())
            .filter(|c| !partitioned.contains(&c.name) && !singletons.contains(&c.name))
            .filter(|c| {
                origins(config, c)
                    .iter()
                    .any(|o| partitioned.contains(&o.name) || singletons.contains(&o.name))
            })
            .map(|c| c.name.clone())
            .collect();
        if more.is_empty() {
            return singletons;
        }
        singletons.extend(more);
    }
}

/// How long the input of a stateful processor must pause before what it
/// holds is checkpointed ahead of the interval.
pub(crate) const IDLE_CHECKPOINT_AFTER: Duration = Duration::from_millis(100);

fn closed_channel() -> mpsc::Receiver<Batch> {
    mpsc::channel(1).1
}

/// The components whose output reaches a stateful processor or an
/// order-keeping sink.
fn stateful_reach(config: &PipelineConfig) -> std::collections::BTreeSet<String> {
    let mut reach: std::collections::BTreeSet<String> = config
        .components
        .iter()
        .filter(|c| c.config.fresh_state().is_some() || c.config.keeps_input_order())
        .flat_map(|c| c.inputs.iter().cloned())
        .collect();
    // Upstream of upstream, until nothing new is found (the graph is a DAG).
    loop {
        let more: Vec<String> = config
            .components
            .iter()
            .filter(|c| reach.contains(&c.name))
            .flat_map(|c| c.inputs.iter().cloned())
            .filter(|input| !reach.contains(input))
            .collect();
        if more.is_empty() {
            return reach;
        }
        reach.extend(more);
    }
}

fn ticker(period: Option<Duration>) -> Option<tokio::time::Interval> {
    period.map(|period| {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    })
}

async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker.as_mut() {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; never without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Settles the keeper's checkpoint write once it finishes (never, without
/// a keeper or a write under way).
async fn written(keeper: &mut Option<StateKeeper>, stats: &ComponentStats) {
    match keeper.as_mut() {
        Some(keeper) => keeper.write_finished(stats).await,
        None => std::future::pending().await,
    }
}

async fn run_processor(
    name: String,
    mut processor: Box<dyn Processor>,
    mut rx: mpsc::Receiver<Batch>,
    mut out: Output,
    stats: Arc<ComponentStats>,
    mut keeper: Option<StateKeeper>,
    stopping: Shutdown,
) -> Result<(), ComponentError> {
    let mut ticks = ticker(processor.tick_interval());
    let mut checkpoints = ticker(keeper.as_ref().and_then(StateKeeper::interval));
    // Once the input pauses, what is held is checkpointed at once rather
    // than at the next tick: a drained stream has nothing pending soon after
    // its last entry, and a crash then replays nothing.
    let idle_after = keeper
        .as_ref()
        .and_then(StateKeeper::interval)
        .map(|interval| interval.min(IDLE_CHECKPOINT_AFTER));
    let mut idle_at: Option<tokio::time::Instant> = None;
    loop {
        let idle = sleep_until(idle_at);
        let result = tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) if batch.is_notice() && keeper.is_none() => {
                    // A partition notice is for the stateful processors
                    // downstream: passed on, not processed.
                    out.send(batch).await;
                    Ok(())
                }
                Some(batch) => {
                    stats.received(batch.len());
                    idle_at = idle_after.map(|after| tokio::time::Instant::now() + after);
                    match keeper.as_mut() {
                        Some(keeper) => {
                            let (batch, admitted) = keeper.admit(batch, &stats);
                            let result = processor.process(batch, &mut out).await;
                            keeper.settle(admitted, result.is_ok());
                            result
                        }
                        None => {
                            // If processing fails, the source batches must not count
                            // as delivered, whatever the processor did with the handles.
                            let guard = batch.ack_handles().to_vec();
                            let result = processor.process(batch, &mut out).await;
                            if result.is_err() {
                                guard.iter().for_each(AckHandle::fail);
                            }
                            result
                        }
                    }
                }
                None => break,
            },
            _ = next_tick(&mut ticks) => processor.tick(&mut out).await,
            _ = written(&mut keeper, &stats) => Ok(()),
            _ = next_tick(&mut checkpoints) => {
                if let (Some(keeper), Some(state)) = (keeper.as_mut(), processor.state()) {
                    keeper.checkpoint(state, false, &stats).await;
                }
                Ok(())
            }
            _ = idle => {
                idle_at = None;
                if let (Some(keeper), Some(state)) = (keeper.as_mut(), processor.state()) {
                    // At most four checkpoints an interval, however bursty
                    // the input: a large state is not rewritten at every pause.
                    match keeper.idle_wait() {
                        wait if wait.is_zero() => keeper.checkpoint_now(state, &stats).await,
                        wait => idle_at = Some(tokio::time::Instant::now() + wait),
                    }
                }
                Ok(())
            }
        };
        handle_result(&name, &stats, result)?;
    }
    // The checkpoint keeps what the processor still holds (events waiting
    // for reordering, say) held: the final output is made after it.
    if let (Some(keeper), Some(state)) = (keeper.as_mut(), processor.state()) {
        keeper.checkpoint(state, true, &stats).await;
    }
    let result = finish(processor.as_mut(), &mut out, &stopping, keeper.as_ref()).await;
    handle_result(&name, &stats, result)
}

/// The processor's final output: [`Processor::finish_stopped`] when the
/// pipeline was asked to stop and a checkpoint holds all the processor
/// folded, [`Processor::finish`] otherwise (the input ended, or a restart
/// would not resume where this run stops).
pub(crate) async fn finish(
    processor: &mut dyn Processor,
    out: &mut Output,
    stopping: &Shutdown,
    keeper: Option<&StateKeeper>,
) -> Result<(), ComponentError> {
    if stopping.is_cancelled() && keeper.is_some_and(StateKeeper::is_durable) {
        processor.finish_stopped(out).await
    } else {
        processor.finish(out).await
    }
}

async fn run_sink(
    name: String,
    mut sink: Box<dyn Sink>,
    mut rx: mpsc::Receiver<Batch>,
    stats: Arc<ComponentStats>,
) -> Result<(), ComponentError> {
    while let Some(batch) = rx.recv().await {
        if batch.is_notice() {
            // For stateful processors upstream; a sink has nothing to write.
            continue;
        }
        stats.received(batch.len());
        let result = sink.write(&batch).await;
        if result.is_err() {
            batch.fail();
        }
        handle_result(&name, &stats, result)?;
    }
    let result = sink.flush().await;
    handle_result(&name, &stats, result)
}

/// Transient errors are counted and logged, and the component goes on;
/// fatal ones end it.
fn handle_result(
    name: &str,
    stats: &ComponentStats,
    result: Result<(), ComponentError>,
) -> Result<(), ComponentError> {
    match result {
        Ok(()) => Ok(()),
        Err(ComponentError::Transient(message)) => {
            warn!(component = %name, "{message}");
            stats.error(message);
            Ok(())
        }
        Err(fatal @ ComponentError::Fatal(_)) => {
            stats.error(fatal.to_string());
            Err(fatal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::BatchStatus;
    use async_trait::async_trait;

    struct Failing;

    #[async_trait]
    impl Processor for Failing {
        async fn process(&mut self, batch: Batch, _out: &mut Output) -> Result<(), ComponentError> {
            drop(batch);
            Err(ComponentError::Transient("cannot".into()))
        }
    }

    #[tokio::test]
    async fn a_batch_a_processor_fails_on_is_not_acknowledged() {
        let (tx, rx) = mpsc::channel(1);
        let (handle, receipt) = AckHandle::new();
        tx.send(Batch::new(Vec::new(), vec![handle])).await.unwrap();
        drop(tx);
        let stats = Arc::new(ComponentStats::default());
        run_processor(
            "p".into(),
            Box::new(Failing),
            rx,
            Output::discard(),
            stats.clone(),
            None,
            Shutdown::new(),
        )
        .await
        .unwrap();
        assert_eq!(receipt.await, BatchStatus::Failed);
        assert_eq!(stats.snapshot().errors, 1);
    }

    /// Which of its final calls a processor got.
    #[derive(Default)]
    struct Finishing(Option<&'static str>);

    #[async_trait]
    impl Processor for Finishing {
        async fn process(
            &mut self,
            _batch: Batch,
            _out: &mut Output,
        ) -> Result<(), ComponentError> {
            Ok(())
        }

        async fn finish(&mut self, _out: &mut Output) -> Result<(), ComponentError> {
            self.0 = Some("finish");
            Ok(())
        }

        async fn finish_stopped(&mut self, _out: &mut Output) -> Result<(), ComponentError> {
            self.0 = Some("finish_stopped");
            Ok(())
        }
    }

    /// Without a checkpoint nothing a processor holds survives the stop, so
    /// its final output shows everything, whether the input ended or a stop
    /// was asked for.
    #[tokio::test]
    async fn without_a_checkpoint_a_stop_finishes_as_the_end_of_input_does() {
        for asked in [false, true] {
            let stopping = Shutdown::new();
            if asked {
                stopping.cancel();
            }
            let mut processor = Finishing::default();
            finish(&mut processor, &mut Output::discard(), &stopping, None)
                .await
                .unwrap();
            assert_eq!(processor.0, Some("finish"), "stop asked for: {asked}");
        }
    }
}
