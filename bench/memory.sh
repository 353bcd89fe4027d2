#!/usr/bin/env bash
# bench/memory.sh - resident memory of L1 with every product of a 1,000,000-product
# catalog cached, and the bytes each entry costs beyond its payload.
#
# Starts a reader over the large catalog that bench/compare.sh uses too (catalog_bench_1m,
# seeded by bench/lib.sh the first time, about a minute) without Redis, with an L1
# budget far above the catalog and entries that outlive the run (a reader without Redis
# hears no invalidation feed, so it would otherwise cap every entry's life at
# CATALOG_FEED_SILENCE_MS, 5 s, and hold only the last few seconds of the load), reads
# its resident set (VmRSS), loads every product through batches of 200 ids (the
# sum of the response bodies is the payload: every document once, plus a few bytes of
# envelope per batch), reads VmRSS again and prints:
#   entries held, payload bytes, RSS growth, bytes per entry, overhead per entry
#   (growth - payload, per entry) and the overhead as a share of the payload.
#
# Usage: bench/memory.sh
# Needs the local stack (ops/dev.sh up; started if down); installs what is missing (curl:
# ops/dev.sh deps --bench); builds catalogd.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
ADDR=127.0.0.1:18084
BATCH=200
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

stack_up --bin catalogd
ensure_large_catalog "$RELEASE/catalogd"

env -u CATALOG_REDIS_URL CATALOG_DATABASE_URL="$LARGE_PRIMARY" CATALOG_REPLICA_URLS="$LARGE_REPLICA" \
  CATALOG_READER_ADDR=$ADDR CATALOG_LOG=warn CATALOG_L1_BYTES=$((8 * 1024 * 1024 * 1024)) \
  CATALOG_L1_TTL_SECS=3600 CATALOG_FEED_SILENCE_MS=3600000 "$RELEASE/catalogd" reader &
pid=$!
PIDS+=("$pid")
wait_up "$ADDR" /healthz
rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$pid/status"; }

# Warm the process's own paths (pools, buffers) before the baseline.
curl -s "http://$ADDR/products?ids=$(seq -s, 1 $BATCH)" >/dev/null
metric "$ADDR" catalog_l1_entries >/dev/null
before=$(rss)
log "baseline RSS $before bytes; loading $LARGE products in batches of $BATCH"
payload=$(for start in $(seq 1 $BATCH $LARGE); do
  printf 'url = "http://%s/products?ids=%s"\noutput = "/dev/null"\nwrite-out = "%%{size_download}\\n"\n' \
    "$ADDR" "$(seq -s, "$start" $((start + BATCH - 1)))"
done | curl -s --parallel --parallel-max 4 -K - | awk '{s += $1} END {printf "%.0f", s}')
entries=$(metric "$ADDR" catalog_l1_entries)
weighted=$(metric "$ADDR" catalog_l1_bytes)
after=$(rss)
if ((entries != LARGE)); then
  log "L1 holds $entries entries, not $LARGE: the figures would not be per entry (expired or evicted?)"
  exit 1
fi

echo "bench/memory.sh: $LARGE products loaded into L1 (reader without Redis, budget 8 GiB)"
awk -v e="$entries" -v p="$payload" -v b="$before" -v a="$after" -v w="$weighted" 'BEGIN {
  g = a - b
  printf "entries held           %d\n", e
  printf "payload                %.0f bytes (%.0f per entry)\n", p, p / e
  printf "RSS before / after     %.0f / %.0f bytes\n", b, a
  printf "RSS growth             %.0f bytes (%.0f per entry)\n", g, g / e
  printf "overhead per entry     %.0f bytes (%.1f %% of the payload)\n", (g - p) / e, 100 * (g - p) / p
  printf "L1 weighed bytes       %.0f (%.0f per entry: the weigher s estimate)\n", w, w / e
}'
