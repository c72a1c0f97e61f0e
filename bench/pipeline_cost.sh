#!/usr/bin/env bash
# What `aggregate` costs in the file pipeline, counted rather than timed:
# file → decode → blackhole and file → decode → aggregate → blackhole run
# under cachegrind (valgrind) on the workload of pipeline_throughput.sh, and
# the instructions and misses of the 512 KiB L2 each adds per event are
# printed. The counts do not depend on what else the machine is doing, so
# two builds compare exactly where a timed ratio drifts by ±10% from run to
# run. Cachegrind ignores prefetches and models no out-of-order overlap:
# misses that the aggregate prefetches count in full.
#
#   bench/pipeline_cost.sh [EVENTS]   (default 2,000,000; needs valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-2000000}
command -v valgrind >/dev/null || { echo "pipeline_cost.sh needs valgrind (apt-get install valgrind)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p flowpulse
bin="$CARGO_TARGET_DIR/release/flowpulse"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$bin" generate -n "$events" --seed 7 --in-flight 10000 --duplicates 0.05 --rate "${RATE:-1000}" -o "$work/events.jsonl"
lines=$(wc -l < "$work/events.jsonl")

config() { # $1 = name, $2 = "agg" for an aggregate between source and sink
  {
    printf '[pipeline]\ndata_dir = "%s/data-%s"\n\n[sources.in]\ntype = "file"\npath = "%s/events.jsonl"\n\n' "$work" "$1" "$work"
    prev=in
    if [ "${2:-}" = agg ]; then
      # Documents are emitted on the wall clock, which runs ~50 times too
      # fast under valgrind: one document at the end, as in a timed run.
      printf '[processors.metrics]\ntype = "aggregate"\ninputs = ["in"]\ninterval = "1h"\n\n'
      prev=metrics
    fi
    printf '[sinks.out]\ntype = "blackhole"\ninputs = ["%s"]\n' "$prev"
  } > "$work/$1.toml"
}
config p0
config agg agg

# L2 of this machine's cores as the last level: a miss there goes to the
# shared L3 or memory, which is what the aggregate's state competes for.
count() { # $1 = config name → "instructions l2_misses"
  TOKIO_WORKER_THREADS=1 RUST_LOG=warn valgrind --tool=cachegrind --cache-sim=yes \
    --LL=524288,8,64 --cachegrind-out-file="$work/$1.out" "$bin" run -c "$work/$1.toml" \
    >/dev/null 2>"$work/$1.log"
  ir=$(grep -E 'I +refs:' "$work/$1.log" | awk '{gsub(",", "", $4); print $4}')
  ll=$(grep -E 'LLd misses:' "$work/$1.log" | awk '{gsub(",", "", $4); print $4}')
  echo "$ir $ll"
}
count p0 > "$work/p0.counts" &
count agg > "$work/agg.counts"
wait
read -r ir0 ll0 < "$work/p0.counts"
read -r ira lla < "$work/agg.counts"
per() { echo "scale=1; $1 / $lines" | bc -l; }
echo "workload: $lines lines"
echo "file → decode → blackhole:              $(per "$ir0") instructions, $(per "$ll0") L2 misses per event"
echo "file → decode → aggregate → blackhole:  $(per "$ira") instructions, $(per "$lla") L2 misses per event"
echo "aggregate adds:                         $(per "$((ira - ir0))") instructions, $(per "$((lla - ll0))") L2 misses per event"
