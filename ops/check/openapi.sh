#!/usr/bin/env bash
# ops/check/openapi.sh - static validation of the OpenAPI 3.1 descriptions of both faces.
#
# Usage: ops/check/openapi.sh [SPEC.json ...]
#   (default: docs/openapi/storefront.json and docs/openapi/admin.json)
#
# Each file is checked with openapi-spec-validator (pinned, from PyPI, in the venv of
# ops/lib/python.sh) against the OpenAPI 3.1 schema, $refs included. Then, since
# schemathesis generates requests from these files with Python's `re` and checks answers
# with jsonschema, each file must also: declare `openapi: 3.1.x`; have every `pattern`
# compile as a Python regular expression; and have every `example`/`examples` value of
# a schema or parameter valid against its schema (refs resolved). Prints one line per
# finding and exits 1 on any; 0 when every file passes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
# shellcheck source=ops/lib/python.sh
source "$ROOT/ops/lib/python.sh"

if (($#)); then
  specs=("$@")
else
  specs=("$ROOT/docs/openapi/storefront.json" "$ROOT/docs/openapi/admin.json")
fi

py_tools openapi-spec-validator==0.9.0 jsonschema==4.26.0

failed=0
for spec in "${specs[@]}"; do
  if [[ ! -f $spec ]]; then
    echo "openapi.sh: $spec: no such file" >&2
    failed=1
    continue
  fi
  # A failed $ref quotes the whole document: lines are cut to stay readable.
  if ! openapi-spec-validator --schema 3.1 --validation-errors all "$spec" 2>&1 | cut -c1-1000; then
    failed=1
    continue
  fi
  python3 - "$spec" <<'PY' || failed=1
import json
import re
import sys

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

path = sys.argv[1]
with open(path, encoding="utf-8") as f:
    doc = json.load(f)
findings = []
if not str(doc.get("openapi", "")).startswith("3.1."):
    findings.append(f"openapi is {doc.get('openapi')!r}, not 3.1.x")

# A registry where "#/components/..." refs resolve against this document.
resource = Resource.from_contents(doc, default_specification=DRAFT202012)
registry = Registry().with_resource(uri="urn:spec", resource=resource)


def check_example(where, pointer, value):
    # The schema by its place in the document, so its "#/components/..." refs resolve.
    validator = jsonschema.Draft202012Validator(
        {"$ref": "urn:spec" + pointer},
        registry=registry,
        format_checker=jsonschema.FormatChecker(),
    )
    for error in validator.iter_errors(value):
        findings.append(f"{where}: example {value!r} is invalid: {error.message}")


def walk(node, where):
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            try:
                re.compile(pattern)
            except re.error as err:
                findings.append(f"{where}/pattern: {pattern!r} is not a Python regex: {err}")
        if "in" in node and "example" in node and isinstance(node.get("schema"), dict):
            check_example(f"{where}/example", f"{where}/schema", node["example"])
        if "in" not in node and isinstance(node.get("examples"), list) and "type" in node:
            for value in node["examples"]:
                check_example(f"{where}/examples", where, value)
        for key, value in node.items():
            walk(value, f"{where}/{str(key).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            walk(value, f"{where}/{i}")


walk(doc, "#")
for finding in findings:
    print(f"{path}: {finding}")
if findings:
    sys.exit(1)
print(f"{path}: patterns and examples OK")
PY
done
exit "$failed"
