#!/usr/bin/env bash
# ops/check/verify_webhooks.sh - verifies recorded webhook deliveries with the Standard
# Webhooks reference library for Python (`standardwebhooks`, pinned, from PyPI, in the
# venv of ops/lib/python.sh). tests/webhooks.rs runs it on what its receiver recorded.
#
# Usage: ops/check/verify_webhooks.sh DELIVERIES.json   (format: ops/check/verify_webhooks.py)
# Exit status: 0 when every delivery verifies, 1 otherwise, 2 on bad usage.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
# shellcheck source=ops/lib/python.sh
source "$ROOT/ops/lib/python.sh"

if (($# != 1)); then
  echo "usage: ops/check/verify_webhooks.sh DELIVERIES.json" >&2
  exit 2
fi

py_tools standardwebhooks==1.1.0
exec python3 "$ROOT/ops/check/verify_webhooks.py" "$1"
