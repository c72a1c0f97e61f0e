#!/usr/bin/env bash
# Throughput from a Redis stream into metrics, as a ratio to a bare consumer
# that only XREADGROUPs and XACKs the same entries, in the same run on the same
# stream, both on one core (taskset -c 0; Redis itself on the other). Each
# Flowpulse run is timed from its start until its consumer group has read
# everything (lag 0) with nothing pending, i.e. every entry taken end to end.
#
#   bench/redis_throughput.sh [ENTRIES] [REDIS_URL]   (default 2000000, redis://127.0.0.1:6379)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000000}
url=${2:-redis://127.0.0.1:6379}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p flowpulse -p flowpulse-bench
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
stream="flowpulse-bench:events:$$"
cleanup() {
  rm -rf "$work"
  redis-cli -u "$url" del "$stream" "$stream:dead" flowpulse-bench:metrics >/dev/null
  redis-cli -u "$url" --scan --pattern "flowpulse:*bench-*" | xargs -r redis-cli -u "$url" del >/dev/null
  redis-cli -u "$url" --scan --pattern "flowpulse:lease:*$stream" | xargs -r redis-cli -u "$url" del >/dev/null
}
trap cleanup EXIT

"$bin/flowpulse" generate -n "$n" --seed 7 --in-flight 10000 --duplicates 0.05 --redis-url "$url" --stream "$stream" 2>/dev/null
entries=$(redis-cli -u "$url" xlen "$stream")
echo "stream: $entries entries (envelope form, 10,000 workflows in flight, 5% duplicates)"

bare=$(taskset -c 0 "$bin/redis_baseline" "$url" "$stream" bare | sed 's/.*rate=//')

run() { # $1 = group, $2 = extra tables → entries/s until the group is drained
  printf '[pipeline]\nname = "bench-%s"\ndata_dir = "%s/data"\n\n[sources.events]\ntype = "redis_stream"\nurl = "%s"\nstream = "%s"\ngroup = "%s"\nblock = "100ms"\n\n%s\n' \
    "$1" "$work" "$url" "$stream" "$1" "$2" > "$work/$1.toml"
  TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 "$bin/flowpulse" run -c "$work/$1.toml" >/dev/null &
  pid=$!
  rate=$(taskset -c 1 "$bin/redis_baseline" "$url" "$stream" "$1" --wait | sed 's/.*rate=//')
  kill -TERM "$pid"; wait "$pid" || true
  printf '%.0f' "$rate"
}

aggregate='[processors.metrics]
type = "aggregate"
inputs = ["events"]

[sinks.out]
type = "redis_cache"
url = "'"$url"'"
key = "flowpulse-bench:metrics"
inputs = ["metrics"]'

only=$(run blackhole '[sinks.out]
type = "blackhole"
inputs = ["events"]')
metrics=$(run metrics "$aggregate")
checkpointed=$(run checkpointed "[checkpoint]
url = \"$url\"
interval = \"1s\"

$aggregate")

ratio() { echo "scale=3; $1 / $2" | bc -l; }
echo "bare XREADGROUP + XACK consumer:                          $(printf '%.0f' "$bare") entries/s"
echo "redis_stream → blackhole:                                 $only entries/s  ratio: $(ratio "$only" "$bare")"
echo "redis_stream → aggregate → redis_cache:                   $metrics entries/s  ratio: $(ratio "$metrics" "$bare")"
echo "the same, checkpointed to Redis every second:             $checkpointed entries/s  ratio: $(ratio "$checkpointed" "$bare")"
