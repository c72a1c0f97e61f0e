//! `pipeline.toml` → a validated [`PipelineConfig`].
//!
//! Validation collects: one pass gathers every problem (with file:line:col)
//! before anything is built. Plugin options are parsed by the plugin's own
//! serde struct straight from the spanned TOML, so its errors carry positions.

mod diagnostic;
mod interpolate;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use diagnostic::{nearest, ConfigError, Diagnostic, Level};
pub use interpolate::{interpolate, Interpolated, InterpolationError};

use crate::plugin::{
    find_plugin, registered_plugins, ComponentConfig, ComponentRole, ValidateContext,
};
use crate::redact::redact_url;
use crate::topology::Unparsed;
use diagnostic::SourceText;

/// The optional `[pipeline]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Names the pipeline; scopes checkpoint keys. Default `flowpulse`.
    pub name: String,
    /// Where components keep durable files (offsets, dead letters).
    /// Default `data`, relative to the working directory.
    pub data_dir: PathBuf,
    /// How long shutdown may take to drain and flush before the process
    /// exits non-zero naming what was left, e.g. `"30s"`. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            name: "flowpulse".into(),
            data_dir: PathBuf::from("data"),
            shutdown_deadline: Duration::from_secs(30),
        }
    }
}

/// The optional `[checkpoint]` table: where stateful processors keep state.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSettings {
    /// The store, e.g. `redis://127.0.0.1:6379` or `file:///var/lib/flowpulse/checkpoints`
    /// (credentials are never logged). Default `file://DATA_DIR/checkpoints`.
    #[serde(default)]
    pub url: String,
    /// How often state is written, e.g. `"1s"`. Default 1 s.
    #[serde(with = "humantime_serde", default = "default_checkpoint_interval")]
    pub interval: Duration,
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}

impl CheckpointSettings {
    /// The settings without a `[checkpoint]` table: files under
    /// `DATA_DIR/checkpoints`, every second.
    pub fn default_for(pipeline: &PipelineSettings) -> CheckpointSettings {
        CheckpointSettings {
            url: format!("file://{}", pipeline.data_dir.join("checkpoints").display()),
            interval: default_checkpoint_interval(),
        }
    }
}

impl std::fmt::Debug for CheckpointSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSettings")
            .field("url", &redact_url(&self.url))
            .field("interval", &self.interval)
            .finish()
    }
}

/// One `[stores.NAME]` table: a database that components (the alert store,
/// the rules, the REST alert routes) name with `store = "NAME"`. Core opens
/// no database; the plugins do, one pool per store per process.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `postgres://USER@HOST:PORT/DB` or `sqlite://PATH` (credentials are
    /// never logged). A missing database is created.
    pub url: String,
    /// The most connections the pool opens. Default 5.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long connecting may take, e.g. `"5s"` (the default).
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// How long resolved alerts are kept, e.g. `"90d"` (the default).
    #[serde(with = "humantime_serde", default = "default_retention")]
    pub retention: Duration,
}

fn default_max_connections() -> u32 {
    5
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_retention() -> Duration {
    Duration::from_secs(90 * 24 * 60 * 60)
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("retention", &self.retention)
            .finish()
    }
}

impl StoreSettings {
    /// Problems with the settings, as (field, message).
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let known = ["postgres://", "postgresql://", "sqlite://", "sqlite:"];
        if !known.iter().any(|scheme| self.url.starts_with(scheme)) {
            problems.push((
                "url",
                format!(
                    "`{}` is neither postgres://… nor sqlite://PATH",
                    redact_url(&self.url)
                ),
            ));
        }
        if self.max_connections == 0 {
            problems.push(("max_connections", "must be at least 1".to_owned()));
        }
        if self.connect_timeout < Duration::from_millis(100) {
            problems.push(("connect_timeout", "must be at least 100ms".to_owned()));
        }
        if self.retention < Duration::from_secs(60 * 60) {
            problems.push(("retention", "must be at least 1h".to_owned()));
        }
        problems
    }
}

/// The declared stores, by name.
pub type Stores = std::collections::BTreeMap<String, StoreSettings>;

/// The error for a component option naming a store that is not declared:
/// `None` when `name` is one of `stores`.
pub fn unknown_store(stores: &Stores, name: &str) -> Option<String> {
    if stores.contains_key(name) {
        return None;
    }
    let declared: Vec<&str> = stores.keys().map(String::as_str).collect();
    Some(if declared.is_empty() {
        format!("no store \"{name}\" is declared; add a [stores.{name}] table with its url")
    } else {
        format!(
            "no store \"{name}\" is declared; declared: {}",
            declared.join(", ")
        )
    })
}

/// What a producer does when a consumer's buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait (backpressure). The default.
    #[default]
    Block,
    /// Drop the batch for this consumer and count it, so a slow consumer
    /// never stalls the others.
    DropNewest,
}

/// The default per-component buffer, in batches.
pub const DEFAULT_BUFFER: usize = 16;

/// One `[sources|processors|sinks.NAME]` table, parsed.
pub struct ComponentSpec {
    /// Its name.
    pub name: String,
    /// Source, processor or sink.
    pub role: ComponentRole,
    /// Its `type`.
    pub type_name: String,
    /// Names of the components it reads from.
    pub inputs: Vec<String>,
    /// Capacity of its input channel, in batches.
    pub buffer: usize,
    /// What its producers do when the buffer is full.
    pub when_full: WhenFull,
    /// The plugin's own config.
    pub config: Arc<dyn ComponentConfig>,
    /// Where its table is, for topology errors.
    pub(crate) offset: usize,
    /// Where each input is named.
    pub(crate) input_offsets: Vec<usize>,
}

impl std::fmt::Debug for ComponentSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentSpec")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("type_name", &self.type_name)
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}

/// A whole pipeline config, validated.
#[derive(Debug)]
pub struct PipelineConfig {
    /// `[pipeline]`.
    pub pipeline: PipelineSettings,
    /// `[checkpoint]`.
    pub checkpoint: Option<CheckpointSettings>,
    /// `[stores.NAME]`, by name.
    pub stores: Stores,
    /// Every component, in file order.
    pub components: Vec<ComponentSpec>,
    /// Problems that do not stop the pipeline.
    pub warnings: Vec<Diagnostic>,
}

impl PipelineConfig {
    /// Where `spec`'s state is checkpointed, if anywhere: the `[checkpoint]`
    /// table, or (for a processor that always checkpoints, like
    /// `alert_rules`) files under `DATA_DIR/checkpoints`.
    pub fn checkpoint_for(&self, spec: &ComponentSpec) -> Option<CheckpointSettings> {
        self.checkpoint.clone().or_else(|| {
            spec.config
                .always_checkpoints()
                .then(|| CheckpointSettings::default_for(&self.pipeline))
        })
    }
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file has problems.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
}

/// Where an unset `${VAR}` (one without a default) is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsetVariables {
    /// Everywhere: the pipeline is to run, or be validated.
    Error,
    /// Everywhere but in `[sinks.*]` tables. For commands that never open a
    /// sink (`flowpulse state`), whose secrets (webhook URLs, passwords,
    /// tokens) the shell they run from need not hold. Such a value is left
    /// empty.
    AllowedInSinks,
}

impl PipelineConfig {
    /// Reads and validates a config file, interpolating the process environment.
    pub fn from_file(path: &Path) -> Result<PipelineConfig, LoadError> {
        PipelineConfig::from_file_with(path, UnsetVariables::Error)
    }

    /// [`PipelineConfig::from_file`], with `unset` saying where an unset
    /// variable is an error.
    pub fn from_file_with(path: &Path, unset: UnsetVariables) -> Result<PipelineConfig, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(PipelineConfig::parse_with(
            &path.display().to_string(),
            &text,
            |name| std::env::var(name).ok(),
            unset,
        )?)
    }

    /// Validates config `text` (named `file` in messages), looking variables up
    /// with `env`.
    pub fn parse(
        file: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::parse_with(file, text, env, UnsetVariables::Error)
    }

    /// [`PipelineConfig::parse`], with `unset` saying where an unset
    /// variable is an error.
    pub fn parse_with(
        file: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
        unset: UnsetVariables,
    ) -> Result<PipelineConfig, ConfigError> {
        let mut parser = Parser {
            source: SourceText { file, text },
            invalid: Default::default(),
            partly_parsed: Vec::new(),
            interpolated: Interpolated::default(),
            diagnostics: Vec::new(),
        };
        let (interpolated, errors) = interpolate(text, env);
        let unresolved = errors.len();
        let mut tolerated_lines = std::collections::HashSet::new();
        for e in errors {
            let not_set = e.message.contains("is not set");
            parser.push(e.span.start, Level::Error, e.message, None);
            if unset == UnsetVariables::AllowedInSinks
                && not_set
                && in_sinks_table(text, e.span.start)
            {
                tolerated_lines.extend(parser.diagnostics.last().map(|d| d.line));
            }
        }
        parser.interpolated = interpolated;
        let interpolated_text = parser.interpolated.text.clone();
        let config = match DeTable::parse(&interpolated_text) {
            Ok(root) => Some(parser.root(root)),
            Err(e) => {
                parser.toml_error(&e, 0);
                // A bare reference left empty breaks the document: then
                // nothing is tolerated, so the error shows.
                tolerated_lines.clear();
                None
            }
        };
        // A value whose variable is not set is empty: what the key then
        // says of it (`not a valid URL`) would point away from the cause.
        let unset_lines: std::collections::HashSet<usize> = parser.diagnostics[..unresolved]
            .iter()
            .map(|d| d.line)
            .collect();
        let mut index = 0;
        parser.diagnostics.retain(|d| {
            index += 1;
            (index <= unresolved || !unset_lines.contains(&d.line))
                && !tolerated_lines.contains(&d.line)
        });
        // In the order of the file, whatever order they were found in.
        parser.diagnostics.sort_by_key(|d| (d.line, d.column));
        let errors = parser.diagnostics.iter().any(|d| d.level == Level::Error);
        match config {
            Some(mut config) if !errors => {
                config.warnings = parser.diagnostics;
                Ok(config)
            }
            _ => Err(ConfigError {
                diagnostics: parser.diagnostics,
            }),
        }
    }
}

/// A TOML or serde message in the config's words: Rust's number types
/// become what they mean (`expected usize`: `expected a non-negative
/// integer`).
fn plain(message: &str) -> String {
    const WORDS: [(&str, &str); 8] = [
        ("usize", "a non-negative integer"),
        ("u64", "a non-negative integer"),
        ("u32", "a non-negative integer"),
        ("u16", "a non-negative integer"),
        ("u8", "a non-negative integer"),
        ("i64", "an integer"),
        ("i32", "an integer"),
        ("f64", "a number"),
    ];
    let mut out = message.trim().to_owned();
    for (rust, words) in WORDS {
        out = out.replace(&format!("expected {rust}"), &format!("expected {words}"));
    }
    out
}

/// Whether `offset` of a config's `text` lies in a `[sinks.*]` table: the
/// last table header before it names `sinks` first. Read from the text, as
/// unset variables are found before the TOML is parsed.
fn in_sinks_table(text: &str, offset: usize) -> bool {
    let before = text.get(..offset).unwrap_or(text);
    before
        .lines()
        .map(str::trim_start)
        .rfind(|line| line.starts_with('['))
        .is_some_and(|header| {
            let path = header.trim_start_matches('[').trim_start();
            path.strip_prefix("sinks")
                .or_else(|| path.strip_prefix("\"sinks\""))
                .and_then(|rest| rest.trim_start().chars().next())
                .is_some_and(|c| c == '.' || c == ']')
        })
}

struct Parser<'a> {
    source: SourceText<'a>,
    /// Components declared but not valid: already reported, yet still part
    /// of the graph, so their inputs are checked and references to them are
    /// not reported as missing.
    invalid: Vec<Unparsed>,
    /// Components whose options had problems, parsed again with defaults
    /// for the keys at fault (named): their other keys are still checked,
    /// so that every problem shows at once.
    partly_parsed: Vec<(ComponentSpec, Vec<String>)>,
    interpolated: Interpolated,
    diagnostics: Vec<Diagnostic>,
}

/// The keys every component table may have besides its plugin's options.
const COMMON_KEYS: [&str; 4] = ["type", "inputs", "buffer", "when_full"];

impl Parser<'_> {
    /// Records a problem at an offset of the original text.
    fn push(&mut self, offset: usize, level: Level, message: String, help: Option<String>) {
        let message = self.interpolated.redact(&message);
        let help = help.map(|h| self.interpolated.redact(&h));
        let d = self.source.at(offset, level, message, help);
        self.diagnostics.push(d);
    }

    /// Records a problem at an offset of the interpolated text.
    fn error_at(&mut self, offset: usize, message: String, help: Option<String>) {
        let offset = self.interpolated.original_offset(offset);
        self.push(offset, Level::Error, message, help);
    }

    fn toml_error(&mut self, e: &toml::de::Error, fallback: usize) {
        let offset = e.span().map_or(fallback, |s| s.start);
        // A bare `${VAR}` is substituted as it is: say so where its value
        // does not parse (without the value, which may be a secret).
        let help = self
            .interpolated
            .reference_at(offset)
            .and_then(|range| self.source.text.get(range))
            .map(|reference| {
                format!(
                    "this value comes from {reference}, substituted as it is: a bare reference must hold a number, `true` or `false`; quote it (\"{reference}\") for text"
                )
            });
        self.error_at(offset, plain(e.message()), help);
    }

    fn root(&mut self, root: Spanned<DeTable<'_>>) -> PipelineConfig {
        let mut config = PipelineConfig {
            pipeline: PipelineSettings::default(),
            checkpoint: None,
            stores: Stores::new(),
            components: Vec::new(),
            warnings: Vec::new(),
        };
        let root = root.into_inner();
        for (key, value) in root.iter() {
            let at = key.span().start;
            match key.get_ref().as_ref() {
                "pipeline" => {
                    if let Some(settings) = self.deserialize::<PipelineSettings>(value) {
                        config.pipeline = settings;
                    }
                }
                "checkpoint" => config.checkpoint = self.deserialize::<CheckpointSettings>(value),
                "stores" => self.stores(value, &mut config),
                "sources" => self.components(ComponentRole::Source, value, &mut config),
                "processors" => self.components(ComponentRole::Processor, value, &mut config),
                "sinks" => self.components(ComponentRole::Sink, value, &mut config),
                other => {
                    let known = [
                        "pipeline",
                        "checkpoint",
                        "stores",
                        "sources",
                        "processors",
                        "sinks",
                    ];
                    let help = nearest(other, known).map(|n| format!("did you mean `{n}`?"));
                    self.error_at(
                        at,
                        format!(
                            "unknown top-level key `{other}`; expected one of {}",
                            known.join(", ")
                        ),
                        help,
                    );
                }
            }
        }
        if let Some(checkpoint) = config.checkpoint.as_mut().filter(|c| c.url.is_empty()) {
            checkpoint.url = CheckpointSettings::default_for(&config.pipeline).url;
        }
        let topology = crate::topology::TopologyView::new(&config.components, &config.stores);
        let mut field_errors = Vec::new();
        let no_keys_at_fault = Vec::new();
        let partly_parsed = std::mem::take(&mut self.partly_parsed);
        let every = config
            .components
            .iter()
            .map(|spec| (spec, &no_keys_at_fault))
            .chain(
                partly_parsed
                    .iter()
                    .map(|(spec, at_fault)| (spec, at_fault)),
            );
        for (spec, at_fault) in every {
            let cx = ValidateContext {
                pipeline: &config.pipeline,
                checkpoint: config.checkpoint.as_ref(),
                stores: &config.stores,
                topology: &topology,
                component: &spec.name,
            };
            for e in spec.config.validate(&cx) {
                // A key at fault holds its default here: what is said of it,
                // or of another key against it, is not the user's value.
                let key = e.field.split(['.', '[']).next().unwrap_or_default();
                let about_fault = at_fault
                    .iter()
                    .any(|k| k == key || e.message.contains(&format!("`{k}`")));
                // Nor is what it is against another component: it is not in
                // the graph, and may hold a default where they hold values.
                let partly = partly_parsed.iter().any(|(p, _)| std::ptr::eq(p, spec));
                let about_others = ["source \"", "processor \"", "sink \""]
                    .iter()
                    .any(|other| e.message.contains(other));
                let theirs = partly && about_others;
                if !(about_fault || theirs) {
                    field_errors.push((spec.offset, spec.role, spec.name.clone(), e));
                }
            }
        }
        for (offset, role, name, e) in field_errors {
            let offset = self.field_offset(offset, &e.field);
            self.error_at(
                offset,
                format!("{} \"{name}\": `{}`: {}", role.as_str(), e.field, e.message),
                None,
            );
        }
        let topology_problems = crate::topology::check(&config.components, &self.invalid);
        for p in topology_problems {
            self.error_or_warning(p);
        }
        config
    }

    fn error_or_warning(&mut self, p: crate::topology::Problem) {
        let offset = self.interpolated.original_offset(p.offset);
        self.push(offset, p.level, p.message, p.help);
    }

    /// The offset of `field` inside the table at `table_offset`: the text
    /// after the table header, up to the next header.
    fn field_offset(&self, table_offset: usize, field: &str) -> usize {
        let text = &self.interpolated.text;
        if let Some(at) = self.array_table_offset(table_offset, field) {
            return at;
        }
        // A nested field (`control.url`, `channels[0]`) is placed at its key.
        let field = field.split(['.', '[']).next().unwrap_or(field);
        let rest = &text[table_offset.min(text.len())..];
        let end = rest[1.min(rest.len())..]
            .find("\n[")
            .map_or(rest.len(), |i| i + 1);
        rest[..end]
            .match_indices(field)
            .find(|(i, _)| {
                let line_start = rest[..*i].rfind('\n').map_or(0, |n| n + 1);
                rest[line_start..*i].trim().is_empty()
            })
            .map_or(table_offset, |(i, _)| table_offset + i)
    }

    /// For `LIST[i].field…` of the component whose table is at
    /// `table_offset`: the offset of `field` in its i-th `[[…LIST]]` table,
    /// if the list is written as array tables.
    fn array_table_offset(&self, table_offset: usize, field: &str) -> Option<usize> {
        let text = &self.interpolated.text;
        let (list, rest) = field.split_once('[')?;
        let (index, inner) = rest.split_once(']')?;
        let index: usize = index.parse().ok()?;
        let inner = inner.strip_prefix('.').unwrap_or(inner);
        let line_start = text[..table_offset.min(text.len())]
            .rfind('\n')
            .map_or(0, |n| n + 1);
        let header = text[line_start..].lines().next()?.trim();
        let name = header.strip_prefix('[')?.split(']').next()?.trim();
        let array_header = format!("[[{name}.{list}]]");
        let (at, _) = text.match_indices(&array_header).nth(index)?;
        Some(if inner.is_empty() {
            at
        } else {
            self.field_offset(at, inner)
        })
    }

    fn deserialize<T: serde::de::DeserializeOwned>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<T> {
        match parse_every_problem(value, |de| T::deserialize(de)) {
            Ok(v) => Some(v),
            Err((errors, _)) => {
                for e in &errors {
                    self.toml_error(e, value.span().start);
                }
                None
            }
        }
    }

    /// [`Self::deserialize`] of a component's key: its errors name the
    /// component (`label`).
    fn deserialize_in<T: serde::de::DeserializeOwned>(
        &mut self,
        label: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<T> {
        match T::deserialize(toml::de::ValueDeserializer::from(value.clone())) {
            Ok(v) => Some(v),
            Err(e) => {
                let at = e.span().map_or(value.span().start, |s| s.start);
                self.error_at(at, format!("{label}: {}", plain(e.message())), None);
                None
            }
        }
    }

    fn stores(&mut self, value: &Spanned<DeValue<'_>>, config: &mut PipelineConfig) {
        let DeValue::Table(table) = value.get_ref() else {
            self.error_at(
                value.span().start,
                "`stores` must be a table of stores by name".into(),
                Some("write [stores.NAME] with url = \"postgres://…\" or \"sqlite://PATH\"".into()),
            );
            return;
        };
        for (name, body) in table.iter() {
            let Some(settings) = self.deserialize::<StoreSettings>(body) else {
                continue;
            };
            for (field, message) in settings.problems() {
                let offset = self.field_offset(name.span().start, field);
                self.error_at(
                    offset,
                    format!("store \"{}\": `{field}`: {message}", name.get_ref()),
                    None,
                );
            }
            config.stores.insert(name.get_ref().to_string(), settings);
        }
    }

    fn components(
        &mut self,
        role: ComponentRole,
        value: &Spanned<DeValue<'_>>,
        config: &mut PipelineConfig,
    ) {
        let DeValue::Table(table) = value.get_ref() else {
            self.error_at(
                value.span().start,
                format!(
                    "`{}` must be a table of {} by name",
                    role.table(),
                    role.as_str()
                ),
                Some(format!("write [{}.NAME] with type = \"…\"", role.table())),
            );
            return;
        };
        for (name, body) in table.iter() {
            match self.component(role, name, body) {
                Ok(spec) => config.components.push(spec),
                Err(unparsed) => self.invalid.push(unparsed),
            }
        }
    }

    fn component(
        &mut self,
        role: ComponentRole,
        name: &Spanned<std::borrow::Cow<'_, str>>,
        body: &Spanned<DeValue<'_>>,
    ) -> Result<ComponentSpec, Unparsed> {
        let name_str = name.get_ref().to_string();
        let label = format!("{} \"{name_str}\"", role.as_str());
        let offset = name.span().start;
        let DeValue::Table(table) = body.get_ref() else {
            self.error_at(offset, format!("{label} must be a table"), None);
            return Err(Unparsed {
                name: name_str,
                role,
                offset,
                inputs: Vec::new(),
                input_offsets: Vec::new(),
            });
        };
        let mut ok = true;

        let type_name = match table.get("type").map(|v| (v.span().start, v.get_ref())) {
            Some((_, DeValue::String(t))) => Some((
                t.to_string(),
                table.get("type").map_or(offset, |v| v.span().start),
            )),
            Some((at, _)) => {
                self.error_at(at, format!("{label}: `type` must be a string"), None);
                None
            }
            None => {
                let known = known_types(role);
                self.error_at(
                    offset,
                    format!("{label}: missing key `type`"),
                    Some(format!("one of: {}", known.join(", "))),
                );
                None
            }
        };
        let plugin = type_name.as_ref().and_then(|(t, at)| {
            let found = find_plugin(role, t);
            if found.is_none() {
                let known = known_types(role);
                let mut help = format!("known {} types: {}", role.as_str(), known.join(", "));
                if let Some(n) = nearest(t, known.iter().copied()) {
                    help = format!("did you mean \"{n}\"? {help}");
                }
                if let Some(other) = registered_plugins()
                    .into_iter()
                    .find(|p| p.type_name == t && p.role != role)
                {
                    help = format!(
                        "\"{t}\" is a {}: declare it under [{}.{name_str}]",
                        other.role.as_str(),
                        other.role.table()
                    );
                }
                self.error_at(
                    *at,
                    format!("{label}: unknown {} type \"{t}\"", role.as_str()),
                    Some(help),
                );
            }
            found
        });

        let mut inputs = Vec::new();
        let mut input_offsets = Vec::new();
        match (role, table.get("inputs")) {
            (ComponentRole::Source, Some(v)) => {
                self.error_at(
                    v.span().start,
                    format!("{label}: a source takes no `inputs`"),
                    None,
                );
                ok = false;
            }
            (ComponentRole::Source, None) => {}
            (_, None) => {
                self.error_at(
                    offset,
                    format!("{label}: missing key `inputs`"),
                    Some("name the components it reads from: inputs = [\"…\"]".into()),
                );
                ok = false;
            }
            (_, Some(v)) => match v.get_ref() {
                DeValue::Array(items) => {
                    for item in items.iter() {
                        match item.get_ref() {
                            DeValue::String(s) => {
                                inputs.push(s.to_string());
                                input_offsets.push(item.span().start);
                            }
                            _ => {
                                self.error_at(
                                    item.span().start,
                                    format!("{label}: `inputs` must be a list of component names"),
                                    None,
                                );
                                ok = false;
                            }
                        }
                    }
                    if inputs.is_empty() && ok {
                        self.error_at(
                            v.span().start,
                            format!("{label} has no inputs"),
                            Some("name at least one source or processor".into()),
                        );
                        ok = false;
                    }
                }
                _ => {
                    self.error_at(
                        v.span().start,
                        format!("{label}: `inputs` must be a list of component names"),
                        None,
                    );
                    ok = false;
                }
            },
        }

        let buffer = match table.get("buffer") {
            None => DEFAULT_BUFFER,
            Some(v) => match self.deserialize_in::<usize>(&label, v) {
                Some(0) => {
                    self.error_at(
                        v.span().start,
                        format!("{label}: `buffer` must be at least 1"),
                        None,
                    );
                    ok = false;
                    DEFAULT_BUFFER
                }
                Some(n) => n,
                None => {
                    ok = false;
                    DEFAULT_BUFFER
                }
            },
        };
        let when_full = match table.get("when_full") {
            None => WhenFull::Block,
            Some(v) => self
                .deserialize_in::<WhenFull>(&label, v)
                .unwrap_or_else(|| {
                    ok = false;
                    WhenFull::Block
                }),
        };

        let mut options = table.clone();
        for key in COMMON_KEYS {
            options.remove(key);
        }
        let options = Spanned::new(body.span(), DeValue::Table(options));
        let mut partly = None;
        let config = plugin.and_then(|plugin| match parse_every_problem(&options, plugin.parse) {
            Ok(config) => Some(config),
            Err((errors, rest)) => {
                for e in errors {
                    let at = e.span().map_or(offset, |s| s.start);
                    self.error_at(at, format!("{label}: {}", plain(e.message())), None);
                }
                partly = rest;
                None
            }
        });
        let unparsed = |name: String, inputs: Vec<String>, input_offsets: Vec<usize>| Unparsed {
            name,
            role,
            offset,
            inputs,
            input_offsets,
        };
        let Some((type_name, _)) = type_name else {
            return Err(unparsed(name_str, inputs, input_offsets));
        };
        let spec = |config: Box<dyn ComponentConfig>| ComponentSpec {
            name: name_str.clone(),
            role,
            type_name: type_name.clone(),
            inputs: inputs.clone(),
            buffer,
            when_full,
            config: Arc::from(config),
            offset,
            input_offsets: input_offsets.clone(),
        };
        match (config, ok) {
            (Some(config), true) => Ok(spec(config)),
            (config, _) => {
                if let Some((config, at_fault)) = partly {
                    self.partly_parsed.push((spec(config), at_fault));
                } else if let Some(config) = config {
                    // Only a common key was wrong: its options are checked.
                    self.partly_parsed.push((spec(config), Vec::new()));
                }
                Err(unparsed(name_str, inputs, input_offsets))
            }
        }
    }
}

/// The most problems reported for one table.
const MAX_PROBLEMS_PER_TABLE: usize = 20;

/// What [`parse_every_problem`] found wrong, and the value parsed without
/// the keys at fault (defaults in their place), if it then parses.
type Problems<T> = (Vec<toml::de::Error>, Option<(T, Vec<String>)>);

/// Deserializes `value` with `parse`, reporting every key's problem at once
/// rather than the first only (serde stops at the first): where `parse`
/// fails on one key of a table, it is tried again without that key. A
/// later error about a key taken out (a required key, now missing) is an
/// echo of the first, and ends the search.
fn parse_every_problem<T>(
    value: &Spanned<DeValue<'_>>,
    parse: impl Fn(toml::de::ValueDeserializer<'_>) -> Result<T, toml::de::Error>,
) -> Result<T, Problems<T>> {
    let first = match parse(toml::de::ValueDeserializer::from(value.clone())) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let DeValue::Table(table) = value.get_ref() else {
        return Err((vec![first], None));
    };
    let mut table = table.clone();
    let mut removed: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    let mut next = Some(first);
    while let Some(e) = next.take() {
        if removed.iter().any(|key| {
            e.message()
                .trim()
                .starts_with(&format!("missing field `{key}`"))
        }) {
            break;
        }
        let culprit = e.span().and_then(|at| {
            table
                .iter()
                .find(|(k, v)| k.span().contains(&at.start) || v.span().contains(&at.start))
                .map(|(k, _)| k.get_ref().to_string())
        });
        errors.push(e);
        let Some(key) = culprit.filter(|_| errors.len() < MAX_PROBLEMS_PER_TABLE) else {
            break;
        };
        table.remove(key.as_str());
        removed.push(key);
        let rest = Spanned::new(value.span(), DeValue::Table(table.clone()));
        match parse(toml::de::ValueDeserializer::from(rest)) {
            Ok(parsed) => return Err((errors, Some((parsed, removed)))),
            Err(e) => next = Some(e),
        }
    }
    Err((errors, None))
}

fn known_types(role: ComponentRole) -> Vec<&'static str> {
    registered_plugins()
        .into_iter()
        .filter(|p| p.role == role)
        .map(|p| p.type_name)
        .collect()
}
