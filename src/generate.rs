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
    #[arg(long, default_value_t = 1000.0, value_parser = positive)]
    rate: f64,
    /// Workflows in flight.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    in_flight: u32,
    /// Event form.
    #[arg(long, value_enum, default_value_t = Form::Flat)]
    form: Form,
    /// Fraction of events sent a second time (same identity), 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    duplicates: f64,
    /// Fraction of extra malformed lines, 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    malformed: f64,
    /// Output file [default: standard output].
    #[arg(short, long, conflicts_with = "redis_url")]
    output: Option<PathBuf>,
    /// XADD the events (envelope form, `topic`/`payload` fields) to a Redis
    /// stream at this URL instead of writing lines.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// The stream to XADD to.
    #[arg(long, default_value = "stream:workflow:events")]
    stream: String,
    /// Print the exact expected counts to standard error as JSON.
    #[arg(long)]
    expect: bool,
}

/// A fraction from 0 to 1.
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        Ok(_) => Err("must be from 0 to 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A number above 0.
fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f > 0.0 && f.is_finite() => Ok(f),
        Ok(_) => Err("must be above 0".into()),
        Err(e) => Err(e.to_string()),
    }
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

/// Where generated lines go.
trait LineSink {
    fn line(&mut self, line: &[u8]) -> anyhow::Result<()>;
    fn finish(&mut self) -> anyhow::Result<()>;
}

impl<W: Write> LineSink for W {
    fn line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        self.write_all(line)?;
        Ok(self.write_all(b"\n")?)
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        Ok(self.flush()?)
    }
}

/// XADDs each line as an entry's `payload`, pipelined in chunks.
struct StreamSink {
    conn: redis::Connection,
    stream: String,
    pending: Vec<Vec<u8>>,
}

impl StreamSink {
    fn send(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for payload in self.pending.drain(..) {
            pipe.cmd("XADD")
                .arg(&self.stream)
                .arg("*")
                .arg("topic")
                .arg("workflow:events")
                .arg("payload")
                .arg(payload)
                .ignore();
        }
        pipe.query::<()>(&mut self.conn).context("XADD failed")
    }
}

impl LineSink for StreamSink {
    fn line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        self.pending.push(line.to_vec());
        if self.pending.len() >= 1000 {
            self.send()?;
        }
        Ok(())
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        self.send()
    }
}

/// Writes the events.
pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.redis_url {
        let client = redis::Client::open(url.as_str()).with_context(|| {
            format!(
                "invalid Redis URL {}",
                flowpulse_core::redact::redact_url(url)
            )
        })?;
        let conn = client.get_connection().with_context(|| {
            format!(
                "cannot connect to {}",
                flowpulse_core::redact::redact_url(url)
            )
        })?;
        let mut sink = StreamSink {
            conn,
            stream: args.stream.clone(),
            pending: Vec::new(),
        };
        return generate(args, &mut sink, true);
    }
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    generate(args, &mut out, false)
}

fn generate(
    args: &GenerateArgs,
    out: &mut dyn LineSink,
    envelope_only: bool,
) -> anyhow::Result<()> {
    let mut generator = WorkloadGenerator::new(WorkloadConfig {
        seed: args.seed,
        rate: args.rate,
        in_flight: args.in_flight as usize,
        ..WorkloadConfig::default()
    });
    let mut noise = rand::rngs::SmallRng::seed_from_u64(args.seed ^ 0x5eed);
    let mut line = Vec::with_capacity(512);
    let mut malformed = 0u64;
    let mut duplicates = 0u64;
    for event in generator.by_ref().take(args.count as usize) {
        line.clear();
        match (args.form, envelope_only) {
            (Form::Flat, false) => serde_json::to_writer(&mut line, &event)?,
            _ => serde_json::to_writer(&mut line, &event.to_envelope_json())?,
        }
        out.line(&line)?;
        if args.duplicates > 0.0 && noise.random_bool(args.duplicates) {
            out.line(&line)?;
            duplicates += 1;
        }
        if args.malformed > 0.0 && noise.random_bool(args.malformed) {
            out.line(MALFORMED[(malformed % 3) as usize].as_bytes())?;
            malformed += 1;
        }
    }
    out.finish()?;
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
