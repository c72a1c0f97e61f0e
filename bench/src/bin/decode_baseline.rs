//! The baseline a pipeline is measured against: a bare loop that reads a
//! JSON-lines file and only parses each line with serde_json into the same
//! event type (`decode_json`), with no pipeline around it.
//!
//! Usage: decode_baseline FILE  → prints `events=N seconds=S rate=R`.

use std::time::Instant;

use flowpulse_core::event::{decode_json, Decoded};

// The same allocator as the `flowpulse` binary, so the comparison is of the
// pipeline around decoding, not of allocators.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: decode_baseline FILE")?;
    let start = Instant::now();
    let bytes = std::fs::read(&path)?;
    let mut events = 0u64;
    let mut other = 0u64;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match decode_json(line, None) {
            Ok(Decoded::Event(event)) => {
                events += 1;
                std::hint::black_box(event);
            }
            _ => other += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "events={events} other={other} seconds={seconds:.3} rate={:.0}",
        events as f64 / seconds
    );
    Ok(())
}
