#!/usr/bin/env bash
# bench/propagation.sh - how long a committed write takes to reach a reader, with the
# service deployed as in production: a `catalogd writer` (its relay publishing to Redis)
# and a `catalogd reader` in processes of their own, on a database of its own on the dev
# stack (PROPAGATION_DB, 10,000 products, seeded the first time).
#
# Each run has two phases of SECS seconds, each with one admin writing: a PATCH
# {"stock": n} of a random product, then 10 ms of pause (wrk, one connection, `delay`):
#   idle    the reader serves nothing else
#   loaded  the reader also serves GET /products/{id} (ids uniform over the visible
#           products, all in L1) to 64 connections of wrk, as fast as it can
# The reader is pinned to CPU 0, wrk to CPU 1; the writer, PostgreSQL and Redis share
# both. For each phase it reports, from the histograms' growth over the phase (bucket
# bounds: the true quantile is at most the figure and above the bucket below):
#   applied   commit → the invalidation applied at the reader
#             (the reader's catalog_propagation_seconds; what issue 12 targets)
#   relay     commit → published by the relay (the writer's catalog_relay_lag_seconds)
# and the writes and reads per second. Fails if a PATCH or a read is not answered 2xx,
# or if the reader applied fewer invalidations than the writes acknowledged.
# Prints the median over the runs of each figure (and every run's figures on stderr).
#
# Usage: bench/propagation.sh [runs (3)] [seconds per phase (20)]
# Environment:
#   PROPAGATION_DB    database on the dev stack's primary (catalog_propagation)
#   PROPAGATION_BIN   the catalogd binary to measure (default: cargo build --release,
#                     then target/release/catalogd)
# Needs the local stack (ops/dev.sh up; started if down); installs what is missing (wrk,
# curl: ops/dev.sh deps --bench). 3 runs take about 3 minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
RUNS=${1:-3}
SECS=${2:-20}
DB=${PROPAGATION_DB:-catalog_propagation}
PRODUCTS=10000
READER_ADDR=127.0.0.1:17191
WRITER_ADDR=127.0.0.1:17192
PREFIX=propagation:
TOKEN=propagation-bench-token
WORK=$(mktemp -d)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

if [[ -n ${PROPAGATION_BIN:-} ]]; then
  cd "$ROOT"
  ops/dev.sh deps --bench
  ops/dev.sh up >/dev/null
  eval "$(ops/dev.sh env)"
  BIN=$PROPAGATION_BIN
else
  stack_up --bin catalogd
  BIN=$RELEASE/catalogd
fi


# buckets ADDR NAME: NAME's cumulative buckets at ADDR, "le count" a line.
buckets() {
  curl -s "http://$1/metrics" |
    awk -v m="$2_bucket" 'index($1, m "{") == 1 {match($1, /le="[^"]*"/); print substr($1, RSTART + 4, RLENGTH - 5), $2}'
}

# quantiles BEFORE AFTER: "p50 p99 count" in milliseconds (bucket bounds) of what the
# histogram gained between two bucket listings.
quantiles() {
  awk 'NR == FNR {before[$1] = $2; next} {le[++n] = $1; c[n] = $2 - before[$1]}
    END {total = c[n]; for (i = 1; i <= n; i++) {
      if (p50 == "" && c[i] >= 0.5 * total) p50 = le[i]
      if (p99 == "" && c[i] >= 0.99 * total) p99 = le[i] }
      printf "%s %s %d\n", (p50 == "+Inf" ? p50 : p50 * 1000), (p99 == "+Inf" ? p99 : p99 * 1000), total}' "$1" "$2"
}

ensure_catalog "$BIN" "$DB" $PRODUCTS 50
visible_ids "$DB_PRIMARY" "$WORK/visible.ids"
uniform_script "$WORK/reads.lua" "$WORK/visible.ids"
cat >"$WORK/patch.lua" <<LUA
local n = 0
wrk.method = "PATCH"
wrk.headers["Authorization"] = "Bearer $TOKEN"
wrk.headers["Content-Type"] = "application/json"
init = function() math.randomseed(os.time()) end
request = function()
  n = n + 1
  return wrk.format(nil, "/admin/products/" .. math.random(1, $PRODUCTS), nil, '{"stock": ' .. n .. '}')
end
delay = function() return 10 end
LUA

env -u CATALOG_REPLICA_URLS CATALOG_DATABASE_URL="$DB_PRIMARY" CATALOG_REDIS_PREFIX=$PREFIX \
  CATALOG_WRITER_ADDR=$WRITER_ADDR CATALOG_ADMIN_TOKENS=$TOKEN CATALOG_LOG=warn \
  "$BIN" writer 2>>"$WORK/writer.log" &
PIDS+=($!)
wait_up $WRITER_ADDR /readyz
CATALOG_DATABASE_URL="$DB_PRIMARY" CATALOG_REPLICA_URLS="$DB_REPLICA" CATALOG_REDIS_PREFIX=$PREFIX \
  CATALOG_READER_ADDR=$READER_ADDR CATALOG_LOG=warn \
  taskset -c 0 "$BIN" reader 2>>"$WORK/reader.log" &
PIDS+=($!)
wait_up $READER_ADDR /readyz
log "warming the reader's L1"
taskset -c 1 wrk -t 1 -c 8 -d 5s -s "$WORK/reads.lua" "http://$READER_ADDR" >/dev/null

# phase NAME: one phase of SECS seconds; prints "NAME applied-p50 applied-p99 relay-p50
# relay-p99 writes/s reads/s".
phase() {
  local name=$1 reads_pid='' applied_before writes out bad reads=0
  buckets $READER_ADDR catalog_propagation_seconds >"$WORK/applied.before"
  buckets $WRITER_ADDR catalog_relay_lag_seconds >"$WORK/relay.before"
  applied_before=$(metric $READER_ADDR catalog_propagation_seconds_count)
  if [[ $name == loaded ]]; then
    taskset -c 1 wrk -t 1 -c 64 -d "$((SECS + 1))s" -s "$WORK/reads.lua" "http://$READER_ADDR" >"$WORK/reads.out" &
    reads_pid=$!
  fi
  out=$(taskset -c 1 wrk -t 1 -c 1 -d "${SECS}s" -s "$WORK/patch.lua" "http://$WRITER_ADDR")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  [[ -z $bad ]] || { log "$bad PATCHes were not answered 2xx"; exit 1; }
  writes=$(awk '/^ *[0-9]+ requests in/ {print $1}' <<<"$out")
  if [[ -n $reads_pid ]]; then
    wait "$reads_pid"
    ! grep -q Non-2xx "$WORK/reads.out" || { log "reads not answered 200: $(cat "$WORK/reads.out")"; exit 1; }
    reads=$(awk '/Requests\/sec/ {print $2}' "$WORK/reads.out")
  fi
  # every acknowledged write applied at the reader (the relay publishes within a round)
  for _ in $(seq 1 100); do
    (($(metric $READER_ADDR catalog_propagation_seconds_count | cut -d. -f1) - ${applied_before%.*} >= writes)) && break
    sleep 0.1
  done
  local applied=$(($(metric $READER_ADDR catalog_propagation_seconds_count | cut -d. -f1) - ${applied_before%.*}))
  ((applied >= writes)) || { log "$name: $writes writes acknowledged, $applied applied at the reader"; exit 1; }
  buckets $READER_ADDR catalog_propagation_seconds >"$WORK/applied.after"
  buckets $WRITER_ADDR catalog_relay_lag_seconds >"$WORK/relay.after"
  read -r a50 a99 _ < <(quantiles "$WORK/applied.before" "$WORK/applied.after")
  read -r r50 r99 _ < <(quantiles "$WORK/relay.before" "$WORK/relay.after")
  echo "$name $a50 $a99 $r50 $r99 $(awk -v w="$writes" -v s="$SECS" 'BEGIN {printf "%.0f", w / s}') ${reads%.*}"
}

for run in $(seq 1 "$RUNS"); do
  for name in idle loaded; do
    line=$(phase $name)
    log "run $run: $line"
    echo "$line" >>"$WORK/results"
  done
done

printf '%-8s %18s %18s %16s %16s %9s %9s\n' phase "applied p50 (ms)" "applied p99 (ms)" \
  "relay p50 (ms)" "relay p99 (ms)" writes/s reads/s
for name in idle loaded; do
  row=$name
  for col in 2 3 4 5 6 7; do
    row+=" $(awk -v n=$name -v c=$col '$1 == n {print $c}' "$WORK/results" | median)"
  done
  read -r n a50 a99 r50 r99 w r <<<"$row"
  printf '%-8s %18s %18s %16s %16s %9s %9s\n' "$n" "$a50" "$a99" "$r50" "$r99" "$w" "$r"
done
