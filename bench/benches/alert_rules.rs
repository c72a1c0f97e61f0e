//! `alert_rules`' evaluator: 1,000 rules over a document of 100 agents, each
//! rule an instance per agent (100,000 rule instances per document), in the
//! steady state and with one agent changing. Run on one core:
//! `taskset -c 0 cargo bench -p flowpulse-bench --bench alert_rules`.

use criterion::{criterion_group, criterion_main, Criterion};
use flowpulse_core::metrics::{AgentStats, RealtimeMetrics};
use flowpulse_plugins::processors::alert_rules::evaluator::{At, CompiledRule, Evaluator};
use flowpulse_plugins::processors::alert_rules::path::SelfSample;
use flowpulse_plugins::processors::alert_rules::rule::Rule;

fn rules() -> Vec<CompiledRule> {
    (0..1000)
        .map(|i| {
            // Thresholds spread so that about half the instances fire and
            // stay firing: the steady state of a busy system.
            let text = format!(
                "name = \"rule {i}\"\nseverity = \"warning\"\n\
                 condition = {{ metric = \"agents.*.success_rate_percent\", operator = \"<\", value = {}, duration_ms = 1000 }}",
                80 + (i % 20)
            );
            let rule: Rule = toml::from_str(&text).expect("a valid rule");
            CompiledRule::new(rule).expect("compiles")
        })
        .collect()
}

fn document(step: usize) -> RealtimeMetrics {
    RealtimeMetrics {
        agents: (0..100)
            .map(|a| AgentStats {
                agent_type: format!("agent-{a:03}"),
                success_rate_percent: 80.0 + ((a * 7 + step) % 20) as f64,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn evaluate(c: &mut Criterion) {
    let rules = rules();
    // Steady state: the same values document after document (what a system
    // whose health does not change looks like); about half the 100,000
    // instances are firing and stay so.
    let steady = [document(0), document(0)];
    // Churn: every other document one agent's value moves, so ~1% of the
    // instances change state (and are notified) each time.
    let mut moved = document(0);
    moved.agents[0].success_rate_percent = 99.0;
    let churn = [document(0), moved];
    for (name, docs) in [("steady", steady), ("one_agent_changing", churn)] {
        let mut evaluator = Evaluator::default();
        let mut second = 0i64;
        let mut next = |evaluator: &mut Evaluator| {
            second += 1;
            let at = At {
                as_of_ms: second * 1000,
                wall_ms: second * 1000,
            };
            let doc = &docs[second as usize % 2];
            evaluator.evaluate(&rules, doc, &SelfSample::default(), at)
        };
        // Warm: pending instances have fired.
        for _ in 0..4 {
            next(&mut evaluator);
        }
        c.bench_function(
            &format!("alert_rules/1000_rules_x_100_agents_per_document/{name}"),
            |b| b.iter(|| next(&mut evaluator)),
        );
    }
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
