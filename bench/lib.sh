# bench/lib.sh - what the benchmark scripts share; sourced, not run.
#
# Defines log, the cleanup of started servers (their pids in PIDS, killed on exit, and
# $WORK removed if set), wait_up, metric, and LARGE_PRIMARY / LARGE_REPLICA: the URLs
# of the 1,000,000-product catalog (database catalog_bench_1m) on the dev stack, once
# `ops/dev.sh env` is in the environment.

PIDS=()
LARGE_DB=catalog_bench_1m

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n ${WORK:-} ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# wait_up ADDR PATH [tenths of a second (100)]: until GET http://ADDR/PATH succeeds.
wait_up() {
  for _ in $(seq 1 "${3:-100}"); do
    curl -sf "http://$1$2" >/dev/null && return 0
    sleep 0.1
  done
  log "$1 did not come up"
  exit 1
}

# metric ADDR NAME: a value of the reader's /metrics.
metric() { curl -s "http://$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

# large_catalog: sets LARGE_PRIMARY and LARGE_REPLICA from the dev stack's URLs.
large_catalog() {
  LARGE_PRIMARY=${CATALOG_DATABASE_URL%/*}/$LARGE_DB
  LARGE_REPLICA=${CATALOG_REPLICA_URLS%%,*}
  LARGE_REPLICA=${LARGE_REPLICA%/*}/$LARGE_DB
}
