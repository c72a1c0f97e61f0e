//! Exactness when the process dies mid-stream: SIGKILL during a catch-up
//! whose checkpoint intervals span more event time than the dedup window,
//! a consumer of another name taking over a dead one's pending entries, a
//! second instance waiting for the reader lease, and the same with a file.
//!
//! The dedup window is 1 s of event time while the generator writes 1,000
//! events per second of event time, and a checkpoint interval (200 ms) of
//! catch-up reads thousands of entries: entries a checkpoint folded but the
//! source had not yet acknowledged come back far outside the window, so only
//! positions can recognise them.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::redis_helpers::*;
use common::*;

/// Aggregate settings that make the dedup window useless for redelivery.
const SMALL_WINDOW: &str = "max_out_of_order = \"1s\"\ndedup_window = \"1s\"";

fn log_of(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// `entries-read` of group `flowpulse` (XINFO GROUPS, Redis 7).
fn entries_read(conn: &mut redis::Connection, stream: &str) -> u64 {
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query(conn)
        .unwrap_or_default();
    groups
        .iter()
        .find(|g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == b"flowpulse"))
        .and_then(|g| match g.get("entries-read") {
            Some(redis::Value::Int(n)) => Some(*n as u64),
            _ => None,
        })
        .unwrap_or(0)
}

/// The position `flowpulse state show` reports for the checkpoint, if any.
fn checkpoint_position(dir: &Path, config: &Path) -> Option<String> {
    let output = Command::new(binary())
        .args(["state", "show", "-c"])
        .arg(config)
        .current_dir(dir)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    let at = shown.find(" at ")?;
    let rest = &shown[at + 4..];
    Some(rest.split([';', ',']).next()?.trim().to_owned())
}

/// A stream id or byte offset as a number that orders like it.
fn position_value(position: &str) -> u128 {
    match position.split_once('-') {
        Some((ms, seq)) => {
            (ms.parse::<u128>().unwrap_or(0) << 64) | seq.parse::<u128>().unwrap_or(0)
        }
        None => position.parse().unwrap_or(0),
    }
}

/// Waits until `ready()` holds, failing after `limit` with `what`. Checks
/// every 50 ms: a check may start a process (`flowpulse state show`), and
/// a hundred a second would starve the pipeline under test on two cores.
fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the pipeline three times while it catches up, at 25, 50 and 75 %
/// of the stream read (after a checkpoint newer than the last kill's), then
/// lets a fourth run finish. ~50k entries: enough that a checkpoint interval
/// of reading spans many dedup windows.
#[test]
fn sigkill_during_catch_up_loses_and_double_counts_nothing() {
    let url = redis_url();
    let prefix = prefix(&url, "catchup");
    let stream = format!("{prefix}:events");
    let expect = publish(
        &url,
        &stream,
        50_000,
        &["--duplicates", "0.01", "--malformed", "0.002"],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(
        dir.path(),
        &url,
        &prefix,
        "batch_size = 250\nlease_ttl = \"2s\"",
        SMALL_WINDOW,
    );
    let mut conn = connection(&url);
    let total: u64 = redis::cmd("XLEN").arg(&stream).query(&mut conn).unwrap();
    let mut last_position = 0u128;
    for quarter in 1..=3u64 {
        let run = format!("run{quarter}");
        let child = spawn_logged(dir.path(), &config, &run);
        wait_until(
            Duration::from_secs(120),
            "a quarter of the stream read",
            || entries_read(&mut conn, &stream) >= total * quarter / 4,
        );
        // A checkpoint of this run must exist before the kill, so that what
        // it folded and had not acknowledged comes back after it.
        wait_until(Duration::from_secs(60), "a new checkpoint", || {
            checkpoint_position(dir.path(), &config)
                .is_some_and(|p| position_value(&p) > last_position)
        });
        kill9(child);
        let position = checkpoint_position(dir.path(), &config).unwrap();
        assert!(position_value(&position) > last_position, "{position}");
        last_position = position_value(&position);
    }
    // However rarely a kill lands between a checkpoint and the XACKs it
    // releases, the group is also rewound to the start, as a restore of an
    // older Redis would: every entry comes again, hours of event time
    // behind, and only positions can tell it was folded.
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&stream)
        .arg("flowpulse")
        .arg("0")
        .query(&mut conn)
        .unwrap();
    let child = spawn_logged(dir.path(), &config, "final");
    let doc = std::panic::catch_unwind(|| {
        wait_for_exact(
            &url,
            &format!("{prefix}:metrics"),
            &expect,
            Duration::from_secs(120),
        )
    });
    let output = stop(child);
    let doc = doc.unwrap_or_else(|_| panic!("{}", log_of(dir.path(), "final")));
    assert_success(&output);
    assert_eq!(doc["anomalies"], 0, "{}", doc["overview"]);
    assert_eq!(pending_count(&mut conn, &stream), 0);
    let summaries = summaries(log_of(dir.path(), "final").as_bytes());
    assert!(
        counter(&summaries, "metrics", "ignored") >= total / 2,
        "{summaries:?}"
    );
}

/// Copies `take` entries of `from`, after the first `skip`, to the end of `to`.
fn copy_entries(conn: &mut redis::Connection, from: &str, to: &str, skip: usize, take: usize) {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(from)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    let mut pipe = redis::pipe();
    for (_, fields) in entries.into_iter().skip(skip).take(take) {
        let cmd = pipe.cmd("XADD").arg(to).arg("*");
        for (field, value) in fields {
            cmd.arg(field).arg(value);
        }
    }
    let _: () = pipe.query(conn).unwrap();
}

fn config_for_consumer(dir: &Path, url: &str, prefix: &str, consumer: &str) -> PathBuf {
    let sub = dir.join(consumer);
    std::fs::create_dir_all(&sub).unwrap();
    config_with(
        &sub,
        url,
        prefix,
        &format!("consumer = \"{consumer}\"\nbatch_size = 200\nlease_ttl = \"2s\""),
        SMALL_WINDOW,
    )
}

/// Consumer `a` dies with entries pending; `b`, another name on the same
/// checkpoint, starts while new entries arrive: `a`'s entries count once.
/// A third instance, `c`, waits for the lease while `b` holds it.
#[test]
fn another_consumer_takes_over_a_dead_ones_pending_entries_and_a_second_instance_waits() {
    let url = redis_url();
    let prefix = prefix(&url, "takeover");
    let stream = format!("{prefix}:events");
    let staging = format!("{prefix}:staging");
    // One seeded workload, published in two parts: its expectation is exact.
    let expect = publish(&url, &staging, 30_000, &["--duplicates", "0.01"]);
    let mut conn = connection(&url);
    copy_entries(&mut conn, &staging, &stream, 0, 20_000);
    let dir = tempfile::tempdir().unwrap();

    let a = config_for_consumer(dir.path(), &url, &prefix, "a");
    let child = spawn_logged(dir.path(), &a, "a");
    wait_until(Duration::from_secs(120), "half of the entries read", || {
        entries_read(&mut conn, &stream) >= 10_000
    });
    wait_until(Duration::from_secs(60), "a checkpoint", || {
        checkpoint_position(dir.path(), &a).is_some()
    });
    kill9(child);
    assert!(
        pending_count(&mut conn, &stream) > 0,
        "a left nothing pending"
    );

    let b = config_for_consumer(dir.path(), &url, &prefix, "b");
    let b_child = spawn_logged(dir.path(), &b, "b");
    copy_entries(&mut conn, &staging, &stream, 20_000, usize::MAX);
    wait_until(Duration::from_secs(30), "b to take the lease", || {
        log_of(dir.path(), "b").contains("holding the reader lease")
    });
    assert!(
        log_of(dir.path(), "b").contains("consumer \\\"a\\\""),
        "b did not wait for a's lease: {}",
        log_of(dir.path(), "b")
    );

    let c = config_for_consumer(dir.path(), &url, &prefix, "c");
    let c_child = spawn_logged(dir.path(), &c, "c");
    wait_until(Duration::from_secs(30), "c to wait for the lease", || {
        log_of(dir.path(), "c").contains("holds this group's lease; waiting")
    });
    let c_output = stop(c_child);
    assert_success(&c_output);
    assert!(!log_of(dir.path(), "c").contains("holding the reader lease"));

    let doc = std::panic::catch_unwind(|| {
        wait_for_exact(
            &url,
            &format!("{prefix}:metrics"),
            &expect,
            Duration::from_secs(120),
        )
    });
    stop(b_child);
    let doc = doc.unwrap_or_else(|_| panic!("{}", log_of(dir.path(), "b")));
    assert_eq!(doc["anomalies"], 0);
    assert_eq!(pending_count(&mut conn, &stream), 0);
    assert!(log_of(dir.path(), "b").contains("took over every entry pending in the group"));
}

/// The last metrics document of the `file` sink.
fn last_document(path: &Path) -> Option<serde_json::Value> {
    let line = read_lines(path).pop()?;
    let value: serde_json::Value = serde_json::from_str(&line).ok()?;
    Some(value["data"].clone())
}

/// Lines per append of [`append_paced`], and the pause after each: ~10,000
/// lines a second, so 50,000 lines take ~5 s to arrive. A file read whole
/// in one go is read before a check could see a quarter of it checkpointed
/// (a debug build reads this one in under a second); arriving at this pace,
/// it is still arriving at every kill, and each restart first catches up on
/// what arrived while it was down. A checkpoint interval (200 ms) of it is
/// still ~2,000 lines, twice the dedup window's event time.
const APPEND_LINES: usize = 500;
const APPEND_PAUSE: Duration = Duration::from_millis(50);

/// Appends `from`'s lines to `to` at a steady pace, on a thread.
fn append_paced(from: &Path, to: &Path) -> std::thread::JoinHandle<()> {
    let text = std::fs::read_to_string(from).unwrap();
    let mut file = std::fs::File::create(to).unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let lines: Vec<&str> = text.lines().collect();
        for chunk in lines.chunks(APPEND_LINES) {
            let mut block = chunk.join("\n");
            block.push('\n');
            file.write_all(block.as_bytes()).unwrap();
            std::thread::sleep(APPEND_PAUSE);
        }
    })
}

/// The same crash during a catch-up, reading a followed file into a file
/// checkpoint store. The file grows while the pipeline reads it (see
/// [`APPEND_LINES`]), so every kill lands while lines are still coming.
#[test]
fn sigkill_while_reading_a_file_loses_and_double_counts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.jsonl");
    let events = dir.path().join("events.jsonl");
    let generated = Command::new(binary())
        .args([
            "generate",
            "-n",
            "50000",
            "--seed",
            "23",
            "--duplicates",
            "0.01",
        ])
        .args(["--in-flight", "300", "--expect", "-o"])
        .arg(&source)
        .output()
        .unwrap();
    assert_success(&generated);
    let expect: serde_json::Value = serde_json::from_slice(&generated.stderr).unwrap();
    let size = std::fs::metadata(&source).unwrap().len() as u128;
    let writer = append_paced(&source, &events);
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
name = "file-crash"
shutdown_deadline = "20s"

[checkpoint]
url = "file://{store}"
interval = "200ms"

[sources.events]
type = "file"
path = "{events}"
follow = true
batch_size = 250

[processors.metrics]
type = "aggregate"
inputs = ["events"]
interval = "300ms"
history = "0s"
{SMALL_WINDOW}

[sinks.out]
type = "file"
path = "metrics.jsonl"
inputs = ["metrics"]
"#,
            store = dir.path().join("store").display(),
            events = events.display(),
        ),
    )
    .unwrap();
    let mut last_position = 0u128;
    for quarter in 1..=3u128 {
        let child = spawn_logged(dir.path(), &config, &format!("run{quarter}"));
        wait_until(
            Duration::from_secs(120),
            "a quarter of the file checkpointed",
            || {
                checkpoint_position(dir.path(), &config).is_some_and(|p| {
                    let at = position_value(&p);
                    at > last_position && at >= size * quarter / 4
                })
            },
        );
        kill9(child);
        last_position = position_value(&checkpoint_position(dir.path(), &config).unwrap());
    }
    writer.join().unwrap();
    let child = spawn_logged(dir.path(), &config, "final");
    let metrics = dir.path().join("metrics.jsonl");
    let matched = std::panic::catch_unwind(|| {
        wait_until(Duration::from_secs(120), "the exact counts", || {
            last_document(&metrics).is_some_and(|doc| matches_expectation(&doc, &expect))
        })
    });
    let output = stop(child);
    if matched.is_err() {
        panic!(
            "counts never matched: {:?}\nexpected {expect}\n{}",
            last_document(&metrics).map(|d| d["overview"].clone()),
            log_of(dir.path(), "final")
        );
    }
    assert_success(&output);
    assert_eq!(last_document(&metrics).unwrap()["anomalies"], 0);
}

/// 5,000 generated events (seed `seed`, 300 workflows in flight, 1,000 a
/// second of event time) in a file of `dir`, and a pipeline named `name`
/// following it into an aggregate with `max_out_of_order` `bound`,
/// checkpointed in a file store every 200 ms, its documents (every 200 ms)
/// in `metrics.jsonl`. Returns the config and `generate --expect`'s counts.
fn followed_file_restart(
    dir: &Path,
    name: &str,
    seed: &str,
    bound: &str,
) -> (PathBuf, serde_json::Value) {
    let events = dir.join("events.jsonl");
    let generated = Command::new(binary())
        .args([
            "generate",
            "-n",
            "5000",
            "--seed",
            seed,
            "--in-flight",
            "300",
        ])
        .args(["--expect", "-o"])
        .arg(&events)
        .output()
        .unwrap();
    assert_success(&generated);
    let expect: serde_json::Value = serde_json::from_slice(&generated.stderr).unwrap();
    let config = dir.join("p.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
name = "{name}"

[checkpoint]
url = "file://{store}"
interval = "200ms"

[sources.events]
type = "file"
path = "{events}"
follow = true

[processors.metrics]
type = "aggregate"
inputs = ["events"]
interval = "200ms"
max_out_of_order = "{bound}"

[sinks.out]
type = "file"
path = "metrics.jsonl"
inputs = ["metrics"]
"#,
            store = dir.join("store").display(),
            events = events.display(),
        ),
    )
    .unwrap();
    (config, expect)
}

/// Events held for reordering when the input went idle are applied as event
/// time moves on by the wall clock, with no batch folded after them. A
/// restart (here after SIGKILL) must not hold them again: every document of
/// the second run shows what the first run's last one showed. 5,000 events
/// at 1,000 a second of event time and a bound of 1 s: ~1,000 of them are
/// held when the last batch is folded.
#[test]
fn a_restart_never_shows_less_than_was_shown_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (config, expect) = followed_file_restart(dir.path(), "idle-restart", "29", "1s");
    let metrics = dir.path().join("metrics.jsonl");
    let child = spawn_logged(dir.path(), &config, "first");
    wait_until(Duration::from_secs(60), "every held event applied", || {
        last_document(&metrics).is_some_and(|doc| matches_expectation(&doc, &expect))
    });
    // Two checkpoint intervals, for the one that holds them.
    std::thread::sleep(Duration::from_millis(600));
    kill9(child);
    let shown = read_lines(&metrics).len();
    let child = spawn_logged(dir.path(), &config, "second");
    wait_until(Duration::from_secs(30), "three documents", || {
        read_lines(&metrics).len() >= shown + 3
    });
    kill9(child);
    for line in &read_lines(&metrics)[shown..] {
        let doc: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            matches_expectation(&doc["data"], &expect),
            "after the restart: {}\nexpected {expect}",
            doc["data"]["overview"]
        );
    }
}

/// A stop asked for (SIGTERM) while workflow events are still held for
/// reordering. The final checkpoint keeps them held, so the last document
/// must not show them applied either: a restart would then show fewer
/// workflows than the run before it, until event time passed them. 5,000
/// events span 5 s of event time and the bound is 3 s: at the stop, right
/// after the last one is folded, the workflows of the last 3 s are held.
/// The restart's first documents (well within 3 s of idle time) show no
/// less than the last one before it; then idle time applies the held
/// events, and the counts are exact, so none was lost on the way.
#[test]
fn a_stop_asked_for_shows_no_more_than_the_restart_shows() {
    let dir = tempfile::tempdir().unwrap();
    let (config, expect) = followed_file_restart(dir.path(), "stop-restart", "31", "3s");
    let expected_tasks = expect["stage_tasks_completed"].as_u64().unwrap()
        + expect["stage_tasks_failed"].as_u64().unwrap();
    let metrics = dir.path().join("metrics.jsonl");
    let child = spawn_logged(dir.path(), &config, "first");
    wait_until(Duration::from_secs(60), "every event folded", || {
        last_document(&metrics).is_some_and(|doc| stage_tasks(&doc) == expected_tasks)
    });
    let stopped = stop(child);
    assert!(stopped.status.success(), "{}", log_of(dir.path(), "first"));
    let before = last_document(&metrics).unwrap();
    assert_eq!(stage_tasks(&before), expected_tasks);
    let held = |doc: &serde_json::Value| {
        expect["total_workflows"].as_u64().unwrap()
            - doc["overview"]["total_workflows"].as_u64().unwrap()
    };
    assert!(
        held(&before) > 0,
        "nothing was held at the stop: {}",
        before["overview"]
    );
    let shown = read_lines(&metrics).len();
    let child = spawn_logged(dir.path(), &config, "second");
    wait_until(Duration::from_secs(30), "three documents", || {
        read_lines(&metrics).len() >= shown + 3
    });
    for line in &read_lines(&metrics)[shown..shown + 3] {
        let doc: serde_json::Value = serde_json::from_str(line).unwrap();
        let after = &doc["data"];
        assert_eq!(stage_tasks(after), expected_tasks);
        // Counts that only grow (idle time goes on applying held events).
        for field in [
            "total_workflows",
            "completed_workflows",
            "failed_workflows",
            "cancelled_workflows",
        ] {
            let count = |doc: &serde_json::Value| doc["overview"][field].as_u64().unwrap();
            assert!(
                count(after) >= count(&before),
                "{field} after the restart: {}, in the last document before it: {}",
                count(after),
                count(&before)
            );
        }
    }
    wait_until(Duration::from_secs(30), "the held events applied", || {
        last_document(&metrics).is_some_and(|doc| matches_expectation(&doc, &expect))
    });
    kill9(child);
}
