#!/usr/bin/env bash
# bench/compare.sh - one-run comparison of the reader against the ceiling.
#
# On loopback, with the servers pinned to CPU 0 and wrk to CPU 1 (taskset), it measures
# in alternating rounds:
#   (a) ceiling  bench/ceiling.rs, the `ceiling` example: a minimal hyper server
#                returning the same bytes for every request: a document of the demo
#                catalog, of about its mean size
#   (b) hits     catalogd reader, GET /products/{id}, ids uniform over the demo catalog's
#                visible products (every single-document script asks only for these:
#                about 3 % of a seeded catalog is hidden, and its 404s would count as
#                failed answers), all warm
#   (c) zipf     catalogd reader over 1,000,000 products with L1 budgeted to 10 % of the
#                visible catalog's bytes (Redis as L2), ids drawn from Zipf(ZIPF, default
#                1.0) over the visible products by
#                the `zipf` example (bench/zipf.rs): a file of 1,000,000 ids per run, which
#                wrk cycles through; its misses' Redis lookups coalesced into MGETs
#                (CATALOG_L2_COALESCE, 64 keys at most)
#   zipf_get     (c) again with CATALOG_L2_COALESCE=0: one GET per miss, side by side
#   (d) cold     catalogd reader over 1,000,000 products, no Redis, a 1 MiB L1, ids
#                uniform over the visible ones: almost every request is a miss read from the replica; the rows
#                of concurrent misses read in shared queries (CATALOG_DB_COALESCE, 64 ids
#                at most)
#   cold_one     (d) again with CATALOG_DB_COALESCE=0: one query per miss, side by side
#   (e) batch50  catalogd reader, GET /products?ids=<50 random ids>, all warm
# beside two more ceilings, the same example:
#   ceiling50    answering a batch of 50 documents the reader served (about 29 KB), the
#                ceiling (e) is compared with
#   ceil_redis   answering each request with one Redis GET of the ceiling's document
#                (fred, as the reader's L2): what an L1 miss answered by L2 is compared
#                with; (c)'s cost per miss is estimated from (b) and (c) as
#                (CPU(c) - h * CPU(b)) / (1 - h), h being (c)'s hit ratio
# and prints, per target, the median over the rounds of req/s, p50 and p99 latency, and
# the server's CPU time per request (process CPU time / requests answered: on 2 cores the
# load generator is itself a bottleneck, so this is the fairer figure), each as a ratio
# to (a), with the L1 hit ratio of each reader over the measured rounds. For (c) it also
# prints the hit ratio an oracle holding the most popular products in the same number of
# entries would reach (`zipf oracle`), the bound for any eviction policy, and the one an
# oracle would reach with the same byte budget and nothing but the documents' bytes in
# it (budget / mean document entries), the bound for any cache of that budget.
#
# Usage: bench/compare.sh [rounds (3)] [seconds per run (10)] [connections (64)]
# Environment: ZIPF (Zipf exponent of (c), 1.0).
# Needs the local stack (ops/dev.sh up) with the demo catalog (ops/dev.sh run seeds it);
# seeds a 1,000,000-product database (catalog_bench_1m, bench/lib.sh) the first time
# (about a minute), and fills Redis with all of it when it holds less (a few minutes,
# kept a week); installs what is missing (wrk, curl: ops/dev.sh deps --bench); builds
# catalogd and the ceiling and zipf examples. Runs about 2 + rounds*8*seconds/60 min.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
ROUNDS=${1:-3}
SECS=${2:-10}
CONNS=${3:-64}
ZIPF=${ZIPF:-1.0}
PRODUCTS=100000
ZIPF_IDS=1000000  # ids per run of (c)
CEILING_ADDR=127.0.0.1:18080
READER_ADDR=127.0.0.1:18081
ZIPF_ADDR=127.0.0.1:18082
COLD_ADDR=127.0.0.1:18083
CEILING50_ADDR=127.0.0.1:18084
CEILING_REDIS_ADDR=127.0.0.1:18086
ZIPF_GET_ADDR=127.0.0.1:18087
COLD_ONE_ADDR=127.0.0.1:18088
WORK=$(mktemp -d)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

stack_up --bin catalogd --example ceiling --example zipf
BIN=$RELEASE/catalogd
ZIPF_BIN=$RELEASE/examples/zipf
count=$(psql "$CATALOG_DATABASE_URL" -tAc 'select count(*) from products where active and deleted_at is null')
if ((count < PRODUCTS * 9 / 10)); then
  log "the catalog has $count visible products; run ops/dev.sh run once to seed the demo catalog"
  exit 1
fi

# The 1,000,000-product catalog of (c) and (d), in its own database on the same stack.
ensure_large_catalog "$BIN"

visible_ids "$CATALOG_DATABASE_URL" "$WORK/visible.ids"
wrk_scripts "$WORK" $PRODUCTS "$WORK/visible.ids"
visible_ids "$LARGE_PRIMARY" "$WORK/visible_large.ids"
VISIBLE=$(wc -l <"$WORK/visible_large.ids")
uniform_script "$WORK/cold.lua" "$WORK/visible_large.ids"
# (c)'s ids: for each of its runs (K = 0 the warm-up, then one per round) a file of
# ZIPF_IDS ids drawn from Zipf(ZIPF) over the large catalog's visible products by `zipf
# ids` with seed K (rank R is the R-th visible id), read by that run's script, which
# cycles through it. A file of its own per run: no run replays the requests of another.
for k in $(seq 0 "$ROUNDS"); do
  "$ZIPF_BIN" ids --products "$VISIBLE" --exponent "$ZIPF" --count $ZIPF_IDS --seed "$k" |
    awk 'NR == FNR {id[NR] = $1; next} {print id[$1]}' "$WORK/visible_large.ids" - >"$WORK/zipf.$k.ids"
  cat >"$WORK/zipf.$k.lua" <<LUA
local ids, n, i = {}, 0, 0
for line in io.lines("$WORK/zipf.$k.ids") do n = n + 1; ids[n] = tonumber(line) end
if n == 0 then error("no ids in $WORK/zipf.$k.ids") end
request = function()
  i = i % n + 1
  return wrk.format("GET", "/products/" .. ids[i])
end
LUA
done

# start_reader NAME ADDR [env(1) arguments...]: a catalogd reader pinned to CPU 0; sets NAME_pid.
# No relay runs here, so no heartbeat comes: with the default feed silence limit (5 s)
# a reader would stop trusting its caches (entries kept briefly, misses sent around
# Redis to the replica). An hour keeps each scenario what it is meant to be.
start_reader() {
  local name=$1 addr=$2
  shift 2
  env "$@" CATALOG_READER_ADDR="$addr" CATALOG_LOG=warn CATALOG_FEED_SILENCE_MS=3600000 \
    taskset -c 0 "$BIN" reader &
  PIDS+=($!)
  printf -v "${name}_pid" %s $!
  wait_up "$addr" /healthz
}

start_reader hits "$READER_ADDR" CATALOG_L1_BYTES=$((2 * 1024 * 1024 * 1024))
# The ceiling answers with a document of the demo catalog: of the first 100 products,
# the one closest to their mean size.
for id in $(seq 1 100); do
  curl -s -o "$WORK/doc.$id" -w "%{http_code} %{size_download} $id\n" "http://$READER_ADDR/products/$id"
done | awk '$1 == 200 {n++; size[$3] = $2; sum += $2} END {
  mean = sum / n; for (id in size) { d = size[id] - mean; d = d < 0 ? -d : d; if (best == "" || d < bd) { best = id; bd = d } }
  print best }' >"$WORK/chosen"
cp "$WORK/doc.$(cat "$WORK/chosen")" "$WORK/document.json"
taskset -c 0 "$RELEASE/examples/ceiling" "$CEILING_ADDR" "$WORK/document.json" &
PIDS+=($!)
ceiling_pid=$!
wait_up "$CEILING_ADDR" /
log "ceiling document: $(wc -c <"$WORK/document.json") bytes (product $(cat "$WORK/chosen"))"
# ceiling50 answers a batch of 50 random ids of the demo catalog, as (e) asks for.
ids=$(awk -v n=$PRODUCTS 'BEGIN {srand(7); for (i = 1; i <= 50; i++) printf "%s%d", (i > 1 ? "," : ""), 1 + int(rand() * n)}')
curl -sf -o "$WORK/batch.json" "http://$READER_ADDR/products?ids=$ids"
taskset -c 0 "$RELEASE/examples/ceiling" "$CEILING50_ADDR" "$WORK/batch.json" &
PIDS+=($!)
ceiling50_pid=$!
wait_up "$CEILING50_ADDR" /
log "ceiling50 batch: $(wc -c <"$WORK/batch.json") bytes"
# ceil_redis answers the ceiling's document from Redis, one GET per request.
CEILING_KEY=bench:ceiling:document
redis-cli -u "$CATALOG_REDIS_URL" -x set "$CEILING_KEY" <"$WORK/document.json" >/dev/null
taskset -c 0 "$RELEASE/examples/ceiling" "$CEILING_REDIS_ADDR" "$WORK/document.json" \
  "$CATALOG_REDIS_URL" "$CEILING_KEY" &
PIDS+=($!)
ceil_redis_pid=$!
wait_up "$CEILING_REDIS_ADDR" /

# (c)'s budget: 10 % of the catalog's bytes, the mean document size sampled through a
# reader of the large catalog (batches of 200 random ids).
start_reader sizing "$ZIPF_ADDR" CATALOG_DATABASE_URL="$LARGE_PRIMARY" CATALOG_REPLICA_URLS="$LARGE_REPLICA" \
  CATALOG_REDIS_PREFIX=bench1m CATALOG_L2_TTL_SECS=604800 CATALOG_OUTBOX_RETENTION_SECS=604800
# (c) measures L1 misses answered by Redis, so Redis must hold every product first:
# else the misses of products no reader has fetched yet go to the replica, and the
# readers measured first meet more of them than those measured later (the 2026-11-27
# runs before this step charged (c) with replica reads). The sizing reader fetches
# every product once in batches of 100, writing its fills back to Redis with a week's
# TTL, twice (a write-back skipped while 256 were in flight is made by the second
# pass); a later run finds them there and skips it.
# L2's keys are <prefix>p:<id> (src/store/redis.rs), the prefix here bench1m.
l2_held() { redis-cli -u "$CATALOG_REDIS_URL" --scan --pattern 'bench1mp:*' | wc -l; }
held=$(l2_held)
if ((held < LARGE)); then
  log "Redis holds $held of $LARGE documents; fetching every product through a reader (two passes, a few minutes)"
  awk -v n=$LARGE -v addr="$ZIPF_ADDR" 'BEGIN {
    for (s = 1; s <= n; s += 100) {
      e = s + 99 > n ? n : s + 99; ids = s
      for (i = s + 1; i <= e; i++) ids = ids "," i
      printf "url = \"http://%s/products?ids=%s\"\noutput = \"/dev/null\"\n", addr, ids
    }
  }' >"$WORK/warm.curl"
  curl -s -K "$WORK/warm.curl"
  curl -s -K "$WORK/warm.curl"
  held=$(l2_held)
  log "Redis holds $held of $LARGE documents"
fi
for _ in $(seq 1 20); do
  ids=$(awk -v n=$LARGE 'BEGIN {srand(); for (i = 1; i <= 200; i++) printf "%s%d", (i > 1 ? "," : ""), 1 + int(rand() * n)}')
  curl -s "http://$ZIPF_ADDR/products?ids=$ids"
done | awk '{bytes += length($0); docs += gsub(/"sku":/, "")} END {printf "%d %d\n", bytes, docs}' >"$WORK/sizes"
kill "$sizing_pid"
wait "$sizing_pid" 2>/dev/null || true
read -r sample_bytes sample_docs <"$WORK/sizes"
mean_doc=$((sample_bytes / sample_docs))
budget=$((mean_doc * VISIBLE / 10))
log "mean document $mean_doc bytes; (c) L1 budget $budget bytes (10 % of $VISIBLE documents)"
start_reader zipf "$ZIPF_ADDR" CATALOG_DATABASE_URL="$LARGE_PRIMARY" CATALOG_REPLICA_URLS="$LARGE_REPLICA" \
  CATALOG_REDIS_PREFIX=bench1m CATALOG_L1_BYTES=$budget
start_reader zipf_get "$ZIPF_GET_ADDR" CATALOG_DATABASE_URL="$LARGE_PRIMARY" CATALOG_REPLICA_URLS="$LARGE_REPLICA" \
  CATALOG_REDIS_PREFIX=bench1m CATALOG_L1_BYTES=$budget CATALOG_L2_COALESCE=0
start_reader cold "$COLD_ADDR" -u CATALOG_REDIS_URL CATALOG_DATABASE_URL="$LARGE_PRIMARY" \
  CATALOG_REPLICA_URLS="$LARGE_REPLICA" CATALOG_L1_BYTES=$((1024 * 1024))
start_reader cold_one "$COLD_ONE_ADDR" -u CATALOG_REDIS_URL CATALOG_DATABASE_URL="$LARGE_PRIMARY" \
  CATALOG_REPLICA_URLS="$LARGE_REPLICA" CATALOG_L1_BYTES=$((1024 * 1024)) CATALOG_DB_COALESCE=0

log "warming: every product of (b) once, and (c) to its steady state"
taskset -c 1 wrk -t1 -c"$CONNS" -d20s -s "$WORK/uniform.lua" "http://$READER_ADDR" >/dev/null
taskset -c 1 wrk -t1 -c"$CONNS" -d20s -s "$WORK/zipf.0.lua" "http://$ZIPF_ADDR" >/dev/null
taskset -c 1 wrk -t1 -c"$CONNS" -d20s -s "$WORK/zipf.0.lua" "http://$ZIPF_GET_ADDR" >/dev/null


# run PID URL SCRIPT -> "req_per_s p50_ms p99_ms cpu_us_per_req failed", failed being
# the answers that were not 2xx or 3xx and the socket errors wrk counted.
run() {
  local pid=$1 url=$2 script=$3 before after out
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "$script" "$url")
  after=$(cpu_ticks "$pid")
  awk -v cpu=$((after - before)) -v tick="$TICK" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /requests in/ { reqs = $1 }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /Non-2xx/ { failed += $NF }
    /Socket errors/ { gsub(/,/, ""); failed += $4 + $6 + $8 + $10 }
    END { printf "%.0f %.3f %.3f %.2f %d\n", rps, p50, p99, cpu / tick * 1e6 / reqs, failed }' <<<"$out"
}

# Hit ratio of a reader between two snapshots "hits misses".
counts() { echo "$(metric "$1" catalog_l1_hits_total) $(metric "$1" catalog_l1_misses_total)"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); h = y[1] - x[1]; m = y[2] - x[2]; printf "%.4f", h / (h + m)}'; }

: >"$WORK/results"
declare -A before_counts
for addr in "$READER_ADDR" "$ZIPF_ADDR" "$ZIPF_GET_ADDR" "$COLD_ADDR" "$COLD_ONE_ADDR"; do before_counts[$addr]=$(counts "$addr"); done
for round in $(seq 1 "$ROUNDS"); do
  log "round $round of $ROUNDS"
  echo "ceiling $(run "$ceiling_pid" "http://$CEILING_ADDR" "$WORK/uniform.lua")" >>"$WORK/results"
  echo "ceiling50 $(run "$ceiling50_pid" "http://$CEILING50_ADDR" "$WORK/uniform.lua")" >>"$WORK/results"
  echo "ceil_redis $(run "$ceil_redis_pid" "http://$CEILING_REDIS_ADDR" "$WORK/uniform.lua")" >>"$WORK/results"
  echo "hits $(run "$hits_pid" "http://$READER_ADDR" "$WORK/uniform.lua")" >>"$WORK/results"
  echo "zipf $(run "$zipf_pid" "http://$ZIPF_ADDR" "$WORK/zipf.$round.lua")" >>"$WORK/results"
  echo "zipf_get $(run "$zipf_get_pid" "http://$ZIPF_GET_ADDR" "$WORK/zipf.$round.lua")" >>"$WORK/results"
  echo "cold $(run "$cold_pid" "http://$COLD_ADDR" "$WORK/cold.lua")" >>"$WORK/results"
  echo "cold_one $(run "$cold_one_pid" "http://$COLD_ONE_ADDR" "$WORK/cold.lua")" >>"$WORK/results"
  echo "batch50 $(run "$hits_pid" "http://$READER_ADDR" "$WORK/batch.lua")" >>"$WORK/results"
done
# A server answering errors fast would look fast: any failed answer voids the run.
if awk '$6 > 0 {print "compare.sh: " $1 " had " $6 " failed answers in a round"; bad = 1} END {exit !bad}' \
  "$WORK/results" >&2; then
  exit 1
fi
hits_ratio=$(ratio "${before_counts[$READER_ADDR]}" "$(counts "$READER_ADDR")")
zipf_ratio=$(ratio "${before_counts[$ZIPF_ADDR]}" "$(counts "$ZIPF_ADDR")")
zipf_get_ratio=$(ratio "${before_counts[$ZIPF_GET_ADDR]}" "$(counts "$ZIPF_GET_ADDR")")
cold_ratio=$(ratio "${before_counts[$COLD_ADDR]}" "$(counts "$COLD_ADDR")")
cold_one_ratio=$(ratio "${before_counts[$COLD_ONE_ADDR]}" "$(counts "$COLD_ONE_ADDR")")
curl -s "http://$ZIPF_ADDR/metrics" >/dev/null # a scrape applies moka's pending work first
zipf_entries=$(metric "$ZIPF_ADDR" catalog_l1_entries)
oracle=$("$ZIPF_BIN" oracle --products "$VISIBLE" --exponent "$ZIPF" --entries "$zipf_entries" |
  awk '{printf "%.4f", $1}')
budget_entries=$((budget / mean_doc))
budget_oracle=$("$ZIPF_BIN" oracle --products "$VISIBLE" --exponent "$ZIPF" --entries "$budget_entries" |
  awk '{printf "%.4f", $1}')

echo
echo "bench/compare.sh: $ROUNDS rounds x ${SECS}s, $CONNS connections, servers on CPU 0, wrk on CPU 1"
echo "L1 hit ratio over the measured rounds: (b) $hits_ratio, (c) $zipf_ratio (zipf_get $zipf_get_ratio), (d) $cold_ratio (cold_one $cold_one_ratio)"
echo "(c) Zipf $ZIPF over the $VISIBLE visible of $LARGE products, L1 budget $budget bytes (mean document $mean_doc bytes):" \
  "$zipf_entries entries held; an oracle holding the $zipf_entries most popular would hit $oracle;" \
  "one holding only documents' bytes in the same budget ($budget_entries entries) would hit $budget_oracle" \
  "(the reader reaches $(awk -v a="$zipf_ratio" -v b="$budget_oracle" 'BEGIN {printf "%.3f", a / b}') of it)"
awk -v h="$zipf_ratio" -v hg="$zipf_get_ratio" '
  function median(name, col,   n, i, j, t, v) {
    n = 0; for (i = 1; i <= rows; i++) if (kind[i] == name) v[++n] = val[i, col]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return v[int((n + 1) / 2)]
  }
  { rows++; kind[rows] = $1; for (c = 2; c <= 5; c++) val[rows, c] = $c }
  END {
    printf "%-10s %10s %8s %9s %9s %12s %8s\n", "target", "req/s", "ratio", "p50 ms", "p99 ms", "CPU us/req", "ratio"
    split("ceiling ceiling50 ceil_redis hits zipf zipf_get cold cold_one batch50", names, " ")
    base_rps = median("ceiling", 2); base_cpu = median("ceiling", 5)
    for (k = 1; k <= 9; k++) {
      n = names[k]
      printf "%-10s %10.0f %8.3f %9.3f %9.3f %12.2f %8.3f\n", n, median(n, 2), median(n, 2) / base_rps, median(n, 3), median(n, 4), median(n, 5), median(n, 5) / base_cpu
    }
    printf "(e) against ceiling50 (the same ~29 KB body): req/s %.3f, CPU per request %.3f\n",
      median("batch50", 2) / median("ceiling50", 2), median("batch50", 5) / median("ceiling50", 5)
    miss = h < 1 ? (median("zipf", 5) - h * median("hits", 5)) / (1 - h) : 0
    miss_get = hg < 1 ? (median("zipf_get", 5) - hg * median("hits", 5)) / (1 - hg) : 0
    printf "(c) CPU per L1 miss (answered by L2): %.1f us coalesced, %.1f us with one GET each, against %.1f us per request of ceil_redis (%.2fx, %.2fx)\n",
      miss, miss_get, median("ceil_redis", 5), miss / median("ceil_redis", 5), miss_get / median("ceil_redis", 5)
  }' "$WORK/results"
