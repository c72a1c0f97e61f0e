#!/usr/bin/env bash
# Throughput from a Redis stream into metrics, as a ratio to a bare consumer
# that only XREADGROUPs and XACKs the same entries, in the same run on the same
# stream, both on one core (taskset -c 0; Redis itself on the other).
#
#   bench/redis_throughput.sh [ENTRIES] [REDIS_URL]   (default 300000, redis://127.0.0.1:6379)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-300000}
url=${2:-redis://127.0.0.1:6379}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p flowpulse -p flowpulse-bench
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
stream="flowpulse-bench:events:$$"
trap 'rm -rf "$work"; redis-cli -u "$url" del "$stream" "$stream:dead" flowpulse-bench:metrics >/dev/null' EXIT

"$bin/flowpulse" generate -n "$n" --seed 7 --in-flight 10000 --duplicates 0.05 --redis-url "$url" --stream "$stream" 2>/dev/null
entries=$(redis-cli -u "$url" xlen "$stream")
echo "stream: $entries entries (envelope form, 10,000 workflows in flight, 5% duplicates)"

bare=$(taskset -c 0 "$bin/redis_baseline" "$url" "$stream" bare | sed 's/.*rate=//')

run() { # $1 = group, $2 = processors+sinks toml
  printf '[pipeline]\nname = "bench-%s"\ndata_dir = "%s/data"\n\n[sources.events]\ntype = "redis_stream"\nurl = "%s"\nstream = "%s"\ngroup = "%s"\nstop_after_idle = "500ms"\nblock = "100ms"\n\n%s\n' \
    "$1" "$work" "$url" "$stream" "$1" "$2" > "$work/$1.toml"
  start=$(date +%s.%N)
  TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 "$bin/flowpulse" run -c "$work/$1.toml" >/dev/null
  end=$(date +%s.%N)
  # Minus the idle wait that ends the run.
  echo "$entries / ($end - $start - 0.5)" | bc -l | xargs printf '%.0f'
}

only=$(run blackhole '[sinks.out]
type = "blackhole"
inputs = ["events"]')
metrics=$(run metrics '[processors.metrics]
type = "aggregate"
inputs = ["events"]

[sinks.out]
type = "redis_cache"
url = "'"$url"'"
key = "flowpulse-bench:metrics"
inputs = ["metrics"]')

ratio() { echo "scale=3; $1 / $2" | bc -l; }
echo "bare XREADGROUP + XACK consumer:                 $(printf '%.0f' "$bare") entries/s"
echo "redis_stream → blackhole:                        $only entries/s  ratio: $(ratio "$only" "$bare")"
echo "redis_stream → aggregate → redis_cache:          $metrics entries/s  ratio: $(ratio "$metrics" "$bare")"
