//! The plugin model: the `Source`, `Processor` and `Sink` traits, their typed
//! config traits, and the `inventory` registry of [`PluginDescriptor`]s.
//!
//! A plugin stays typed inside (its own serde config struct) and is held by
//! the runtime behind the object-safe [`ComponentConfig`]; the conversion
//! happens once, in the descriptor's parser.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::config::{CheckpointSettings, PipelineSettings, Stores};
use crate::record::{Batch, RecordKinds};
use crate::runtime::Output;
use crate::state::ProcessorState;
use crate::telemetry::{ComponentStats, Telemetry};
use crate::topology::TopologyView;

pub use tokio_util::sync::CancellationToken as Shutdown;
use tokio_util::sync::CancellationToken;

/// Everything a plugin module usually needs, in one import.
pub mod prelude {
    pub use super::{
        BuildContext, BuildError, ComponentError, FieldError, PluginDescriptor, Processor,
        ProcessorConfig, Sink, SinkConfig, Source, SourceConfig, SourceContext, ValidateContext,
    };
    pub use crate::event::{EventKind, WorkflowEvent};
    pub use crate::record::{Batch, Record, RecordKinds};
    pub use crate::runtime::Output;
    pub use async_trait::async_trait;
    pub use inventory;
}

/// Where a component sits in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentRole {
    /// Reads records from outside.
    Source,
    /// Transforms records.
    Processor,
    /// Writes records outside.
    Sink,
}

impl ComponentRole {
    /// `source`, `processor` or `sink`.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentRole::Source => "source",
            ComponentRole::Processor => "processor",
            ComponentRole::Sink => "sink",
        }
    }

    /// The config table holding components of this role.
    pub fn table(self) -> &'static str {
        match self {
            ComponentRole::Source => "sources",
            ComponentRole::Processor => "processors",
            ComponentRole::Sink => "sinks",
        }
    }
}

/// A component failure. What it means decides what the runtime does.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// A failure of one batch or one attempt (a write refused, a peer gone):
    /// counted and logged, the batch is marked failed, the component goes on.
    #[error("{0}")]
    Transient(String),
    /// The component cannot go on: the pipeline stops with a non-zero exit.
    #[error("{0}")]
    Fatal(String),
}

/// Why a component could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

impl From<std::io::Error> for BuildError {
    fn from(e: std::io::Error) -> Self {
        BuildError(e.to_string())
    }
}

/// A problem with one option of a component's config, found without I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The option's key (its position is reported).
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What pure validation may look at besides the component's own config.
#[derive(Debug, Clone)]
pub struct ValidateContext<'a> {
    /// The `[pipeline]` table.
    pub pipeline: &'a PipelineSettings,
    /// The `[checkpoint]` table, when configured.
    pub checkpoint: Option<&'a CheckpointSettings>,
    /// The `[stores.NAME]` tables.
    pub stores: &'a Stores,
    /// Every component of the pipeline.
    pub topology: &'a TopologyView,
    /// The name of the component being validated.
    pub component: &'a str,
}

/// A type-keyed map of things components share, such as one HTTP server per
/// address that several sinks mount routes on.
#[derive(Clone, Default)]
pub struct Resources(Arc<Mutex<HashMap<TypeId, Box<dyn Any + Send + Sync>>>>);

impl Resources {
    /// The shared `T`, created by `init` the first time it is asked for.
    pub fn get_or_insert_with<T, F>(&self, init: F) -> T
    where
        T: Any + Clone + Send + Sync,
        F: FnOnce() -> T,
    {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(init()));
        match entry.downcast_ref::<T>() {
            Some(value) => value.clone(),
            // The key is T's own TypeId, so the value is always a T.
            None => unreachable!("resource stored under another type's id"),
        }
    }
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resources")
    }
}

/// What a component's `build` gets.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The component's name in the config.
    pub name: String,
    /// The `[pipeline]` table.
    pub pipeline: PipelineSettings,
    /// The `[checkpoint]` table, when configured.
    pub checkpoint: Option<CheckpointSettings>,
    /// This component's counters.
    pub stats: Arc<ComponentStats>,
    /// Every component's counters (for status endpoints).
    pub telemetry: Telemetry,
    /// Things shared between components.
    pub resources: Resources,
    /// Cancelled when the pipeline shuts down.
    pub shutdown: Shutdown,
    /// The `[stores.NAME]` tables.
    pub stores: Stores,
    /// Every component of the pipeline.
    pub topology: TopologyView,
    /// Cancelled (resolved) once every component is built, just before the
    /// tasks start; see [`BuildContext::started`].
    pub started: CancellationToken,
    /// Cancelled once every sink is built; see [`BuildContext::serving`].
    pub sinks_built: CancellationToken,
    /// For a source: whether a stateful processor, or a sink that keeps its
    /// input's order, reads what it emits (directly or through others). Such
    /// a source must deliver each partition in order, oldest first, as one
    /// reader, because the processor's checkpoint keeps one position per
    /// partition (and readers of an ordered sink's log rely on the same).
    pub feeds_stateful: bool,
    /// For a source whose partitions are shared among instances: the
    /// processors that keep state per partition of what it reads. Their
    /// checkpoints say where each partition resumes.
    pub partitioned_readers: Vec<String>,
}

impl BuildContext {
    /// A directory for this component's durable files, under `data_dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.pipeline.data_dir.join(&self.name)
    }

    /// Resolves once every component of the pipeline is built, just before
    /// the tasks start; never if the pipeline fails to start. A server a
    /// component binds in `build` accepts only from then, so nobody is
    /// served by a pipeline that does not start.
    pub fn started(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let started = self.started.clone();
        async move { started.cancelled().await }
    }

    /// Resolves once every sink is built; never if one fails to build.
    /// Sinks are built before sources and processors, and a source may
    /// wait long for its group's lease or its server, so a server the
    /// sinks share accepts from then: every sink's routes are mounted, and
    /// `/health` can say why the pipeline is still starting.
    pub fn serving(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let built = self.sinks_built.clone();
        async move { built.cancelled().await }
    }
}

/// What a running source gets.
pub struct SourceContext {
    /// The component's name.
    pub name: String,
    /// Where its batches go.
    pub out: Output,
    /// Cancelled on shutdown: stop reading, return `Ok`.
    pub shutdown: Shutdown,
    /// Its counters.
    pub stats: Arc<ComponentStats>,
}

/// Reads records from outside and sends them on in batches, each with an
/// [`AckHandle`](crate::ack::AckHandle), acknowledging upstream only once the
/// handle's receipt says the batch was delivered.
#[async_trait]
pub trait Source: Send {
    /// Runs until the input ends or `cx.shutdown` is cancelled.
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError>;
}

/// Transforms batches. A stateless processor passes acknowledgement handles
/// on with what it derives; a stateful one keeps them until its state is
/// durable (see ARCHITECTURE.md).
#[async_trait]
pub trait Processor: Send {
    /// Handles one batch, sending what it derives to `out`.
    async fn process(&mut self, batch: Batch, out: &mut Output) -> Result<(), ComponentError>;

    /// How often [`Processor::tick`] runs, if at all.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Periodic work (emitting a metrics document, say).
    async fn tick(&mut self, _out: &mut Output) -> Result<(), ComponentError> {
        Ok(())
    }

    /// Called once every input has ended: emit final output.
    async fn finish(&mut self, _out: &mut Output) -> Result<(), ComponentError> {
        Ok(())
    }

    /// Called instead of [`Processor::finish`] when the pipeline was asked
    /// to stop (a signal, or another component's failure; also when one
    /// comes while the pipeline drains an input that ended) and a checkpoint of the
    /// processor's whole state has just been written. A restart resumes
    /// from that checkpoint and the input goes on, so what the processor
    /// holds back for order may stay held: its final output then shows no
    /// more than the restarted pipeline shows first. By default the same as
    /// `finish`.
    async fn finish_stopped(&mut self, out: &mut Output) -> Result<(), ComponentError> {
        self.finish(out).await
    }

    /// Called once on an instance the runtime keeps for one partition of a
    /// partitioned input: its event time then comes from the merge of every
    /// partition ([`ProcessorState::follow_time`]), so it must not move it
    /// by the wall clock on its own, and what it emits is dropped (the
    /// merge is emitted instead).
    fn follow_merged_time(&mut self) {}

    /// The processor's state, if it keeps one across batches that the
    /// runtime should checkpoint (see [`crate::state`]). A stateful
    /// processor gets its batches without acknowledgement handles: the
    /// runtime holds them until a checkpoint covering them is durable, and
    /// leaves out records its checkpoint has already folded.
    fn state(&mut self) -> Option<&mut dyn ProcessorState> {
        None
    }
}

/// Writes batches outside. When `write` returns `Ok` the batch counts as
/// taken (its handles are dropped); on `Err` it counts as failed.
#[async_trait]
pub trait Sink: Send {
    /// Writes one batch durably.
    async fn write(&mut self, batch: &Batch) -> Result<(), ComponentError>;

    /// Called once every input has ended: flush and close.
    async fn flush(&mut self) -> Result<(), ComponentError> {
        Ok(())
    }
}

/// The typed config of a source plugin.
#[async_trait]
pub trait SourceConfig: DeserializeOwned + Send + Sync + 'static {
    /// Problems found without I/O.
    fn validate(&self, _cx: &ValidateContext<'_>) -> Vec<FieldError> {
        Vec::new()
    }
    /// The kinds of record it emits.
    fn outputs(&self) -> RecordKinds {
        RecordKinds::EVENTS
    }
    /// Whether its partitions are shared out among instances (a Kafka
    /// consumer group): its batches then carry a [`crate::record::Shard`],
    /// and a stateful processor it feeds keeps its state per partition.
    /// Default false.
    fn shards(&self) -> bool {
        false
    }
    /// Who reads it now, if a reader holds it (a lease, a consumer group's
    /// members): `flowpulse state reset` refuses while one does, since that
    /// reader would write its state straight back. `Ok(None)` when nobody
    /// does (the default: a source no other process can read), `Err` with
    /// the reason when it cannot tell (its server unreachable, say): the
    /// reset then refuses too, unless forced.
    async fn reader(&self) -> Result<Option<String>, String> {
        Ok(None)
    }
    /// Builds the running source (may do I/O).
    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Source>, BuildError>;
}

/// The typed config of a processor plugin.
#[async_trait]
pub trait ProcessorConfig: DeserializeOwned + Send + Sync + 'static {
    /// Problems found without I/O.
    fn validate(&self, _cx: &ValidateContext<'_>) -> Vec<FieldError> {
        Vec::new()
    }
    /// The kinds of record it takes. Default: workflow events.
    fn inputs(&self) -> RecordKinds {
        RecordKinds::EVENTS
    }
    /// The kinds of record it emits.
    fn outputs(&self) -> RecordKinds;
    /// A fresh state as these settings shape it, for a stateful processor
    /// (whose built processor returns its state from [`Processor::state`]).
    /// `flowpulse state` reads checkpoints through it without running
    /// anything. Default: stateless.
    fn state(&self) -> Option<Box<dyn ProcessorState>> {
        None
    }
    /// Whether its state is checkpointed even without a `[checkpoint]`
    /// table (then under `DATA_DIR/checkpoints`). Default false.
    fn always_checkpoints(&self) -> bool {
        false
    }
    /// Builds the running processor (may do I/O).
    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Processor>, BuildError>;
}

/// The typed config of a sink plugin.
#[async_trait]
pub trait SinkConfig: DeserializeOwned + Send + Sync + 'static {
    /// Problems found without I/O.
    fn validate(&self, _cx: &ValidateContext<'_>) -> Vec<FieldError> {
        Vec::new()
    }
    /// The kinds of record it takes.
    fn inputs(&self) -> RecordKinds;
    /// Whether it is a notification sink: alert rules name it in their
    /// `channels`, and it delivers only the notices routed to it. Default
    /// false.
    fn routes_by_channel(&self) -> bool {
        false
    }
    /// Whether it passes records on in the order they came, to a log that
    /// readers take as ordered (a `kafka` topic): then its sources deliver
    /// each partition in order as one reader, as for a stateful processor.
    /// Default false.
    fn keeps_input_order(&self) -> bool {
        false
    }
    /// Builds the running sink (may do I/O).
    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Sink>, BuildError>;
}

/// A built component, ready to run.
pub enum Component {
    /// A source.
    Source(Box<dyn Source>),
    /// A processor.
    Processor(Box<dyn Processor>),
    /// A sink.
    Sink(Box<dyn Sink>),
}

/// A parsed plugin config behind one object-safe interface.
pub trait ComponentConfig: Send + Sync {
    /// Source, processor or sink.
    fn role(&self) -> ComponentRole;
    /// Problems found without I/O.
    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError>;
    /// Kinds it takes (nothing for a source).
    fn input_kinds(&self) -> RecordKinds;
    /// Kinds it emits (nothing for a sink).
    fn output_kinds(&self) -> RecordKinds;
    /// Builds the component.
    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Component, BuildError>>;
    /// A fresh state, for a stateful processor.
    fn fresh_state(&self) -> Option<Box<dyn ProcessorState>> {
        None
    }
    /// Whether it is a notification sink (see [`SinkConfig::routes_by_channel`]).
    fn routes_by_channel(&self) -> bool {
        false
    }
    /// Whether its state is checkpointed without a `[checkpoint]` table.
    fn always_checkpoints(&self) -> bool {
        false
    }
    /// Whether it needs its input in source order (see
    /// [`SinkConfig::keeps_input_order`]).
    fn keeps_input_order(&self) -> bool {
        false
    }
    /// Whether its partitions are shared out among instances (see
    /// [`SourceConfig::shards`]).
    fn shards(&self) -> bool {
        false
    }
    /// Who reads it now (see [`SourceConfig::reader`]).
    fn reader(&self) -> BoxFuture<'_, Result<Option<String>, String>> {
        Box::pin(async { Ok(None) })
    }
    /// The plugin's own typed config, for tools that know its type.
    fn as_any(&self) -> &dyn Any;
}

struct SourceAdapter<T>(T);
struct ProcessorAdapter<T>(T);
struct SinkAdapter<T>(T);

impl<T: SourceConfig> ComponentConfig for SourceAdapter<T> {
    fn role(&self) -> ComponentRole {
        ComponentRole::Source
    }
    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        self.0.validate(cx)
    }
    fn input_kinds(&self) -> RecordKinds {
        RecordKinds::NONE
    }
    fn output_kinds(&self) -> RecordKinds {
        self.0.outputs()
    }
    fn shards(&self) -> bool {
        self.0.shards()
    }
    fn reader(&self) -> BoxFuture<'_, Result<Option<String>, String>> {
        self.0.reader()
    }
    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Component, BuildError>> {
        Box::pin(async move { self.0.build(cx).await.map(Component::Source) })
    }
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
}

impl<T: ProcessorConfig> ComponentConfig for ProcessorAdapter<T> {
    fn role(&self) -> ComponentRole {
        ComponentRole::Processor
    }
    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        self.0.validate(cx)
    }
    fn input_kinds(&self) -> RecordKinds {
        self.0.inputs()
    }
    fn output_kinds(&self) -> RecordKinds {
        self.0.outputs()
    }
    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Component, BuildError>> {
        Box::pin(async move { self.0.build(cx).await.map(Component::Processor) })
    }
    fn fresh_state(&self) -> Option<Box<dyn ProcessorState>> {
        self.0.state()
    }
    fn always_checkpoints(&self) -> bool {
        self.0.always_checkpoints()
    }
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
}

impl<T: SinkConfig> ComponentConfig for SinkAdapter<T> {
    fn role(&self) -> ComponentRole {
        ComponentRole::Sink
    }
    fn routes_by_channel(&self) -> bool {
        self.0.routes_by_channel()
    }
    fn keeps_input_order(&self) -> bool {
        self.0.keeps_input_order()
    }
    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        self.0.validate(cx)
    }
    fn input_kinds(&self) -> RecordKinds {
        self.0.inputs()
    }
    fn output_kinds(&self) -> RecordKinds {
        RecordKinds::NONE
    }
    fn build<'a>(&'a self, cx: &'a BuildContext) -> BoxFuture<'a, Result<Component, BuildError>> {
        Box::pin(async move { self.0.build(cx).await.map(Component::Sink) })
    }
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
}

/// Parses a component's options (its table less `type`, `inputs`, `buffer`
/// and `when_full`) into its typed config.
pub type ConfigParser =
    fn(toml::de::ValueDeserializer<'_>) -> Result<Box<dyn ComponentConfig>, toml::de::Error>;

/// A registered plugin. Submit one per plugin:
///
/// ```ignore
/// inventory::submit! {
///     PluginDescriptor::processor::<MyConfig>("my_type", "What it does, in one line")
/// }
/// ```
pub struct PluginDescriptor {
    /// Source, processor or sink.
    pub role: ComponentRole,
    /// The `type = "…"` that selects it.
    pub type_name: &'static str,
    /// One line for `flowpulse plugins`.
    pub description: &'static str,
    /// Parses its config; the parsed config is its factory (`build`).
    pub parse: ConfigParser,
}

fn parse_source<T: SourceConfig>(
    de: toml::de::ValueDeserializer<'_>,
) -> Result<Box<dyn ComponentConfig>, toml::de::Error> {
    Ok(Box::new(SourceAdapter(T::deserialize(de)?)))
}

fn parse_processor<T: ProcessorConfig>(
    de: toml::de::ValueDeserializer<'_>,
) -> Result<Box<dyn ComponentConfig>, toml::de::Error> {
    Ok(Box::new(ProcessorAdapter(T::deserialize(de)?)))
}

fn parse_sink<T: SinkConfig>(
    de: toml::de::ValueDeserializer<'_>,
) -> Result<Box<dyn ComponentConfig>, toml::de::Error> {
    Ok(Box::new(SinkAdapter(T::deserialize(de)?)))
}

impl PluginDescriptor {
    /// A source plugin whose config is `T`.
    pub const fn source<T: SourceConfig>(
        type_name: &'static str,
        description: &'static str,
    ) -> PluginDescriptor {
        PluginDescriptor {
            role: ComponentRole::Source,
            type_name,
            description,
            parse: parse_source::<T>,
        }
    }

    /// A processor plugin whose config is `T`.
    pub const fn processor<T: ProcessorConfig>(
        type_name: &'static str,
        description: &'static str,
    ) -> PluginDescriptor {
        PluginDescriptor {
            role: ComponentRole::Processor,
            type_name,
            description,
            parse: parse_processor::<T>,
        }
    }

    /// A sink plugin whose config is `T`.
    pub const fn sink<T: SinkConfig>(
        type_name: &'static str,
        description: &'static str,
    ) -> PluginDescriptor {
        PluginDescriptor {
            role: ComponentRole::Sink,
            type_name,
            description,
            parse: parse_sink::<T>,
        }
    }
}

inventory::collect!(PluginDescriptor);

/// Every registered plugin, sorted by role then type name.
pub fn registered_plugins() -> Vec<&'static PluginDescriptor> {
    let mut plugins: Vec<_> = inventory::iter::<PluginDescriptor>.into_iter().collect();
    plugins.sort_by_key(|p| (p.role, p.type_name));
    plugins
}

/// The plugin of `role` named `type_name`.
pub fn find_plugin(role: ComponentRole, type_name: &str) -> Option<&'static PluginDescriptor> {
    inventory::iter::<PluginDescriptor>
        .into_iter()
        .find(|p| p.role == role && p.type_name == type_name)
}
