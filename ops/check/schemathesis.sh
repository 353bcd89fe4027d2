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
# SPEC=files loads docs/openapi/<face>.json even when the face serves one: to try an
# edited description before the binary that embeds it is rebuilt.
# ADMIN_TOKEN (one of the writer's CATALOG_ADMIN_TOKENS) is sent as
# `Authorization: Bearer <token>` to the admin face; without it every admin route can
# only be seen answering 401.
#
# schemathesis gets hooks (written to its work dir): NDJSON bodies and answers of bulk
# imports as the arrays of their lines, text/plain answers checked against their schema,
# and changes to what it sends, so writes get past the preconditions: a valid product id
# in an admin path is folded into 1..1200 (the seeded catalog and a few more), a valid
# webhook id that the run did not register is mapped onto one it did, and a valid
# Idempotency-Key gets a suffix naming its request (a request sent twice still
# replays). Two keep the run bounded and local: a webhook registered with a well-formed
# `url` gets 127.0.0.1:9 as its host and port (nothing listens there: deliveries are
# refused at once), so the writer never sends deliveries to generated hosts; and only
# the 10 newest webhooks the run registered are kept (the hook deletes older ones), since
# each change inserts a delivery row per endpoint in its own transaction. A header
# value that the stateful phase's inferred links filled with a number is sent as text.
#
# `GET /changes` (the storefront's live change feed) is left out of the schemathesis
# run (`--exclude-operation-id getChanges`): its 200 is an event stream that does not
# end. schemathesis 4.32 reads such a stream until 20 events or REQUEST_TIMEOUT, so
# each of the dozens of subscriptions it would open costs a whole REQUEST_TIMEOUT (no
# change happens meanwhile); and it validates each event it reads, as an object
# `{event, data, id}`, against the response's `schema`, which in this OpenAPI 3.1
# description is the stream as a string (3.2's `itemSchema` is what describes events),
# so any event read would fail. The script checks that operation itself instead,
# against the same description: a subscription's head (200, `text/event-stream`,
# `no-store`), a resume from an unknown `Last-Event-ID` whose first event must be a
# `reset` whose data matches `ResetEvent`, two bad filters (400 problem documents
# matching their schema), and `HEAD` and `POST` (405 with `Allow` listing exactly the
# path's methods).
#
# Checks, on both faces: not_a_server_error, status_code_conformance,
# content_type_conformance, response_headers_conformance, response_schema_conformance,
# unsupported_method and allow_header_conformance (a method a path does not declare is
# 405 with the right `Allow`); on the admin face also ignored_auth (a request without
# the token is refused), use_after_free (a deleted product or webhook answers 404 in the
# stateful phase) and ensure_resource_availability (a webhook just registered is found
# at its `Location`). Left out: negative_data_rejection and
# positive_data_acceptance, because JSON Schema cannot state some of the API's bounds
# exactly ("200 distinct ids" with duplicates allowed, "2,048 bytes" of UTF-8,
# attributes "16 KiB serialized", integers written `5.0`) and because well-formed
# requests are refused for reasons of state (a token the primary has not reached, a
# cursor of another category, a taken SKU, an unknown category, an If-Match of another
# version); missing_required_header (no header parameter is required; the bearer token is covered
# by ignored_auth).
#
# Bounds (environment): MAX_EXAMPLES per operation (default 100), WORKERS (default 1:
# with more, Python 3.11 can fail with "AST constructor recursion depth mismatch" inside
# hypothesis, an interpreter bug of parsing in threads),
# REQUEST_TIMEOUT seconds per request (default 10), MAX_SECONDS for each face's whole
# run (default 600, then it is stopped and counts as a failure), SEED (default random),
# CHECKS (a comma-separated list replacing the checks above), REPORT_DIR (default
# <state dir>/schemathesis: a JUnit report per face), ST_ARGS (more `st run` options,
# split on spaces, e.g. "--phases examples,fuzzing"), SPEC (`served`, the default, or
# `files`: above). Hypothesis' deadline is off in schemathesis 4: each request is bounded
# by REQUEST_TIMEOUT instead.
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
spec_source=${SPEC:-served}
[[ $spec_source == served || $spec_source == files ]] ||
  { echo "schemathesis.sh: SPEC is served or files, not $spec_source" >&2; exit 2; }
state=$(realpath -m -- "${CATALOG_DEV_DIR:-$ROOT/.dev}")
report_dir=${REPORT_DIR:-$state/schemathesis}
base_checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method,allow_header_conformance

py_tools schemathesis==4.32.5 hypothesis==6.170.17 jsonschema==4.26.0

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
import urllib.parse
import urllib.request

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

# Every endpoint gets a delivery row of each change it matches, inserted by the change's
# own transaction, so endpoints registered by the hundred would multiply every write of
# the run (and the deliverer's work). The run keeps the newest LIVE_WEBHOOKS it
# registered: after each registration, the older ones are deleted. A valid webhook id in
# a path that is not one this run registered is mapped onto one of those still live (so
# the routes get past 404); ids it registered, deleted ones included, are sent as they are.
LIVE_WEBHOOKS = 10
LIVE = []  # ids registered by this run and still live, oldest first
REGISTERED = set()  # every id registered by this run

# A well-formed receiver URL (the description's pattern): its host and port become
# 127.0.0.1:9, where nothing listens, so no delivery leaves the machine.
RECEIVER = re.compile(r"http://[A-Za-z0-9._~%!$&'()*+,;=:\[\]-]+((?:[/?][!-\"$-~]*)?)")
SAFE_RECEIVER = "http://127.0.0.1:9"


def fold(value, size):
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return (value - 1) % size + 1
    return value


@schemathesis.hook
def before_call(context, case, kwargs):
    params = case.path_parameters
    if case.path == "/admin/products/{id}" and params and "id" in params:
        params["id"] = fold(params["id"], PRODUCT_IDS)
    if case.path.startswith("/admin/webhooks/{id}") and params and "id" in params:
        id_ = params["id"]
        valid = isinstance(id_, int) and not isinstance(id_, bool) and id_ >= 1
        if valid and LIVE and id_ not in REGISTERED:
            params["id"] = LIVE[(id_ - 1) % len(LIVE)]
    body = case.body
    if case.path == "/admin/webhooks" and case.method.upper() == "POST" and isinstance(body, dict):
        url = body.get("url")
        match = RECEIVER.fullmatch(url) if isinstance(url, str) else None
        if match:
            body["url"] = SAFE_RECEIVER + (match.group(1) or "/")
    headers = case.headers or {}
    for name, value in list(headers.items()):
        # The stateful phase's inferred links can fill a header from a number of an
        # earlier answer (`X-Request-Id` from an `id`): sent as its text, as a client would.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            headers[name] = value = str(value)
        if name.lower() != "idempotency-key" or not isinstance(value, str):
            continue
        if len(value) <= 255 and KEY.fullmatch(value):
            request = repr((case.method, case.path, case.path_parameters, case.body))
            digest = hashlib.sha256(request.encode("utf-8", "surrogatepass")).hexdigest()
            headers[name] = f"{value[:200]}~{digest[:32]}"


@schemathesis.hook
def after_call(context, case, response):
    if not case.path.startswith("/admin/webhooks"):
        return
    method = case.method.upper()
    if case.path == "/admin/webhooks/{id}" and method == "DELETE" and response.status_code == 200:
        id_ = (case.path_parameters or {}).get("id")
        if id_ in LIVE:
            LIVE.remove(id_)
    if case.path != "/admin/webhooks" or method != "POST" or response.status_code != 201:
        return
    try:
        id_ = int(response.json()["id"])
    except (ValueError, KeyError, TypeError):
        return  # not conforming: the checks report it
    LIVE.append(id_)
    REGISTERED.add(id_)
    request = response.request
    url = urllib.parse.urlsplit(request.url)
    while len(LIVE) > LIVE_WEBHOOKS:
        old = LIVE.pop(0)
        delete = urllib.request.Request(
            f"{url.scheme}://{url.netloc}/admin/webhooks/{old}",
            method="DELETE",
            headers={"Authorization": request.headers.get("Authorization", "")},
        )
        try:
            urllib.request.urlopen(delete, timeout=10).close()
        except OSError:
            pass  # already deleted (404), or the writer is failing: the checks see that
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
  if [[ $spec_source == files ]]; then
    echo "schemathesis.sh: $name: using ${file#"$ROOT"/} (SPEC=files)" >&2
    cp -- "$file" "$spec"
  elif fetch_spec "$url" "$spec"; then
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

# check_changes URL SPEC: `GET /changes` checked by hand against the description SPEC
# (schemathesis leaves it out: its 200 is an endless event stream). Each request reads
# the answer's head, then the first event or the problem document, and hangs up.
check_changes() {
  python3 - "$1" "$2" <<'PY'
import http.client
import json
import sys
import urllib.parse

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

base, spec_path = sys.argv[1], sys.argv[2]
with open(spec_path, encoding="utf-8") as f:
    doc = json.load(f)
item = doc.get("paths", {}).get("/changes")
if item is None or "get" not in item:
    print("schemathesis.sh: storefront: the description has no GET /changes: not checked", file=sys.stderr)
    sys.exit(0)
registry = Registry().with_resource(
    uri="urn:spec", resource=Resource.from_contents(doc, default_specification=DRAFT202012)
)
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
declared = sorted(m.upper() for m in item if m in METHODS)
responses = item["get"]["responses"]
url = urllib.parse.urlsplit(base)
failures = []


def resolved(node, pointer):
    """The node behind `node`'s $refs, and its JSON pointer."""
    while isinstance(node, dict) and "$ref" in node:
        pointer = node["$ref"]
        node = doc
        for part in pointer.lstrip("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node, pointer


def errors(value, pointer):
    validator = jsonschema.Draft202012Validator({"$ref": "urn:spec" + pointer}, registry=registry)
    return [error.message for error in validator.iter_errors(value)]


def first_event(answer):
    """The field lines of the first event of an event stream (comments skipped)."""
    lines = []
    while True:
        line = answer.fp.readline().decode("utf-8")
        if not line:
            return lines
        line = line.rstrip("\r\n")
        if line and not line.startswith(":"):
            lines.append(line)
        elif not line and lines:
            return lines


def check(answer, method, where, event):
    status = answer.status
    if method != "GET":
        # A method the path does not declare: 405, with Allow naming exactly those it does.
        allow = sorted(m.strip().upper() for m in (answer.getheader("allow") or "").split(",") if m.strip())
        if status != 405 or allow != declared:
            failures.append(f"{where}: {status} with Allow {allow}; expected 405 with {declared}")
        return
    if str(status) not in responses:
        failures.append(f"{where}: status {status} is not declared")
        return
    response, pointer = resolved(responses[str(status)], f"#/paths/~1changes/get/responses/{status}")
    for name, header in response.get("headers", {}).items():
        header, _ = resolved(header, "")
        if header.get("required") and answer.getheader(name) is None:
            failures.append(f"{where}: {status} without its required header {name}")
    media = (answer.getheader("content-type") or "").split(";")[0].strip()
    content = response.get("content", {})
    if media not in content:
        failures.append(f"{where}: {status} with Content-Type {media!r}; declared: {sorted(content)}")
        return
    if media == "text/event-stream":
        if event is None:
            return
        lines = first_event(answer)
        kind = next((line[6:].strip() for line in lines if line.startswith("event:")), None)
        data = "\n".join(line[5:].removeprefix(" ") for line in lines if line.startswith("data:"))
        try:
            found = errors(json.loads(data), f"#/components/schemas/{event.capitalize()}Event")
        except ValueError:
            found = ["no JSON data"]
        if kind != event or found:
            failures.append(f"{where}: the first event {lines!r} is not a {event}: {found}")
        return
    body = answer.read()
    try:
        found = errors(json.loads(body), f"{pointer}/content/{media.replace('/', '~1')}/schema")
    except ValueError:
        found = ["not JSON"]
    if found:
        failures.append(f"{where}: {status} body {body[:300]!r} does not match its schema: {found}")


def probe(method, target, headers=(), event=None):
    connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
    where = f"{method} {target}"
    try:
        connection.request(method, target, headers=dict(headers))
        check(connection.getresponse(), method, where, event)
    except Exception as err:  # refused, reset, timed out
        failures.append(f"{where}: {type(err).__name__}: {err}")
    finally:
        connection.close()


probes = [
    ("GET", "/changes?products=1,2&categories=kitchen", (), None),
    ("GET", "/changes", [("Last-Event-ID", "0/0/not-a-position-of-this-feed")], "reset"),
    ("GET", "/changes?products=0", (), None),
    ("GET", "/changes?categories=Not%20a%20slug", (), None),
    ("HEAD", "/changes", (), None),
    ("POST", "/changes", (), None),
]
for args in probes:
    probe(*args)
for failure in failures:
    print(f"schemathesis.sh: storefront: GET /changes: {failure}", file=sys.stderr)
print(
    f"schemathesis.sh: storefront: GET /changes checked by hand: {len(probes)} requests, {len(failures)} failures",
    file=sys.stderr,
)
sys.exit(1 if failures else 0)
PY
}

failed=0
checks_of_face=${CHECKS:-$base_checks}
run_face storefront "$storefront" "$ROOT/docs/openapi/storefront.json" \
  --exclude-operation-id getChanges || failed=1
check_changes "$storefront" "$work/storefront.json" || failed=1

admin_args=()
checks_of_face=${CHECKS:-$base_checks,ignored_auth,use_after_free,ensure_resource_availability}
if [[ -n $token ]]; then
  admin_args+=(--header "Authorization: Bearer $token")
else
  echo "schemathesis.sh: admin: no ADMIN_TOKEN given: admin routes will answer 401" >&2
fi
run_face admin "$admin" "$ROOT/docs/openapi/admin.json" "${admin_args[@]}" || failed=1

exit "$failed"
