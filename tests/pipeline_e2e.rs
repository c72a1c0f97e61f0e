//! The pipeline core end to end, through the built binary.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Starts a pipeline following `dir/path` into `dir/out.jsonl`, polling
/// every `poll_interval`, its log piped.
fn follow(dir: &std::path::Path, path: &str, poll_interval: &str) -> std::process::Child {
    let config = dir.join("p.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.in]\ntype = \"file\"\npath = \"{path}\"\nfollow = true\npoll_interval = \"{poll_interval}\"\n\n[sinks.out]\ntype = \"file\"\npath = \"out.jsonl\"\ninputs = [\"in\"]\n"
        ),
    )
    .unwrap();
    run_command(dir, &config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `out` holds `n` lines, failing after 20 s with how many it has.
fn wait_for_lines(out: &std::path::Path, n: usize) {
    let start = Instant::now();
    while read_lines(out).len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "stuck at {}",
            read_lines(out).len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn file_to_file_keeps_every_valid_event_in_order_and_counts_malformed_lines() {
    let dir = tempfile::tempdir().unwrap();
    let valid = flat_event_lines(5_000, 7);
    let malformed = [
        "{not json",
        r#"{"type":"workflow.created","timestamp":"2026-11-27T10:15:02Z"}"#,
        r#"{"type":"workflow.completed","workflow_id":"w","timestamp":"later"}"#,
        r#"{"type":"workflow.completed","workflow_id":"w","timestamp":"2026-11-27T10:15:02Z","duration_ms":"slow"}"#,
    ];
    let mut input = String::new();
    for (i, line) in valid.iter().enumerate() {
        input.push_str(line);
        input.push('\n');
        if i % 1000 == 500 {
            input.push_str(malformed[(i / 1000) % malformed.len()]);
            input.push('\n');
        }
    }
    // A stage Flowpulse does not track is ignored, not malformed.
    input.push_str(
        r#"{"type":"workflow.stage.started","workflow_id":"w","timestamp":"2026-11-27T10:15:02Z"}"#,
    );
    input.push('\n');
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        r#"
[sources.in]
type = "file"
path = "in.jsonl"
batch_size = 100

[sinks.out]
type = "file"
path = "out.jsonl"
inputs = ["in"]
"#,
    )
    .unwrap();

    let output = run_to_end(dir.path(), &config, Duration::from_secs(60));
    assert_success(&output);
    assert_eq!(read_lines(&dir.path().join("out.jsonl")), valid);

    let summaries = summaries(&output.stderr);
    assert_eq!(counter(&summaries, "in", "malformed"), 5);
    assert_eq!(counter(&summaries, "in", "ignored"), 1);
    assert_eq!(counter(&summaries, "out", "records_in"), valid.len() as u64);
    let dead = read_lines(&dir.path().join("data/in/dead_letter.jsonl"));
    assert_eq!(dead.len(), 5);
    let first: serde_json::Value = serde_json::from_str(&dead[0]).unwrap();
    assert_eq!(first["line"], 502);
    assert_eq!(first["kind"], "invalid_json");
    assert_eq!(first["raw"], "{not json");
}

#[test]
fn sigterm_during_a_slow_sink_loses_nothing_and_a_restart_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lines = flat_event_lines(4_000, 11);
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        r#"
[sources.in]
type = "file"
path = "in.jsonl"
follow = true
batch_size = 50

[sinks.out]
type = "file"
path = "out.jsonl"
inputs = ["in"]
buffer = 4
delay_per_batch = "20ms"
"#,
    )
    .unwrap();
    let out_path = dir.path().join("out.jsonl");
    let wait_for = |n: usize, limit: Duration| {
        let start = Instant::now();
        while read_lines(&out_path).len() < n {
            assert!(
                start.elapsed() < limit,
                "only {} lines after {limit:?}",
                read_lines(&out_path).len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // First run: stopped mid-stream while batches are in flight.
    let child = run_command(dir.path(), &config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(500, Duration::from_secs(30));
    terminate(&child);
    let first = wait_with_timeout(child, Duration::from_secs(30));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let after_first = read_lines(&out_path).len();
    assert!(
        after_first < lines.len(),
        "the first run was not interrupted"
    );

    // Second run resumes from the acknowledged offset.
    let child = run_command(dir.path(), &config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(lines.len(), Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    terminate(&child);
    let second = wait_with_timeout(child, Duration::from_secs(30));
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        read_lines(&out_path),
        lines,
        "every line exactly once, in order"
    );
}

#[test]
fn slow_sink_keeps_memory_bounded_by_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        r#"
[sources.gen]
type = "demo"
realtime = false
seed = 1

[sinks.slow]
type = "blackhole"
inputs = ["gen"]
buffer = 2
delay_per_batch = "100ms"
"#,
    )
    .unwrap();
    let child = run_command(dir.path(), &config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(rss_kib(child.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    terminate(&child);
    let output = wait_with_timeout(child, Duration::from_secs(30));
    assert!(output.status.success());
    // Unbounded, the generator would have queued millions of events (GBs).
    assert!(peak > 0 && peak < 64 * 1024, "peak RSS {peak} KiB");
    let summaries = summaries(&output.stderr);
    let produced = counter(&summaries, "gen", "records_out");
    // ~25 batches of 1024 taken in 2.5 s, plus what fits in the buffers.
    assert!(
        produced < 100_000,
        "the source was not slowed: {produced} events"
    );
}

#[test]
fn drop_newest_sink_counts_its_drops_and_never_stalls_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        r#"
[sources.gen]
type = "demo"
realtime = false
count = 200000
seed = 3

[sinks.all]
type = "file"
path = "all.jsonl"
inputs = ["gen"]

[sinks.slow]
type = "blackhole"
inputs = ["gen"]
buffer = 1
when_full = "drop_newest"
delay_per_batch = "200ms"
"#,
    )
    .unwrap();
    let output = run_to_end(dir.path(), &config, Duration::from_secs(60));
    assert_success(&output);
    let summaries = summaries(&output.stderr);
    assert_eq!(read_lines(&dir.path().join("all.jsonl")).len(), 200_000);
    let taken = counter(&summaries, "slow", "records_in");
    let dropped = counter(&summaries, "slow", "dropped");
    assert!(dropped > 0, "nothing dropped");
    assert_eq!(taken + dropped, 200_000);
}

#[test]
fn shutdown_past_the_deadline_exits_non_zero_naming_what_was_left() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        r#"
[pipeline]
shutdown_deadline = "300ms"

[sources.gen]
type = "demo"
realtime = false

[sinks.stuck]
type = "blackhole"
inputs = ["gen"]
delay_per_batch = "1h"
"#,
    )
    .unwrap();
    let child = run_command(dir.path(), &config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    terminate(&child);
    let output = wait_with_timeout(child, Duration::from_secs(20));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("shutdown deadline"), "{stderr}");
    assert!(stderr.contains(r#"sink \"stuck\""#), "{stderr}");
}

#[test]
fn a_component_that_cannot_start_is_named_and_the_exit_is_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        "[sources.in]\ntype = \"file\"\npath = \"missing.jsonl\"\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"in\"]\n",
    )
    .unwrap();
    let output = run_to_end(dir.path(), &config, Duration::from_secs(20));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(r#"source \"in\": cannot read missing.jsonl"#),
        "{stderr}"
    );
}

/// `copytruncate`: the file is cut in place and the writer writes more
/// than had been read before the source looks again (a poll interval of
/// 1 s leaves it the time). Its size alone would not show the cut: the
/// reader would go on from its old offset in the new content.
#[test]
fn a_followed_file_cut_in_place_and_written_past_the_old_offset_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let lines = flat_event_lines(300, 6);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines[..100].join("\n") + "\n").unwrap();
    let child = follow(dir.path(), "in.jsonl", "1s");
    let out = dir.path().join("out.jsonl");
    let wait_for = |n: usize| wait_for_lines(&out, n);
    wait_for(100);
    // Cut in place (same inode) and written past the old size at once.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&input)
        .unwrap();
    std::io::Write::write_all(&mut file, (lines[100..].join("\n") + "\n").as_bytes()).unwrap();
    drop(file);
    wait_for(300);
    terminate(&child);
    let output = wait_with_timeout(child, Duration::from_secs(20));
    assert!(output.status.success());
    assert_eq!(read_lines(&out), lines);
}

/// A followed file stopped and started again resumes at its kept offset;
/// rewritten in place while stopped (same inode, longer than the offset),
/// it is read whole, not from the old offset into the new content.
#[test]
fn a_followed_file_rewritten_in_place_while_stopped_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let lines = flat_event_lines(500, 9);
    let input = dir.path().join("in.jsonl");
    let out = dir.path().join("out.jsonl");
    let run_until = |n: usize| {
        let child = follow(dir.path(), "in.jsonl", "50ms");
        wait_for_lines(&out, n);
        terminate(&child);
        let output = wait_with_timeout(child, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        stderr
    };
    std::fs::write(&input, lines[..100].join("\n") + "\n").unwrap();
    run_until(100);
    // Appended while stopped: only the new lines are read.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    std::io::Write::write_all(&mut file, (lines[100..200].join("\n") + "\n").as_bytes()).unwrap();
    drop(file);
    let stderr = run_until(200);
    assert!(
        stderr.contains("resuming from the acknowledged offset"),
        "{stderr}"
    );
    assert_eq!(read_lines(&out), lines[..200]);
    // Rewritten in place while stopped, past the kept offset.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&input)
        .unwrap();
    std::io::Write::write_all(&mut file, (lines[200..].join("\n") + "\n").as_bytes()).unwrap();
    drop(file);
    let stderr = run_until(500);
    assert!(stderr.contains("reading it from the start"), "{stderr}");
    assert!(!stderr.contains("malformed input"), "{stderr}");
    assert_eq!(read_lines(&out), lines);
}

/// Every line read is out, ignored or malformed: blank lines count as
/// ignored, and a byte order mark before the first line is not part of it.
#[test]
fn blank_lines_are_counted_and_a_byte_order_mark_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let lines = flat_event_lines(3, 8);
    let text = format!("\u{feff}{}\n\n{}\n   \n{}\n", lines[0], lines[1], lines[2]);
    std::fs::write(dir.path().join("in.jsonl"), text).unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        "[sources.in]\ntype = \"file\"\npath = \"in.jsonl\"\n\n[sinks.out]\ntype = \"file\"\npath = \"out.jsonl\"\ninputs = [\"in\"]\n",
    )
    .unwrap();
    let output = run_to_end(dir.path(), &config, Duration::from_secs(30));
    assert_success(&output);
    let summaries = summaries(&output.stderr);
    assert_eq!(counter(&summaries, "in", "records_in"), 5);
    assert_eq!(counter(&summaries, "in", "records_out"), 3);
    assert_eq!(counter(&summaries, "in", "ignored"), 2);
    assert_eq!(counter(&summaries, "in", "malformed"), 0);
    assert_eq!(read_lines(&dir.path().join("out.jsonl")).len(), 3);
}

/// Followed, like `tail -F`: a file its writer has not made yet is waited
/// for, not a reason to stop.
#[test]
fn a_followed_file_that_does_not_exist_yet_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let lines = flat_event_lines(50, 7);
    let child = follow(dir.path(), "later.jsonl", "50ms");
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(dir.path().join("later.jsonl"), lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let start = Instant::now();
    while read_lines(&out).len() < lines.len() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    terminate(&child);
    let output = wait_with_timeout(child, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not exist yet; waiting for it"),
        "{stderr}"
    );
    assert_eq!(read_lines(&out), lines);
}

#[test]
fn followed_file_is_read_across_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let lines = flat_event_lines(300, 5);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines[..100].join("\n") + "\n").unwrap();
    let child = follow(dir.path(), "in.jsonl", "20ms");
    let out = dir.path().join("out.jsonl");
    let wait_for = |n: usize| wait_for_lines(&out, n);
    wait_for(100);
    // Appended, then rotated away with a new file in its place.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    std::io::Write::write_all(&mut file, (lines[100..200].join("\n") + "\n").as_bytes()).unwrap();
    drop(file);
    wait_for(200);
    std::fs::rename(&input, dir.path().join("in.jsonl.1")).unwrap();
    std::fs::write(&input, lines[200..].join("\n") + "\n").unwrap();
    wait_for(300);
    terminate(&child);
    let output = wait_with_timeout(child, Duration::from_secs(20));
    assert!(output.status.success());
    assert_eq!(read_lines(&out), lines);
}
