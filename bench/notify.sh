#!/usr/bin/env bash
# Notification delivery, Flowpulse on core 0 and the receiver on core 1
# (taskset; this machine has 2 cores):
#   send    the real runtime: a benchmark source plugin (`notice_burst`, in
#           bench/src/bin/notify_rate.rs) emits N notices, one per alert, in
#           batches of 100, into a `webhook` sink (signed, Flowpulse body)
#           posting to a local receiver that answers 200 at once; the rate is
#           from the first batch to the last delivery counted by the sink;
#   outbox  the outbox alone on core 0: N notices inserted in batches of 100,
#           then marked delivered in batches of 16; its time per notice over
#           the end-to-end time per notice is the outbox's share.
#
#   bench/notify.sh [N]   (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p flowpulse-bench --bin notify_rate
bin="$CARGO_TARGET_DIR/release/notify_rate"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 1 "$bin" receive "127.0.0.1:$port" &
receiver=$!
trap 'kill $receiver 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
RUST_LOG=warn taskset -c 0 "$bin" send "http://127.0.0.1:$port/hook" "$n"
taskset -c 0 "$bin" outbox "$n"
