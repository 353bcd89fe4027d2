# ops/lib/postgres.sh - the PostgreSQL half of ops/dev.sh's stack: the OS user and data
# area of the clusters, the primary (initdb, start, database), the streaming replica
# (pg_basebackup with a replication slot), bounded stops and crashes, and the cleanup of databases
# left by integration tests. Sourced by ops/dev.sh, not run; uses its settings (PG_PORT,
# REPLICA_PORT, STATE_DIR, LOG_DIR, PG_LINK, FALLBACK_DIR, DB_NAME, DB_USER, SLOT,
# TIMEOUT) and its state (PG_USER, PG_AREA, PG_BIN, FRESH_PRIMARY, STARTED).
# shellcheck shell=bash

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

psql_bin() {
  if [[ -n $PG_BIN && -x $PG_BIN/psql ]] || find_pg_bin; then
    printf '%s\n' "$PG_BIN/psql"
  elif command -v psql >/dev/null; then
    command -v psql
  else
    die "psql not found (run 'ops/dev.sh deps' first, it installs PostgreSQL)"
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
  # shellcheck disable=SC2034  # read by ops/dev.sh
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
  # With hot_standby_feedback the primary keeps rows the replica's reads may still
  # see, as of the replica's last status report: every 10 s by default, so the relay's
  # scans of unpublished outbox rows crossed 10 s of published ones' dead index entries
  # (docs/operations.md, "PostgreSQL settings"). Reports every second bound that to 1 s.
  printf '\n# ---- ops/dev.sh: replica ----\nhot_standby = on\nhot_standby_feedback = on\nwal_receiver_status_interval = 1s\n' \
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

# pg_crash NAME DATADIR: immediate shutdown (SIGQUIT: no checkpoint, the next start
# runs crash recovery), then SIGKILL; bounded.
pg_crash() {
  local name=$1 data=$2 pid
  if ! pid=$(pg_pid "$data"); then
    log "$name not running"
    return 0
  fi
  log "crashing $name (pid $pid): immediate shutdown"
  kill -QUIT "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" 10; then
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 5 || die "could not stop $name (pid $pid)"
  fi
}

replica_in_recovery() { [[ $(pg_sql "$REPLICA_PORT" 'select pg_is_in_recovery()' 2>/dev/null) == t ]]; }

streaming_count() {
  pg_sql "$PG_PORT" "select count(*) from pg_stat_replication where state = 'streaming'" 2>/dev/null || echo 0
}

# ---------------------------------------------------------------- test databases

# Each integration test creates a database of its own named t_<pid>_<n>_<micros>, pid
# being its test process's. Drops those whose process is gone, so the stack does not
# grow run after run. The databases of tests still running (a concurrent
# `ops/dev.sh test`, or a `cargo test` by hand) are left alone, and so is every name
# that does not follow the pattern.
drop_test_databases() {
  local db pid dropped=0 kept=()
  for db in $(pg_sql "$PG_PORT" "select datname from pg_database where datname ~ '^t_[0-9]+_[0-9]+_[0-9]+\$'"); do
    pid=${db#t_}
    pid=${pid%%_*}
    if pid_alive "$pid"; then
      kept+=("$db")
      continue
    fi
    if pg_sql "$PG_PORT" "drop database if exists \"$db\" with (force)" >/dev/null; then
      dropped=$((dropped + 1))
    else
      log "warning: could not drop test database $db"
    fi
  done
  ((dropped == 0)) || log "dropped $dropped test database(s) of finished test processes"
  ((${#kept[@]} == 0)) || log "kept ${#kept[@]} test database(s) of running test processes: ${kept[*]}"
}
