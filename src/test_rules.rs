//! `flowpulse test-rules FILE [-c CONFIG]`: alert rules against a scripted
//! sequence of metric values, with the open alerts and notices expected after
//! each step, like `promtool test rules`. The evaluator is the pipeline's
//! own; nothing is read or written but FILE (and CONFIG).
//!
//! ```toml
//! [[rules]]                      # or the rules of CONFIG's alert_rules
//! name = "High error rate"
//! severity = "critical"
//! condition = { metric = "overview.error_rate_percent", operator = ">", value = 10, duration_ms = 60000 }
//!
//! [[steps]]
//! at = "0s"                      # event time since the start of the test
//! values = { "overview.error_rate_percent" = 12 }
//! notices = []                   # "STATUS RULE" or "STATUS RULE[INSTANCE]"
//!
//! [[steps]]
//! at = "60s"
//! values = { "overview.error_rate_percent" = 12 }
//! notices = ["triggered High error rate"]
//! open = ["triggered High error rate"]
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use flowpulse_core::alert::Alert;
use flowpulse_core::config::PipelineConfig;
use flowpulse_core::metrics::RealtimeMetrics;
use flowpulse_core::topology::TopologyView;
use flowpulse_plugins::processors::alert_rules::evaluator::{At, CompiledRule, Evaluator};
use flowpulse_plugins::processors::alert_rules::path::{write, SelfSample};
use flowpulse_plugins::processors::alert_rules::rule::Rule;
use flowpulse_plugins::processors::alert_rules::AlertRulesConfig;
use serde::Deserialize;

/// The event time the steps count from (any fixed time would do).
const START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    rules: Vec<Rule>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    #[serde(with = "humantime_serde")]
    at: Duration,
    #[serde(default)]
    values: BTreeMap<String, f64>,
    /// Expected notices of this step, in order; absent: not checked.
    #[serde(default)]
    notices: Option<Vec<String>>,
    /// Expected open alerts after this step, any order; absent: not checked.
    #[serde(default)]
    open: Option<Vec<String>>,
}

fn label(alert: &Alert) -> String {
    let status = alert.status.as_str();
    if alert.instance.is_empty() {
        format!("{status} {}", alert.rule_name)
    } else {
        format!("{status} {}[{}]", alert.rule_name, alert.instance)
    }
}

/// The line (1-based) of the `n`-th `[[steps]]` header of `text`.
fn step_line(text: &str, n: usize) -> usize {
    header_line(text, "[[steps]]", n)
}

/// The line (1-based) of the `n`-th `header` line of `text`; 0 if none.
fn header_line(text: &str, header: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.split('#').next().unwrap_or_default().trim() == header)
        .nth(n)
        .map_or(0, |(i, _)| i + 1)
}

/// Everything wrong with the test file's rules and steps, as `validate`
/// finds it for rules in a config: each problem with its line. Channels
/// are checked against `known_channels` when a config gives them.
fn problems(
    file: &Path,
    text: &str,
    test: &TestFile,
    config_rules: &[Rule],
    known_channels: Option<&[String]>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names: std::collections::BTreeSet<&str> =
        config_rules.iter().map(|r| r.name.as_str()).collect();
    for (i, rule) in test.rules.iter().enumerate() {
        let at = format!(
            "{}:{}: rules[{i}]",
            file.display(),
            header_line(text, "[[rules]]", i)
        );
        let found = rule.problems(known_channels.unwrap_or_default());
        for problem in found {
            if known_channels.is_none() && problem.field.starts_with("channels[") {
                continue;
            }
            problems.push(format!("{at}.{}: {}", problem.field, problem.message));
        }
        if !names.insert(rule.name.as_str()) {
            problems.push(format!(
                "{at}.name: another rule is called `{}`; names are unique",
                rule.name
            ));
        }
    }
    for (n, pair) in test.steps.windows(2).enumerate() {
        if pair[1].at < pair[0].at {
            problems.push(format!(
                "{}:{}: steps[{}].at: {} is before the step above ({}); steps go forward in time",
                file.display(),
                step_line(text, n + 1),
                n + 1,
                humantime::format_duration(pair[1].at),
                humantime::format_duration(pair[0].at),
            ));
        }
    }
    problems
}

/// Runs the test file; exit 0 if every expectation holds, 1 if not.
pub fn run(file: &Path, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let test: TestFile = match toml::from_str(&text) {
        Ok(test) => test,
        Err(e) => {
            eprintln!("{}: {}", file.display(), e.to_string().trim());
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut config_rules = Vec::new();
    let mut known_channels = None;
    if let Some(config) = config {
        let config = match PipelineConfig::from_file(config) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
        };
        for spec in &config.components {
            if let Some(alert_rules) = spec.config.as_any().downcast_ref::<AlertRulesConfig>() {
                config_rules.extend(alert_rules.rules.iter().cloned());
            }
        }
        let topology = TopologyView::new(&config.components, &config.stores);
        known_channels = Some(AlertRulesConfig::known_channels_of(&topology));
    }
    let problems = problems(file, &text, &test, &config_rules, known_channels.as_deref());
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("{problem}");
        }
        eprintln!("{} problem(s) in {}", problems.len(), file.display());
        return Ok(ExitCode::FAILURE);
    }
    let mut rules = test.rules;
    rules.extend(config_rules);
    if rules.is_empty() {
        eprintln!(
            "{}: no rules: write [[rules]] or pass -c CONFIG",
            file.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let mut compiled = Vec::new();
    for (i, rule) in rules.into_iter().enumerate() {
        match CompiledRule::new(rule) {
            Ok(rule) => compiled.push(rule),
            Err(e) => {
                eprintln!("{}: rules[{i}].condition.metric: {e}", file.display());
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let mut evaluator = Evaluator::default();
    let mut failures = 0;
    for (n, step) in test.steps.iter().enumerate() {
        let line = step_line(&text, n);
        let mut doc = RealtimeMetrics::default();
        let mut own = SelfSample::default();
        for (path, value) in &step.values {
            if let Err(e) = write(&mut doc, &mut own, path, *value) {
                eprintln!("{}:{line}: steps[{n}].values: {e}", file.display());
                return Ok(ExitCode::FAILURE);
            }
        }
        let at_ms = START_MS + step.at.as_millis() as i64;
        doc.as_of = flowpulse_core::event::format_rfc3339_ms(at_ms);
        let notices: Vec<String> = evaluator
            .evaluate(
                &compiled,
                &doc,
                &own,
                At {
                    as_of_ms: at_ms,
                    wall_ms: at_ms,
                },
            )
            .iter()
            .map(label)
            .collect();
        if let Some(expected) = &step.notices {
            if *expected != notices {
                failures += 1;
                println!(
                    "{}:{line}: step {n} (at {}): notices\n  expected: {expected:?}\n  got:      {notices:?}",
                    file.display(),
                    humantime::format_duration(step.at)
                );
            }
        }
        if let Some(expected) = &step.open {
            let mut expected = expected.clone();
            expected.sort();
            let mut open: Vec<String> = evaluator.open_alerts().map(label).collect();
            open.sort();
            if expected != open {
                failures += 1;
                println!(
                    "{}:{line}: step {n} (at {}): open alerts\n  expected: {expected:?}\n  got:      {open:?}",
                    file.display(),
                    humantime::format_duration(step.at)
                );
            }
        }
    }
    if failures == 0 {
        println!("ok: {} steps, {} rules", test.steps.len(), compiled.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{failures} expectations failed");
        Ok(ExitCode::FAILURE)
    }
}
