#!/usr/bin/env bash
# The Kafka bridge (redis_stream → kafka) against a bare consumer that only
# XREADGROUPs and XACKs the same entries, in the same run on the same stream,
# and against a bare producer that only writes the same number of events,
# already serialized, with the bridge's producer settings (the broker's own
# ceiling): Flowpulse and the bare clients on one core (taskset -c 0), Redis
# and the broker on the other. The bridge is timed from its start until its
# consumer group has read everything (lag 0) with nothing pending, i.e. every
# entry acknowledged by the broker (idempotent producer, acks = all) and then
# XACKed.
#
#   bench/kafka_bridge.sh [ENTRIES] [REDIS_URL]   (default 1000000, redis://127.0.0.1:6379)
#
# The broker: Tansu (FLOWPULSE_TEST_TANSU, or where scripts/test.sh installs
# it), in memory, on a free port; a topic of 4 partitions.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
url=${2:-redis://127.0.0.1:6379}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p flowpulse -p flowpulse-bench
bin="$CARGO_TARGET_DIR/release"
tansu="${FLOWPULSE_TEST_TANSU:-${XDG_CACHE_HOME:-$HOME/.cache}/flowpulse/tansu-0.6.0/tansu}"
[ -x "$tansu" ] || { echo "no Tansu broker at $tansu: run scripts/test.sh once (it installs it) or set FLOWPULSE_TEST_TANSU" >&2; exit 1; }
work=$(mktemp -d)
stream="flowpulse-bench:bridge:$$"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
taskset -c 1 "$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$work/broker.log" 2>&1 &
broker=$!
cleanup() {
  kill "$broker" 2>/dev/null || true
  rm -rf "$work"
  redis-cli -u "$url" del "$stream" "$stream:dead" >/dev/null
  redis-cli -u "$url" --scan --pattern "flowpulse:lease:*$stream" | xargs -r redis-cli -u "$url" del >/dev/null
}
trap cleanup EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
"$tansu" topic create events --partitions 4 --broker "tcp://127.0.0.1:$port" >/dev/null

"$bin/flowpulse" generate -n "$n" --seed 7 --in-flight 10000 --duplicates 0.05 --redis-url "$url" --stream "$stream" 2>/dev/null
entries=$(redis-cli -u "$url" xlen "$stream")
echo "stream: $entries entries (envelope form, 10,000 workflows in flight, 5% duplicates); topic: 4 partitions"

bare=$(taskset -c 0 "$bin/redis_baseline" "$url" "$stream" bare | sed 's/.*rate=//')
"$tansu" topic create baseline --partitions 4 --broker "tcp://127.0.0.1:$port" >/dev/null
produce=$(taskset -c 0 "$bin/kafka_produce_baseline" "127.0.0.1:$port" baseline "$entries" | sed 's/.*rate=//')

cat >"$work/bridge.toml" <<EOF
[pipeline]
name = "bench-bridge"
data_dir = "$work/data"

[sources.events]
type = "redis_stream"
url = "$url"
stream = "$stream"
group = "bridge"
block = "100ms"

[sinks.log]
type = "kafka"
inputs = ["events"]
brokers = "127.0.0.1:$port"
topic = "events"
options = { "linger.ms" = "5", "compression.type" = "lz4" }
EOF
TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 "$bin/flowpulse" run -c "$work/bridge.toml" >/dev/null &
pid=$!
bridge=$(taskset -c 1 "$bin/redis_baseline" "$url" "$stream" bridge --wait | sed 's/.*rate=//')
kill -TERM "$pid"
wait "$pid" || true

ratio() { echo "scale=3; $1 / $2" | bc -l; }
echo "bare XREADGROUP + XACK consumer:     $(printf '%.0f' "$bare") entries/s"
echo "bare producer (the broker's ceiling): $(printf '%.0f' "$produce") records/s"
echo "redis_stream → kafka (the bridge):   $(printf '%.0f' "$bridge") entries/s  ratio to the consumer: $(ratio "$bridge" "$bare"), to the producer: $(ratio "$bridge" "$produce")"
