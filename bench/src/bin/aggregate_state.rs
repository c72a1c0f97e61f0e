//! State size of `aggregate`: bytes per active workflow, the dedup window,
//! and whether state stays flat over a long run with a fixed number of
//! workflows in flight.
//!
//! Usage: aggregate_state [IN_FLIGHT] [EVENTS]   (default 100000 5000000)

use std::time::Instant;

use flowpulse_bench::{rss_bytes, workload};
use flowpulse_plugins::processors::aggregate::snapshot::{snapshot, snapshot_split};
use flowpulse_plugins::processors::aggregate::{AggregateConfig, AggregateState};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let in_flight: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let n: usize = args.next().map_or(Ok(5_000_000), |a| a.parse())?;
    let config: AggregateConfig = serde_json::from_str("{}")?;
    let rate: f64 = std::env::var("RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1000.0);
    let events = workload(n, in_flight, rate, 20);
    let wall_ms = events.last().map_or(0, |e| e.timestamp_ms) + 3_600_000;
    let rss_before = rss_bytes();
    let mut state = AggregateState::new(config.limits());
    println!("events_folded  workflows_in_memory  dedup_ids  pending  snapshot_bytes  snapshot_ms  rss_mib");
    let step = (events.len() / 10).max(1);
    for (i, event) in events.iter().enumerate() {
        state.fold(event, wall_ms);
        if (i + 1) % step == 0 {
            let start = Instant::now();
            let bytes = snapshot(&state);
            let snapshot_ms = start.elapsed().as_secs_f64() * 1000.0;
            println!(
                "{:>13}  {:>19}  {:>9}  {:>7}  {:>14}  {:>11.1}  {:>7.1}",
                i + 1,
                state.workflows_in_memory(),
                state.dedup_len(),
                state.pending_len(),
                bytes.len(),
                snapshot_ms,
                rss_bytes() as f64 / (1 << 20) as f64
            );
        }
    }
    // A checkpoint in steady state: the frozen dedup epochs are already in
    // the store, only the rest is written.
    let stored = state.dedup_epochs();
    let start = Instant::now();
    let (main, fresh) = snapshot_split(&state, &stored);
    println!(
        "steady-state checkpoint (dedup epochs already stored): {} bytes in {:.1} ms ({} epochs to add)",
        main.len(),
        start.elapsed().as_secs_f64() * 1000.0,
        fresh.len()
    );
    let workflows = state.workflows_in_memory().max(1) as f64;
    let bytes = snapshot(&state);
    println!(
        "\nin flight: {in_flight}; resident growth while folding: {:.1} MiB; snapshot {:.1} bytes per workflow in memory; dedup window: {} ids",
        (rss_bytes().saturating_sub(rss_before)) as f64 / (1 << 20) as f64,
        bytes.len() as f64 / workflows,
        state.dedup_len()
    );
    Ok(())
}
