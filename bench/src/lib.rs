//! Shared helpers of the Flowpulse benchmarks.

use flowpulse_core::event::WorkflowEvent;
use flowpulse_plugins::sources::demo::generator::{WorkloadConfig, WorkloadGenerator};

/// `n` seeded events with `in_flight` workflows in flight, at `rate` events
/// per second of event time, where every `duplicate_every`-th event is
/// delivered a second time a few events later (0: none).
pub fn workload(
    n: usize,
    in_flight: usize,
    rate: f64,
    duplicate_every: usize,
) -> Vec<WorkflowEvent> {
    let generator = WorkloadGenerator::new(WorkloadConfig {
        seed: 7,
        in_flight,
        rate,
        ..WorkloadConfig::default()
    });
    let mut events = Vec::with_capacity(n + n / duplicate_every.max(1));
    let mut delayed = std::collections::VecDeque::new();
    for (i, event) in generator.take(n).enumerate() {
        if duplicate_every > 0 && i % duplicate_every == 0 {
            delayed.push_back((i + 7, event.clone()));
        }
        events.push(event);
        while delayed.front().is_some_and(|(at, _)| *at <= i) {
            if let Some((_, event)) = delayed.pop_front() {
                events.push(event);
            }
        }
    }
    events.extend(delayed.into_iter().map(|(_, e)| e));
    events
}

/// Resident memory of this process in bytes (Linux), 0 where unknown.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}
