#!/usr/bin/env bash
# bench/profile.sh - instructions per request of the reader's hit path and of the ceiling,
# counted by valgrind's callgrind (instruction counts do not move with the machine's load,
# unlike seconds on this shared 2-core VM).
#
# Each server runs under callgrind with instrumentation off; the reader's L1 is warmed with
# every product once, then instrumentation is switched on, wrk sends GET /products/{id}
# requests (uniform over the demo catalog's visible products) for a fixed time and the counts are dumped;
# the count divided by the requests wrk saw answered is the cost of one request.
# Prints instructions per request for both and their ratio, and leaves the profiles
# (callgrind.out.ceiling, callgrind.out.reader) and their annotated summaries in the
# output directory for callgrind_annotate / kcachegrind.
#
# Mode `misses` profiles the miss path instead, with two readers of a 1 MiB L1 (about
# 1 % of the catalog, so nearly every request misses): `l2`, whose misses hit Redis
# (its keys under the prefix `profile:`, filled first by a reader outside valgrind that
# reads every product once; a feed silence limit of an hour, since no relay sends
# heartbeats here and a silent feed skips Redis), and `cold`, without Redis, whose
# misses read the replica. Profiles: callgrind.out.l2, callgrind.out.cold.
#
# Mode `batch` profiles scenario (e) of compare.sh: a reader with every product in L1
# answering GET /products?ids=<50 random ids>, beside the ceiling answering a batch of
# 50 documents the reader served (`ceiling50`). Profiles: callgrind.out.ceiling50,
# callgrind.out.batch.
#
# Mode `import` profiles the writer through a bulk import instead: bench/writes.sh's
# create pass of IMPORT_PRODUCTS (20,000) products into a database of its own
# (catalog_profile_writes), the writer (its relay publishing everything) under callgrind
# from start to exit; prints the writer's instructions per product imported and
# published (the first argument is not used). Profile: callgrind.out.writer.<pid>.
#
# Usage: bench/profile.sh [seconds of load per server (20)] [output dir (target/profile)]
#                         [mode: hits (default) | misses | batch | import]
# Needs the local stack with the demo catalog (ops/dev.sh run seeds it once); installs
# what is missing (wrk, valgrind: ops/dev.sh deps --bench); builds catalogd and the
# ceiling example.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
SECS=${1:-20}
OUT=${2:-$ROOT/target/profile}
MODE=${3:-hits}
PRODUCTS=100000
CEILING_ADDR=127.0.0.1:18090
READER_ADDR=127.0.0.1:18091
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

cd "$ROOT"
ops/dev.sh deps --bench
mkdir -p "$OUT"
ops/dev.sh up >/dev/null
eval "$(ops/dev.sh env)"
cargo build --release --bin catalogd --example ceiling >&2

if [[ $MODE != import ]]; then
  visible_ids "$CATALOG_DATABASE_URL" "$OUT/visible.ids"
  wrk_scripts "$OUT" $PRODUCTS "$OUT/visible.ids"
fi

# read_all ADDR: every product once, in batches of 200.
read_all() {
  for start in $(seq 1 200 "$PRODUCTS"); do
    printf 'url = "http://%s/products?ids=%s"\noutput = "/dev/null"\n' "$1" "$(seq -s, "$start" $((start + 199)))"
  done | curl -s -K -
}

# profile NAME ADDR PATH_TO_PROBE COMMAND... -> instructions per request on stdout;
# the requests are SCRIPT's (default: uniform.lua).
profile() {
  local name=$1 addr=$2 probe=$3 pid answered total script=${SCRIPT:-$OUT/uniform.lua}
  shift 3
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out.$name" \
    "$@" 2>"$OUT/valgrind.$name.log" &
  pid=$!
  PIDS+=("$pid")
  wait_up "$addr" "$probe" 600
  if [[ $name == reader || $name == batch ]]; then
    log "warming the reader's L1 under valgrind (every product once)"
    read_all "$addr"
  fi
  callgrind_control -i on "$pid" >/dev/null 2>&1
  answered=$(wrk -t1 -c8 -d"${SECS}s" -s "$script" "http://$addr" | awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  total=$(callgrind_annotate --inclusive=yes "$OUT/callgrind.out.$name.1" 2>/dev/null | tee "$OUT/annotate.$name.txt" |
    awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  log "$name: $answered requests, $total instructions"
  echo "$answered" >"$OUT/requests.$name"
  awk -v t="$total" -v n="$answered" 'BEGIN {printf "%.0f\n", t / n}'
}

if [[ $MODE == import ]]; then
  products=${IMPORT_PRODUCTS:-20000}
  rm -f "$OUT"/callgrind.out.writer.*
  # writes.sh runs its binary twice (migrate, then the writer): each under callgrind.
  cat >"$OUT/catalogd-callgrind" <<SH
#!/usr/bin/env bash
exec valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.writer.%p" \
  "$RELEASE/catalogd" "\$@" 2>>"$OUT/valgrind.writer.log"
SH
  chmod +x "$OUT/catalogd-callgrind"
  WRITES_PHASES=import WRITES_PASSES=create WRITES_CHUNK=10000 WRITES_DB=catalog_profile_writes \
    WRITES_DB_TIMEOUT_MS=60000 WRITES_BIN="$OUT/catalogd-callgrind" \
    bench/writes.sh 1 "$products" >"$OUT/writes.log"
  # The writer's profile is the larger of the two.
  total=$(for f in "$OUT"/callgrind.out.writer.*; do
    callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n {gsub(",", "", $1); print $1; n = 1}'
  done | sort -n | tail -n 1)
  echo "bench/profile.sh import: $products products imported and published, the writer under callgrind"
  printf '%-10s %14s %12s\n' target instructions instr/product
  printf '%-10s %14d %12.0f\n' writer "$total" "$(awk -v t="$total" -v n="$products" 'BEGIN {print t / n}')"
  echo "profiles: $OUT"
  exit 0
fi

if [[ $MODE == misses ]]; then
  export CATALOG_READER_ADDR=$READER_ADDR CATALOG_LOG=warn CATALOG_REDIS_PREFIX=profile:
  log "filling Redis (prefix profile:) with every product, outside valgrind"
  CATALOG_FEED_SILENCE_MS=3600000 "$RELEASE/catalogd" reader &
  PIDS+=($!)
  wait_up "$READER_ADDR" /healthz
  read_all "$READER_ADDR"
  sleep 1 # the write-backs are detached
  kill "${PIDS[-1]}"
  wait "${PIDS[-1]}" 2>/dev/null || true
  l2=$(CATALOG_L1_BYTES=$((1024 * 1024)) CATALOG_FEED_SILENCE_MS=3600000 \
    profile l2 "$READER_ADDR" /healthz "$RELEASE/catalogd" reader)
  cold=$(
    unset CATALOG_REDIS_URL
    CATALOG_L1_BYTES=$((1024 * 1024)) CATALOG_FEED_SILENCE_MS=3600000 \
      profile cold "$READER_ADDR" /healthz "$RELEASE/catalogd" reader
  )
  echo "bench/profile.sh misses: ${SECS}s of GET /products/{id}, 8 connections, 1 MiB L1, instructions per request"
  printf '%-28s %10d\n' "l2 (L1 miss, Redis hit)" "$l2" "cold (L1 miss, replica read)" "$cold"
  echo "profiles and annotations: $OUT"
  exit 0
fi

if [[ $MODE == batch ]]; then
  export CATALOG_READER_ADDR=$READER_ADDR CATALOG_LOG=warn CATALOG_FEED_SILENCE_MS=3600000 \
    CATALOG_AUDIT_INTERVAL_MS=0 CATALOG_L1_BYTES=$((1024 * 1024 * 1024))
  # The ceiling's body: a batch of 50 random ids as the reader answers it, fetched from
  # a reader outside valgrind.
  "$RELEASE/catalogd" reader &
  PIDS+=($!)
  wait_up "$READER_ADDR" /healthz
  ids=$(awk -v n=$PRODUCTS 'BEGIN {srand(7); for (i = 1; i <= 50; i++) printf "%s%d", (i > 1 ? "," : ""), 1 + int(rand() * n)}')
  curl -sf -o "$OUT/batch.json" "http://$READER_ADDR/products?ids=$ids"
  kill "${PIDS[-1]}"
  wait "${PIDS[-1]}" 2>/dev/null || true
  ceiling50=$(profile ceiling50 "$CEILING_ADDR" / "$RELEASE/examples/ceiling" "$CEILING_ADDR" "$OUT/batch.json")
  batch=$(SCRIPT=$OUT/batch.lua profile batch "$READER_ADDR" /healthz "$RELEASE/catalogd" reader)
  echo "bench/profile.sh batch: ${SECS}s of batches of 50 ids ($(wc -c <"$OUT/batch.json") bytes for the ceiling), 8 connections, instructions per request"
  printf '%-10s %10s %7s\n' target "instr/req" ratio
  printf '%-10s %10d %7.2f\n' ceiling50 "$ceiling50" 1
  printf '%-10s %10d %7.2f\n' batch "$batch" "$(awk -v a="$batch" -v b="$ceiling50" 'BEGIN {print a / b}')"
  echo "profiles and annotations: $OUT"
  exit 0
fi

ceiling=$(profile ceiling "$CEILING_ADDR" / "$RELEASE/examples/ceiling" "$CEILING_ADDR")
# No relay sends heartbeats here: without a long feed silence limit the reader would
# stop trusting L1 after 5 s and the hits measured would be misses. The auditor is off:
# its cost is paced by time (a scan of L1 every CATALOG_AUDIT_INTERVAL_MS), and under
# callgrind a reader serves about 50 times fewer requests a second, so it would be
# charged to each request about 50 times over (docs/performance.md says what it costs).
reader=$(CATALOG_READER_ADDR=$READER_ADDR CATALOG_L1_BYTES=$((1024 * 1024 * 1024)) CATALOG_LOG=warn \
  CATALOG_FEED_SILENCE_MS=3600000 CATALOG_AUDIT_INTERVAL_MS=0 \
  profile reader "$READER_ADDR" /healthz "$RELEASE/catalogd" reader)

echo "bench/profile.sh: ${SECS}s of GET /products/{id}, 8 connections, instructions per request"
printf '%-8s %10s %7s\n' target "instr/req" ratio
printf '%-8s %10d %7.2f\n' ceiling "$ceiling" 1
printf '%-8s %10d %7.2f\n' reader "$reader" "$(awk -v a="$reader" -v b="$ceiling" 'BEGIN {print a / b}')"
echo "profiles and annotations: $OUT"
