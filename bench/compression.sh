#!/usr/bin/env bash
# bench/compression.sh - identity against gzip, side by side in one run: a document and
# a batch of 50, from a reader whose L1 holds both forms of every product.
#
# On loopback, with the reader pinned to CPU 0 and wrk to CPU 1 (taskset), it measures
# in alternating rounds GET /products/{id} and GET /products?ids=<50 random ids> over
# the demo catalog's 100,000 products, each without and with `Accept-Encoding: gzip`,
# and prints per target the median over the rounds of req/s, p50 and p99 latency, the
# server's CPU time per request (process CPU time / requests answered), and the bytes
# per response: the body (mean of 200 sampled requests, curl's size_download, which for
# gzip is the compressed size) and the wire (wrk's bytes read per request, headers
# included). Before that it loads every product into L1 through batches of 200 ids,
# first as identity then as gzip (which makes each document's gzip form), and prints
# L1's weighed bytes per entry and the reader's RSS growth per entry after each pass:
# what keeping the gzip form costs.
#
# Usage: bench/compression.sh [rounds (3)] [seconds per run (5)] [connections (64)]
# Needs the local stack (ops/dev.sh up) with the demo catalog (ops/dev.sh run seeds it);
# installs what is missing (wrk, curl: ops/dev.sh deps --bench); builds catalogd.
# Runs about 1 + rounds*4*seconds/60 min.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
ROUNDS=${1:-3}
SECS=${2:-5}
CONNS=${3:-64}
PRODUCTS=100000
BATCH=200
ADDR=127.0.0.1:18085
WORK=$(mktemp -d)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

stack_up --bin catalogd
BIN=$RELEASE/catalogd
count=$(psql "$CATALOG_DATABASE_URL" -tAc 'select count(*) from products where active and deleted_at is null')
if ((count < PRODUCTS * 9 / 10)); then
  log "the catalog has $count visible products; run ops/dev.sh run once to seed the demo catalog"
  exit 1
fi

# A reader without Redis, whose entries outlive the run (as bench/memory.sh starts it).
env -u CATALOG_REDIS_URL CATALOG_READER_ADDR=$ADDR CATALOG_LOG=warn \
  CATALOG_L1_BYTES=$((2 * 1024 * 1024 * 1024)) CATALOG_L1_TTL_SECS=3600 \
  CATALOG_FEED_SILENCE_MS=3600000 taskset -c 0 "$BIN" reader &
pid=$!
PIDS+=("$pid")
wait_up "$ADDR" /healthz
rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$pid/status"; }

# load ACCEPT_ENCODING: every product once, through batches of BATCH ids. (Options
# given in curl's config apply to every URL after them, and a header option there is
# added once per line: the header goes on the command line.)
load() {
  for start in $(seq 1 $BATCH $PRODUCTS); do
    printf 'url = "http://%s/products?ids=%s"\noutput = "/dev/null"\n' \
      "$ADDR" "$(seq -s, "$start" $((start + BATCH - 1)))"
  done | curl -sf --no-progress-meter --parallel --parallel-max 4 -H "Accept-Encoding: $1" -K -
}
# per_entry: "entries weighed-bytes-per-entry rss"
per_entry() {
  local entries weighed
  entries=$(metric "$ADDR" catalog_l1_entries)
  weighed=$(metric "$ADDR" catalog_l1_bytes)
  echo "$entries $((weighed / entries)) $(rss)"
}
curl -s "http://$ADDR/products?ids=$(seq -s, 1 $BATCH)" >/dev/null
base_rss=$(rss)
load identity
read -r id_entries id_weighed id_rss <<<"$(per_entry)"
load gzip
read -r gz_entries gz_weighed gz_rss <<<"$(per_entry)"

visible_ids "$CATALOG_DATABASE_URL" "$WORK/visible.ids"
wrk_scripts "$WORK" $PRODUCTS "$WORK/visible.ids"

# body_bytes doc|batch ENCODING: mean body bytes over 200 sampled requests.
body_bytes() {
  for _ in $(seq 1 200); do
    if [[ $1 == doc ]]; then
      path=/products/$(((RANDOM * 32768 + RANDOM) % PRODUCTS + 1))
    else
      path="/products?ids=$(for _ in $(seq 1 50); do printf '%d,' $(((RANDOM * 32768 + RANDOM) % PRODUCTS + 1)); done)"
      path=${path%,}
    fi
    printf 'url = "http://%s%s"\noutput = "/dev/null"\n' "$ADDR" "$path"
  done | curl -sf -H "Accept-Encoding: $2" -w '%{size_download}\n' -K - | awk '{s += $1; n++} END {printf "%.0f", s / n}'
}


# run SCRIPT ENCODING -> "req_per_s p50_ms p99_ms cpu_us_per_req wire_bytes_per_req"
run() {
  local before after out
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -H "Accept-Encoding: $2" -s "$1" "http://$ADDR")
  after=$(cpu_ticks "$pid")
  awk -v cpu=$((after - before)) -v tick="$TICK" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    function bytes(v) { if (v ~ /GB$/) return v * 2^30; if (v ~ /MB$/) return v * 2^20; if (v ~ /KB$/) return v * 2^10; return v + 0 }
    /requests in/ { reqs = $1; read = bytes($5) }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    END { printf "%.0f %.3f %.3f %.2f %.0f\n", rps, p50, p99, cpu / tick * 1e6 / reqs, read / reqs }' <<<"$out"
}

log "warming the connections' paths"
taskset -c 1 wrk -t1 -c"$CONNS" -d2s -s "$WORK/uniform.lua" "http://$ADDR" >/dev/null
: >"$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  log "round $round of $ROUNDS"
  {
    echo "doc $(run "$WORK/uniform.lua" identity)"
    echo "doc-gzip $(run "$WORK/uniform.lua" gzip)"
    echo "batch50 $(run "$WORK/batch.lua" identity)"
    echo "batch50-gzip $(run "$WORK/batch.lua" gzip)"
  } >>"$WORK/results"
done
declare -A body
body[doc]=$(body_bytes doc identity)
body[doc-gzip]=$(body_bytes doc gzip)
body[batch50]=$(body_bytes batch identity)
body[batch50-gzip]=$(body_bytes batch gzip)

echo
echo "bench/compression.sh: $ROUNDS rounds x ${SECS}s, $CONNS connections, reader on CPU 0, wrk on CPU 1"
echo "L1 with all $PRODUCTS products (reader without Redis): identity only: $id_entries entries," \
  "$id_weighed weighed bytes per entry, RSS +$(((id_rss - base_rss) / id_entries)) bytes per entry;" \
  "with their gzip forms: $gz_entries entries, $gz_weighed weighed bytes per entry," \
  "RSS +$(((gz_rss - id_rss) / gz_entries)) bytes per entry more"
for k in doc doc-gzip batch50 batch50-gzip; do echo "body $k ${body[$k]}"; done >>"$WORK/results"
awk '
  function median(name, col,   n, i, j, t, v) {
    n = 0; for (i = 1; i <= rows; i++) if (kind[i] == name) v[++n] = val[i, col]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return v[int((n + 1) / 2)]
  }
  $1 == "body" { bodies[$2] = $3; next }
  { rows++; kind[rows] = $1; for (c = 2; c <= 6; c++) val[rows, c] = $c }
  END {
    printf "%-13s %10s %9s %9s %12s %11s %11s\n", "target", "req/s", "p50 ms", "p99 ms", "CPU us/req", "body B", "wire B"
    split("doc doc-gzip batch50 batch50-gzip", names, " ")
    for (k = 1; k <= 4; k++) {
      n = names[k]
      printf "%-13s %10.0f %9.3f %9.3f %12.2f %11d %11.0f\n", n, median(n, 2), median(n, 3), median(n, 4), median(n, 5), bodies[n], median(n, 6)
    }
  }' "$WORK/results"
