#!/usr/bin/env bash
# Workers sharing a Kafka topic: what the split costs per event, and how
# long a killed worker's partitions wait for another.
#
# The topic (4 partitions) is filled once through the bridge from a seeded
# stream. Then, for 1, 2 and 3 workers (each count its own consumer group
# and its own state, `kafka` → `aggregate` → `blackhole`, checkpointed in
# Redis every second), every worker reads until it has been idle 3 s. On a
# two-core machine the wall clock cannot show scaling, so the figure is the
# CPU seconds (user + system, summed over the workers) per million events:
# a split that adds no per-event cost keeps it flat. Events/s is end to end,
# from the first start to the last worker's last record.
#
# Last, two workers read the topic again (a new group and state) and one is
# SIGKILLed halfway; the time from the kill until the other has taken over
# one of its partitions (state restored) is the failover time. The session
# timeout is 6 s, so most of it is the broker noticing the death.
#
#   bench/kafka_workers.sh [EVENTS] [REDIS_URL]   (default 1000000, redis://127.0.0.1:6379)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
url=${2:-redis://127.0.0.1:6379}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p flowpulse
bin="$CARGO_TARGET_DIR/release/flowpulse"
tansu="${FLOWPULSE_TEST_TANSU:-${XDG_CACHE_HOME:-$HOME/.cache}/flowpulse/tansu-0.6.0/tansu}"
[ -x "$tansu" ] || { echo "no Tansu broker at $tansu: run scripts/test.sh once (it installs it) or set FLOWPULSE_TEST_TANSU" >&2; exit 1; }
work=$(mktemp -d)
stream="flowpulse-bench:workers:$$"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$work/broker.log" 2>&1 &
broker=$!
cleanup() {
  pkill -9 -f "$work/" 2>/dev/null || true
  kill "$broker" 2>/dev/null || true
  # The broker is gone by now, so no group can be asked who reads it:
  # every worker has stopped, so the reset is forced.
  for k in 1 2 3 failover; do "$bin" state reset --force -c "$work/worker-$k.toml" >/dev/null 2>&1 || true; done
  rm -rf "$work"
  redis-cli -u "$url" del "$stream" "$stream:dead" >/dev/null
  redis-cli -u "$url" --scan --pattern "flowpulse:lease:*$stream" | xargs -r redis-cli -u "$url" del >/dev/null
}
trap cleanup EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
"$tansu" topic create events --partitions 4 --broker "tcp://127.0.0.1:$port" >/dev/null

"$bin" generate -n "$n" --seed 7 --in-flight 10000 --duplicates 0.05 --redis-url "$url" --stream "$stream" 2>/dev/null
cat >"$work/bridge.toml" <<EOF
[pipeline]
name = "bench-workers-bridge-$$"
data_dir = "$work/bridge"

[sources.events]
type = "redis_stream"
url = "$url"
stream = "$stream"
group = "bridge"
block = "100ms"
stop_after_idle = "2s"

[sinks.log]
type = "kafka"
inputs = ["events"]
brokers = "127.0.0.1:$port"
topic = "events"
EOF
RUST_LOG=warn "$bin" run -c "$work/bridge.toml" >/dev/null
echo "topic: $n events in 4 partitions (10,000 workflows in flight, 5% duplicates)"

# worker_config NAME [IDLE]: a worker config of its own group and state,
# stopping once idle IDLE (default 3s).
worker_config() {
  cat >"$work/worker-$1.toml" <<EOF
[pipeline]
name = "bench-workers-$1-$$"
data_dir = "$work/data-$1"

[checkpoint]
url = "$url"
interval = "1s"

[sources.log]
type = "kafka"
brokers = "127.0.0.1:$port"
topic = "events"
group = "bench-$1-$$"
stop_after_idle = "${2:-3s}"
options = { "session.timeout.ms" = "6000", "partition.assignment.strategy" = "range" }

[processors.metrics]
type = "aggregate"
inputs = ["log"]

[sinks.out]
type = "blackhole"
inputs = ["metrics"]
EOF
}

echo "workers  CPU s (user+sys)  CPU s per M events  events/s end to end"
for k in 1 2 3; do
  worker_config "$k"
  start=$(date +%s.%N)
  pids=()
  for i in $(seq "$k"); do
    /usr/bin/time -f "%U %S" -o "$work/time-$k-$i" \
      "$bin" --log-format json run -c "$work/worker-$k.toml" 2>"$work/log-$k-$i" >/dev/null &
    pids+=($!)
  done
  wait "${pids[@]}"
  # The group must have read the whole topic (Tansu sometimes leaves a
  # rebalance unfinished, and then a run reads less).
  read=$(cat "$work"/log-$k-* | grep '"message":"summary"' | grep '"component":"metrics"' |
    sed 's/.*"records_in":\([0-9]*\).*/\1/' | awk '{ s += $1 } END { print s }')
  [ "$read" -ge "$n" ] || echo "  (workers of this run read only $read records: a rebalance stalled; run again)"
  cpu=$(cat "$work"/time-$k-* | awk '{ s += $1 + $2 } END { print s }')
  # The workers stop 3 s after their last record.
  end=$(echo "$(date +%s.%N) - 3" | bc -l)
  printf '%7d  %16.2f  %18.2f  %19.0f\n' "$k" "$cpu" "$(echo "$cpu * 1000000 / $n" | bc -l)" "$(echo "$n / ($end - $start)" | bc -l)"
done

# The survivor must outlive the session timeout after its own partitions
# are read.
worker_config failover 30s
"$bin" --log-format json run -c "$work/worker-failover.toml" 2>"$work/log-f1" >/dev/null &
victim=$!
"$bin" --log-format json run -c "$work/worker-failover.toml" 2>"$work/log-f2" >/dev/null &
survivor=$!
# Halfway: once the victim has taken over a partition and read for a while.
for _ in $(seq 600); do grep -q "took over the partition" "$work/log-f1" && break; sleep 0.1; done
sleep 3
owned=$(grep "took over the partition" "$work/log-f1" | sed 's/.*"partition":\([0-9]*\).*/\1/' | sort -u | tr '\n' ' ')
before=$(grep -c "took over the partition" "$work/log-f2" || true)
killed=$(date +%s.%N)
kill -9 "$victim"
taken=""
for _ in $(seq 1200); do
  for p in $owned; do
    if grep "took over the partition" "$work/log-f2" | tail -n +$((before + 1)) | grep -q "\"partition\":$p[,}]"; then
      taken=$(date +%s.%N)
      break 2
    fi
  done
  sleep 0.05
done
kill -TERM "$survivor"
wait "$survivor" || true
if [ -n "$taken" ]; then
  printf 'failover: kill -9 of a worker → its partition taken over by the other: %.1f s (session timeout 6 s)\n' "$(echo "$taken - $killed" | bc -l)"
else
  echo "failover: the other worker never took over the killed one's partitions ($owned)"
fi
