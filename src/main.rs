//! The `flowpulse` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use flowpulse_core::checkpoint::{self, checkpoint_key};
use flowpulse_core::config::{LoadError, PipelineConfig, UnsetVariables};
use flowpulse_core::plugin::{registered_plugins, Shutdown};
use flowpulse_core::runtime::{Pipeline, RunError};
use flowpulse_core::topology;

mod generate;
mod huge_pages;
mod test_rules;

// A faster allocator: decoding allocates and frees several strings per event.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The default pipeline, used when no config is given and there is no
/// `pipeline.toml` in the working directory.
const DEFAULT_PIPELINE: &str = include_str!("../pipeline.toml");

#[derive(Parser)]
#[command(
    name = "flowpulse",
    version,
    about = "Real-time monitoring pipeline for workflow orchestrators"
)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline (the default command).
    Run {
        /// The pipeline config [default: pipeline.toml, else the built-in default].
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Check a pipeline config and print its topology; exit 1 if it has errors.
    Validate {
        /// The pipeline config [default: pipeline.toml, else the built-in default].
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// List every registered plugin with its description.
    Plugins,
    /// Write realistic seeded workflow events (for load tests and benchmarks).
    Generate(generate::GenerateArgs),
    /// Test alert rules against scripted metric values and the alerts
    /// expected after each step; exit 1 if one expectation fails.
    TestRules {
        /// The test file (TOML: [[rules]] and [[steps]]).
        file: PathBuf,
        /// Also take the rules of this config's alert_rules processors.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Create each `[stores.NAME]` database if missing and apply its
    /// migrations (idempotent); exit 1 if one cannot be reached.
    Migrate {
        /// The pipeline config [default: pipeline.toml, else the built-in default].
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Inspect or clear the checkpointed state of stateful processors.
    State {
        #[command(subcommand)]
        action: StateAction,
    },
}

#[derive(Subcommand)]
enum StateAction {
    /// Show each stateful processor's checkpoint: size, version, contents.
    Show {
        /// The pipeline config [default: pipeline.toml, else the built-in default].
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Delete each stateful processor's checkpoint (the next run starts empty).
    Reset {
        /// The pipeline config [default: pipeline.toml, else the built-in default].
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Reset even when a source's server cannot say whether an instance
        /// reads it (unreachable): only once every instance is stopped.
        #[arg(long)]
        force: bool,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // PostgreSQL's notices (`relation "_sqlx_migrations" already
        // exists` on every start) are not news.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in files or collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads `path`, or `pipeline.toml`, or the built-in default.
fn load(path: Option<&Path>) -> Result<PipelineConfig, LoadError> {
    load_with(path, UnsetVariables::Error)
}

/// [`load`], with `unset` saying where an unset variable is an error.
fn load_with(path: Option<&Path>, unset: UnsetVariables) -> Result<PipelineConfig, LoadError> {
    match path {
        Some(path) => PipelineConfig::from_file_with(path, unset),
        None if Path::new("pipeline.toml").exists() => {
            PipelineConfig::from_file_with(Path::new("pipeline.toml"), unset)
        }
        None => Ok(PipelineConfig::parse_with(
            "<built-in pipeline.toml>",
            DEFAULT_PIPELINE,
            |name| std::env::var(name).ok(),
            unset,
        )?),
    }
}

/// A command that prints (`flowpulse state show | head`, `flowpulse generate
/// | head`) ends quietly when its reader goes away, as Unix tools do,
/// rather than panicking on the broken pipe.
fn quiet_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: restores SIGPIPE's default disposition before any thread
    // starts; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    huge_pages::disable_unless_allowed();
    flowpulse_plugins::link();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let command = cli.command.unwrap_or(Command::Run { config: None });
    if !matches!(command, Command::Run { .. }) {
        quiet_on_closed_stdout();
    }
    let result = match command {
        Command::Run { config } => run(config.as_deref()),
        Command::Validate { config } => validate(config.as_deref()),
        Command::Generate(args) => generate::run(&args).map(|()| ExitCode::SUCCESS),
        Command::State { action } => state(action),
        Command::Migrate { config } => migrate(config.as_deref()),
        Command::TestRules { file, config } => test_rules::run(&file, config.as_deref()),
        Command::Plugins => {
            for plugin in registered_plugins() {
                println!(
                    "{:<9} {:<16} {}",
                    plugin.role.as_str(),
                    plugin.type_name,
                    plugin.description
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {}", causes(&e));
        ExitCode::FAILURE
    })
}

/// An error and its causes, joined by `: `, leaving out a cause the text
/// before it already holds (some errors print their source themselves).
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn validate(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    match load(path) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("{warning}");
            }
            print!("{}", topology::describe(&config.components));
            println!("ok: {} components", config.components.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn run(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = match load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // Shared with other instances running from the same directory; a
    // `state reset` takes it alone, and waits for none of them. A pipeline
    // whose state lives elsewhere may run from a directory it cannot
    // write: it runs, unseen by a reset on this machine.
    let _running = match flowpulse_core::run_lock::running(&config.pipeline.data_dir) {
        Ok(lock) => Some(lock),
        Err(e) => {
            tracing::warn!("{e}: `flowpulse state reset` cannot tell that this pipeline runs");
            None
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(async move {
        let shutdown = Shutdown::new();
        stop_on_signal(shutdown.clone());
        let pipeline = Pipeline::new(config);
        let telemetry = pipeline.telemetry();
        match pipeline.run(shutdown).await {
            Ok(report) => {
                log_summary(&report);
                tracing::info!("pipeline stopped cleanly");
                Ok(ExitCode::SUCCESS)
            }
            // Nothing ran: no counters to tell.
            Err(e @ RunError::Build(_)) => {
                tracing::error!("{e}");
                Ok(ExitCode::FAILURE)
            }
            // What ran until the failure matters most now.
            Err(e) => {
                log_summary(&flowpulse_core::runtime::report_of(&telemetry));
                tracing::error!("{e}");
                Ok(ExitCode::FAILURE)
            }
        }
    });
    // The pipeline has stopped; what is left are reads that cannot be
    // cancelled (standard input waiting for a line nobody sends). Waiting
    // for them would keep a stopped pipeline from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    outcome
}

/// One `summary` line of counters per component.
fn log_summary(report: &flowpulse_core::runtime::RunReport) {
    for (name, (role, stats)) in report {
        tracing::info!(
            component = %name,
            role = role.as_str(),
            records_in = stats.records_in,
            records_out = stats.records_out,
            malformed = stats.malformed,
            ignored = stats.ignored,
            dropped = stats.dropped,
            lag = stats.lag,
            errors = stats.errors,
            extra = %serde_json::to_string(&stats.extra).unwrap_or_default(),
            "summary"
        );
    }
}

fn migrate(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = match load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if config.stores.is_empty() {
        println!("no [stores.NAME] table: nothing to migrate");
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut failed = false;
        for (name, settings) in &config.stores {
            let outcome = match flowpulse_plugins::stores::Store::new(name, settings) {
                Ok(store) => {
                    let before = store.applied_migrations().await;
                    store.prepare().await.map(|()| store).map(|s| (s, before))
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok((store, before)) => {
                    let after = store.applied_migrations().await;
                    let count = |n: usize| match n {
                        1 => "1 migration".to_owned(),
                        n => format!("{n} migrations"),
                    };
                    let what = match after.saturating_sub(before) {
                        0 => format!("up to date ({})", count(after)),
                        n => format!("applied {} ({after} in all)", count(n)),
                    };
                    println!("store \"{name}\" ({}): {what}", store.display_url());
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    failed = true;
                }
            }
        }
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}

fn state(action: StateAction) -> anyhow::Result<ExitCode> {
    let (path, reset, force) = match &action {
        StateAction::Show { config } => (config.as_deref(), false, false),
        StateAction::Reset { config, force } => (config.as_deref(), true, *force),
    };
    // No sink is opened here: its secrets need not be set in this shell.
    let config = match load_with(path, UnsetVariables::AllowedInSinks) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // A pipeline still running would write its state straight back: a
    // reset waits for none, it refuses. Held until the reset is done, so a
    // pipeline starting meanwhile waits for it.
    let _alone = if reset {
        match refuse_while_running(&config, &runtime, force) {
            Ok(lock) => Some(lock),
            Err(why) => {
                eprintln!("error: nothing deleted: {why}");
                return Ok(ExitCode::FAILURE);
            }
        }
    } else {
        None
    };
    runtime.block_on(async {
        // Every stateful processor, whatever its type: each says what a
        // fresh state of its settings is, and reads its checkpoint into it.
        let mut any = false;
        let partitioned = flowpulse_core::runtime::partitioned_processors(&config);
        for spec in &config.components {
            let Some(mut state) = spec.config.fresh_state() else {
                continue;
            };
            let Some(checkpoint) = config.checkpoint_for(spec) else {
                println!("{}: not checkpointed (no [checkpoint] table)", spec.name);
                continue;
            };
            any = true;
            let store = checkpoint::open(&checkpoint.url).await?;
            if partitioned.contains(&spec.name) {
                partitioned_state(
                    store.as_ref(),
                    &config.pipeline.name,
                    &spec.name,
                    state.as_mut(),
                    reset,
                )
                .await?;
                continue;
            }
            let key = checkpoint_key(&config.pipeline.name, &spec.name, 0);
            if reset {
                checkpoint::delete(store.as_ref(), &key, state.as_ref()).await?;
                println!("{}: deleted {key}", spec.name);
                continue;
            }
            match checkpoint::describe(store.as_ref(), &key, state.as_mut()).await {
                Ok(Some(description)) => println!("{}: {key}: {description}", spec.name),
                Ok(None) => println!("{}: {key}: no checkpoint", spec.name),
                Err(e) => println!("{}: {key}: not usable: {e}", spec.name),
            }
        }
        // The partition counts sources sharing their input first read it with.
        if reset && !partitioned.is_empty() {
            if let Some(settings) = &config.checkpoint {
                let store = checkpoint::open(&settings.url).await?;
                for source in config.components.iter().filter(|c| c.config.shards()) {
                    let key = checkpoint::partition_count_key(&config.pipeline.name, &source.name);
                    store.delete(&key).await?;
                    println!("{}: forgot the partition count ({key})", source.name);
                }
            }
        }
        if !any {
            println!("no [checkpoint] table: nothing is kept between runs");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The data directory's lock, held alone, if no pipeline of `config` runs:
/// none from its data directory on this machine, and no reader of a source
/// anywhere (a lease holder, a consumer group's member). Otherwise, who
/// runs; or, unless `force`, which source could not say.
fn refuse_while_running(
    config: &PipelineConfig,
    runtime: &tokio::runtime::Runtime,
    force: bool,
) -> Result<flowpulse_core::run_lock::RunLock, String> {
    let lock = flowpulse_core::run_lock::exclusive(&config.pipeline.data_dir)
        .map_err(|e| e.to_string())?;
    // Only a source feeding a stateful processor has a reader that would
    // write a checkpoint back.
    let asked = flowpulse_core::runtime::sources_of_stateful(config);
    let (readers, unknown) = runtime.block_on(async {
        let (mut readers, mut unknown) = (Vec::new(), Vec::new());
        for c in config.components.iter().filter(|c| asked.contains(&c.name)) {
            match c.config.reader().await {
                Ok(Some(reader)) => readers.push(format!("source \"{}\": {reader}", c.name)),
                Ok(None) => {}
                Err(why) => unknown.push(format!("source \"{}\": {why}", c.name)),
            }
        }
        (readers, unknown)
    });
    if !readers.is_empty() {
        return Err(format!(
            "a pipeline is reading; stop it first (a lease left by one that was killed lapses by itself): {}",
            readers.join("; ")
        ));
    }
    if !unknown.is_empty() && !force {
        return Err(format!(
            "cannot tell whether a pipeline is reading ({}); once every instance is stopped, `--force` resets anyway",
            unknown.join("; ")
        ));
    }
    Ok(lock)
}

/// `flowpulse state show|reset` for a processor whose state is kept per
/// partition of its input: each partition's checkpoint with its epoch (the
/// latest fencing token) and the instance that took it.
async fn partitioned_state(
    store: &dyn checkpoint::CheckpointStore,
    pipeline: &str,
    name: &str,
    state: &mut dyn flowpulse_core::state::ProcessorState,
    reset: bool,
) -> anyhow::Result<()> {
    let partitions = checkpoint::partitions(store, pipeline, name).await?;
    if partitions.is_empty() {
        println!("{name}: no partition checkpointed yet (state kept per partition of its input)");
    }
    for partition in partitions {
        let key = checkpoint_key(pipeline, name, partition);
        let fence = checkpoint::fence_key(&key);
        let owner = checkpoint::owner_key(&key);
        let partial = checkpoint::partial_key(pipeline, name, partition);
        if reset {
            // The fencing token stays: tokens only grow, so a process still
            // holding an old one can never match a new owner's.
            checkpoint::delete(store, &key, state).await?;
            for extra in [&owner, &partial] {
                store.delete(extra).await?;
            }
            println!(
                "{name}[{partition}]: deleted {key} and its partial (epoch {} kept)",
                store.fence_of(&fence).await?
            );
            continue;
        }
        let epoch = store.fence_of(&fence).await?;
        let owner = store
            .load(&owner)
            .await?
            .map(|o| String::from_utf8_lossy(&o).into_owned())
            .unwrap_or_else(|| "unknown".into());
        let description = match checkpoint::describe(store, &key, state).await {
            Ok(Some(description)) => description,
            Ok(None) => "no checkpoint".into(),
            Err(e) => format!("not usable: {e}"),
        };
        println!("{name}[{partition}]: {key}: epoch {epoch}, owner {owner}; {description}");
    }
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM; a second signal exits at once.
/// The handlers are installed before this returns, not when a task first
/// runs: a signal sent just after start must drain, not kill.
fn stop_on_signal(shutdown: Shutdown) {
    let mut signals = Signals::install();
    tokio::spawn(async move {
        let mut received = 0;
        loop {
            signals.next().await;
            received += 1;
            if received == 1 {
                tracing::info!("signal received: draining; send it again to exit at once");
                shutdown.cancel();
            } else {
                tracing::warn!("second signal: exiting without draining");
                std::process::exit(130);
            }
        }
    });
}

/// SIGINT and SIGTERM, listened to from the moment they are installed.
#[cfg(unix)]
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

#[cfg(unix)]
impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(int), Ok(term)) => Signals(Some((int, term))),
            _ => Signals(None),
        }
    }

    async fn next(&mut self) {
        match &mut self.0 {
            Some((int, term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Signals {
        Signals
    }

    async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
