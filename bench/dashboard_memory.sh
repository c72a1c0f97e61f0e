#!/usr/bin/env bash
# The dashboard over one hour of updates replayed 60 times faster (one wall
# minute), in headless Chromium: JS heap and DOM nodes after a forced GC at
# 10 simulated minutes and at the end, and the p99 time to render one update.
# Needs chromium and chromium-driver (apt-get install chromium chromium-driver).
#
#   bench/dashboard_memory.sh [SIMULATED_MINUTES]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p flowpulse -p flowpulse-bench --bin flowpulse --bin dashboard_memory
"$CARGO_TARGET_DIR/release/dashboard_memory" "$CARGO_TARGET_DIR/release/flowpulse" "${1:-60}"
