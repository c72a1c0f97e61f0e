//! Helpers for tests that drive the real `flowpulse` binary.
#![allow(dead_code)]

pub mod http_helpers;
pub mod kafka_helpers;
pub mod proxy;
pub mod receiver;
pub mod redis_helpers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flowpulse_plugins::sources::demo::generator::{WorkloadConfig, WorkloadGenerator};

/// Asserts that a command exited successfully, showing its stderr if not.
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The built binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flowpulse"))
}

/// A `flowpulse run -c config` command with JSON logs, in `dir`.
pub fn run_command(dir: &Path, config: &Path) -> Command {
    let mut command = Command::new(binary());
    command
        .current_dir(dir)
        .args(["--log-format", "json", "run", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        // The default pipeline serves HTTP: a free port each, so tests run in parallel.
        .env("FLOWPULSE_HTTP_ADDRESS", "127.0.0.1:0")
        .stdin(Stdio::null());
    command
}

/// Runs to completion, failing the test after `timeout`.
pub fn run_to_end(dir: &Path, config: &Path, timeout: Duration) -> Output {
    let child = run_command(dir, config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flowpulse");
    wait_with_timeout(child, timeout)
}

/// Waits for a child, killing it (and failing) after `timeout`.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "flowpulse did not finish within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM to a child.
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// The per-component `summary` lines of a JSON log: name → fields.
pub fn summaries(stderr: &[u8]) -> BTreeMap<String, serde_json::Value> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["fields"]["message"] == "summary")
        .map(|v| {
            let fields = v["fields"].clone();
            (
                fields["component"].as_str().unwrap_or_default().to_owned(),
                fields,
            )
        })
        .collect()
}

/// Counter `field` of component `name` in the summaries.
pub fn counter(summaries: &BTreeMap<String, serde_json::Value>, name: &str, field: &str) -> u64 {
    summaries
        .get(name)
        .and_then(|s| s[field].as_u64())
        .unwrap_or_else(|| panic!("no {field} for {name} in {summaries:#?}"))
}

/// `n` seeded events in the flat form, one JSON line each.
pub fn flat_event_lines(n: usize, seed: u64) -> Vec<String> {
    WorkloadGenerator::new(WorkloadConfig {
        seed,
        in_flight: 100,
        ..WorkloadConfig::default()
    })
    .take(n)
    .map(|e| serde_json::to_string(&e).expect("serialize"))
    .collect()
}

/// The lines of a file (empty if it does not exist).
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The workflow counts `flowpulse generate --expect` predicts.
pub const COUNTS: [&str; 6] = [
    "total_workflows",
    "running_workflows",
    "paused_workflows",
    "completed_workflows",
    "failed_workflows",
    "cancelled_workflows",
];

pub fn matches_expectation(doc: &serde_json::Value, expect: &serde_json::Value) -> bool {
    let tasks = stage_tasks(doc);
    let expected_tasks = expect["stage_tasks_completed"].as_u64().unwrap()
        + expect["stage_tasks_failed"].as_u64().unwrap();
    COUNTS.iter().all(|f| doc["overview"][f] == expect[f]) && tasks == expected_tasks
}

/// Stage tasks a document counts, over every agent (stage statistics apply
/// as soon as they are folded, never held).
pub fn stage_tasks(doc: &serde_json::Value) -> u64 {
    doc["agents"].as_array().map_or(0, |a| {
        a.iter().filter_map(|a| a["total_tasks"].as_u64()).sum()
    })
}

/// Asserts that a document has exactly the counts `expect` predicts.
pub fn assert_matches_expectation(doc: &serde_json::Value, expect: &serde_json::Value) {
    for field in COUNTS {
        assert_eq!(doc["overview"][field], expect[field], "{field}");
    }
    assert!(
        matches_expectation(doc, expect),
        "stage tasks differ: {doc}"
    );
}

/// Starts the pipeline with its log in `dir/NAME.log` (a pipe nobody reads
/// could fill and stall it).
pub fn spawn_logged(dir: &Path, config: &Path, name: &str) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    run_command(dir, config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// SIGKILLs `child` and reaps it.
pub fn kill9(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}
