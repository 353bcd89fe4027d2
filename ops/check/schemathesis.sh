#!/usr/bin/env bash
# ops/check/schemathesis.sh - property-based tests of both live faces against their
# OpenAPI descriptions, with schemathesis (pinned, from PyPI, in the venv of
# ops/lib/python.sh).
#
# Usage: ops/check/schemathesis.sh STOREFRONT_URL ADMIN_URL [ADMIN_TOKEN]
#   e.g. ops/check/schemathesis.sh http://127.0.0.1:8080 http://127.0.0.1:8081 dev-admin-token
#
# The admin run WRITES: it creates, changes and deletes random products and categories
# and purges caches. Point it at a catalogd whose database is a throw-away one.
#
# Each face's description is loaded from its own `GET /openapi.json` when it serves one,
# else from docs/openapi/<face>.json (and then `/openapi.json` itself is not tested).
# ADMIN_TOKEN (one of the writer's CATALOG_ADMIN_TOKENS) is sent as
# `Authorization: Bearer <token>` to the admin face; without it every admin route can
# only be seen answering 401.
#
# schemathesis gets hooks (written to its work dir): NDJSON bodies and answers of bulk
# imports as the arrays of their lines, text/plain answers checked against their schema,
# and two changes to what it sends, so writes get past the preconditions: a valid
# product id in an admin path is folded into 1..1200 (the seeded catalog and a few
# more), and a valid Idempotency-Key gets a suffix naming its request (a request sent
# twice still replays).
#
# Checks, on both faces: not_a_server_error, status_code_conformance,
# content_type_conformance, response_headers_conformance, response_schema_conformance,
# unsupported_method and allow_header_conformance (a method a path does not declare is
# 405 with the right `Allow`); on the admin face also ignored_auth (a request without
# the token is refused) and use_after_free (a deleted product answers 404 to a PATCH
# or DELETE in the stateful phase). Left out: negative_data_rejection and
# positive_data_acceptance, because JSON Schema cannot state some of the API's bounds
# exactly ("200 distinct ids" with duplicates allowed, "2,048 bytes" of UTF-8,
# attributes "16 KiB serialized", integers written `5.0`) and because well-formed
# requests are refused for reasons of state (a token the primary has not reached, a
# cursor of another category, a taken SKU, an unknown category, an If-Match of another
# version); ensure_resource_availability (no POST creates an addressable resource);
# missing_required_header (no header parameter is required; the bearer token is covered
# by ignored_auth).
#
# Bounds (environment): MAX_EXAMPLES per operation (default 100), WORKERS (default 1:
# with more, Python 3.11 can fail with "AST constructor recursion depth mismatch" inside
# hypothesis, an interpreter bug of parsing in threads),
# REQUEST_TIMEOUT seconds per request (default 10), MAX_SECONDS for each face's whole
# run (default 600, then it is stopped and counts as a failure), SEED (default random),
# CHECKS (a comma-separated list replacing the checks above), REPORT_DIR (default
# <state dir>/schemathesis: a JUnit report per face), ST_ARGS (more `st run` options,
# split on spaces, e.g. "--phases examples,fuzzing"). Hypothesis' deadline is off in
# schemathesis 4: each request is bounded by REQUEST_TIMEOUT instead.
#
# Exits 0 when both runs pass, 1 when either found a failure or could not run, 2 on a
# usage error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
# shellcheck source=ops/lib/python.sh
source "$ROOT/ops/lib/python.sh"

usage() {
  echo "usage: ops/check/schemathesis.sh STOREFRONT_URL ADMIN_URL [ADMIN_TOKEN]" >&2
  exit 2
}
(($# == 2 || $# == 3)) || usage
storefront=${1%/}
admin=${2%/}
token=${3:-}
[[ $storefront =~ ^https?://[^/]+$ && $admin =~ ^https?://[^/]+$ ]] ||
  { echo "schemathesis.sh: the URLs are http(s)://host:port, without a path" >&2; usage; }

max_examples=${MAX_EXAMPLES:-100}
workers=${WORKERS:-1}
request_timeout=${REQUEST_TIMEOUT:-10}
max_seconds=${MAX_SECONDS:-600}
state=$(realpath -m -- "${CATALOG_DEV_DIR:-$ROOT/.dev}")
report_dir=${REPORT_DIR:-$state/schemathesis}
base_checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method,allow_header_conformance

py_tools schemathesis==4.32.5 hypothesis==6.170.17

work=$(mktemp -d "${TMPDIR:-/tmp}/schemathesis.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
mkdir -p "$report_dir"
read -r -a extra_args <<<"${ST_ARGS:-}"

# The descriptions write an NDJSON body (bulk imports, and their reports) as the array
# of its lines; schemathesis knows neither direction of that media type, nor text/plain
# answers, by itself.
cat >"$work/hooks.py" <<'PY'
import hashlib
import json
import re

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson_lines(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, list):
        return "".join(json.dumps(line) + "\n" for line in value).encode()
    return (json.dumps(value) + "\n").encode()


@schemathesis.deserializer("application/x-ndjson")
def ndjson_report(ctx, response):
    return [json.loads(line) for line in response.content.decode("utf-8").splitlines() if line.strip()]


@schemathesis.deserializer("text/plain")
def plain_text(ctx, response):
    return response.content.decode("utf-8")


# A generated Idempotency-Key is one short string reused by most requests of an
# operation, so most writes would only meet 422 idempotency-key-reused. A valid key gets
# a suffix naming its request, as a client's key names one logical request: a request
# sent twice replays its first answer, and other requests get on to the write.
KEY = re.compile(r"[!-~]([ -~]*[!-~])?")


# Product ids drawn from 1..2^63-1 all but never name a product, so writes would only
# meet 404 and 412 and never reach the merge patch and its checks: a valid id is folded
# into 1..1200 (the seeded catalog and a few more).
PRODUCT_IDS = 1200


@schemathesis.hook
def before_call(context, case, kwargs):
    params = case.path_parameters
    if case.path == "/admin/products/{id}" and params:
        id_ = params.get("id")
        if isinstance(id_, int) and not isinstance(id_, bool) and id_ >= 1:
            params["id"] = (id_ - 1) % PRODUCT_IDS + 1
    headers = case.headers or {}
    for name, value in list(headers.items()):
        if name.lower() != "idempotency-key" or not isinstance(value, str):
            continue
        if len(value) <= 255 and KEY.fullmatch(value):
            request = repr((case.method, case.path, case.path_parameters, case.body))
            digest = hashlib.sha256(request.encode("utf-8", "surrogatepass")).hexdigest()
            headers[name] = f"{value[:200]}~{digest[:32]}"
PY
export SCHEMATHESIS_HOOKS=$work/hooks.py

# fetch_spec URL OUT: the face's own description, if it serves an OpenAPI 3.1 one.
fetch_spec() {
  python3 - "$1/openapi.json" "$2" <<'PY'
import json
import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as answer:
        doc = json.load(answer)
except Exception:  # 404, refused, not JSON: not served (yet)
    sys.exit(1)
if not str(doc.get("openapi", "")).startswith("3.1"):
    sys.exit(1)
with open(sys.argv[2], "w", encoding="utf-8") as f:
    json.dump(doc, f)
PY
}

# run_face NAME URL FILE [st args...]
run_face() {
  local name=$1 url=$2 file=$3 spec=$work/$1.json status=0
  shift 3
  local args=()
  if fetch_spec "$url" "$spec"; then
    echo "schemathesis.sh: $name: the description served at $url/openapi.json" >&2
  else
    echo "schemathesis.sh: $name: $url/openapi.json is not served; using ${file#"$ROOT"/} (GET /openapi.json not tested)" >&2
    cp -- "$file" "$spec"
    args+=(--exclude-path /openapi.json)
  fi
  if [[ -n ${SEED:-} ]]; then
    args+=(--seed "$SEED")
  fi
  echo "schemathesis.sh: $name: at most $max_examples examples per operation, $workers workers, ${request_timeout}s per request, ${max_seconds}s in all" >&2
  # From the work dir: schemathesis keeps nothing in the caller's directory.
  (
    cd "$work"
    timeout --kill-after=10 "$max_seconds" \
      st --no-color run "$spec" \
      --url "$url" \
      --checks "$checks_of_face" \
      --max-examples "$max_examples" \
      --workers "$workers" \
      --request-timeout "$request_timeout" \
      --generation-database none \
      --report junit --report-junit-path "$report_dir/$name.xml" \
      "${args[@]}" "${extra_args[@]}" "$@"
  ) || status=$?
  case $status in
    0) echo "schemathesis.sh: $name: passed" >&2 ;;
    124 | 137) echo "schemathesis.sh: $name: stopped after ${max_seconds}s" >&2 ;;
    *) echo "schemathesis.sh: $name: FAILED (exit $status); report: $report_dir/$name.xml" >&2 ;;
  esac
  return "$status"
}

failed=0
checks_of_face=${CHECKS:-$base_checks}
run_face storefront "$storefront" "$ROOT/docs/openapi/storefront.json" || failed=1

admin_args=()
checks_of_face=${CHECKS:-$base_checks,ignored_auth,use_after_free}
if [[ -n $token ]]; then
  admin_args+=(--header "Authorization: Bearer $token")
else
  echo "schemathesis.sh: admin: no ADMIN_TOKEN given: admin routes will answer 401" >&2
fi
run_face admin "$admin" "$ROOT/docs/openapi/admin.json" "${admin_args[@]}" || failed=1

exit "$failed"
