#!/usr/bin/env bash
# bench/writes.sh - the write path: NDJSON bulk import, and single PATCHes at several
# concurrencies, against `catalogd writer` (its relay publishing to Redis) on a database
# of its own on the dev stack.
#
# (1) import: RUNS times, from an empty catalog (500 categories, no product, the outbox
#     and the relay's sequence reset, the Redis prefix emptied, a fresh writer):
#       create   POST /admin/products/bulk of PRODUCTS new products (about 480 bytes a
#                line, one or two categories each), sent as sequential requests of
#                WRITES_CHUNK lines (a body is bounded at 256 MiB)
#       replace  the same lines again: every product replaced (version 2)
#     For each pass: products/s over the requests (import), and the time from the first
#     request until the relay has published every change (the outbox drained). After
#     each pass it checks that every line was written and that every product's current
#     version has exactly one published outbox row (none lost, none duplicated), and
#     fails otherwise.
# (2) writes: RUNS rounds, each running wrk for SECS seconds at 1, 16 and 64
#     connections (concurrent admins), each request a PATCH {"stock": n} of a random
#     product of the imported catalog: writes/s, p50, p99 (wrk's closed-loop latency);
#     any non-2xx answer fails the script. The relay publishes meanwhile, from an empty
#     outbox and stream, and the script fails if it has not published every write once
#     the last run ended.
# Each figure also comes with the CPU time it cost per product or per write: the
# writer process's, and that of the PostgreSQL backends serving the database (the
# import's and the relay's together), read from /proc; on a shared machine these move
# less than the rates do.
# Prints the median over the runs of each figure (and every run's figures on stderr).
#
# Usage: bench/writes.sh [runs (3)] [products (1000000)] [seconds per write run (15)]
# Environment:
#   WRITES_PHASES   "import writes" (default), or one of them; "writes" alone imports
#                   the catalog once, untimed, if the database does not hold it
#   WRITES_PASSES   the import passes of each run: "create replace" (default) or "create"
#   WRITES_BIN      the catalogd binary to measure (default: cargo build --release, then
#                   target/release/catalogd); lets two builds be measured side by side
#   WRITES_CHUNK    lines per import request (100000)
#   WRITES_DB       database on the dev stack's primary (catalog_writes; created if
#                   missing, emptied by each import run, dropped at the end only with
#                   WRITES_DROP=1)
#   WRITES_ADDR     the writer's listener (127.0.0.1:17181)
#   WRITES_PREFIX   Redis key prefix (writes:); its keys are deleted before each import
#                   run and at the end
#   WRITES_DB_TIMEOUT_MS  the writer's CATALOG_DB_TIMEOUT_MS (10000, not the default
#                   2000): on a shared machine a stall of a few seconds would otherwise
#                   stop an import at a batch's deadline (503, stopped_at) or answer a
#                   PATCH 503, and a run would fail instead of measuring
# Needs the local stack (ops/dev.sh up; started if down); installs what is missing (wrk,
# curl: ops/dev.sh deps --bench). A full run (3 runs, 1,000,000 products) takes about
# 15 to 25 minutes on the 2-core development VM.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
RUNS=${1:-3}
PRODUCTS=${2:-1000000}
SECS=${3:-15}
PHASES=${WRITES_PHASES:-import writes}
PASSES=${WRITES_PASSES:-create replace}
CHUNK=${WRITES_CHUNK:-100000}
DB=${WRITES_DB:-catalog_writes}
ADDR=${WRITES_ADDR:-127.0.0.1:17181}
PREFIX=${WRITES_PREFIX:-writes:}
DB_TIMEOUT=${WRITES_DB_TIMEOUT_MS:-10000}
CATEGORIES=500
CONCURRENCY=(1 16 64)
TOKEN=writes-bench-token
# The NDJSON (about 480 bytes a product) goes to memory when /dev/shm is there.
WORK=$(mktemp -d -p "$([[ -d /dev/shm && -w /dev/shm ]] && echo /dev/shm || echo "${TMPDIR:-/tmp}")")
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

cd "$ROOT"
ops/dev.sh deps --bench
ops/dev.sh up >/dev/null
eval "$(ops/dev.sh env)"
if [[ -n ${WRITES_BIN:-} ]]; then
  BIN=$WRITES_BIN
else
  cargo build --release --bin catalogd >&2
  BIN=$RELEASE/catalogd
fi
URL=${CATALOG_DATABASE_URL%/*}/$DB
REDIS_PORT=${CATALOG_REDIS_URL##*:}
REDIS_PORT=${REDIS_PORT%%/*}
WRITER=

sql() { psql "$URL" -qtAX -v ON_ERROR_STOP=1 -c "$1"; }
now() { date +%s.%N; }

# Deletes the prefix's Redis keys (documents, the stream and its epoch).
clear_redis() {
  redis-cli -p "$REDIS_PORT" --scan --pattern "${PREFIX}*" |
    xargs -r -n 1000 redis-cli -p "$REDIS_PORT" unlink >/dev/null
}

# CPU accounting (ticks of 1/100 s, from /proc): the PostgreSQL backends serving $DB
# are sampled every half second by a background loop that remembers every backend it
# saw (pool connections come and go), so their total survives them; the writer is read
# directly.
sample_pg_cpu() {
  local -A seen
  local pid total f
  while :; do
    for pid in $(pgrep -f "^postgres: [^ ]+ $DB "); do
      read -r -a f 2>/dev/null <"/proc/$pid/stat" && seen[$pid]=$((f[13] + f[14]))
    done
    total=0
    for pid in "${!seen[@]}"; do total=$((total + seen[$pid])); done
    echo "$total" >"$WORK/pg_cpu.tmp" && mv "$WORK/pg_cpu.tmp" "$WORK/pg_cpu"
    sleep 0.5
  done
}
# cpu: "writer-ticks pg-ticks" now (after the sampler's next round).
cpu() {
  local f
  sleep 0.6
  read -r -a f <"/proc/$WRITER/stat"
  echo "$((f[13] + f[14])) $(cat "$WORK/pg_cpu")"
}
# per_unit BEFORE AFTER COUNT: "writer-us pg-us" of CPU per unit between two cpu readings.
per_unit() {
  awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {split(a, x, " "); split(b, y, " ");
    printf "%.1f %.1f\n", (y[1] - x[1]) * 10000 / n, (y[2] - x[2]) * 10000 / n}'
}

start_writer() {
  env -u CATALOG_REPLICA_URLS CATALOG_DATABASE_URL="$URL" CATALOG_REDIS_PREFIX="$PREFIX" \
    CATALOG_WRITER_ADDR="$ADDR" CATALOG_ADMIN_TOKENS=$TOKEN CATALOG_LOG=warn \
    CATALOG_DB_TIMEOUT_MS="$DB_TIMEOUT" \
    "$BIN" writer 2>>"$WORK/writer.log" &
  WRITER=$!
  PIDS+=("$WRITER")
  wait_up "$ADDR" /readyz
}

stop_writer() {
  [[ -n $WRITER ]] || return 0
  kill "$WRITER" 2>/dev/null || true
  wait "$WRITER" 2>/dev/null || true
  WRITER=
}

# An empty publication state: an empty outbox, the relay's sequence back at 1 with no
# window to publish again, and no Redis key of the prefix. Without it, a writer started
# after the keys were deleted (at the end of every invocation) finds the stream behind
# its sequence, a Redis rollback, and publishes the last hour's changes again while the
# figures are taken.
reset_publication() {
  stop_writer
  sql "truncate outbox; update relay_state set next_seq = 1, republish_after = null,
    republish_before = null" >/dev/null
  clear_redis
}

# An empty catalog: the categories only, no product, and an empty publication state
# (so each run starts alike).
reset_catalog() {
  reset_publication
  sql "truncate product_categories, products" >/dev/null
  sql "vacuum analyze products, product_categories, outbox" >/dev/null
}

# wait_drained WHAT: waits (30 minutes at most) until the relay has published every
# change; fails if it has not.
wait_drained() {
  for _ in $(seq 1 18000); do
    drained && return 0
    sleep 0.1
  done
  log "$1: the outbox did not drain within 30 minutes"
  exit 1
}

drained() { [[ $(sql "select exists(select 1 from outbox where published_at is null)") == f ]]; }

# Every product's current version has exactly one published outbox row, and nothing
# waits unpublished; $1 = the expected number of products.
check_published() {
  local counts
  counts=$(sql "with o as (select product_id, version, count(*) as n, count(published_at) as published
                from outbox group by product_id, version)
      select (select count(*) from products),
        (select count(*) from outbox where published_at is null),
        (select count(*) from products p left join o on o.product_id = p.id and o.version = p.version
          where coalesce(o.published, 0) <> 1),
        (select count(*) from o where n > 1)")
  if [[ $counts != "$1|0|0|0" ]]; then
    log "products|unpublished rows|products without exactly one published row|changes with several rows = $counts (expected $1|0|0|0)"
    exit 1
  fi
}

# import_pass NAME: sends every chunk, waits for the outbox to drain, checks; prints
# "products/s seconds-until-drained writer-us pg-us" (CPU per product, import and
# publication together).
import_pass() {
  local t0 t1 t2 f lines report summary c0 c2
  c0=$(cpu)
  t0=$(now)
  for f in "$WORK"/chunk.*; do
    lines=$(wc -l <"$f")
    report=$(curl -sS --fail -X POST -H "Authorization: Bearer $TOKEN" \
      -H 'Content-Type: application/x-ndjson' --data-binary @"$f" \
      "http://$ADDR/admin/products/bulk" | tail -n 2)
    summary=${report##*$'\n'}
    if ! [[ $summary =~ \"written\":${lines}[,}] && $summary =~ \"failed\":0[,}] ]] ||
      [[ $summary == *stopped_at* ]]; then
      log "$1: $f ($lines lines) answered: $report"
      exit 1
    fi
  done
  t1=$(now)
  wait_drained "$1"
  t2=$(now)
  c2=$(cpu)
  check_published "$PRODUCTS"
  awk -v n="$PRODUCTS" -v a="$t0" -v b="$t1" -v c="$t2" -v cpu="$(per_unit "$c0" "$c2" "$PRODUCTS")" \
    'BEGIN {printf "%.0f %.1f %s\n", n / (b - a), c - a, cpu}'
}

# The NDJSON lines, in files of CHUNK lines: products 1..PRODUCTS, deterministic.
generate() {
  awk -v n="$PRODUCTS" -v chunk="$CHUNK" -v cats="$CATEGORIES" -v dir="$WORK" 'BEGIN {
    desc = "A sturdy everyday product made for the bench: tested by the write path, imported by the bulk route, replaced and patched again, and published to every reader by the outbox relay."
    for (id = 1; id <= n; id++) {
      if ((id - 1) % chunk == 0) {
        if (out) close(out)
        out = sprintf("%s/chunk.%05d", dir, int((id - 1) / chunk))
      }
      c1 = (id * 7919) % cats + 1
      c2 = (id * 104729) % cats + 1
      categories = "\"cat-" c1 "\""
      if (id % 2 == 0 && c2 != c1) categories = categories ",\"cat-" c2 "\""
      printf "{\"id\":%d,\"sku\":\"W-%d\",\"name\":\"Writes product %d\",\"description\":\"%s\",\"brand\":\"Brand %d\",\"price\":{\"amount\":%d,\"currency\":\"USD\"},\"stock\":%d,\"attributes\":{\"color\":\"c%d\",\"size\":\"s%d\",\"weight_g\":%d},\"images\":[\"https://img.example.com/p/%d/1.jpg\"],\"active\":true,\"categories\":[%s]}\n",
        id, id, id, desc, id % 97, 100 + id % 100000, id % 1000, id % 13, id % 5, id % 5000, id, categories > out
    }
  }'
}

finish() {
  stop_writer
  clear_redis
  if [[ ${WRITES_DROP:-0} == 1 ]]; then
    psql "$CATALOG_DATABASE_URL" -qc "drop database if exists $DB with (force)" >/dev/null
  fi
  cleanup
}
trap finish EXIT

# The database: created and migrated if missing, with its categories.
if ! psql "$URL" -tAc 'select 1' >/dev/null 2>&1; then
  psql "$CATALOG_DATABASE_URL" -qc "create database $DB" >/dev/null
fi
CATALOG_DATABASE_URL=$URL "$BIN" migrate >&2
sql "insert into categories (slug, name) select 'cat-' || i, 'Category ' || i
     from generate_series(1, $CATEGORIES) i on conflict (slug) do nothing"
sample_pg_cpu &
PIDS+=("$!")
log "generating $PRODUCTS NDJSON lines in files of $CHUNK"
generate
log "$(cat "$WORK"/chunk.* | wc -c) bytes of NDJSON"

declare -A FIG
if [[ " $PHASES " == *" import "* ]]; then
  for run in $(seq 1 "$RUNS"); do
    reset_catalog
    start_writer
    for pass in $PASSES; do
      out=$(import_pass "$pass")
      read -r rate secs wus pus <<<"$out"
      log "import run $run, $pass: $rate products/s, every change published after $secs s; CPU per product: writer $wus us, PostgreSQL $pus us"
      FIG[$pass.rate]+="$rate "
      FIG[$pass.secs]+="$secs "
      FIG[$pass.wus]+="$wus "
      FIG[$pass.pus]+="$pus "
    done
  done
fi

if [[ " $PHASES " == *" writes "* ]]; then
  if [[ $(sql "select count(*) from products where deleted_at is null") != "$PRODUCTS" ]]; then
    log "importing the catalog once (untimed)"
    reset_catalog
    start_writer
    import_pass create >/dev/null
  fi
  reset_publication
  start_writer
  cat >"$WORK/patch.lua" <<LUA
local n = 0
setup = function(thread) n = n + 1; thread:set("seed", n) end
init = function() math.randomseed(os.time() * 100 + seed) end
wrk.method = "PATCH"
wrk.headers["Authorization"] = "Bearer $TOKEN"
wrk.headers["Content-Type"] = "application/json"
request = function()
  return wrk.format(nil, "/admin/products/" .. math.random(1, $PRODUCTS), nil,
    '{"stock": ' .. math.random(0, 100000) .. '}')
end
LUA
  # wrk's figures: writes/s, p50 and p99 in ms, non-2xx answers.
  wrk_run() {
    local c=$1 secs=$2 threads=2
    ((c >= 2)) || threads=1
    wrk -t "$threads" -c "$c" -d "${secs}s" --latency -s "$WORK/patch.lua" "http://$ADDR" |
      awk 'function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        $1 == "50%" {p50 = ms($2)} $1 == "99%" {p99 = ms($2)} $1 == "Requests/sec:" {rate = $2}
        /Non-2xx/ {bad += $NF} /Socket errors/ {gsub(/,/, ""); bad += $4 + $6 + $8 + $10} END {printf "%.0f %.2f %.2f %d\n", rate, p50, p99, bad}'
  }
  wrk_run 16 3 >/dev/null # warm-up
  for run in $(seq 1 "$RUNS"); do
    for c in "${CONCURRENCY[@]}"; do
      c0=$(cpu)
      out=$(wrk_run "$c" "$SECS")
      c1=$(cpu)
      read -r rate p50 p99 bad <<<"$out"
      read -r wus pus <<<"$(per_unit "$c0" "$c1" "$(awk -v r="$rate" -v s="$SECS" 'BEGIN {print r * s}')")"
      log "writes run $run, $c admins: $rate writes/s, p50 $p50 ms, p99 $p99 ms, non-2xx $bad; CPU per write: writer $wus us, PostgreSQL $pus us"
      if ((bad > 0)); then
        log "$bad PATCHes were not answered 2xx (see $WORK/writer.log)"
        exit 1
      fi
      FIG[w$c.rate]+="$rate "
      FIG[w$c.p50]+="$p50 "
      FIG[w$c.p99]+="$p99 "
      FIG[w$c.wus]+="$wus "
      FIG[w$c.pus]+="$pus "
    done
  done
  # Every write was published: the relay kept up, or the figures would not include it.
  wait_drained writes
fi

med() { tr ' ' '\n' <<<"${FIG[$1]}" | grep . | median; }
echo "bench/writes.sh: medians of $RUNS runs, $PRODUCTS products, $(date -u +%F)"
if [[ " $PHASES " == *" import "* ]]; then
  printf '%-22s %11s %27s %18s\n' "import" "products/s" "every change published (s)" "CPU/product (us)"
  for pass in $PASSES; do
    printf '%-22s %11s %27s %18s\n' "$pass ($PRODUCTS)" "$(med "$pass.rate")" "$(med "$pass.secs")" \
      "$(med "$pass.wus") + $(med "$pass.pus")"
  done
fi
if [[ " $PHASES " == *" writes "* ]]; then
  printf '%-22s %11s %10s %10s %18s\n' "PATCH, admins" "writes/s" "p50 (ms)" "p99 (ms)" "CPU/write (us)"
  for c in "${CONCURRENCY[@]}"; do
    printf '%-22s %11s %10s %10s %18s\n' "$c" "$(med "w$c.rate")" "$(med "w$c.p50")" "$(med "w$c.p99")" \
      "$(med "w$c.wus") + $(med "w$c.pus")"
  done
  echo "CPU: the writer's + its PostgreSQL backends' (import and relay together), per product or write"
fi
