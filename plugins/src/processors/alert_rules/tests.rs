//! The evaluator, table-driven: each case is a rule and a sequence of
//! documents (event time, value), with the notices expected after each.

use flowpulse_core::alert::{Alert, AlertStatus};
use flowpulse_core::metrics::{AgentStats, Overview, RealtimeMetrics};

use super::evaluator::{At, Change, CompiledRule, Evaluator};
use super::path::SelfSample;
use super::rule::Rule;

fn rule(condition: &str, extra: &str) -> CompiledRule {
    let text =
        format!("name = \"r\"\nseverity = \"warning\"\ncondition = {{ {condition} }}\n{extra}");
    CompiledRule::new(toml::from_str::<Rule>(&text).unwrap()).unwrap()
}

fn error_rate(value: f64) -> RealtimeMetrics {
    RealtimeMetrics {
        overview: Overview {
            error_rate_percent: value,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn agents(list: &[(&str, f64)]) -> RealtimeMetrics {
    RealtimeMetrics {
        agents: list
            .iter()
            .map(|(name, rate)| AgentStats {
                agent_type: (*name).into(),
                success_rate_percent: *rate,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn at(seconds: i64) -> At {
    At {
        as_of_ms: seconds * 1000,
        wall_ms: seconds * 1000,
    }
}

/// "triggered/0" style summaries of notices.
fn summary(notices: &[Alert]) -> Vec<String> {
    notices
        .iter()
        .map(|n| {
            let status = match n.status {
                AlertStatus::Triggered => "triggered",
                AlertStatus::Acknowledged => "acknowledged",
                AlertStatus::Resolved => "resolved",
            };
            if n.instance.is_empty() {
                format!("{status}/{}", n.repeat)
            } else {
                format!("{}:{status}/{}", n.instance, n.repeat)
            }
        })
        .collect()
}

/// Runs error-rate documents (second, value) and returns the notices of each.
fn run(rule: &CompiledRule, steps: &[(i64, f64)]) -> Vec<Vec<String>> {
    let mut evaluator = Evaluator::default();
    steps
        .iter()
        .map(|(second, value)| {
            summary(&evaluator.evaluate(
                std::slice::from_ref(rule),
                &error_rate(*value),
                &SelfSample::default(),
                at(*second),
            ))
        })
        .collect()
}

const GT5: &str = r#"metric = "overview.error_rate_percent", operator = ">", value = 5"#;

#[test]
fn fires_at_once_without_a_duration_and_resolves_when_clear() {
    let r = rule(GT5, "");
    assert_eq!(
        run(&r, &[(0, 1.0), (1, 6.0), (2, 7.0), (3, 4.0), (4, 4.0)]),
        [
            vec![],
            vec!["triggered/0"],
            vec![],
            vec!["resolved/0"],
            vec![]
        ]
    );
}

#[test]
fn a_duration_holds_it_pending_and_a_dip_restarts_the_wait() {
    let r = rule(&format!("{GT5}, duration_ms = 3000"), "");
    assert_eq!(
        run(&r, &[(0, 6.0), (2, 6.0), (3, 6.0), (4, 6.0)]),
        [vec![], vec![], vec!["triggered/0"], vec![]]
    );
    assert_eq!(
        run(&r, &[(0, 6.0), (2, 1.0), (3, 6.0), (5, 6.0), (6, 6.0)]),
        [vec![], vec![], vec![], vec![], vec!["triggered/0"]]
    );
}

#[test]
fn resolve_value_is_hysteresis() {
    let r = rule(&format!("{GT5}, resolve_value = 3"), "");
    assert_eq!(
        run(&r, &[(0, 6.0), (1, 4.0), (2, 3.5), (3, 3.0)]),
        [vec!["triggered/0"], vec![], vec![], vec!["resolved/0"]]
    );
}

#[test]
fn keep_firing_outlasts_a_short_clear() {
    let r = rule(&format!("{GT5}, keep_firing_ms = 2000"), "");
    assert_eq!(
        run(
            &r,
            &[(0, 6.0), (1, 1.0), (2, 6.0), (3, 1.0), (4, 1.0), (5, 1.0)]
        ),
        [
            vec!["triggered/0"],
            vec![],
            vec![],
            vec![],
            vec![],
            vec!["resolved/0"]
        ]
    );
}

#[test]
fn repeat_interval_notifies_again_with_the_same_id() {
    let r = rule(GT5, "repeat_interval_ms = 2000");
    let mut evaluator = Evaluator::default();
    let mut ids = Vec::new();
    let mut all = Vec::new();
    for second in 0..5 {
        let notices = evaluator.evaluate(
            std::slice::from_ref(&r),
            &error_rate(9.0),
            &SelfSample::default(),
            at(second),
        );
        ids.extend(notices.iter().map(|n| (n.id.clone(), n.notice_id.clone())));
        all.push(summary(&notices));
    }
    assert_eq!(
        all,
        [
            vec!["triggered/0"],
            vec![],
            vec!["triggered/1"],
            vec![],
            vec!["triggered/2"]
        ]
    );
    assert!(ids.iter().all(|(id, _)| *id == ids[0].0), "one alert id");
    let notice_ids: std::collections::BTreeSet<_> = ids.iter().map(|(_, n)| n).collect();
    assert_eq!(notice_ids.len(), 3, "a notice id per repeat");
}

#[test]
fn an_acknowledged_alert_is_quiet_until_its_until_passes() {
    let r = rule(GT5, "repeat_interval_ms = 1000");
    let mut evaluator = Evaluator::default();
    let rules = std::slice::from_ref(&r);
    let fired = evaluator.evaluate(rules, &error_rate(9.0), &SelfSample::default(), at(0));
    let id = fired[0].id.clone();
    let ack = evaluator
        .apply(
            &id,
            Change::Acknowledge {
                by: "api:ops".into(),
                until_ms: Some(3000),
            },
            at(0),
        )
        .unwrap();
    assert_eq!(ack.status, AlertStatus::Acknowledged);
    assert_eq!(ack.acknowledged_by.as_deref(), Some("api:ops"));
    assert!(
        evaluator
            .apply(
                &id,
                Change::Acknowledge {
                    by: "api".into(),
                    until_ms: None
                },
                at(1)
            )
            .is_none(),
        "acknowledging again changes nothing"
    );
    let quiet: Vec<_> = (1..3)
        .flat_map(|s| evaluator.evaluate(rules, &error_rate(9.0), &SelfSample::default(), at(s)))
        .collect();
    assert!(
        quiet.is_empty(),
        "no repeats while acknowledged: {:?}",
        summary(&quiet)
    );
    let again = evaluator.evaluate(rules, &error_rate(9.0), &SelfSample::default(), at(3));
    assert_eq!(
        summary(&again),
        ["triggered/1"],
        "past `until` it is notified again"
    );
    assert_eq!(again[0].id, id);
}

#[test]
fn a_manually_resolved_instance_fires_again_only_after_clearing_once() {
    let r = rule(GT5, "");
    let mut evaluator = Evaluator::default();
    let rules = std::slice::from_ref(&r);
    let fired = evaluator.evaluate(rules, &error_rate(9.0), &SelfSample::default(), at(0));
    let resolved = evaluator
        .apply(&fired[0].id, Change::Resolve { by: "api".into() }, at(1))
        .unwrap();
    assert_eq!(resolved.status, AlertStatus::Resolved);
    assert_eq!(resolved.resolved_by.as_deref(), Some("api"));
    let step = |evaluator: &mut Evaluator, s, v| {
        summary(&evaluator.evaluate(rules, &error_rate(v), &SelfSample::default(), at(s)))
    };
    assert!(step(&mut evaluator, 2, 9.0).is_empty(), "still held");
    assert!(step(&mut evaluator, 3, 1.0).is_empty(), "cleared once");
    let again = evaluator.evaluate(rules, &error_rate(9.0), &SelfSample::default(), at(4));
    assert_eq!(summary(&again), ["triggered/0"]);
    assert_ne!(again[0].id, fired[0].id, "a new firing is a new alert");
}

#[test]
fn star_paths_fire_per_instance_and_an_instance_leaving_resolves() {
    let r = rule(
        r#"metric = "agents.*.success_rate_percent", operator = "<", value = 90"#,
        "",
    );
    let rules = std::slice::from_ref(&r);
    let mut evaluator = Evaluator::default();
    let mut step = |doc: RealtimeMetrics, s| {
        summary(&evaluator.evaluate(rules, &doc, &SelfSample::default(), at(s)))
    };
    assert_eq!(
        step(agents(&[("review", 80.0), ("scaffold", 95.0)]), 0),
        ["review:triggered/0"]
    );
    assert_eq!(
        step(agents(&[("review", 80.0), ("scaffold", 85.0)]), 1),
        ["scaffold:triggered/0"]
    );
    assert_eq!(
        step(agents(&[("scaffold", 85.0)]), 2),
        ["review:resolved/0"],
        "review left the document"
    );
}

#[test]
fn a_disabled_rule_resolves_its_open_alerts() {
    let mut r = rule(GT5, "");
    let mut evaluator = Evaluator::default();
    evaluator.evaluate(
        std::slice::from_ref(&r),
        &error_rate(9.0),
        &SelfSample::default(),
        at(0),
    );
    r.rule.enabled = false;
    let notices = evaluator.evaluate(
        std::slice::from_ref(&r),
        &error_rate(9.0),
        &SelfSample::default(),
        at(1),
    );
    assert_eq!(summary(&notices), ["resolved/0"]);
    assert_eq!(notices[0].resolved_by.as_deref(), Some("rule"));
}

#[test]
fn a_muted_rule_still_fires_but_its_notices_are_marked() {
    let r = rule(GT5, "muted_until = \"2100-01-01T00:00:00Z\"");
    let mut evaluator = Evaluator::default();
    let notices = evaluator.evaluate(
        std::slice::from_ref(&r),
        &error_rate(9.0),
        &SelfSample::default(),
        at(0),
    );
    assert_eq!(notices.len(), 1);
    assert!(notices[0].muted);
}

#[test]
fn a_custom_metric_not_seen_yet_is_counted_as_no_data() {
    let r = rule(r#"metric = "custom.queue", operator = ">", value = 1"#, "");
    let mut evaluator = Evaluator::default();
    let notices = evaluator.evaluate(
        std::slice::from_ref(&r),
        &error_rate(9.0),
        &SelfSample::default(),
        at(0),
    );
    assert!(notices.is_empty());
    assert_eq!(evaluator.no_data, 1);
}

#[test]
fn an_open_alert_from_the_store_is_adopted_not_opened_twice() {
    let r = rule(GT5, "");
    let rules = std::slice::from_ref(&r);
    let mut before_crash = Evaluator::default();
    let stored = before_crash.evaluate(rules, &error_rate(9.0), &SelfSample::default(), at(0));
    // The restarted state never saw that alert; the store did.
    let mut restarted = Evaluator::default();
    assert!(restarted.adopt(stored[0].clone(), 0));
    assert!(!restarted.adopt(stored[0].clone(), 0), "adopted once");
    let still = restarted.evaluate(rules, &error_rate(9.0), &SelfSample::default(), at(1));
    assert!(still.is_empty(), "no second alert: {:?}", summary(&still));
    let cleared = restarted.evaluate(rules, &error_rate(1.0), &SelfSample::default(), at(2));
    assert_eq!(summary(&cleared), ["resolved/0"]);
    assert_eq!(cleared[0].id, stored[0].id);
}

#[test]
fn a_document_older_than_one_evaluated_is_skipped_not_undoing_transitions() {
    let r = rule(GT5, "");
    let rules = std::slice::from_ref(&r);
    let mut evaluator = Evaluator::default();
    let fired = evaluator.evaluate(rules, &error_rate(9.0), &SelfSample::default(), at(10));
    assert_eq!(summary(&fired), ["triggered/0"]);
    // An aggregate restored from an older checkpoint shows the past.
    let past = evaluator.evaluate(rules, &error_rate(1.0), &SelfSample::default(), at(8));
    assert!(past.is_empty(), "{:?}", summary(&past));
    assert_eq!(evaluator.stale, 1);
    let now = evaluator.evaluate(rules, &error_rate(1.0), &SelfSample::default(), at(11));
    assert_eq!(summary(&now), ["resolved/0"]);
}

#[test]
fn notices_carry_the_contract_fields() {
    let r = rule(
        GT5,
        "channels = [\"dashboard\"]\nrunbook_url = \"https://runbooks/x\"",
    );
    let mut evaluator = Evaluator::default();
    let n = &evaluator.evaluate(
        std::slice::from_ref(&r),
        &error_rate(9.0),
        &SelfSample::default(),
        at(10),
    )[0];
    assert_eq!(n.metric, "overview.error_rate_percent");
    assert_eq!(
        (n.operator.as_str(), n.threshold, n.value),
        (">", 5.0, Some(9.0))
    );
    assert_eq!(n.as_of, "1970-01-01T00:00:10.000Z");
    assert_eq!(n.channels, ["dashboard"]);
    assert_eq!(n.runbook_url.as_deref(), Some("https://runbooks/x"));
    assert_eq!(n.notice_id, n.notice_id());
    assert_eq!(n.data["value"], 9.0);
}

mod against_an_oracle {
    //! The evaluator against a plain model of one scalar rule, over random
    //! documents: values around the threshold, any gaps of event time, every
    //! combination of duration, hysteresis, keep-firing and repeats.

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone, Copy)]
    struct Params {
        duration: i64,
        resolve: Option<f64>,
        keep: Option<i64>,
        repeat: Option<i64>,
    }

    /// Notices per step, as "status/repeat", by the rules' plain reading.
    fn oracle(p: Params, steps: &[(i64, f64)]) -> Vec<Vec<String>> {
        let threshold = 5.0;
        let mut pending_since: Option<i64> = None;
        let mut firing = false;
        let mut repeat = 0;
        let mut last_notified = 0;
        let mut clear_since: Option<i64> = None;
        let mut out = Vec::new();
        for &(t, v) in steps {
            let mut notices = Vec::new();
            let holds = v > threshold;
            if firing {
                let still = holds || p.resolve.is_some_and(|r| v > r);
                if still {
                    clear_since = None;
                    if p.repeat.is_some_and(|every| t - last_notified >= every) {
                        repeat += 1;
                        last_notified = t;
                        notices.push(format!("triggered/{repeat}"));
                    }
                } else {
                    let since = *clear_since.get_or_insert(t);
                    if t - since >= p.keep.unwrap_or(0) {
                        notices.push(format!("resolved/{repeat}"));
                        firing = false;
                        clear_since = None;
                    }
                }
            } else if holds {
                let since = *pending_since.get_or_insert(t);
                if t - since >= p.duration {
                    firing = true;
                    pending_since = None;
                    repeat = 0;
                    last_notified = t;
                    notices.push("triggered/0".to_owned());
                }
            } else {
                pending_since = None;
            }
            out.push(notices);
        }
        out
    }

    fn params() -> impl Strategy<Value = Params> {
        (
            prop_oneof![Just(0i64), Just(1000), Just(3000)],
            prop_oneof![Just(None), Just(Some(3.0))],
            prop_oneof![Just(None), Just(Some(1500i64))],
            prop_oneof![Just(None), Just(Some(2000i64))],
        )
            .prop_map(|(duration, resolve, keep, repeat)| Params {
                duration,
                resolve,
                keep,
                repeat,
            })
    }

    fn steps() -> impl Strategy<Value = Vec<(i64, f64)>> {
        prop::collection::vec(
            (
                0i64..2500,
                prop_oneof![Just(1.0), Just(4.0), Just(5.0), Just(6.0), Just(9.0)],
            ),
            1..60,
        )
        .prop_map(|raw| {
            let mut t = 0;
            raw.into_iter()
                .map(|(gap, v)| {
                    t += gap;
                    (t, v)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn the_evaluator_agrees_with_the_model(p in params(), steps in steps()) {
            let mut condition = format!("{GT5}, duration_ms = {}", p.duration);
            if let Some(r) = p.resolve {
                condition.push_str(&format!(", resolve_value = {r}"));
            }
            if let Some(k) = p.keep {
                condition.push_str(&format!(", keep_firing_ms = {k}"));
            }
            let extra = p.repeat.map(|r| format!("repeat_interval_ms = {r}")).unwrap_or_default();
            let r = rule(&condition, &extra);
            let mut evaluator = Evaluator::default();
            let mut open: Option<String> = None;
            for (i, &(t, v)) in steps.iter().enumerate() {
                let notices = evaluator.evaluate(
                    std::slice::from_ref(&r),
                    &error_rate(v),
                    &SelfSample::default(),
                    At { as_of_ms: t, wall_ms: t },
                );
                // One open alert at most; a resolve closes the one opened.
                for n in &notices {
                    match n.status {
                        AlertStatus::Triggered if n.repeat == 0 => {
                            prop_assert!(open.is_none());
                            open = Some(n.id.clone());
                        }
                        AlertStatus::Resolved => {
                            prop_assert_eq!(open.take(), Some(n.id.clone()));
                        }
                        _ => prop_assert_eq!(open.as_ref(), Some(&n.id)),
                    }
                    prop_assert_eq!(&n.notice_id, &n.notice_id());
                }
                let expected = oracle(p, &steps[..=i]).pop().unwrap_or_default();
                prop_assert_eq!(summary(&notices), expected, "step {} of {:?}", i, steps);
            }
        }
    }
}
