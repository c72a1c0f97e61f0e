//! `aggregate` alone on decoded events: 10,000 workflows in flight,
//! 5% duplicates, a fixed seed. Run on one core:
//! `taskset -c 0 cargo bench -p flowpulse-bench --bench aggregate`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use flowpulse_bench::workload;
use flowpulse_plugins::processors::aggregate::{AggregateConfig, AggregateState};

fn aggregate(c: &mut Criterion) {
    // Event time advances by 1/rate per event: 100 events/s is 10,000
    // workflows each changing every 100 s, 1000/s every 10 s (ten times the
    // identities in the dedup window).
    for rate in [100.0, 1000.0] {
        fold(c, rate);
    }
}

fn fold(c: &mut Criterion, rate: f64) {
    // Warm the state (full dedup window, 10,000 in flight), then measure
    // the steady state: folding the next million events.
    let events = workload(2_000_000, 10_000, rate, 20);
    let (warmup, measured) = events.split_at(events.len() / 2);
    let config: AggregateConfig = serde_json::from_str("{}").expect("defaults");
    let wall_ms = events.last().map_or(0, |e| e.timestamp_ms) + 3_600_000;
    let mut warm = AggregateState::new(config.limits());
    for event in warmup {
        warm.fold(event, wall_ms);
    }
    let mut group = c.benchmark_group("aggregate");
    group.sample_size(10);
    group.throughput(Throughput::Elements(measured.len() as u64));
    let name = format!("fold_10k_in_flight_5pct_duplicates_{rate}_events_per_s");
    group.bench_function(name, |b| {
        b.iter_batched(
            || warm.clone(),
            |mut state| {
                for batch in measured.chunks(1024) {
                    state.fold_all(batch, wall_ms);
                }
                state
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, aggregate);
criterion_main!(benches);
