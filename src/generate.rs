//! `flowpulse generate`: seeded workflow events for load tests and benchmarks.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use flowpulse_plugins::sources::demo::generator::{Tally, WorkloadConfig, WorkloadGenerator};
use rand::{Rng, SeedableRng};

/// Options of `flowpulse generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Number of events.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    count: u64,
    /// Seed; the same seed gives the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Events per second of event time.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Workflows in flight.
    #[arg(long, default_value_t = 1000)]
    in_flight: usize,
    /// Event form.
    #[arg(long, value_enum, default_value_t = Form::Flat)]
    form: Form,
    /// Fraction of events sent a second time (same identity).
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Fraction of extra malformed lines.
    #[arg(long, default_value_t = 0.0)]
    malformed: f64,
    /// Output file [default: standard output].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print the exact expected counts to standard error as JSON.
    #[arg(long)]
    expect: bool,
}

/// How each event is written.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Form {
    /// The flat form, one JSON object per line.
    Flat,
    /// The orchestrator's envelope `{"key","msg"}`, one per line.
    Envelope,
}

const MALFORMED: [&str; 3] = [
    "{\"truncated\": ",
    r#"{"metadata":{"timestamp":"2026-11-27T10:15:02Z"},"payload":{}}"#,
    r#"{"type":"workflow.completed","workflow_id":"wf-x","timestamp":"yesterday"}"#,
];

/// Writes the events.
pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut generator = WorkloadGenerator::new(WorkloadConfig {
        seed: args.seed,
        rate: args.rate,
        in_flight: args.in_flight,
        ..WorkloadConfig::default()
    });
    let mut noise = rand::rngs::SmallRng::seed_from_u64(args.seed ^ 0x5eed);
    let mut line = Vec::with_capacity(512);
    let mut malformed = 0u64;
    let mut duplicates = 0u64;
    for event in generator.by_ref().take(args.count as usize) {
        line.clear();
        match args.form {
            Form::Flat => serde_json::to_writer(&mut line, &event)?,
            Form::Envelope => serde_json::to_writer(&mut line, &event.to_envelope_json())?,
        }
        line.push(b'\n');
        out.write_all(&line)?;
        if args.duplicates > 0.0 && noise.random_bool(args.duplicates.min(1.0)) {
            out.write_all(&line)?;
            duplicates += 1;
        }
        if args.malformed > 0.0 && noise.random_bool(args.malformed.min(1.0)) {
            out.write_all(MALFORMED[(malformed % 3) as usize].as_bytes())?;
            out.write_all(b"\n")?;
            malformed += 1;
        }
    }
    out.flush()?;
    if args.expect {
        eprintln!("{}", expectation(generator.tally(), duplicates, malformed));
    }
    Ok(())
}

fn expectation(tally: &Tally, duplicates: u64, malformed: u64) -> serde_json::Value {
    serde_json::json!({
        "events": tally.events,
        "duplicates": duplicates,
        "malformed": malformed,
        "total_workflows": tally.created,
        "running_workflows": tally.running(),
        "paused_workflows": tally.paused,
        "completed_workflows": tally.completed,
        "failed_workflows": tally.failed,
        "cancelled_workflows": tally.cancelled,
        "stage_tasks_completed": tally.stages_completed,
        "stage_tasks_failed": tally.stages_failed,
    })
}
