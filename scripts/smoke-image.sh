#!/usr/bin/env bash
# End-to-end smoke test of the container images: a merge runs from containers against s3s-fs
# and must produce the same bytes as the embedded merge of the same config.
#
#   1. scripts/build-image.sh (static binaries, shardmerge:$TAG and s3s-fs:$TAG; docker, else podman)
#   2. from the images, host networking, loopback only, free ports: s3s-fs, a coordinator
#      (--metrics-listen) and two workers
#   3. synthetic models written by `shardmerge synth` (in a container), uploaded to s3s-fs through
#      the S3 API by the tests-crate program `s3_put`
#   4. `shardmerge submit --wait` from a container (AutoMerger's DARE-TIES recipe, fixed seed)
#   5. the same config with local paths through the embedded `shardmerge merge` (in a container);
#      every output file must be byte-identical; the coordinator's /metrics must count the job
#   6. containers, work directory and a private dockerd started for this run are removed on exit
#
# Knobs: CONTAINER_TOOL (docker|podman), TAG (dev), SMOKE_KEEP=1 (keep the work directory
# target/smoke and print container logs even on success).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TAG=${TAG:-dev}
WORK=$ROOT/target/smoke
NAME=shardmerge-smoke-$$
KEY=smoke-access-key
SECRET=smoke-secret-key
log() { echo "smoke-image: $*" >&2; }

# --- 1. images --------------------------------------------------------------------------------
KEEP_DOCKERD=1 TAG=$TAG "$ROOT/scripts/build-image.sh"
TOOL= DOCKER_HOST_FILE= STARTED_DOCKERD_PID=
while IFS='=' read -r k v; do
  case "$k" in
    TOOL) TOOL=$v ;;
    DOCKER_HOST) DOCKER_HOST_FILE=$v ;;
    STARTED_DOCKERD_PID) STARTED_DOCKERD_PID=$v ;;
  esac
done <"$ROOT/target/image-tool.env"
if [ -n "$DOCKER_HOST_FILE" ]; then
  export DOCKER_HOST=$DOCKER_HOST_FILE
fi
log "running the images with $TOOL${DOCKER_HOST:+ ($DOCKER_HOST)}"

CONTAINERS=()
cleanup() {
  local rc=$?
  if [ ${#CONTAINERS[@]} -gt 0 ]; then
    if [ $rc -ne 0 ] || [ -n "${SMOKE_KEEP:-}" ]; then
      for c in "${CONTAINERS[@]}"; do
        log "--- logs of $c (last 30 lines)"
        "$TOOL" logs "$c" 2>&1 | tail -n 30 >&2 || true
      done
    fi
    "$TOOL" rm -f "${CONTAINERS[@]}" >/dev/null 2>&1 || true
  fi
  if [ -n "$STARTED_DOCKERD_PID" ]; then
    log "stopping the private dockerd (pid $STARTED_DOCKERD_PID)"
    kill "$STARTED_DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break; sleep 0.25; done
  fi
  if [ -z "${SMOKE_KEEP:-}" ]; then
    rm -rf "$WORK"
  fi
  if [ $rc -eq 0 ]; then log "passed"; else log "FAILED (exit $rc)"; fi
}
trap cleanup EXIT

run_args=(--network=host --read-only --security-opt no-new-privileges --cap-drop ALL)
if [ "$TOOL" = podman ]; then
  run_args+=(--runtime /usr/sbin/runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
fi
start() { # start NAME RUN-ARGS...: a detached container (options, image, command), removed on exit
  local n=$NAME-$1
  shift
  CONTAINERS+=("$n")
  "$TOOL" run -d --name "$n" "${run_args[@]}" "$@" >/dev/null
}
once() { # once ARGS...: a one-shot container
  "$TOOL" run --rm "${run_args[@]}" "$@"
}
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() { # wait_port PORT WHAT: until something listens on 127.0.0.1:PORT (30 s)
  for _ in $(seq 1 300); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  log "$2 is not listening on 127.0.0.1:$1 after 30 s"
  return 1
}

# --- 2. work directory and servers -----------------------------------------------------------
rm -rf "$WORK"
mkdir -p "$WORK/s3/smoke" "$WORK/models" "$WORK/reference" "$WORK/state"
# The containers run as UID 65532: make the bind-mounted directories theirs to write.
chmod -R a+rwX "$WORK"
S3_PORT=$(free_port)
GRPC_PORT=$(free_port)
METRICS_PORT=$(free_port)
S3_ENV=(-e AWS_ENDPOINT=http://127.0.0.1:$S3_PORT -e AWS_ACCESS_KEY_ID=$KEY -e AWS_SECRET_ACCESS_KEY=$SECRET
  -e AWS_REGION=us-east-1 -e AWS_ALLOW_HTTP=true)
COORD=http://127.0.0.1:$GRPC_PORT

start s3 -v "$WORK/s3:/data" "s3s-fs:$TAG" \
  --host 127.0.0.1 --port "$S3_PORT" --access-key "$KEY" --secret-key "$SECRET" /data
start coordinator -v "$WORK/state:/var/lib/shardmerge" --tmpfs /tmp "${S3_ENV[@]}" \
  "shardmerge:$TAG" coordinator --listen "127.0.0.1:$GRPC_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
  --state-dir /var/lib/shardmerge --unit-size 6m -v
for i in 1 2; do
  start "worker-$i" --tmpfs /tmp "${S3_ENV[@]}" -e "SHARDMERGE_WORKER_NAME=worker-$i" \
    "shardmerge:$TAG" worker --coordinator "$COORD" --slots 1 -j 1
done

# --- 3. models, uploaded through the S3 API ---------------------------------------------------
log "writing synthetic models (shardmerge synth, in a container)"
once -v "$WORK/models:/models" "shardmerge:$TAG" synth /models \
  --hidden 256 --layers 6 --intermediate 688 --vocab 2048 >/dev/null
log "building s3_put and uploading the models to s3s-fs on port $S3_PORT"
cargo build --quiet -p shardmerge-bench --bin s3_put --manifest-path "$ROOT/Cargo.toml"
wait_port "$S3_PORT" s3s-fs
uploads=()
for m in base finetune-a finetune-b; do
  uploads+=("$WORK/models/$m" "s3://smoke/models/$m")
done
AWS_ENDPOINT=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=$KEY AWS_SECRET_ACCESS_KEY=$SECRET \
  AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true "$ROOT/target/debug/s3_put" "${uploads[@]}"

# --- 4. the cluster merge, submitted from a container ----------------------------------------
sed 's#s3://demo/models/#s3://smoke/models/#g' "$ROOT/deploy/compose/demo-merge.yml" >"$WORK/merge-s3.yml"
sed 's#s3://demo/models/#/models/#g' "$ROOT/deploy/compose/demo-merge.yml" >"$WORK/merge-local.yml"
chmod a+r "$WORK"/merge-*.yml
wait_port "$GRPC_PORT" coordinator
log "submitting the merge from a container"
timeout 300 "$TOOL" run --rm "${run_args[@]}" -v "$WORK/merge-s3.yml:/config/merge.yml:ro" \
  "shardmerge:$TAG" submit /config/merge.yml s3://smoke/merged --coordinator "$COORD" \
  --wait --random-seed 42

# --- 5. the embedded merge of the same config, and the comparison ----------------------------
log "running the embedded merge of the same config (in a container)"
once -v "$WORK/models:/models:ro" -v "$WORK/reference:/out" -v "$WORK/merge-local.yml:/config/merge.yml:ro" \
  "shardmerge:$TAG" merge /config/merge.yml /out/merged --random-seed 42 --quiet
python3 - "$WORK/s3/smoke/merged" "$WORK/reference/merged" <<'PY'
import hashlib, os, sys
got_dir, want_dir = sys.argv[1], sys.argv[2]
def files(d):
    # s3s-fs keeps object metadata in hidden sidecar files; compare the objects only.
    return sorted(f for f in os.listdir(d) if not f.startswith(".") and os.path.isfile(os.path.join(d, f)))
got, want = files(got_dir), files(want_dir)
tensors = [f for f in want if f.endswith(".safetensors")]
if not tensors:
    sys.exit(f"the embedded merge wrote no .safetensors: {want}")
if got != want:
    sys.exit(f"different files: cluster {got}, embedded {want}")
def read(d, f):
    data = open(os.path.join(d, f), "rb").read()
    # The model card and mergekit_config.yml quote the config, whose model paths differ
    # (s3://smoke/models/x vs /models/x): compare them with the paths made equal.
    if f in ("README.md", "mergekit_config.yml"):
        data = data.replace(b"s3://smoke/models/", b"/models/")
    return data
bad = [f for f in want if read(got_dir, f) != read(want_dir, f)]
if bad:
    sys.exit(f"bytes differ: {bad}")
for f in tensors:
    data = open(os.path.join(got_dir, f), "rb").read()
    print(f"smoke-image: identical {f} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]})", file=sys.stderr)
print(f"smoke-image: all {len(want)} output files identical to the embedded merge", file=sys.stderr)
PY
python3 - "http://127.0.0.1:$METRICS_PORT/metrics" "$WORK/reference/merged" <<'PY'
import os, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
values = {k: float(v) for k, v in (l.rsplit(" ", 1) for l in text.splitlines() if l and not l.startswith("#"))}
size = sum(os.path.getsize(os.path.join(sys.argv[2], f)) for f in os.listdir(sys.argv[2]) if f.endswith(".safetensors"))
want = {
    'shardmerge_jobs{state="succeeded"}': 1,
    'shardmerge_units{state="pending"}': 0,
    'shardmerge_units{state="failed"}': 0,
    "shardmerge_bytes_written_total": size,
}
bad = {k: (values.get(k), v) for k, v in want.items() if values.get(k) != v}
done = values.get('shardmerge_units{state="done"}', 0)
print(f"smoke-image: coordinator /metrics: {done:.0f} units done, {values.get('shardmerge_bytes_written_total', 0):.0f} bytes written", file=sys.stderr)
if bad or done < 2:
    sys.exit(f"unexpected coordinator metrics (got, want): {bad}, units done {done}")
PY
