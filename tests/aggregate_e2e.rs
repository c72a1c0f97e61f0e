//! `aggregate` end to end through the binary: file → aggregate → file.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn last_document(path: &std::path::Path) -> serde_json::Value {
    let lines = read_lines(path);
    let last = lines.last().expect("no metrics document written");
    let message: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(message["type"], "metrics:update");
    message["data"].clone()
}

fn pipeline(dir: &std::path::Path, input: &str) -> std::path::PathBuf {
    let config = dir.join("p.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[sources.in]
type = "file"
path = "{input}"

[processors.metrics]
type = "aggregate"
inputs = ["in"]
interval = "1s"
history = "0s"

[sinks.out]
type = "file"
path = "metrics.jsonl"
inputs = ["metrics"]
"#
        ),
    )
    .unwrap();
    config
}

#[test]
fn final_document_of_a_known_file_is_the_known_answer() {
    let dir = tempfile::tempdir().unwrap();
    // Two features and a bugfix; one completes (reported before its creation),
    // one fails, one is paused then resumed and still running; a duplicate and
    // a malformed line on the way.
    let lines = [
        r#"{"id":"1","type":"workflow.created","timestamp":"2026-11-27T10:00:00.000Z","workflow_id":"a","workflow_type":"feature"}"#,
        r#"{"id":"3","type":"workflow.stage.completed","timestamp":"2026-11-27T10:00:02.000Z","workflow_id":"a","agent_type":"coder","stage":"impl","duration_ms":2000}"#,
        r#"{"id":"5","type":"workflow.completed","timestamp":"2026-11-27T10:00:04.000Z","workflow_id":"b","workflow_type":"feature","duration_ms":4000}"#,
        r#"{"id":"2","type":"workflow.created","timestamp":"2026-11-27T10:00:01.000Z","workflow_id":"b","workflow_type":"feature"}"#,
        r#"{"id":"4","type":"workflow.stage.failed","timestamp":"2026-11-27T10:00:03.000Z","workflow_id":"a","agent_type":"tester","stage":"test","duration_ms":1000,"error":"boom"}"#,
        r#"{"id":"4","type":"workflow.stage.failed","timestamp":"2026-11-27T10:00:03.000Z","workflow_id":"a","agent_type":"tester","stage":"test","duration_ms":1000,"error":"boom"}"#,
        "not json at all",
        r#"{"id":"6","type":"workflow.failed","timestamp":"2026-11-27T10:00:05.000Z","workflow_id":"a","workflow_type":"feature","duration_ms":5000,"error":"tests failed"}"#,
        r#"{"id":"7","type":"workflow.created","timestamp":"2026-11-27T10:00:06.000Z","workflow_id":"c","workflow_type":"bugfix"}"#,
        r#"{"id":"8","type":"workflow.paused","timestamp":"2026-11-27T10:00:07.000Z","workflow_id":"c"}"#,
        r#"{"id":"9","type":"workflow.resumed","timestamp":"2026-11-27T10:00:08.000Z","workflow_id":"c"}"#,
        r#"{"id":"10","type":"workflow.stage.completed","timestamp":"2026-11-27T10:00:09.000Z","workflow_id":"c","agent_type":"coder","stage":"impl","duration_ms":4000}"#,
    ];
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    let config = pipeline(dir.path(), "in.jsonl");
    let output = run_to_end(dir.path(), &config, Duration::from_secs(30));
    assert_success(&output);
    let doc = last_document(&dir.path().join("metrics.jsonl"));

    let expected_overview = serde_json::json!({
        "total_workflows": 3, "running_workflows": 1, "completed_workflows": 1,
        "failed_workflows": 1, "paused_workflows": 0, "cancelled_workflows": 0,
        "expired_workflows": 0, "avg_completion_time_ms": 4000.0,
        "error_rate_percent": 50.0, "success_rate_percent": 50.0,
        // 2 of 3 stage tasks succeeded in the last 5 minutes.
        "system_health_percent": 200.0 / 3.0
    });
    assert_eq!(doc["overview"], expected_overview);
    assert_eq!(doc["as_of"], "2026-11-27T10:00:09.000Z");
    assert_eq!(doc["throughput_per_minute"], 2);
    assert_eq!(doc["anomalies"], 0);
    let agents: Vec<_> = doc["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["agent_type"].clone(),
                a["total_tasks"].clone(),
                a["failed_tasks"].clone(),
                a["avg_duration_ms"].clone(),
                a["success_rate_percent"].clone(),
                a["last_seen"].clone(),
            )
        })
        .collect();
    assert_eq!(
        agents,
        vec![
            (
                "coder".into(),
                2.into(),
                0.into(),
                3000.0.into(),
                100.0.into(),
                "2026-11-27T10:00:09.000Z".into()
            ),
            (
                "tester".into(),
                1.into(),
                1.into(),
                1000.0.into(),
                0.0.into(),
                "2026-11-27T10:00:03.000Z".into()
            ),
        ]
    );
    assert_eq!(
        doc["workflows_by_type"],
        serde_json::json!([
            {"workflow_type": "bugfix", "total": 1, "completed": 0, "failed": 0, "success_rate_percent": 100.0},
            {"workflow_type": "feature", "total": 2, "completed": 1, "failed": 1, "success_rate_percent": 50.0}
        ])
    );
    // Durations 4000 and 5000: the sketch is within 1% of the exact quantiles.
    let close =
        |v: &serde_json::Value, exact: f64| (v.as_f64().unwrap() - exact).abs() <= exact * 0.01;
    assert!(
        close(&doc["latency_p50_ms"], 4000.0),
        "{}",
        doc["latency_p50_ms"]
    );
    assert!(
        close(&doc["latency_p99_ms"], 4000.0),
        "{}",
        doc["latency_p99_ms"]
    );
    assert!(close(&doc["agents"][0]["p95_duration_ms"], 2000.0));
    assert_eq!(doc["window"]["1m"]["finished"], 2);
    assert_eq!(doc["window"]["1m"]["failed"], 1);
    assert_eq!(doc["window"]["15m"]["error_rate_percent"], 50.0);

    let summaries = summaries(&output.stderr);
    assert_eq!(counter(&summaries, "in", "malformed"), 1);
}

#[test]
fn generated_workload_with_duplicates_and_malformed_lines_gives_the_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let generated = Command::new(binary())
        .args([
            "generate",
            "-n",
            "60000",
            "--seed",
            "21",
            "--in-flight",
            "300",
            "--duplicates",
            "0.05",
            "--malformed",
            "0.01",
            "--expect",
            "-o",
        ])
        .arg(dir.path().join("events.jsonl"))
        .output()
        .unwrap();
    assert!(generated.status.success());
    let expect: serde_json::Value = serde_json::from_slice(&generated.stderr).unwrap();
    let config = pipeline(dir.path(), "events.jsonl");
    let output = run_to_end(dir.path(), &config, Duration::from_secs(60));
    assert_success(&output);
    let doc = last_document(&dir.path().join("metrics.jsonl"));
    assert_matches_expectation(&doc, &expect);
    let summaries = summaries(&output.stderr);
    assert_eq!(
        counter(&summaries, "in", "malformed"),
        expect["malformed"].as_u64().unwrap()
    );
    assert_eq!(
        counter(&summaries, "metrics", "ignored"),
        expect["duplicates"].as_u64().unwrap()
    );
}

#[test]
fn default_pipeline_emits_metrics_with_the_custom_metric() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipeline.toml"))
        .unwrap()
        .replace(
            "rate = 50",
            "rate = 2000\nrealtime = false\ncount = 20000\nseed = 5",
        );
    let config = dir.path().join("p.toml");
    std::fs::write(&config, text).unwrap();
    let output = run_to_end(dir.path(), &config, Duration::from_secs(60));
    assert_success(&output);
    let doc = last_document(&dir.path().join("data/metrics.jsonl"));
    let failures = &doc["custom"]["stage_failures_per_hour"];
    assert!(
        failures.is_object() && !failures.as_object().unwrap().is_empty(),
        "{doc}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("workflows total="), "{stdout}");
}

#[test]
fn checkpointed_state_continues_across_runs_and_state_commands_show_and_clear_it() {
    let dir = tempfile::tempdir().unwrap();
    let generated = Command::new(binary())
        .args([
            "generate",
            "-n",
            "5000",
            "--seed",
            "4",
            "--in-flight",
            "100",
            "--expect",
            "-o",
        ])
        .arg(dir.path().join("events.jsonl"))
        .output()
        .unwrap();
    let expect: serde_json::Value = serde_json::from_slice(&generated.stderr).unwrap();
    let config = pipeline(dir.path(), "events.jsonl");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("[pipeline]\nname = \"cp\"\n\n[checkpoint]\nurl = \"file://{}\"\ninterval = \"100ms\"\n{text}", dir.path().join("state").display())).unwrap();

    // The same input twice: the second run restores the state and skips
    // every event by its position (the file's bytes it has folded), so the
    // counts do not double.
    for run in 0..2 {
        let output = run_to_end(dir.path(), &config, Duration::from_secs(60));
        assert_success(&output);
        let skipped = counter(&summaries(&output.stderr), "metrics", "ignored");
        assert_eq!(skipped, if run == 0 { 0 } else { 5000 }, "run {run}");
        let doc = last_document(&dir.path().join("metrics.jsonl"));
        assert_eq!(
            doc["overview"]["total_workflows"],
            expect["total_workflows"]
        );
        assert_eq!(
            doc["overview"]["completed_workflows"],
            expect["completed_workflows"]
        );
    }

    let state = |action: &str| {
        let output = Command::new(binary())
            .args(["state", action, "-c"])
            .arg(&config)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_success(&output);
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let shown = state("show");
    assert!(
        shown.contains("flowpulse:checkpoint:cp:metrics:0: aggregate state version 4"),
        "{shown}"
    );
    assert!(
        shown.contains("5000 events folded, 0 duplicates dropped"),
        "{shown}"
    );
    // The position folded: the whole file, by its size in bytes.
    let size = std::fs::metadata(dir.path().join("events.jsonl"))
        .unwrap()
        .len();
    assert!(shown.contains(&format!(" at {size};")), "{shown}");
    assert!(state("reset").contains("deleted flowpulse:checkpoint:cp:metrics:0"));
    assert!(state("show").contains("no checkpoint"));
}

#[test]
fn state_show_says_a_checkpoint_of_events_without_positions_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let generated = Command::new(binary())
        .args(["generate", "-n", "300", "--seed", "5"])
        .output()
        .unwrap();
    assert_success(&generated);
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\nname = \"np\"\n\n[checkpoint]\nurl = \"file://{}\"\n\n\
             [sources.in]\ntype = \"stdin\"\n\n\
             [processors.metrics]\ntype = \"aggregate\"\ninputs = [\"in\"]\n\n\
             [sinks.out]\ntype = \"blackhole\"\ninputs = [\"metrics\"]\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut child = run_command(dir.path(), &config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&generated.stdout).unwrap();
    }
    assert!(child.wait().unwrap().success());
    let output = Command::new(binary())
        .args(["state", "show", "-c"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_success(&output);
    let shown = String::from_utf8_lossy(&output.stdout);
    // Standard input has no positions: nothing to do with an old format.
    assert!(
        shown.contains("; no positions; ") && shown.contains(" 300 events folded"),
        "{shown}"
    );
    assert!(!shown.contains("written before"), "{shown}");
    // A sink's secret unset in this shell: `state` never opens a sink.
    let with_secret = dir.path().join("secret.toml");
    let text = std::fs::read_to_string(&config).unwrap()
        + "\n[sinks.live]\ntype = \"websocket\"\ninputs = [\"metrics\"]\naddress = \"127.0.0.1:0\"\ntoken = \"${FLOWPULSE_TEST_UNSET_TOKEN}\"\n";
    std::fs::write(&with_secret, text).unwrap();
    let output = Command::new(binary())
        .args(["state", "show", "-c"])
        .arg(&with_secret)
        .current_dir(dir.path())
        .env_remove("FLOWPULSE_TEST_UNSET_TOKEN")
        .output()
        .unwrap();
    assert_success(&output);
    assert_eq!(String::from_utf8_lossy(&output.stdout), shown);
    let validated = Command::new(binary())
        .args(["validate", "-c"])
        .arg(&with_secret)
        .env_remove("FLOWPULSE_TEST_UNSET_TOKEN")
        .output()
        .unwrap();
    assert!(!validated.status.success());
    assert!(String::from_utf8_lossy(&validated.stderr)
        .contains("FLOWPULSE_TEST_UNSET_TOKEN is not set"));
}

#[test]
fn checkpoint_of_other_settings_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        flat_event_lines(100, 1).join("\n") + "\n",
    )
    .unwrap();
    let config = pipeline(dir.path(), "in.jsonl");
    let text = std::fs::read_to_string(&config).unwrap();
    let with_checkpoint = format!(
        "[checkpoint]\nurl = \"file://{}\"\n{text}",
        dir.path().join("state").display()
    );
    std::fs::write(&config, &with_checkpoint).unwrap();
    assert!(run_to_end(dir.path(), &config, Duration::from_secs(30))
        .status
        .success());
    std::fs::write(
        &config,
        with_checkpoint.replace("interval = \"1s\"", "interval = \"2s\""),
    )
    .unwrap();
    let output = run_to_end(dir.path(), &config, Duration::from_secs(30));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("it was written with other settings"),
        "{stderr}"
    );
    assert!(stderr.contains("flowpulse state reset"), "{stderr}");
    // Reset clears it whatever settings wrote it, and the next run starts.
    let reset = Command::new(binary())
        .args(["state", "reset", "-c"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    assert!(run_to_end(dir.path(), &config, Duration::from_secs(30))
        .status
        .success());
}

/// A pipeline running from the same data directory would write its state
/// straight back after a reset: `state reset` refuses while it runs and
/// deletes nothing, and resets once it has stopped.
#[test]
fn state_reset_refuses_while_the_pipeline_runs_on_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        r#"
[checkpoint]
interval = "200ms"

[sources.demo]
type = "demo"
rate = 200

[processors.metrics]
type = "aggregate"
inputs = ["demo"]

[sinks.out]
type = "blackhole"
inputs = ["metrics"]
"#,
    )
    .unwrap();
    let state = |action: &str| {
        Command::new(binary())
            .args(["state", action, "-c"])
            .arg(&config)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let child = spawn_logged(dir.path(), &config, "run");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&state("show").stdout).contains("events folded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint written"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = state("reset");
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    terminate(&child);
    let stopped = wait_with_timeout(child, Duration::from_secs(30));
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("nothing deleted: a pipeline is running from data"),
        "{stderr}"
    );
    assert_success(&stopped);
    assert!(String::from_utf8_lossy(&state("show").stdout).contains("events folded"));
    assert_success(&state("reset"));
    assert!(String::from_utf8_lossy(&state("show").stdout).contains("no checkpoint"));
}
