# ops/lib/packages.sh - the Debian packages ops/dev.sh needs, and `ops/dev.sh deps`,
# which installs the missing ones with apt-get (through `sudo -n` when not root).
# Sourced by ops/dev.sh, not run; find_pg_bin comes from ops/lib/postgres.sh.
# shellcheck shell=bash

# apt_get ARGS...: apt-get as root, or through sudo -n (never prompts for a password).
apt_get() {
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null ||
      die "not root and sudo is not installed: run '$DEPS_CMD' as root, or install $(missing_list) yourself"
    sudo -n true 2>/dev/null ||
      die "not root and 'sudo -n' is not allowed (it would ask for a password): run 'sudo $DEPS_CMD' once, or install $(missing_list) yourself"
    sudo=(sudo -n)
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

MISSING=()                # packages missing_packages found missing
DEPS_CMD="ops/dev.sh deps"  # the command that installs them, for messages

# missing_packages [--bench]: sets MISSING to the packages whose programs are absent.
# The stack: a PostgreSQL server (postgresql, which brings psql and pg_basebackup),
# redis-server (which brings redis-cli), flock/runuser (util-linux). With --bench also
# what bench/*.sh use: curl, wrk, valgrind (callgrind) and taskset (util-linux).
missing_packages() {
  MISSING=()
  find_pg_bin || MISSING+=(postgresql)
  command -v redis-server >/dev/null || MISSING+=(redis-server)
  { command -v flock && command -v runuser; } >/dev/null || MISSING+=(util-linux)
  if [[ ${1:-} == --bench ]]; then
    command -v curl >/dev/null || MISSING+=(curl)
    command -v wrk >/dev/null || MISSING+=(wrk)
    command -v callgrind_control >/dev/null || MISSING+=(valgrind)
    command -v taskset >/dev/null || [[ " ${MISSING[*]} " == *" util-linux "* ]] || MISSING+=(util-linux)
  fi
}

missing_list() { printf '%s' "${MISSING[*]:-the missing packages}"; }

# ensure_packages [--bench]: installs what is missing, nothing when all is there.
ensure_packages() {
  DEPS_CMD="ops/dev.sh deps${1:+ $1}"
  missing_packages "$@"
  ((${#MISSING[@]})) || return 0
  apt_install "${MISSING[@]}"
  missing_packages "$@"
  ((${#MISSING[@]} == 0)) || die "still missing after apt-get install: ${MISSING[*]}"
}

cmd_deps() {
  local bench=()
  case ${1:-} in
    "") ;;
    --bench) bench=(--bench) ;;
    *) usage ;;
  esac
  ensure_packages "${bench[@]}"
  find_pg_bin
  log "all packages present (PostgreSQL $(basename -- "$(dirname -- "$PG_BIN")"), redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p'))"
}
