#!/usr/bin/env bash
# ops/dev.sh - the local development stack for catalogd, without containers.
#
# On 127.0.0.1 it runs:
#   primary   PostgreSQL primary             port $CATALOG_DEV_PG_PORT      (default 15432)
#   replica   PostgreSQL streaming replica   port $CATALOG_DEV_REPLICA_PORT (default 15433)
#   redis     Redis, no persistence          port $CATALOG_DEV_REDIS_PORT   (default 16379)
# The defaults lie below Linux's ephemeral port range (32768-60999), so no outgoing
# connection can be holding one of them. All state (data, logs, pid files) lives in
# $CATALOG_DEV_DIR (default <repo>/.dev), so two stacks with different ports and state
# dirs can run side by side. The PostgreSQL and Redis parts are in ops/lib/postgres.sh and
# ops/lib/redis.sh, the packages in ops/lib/packages.sh, shared helpers in
# ops/lib/common.sh; this file sources them and holds the commands.
#
# Usage: ops/dev.sh <command> [args]
#   deps [--bench]      install the missing Debian packages: postgresql, redis-server,
#                       util-linux (flock, runuser); --bench adds what bench/*.sh use
#                       (curl, wrk, valgrind). apt-get runs as root, or through
#                       `sudo -n` (never a password prompt: if sudo would ask, it says so
#                       and stops). up, run and test do this first when something is
#                       missing
#   up                  start the stack; returns once all three accept connections and
#                       the replica is streaming from the primary (idempotent)
#   down                stop the stack, replica first; keeps the data
#   clean               down, then delete all state
#   status              one line per component (exit 0 if all three run, 3 otherwise)
#   stop primary|replica|redis ...   stop only those components (bounded, as `down`
#                       does); `up` starts them again
#   crash primary|replica   immediate shutdown of that node (no shutdown checkpoint, as
#                       if it crashed); `up` starts it again and it recovers
#   env                 print export lines:  eval "$(ops/dev.sh env)"
#   psql [primary|replica] [psql args]   psql on that node (default primary)
#   run                 up, build catalogd, migrate, seed if empty, run `catalogd all`;
#                       it listens on $CATALOG_READER_ADDR and $CATALOG_WRITER_ADDR
#                       (default 127.0.0.1:8080 and 127.0.0.1:8081), which must be free
#   test [--keep] [cargo test args]      up, drop the databases of finished test
#                       processes, cargo test --workspace --all-targets, and without
#                       cargo test args the static checks ops/check/{manifests,
#                       monitoring,openapi}.sh (containers, Kubernetes, alert rules and
#                       dashboard, OpenAPI); exits with the first failure's status. Then the last `test` run still using the stack
#                       stops what test runs started (a stack that was up before stays
#                       up); --keep / CATALOG_DEV_KEEP=1 leaves it all up
#   redis-cluster up|down|status|url   a Redis Cluster of three masters on 127.0.0.1,
#                       ports $CATALOG_DEV_REDIS_CLUSTER_PORT..+2 (default 17000..17002,
#                       cluster bus on each port + 10000), apart from the stack (up, down
#                       and test leave it alone). up returns once every node says
#                       cluster_state:ok; down stops it and drops its state; url prints
#                       export CATALOG_REDIS_URL=redis-cluster://127.0.0.1:17000,... (see
#                       ops/lib/rediscluster.sh)
#   cluster up|down|status   readers and writers of catalogd on the stack, HAProxy in
#                       front of the readers, Varnish (xkey) in front of HAProxy,
#                       Prometheus scraping them all: ports $CATALOG_DEV_CLUSTER_PORT
#                       (18000: Varnish), +1 HAProxy, +2 Prometheus, +11.. readers,
#                       +31.. writers (see ops/lib/cluster.sh)
#   cluster stop|kill|start|restart reader|writer I   one of the cluster's processes
#
# Other environment: CATALOG_DEV_TIMEOUT (seconds for each bounded wait, default 60).
#
# Notes:
# - PostgreSQL refuses to run as root. As root the clusters run as `postgres` (or a
#   system user `catalogdev`, created if needed) via runuser. If that user cannot reach
#   the state dir (e.g. a repo under /root, mode 700) the clusters live in
#   /var/tmp/catalog-dev-<hash of state dir>/ and <state dir>/pg is a symlink to it.
# - The clusters run with fsync=off and full_page_writes=off: fast, but a crash of the
#   machine can corrupt them. This is a throw-away dev stack; `clean` starts afresh.
# - Concurrent invocations on one state dir take turns on a lock (<state dir>/.lock).
#   Each running `test` registers in <state dir>/test-runs/; the components test runs
#   started are listed in <state dir>/test-started, and only the last test run to
#   finish stops them. `up` and `run` (and `test --keep`) adopt the stack: no test run
#   stops it afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PG_PORT=${CATALOG_DEV_PG_PORT:-15432}
REPLICA_PORT=${CATALOG_DEV_REPLICA_PORT:-15433}
REDIS_PORT=${CATALOG_DEV_REDIS_PORT:-16379}
STATE_DIR=$(realpath -m -- "${CATALOG_DEV_DIR:-$ROOT/.dev}")
TIMEOUT=${CATALOG_DEV_TIMEOUT:-60}

DB_NAME=catalog
DB_USER=catalog
SLOT=catalog_replica
MARKER=$STATE_DIR/.catalog-dev-stack
LOG_DIR=$STATE_DIR/logs
REDIS_DIR=$STATE_DIR/redis
REDIS_PIDFILE=$REDIS_DIR/redis.pid
PG_LINK=$STATE_DIR/pg
FALLBACK_DIR=/var/tmp/catalog-dev-$(printf '%s' "$STATE_DIR" | sha256sum | cut -c1-12)
TEST_RUNS=$STATE_DIR/test-runs        # one file per running `test`: <pid>, its start time inside
TEST_STARTED=$STATE_DIR/test-started  # components started by test runs, one a line

PG_USER=""      # OS user that runs PostgreSQL
PG_AREA=""      # directory holding primary/, replica/, sock/ (maybe behind the symlink)
PG_BIN=""       # /usr/lib/postgresql/<major>/bin
LOCK_FD=""
FRESH_PRIMARY=0
STARTED=()      # components started by this invocation

# shellcheck source=ops/lib/common.sh
source "$ROOT/ops/lib/common.sh"
# shellcheck source=ops/lib/packages.sh
source "$ROOT/ops/lib/packages.sh"
# shellcheck source=ops/lib/postgres.sh
source "$ROOT/ops/lib/postgres.sh"
# shellcheck source=ops/lib/redis.sh
source "$ROOT/ops/lib/redis.sh"
# shellcheck source=ops/lib/rediscluster.sh
source "$ROOT/ops/lib/rediscluster.sh"
# shellcheck source=ops/lib/cluster.sh
source "$ROOT/ops/lib/cluster.sh"

usage() {
  sed -n '/^# Usage:/,/^# Other environment/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- readiness

# Waits until everything accepts connections and the replica streams; bounded.
wait_stack_ready() {
  local deadline=$((SECONDS + TIMEOUT)) missing
  while :; do
    missing=()
    pg_ready "$PG_PORT" || missing+=(primary)
    { pg_ready "$REPLICA_PORT" && replica_in_recovery; } || missing+=(replica)
    (($(streaming_count) >= 1)) || missing+=(replication)
    redis_ping || missing+=(redis)
    ((${#missing[@]} == 0)) && return 0
    if ((SECONDS >= deadline)); then
      log "timed out after ${TIMEOUT}s waiting for: ${missing[*]}"
      local m
      for m in "${missing[@]}"; do
        case $m in
          replication) log_tail "$LOG_DIR/replica.log"; log_tail "$LOG_DIR/primary.log" ;;
          *) log_tail "$LOG_DIR/$m.log" ;;
        esac
      done
      die "stack not ready (if the replica is broken, 'ops/dev.sh clean' then 'up' starts afresh)"
    fi
    sleep 0.5
  done
}

# ---------------------------------------------------------------- state dir

prepare_state_dir() {
  if [[ -d $STATE_DIR && ! -f $MARKER && -n $(ls -A -- "$STATE_DIR") ]]; then
    die "$STATE_DIR exists, is not empty and is not a dev.sh state dir; refusing to use it"
  fi
  mkdir -p -- "$STATE_DIR" "$LOG_DIR" "$REDIS_DIR"
  [[ -f $MARKER ]] || printf 'state of ops/dev.sh (%s); remove with ops/dev.sh clean\n' "$ROOT" >"$MARKER"
  # keep the state out of git even before .gitignore lists it
  [[ -f $STATE_DIR/.gitignore ]] || printf '*\n' >"$STATE_DIR/.gitignore"
}

# ---------------------------------------------------------------- test runs
# What `test` runs share, so that one cannot stop a stack another still uses. The
# caller holds the lock.

# live_test_runs: pids of the other registered test runs still running; forgets those
# that are gone (a pid now used by a later process counts as gone).
live_test_runs() {
  local f pid
  for f in "$TEST_RUNS"/*; do
    [[ -f $f ]] || continue
    pid=${f##*/}
    [[ $pid == "$$" ]] && continue
    if pid_alive "$pid" && [[ $(proc_start "$pid") == "$(<"$f")" ]]; then
      printf '%s\n' "$pid"
    else
      rm -f -- "$f"
    fi
  done
}

# note_test_started: adds what this invocation started to $TEST_STARTED.
note_test_started() {
  local c
  for c in "${STARTED[@]}"; do
    grep -qxF -- "$c" "$TEST_STARTED" 2>/dev/null || printf '%s\n' "$c" >>"$TEST_STARTED"
  done
}

# adopt_stack: whatever test runs started stays up after them (up, run, test --keep).
adopt_stack() {
  if [[ -s $TEST_STARTED ]]; then
    log "adopting the stack: test runs will no longer stop $(paste -sd ' ' -- "$TEST_STARTED")"
  fi
  rm -f -- "$TEST_STARTED"
}

# register_test_run KEEP
register_test_run() {
  mkdir -p -- "$TEST_RUNS"
  proc_start $$ >"$TEST_RUNS/$$"
  TEST_REGISTERED=1
  if [[ $1 == 1 ]]; then adopt_stack; else note_test_started; fi
}

# finish_test_run KEEP: unregisters this run; the last test run still using the stack
# stops what test runs started. Runs in a subshell (a `die` ends only that).
finish_test_run() {
  local others comps
  lock_acquire
  rm -f -- "$TEST_RUNS/$$"
  if [[ $1 == 1 ]]; then
    log "--keep: leaving the stack up"
    return 0
  fi
  # what an `up` that failed before registering did start (once registered, an
  # adoption may have cleared the list since)
  ((TEST_REGISTERED)) || note_test_started
  mapfile -t others < <(live_test_runs)
  if ((${#others[@]})); then
    log "other ops/dev.sh test runs still use the stack (pid ${others[*]}); leaving it up for the last of them to stop"
    return 0
  fi
  comps=()
  [[ -f $TEST_STARTED ]] && mapfile -t comps <"$TEST_STARTED"
  if ((${#comps[@]} == 0)); then
    log "the stack was already up before the test runs; leaving it up"
    return 0
  fi
  log "stopping what test runs started: ${comps[*]}"
  stop_components "${comps[@]}"
  rm -f -- "$TEST_STARTED"
}

# ---------------------------------------------------------------- commands

print_env() {
  printf 'export CATALOG_DATABASE_URL=postgres://%s@127.0.0.1:%s/%s\n' "$DB_USER" "$PG_PORT" "$DB_NAME"
  printf 'export CATALOG_REPLICA_URLS=postgres://%s@127.0.0.1:%s/%s\n' "$DB_USER" "$REPLICA_PORT" "$DB_NAME"
  printf 'export CATALOG_REDIS_URL=redis://127.0.0.1:%s\n' "$REDIS_PORT"
  printf 'export CATALOG_ADMIN_TOKENS=dev-admin-token\n'
}

# Fail early if a component that is not running would find its port taken.
preflight_ports() {
  pg_pid "$PG_AREA/primary" >/dev/null || require_port_free "$PG_PORT" primary CATALOG_DEV_PG_PORT
  pg_pid "$PG_AREA/replica" >/dev/null || require_port_free "$REPLICA_PORT" replica CATALOG_DEV_REPLICA_PORT
  redis_pid >/dev/null || require_port_free "$REDIS_PORT" redis CATALOG_DEV_REDIS_PORT
}

# stack_up: starts what is not running and waits for all of it; the caller holds the lock.
stack_up() {
  choose_pg_user
  find_pg_area
  [[ -n $PG_AREA && -d $PG_AREA ]] && pg_user_from_area
  ensure_pg_area
  select_pg_bin
  pg_mkdir "$PG_AREA/sock"
  preflight_ports

  [[ -d $PG_AREA/primary ]] || init_primary
  pg_start primary "$PG_AREA/primary" "$PG_PORT"
  wait_pg_ready "$PG_PORT" primary
  ensure_database

  if ((FRESH_PRIMARY)) && [[ -d $PG_AREA/replica ]]; then
    pg_stop replica "$PG_AREA/replica"
    log "removing replica of a previous primary"
    rm -rf -- "$PG_AREA/replica"
  fi
  [[ -d $PG_AREA/replica ]] || create_replica
  # primary_conninfo is also given here so a changed primary port is followed.
  pg_start replica "$PG_AREA/replica" "$REPLICA_PORT" \
    "-c primary_conninfo='host=127.0.0.1 port=$PG_PORT user=$DB_USER application_name=$SLOT' -c primary_slot_name=$SLOT"

  redis_start
  wait_stack_ready
}

stack_ready_log() {
  log "stack ready: primary 127.0.0.1:$PG_PORT, replica 127.0.0.1:$REPLICA_PORT (streaming), redis 127.0.0.1:$REDIS_PORT"
}

# up (and run): the stack started or adopted here stays up until `down`.
cmd_up() {
  ensure_packages
  prepare_state_dir
  lock_acquire
  stack_up
  adopt_stack
  lock_release
  stack_ready_log
}

# stop_components NAME...: stop the named components, in replica, primary, redis order.
# The caller holds the lock.
stop_components() {
  local want=" $* "
  find_pg_area
  if [[ -n $PG_AREA && -d $PG_AREA ]]; then
    pg_user_from_area
    try_select_pg_bin || log "PostgreSQL binaries not found; stopping by signal"
    [[ $want != *" replica "* ]] || pg_stop replica "$PG_AREA/replica"
    [[ $want != *" primary "* ]] || pg_stop primary "$PG_AREA/primary"
  fi
  [[ $want != *" redis "* ]] || redis_stop
}

cmd_down() {
  local others
  if [[ ! -d $STATE_DIR ]]; then
    log "no state in $STATE_DIR; nothing to stop"
    return 0
  fi
  lock_acquire
  mapfile -t others < <(live_test_runs)
  ((${#others[@]} == 0)) || log "warning: ops/dev.sh test runs still use the stack (pid ${others[*]})"
  stop_components replica primary redis
  rm -f -- "$TEST_STARTED"
  lock_release
}

# check_components NAME...: each is primary, replica or redis; at least one.
check_components() {
  (($#)) || die "name at least one of: primary replica redis"
  local c
  for c in "$@"; do
    case $c in
      primary | replica | redis) ;;
      *) die "unknown component '$c' (primary, replica or redis)" ;;
    esac
  done
}

cmd_stop() {
  check_components "$@"
  [[ -d $STATE_DIR ]] || { log "no state in $STATE_DIR; nothing to stop"; return 0; }
  lock_acquire
  stop_components "$@"
  lock_release
}

cmd_crash() {
  if (($# != 1)) || [[ $1 != primary && $1 != replica ]]; then
    die "usage: crash primary|replica"
  fi
  [[ -d $STATE_DIR ]] || { log "no state in $STATE_DIR; nothing to crash"; return 0; }
  lock_acquire
  find_pg_area
  [[ -n $PG_AREA && -d $PG_AREA ]] || die "no PostgreSQL clusters in $STATE_DIR"
  pg_user_from_area
  try_select_pg_bin || log "PostgreSQL binaries not found; stopping by signal"
  pg_crash "$1" "$PG_AREA/$1"
  lock_release
}

cmd_clean() {
  [[ $STATE_DIR != / && $STATE_DIR != "$ROOT" && $STATE_DIR != "${HOME:-/}" ]] ||
    die "refusing to delete $STATE_DIR"
  if [[ -d $STATE_DIR && ! -f $MARKER && -n $(ls -A -- "$STATE_DIR") ]]; then
    die "$STATE_DIR is not a dev.sh state dir; refusing to delete it"
  fi
  cmd_down
  if [[ -L $PG_LINK ]]; then
    local target
    target=$(readlink -- "$PG_LINK")
    if [[ $target == /var/tmp/catalog-dev-* ]]; then
      log "removing $target"
      rm -rf -- "$target"
    fi
  fi
  if [[ -d $FALLBACK_DIR ]]; then
    # clusters orphaned there (state dir deleted by hand) are stopped first
    local node pid
    for node in replica primary; do
      if pid=$(pg_pid "$FALLBACK_DIR/$node"); then
        log "stopping orphaned $node (pid $pid)"
        kill -INT "$pid" 2>/dev/null || true   # SIGINT = fast shutdown
        wait_gone "$pid" 30 || { kill -KILL "$pid" 2>/dev/null || true; wait_gone "$pid" 5 || true; }
      fi
    done
    log "removing $FALLBACK_DIR"
    rm -rf -- "$FALLBACK_DIR"
  fi
  if [[ -d $STATE_DIR ]]; then
    log "removing $STATE_DIR"
    rm -rf -- "$STATE_DIR"
  fi
}

area_desc() {
  if [[ -d $PG_AREA/$1 ]]; then echo "data: $PG_AREA/$1"; else echo "not created"; fi
}

cmd_status() {
  local all=0 pid extra
  find_pg_area
  if [[ -z $PG_AREA || ! -d $PG_AREA ]]; then
    PG_AREA=""
  else
    try_select_pg_bin || true
  fi
  if [[ -n $PG_AREA ]] && pid=$(pg_pid "$PG_AREA/primary"); then
    extra=""
    [[ -n $PG_BIN ]] && extra="  replicas streaming: $(streaming_count)"
    printf '%-8s running  pid %-7s 127.0.0.1:%s%s\n' primary "$pid" "$PG_PORT" "$extra"
  else
    printf '%-8s stopped  (%s)\n' primary "$(area_desc primary)"
    all=3
  fi
  if [[ -n $PG_AREA ]] && pid=$(pg_pid "$PG_AREA/replica"); then
    extra=""
    if [[ -n $PG_BIN ]]; then
      extra="  in recovery: $(pg_sql "$REPLICA_PORT" 'select pg_is_in_recovery()' 2>/dev/null || echo '?')"
      extra+=", wal receiver: $(pg_sql "$REPLICA_PORT" 'select status from pg_stat_wal_receiver' 2>/dev/null || echo '?')"
    fi
    printf '%-8s running  pid %-7s 127.0.0.1:%s%s\n' replica "$pid" "$REPLICA_PORT" "$extra"
  else
    printf '%-8s stopped  (%s)\n' replica "$(area_desc replica)"
    all=3
  fi
  if pid=$(redis_pid); then
    printf '%-8s running  pid %-7s 127.0.0.1:%s  ping: %s\n' redis "$pid" "$REDIS_PORT" \
      "$(redis_ping && echo PONG || echo 'no answer')"
  else
    printf '%-8s stopped\n' redis
    all=3
  fi
  return "$all"
}

cmd_psql() {
  local port=$PG_PORT
  case ${1:-} in
    primary) shift ;;
    replica) port=$REPLICA_PORT; shift ;;
  esac
  local bin
  bin=$(psql_bin) || exit 1
  exec "$bin" "postgres://$DB_USER@127.0.0.1:$port/$DB_NAME" "$@"
}

require_cargo() {
  local cargo_home=${CARGO_HOME:-${HOME:-/root}/.cargo}
  if ! command -v cargo >/dev/null && [[ -x $cargo_home/bin/cargo ]]; then
    PATH=$cargo_home/bin:$PATH
  fi
  command -v cargo >/dev/null ||
    die "cargo not found: install the Rust toolchain (https://rustup.rs) or put cargo on PATH"
}

LISTEN=""      # set by check_listen_addr: the address catalogd will listen on
LISTEN_URL=""  # and the base URL a client on this machine uses for it

# check_listen_addr VAR DEFAULT: $VAR (DEFAULT when unset or blank, trimmed, as catalogd
# reads it) must be IP:PORT with a port from 1 to 65535, and nothing may listen on that
# port yet. Sets LISTEN and LISTEN_URL.
check_listen_addr() {
  local var=$1 addr=${!1:-} host port
  addr=${addr#"${addr%%[![:space:]]*}"}
  addr=${addr%"${addr##*[![:space:]]}"}
  [[ -n $addr ]] || addr=$2
  host=${addr%:*}
  port=${addr##*:}
  if [[ $addr != *:* ]] || ! [[ $port =~ ^[0-9]{1,5}$ ]] || ((10#$port < 1 || 10#$port > 65535)) ||
    ! [[ $host =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ || $host =~ ^\[[0-9A-Fa-f:.]+\]$ ]]; then
    die "$var must be IP:PORT with a port from 1 to 65535 (e.g. 127.0.0.1:8080 or [::1]:8080), got '$addr'"
  fi
  port=$((10#$port))
  if listen_addr_in_use "$host" "$port"; then
    die "$var=$addr: port $port is already in use by another process (an earlier catalogd?); stop it or set $var to a free address"
  fi
  LISTEN=$addr
  case $host in
    0.0.0.0) LISTEN_URL=http://127.0.0.1:$port ;;
    '[::]') LISTEN_URL="http://[::1]:$port" ;;
    *) LISTEN_URL=http://$host:$port ;;
  esac
}

# check_listen_addrs: both of catalogd's addresses, into READER/READER_URL and
# WRITER/WRITER_URL.
check_listen_addrs() {
  check_listen_addr CATALOG_READER_ADDR 127.0.0.1:8080
  READER=$LISTEN READER_URL=$LISTEN_URL
  check_listen_addr CATALOG_WRITER_ADDR 127.0.0.1:8081
  WRITER=$LISTEN WRITER_URL=$LISTEN_URL
  [[ ${READER##*:} != "${WRITER##*:}" ]] ||
    die "CATALOG_READER_ADDR ($READER) and CATALOG_WRITER_ADDR ($WRITER) use the same port; give them different ones"
}

cmd_run() {
  require_cargo
  check_listen_addrs # before the stack and the build: fail early
  cmd_up
  eval "$(print_env)"
  cd "$ROOT"
  log "building: cargo build --release --bin catalogd"
  cargo build --release --bin catalogd
  local bin=${CARGO_TARGET_DIR:-$ROOT/target}/release/catalogd count
  [[ -x $bin ]] || die "$bin not found after the build"
  log "migrating: catalogd migrate"
  "$bin" migrate
  count=$(pg_sql "$PG_PORT" 'select count(*) from products' "$DB_NAME")
  if [[ $count == 0 ]]; then
    log "products is empty; seeding: catalogd seed --products 100000 --categories 200 --seed 42"
    "$bin" seed --products 100000 --categories 200 --seed 42
  else
    log "products has $count rows; not seeding"
  fi
  check_listen_addrs # again: the build and the seeding took a while
  cat <<EOT

  catalogd is starting:
    reader  $READER_URL    (listens on $READER: CATALOG_READER_ADDR)
    writer  $WRITER_URL    (listens on $WRITER: CATALOG_WRITER_ADDR)
  try:      curl -s $READER_URL/products/1
            curl -s '$READER_URL/products?ids=1,2,3'
            curl -s $READER_URL/categories
            curl -s -X PATCH -H "Authorization: Bearer $CATALOG_ADMIN_TOKENS" \\
                 -d '{"stock": 5}' $WRITER_URL/admin/products/1
  more:     docs/api.md

  Ctrl-C stops catalogd; the stack (PostgreSQL, Redis) stays up: 'ops/dev.sh down' stops it.

EOT
  exec "$bin" all
}

TEST_KEEP=0        # this run's --keep
TEST_REGISTERED=0  # this run is in $TEST_RUNS

test_teardown() {
  local rc=$?
  trap - EXIT INT TERM
  lock_release
  if [[ -d $STATE_DIR ]]; then
    (finish_test_run "$TEST_KEEP") || log "warning: could not stop the stack cleanly"
  fi
  exit "$rc"
}

cmd_test() {
  local keep=${CATALOG_DEV_KEEP:-0} args=() rc=0
  while (($#)); do
    case $1 in
      --keep) keep=1; shift ;;
      --) args+=("$@"); break ;;
      *) args+=("$1"); shift ;;
    esac
  done
  require_cargo
  TEST_KEEP=$keep
  trap test_teardown EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  ensure_packages
  cluster_packages # tests/cluster.rs runs HAProxy, Varnish and Prometheus
  prepare_state_dir
  lock_acquire
  stack_up
  register_test_run "$keep"
  lock_release
  stack_ready_log
  drop_test_databases
  eval "$(print_env)"
  cd "$ROOT"
  log "running: cargo test --workspace --all-targets ${args[*]}"
  cargo test --workspace --all-targets "${args[@]}" || rc=$?
  log "test suite exited with status $rc"
  if ((${#args[@]} == 0)); then
    local check
    for check in "$ROOT"/ops/check/{manifests,monitoring,openapi}.sh; do
      log "running: $check"
      bash "$check" || rc=$((rc ? rc : 1))
    done
    log "test suite and checks exited with status $rc"
  fi
  exit "$rc"
}

main() {
  check_port_var CATALOG_DEV_PG_PORT "$PG_PORT"
  check_port_var CATALOG_DEV_REPLICA_PORT "$REPLICA_PORT"
  check_port_var CATALOG_DEV_REDIS_PORT "$REDIS_PORT"
  [[ $TIMEOUT =~ ^[0-9]+$ ]] || die "CATALOG_DEV_TIMEOUT must be a number of seconds"
  local cmd=${1:-}
  (($#)) && shift
  case $cmd in
    deps) cmd_deps "$@" ;;
    up) cmd_up ;;
    down) cmd_down ;;
    clean) cmd_clean ;;
    status) cmd_status ;;
    stop) cmd_stop "$@" ;;
    crash) cmd_crash "$@" ;;
    env) print_env ;;
    psql) cmd_psql "$@" ;;
    run) cmd_run ;;
    test) cmd_test "$@" ;;
    redis-cluster) cmd_redis_cluster "$@" ;;
    cluster) cmd_cluster "$@" ;;
    *) usage ;;
  esac
}

main "$@"
