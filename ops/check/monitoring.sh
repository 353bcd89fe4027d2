#!/usr/bin/env bash
# ops/check/monitoring.sh - checks catalogd's monitoring files, standalone:
#
#   ops/prometheus/alerts.yml       promtool check rules; every alert has for:, a
#                                   severity (critical|warning), summary, description and
#                                   a runbook_url docs/monitoring.md#<alert name, lower
#                                   case> whose heading exists
#   ops/prometheus/alerts.test.yml  promtool test rules; every alert has a case where it
#                                   fires and one where it does not
#   ops/prometheus/rules.yml        promtool check rules, if the file exists
#   ops/prometheus/cluster.yml      promtool check config, on a copy beside a sample
#                                   targets.json (as ops/dev.sh cluster lays it out)
#   ops/grafana/catalog.json        parses; unique panel ids; a ${datasource} Prometheus
#                                   variable and an instance variable; every panel uses
#                                   ${datasource}; every query's PromQL parses (promtool
#                                   check rules on a generated rules file, Grafana's
#                                   variables replaced first)
#   metric names                    every catalog_* name in the rules and the dashboard
#                                   is registered somewhere in src/ (its name literal,
#                                   without the catalog_ prefix and _total/_bucket/
#                                   _sum/_count suffixes)
#
# It prints what it checked and every finding, and exits 1 if there was any.
#
# Needs promtool (Debian's `prometheus` package) and jq. Missing ones are installed with
# apt-get (--no-install-recommends), as root or through `sudo -n`, which never prompts,
# with the helpers of ops/lib/packages.sh. On a host running systemd, Debian's package
# also enables and starts a `prometheus` service on :9090; `systemctl disable --now
# prometheus` stops it (this script only needs promtool).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
cd "$ROOT"

# apt_get/apt_install from ops/lib (they call log and die, redefined below).
# shellcheck source=ops/lib/common.sh
source "$ROOT/ops/lib/common.sh"
# shellcheck source=ops/lib/packages.sh
source "$ROOT/ops/lib/packages.sh"
log() { printf 'monitoring.sh: %s\n' "$*" >&2; }
die() { printf 'monitoring.sh: error: %s\n' "$*" >&2; exit 1; }
DEPS_CMD="ops/check/monitoring.sh"

ALERTS=ops/prometheus/alerts.yml
TESTS=ops/prometheus/alerts.test.yml
RECORDING=ops/prometheus/rules.yml
CLUSTER=ops/prometheus/cluster.yml
DASHBOARD=ops/grafana/catalog.json
DOC=docs/monitoring.md

FINDINGS=0
finding() { printf 'monitoring.sh: FINDING: %s\n' "$*"; FINDINGS=$((FINDINGS + 1)); }
ok() { printf 'monitoring.sh: ok: %s\n' "$*"; }
step() { printf '\nmonitoring.sh: == %s\n' "$*"; }
# indent: a command's own output, indented under the step
indent() { sed 's/^/    /'; }

TMP=$(mktemp -d)
trap 'rm -rf -- "$TMP"' EXIT

# --- tools ------------------------------------------------------------------------------
MISSING=()
command -v promtool >/dev/null || MISSING+=(prometheus)
command -v jq >/dev/null || MISSING+=(jq)
if ((${#MISSING[@]})); then
  apt_install "${MISSING[@]}"
  command -v promtool >/dev/null || die "promtool still missing after apt-get install prometheus"
  command -v jq >/dev/null || die "jq still missing after apt-get install jq"
fi
step "tools"
printf '    %s\n' "$(promtool --version 2>&1 | head -n 1)" "$(jq --version)"

for f in "$ALERTS" "$TESTS" "$CLUSTER" "$DASHBOARD" "$DOC"; do
  [[ -f $f ]] || finding "$f is missing"
done

# --- alerting rules ---------------------------------------------------------------------
step "promtool check rules $ALERTS"
if promtool check rules "$ALERTS" > "$TMP/out" 2>&1; then
  indent < "$TMP/out"
  ok "$ALERTS parses"
else
  indent < "$TMP/out"
  finding "promtool check rules $ALERTS failed"
fi

if [[ -f $RECORDING ]]; then
  step "promtool check rules $RECORDING"
  if promtool check rules "$RECORDING" > "$TMP/out" 2>&1; then
    indent < "$TMP/out"
    ok "$RECORDING parses"
  else
    indent < "$TMP/out"
    finding "promtool check rules $RECORDING failed"
  fi
fi

# One line per alerting rule: name, for, severity, has summary, has description,
# runbook_url. The file keeps one key per line (as written there), so awk reads it.
alert_table() {
  awk '
    function flush() {
      if (name != "") printf "%s\t%s\t%s\t%s\t%s\t%s\n", name, (f == "" ? "-" : f), (sev == "" ? "-" : sev), sum, desc, (rb == "" ? "-" : rb)
      name = ""; f = ""; sev = ""; sum = 0; desc = 0; rb = ""
    }
    function val(line) { sub(/^[^:]*:[ \t]*/, "", line); gsub(/^"|"$/, "", line); return line }
    /^[ \t]*- (alert|record|name):/ { flush() }
    /^[ \t]*- alert:/ { name = val($0) }
    name != "" && /^[ \t]+for:/ { f = val($0) }
    name != "" && /^[ \t]+severity:/ { sev = val($0) }
    name != "" && /^[ \t]+summary:/ { sum = 1 }
    name != "" && /^[ \t]+description:/ { desc = 1 }
    name != "" && /^[ \t]+runbook_url:/ { rb = val($0) }
    END { flush() }
  ' "$1"
}

step "alert conventions ($ALERTS, headings in $DOC)"
: > "$TMP/alerts.tsv"
[[ ! -f $ALERTS ]] || alert_table "$ALERTS" > "$TMP/alerts.tsv"
# GitHub's anchors of the doc's headings: lower case, punctuation dropped, spaces to -
: > "$TMP/anchors"
if [[ -f $DOC ]]; then
  sed -n 's/^#\{1,6\} \+//p' "$DOC" |
    tr '[:upper:]' '[:lower:]' | sed 's/[^a-z0-9 _-]//g; s/ /-/g' | sort -u > "$TMP/anchors"
fi
rules=0
while IFS=$'\t' read -r name for sev sum desc rb; do
  rules=$((rules + 1))
  [[ $for != - ]] || finding "$name: no for:"
  [[ $sev == critical || $sev == warning ]] || finding "$name: severity is '$sev', not critical or warning"
  ((sum)) || finding "$name: no summary annotation"
  ((desc)) || finding "$name: no description annotation"
  want="docs/monitoring.md#$(tr '[:upper:]' '[:lower:]' <<<"$name")"
  [[ $rb == "$want" ]] || finding "$name: runbook_url is '$rb', want '$want'"
done < "$TMP/alerts.tsv"
cut -f1 "$TMP/alerts.tsv" | sort -u > "$TMP/alert-names"
while read -r name; do
  anchor=$(tr '[:upper:]' '[:lower:]' <<<"$name")
  grep -qxF -- "$anchor" "$TMP/anchors" || finding "$name: $DOC has no heading with the anchor #$anchor"
done < "$TMP/alert-names"
printf '    %d alerting rules, %d alert names\n' "$rules" "$(wc -l < "$TMP/alert-names")"
((rules > 0)) || finding "no alerting rule found in $ALERTS"

# --- unit tests -------------------------------------------------------------------------
step "promtool test rules $TESTS"
if promtool test rules "$TESTS" > "$TMP/out" 2>&1; then
  indent < "$TMP/out"
  ok "the unit tests pass"
else
  indent < "$TMP/out"
  finding "promtool test rules $TESTS failed"
fi

step "every alert has a firing case and a quiet case in $TESTS"
# One line per alert_rule_test: alertname, then "fires" (exp_alerts lists some) or
# "quiet" (exp_alerts: [] or absent).
awk '
  function flush() { if (name != "") print name "\t" (fires ? "fires" : "quiet"); name = ""; fires = 0 }
  /^[ \t]*- eval_time:/ { flush() }
  /^[ \t]*(alertname|- alertname):/ { v = $0; sub(/^[^:]*:[ \t]*/, "", v); gsub(/"/, "", v); name = v }
  /^[ \t]*- exp_labels:/ { fires = 1 }
  /^[ \t]*(- )?(interval|input_series|promql_expr_test):/ { flush() }
  END { flush() }
' "$TESTS" > "$TMP/cases.tsv" 2>/dev/null || : > "$TMP/cases.tsv"
while read -r name; do
  grep -qxF -- "$name"$'\tfires' "$TMP/cases.tsv" || finding "$name: no test case where it fires"
  grep -qxF -- "$name"$'\tquiet' "$TMP/cases.tsv" || finding "$name: no test case where it stays quiet"
done < "$TMP/alert-names"
cut -f1 "$TMP/cases.tsv" | sort -u | while read -r name; do
  grep -qxF -- "$name" "$TMP/alert-names" || echo "$name"
done > "$TMP/unknown"
while read -r name; do finding "$TESTS tests '$name', which $ALERTS does not define"; done < "$TMP/unknown"
printf '    %d test cases (%d firing, %d quiet) for %d alert names\n' "$(wc -l < "$TMP/cases.tsv")" \
  "$(grep -c $'\tfires' "$TMP/cases.tsv" || true)" "$(grep -c $'\tquiet' "$TMP/cases.tsv" || true)" \
  "$(cut -f1 "$TMP/cases.tsv" | sort -u | wc -l)"

# --- scrape config ----------------------------------------------------------------------
step "promtool check config $CLUSTER (a copy beside alerts.yml and a sample targets.json)"
if [[ -f $CLUSTER && -f $ALERTS ]]; then
  mkdir -p "$TMP/cluster"
  cp -- "$CLUSTER" "$ALERTS" "$TMP/cluster/"
  [[ ! -f $RECORDING ]] || cp -- "$RECORDING" "$TMP/cluster/"
  cat > "$TMP/cluster/targets.json" <<'JSON'
[
  {"targets": ["127.0.0.1:18080", "127.0.0.1:18082"], "labels": {"role": "reader"}},
  {"targets": ["127.0.0.1:18081"], "labels": {"role": "writer"}}
]
JSON
  if promtool check config "$TMP/cluster/$(basename "$CLUSTER")" > "$TMP/out" 2>&1; then
    sed "s|$TMP/cluster/||g" "$TMP/out" | indent
    ok "$CLUSTER is a valid Prometheus configuration"
  else
    sed "s|$TMP/cluster/||g" "$TMP/out" | indent
    finding "promtool check config $CLUSTER failed"
  fi
fi
grep -q 'targets.json' "$CLUSTER" || finding "$CLUSTER does not read targets.json"

# --- dashboard --------------------------------------------------------------------------
step "dashboard $DASHBOARD"
: > "$TMP/exprs.jsonl"
if [[ ! -f $DASHBOARD ]]; then
  :
elif ! jq empty "$DASHBOARD" 2> "$TMP/out"; then
  indent < "$TMP/out"
  finding "$DASHBOARD is not valid JSON"
else
  ok "$DASHBOARD parses as JSON"
  # Every panel, rows' nested panels included.
  PANELS='[.panels[]? | ., (.panels[]?)]'
  {
    jq -r "$PANELS | map(.id) | group_by(.) | map(select(length > 1) | .[0]) | .[] | \"duplicate panel id \\(.)\"" "$DASHBOARD"
    jq -r "$PANELS | .[] | select(.id == null) | \"panel '\\(.title)' has no id\"" "$DASHBOARD"
    jq -r "$PANELS | .[] | select(.type != \"row\") | select(.datasource.uid != \"\${datasource}\") |
      \"panel \\(.id) '\\(.title)' does not use the \${datasource} variable\"" "$DASHBOARD"
    jq -r "$PANELS | .[] | select(.type != \"row\") | select((.targets // []) | length == 0) |
      \"panel \\(.id) '\\(.title)' has no query\"" "$DASHBOARD"
    jq -r "$PANELS | .[] | select(.type != \"row\") | .targets[]? as \$t | select((\$t.expr // \"\") == \"\") |
      \"panel \\(.id) '\\(.title)' has a query without expr\"" "$DASHBOARD"
    jq -r 'if ([.templating.list[]? | select(.name == "datasource" and .type == "datasource" and .query == "prometheus")] | length) == 1
           then empty else "no datasource variable of type datasource (prometheus)" end' "$DASHBOARD"
    jq -r 'if ([.templating.list[]? | select(.name == "instance" and .type == "query")] | length) == 1
           then empty else "no instance query variable" end' "$DASHBOARD"
    jq -r 'if (.schemaVersion // 0) >= 36 then empty else "schemaVersion \(.schemaVersion) is below 36" end' "$DASHBOARD"
    jq -r 'if (.uid // "") != "" then empty else "no uid" end' "$DASHBOARD"
  } > "$TMP/dash-findings"
  while IFS= read -r line; do finding "$DASHBOARD: $line"; done < "$TMP/dash-findings"
  printf '    %d panels (%d rows), %d queries, variables: %s\n' \
    "$(jq "$PANELS | map(select(.type != \"row\")) | length" "$DASHBOARD")" \
    "$(jq "$PANELS | map(select(.type == \"row\")) | length" "$DASHBOARD")" \
    "$(jq "$PANELS | map(.targets[]?) | length" "$DASHBOARD")" \
    "$(jq -r '[.templating.list[]?.name] | join(", ")' "$DASHBOARD")"

  # Every expr as a recording rule, Grafana's variables replaced, for promtool to parse.
  # Variable queries (label_values(...)) are Grafana's own syntax: their selector
  # argument is parsed instead.
  jq -r "$PANELS | .[] | select(.type != \"row\") | .id as \$id | .title as \$title |
      .targets[]? | [\"panel \\(\$id) '\\(\$title)' query \\(.refId)\", .expr] | @json" \
    "$DASHBOARD" > "$TMP/exprs.jsonl"
  jq -r '.templating.list[]? | select(.type == "query") |
      (.query | if type == "object" then .query else . end) as $q |
      ["variable \(.name)", ($q | capture("^label_values\\((?<sel>.*),\\s*[a-zA-Z_][a-zA-Z0-9_]*\\)$").sel // $q)] | @json' \
    "$DASHBOARD" >> "$TMP/exprs.jsonl"
  {
    echo "groups:"
    echo "  - name: dashboard"
    echo "    rules:"
    n=0
    while IFS= read -r entry; do
      n=$((n + 1))
      what=$(jq -r '.[0]' <<<"$entry")
      # shellcheck disable=SC2016 # the $ are Grafana's, replaced literally
      expr=$(jq -r '.[1]' <<<"$entry" | sed -E '
        s/\$\{?__(rate_interval|interval|range)\}?/5m/g
        s/\$\{?__(interval_ms|range_s|range_ms)\}?/300/g
        s/\$\{instance(:[a-z]+)?\}|\$instance\b/.*/g
        s/\$\{job(:[a-z]+)?\}|\$job\b/catalog/g')
      printf '%s\t%s\n' "$n" "$what" >> "$TMP/expr-index"
      if grep -q '\$' <<<"$expr"; then
        printf '%s uses a variable this check does not know: %s\n' "$what" "$expr" >> "$TMP/var-findings"
        continue
      fi
      printf '      - record: dashboard:expr_%d\n        expr: |\n' "$n"
      # shellcheck disable=SC2001 # indents every line of a multi-line expression
      sed 's/^/          /' <<<"$expr"
    done < "$TMP/exprs.jsonl"
  } > "$TMP/dashboard-rules.yml"
  if [[ -f $TMP/var-findings ]]; then
    while IFS= read -r line; do finding "$DASHBOARD: $line"; done < "$TMP/var-findings"
  fi
  if promtool check rules "$TMP/dashboard-rules.yml" > "$TMP/out" 2>&1; then
    printf '    every query parses: %s\n' "$(grep -o 'SUCCESS.*' "$TMP/out" || true)"
    ok "the dashboard's PromQL parses"
  else
    # promtool names the rule (dashboard:expr_N) or the line; map N back to the panel.
    sed "s|$TMP/||g" "$TMP/out" | indent
    grep -o 'dashboard:expr_[0-9]*' "$TMP/out" | sort -u | while read -r rule; do
      awk -F'\t' -v n="${rule#dashboard:expr_}" '$1 == n { print "    = " $2 }' "$TMP/expr-index"
    done
    finding "a query of $DASHBOARD does not parse (see above)"
  fi
fi

# --- metric names -----------------------------------------------------------------------
step "every catalog_* metric named in the rules and the dashboard is registered in src/"
{
  grep -o 'catalog_[a-z0-9_]*' "$ALERTS" || true
  [[ ! -f $RECORDING ]] || grep -o 'catalog_[a-z0-9_]*' "$RECORDING" || true
  jq -r '.[1]' "$TMP/exprs.jsonl" 2>/dev/null | grep -o 'catalog_[a-z0-9_]*' || true
} | sort -u > "$TMP/metrics"
checked=0
while read -r metric; do
  base=${metric#catalog_}
  base=${base%_total}
  base=$(sed -E 's/_(bucket|sum|count)$//' <<<"$base")
  checked=$((checked + 1))
  grep -rqF --include='*.rs' -- "\"$base\"" src/ || finding "$metric: no metric \"$base\" is registered in src/"
done < "$TMP/metrics"
printf '    %d metric names checked\n' "$checked"

# --- verdict ----------------------------------------------------------------------------
echo
if ((FINDINGS)); then
  printf 'monitoring.sh: %d finding(s)\n' "$FINDINGS"
  exit 1
fi
echo "monitoring.sh: all checks passed"
