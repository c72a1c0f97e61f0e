//! Every kind of config problem is reported with its message and position,
//! all together, before anything starts.

mod common;

use std::process::Command;

use flowpulse_core::config::{Diagnostic, Level, PipelineConfig, UnsetVariables};

fn env(name: &str) -> Option<String> {
    match name {
        "SECRET_TOKEN" => Some("hunter2-very-secret".into()),
        "BATCH" => Some("many".into()),
        _ => None,
    }
}

fn diagnostics(text: &str) -> Vec<Diagnostic> {
    flowpulse_plugins::link();
    match PipelineConfig::parse("p.toml", text, env) {
        Ok(config) => config.warnings,
        Err(e) => e.diagnostics,
    }
}

fn only_error(text: &str) -> Diagnostic {
    let errors: Vec<_> = diagnostics(text)
        .into_iter()
        .filter(|d| d.level == Level::Error)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.into_iter().next().unwrap()
}

fn at(d: &Diagnostic) -> (usize, usize) {
    (d.line, d.column)
}

const SINK: &str = "\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"in\"]\n";

#[test]
fn unknown_type_lists_known_types_and_the_nearest() {
    let d = only_error(&format!("[sources.in]\ntype = \"fiel\"\n{SINK}"));
    assert_eq!(at(&d), (2, 8));
    assert!(d.message.contains("unknown source type \"fiel\""), "{d}");
    let help = d.help.unwrap();
    assert!(help.contains("did you mean \"file\"?"), "{help}");
    assert!(
        help.contains("known source types: demo, file, kafka, redis_stream, stdin"),
        "{help}"
    );
}

#[test]
fn type_of_another_role_says_where_it_belongs() {
    let d = only_error(&format!("[sources.in]\ntype = \"console\"\n{SINK}"));
    assert!(d.help.unwrap().contains("\"console\" is a sink"));
}

#[test]
fn unknown_key_is_reported_at_the_key() {
    let d = only_error(&format!(
        "[sources.in]\ntype = \"file\"\npath = \"x\"\nfolow = true\n{SINK}"
    ));
    assert_eq!(at(&d), (4, 1));
    assert!(d.message.contains("unknown field `folow`"), "{d}");
    assert!(d.message.contains("`follow`"), "{d}");
}

#[test]
fn missing_plugin_key_names_it() {
    let d = only_error(&format!("[sources.in]\ntype = \"file\"\n{SINK}"));
    assert!(d.message.contains("missing field `path`"), "{d}");
    assert_eq!(d.line, 1);
}

#[test]
fn missing_type_is_reported_at_the_component() {
    let d = only_error(&format!("[sources.in]\nrate = 5\n{SINK}"));
    assert_eq!(at(&d), (1, 10));
    assert!(
        d.message.contains("source \"in\": missing key `type`"),
        "{d}"
    );
}

#[test]
fn wrong_value_type_is_reported_at_the_value() {
    let d = only_error(&format!(
        "[sources.in]\ntype = \"demo\"\nrate = \"fast\"\n{SINK}"
    ));
    assert_eq!(at(&d), (3, 8));
    assert!(d.message.contains("invalid type: string \"fast\""), "{d}");
}

#[test]
fn every_problem_of_one_table_is_reported_at_once() {
    let errors: Vec<Diagnostic> = diagnostics(&format!(
        "[pipeline]\nshutdown_deadline = \"5 parsecs\"\nfavourite = 1\n\n\
         [sources.in]\ntype = \"demo\"\nrate = \"fast\"\nsed = 3\nworkflows_in_flight = -2\n{SINK}"
    ))
    .into_iter()
    .filter(|d| d.level == Level::Error)
    .collect();
    let found: Vec<(usize, &str)> = errors
        .iter()
        .map(|d| (d.line, d.message.as_str()))
        .collect();
    let has = |line: usize, text: &str| {
        assert!(
            found.iter().any(|(l, m)| *l == line && m.contains(text)),
            "no `{text}` on line {line}: {errors:#?}"
        )
    };
    has(2, "5 parsecs");
    has(3, "unknown field `favourite`");
    has(7, "invalid type: string \"fast\"");
    has(8, "unknown field `sed`");
    has(9, "invalid value: integer `-2`");
    assert_eq!(errors.len(), 5, "{errors:#?}");
    // In the order of the file.
    let lines: Vec<usize> = errors.iter().map(|d| d.line).collect();
    assert_eq!(lines, [2, 3, 7, 8, 9]);
}

#[test]
fn a_bad_buffer_or_when_full_names_its_component() {
    let errors: Vec<Diagnostic> = diagnostics(
        "[sources.in]\ntype = \"demo\"\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"in\"]\nbuffer = \"big\"\nwhen_full = \"explode\"\n",
    )
    .into_iter()
    .filter(|d| d.level == Level::Error)
    .collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    for (d, line) in errors.iter().zip([7, 8]) {
        assert_eq!(d.line, line, "{d}");
        assert!(d.message.starts_with("sink \"out\": "), "{d}");
    }
}

#[test]
fn a_required_key_with_a_bad_value_is_reported_once_not_also_as_missing() {
    let errors: Vec<Diagnostic> = diagnostics(&format!(
        "[sources.in]\ntype = \"file\"\npath = 5\nfolow = true\n{SINK}"
    ))
    .into_iter()
    .filter(|d| d.level == Level::Error)
    .collect();
    assert!(
        errors
            .iter()
            .any(|d| d.line == 3 && d.message.contains("invalid type")),
        "{errors:#?}"
    );
    assert!(
        !errors.iter().any(|d| d.message.contains("missing field")),
        "{errors:#?}"
    );
}

#[test]
fn dangling_input_suggests_the_nearest_name() {
    let d = only_error("[sources.events]\ntype = \"demo\"\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"evnts\"]\n");
    assert_eq!(at(&d), (6, 11));
    assert!(d.message.contains("input \"evnts\" does not exist"), "{d}");
    assert_eq!(d.help.as_deref(), Some("did you mean \"events\"?"));
}

#[test]
fn cycle_is_reported_with_its_path() {
    let text = "[sources.in]\ntype = \"demo\"\n\n[processors.a]\ntype = \"passthrough\"\ninputs = [\"in\", \"b\"]\n\n[processors.b]\ntype = \"passthrough\"\ninputs = [\"a\"]\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"b\"]\n";
    let d = only_error(text);
    assert!(
        d.message.contains("cycle in the pipeline: a → b → a") || d.message.contains("b → a → b"),
        "{d}"
    );
    assert_eq!(d.line, 4);
}

#[test]
fn sink_without_inputs_is_an_error() {
    let d = only_error(
        "[sources.in]\ntype = \"demo\"\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = []\n",
    );
    assert_eq!(at(&d), (6, 10));
    assert!(d.message.contains("sink \"out\" has no inputs"), "{d}");
    let d = only_error("[sources.in]\ntype = \"demo\"\n\n[sinks.out]\ntype = \"blackhole\"\n");
    assert!(d.message.contains("missing key `inputs`"), "{d}");
}

#[test]
fn input_of_a_kind_the_consumer_cannot_take_is_an_error() {
    let text = "[sources.in]\ntype = \"demo\"\n\n[processors.failures]\ntype = \"stage_failures\"\ninputs = [\"in\"]\n\n[processors.again]\ntype = \"stage_failures\"\ninputs = [\"failures\"]\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"again\"]\n";
    let d = only_error(text);
    assert_eq!(at(&d), (10, 11));
    assert!(d.message.contains("processor \"again\" takes events but its input processor \"failures\" emits custom metrics"), "{d}");
}

#[test]
fn component_nobody_consumes_is_a_warning() {
    let text = format!("[sources.in]\ntype = \"demo\"\n\n[sources.spare]\ntype = \"demo\"\n{SINK}");
    let all = diagnostics(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].level, Level::Warning);
    assert_eq!(at(&all[0]), (4, 10));
    assert!(all[0]
        .message
        .contains("source \"spare\" is not an input of any component"));
}

#[test]
fn missing_variable_is_named_at_its_position() {
    let d = only_error(&format!(
        "[sources.in]\ntype = \"file\"\npath = \"${{EVENTS_FILE}}\"\n{SINK}"
    ));
    assert_eq!(at(&d), (3, 9));
    assert!(
        d.message
            .contains("environment variable EVENTS_FILE is not set"),
        "{d}"
    );
}

#[test]
fn an_unset_variable_is_the_only_error_of_its_line() {
    // Empty, the URL would not parse either; saying so would point away
    // from the unset variable. An error of another line still shows.
    let all: Vec<_> = diagnostics(&format!(
        "[sources.in]\ntype = \"demo\"\nrate = 0\n\n[sources.more]\ntype = \"redis_stream\"\nurl = \"${{STREAM_URL}}\"\nstream = \"s\"\n{SINK}"
    ))
    .into_iter()
    .filter(|d| d.level == Level::Error)
    .collect();
    let lines: Vec<usize> = all.iter().map(|d| d.line).collect();
    assert_eq!(lines, [3, 7], "{all:#?}");
    assert!(all[1].message.contains("STREAM_URL is not set"), "{all:#?}");
}

/// `flowpulse state` opens no sink: a sink's secret may be unset in its
/// shell. Anywhere else, and for every other command, it stays an error.
#[test]
fn unset_variables_in_sinks_can_be_allowed_and_nowhere_else() {
    flowpulse_plugins::link();
    let sinks = "\n[sinks.live]\ntype = \"websocket\"\ninputs = [\"in\"]\naddress = \"127.0.0.1:0\"\ntoken = \"${API_TOKEN}\"\n\n[ sinks . \"out\" ]\ntype = \"blackhole\"\ninputs = [\"in\"]\n";
    let text = format!("[sources.in]\ntype = \"demo\"\n{sinks}");
    let allowed = PipelineConfig::parse_with("p.toml", &text, env, UnsetVariables::AllowedInSinks);
    let config = allowed.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.components.len(), 3);
    let strict = PipelineConfig::parse("p.toml", &text, env).unwrap_err();
    let lines: Vec<usize> = strict.diagnostics.iter().map(|d| d.line).collect();
    assert_eq!(lines, [8], "{strict}");
    assert!(
        strict.to_string().contains("API_TOKEN is not set"),
        "{strict}"
    );
    // In a source (or anything but a sink) it is an error either way.
    let text = format!(
        "[sources.in]\ntype = \"redis_stream\"\nurl = \"${{STREAM_URL}}\"\nstream = \"s\"\n{sinks}"
    );
    let e = PipelineConfig::parse_with("p.toml", &text, env, UnsetVariables::AllowedInSinks)
        .unwrap_err();
    let lines: Vec<usize> = e.diagnostics.iter().map(|d| d.line).collect();
    assert_eq!(lines, [3], "{e}");
    assert!(e.to_string().contains("STREAM_URL is not set"), "{e}");
    // A bare reference left empty breaks the document: the error shows.
    let bare = "[sources.in]\ntype = \"demo\"\n\n[sinks.live]\ntype = \"websocket\"\ninputs = [\"in\"]\nmax_clients = ${MAX_CLIENTS}\n";
    let e = PipelineConfig::parse_with("p.toml", bare, env, UnsetVariables::AllowedInSinks)
        .unwrap_err();
    assert!(e.to_string().contains("MAX_CLIENTS is not set"), "{e}");
}

/// A component with a wrongly typed key still has its other keys checked:
/// every problem shows at once, not the range checks only after the type
/// errors are fixed.
#[test]
fn a_components_value_checks_run_beside_its_type_errors() {
    let all: Vec<Diagnostic> = diagnostics(
        "[sources.in]\ntype = \"demo\"\n\n[processors.m]\ntype = \"aggregate\"\ninputs = [\"in\"]\ninterval = \"0s\"\nhistory = \"abc\"\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"m\"]\n",
    )
    .into_iter()
    .filter(|d| d.level == Level::Error)
    .collect();
    let lines: Vec<usize> = all.iter().map(|d| d.line).collect();
    assert_eq!(lines, [7, 8], "{all:#?}");
    assert!(all[0].message.contains("`interval`"), "{all:#?}");
    assert!(all[1].message.contains("abc"), "{all:#?}");
}

/// Rust's type names do not reach the user: a count is a non-negative
/// integer, not a `usize`.
#[test]
fn number_errors_say_what_is_expected_in_plain_words() {
    let d = only_error(&format!(
        "[sources.in]\ntype = \"file\"\npath = \"x\"\nbatch_size = -1\n{SINK}"
    ));
    assert!(d.message.contains("expected a non-negative integer"), "{d}");
    assert!(!d.message.contains("usize"), "{d}");
}

#[test]
fn a_bare_variable_that_does_not_parse_is_named_without_its_value() {
    // `many` is not a TOML value: the document itself does not parse.
    let d = only_error(&format!(
        "[sources.in]\ntype = \"demo\"\nrate = ${{BATCH}}\n{SINK}"
    ));
    assert_eq!(at(&d), (3, 8));
    let help = d.help.clone().unwrap_or_default();
    assert!(help.contains("${BATCH}"), "{d}");
    assert!(help.contains("\"${BATCH}\""), "{d}");
    assert!(!d.to_string().contains("many"), "{d}");
}

#[test]
fn errors_never_print_a_variables_value() {
    let text = format!("[sources.in]\ntype = \"demo\"\nseed = \"${{SECRET_TOKEN}}\"\n\n[sources.x]\ntype = \"demo\"\nrate = \"${{BATCH}}\"\n{SINK}");
    let all = diagnostics(&text);
    assert_eq!(all.len(), 2, "{all:#?}");
    for d in &all {
        let shown = d.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("many"), "{shown}");
    }
    // The position is still that of the file as written.
    assert_eq!(at(&all[0]), (3, 8));
}

#[test]
fn positions_after_a_substitution_are_those_of_the_file() {
    let text =
        format!("[sources.in]\ntype = \"demo\"\nseed = ${{SEED:-123456789}}; rate = \"x\"\n{SINK}");
    let d = only_error(&text);
    assert_eq!(d.line, 3);
    assert!(d.column >= 26, "{d}");
}

#[test]
fn toml_syntax_error_has_its_position() {
    let d = only_error("[sources.in]\ntype = \"demo\nrate = 5\n");
    assert_eq!(d.line, 2);
}

#[test]
fn plugin_validation_points_at_the_option() {
    let d = only_error(&format!(
        "[sources.in]\ntype = \"file\"\npath = \"x\"\nbatch_size = 0\n{SINK}"
    ));
    assert_eq!(at(&d), (4, 1));
    assert!(
        d.message.contains("`batch_size`: must be at least 1"),
        "{d}"
    );
}

#[test]
fn unknown_top_level_key_is_an_error() {
    let d = only_error(&format!(
        "[sorces.in]\ntype = \"demo\"\n[sources.x]\ntype = \"demo\"\n{}",
        SINK.replace("\"in\"", "\"x\"")
    ));
    assert_eq!(at(&d), (1, 2));
    assert_eq!(d.help.as_deref(), Some("did you mean `sources`?"));
}

#[test]
fn every_problem_is_reported_together() {
    let text = "[sources.in]\ntype = \"fiel\"\n\n[processors.p]\ntype = \"passthrough\"\ninputs = [\"nowhere\"]\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"p\"]\nspeed = 3\n";
    let errors: Vec<_> = diagnostics(text)
        .into_iter()
        .filter(|d| d.level == Level::Error)
        .collect();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    let lines: Vec<_> = errors.iter().map(|d| d.line).collect();
    assert!(
        lines.contains(&2) && lines.contains(&6) && lines.contains(&11),
        "{lines:?}"
    );
}

#[test]
fn validate_reports_field_errors_and_a_dangling_input_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    let text = "[sources.in]\ntype = \"demo\"\nrate = \"fast\"\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"nowhere\"]\nspeed = 3\n";
    std::fs::write(&config, text).unwrap();
    let output = Command::new(common::binary())
        .arg("validate")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "p.toml:3:8: error: source \"in\": invalid type: string \"fast\"",
        "p.toml:8:1: error: sink \"out\": unknown field `speed`",
        "p.toml:7:11: error: sink \"out\": input \"nowhere\" does not exist",
    ] {
        assert!(stderr.contains(expected), "{expected} missing:\n{stderr}");
    }
}

#[test]
fn cycle_through_a_component_with_a_field_error_is_reported_with_it() {
    let text = "[sources.in]\ntype = \"demo\"\n\n[processors.a]\ntype = \"passthrough\"\ninputs = [\"in\", \"b\"]\nspeed = 3\n\n[processors.b]\ntype = \"passthrough\"\ninputs = [\"a\"]\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"b\"]\n";
    let errors: Vec<_> = diagnostics(text)
        .into_iter()
        .filter(|d| d.level == Level::Error)
        .collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    // In the order of the file: the cycle where `a` is declared, then the
    // unknown key below it.
    assert!(
        errors[0].message.contains("cycle in the pipeline") && errors[0].line == 4,
        "{errors:#?}"
    );
    assert!(
        errors[1].message.contains("unknown field `speed`") && errors[1].line == 7,
        "{errors:#?}"
    );
}

#[test]
fn input_of_a_component_with_a_field_error_still_counts_as_consumed() {
    let text = "[sources.in]\ntype = \"demo\"\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"in\"]\nspeed = 3\n";
    let all = diagnostics(text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].message.contains("unknown field `speed`"),
        "{}",
        all[0]
    );
}

#[test]
fn pipeline_and_checkpoint_tables_parse_with_units() {
    flowpulse_plugins::link();
    let text = format!("[pipeline]\nname = \"p1\"\ndata_dir = \"/tmp/x\"\nshutdown_deadline = \"5s\"\n\n[checkpoint]\nurl = \"redis://u:pw@h:6379\"\ninterval = \"250ms\"\n\n[sources.in]\ntype = \"demo\"\n{SINK}");
    let config = PipelineConfig::parse("p.toml", &text, env).unwrap();
    assert_eq!(config.pipeline.name, "p1");
    assert_eq!(
        config.pipeline.shutdown_deadline,
        std::time::Duration::from_secs(5)
    );
    let checkpoint = config.checkpoint.unwrap();
    assert_eq!(checkpoint.interval, std::time::Duration::from_millis(250));
    assert!(!format!("{checkpoint:?}").contains("pw"));
}

#[test]
fn default_pipeline_is_valid() {
    flowpulse_plugins::link();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipeline.toml")).unwrap();
    let config = PipelineConfig::parse("pipeline.toml", &text, |_| None).unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn every_example_config_is_valid() {
    flowpulse_plugins::link();
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"));
    let mut checked = 0;
    let entries = std::fs::read_dir(dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("scale-out")).unwrap());
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = PipelineConfig::parse(&path.display().to_string(), &text, |_| None) {
                panic!("{e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} examples");
}

#[test]
fn readme_example_is_the_real_plugin() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- example:stage_failures -->\n```rust\n")
        .unwrap();
    let block = &readme[start..];
    let code =
        &block[block.find("```rust\n").unwrap() + 8..block.find("```\n<!-- /example -->").unwrap()];
    let plugin = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/plugins/src/processors/stage_failures.rs"
    ))
    .unwrap();
    let plugin: String = plugin
        .lines()
        .skip_while(|l| l.starts_with("//!"))
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(code.trim_end(), plugin.trim_end());
    assert!(code.lines().count() < 60, "{} lines", code.lines().count());
}

#[test]
fn claim_idle_shorter_than_checkpoint_interval_plus_block_is_rejected() {
    let text = "[checkpoint]\nurl = \"redis://127.0.0.1:6379\"\ninterval = \"5s\"\n\n[sources.in]\ntype = \"redis_stream\"\nurl = \"redis://127.0.0.1:6379\"\nblock = \"2s\"\nclaim_idle = \"6s\"\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"in\"]\n";
    let d = only_error(text);
    assert_eq!(d.line, 9);
    assert!(
        d.message
            .contains("`claim_idle`: must exceed the checkpoint interval plus `block` (7s)"),
        "{d}"
    );
}

#[test]
fn redis_url_password_never_appears_in_errors() {
    let text = "[sources.in]\ntype = \"redis_stream\"\nurl = \"ftp://app:hunter2@host\"\n\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"in\"]\n";
    let d = only_error(text);
    assert!(
        d.message.contains("invalid Redis URL ftp://app:***@host"),
        "{d}"
    );
    assert!(!d.to_string().contains("hunter2"));
}

#[test]
fn a_bad_alert_rule_is_reported_at_its_line_naming_the_nested_field() {
    let text = r#"[sources.in]
type = "demo"

[processors.metrics]
type = "aggregate"
inputs = ["in"]

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]

[[processors.alerts.rules]]
name = "fine"
severity = "info"
condition = { metric = "latency_p99_ms", operator = ">", value = 1 }

[[processors.alerts.rules]]
name = "typo"
severity = "warning"
condition = { metric = "agents.*.success_rate", operator = "<", value = 90 }

[sinks.out]
type = "console"
inputs = ["alerts"]
"#;
    let e = only_error(text);
    assert_eq!(at(&e), (20, 1), "{e}");
    assert!(e.message.contains("`rules[1].condition.metric`"), "{e}");
    assert!(
        e.message
            .contains("did you mean `agents.*.success_rate_percent`"),
        "{e}"
    );
}

#[test]
fn a_store_nobody_declared_is_an_error_listing_the_declared_ones() {
    let text = r#"[stores.main]
url = "sqlite://data/alerts.db"

[sources.in]
type = "demo"

[processors.metrics]
type = "aggregate"
inputs = ["in"]

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]
store = "mian"

[sinks.out]
type = "console"
inputs = ["alerts"]
"#;
    let e = only_error(text);
    assert!(
        e.message
            .contains("no store \"mian\" is declared; declared: main"),
        "{e}"
    );
}

#[test]
fn dropping_alert_notices_is_refused_on_the_alert_store() {
    let text = r#"[stores.main]
url = "sqlite://data/alerts.db"

[sources.in]
type = "demo"

[processors.metrics]
type = "aggregate"
inputs = ["in"]

[processors.alerts]
type = "alert_rules"
inputs = ["metrics"]

[sinks.db]
type = "alert_store"
inputs = ["alerts"]
store = "main"
when_full = "drop_newest"
"#;
    let e = only_error(text);
    assert_eq!(at(&e).0, 19, "{e}");
    assert!(
        e.message
            .contains("`when_full`: a dropped batch would lose alert notices"),
        "{e}"
    );
}

#[test]
fn dropping_batches_is_refused_on_the_kafka_sink() {
    let text = r#"[sources.in]
type = "demo"

[sinks.log]
type = "kafka"
inputs = ["in"]
brokers = "127.0.0.1:9092"
topic = "events"
when_full = "drop_newest"
"#;
    let e = only_error(text);
    assert_eq!(at(&e).0, 9, "{e}");
    assert!(
        e.message
            .contains("`when_full`: a dropped batch would be acknowledged upstream"),
        "{e}"
    );
}

#[test]
fn kafka_options_librdkafka_refuses_are_config_errors() {
    let text = r#"[sources.in]
type = "demo"

[sinks.log]
type = "kafka"
inputs = ["in"]
brokers = "127.0.0.1:9092"
topic = "events"
options = { "no.such.property" = "1" }
"#;
    let e = only_error(text);
    assert!(e.message.contains("`no.such.property`"), "{e}");
    assert!(e.message.contains("No such configuration property"), "{e}");
}

/// A pipeline feeding alerts to `sink` (TOML of one `[sinks.n]` table).
fn notify_pipeline(sink: &str) -> String {
    format!(
        "[sources.in]\ntype = \"demo\"\n\n[processors.m]\ntype = \"aggregate\"\ninputs = [\"in\"]\n\n\
         [processors.alerts]\ntype = \"alert_rules\"\ninputs = [\"m\"]\n\n{sink}"
    )
}

#[test]
fn notification_sink_problems_are_placed_and_never_show_the_secret() {
    // Line 12 onwards: the sink's table.
    let d = only_error(&notify_pipeline(
        "[sinks.n]\ntype = \"webhook\"\ninputs = [\"alerts\"]\nurl = \"ftp://hooks.example.com/T0/s3cretpath\"\n",
    ));
    assert_eq!(at(&d), (15, 1), "{d}");
    assert!(
        d.message.contains("`url`") && d.message.contains("http"),
        "{d}"
    );
    assert!(!d.to_string().contains("s3cretpath"), "{d}");

    let d = only_error(&notify_pipeline(
        "[sinks.n]\ntype = \"webhook\"\ninputs = [\"alerts\"]\nurl = \"https://h.example/x\"\nsecret = \"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
    ));
    assert_eq!(at(&d), (16, 1), "{d}");
    assert!(d.message.contains("whsec_"), "{d}");
    assert!(!d.to_string().contains("MfKQ9r8G"), "{d}");

    let d = only_error(&notify_pipeline(
        "[sinks.n]\ntype = \"slack\"\ninputs = [\"alerts\"]\nwebhook_url = \"hooks.slack.com/services/T0/B0/XXXXSECRET\"\n",
    ));
    assert_eq!(at(&d), (15, 1), "{d}");
    assert!(!d.to_string().contains("XXXXSECRET"), "{d}");

    let d = only_error(&notify_pipeline(
        "[sinks.n]\ntype = \"email\"\ninputs = [\"alerts\"]\nsmtp_url = \"smtps://u:pw-SECRET@mail.example.com\"\nfrom = \"Flowpulse <fp@example.com>\"\nto = [\"ok@example.com\", \"not an address\"]\n",
    ));
    assert!(
        d.message.contains("`to[1]`") && d.message.contains("not an address"),
        "{d}"
    );
    assert!(!d.to_string().contains("pw-SECRET"), "{d}");

    let d = only_error(&notify_pipeline(
        "[sinks.n]\ntype = \"email\"\ninputs = [\"alerts\"]\nsmtp_url = \"imap://u:pw-SECRET@mail.example.com\"\nfrom = \"fp@example.com\"\nto = [\"ok@example.com\"]\n",
    ));
    assert!(
        d.message.contains("`smtp_url`") && d.message.contains("smtp://"),
        "{d}"
    );
    assert!(!d.to_string().contains("pw-SECRET"), "{d}");

    let d = only_error(&notify_pipeline(
        "[sinks.n]\ntype = \"webhook\"\ninputs = [\"alerts\"]\nurl = \"https://h.example/x\"\nheaders = { \"Webhook-Id\" = \"mine\" }\n",
    ));
    assert!(d.message.contains("headers.Webhook-Id"), "{d}");

    let d = only_error(&notify_pipeline(
        "[sinks.n]\ntype = \"webhook\"\ninputs = [\"alerts\"]\nurl = \"https://h.example/x\"\nretry_initial = \"10s\"\nretry_max = \"1s\"\n",
    ));
    assert!(d.message.contains("`retry_max`"), "{d}");
}

#[test]
fn rules_may_name_notification_sinks_as_channels_and_nothing_else() {
    let text = notify_pipeline(
        "[[processors.alerts.rules]]\nname = \"r\"\nseverity = \"info\"\n\
         condition = { metric = \"overview.total_workflows\", operator = \">\", value = 1 }\n\
         channels = [\"ops\", \"pager\"]\n\n\
         [sinks.ops]\ntype = \"slack\"\ninputs = [\"alerts\"]\nwebhook_url = \"https://hooks.slack.com/services/T/B/X\"\n",
    );
    let d = only_error(&text);
    assert!(
        d.message.contains("pager") && d.message.contains("ops"),
        "names the unknown channel and lists the known ones: {d}"
    );
}

#[test]
fn the_three_notification_examples_differ_only_in_the_sink() {
    let read = |name: &str| {
        std::fs::read_to_string(format!(
            "{}/examples/notify-{name}.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    // From the first table to the notification sink's.
    let pipeline = |text: &str| {
        let start = text.find("[pipeline]").unwrap();
        let end = text.find("[sinks.oncall]").unwrap();
        text[start..end].to_owned()
    };
    let slack = read("slack");
    for other in ["webhook", "email"] {
        assert_eq!(pipeline(&read(other)), pipeline(&slack), "{other}");
    }
}
