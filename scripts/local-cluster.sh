#!/usr/bin/env bash
# A local shardmerge cluster on loopback, for laptops and demos:
#   an S3-compatible server (s3s-fs, buckets are directories under $CLUSTER_DIR/s3),
#   a coordinator (gRPC on $LISTEN, journal in $CLUSTER_DIR/state) and $WORKERS workers.
#
#   scripts/local-cluster.sh                 # start; Ctrl-C stops everything
#   source target/local-cluster/env          # in another shell: S3 + coordinator settings
#   mkdir -p target/local-cluster/s3/models && cp -r MODEL_DIR target/local-cluster/s3/models/
#   target/release/shardmerge submit config.yml s3://out/merged --wait   # models as s3://models/NAME
#
# Knobs: CLUSTER_DIR, WORKERS (3), S3_PORT (9000), LISTEN (127.0.0.1:7070), SHARDMERGE_TOKEN (clients),
# SHARDMERGE_WORKER_TOKEN (workers): passed to the processes from the environment.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${CLUSTER_DIR:-$ROOT/target/local-cluster}
WORKERS=${WORKERS:-3}
S3_PORT=${S3_PORT:-9000}
LISTEN=${LISTEN:-127.0.0.1:7070}
S3FS=$("$ROOT/scripts/install-s3s-fs.sh")
cargo build --release --bin shardmerge --manifest-path "$ROOT/Cargo.toml" >&2
BIN=$ROOT/target/release/shardmerge
mkdir -p "$DIR/s3/models" "$DIR/s3/out" "$DIR/state" "$DIR/logs"
cat > "$DIR/env" <<ENV
export AWS_ENDPOINT=http://127.0.0.1:$S3_PORT
export AWS_ACCESS_KEY_ID=shardmerge-local
export AWS_SECRET_ACCESS_KEY=shardmerge-local-secret
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
export SHARDMERGE_COORDINATOR=http://$LISTEN
ENV
# shellcheck disable=SC1091
source "$DIR/env"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
"$S3FS" --host 127.0.0.1 --port "$S3_PORT" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$DIR/s3" \
  >"$DIR/logs/s3s-fs.log" 2>&1 &
pids+=($!)
"$BIN" coordinator --listen "$LISTEN" --state-dir "$DIR/state" >"$DIR/logs/coordinator.log" 2>&1 &
pids+=($!)
sleep 0.5
for i in $(seq 1 "$WORKERS"); do
  "$BIN" worker --coordinator "http://$LISTEN" --name "worker-$i" >"$DIR/logs/worker-$i.log" 2>&1 &
  pids+=($!)
done
echo "local cluster up: S3 at $AWS_ENDPOINT (root $DIR/s3), coordinator at http://$LISTEN, $WORKERS workers"
echo "logs in $DIR/logs; in another shell: source $DIR/env && $BIN status"
wait
