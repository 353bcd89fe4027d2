# ops/lib/rediscluster.sh - `ops/dev.sh redis-cluster up|down|status|url`: a Redis Cluster
# of three masters (no replicas) on 127.0.0.1, beside the default stack and separate
# from it (`up`, `down` and `test` of the stack never touch it). Node i (0, 1, 2) serves
# clients on $CATALOG_DEV_REDIS_CLUSTER_PORT + i (default 17000..17002) and talks to the
# other nodes on that port + 10000 (Redis's cluster bus, 27000..27002), both below
# Linux's ephemeral range. Each node runs without persistence, daemonised, with its pid
# file, its cluster config file (nodes.conf) and its data in
# <state dir>/redis-cluster/<port>/ and its log in <state dir>/logs/redis-cluster-<port>.log.
# Sourced by ops/dev.sh, not run; uses its STATE_DIR, LOG_DIR, TIMEOUT and helpers (log,
# die, pid_alive, wait_gone, require_port_free, lock_acquire, prepare_state_dir).
# shellcheck shell=bash

RC_BASE=${CATALOG_DEV_REDIS_CLUSTER_PORT:-17000}
RC_DIR=$STATE_DIR/redis-cluster
RC_NODES=3

rc_check_base() {
  check_port_var CATALOG_DEV_REDIS_CLUSTER_PORT "$RC_BASE"
  # the bus port of the last node must be a port too
  ((RC_BASE + RC_NODES - 1 + 10000 <= 65535)) ||
    die "CATALOG_DEV_REDIS_CLUSTER_PORT must be at most $((65535 - 10000 - RC_NODES + 1)) (each node's cluster bus listens on its port + 10000), got '$RC_BASE'"
}

# rc_ports: the nodes' client ports, one a line.
rc_ports() {
  local i
  for ((i = 0; i < RC_NODES; i++)); do printf '%s\n' $((RC_BASE + i)); done
}

# rc_url: CATALOG_REDIS_URL for the cluster (its seed nodes).
rc_url() {
  local ports
  mapfile -t ports < <(rc_ports)
  local IFS=,
  printf 'redis-cluster://%s\n' "${ports[*]/#/127.0.0.1:}"
}

# rc_pid PORT: the pid of that node's redis-server, if it runs.
rc_pid() {
  local pidfile=$RC_DIR/$1/redis.pid pid
  [[ -f $pidfile ]] || return 1
  pid=$(head -n 1 -- "$pidfile" 2>/dev/null) || return 1
  pid_alive "$pid" || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]] || return 1
  printf '%s\n' "$pid"
}

# rc_cli PORT ARGS...: redis-cli on that node, bounded.
rc_cli() {
  local port=$1
  shift
  timeout 5 redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null
}

# rc_info PORT FIELD: a field of that node's CLUSTER INFO (empty if it does not answer).
rc_info() {
  rc_cli "$1" cluster info | tr -d '\r' | sed -n "s/^$2://p"
}

rc_require_cli() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    die "redis-server and redis-cli are needed for the cluster: run 'ops/dev.sh deps'"
  fi
}

# rc_start_node PORT: starts the node (with the cluster config it has, if any).
rc_start_node() {
  local port=$1 dir=$RC_DIR/$1 log=$LOG_DIR/redis-cluster-$1.log
  if [[ -f $dir/redis.pid ]]; then
    rm -f -- "$dir/redis.pid"
  fi
  require_port_free "$port" "redis-cluster node" CATALOG_DEV_REDIS_CLUSTER_PORT
  require_port_free $((port + 10000)) "redis-cluster bus of node $port" CATALOG_DEV_REDIS_CLUSTER_PORT
  mkdir -p -- "$dir"
  log "starting redis-cluster node on 127.0.0.1:$port (bus $((port + 10000)), log: $log)"
  # shellcheck disable=SC2094  # redis appends to its own log; we only add its stdout
  if ! redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
    --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 5000 \
    --pidfile "$dir/redis.pid" --logfile "$log" --dir "$dir" \
    --save "" --appendonly no </dev/null >>"$log" 2>&1 9>&-; then
    log_tail "$log"
    die "redis-server (cluster node $port) did not start"
  fi
}

# rc_stop_node PORT: bounded stop of that node, then its state goes (it holds no data
# worth keeping: no persistence).
rc_stop_node() {
  local port=$1 pid
  if pid=$(rc_pid "$port"); then
    log "stopping redis-cluster node 127.0.0.1:$port (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 15; then
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 5 || die "could not stop redis-cluster node $port (pid $pid)"
    fi
  fi
  rm -rf -- "${RC_DIR:?}/$port"
}

# rc_wait_answering: every node answers PING; bounded.
rc_wait_answering() {
  local deadline=$((SECONDS + TIMEOUT)) port missing
  while :; do
    missing=()
    for port in $(rc_ports); do
      [[ $(rc_cli "$port" ping) == PONG ]] || missing+=("$port")
    done
    ((${#missing[@]} == 0)) && return 0
    if ((SECONDS >= deadline)); then
      for port in "${missing[@]}"; do log_tail "$LOG_DIR/redis-cluster-$port.log"; done
      die "redis-cluster nodes not answering after ${TIMEOUT}s: ${missing[*]}"
    fi
    sleep 0.2
  done
}

# rc_wait_ok: every node says cluster_state:ok and knows all the nodes; bounded.
rc_wait_ok() {
  local deadline=$((SECONDS + TIMEOUT)) port waiting
  while :; do
    waiting=()
    for port in $(rc_ports); do
      [[ $(rc_info "$port" cluster_state) == ok && $(rc_info "$port" cluster_known_nodes) == "$RC_NODES" ]] ||
        waiting+=("$port")
    done
    ((${#waiting[@]} == 0)) && return 0
    if ((SECONDS >= deadline)); then
      for port in "${waiting[@]}"; do
        log "node $port: $(rc_cli "$port" cluster info | tr -d '\r' | grep -E '^cluster_(state|slots_assigned|known_nodes):' | paste -sd ' ')"
        log_tail "$LOG_DIR/redis-cluster-$port.log" 10
      done
      die "redis-cluster not ok after ${TIMEOUT}s on: ${waiting[*]} ('ops/dev.sh redis-cluster down' then 'up' starts afresh)"
    fi
    sleep 0.2
  done
}

rc_up() {
  local port running=() stopped=() assigned=0 ports n
  rc_require_cli
  prepare_state_dir
  lock_acquire
  mkdir -p -- "$RC_DIR"
  for port in $(rc_ports); do
    if rc_pid "$port" >/dev/null; then running+=("$port"); else stopped+=("$port"); fi
  done
  if ((${#running[@]} == 0)); then
    # nothing runs: start afresh (there is no data to keep)
    for port in $(rc_ports); do rm -rf -- "${RC_DIR:?}/$port"; done
  fi
  for port in "${stopped[@]}"; do
    # a node that stopped while others run rejoins with its own nodes.conf
    if ((${#running[@]})) && [[ ! -f $RC_DIR/$port/nodes.conf ]]; then
      die "redis-cluster node $port is gone with its state while ${running[*]} run: 'ops/dev.sh redis-cluster down' then 'up' starts afresh"
    fi
    rc_start_node "$port"
  done
  rc_wait_answering
  for port in $(rc_ports); do
    n=$(rc_info "$port" cluster_slots_assigned)
    assigned=$((assigned + ${n:-0}))
  done
  if ((assigned == 0)); then
    mapfile -t ports < <(rc_ports)
    log "creating the cluster: ${ports[*]/#/127.0.0.1:} (3 masters, no replicas)"
    if ! timeout "$TIMEOUT" redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" \
      --cluster-replicas 0 --cluster-yes </dev/null >"$LOG_DIR/redis-cluster-create.log" 2>&1 9>&-; then
      log_tail "$LOG_DIR/redis-cluster-create.log"
      die "redis-cli --cluster create failed"
    fi
  fi
  rc_wait_ok
  lock_release
  log "redis-cluster ready: CATALOG_REDIS_URL=$(rc_url)"
}

rc_down() {
  local port
  if [[ ! -d $RC_DIR ]]; then
    log "no redis-cluster state in $STATE_DIR; nothing to stop"
    return 0
  fi
  lock_acquire
  for port in $(rc_ports); do rc_stop_node "$port"; done
  rmdir -- "$RC_DIR" 2>/dev/null || true
  lock_release
}

# rc_status: one line per node; exit 0 if every node runs and says cluster_state:ok.
rc_status() {
  local port pid all=0 state
  for port in $(rc_ports); do
    if pid=$(rc_pid "$port"); then
      state=$(rc_info "$port" cluster_state)
      printf '%-20s running  pid %-7s 127.0.0.1:%s  cluster_state: %s, slots assigned: %s, keys: %s\n' \
        "redis-cluster-$port" "$pid" "$port" "${state:-no answer}" \
        "$(rc_info "$port" cluster_slots_assigned)" "$(rc_cli "$port" dbsize)"
      [[ $state == ok ]] || all=3
    else
      printf '%-20s stopped\n' "redis-cluster-$port"
      all=3
    fi
  done
  ((all == 0)) && printf 'CATALOG_REDIS_URL=%s\n' "$(rc_url)"
  return "$all"
}

# cmd_redis_cluster up|down|status|url
cmd_redis_cluster() {
  rc_check_base
  case ${1:-} in
    up) rc_up ;;
    down) rc_down ;;
    status) rc_status ;;
    url) printf 'export CATALOG_REDIS_URL=%s\n' "$(rc_url)" ;;
    *) die "usage: redis-cluster up|down|status|url" ;;
  esac
}
