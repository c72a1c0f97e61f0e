#!/usr/bin/env bash
# file → decode → blackhole throughput on one core, against a bare decode loop;
# the cost of pass-through processor hops; and the cost of `aggregate` in the
# pipeline (its runs alternate with the 0-hop ones). All in one run on one
# seeded workload (10,000 workflows in flight, 5% duplicates), as ratios.
#
#   [RATE=events per second of event time] [PAIRS=aggregate runs, default 7] bench/pipeline_throughput.sh [EVENTS]   (default 2,000,000; RATE 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-2000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p flowpulse -p flowpulse-bench
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$bin/flowpulse" generate -n "$events" --seed 7 --in-flight 10000 --duplicates 0.05 --rate "${RATE:-1000}" -o "$work/events.jsonl"
echo "workload: $events flat events, $(du -h "$work/events.jsonl" | cut -f1)"
# The kernel writes the new file back to disk over the next half minute:
# done first, so that the timed runs do not share the machine with it.
sync

config() { # $1 = number of passthrough processors, or "agg" for one aggregate
  {
    printf '[pipeline]\ndata_dir = "%s/data"\n\n[sources.in]\ntype = "file"\npath = "%s/events.jsonl"\n\n' "$work" "$work"
    prev=in
    if [ "$1" = agg ]; then
      printf '[processors.metrics]\ntype = "aggregate"\ninputs = ["in"]\n\n'
      prev=metrics
    else
      for i in $(seq 1 "$1"); do
        printf '[processors.p%s]\ntype = "passthrough"\ninputs = ["%s"]\n\n' "$i" "$prev"
        prev="p$i"
      done
    fi
    printf '[sinks.out]\ntype = "blackhole"\ninputs = ["%s"]\n' "$prev"
  } > "$work/p$1.toml"
}

run_rate() { # $1 = config → events/s of one run
  start=$(date +%s.%N)
  TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 "$bin/flowpulse" run -c "$work/p$1.toml" >/dev/null
  end=$(date +%s.%N)
  echo "$events / ($end - $start)" | bc -l
}

best() { # best of the rates on stdin
  sort -g | tail -1 | xargs printf '%.0f'
}

pipeline_rate() { # $1 = passthrough count → events/s (best of 3)
  config "$1"
  for _ in 1 2 3; do run_rate "$1"; done | best
}

baseline_rate() {
  for _ in 1 2 3; do
    taskset -c 0 "$bin/decode_baseline" "$work/events.jsonl" | sed 's/.*rate=//'
  done | best
}

# The aggregate's ratio: 0 hops and aggregate runs alternate (PAIRS pairs,
# default 7), so a drift of the machine's speed during the run hits both alike.
config 0
config agg
pairs=${PAIRS:-7}
for _ in $(seq "$pairs"); do
  echo "0 $(run_rate 0)"
  echo "agg $(run_rate agg)"
done > "$work/alternating"
alt0=$(awk '$1 == "0" { print $2 }' "$work/alternating" | best)
altagg=$(awk '$1 == "agg" { print $2 }' "$work/alternating" | best)
# Each aggregate run against the 0-hop run just before it: when the
# machine's speed swings between runs (it does here, by up to 2×), the
# median of these paired ratios moves far less than a ratio of two bests,
# where one lucky run on either side decides.
paired=$(awk '$1 == "0" { zero = $2 } $1 == "agg" { printf "%.3f\n", $2 / zero }' "$work/alternating" | sort -g)
median=$(echo "$paired" | awk '{ r[NR] = $1 } END { print (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }')

base=$(baseline_rate)
p0=$(pipeline_rate 0)
p1=$(pipeline_rate 1)
p2=$(pipeline_rate 2)
p4=$(pipeline_rate 4)
ratio() { echo "scale=3; $1 / $2" | bc -l; }
echo "bare decode loop (taskset -c 0):            $base events/s"
echo "file → decode → blackhole (taskset -c 0):   $p0 events/s  ratio to bare loop: $(ratio "$p0" "$base")"
echo "  + 1 passthrough:                          $p1 events/s  ratio to 0 hops: $(ratio "$p1" "$p0")"
echo "  + 2 passthrough:                          $p2 events/s  ratio to 0 hops: $(ratio "$p2" "$p0")"
echo "  + 4 passthrough:                          $p4 events/s  ratio to 0 hops: $(ratio "$p4" "$p0")"
echo "alternating, $pairs pairs, best of each:"
echo "  file → decode → blackhole:                $alt0 events/s"
echo "  file → decode → aggregate → blackhole:    $altagg events/s  ratio: $(ratio "$altagg" "$alt0")"
echo "  paired ratios (aggregate / 0 hops):       $(echo $paired)  median: $median"
