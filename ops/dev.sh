#!/usr/bin/env bash
# ops/dev.sh - the local development stack for catalogd, without containers.
#
# On 127.0.0.1 it runs:
#   primary   PostgreSQL primary             port $CATALOG_DEV_PG_PORT      (default 55432)
#   replica   PostgreSQL streaming replica   port $CATALOG_DEV_REPLICA_PORT (default 55433)
#   redis     Redis, no persistence          port $CATALOG_DEV_REDIS_PORT   (default 56379)
# All state (data, logs, pid files) lives in $CATALOG_DEV_DIR (default <repo>/.dev), so
# two stacks with different ports and state dirs can run side by side. Missing Debian
# packages (postgresql, redis-server) are installed with apt-get.
#
# Usage: ops/dev.sh <command> [args]
#   up                  start the stack; returns once all three accept connections and
#                       the replica is streaming from the primary (idempotent)
#   down                stop the stack, replica first; keeps the data
#   clean               down, then delete all state
#   status              one line per component (exit 0 if all three run, 3 otherwise)
#   env                 print export lines:  eval "$(ops/dev.sh env)"
#   psql [primary|replica] [psql args]   psql on that node (default primary)
#   run                 up, build catalogd, migrate, seed if empty, run `catalogd all`
#   test [--keep] [cargo test args]      up, cargo test --workspace --all-targets, then
#                       stop what it started (unless --keep / CATALOG_DEV_KEEP=1);
#                       exits with the suite's status
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
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PG_PORT=${CATALOG_DEV_PG_PORT:-55432}
REPLICA_PORT=${CATALOG_DEV_REPLICA_PORT:-55433}
REDIS_PORT=${CATALOG_DEV_REDIS_PORT:-56379}
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

PG_USER=""      # OS user that runs PostgreSQL
PG_AREA=""      # directory holding primary/, replica/, sock/ (maybe behind the symlink)
PG_BIN=""       # /usr/lib/postgresql/<major>/bin
LOCK_FD=""
FRESH_PRIMARY=0
STARTED=()      # components started by this invocation (test tears down only these)

# ---------------------------------------------------------------- helpers

log() { printf 'dev.sh: %s\n' "$*" >&2; }
die() { printf 'dev.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '/^# Usage:/,/^# Other environment/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

check_port_var() {
  if ! [[ $2 =~ ^[0-9]+$ ]] || (($2 < 1 || $2 > 65535)); then
    die "$1 must be a TCP port, got '$2'"
  fi
}

# pid_alive PID: the process exists and is not a zombie.
pid_alive() {
  local stat
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# wait_gone PID SECONDS
wait_gone() {
  local deadline=$((SECONDS + $2))
  while pid_alive "$1"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

port_in_use() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

require_port_free() {
  if port_in_use "$1"; then
    die "port $1 ($2) is already in use by another process; stop it or pick another port with $3"
  fi
}

log_tail() {
  local f=$1
  [[ -f $f ]] || return 0
  printf 'dev.sh: ---- last lines of %s ----\n' "$f" >&2
  tail -n "${2:-30}" "$f" >&2 || true
}

# The lock is fd 9; every command started while it is held gets `9>&-`, or the
# daemons would inherit it and hold the lock forever.
lock_acquire() {
  exec 9>>"$STATE_DIR/.lock"
  LOCK_FD=9
  flock -w "$TIMEOUT" 9 || die "another ops/dev.sh is working on $STATE_DIR (lock not free after ${TIMEOUT}s)"
}

lock_release() {
  if [[ -n $LOCK_FD ]]; then
    exec 9>&-
    LOCK_FD=""
  fi
}

# ---------------------------------------------------------------- packages

apt_get() {
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "not root and no sudo: install '$*' yourself"
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"
}

apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found: install $* yourself"
  log "installing missing packages: $*"
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt_get update -q || die "apt-get update failed"
  fi
  if ! apt_get install -y -q --no-install-recommends "$@"; then
    log "apt-get install failed; running apt-get update and retrying"
    apt_get update -q || die "apt-get update failed"
    apt_get install -y -q --no-install-recommends "$@" || die "apt-get install $* failed"
  fi
}

# find_pg_bin [MAJOR]: sets PG_BIN to the server binaries (highest version, or MAJOR).
find_pg_bin() {
  local d
  PG_BIN=""
  if [[ -n ${1:-} ]]; then
    d=/usr/lib/postgresql/$1/bin
    [[ -x $d/postgres ]] && PG_BIN=$d
  else
    d=$(printf '%s\n' /usr/lib/postgresql/*/bin/postgres | sort -V | tail -n 1)
    [[ -x $d ]] && PG_BIN=${d%/postgres}
  fi
  [[ -n $PG_BIN ]]
}

ensure_packages() {
  local pkgs=()
  find_pg_bin || pkgs+=(postgresql)
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  if ((${#pkgs[@]})); then
    apt_install "${pkgs[@]}"
    find_pg_bin || die "no PostgreSQL server found under /usr/lib/postgresql/*/bin after install"
    command -v redis-server >/dev/null || die "redis-server not found after install"
  fi
}

psql_bin() {
  if [[ -n $PG_BIN && -x $PG_BIN/psql ]] || find_pg_bin; then
    printf '%s\n' "$PG_BIN/psql"
  elif command -v psql >/dev/null; then
    command -v psql
  else
    die "psql not found (run 'ops/dev.sh up' first, it installs PostgreSQL)"
  fi
}

# ---------------------------------------------------------------- PostgreSQL user & dirs

# as_pg CMD...: run CMD as the PostgreSQL OS user (from /, which that user can enter).
as_pg() {
  if ((EUID == 0)); then
    (cd / && runuser -u "$PG_USER" -- "$@" 9>&-)
  else
    "$@" 9>&-
  fi
}

choose_pg_user() {
  if ((EUID != 0)); then
    PG_USER=$(id -un)
  elif id -u postgres >/dev/null 2>&1; then
    PG_USER=postgres
  else
    if ! id -u catalogdev >/dev/null 2>&1; then
      log "creating system user 'catalogdev' to run PostgreSQL (it refuses to run as root)"
      useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin catalogdev || die "could not create user catalogdev"
    fi
    PG_USER=catalogdev
  fi
}

# Sets PG_AREA from existing state (directory or symlink); empty if there is none yet.
find_pg_area() {
  PG_AREA=""
  if [[ -L $PG_LINK ]]; then
    PG_AREA=$(readlink -- "$PG_LINK")
  elif [[ -d $PG_LINK ]]; then
    PG_AREA=$PG_LINK
  fi
}

# The existing clusters' owner runs them (matters for down/status when root).
pg_user_from_area() {
  if ((EUID != 0)); then
    PG_USER=$(id -un)
  elif [[ -n $PG_AREA && -d $PG_AREA ]]; then
    PG_USER=$(stat -c %U -- "$PG_AREA")
  fi
}

make_fallback_area() {
  if [[ -L $FALLBACK_DIR ]] || { [[ -e $FALLBACK_DIR ]] && [[ $(stat -c %U -- "$FALLBACK_DIR") != "$PG_USER" ]]; }; then
    die "$FALLBACK_DIR exists but is not a directory owned by $PG_USER; remove it"
  fi
  if [[ ! -d $FALLBACK_DIR ]]; then
    mkdir -m 700 -- "$FALLBACK_DIR"
    ((EUID != 0)) || chown -- "$PG_USER:" "$FALLBACK_DIR"
  fi
}

# Creates (if needed) and sets PG_AREA: <state>/pg when PG_USER can use it, otherwise
# the /var/tmp fallback with <state>/pg as a symlink to it.
ensure_pg_area() {
  find_pg_area
  if [[ -L $PG_LINK && ! -d $PG_AREA ]]; then
    log "PostgreSQL area $PG_AREA has vanished (data lost); starting with fresh clusters"
    rm -f -- "$PG_LINK"
    PG_AREA=""
  fi
  [[ -z $PG_AREA ]] || return 0
  local reason=""
  # A unix socket path must stay under ~107 bytes: <area>/sock/replica/.s.PGSQL.NNNNN
  if ((${#PG_LINK} + 30 > 100)); then
    reason="the state dir path is too long for PostgreSQL unix sockets"
  elif ! as_pg test -x "$STATE_DIR"; then
    reason="user $PG_USER cannot reach $STATE_DIR"
  else
    mkdir -m 700 -- "$PG_LINK"
    ((EUID != 0)) || chown -- "$PG_USER:" "$PG_LINK"
    if as_pg test -w "$PG_LINK" -a -x "$PG_LINK"; then
      PG_AREA=$PG_LINK
      return 0
    fi
    rmdir -- "$PG_LINK"
    reason="user $PG_USER cannot write $PG_LINK"
  fi
  log "$reason: keeping the PostgreSQL data in $FALLBACK_DIR (linked from $PG_LINK)"
  make_fallback_area
  ln -s -- "$FALLBACK_DIR" "$PG_LINK"
  PG_AREA=$FALLBACK_DIR
}

# pg_mkdir DIR: mkdir (parent must exist) owned by PG_USER
pg_mkdir() {
  [[ -d $1 ]] && return 0
  mkdir -m 700 -- "$1"
  ((EUID != 0)) || chown -- "$PG_USER:" "$1"
}

# ---------------------------------------------------------------- PostgreSQL

# pg_sql PORT SQL [DB]: run SQL, print the unaligned result.
pg_sql() {
  PGCONNECT_TIMEOUT=5 timeout 30 "$PG_BIN/psql" -X -q -w -v ON_ERROR_STOP=1 -tA \
    -h 127.0.0.1 -p "$1" -U "$DB_USER" -d "${3:-postgres}" -c "$2"
}

pg_ready() { timeout 10 "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -U "$DB_USER" -d postgres -t 3; }

# Pid of the postmaster running on data dir $1, or nothing (exit 1).
pg_pid() {
  local pid cwd
  [[ -f $1/postmaster.pid ]] || return 1
  pid=$(head -n 1 -- "$1/postmaster.pid" 2>/dev/null) || return 1
  pid_alive "$pid" || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == postgres ]] || return 1
  # the postmaster's working directory is its data directory
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
  [[ $cwd == "$(realpath -- "$1")" ]] || return 1
  printf '%s\n' "$pid"
}

clear_stale_pg_pid() {
  if [[ -f $1/postmaster.pid ]] && ! pg_pid "$1" >/dev/null; then
    log "removing stale $(basename -- "$1") postmaster.pid (pid $(head -n 1 -- "$1/postmaster.pid") is gone)"
    rm -f -- "$1/postmaster.pid"
  fi
}

# Sets PG_BIN: the binaries of the version the primary was created with, else the highest.
try_select_pg_bin() {
  local ver=""
  [[ -f $PG_AREA/primary/PG_VERSION ]] && ver=$(<"$PG_AREA/primary/PG_VERSION")
  find_pg_bin "$ver"
}

select_pg_bin() {
  try_select_pg_bin && return 0
  [[ -f $PG_AREA/primary/PG_VERSION ]] &&
    die "the dev clusters were created with PostgreSQL $(<"$PG_AREA/primary/PG_VERSION"), which is not installed (install it or run 'ops/dev.sh clean')"
  die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
}

init_primary() {
  local tmp=$PG_AREA/primary.tmp
  rm -rf -- "$tmp"
  log "initialising primary cluster ($PG_BIN/initdb)"
  if ! as_pg "$PG_BIN/initdb" -D "$tmp" -U "$DB_USER" --auth=trust --encoding=UTF8 --locale=C \
    --no-sync >>"$LOG_DIR/primary.log" 2>&1; then
    log_tail "$LOG_DIR/primary.log"
    die "initdb failed"
  fi
  # port, listen_addresses and the socket dir are passed on the command line at start.
  cat >>"$tmp/postgresql.conf" <<'EOF'

# ---- ops/dev.sh (local development stack) ----
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
max_connections = 300
shared_buffers = 256MB
# Development speed only: no durability. A machine crash can corrupt these clusters;
# they are throw-away (ops/dev.sh clean).
fsync = off
full_page_writes = off
EOF
  cat >"$tmp/pg_hba.conf" <<'EOF'
# ops/dev.sh: trust on loopback only (local development stack)
local   all           all                 trust
local   replication   all                 trust
host    all           all   127.0.0.1/32  trust
host    replication   all   127.0.0.1/32  trust
EOF
  mv -- "$tmp" "$PG_AREA/primary"
  FRESH_PRIMARY=1
}

# pg_start NAME DATADIR PORT [extra postgres options]
pg_start() {
  local name=$1 data=$2 port=$3 extra=${4:-} sock=$PG_AREA/sock/$1 logf=$LOG_DIR/$1.log pid
  if pid=$(pg_pid "$data"); then
    log "$name already running (pid $pid, 127.0.0.1:$port)"
    return 0
  fi
  clear_stale_pg_pid "$data"
  require_port_free "$port" "$name" "CATALOG_DEV_$([[ $name == primary ]] && echo PG || echo REPLICA)_PORT"
  pg_mkdir "$sock"
  log "starting $name on 127.0.0.1:$port (log: $logf)"
  # The log file is opened here (not by the PostgreSQL user), so it can live in the
  # state dir even when that user cannot reach it.
  if ! as_pg "$PG_BIN/pg_ctl" start -D "$data" -w -t "$TIMEOUT" \
    -o "-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories='$sock' $extra" \
    >>"$logf" 2>&1 </dev/null; then
    log_tail "$logf"
    die "$name did not start"
  fi
  STARTED+=("$name")
}

wait_pg_ready() {
  local deadline=$((SECONDS + TIMEOUT))
  until pg_ready "$1"; do
    if ((SECONDS >= deadline)); then
      log_tail "$LOG_DIR/$2.log"
      die "$2 not accepting connections on 127.0.0.1:$1 after ${TIMEOUT}s"
    fi
    sleep 0.5
  done
}

ensure_database() {
  if [[ $(pg_sql "$PG_PORT" "select count(*) from pg_database where datname = '$DB_NAME'") == 0 ]]; then
    log "creating database $DB_NAME"
    pg_sql "$PG_PORT" "create database $DB_NAME" >/dev/null
  fi
}

create_replica() {
  local tmp=$PG_AREA/replica.tmp logf=$LOG_DIR/replica.log
  rm -rf -- "$tmp"
  if [[ $(pg_sql "$PG_PORT" "select count(*) from pg_replication_slots where slot_name = '$SLOT'") != 0 ]]; then
    log "dropping leftover replication slot $SLOT on the primary"
    pg_sql "$PG_PORT" "select pg_drop_replication_slot('$SLOT')" >/dev/null ||
      die "could not drop replication slot $SLOT (is another replica using it?)"
  fi
  log "creating replica with pg_basebackup (slot $SLOT)"
  if ! as_pg timeout $((TIMEOUT * 5)) "$PG_BIN/pg_basebackup" -w -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" \
    -D "$tmp" -R -X stream -C -S "$SLOT" -c fast >>"$logf" 2>&1 </dev/null; then
    log_tail "$logf"
    rm -rf -- "$tmp"
    die "pg_basebackup failed"
  fi
  printf '\n# ---- ops/dev.sh: replica ----\nhot_standby = on\nhot_standby_feedback = on\n' \
    >>"$tmp/postgresql.conf"
  mv -- "$tmp" "$PG_AREA/replica"
}

# pg_stop NAME DATADIR: fast shutdown, then immediate, then SIGKILL; bounded.
pg_stop() {
  local name=$1 data=$2 pid
  if ! pid=$(pg_pid "$data"); then
    [[ -d $data ]] && clear_stale_pg_pid "$data"
    log "$name not running"
    return 0
  fi
  log "stopping $name (pid $pid)"
  if [[ -n $PG_BIN ]]; then
    as_pg "$PG_BIN/pg_ctl" stop -D "$data" -m fast -w -t 30 >>"$LOG_DIR/$name.log" 2>&1 </dev/null || true
  else
    kill -INT "$pid" 2>/dev/null || true   # SIGINT = fast shutdown
    wait_gone "$pid" 30 || true
  fi
  if ! wait_gone "$pid" 5; then
    log "$name did not stop in time; immediate shutdown"
    kill -QUIT "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 10; then
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 5 || die "could not stop $name (pid $pid)"
    fi
  fi
}

# ---------------------------------------------------------------- Redis

redis_pid() {
  local pid
  [[ -f $REDIS_PIDFILE ]] || return 1
  pid=$(head -n 1 -- "$REDIS_PIDFILE" 2>/dev/null) || return 1
  pid_alive "$pid" || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]] || return 1
  printf '%s\n' "$pid"
}

redis_ping() {
  if command -v redis-cli >/dev/null; then
    [[ $(timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
  else
    # shellcheck disable=SC2016
    timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "PING\r\n" >&3 &&
      IFS= read -r line <&3 && [[ $line == "+PONG"* ]]' _ "$REDIS_PORT" 2>/dev/null
  fi
}

redis_start() {
  local pid
  if pid=$(redis_pid); then
    log "redis already running (pid $pid, 127.0.0.1:$REDIS_PORT)"
    return 0
  fi
  if [[ -f $REDIS_PIDFILE ]]; then
    log "removing stale redis pid file (pid $(head -n 1 -- "$REDIS_PIDFILE") is gone)"
    rm -f -- "$REDIS_PIDFILE"
  fi
  require_port_free "$REDIS_PORT" redis CATALOG_DEV_REDIS_PORT
  mkdir -p -- "$REDIS_DIR"
  log "starting redis on 127.0.0.1:$REDIS_PORT (log: $LOG_DIR/redis.log)"
  # shellcheck disable=SC2094  # redis appends to its own log; we only add its stdout
  if ! redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
    --pidfile "$REDIS_PIDFILE" --logfile "$LOG_DIR/redis.log" --dir "$REDIS_DIR" \
    --save "" --appendonly no </dev/null >>"$LOG_DIR/redis.log" 2>&1 9>&-; then
    log_tail "$LOG_DIR/redis.log"
    die "redis-server did not start"
  fi
  STARTED+=(redis)
}

redis_stop() {
  local pid
  if ! pid=$(redis_pid); then
    [[ -f $REDIS_PIDFILE ]] && rm -f -- "$REDIS_PIDFILE"
    log "redis not running"
    return 0
  fi
  log "stopping redis (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" 15; then
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 5 || die "could not stop redis (pid $pid)"
  fi
  rm -f -- "$REDIS_PIDFILE"
}

# ---------------------------------------------------------------- readiness

replica_in_recovery() { [[ $(pg_sql "$REPLICA_PORT" 'select pg_is_in_recovery()' 2>/dev/null) == t ]]; }

streaming_count() {
  pg_sql "$PG_PORT" "select count(*) from pg_stat_replication where state = 'streaming'" 2>/dev/null || echo 0
}

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

cmd_up() {
  ensure_packages
  prepare_state_dir
  lock_acquire
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
  lock_release
  log "stack ready: primary 127.0.0.1:$PG_PORT, replica 127.0.0.1:$REPLICA_PORT (streaming), redis 127.0.0.1:$REDIS_PORT"
}

# stop_components NAME...: stop the named components, in replica, primary, redis order.
stop_components() {
  local want=" $* "
  if [[ ! -d $STATE_DIR ]]; then
    log "no state in $STATE_DIR; nothing to stop"
    return 0
  fi
  lock_acquire
  find_pg_area
  if [[ -n $PG_AREA && -d $PG_AREA ]]; then
    pg_user_from_area
    try_select_pg_bin || log "PostgreSQL binaries not found; stopping by signal"
    [[ $want != *" replica "* ]] || pg_stop replica "$PG_AREA/replica"
    [[ $want != *" primary "* ]] || pg_stop primary "$PG_AREA/primary"
  fi
  [[ $want != *" redis "* ]] || redis_stop
  lock_release
}

cmd_down() { stop_components replica primary redis; }

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

cmd_run() {
  require_cargo
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
  cat <<EOF

  catalogd is starting:
    reader  http://127.0.0.1:8080
    writer  http://127.0.0.1:8081
  try:      curl -s http://127.0.0.1:8080/products/1
            curl -s 'http://127.0.0.1:8080/products?ids=1,2,3'
            curl -s http://127.0.0.1:8080/categories
            curl -s -X PATCH -H "Authorization: Bearer $CATALOG_ADMIN_TOKENS" \\
                 -d '{"stock": 5}' http://127.0.0.1:8081/admin/products/1
  more:     README.md, "Storefront API" and "Admin API"

  Ctrl-C stops catalogd; the stack (PostgreSQL, Redis) stays up: 'ops/dev.sh down' stops it.

EOF
  exec "$bin" all
}

test_teardown() {
  local rc=$?
  trap - EXIT INT TERM
  lock_release
  if ((${#STARTED[@]})); then
    log "stopping what this run started: ${STARTED[*]}"
    stop_components "${STARTED[@]}" || log "warning: could not stop the stack cleanly"
  else
    log "the stack was already up before this run; leaving it up"
  fi
  exit "$rc"
}

# Each integration test creates a database of its own named t_<pid>_<n>_<micros>;
# drop those an earlier run left behind, so the stack does not grow run after run.
drop_test_databases() {
  local db
  for db in $(pg_sql "$PG_PORT" "select datname from pg_database where datname like 't\\_%'"); do
    pg_sql "$PG_PORT" "drop database if exists \"$db\" with (force)" >/dev/null
  done
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
  if [[ $keep != 1 ]]; then
    trap test_teardown EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
  fi
  cmd_up
  drop_test_databases
  eval "$(print_env)"
  cd "$ROOT"
  log "running: cargo test --workspace --all-targets ${args[*]}"
  cargo test --workspace --all-targets "${args[@]}" || rc=$?
  log "test suite exited with status $rc"
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
    up) cmd_up ;;
    down) cmd_down ;;
    clean) cmd_clean ;;
    status) cmd_status ;;
    env) print_env ;;
    psql) cmd_psql "$@" ;;
    run) cmd_run ;;
    test) cmd_test "$@" ;;
    *) usage ;;
  esac
}

main "$@"
