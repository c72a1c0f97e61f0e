//! Shared helpers of the Flowpulse benchmarks.
