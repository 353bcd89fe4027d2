# bench/lib.sh - what the benchmark scripts share; sourced, not run.
#
# Defines log, the cleanup of started servers (their pids in PIDS, killed on exit, and
# $WORK removed if set), wait_up, metric, RELEASE (cargo's release directory: binaries
# in it, examples in $RELEASE/examples), a catalog in a database of its own on the dev
# stack, seeded the first time and reused afterwards (ensure_catalog, which sets its
# URLs DB_PRIMARY / DB_REPLICA once `ops/dev.sh env` is in the environment), and so the
# 1,000,000-product one (database catalog_bench_1m, LARGE products:
# ensure_large_catalog, which sets LARGE_PRIMARY / LARGE_REPLICA); the common start of a
# script (stack_up), the wrk scripts of uniform document reads and of batches of 50
# (wrk_scripts), the median of numbers (median), and a process's CPU time (cpu_ticks,
# TICK).
# shellcheck shell=bash

PIDS=()
LARGE=1000000
LARGE_DB=catalog_bench_1m
# relative to the repository, where the scripts run cargo (as cargo itself reads it)
# shellcheck disable=SC2034  # used by the scripts
RELEASE=${CARGO_TARGET_DIR:-target}/release

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

# ensure_catalog CATALOGD DB PRODUCTS CATEGORIES: sets DB_PRIMARY and DB_REPLICA, the dev
# stack's URLs of database DB; the first time (no database, no products table, or not
# exactly PRODUCTS products) migrates and seeds it with CATALOGD, then waits until the
# replica has every product (bounded: 5 min; exits otherwise).
ensure_catalog() {
  local bin=$1 db=$2 products=$3 categories=$4
  DB_PRIMARY=${CATALOG_DATABASE_URL%/*}/$db
  DB_REPLICA=${CATALOG_REPLICA_URLS%%,*}
  DB_REPLICA=${DB_REPLICA%/*}/$db
  if ! psql "$DB_PRIMARY" -tAc 'select 1' >/dev/null 2>&1; then
    psql "$CATALOG_DATABASE_URL" -qc "create database $db" >/dev/null
  fi
  if [[ $(psql "$DB_PRIMARY" -tAc "select to_regclass('products') is not null") != t ]] ||
    (($(psql "$DB_PRIMARY" -tAc 'select count(*) from products') != products)); then
    log "seeding $db with $products products (once)"
    CATALOG_DATABASE_URL=$DB_PRIMARY "$bin" migrate >&2
    CATALOG_DATABASE_URL=$DB_PRIMARY "$bin" seed --products "$products" --categories "$categories" --seed 42 --replace >&2
  fi
  for _ in $(seq 1 600); do
    (($(psql "$DB_REPLICA" -tAc "select count(*) from products" 2>/dev/null || echo 0) == products)) && return 0
    sleep 0.5
  done
  log "the replica does not have the $products products of $db after 5 minutes (ops/dev.sh status)"
  exit 1
}

# ensure_large_catalog CATALOGD: ensure_catalog of the LARGE-product catalog (about a
# minute the first time); sets LARGE_PRIMARY and LARGE_REPLICA.
ensure_large_catalog() {
  ensure_catalog "$1" $LARGE_DB $LARGE 500
  # shellcheck disable=SC2034  # used by the scripts
  LARGE_PRIMARY=$DB_PRIMARY LARGE_REPLICA=$DB_REPLICA
}

# stack_up CARGO_BUILD_ARGS...: from the repository, installs what the scripts need
# (ops/dev.sh deps --bench), starts the local stack if it is down, takes its
# environment and builds the release binaries named.
stack_up() {
  cd "$ROOT" || return
  ops/dev.sh deps --bench
  ops/dev.sh up >/dev/null
  eval "$(ops/dev.sh env)"
  cargo build --release "$@" >&2
}

# visible_ids URL FILE: the ids of URL's products a storefront is shown (active, not
# deleted), one a line. Single-document scripts ask only for these: every answer is a
# document, as the ceiling's are, and a 404 (about 3 % of a seeded catalog is hidden)
# is not mistaken for a failed answer.
visible_ids() { psql "$1" -qtAX -v ON_ERROR_STOP=1 -c 'select id from products where active and deleted_at is null order by id' >"$2"; }

# uniform_script FILE IDS: a wrk script asking GET /products/{id}, ids drawn uniformly
# from the file IDS (one a line).
uniform_script() {
  cat >"$1" <<LUA
local ids, n = {}, 0
for line in io.lines("$2") do n = n + 1; ids[n] = tonumber(line) end
if n == 0 then error("no ids in $2") end
math.randomseed(os.time())
request = function() return wrk.format("GET", "/products/" .. ids[math.random(1, n)]) end
LUA
}

# wrk_scripts DIR N IDS: DIR/uniform.lua (GET /products/{id}, ids uniform over the
# visible ids in the file IDS) and DIR/batch.lua (GET /products?ids=<50 ids uniform over
# 1..N>: a hidden product in a batch is answered among its missing ids, with 200).
wrk_scripts() {
  uniform_script "$1/uniform.lua" "$3"
  cat >"$1/batch.lua" <<LUA
math.randomseed(os.time())
request = function()
  local ids = {}
  for i = 1, 50 do ids[i] = math.random(1, $2) end
  return wrk.format("GET", "/products?ids=" .. table.concat(ids, ","))
end
LUA
}

# median: of the numbers on stdin.
median() { sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# cpu_ticks PID: the process's user and system time, in ticks of 1/TICK s.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# shellcheck disable=SC2034  # used by the scripts
TICK=$(getconf CLK_TCK)
