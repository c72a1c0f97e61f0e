//! The command line: validate, plugins, generate, stdin.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Writes `dir/p.toml`: `head` (tables before the pipeline's, or empty),
/// then stdin → blackhole; returns its path.
fn stdin_to_blackhole(dir: &std::path::Path, head: &str) -> std::path::PathBuf {
    let config = dir.join("p.toml");
    std::fs::write(
        &config,
        format!("{head}[sources.in]\ntype = \"stdin\"\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"in\"]\n"),
    )
    .unwrap();
    config
}

#[test]
fn validate_prints_the_topology_and_exits_zero() {
    let output = Command::new(binary())
        .args([
            "validate",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/pipeline.toml"),
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("source    demo"), "{stdout}");
    assert!(stdout.contains("in=[demo]"), "{stdout}");
}

#[test]
fn validate_reports_errors_with_positions_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[sources.in]\ntype = \"dmeo\"\n").unwrap();
    let output = Command::new(binary())
        .arg("validate")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml:2:8: error: source \"in\": unknown source type \"dmeo\""),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean \"demo\"?"), "{stderr}");
}

#[test]
fn plugins_lists_every_plugin_with_its_description() {
    let output = Command::new(binary()).arg("plugins").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    for name in [
        "demo",
        "file",
        "stdin",
        "passthrough",
        "stage_failures",
        "console",
        "blackhole",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name)),
            "{name} missing:\n{stdout}"
        );
    }
}

#[test]
fn plugins_output_ends_with_a_newline() {
    let output = Command::new(binary()).arg("plugins").output().unwrap();
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.ends_with('\n'), "{stdout:?}");
}

#[test]
fn generated_envelopes_piped_into_stdin_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let generated = Command::new(binary())
        .args([
            "generate", "-n", "2500", "--form", "envelope", "--seed", "9",
        ])
        .output()
        .unwrap();
    assert!(generated.status.success());
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        "[sources.in]\ntype = \"stdin\"\n\n[sinks.out]\ntype = \"file\"\npath = \"out.jsonl\"\ninputs = [\"in\"]\n",
    )
    .unwrap();
    let mut child = run_command(dir.path(), &config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&generated.stdout)
        .unwrap();
    let output = wait_with_timeout(child, Duration::from_secs(30));
    assert!(output.status.success());
    let out = read_lines(&dir.path().join("out.jsonl"));
    assert_eq!(out.len(), 2500);
    // Envelopes come out in the flat form with their message ids.
    let first_in: serde_json::Value =
        serde_json::from_slice(generated.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    let first_out: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
    assert_eq!(first_out["id"], first_in["msg"]["message_id"]);
    assert_eq!(first_out["type"], "workflow.created");
}

#[test]
fn generate_expect_reports_counts_that_add_up() {
    let output = Command::new(binary())
        .args(["generate", "-n", "20000", "--expect", "-o", "/dev/null"])
        .output()
        .unwrap();
    let expect: serde_json::Value = serde_json::from_slice(&output.stderr).unwrap();
    let n = |k: &str| expect[k].as_u64().unwrap();
    assert_eq!(
        n("total_workflows"),
        n("running_workflows")
            + n("paused_workflows")
            + n("completed_workflows")
            + n("failed_workflows")
            + n("cancelled_workflows")
    );
    assert_eq!(n("events"), 20000);
}

#[test]
fn text_logs_carry_no_colour_codes_when_not_at_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let config = stdin_to_blackhole(dir.path(), "");
    // Text logs (the default format), to a pipe.
    let output = Command::new(binary())
        .current_dir(dir.path())
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a pipe: {stderr:?}"
    );
}

/// Standard input left open (an interactive run): SIGTERM stops the
/// pipeline, and the process exits though a read of stdin is still waiting.
#[test]
fn sigterm_ends_a_pipeline_reading_a_stdin_that_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = stdin_to_blackhole(dir.path(), "");
    let mut child = Command::new(binary())
        .current_dir(dir.path())
        .args(["run", "-c"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Held open until the end: nothing ever closes it.
    let _stdin = child.stdin.take();
    std::thread::sleep(Duration::from_secs(1));
    terminate(&child);
    let output = wait_with_timeout(child, Duration::from_secs(15));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("pipeline stopped cleanly"), "{stderr}");
}

/// A pipeline whose state lives elsewhere may run from a data directory it
/// cannot create (here: below a file): it runs, and says that a reset on
/// this machine cannot see it.
#[test]
fn a_data_dir_that_cannot_be_locked_does_not_stop_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    let config = stdin_to_blackhole(dir.path(), "[pipeline]\ndata_dir = \"not-a-dir/data\"\n\n");
    let output = Command::new(binary())
        .current_dir(dir.path())
        .args(["run", "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot tell that this pipeline runs"),
        "{stderr}"
    );
}

#[test]
fn generate_refuses_options_out_of_range_or_in_conflict() {
    let cases: [(&[&str], &str); 5] = [
        (&["--duplicates", "2"], "--duplicates"),
        (&["--malformed=-1"], "--malformed"),
        (&["--rate", "0"], "--rate"),
        (&["--in-flight", "0"], "--in-flight"),
        (
            &["-o", "/dev/null", "--redis-url", "redis://127.0.0.1:1"],
            "cannot be used with",
        ),
    ];
    for (args, named) in cases {
        let output = Command::new(binary())
            .args(["generate", "-n", "10"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?} wrote events");
    }
}

#[test]
fn test_rules_passes_the_default_rules_tests() {
    let output = Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "test-rules",
            "examples/rules/default-rules.test.toml",
            "-c",
            "pipeline.toml",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ok: 8 steps, 4 rules"), "{stdout}");
}

#[test]
fn test_rules_prints_a_failing_step_with_its_line_and_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.toml");
    std::fs::write(
        &file,
        r#"[[rules]]
name = "errors"
severity = "critical"
condition = { metric = "overview.error_rate_percent", operator = ">", value = 10, duration_ms = 60000 }

[[steps]]
at = "0s"
values = { "overview.error_rate_percent" = 20 }
notices = []

[[steps]]
at = "30s"
values = { "overview.error_rate_percent" = 20 }
notices = ["triggered errors"]
"#,
    )
    .unwrap();
    let output = Command::new(binary())
        .arg("test-rules")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("t.toml:11: step 1 (at 30s): notices"),
        "{stdout}"
    );
    assert!(
        stdout.contains("expected: [\"triggered errors\"]") && stdout.contains("got:      []"),
        "{stdout}"
    );
}

/// The test file's rules are checked as `validate` checks a config's, every
/// problem at once with its line, before any step runs; so are steps going
/// back in time. Channels are checked only against a config's sinks.
#[test]
fn test_rules_reports_every_problem_of_its_rules_and_steps_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.toml");
    let rule = |name: &str, extra: &str| {
        format!(
            "[[rules]]\nname = \"{name}\"\nseverity = \"warning\"\nchannels = [\"pager\"]\ncondition = {{ metric = \"overview.error_rate_percent\", operator = \">\", value = 10 }}\n{extra}\n"
        )
    };
    let text = [
        rule("Bad", "message = \"{{valu}}\""),
        rule("Bad", "runbook_url = \"ftp://runbooks\""),
        rule("   ", ""),
        "[[steps]]\nat = \"5m\"\n\n[[steps]]\nat = \"1m\"\nnotices = []\n".into(),
    ]
    .concat();
    std::fs::write(&file, &text).unwrap();
    let output = Command::new(binary())
        .arg("test-rules")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "t.toml:1: rules[0].message: `{{valu}}` is not a placeholder",
        "t.toml:7: rules[1].runbook_url: `ftp://runbooks` is not an http:// or https:// address",
        "t.toml:7: rules[1].name: another rule is called `Bad`",
        "t.toml:13: rules[2].name: must not be blank",
        "t.toml:22: steps[1].at: 1m is before the step above (5m)",
        "5 problem(s) in",
    ] {
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
    assert!(
        !stderr.contains("pager"),
        "no config: channels unchecked\n{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "", "no step ran");
}

/// Whether a process may use transparent huge pages (its `THP_enabled`
/// status line, Linux 5.0 and later).
#[cfg(target_os = "linux")]
fn thp_enabled(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
    Some(line.split_whitespace().nth(1)? == "1")
}

#[cfg(target_os = "linux")]
#[test]
fn run_turns_transparent_huge_pages_off_unless_mimalloc_allow_thp_is_set() {
    use std::io::BufRead;
    // The setting is inherited: only a test process that may use huge pages
    // itself can tell "turned off" from "was never on".
    if thp_enabled(std::process::id()) != Some(true) {
        eprintln!("skipped: this process may not use transparent huge pages");
        return;
    }
    for (allow, expected) in [(None, false), (Some("1"), true)] {
        let dir = tempfile::tempdir().unwrap();
        let config = stdin_to_blackhole(dir.path(), "");
        let mut command = run_command(dir.path(), &config);
        command.env_remove("MIMALLOC_ALLOW_THP");
        if let Some(value) = allow {
            command.env("MIMALLOC_ALLOW_THP", value);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read once the pipeline runs, long after `main` began.
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let started = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("pipeline started"));
        let seen = thp_enabled(child.id());
        // Its last logs still need a reader.
        let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
        drop(child.stdin.take());
        let output = wait_with_timeout(child, Duration::from_secs(30));
        drain.join().unwrap();
        assert!(
            started && output.status.success(),
            "MIMALLOC_ALLOW_THP={allow:?}"
        );
        assert_eq!(seen, Some(expected), "MIMALLOC_ALLOW_THP={allow:?}");
    }
}

/// A listing whose reader has gone (`flowpulse plugins | head -1`, the
/// reader closed before it prints) ends quietly, as Unix tools do, not
/// with a panic about the broken pipe.
#[test]
fn a_closed_stdout_ends_a_listing_quietly() {
    let mut child = Command::new(binary())
        .arg("plugins")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the process has started printing.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A processor whose state is kept per Kafka partition cannot also read a
/// source whose records belong to no partition: the run refuses to start,
/// naming both (a broker need not exist; nothing connects).
#[test]
fn a_partitioned_processor_that_also_reads_an_unpartitioned_source_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mixed.toml");
    std::fs::write(
        &config,
        r#"
[pipeline]
name = "mixed"
data_dir = "data"

[sources.log]
type = "kafka"
brokers = "127.0.0.1:1"
topic = "events"

[sources.demo]
type = "demo"
realtime = false
count = 10

[processors.metrics]
type = "aggregate"
inputs = ["log", "demo"]

[sinks.out]
type = "blackhole"
inputs = ["metrics"]
"#,
    )
    .unwrap();
    let output = Command::new(binary())
        .current_dir(dir.path())
        .args(["run", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("processor \"metrics\"") && stderr.contains("cannot also read demo"),
        "{stderr}"
    );
}

/// A component that fails stops the pipeline with exit 1, and every
/// component's counters are still logged: after a failure they matter most.
#[test]
fn a_failed_pipeline_still_logs_every_components_summary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a-directory")).unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.bad]\ntype = \"file\"\nfollow = true\npath = \"{}\"\n\n[sources.demo]\ntype = \"demo\"\nrate = 100\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"bad\", \"demo\"]\n",
            dir.path().join("a-directory").display()
        ),
    )
    .unwrap();
    let output = run_to_end(dir.path(), &config, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("a-directory: Is a directory"), "{stderr}");
    let summaries = stderr.lines().filter(|l| l.contains("\"summary\""));
    let components: Vec<&str> = summaries
        .filter_map(|l| l.split("\"component\":\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(components, ["bad", "demo", "out"], "{stderr}");
}

/// An error's cause is said once, even when the error prints it itself.
#[test]
fn an_unreachable_redis_is_said_once() {
    let port = common::redis_helpers::free_port();
    let output = Command::new(binary())
        .args(["generate", "-n", "1", "--redis-url"])
        .arg(format!("redis://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: cannot connect to"), "{stderr}");
    assert_eq!(stderr.matches("refused").count(), 1, "{stderr}");
}

/// `migrate` makes a store's database and applies its migrations once: run
/// again, it says it is up to date.
#[test]
fn migrate_applies_the_migrations_once_and_then_says_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        format!(
            "[stores.main]\nurl = \"sqlite://{}\"\n\n[sources.in]\ntype = \"demo\"\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"in\"]\n",
            dir.path().join("flowpulse.db").display()
        ),
    )
    .unwrap();
    let migrate = || {
        let output = Command::new(binary())
            .args(["migrate", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        assert_success(&output);
        String::from_utf8(output.stdout).unwrap()
    };
    let first = migrate();
    assert!(first.contains("store \"main\""), "{first}");
    assert!(first.contains(": applied "), "{first}");
    assert!(dir.path().join("flowpulse.db").exists());
    let again = migrate();
    assert!(again.contains(": up to date ("), "{again}");
}

/// `state` on `config`, run from `dir`, with `extra` arguments.
fn state_in(
    dir: &std::path::Path,
    config: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    Command::new(binary())
        .arg("state")
        .args(extra)
        .arg("-c")
        .arg(config)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// A source whose server cannot be reached cannot say whether an instance
/// reads it, and that instance would write its state straight back: `state
/// reset` refuses, naming the source and why, and deletes nothing, unless
/// forced. The checkpoint is made by a run reading a file; the same pipeline
/// then reads a stream at a port where nothing listens.
#[test]
fn state_reset_refuses_when_a_source_cannot_say_who_reads_it_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, flat_event_lines(200, 3).join("\n") + "\n").unwrap();
    let head = format!(
        "[pipeline]\nname = \"unsure\"\n\n[checkpoint]\nurl = \"file://{}\"\n\n",
        dir.path().join("store").display()
    );
    let tail = "[processors.metrics]\ntype = \"aggregate\"\ninputs = [\"in\"]\n\n\
                [sinks.out]\ntype = \"blackhole\"\ninputs = [\"metrics\"]\n";
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        format!(
            "{head}[sources.in]\ntype = \"file\"\npath = \"{}\"\n\n{tail}",
            events.display()
        ),
    )
    .unwrap();
    assert_success(&run_to_end(dir.path(), &config, Duration::from_secs(60)));
    std::fs::write(
        &config,
        format!(
            "{head}[sources.in]\ntype = \"redis_stream\"\nurl = \"redis://127.0.0.1:1\"\nstream = \"events\"\n\n{tail}"
        ),
    )
    .unwrap();
    let shown = |dir: &std::path::Path| {
        String::from_utf8_lossy(&state_in(dir, &config, &["show"]).stdout).into_owned()
    };
    assert!(
        shown(dir.path()).contains("200 events folded"),
        "{}",
        shown(dir.path())
    );

    let refused = state_in(dir.path(), &config, &["reset"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing deleted"), "{stderr}");
    assert!(
        stderr.contains("cannot tell whether a pipeline is reading"),
        "{stderr}"
    );
    assert!(stderr.contains("source \"in\""), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert!(shown(dir.path()).contains("200 events folded"));

    assert_success(&state_in(dir.path(), &config, &["reset", "--force"]));
    assert!(
        shown(dir.path()).contains("no checkpoint"),
        "{}",
        shown(dir.path())
    );

    // The same unreachable stream feeding no stateful processor has no
    // reader that would write a checkpoint back: it is not asked.
    std::fs::write(
        &config,
        format!(
            "{head}[sources.in]\ntype = \"file\"\npath = \"{}\"\n\n\
             [sources.other]\ntype = \"redis_stream\"\nurl = \"redis://127.0.0.1:1\"\nstream = \"events\"\n\n\
             [sinks.drop]\ntype = \"blackhole\"\ninputs = [\"other\"]\n\n{tail}",
            events.display()
        ),
    )
    .unwrap();
    assert_success(&state_in(dir.path(), &config, &["reset"]));
}
