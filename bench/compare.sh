#!/usr/bin/env bash
# bench/compare.sh - one-run comparison of the reader's hit path against the ceiling.
#
# On loopback, with the servers pinned to CPU 0 and wrk to CPU 1 (taskset), it measures
# in alternating rounds:
#   (a) ceiling  bench/ceiling.rs: a minimal hyper server returning the same ~1 KB bytes
#   (b) hits     catalogd reader, GET /products/{id}, ids uniform over 100,000 warm products
#   (e) batch    catalogd reader, GET /products?ids=<50 random ids>, all warm
# and prints, per target, the median over the rounds of req/s, p50 and p99 latency, and
# the server's CPU time per request (process CPU time / requests answered: on 2 cores the
# load generator is itself a bottleneck, so this is the fairer figure), each as a ratio
# to (a). Not yet measured here: (c) Zipf over 1,000,000 products with a 10 % L1 and (d)
# cold misses from the replica.
#
# Usage: bench/compare.sh [rounds (3)] [seconds per run (10)] [connections (64)]
# Needs the local stack (ops/dev.sh up) with the demo catalog (ops/dev.sh run seeds it);
# installs wrk from Debian's packages if missing. Runs about 2 + rounds*3*seconds/60 min.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
ROUNDS=${1:-3}
SECS=${2:-10}
CONNS=${3:-64}
PRODUCTS=100000
CEILING_ADDR=127.0.0.1:18080
READER_ADDR=127.0.0.1:18081
WORK=$(mktemp -d)
PIDS=()

log() { printf 'compare.sh: %s\n' "$*" >&2; }
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

command -v wrk >/dev/null || {
  log "installing wrk"
  DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null
}

cd "$ROOT"
ops/dev.sh up >/dev/null
eval "$(ops/dev.sh env)"
cargo build --release --bin catalogd --bin ceiling >&2
count=$(psql "$CATALOG_DATABASE_URL" -tAc 'select count(*) from products where active and deleted_at is null')
if ((count < PRODUCTS * 9 / 10)); then
  log "the catalog has $count visible products; run ops/dev.sh run once to seed the demo catalog"
  exit 1
fi

cat >"$WORK/uniform.lua" <<LUA
math.randomseed(os.time())
request = function() return wrk.format("GET", "/products/" .. math.random(1, $PRODUCTS)) end
LUA
cat >"$WORK/batch.lua" <<LUA
math.randomseed(os.time())
request = function()
  local ids = {}
  for i = 1, 50 do ids[i] = math.random(1, $PRODUCTS) end
  return wrk.format("GET", "/products?ids=" .. table.concat(ids, ","))
end
LUA

taskset -c 0 target/release/ceiling "$CEILING_ADDR" & PIDS+=($!)
ceiling_pid=$!
CATALOG_READER_ADDR=$READER_ADDR CATALOG_L1_BYTES=$((2 * 1024 * 1024 * 1024)) CATALOG_LOG=warn \
  taskset -c 0 target/release/catalogd reader & PIDS+=($!)
reader_pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://$READER_ADDR/healthz" >/dev/null && curl -sf "http://$CEILING_ADDR/" >/dev/null && break
  sleep 0.1
done

log "warming L1: every product once"
taskset -c 1 wrk -t1 -c"$CONNS" -d20s -s "$WORK/uniform.lua" "http://$READER_ADDR" >/dev/null
hits() { curl -s "http://$READER_ADDR/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# run NAME PID URL SCRIPT -> "req_per_s p50_ms p99_ms cpu_us_per_req"
run() {
  local pid=$2 url=$3 script=$4 before after out
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "$script" "$url")
  after=$(cpu_ticks "$pid")
  awk -v cpu=$((after - before)) -v tick="$TICK" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /requests in/ { reqs = $1 }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    END { printf "%.0f %.3f %.3f %.2f\n", rps, p50, p99, cpu / tick * 1e6 / reqs }' <<<"$out"
}

: >"$WORK/results"
misses_before=$(hits catalog_l1_misses_total)
hits_before=$(hits catalog_l1_hits_total)
for round in $(seq 1 "$ROUNDS"); do
  log "round $round of $ROUNDS"
  echo "ceiling $(run ceiling "$ceiling_pid" "http://$CEILING_ADDR" "$WORK/uniform.lua")" >>"$WORK/results"
  echo "hits $(run hits "$reader_pid" "http://$READER_ADDR" "$WORK/uniform.lua")" >>"$WORK/results"
  echo "batch50 $(run batch "$reader_pid" "http://$READER_ADDR" "$WORK/batch.lua")" >>"$WORK/results"
done
misses=$(awk -v a="$(hits catalog_l1_misses_total)" -v b="$misses_before" 'BEGIN {print a - b}')
hits_n=$(awk -v a="$(hits catalog_l1_hits_total)" -v b="$hits_before" 'BEGIN {print a - b}')

echo
echo "bench/compare.sh: $ROUNDS rounds x ${SECS}s, $CONNS connections, servers on CPU 0, wrk on CPU 1"
echo "L1 hit ratio during the measured rounds: $(awk -v h="$hits_n" -v m="$misses" 'BEGIN {printf "%.4f", h / (h + m)}')"
awk '
  function median(name, col,   n, i, j, t, v) {
    n = 0; for (i = 1; i <= rows; i++) if (kind[i] == name) v[++n] = val[i, col]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return v[int((n + 1) / 2)]
  }
  { rows++; kind[rows] = $1; for (c = 2; c <= 5; c++) val[rows, c] = $c }
  END {
    printf "%-9s %10s %8s %9s %9s %8s %12s %8s\n", "target", "req/s", "ratio", "p50 ms", "p99 ms", "", "CPU us/req", "ratio"
    split("ceiling hits batch50", names, " ")
    base_rps = median("ceiling", 2); base_cpu = median("ceiling", 5)
    for (k = 1; k <= 3; k++) {
      n = names[k]
      printf "%-9s %10.0f %8.3f %9.3f %9.3f %8s %12.2f %8.3f\n", n, median(n, 2), median(n, 2) / base_rps, median(n, 3), median(n, 4), "", median(n, 5), median(n, 5) / base_cpu
    }
  }' "$WORK/results"
