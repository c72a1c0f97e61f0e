//! `alert_rules`' evaluator: 1,000 rules over a document of 100 agents, each
//! rule an instance per agent (100,000 rule instances per document). Run on
//! one core: `taskset -c 0 cargo bench -p flowpulse-bench --bench alert_rules`.

use criterion::{criterion_group, criterion_main, Criterion};
use flowpulse_core::metrics::{AgentStats, RealtimeMetrics};
use flowpulse_plugins::processors::alert_rules::evaluator::{At, CompiledRule, Evaluator};
use flowpulse_plugins::processors::alert_rules::path::SelfSample;
use flowpulse_plugins::processors::alert_rules::rule::Rule;

fn rules() -> Vec<CompiledRule> {
    (0..1000)
        .map(|i| {
            // Thresholds spread so that about a tenth of the instances fire
            // and stay firing: the steady state of a busy system.
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
    let docs: Vec<RealtimeMetrics> = (0..10).map(document).collect();
    let mut evaluator = Evaluator::default();
    // Warm: pending and firing instances in place.
    for (i, doc) in docs.iter().enumerate() {
        let at = At {
            as_of_ms: i as i64 * 1000,
            wall_ms: i as i64 * 1000,
        };
        evaluator.evaluate(&rules, doc, &SelfSample::default(), at);
    }
    let mut step = docs.len();
    c.bench_function("alert_rules/1000_rules_x_100_agents_per_document", |b| {
        b.iter(|| {
            step += 1;
            let at = At {
                as_of_ms: step as i64 * 1000,
                wall_ms: step as i64 * 1000,
            };
            evaluator.evaluate(&rules, &docs[step % docs.len()], &SelfSample::default(), at)
        })
    });
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
