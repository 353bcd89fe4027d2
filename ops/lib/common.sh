# ops/lib/common.sh - helpers of ops/dev.sh that know nothing of PostgreSQL or Redis:
# messages (log, die, log_tail), process checks (pid_alive, proc_start, wait_gone), port
# checks (check_port_var, port_in_use, require_port_free, listen_addr_in_use) and the
# state dir's lock. Sourced by ops/dev.sh, not run; uses its STATE_DIR and TIMEOUT.
# shellcheck shell=bash

log() { printf 'dev.sh: %s\n' "$*" >&2; }
die() { printf 'dev.sh: error: %s\n' "$*" >&2; exit 1; }

log_tail() {
  local f=$1
  [[ -f $f ]] || return 0
  printf 'dev.sh: ---- last lines of %s ----\n' "$f" >&2
  tail -n "${2:-30}" "$f" >&2 || true
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

# proc_start PID: the process's start time (clock ticks since boot), which tells a
# process from a later one that got the same pid.
proc_start() {
  local stat f
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # fields after the command name: state is field 3, starttime field 22
  read -r -a f <<<"${stat##*) }"
  printf '%s\n' "${f[19]}"
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

# listen_addr_in_use HOST PORT: something listens on TCP PORT where a server binding
# HOST:PORT would clash. With ss(8): any listener on PORT counts (no traffic sent);
# without it, a connection attempt to loopback (::1 for an IPv6 HOST, else 127.0.0.1).
listen_addr_in_use() {
  local host=$1 port=$2
  if command -v ss >/dev/null; then
    [[ -n $(ss -Hltn "sport = :$port" 2>/dev/null) ]]
  elif [[ $host == *:* ]]; then
    timeout 2 bash -c "exec 3<>/dev/tcp/::1/$port" 2>/dev/null
  else
    port_in_use "$port"
  fi
}

# The lock is fd 9; every command started while it is held gets `9>&-`, or the
# daemons would inherit it and hold the lock forever. Taking it again while held is a
# no-op (re-opening fd 9 would drop the lock for a moment).
lock_acquire() {
  [[ -z $LOCK_FD ]] || return 0
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
