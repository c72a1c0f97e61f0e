//! Alert rules (CONTRACT §4 Rule; the `alert_rules` row of §5): data shared
//! by the config, the table and the API, so the `_ms` fields stay integers.

use flowpulse_core::alert::Severity;
use serde::{Deserialize, Serialize};

use super::path::MetricPath;

/// A rule's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Operator {
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// At least.
    #[serde(rename = ">=")]
    Ge,
    /// At most.
    #[serde(rename = "<=")]
    Le,
    /// Equal.
    #[serde(rename = "==")]
    Eq,
    /// Not equal.
    #[serde(rename = "!=")]
    Ne,
}

impl Operator {
    /// Whether `value OP threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Operator::Gt => value > threshold,
            Operator::Lt => value < threshold,
            Operator::Ge => value >= threshold,
            Operator::Le => value <= threshold,
            Operator::Eq => value == threshold,
            Operator::Ne => value != threshold,
        }
    }

    /// `>`, `<`, `>=`, `<=`, `==` or `!=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Gt => ">",
            Operator::Lt => "<",
            Operator::Ge => ">=",
            Operator::Le => "<=",
            Operator::Eq => "==",
            Operator::Ne => "!=",
        }
    }
}

/// When a rule fires, and when it stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct Condition {
    /// The metric path, e.g. `agents.*.success_rate_percent`.
    pub metric: String,
    /// The comparison.
    pub operator: Operator,
    /// The threshold.
    pub value: f64,
    /// How long (event time) the condition must hold before it fires.
    #[serde(default)]
    pub duration_ms: u64,
    /// Hysteresis: once firing, it resolves only when `metric OP
    /// resolve_value` no longer holds (e.g. fire above 10, resolve below 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_value: Option<f64>,
    /// Once the condition clears, keep firing this long (event time) in
    /// case it comes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_ms: Option<u64>,
}

/// Where a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum RuleSource {
    /// The config file: it changes only there.
    Config,
    /// The API.
    Api,
}

fn yes() -> bool {
    true
}

/// An alert rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct Rule {
    /// Read-only: a UUIDv5 of the name for config rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// 1–100 characters, unique.
    pub name: String,
    /// For people.
    #[serde(default)]
    pub description: String,
    /// A disabled rule does not fire; its open alerts resolve.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `critical`, `warning` or `info`.
    pub severity: Severity,
    /// When it fires.
    pub condition: Condition,
    /// Notification sinks (by name) or `dashboard`.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Notify again every this long while firing (event time); `None`: never.
    #[serde(default)]
    pub repeat_interval_ms: Option<u64>,
    /// The message template (`{{value}}`, `{{threshold}}`, `{{instance}}`,
    /// `{{metric}}`, `{{rule}}`); `None`: a default.
    #[serde(default)]
    pub message: Option<String>,
    /// A link for whoever is paged.
    #[serde(default)]
    pub runbook_url: Option<String>,
    /// Muted until (RFC 3339): alerts are still evaluated, stored and
    /// shown, but notification sinks skip them.
    #[serde(default)]
    pub muted_until: Option<String>,
    /// Read-only: `config` or `api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RuleSource>,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// The namespace of config rule ids (UUIDv5 of the name).
const RULE_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x1b0e_7c52_94d3_4f6a_8e21_57c9_a0d4_3e18);

/// The id of the config rule called `name`.
pub fn config_rule_id(name: &str) -> String {
    uuid::Uuid::new_v5(&RULE_NAMESPACE, name.as_bytes()).to_string()
}

/// One problem with a rule: the field's path within the rule (e.g.
/// `condition.metric`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    /// The field, e.g. `condition.metric`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl Rule {
    /// Every problem found without I/O; `channels` must name one of
    /// `known_channels` (the notification sinks, and `dashboard`).
    pub fn problems(&self, known_channels: &[String]) -> Vec<RuleProblem> {
        let mut problems = self.lasting_problems(known_channels);
        problems.extend(self.admission_problems());
        problems
    }

    /// What makes a rule unusable, checked again on every rule read from a
    /// store: a rule stored by an earlier version that fails only the
    /// [`Self::admission_problems`] added since keeps firing.
    pub fn lasting_problems(&self, known_channels: &[String]) -> Vec<RuleProblem> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(RuleProblem {
                field: field.to_owned(),
                message,
            })
        };
        let length = self.name.chars().count();
        if !(1..=100).contains(&length) {
            problem(
                "name",
                format!("must be 1 to 100 characters (it has {length})"),
            );
        }
        if let Err(e) = MetricPath::parse(&self.condition.metric) {
            problem("condition.metric", e);
        }
        if !self.condition.value.is_finite() {
            problem("condition.value", "must be a finite number".into());
        }
        if self.condition.resolve_value.is_some_and(|v| !v.is_finite()) {
            problem("condition.resolve_value", "must be a finite number".into());
        }
        if self.repeat_interval_ms == Some(0) {
            problem(
                "repeat_interval_ms",
                "must be at least 1 (or null: never)".into(),
            );
        }
        for (i, channel) in self.channels.iter().enumerate() {
            if !known_channels.contains(channel) {
                problem(
                    &format!("channels[{i}]"),
                    format!(
                        "`{channel}` is not a notification sink or `dashboard`; known: {}",
                        known_channels.join(", ")
                    ),
                );
            }
        }
        if let Some(until) = &self.muted_until {
            if flowpulse_core::event::parse_rfc3339_ms(until).is_none() {
                problem("muted_until", format!("`{until}` is not an RFC 3339 time"));
            }
        }
        problems
    }

    /// Mistakes a new or changed rule is refused for: a blank name, a
    /// message template with a placeholder it cannot fill, a runbook that
    /// is not a web address, hysteresis on the wrong side of the threshold.
    fn admission_problems(&self) -> Vec<RuleProblem> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(RuleProblem {
                field: field.to_owned(),
                message,
            })
        };
        if !self.name.is_empty() && self.name.trim().is_empty() {
            problem("name", "must not be blank".into());
        }
        if let Some(message) = self.message.as_deref().and_then(template_problem) {
            problem("message", message);
        }
        if let Some(url) = &self.runbook_url {
            let web = reqwest::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if !web {
                problem(
                    "runbook_url",
                    format!("`{url}` is not an http:// or https:// address"),
                );
            }
        }
        let Condition {
            operator,
            value,
            resolve_value,
            ..
        } = &self.condition;
        if let Some(resolve) = resolve_value.filter(|r| r.is_finite() && value.is_finite()) {
            // Firing while `metric OP value` holds and resolving once
            // `metric OP resolve_value` no longer does: past the threshold,
            // a rule would resolve as soon as it fired.
            let wrong_side = match operator {
                Operator::Gt | Operator::Ge => resolve > *value,
                Operator::Lt | Operator::Le => resolve < *value,
                Operator::Eq | Operator::Ne => false,
            };
            if wrong_side {
                let (side, word) = match operator {
                    Operator::Gt | Operator::Ge => ("at most", "above"),
                    _ => ("at least", "below"),
                };
                problem(
                    "condition.resolve_value",
                    format!(
                        "must be {side} the threshold {} (it fires {word} it and resolves \
                         once past `resolve_value`), not {}",
                        format_number(*value),
                        format_number(resolve)
                    ),
                );
            }
        }
        problems
    }

    /// The message of an alert: the template filled in, or a default.
    pub fn render_message(&self, instance: &str, metric: &str, value: Option<f64>) -> String {
        let value_text = value.map_or_else(|| "no value".to_owned(), format_number);
        match &self.message {
            Some(template) => template
                .replace("{{value}}", &value_text)
                .replace("{{threshold}}", &format_number(self.condition.value))
                .replace("{{instance}}", instance)
                .replace("{{metric}}", metric)
                .replace("{{rule}}", &self.name),
            None => format!(
                "{}: {metric} is {value_text} ({} {})",
                self.name,
                self.condition.operator.as_str(),
                format_number(self.condition.value)
            ),
        }
    }
}

/// The placeholders a message template may use.
pub const PLACEHOLDERS: [&str; 5] = ["value", "threshold", "instance", "metric", "rule"];

/// What is wrong with a message template, if anything: a `{{` that is not
/// closed, or a placeholder that is not one of [`PLACEHOLDERS`] (either
/// would reach every notification as written).
fn template_problem(template: &str) -> Option<String> {
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Some(format!(
                "`{{{{` at character {} is not closed with `}}}}`",
                template.len() - rest.len() + start + 1
            ));
        };
        let name = after[..end].trim();
        if !PLACEHOLDERS.contains(&name) {
            return Some(format!(
                "`{{{{{name}}}}}` is not a placeholder; known: {}",
                PLACEHOLDERS.map(|p| format!("{{{{{p}}}}}")).join(", ")
            ));
        }
        rest = &after[end + 2..];
    }
    None
}

/// Formats a number the way people write it: no trailing `.0`, at most
/// three decimals (the alert's `value` keeps the exact one).
pub fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml_text: &str) -> Rule {
        toml::from_str(toml_text).unwrap()
    }

    const BASE: &str = r#"
        name = "scaffold failing"
        severity = "warning"
        condition = { metric = "agents.*.success_rate_percent", operator = "<", value = 90 }
    "#;

    #[test]
    fn a_rule_reads_from_toml_with_its_defaults() {
        let r = rule(BASE);
        assert!(r.enabled);
        assert_eq!(r.condition.operator, Operator::Lt);
        assert_eq!(r.condition.duration_ms, 0);
        assert!(r.problems(&[]).is_empty());
    }

    #[test]
    fn problems_name_the_field() {
        let mut r = rule(BASE);
        r.condition.metric = "agents.*.success_rate".into();
        r.channels = vec!["slack".into()];
        let problems = r.problems(&["dashboard".into()]);
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["condition.metric", "channels[0]"]);
        assert!(problems[1].message.contains("known: dashboard"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = toml::from_str::<Rule>(&format!("{BASE}\ncolour = 1")).unwrap_err();
        assert!(e.to_string().contains("colour"));
    }

    #[test]
    fn operators_compare() {
        assert!(Operator::Gt.holds(2.0, 1.0) && !Operator::Gt.holds(1.0, 1.0));
        assert!(Operator::Ge.holds(1.0, 1.0) && Operator::Le.holds(1.0, 1.0));
        assert!(Operator::Ne.holds(1.0, 2.0) && Operator::Eq.holds(2.0, 2.0));
    }

    #[test]
    fn a_config_rule_id_is_a_uuidv5_of_its_name() {
        assert_eq!(config_rule_id("a"), config_rule_id("a"));
        assert_ne!(config_rule_id("a"), config_rule_id("b"));
    }

    #[test]
    fn a_new_rule_is_refused_for_what_would_reach_people_wrong() {
        let fields =
            |r: &Rule| -> Vec<String> { r.problems(&[]).into_iter().map(|p| p.field).collect() };
        let mut r = rule(BASE);
        assert!(fields(&r).is_empty());
        r.name = "   ".into();
        assert_eq!(fields(&r), ["name"]);

        let mut r = rule(BASE);
        for bad in ["{{nope}} at {{value}}", "at {{value", "{{ value }} {{"] {
            r.message = Some(bad.into());
            let problems = r.problems(&[]);
            assert_eq!(problems.len(), 1, "{bad}");
            assert_eq!(problems[0].field, "message");
        }
        assert!(r.problems(&[])[0].message.contains("character 13"));
        r.message = Some("{{rule}}: {{ value }} {{threshold}} {{instance}} {{metric}}".into());
        assert!(fields(&r).is_empty());

        let mut r = rule(BASE);
        for bad in ["not a url", "ftp://example.com/x", "https://"] {
            r.runbook_url = Some(bad.into());
            assert_eq!(fields(&r), ["runbook_url"], "{bad}");
        }
        r.runbook_url = Some("https://runbooks.example.com/scaffold".into());
        assert!(fields(&r).is_empty());

        // BASE fires below 90: resolving must wait for a value at least 90.
        let mut r = rule(BASE);
        r.condition.resolve_value = Some(85.0);
        assert_eq!(fields(&r), ["condition.resolve_value"]);
        assert!(r.problems(&[])[0]
            .message
            .contains("at least the threshold 90"));
        r.condition.resolve_value = Some(95.0);
        assert!(fields(&r).is_empty());
        r.condition.operator = Operator::Gt;
        assert_eq!(fields(&r), ["condition.resolve_value"]);
        r.condition.resolve_value = Some(80.0);
        assert!(fields(&r).is_empty());
    }

    #[test]
    fn a_stored_rule_is_not_dropped_for_a_check_added_later() {
        let mut r = rule(BASE);
        r.message = Some("{{nope}}".into());
        r.condition.resolve_value = Some(1.0);
        assert_eq!(r.problems(&[]).len(), 2);
        assert!(r.lasting_problems(&[]).is_empty());
    }

    #[test]
    fn messages_fill_the_template() {
        let mut r = rule(BASE);
        r.message = Some("{{instance}} at {{value}}% (< {{threshold}})".into());
        assert_eq!(
            r.render_message("scaffold", "m", Some(80.5)),
            "scaffold at 80.5% (< 90)"
        );
        r.message = None;
        assert!(r
            .render_message("", "agents[x].success_rate_percent", None)
            .contains("no value"));
        // People read the message: three decimals at most.
        assert_eq!(
            r.render_message("x", "m", Some(100.0 / 7.0)),
            "scaffold failing: m is 14.286 (< 90)"
        );
    }
}
