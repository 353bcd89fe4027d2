# ops/lib/python.sh - one Python virtual environment for the project's checking tools
# (validators, schemathesis, ...), installed from PyPI on first use. Sourced by the
# scripts under ops/check/, not run.
#
#   py_tools PKG==VERSION ...   creates <state dir>/venv if needed, pip-installs the
#                               packages not yet there at that version, and puts the
#                               venv's bin/ first on PATH
#
# The state dir is $CATALOG_DEV_DIR (default <repo>/.dev), as for ops/dev.sh.
# shellcheck shell=bash

py_tools() {
  local root state venv missing=() spec
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
  state=$(realpath -m -- "${CATALOG_DEV_DIR:-$root/.dev}")
  venv=$state/venv
  mkdir -p "$state"
  # Two checks may start at once: one creates and fills the venv, the other waits.
  exec 8>>"$state/.venv.lock"
  flock -w 600 8 || { echo "python.sh: the venv lock is not free after 600 s" >&2; return 1; }
  # A venv is marked ready once python3 -m venv has finished, so one left half-made (a
  # full disk, a killed run: python without pip) is made again, never taken for a
  # working one. (A venv cannot be moved into place: its scripts name its own path.)
  if [[ ! -e $venv/.ready ]]; then
    rm -rf -- "$venv"
    if ! python3 -m venv "$venv" >&2 || ! touch "$venv/.ready"; then
      rm -rf -- "$venv"
      exec 8>&-
      echo "python.sh: python3 -m venv failed" >&2
      return 1
    fi
  fi
  for spec in "$@"; do
    "$venv/bin/python" - "$spec" <<'PY' || missing+=("$spec")
import sys
from importlib.metadata import version, PackageNotFoundError
name, _, want = sys.argv[1].partition("==")
try:
    sys.exit(0 if version(name) == want else 1)
except PackageNotFoundError:
    sys.exit(1)
PY
  done
  if ((${#missing[@]})); then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${missing[@]}" >&2 ||
      { exec 8>&-; echo "python.sh: pip install ${missing[*]} failed" >&2; return 1; }
  fi
  exec 8>&-
  PATH=$venv/bin:$PATH
}
