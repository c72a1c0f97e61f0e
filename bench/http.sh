#!/usr/bin/env bash
# HTTP figures, each in one run, Flowpulse on core 0 and the client on core 1
# (taskset; this machine has 2 cores):
#   realtime   GET /api/v1/monitoring/metrics/realtime with wrk -t1 -c16 -d30s
#              --latency while `demo` ingests 1,000 events/s;
#   fanout     1,000 WebSocket clients; per document, from `last_update` (the
#              aggregate's emission) to its arrival at the last client, at
#              interval = "500ms", for FANOUT_SECONDS (default 120);
#   freshness  10,000 events/s XADDed to a Redis stream, a probe event every
#              100 ms; redis_stream → aggregate (min_interval = "20ms") →
#              websocket; from a probe's XADD to the client seeing it counted,
#              for FRESHNESS_SECONDS (default 60).
#
#   bench/http.sh [realtime|fanout|freshness|all] [REDIS_URL]   (default all, redis://127.0.0.1:6379)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
url=${2:-redis://127.0.0.1:6379}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p flowpulse -p flowpulse-bench
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
stream="flowpulse-bench:fresh:$$"
pid=""
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
  redis-cli -u "$url" del "$stream" >/dev/null 2>&1 || true
  redis-cli -u "$url" --scan --pattern "flowpulse:*$stream*" | xargs -r redis-cli -u "$url" del >/dev/null 2>&1 || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# $1 = config file: starts Flowpulse on core 0 and waits for its first document.
start() {
  RUST_LOG=warn taskset -c 0 "$bin/flowpulse" run -c "$1" >/dev/null 2>"$work/stderr" &
  pid=$!
  for _ in $(seq 1 100); do
    curl -sf "http://$address/api/v1/monitoring/metrics/realtime" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "Flowpulse did not serve a document:" >&2; cat "$work/stderr" >&2; exit 1
}

stop() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }

header() {
  printf '[pipeline]\nname = "bench-http"\ndata_dir = "%s/data"\n\n' "$work"
}

http_sinks() { # $1 = websocket inputs
  printf '[sinks.api]\ntype = "rest"\ninputs = ["metrics"]\naddress = "%s"\n\n' "$address"
  printf '[sinks.live]\ntype = "websocket"\ninputs = [%s]\naddress = "%s"\n' "$1" "$address"
}

if [ "$what" = realtime ] || [ "$what" = all ]; then
  address="127.0.0.1:$(free_port)"
  { header
    printf '[sources.demo]\ntype = "demo"\nrate = 1000\n\n[processors.metrics]\ntype = "aggregate"\ninputs = ["demo"]\ninterval = "1s"\n\n'
    http_sinks '"metrics", "demo"'; } > "$work/realtime.toml"
  start "$work/realtime.toml"
  echo "== realtime: wrk -t1 -c16 -d30s --latency (core 1), Flowpulse on core 0, demo at 1,000 events/s"
  taskset -c 1 wrk -t1 -c16 -d30s --latency "http://$address/api/v1/monitoring/metrics/realtime" \
    | grep -E 'Latency|Requests/sec|^ +(50|99)%|Non-2xx|Socket errors'
  stop
fi

if [ "$what" = fanout ] || [ "$what" = all ]; then
  address="127.0.0.1:$(free_port)"
  { header
    printf '[sources.demo]\ntype = "demo"\nrate = 1000\n\n[processors.metrics]\ntype = "aggregate"\ninputs = ["demo"]\ninterval = "500ms"\n\n'
    http_sinks '"metrics"'; } > "$work/fanout.toml"
  start "$work/fanout.toml"
  echo "== fanout: 1,000 WebSocket clients (core 1), interval 500ms, ${FANOUT_SECONDS:-120} s"
  taskset -c 1 "$bin/ws_fanout" "ws://$address/ws/monitoring" 1000 "${FANOUT_SECONDS:-120}"
  stop
fi

if [ "$what" = freshness ] || [ "$what" = all ]; then
  address="127.0.0.1:$(free_port)"
  redis-cli -u "$url" del "$stream" >/dev/null
  redis-cli -u "$url" xgroup create "$stream" bench '$' mkstream >/dev/null
  { header
    printf '[sources.events]\ntype = "redis_stream"\nurl = "%s"\nstream = "%s"\ngroup = "bench"\nblock = "100ms"\n\n' "$url" "$stream"
    printf '[processors.metrics]\ntype = "aggregate"\ninputs = ["events"]\ninterval = "1s"\nmin_interval = "20ms"\n\n'
    printf '[sinks.live]\ntype = "websocket"\ninputs = ["metrics"]\naddress = "%s"\n' "$address"
    printf '\n[sinks.api]\ntype = "rest"\ninputs = ["metrics"]\naddress = "%s"\n' "$address"; } > "$work/freshness.toml"
  start "$work/freshness.toml"
  echo "== freshness: 10,000 events/s + a probe every 100 ms (core 1), redis_stream → aggregate (min_interval 20ms) → websocket, ${FRESHNESS_SECONDS:-60} s"
  taskset -c 1 "$bin/freshness" "$url" "$stream" "ws://$address/ws/monitoring" 10000 "${FRESHNESS_SECONDS:-60}"
  stop
fi
