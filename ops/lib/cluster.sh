# ops/lib/cluster.sh - `ops/dev.sh cluster`: the service as it runs beyond one process,
# on 127.0.0.1 and the dev stack's PostgreSQL and Redis:
#
#   client -> Varnish (xkey; the CDN tier)    port $CATALOG_DEV_CLUSTER_PORT     (18000)
#          -> HAProxy (health checks, retries) port +1                          (18001)
#          -> readers 1..N                     ports +11..                      (18011..)
#   admin  -> writers 1..M (relay leadership; the leader purges Varnish)  ports +31.. (18031..)
#   Prometheus scrapes every reader and writer port +2                          (18002)
#   HAProxy's statistics (CSV: /stats;csv)      port +3                          (18003)
#
# N = $CATALOG_DEV_CLUSTER_READERS (default 2), M = $CATALOG_DEV_CLUSTER_WRITERS (2). The
# edge configuration is shared with compose: ops/cluster/catalog.vcl and haproxy.cfg;
# this file writes their local parts (backend.vcl, readers.cfg) and Prometheus's
# targets.json. The catalogd binary is $CATALOG_BIN, else `cargo build --release`.
# The databases and Redis are the ones CATALOG_DATABASE_URL, CATALOG_REPLICA_URLS and
# CATALOG_REDIS_URL name when set (tests give theirs), else the dev stack's (started if
# needed). Everything the cluster runs is in $STATE_DIR/cluster (logs, pid files) and, for
# the users Varnish and Prometheus drop to, /var/tmp/catalog-cluster-<hash>.
#
#   cluster up | down | status
#   cluster stop|kill|start|restart reader|writer I   one process: stop (SIGTERM, then
#       waits for it to drain and exit), kill (SIGKILL), start (waits until /readyz
#       answers 200, and for a reader until HAProxy counts it up again), restart (stop,
#       then start). A rolling restart (each reader restarted after the one before)
#       so never leaves HAProxy without a reader it counts up.
#
# Sourced by ops/dev.sh, not run.
# shellcheck shell=bash

CLUSTER_PORT=${CATALOG_DEV_CLUSTER_PORT:-18000}
CLUSTER_READERS=${CATALOG_DEV_CLUSTER_READERS:-2}
CLUSTER_WRITERS=${CATALOG_DEV_CLUSTER_WRITERS:-2}
CLUSTER_DIR=$STATE_DIR/cluster
CLUSTER_RUN=/var/tmp/catalog-cluster-$(printf '%s' "$STATE_DIR" | sha256sum | cut -c1-12)
CLUSTER_BIN=""

cluster_port() { # role index
  case $1 in
    varnish) echo "$CLUSTER_PORT" ;;
    haproxy) echo $((CLUSTER_PORT + 1)) ;;
    prometheus) echo $((CLUSTER_PORT + 2)) ;;
    haproxy-stats) echo $((CLUSTER_PORT + 3)) ;;
    reader) echo $((CLUSTER_PORT + 10 + $2)) ;;
    writer) echo $((CLUSTER_PORT + 30 + $2)) ;;
  esac
}

cluster_pidfile() { echo "$CLUSTER_DIR/$1${2:+-$2}.pid"; }

cluster_pid() { # name [index]: the pid if that process runs
  local file pid
  file=$(cluster_pidfile "$@")
  [[ -f $file ]] || return 1
  pid=$(head -n 1 -- "$file")
  pid_alive "$pid" || return 1
  printf '%s\n' "$pid"
}

cluster_packages() {
  local missing=()
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v varnishd >/dev/null || missing+=(varnish)
  compgen -G '/usr/lib/*/varnish/vmods/libvmod_xkey.so' >/dev/null ||
    compgen -G '/usr/lib/varnish/vmods/libvmod_xkey.so' >/dev/null || missing+=(varnish-modules)
  command -v prometheus >/dev/null || missing+=(prometheus)
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
}

cluster_binary() {
  if [[ -n ${CATALOG_BIN:-} ]]; then
    CLUSTER_BIN=$CATALOG_BIN
  else
    require_cargo
    log "building: cargo build --release --bin catalogd"
    (cd "$ROOT" && cargo build --release --bin catalogd 9>&-)
    CLUSTER_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/catalogd
  fi
  [[ -x $CLUSTER_BIN ]] || die "catalogd binary not found: $CLUSTER_BIN"
}

# cluster_wait_ready URL WHAT: bounded wait for a 200.
cluster_wait_ready() {
  local deadline=$((SECONDS + TIMEOUT))
  until "$CLUSTER_BIN" probe "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || die "$2 not ready at $1 within ${TIMEOUT}s"
    sleep 0.2
  done
}

# cluster_start_catalogd reader|writer I
cluster_start_catalogd() {
  local role=$1 i=$2 port pid
  port=$(cluster_port "$role" "$i")
  if pid=$(cluster_pid "$role" "$i"); then
    log "$role $i already running (pid $pid)"
    return 0
  fi
  require_port_free "$port" "$role $i" CATALOG_DEV_CLUSTER_PORT
  local env=(
    "CATALOG_READER_ADDR=127.0.0.1:$(cluster_port reader "$i")"
    "CATALOG_WRITER_ADDR=127.0.0.1:$(cluster_port writer "$i")"
    "CATALOG_SHUTDOWN_DELAY_MS=${CATALOG_SHUTDOWN_DELAY_MS:-3000}"
    "CATALOG_SURROGATE_KEYS=true"
    "CATALOG_EDGE_PURGE_URLS=http://127.0.0.1:$(cluster_port varnish)"
    "CATALOG_LOG_FORMAT=json"
  )
  env "${env[@]}" setsid "$CLUSTER_BIN" "$role" </dev/null \
    >>"$CLUSTER_DIR/logs/$role-$i.log" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$(cluster_pidfile "$role" "$i")"
  cluster_wait_ready "http://127.0.0.1:$port/readyz" "$role $i"
  [[ $role == reader ]] && cluster_pid haproxy >/dev/null && cluster_wait_balanced "$i"
  log "$role $i ready on 127.0.0.1:$port (pid $pid)"
}

# cluster_wait_balanced I: bounded wait until HAProxy's health checks count reader I up
# (status UP, not "DOWN 1/2" nor "UP 1/2" on the way), from its statistics in CSV.
cluster_wait_balanced() {
  local deadline=$((SECONDS + TIMEOUT)) status=""
  while :; do
    status=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
        printf "GET /stats;csv HTTP/1.0\r\n\r\n" >&3 && cat <&3' _ "$(cluster_port haproxy-stats)" |
      awk -F, -v sv="reader$1" '$1 == "readers" && $2 == sv {print $18}') || true
    [[ $status == UP ]] && return 0
    ((SECONDS < deadline)) || die "HAProxy does not count reader $1 up within ${TIMEOUT}s (status: ${status:-none})"
    sleep 0.2
  done
}

# cluster_stop_process NAME [I] [SIGNAL]: SIGTERM (or SIGNAL) and a bounded wait.
cluster_stop_process() {
  local name=$1 i=${2:-} signal=${3:-TERM} pid
  pid=$(cluster_pid "$name" "$i") || return 0
  kill -"$signal" "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" "$TIMEOUT"; then
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 5 || die "could not stop $name $i (pid $pid)"
  fi
  rm -f -- "$(cluster_pidfile "$name" "$i")"
}

cluster_write_configs() {
  local i
  mkdir -p -- "$CLUSTER_RUN/varnish" "$CLUSTER_RUN/prometheus/data"
  cp -- "$ROOT/ops/cluster/catalog.vcl" "$CLUSTER_RUN/catalog.vcl"
  cat >"$CLUSTER_RUN/backend.vcl" <<EOF
# written by ops/dev.sh cluster: HAProxy, and who may purge (the writers, on loopback)
backend default {
    .host = "127.0.0.1";
    .port = "$(cluster_port haproxy)";
}
acl purgers {
    "127.0.0.1";
}
EOF
  {
    echo "# written by ops/dev.sh cluster"
    echo "backend readers"
    for ((i = 1; i <= CLUSTER_READERS; i++)); do
      echo "    server reader$i 127.0.0.1:$(cluster_port reader "$i") check"
    done
    echo
    echo "# what the health checks decided, for cluster_wait_balanced"
    echo "frontend stats"
    echo "    bind 127.0.0.1:$(cluster_port haproxy-stats)"
    echo "    stats enable"
    echo "    stats uri /stats"
  } >"$CLUSTER_DIR/readers.cfg"
  cp -- "$ROOT/ops/prometheus/cluster.yml" "$ROOT/ops/prometheus/alerts.yml" "$CLUSTER_RUN/prometheus/"
  {
    printf '[{"targets": ['
    for ((i = 1; i <= CLUSTER_READERS; i++)); do
      printf '%s"127.0.0.1:%s"' "$([[ $i == 1 ]] || echo ,)" "$(cluster_port reader "$i")"
    done
    printf '], "labels": {"role": "reader"}}, {"targets": ['
    for ((i = 1; i <= CLUSTER_WRITERS; i++)); do
      printf '%s"127.0.0.1:%s"' "$([[ $i == 1 ]] || echo ,)" "$(cluster_port writer "$i")"
    done
    printf '], "labels": {"role": "writer"}}]\n'
  } >"$CLUSTER_RUN/prometheus/targets.json"
  chmod -R a+rX "$CLUSTER_RUN"
  chmod a+rwx "$CLUSTER_RUN/prometheus/data"
}

cluster_start_edge() {
  local pid
  if ! cluster_pid haproxy >/dev/null; then
    require_port_free "$(cluster_port haproxy)" haproxy CATALOG_DEV_CLUSTER_PORT
    CATALOG_LB_BIND=127.0.0.1:$(cluster_port haproxy) haproxy -D \
      -p "$(cluster_pidfile haproxy)" -f "$ROOT/ops/cluster/haproxy.cfg" \
      -f "$CLUSTER_DIR/readers.cfg" </dev/null >>"$CLUSTER_DIR/logs/haproxy.log" 2>&1 9>&- ||
      { log_tail "$CLUSTER_DIR/logs/haproxy.log"; die "haproxy did not start"; }
  fi
  if ! cluster_pid varnish >/dev/null; then
    require_port_free "$(cluster_port varnish)" varnish CATALOG_DEV_CLUSTER_PORT
    varnishd -a "127.0.0.1:$(cluster_port varnish)" -f "$CLUSTER_RUN/catalog.vcl" \
      -n "$CLUSTER_RUN/varnish" -P "$(cluster_pidfile varnish)" -s malloc,128m \
      -p vcl_path="$CLUSTER_RUN" </dev/null >>"$CLUSTER_DIR/logs/varnish.log" 2>&1 9>&- ||
      { log_tail "$CLUSTER_DIR/logs/varnish.log"; die "varnishd did not start"; }
  fi
  if ! cluster_pid prometheus >/dev/null; then
    require_port_free "$(cluster_port prometheus)" prometheus CATALOG_DEV_CLUSTER_PORT
    runuser -u nobody -- prometheus --config.file="$CLUSTER_RUN/prometheus/cluster.yml" \
      --storage.tsdb.path="$CLUSTER_RUN/prometheus/data" \
      --web.listen-address="127.0.0.1:$(cluster_port prometheus)" </dev/null \
      >>"$CLUSTER_DIR/logs/prometheus.log" 2>&1 9>&- &
    echo $! >"$(cluster_pidfile prometheus)"
  fi
  cluster_wait_ready "http://127.0.0.1:$(cluster_port haproxy)/readyz" "haproxy"
  cluster_wait_ready "http://127.0.0.1:$(cluster_port varnish)/readyz" "varnish"
  cluster_wait_ready "http://127.0.0.1:$(cluster_port prometheus)/-/ready" "prometheus"
  pid=$(cluster_pid varnish)
  log "edge ready: varnish 127.0.0.1:$(cluster_port varnish) (pid $pid) -> haproxy 127.0.0.1:$(cluster_port haproxy) -> $CLUSTER_READERS readers; prometheus 127.0.0.1:$(cluster_port prometheus)"
}

# cluster_env: the dev stack's URLs and admin token, unless the caller gave its own.
cluster_env() {
  [[ -n ${CATALOG_DATABASE_URL:-} ]] || eval "$(print_env)"
}

cluster_up() {
  local i
  check_port_var CATALOG_DEV_CLUSTER_PORT "$CLUSTER_PORT"
  [[ $CLUSTER_READERS =~ ^[1-9]$ && $CLUSTER_WRITERS =~ ^[1-9]$ ]] ||
    die "CATALOG_DEV_CLUSTER_READERS and _WRITERS must be 1 to 9"
  ensure_packages
  cluster_packages
  prepare_state_dir
  [[ -n ${CATALOG_DATABASE_URL:-} ]] || cmd_up
  cluster_env
  cluster_binary
  mkdir -p -- "$CLUSTER_DIR/logs"
  "$CLUSTER_BIN" migrate 9>&- >>"$CLUSTER_DIR/logs/migrate.log" 2>&1 ||
    { log_tail "$CLUSTER_DIR/logs/migrate.log"; die "catalogd migrate failed"; }
  if "$CLUSTER_BIN" seed --products 10000 --seed 42 >>"$CLUSTER_DIR/logs/seed.log" 2>&1 9>&-; then
    log "seeded 10,000 products"
  else
    log "not seeded: the catalog is not empty (or see $CLUSTER_DIR/logs/seed.log)"
  fi
  cluster_write_configs
  # Readers first (the edge's health checks need them), writers last (they purge the edge).
  for ((i = 1; i <= CLUSTER_READERS; i++)); do cluster_start_catalogd reader "$i"; done
  cluster_start_edge
  for ((i = 1; i <= CLUSTER_WRITERS; i++)); do cluster_start_catalogd writer "$i"; done
  cat <<EOT

  the cluster is up; one request through each hop:
    curl -si http://127.0.0.1:$(cluster_port varnish)/products/1     # Varnish (X-Cache: MISS, then HIT)
    curl -si http://127.0.0.1:$(cluster_port haproxy)/products/1     # HAProxy, any ready reader
    curl -si http://127.0.0.1:$(cluster_port reader 1)/products/1     # reader 1
    curl -si -X PATCH -H "Authorization: Bearer \$CATALOG_ADMIN_TOKENS" -d '{"stock": 5}' \\
         http://127.0.0.1:$(cluster_port writer 1)/admin/products/1  # a writer: Varnish is purged
    prometheus: http://127.0.0.1:$(cluster_port prometheus)/targets
  'ops/dev.sh cluster down' stops it.

EOT
}

cluster_down() {
  local i name
  for name in varnish haproxy prometheus; do cluster_stop_process "$name"; done
  for ((i = 1; i <= 9; i++)); do
    cluster_stop_process reader "$i"
    cluster_stop_process writer "$i"
  done
  rm -rf -- "$CLUSTER_RUN"
  log "cluster stopped"
}

cluster_status() {
  local i name rc=0 pid
  for name in varnish haproxy prometheus; do
    if pid=$(cluster_pid "$name"); then
      printf '%-10s running (pid %s) 127.0.0.1:%s\n' "$name" "$pid" "$(cluster_port "$name")"
    else
      printf '%-10s stopped\n' "$name"
      rc=3
    fi
  done
  for name in reader writer; do
    for ((i = 1; i <= 9; i++)); do
      if pid=$(cluster_pid "$name" "$i"); then
        printf '%-10s running (pid %s) 127.0.0.1:%s\n' "$name $i" "$pid" "$(cluster_port "$name" "$i")"
      fi
    done
  done
  return "$rc"
}

cmd_cluster() {
  local action=${1:-} role=${2:-} i=${3:-}
  case $action in
    up) cluster_up ;;
    down) cluster_down ;;
    status) cluster_status ;;
    stop | kill | start | restart)
      [[ $role == reader || $role == writer ]] && [[ $i =~ ^[1-9]$ ]] ||
        die "usage: ops/dev.sh cluster $action reader|writer I"
      case $action in
        stop) cluster_stop_process "$role" "$i" ;;
        kill) cluster_stop_process "$role" "$i" KILL ;;
        start | restart)
          [[ $action == start ]] || cluster_stop_process "$role" "$i"
          cluster_env
          cluster_binary
          mkdir -p -- "$CLUSTER_DIR/logs"
          cluster_start_catalogd "$role" "$i"
          ;;
      esac
      ;;
    *) usage ;;
  esac
}
