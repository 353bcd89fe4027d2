# ops/lib/redis.sh - the Redis part of ops/dev.sh's stack: one redis-server on
# 127.0.0.1:$REDIS_PORT without persistence, daemonised with its pid file in the state
# dir; start, ping and a bounded stop. Sourced by ops/dev.sh, not run; uses its settings
# (REDIS_PORT, REDIS_DIR, REDIS_PIDFILE, LOG_DIR) and STARTED.
# shellcheck shell=bash

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
